//! The `cuda` executor.
//!
//! Everywhere: how `vgpu serve` selects it. Without a driver `--executor cuda` exits non-zero
//! naming the fix and `--executor auto` serves with emu and says why; with a stub `libcuda.so`
//! (built here with `cc`) that lacks symbols, or has them but no device, loading fails with a
//! message instead of a panic.
//!
//! Where a GPU exists (`scripts/gpu-check.sh` runs this file there): the executor's semantics
//! through the transport against a `--executor cuda` mediator (memory, copies, streams, events,
//! tokens, frees after earlier work, device-wide sync, DeviceInfo). Without one those tests say
//! they were skipped and pass.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use vgpu_mediator::child::Mediator;
use vgpu_tests::{alloc, args, pattern, vgpu_exe, TempDir};
use vgpu_transport::wire::{Call, DeviceInfo, Status};
use vgpu_transport::{Client, ClientConfig, Error};

/// The `vgpu` binary: `$VGPU_EXE` (a staged build on a machine without cargo, as
/// `scripts/gpu-check.sh` runs this test), else this build's.
fn exe() -> PathBuf {
    std::env::var_os("VGPU_EXE").map(PathBuf::from).unwrap_or_else(|| vgpu_exe().to_path_buf())
}

/// Whether this machine can run the cuda executor (driver and device).
fn gpu() -> bool {
    vgpu_mediator::cuda::load().is_ok()
}

