//! Kernel-launch figures on the `emu` executor, through the async Rust API (`vgpu_streams`
//! `Device::load_module`, `Module::function`, `Stream::launch`), with a PTX-only module of two
//! empty kernels (`vgpu_fatbin::synth::ptx_fatbin`), launched with one warp so the figures are
//! the launch path, not the interpreter. Each figure is measured beside its anchor on the same
//! session, in the same run:
//!
//! - launch enqueue (ns per fire-and-forget launch, steady state, 16 B and 256 B of parameters,
//!   a stream sync every 256 launches, not timed) vs. the transport's fire-and-forget `Nop`
//!   enqueue and the null-call round trip;
//! - sustained launch rate (N launches, then one stream sync: the host validates and records
//!   every launch) vs. N fire-and-forget `Nop`s then one null call;
//! - first launch of a module (load + `FuncGet` + the launch) by upload and by hash from the
//!   host's module cache (a second session), for a small module and a 1 MiB one, vs. the
//!   null-call round trip.
//!
//! emu validates, records and runs each launch (one warp of an empty kernel on the interpreter):
//! these figures are the guest's enqueue plus the host's validation, recording and execution, not
//! a GPU's. GPU-side figures need `scripts/gpu-check.sh` on a device; kernel execution speed is in
//! `compute.rs`.

use std::time::Instant;

use serde_json::{json, Map, Value};
use vgpu_streams::{CudaError, Device, Function, KernelArg, Stream};
use vgpu_transport::wire::req;

use super::rt::enqueue_ns;
use super::{percentiles, progress};
use vgpu_mediator::child::Mediator;

/// `__global__ void k16(unsigned long long, unsigned long long)`: 16 bytes of parameters.
const K16: &str = "_Z3k16yy";
/// `__global__ void k256(Big)` with `struct Big { unsigned long long v[32]; }`: 256 bytes.
const K256: &str = "_Z4k2563Big";

fn cuda(what: &str) -> impl Fn(CudaError) -> String + '_ {
    move |e| format!("{what}: {} ({})", e.name(), e.description())
}

/// The bench module: PTX of two empty kernels, `tag` (a comment) making its bytes (and hash)
/// unique, `padding` bytes of comment lines its size (the host lexes them, as it would a large
/// module's text).
fn bench_module(tag: u64, padding: usize) -> Result<Vec<u8>, String> {
    let mut ptx = format!(
        ".version 8.0\n.target sm_75\n.address_size 64\n// vgpu bench module {tag}\n\
         .visible .entry {K16}(.param .u64 a, .param .u64 b)\n{{\nret;\n}}\n\
         .visible .entry {K256}(.param .align 8 .b8 big[256])\n{{\nret;\n}}\n"
    );
    let line = format!("// {}\n", "-".repeat(76));
    while ptx.len() + line.len() <= padding {
        ptx.push_str(&line);
    }
    Ok(vgpu_fatbin::synth::ptx_fatbin(&[(75, &ptx)]))
}

/// A stream sync after launches: every launch must have run.
fn sync(s: &Stream) -> Result<(), String> {
    s.synchronize_blocking().map_err(cuda("cudaStreamSynchronize"))
}

/// Null-call round trips on `dev`'s session: p50 in µs.
fn null_call_p50(dev: &Device, iters: usize) -> Result<f64, String> {
    let c = dev.context().client();
    let e = |e: vgpu_transport::Error| e.to_string();
    for _ in 0..200 {
        c.call_blocking_req(0, req::Nop {}).map_err(e)?;
    }
    let mut lat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        c.call_blocking_req(0, req::Nop {}).map_err(e)?;
        lat.push(t.elapsed());
    }
    Ok(percentiles(lat).0)
}

/// Median µs of load + FuncGet + first launch of each image on `dev`; checks how they loaded.
fn first_launches(dev: &Device, s: &Stream, images: &[Vec<u8>], by_hash: bool) -> Result<f64, String> {
    let (h0, u0) = dev.context().module_counts();
    let mut v = Vec::with_capacity(images.len());
    for img in images {
        let (a, b) = (1u64, 2u64);
        let t = Instant::now();
        let m = dev.load_module(img).map_err(cuda("load_module"))?;
        let f = m.function(K16).map_err(cuda("Module::function"))?;
        s.launch(&f, [1, 1, 1], [32, 1, 1], 0, &[&a, &b]).map_err(cuda("launch"))?;
        v.push(t.elapsed());
        sync(s)?;
    }
    let (h1, u1) = dev.context().module_counts();
    let n = images.len() as u64;
    let want = if by_hash { (n, 0) } else { (0, n) };
    if (h1 - h0, u1 - u0) != want {
        return Err(format!("first launches: expected (by hash, uploaded) = {want:?}, got {:?}", (h1 - h0, u1 - u0)));
    }
    Ok(percentiles(v).0)
}

