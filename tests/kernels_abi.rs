//! The guest side of kernels (`vgpu-streams` `kernel`/`graph`, and `cudart-abi` on top), against
//! emu mediators:
//! - nvcc's registration ABI is recorded without I/O; only modules that are used are uploaded,
//!   and a second session loads them by hash from the host's module cache;
//! - `void**` arguments are packed with the host's parameter table (checked against the emu's
//!   launch log, byte for byte, for the C-ABI path and for `Stream::launch`);
//! - bad configurations fail at the call with CUDA's error and nothing is sent;
//! - emu runs the kernels (its PTX interpreter): results are checked, and a kernel's fault (an
//!   illegal address) surfaces at the next synchronisation and stays, as CUDA's does;
//! - symbols, function attributes and occupancy;
//! - the capture state machine (local state, invalidation, CUDA's errors, graphs);
//! - an nvcc 13 program with two translation units, linked against our `libcudart.so.13`, run
//!   through `vgpu run`: only the module it launches from is uploaded.
//!
//! The kernels are compiled with nvcc at test time (`scripts/setup-nvcc.sh`); without it the
//! tests say so and skip, except under CI, where they fail.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use vgpu_streams::kernel::{self, LaunchConfig};
use vgpu_streams::{CaptureMode, CaptureStatus, Context, CudaError, Device, MemcpyKind};
use vgpu_tests::nvcc::nvcc;
use vgpu_tests::*;
use vgpu_transport::sync::Ordering::Relaxed;

const KERNELS: &str = r#"
struct P { char c; double d; short s; };
extern "C" __global__ void add(float *x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += a;
}
extern "C" __global__ void mixed(char c, double d, P p, int *q) { if (q) *q = c + (int)d + p.c + p.s; }
extern "C" __global__ void nop() {}
extern "C" __global__ void __launch_bounds__(128) bounded(int *p) { p[threadIdx.x] = 1; }
__device__ int table[4] = {1, 2, 3, 4};
__constant__ float scale[2];
extern "C" __global__ void use_globals(float *x) { x[0] = scale[0] * table[0]; }
"#;

const OTHER: &str = r#"
extern "C" __global__ void other(int *p) { *p = 7; }
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fatbin containers of `KERNELS` and `OTHER` (sm_80 cubins and compute_80 PTX, which emu
/// runs), built once per test process.
fn fatbins() -> Option<&'static (Vec<u8>, Vec<u8>)> {
    static F: OnceLock<Option<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
    F.get_or_init(|| {
        let nvcc = nvcc()?;
        let dir = std::env::temp_dir().join(format!("vgpu-kernels-abi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp folder");
        let build = |name: &str, src: &str| -> Vec<u8> {
            let cu = dir.join(format!("{name}.cu"));
            let out = dir.join(format!("{name}.fatbin"));
            std::fs::write(&cu, src).expect("writing the kernel source");
            let o = Command::new(nvcc)
                .args(["-fatbin", "-gencode=arch=compute_80,code=[sm_80,compute_80]", "-o"])
                .arg(&out)
                .arg(&cu)
                .output()
                .expect("running nvcc");
            assert!(o.status.success(), "nvcc {name}.cu failed:\n{}", String::from_utf8_lossy(&o.stderr));
            std::fs::read(&out).expect("reading the fatbin")
        };
        Some((build("kernels", KERNELS), build("other", OTHER)))
    })
    .as_ref()
}

/// `__fatBinC_Wrapper_t`.
#[repr(C)]
struct Wrapper {
    magic: u32,
    version: u32,
    data: *const u8,
    filename_or_fatbins: *const u8,
}

/// A module registered the way nvcc's start-up code does it: host stubs and shadow variables
/// are fresh addresses.
struct Registered {
    handle: usize,
    stubs: HashMap<&'static str, usize>,
    vars: HashMap<&'static str, usize>,
}

fn fresh_address() -> usize {
    Box::into_raw(Box::new(0u64)) as usize
}

fn register(fatbin: &[u8], kernels: &[&'static str], vars: &[(&'static str, u64, bool)]) -> Registered {
    let data: &'static [u8] = Box::leak(fatbin.to_vec().into_boxed_slice());
    let w = Box::leak(Box::new(Wrapper {
        magic: kernel::WRAPPER_MAGIC,
        version: 1,
        data: data.as_ptr(),
        filename_or_fatbins: std::ptr::null(),
    }));
    let handle = kernel::register_fatbin(w as *const Wrapper as usize);
    let mut stubs = HashMap::new();
    for &k in kernels {
        let stub = fresh_address();
        kernel::register_function(handle, stub, &CString::new(k).unwrap());
        stubs.insert(k, stub);
    }
    let mut var_map = HashMap::new();
    for &(v, size, constant) in vars {
        let a = fresh_address();
        kernel::register_var(handle, a, &CString::new(v).unwrap(), size, constant, false);
        var_map.insert(v, a);
    }
    Registered { handle, stubs, vars: var_map }
}

