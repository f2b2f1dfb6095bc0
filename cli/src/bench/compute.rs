//! Kernel execution on `emu`'s PTX interpreter, each figure beside its anchor measured in the same
//! run:
//!
//! - lane-instructions per second for saxpy (memory-bound), a shared-memory reduction with
//!   barriers, and a 16 x 16 tiled GEMM (nvcc's PTX of `compute.cu`), through the Rust API on an
//!   emu mediator, each beside a native Rust loop doing the same arithmetic on the same data (the
//!   ratio is emu's time over the loop's); every result is checked against the loop's;
//! - the round trip of an empty one-warp kernel (launch + stream sync) beside the null call;
//! - module load cost in this process: parsing the declarations of a generated module of many
//!   kernels (per million PTX lines), lowering one kernel on first lookup, and the memory of a
//!   lowered kernel.
//!
//! Lane-instructions are the host's count of warp instructions (`vgpu stat`'s
//! `kernel_warp_insts`) times 32: every warp of these launches is full.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use vgpu_streams::{CudaError, Device, Function, Stream};
use vgpu_transport::wire::req;

use super::{percentiles, progress};
use vgpu_mediator::child::Mediator;

/// nvcc 13's PTX of compute.cu for compute_75 (the command is in compute.cu).
const PTX: &str = include_str!("compute.ptx");

fn cuda(what: &str) -> impl Fn(CudaError) -> String + '_ {
    move |e| format!("{what}: {} ({})", e.name(), e.description())
}

/// The host's warp-instruction count, all sessions.
fn warp_insts(m: &Mediator) -> Result<u64, String> {
    let st = vgpu_mediator::serve::query_stat(m.socket())?;
    Ok(st["sessions"].as_array().into_iter().flatten().map(|s| s["kernel_warp_insts"].as_u64().unwrap_or(0)).sum())
}

/// Best of `reps` runs of `f`.
fn best(reps: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<Duration, String> {
    let mut b = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        b = b.min(t.elapsed());
    }
    Ok(b)
}

/// One kernel's figures: `(emu time, lane-instructions of one run, native time)`.
struct Figure {
    emu: Duration,
    lane_insts: u64,
    native: Duration,
}

impl Figure {
    fn insert(&self, out: &mut Map<String, Value>, name: &str) {
        let lps = self.lane_insts as f64 / self.emu.as_secs_f64();
        out.insert(format!("compute_{name}_emu_ms"), json!(self.emu.as_secs_f64() * 1e3));
        out.insert(format!("compute_{name}_native_ms"), json!(self.native.as_secs_f64() * 1e3));
        out.insert(format!("compute_{name}_lane_insts"), json!(self.lane_insts));
        out.insert(format!("compute_{name}_lane_insts_per_s"), json!(lps));
        out.insert(format!("compute_{name}_vs_native"), json!(self.emu.as_secs_f64() / self.native.as_secs_f64()));
    }
}

/// Run `launch` then sync, `reps` times; the lane-instructions of one run from the host's count.
fn time_kernel(m: &Mediator, s: &Stream, reps: usize, launch: &dyn Fn() -> Result<(), CudaError>) -> Result<(Duration, u64), String> {
    // A warm-up run, which also gives the instruction count.
    let w0 = warp_insts(m)?;
    launch().map_err(cuda("launch"))?;
    s.synchronize_blocking().map_err(cuda("cudaStreamSynchronize"))?;
    let lane_insts = (warp_insts(m)? - w0) * 32;
    let t = best(reps, || {
        launch().map_err(cuda("launch"))?;
        s.synchronize_blocking().map_err(cuda("cudaStreamSynchronize"))
    })?;
    Ok((t, lane_insts))
}

