//! Runtime-level figures: the path the CUDA Runtime facade (`libcudart.so.12`/`.13`) takes, the
//! runtime's table (`vgpu_runtime_abi::rt` → `libvgpu.so`'s entries → `vgpu_streams::rt`; the
//! table is linked in-process here, as `loader::install` does, so the figures include the
//! indirect call, the panic guard and the out-pointer, but not a `dlopen`), each measured
//! beside its anchor in the same run:
//!
//! - a local call (`cudaGetLastError`) vs. an uncontended mutex lock/unlock (and a `getppid`
//!   syscall, for scale);
//! - an async enqueue (`cudaMemsetAsync` on a non-blocking stream) vs. the transport's own
//!   fire-and-forget enqueue (`Client::fire`) on the same session;
//! - a 4-byte `cudaMemcpy` H2D round trip vs. the transport null call on the same session (same
//!   spin policy: adaptive, 50 µs, on both sides), interleaved call by call;
//! - `cudaMemcpy` H2D/D2H bandwidth from pageable (`Vec`) and pinned (`cudaMallocHost`, in the
//!   data window) buffers vs. a plain `memcpy` of the same size.
//!
//! The process-wide context connects to `$VGPU_SOCKET` on first use; [`prepare`] starts the
//! mediator and sets the variables before any thread exists.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use vgpu_runtime_abi::rt;
use vgpu_streams::{Context, CudaError, MemcpyKind, RawStream, STREAM_NON_BLOCKING};
use vgpu_transport::wire::{req, MAX_WINDOW};

use super::{memcpy_gbps, percentiles, progress};
use vgpu_mediator::child::Mediator;

/// Window room asked for beyond the largest pinned buffer (staging is 4 MiB; the rest is slack).
const WINDOW_SLACK_MIB: u64 = 16;

fn cuda(what: &str) -> impl Fn(i32) -> String + '_ {
    move |code| match CudaError::from_code(code) {
        Some(e) => format!("{what}: {} ({})", e.name(), e.description()),
        None => format!("{what}: error {code}"),
    }
}

fn context_error(what: &str) -> impl Fn(CudaError) -> String + '_ {
    move |e| format!("{what}: {} ({})", e.name(), e.description())
}

const H2D: i32 = MemcpyKind::HostToDevice as i32;
const D2H: i32 = MemcpyKind::DeviceToHost as i32;

/// Start the mediator the runtime figures use (adaptive spin, the default 50 µs) and point the
/// process-wide context at it, with a data window big enough for `max_size` bytes of pinned
/// memory (capped at the protocol's 1 GiB).
///
/// Call this on the main thread before the process spawns any thread: it changes the
/// environment. Hand the mediator to [`Mediator::stop_at_exit`] when done.
pub(super) fn prepare(max_size: usize) -> Result<Mediator, String> {
    // Bound to this thread's life: the process-wide context stays connected until exit, and a
    // mediator stopped before that would show it a lost link (a warning at the end of the run).
    // The runtime's table, in-process: the figures are of the path libcudart's entries take.
    vgpu_runtime_abi::loader::install(&vgpu::TABLE);
    let m = Mediator::start_self_bound("emu", 50).map_err(|e| e.to_string())?;
    let window_mib = ((max_size as u64) >> 20).saturating_add(WINDOW_SLACK_MIB).min(MAX_WINDOW >> 20);
    // `set_var` is not thread-safe against concurrent `getenv` (from C code in another thread).
    // No other thread exists yet: `bench::run` calls this first, before any anchor spawns one,
    // and the context only reads these variables when the first `rt` call connects it.
    std::env::set_var("VGPU_SOCKET", m.socket());
    std::env::set_var("VGPU_WINDOW_MIB", window_mib.to_string());
    Ok(m)
}

