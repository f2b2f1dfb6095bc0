//! Helpers shared by the integration tests (`transport.rs`, `faults.rs`, `hostile.rs`) and the
//! test guest binary.
//!
//! Every test runs against a real `vgpu serve` process with the `emu` executor, on its own
//! socket in its own temporary folder, so tests run in parallel without seeing each other.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub mod nvcc;

use serde_json::Value;
use vgpu_mediator::child::Mediator;
use vgpu_transport::link::direct;
use vgpu_transport::notify::{wait_readable, EventFd};
use vgpu_transport::region::Region;
use vgpu_transport::ring::{completion_ring, submission_ring, Consumer, Producer, RegionRing};
use vgpu_transport::wire::{Call, Command, Completion, Status};
use vgpu_transport::{Client, ClientConfig};

/// Device memory an emu session has by default (`vgpu serve --mem-gib 16`).
pub const EMU_MEM: u64 = 16 << 30;

/// How long any single wait in these tests may take before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(20);

/// `[a, b, c, 0, 0, 0]`: most calls take at most three arguments.
pub fn args(a: u64, b: u64, c: u64) -> [u64; 6] {
    [a, b, c, 0, 0, 0]
}

/// The `vgpu` binary of this build: `<target dir>/<profile>/vgpu`, next to the folder (`deps/`)
/// that holds the running test executable.
///
/// Cargo does not build a dependency's binaries for another package's tests, so the first call
/// in each test process runs `cargo build -p vgpu-cli --bin vgpu` for the same profile and
/// target folder. That is a no-op when the binary is fresh, and it keeps a stale binary from
/// being tested in place of the current sources. Outside cargo (no `CARGO` in the environment)
/// an existing binary is used as it is.
pub fn vgpu_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let me = std::env::current_exe().expect("locating the test executable");
        let deps = me.parent().expect("the test executable has a folder");
        let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") { deps.parent().expect("deps has a parent") } else { deps };
        let exe = profile_dir.join("vgpu");
        let under_cargo = std::env::var_os("CARGO").is_some();
        if exe.exists() && !under_cargo {
            return exe;
        }
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let target_dir = profile_dir.parent().expect("the profile folder has a parent");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let st = Process::new(cargo)
            .args(["build", "--quiet", "-p", "vgpu-cli", "--bin", "vgpu", "--profile", &profile, "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("running cargo build for the vgpu binary");
        assert!(st.success(), "cargo build -p vgpu-cli --bin vgpu failed: {st}");
        assert!(exe.exists(), "cargo built the vgpu binary but it is not at {}", exe.display());
        exe
    })
}

/// Start a private mediator on the emu executor (50 µs host spin), listening on its own socket,
/// with no module cache (`--module-cache none`: tests never touch `~/.cache`).
pub fn mediator() -> Mediator {
    mediator_with_args(&["--module-cache", "none"])
}

/// Start a private emu mediator with these extra `vgpu serve` arguments (nothing implied: pass
/// `--module-cache none` or `--module-cache DIR` yourself).
pub fn mediator_with_args<S: AsRef<std::ffi::OsStr>>(extra: &[S]) -> Mediator {
    let extra: Vec<std::ffi::OsString> = extra.iter().map(|s| s.as_ref().to_os_string()).collect();
    Mediator::start_with_args(vgpu_exe(), "emu", 50, &extra).expect("starting the mediator")
}

/// Start a private emu mediator that appends every kernel launch to `log` (`--launch-log`, one
/// JSON object per line, see [`read_launch_log`]), with no module cache.
pub fn mediator_with_launch_log(log: &Path) -> Mediator {
    mediator_with_args(&[std::ffi::OsStr::new("--launch-log"), log.as_os_str(), "--module-cache".as_ref(), "none".as_ref()])
}

/// The records of a launch log: one JSON object per line,
/// `{"session","seq","stream","kernel","grid":[x,y,z],"block":[x,y,z],"shared","params":"hex","graph"}`.
/// A missing file is an empty log.
pub fn read_launch_log(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("launch log line {l:?}: {e}")))
        .collect()
}

/// Connect a guest with the default configuration.
pub fn connect(m: &Mediator) -> Client {
    Client::connect(m.socket(), ClientConfig::default()).expect("connecting to the mediator")
}

/// `vgpu stat` of a mediator, as JSON.
pub fn stat(m: &Mediator) -> Value {
    vgpu_mediator::serve::query_stat(m.socket()).expect("vgpu stat")
}

/// The session in a stat report whose `key` equals `val` (e.g. `"guest_pid"`, `"id"`).
pub fn session_where(report: &Value, key: &str, val: u64) -> Option<Value> {
    report["sessions"].as_array()?.iter().find(|s| s[key].as_u64() == Some(val)).cloned()
}