pub(super) fn run(out: &mut Map<String, Value>, quick: bool, lat_iters: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let m = Mediator::start_with_args(&exe, "emu", 50, &["--module-cache".into(), "none".into()]).map_err(|e| e.to_string())?;
    let dev = Device::connect(m.socket()).map_err(cuda("connecting"))?;
    let s = dev.stream_with(true, 0).map_err(cuda("cudaStreamCreate"))?;
    let module = dev.load_module(&vgpu_fatbin::synth::ptx_fatbin(&[(75, PTX)])).map_err(cuda("load_module"))?;
    let f = |name: &str| -> Result<Function, String> { module.function(name).map_err(cuda("Module::function")) };
    let reps = if quick { 2 } else { 3 };
    out.insert("compute_threads".into(), json!(std::thread::available_parallelism().map_or(1, |n| n.get())));

    // saxpy
    let n: usize = if quick { 1 << 18 } else { 1 << 21 };
    progress(&format!("kernels on emu: saxpy over {n} floats, beside a native loop"));
    let xs: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.25).collect();
    let ys: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let (x, y) = (dev.alloc::<f32>(n).map_err(cuda("alloc"))?, dev.alloc::<f32>(n).map_err(cuda("alloc"))?);
    s.upload(&x, &xs).map_err(cuda("upload"))?;
    s.upload(&y, &ys).map_err(cuda("upload"))?;
    let saxpy = f("saxpy")?;
    let (a, ni) = (1.5f32, n as i32);
    let runs = 1 + reps;
    let (emu, lane_insts) = time_kernel(&m, &s, reps, &|| s.launch(&saxpy, [(n / 256) as u32, 1, 1], [256, 1, 1], 0, &[&a, &x, &y, &ni]))?;
    let mut native_y = ys.clone();
    let mut want = ys.clone();
    for _ in 0..runs {
        for (w, xv) in want.iter_mut().zip(&xs) {
            *w = xv.mul_add(a, *w);
        }
    }
    let native = best(reps, || {
        for (w, xv) in native_y.iter_mut().zip(black_box(&xs)) {
            *w = xv.mul_add(a, *w);
        }
        black_box(&native_y);
        Ok(())
    })?;
    let mut got = vec![0f32; n];
    s.download(&y, &mut got).map_err(cuda("download"))?;
    if got.iter().zip(&want).any(|(g, w)| g.to_bits() != w.to_bits()) {
        return Err("saxpy on emu differs from the native loop".into());
    }
    Figure { emu, lane_insts, native }.insert(out, "saxpy");

    // block_sum
    let blocks = 64usize;
    progress(&format!("kernels on emu: a shared-memory reduction of {n} floats ({blocks} blocks x 256, barriers), beside a native sum"));
    let sums = dev.alloc::<f32>(blocks).map_err(cuda("alloc"))?;
    let block_sum = f("block_sum")?;
    let (emu, lane_insts) = time_kernel(&m, &s, reps, &|| s.launch(&block_sum, [blocks as u32, 1, 1], [256, 1, 1], 0, &[&x, &sums, &ni]))?;
    let mut total = 0f64;
    let native = best(reps, || {
        total = black_box(&xs).iter().map(|&v| f64::from(v)).sum();
        Ok(())
    })?;
    let mut part = vec![0f32; blocks];
    s.download(&sums, &mut part).map_err(cuda("download"))?;
    let got: f64 = part.iter().map(|&v| f64::from(v)).sum();
    if (got - total).abs() > total.abs() * 1e-4 {
        return Err(format!("block_sum on emu: {got}, the native sum {total}"));
    }
    Figure { emu, lane_insts, native }.insert(out, "reduce");

    // gemm_tiled
    let gn: usize = if quick { 64 } else { 128 };
    progress(&format!("kernels on emu: a {gn} x {gn} tiled GEMM (16 x 16 tiles in shared memory), beside a native triple loop"));
    let am: Vec<f32> = (0..gn * gn).map(|i| ((i * 7) % 13) as f32 * 0.125).collect();
    let bm: Vec<f32> = (0..gn * gn).map(|i| ((i * 5) % 11) as f32 * 0.25).collect();
    let (da, db, dc) = (
        dev.alloc::<f32>(gn * gn).map_err(cuda("alloc"))?,
        dev.alloc::<f32>(gn * gn).map_err(cuda("alloc"))?,
        dev.alloc::<f32>(gn * gn).map_err(cuda("alloc"))?,
    );
    s.upload(&da, &am).map_err(cuda("upload"))?;
    s.upload(&db, &bm).map_err(cuda("upload"))?;
    let gemm = f("gemm_tiled")?;
    let gni = gn as i32;
    let g = (gn / 16) as u32;
    let (emu, lane_insts) = time_kernel(&m, &s, reps, &|| s.launch(&gemm, [g, g, 1], [16, 16, 1], 0, &[&da, &db, &dc, &gni]))?;
    let mut cm = vec![0f32; gn * gn];
    let native = best(reps, || {
        let (a, b) = (black_box(&am), black_box(&bm));
        for r in 0..gn {
            for c in 0..gn {
                let mut acc = 0f32;
                for k in 0..gn {
                    acc = a[r * gn + k].mul_add(b[k * gn + c], acc);
                }
                cm[r * gn + c] = acc;
            }
        }
        black_box(&cm);
        Ok(())
    })?;
    let mut got = vec![0f32; gn * gn];
    s.download(&dc, &mut got).map_err(cuda("download"))?;
    if got.iter().zip(&cm).any(|(g, w)| (g - w).abs() > w.abs() * 1e-5) {
        return Err("gemm_tiled on emu differs from the native triple loop".into());
    }
    Figure { emu, lane_insts, native }.insert(out, "gemm");

    // Launch overhead: an empty one-warp kernel, launch + sync, beside the null call.
    progress("kernels on emu: empty kernel round trip (launch + stream sync) vs null call");
    let empty = f("empty")?;
    let iters = (lat_iters / 10).max(200);
    let c = dev.context().client();
    let mut lat = Vec::with_capacity(iters);
    let mut null = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        s.launch(&empty, [1, 1, 1], [32, 1, 1], 0, &[]).map_err(cuda("launch"))?;
        s.synchronize_blocking().map_err(cuda("cudaStreamSynchronize"))?;
        lat.push(t.elapsed());
        let t = Instant::now();
        c.call_blocking_req(0, req::Nop {}).map_err(|e| e.to_string())?;
        null.push(t.elapsed());
    }
    let (l50, l99) = percentiles(lat);
    let (n50, _) = percentiles(null);
    out.insert("compute_empty_kernel_round_trip_p50_us".into(), json!(l50));
    out.insert("compute_empty_kernel_round_trip_p99_us".into(), json!(l99));
    out.insert("compute_anchor_null_call_p50_us".into(), json!(n50));
    out.insert("compute_empty_kernel_vs_null_call".into(), json!(l50 / n50));
    drop((saxpy, block_sum, gemm, empty, x, y, sums, da, db, dc, s, module, dev));
    drop(m);

    module_load(out, quick)
}

