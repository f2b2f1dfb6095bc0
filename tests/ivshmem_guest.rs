//! The guest side of the `ivshmem` link, without a VM: a guest connects as a plain peer on an
//! ivshmem-server socket (as QEMU does) and runs the epoch handshake and the normal client.
//!
//! The host here is a small fake written for these tests (`FakeHost`): it speaks the
//! ivshmem-server protocol, owns the region, resets a session for each new guest epoch and serves
//! it with the real `vgpu_transport::Server` over the mediator's emu executor. The fake can stop
//! its heartbeat and freeze its executor, change its generation, or write a wrong version, which
//! the real mediator cannot be made to do on demand. VFIO itself is only exercised inside a VM
//! (`scripts/vm-test.sh` runs `vgpu-test-guest ivshmem-selftest` there).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command as Process;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vgpu_transport::sync::{AtomicBool, AtomicU64, Ordering};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vgpu_mediator::emu::{Emu, EmuLimits};
use vgpu_tests::{args, pattern, TempDir};
use vgpu_transport::link::ivshmem::{self, IvshmemDevice};
use vgpu_transport::notify::{EventFd, Notify};
use vgpu_transport::region::{self, Region};
use vgpu_transport::server::Exit;
use vgpu_transport::wire::{hdr, Call, Command, Completion, HostState, Layout, PROTOCOL_VERSION};
use vgpu_transport::{ClientConfig, Completer, Error, Executor, Server, ServerConfig, ServerStats, SpinPolicy};

/// Shared-memory size of the fake (a power of two, larger than the region it lays out).
const SHM_SIZE: u64 = 64 << 20;

fn eventfd() -> OwnedFd {
    use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};
    OwnedFd::from(NixEventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).expect("eventfd"))
}

fn send(s: &UnixStream, v: i64, fd: Option<RawFd>) {
    let b = v.to_le_bytes();
    let iov = [std::io::IoSlice::new(&b)];
    let fds = fd.map(|f| [f]);
    let cmsg: Vec<ControlMessage<'_>> = fds.as_ref().map(|f| vec![ControlMessage::ScmRights(f)]).unwrap_or_default();
    sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None).expect("sendmsg");
}

/// The emu executor, with a switch that makes it hang (a host that stops answering).
struct Freezable {
    emu: Emu,
    freeze: Arc<AtomicBool>,
}

impl Executor for Freezable {
    fn execute(&mut self, cmd: &Command, call: Call, done: &Completer) -> Option<Completion> {
        while self.freeze.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.emu.execute(cmd, call, done)
    }
    fn shutdown(&mut self) {
        self.emu.shutdown()
    }
}

struct Knobs {
    stop: AtomicBool,
    heartbeat: AtomicBool,
    freeze: Arc<AtomicBool>,
    /// Answer guest epochs at all.
    serve: AtomicBool,
    sessions: AtomicU64,
}

/// A minimal ivshmem server + host: peer 0, one region, sessions by epoch.
struct FakeHost {
    path: PathBuf,
    region: Arc<Region>,
    knobs: Arc<Knobs>,
    threads: Vec<JoinHandle<()>>,
    _dir: TempDir,
}

impl FakeHost {
    fn start(tag: &str) -> FakeHost {
        FakeHost::start_with(tag, |_| {})
    }

