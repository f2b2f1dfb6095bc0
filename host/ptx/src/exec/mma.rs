//! Warp-level matrix instructions: `mma.sync` and `ldmatrix` (PTX ISA, "Warp Level
//! Matrix Multiply-Accumulate Instructions").
//!
//! Both are warp-wide (`.sync.aligned`): every lane of the warp must execute the same
//! instruction together. The interpreter refuses one reached by only some lanes (a partial
//! warp, divergence, a guard true for only some lanes) with `ExecError::Unsupported` rather
//! than computing from registers of lanes that are not there.
//!
//! **Fragments** (ISA, "Matrix Fragments for mma.mMnNkK", one section a shape): each lane holds some
//! elements of A (M×K, row-major), B (K×N, column-major) and C/D (M×N), packed low to high
//! in its `.b32` registers (four `.s8`/`.u8`, two `.f16`/`.bf16`, one `.tf32`/`.f32`/`.s32`
//! per register). With `g = %laneid >> 2` and `t = %laneid % 4`, element `i` of a lane is at
//! (row, column):
//!
//! | shape, types        | A                                        | B                                  |
//! |---------------------|------------------------------------------|------------------------------------|
//! | m8n8k16 s8/u8       | (g, 4t + i)                              | (4t + i, g)                        |
//! | m16n8k8 f16/bf16    | (g + 8⌊i/2⌋, 2t + i%2)                   | (2t + i, g)                        |
//! | m16n8k8 tf32        | (g + 8(i%2), t + 4⌊i/2⌋)                 | (t + 4i, g)                        |
//! | m16n8k16 f16/bf16   | (g + 8(⌊i/2⌋%2), 2t + i%2 + 8⌊i/4⌋)      | (2t + i%2 + 8⌊i/2⌋, g)             |
//! | m16n8k16 s8/u8      | (g + 8⌊i/4⌋, 4t + i%4)                   | (4t + i, g)                        |
//! | m16n8k32 s8/u8      | (g + 8(⌊i/4⌋%2), 4t + i%4 + 16⌊i/8⌋)     | (4t + i%4 + 16⌊i/4⌋, g)            |
//!
//! C and D: m8n8k16 (g, 2t + i); every m16n8 shape (g + 8⌊i/2⌋, 2t + i%2).
//!
//! **Arithmetic**: integer products and sums are exact (i64); without `.satfinite` the s32
//! result wraps, with it it saturates. Float products are exact in f64 (f16, bf16 and tf32
//! have at most 11 significant bits), summed in f64 with C and rounded once to D's type; the
//! hardware's internal order and precision are implementation-defined, so results agree with
//! a device to within the last bit or so of f32. `.tf32` operands ignore their 13 low
//! mantissa bits, as the ISA specifies.

use super::{address, illegal, load, set, src, unsupported, Ctx, Warp, R};
use crate::ast::Scalar;
use crate::lower::{Inst, Mod, Opd, Word};

/// An element type of an mma operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum El {
    S8,
    U8,
    F16,
    Bf16,
    Tf32,
    F32,
    S32,
}

impl El {
    fn bits(self) -> u32 {
        match self {
            El::S8 | El::U8 => 8,
            El::F16 | El::Bf16 => 16,
            El::Tf32 | El::F32 | El::S32 => 32,
        }
    }

    fn is_int(self) -> bool {
        matches!(self, El::S8 | El::U8 | El::S32)
    }

    /// An integer element's value (`raw` holds its `bits()` low bits).
    fn int(self, raw: u32) -> i64 {
        match self {
            El::S8 => i64::from(raw as u8 as i8),
            El::S32 => i64::from(raw as i32),
            _ => i64::from(raw),
        }
    }

    /// A float element's value.
    fn float(self, raw: u32) -> f64 {
        match self {
            El::F16 => half::f16::from_bits(raw as u16).to_f64(),
            El::Bf16 => half::bf16::from_bits(raw as u16).to_f64(),
            El::Tf32 => f64::from(f32::from_bits(raw & !0x1fff)),
            _ => f64::from(f32::from_bits(raw)),
        }
    }
}

/// Which matrix a fragment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    A,
    B,
    C,
}

/// The shapes implemented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    M8n8k16,
    M16n8k8,
    M16n8k16,
    M16n8k32,
}

impl Shape {
    fn mnk(self) -> (usize, usize, usize) {
        match self {
            Shape::M8n8k16 => (8, 8, 16),
            Shape::M16n8k8 => (16, 8, 8),
            Shape::M16n8k16 => (16, 8, 16),
            Shape::M16n8k32 => (16, 8, 32),
        }
    }
}