/// Parse and lower cost of a generated module: `copies` renamed copies of compute.ptx's kernels.
fn module_load(out: &mut Map<String, Value>, quick: bool) -> Result<(), String> {
    let copies = if quick { 200 } else { 2000 };
    let body_start = PTX.find(".visible .entry").ok_or("compute.ptx has no kernel")?;
    let (head, body) = PTX.split_at(body_start);
    let mut text = String::from(head);
    for i in 0..copies {
        // The kernels' names (and so their parameters' and shared arrays'), unique per copy.
        let copy = body
            .replace("saxpy", &format!("saxpy_{i}"))
            .replace("block_sum", &format!("block_sum_{i}"))
            .replace("gemm_tiled", &format!("gemm_tiled_{i}"))
            .replace(".visible .entry empty", &format!(".visible .entry empty_{i}"))
            .replace("_ZZ", &format!("_ZZ{i}_"));
        text.push_str(&copy);
    }
    let lines = text.lines().count();
    progress(&format!("kernels on emu: module load cost, a generated module of {lines} PTX lines ({} kernels)", copies * 4));
    let src: Arc<str> = Arc::from(text.as_str());
    let t = Instant::now();
    let p = vgpu_ptx::program::Program::parse(src.clone()).map_err(|e| e.to_string())?;
    let parse = t.elapsed();
    // The first lookup also builds the module's name table (once per module).
    let t = Instant::now();
    p.entry("gemm_tiled_7").map_err(|e| e.to_string())?;
    let lower_first = t.elapsed();
    let t = Instant::now();
    let e = p.entry("gemm_tiled_8").map_err(|e| e.to_string())?;
    let lower_one = t.elapsed();
    let insts = e.kernel.insts.len();
    // Memory of a lowered kernel: the process's resident size before and after lowering many.
    let rss = || -> u64 {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            .map_or(0, |pages| pages * 4096)
    };
    let many = copies.min(500);
    let r0 = rss();
    let kept: Vec<_> = (0..many).map(|i| p.entry(&format!("gemm_tiled_{i}"))).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let per_kernel = rss().saturating_sub(r0) as f64 / many as f64;
    drop(kept);
    out.insert("module_load_ptx_lines".into(), json!(lines));
    out.insert("module_load_parse_ms_per_mline".into(), json!(parse.as_secs_f64() * 1e3 * 1e6 / lines as f64));
    out.insert("module_load_lower_first_us".into(), json!(lower_first.as_secs_f64() * 1e6));
    out.insert("module_load_lower_gemm_us".into(), json!(lower_one.as_secs_f64() * 1e6));
    out.insert("module_load_gemm_insts".into(), json!(insts));
    out.insert("module_load_bytes_per_lowered_gemm".into(), json!(per_kernel));
    Ok(())
}