/// Run `vgpu serve` with `executor` on a private socket, with extra environment, until it exits
/// or `wait` passes (then it is killed). Returns (exit code if it exited, stderr).
fn serve(executor: &str, env: &[(&str, &str)], wait: Duration, dir: &Path) -> (Option<i32>, String) {
    let sock = dir.join("vgpu.sock");
    let mut child = Process::new(exe())
        .args(["serve", "--executor", executor, "--socket"])
        .arg(&sock)
        .envs(env.iter().copied())
        .env("VGPU_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting vgpu serve");
    let deadline = Instant::now() + wait;
    let code = loop {
        if let Some(st) = child.try_wait().expect("waiting for vgpu serve") {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().expect("stderr is piped").read_to_string(&mut err);
    (code, err)
}

#[test]
fn cuda_without_a_driver_exits_naming_the_fix() {
    if gpu() {
        eprintln!("skipped: this machine has a CUDA driver and device");
        return;
    }
    let dir = TempDir::new("cuda-none");
    let (code, err) = serve("cuda", &[], Duration::from_secs(20), dir.path());
    assert!(
        matches!(code, Some(c) if c != 0),
        "vgpu serve --executor cuda without a driver must exit non-zero; got {code:?}, stderr:\n{err}"
    );
    assert!(
        err.contains("libcuda.so.1 not found") && err.contains("--executor emu"),
        "the message must name the missing driver and the fix:\n{err}"
    );
    assert!(!err.contains("panicked"), "no panic:\n{err}");
}

#[test]
fn auto_without_a_driver_serves_with_emu_and_says_so() {
    if gpu() {
        eprintln!("skipped: this machine has a CUDA driver and device");
        return;
    }
    let dir = TempDir::new("cuda-auto");
    let sock = dir.path().join("vgpu.sock");
    let err_path = dir.path().join("stderr");
    let mut child = Process::new(exe())
        .args(["serve", "--executor", "auto", "--socket"])
        .arg(&sock)
        .env("VGPU_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("starting vgpu serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "vgpu serve --executor auto exited:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "vgpu serve --executor auto did not listen within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = vgpu_mediator::serve::query_stat(&sock).expect("vgpu stat");
    assert_eq!(report["executor"], "emu", "{report}");
    let c = Client::connect(&sock, ClientConfig::default()).expect("connecting");
    let info = device_info(&c);
    assert_eq!(info.executor, 0, "the emu executor serves");
    drop(c);
    let _ = child.kill();
    let _ = child.wait();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        err.contains("executor auto: using emu") && err.contains("libcuda.so.1 not found"),
        "auto must say which executor and why:\n{err}"
    );
}

/// Build a stub `libcuda.so` in `dir` exporting `symbols` (each `int f(void)` returning 0),
/// with `body` appended (C source). `None` if no C compiler is installed.
fn stub_driver(dir: &Path, symbols: &[&str], body: &str) -> Option<PathBuf> {
    let mut src = String::new();
    for s in symbols {
        src.push_str(&format!("int {s}(void) {{ return 0; }}\n"));
    }
    src.push_str(body);
    let c = dir.join("stub.c");
    std::fs::write(&c, src).expect("writing the stub source");
    let so = dir.join("libcuda.so");
    let st = Process::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&c).status().ok()?;
    assert!(st.success(), "cc failed to build the stub driver");
    std::fs::copy(&so, dir.join("libcuda.so.1")).expect("copying the stub");
    Some(dir.to_path_buf())
}

#[test]
fn a_driver_without_the_needed_symbols_is_refused_without_a_panic() {
    let dir = TempDir::new("cuda-stub-old");
    let Some(lib) = stub_driver(dir.path(), &[], "int cuInit(unsigned f) { return 0; }\n") else {
        eprintln!("skipped: no C compiler (cc) to build a stub libcuda");
        return;
    };
    let lib = lib.display().to_string();
    let (code, err) = serve("cuda", &[("LD_LIBRARY_PATH", &lib)], Duration::from_secs(20), dir.path());
    assert!(matches!(code, Some(c) if c != 0), "got {code:?}:\n{err}");
    assert!(err.contains("lacks cuDriverGetVersion") && err.contains("--executor emu"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_driver_without_a_device_is_refused_and_auto_falls_back() {
    let dir = TempDir::new("cuda-stub-nodev");
    let symbols: Vec<&str> = vgpu_mediator::cuda::driver::REQUIRED.iter().copied().filter(|s| *s != "cuInit").collect();
    let Some(lib) = stub_driver(dir.path(), &symbols, "int cuInit(unsigned f) { return 100; /* CUDA_ERROR_NO_DEVICE */ }\n") else {
        eprintln!("skipped: no C compiler (cc) to build a stub libcuda");
        return;
    };
    let lib = lib.display().to_string();
    let (code, err) = serve("cuda", &[("LD_LIBRARY_PATH", &lib)], Duration::from_secs(20), dir.path());
    assert!(matches!(code, Some(c) if c != 0), "got {code:?}:\n{err}");
    assert!(err.contains("no CUDA device") && err.contains("--executor emu"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // auto: serves (runs until killed) with emu, saying why.
    let (code, err) = serve("auto", &[("LD_LIBRARY_PATH", &lib)], Duration::from_secs(2), dir.path());
    assert_eq!(code, None, "auto must keep serving:\n{err}");
    assert!(err.contains("executor auto: using emu") && err.contains("no CUDA device"), "{err}");
}

// ---- GPU semantics (skipped without a GPU) ----

fn device_info(c: &Client) -> DeviceInfo {
    let off = c.acquire_staging().expect("a staging chunk");
    c.call_blocking(Call::DeviceInfo, 0, args(off, 512, 0)).expect("DeviceInfo");
    let mut b = [0u8; 512];
    c.region().read_window(off, &mut b).expect("reading the window");
    c.staging().release(off);
    // SAFETY: DeviceInfo is repr(C) plain data, 512 bytes, valid for any bit pattern.
    unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<DeviceInfo>()) }
}

fn cuda_mediator() -> Option<(Mediator, Client)> {
    if !gpu() {
        eprintln!("skipped: no CUDA driver or device on this machine (scripts/gpu-check.sh runs this on a GPU)");
        return None;
    }
    let m = Mediator::start_with_args(&exe(), "cuda", 50, &["--module-cache".into(), "none".into()]).expect("starting a cuda mediator");
    let c = Client::connect(m.socket(), ClientConfig::default()).expect("connecting");
    Some((m, c))
}

fn status(r: Result<[u64; 2], Error>) -> Status {
    match r {
        Ok(_) => Status::Ok,
        Err(Error::Call { status, .. }) => status,
        Err(e) => panic!("transport error: {e}"),
    }
}

#[test]
fn gpu_device_info_and_memory() {
    let Some((_m, c)) = cuda_mediator() else { return };
    check_memory(&c);
}

/// DeviceInfo, MemGetInfo, copies through the window, memsets, device-to-device copies, frees,
/// and untrusted addresses.
fn check_memory(c: &Client) {
    let info = device_info(c);
    assert_eq!(info.executor, 1);
    assert!(!info.name_str().is_empty() && info.total_mem > 0 && info.multiprocessors > 0 && info.cc_major >= 5, "{info:?}");
    let [free, total] = c.call_blocking(Call::MemGetInfo, 0, [0; 6]).expect("MemGetInfo");
    assert!(free > 0 && free <= total, "{free} {total}");
    // Round trips through the registered window, at awkward sizes, on the legacy stream.
    for len in [1usize, 255, 4096, 1 << 20, (3 << 20) + 17] {
        let d = alloc(c, len as u64);
        let src = pattern(len as u64, len);
        c.copy_to_device(d, &src, 0).expect("H2D");
        let mut back = vec![0u8; len];
        c.copy_from_device(d, &mut back, 0).expect("D2H");
        assert!(back == src, "round trip of {len} bytes");
        // Memset and D2D.
        let e = alloc(c, len as u64);
        c.call_blocking(Call::Memset, 0, args(e, 0xab, len as u64)).expect("Memset");
        c.call_blocking(Call::MemcpyDtoD, 0, args(e, d, (len / 2) as u64)).expect("DtoD");
        c.copy_from_device(e, &mut back, 0).expect("D2H");
        assert!(back[..len / 2] == src[..len / 2] && back[len / 2..].iter().all(|&b| b == 0xab), "memset + DtoD of {len}");
        c.call_blocking(Call::MemFree, 0, args(d, 0, 0)).expect("MemFree");
        c.call_blocking(Call::MemFree, 0, args(e, 0, 0)).expect("MemFree");
    }
    // Untrusted input: freed, foreign and overrunning addresses; bad window ranges.
    let d = alloc(c, 4096);
    assert_eq!(status(c.call_blocking(Call::Memset, 0, args(d + 4000, 0, 200))), Status::InvalidDevicePointer);
    assert_eq!(status(c.call_blocking(Call::MemFree, 0, args(d + 8, 0, 0))), Status::InvalidDevicePointer);
    assert_eq!(status(c.call_blocking(Call::MemcpyHtoD, 0, args(d, u64::MAX - 4, 8))), Status::InvalidWindowRange);
    assert_eq!(status(c.call_blocking(Call::MemAlloc, 0, args(0, 0, 0))), Status::InvalidArgument);
    c.call_blocking(Call::MemFree, 0, args(d, 0, 0)).expect("MemFree");
    assert_eq!(status(c.call_blocking(Call::Memset, 0, args(d, 0, 1))), Status::InvalidDevicePointer);
    assert_eq!(status(c.call_blocking(Call::MemFree, 0, args(d, 0, 0))), Status::InvalidDevicePointer);
}

#[test]
fn gpu_streams_events_and_tokens() {
    let Some((_m, c)) = cuda_mediator() else { return };
    check_streams(&c);
}

/// Streams, events with timing, StreamWaitEvent, host-function tokens, DeviceSync, MemFree
/// after earlier work, destroys, and a session left with a held stream.
fn check_streams(c: &Client) {
    let s = c.call_blocking(Call::StreamCreate, 0, args(1, 0, 0)).expect("StreamCreate")[0] as u32;
    let d = alloc(c, 1 << 20);
    // Events with timing.
    let e0 = c.call_blocking(Call::EventCreate, 0, args(0, 0, 0)).expect("EventCreate")[0];
    let e1 = c.call_blocking(Call::EventCreate, 0, args(0, 0, 0)).expect("EventCreate")[0];
    let nt = c.call_blocking(Call::EventCreate, 0, args(2, 0, 0)).expect("EventCreate")[0];
    assert_eq!(status(c.call_blocking(Call::EventQuery, 0, args(e0, 0, 0))), Status::Ok, "never recorded: Ok");
    c.call_blocking(Call::EventRecord, s, args(e0, 0, 0)).expect("record");
    for _ in 0..16 {
        c.fire(Call::Memset, s, args(d, 1, 1 << 20)).expect("memset");
    }
    c.call_blocking(Call::EventRecord, s, args(e1, 0, 0)).expect("record");
    c.call_blocking(Call::EventSync, 0, args(e1, 0, 0)).expect("EventSync");
    assert_eq!(status(c.call_blocking(Call::EventQuery, 0, args(e1, 0, 0))), Status::Ok);
    let ms = f32::from_bits(c.call_blocking(Call::EventElapsed, 0, args(e0, e1, 0)).expect("elapsed")[0] as u32);
    assert!((0.0..10_000.0).contains(&ms), "{ms}");
    assert_eq!(status(c.call_blocking(Call::EventElapsed, 0, args(e0, nt, 0))), Status::EventNoTiming);
    // Finished means finished: after a stream sync, a record + query answers Ok.
    c.call_blocking(Call::StreamSync, s, [0; 6]).expect("sync");
    c.call_blocking(Call::EventRecord, s, args(e0, 0, 0)).expect("record");
    assert_eq!(status(c.call_blocking(Call::EventQuery, 0, args(e0, 0, 0))), Status::Ok);
    // A token holds its stream until signalled; other streams and calls go on meanwhile.
    let t = c.submit(Call::StreamWaitToken, s, args(77, 0, 0)).expect("StreamWaitToken");
    t.wait().expect("the stream reached the token");
    c.fire(Call::Memset, s, args(d, 2, 16)).expect("memset behind the token");
    let sync = c.submit(Call::StreamSync, s, [0; 6]).expect("sync");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!sync.is_done(), "the stream must wait for the token");
    c.call_blocking(Call::Memset, 0, args(d + 64, 3, 16)).expect("other streams go on");
    // StreamWaitEvent on another stream, on an event recorded behind the token.
    let s2 = c.call_blocking(Call::StreamCreate, 0, args(1, 0, 0)).expect("StreamCreate")[0] as u32;
    c.fire(Call::EventRecord, s, args(e1, 0, 0)).expect("record behind the token");
    c.fire(Call::StreamWaitEvent, s2, args(e1, 0, 0)).expect("wait");
    let sync2 = c.submit(Call::StreamSync, s2, [0; 6]).expect("sync");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!sync2.is_done(), "s2 waits for the event behind the token");
    assert_eq!(status(c.call_blocking(Call::EventQuery, 0, args(e1, 0, 0))), Status::NotReady);
    c.call_blocking(Call::SignalToken, 0, args(77, 0, 0)).expect("signal");
    sync.wait().expect("released");
    sync2.wait().expect("released");
    assert_eq!(status(c.call_blocking(Call::SignalToken, 0, args(77, 0, 0))), Status::InvalidHandle, "no longer live");
    let mut b = [0u8; 16];
    c.copy_from_device(d, &mut b, s).expect("D2H");
    assert_eq!(b, [2; 16]);
    // MemFree waits for earlier work on every stream; DeviceSync covers all streams.
    c.fire(Call::Memset, s2, args(d, 4, 1 << 20)).expect("memset");
    c.call_blocking(Call::DeviceSync, 0, [0; 6]).expect("DeviceSync");
    c.call_blocking(Call::StreamDestroy, 0, args(s as u64, 0, 0)).expect("StreamDestroy");
    c.call_blocking(Call::StreamDestroy, 0, args(s2 as u64, 0, 0)).expect("StreamDestroy");
    assert_eq!(status(c.call_blocking(Call::StreamSync, s, [0; 6])), Status::InvalidHandle);
    c.call_blocking(Call::MemFree, 0, args(d, 0, 0)).expect("MemFree");
    for e in [e0, e1, nt] {
        c.call_blocking(Call::EventDestroy, 0, args(e, 0, 0)).expect("EventDestroy");
    }
    // A session that leaves a token unsignalled and work queued ends cleanly.
    let s3 = c.call_blocking(Call::StreamCreate, 0, args(0, 0, 0)).expect("StreamCreate")[0] as u32;
    c.submit(Call::StreamWaitToken, s3, args(99, 0, 0)).expect("token").wait().expect("reached");
    c.fire(Call::Memset, s3, args(alloc(c, 64), 0, 64)).expect("memset");
}

#[test]
fn gpu_session_end_releases_everything() {
    let Some((m, c)) = cuda_mediator() else { return };
    let [free0, _] = c.call_blocking(Call::MemGetInfo, 0, [0; 6]).expect("MemGetInfo");
    for _ in 0..4 {
        alloc(&c, 256 << 20);
    }
    drop(c);
    // The worker releases its allocations (the process exits); a new session sees the memory.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = Client::connect(m.socket(), ClientConfig::default()).expect("connecting");
        let [free, _] = c.call_blocking(Call::MemGetInfo, 0, [0; 6]).expect("MemGetInfo");
        if free + (64 << 20) >= free0 {
            break;
        }
        assert!(Instant::now() < deadline, "memory not released: {free} < {free0}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- the executor against a stand-in driver (tests/cuda_mock/libcuda_mock.c), everywhere ----

/// A `vgpu serve --executor cuda` whose workers load the mock driver. Killed on drop.
struct MockHost {
    child: std::process::Child,
    sock: PathBuf,
    err: PathBuf,
    _dir: TempDir,
}

impl MockHost {
    /// `None` (the test is skipped, saying so) without a C compiler.
    fn start(tag: &str, env: &[(&str, &str)]) -> Option<MockHost> {
        MockHost::start_with(tag, env, |_| Vec::new())
    }

    /// With extra `vgpu serve` arguments, made from the host's private folder.
    fn start_with(tag: &str, env: &[(&str, &str)], extra: impl FnOnce(&Path) -> Vec<std::ffi::OsString>) -> Option<MockHost> {
        let dir = TempDir::new(tag);
        let so = dir.path().join("libcuda.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda_mock/libcuda_mock.c");
        match Process::new("cc").args(["-shared", "-fPIC", "-pthread", "-O1", "-o"]).arg(&so).arg(&src).status() {
            Ok(st) => assert!(st.success(), "cc failed to build the mock driver"),
            Err(_) => {
                eprintln!("skipped: no C compiler (cc) to build the mock libcuda");
                return None;
            }
        }
        std::fs::copy(&so, dir.path().join("libcuda.so.1")).expect("copying the mock");
        let sock = dir.path().join("vgpu.sock");
        let err = dir.path().join("stderr");
        let mut child = Process::new(exe())
            .args(["serve", "--executor", "cuda", "--spin-us", "50", "--module-cache", "none", "--socket"])
            .arg(&sock)
            .args(extra(dir.path()))
            .env("LD_LIBRARY_PATH", dir.path())
            .env("VGPU_LOG", "info,vgpu::cuda=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("starting vgpu serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Some(st) = child.try_wait().expect("wait") {
                panic!("vgpu serve --executor cuda on the mock exited ({st}):\n{}", std::fs::read_to_string(&err).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "no socket within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(MockHost { child, sock, err, _dir: dir })
    }

    fn client(&self) -> Client {
        Client::connect(&self.sock, ClientConfig::default()).expect("connecting")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for MockHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mock_memory_and_copies() {
    let Some(h) = MockHost::start("mock-mem", &[]) else { return };
    let c = h.client();
    assert!(device_info(&c).name_str().starts_with("vgpu mock GPU"));
    check_memory(&c);
    drop(c);
    assert!(h.log().contains("\"registered\""), "{}", h.log());
}

#[test]
fn mock_memory_through_a_shadow_window() {
    // cuMemHostRegister fails: copies go through a pinned shadow of the window.
    let Some(h) = MockHost::start("mock-shadow", &[("MOCK_NO_REGISTER", "1")]) else { return };
    let c = h.client();
    check_memory(&c);
    drop(c);
    assert!(h.log().contains("\"shadowed\""), "{}", h.log());
}

#[test]
fn mock_streams_events_and_tokens() {
    let Some(h) = MockHost::start("mock-streams", &[]) else { return };
    let c = h.client();
    check_streams(&c);
    drop(c);
    // A second session on the same mediator starts clean.
    check_streams(&h.client());
}

#[test]
fn mock_tokens_without_stream_memory_operations() {
    // cuStreamWaitValue32 unsupported: the fallback holds the stream in a callback.
    let Some(h) = MockHost::start("mock-nowait", &[("MOCK_NO_WAIT_VALUE", "1")]) else { return };
    check_streams(&h.client());
    assert!(h.log().contains("cuStreamWaitValue32 unavailable"), "{}", h.log());
}

#[test]
fn mock_copies_to_a_held_stream_give_the_window_back() {
    let Some(h) = MockHost::start("mock-bounce", &[]) else { return };
    let c = h.client();
    let s = c.call_blocking(Call::StreamCreate, 0, args(1, 0, 0)).expect("StreamCreate")[0] as u32;
    let d = alloc(&c, 1 << 20);
    c.submit(Call::StreamWaitToken, s, args(5, 0, 0)).expect("token").wait().expect("reached");
    // The stream is held: the copy completes at once (its bytes were taken out of the window),
    // and the window range may be overwritten before the device write happens.
    let off = c.acquire_staging().expect("staging");
    let data = pattern(9, 64 << 10);
    c.region().write_window(off, &data).expect("window");
    let t = c.submit(Call::MemcpyHtoD, s, args(d, off, data.len() as u64)).expect("H2D");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.is_done() {
        assert!(Instant::now() < deadline, "a copy to a held stream must complete at consume");
        std::thread::sleep(Duration::from_millis(5));
    }
    t.wait().expect("H2D");
    c.region().write_window(off, &vec![0u8; data.len()]).expect("window");
    c.staging().release(off);
    let mut back = vec![0u8; data.len()];
    c.copy_from_device(d, &mut back[..16], 0).expect("D2H on stream 0");
    assert_ne!(&back[..16], &data[..16], "the write waits for the token");
    c.call_blocking(Call::SignalToken, 0, args(5, 0, 0)).expect("signal");
    c.copy_from_device(d, &mut back, s).expect("D2H");
    assert!(back == data, "the bounced bytes, not the overwritten window");
}

/// A fatbin-looking image for the mock: the magic, then `tag` bytes.
/// A well-formed fatbin container of `len` (>= 80) bytes with one entry whose payload is `tag`
/// bytes: the executor only hands containers that parse to the driver. The mock driver answers
/// NO_BINARY_FOR_GPU when the entry's arch (byte 44) is 0xEE.
fn image(tag: u8, len: usize) -> Vec<u8> {
    assert!(len >= 80);
    let mut v = vec![tag; len];
    v[..16].fill(0);
    v[..4].copy_from_slice(&0xBA55ED50u32.to_le_bytes());
    v[4..6].copy_from_slice(&1u16.to_le_bytes());
    v[6..8].copy_from_slice(&16u16.to_le_bytes());
    v[8..16].copy_from_slice(&(len as u64 - 16).to_le_bytes());
    let e = &mut v[16..80];
    e.fill(0);
    e[0..2].copy_from_slice(&2u16.to_le_bytes()); // an ELF (cubin) entry
    e[4..8].copy_from_slice(&64u32.to_le_bytes()); // entry header size
    e[8..16].copy_from_slice(&(len as u64 - 80).to_le_bytes()); // payload size
    e[28..32].copy_from_slice(&u32::from(tag).to_le_bytes()); // arch
    v
}

#[test]
fn mock_modules_functions_launches_symbols_and_graphs() {
    use vgpu_tests::RawSession;
    use vgpu_transport::wire::{launch, module_hash, module_load_args, FuncInfo};
    let Some(h) = MockHost::start_with("mock-kernels", &[], |d| vec!["--launch-log".into(), d.join("launches.jsonl").into()]) else {
        return;
    };
    let mut r = RawSession::connect(&h.sock);
    let w = |r: &mut RawSession, off: u64, b: &[u8]| r.region.write_window(off, b).expect("window");
    // Upload in two parts, then load; by hash afterwards.
    let img = image(1, 10_000);
    let hash = module_hash(&img);
    assert_eq!(r.call(Call::ModuleLoad, 0, module_load_args(0, hash, img.len() as u64)).0, Status::NotFound);
    w(&mut r, 0, &img[5000..]);
    r.ok(Call::ModuleData, 0, [7, 0, 5000, 5000, 10_000, 0]);
    w(&mut r, 0, &img[..5000]);
    r.ok(Call::ModuleData, 0, [7, 0, 5000, 0, 10_000, 0]);
    let m = r.ok(Call::ModuleLoad, 0, module_load_args(7, hash, 10_000))[0];
    let m2 = r.ok(Call::ModuleLoad, 0, module_load_args(0, hash, 10_000))[0];
    assert_ne!(m, m2);
    r.ok(Call::ModuleUnload, 0, args(m2, 0, 0));
    // Bad images.
    for (bytes, want) in [(vec![0u8; 128], Status::InvalidImage), (image(0xEE, 128), Status::NoKernelImage)] {
        w(&mut r, 0, &bytes);
        r.ok(Call::ModuleData, 0, [8, 0, 128, 0, 128, 0]);
        assert_eq!(r.call(Call::ModuleLoad, 0, module_load_args(8, module_hash(&bytes), 128)).0, want);
    }
    // FuncGet writes FuncInfo + the driver's parameter table; the same name, the same handle.
    w(&mut r, 0, b"_Z6kernelPii\0");
    let [f, n] = r.ok(Call::FuncGet, 0, args(m, 0, 4096));
    assert_eq!(n, 64 + 16);
    let mut b = vec![0u8; n as usize];
    r.region.read_window(0, &mut b).expect("window");
    let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let info = FuncInfo {
        num_params: u32at(0),
        param_bytes: u32at(4),
        max_threads_per_block: u32at(8),
        ptx_version: u32at(28),
        ..FuncInfo::default()
    };
    assert_eq!((info.num_params, info.param_bytes, info.max_threads_per_block, info.ptx_version), (2, 12, 1024, 90));
    assert_eq!((u32at(64), u32at(68), u32at(72), u32at(76)), (0, 8, 8, 4));
    w(&mut r, 0, b"_Z6kernelPii\0");
    assert_eq!(r.ok(Call::FuncGet, 0, args(m, 0, 4096))[0], f);
    assert_eq!(r.call(Call::FuncGet, 0, args(m, 0, 70)).0, Status::InvalidArgument, "buffer too small");
    w(&mut r, 0, b"missing\0");
    assert_eq!(r.call(Call::FuncGet, 0, args(m, 0, 4096)).0, Status::NotFound);
    w(&mut r, 0, b"no terminator");
    assert_eq!(r.call(Call::FuncGet, 0, args(m, 0, 13)).0, Status::InvalidArgument);
    // Launch: the mock kernel stores its int parameter through its pointer parameter.
    let d = r.ok(Call::MemAlloc, 0, args(4096, 0, 0))[0];
    let params = |ptr: u64, v: i32| {
        let mut p = ptr.to_le_bytes().to_vec();
        p.extend_from_slice(&v.to_le_bytes());
        p
    };
    let grid = launch::pack_grid(1, 1, 1).unwrap();
    let block = launch::pack_block(128, 1, 1, 0).unwrap();
    w(&mut r, 0, &params(d, 1234));
    r.ok(Call::Launch, 0, [f, grid, block, 0, 0, 12]);
    r.ok(Call::StreamSync, 0, [0; 6]);
    r.ok(Call::MemcpyDtoH, 0, args(d, 256, 4));
    let mut v = [0u8; 4];
    r.region.read_window(256, &mut v).expect("window");
    assert_eq!(i32::from_le_bytes(v), 1234);
    assert_eq!(r.call(Call::Launch, 0, [f, grid, block, 0, 0, 8]).0, Status::InvalidArgument, "parameter length");
    let big = launch::pack_block(1024, 2, 1, 0).unwrap();
    assert_eq!(r.call(Call::Launch, 0, [f, grid, big, 0, 0, 12]).0, Status::InvalidConfiguration);
    let zero = launch::pack_grid(0, 1, 1).unwrap();
    assert_eq!(r.call(Call::Launch, 0, [f, zero, block, 0, 0, 12]).0, Status::InvalidConfiguration);
    assert_eq!(r.call(Call::Launch, 0, [f, grid, block, 1 << 20, 0, 12]).0, Status::LaunchOutOfResources);
    assert_eq!(r.call(Call::Launch, 0, [f, grid, launch::pack_block(1, 1, 1, 2).unwrap(), 0, 0, 12]).0, Status::InvalidArgument);
    assert_eq!(r.call(Call::Launch, 0, [f + 1000, grid, block, 0, 0, 12]).0, Status::InvalidHandle);
    // Attributes and occupancy.
    r.ok(Call::FuncSetAttr, 0, args(f, 8, 64 << 10));
    assert_eq!(r.call(Call::FuncSetAttr, 0, args(f, 3, 0)).0, Status::InvalidArgument);
    w(&mut r, 0, b"_Z6kernelPii\0");
    r.ok(Call::FuncGet, 0, args(m, 0, 4096));
    r.region.read_window(0, &mut b).expect("window");
    assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 64 << 10, "FuncGet reflects FuncSetAttr");
    assert_eq!(r.ok(Call::Occupancy, 0, [f, 256, 0, 0, 0, 0])[0], 8);
    // Symbols: a device range the copies accept.
    w(&mut r, 0, b"counter\0");
    let [sym, size] = r.ok(Call::SymbolGet, 0, [m, 0, 8, 4, 0, 0]);
    assert_eq!(size, 64);
    w(&mut r, 0, b"counter\0");
    assert_eq!(r.call(Call::SymbolGet, 0, [m, 0, 8, 65, 0, 0]).0, Status::InvalidArgument);
    w(&mut r, 0, b"missing\0");
    assert_eq!(r.call(Call::SymbolGet, 0, [m, 0, 8, 0, 0, 0]).0, Status::NotFound);
    w(&mut r, 512, &pattern(3, 64));
    r.ok(Call::MemcpyHtoD, 0, args(sym, 512, 64));
    r.ok(Call::MemcpyDtoH, 0, args(sym, 1024, 64));
    let mut g = vec![0u8; 64];
    r.region.read_window(1024, &mut g).expect("window");
    assert_eq!(g, pattern(3, 64));
    assert_eq!(r.call(Call::MemcpyHtoD, 0, args(sym, 512, 65)).0, Status::InvalidDevicePointer);
    assert_eq!(r.call(Call::MemFree, 0, args(sym, 0, 0)).0, Status::InvalidDevicePointer);
    // Capture: commands are recorded (complete at once), replayed by GraphLaunch.
    assert_eq!(r.call(Call::StreamBeginCapture, 0, args(0, 0, 0)).0, Status::CaptureUnsupported);
    let s = r.ok(Call::StreamCreate, 0, args(1, 0, 0))[0] as u32;
    r.ok(Call::StreamBeginCapture, s, args(2, 0, 0));
    assert_eq!(r.call(Call::StreamBeginCapture, s, args(2, 0, 0)).0, Status::InvalidArgument);
    w(&mut r, 0, &params(d, 77));
    r.ok(Call::Launch, s, [f, grid, block, 0, 0, 12]);
    r.ok(Call::Memset, s, args(d + 8, 0x5a, 8));
    let graph = r.ok(Call::StreamEndCapture, s, [0; 6])[0];
    assert_eq!(r.call(Call::StreamEndCapture, s, [0; 6]).0, Status::InvalidArgument);
    r.ok(Call::MemcpyDtoH, 0, args(d, 256, 16));
    let mut v16 = [0u8; 16];
    r.region.read_window(256, &mut v16).expect("window");
    assert_eq!(i32::from_le_bytes(v16[..4].try_into().unwrap()), 1234, "captured, not run");
    let exec = r.ok(Call::GraphInstantiate, 0, args(graph, 0, 0))[0];
    assert_eq!(r.ok(Call::GraphExecUpdate, 0, args(exec, graph, 0))[0], 0);
    r.ok(Call::GraphLaunch, s, args(exec, 0, 0));
    r.ok(Call::StreamSync, s, [0; 6]);
    r.ok(Call::MemcpyDtoH, 0, args(d, 256, 16));
    r.region.read_window(256, &mut v16).expect("window");
    assert_eq!(i32::from_le_bytes(v16[..4].try_into().unwrap()), 77, "replayed");
    assert_eq!(&v16[8..], &[0x5a; 8]);
    assert_eq!(r.call(Call::GraphInstantiate, 0, args(graph, 0x10, 0)).0, Status::InvalidArgument);
    r.ok(Call::GraphExecDestroy, 0, args(exec, 0, 0));
    r.ok(Call::GraphDestroy, 0, args(graph, 0, 0));
    assert_eq!(r.call(Call::GraphLaunch, s, args(exec, 0, 0)).0, Status::InvalidHandle);
    // A non-capturable call invalidates the capture.
    r.ok(Call::StreamBeginCapture, s, args(0, 0, 0));
    assert_eq!(r.call(Call::StreamSync, s, [0; 6]).0, Status::CaptureUnsupported);
    assert_eq!(r.call(Call::StreamEndCapture, s, [0; 6]).0, Status::CaptureInvalidated);
    r.ok(Call::StreamSync, s, [0; 6]);
    // Unload: functions and symbols of the module go with it.
    r.ok(Call::ModuleUnload, 0, args(m, 0, 0));
    assert_eq!(r.call(Call::Launch, 0, [f, grid, block, 0, 0, 12]).0, Status::InvalidHandle);
    assert_eq!(r.call(Call::MemcpyHtoD, 0, args(sym, 512, 8)).0, Status::InvalidDevicePointer);
    assert_eq!(r.call(Call::FuncGet, 0, args(m, 0, 4096)).0, Status::InvalidHandle);
    // The launch log: the one direct launch taken; refused, captured and replayed ones are not
    // there (the driver replays graphs itself).
    let log = vgpu_tests::read_launch_log(&h._dir.path().join("launches.jsonl"));
    assert_eq!(log.len(), 1, "{log:?}");
    let hex: String = params(d, 1234).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(log[0]["kernel"], "_Z6kernelPii");
    assert_eq!(log[0]["params"], hex.as_str());
    assert_eq!((log[0]["seq"].as_u64(), log[0]["stream"].as_u64(), log[0]["graph"].as_bool()), (Some(1), Some(0), Some(false)));
    assert_eq!(log[0]["block"], serde_json::json!([128, 1, 1]));
}

#[test]
fn mock_device_fault_is_reported_with_its_code_and_sticks() {
    use vgpu_tests::RawSession;
    use vgpu_transport::wire::{launch, module_hash, module_load_args};
    let Some(h) = MockHost::start("mock-fault", &[]) else { return };
    let mut r = RawSession::connect(&h.sock);
    let img = image(2, 256);
    r.region.write_window(0, &img).expect("window");
    r.ok(Call::ModuleData, 0, [1, 0, 256, 0, 256, 0]);
    let m = r.ok(Call::ModuleLoad, 0, module_load_args(1, module_hash(&img), 256))[0];
    r.region.write_window(0, b"fault\0").expect("window");
    let f = r.ok(Call::FuncGet, 0, args(m, 0, 4096))[0];
    r.region.write_window(0, &[0u8; 12]).expect("window");
    let (grid, block) = (launch::pack_grid(1, 1, 1).unwrap(), launch::pack_block(1, 1, 1, 0).unwrap());
    r.ok(Call::Launch, 0, [f, grid, block, 0, 0, 12]);
    let c = r.call_raw(Call::StreamSync as u16, 0, 0, [0; 6]);
    assert_eq!((Status::from_u32(c.status), c.aux), (Status::DeviceError, 700), "the fault at the next sync, with its CUresult");
    let c = r.call_raw(Call::MemAlloc as u16, 0, 0, args(64, 0, 0));
    assert_eq!((Status::from_u32(c.status), c.aux), (Status::DeviceError, 700), "sticky");
    assert_eq!(r.call(Call::Nop, 0, [0; 6]).0, Status::Ok);
    drop(r);
    // The worker resets the context at session end; a new session works.
    let c = h.client();
    check_memory(&c);
}
