//! nvcc's PTX of `tests/cu/tensor.cu` (`tests/data/tensor_90.ptx`): mma fed by ldmatrix as CUDA
//! code does it, an int8 mma with saturation, and the block and warp reductions nvcc emits for
//! `__syncthreads_count/and/or`, `__reduce_*_sync`, `__match_*_sync`, `__barrier_sync_count`,
//! `__nanosleep` and programmatic dependent launch, against results computed here.

use std::path::Path;

use vgpu_ptx::exec::{run, Launch};
use vgpu_ptx::mem::Allocations;
use vgpu_ptx::Module;

fn module() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tensor_90.ptx")).unwrap()
}

/// Run kernel `name` of the module on one block of `block` threads with pointer parameters.
fn launch(name: &str, block: u32, mem: &Allocations, ptrs: &[u64]) {
    let src = module();
    let m = Module::parse(&src).unwrap();
    let k = m.lower(m.function(name).unwrap()).unwrap_or_else(|e| panic!("{e}"));
    let p: Vec<u8> = ptrs.iter().flat_map(|p| p.to_le_bytes()).collect();
    let l = Launch {
        grid: [1, 1, 1],
        block: [block, 1, 1],
        params: &p,
        dynamic_shared: 0,
        globals: &[],
        budget: 1_000_000,
        functions: &[],
        printf: &|_| {},
    };
    run(&k, &l, mem, &|| false).unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn mma_f16_fed_by_ldmatrix_is_a_matrix_product() {
    let (m, n, k) = (16, 8, 16);
    let a: Vec<f32> = (0..m * k).map(|x| ((x * 7 % 13) as f32 - 6.0) * 0.25).collect();
    let b: Vec<f32> = (0..k * n).map(|x| ((x * 5 % 11) as f32 - 5.0) * 0.5).collect();
    let c: Vec<f32> = (0..m * n).map(|x| x as f32 - 60.0).collect();
    let h = |v: &[f32]| v.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect::<Vec<u8>>();
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mem = Allocations::default();
    let (pa, pb, pc, pd) = (mem.alloc(&h(&a)), mem.alloc(&h(&b)), mem.alloc(&f(&c)), mem.alloc(&[0u8; 16 * 8 * 4]));
    launch("mma_f16", 32, &mem, &[pa, pb, pc, pd]);
    let got: Vec<f32> = words(&mem.get(pd, 16 * 8 * 4)).into_iter().map(f32::from_bits).collect();
    let want: Vec<f32> = (0..m * n).map(|x| (0..k).map(|q| a[(x / n) * k + q] * b[q * n + x % n]).sum::<f32>() + c[x]).collect();
    assert_eq!(got, want);
}

#[test]
fn mma_s8_saturates_as_the_isa_says() {
    let (m, n, k) = (16, 8, 32);
    let a: Vec<i8> = (0..m * k).map(|x| (x * 37 % 256) as u8 as i8).collect();
    let b: Vec<i8> = (0..k * n).map(|x| (x * 91 % 256) as u8 as i8).collect();
    // Half of C near i32::MAX or MIN so that the sums overflow.
    let c: Vec<i32> = (0..m * n).map(|x| if x % 2 == 0 { i32::MAX - 5000 } else { i32::MIN + 5000 * (x as i32 % 3) }).collect();
    let mem = Allocations::default();
    let bytes = |v: &[i8]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
    let c_bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
    let (pa, pb, pc, pd) = (mem.alloc(&bytes(&a)), mem.alloc(&bytes(&b)), mem.alloc(&c_bytes), mem.alloc(&[0u8; 16 * 8 * 4]));
    launch("mma_s8", 32, &mem, &[pa, pb, pc, pd]);
    let got: Vec<i32> = words(&mem.get(pd, 16 * 8 * 4)).into_iter().map(|w| w as i32).collect();
    let want: Vec<i32> = (0..m * n)
        .map(|x| {
            let s: i64 = (0..k).map(|q| i64::from(a[(x / n) * k + q]) * i64::from(b[q * n + x % n])).sum::<i64>() + i64::from(c[x]);
            s.clamp(i32::MIN.into(), i32::MAX.into()) as i32
        })
        .collect();
    assert_eq!(got, want);
    assert!(got.contains(&i32::MAX) && got.contains(&i32::MIN), "some sums saturate");
}

#[test]
fn block_and_warp_reductions_of_nvcc_match_their_definitions() {
    let threads = 96usize;
    let v: Vec<i32> = (0..threads as i32).map(|t| (t * 29 % 41) - 20).collect();
    let mem = Allocations::default();
    let pin = mem.alloc(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    let pout = mem.alloc(&vec![0u8; threads * 12 * 4]);
    launch("sync_ops", threads as u32, &mem, &[pin, pout]);
    let got: Vec<i32> = words(&mem.get(pout, threads * 12 * 4)).into_iter().map(|w| w as i32).collect();
    for t in 0..threads {
        let warp = &v[t / 32 * 32..t / 32 * 32 + 32];
        let u = |x: &i32| *x as u32;
        let want = [
            v.iter().filter(|&&x| x > 0).count() as i32,
            i32::from(v.iter().all(|&x| x > -100)),
            i32::from(v.contains(&7)),
            warp.iter().map(u).fold(0u32, u32::wrapping_add) as i32,
            *warp.iter().min().unwrap(),
            *warp.iter().max().unwrap(),
            (warp.iter().map(u).fold(u32::MAX, |s, x| s & x) ^ warp.iter().map(u).fold(0, |s, x| s | x)) as i32,
            warp.iter().map(u).fold(0, |s, x| s ^ x) as i32,
            (0..32).filter(|&l| warp[l] & 3 == v[t] & 3).fold(0u32, |m, l| m | 1 << l) as i32,
            0, // match.all of tid / 32: the full mask (-1) plus the predicate (1)
            u32::from_le_bytes([0x76, 0x32, (v[t] as u32 >> 24) as u8, (v[t] as u32 >> 8) as u8]) as i32,
            1,
        ];
        assert_eq!(&got[t * 12..t * 12 + 12], &want, "thread {t}");
    }
}
