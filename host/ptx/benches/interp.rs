//! `cargo bench -p vgpu-ptx`: the PTX interpreter's speed beside its anchor, a native Rust loop
//! doing the same work in the same run, as a ratio. Kernels are nvcc's PTX of `tests/cu`:
//! `axpb` (streams.cu: `x[i] = x[i] * a + b`, memory-bound, one warp instruction stream per
//! 32 elements) and `block_sum` (shared.cu: a strided sum, a tree reduction in dynamic shared
//! memory with barriers). Prints a table and one JSON line.

use std::path::Path;
use std::time::Instant;

use vgpu_ptx::exec::{run, Launch, Memory};
use vgpu_ptx::mem::Allocations;
use vgpu_ptx::Module;

fn data(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).expect("tests/data")
}

fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(v);
    }
    (best, last.expect("reps > 0"))
}

fn main() {
    // cargo passes `--bench`; a `--quick` shortens the runs.
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 1 << 16 } else { 1 << 20 };
    let reps = if quick { 2 } else { 5 };

    // axpb
    let src = data("streams.ptx");
    let m = Module::parse(&src).expect("parse");
    let k = m.lower(m.function("_Z4axpbPfiff").expect("axpb")).expect("lower");
    let mem = Allocations::default();
    let init: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let x = mem.alloc(&init);
    let mut p = vec![0u8; k.param_bytes as usize];
    p[0..8].copy_from_slice(&x.to_le_bytes());
    p[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    p[12..16].copy_from_slice(&1.0001f32.to_le_bytes());
    p[16..20].copy_from_slice(&0.5f32.to_le_bytes());
    let l = Launch {
        grid: [(n / 256) as u32, 1, 1],
        block: [256, 1, 1],
        params: &p,
        dynamic_shared: 0,
        globals: &[],
        budget: 0,
        functions: &[],
        printf: &|_| {},
    };
    let (t_axpb, steps_axpb) = best(reps, || run(&k, &l, &mem, &|| false).expect("axpb runs"));
    let mut native: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (t_native_axpb, _) = best(reps, || {
        for v in native.iter_mut() {
            *v = v.mul_add(1.0001, 0.5); // nvcc contracts x * a + b to fma.rn.f32
        }
        std::hint::black_box(&native);
    });
    // Check one element against the native result of the same number of passes.
    let mut got = [0u8; 4];
    mem.read(x + 4 * 7, &mut got).expect("read");
    assert_eq!(f32::from_le_bytes(got), native[7], "the interpreter and the native loop disagree");

    // block_sum
    let src = data("shared.ptx");
    let m = Module::parse(&src).expect("parse");
    let k = m.lower(m.function("_Z9block_sumPKfPfi").expect("block_sum")).expect("lower");
    let blocks = 64usize;
    let per = n / blocks;
    let input: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let din = mem.alloc(&input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let out = mem.alloc(&vec![0u8; blocks * 4]);
    let mut p = vec![0u8; k.param_bytes as usize];
    p[0..8].copy_from_slice(&din.to_le_bytes());
    p[8..16].copy_from_slice(&out.to_le_bytes());
    p[16..20].copy_from_slice(&(per as u32).to_le_bytes());
    let l = Launch {
        grid: [blocks as u32, 1, 1],
        block: [256, 1, 1],
        params: &p,
        dynamic_shared: 256 * 4,
        globals: &[],
        budget: 0,
        functions: &[],
        printf: &|_| {},
    };
    let (t_sum, steps_sum) = best(reps, || run(&k, &l, &mem, &|| false).expect("block_sum runs"));
    let (t_native_sum, s) = best(reps, || input.chunks(per).map(|c| c.iter().sum::<f32>()).collect::<Vec<f32>>());
    std::hint::black_box(s);

    let row = |name: &str, t: f64, steps: u64, tn: f64| {
        println!(
            "{name:<10} {:>10.2} M elements/s {:>8.1} M warp-instructions/s   native loop {:>9.1} M elements/s   native / interpreter {:>7.0}x",
            n as f64 / t / 1e6,
            steps as f64 / t / 1e6,
            n as f64 / tn / 1e6,
            t / tn
        )
    };
    println!("vgpu-ptx interpreter, {n} elements, best of {reps} (one core)");
    row("axpb", t_axpb, steps_axpb, t_native_axpb);
    row("block_sum", t_sum, steps_sum, t_native_sum);
    println!(
        "{{\"elements\":{n},\"axpb_s\":{t_axpb:.6},\"axpb_warp_insts\":{steps_axpb},\"axpb_native_s\":{t_native_axpb:.6},\"block_sum_s\":{t_sum:.6},\"block_sum_warp_insts\":{steps_sum},\"block_sum_native_s\":{t_native_sum:.6}}}"
    );
}