/// (row, column) of element `i` of `lane`'s fragment of `f` (the table in the module docs);
/// `ab` is A's and B's element type.
fn position(s: Shape, ab: El, f: Frag, lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    match (s, f) {
        (Shape::M8n8k16, Frag::C) => (g, 2 * t + i),
        (_, Frag::C) => (g + 8 * (i / 2), 2 * t + i % 2),
        (Shape::M8n8k16, Frag::A) => (g, 4 * t + i),
        (Shape::M8n8k16, Frag::B) => (4 * t + i, g),
        (Shape::M16n8k8, Frag::A) if ab == El::Tf32 => (g + 8 * (i % 2), t + 4 * (i / 2)),
        (Shape::M16n8k8, Frag::B) if ab == El::Tf32 => (t + 4 * i, g),
        (Shape::M16n8k8, Frag::A) => (g + 8 * (i / 2), 2 * t + i % 2),
        (Shape::M16n8k8, Frag::B) => (2 * t + i, g),
        (Shape::M16n8k16, Frag::A) if ab.is_int() => (g + 8 * (i / 4), 4 * t + i % 4),
        (Shape::M16n8k16, Frag::B) if ab.is_int() => (4 * t + i, g),
        (Shape::M16n8k16, Frag::A) => (g + 8 * ((i / 2) % 2), 2 * t + i % 2 + 8 * (i / 4)),
        (Shape::M16n8k16, Frag::B) => (2 * t + i % 2 + 8 * (i / 2), g),
        (Shape::M16n8k32, Frag::A) => (g + 8 * ((i / 4) % 2), 4 * t + i % 4 + 16 * (i / 8)),
        (Shape::M16n8k32, Frag::B) => (4 * t + i % 4 + 16 * (i / 4), g),
    }
}

/// What one `mma` computes.
struct Form {
    shape: Shape,
    d: El,
    a: El,
    b: El,
    c: El,
    satfinite: bool,
}

/// The instruction's shape and types, if vgpu implements that combination.
fn form(i: &Inst) -> Option<Form> {
    let shape = i.mods.iter().find_map(|m| match m {
        Mod::W(Word::M8n8k16) => Some(Shape::M8n8k16),
        Mod::W(Word::M16n8k8) => Some(Shape::M16n8k8),
        Mod::W(Word::M16n8k16) => Some(Shape::M16n8k16),
        Mod::W(Word::M16n8k32) => Some(Shape::M16n8k32),
        _ => None,
    })?;
    let mut els = Vec::new();
    for m in &i.mods {
        els.push(match m {
            Mod::Ty(Scalar::S8) => El::S8,
            Mod::Ty(Scalar::U8) => El::U8,
            Mod::Ty(Scalar::F16) => El::F16,
            Mod::Ty(Scalar::Bf16) => El::Bf16,
            Mod::Ty(Scalar::F32) => El::F32,
            Mod::Ty(Scalar::S32) => El::S32,
            Mod::W(Word::Tf32) => El::Tf32,
            Mod::Ty(_) => return None,
            Mod::W(Word::Sync | Word::Aligned | Word::Row | Word::Col | Word::Satfinite) => continue,
            Mod::W(w) if Some(shape) == shape_of(*w) => continue,
            Mod::W(_) => return None,
        });
    }
    let [d, a, b, c] = els[..] else { return None };
    let f = Form { shape, d, a, b, c, satfinite: i.mods.contains(&Mod::W(Word::Satfinite)) };
    // `.row.col` is the only layout these shapes take; both must be written.
    let (row, col) = (i.mods.iter().position(|m| *m == Mod::W(Word::Row)), i.mods.iter().position(|m| *m == Mod::W(Word::Col)));
    if !matches!((row, col), (Some(r), Some(c)) if r < c) {
        return None;
    }
    supported(&f).then_some(f)
}

fn shape_of(w: Word) -> Option<Shape> {
    Some(match w {
        Word::M8n8k16 => Shape::M8n8k16,
        Word::M16n8k8 => Shape::M16n8k8,
        Word::M16n8k16 => Shape::M16n8k16,
        Word::M16n8k32 => Shape::M16n8k32,
        _ => return None,
    })
}

/// The combinations of the ISA's `mma` ("Warp-level matrix multiply-accumulate
/// instructions: mma") that vgpu implements.
fn supported(f: &Form) -> bool {
    let int8 = |e: El| matches!(e, El::S8 | El::U8);
    match f.shape {
        Shape::M8n8k16 | Shape::M16n8k32 => int8(f.a) && int8(f.b) && f.c == El::S32 && f.d == El::S32,
        Shape::M16n8k16 if int8(f.a) => int8(f.b) && f.c == El::S32 && f.d == El::S32,
        Shape::M16n8k8 | Shape::M16n8k16 => {
            if f.satfinite || f.a != f.b {
                return false;
            }
            match f.a {
                El::F16 => matches!((f.d, f.c), (El::F32 | El::F16, El::F32 | El::F16)),
                El::Bf16 => f.d == El::F32 && f.c == El::F32,
                El::Tf32 => f.shape == Shape::M16n8k8 && f.d == El::F32 && f.c == El::F32,
                _ => false,
            }
        }
    }
}

