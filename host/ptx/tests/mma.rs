//! `mma.sync` and `ldmatrix` in tiny hand-written kernels: known matrices are distributed to
//! the lanes by the fragment layouts as the PTX ISA writes them ("Matrix Fragments
//! for mma.mMnNkK", and `ldmatrix`), one instruction runs, and D is
//! compared with a plain matrix product.

use vgpu_ptx::exec::{run, ExecError, Launch};
use vgpu_ptx::mem::Allocations;
use vgpu_ptx::Module;

fn launch<'a>(block: u32, params: &'a [u8]) -> Launch<'a> {
    Launch {
        grid: [1, 1, 1],
        block: [block, 1, 1],
        params,
        dynamic_shared: 0,
        globals: &[],
        budget: 1_000_000,
        functions: &[],
        printf: &|_| {},
    }
}

/// `{%rA, %rA+1, ...}`
fn list(first: usize, n: usize) -> String {
    let v: Vec<String> = (first..first + n).map(|r| format!("%r{r}")).collect();
    format!("{{{}}}", v.join(", "))
}

/// A kernel in which lane `l` loads its `na + nb + nc` fragment registers from
/// `in[l * (na+nb+nc) ..]`, runs `mma` (the instruction without operands) and stores its `nd`
/// registers of D to `out[l * nd ..]`.
fn mma_kernel(mma: &str, na: usize, nb: usize, nc: usize, nd: usize) -> String {
    let nin = na + nb + nc;
    let mut s = String::from(
        ".version 8.0\n.target sm_80\n.address_size 64\n\
         .visible .entry k(.param .u64 inp, .param .u64 outp)\n{\n.reg .b32 %r<80>;\n.reg .b64 %rd<8>;\n\
         ld.param.u64 %rd1, [inp];\nld.param.u64 %rd2, [outp];\nmov.u32 %r0, %laneid;\n",
    );
    s += &format!("mul.wide.u32 %rd3, %r0, {};\nadd.s64 %rd4, %rd1, %rd3;\n", 4 * nin);
    for j in 0..nin {
        s += &format!("ld.global.b32 %r{}, [%rd4+{}];\n", 1 + j, 4 * j);
    }
    s += &format!("{mma} {}, {}, {}, {};\n", list(40, nd), list(1, na), list(1 + na, nb), list(1 + na + nb, nc));
    s += &format!("mul.wide.u32 %rd5, %r0, {};\nadd.s64 %rd6, %rd2, %rd5;\n", 4 * nd);
    for j in 0..nd {
        s += &format!("st.global.b32 [%rd6+{}], %r{};\n", 4 * j, 40 + j);
    }
    s + "ret;\n}\n"
}

/// Run `mma` on per-lane registers `a`, `b`, `c` (each `[lane][reg]`); D's registers per lane.
fn run_mma(mma: &str, a: &[Vec<u32>], b: &[Vec<u32>], c: &[Vec<u32>], nd: usize) -> Result<Vec<Vec<u32>>, ExecError> {
    run_mma_block(mma, a, b, c, nd, 32)
}

fn run_mma_block(mma: &str, a: &[Vec<u32>], b: &[Vec<u32>], c: &[Vec<u32>], nd: usize, block: u32) -> Result<Vec<Vec<u32>>, ExecError> {
    let (na, nb, nc) = (a[0].len(), b[0].len(), c[0].len());
    let src = mma_kernel(mma, na, nb, nc, nd);
    let m = Module::parse(&src).unwrap_or_else(|e| panic!("{e}"));
    let k = m.lower(m.function("k").unwrap()).unwrap_or_else(|e| panic!("{e}"));
    let mem = Allocations::default();
    let input: Vec<u8> =
        (0..32).flat_map(|l| a[l].iter().chain(&b[l]).chain(&c[l]).flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()).collect();
    let inp = mem.alloc(&input);
    let out = mem.alloc(&vec![0u8; 32 * nd * 4]);
    let mut p = inp.to_le_bytes().to_vec();
    p.extend(out.to_le_bytes());
    run(&k, &launch(block, &p), &mem, &|| false)?;
    let bytes = mem.get(out, 32 * nd * 4);
    let words: Vec<u32> = bytes.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    Ok(words.chunks(nd).map(<[u32]>::to_vec).collect())
}