/// Poll `f` every 10 ms until it returns `Some`, or panic after `timeout` naming `what`.
///
/// Only for state that another process changes without any event this process could wait on
/// (a statistics page behind `vgpu stat`, a header word); everything else waits on its event.
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64), different for every seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    v
}

/// A small deterministic random number generator for choosing operations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Allocate `size` bytes of device memory with a blocking call.
pub fn alloc(c: &Client, size: u64) -> u64 {
    c.call_blocking(Call::MemAlloc, 0, args(size, 0, 0)).unwrap_or_else(|e| panic!("MemAlloc({size}): {e}"))[0]
}

/// A private temporary folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
        let n = {
            let mut g = N.lock().unwrap_or_else(|e| e.into_inner());
            *g += 1;
            *g
        };
        let p = std::env::temp_dir().join(format!("vgpu-tests-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a temporary folder");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest that speaks the protocol by hand: it writes commands straight into the submission
/// ring and reads the completion ring itself, with no client logic in between. For feeding the
/// host what a well-behaved client never sends.
pub struct RawSession {
    pub region: Arc<Region>,
    sq: Producer<RegionRing<Command>>,
    cq: Consumer<RegionRing<Completion>>,
    pub doorbell: EventFd,
    interrupt: EventFd,
    pub socket: UnixStream,
    next_seq: u64,
    /// Completions read from the ring but not yet claimed by a `wait`.
    got: VecDeque<Completion>,
}

impl RawSession {
    /// Handshake with the mediator at `path` (host default window and depth).
    pub fn connect(path: &Path) -> RawSession {
        let g = direct::connect_raw(path, 0, 0).expect("raw handshake with the mediator");
        let region = Arc::new(g.region);
        RawSession {
            sq: Producer::new(submission_ring(&region)),
            cq: Consumer::new(completion_ring(&region)),
            region,
            doorbell: g.doorbell,
            interrupt: EventFd::from_owned(g.interrupt).expect("interrupt eventfd"),
            socket: g.socket,
            next_seq: 1,
            got: VecDeque::new(),
        }
    }

    pub fn depth(&self) -> u32 {
        self.region.layout().sq_depth
    }

    pub fn window_len(&self) -> u64 {
        self.region.layout().window_len
    }

    /// A fresh sequence number.
    pub fn seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Write a command into the submission ring (not yet visible to the host).
    pub fn push(&mut self, cmd: Command) {
        self.sq.push(cmd).expect("submission ring full");
    }

    /// Publish everything pushed and ring the doorbell.
    pub fn kick(&mut self) {
        self.sq.publish();
        self.doorbell.signal();
    }

    /// Submit one command with a fresh sequence number; returns the number.
    pub fn submit(&mut self, call: u16, flags: u16, stream: u32, a: [u64; 6]) -> u64 {
        let seq = self.seq();
        self.push(Command { seq, call, flags, stream, args: a });
        self.kick();
        seq
    }

    /// Submit one command and wait for its completion.
    pub fn call_raw(&mut self, call: u16, flags: u16, stream: u32, a: [u64; 6]) -> Completion {
        let seq = self.submit(call, flags, stream, a);
        self.wait(seq)
    }

    /// Submit a well-formed call and wait; returns `(status, result)`.
    pub fn call(&mut self, call: Call, stream: u32, a: [u64; 6]) -> (Status, [u64; 2]) {
        let c = self.call_raw(call as u16, 0, stream, a);
        (Status::from_u32(c.status), c.result)
    }

    /// Like [`call`](Self::call), but the call must succeed.
    pub fn ok(&mut self, call: Call, stream: u32, a: [u64; 6]) -> [u64; 2] {
        let (s, r) = self.call(call, stream, a);
        assert_eq!(s, Status::Ok, "{call:?} {a:?} on stream {stream}");
        r
    }

    /// Whether a completion for `seq` has been read from the ring and not yet claimed.
    pub fn has_completion(&self, seq: u64) -> bool {
        self.got.iter().any(|c| c.seq == seq)
    }

    /// Wait for the next completion carrying `seq` (completions of other commands read on the
    /// way are kept for their own `wait`). Sleeps on the interrupt eventfd with the
    /// check-after-arm handshake; panics after [`HANG`].
    pub fn wait(&mut self, seq: u64) -> Completion {
        let deadline = Instant::now() + HANG;
        loop {
            self.cq.disarm();
            while let Some(c) = self.cq.pop().expect("completion ring indices") {
                self.got.push_back(c);
            }
            if let Some(i) = self.got.iter().position(|c| c.seq == seq) {
                return self.got.remove(i).expect("index just found");
            }
            assert!(Instant::now() < deadline, "no completion for seq {seq} within {HANG:?}");
            if self.cq.arm().expect("completion ring indices") {
                // The host raises the interrupt because we armed; 100 ms caps each sleep so the
                // deadline is checked even if the host is gone.
                wait_readable(&[self.interrupt.as_fd()], 100);
                self.interrupt.drain();
            }
        }
    }
}