fn register_kernels() -> Option<Registered> {
    let (k, _) = fatbins()?;
    Some(register(k, &["add", "mixed", "nop", "bounded", "use_globals"], &[("table", 16, false), ("scale", 8, true)]))
}

fn session_stat(m: &vgpu_mediator::child::Mediator, key: &str) -> u64 {
    stat(m)["sessions"].as_array().map_or(0, |s| s.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum())
}

fn cfg(grid: [u32; 3], block: [u32; 3]) -> LaunchConfig {
    LaunchConfig { grid, block, shared: 0, stream: 0, cooperative: false }
}

/// Launch through the C-ABI path (`void**` arguments).
fn launch(ctx: &Arc<Context>, stub: usize, c: &LaunchConfig, args: &[*const c_void]) -> vgpu_streams::Result<()> {
    // SAFETY: one pointer per kernel parameter, each to a live value of the parameter's size.
    unsafe { ctx.launch_c(stub, c, if args.is_empty() { std::ptr::null() } else { args.as_ptr() }) }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn registration_is_local_and_only_used_modules_upload() {
    let Some((_, other)) = fatbins() else { return };
    let m = mediator();
    let dev = Device::connect(m.socket()).expect("connect");
    let ctx = dev.context().clone();
    // Registering modules sends nothing.
    let r = register_kernels().unwrap();
    let o = register(other, &["other"], &[]);
    let calls = ctx.client().stats().calls.load(Relaxed);
    assert_eq!(calls, 0, "nothing is sent before the first use");
    assert_eq!(session_stat(&m, "commands"), 0, "the host saw no command");
    assert!(kernel::init_module(r.handle));
    // __cudaGetKernel is local too.
    assert_eq!(kernel::kernel_handle(r.stubs["add"]), Ok(r.stubs["add"]));
    assert_eq!(kernel::kernel_handle(12345), Err(CudaError::InvalidDeviceFunction));
    assert_eq!(session_stat(&m, "commands"), 0);

    // The first launch uploads that module only, and fetches the function once.
    let buf = dev.alloc::<f32>(256).unwrap();
    let (p, a, n) = (buf.device_ptr(), 2.5f32, 256i32);
    let args = [&p as *const u64 as *const c_void, &a as *const f32 as *const c_void, &n as *const i32 as *const c_void];
    launch(&ctx, r.stubs["add"], &cfg([1, 1, 1], [256, 1, 1]), &args).unwrap();
    assert_eq!(ctx.module_counts(), (0, 1), "uploaded once (the host had no cache)");
    let rt0 = dev.blocking_round_trips();
    for _ in 0..10 {
        launch(&ctx, r.stubs["add"], &cfg([1, 1, 1], [256, 1, 1]), &args).unwrap();
    }
    assert_eq!(dev.blocking_round_trips(), rt0, "later launches make no round trip");
    assert_eq!(dev.synchronize().wait(), Ok(()), "emu ran the 11 launches");
    let mut got = vec![0f32; 256];
    dev.default_stream().download(&buf, &mut got).unwrap();
    assert!(got.iter().all(|&v| v == 27.5), "11 x (x += 2.5) from 0: {:?}", &got[..4]);
    assert_eq!(session_stat(&m, "modules_loaded"), 1, "the other module was never uploaded");
    assert_eq!(session_stat(&m, "launches"), 11);
    kernel::unregister_fatbin(o.handle);
    kernel::unregister_fatbin(r.handle);
    assert_eq!(kernel::kernel_handle(r.stubs["add"]), Err(CudaError::InvalidDeviceFunction), "unregistered");
}

#[test]
fn a_second_session_loads_by_hash() {
    let Some(_) = fatbins() else { return };
    let cache = TempDir::new("kernels-abi-cache");
    let m = mediator_with_args(&[std::ffi::OsStr::new("--module-cache"), cache.path().as_os_str()]);
    let r = register_kernels().unwrap();
    {
        let dev = Device::connect(m.socket()).unwrap();
        dev.context().function(r.stubs["nop"]).unwrap();
        assert_eq!(dev.context().module_counts(), (0, 1));
    }
    let dev = Device::connect(m.socket()).unwrap();
    let f = dev.context().function(r.stubs["nop"]).unwrap();
    assert_eq!(dev.context().module_counts(), (1, 0), "loaded by hash, not uploaded again");
    assert_eq!(f.params().len(), 0);
    assert!(session_stat(&m, "modules_cached") >= 1, "the host served it from its cache: {}", stat(&m));
    kernel::unregister_fatbin(r.handle);
}

#[test]
fn launch_parameters_are_packed_with_the_hosts_layout() {
    let Some((k, _)) = fatbins() else { return };
    let tmp = TempDir::new("kernels-abi-log");
    let log = tmp.path().join("launches.jsonl");
    let m = mediator_with_launch_log(&log);
    let r = register_kernels().unwrap();
    let dev = Device::connect(m.socket()).unwrap();
    let ctx = dev.context().clone();

    let f = ctx.function(r.stubs["mixed"]).unwrap();
    let layout: Vec<(u32, u32)> = f.params().iter().map(|p| (p.offset, p.size)).collect();
    assert_eq!(layout, [(0, 1), (8, 8), (16, 24), (40, 8)], "char, double, struct {{char; double; short}}, pointer");
    assert_eq!(f.info().param_bytes, 48);

    // C layout of `struct P`: c at 0, d at 8, s at 16; 24 bytes.
    let mut pbytes = [0u8; 24];
    pbytes[0] = 0x41;
    pbytes[8..16].copy_from_slice(&2.5f64.to_le_bytes());
    pbytes[16..18].copy_from_slice(&(-3i16).to_le_bytes());
    let (c, d, q) = (0x7fu8, -1.25f64, 0xdead_beef_0000u64);
    let args =
        [&c as *const u8 as *const c_void, &d as *const f64 as *const c_void, pbytes.as_ptr().cast(), &q as *const u64 as *const c_void];
    let s = dev.stream().unwrap();
    let mut c1 = cfg([3, 2, 1], [32, 2, 1]);
    c1.shared = 256;
    c1.stream = s.raw();
    launch(&ctx, r.stubs["mixed"], &c1, &args).unwrap();

    let mut want = vec![0u8; 48];
    want[0] = c;
    want[8..16].copy_from_slice(&d.to_le_bytes());
    want[16..40].copy_from_slice(&pbytes);
    want[40..48].copy_from_slice(&q.to_le_bytes());

    // The same launch through the Rust API: a module from the same bytes, arguments as values.
    let module = dev.load_module(k).unwrap();
    let f2 = module.function("mixed").unwrap();
    s.launch(&f2, [3, 2, 1], [32, 2, 1], 256, &[&c, &d, &pbytes, &q]).unwrap();
    assert_eq!(s.launch(&f2, [1, 1, 1], [1, 1, 1], 0, &[&c]), Err(CudaError::InvalidValue), "one argument per parameter");
    // `q` is no device address: the kernel's store faults, as it would on a GPU, and the fault
    // is the context's from then on (sticky).
    assert_eq!(s.synchronize_blocking(), Err(CudaError::IllegalAddress));
    assert_eq!(dev.synchronize().wait(), Err(CudaError::IllegalAddress), "sticky");

    let recs = poll_until(HANG, "two launch records", || {
        let r = read_launch_log(&log);
        (r.len() >= 2).then_some(r)
    });
    for rec in &recs {
        assert_eq!(rec["kernel"], "mixed");
        assert_eq!(rec["grid"], serde_json::json!([3, 2, 1]));
        assert_eq!(rec["block"], serde_json::json!([32, 2, 1]));
        assert_eq!(rec["shared"], 256);
        assert_eq!(rec["params"].as_str().unwrap(), hex(&want), "packed bytes");
    }
    kernel::unregister_fatbin(r.handle);
}

#[test]
fn bad_configurations_fail_at_the_call_without_a_round_trip() {
    let Some(_) = fatbins() else { return };
    let m = mediator();
    let r = register_kernels().unwrap();
    let dev = Device::connect(m.socket()).unwrap();
    let ctx = dev.context().clone();
    let calls = || ctx.client().stats().calls.load(Relaxed);
    // Configuration errors come before the function is even loaded.
    for (g, b) in
        [([0, 1, 1], [1, 1, 1]), ([1, 1, 1], [1025, 1, 1]), ([1, 65536, 1], [1, 1, 1]), ([1, 1, 1], [1, 1, 65]), ([1, 1, 1], [32, 32, 2])]
    {
        assert_eq!(launch(&ctx, r.stubs["nop"], &cfg(g, b), &[]), Err(CudaError::InvalidConfiguration), "{g:?} {b:?}");
    }
    assert_eq!(calls(), 0, "nothing was sent");
    assert_eq!(launch(&ctx, fresh_address(), &cfg([1, 1, 1], [1, 1, 1]), &[]), Err(CudaError::InvalidDeviceFunction));
    assert_eq!(calls(), 0, "an unregistered function costs nothing either");
    let junk = register(&[0u8; 64], &["junk"], &[]);
    for _ in 0..2 {
        assert_eq!(launch(&ctx, junk.stubs["junk"], &cfg([1, 1, 1], [1, 1, 1]), &[]), Err(CudaError::InvalidKernelImage));
    }
    assert_eq!(calls(), 0, "a registration that is not a fatbin is refused before anything is sent");
    kernel::unregister_fatbin(junk.handle);

    // A launch over the function's own limit (`__launch_bounds__(128)`) fails at the call too.
    let f = ctx.function(r.stubs["bounded"]).unwrap();
    assert_eq!(f.info().max_threads_per_block, 128);
    let before = calls();
    let out = dev.alloc::<i32>(128).unwrap();
    let before = before + 1;
    let p = out.device_ptr();
    let args = [&p as *const u64 as *const c_void];
    assert_eq!(launch(&ctx, r.stubs["bounded"], &cfg([1, 1, 1], [256, 1, 1]), &args), Err(CudaError::LaunchOutOfResources));
    assert_eq!(launch(&ctx, r.stubs["bounded"], &cfg([1, 1, 1], [128, 1, 1]), &[]), Err(CudaError::InvalidValue), "missing arguments");
    assert_eq!(calls(), before);
    // A good launch is one command, and runs.
    launch(&ctx, r.stubs["bounded"], &cfg([1, 1, 1], [128, 1, 1]), &args).unwrap();
    assert_eq!(calls(), before + 1);
    assert_eq!(dev.synchronize().wait(), Ok(()));
    let mut got = vec![0i32; 128];
    dev.default_stream().download(&out, &mut got).unwrap();
    assert!(got.iter().all(|&v| v == 1), "bounded wrote 1 per thread");
    kernel::unregister_fatbin(r.handle);
}

#[test]
fn attributes_occupancy_and_symbols() {
    let Some(_) = fatbins() else { return };
    let m = mediator();
    let r = register_kernels().unwrap();
    let dev = Device::connect(m.socket()).unwrap();
    let ctx = dev.context().clone();
    let f = ctx.function(r.stubs["add"]).unwrap();
    let i = f.info();
    assert!(i.binary_version >= 80 && i.ptx_version >= 80, "{i:?}");
    assert_eq!(f.params().len(), 3);
    let rt0 = dev.blocking_round_trips();
    assert!(Arc::ptr_eq(&f, &ctx.function(r.stubs["add"]).unwrap()), "cached per context");
    assert_eq!(dev.blocking_round_trips(), rt0, "attributes after the first use are local");
    ctx.func_set_attribute(&f, 8, 2048).unwrap();
    assert_eq!(f.info().max_dynamic_shared_size_bytes, 2048, "the cache follows cudaFuncSetAttribute");
    assert_eq!(ctx.func_set_attribute(&f, 8, -1), Err(CudaError::InvalidValue));
    assert_eq!(ctx.func_set_attribute(&f, 3, 1), Err(CudaError::InvalidValue));
    let n = ctx.occupancy(&f, 256, 0, 0).unwrap();
    assert!(n >= 1);
    let rt1 = dev.blocking_round_trips();
    assert_eq!(ctx.occupancy(&f, 256, 0, 0).unwrap(), n);
    assert_eq!(dev.blocking_round_trips(), rt1, "occupancy is cached");
    assert_eq!(ctx.occupancy(&f, 0, 0, 0), Err(CudaError::InvalidValue));

    // Symbols: registered size, initial bytes, copies both ways, bounds.
    let (addr, size) = ctx.symbol(r.vars["table"]).unwrap();
    assert_eq!(size, 16);
    assert_ne!(addr, 0);
    let mut out = [0i32; 4];
    // SAFETY: `out` holds 16 bytes.
    unsafe { ctx.memcpy_from_symbol(out.as_mut_ptr().cast(), r.vars["table"], 16, 0, MemcpyKind::DeviceToHost, None).unwrap() };
    assert_eq!(out, [1, 2, 3, 4], "initialised from the module");
    let v = [9i32, 8];
    // SAFETY: `v` holds 8 bytes.
    unsafe { ctx.memcpy_to_symbol(r.vars["table"], v.as_ptr().cast(), 8, 8, MemcpyKind::HostToDevice, None).unwrap() };
    // SAFETY: as above.
    unsafe { ctx.memcpy_from_symbol(out.as_mut_ptr().cast(), r.vars["table"], 16, 0, MemcpyKind::Default, None).unwrap() };
    assert_eq!(out, [1, 2, 9, 8]);
    // SAFETY: as above; refused before any byte moves.
    let e = unsafe { ctx.memcpy_to_symbol(r.vars["table"], v.as_ptr().cast(), 8, 12, MemcpyKind::HostToDevice, None) };
    assert_eq!(e, Err(CudaError::InvalidValue), "past the end of the symbol");
    // SAFETY: as above.
    let e = unsafe { ctx.memcpy_to_symbol(r.vars["table"], v.as_ptr().cast(), 8, 0, MemcpyKind::DeviceToHost, None) };
    assert_eq!(e, Err(CudaError::InvalidMemcpyDirection));
    assert_eq!(ctx.symbol(fresh_address()), Err(CudaError::InvalidSymbol));
    assert_eq!(ctx.symbol(r.vars["scale"]).unwrap().1, 8);
    // The kernel sees what the symbol copies wrote: x[0] = scale[0] * table[0] = 3 * 1.
    let sc = [3.0f32, 0.0];
    // SAFETY: `sc` holds 8 bytes.
    unsafe { ctx.memcpy_to_symbol(r.vars["scale"], sc.as_ptr().cast(), 8, 0, MemcpyKind::HostToDevice, None).unwrap() };
    let x = dev.alloc::<f32>(1).unwrap();
    let xp = x.device_ptr();
    launch(&ctx, r.stubs["use_globals"], &cfg([1, 1, 1], [1, 1, 1]), &[&xp as *const u64 as *const c_void]).unwrap();
    let mut xv = [0f32];
    dev.default_stream().download(&x, &mut xv).unwrap();
    assert_eq!(xv, [3.0], "use_globals read __constant__ scale and __device__ table");
    // A symbol is device memory for copies and pointer queries.
    let buf = dev.alloc::<i32>(4).unwrap();
    dev.default_stream().copy(&buf, &buf).unwrap();
    // SAFETY: device to device: no host memory.
    unsafe { ctx.memcpy_to_symbol(r.vars["table"], buf.device_ptr() as *const u8, 16, 0, MemcpyKind::Default, Some(0)).unwrap() };
    assert_eq!(dev.synchronize().wait(), Ok(()));
    kernel::unregister_fatbin(r.handle);
}

#[test]
fn capture_state_machine() {
    let Some(_) = fatbins() else { return };
    let m = mediator();
    let r = register_kernels().unwrap();
    let dev = Device::connect(m.socket()).unwrap();
    let ctx = dev.context().clone();
    let buf = dev.alloc::<f32>(64).unwrap();
    let (p, a, n) = (buf.device_ptr(), 1.0f32, 64i32);
    let args = [&p as *const u64 as *const c_void, &a as *const f32 as *const c_void, &n as *const i32 as *const c_void];
    let blocking = dev.stream().unwrap();
    let nb = dev.stream_with(true, 0).unwrap();

    // The legacy stream cannot capture.
    assert_eq!(dev.default_stream().begin_capture(CaptureMode::Global), Err(CudaError::StreamCaptureUnsupported));
    assert_eq!(blocking.capture_status(), Ok(CaptureStatus::None));

    // A blocking stream captures; work on the legacy stream would depend on it implicitly.
    blocking.begin_capture(CaptureMode::Global).unwrap();
    assert_eq!(blocking.capture_status(), Ok(CaptureStatus::Active));
    assert_eq!(blocking.begin_capture(CaptureMode::Global), Err(CudaError::IllegalState));
    let mut lc = cfg([1, 1, 1], [64, 1, 1]);
    lc.stream = blocking.raw();
    launch(&ctx, r.stubs["add"], &lc, &args).unwrap();
    assert_eq!(dev.default_stream().memset(&buf, 0), Err(CudaError::StreamCaptureImplicit));
    assert_eq!(blocking.capture_status(), Ok(CaptureStatus::Invalidated));
    assert_eq!(launch(&ctx, r.stubs["add"], &lc, &args), Err(CudaError::StreamCaptureInvalidated));
    assert_eq!(blocking.end_capture().err(), Some(CudaError::StreamCaptureInvalidated));
    assert_eq!(blocking.capture_status(), Ok(CaptureStatus::None));
    assert_eq!(blocking.end_capture().err(), Some(CudaError::IllegalState), "not capturing");

    // What cannot be captured invalidates a capture: pageable copies, syncs.
    nb.begin_capture(CaptureMode::Relaxed).unwrap();
    nb.memset(&buf, 1).unwrap();
    assert_eq!(nb.upload(&buf, &[0.0f32; 64]), Err(CudaError::StreamCaptureUnsupported));
    assert_eq!(nb.capture_status(), Ok(CaptureStatus::Invalidated));
    assert_eq!(nb.end_capture().err(), Some(CudaError::StreamCaptureInvalidated));
    nb.begin_capture(CaptureMode::Relaxed).unwrap();
    assert_eq!(nb.synchronize_blocking(), Err(CudaError::StreamCaptureUnsupported));
    assert_eq!(nb.end_capture().err(), Some(CudaError::StreamCaptureInvalidated));
    nb.begin_capture(CaptureMode::Relaxed).unwrap();
    assert_eq!(dev.synchronize().wait(), Err(CudaError::StreamCaptureUnsupported), "a device sync during capture");
    assert_eq!(nb.end_capture().err(), Some(CudaError::StreamCaptureInvalidated));

    // Global mode prohibits cudaMalloc; relaxed does not.
    nb.begin_capture(CaptureMode::Global).unwrap();
    assert_eq!(dev.alloc::<u8>(16).err(), Some(CudaError::StreamCaptureUnsupported));
    assert_eq!(nb.end_capture().err(), Some(CudaError::StreamCaptureInvalidated));
    nb.begin_capture(CaptureMode::Relaxed).unwrap();
    let extra = dev.alloc::<u8>(16).unwrap();

    // A clean capture: launches and a memset become a graph; instantiate, update, launch.
    let mut lc = cfg([1, 1, 1], [64, 1, 1]);
    lc.stream = nb.raw();
    launch(&ctx, r.stubs["add"], &lc, &args).unwrap();
    nb.memset(&buf, 0).unwrap();
    launch(&ctx, r.stubs["add"], &lc, &args).unwrap();
    let graph = nb.end_capture().unwrap();
    assert_eq!(nb.capture_status(), Ok(CaptureStatus::None));
    let exec = graph.instantiate().unwrap();
    assert_eq!(exec.update(&graph), Ok(true), "same topology");
    nb.launch_graph(&exec).unwrap();
    assert_eq!(nb.synchronize_blocking(), Ok(()), "emu replays the graph: launch, memset, launch");
    assert!(session_stat(&m, "graph_launches") >= 1);
    drop((exec, graph, extra));

    // cudaThreadExchangeStreamCaptureMode: a relaxed thread may allocate during a global capture;
    // another (global-mode) thread may not while it lasts, but may during a thread-local one.
    nb.begin_capture(CaptureMode::Global).unwrap();
    assert_eq!(vgpu_streams::graph::exchange_thread_mode(CaptureMode::Relaxed), CaptureMode::Global);
    let extra = dev.alloc::<u8>(16).unwrap();
    assert_eq!(vgpu_streams::graph::exchange_thread_mode(CaptureMode::Global), CaptureMode::Relaxed);
    let d2 = dev.clone();
    assert_eq!(std::thread::spawn(move || d2.alloc::<u8>(16).err()).join().unwrap(), Some(CudaError::StreamCaptureUnsupported));
    assert!(nb.end_capture().is_err(), "the other thread's call invalidated the global capture");
    nb.begin_capture(CaptureMode::ThreadLocal).unwrap();
    let d2 = dev.clone();
    assert!(std::thread::spawn(move || d2.alloc::<u8>(16).is_ok()).join().unwrap());
    let graph = nb.end_capture().unwrap();
    drop((graph, extra));

    // A stream destroyed while capturing leaves no capture behind.
    let s3 = dev.stream().unwrap();
    s3.begin_capture(CaptureMode::Global).unwrap();
    drop(s3);
    dev.default_stream().memset(&buf, 0).unwrap();
    assert_eq!(dev.synchronize().wait(), Ok(()));
    kernel::unregister_fatbin(r.handle);
}

/// An nvcc 13 program with two translation units (two modules) linked against our
/// `libcudart.so.13`: it binds to version node `libcudart.so.13`, registers both modules at
/// load time, launches from one; the host sees only that one uploaded.
#[test]
fn an_nvcc_program_uploads_only_the_module_it_uses() {
    let Some(nvcc) = nvcc() else { return };
    let exe = vgpu_exe();
    let lib_dir = exe.parent().unwrap();
    if let Some(cargo) = std::env::var_os("CARGO") {
        let profile = match lib_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let st = Command::new(cargo)
            .args(["build", "--quiet", "-p", "vgpu-cudart13", "-p", "vgpu-runtime", "--profile", &profile, "--manifest-path"])
            .arg(workspace().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(lib_dir.parent().unwrap())
            .status()
            .expect("cargo build");
        assert!(st.success());
    }
    let tmp = TempDir::new("kernels-abi-prog");
    let link = tmp.path().join("lib");
    std::fs::create_dir_all(&link).unwrap();
    let ours = std::fs::canonicalize(lib_dir.join("libvgpu_cudart13.so")).unwrap();
    for n in ["libcudart.so", "libcudart.so.13"] {
        std::os::unix::fs::symlink(&ours, link.join(n)).unwrap();
    }
    let main = r#"
#include <cstdio>
#include <cuda_runtime.h>
extern "C" __global__ void add(float *x, float a, int n) { int i = threadIdx.x; if (i < n) x[i] += a; }
int main() {
  float *d = nullptr;
  if (cudaMalloc(&d, 256) != cudaSuccess) return 2;
  add<<<1, 64>>>(d, 1.0f, 64);
  if (cudaGetLastError() != cudaSuccess) return 3;
  add<<<1, 2048>>>(d, 1.0f, 64);
  if (cudaGetLastError() != cudaErrorInvalidConfiguration) return 4;
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) { printf("sync %d\n", e); return 5; }
  float h[64];
  if (cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost) != cudaSuccess) return 6;
  for (int i = 0; i < 64; i++) if (h[i] != 1.0f) { printf("h[%d] = %g\n", i, h[i]); return 6; }
  cudaFuncAttributes fa;
  if (cudaFuncGetAttributes(&fa, add) != cudaSuccess || fa.binaryVersion < 80) return 7;
  printf("ok\n");
  return 0;
}
"#;
    let other = "extern \"C\" __global__ void other(int *p) { *p = 7; }\n";
    std::fs::write(tmp.path().join("main.cu"), main).unwrap();
    std::fs::write(tmp.path().join("other.cu"), other).unwrap();
    let cu_lib = nvcc.parent().unwrap().parent().unwrap().join("lib");
    let bin = tmp.path().join("prog");
    let o = Command::new(nvcc)
        .args(["-cudart", "shared", "-gencode=arch=compute_80,code=[sm_80,compute_80]", "-o"])
        .arg(&bin)
        .arg(tmp.path().join("main.cu"))
        .arg(tmp.path().join("other.cu"))
        .arg("-L")
        .arg(&link)
        .arg("-L")
        .arg(&cu_lib)
        .output()
        .expect("nvcc");
    assert!(o.status.success(), "nvcc failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let syms = Command::new("readelf").args(["--dyn-syms", "-W"]).arg(&bin).output().expect("readelf");
    let syms = String::from_utf8_lossy(&syms.stdout);
    for s in ["__cudaRegisterFatBinary", "__cudaRegisterFunction", "__cudaLaunchKernel", "__cudaGetKernel", "cudaMalloc"] {
        assert!(syms.contains(&format!("{s}@libcudart.so.13")), "{s} is not bound to libcudart.so.13:\n{syms}");
    }
    let m = mediator();
    let out = Command::new(exe)
        .arg("run")
        .arg("--socket")
        .arg(m.socket())
        .arg("--lib-dir")
        .arg(lib_dir)
        .arg("--")
        .arg(&bin)
        .env("VGPU_LOG", "warn")
        .output()
        .expect("vgpu run");
    assert!(
        out.status.success(),
        "the program failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    assert_eq!(session_stat(&m, "modules_loaded"), 1, "two modules registered, one used: {}", stat(&m));
    assert_eq!(session_stat(&m, "launches"), 1, "the bad launch never reached the host");
}