/// Pack elements (low to high) of `bits` each into `.b32` registers.
fn pack(els: &[u32], bits: u32) -> Vec<u32> {
    let per = (32 / bits) as usize;
    els.chunks(per)
        .map(|ch| ch.iter().enumerate().fold(0u32, |acc, (k, &e)| acc | (e & ((1u64 << bits) - 1) as u32) << (k as u32 * bits)))
        .collect()
}

fn unpack(regs: &[u32], bits: u32, n: usize) -> Vec<u32> {
    let per = (32 / bits) as usize;
    (0..n).map(|e| ((u64::from(regs[e / per]) >> ((e % per) as u32 * bits)) & ((1u64 << bits) - 1)) as u32).collect()
}

/// A layout: for (lane, element index) the (row, column), as the ISA's formulas.
type Layout = fn(usize, usize) -> (usize, usize);

fn g(l: usize) -> usize {
    l >> 2
}
fn t(l: usize) -> usize {
    l % 4
}

/// Per lane, its `n` elements of `mat` (`cols` wide) at `at`, packed `bits` each.
fn fragments(mat: &[u32], cols: usize, at: Layout, n: usize, bits: u32) -> Vec<Vec<u32>> {
    (0..32)
        .map(|l| {
            let els: Vec<u32> = (0..n)
                .map(|i| {
                    let (r, c) = at(l, i);
                    mat[r * cols + c]
                })
                .collect();
            pack(&els, bits)
        })
        .collect()
}

/// The M×N matrix D back from the lanes' fragments.
fn collect(d: &[Vec<u32>], rows: usize, cols: usize, at: Layout, bits: u32) -> Vec<u32> {
    let n = rows * cols / 32;
    let mut out = vec![u32::MAX; rows * cols];
    for (l, regs) in d.iter().enumerate() {
        for (i, e) in unpack(regs, bits, n).into_iter().enumerate() {
            let (r, c) = at(l, i);
            out[r * cols + c] = e;
        }
    }
    out
}

// The ISA's layouts, transcribed as written there.