/// Every lane of the warp at the instruction and executing it (`run == 0`: every guard false,
/// nothing to do).
fn whole_warp(cx: &Ctx<'_, '_>, i: &Inst, run: u32, mask: u32) -> R<bool> {
    if run == 0 {
        return Ok(false);
    }
    if run != u32::MAX || mask != u32::MAX {
        return Err(unsupported(
            cx,
            i,
            format!(
                "{} executed by {} of the warp's 32 lanes (it is warp-wide: all 32 lanes must execute it together)",
                i.op.word(),
                run.count_ones()
            ),
        ));
    }
    Ok(true)
}

/// The registers of a vector operand (or a single register).
fn regs<'i>(cx: &Ctx<'_, '_>, i: &Inst, o: &'i Opd, n: usize) -> R<&'i [Opd]> {
    let v: &[Opd] = match o {
        Opd::Vector(v) => v,
        other => std::slice::from_ref(other),
    };
    if let Some(o) = v.iter().find(|o| !matches!(o, Opd::Reg(_))) {
        return Err(unsupported(cx, i, format!("{} with the operand {o:?} (its fragments are registers)", i.op.word())));
    }
    if v.len() != n {
        return Err(unsupported(cx, i, format!("{} with an operand of {} registers where the form takes {n}", i.op.word(), v.len())));
    }
    Ok(v)
}

/// Gather the matrix `f` (`rows`×`cols`, raw element bits, row-major) from every lane's
/// fragment registers `o`.
#[allow(clippy::too_many_arguments)]
fn gather(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, o: &Opd, s: Shape, ab: El, el: El, f: Frag, dims: (usize, usize)) -> R<Vec<u32>> {
    let (rows, cols) = dims;
    let per = (32 / el.bits()) as usize;
    let count = rows * cols / 32;
    let rs = regs(cx, i, o, count.div_ceil(per))?;
    let mut out = vec![0u32; rows * cols];
    let el_mask = if el.bits() == 32 { u32::MAX } else { (1 << el.bits()) - 1 };
    for lane in 0..32 {
        let vals = rs.iter().map(|r| src(cx, w, i, r, Scalar::B32, lane).map(|v| v as u32)).collect::<R<Vec<u32>>>()?;
        for e in 0..count {
            let (r, c) = position(s, ab, f, lane, e);
            out[r * cols + c] = (vals[e / per] >> ((e % per) as u32 * el.bits())) & el_mask;
        }
    }
    Ok(out)
}

/// `mma.sync.aligned.shape.row.col{.satfinite}.dtype.atype.btype.ctype d, a, b, c`.
pub(super) fn mma(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32, mask: u32) -> R<()> {
    let f = form(i).ok_or_else(|| {
        unsupported(
            cx,
            i,
            "this form of mma (vgpu has m8n8k16/m16n8k16/m16n8k32 s8/u8, m16n8k8 f16/bf16/tf32, m16n8k16 f16/bf16, .row.col)",
        )
    })?;
    if i.opds.len() != 4 {
        return Err(unsupported(cx, i, "mma without its four operands d, a, b, c"));
    }
    if !whole_warp(cx, i, run, mask)? {
        return Ok(());
    }
    let (m, n, k) = f.shape.mnk();
    let a = gather(cx, w, i, &i.opds[1], f.shape, f.a, f.a, Frag::A, (m, k))?;
    let b = gather(cx, w, i, &i.opds[2], f.shape, f.a, f.b, Frag::B, (k, n))?;
    let c = gather(cx, w, i, &i.opds[3], f.shape, f.a, f.c, Frag::C, (m, n))?;
    let d: Vec<u32> = (0..m * n).map(|x| element(&f, &a, &b, &c, x / n, x % n, k, n)).collect();
    let per = (32 / f.d.bits()) as usize;
    let count = m * n / 32;
    let ds = regs(cx, i, &i.opds[0], count.div_ceil(per))?;
    let ds: Vec<_> = ds
        .iter()
        .map(|o| match o {
            Opd::Reg(r) => Ok(*r),
            other => Err(unsupported(cx, i, format!("mma into {other:?}"))),
        })
        .collect::<R<_>>()?;
    for lane in 0..32 {
        let mut vals = vec![0u32; ds.len()];
        for e in 0..count {
            let (r, col) = position(f.shape, f.a, Frag::C, lane, e);
            vals[e / per] |= d[r * n + col] << ((e % per) as u32 * f.d.bits());
        }
        for (&r, v) in ds.iter().zip(vals) {
            set(w, r, lane, u64::from(v));
        }
    }
    Ok(())
}