/// Nanoseconds per call of `f`: the median over `batches` batches of `per_batch` calls.
fn ns_per_call(batches: usize, per_batch: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..per_batch {
        f();
    }
    let mut v: Vec<f64> = (0..batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / per_batch as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Enqueue cost: `ops` calls of `enqueue` in batches of `batch`, each batch followed by `sync`
/// (not timed). Returns (ns per enqueue, ns per enqueue including the syncs).
pub(super) fn enqueue_ns(
    ops: usize,
    batch: usize,
    mut enqueue: impl FnMut() -> Result<(), String>,
    mut sync: impl FnMut() -> Result<(), String>,
) -> Result<(f64, f64), String> {
    // Warm-up: one batch.
    for _ in 0..batch {
        enqueue()?;
    }
    sync()?;
    let mut enq = Duration::ZERO;
    let all = Instant::now();
    let mut done = 0;
    while done < ops {
        let n = batch.min(ops - done);
        let t = Instant::now();
        for _ in 0..n {
            enqueue()?;
        }
        enq += t.elapsed();
        sync()?;
        done += n;
    }
    let per = |d: Duration| d.as_secs_f64() * 1e9 / ops as f64;
    Ok((per(enq), per(all.elapsed())))
}

/// Best-of-`reps` GB/s of `rt::memcpy` H2D then D2H between `host` and `dev`.
///
/// # Safety
/// `host` must be valid for reads and writes of `len` bytes.
unsafe fn rt_bandwidth(dev: u64, host: *mut u8, len: usize, reps: usize) -> Result<(f64, f64), String> {
    let (mut h2d, mut d2h) = (Duration::MAX, Duration::MAX);
    for _ in 0..reps {
        let t = Instant::now();
        // SAFETY: `host` is valid for `len` bytes (caller); `dev` is an allocation of at least
        // `len` bytes; the copy is synchronous.
        unsafe { rt::memcpy(dev as *mut u8, host, len, H2D) }.map_err(cuda("cudaMemcpy H2D"))?;
        h2d = h2d.min(t.elapsed());
        let t = Instant::now();
        // SAFETY: as above; nothing else touches `host` during the call.
        unsafe { rt::memcpy(host, dev as *const u8, len, D2H) }.map_err(cuda("cudaMemcpy D2H"))?;
        d2h = d2h.min(t.elapsed());
    }
    let g = |d: Duration| len as f64 / d.as_secs_f64() / 1e9;
    Ok((g(h2d), g(d2h)))
}

/// The largest pinned buffer (at most `want` bytes, halving) the window holds.
fn largest_pinned(want: usize) -> (*mut u8, usize) {
    let mut size = want;
    while size >= 4096 {
        if let Ok(p) = rt::malloc_host(size) {
            return (p, size);
        }
        size /= 2;
    }
    // Leave no failed allocation behind as this thread's last error.
    let _ = rt::get_last_error();
    (std::ptr::null_mut(), 0)
}

/// Measure everything and add the `rt_*` keys (and their ratios under `ratios_rt`) to `out`.
pub(super) fn run(out: &mut Map<String, Value>, quick: bool, lat_iters: usize, max_size: usize) -> Result<(), String> {
    rt::get_device_count().map_err(cuda("connecting the process-wide context to $VGPU_SOCKET"))?;
    let ctx = Context::global().map_err(context_error("context"))?;
    let client = ctx.client();

    // A local call.
    let (batches, per_batch) = if quick { (21, 100_000) } else { (51, 200_000) };
    progress(&format!("runtime: local call (cudaGetLastError), {} calls, vs a mutex lock/unlock and a syscall", batches * per_batch));
    let local = ns_per_call(batches, per_batch, || {
        std::hint::black_box(rt::get_last_error());
    });
    let mutex = std::sync::Mutex::new(0u64);
    let lock_ns = ns_per_call(batches, per_batch, || {
        *std::hint::black_box(&mutex).lock().unwrap_or_else(|e| e.into_inner()) += 1;
    });
    let syscall_ns = ns_per_call(batches, per_batch / 10, || {
        // SAFETY: getppid has no preconditions and cannot fail.
        std::hint::black_box(unsafe { libc::getppid() });
    });
    out.insert("rt_get_last_error_ns".into(), json!(local));
    out.insert("anchor_mutex_lock_unlock_ns".into(), json!(lock_ns));
    out.insert("anchor_syscall_getppid_ns".into(), json!(syscall_ns));

    // Device memory for everything below.
    let dev = rt::malloc(max_size).map_err(cuda("cudaMalloc"))?;

    // Async enqueue.
    let ops = if quick { 200_000 } else { 2_000_000 };
    let batch = 256;
    progress(&format!("runtime: async enqueue (cudaMemsetAsync, non-blocking stream), {ops} enqueues, a sync every {batch}"));
    let stream: RawStream = rt::stream_create(STREAM_NON_BLOCKING, 0).map_err(cuda("cudaStreamCreateWithFlags"))?;
    let (memset_ns, memset_all_ns) = enqueue_ns(
        ops,
        batch,
        || rt::memset_async(dev, 0x11, 256, stream).map_err(cuda("cudaMemsetAsync")),
        || rt::stream_synchronize(stream).map_err(cuda("cudaStreamSynchronize")),
    )?;
    let (fire_ns, fire_all_ns) = enqueue_ns(
        ops,
        batch,
        || client.fire_req(0, req::Nop {}).map_err(|e| e.to_string()),
        || client.call_blocking_req(0, req::Nop {}).map(drop).map_err(|e| e.to_string()),
    )?;
    out.insert("rt_memset_async_enqueue_ns".into(), json!(memset_ns));
    out.insert("rt_memset_async_with_syncs_ns".into(), json!(memset_all_ns));
    out.insert("transport_fire_enqueue_ns".into(), json!(fire_ns));
    out.insert("transport_fire_with_syncs_ns".into(), json!(fire_all_ns));

    // 4-byte cudaMemcpy H2D round trip, interleaved with transport null calls on the same session.
    progress(&format!("runtime: 4-byte cudaMemcpy H2D round trip vs transport null call, {lat_iters} each, interleaved"));
    let src = [0xa5u8; 4];
    let h2d = || {
        // SAFETY: `src` is a live 4-byte array; `dev` holds at least 4 bytes; synchronous copy.
        unsafe { rt::memcpy(dev as *mut u8, src.as_ptr(), src.len(), H2D) }.map_err(cuda("cudaMemcpy H2D 4 B"))
    };
    let null = || client.call_blocking_req(0, req::Nop {}).map(drop).map_err(|e| e.to_string());
    for _ in 0..200 {
        null()?;
        h2d()?;
    }
    let (mut lat_null, mut lat_cp) = (Vec::with_capacity(lat_iters), Vec::with_capacity(lat_iters));
    for _ in 0..lat_iters {
        let t = Instant::now();
        null()?;
        lat_null.push(t.elapsed());
        let t = Instant::now();
        h2d()?;
        lat_cp.push(t.elapsed());
    }
    let (n50, n99) = percentiles(lat_null);
    let (c50, c99) = percentiles(lat_cp);
    out.insert("rt_null_call_p50_us".into(), json!(n50));
    out.insert("rt_null_call_p99_us".into(), json!(n99));
    out.insert("rt_memcpy_h2d_4b_p50_us".into(), json!(c50));
    out.insert("rt_memcpy_h2d_4b_p99_us".into(), json!(c99));

    // Bandwidth: pageable vs pinned, each next to memcpy of the same size.
    let (pinned, pinned_cap) = largest_pinned(max_size);
    out.insert("rt_pinned_max_bytes".into(), json!(pinned_cap));
    out.insert("rt_window_bytes".into(), json!(client.region().layout().window_len));
    if pinned_cap < max_size {
        progress(&format!(
            "runtime: pinned memory up to {} only (the data window holds no more); larger sizes are pageable only",
            vgpu_mediator::serve::human_bytes(pinned_cap as u64)
        ));
    }
    if !pinned.is_null() {
        // SAFETY: `pinned` is a live allocation of `pinned_cap` bytes; fault its pages in here.
        unsafe { std::ptr::write_bytes(pinned, 0x3c, pinned_cap) };
    }
    let mut pageable = vec![0x5au8; max_size];
    let mut sizes = Vec::new();
    let mut s = 4096usize;
    while s <= max_size {
        sizes.push(s);
        s *= 4;
    }
    for extra in [64 << 20, max_size] {
        if extra <= max_size && !sizes.contains(&extra) {
            sizes.push(extra);
        }
    }
    sizes.sort();
    let mut rows = Vec::new();
    for &size in &sizes {
        let reps = if size <= 1 << 20 {
            50
        } else if size <= 16 << 20 {
            8
        } else {
            3
        };
        progress(&format!("runtime bandwidth {} ({reps} reps), pageable and pinned", vgpu_mediator::serve::human_bytes(size as u64)));
        // SAFETY: `pageable` holds `max_size >= size` bytes and is not otherwise used meanwhile.
        let (pg_h2d, pg_d2h) = unsafe { rt_bandwidth(dev, pageable.as_mut_ptr(), size, reps)? };
        let pinned_bw = if size <= pinned_cap {
            // SAFETY: `pinned` is a live pinned allocation of `pinned_cap >= size` bytes.
            Some(unsafe { rt_bandwidth(dev, pinned, size, reps)? })
        } else {
            None
        };
        let mcs = memcpy_gbps(size, reps.min(10));
        rows.push(json!({
            "bytes": size,
            "pageable_h2d_gbps": pg_h2d,
            "pageable_d2h_gbps": pg_d2h,
            "pinned_h2d_gbps": pinned_bw.map(|b| b.0),
            "pinned_d2h_gbps": pinned_bw.map(|b| b.1),
            "memcpy_gbps": mcs,
        }));
        let tag = if size == 64 << 20 {
            Some("64mib".to_string())
        } else if size == max_size {
            Some(format!("{}mib", size >> 20))
        } else {
            None
        };
        if let Some(tag) = tag {
            out.insert(format!("rt_pageable_h2d_{tag}_gbps"), json!(pg_h2d));
            out.insert(format!("rt_pageable_d2h_{tag}_gbps"), json!(pg_d2h));
            if let Some((h, d)) = pinned_bw {
                out.insert(format!("rt_pinned_h2d_{tag}_gbps"), json!(h));
                out.insert(format!("rt_pinned_d2h_{tag}_gbps"), json!(d));
            }
            out.insert(format!("rt_memcpy_{tag}_gbps"), json!(mcs));
        }
    }
    out.insert("rt_bandwidth".into(), Value::Array(rows));

    if !pinned.is_null() {
        rt::free_host(pinned).map_err(cuda("cudaFreeHost"))?;
    }
    rt::stream_destroy(stream).map_err(cuda("cudaStreamDestroy"))?;
    rt::free(dev).map_err(cuda("cudaFree"))?;
    rt::device_synchronize().map_err(cuda("cudaDeviceSynchronize"))?;

    let f = |k: &str| out.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let ratios = json!({
        "rt_get_last_error_vs_mutex": f("rt_get_last_error_ns") / f("anchor_mutex_lock_unlock_ns"),
        "rt_memset_async_vs_fire": f("rt_memset_async_enqueue_ns") / f("transport_fire_enqueue_ns"),
        "rt_memcpy_h2d_4b_vs_null_call": f("rt_memcpy_h2d_4b_p50_us") / f("rt_null_call_p50_us"),
        "rt_pageable_h2d_64mib_vs_memcpy": f("rt_pageable_h2d_64mib_gbps") / f("rt_memcpy_64mib_gbps"),
        "rt_pageable_d2h_64mib_vs_memcpy": f("rt_pageable_d2h_64mib_gbps") / f("rt_memcpy_64mib_gbps"),
        "rt_pinned_h2d_64mib_vs_memcpy": f("rt_pinned_h2d_64mib_gbps") / f("rt_memcpy_64mib_gbps"),
        "rt_pinned_d2h_64mib_vs_memcpy": f("rt_pinned_d2h_64mib_gbps") / f("rt_memcpy_64mib_gbps"),
    });
    out.insert("ratios_rt".into(), ratios);
    Ok(())
}

/// The runtime section of the table.
pub(super) fn render(v: &Value, s: &mut String) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let r = |k: &str| v["ratios_rt"][k].as_f64().unwrap_or(f64::NAN);
    s.push_str("\nruntime (vgpu_streams::rt, what libcudart calls; adaptive spin 50 us)\n");
    s.push_str(&format!("{:<44} {:>10} {:>12} {:>12}\n", "per call", "ns", "ratio", "target"));
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12} {:>12}\n",
        "anchor: mutex lock+unlock (uncontended)",
        f("anchor_mutex_lock_unlock_ns"),
        "1.00",
        ""
    ));
    s.push_str(&format!("{:<44} {:>10.1} {:>12} {:>12}\n", "anchor: syscall (getppid)", f("anchor_syscall_getppid_ns"), "", ""));
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12} {:>12}\n",
        "cudaGetLastError (local)",
        f("rt_get_last_error_ns"),
        format!("{:.2} x mtx", r("rt_get_last_error_vs_mutex")),
        "<= 50 ns"
    ));
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12} {:>12}\n",
        "anchor: transport fire (Nop enqueue)",
        f("transport_fire_enqueue_ns"),
        "1.00",
        ""
    ));
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12} {:>12}\n",
        "cudaMemsetAsync enqueue (non-blocking stream)",
        f("rt_memset_async_enqueue_ns"),
        format!("{:.2} x fire", r("rt_memset_async_vs_fire")),
        "<= 500 ns"
    ));
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12} {:>12}\n",
        "  (same, syncs every 256 included)",
        f("rt_memset_async_with_syncs_ns"),
        "",
        ""
    ));
    s.push_str(&format!("\n{:<44} {:>10} {:>10} {:>12}\n", "round trip", "p50 (us)", "p99 (us)", "ratio p50"));
    s.push_str(&format!(
        "{:<44} {:>10.2} {:>10.2} {:>12}\n",
        "anchor: transport null call, same session",
        f("rt_null_call_p50_us"),
        f("rt_null_call_p99_us"),
        "1.00"
    ));
    s.push_str(&format!(
        "{:<44} {:>10.2} {:>10.2} {:>12}\n",
        "cudaMemcpy H2D 4 B",
        f("rt_memcpy_h2d_4b_p50_us"),
        f("rt_memcpy_h2d_4b_p99_us"),
        format!("{:.2} x null", r("rt_memcpy_h2d_4b_vs_null_call"))
    ));
    let pinned_cap = v["rt_pinned_max_bytes"].as_u64().unwrap_or(0);
    s.push_str(&format!(
        "\ncudaMemcpy GB/s (pageable: Vec; pinned: cudaMallocHost, window {})\n",
        vgpu_mediator::serve::human_bytes(v["rt_window_bytes"].as_u64().unwrap_or(0))
    ));
    s.push_str(&format!(
        "{:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}\n",
        "size", "pg H2D", "pg D2H", "pin H2D", "pin D2H", "memcpy", "pgH/mc", "pgD/mc", "pinH/mc", "pinD/mc"
    ));
    for b in v["rt_bandwidth"].as_array().into_iter().flatten() {
        let g = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
        let mc = g("memcpy_gbps");
        let opt = |x: f64, w: usize| if x.is_nan() { format!("{:>w$}", "-") } else { format!("{x:>w$.2}") };
        s.push_str(&format!(
            "{:>10} {:>9.2} {:>9.2} {} {} {:>9.2} {:>8.2} {:>8.2} {} {}\n",
            vgpu_mediator::serve::human_bytes(b["bytes"].as_u64().unwrap_or(0)),
            g("pageable_h2d_gbps"),
            g("pageable_d2h_gbps"),
            opt(g("pinned_h2d_gbps"), 9),
            opt(g("pinned_d2h_gbps"), 9),
            mc,
            g("pageable_h2d_gbps") / mc,
            g("pageable_d2h_gbps") / mc,
            opt(g("pinned_h2d_gbps") / mc, 8),
            opt(g("pinned_d2h_gbps") / mc, 8),
        ));
    }
    let largest = v["rt_bandwidth"].as_array().and_then(|a| a.last()).and_then(|b| b["bytes"].as_u64()).unwrap_or(0);
    if pinned_cap < largest {
        s.push_str(&format!(
            "pinned: measured up to {} only (the largest buffer the data window holds)\n",
            vgpu_mediator::serve::human_bytes(pinned_cap)
        ));
    }
}