/// m8n8k16 .s8/.u8: A row = groupID, col = threadID_in_group*4 + i.
fn m8n8k16_a(l: usize, i: usize) -> (usize, usize) {
    (g(l), t(l) * 4 + i)
}
/// m8n8k16: B row = threadID_in_group*4 + i, col = groupID.
fn m8n8k16_b(l: usize, i: usize) -> (usize, usize) {
    (t(l) * 4 + i, g(l))
}
/// m8n8k16: C row = groupID, col = threadID_in_group*2 + i.
fn m8n8k16_c(l: usize, i: usize) -> (usize, usize) {
    (g(l), t(l) * 2 + i)
}
/// m16n8 C/D (all types): row = groupID for c0, c1, groupID + 8 for c2, c3;
/// col = threadID_in_group*2 + (i & 1).
fn m16n8_c(l: usize, i: usize) -> (usize, usize) {
    (if i < 2 { g(l) } else { g(l) + 8 }, t(l) * 2 + (i & 1))
}
/// m16n8k8 .f16/.bf16 A: row = groupID for a0, a1, +8 for a2, a3; col = tig*2 + (i & 1).
fn m16n8k8_a(l: usize, i: usize) -> (usize, usize) {
    (if i < 2 { g(l) } else { g(l) + 8 }, t(l) * 2 + (i & 1))
}
/// m16n8k8 .f16/.bf16 B: row = tig*2 + i, col = groupID.
fn m16n8k8_b(l: usize, i: usize) -> (usize, usize) {
    (t(l) * 2 + i, g(l))
}
/// m16n8k8 .tf32 A: row = groupID for a0, a2, +8 for a1, a3; col = tig for a0, a1, tig+4 for a2, a3.
fn m16n8k8_tf32_a(l: usize, i: usize) -> (usize, usize) {
    (if i == 0 || i == 2 { g(l) } else { g(l) + 8 }, if i < 2 { t(l) } else { t(l) + 4 })
}
/// m16n8k8 .tf32 B: row = tig for b0, tig+4 for b1; col = groupID.
fn m16n8k8_tf32_b(l: usize, i: usize) -> (usize, usize) {
    (if i == 0 { t(l) } else { t(l) + 4 }, g(l))
}
/// m16n8k16 .f16/.bf16 A: row = groupID for 0 <= i < 2 || 4 <= i < 6, else +8;
/// col = tig*2 + (i & 1) for i < 4, +8 for i >= 4.
fn m16n8k16_a(l: usize, i: usize) -> (usize, usize) {
    (if i < 2 || (4..6).contains(&i) { g(l) } else { g(l) + 8 }, t(l) * 2 + (i & 1) + if i >= 4 { 8 } else { 0 })
}
/// m16n8k16 .f16/.bf16 B: row = tig*2 + (i & 1) for i < 2, +8 for i >= 2; col = groupID.
fn m16n8k16_b(l: usize, i: usize) -> (usize, usize) {
    (t(l) * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, g(l))
}
/// m16n8k16 .s8/.u8 A: row = groupID for i < 4, +8 for i >= 4; col = tig*4 + (i & 3).
fn m16n8k16_int_a(l: usize, i: usize) -> (usize, usize) {
    (if i < 4 { g(l) } else { g(l) + 8 }, t(l) * 4 + (i & 3))
}
/// m16n8k16 .s8/.u8 B: row = tig*4 + i, col = groupID.
fn m16n8k16_int_b(l: usize, i: usize) -> (usize, usize) {
    (t(l) * 4 + i, g(l))
}
/// m16n8k32 .s8/.u8 A: row = groupID for 0 <= i < 4 || 8 <= i < 12, else +8;
/// col = tig*4 + (i & 3) for i < 8, +16 for i >= 8.
fn m16n8k32_a(l: usize, i: usize) -> (usize, usize) {
    (if i < 4 || (8..12).contains(&i) { g(l) } else { g(l) + 8 }, t(l) * 4 + (i & 3) + if i >= 8 { 16 } else { 0 })
}
/// m16n8k32 .s8/.u8 B: row = tig*4 + (i & 3) for i < 4, +16 for i >= 4; col = groupID.
fn m16n8k32_b(l: usize, i: usize) -> (usize, usize) {
    (t(l) * 4 + (i & 3) + if i >= 4 { 16 } else { 0 }, g(l))
}

/// A reference integer mma: D = A·B + C (A m×k, B k×n row-major, C m×n), wrapping or saturating.
#[allow(clippy::too_many_arguments)]
fn int_ref(a: &[i64], b: &[i64], c: &[i64], m: usize, n: usize, k: usize, sat: bool) -> Vec<u32> {
    (0..m * n)
        .map(|x| {
            let (r, col) = (x / n, x % n);
            let s: i64 = (0..k).map(|q| a[r * k + q] * b[q * n + col]).sum::<i64>() + c[x];
            if sat {
                s.clamp(i32::MIN.into(), i32::MAX.into()) as u32
            } else {
                s as u32
            }
        })
        .collect()
}

fn float_ref(a: &[f64], b: &[f64], c: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    (0..m * n).map(|x| (0..k).map(|q| a[(x / n) * k + q] * b[q * n + x % n]).sum::<f64>() + c[x]).collect()
}

struct IntCase {
    mma: &'static str,
    m: usize,
    n: usize,
    k: usize,
    la: Layout,
    lb: Layout,
    lc: Layout,
    a_signed: bool,
    b_signed: bool,
}