/// D(r, c) = Σₖ A(r, k)·B(k, c) + C(r, c), as D's raw bits.
#[allow(clippy::too_many_arguments)]
fn element(f: &Form, a: &[u32], b: &[u32], c: &[u32], r: usize, col: usize, k: usize, n: usize) -> u32 {
    if f.d.is_int() {
        let sum: i64 = (0..k).map(|x| f.a.int(a[r * k + x]) * f.b.int(b[x * n + col])).sum::<i64>() + f.c.int(c[r * n + col]);
        if f.satfinite {
            sum.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as u32
        } else {
            sum as u32
        }
    } else {
        let sum: f64 = (0..k).map(|x| f.a.float(a[r * k + x]) * f.b.float(b[x * n + col])).sum::<f64>() + f.c.float(c[r * n + col]);
        match f.d {
            El::F16 => u32::from(half::f16::from_f64(sum).to_bits()),
            _ => (sum as f32).to_bits(),
        }
    }
}

/// `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}{.shared}.b16 d, [a]` (ISA, "Warp-level matrix load
/// instruction: ldmatrix").
///
/// Matrix `j` (of 1, 2 or 4) is 8 rows of 8 `.b16` (16 bytes, 16-byte aligned); lane `8j + r`
/// gives the address of its row `r` (lanes past `8·count` give none). Destination register
/// `j` of lane `l` gets the elements (row `l/4`, columns `2(l%4)` and `2(l%4)+1`) of matrix
/// `j`, the first in the low half; with `.trans`, of the transposed matrix (memory row
/// `2(l%4)` and `2(l%4)+1`, element `l/4`) — the fragment layout of mma's A and B.
pub(super) fn ldmatrix(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32, mask: u32) -> R<()> {
    let count = if i.mods.contains(&Mod::W(Word::X4)) {
        4
    } else if i.mods.contains(&Mod::W(Word::X2)) {
        2
    } else if i.mods.contains(&Mod::W(Word::X1)) {
        1
    } else {
        return Err(unsupported(cx, i, "ldmatrix without .x1, .x2 or .x4"));
    };
    let ok_mod = |m: &Mod| {
        matches!(
            m,
            Mod::W(Word::Sync | Word::Aligned | Word::M8n8 | Word::X1 | Word::X2 | Word::X4 | Word::Trans | Word::Shared)
                | Mod::Ty(Scalar::B16)
        )
    };
    if !i.mods.contains(&Mod::W(Word::M8n8)) || !i.mods.contains(&Mod::Ty(Scalar::B16)) || !i.mods.iter().all(ok_mod) {
        return Err(unsupported(cx, i, "this form of ldmatrix (vgpu has .m8n8 .b16)"));
    }
    if i.opds.len() != 2 {
        return Err(unsupported(cx, i, "ldmatrix without its two operands"));
    }
    let ds: Vec<_> = regs(cx, i, &i.opds[0], count)?
        .iter()
        .map(|o| match o {
            Opd::Reg(r) => Ok(*r),
            other => Err(unsupported(cx, i, format!("ldmatrix into {other:?}"))),
        })
        .collect::<R<_>>()?;
    if !whole_warp(cx, i, run, mask)? {
        return Ok(());
    }
    // rows[j][r][c]: element c of row r of matrix j.
    let mut rows = vec![[[0u16; 8]; 8]; count];
    for (j, m) in rows.iter_mut().enumerate() {
        for (r, row) in m.iter_mut().enumerate() {
            let lane = 8 * j + r;
            let (space, at) = address(cx, w, i, &i.opds[1], lane)?;
            if at % 16 != 0 {
                return Err(illegal(cx, i, at, 16));
            }
            let mut buf = [0u8; 16];
            load(cx, w, i, space, at, lane, &mut buf)?;
            for (c, e) in row.iter_mut().enumerate() {
                *e = u16::from_le_bytes([buf[2 * c], buf[2 * c + 1]]);
            }
        }
    }
    let trans = i.mods.contains(&Mod::W(Word::Trans));
    for lane in 0..32 {
        let (r, c) = (lane / 4, 2 * (lane % 4));
        for (j, &d) in ds.iter().enumerate() {
            let (lo, hi) = if trans { (rows[j][c][r], rows[j][c + 1][r]) } else { (rows[j][r][c], rows[j][r][c + 1]) };
            set(w, d, lane, u64::from(lo) | u64::from(hi) << 16);
        }
    }
    Ok(())
}