pub(super) fn render(v: &Value, s: &mut String) {
    if v.get("compute_saxpy_emu_ms").is_none() {
        return;
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    s.push_str(&format!(
        "\nkernels on emu's PTX interpreter ({} threads for blocks), each beside a native Rust loop\n",
        f("compute_threads")
    ));
    s.push_str(&format!("{:<34} {:>10} {:>10} {:>12} {:>14}\n", "kernel", "emu ms", "native ms", "x native", "M lane-inst/s"));
    for (label, k) in [("saxpy", "saxpy"), ("shared-memory reduction", "reduce"), ("16x16 tiled GEMM", "gemm")] {
        s.push_str(&format!(
            "{:<34} {:>10.2} {:>10.3} {:>12.1} {:>14.1}\n",
            label,
            f(&format!("compute_{k}_emu_ms")),
            f(&format!("compute_{k}_native_ms")),
            f(&format!("compute_{k}_vs_native")),
            f(&format!("compute_{k}_lane_insts_per_s")) / 1e6
        ));
    }
    s.push_str(&format!(
        "empty kernel, launch + sync: p50 {:.1} us, p99 {:.1} us ({:.2} x the null call's {:.1} us)\n",
        f("compute_empty_kernel_round_trip_p50_us"),
        f("compute_empty_kernel_round_trip_p99_us"),
        f("compute_empty_kernel_vs_null_call"),
        f("compute_anchor_null_call_p50_us")
    ));
    s.push_str(&format!(
        "module load: {:.0} ms per million PTX lines (declarations; {} lines); first kernel lookup {:.0} us (with the module's name table), then {:.0} us to lower a {}-instruction kernel; ~{:.1} KiB per lowered kernel\n",
        f("module_load_parse_ms_per_mline"),
        f("module_load_ptx_lines"),
        f("module_load_lower_first_us"),
        f("module_load_lower_gemm_us"),
        f("module_load_gemm_insts"),
        f("module_load_bytes_per_lowered_gemm") / 1024.0
    ));
}