/// Measure everything and add the `launch_*` keys (ratios under `ratios_launch`) to `out`.
pub(super) fn run(out: &mut Map<String, Value>, quick: bool, lat_iters: usize) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("vgpu-bench-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let r = measure(out, quick, lat_iters, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn measure(out: &mut Map<String, Value>, quick: bool, lat_iters: usize, dir: &std::path::Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let extra = [std::ffi::OsString::from("--module-cache"), dir.join("modules").into_os_string()];
    let m = Mediator::start_with_args(&exe, "emu", 50, &extra).map_err(|e| e.to_string())?;
    let dev = Device::connect(m.socket()).map_err(cuda("connecting"))?;
    let s = dev.stream_with(true, 0).map_err(cuda("cudaStreamCreate"))?;
    let image = bench_module(0, 0)?;
    let module = dev.load_module(&image).map_err(cuda("load_module"))?;
    let (k16, k256): (Function, Function) =
        (module.function(K16).map_err(cuda("function k16"))?, module.function(K256).map_err(cuda("function k256"))?);
    out.insert("launch_module_bytes".into(), json!(image.len()));
    let started = Instant::now();

    // Anchors on this session.
    let null_p50 = null_call_p50(&dev, lat_iters / 2)?;
    out.insert("launch_anchor_null_call_p50_us".into(), json!(null_p50));
    let client = dev.context().client();

    // (a) Enqueue cost.
    let ops = if quick { 100_000 } else { 1_000_000 };
    let batch = 256;
    progress(&format!("launches: enqueue, {ops} launches each of 16 B and 256 B parameters, a stream sync every {batch}"));
    let (a, b) = (0x1111u64, 0x2222u64);
    let big = [0x5au8; 256];
    let args16: [&dyn KernelArg; 2] = [&a, &b];
    let args256: [&dyn KernelArg; 1] = [&big];
    // Two rounds, each figure the better of its two (the first round also warms the staging
    // chunks and the host's paths).
    let mut best = [(f64::INFINITY, f64::INFINITY); 3];
    for _ in 0..2 {
        let r = [
            enqueue_ns(ops / 2, batch, || s.launch(&k16, [1, 1, 1], [32, 1, 1], 0, &args16).map_err(cuda("launch 16 B")), || sync(&s))?,
            enqueue_ns(ops / 2, batch, || s.launch(&k256, [1, 1, 1], [32, 1, 1], 0, &args256).map_err(cuda("launch 256 B")), || sync(&s))?,
            enqueue_ns(
                ops / 2,
                batch,
                || client.fire_req(0, req::Nop {}).map_err(|e| e.to_string()),
                || client.call_blocking_req(0, req::Nop {}).map(drop).map_err(|e| e.to_string()),
            )?,
        ];
        for (b, x) in best.iter_mut().zip(r) {
            *b = (b.0.min(x.0), b.1.min(x.1));
        }
    }
    let [(e16, e16_all), (e256, e256_all), (fire, fire_all)] = best;
    out.insert("launch_enqueue_16b_ns".into(), json!(e16));
    out.insert("launch_enqueue_16b_with_syncs_ns".into(), json!(e16_all));
    out.insert("launch_enqueue_256b_ns".into(), json!(e256));
    out.insert("launch_enqueue_256b_with_syncs_ns".into(), json!(e256_all));
    out.insert("launch_anchor_fire_ns".into(), json!(fire));
    out.insert("launch_anchor_fire_with_syncs_ns".into(), json!(fire_all));

    // (b) Sustained rate: N launches, one sync.
    let n = if quick { 50_000 } else { 500_000 };
    progress(&format!("launches: sustained rate, {n} launches (16 B) then one stream sync, vs {n} fire-and-forget null ops"));
    let rate = |f: &mut dyn FnMut() -> Result<(), String>, done: &mut dyn FnMut() -> Result<(), String>| -> Result<f64, String> {
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        done()?;
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let launch_rate = rate(&mut || s.launch(&k16, [1, 1, 1], [32, 1, 1], 0, &args16).map_err(cuda("launch")), &mut || sync(&s))?;
    let fire_rate = rate(&mut || client.fire_req(0, req::Nop {}).map_err(|e| e.to_string()), &mut || {
        client.call_blocking_req(0, req::Nop {}).map(drop).map_err(|e| e.to_string())
    })?;
    out.insert("launch_rate_n".into(), json!(n));
    out.insert("launch_rate_per_s".into(), json!(launch_rate));
    out.insert("launch_anchor_fire_rate_per_s".into(), json!(fire_rate));

    // (c) First launch of a module: by upload (this session, fresh images), then by hash from
    // the host's cache (a second session, which has loaded none of them).
    let samples = if quick { 8 } else { 40 };
    let sizes = [("small", 0usize), ("1mib", 1 << 20)];
    progress(&format!(
        "launches: first launch of a module, by upload and by hash from the cache, {samples} modules each of ~{} and 1 MiB",
        vgpu_mediator::serve::human_bytes(image.len() as u64)
    ));
    let second = Device::connect(m.socket()).map_err(cuda("connecting a second session"))?;
    let s2 = second.stream_with(true, 0).map_err(cuda("cudaStreamCreate"))?;
    // The round trip is bimodal on a busy machine (spin hit or interrupt): measure each
    // session's anchor right before the loads it is compared with.
    let null1_p50 = null_call_p50(&dev, lat_iters / 4)?;
    let null2_p50 = null_call_p50(&second, lat_iters / 4)?;
    out.insert("launch_anchor_null_call_before_loads_p50_us".into(), json!(null1_p50));
    out.insert("launch_anchor_null_call_second_session_p50_us".into(), json!(null2_p50));
    let mut tag = 1u64;
    for (name, pad) in sizes {
        let images = (0..samples)
            .map(|_| {
                tag += 1;
                bench_module(tag, pad)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let upload = first_launches(&dev, &s, &images, false)?;
        let by_hash = first_launches(&second, &s2, &images, true)?;
        out.insert(format!("launch_first_upload_{name}_p50_us"), json!(upload));
        out.insert(format!("launch_first_by_hash_{name}_p50_us"), json!(by_hash));
        out.insert(format!("launch_first_{name}_bytes"), json!(images[0].len()));
    }
    // What hashing a 1 MiB image costs (the guest hashes every image it loads; the host hashes
    // what it receives and what it reads from its cache).
    let big_image = bench_module(u64::MAX, 1 << 20)?;
    let hash_lat: Vec<_> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(vgpu_transport::wire::module_hash(std::hint::black_box(&big_image)));
            t.elapsed()
        })
        .collect();
    out.insert("launch_anchor_hash_1mib_us".into(), json!(percentiles(hash_lat).0));
    // And what one copy of it into a fresh heap buffer costs (allocation, first touch of every
    // page, free): each load makes a few such copies on each side.
    let copy_lat: Vec<_> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            let v: Vec<u8> = std::hint::black_box(&big_image[..]).to_vec();
            std::hint::black_box(&v);
            drop(v);
            t.elapsed()
        })
        .collect();
    out.insert("launch_anchor_fresh_copy_1mib_us".into(), json!(percentiles(copy_lat).0));
    out.insert("launch_elapsed_s".into(), json!(started.elapsed().as_secs_f64()));
    drop((k16, k256, module, s, s2));
    drop((dev, second));
    drop(m);

    let f = |k: &str| out.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let ratios = json!({
        "enqueue_16b_vs_fire": f("launch_enqueue_16b_ns") / f("launch_anchor_fire_ns"),
        "enqueue_256b_vs_fire": f("launch_enqueue_256b_ns") / f("launch_anchor_fire_ns"),
        "enqueue_16b_vs_null_call": f("launch_enqueue_16b_ns") / (f("launch_anchor_null_call_p50_us") * 1e3),
        "enqueue_256b_vs_null_call": f("launch_enqueue_256b_ns") / (f("launch_anchor_null_call_p50_us") * 1e3),
        "rate_vs_fire_rate": f("launch_rate_per_s") / f("launch_anchor_fire_rate_per_s"),
        "first_upload_small_vs_null_call": f("launch_first_upload_small_p50_us") / f("launch_anchor_null_call_before_loads_p50_us"),
        "first_by_hash_small_vs_null_call": f("launch_first_by_hash_small_p50_us") / f("launch_anchor_null_call_second_session_p50_us"),
        "first_upload_1mib_vs_null_call": f("launch_first_upload_1mib_p50_us") / f("launch_anchor_null_call_before_loads_p50_us"),
        "first_by_hash_1mib_vs_null_call": f("launch_first_by_hash_1mib_p50_us") / f("launch_anchor_null_call_second_session_p50_us"),
    });
    out.insert("ratios_launch".into(), ratios);
    Ok(())
}