fn check_int(case: &IntCase, big_c: bool) {
    let (m, n, k) = (case.m, case.n, case.k);
    let val = |x: usize, s: bool| -> i64 {
        if s {
            (x * 37 % 256) as i64 - 128
        } else {
            (x * 53 % 256) as i64
        }
    };
    let a: Vec<i64> = (0..m * k).map(|x| val(x, case.a_signed)).collect();
    let b: Vec<i64> = (0..k * n).map(|x| val(x + 7, case.b_signed)).collect();
    let c: Vec<i64> = (0..m * n).map(|x| if big_c { i64::from(i32::MAX) - 1000 + x as i64 } else { x as i64 * 1000 - 20000 }).collect();
    let bits = |v: &[i64]| v.iter().map(|&x| x as u32).collect::<Vec<u32>>();
    let fa = fragments(&bits(&a), k, case.la, m * k / 32, 8);
    let fb = fragments(&bits(&b), n, case.lb, k * n / 32, 8);
    let fc = fragments(&bits(&c), n, case.lc, m * n / 32, 32);
    let sat = case.mma.contains("satfinite");
    let d = run_mma(case.mma, &fa, &fb, &fc, m * n / 32).unwrap_or_else(|e| panic!("{}: {e}", case.mma));
    let got = collect(&d, m, n, case.lc, 32);
    assert_eq!(got, int_ref(&a, &b, &c, m, n, k, sat), "{}", case.mma);
}

#[test]
fn mma_m8n8k16_s8_wraps_and_satfinite_saturates() {
    let case =
        |mma, a_signed, b_signed| IntCase { mma, m: 8, n: 8, k: 16, la: m8n8k16_a, lb: m8n8k16_b, lc: m8n8k16_c, a_signed, b_signed };
    check_int(&case("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32", true, true), false);
    check_int(&case("mma.sync.aligned.m8n8k16.row.col.s32.u8.s8.s32", false, true), false);
    check_int(&case("mma.sync.aligned.m8n8k16.row.col.s32.u8.u8.s32", false, false), false);
    // C near i32::MAX: some sums overflow; without .satfinite they wrap, with it they clamp.
    check_int(&case("mma.sync.aligned.m8n8k16.row.col.s32.u8.u8.s32", false, false), true);
    check_int(&case("mma.sync.aligned.m8n8k16.row.col.satfinite.s32.u8.u8.s32", false, false), true);
    check_int(&case("mma.sync.aligned.m8n8k16.row.col.satfinite.s32.s8.s8.s32", true, true), true);
}

#[test]
fn mma_m16n8k16_and_m16n8k32_s8() {
    for (mma, la, lb, k) in [
        ("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32", m16n8k16_int_a as Layout, m16n8k16_int_b as Layout, 16),
        ("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32", m16n8k32_a, m16n8k32_b, 32),
        ("mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32", m16n8k32_a, m16n8k32_b, 32),
    ] {
        for big in [false, true] {
            check_int(&IntCase { mma, m: 16, n: 8, k, la, lb, lc: m16n8_c, a_signed: true, b_signed: true }, big);
        }
    }
}

#[derive(Clone, Copy)]
enum F {
    F16,
    Bf16,
    Tf32,
    F32,
}

