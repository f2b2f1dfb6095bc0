//! The interpreter on nvcc's PTX of the project's kernels (`tests/data`, from `tests/cu` and
//! `tests/cu/surface.cu`), against results computed here in Rust.

use std::cell::RefCell;
use std::path::Path;

use vgpu_ptx::exec::{run, Callee, ExecError, Launch, Memory};
use vgpu_ptx::mem::Allocations;
use vgpu_ptx::Module;

type Mem = Allocations;

fn data(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap()
}

/// Allocate every module variable with its initializer; their addresses by index.
fn globals(m: &Module, mem: &Mem) -> Vec<u64> {
    m.variables.iter().map(|v| mem.alloc(&v.init_bytes(&|_| None))).collect()
}

fn params(parts: &[&[u8]], offsets: &[u32], total: u32) -> Vec<u8> {
    let mut p = vec![0u8; total as usize];
    for (b, &o) in parts.iter().zip(offsets) {
        p[o as usize..o as usize + b.len()].copy_from_slice(b);
    }
    p
}

fn launch<'a>(grid: u32, block: u32, params: &'a [u8], globals: &'a [u64], dynamic_shared: u32) -> Launch<'a> {
    Launch {
        grid: [grid, 1, 1],
        block: [block, 1, 1],
        params,
        dynamic_shared,
        globals,
        budget: 50_000_000,
        functions: &[],
        printf: &|_| {},
    }
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn use_symbols_reads_constants_and_globals_and_counts_atomically() {
    let src = data("symbols.ptx");
    let m = Module::parse(&src).unwrap();
    let mem = Mem::default();
    let g = globals(&m, &mem);
    // coef = 0.5 * i, written as cudaMemcpyToSymbol would.
    let coef_i = m.variables.iter().position(|v| v.name == "coef").unwrap();
    let coef: Vec<u8> = (0..64).flat_map(|i| (0.5f32 * i as f32).to_le_bytes()).collect();
    mem.write(g[coef_i], &coef).unwrap();
    let n = 300usize;
    let out = mem.alloc(&vec![0u8; n * 4]);
    let k = m.lower(m.function("_Z11use_symbolsPfi").unwrap()).unwrap();
    let p = params(&[&out.to_le_bytes(), &(n as u32).to_le_bytes()], &[0, 8], k.param_bytes);
    run(&k, &launch(3, 128, &p, &g, 0), &mem, &|| false).unwrap();
    let got = floats(&mem.get(out, n * 4));
    for (i, v) in got.iter().enumerate() {
        let table = if i % 128 < 5 { (1u32 << (i % 128)) as f32 } else { 0.0 };
        assert_eq!(*v, 0.5 * (i % 64) as f32 * 3.0 + table, "out[{i}]");
    }
    let counter_i = m.variables.iter().position(|v| v.name == "counter").unwrap();
    assert_eq!(u32::from_le_bytes(mem.get(g[counter_i], 4).try_into().unwrap()), n as u32);
}

#[test]
fn block_sum_uses_dynamic_shared_memory_and_barriers() {
    let src = data("shared.ptx");
    let m = Module::parse(&src).unwrap();
    let mem = Mem::default();
    let g = globals(&m, &mem);
    let (blocks, n) = (4usize, 1000usize);
    let input: Vec<f32> = (0..blocks * n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let din = mem.alloc(&input.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<_>>());
    let k = m.lower(m.function("_Z9block_sumPKfPfi").unwrap()).unwrap();
    for threads in [32u32, 128, 256] {
        let out = mem.alloc(&vec![0u8; blocks * 4]);
        let p = params(&[&din.to_le_bytes(), &out.to_le_bytes(), &(n as u32).to_le_bytes()], &[0, 8, 16], k.param_bytes);
        run(&k, &launch(blocks as u32, threads, &p, &g, threads * 4), &mem, &|| false).unwrap();
        let got = floats(&mem.get(out, blocks * 4));
        for b in 0..blocks {
            let want: f32 = input[b * n..(b + 1) * n].iter().sum();
            assert!((got[b] - want).abs() < 1e-3, "{threads} threads, block {b}: {} vs {want}", got[b]);
        }
    }
}

#[test]
fn warp_shuffles_and_votes_match_their_definitions() {
    let src = data("surface_80.ptx");
    let m = Module::parse(&src).unwrap();
    let mem = Mem::default();
    let g = globals(&m, &mem);
    let n = 64usize;
    let input: Vec<f32> = (0..n).map(|i| i as f32 - 20.0).collect();
    let din = mem.alloc(&input.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<_>>());
    let out = mem.alloc(&vec![0u8; n * 4]);
    let ballots = mem.alloc(&vec![0u8; n * 4]);
    let k = m.lower(m.function("warp_ops").unwrap()).unwrap();
    let p = params(
        &[&din.to_le_bytes(), &out.to_le_bytes(), &ballots.to_le_bytes(), &(n as u32).to_le_bytes()],
        &[0, 8, 16, 24],
        k.param_bytes,
    );
    run(&k, &launch(1, 64, &p, &g, 0), &mem, &|| false).unwrap();
    // The same computation, lane by lane, in Rust.
    let table: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let got = floats(&mem.get(out, n * 4));
    let got_b: Vec<u32> = mem.get(ballots, n * 4).chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    for w in 0..2 {
        let mut v: Vec<f32> = (0..32).map(|l| input[w * 32 + l]).collect();
        let mut off = 16;
        while off > 0 {
            let prev = v.clone();
            for l in 0..32 {
                v[l] = prev[l] + prev[l ^ off];
            }
            off >>= 1;
        }
        let prev = v.clone();
        for l in 0..32 {
            let down = if l + 1 < 32 { prev[l + 1] } else { prev[l] };
            let up = if l >= 2 { prev[l - 2] } else { prev[l] };
            v[l] = prev[l] + (down + up + prev[3]);
        }
        let mut b = 0u32;
        for (l, x) in v.iter().enumerate() {
            if *x > 0.0 {
                b |= 1 << l;
            }
        }
        let any_neg = v.iter().any(|x| *x < 0.0);
        let all_ne1 = v.iter().all(|x| *x != 1.0);
        let b2 = if any_neg && all_ne1 { b ^ 1 } else { b };
        for (l, vl) in v.iter().enumerate() {
            let i = w * 32 + l;
            let want_b = b2.wrapping_add(b2.count_ones()).wrapping_add(b2.leading_zeros()).wrapping_add(b2.reverse_bits());
            assert_eq!(got_b[i], want_b, "ballot word of thread {i}");
            assert_eq!(got[i], vl * table[i & 15], "out[{i}]");
        }
    }
}

#[test]
fn a_bad_address_is_an_illegal_address_error_and_a_spin_can_be_stopped() {
    let src = data("streams.ptx");
    let m = Module::parse(&src).unwrap();
    let mem = Mem::default();
    let g = globals(&m, &mem);
    let k = m.lower(m.function("_Z4axpbPfiff").unwrap()).unwrap();
    let x = mem.alloc(&[0u8; 16]);
    // n = 8 on a 4-float buffer: thread 4 faults.
    let p = params(&[&x.to_le_bytes(), &8u32.to_le_bytes(), &2f32.to_le_bytes(), &1f32.to_le_bytes()], &[0, 8, 12, 16], k.param_bytes);
    let e = run(&k, &launch(1, 8, &p, &g, 0), &mem, &|| false).unwrap_err();
    assert!(matches!(e, ExecError::IllegalAddress { addr, .. } if addr == x + 16), "{e}");
    // n = 4: right, and the cancelled flag stops a launch before it starts work.
    let p = params(&[&x.to_le_bytes(), &4u32.to_le_bytes(), &2f32.to_le_bytes(), &1f32.to_le_bytes()], &[0, 8, 12, 16], k.param_bytes);
    run(&k, &launch(1, 8, &p, &g, 0), &mem, &|| false).unwrap();
    assert_eq!(floats(&mem.get(x, 16)), [1.0, 1.0, 1.0, 1.0]);
    let e = run(&k, &launch(1, 8, &p, &g, 0), &mem, &|| true).unwrap_err();
    assert!(matches!(e, ExecError::Stopped { .. }), "{e}");
    // A short parameter buffer is refused.
    let e = run(&k, &launch(1, 8, &p[..8], &g, 0), &mem, &|| false).unwrap_err();
    assert!(matches!(e, ExecError::BadLaunch { .. }), "{e}");
}

#[test]
fn atomics_on_shared_and_global_memory_count_exactly() {
    let src = data("surface_90.ptx");
    let m = Module::parse(&src).unwrap();
    let mem = Mem::default();
    let g = globals(&m, &mem);
    let k = m.lower(m.function("atomics").unwrap()).unwrap();
    let ctr = mem.alloc(&vec![0u8; 64 * 4]);
    let big = mem.alloc(&[0u8; 8]);
    let fsum = mem.alloc(&[0u8; 4]);
    let (blocks, threads) = (3u32, 100u32);
    let p = params(&[&ctr.to_le_bytes(), &big.to_le_bytes(), &fsum.to_le_bytes(), &77u32.to_le_bytes()], &[0, 8, 16, 24], k.param_bytes);
    run(&k, &launch(blocks, threads, &p, &g, 0), &mem, &|| false).unwrap();
    let c: Vec<i32> = mem.get(ctr, 64 * 4).chunks(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect();
    for (j, v) in c.iter().enumerate().take(32) {
        // Each block adds its histogram: threads t with t % 32 == j.
        let per_block = (0..threads).filter(|t| t % 32 == j as u32).count() as i32;
        assert_eq!(*v, per_block * blocks as i32, "ctr[{j}]");
    }
    assert_eq!(c[40], 77, "atomicExch");
    assert_eq!(c[41], threads as i32 - 1, "atomicMax");
    assert_eq!(u64::from_le_bytes(mem.get(big, 8).try_into().unwrap()), 1, "atomicCAS");
    assert_eq!(f32::from_le_bytes(mem.get(fsum, 4).try_into().unwrap()), 1.5 * (blocks * threads) as f32, "atomicAdd f32");
    let gc = m.variables.iter().position(|v| v.name == "g_count").unwrap();
    assert_eq!(u32::from_le_bytes(mem.get(g[gc], 4).try_into().unwrap()), blocks * threads, "atomicInc below its limit");
}

/// Every kernel of the test PTX, launched with parameters that are garbage or point at a small
/// buffer, never panics: it finishes, faults, traps, runs out of budget or is unsupported.
#[test]
fn every_kernel_with_garbage_parameters_ends_without_a_panic() {
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for name in
        ["symbols.ptx", "shared.ptx", "streams.ptx", "templates.ptx", "params.ptx", "surface_90.ptx", "surface_75-use_fast_math.ptx"]
    {
        let src = data(name);
        let m = Module::parse(&src).unwrap();
        let mem = Mem::default();
        let g = globals(&m, &mem);
        let buf = mem.alloc(&[0u8; 4096]);
        for f in m.entries() {
            let k = m.lower(f).unwrap();
            for round in 0..4 {
                let mut p = vec![0u8; k.param_bytes as usize + 8];
                for c in p.chunks_mut(8) {
                    let v = if round % 2 == 0 { buf + next() % 4096 } else { next() };
                    let n = c.len();
                    c.copy_from_slice(&v.to_le_bytes()[..n]);
                }
                let l = Launch {
                    grid: [2, 1, 1],
                    block: [1 + (next() % 64) as u32, 1, 1],
                    params: &p,
                    dynamic_shared: 256,
                    globals: &g,
                    budget: 200_000,
                    functions: &[],
                    printf: &|_| {},
                };
                let _ = run(&k, &l, &mem, &|| false);
            }
        }
    }
}

/// Half and bfloat16: conversions round to nearest even, packed pairs compute per half.
#[test]
fn half_and_bfloat16_convert_and_compute_per_half() {
    let src = ".version 8.0\n.target sm_80\n.address_size 64\n\
        .visible .entry h(.param .u64 out, .param .f32 x)\n{\n\
        .reg .b16 %h<4>;\n.reg .b32 %r<4>;\n.reg .f32 %f<6>;\n.reg .b64 %rd<2>;\n\
        ld.param.u64 %rd1, [out];\nld.param.f32 %f1, [x];\n\
        cvt.rn.f16.f32 %h1, %f1;\ncvt.f32.f16 %f2, %h1;\n\
        cvt.rn.bf16.f32 %h2, %f1;\ncvt.f32.bf16 %f3, %h2;\n\
        cvt.rn.f16x2.f32 %r1, %f1, %f2;\nadd.rn.f16x2 %r2, %r1, %r1;\n\
        mov.b32 {%h3, %h1}, %r2;\ncvt.f32.f16 %f4, %h3;\ncvt.f32.f16 %f5, %h1;\n\
        st.global.f32 [%rd1], %f2;\nst.global.f32 [%rd1+4], %f3;\nst.global.f32 [%rd1+8], %f4;\n\
        st.global.f32 [%rd1+12], %f5;\nst.global.b32 [%rd1+16], %r1;\nret;\n}\n";
    let m = Module::parse(src).unwrap();
    let k = m.lower(&m.functions[0]).unwrap();
    let mem = Mem::default();
    let out = mem.alloc(&[0u8; 20]);
    let p = params(&[&out.to_le_bytes(), &1.1f32.to_le_bytes()], &[0, 8], k.param_bytes);
    run(&k, &launch(1, 1, &p, &[], 0), &mem, &|| false).unwrap();
    let got = floats(&mem.get(out, 16));
    let h = half::f16::from_f32(1.1).to_f32();
    assert_eq!(got, [h, half::bf16::from_f32(1.1).to_f32(), 2.0 * h, 2.0 * h]);
    let bits = half::f16::from_f32(1.1).to_bits() as u32;
    assert_eq!(u32::from_le_bytes(mem.get(out + 16, 4).try_into().unwrap()), bits << 16 | bits);
}

/// Calls: a `.func` with parameters and a return value runs for the calling lanes, and printf
/// formats from the format string in global memory and the argument buffer in local memory.
#[test]
fn device_functions_and_printf_run() {
    let src = ".version 8.0\n.target sm_80\n.address_size 64\n\
        .extern .func (.param .b32 func_retval0) vprintf(.param .b64 vprintf_param_0, .param .b64 vprintf_param_1);\n\
        .global .align 1 .b8 $str[12] = {116, 104, 114, 101, 97, 100, 32, 37, 100, 10, 0, 0};\n\
        .func (.param .b32 func_retval0) twice_plus(.param .b32 a, .param .b32 b)\n{\n\
        .reg .b32 %r<4>;\nld.param.b32 %r1, [a];\nld.param.b32 %r2, [b];\nshl.b32 %r3, %r1, 1;\nadd.s32 %r3, %r3, %r2;\n\
        st.param.b32 [func_retval0+0], %r3;\nret;\n}\n\
        .visible .entry k(.param .u64 out)\n{\n\
        .local .align 8 .b8 __local_depot0[8];\n.reg .b32 %r<6>;\n.reg .b64 %rd<6>;\n.reg .pred %p<2>;\n\
        ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\n\
        {\n.reg .b32 temp_param_reg;\n.param .b32 param0;\nst.param.b32 [param0+0], %r1;\n.param .b32 param1;\n\
        st.param.b32 [param1+0], 5;\n.param .b32 retval0;\ncall.uni (retval0), twice_plus, (param0, param1);\n\
        ld.param.b32 %r2, [retval0+0];\n}\n\
        mul.wide.u32 %rd2, %r1, 4;\nadd.s64 %rd3, %rd1, %rd2;\nst.global.u32 [%rd3], %r2;\n\
        setp.ne.u32 %p1, %r1, 3;\n@%p1 bra DONE;\n\
        mov.u64 %rd4, __local_depot0;\ncvta.local.u64 %rd5, %rd4;\nst.local.u32 [%rd4], %r1;\n\
        mov.u64 %rd4, $str;\ncvta.global.u64 %rd4, %rd4;\n\
        {\n.param .b64 p0;\nst.param.b64 [p0+0], %rd4;\n.param .b64 p1;\nst.param.b64 [p1+0], %rd5;\n.param .b32 rv;\n\
        call.uni (rv), vprintf, (p0, p1);\n}\n\
        DONE:\nret;\n}\n";
    let m = Module::parse(src).unwrap_or_else(|e| panic!("{e}"));
    let mem = Mem::default();
    let g = globals(&m, &mem);
    let lowered: Vec<Option<vgpu_ptx::lower::Kernel>> = m.functions.iter().map(|f| f.body.map(|_| m.lower(f).unwrap())).collect();
    let callees: Vec<Callee> = m
        .functions
        .iter()
        .zip(&lowered)
        .map(|(f, k)| match k {
            Some(k) => Callee::Body(k),
            None if f.name == "vprintf" => Callee::Printf,
            None => Callee::Missing,
        })
        .collect();
    let k = m.lower(m.function("k").unwrap()).unwrap();
    let out = mem.alloc(&[0u8; 4 * 40]);
    let p = params(&[&out.to_le_bytes()], &[0], k.param_bytes);
    let printed = RefCell::new(String::new());
    let print = |s: &str| printed.borrow_mut().push_str(s);
    let l = Launch {
        grid: [1, 1, 1],
        block: [40, 1, 1],
        params: &p,
        dynamic_shared: 0,
        globals: &g,
        budget: 1_000_000,
        functions: &callees,
        printf: &print,
    };
    run(&k, &l, &mem, &|| false).unwrap();
    let got: Vec<u32> = mem.get(out, 160).chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(got, (0..40).map(|t| 2 * t + 5).collect::<Vec<u32>>());
    assert_eq!(printed.into_inner(), "thread 3\n");
}

/// A called function that never returns is stopped by the kill switch (no budget set).
#[test]
fn a_spinning_called_function_is_stopped_by_cancel() {
    let src = ".version 8.0\n.target sm_80\n.address_size 64\n\
        .func spin()\n{\nL:\nbra L;\n}\n\
        .visible .entry k()\n{\ncall.uni spin, ();\nret;\n}\n";
    let m = Module::parse(src).unwrap();
    let spin = m.lower(m.function("spin").unwrap()).unwrap();
    let callees = [Callee::Body(&spin), Callee::Missing];
    let k = m.lower(m.function("k").unwrap()).unwrap();
    let mem = Mem::default();
    let asked = std::cell::Cell::new(0u32);
    let cancel = || {
        asked.set(asked.get() + 1);
        asked.get() > 3
    };
    let l = Launch {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        params: &[],
        dynamic_shared: 0,
        globals: &[],
        budget: 0,
        functions: &callees,
        printf: &|_| {},
    };
    let e = run(&k, &l, &mem, &cancel).unwrap_err();
    assert!(matches!(e, ExecError::Stopped { why: "cancelled", .. }), "{e}");
}

#[test]
fn fp8_conversions_as_ggml_uses_them() {
    // cvt.rn.f16x2.e4m3x2 (ggml-cuda at compute_90) and the narrowing forms, on one thread.
    let src = ".version 8.6\n.target sm_90\n.address_size 64\n\
        .visible .entry k(.param .u64 out, .param .u16 a)\n{\n.reg .b16 %h<3>;\n.reg .b32 %r<4>;\n.reg .f32 %f<3>;\n.reg .b64 %rd<2>;\n\
        ld.param.u64 %rd1, [out];\nld.param.u16 %h1, [a];\n\
        cvt.rn.f16x2.e4m3x2 %r1, %h1;\nst.global.u32 [%rd1], %r1;\n\
        mov.f32 %f1, 0f3F800000;\nmov.f32 %f2, 0f447A0000;\n\
        cvt.rn.satfinite.e4m3x2.f32 %h2, %f1, %f2;\ncvt.u32.u16 %r2, %h2;\nst.global.u32 [%rd1+4], %r2;\n\
        cvt.rn.satfinite.e5m2x2.f16x2 %h2, %r1;\ncvt.u32.u16 %r3, %h2;\nst.global.u32 [%rd1+8], %r3;\n\
        ret;\n}\n";
    let m = Module::parse(src).unwrap();
    let k = m.lower(m.function("k").unwrap()).unwrap();
    let mem = Mem::default();
    let out = mem.alloc(&[0; 12]);
    let p = params(&[&out.to_le_bytes(), &0x3848u16.to_le_bytes()], &[0, 8], k.param_bytes);
    run(&k, &launch(1, 1, &p, &[], 0), &mem, &|| false).unwrap();
    let mut got = [0u8; 12];
    mem.read(out, &mut got).unwrap();
    let w = |i: usize| u32::from_le_bytes(got[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(w(0), 0x3c00_4400, "e4m3 0x38 = 1.0 (upper half), 0x48 = 4.0 (lower half)");
    assert_eq!(w(1), 0x387e, "1.0 -> 0x38 (upper byte); 1000 saturates to 448 = 0x7e");
    assert_eq!(w(2), 0x3c44, "f16 1.0 and 4.0 as e5m2: their top bytes");
}
