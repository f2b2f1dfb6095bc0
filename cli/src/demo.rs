//! `vgpu demo`: the README's first command. Starts a mediator on `emu` as a child process,
//! runs a guest workload through the real transport, and shows what it did and how fast; then
//! kernels: saxpy, nvcc's PTX of `demo/saxpy.cu` in a PTX-only fat binary (as Ollama's CUDA 13
//! build ships its kernels), loaded and launched through the async Rust API, computed by emu's
//! PTX interpreter and checked element by element, the launches read back from the mediator's
//! launch log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vgpu_streams::{CudaError, Device};
use vgpu_transport::wire::{req, DeviceInfo, Win};
use vgpu_transport::{Client, ClientConfig};

use vgpu_mediator::child::Mediator;
use vgpu_mediator::serve::{human_bytes, query_stat, render_stat};

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("demo check failed: {what}"))
    }
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// A private folder for the demo's launch log and module cache, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run the demo.
pub fn run() -> Result<(), String> {
    let tmp = TempDir(std::env::temp_dir().join(format!("vgpu-demo-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0).map_err(|e| format!("creating {}: {e}", tmp.0.display()))?;
    let log = tmp.0.join("launches.jsonl");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Its own launch log and module cache (never the user's ~/.cache).
    let extra = ["--launch-log".into(), log.clone().into_os_string(), "--module-cache".into(), tmp.0.join("modules").into_os_string()];
    let m = Mediator::start_with_args(&exe, "emu", 50, &extra).map_err(|e| e.to_string())?;
    println!("vgpu demo: mediator pid {} on {} (executor emu)", m.pid(), m.socket().display());
    let c = Client::connect(m.socket(), ClientConfig::default()).map_err(|e| e.to_string())?;
    let e = |e: vgpu_transport::Error| e.to_string();

    // Device.
    let info_off = c.staging().rest(c.region().layout().window_len).0;
    c.call_blocking_req(0, req::DeviceInfo { out: Win::new(info_off, 512) }).map_err(e)?;
    let mut raw = [0u8; 512];
    c.region().read_window(info_off, &mut raw).map_err(e)?;
    // SAFETY: DeviceInfo is repr(C), 512 bytes, made only of integers and byte arrays, so any
    // 512 bytes are a valid value; read_unaligned copes with the array's alignment.
    let info: DeviceInfo = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let vgpu_transport::wire::reply::MemGetInfo { free, total } = c.call_blocking_req(0, req::MemGetInfo {}).map_err(e)?;
    println!(
        "device: {} | {} total, {} free | window {}",
        info.name_str(),
        human_bytes(total),
        human_bytes(free),
        human_bytes(c.region().layout().window_len)
    );

    // Memory: 64 MiB up, memset a slice, device-to-device copy, down again; verify every byte.
    const N: usize = 64 << 20;
    let a = c.call_blocking_req(0, req::MemAlloc { size: N as u64 }).map_err(e)?.ptr;
    let b = c.call_blocking_req(0, req::MemAlloc { size: N as u64 }).map_err(e)?.ptr;
    let src: Vec<u8> = (0..N).map(|i| (i * 131 % 251) as u8).collect();
    // The first pass touches fresh pages (device memory, the host buffer): time the second.
    let t = Instant::now();
    c.copy_to_device(a, &src, 0).map_err(e)?;
    let h2d_cold = t.elapsed();
    let t = Instant::now();
    c.copy_to_device(a, &src, 0).map_err(e)?;
    let h2d = t.elapsed();
    c.fire_req(0, req::Memset { dst: a + 4096, value: 0xAB, len: 4096 }).map_err(e)?;
    c.fire_req(0, req::MemcpyDtoD { dst: b, src: a, len: N as u64 }).map_err(e)?;
    let mut back = vec![0u8; N];
    let t = Instant::now();
    c.copy_from_device(b, &mut back, 0).map_err(e)?;
    let d2h_cold = t.elapsed();
    let t = Instant::now();
    c.copy_from_device(b, &mut back, 0).map_err(e)?;
    let d2h = t.elapsed();
    let mut expect = src.clone();
    expect[4096..8192].fill(0xAB);
    check(back == expect, "64 MiB round trip through H2D, memset, D2D and D2H")?;
    if let Some(err) = c.take_deferred_error() {
        return Err(format!("deferred error: {err}"));
    }
    println!(
        "memory: 2 x {} allocated; H2D {:.2} GB/s, D2H {:.2} GB/s (first touch of fresh pages: {:.2} / {:.2}); window pipeline, {} chunks of {}; 64 MiB verified byte for byte",
        human_bytes(N as u64),
        gbps(N, h2d),
        gbps(N, d2h),
        gbps(N, h2d_cold),
        gbps(N, d2h_cold),
        c.staging().count(),
        human_bytes(c.staging().chunk_len())
    );

    // Streams and events: four streams, work on each, events timing stream 1.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let flags = vgpu_transport::wire::stream_flags::NON_BLOCKING;
        streams.push(c.call_blocking_req(0, req::StreamCreate { flags, priority: 0 }).map_err(e)?.stream as u32);
    }
    let ev0 = c.call_blocking_req(0, req::EventCreate { flags: 0 }).map_err(e)?.event;
    let ev1 = c.call_blocking_req(0, req::EventCreate { flags: 0 }).map_err(e)?.event;
    c.fire_req(streams[0], req::EventRecord { event: ev0 }).map_err(e)?;
    for (i, s) in streams.iter().enumerate() {
        let off = (i as u64) * (N as u64 / 4);
        c.fire_req(*s, req::Memset { dst: a + off, value: i as u8, len: N as u64 / 4 }).map_err(e)?;
    }
    c.fire_req(streams[0], req::EventRecord { event: ev1 }).map_err(e)?;
    c.call_blocking_req(0, req::EventSync { event: ev1 }).map_err(e)?;
    let ms = c.call_blocking_req(0, req::EventElapsed { start: ev0, end: ev1 }).map_err(e)?.ms;
    c.call_blocking_req(0, req::DeviceSync {}).map_err(e)?;
    let mut probe = [0u8; 4];
    for (i, _) in streams.iter().enumerate() {
        c.copy_from_device(a + (i as u64) * (N as u64 / 4), &mut probe, 0).map_err(e)?;
        check(probe == [i as u8; 4], "memset on each stream")?;
    }
    println!("streams: 4 streams x 16 MiB memset, concurrent; stream 0 took {:.3} ms between its events", ms);

    // Latency and throughput.
    let mut lat = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        c.call_blocking_req(0, req::Nop {}).map_err(e)?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let ops = 100_000u32;
    let t = Instant::now();
    let mut q = std::collections::VecDeque::with_capacity(256);
    for _ in 0..ops {
        if q.len() == 256 {
            let tk: vgpu_transport::client::Ticket = q.pop_front().expect("non-empty");
            tk.wait().map_err(e)?;
        }
        q.push_back(c.submit_req(0, req::Nop {}).map_err(e)?);
    }
    for tk in q {
        tk.wait().map_err(e)?;
    }
    let el = t.elapsed();
    println!(
        "latency: null call p50 {:.2} us, p99 {:.2} us (adaptive spin) | async: {:.2} M ops/s with 256 in flight",
        lat[lat.len() / 2].as_secs_f64() * 1e6,
        lat[lat.len() * 99 / 100].as_secs_f64() * 1e6,
        ops as f64 / el.as_secs_f64() / 1e6
    );
    for s in streams {
        c.call_blocking_req(0, req::StreamDestroy { stream: s.into() }).map_err(e)?;
    }
    c.call_blocking_req(0, req::MemFree { ptr: a }).map_err(e)?;
    c.call_blocking_req(0, req::MemFree { ptr: b }).map_err(e)?;
    let st = c.stats();
    use vgpu_transport::sync::Ordering::Relaxed;
    println!(
        "guest: {} calls, {} blocking, {} spin hits, {} parks, {} interrupts, {} doorbells",
        st.calls.load(Relaxed),
        st.blocking_waits.load(Relaxed),
        st.spin_hits.load(Relaxed),
        st.parks.load(Relaxed),
        st.interrupts.load(Relaxed),
        st.doorbells.load(Relaxed)
    );
    kernels(&m, &log)?;
    println!("\n$ vgpu stat\n{}", render_stat(&query_stat(m.socket())?));
    println!("demo OK");
    Ok(())
}

/// `extern "C" __global__ void saxpy(float a, const float *x, float *y, int n)` (demo/saxpy.cu).
const SAXPY: &str = "saxpy";
/// nvcc 13's PTX of demo/saxpy.cu for compute_75 (the command is in saxpy.cu).
const SAXPY_PTX: &str = include_str!("demo/saxpy.ptx");

/// The kernel section: load saxpy, launch it on real device buffers, check what emu computed,
/// show the launch log, a second session loading by hash, and the counters.
fn kernels(m: &Mediator, log: &Path) -> Result<(), String> {
    let cuda = |what: &'static str| move |e: CudaError| format!("{what}: {} ({})", e.name(), e.description());
    println!("\nkernels (emu runs them on its PTX interpreter)");
    let image = vgpu_fatbin::synth::ptx_fatbin(&[(75, SAXPY_PTX)]);
    let dev = Device::connect(m.socket()).map_err(cuda("connecting"))?;
    let t = Instant::now();
    let module = dev.load_module(&image).map_err(cuda("load_module"))?;
    let f = module.function(SAXPY).map_err(cuda("Module::function"))?;
    let load = t.elapsed();
    check(dev.context().module_counts() == (0, 1), "the module was uploaded (the host's cache was empty)")?;
    let layout: Vec<String> = f.params().iter().map(|p| format!("{}+{}", p.offset, p.size)).collect();
    println!(
        "module: saxpy, nvcc's compute_75 PTX in a PTX-only fat binary ({}), uploaded, parsed and lowered in {:.0} us; \
         the host's parameter layout from the PTX signature: [{}], {} bytes",
        human_bytes(image.len() as u64),
        load.as_secs_f64() * 1e6,
        layout.join(", "),
        f.info().param_bytes
    );
    check(layout == ["0+4", "8+8", "16+8", "24+4"], "saxpy's layout as nvcc would give it")?;

    const N: usize = 1 << 20;
    let x = dev.alloc::<f32>(N).map_err(cuda("alloc x"))?;
    let y = dev.alloc::<f32>(N).map_err(cuda("alloc y"))?;
    let s = dev.stream().map_err(cuda("stream"))?;
    let xs: Vec<f32> = (0..N).map(|i| i as f32).collect();
    let ys = vec![1.0f32; N];
    s.upload(&x, &xs).map_err(cuda("upload x"))?;
    s.upload(&y, &ys).map_err(cuda("upload y"))?;
    let n = N as i32;
    let coefficients = [2.0f32, 0.5, -1.0];
    let grid = [(N / 256) as u32, 1, 1];
    let t = Instant::now();
    for a in coefficients {
        s.launch(&f, grid, [256, 1, 1], 0, &[&a, &x, &y, &n]).map_err(cuda("launch"))?;
    }
    let enqueued = t.elapsed();
    s.synchronize_blocking().map_err(cuda("cudaStreamSynchronize"))?;
    let ran = t.elapsed();
    let mut back = vec![0f32; N];
    s.download(&y, &mut back).map_err(cuda("download y"))?;
    // The same arithmetic on the CPU, in the kernel's order: y = fma(x, a, y) per launch.
    let mut want = ys.clone();
    for a in coefficients {
        for (w, xv) in want.iter_mut().zip(&xs) {
            *w = xv.mul_add(a, *w);
        }
    }
    let wrong = back.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
    check(wrong == 0, &format!("saxpy's result: {wrong} of {N} elements differ from the CPU's"))?;
    let st = query_stat(m.socket())?;
    let warp_insts: u64 = st["sessions"].as_array().into_iter().flatten().map(|s| s["kernel_warp_insts"].as_u64().unwrap_or(0)).sum();
    println!(
        "launched saxpy 3 times on 2 x 4 MiB device buffers, grid {} x 256 threads: enqueued in {:.0} us, computed by the sync in {:.1} ms \
         ({warp_insts} warp instructions of 32 lanes: {:.0} M lane-instructions/s on this CPU)",
        grid[0],
        enqueued.as_secs_f64() * 1e6,
        ran.as_secs_f64() * 1e3,
        warp_insts as f64 * 32.0 / ran.as_secs_f64() / 1e6
    );
    println!("y read back: all {N} elements equal the CPU's y = 2x+1, then 0.5x+y, then -x+y (bit for bit), e.g. y[1000] = {}", back[1000]);

    // The launch log: one JSON line per launch, written by the host.
    let deadline = Instant::now() + Duration::from_secs(5);
    let recs = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let recs: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if recs.len() >= coefficients.len() || Instant::now() > deadline {
            break recs;
        }
        // The records are written before the launches complete; this only covers a slow disk.
        std::thread::sleep(Duration::from_millis(5));
    };
    check(recs.len() == coefficients.len(), "one launch log record per launch")?;
    println!("launch log ({}):", log.display());
    for (rec, a) in recs.iter().zip(coefficients) {
        let hex = rec["params"].as_str().unwrap_or("");
        let bytes: Vec<u8> = (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
        let field = |at: usize, len: usize| bytes.get(at..at + len).map(|b| b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)));
        let (pa, px, py, pn) = (field(0, 4), field(8, 8), field(16, 8), field(24, 4));
        check(
            rec["kernel"] == SAXPY
                && pa == Some(u64::from(a.to_bits()))
                && px == Some(x.device_ptr())
                && py == Some(y.device_ptr())
                && pn == Some(N as u64),
            "the recorded parameters are the ones passed",
        )?;
        println!(
            "  #{} {} grid {} block {} shared {}: a = {}, x = {:#x}, y = {:#x}, n = {}",
            rec["seq"],
            rec["kernel"].as_str().unwrap_or("?"),
            rec["grid"],
            rec["block"],
            rec["shared"],
            f32::from_bits(pa.unwrap_or(0) as u32),
            px.unwrap_or(0),
            py.unwrap_or(0),
            pn.unwrap_or(0)
        );
    }

    // A second session (another guest process, say) finds the module in the host's cache.
    let dev2 = Device::connect(m.socket()).map_err(cuda("connecting a second session"))?;
    let t = Instant::now();
    let module2 = dev2.load_module(&image).map_err(cuda("load_module (second session)"))?;
    module2.function(SAXPY).map_err(cuda("Module::function (second session)"))?;
    let by_hash = t.elapsed();
    check(dev2.context().module_counts() == (1, 0), "the second session loaded the module by hash")?;
    println!(
        "a second session loaded the same module by hash from the host's module cache in {:.0} us (nothing uploaded)",
        by_hash.as_secs_f64() * 1e6
    );

    let st = query_stat(m.socket())?;
    let sum = |k: &str| st["sessions"].as_array().into_iter().flatten().map(|s| s[k].as_u64().unwrap_or(0)).sum::<u64>();
    check(sum("launches") == coefficients.len() as u64, "the host counted the launches")?;
    check(sum("kernel_faults") == 0, "no kernel faulted")?;
    println!(
        "host counters: {} launches run ({} warp instructions), {} modules loaded, {} of them from the cache",
        sum("launches"),
        sum("kernel_warp_insts"),
        sum("modules_loaded"),
        sum("modules_cached")
    );
    drop((f, module, module2, x, y, s));
    Ok(())
}