impl F {
    fn bits(self) -> u32 {
        match self {
            F::F16 | F::Bf16 => 16,
            _ => 32,
        }
    }
    fn enc(self, x: f64) -> u32 {
        match self {
            F::F16 => u32::from(half::f16::from_f64(x).to_bits()),
            F::Bf16 => u32::from(half::bf16::from_f64(x).to_bits()),
            // Garbage in the 13 low bits a .tf32 operand ignores.
            F::Tf32 => (x as f32).to_bits() | 0x1555,
            F::F32 => (x as f32).to_bits(),
        }
    }
    fn dec(self, b: u32) -> f64 {
        match self {
            F::F16 => half::f16::from_bits(b as u16).to_f64(),
            F::Bf16 => half::bf16::from_bits(b as u16).to_f64(),
            _ => f64::from(f32::from_bits(b)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_float(mma: &str, k: usize, ab: F, cd: F, la: Layout, lb: Layout) {
    let (m, n) = (16, 8);
    // Small multiples of 1/4 and 1/8: exact in every type, products and sums exact too.
    let a: Vec<f64> = (0..m * k).map(|x| ((x * 7 % 13) as f64 - 6.0) * 0.25).collect();
    let b: Vec<f64> = (0..k * n).map(|x| ((x * 5 % 11) as f64 - 5.0) * 0.125).collect();
    let c: Vec<f64> = (0..m * n).map(|x| x as f64 * 0.5 - 16.0).collect();
    let enc = |v: &[f64], f: F| v.iter().map(|&x| f.enc(x)).collect::<Vec<u32>>();
    let fa = fragments(&enc(&a, ab), k, la, m * k / 32, ab.bits());
    let fb = fragments(&enc(&b, ab), n, lb, k * n / 32, ab.bits());
    let fc = fragments(&enc(&c, cd), n, m16n8_c, m * n / 32, cd.bits());
    let nd = (m * n / 32) * cd.bits() as usize / 32;
    let d = run_mma(mma, &fa, &fb, &fc, nd).unwrap_or_else(|e| panic!("{mma}: {e}"));
    let got: Vec<f64> = collect(&d, m, n, m16n8_c, cd.bits()).into_iter().map(|b| cd.dec(b)).collect();
    assert_eq!(got, float_ref(&a, &b, &c, m, n, k), "{mma}");
}

#[test]
fn mma_m16n8k8_f16_bf16_and_tf32() {
    check_float("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32", 8, F::F16, F::F32, m16n8k8_a, m16n8k8_b);
    check_float("mma.sync.aligned.m16n8k8.row.col.f16.f16.f16.f16", 8, F::F16, F::F16, m16n8k8_a, m16n8k8_b);
    check_float("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32", 8, F::Bf16, F::F32, m16n8k8_a, m16n8k8_b);
    check_float("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", 8, F::Tf32, F::F32, m16n8k8_tf32_a, m16n8k8_tf32_b);
}

#[test]
fn mma_m16n8k16_f16_and_bf16() {
    check_float("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", 16, F::F16, F::F32, m16n8k16_a, m16n8k16_b);
    check_float("mma.sync.aligned.m16n8k16.row.col.f16.f16.f16.f16", 16, F::F16, F::F16, m16n8k16_a, m16n8k16_b);
    check_float("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", 16, F::Bf16, F::F32, m16n8k16_a, m16n8k16_b);
}

#[test]
fn mma_refuses_a_partial_warp_and_unknown_forms() {
    let z = |n| vec![vec![0u32; n]; 32];
    let e = run_mma_block("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32", &z(2), &z(1), &z(4), 4, 16).unwrap_err();
    assert!(matches!(&e, ExecError::Unsupported { what, .. } if what.contains("16 of the warp's 32 lanes")), "{e}");
    // bf16 with f16 accumulators is not an mma form; nor is .col.row for these shapes.
    for bad in ["mma.sync.aligned.m16n8k8.row.col.f16.bf16.bf16.f16", "mma.sync.aligned.m16n8k16.col.row.f32.f16.f16.f32"] {
        let e = run_mma(bad, &z(2), &z(1), &z(2), 2).unwrap_err();
        assert!(matches!(&e, ExecError::Unsupported { what, .. } if what.contains("this form of mma")), "{bad}: {e}");
    }
}

#[test]
fn mma_refuses_immediate_fragments() {
    let src = mma_kernel("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32", 2, 1, 4, 4)
        .replace("{%r4, %r5, %r6, %r7}", "{0f3F800000, %r5, %r6, %r7}");
    let m = Module::parse(&src).unwrap();
    let k = m.lower(m.function("k").unwrap()).unwrap();
    let mem = Allocations::default();
    let (inp, out) = (mem.alloc(&[0u8; 32 * 7 * 4]), mem.alloc(&[0u8; 32 * 4 * 4]));
    let p: Vec<u8> = inp.to_le_bytes().into_iter().chain(out.to_le_bytes()).collect();
    let e = run(&k, &launch(32, &p), &mem, &|| false).unwrap_err();
    assert!(matches!(&e, ExecError::Unsupported { what, .. } if what.contains("fragments are registers")), "{e}");
}

/// A kernel that fills 32 rows of 8 `.b16` in shared memory with element `e` = its index
/// (row `r`, column `c`: `8r + c`), then runs `ldm` with lane `l` giving the address of row
/// `(5l + 3) % 32`, and stores the `n` destination registers to `out[l * n ..]`.
fn ldmatrix_kernel(ldm: &str, n: usize, generic: bool) -> String {
    let mut s = String::from(
        ".version 8.0\n.target sm_80\n.address_size 64\n\
         .shared .align 16 .b8 tile[512];\n\
         .visible .entry k(.param .u64 outp)\n{\n.reg .b32 %r<40>;\n.reg .b64 %rd<12>;\n\
         ld.param.u64 %rd2, [outp];\nmov.u32 %r0, %laneid;\nmov.u32 %r1, tile;\n\
         shl.b32 %r2, %r0, 4;\nadd.s32 %r3, %r1, %r2;\nshl.b32 %r4, %r0, 3;\n",
    );
    // Word q of row l: elements 8l + 2q (low) and 8l + 2q + 1 (high).
    for q in 0..4 {
        s += &format!(
            "add.s32 %r5, %r4, {};\nadd.s32 %r6, %r5, 1;\nshl.b32 %r6, %r6, 16;\nor.b32 %r7, %r5, %r6;\nst.shared.b32 [%r3+{}], %r7;\n",
            2 * q,
            4 * q
        );
    }
    s += "bar.sync 0;\nmad.lo.s32 %r8, %r0, 5, 3;\nrem.u32 %r8, %r8, 32;\nshl.b32 %r8, %r8, 4;\nadd.s32 %r9, %r1, %r8;\n";
    let addr = if generic {
        s += "cvt.u64.u32 %rd7, %r9;\ncvta.shared.u64 %rd8, %rd7;\n";
        "[%rd8]"
    } else {
        "[%r9]"
    };
    s += &format!("{ldm} {}, {addr};\n", list(20, n));
    s += &format!("mul.wide.u32 %rd5, %r0, {};\nadd.s64 %rd6, %rd2, %rd5;\n", 4 * n);
    for j in 0..n {
        s += &format!("st.global.b32 [%rd6+{}], %r{};\n", 4 * j, 20 + j);
    }
    s + "ret;\n}\n"
}

fn run_ldmatrix(ldm: &str, n: usize, generic: bool) -> Vec<Vec<u32>> {
    let src = ldmatrix_kernel(ldm, n, generic);
    let m = Module::parse(&src).unwrap_or_else(|e| panic!("{e}"));
    let k = m.lower(m.function("k").unwrap()).unwrap_or_else(|e| panic!("{e}"));
    let mem = Allocations::default();
    let out = mem.alloc(&vec![0u8; 32 * n * 4]);
    run(&k, &launch(32, &out.to_le_bytes()), &mem, &|| false).unwrap_or_else(|e| panic!("{ldm}: {e}"));
    let words: Vec<u32> = mem.get(out, 32 * n * 4).chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    words.chunks(n).map(<[u32]>::to_vec).collect()
}

#[test]
fn ldmatrix_gives_each_lane_its_row_fragment() {
    // Element (row r, column c) of matrix j: row r of matrix j is memory row (5(8j + r) + 3) % 32.
    let el = |j: usize, r: usize, c: usize| (8 * ((5 * (8 * j + r) + 3) % 32) + c) as u32;
    for (n, word) in [(1, "x1"), (2, "x2"), (4, "x4")] {
        for trans in [false, true] {
            for generic in [false, true] {
                let ldm = format!(
                    "ldmatrix.sync.aligned.m8n8.{word}{}{}.b16",
                    if trans { ".trans" } else { "" },
                    if generic { "" } else { ".shared" }
                );
                let got = run_ldmatrix(&ldm, n, generic);
                for (l, regs) in got.iter().enumerate() {
                    for (j, &v) in regs.iter().enumerate() {
                        // ISA: lane l holds row l/4, columns 2(l%4), 2(l%4)+1 (of the transpose with .trans).
                        let (r, c) = (l / 4, 2 * (l % 4));
                        let (lo, hi) = if trans { (el(j, c, r), el(j, c + 1, r)) } else { (el(j, r, c), el(j, r, c + 1)) };
                        assert_eq!(v, lo | hi << 16, "{ldm}: lane {l} register {j}");
                    }
                }
            }
        }
    }
}