/// The launch section of the table.
pub(super) fn render(v: &Value, s: &mut String) {
    if v.get("launch_enqueue_16b_ns").is_none() {
        return;
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let r = |k: &str| v["ratios_launch"][k].as_f64().unwrap_or(f64::NAN);
    let null_ns = f("launch_anchor_null_call_p50_us") * 1e3;
    s.push_str("\nkernel launches (emu: validated, recorded and run, one warp of an empty kernel; Stream::launch)\n");
    s.push_str(&format!("{:<44} {:>10} {:>12} {:>12}\n", "per launch", "ns", "x fire", "x null call"));
    s.push_str(&format!("{:<44} {:>10.1} {:>12} {:>12}\n", "anchor: null call round trip, same session", null_ns, "", "1.00"));
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12} {:>12.3}\n",
        "anchor: transport fire (Nop enqueue)",
        f("launch_anchor_fire_ns"),
        "1.00",
        f("launch_anchor_fire_ns") / null_ns
    ));
    for (label, key, ratio, nratio) in [
        ("launch enqueue, 16 B params", "launch_enqueue_16b_ns", "enqueue_16b_vs_fire", "enqueue_16b_vs_null_call"),
        ("launch enqueue, 256 B params", "launch_enqueue_256b_ns", "enqueue_256b_vs_fire", "enqueue_256b_vs_null_call"),
    ] {
        s.push_str(&format!("{:<44} {:>10.1} {:>12.2} {:>12.3}\n", label, f(key), r(ratio), r(nratio)));
    }
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12} {:>12}\n",
        "  (16 B, syncs every 256 included)",
        f("launch_enqueue_16b_with_syncs_ns"),
        "",
        ""
    ));
    s.push_str(&format!(
        "\nsustained: {:.2} M launches/s ({} launches + one sync) vs {:.2} M null ops/s fire-and-forget: {:.2}x\n",
        f("launch_rate_per_s") / 1e6,
        v["launch_rate_n"],
        f("launch_anchor_fire_rate_per_s") / 1e6,
        r("rate_vs_fire_rate")
    ));
    s.push_str(&format!("\n{:<44} {:>10} {:>12}\n", "first launch (load + FuncGet + launch)", "p50 (us)", "x null call"));
    s.push_str(&format!(
        "{:<44} {:>10.2} {:>12}\n",
        "anchor: null call, uploading session",
        f("launch_anchor_null_call_before_loads_p50_us"),
        "1.00"
    ));
    s.push_str(&format!(
        "{:<44} {:>10.2} {:>12}\n",
        "anchor: null call, loading-by-hash session",
        f("launch_anchor_null_call_second_session_p50_us"),
        "1.00"
    ));
    for (label, key, ratio) in [
        (
            format!("by upload, {}", vgpu_mediator::serve::human_bytes(v["launch_first_small_bytes"].as_u64().unwrap_or(0))),
            "launch_first_upload_small_p50_us",
            "first_upload_small_vs_null_call",
        ),
        ("by hash from the cache, same module".to_string(), "launch_first_by_hash_small_p50_us", "first_by_hash_small_vs_null_call"),
        (
            format!("by upload, {}", vgpu_mediator::serve::human_bytes(v["launch_first_1mib_bytes"].as_u64().unwrap_or(0))),
            "launch_first_upload_1mib_p50_us",
            "first_upload_1mib_vs_null_call",
        ),
        ("by hash from the cache, same module".to_string(), "launch_first_by_hash_1mib_p50_us", "first_by_hash_1mib_vs_null_call"),
    ] {
        s.push_str(&format!("{:<44} {:>10.1} {:>12.1}\n", label, f(key), r(ratio)));
    }
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12.1}\n",
        "  (BLAKE3 module hash of 1 MiB, for scale)",
        f("launch_anchor_hash_1mib_us"),
        f("launch_anchor_hash_1mib_us") / f("launch_anchor_null_call_before_loads_p50_us")
    ));
    s.push_str(&format!(
        "{:<44} {:>10.1} {:>12.1}\n",
        "  (1 MiB copied into a fresh buffer, for scale)",
        f("launch_anchor_fresh_copy_1mib_us"),
        f("launch_anchor_fresh_copy_1mib_us") / f("launch_anchor_null_call_before_loads_p50_us")
    ));
    s.push_str(&format!("launch figures took {:.2} s\n", f("launch_elapsed_s")));
}
