//! Warp reductions and matches over a member mask: `redux.sync` and `match.sync` (PTX ISA,
//! "Parallel Synchronization and Communication Instructions: redux.sync" and "match.sync").
//!
//! Every lane in `membermask` must execute the same instruction together, and every lane
//! executing it must be in its `membermask`; otherwise the ISA leaves the result undefined, and
//! the interpreter refuses it (naming the line) rather than reduce over whichever lanes are
//! there.

use super::{lanes, mask_to, sext, src, unsupported, Ctx, Warp, R};
use crate::ast::Scalar;
use crate::lower::{Inst, Mod, Opd, Word};

/// The member mask (the last operand), checked against the lanes that run.
fn members(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, run: u32) -> R<u32> {
    let o = i.opds.last().ok_or_else(|| unsupported(cx, i, format!("{} without a member mask", i.op.word())))?;
    let first = lanes(run).next().unwrap_or(0);
    let m = src(cx, w, i, o, Scalar::B32, first)? as u32;
    for l in lanes(run) {
        if src(cx, w, i, o, Scalar::B32, l)? as u32 != m {
            return Err(unsupported(cx, i, format!("{} whose lanes give different member masks", i.op.word())));
        }
    }
    if m != run {
        return Err(unsupported(
            cx,
            i,
            format!(
                "{} with member mask {m:#010x} executed by lanes {run:#010x} (every member must execute it, and only members)",
                i.op.word()
            ),
        ));
    }
    Ok(m)
}

/// `redux.sync.op.type d, a, membermask`: `.add`, `.min`, `.max` on `.u32`/`.s32`; `.and`,
/// `.or`, `.xor` on `.b32`. Every member gets the reduction of `a` over all members
/// (`.add` wraps).
pub(super) fn redux(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    if run == 0 {
        return Ok(());
    }
    let ty = i.mods.iter().find_map(|m| if let Mod::Ty(t) = m { Some(*t) } else { None });
    let op = i.mods.iter().find_map(|m| match m {
        Mod::W(o @ (Word::AddOp | Word::Min | Word::Max | Word::And | Word::Or | Word::Xor)) => Some(*o),
        _ => None,
    });
    let ok_mods = i
        .mods
        .iter()
        .all(|m| matches!(m, Mod::W(Word::Sync | Word::AddOp | Word::Min | Word::Max | Word::And | Word::Or | Word::Xor) | Mod::Ty(_)));
    let (Some(ty), Some(op), true) = (ty, op, ok_mods) else {
        return Err(unsupported(cx, i, "this form of redux.sync"));
    };
    let arith = matches!(op, Word::AddOp | Word::Min | Word::Max);
    if (arith && !matches!(ty, Scalar::U32 | Scalar::S32)) || (!arith && ty != Scalar::B32) {
        return Err(unsupported(cx, i, format!("redux.sync.{}.{ty:?} (vgpu has add/min/max on .u32/.s32, and/or/xor on .b32)", op.word())));
    }
    let Some(Opd::Reg(d)) = i.opds.first() else { return Err(unsupported(cx, i, "redux.sync into a non-register")) };
    let m = members(cx, w, i, run)?;
    let vals = lanes(m).map(|l| src(cx, w, i, &i.opds[1], ty, l).map(|v| mask_to(Scalar::B32, v))).collect::<R<Vec<u64>>>()?;
    let signed = ty == Scalar::S32;
    let fold = |f: fn(i64, i64) -> i64| vals.iter().map(|&v| if signed { sext(Scalar::S32, v) } else { v as i64 }).reduce(f).unwrap_or(0);
    let r = match op {
        Word::AddOp => fold(i64::wrapping_add),
        Word::Min => fold(i64::min),
        Word::Max => fold(i64::max),
        Word::And => fold(|a, b| a & b),
        Word::Or => fold(|a, b| a | b),
        _ => fold(|a, b| a ^ b),
    };
    let r = mask_to(Scalar::B32, r as u64);
    for l in lanes(m) {
        super::set(w, *d, l, r);
    }
    Ok(())
}

/// `match.any.sync.type d, a, membermask`: `d` = the members whose `a` equals this lane's.
/// `match.all.sync.type d{|p}, a, membermask`: if every member's `a` is equal, `d` = the
/// member mask and `p` true; else `d` = 0 and `p` false. `.b32` or `.b64`.
pub(super) fn match_sync(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    if run == 0 {
        return Ok(());
    }
    let any = i.mods.contains(&Mod::W(Word::Any));
    let all = i.mods.contains(&Mod::W(Word::All));
    let ty = i.mods.iter().find_map(|m| if let Mod::Ty(t) = m { Some(*t) } else { None });
    let ok_mods = i.mods.iter().all(|m| matches!(m, Mod::W(Word::Sync | Word::Any | Word::All) | Mod::Ty(Scalar::B32 | Scalar::B64)));
    let Some(ty) = ty.filter(|_| ok_mods && any != all) else { return Err(unsupported(cx, i, "this form of match.sync")) };
    let (d, p) = match i.opds.first() {
        Some(Opd::Reg(d)) => (*d, None),
        Some(Opd::PredPair(d, p)) if all => (*d, Some(*p)),
        other => return Err(unsupported(cx, i, format!("match.sync into {other:?}"))),
    };
    let m = members(cx, w, i, run)?;
    let mut vals = [0u64; 32];
    for l in lanes(m) {
        vals[l] = mask_to(ty, src(cx, w, i, &i.opds[1], ty, l)?);
    }
    let first = lanes(m).next().unwrap_or(0);
    let same = lanes(m).all(|l| vals[l] == vals[first]);
    for l in lanes(m) {
        let v = if any {
            lanes(m).filter(|&k| vals[k] == vals[l]).fold(0u32, |acc, k| acc | 1 << k)
        } else if same {
            m
        } else {
            0
        };
        super::set(w, d, l, u64::from(v));
        if let Some(p) = p {
            super::set(w, p, l, u64::from(same));
        }
    }
    Ok(())
}