    /// `tweak` may alter the header after it is written (e.g. a wrong version).
    fn start_with(tag: &str, tweak: impl FnOnce(&Region)) -> FakeHost {
        let dir = TempDir::new(tag);
        let path = dir.path().join("ivshmem.sock");
        let layout = Layout::new(256, 16 << 20).expect("layout");
        assert!(layout.region_len < SHM_SIZE);
        let memfd = region::create_memfd("fake-ivshmem", SHM_SIZE).expect("memfd");
        let region = Arc::new(Region::map_fd(&memfd, SHM_SIZE, layout).expect("map"));
        region.init_header(7);
        region.write_u64(hdr::HOST_GENERATION, 0x1234_5679);
        tweak(&region);
        let knobs = Arc::new(Knobs {
            stop: AtomicBool::new(false),
            heartbeat: AtomicBool::new(true),
            freeze: Arc::new(AtomicBool::new(false)),
            serve: AtomicBool::new(true),
            sessions: AtomicU64::new(0),
        });
        let (d0, d1, i0, i1) = (eventfd(), eventfd(), eventfd(), eventfd());
        let listener = UnixListener::bind(&path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut threads = Vec::new();
        // The ivshmem server: one peer at a time (successive connections share the region, as
        // successive processes in one VM share its device).
        {
            let k = knobs.clone();
            let fds: Vec<RawFd> = [&memfd, &d0, &d1, &i0, &i1].iter().map(|f| f.as_raw_fd()).collect();
            let owned = (memfd, d1);
            threads.push(std::thread::spawn(move || {
                let _owned = owned;
                let mut peers: Vec<UnixStream> = Vec::new();
                while !k.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            send(&s, 0, None);
                            send(&s, 1, None);
                            send(&s, -1, Some(fds[0]));
                            send(&s, 0, Some(fds[1]));
                            send(&s, 0, Some(fds[2]));
                            send(&s, 1, Some(fds[3]));
                            send(&s, 1, Some(fds[4]));
                            peers.push(s);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        // The heartbeat: every 20 ms while enabled, sessions or not.
        {
            let (k, r) = (knobs.clone(), region.clone());
            threads.push(std::thread::spawn(move || {
                while !k.stop.load(Ordering::SeqCst) {
                    if k.heartbeat.load(Ordering::SeqCst) {
                        r.atomic_u64(hdr::HEARTBEAT).fetch_add(1, Ordering::Release);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        // The host: reset and serve a session for each new guest epoch.
        {
            let (k, r) = (knobs.clone(), region.clone());
            threads.push(std::thread::spawn(move || host_loop(k, r, d0, i0, i1)));
        }
        FakeHost { path, region, knobs, threads, _dir: dir }
    }

    fn device(&self) -> IvshmemDevice {
        IvshmemDevice::connect_peer(&self.path).expect("connect_peer")
    }

    fn link_env(&self) -> String {
        format!("ivshmem-socket:{}", self.path.display())
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.knobs.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn host_loop(k: Arc<Knobs>, region: Arc<Region>, d0: OwnedFd, i0: OwnedFd, i1: OwnedFd) {
    let stats: &'static ServerStats = Box::leak(Box::default());
    let mut current: u64 = 0;
    let mut serving: Option<(JoinHandle<Exit>, Arc<EventFd>)> = None;
    let dup = |f: &OwnedFd| EventFd::from_owned(f.try_clone().expect("dup")).expect("eventfd");
    while !k.stop.load(Ordering::SeqCst) {
        let e = region.atomic_u64(hdr::GUEST_EPOCH).load(Ordering::Acquire);
        if e != 0 && e != current && k.serve.load(Ordering::SeqCst) {
            // Tear the old session down completely, then reset our side and accept the epoch.
            if let Some((h, stop)) = serving.take() {
                k.freeze.store(false, Ordering::SeqCst);
                stop.signal();
                let _ = h.join();
            }
            region.atomic_u32(hdr::SQ_HEAD).store(0, Ordering::Relaxed);
            region.atomic_u32(hdr::CQ_TAIL).store(0, Ordering::Relaxed);
            region.atomic_u32(hdr::NEEDS_KICK).store(0, Ordering::Relaxed);
            region.atomic_u32(hdr::HOST_STATE).store(HostState::Serving as u32, Ordering::Relaxed);
            let interrupts: Vec<Box<dyn Notify>> = vec![Box::new(dup(&i0)), Box::new(dup(&i1))];
            let mut server = Server::new(region.clone(), dup(&d0), interrupts, None, ServerConfig::default(), stats).expect("server");
            let stop = server.stopper();
            let emu = Emu::new(region.clone(), stats, EmuLimits::default()).expect("emu");
            let mut exec = Freezable { emu, freeze: k.freeze.clone() };
            let h = std::thread::spawn(move || server.run(&mut exec));
            serving = Some((h, stop));
            k.sessions.fetch_add(1, Ordering::SeqCst);
            current = e;
            region.atomic_u64(hdr::HOST_EPOCH).store(e, Ordering::Release);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    k.freeze.store(false, Ordering::SeqCst);
    if let Some((h, stop)) = serving.take() {
        stop.signal();
        let _ = h.join();
    }
}

fn quiet_cfg(spin: SpinPolicy) -> ClientConfig {
    ClientConfig { spin, ..ClientConfig::default() }
}

#[test]
fn peer_handshake_and_calls() {
    let host = FakeHost::start("ivs-calls");
    let dev = host.device();
    assert_eq!(dev.peer_id(), Some(1));
    assert_eq!(dev.len() as u64, SHM_SIZE);
    let c = ivshmem::connect(dev, ClientConfig::default()).expect("connect");
    assert_eq!(host.knobs.sessions.load(Ordering::SeqCst), 1);
    assert_ne!(host.region.read_u64(hdr::GUEST_EPOCH), 0);
    assert_eq!(host.region.read_u64(hdr::GUEST_EPOCH), host.region.read_u64(hdr::HOST_EPOCH));
    assert_eq!(host.region.read_u32(hdr::GUEST_PID), std::process::id());
    for _ in 0..200 {
        c.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop");
    }
    let [ptr, _] = c.call_blocking(Call::MemAlloc, 0, args(4 << 20, 0, 0)).expect("MemAlloc");
    let data = pattern(3, (3 << 20) + 17);
    c.copy_to_device(ptr, &data, 0).expect("to device");
    let mut back = vec![0u8; data.len()];
    c.copy_from_device(ptr, &mut back, 0).expect("from device");
    assert!(back == data, "read-back differs");
    // Many in flight: a full ring's worth at a time, 1000 in all (slots recycled).
    let depth = c.region().layout().sq_depth as usize;
    let mut ts = std::collections::VecDeque::new();
    for _ in 0..1000 {
        if ts.len() == depth {
            let t: vgpu_transport::client::Ticket = ts.pop_front().expect("ticket");
            t.wait().expect("Nop");
        }
        ts.push_back(c.submit(Call::Nop, 0, args(0, 0, 0)).expect("submit"));
    }
    for t in ts {
        t.wait().expect("Nop");
    }
    // Interrupt-only waiting (no spinning) goes through vector 1 and the reactor.
    let c2 = c;
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let s = c2.submit(Call::Nop, 0, args(0, 0, 0)).expect("submit");
            std::thread::spawn(move || s.wait().map(|_| ()))
        })
        .collect();
    for w in waiters {
        w.join().expect("thread").expect("Nop");
    }
    c2.check_alive().expect("alive");
}

#[test]
fn interrupt_only_client_works() {
    let host = FakeHost::start("ivs-irq");
    let c = ivshmem::connect(host.device(), quiet_cfg(SpinPolicy::Never)).expect("connect");
    for _ in 0..300 {
        c.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop");
    }
    let r = futures::executor::block_on(c.call(Call::MemGetInfo, 0, args(0, 0, 0))).expect("MemGetInfo");
    assert!(r[1] > 0);
    assert!(c.stats().interrupts.load(Ordering::Relaxed) > 0, "no interrupt was taken");
}

#[test]
fn successive_sessions_on_one_region() {
    let host = FakeHost::start("ivs-epochs");
    // Session 1 leaves work behind: a stream parked on a token that is never signalled, and a
    // command still in flight when the client goes away.
    {
        let c = ivshmem::connect(host.device(), ClientConfig::default()).expect("connect 1");
        let [p, _] = c.call_blocking(Call::MemAlloc, 0, args(1 << 20, 0, 0)).expect("MemAlloc");
        c.copy_to_device(p, &pattern(1, 1 << 20), 0).expect("copy");
        let [s, _] = c.call_blocking(Call::StreamCreate, 0, args(1, 0, 0)).expect("StreamCreate");
        c.fire(Call::StreamWaitToken, s as u32, args(77, 0, 0)).expect("token");
        let _pending = c.submit(Call::StreamSync, s as u32, args(0, 0, 0)).expect("sync");
        drop(_pending);
    }
    let e1 = host.region.read_u64(hdr::HOST_EPOCH);
    // Session 2, same region: a new epoch, a clean slate.
    let c = ivshmem::connect(host.device(), ClientConfig::default()).expect("connect 2");
    let e2 = host.region.read_u64(hdr::HOST_EPOCH);
    assert_ne!(e1, e2, "each session has its own epoch");
    assert_eq!(host.knobs.sessions.load(Ordering::SeqCst), 2);
    for _ in 0..100 {
        c.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop in session 2");
    }
    c.call_blocking(Call::DeviceSync, 0, args(0, 0, 0)).expect("DeviceSync: session 1's parked stream is gone");
    drop(c);
    // Two guest processes in turn, through `connect_from_env`, each running the self-test.
    for i in 0..2 {
        let out = Process::new(env!("CARGO_BIN_EXE_vgpu-test-guest"))
            .arg("ivshmem-selftest")
            .env("VGPU_LINK", host.link_env())
            .env_remove("VGPU_DEVICE")
            .output()
            .expect("running vgpu-test-guest");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        println!("guest process {i}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(last, "VGPU-GUEST-RESULT: PASS", "guest process {i} failed");
        assert!(out.status.success());
    }
    assert_eq!(host.knobs.sessions.load(Ordering::SeqCst), 4);
}

/// A host that stops its heartbeat (hung): every caller fails with LinkDown within 1 s. Both a
/// caller sleeping on vector 1 (no spin) and one behind it waiting on its slot.
#[test]
fn stopped_heartbeat_fails_blocked_callers_fast() {
    for spin in [SpinPolicy::Never, ClientConfig::default().spin] {
        let host = FakeHost::start("ivs-hb");
        let c = Arc::new(ivshmem::connect(host.device(), quiet_cfg(spin)).expect("connect"));
        c.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop");
        host.knobs.freeze.store(true, Ordering::SeqCst);
        host.knobs.heartbeat.store(false, Ordering::SeqCst);
        let t = Instant::now();
        let c2 = c.clone();
        let other = std::thread::spawn(move || {
            let t = Instant::now();
            (c2.call_blocking(Call::MemGetInfo, 0, args(0, 0, 0)), t.elapsed())
        });
        let r = c.call_blocking(Call::Nop, 0, args(0, 0, 0));
        let took = t.elapsed();
        let (r2, took2) = other.join().expect("thread");
        println!("{spin:?}: blocked callers failed after {} ms and {} ms", took.as_millis(), took2.as_millis());
        let e = r.expect_err("a hung host must fail the call");
        assert!(matches!(e, Error::LinkDown(_)), "{e}");
        assert!(e.to_string().contains("heartbeat"), "{e}");
        assert!(matches!(r2, Err(Error::LinkDown(_))), "{r2:?}");
        // The contract is 1 s; the bound here is generous for loaded CI machines.
        assert!(took < Duration::from_secs(2) && took2 < Duration::from_secs(2), "{took:?} {took2:?}");
        assert!(took >= Duration::from_millis(400), "failed before the heartbeat timeout: {took:?}");
        // The CUDA runtime turns it into cudaErrorDevicesUnavailable.
        assert_eq!(vgpu_streams::CudaError::from_transport(&e), vgpu_streams::CudaError::DevicesUnavailable);
        // Later calls fail at once.
        let t = Instant::now();
        assert!(c.call_blocking(Call::Nop, 0, args(0, 0, 0)).is_err());
        assert!(t.elapsed() < Duration::from_millis(100));
        host.knobs.freeze.store(false, Ordering::SeqCst);
    }
}

#[test]
fn generation_change_or_closed_host_is_link_down() {
    let host = FakeHost::start("ivs-gen");
    let c = ivshmem::connect(host.device(), ClientConfig::default()).expect("connect");
    c.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop");
    let t = Instant::now();
    host.region.atomic_u64(hdr::HOST_GENERATION).store(0xdead_beef, Ordering::Release);
    let down = vgpu_tests::poll_until(Duration::from_secs(2), "link down after a generation change", || c.check_alive().err());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(down.to_string().contains("generation"), "{down}");

    let host = FakeHost::start("ivs-closed");
    let c = ivshmem::connect(host.device(), ClientConfig::default()).expect("connect");
    c.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop");
    host.knobs.freeze.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let s = std::thread::scope(|sc| {
        let h = sc.spawn(|| c.call_blocking(Call::Nop, 0, args(0, 0, 0)));
        std::thread::sleep(Duration::from_millis(50));
        host.region.atomic_u32(hdr::HOST_STATE).store(HostState::Closed as u32, Ordering::Release);
        h.join().expect("thread")
    });
    assert!(matches!(s, Err(Error::LinkDown(_))), "{s:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    host.knobs.freeze.store(false, Ordering::SeqCst);
}

#[test]
fn another_process_taking_over_ends_this_session() {
    let host = FakeHost::start("ivs-takeover");
    let c = ivshmem::connect(host.device(), ClientConfig::default()).expect("connect");
    c.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop");
    let c2 = ivshmem::connect(host.device(), ClientConfig::default()).expect("second session");
    c2.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop on the new session");
    let down = vgpu_tests::poll_until(Duration::from_secs(2), "the old session notices", || c.check_alive().err());
    assert!(down.to_string().contains("took the device over"), "{down}");
}

#[test]
fn wrong_version_names_both_versions() {
    let host = FakeHost::start_with("ivs-version", |r| r.write_u32(hdr::VERSION, 99));
    let e = ivshmem::connect(host.device(), ClientConfig::default()).expect_err("v99 must be refused");
    let m = e.to_string();
    assert!(matches!(e, Error::Version(_)), "{m}");
    assert!(m.contains("v99") && m.contains(&format!("v{PROTOCOL_VERSION}")), "{m}");
    assert_eq!(host.region.read_u64(hdr::GUEST_EPOCH), 0, "no session is opened on a region of another version");

    let host = FakeHost::start_with("ivs-zero", |r| r.write_u64(hdr::MAGIC, 0));
    let m = ivshmem::connect(host.device(), ClientConfig::default()).expect_err("zero magic").to_string();
    assert!(m.contains("vgpu serve --ivshmem"), "{m}");
}

#[test]
fn handshake_timeout_says_whether_the_heartbeat_moves() {
    let alive = FakeHost::start("ivs-to-alive");
    let dead = FakeHost::start("ivs-to-dead");
    for h in [&alive, &dead] {
        h.knobs.serve.store(false, Ordering::SeqCst);
    }
    dead.knobs.heartbeat.store(false, Ordering::SeqCst);
    let (a, d) = std::thread::scope(|s| {
        let a = s.spawn(|| ivshmem::connect(alive.device(), ClientConfig::default()).map(drop));
        let d = s.spawn(|| ivshmem::connect(dead.device(), ClientConfig::default()).map(drop));
        (a.join().expect("thread"), d.join().expect("thread"))
    });
    let a = a.expect_err("no session without the host").to_string();
    let d = d.expect_err("no session without the host").to_string();
    assert!(a.contains("is advancing"), "{a}");
    assert!(d.contains("not advancing") && d.contains("vgpu serve --ivshmem"), "{d}");
}

#[test]
fn connect_peer_explains_a_missing_server() {
    let dir = TempDir::new("ivs-none");
    let e = IvshmemDevice::connect_peer(&dir.path().join("nothing.sock")).expect_err("no server").to_string();
    assert!(e.contains("vgpu serve --ivshmem"), "{e}");
    let e = vgpu_transport::LinkChoice::parse(Some("ivshmem-socket:/nonexistent/x.sock"), None)
        .expect("parse")
        .connect(ClientConfig::default())
        .expect_err("no server")
        .to_string();
    assert!(e.contains("/nonexistent/x.sock"), "{e}");
}

/// `vgpu serve --ivshmem` (the real host side) in its own process group, so a test can stop it
/// whole (SIGSTOP: a hung host) and kill it whole.
struct RealHost {
    child: std::process::Child,
    ivshmem: PathBuf,
    _dir: TempDir,
}

impl RealHost {
    fn start() -> RealHost {
        use std::os::unix::process::CommandExt;
        let dir = TempDir::new("ivs-real");
        let ivshmem = dir.path().join("ivshmem.sock");
        let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
        let child = Process::new(vgpu_tests::vgpu_exe())
            .args(["serve", "--executor", "emu", "--size", "64M", "--socket"])
            .arg(dir.path().join("direct.sock"))
            .arg("--ivshmem")
            .arg(&ivshmem)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting vgpu serve --ivshmem");
        vgpu_tests::poll_until(Duration::from_secs(20), "the ivshmem socket", || ivshmem.exists().then_some(()));
        RealHost { child, ivshmem, _dir: dir }
    }

    fn signal(&self, s: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.child.id() as i32), s);
    }
}

impl Drop for RealHost {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The same guest against the real mediator: two guest processes in turn (each a new VM
/// connection), then an in-process session whose host is stopped with SIGSTOP (a hung host: no
/// hang-up, only the heartbeat stops).
#[test]
fn real_mediator_serves_guests_and_a_hung_one_is_noticed() {
    let host = RealHost::start();
    for i in 0..2 {
        let out = Process::new(env!("CARGO_BIN_EXE_vgpu-test-guest"))
            .arg("ivshmem-selftest")
            .env("VGPU_LINK", format!("ivshmem-socket:{}", host.ivshmem.display()))
            .env_remove("VGPU_DEVICE")
            .output()
            .expect("running vgpu-test-guest");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("guest process {i} on vgpu serve --ivshmem:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.lines().last().unwrap_or_default(), "VGPU-GUEST-RESULT: PASS", "guest process {i} failed");
    }
    let dev = vgpu_tests::poll_until(Duration::from_secs(5), "the ivshmem socket to take a new VM", || {
        IvshmemDevice::connect_peer(&host.ivshmem).ok()
    });
    let c = ivshmem::connect(dev, quiet_cfg(SpinPolicy::Never)).expect("connect");
    c.call_blocking(Call::Nop, 0, args(0, 0, 0)).expect("Nop");
    host.signal(nix::sys::signal::Signal::SIGSTOP);
    let t = Instant::now();
    let r = c.call_blocking(Call::Nop, 0, args(0, 0, 0));
    let took = t.elapsed();
    println!("a blocked caller on a stopped mediator failed after {} ms", took.as_millis());
    assert!(matches!(r, Err(Error::LinkDown(_))), "{r:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

fn doctor(envs: &[(&str, String)], extra: &[&str]) -> (bool, String) {
    let mut p = Process::new(vgpu_tests::vgpu_exe());
    p.arg("doctor").args(extra).env_remove("VGPU_LINK").env_remove("VGPU_DEVICE").env_remove("VGPU_SOCKET");
    for (k, v) in envs {
        p.env(k, v);
    }
    let out = p.output().expect("running vgpu doctor");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    (out.status.success(), text)
}

#[test]
fn doctor_checks_and_explains() {
    // A live host on an ivshmem socket: every check passes.
    let host = FakeHost::start("ivs-doctor");
    let (ok, text) = doctor(&[("VGPU_LINK", host.link_env())], &[]);
    assert!(ok && text.contains("the host heartbeat advances") && text.contains("all checks passed"), "{text}");
    // A host whose heartbeat stopped: the check fails and names the fix.
    host.knobs.heartbeat.store(false, Ordering::SeqCst);
    let (ok, text) = doctor(&[("VGPU_LINK", host.link_env())], &[]);
    assert!(!ok && text.contains("[FAIL] the host heartbeat is not advancing") && text.contains("vgpu serve --ivshmem"), "{text}");
    // A region of another version names both versions.
    let old = FakeHost::start_with("ivs-doctor-v", |r| r.write_u32(hdr::VERSION, 99));
    let (ok, text) = doctor(&[("VGPU_LINK", old.link_env())], &[]);
    assert!(!ok && text.contains("v99") && text.contains(&format!("v{PROTOCOL_VERSION}")), "{text}");
    // No device on this machine (unless it has one): VFIO mode names the QEMU options.
    if vgpu_transport::link::vfio::find_devices(std::path::Path::new("/sys"), 0x1af4, 0x1110).is_empty() {
        let (ok, text) = doctor(&[("VGPU_LINK", "ivshmem".to_string())], &[]);
        assert!(!ok && text.contains("ivshmem-doorbell,chardev=ivs,vectors=2"), "{text}");
    }
    // The direct link: a missing socket, then a live mediator.
    let dir = TempDir::new("ivs-doctor-direct");
    let (ok, text) = doctor(&[], &["--socket", &dir.path().join("none.sock").display().to_string()]);
    assert!(!ok && text.contains("vgpu serve --socket"), "{text}");
    let m = vgpu_tests::mediator();
    let (ok, text) = doctor(&[], &["--socket", &m.socket().display().to_string()]);
    assert!(ok && text.contains("a session works"), "{text}");
}
