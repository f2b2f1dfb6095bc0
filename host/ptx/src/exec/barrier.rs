//! Block barriers (PTX ISA, "Parallel Synchronization and Communication Instructions: bar,
//! barrier"): `bar{.cta}.sync` / `barrier{.cta}.sync{.aligned}`, `bar{.cta}.arrive`,
//! `bar{.cta}.red.popc.u32` and `bar{.cta}.red.{and,or}.pred`, each on one of the block's 16
//! barriers, with or without a thread count.
//!
//! - `sync a{, b}`: the thread waits at barrier `a` until it completes;
//! - `arrive a, b`: the thread counts towards barrier `a` and goes on (a producer);
//! - `red.op d, a{, b}, {!}c`: as `sync`, and `d` gets, in every waiting thread, the reduction
//!   over all of them of the predicate `c`: the number of threads where it is true (`.popc`),
//!   whether it is true in all (`.and`) or in any (`.or`).
//!
//! Barrier `a` completes when the threads that wait at it and those that arrived at it since
//! it last completed number `b`; without `b`, when every live thread of the block waits at it
//! (exited threads count as arrived, as on a device). More arrivals than `b`, waiters that
//! disagree on `b` or mix `red` with `sync` or `red` operations, and a block in which every
//! live thread waits at a barrier that cannot complete (a hang on a device) are errors naming
//! the line, never a release that the ISA would not make.

use super::{lanes, set, src, unsupported, Ctx, ExecError, Warp, BARRIERS, R};
use crate::ast::Scalar;
use crate::lower::{Inst, Mod, Opd, Word};

/// A `.red` reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Red {
    Popc,
    And,
    Or,
}

/// What a barrier instruction is, for one lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bar {
    id: usize,
    /// The thread count `b`; `None`: every thread of the block.
    count: Option<u32>,
    arrive: bool,
    red: Option<Red>,
}

fn decode(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, lane: usize) -> R<Bar> {
    let allowed = |m: &Mod| {
        matches!(
            m,
            Mod::W(Word::Sync | Word::Arrive | Word::Red | Word::Aligned | Word::Cta | Word::Popc | Word::And | Word::Or)
                | Mod::Ty(Scalar::U32 | Scalar::Pred)
        )
    };
    if !i.mods.iter().all(allowed) {
        return Err(unsupported(cx, i, "this form of bar/barrier (vgpu has .sync, .arrive and .red on the block's barriers)"));
    }
    let has = |x: Word| i.mods.contains(&Mod::W(x));
    let red = if !has(Word::Red) {
        None
    } else if has(Word::Popc) && i.mods.contains(&Mod::Ty(Scalar::U32)) {
        Some(Red::Popc)
    } else if has(Word::And) && i.mods.contains(&Mod::Ty(Scalar::Pred)) {
        Some(Red::And)
    } else if has(Word::Or) && i.mods.contains(&Mod::Ty(Scalar::Pred)) {
        Some(Red::Or)
    } else {
        return Err(unsupported(cx, i, "this bar.red (vgpu has .popc.u32, .and.pred, .or.pred)"));
    };
    let arrive = has(Word::Arrive);
    // Operands after `d` (for .red): a, then b if present; .red ends with its predicate.
    let ids: &[Opd] = match (red.is_some(), i.opds.as_slice()) {
        (true, [_, rest @ .., _]) => rest,
        (false, all) => all,
        _ => &[],
    };
    let (id, count) = match ids {
        [a] if !arrive => (src(cx, w, i, a, Scalar::U32, lane)?, None),
        [a, b] => (src(cx, w, i, a, Scalar::U32, lane)?, Some(src(cx, w, i, b, Scalar::U32, lane)? as u32)),
        _ => return Err(unsupported(cx, i, format!("{} with {} operands", i.op.word(), i.opds.len()))),
    };
    if id >= BARRIERS as u64 {
        return Err(unsupported(cx, i, format!("barrier {id} (a block has 16)")));
    }
    if count == Some(0) {
        return Err(unsupported(cx, i, "a barrier with a thread count of 0"));
    }
    Ok(Bar { id: id as usize, count, arrive, red })
}

/// A barrier instruction for the lanes `run`: they wait at it (`sync`, `red`) or count
/// towards it (`arrive`). `bar.warp.sync` is a no-op: a warp's lanes at one PC run together.
pub(super) fn arrive(cx: &mut Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    if i.mods.contains(&Mod::W(Word::Warp)) || run == 0 {
        return Ok(());
    }
    cx.barrier_news = true;
    for (group, b) in decode_lanes(cx, w, i, run)? {
        cx.counted_barriers |= b.count.is_some();
        if b.arrive {
            let (n, count) = cx.arrivals[b.id];
            let want = b.count.unwrap_or(0);
            if n != 0 && count != want {
                return Err(unsupported(cx, i, format!("bar.arrive at barrier {} with thread counts {count} and {want}", b.id)));
            }
            let n = n + group.count_ones();
            if n > want {
                return Err(unsupported(cx, i, format!("{n} threads arrived at barrier {}, whose thread count is {want}", b.id)));
            }
            cx.arrivals[b.id] = (n, want);
        } else {
            w.at_barrier |= group;
        }
    }
    Ok(())
}

/// The barrier of each of the lanes `m` of `w`, all at instruction `i`: one group of all of
/// them when its barrier and count are immediates (the same for every lane), else one a lane.
fn decode_lanes(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, m: u32) -> R<Vec<(u32, Bar)>> {
    let n = i.opds.len();
    let red = i.mods.contains(&Mod::W(Word::Red));
    // The barrier and count operands: all but `d` and the predicate of .red.
    let ids = if red { i.opds.get(1..n.saturating_sub(1)).unwrap_or(&[]) } else { &i.opds[..] };
    let first = lanes(m).next().unwrap_or(0);
    if ids.iter().all(|o| matches!(o, Opd::Imm(_))) {
        return Ok(vec![(m, decode(cx, w, i, first)?)]);
    }
    lanes(m).map(|l| Ok((1 << l, decode(cx, w, i, l)?))).collect()
}

/// Per barrier: how many threads wait, with which count and reduction (all must agree), and
/// the reductions' inputs.
#[derive(Clone, Copy, Default)]
struct State {
    waiting: u32,
    /// `Some((count, red))` once a thread waits.
    form: Option<(Option<u32>, Option<Red>)>,
    /// Waiting threads whose `.red` predicate is true.
    trues: u32,
}

/// Release every barrier that is complete; whether one was.
pub(super) fn release(cx: &mut Ctx<'_, '_>, warps: &mut [Warp]) -> R<bool> {
    let live: u32 = warps.iter().map(|w| (w.exists & !w.exited).count_ones()).sum();
    let mut st = [State::default(); BARRIERS];
    // Groups of waiting lanes: their warp, lanes and barrier.
    let mut waiters = Vec::new();
    for (wi, w) in warps.iter().enumerate() {
        let mut rest = w.at_barrier;
        while rest != 0 {
            let pc = w.pc[rest.trailing_zeros() as usize];
            let at_pc = lanes(rest).filter(|&l| w.pc[l] == pc).fold(0u32, |m, l| m | 1 << l);
            rest &= !at_pc;
            let i = waiting_inst(cx, pc)?;
            for (group, b) in decode_lanes(cx, w, i, at_pc)? {
                let s = &mut st[b.id];
                match s.form {
                    None => s.form = Some((b.count, b.red)),
                    Some(f) if f != (b.count, b.red) => {
                        return Err(unsupported(cx, i, format!("threads waiting at barrier {} with different counts or reductions", b.id)));
                    }
                    Some(_) => {}
                }
                s.waiting += group.count_ones();
                if b.red.is_some() {
                    let c = i.opds.last().ok_or_else(|| unsupported(cx, i, "bar.red without its predicate"))?;
                    for l in lanes(group) {
                        s.trues += (src(cx, w, i, c, Scalar::Pred, l)? & 1) as u32;
                    }
                }
                waiters.push((wi, group, pc, b));
            }
        }
    }
    let mut done = [false; BARRIERS];
    for (id, s) in st.iter().enumerate() {
        let (arrived, arrive_count) = cx.arrivals[id];
        let count = match s.form {
            Some((c, _)) if arrived == 0 || c == Some(arrive_count) => c,
            Some(_) => {
                let &(_, _, pc, _) = waiters.iter().find(|x| x.3.id == id).unwrap_or(&waiters[0]);
                let i = waiting_inst(cx, pc)?;
                return Err(unsupported(cx, i, format!("barrier {id} waited at and arrived at with different thread counts")));
            }
            // Only bar.arrive so far: it completes when its count has arrived.
            None if arrived != 0 => Some(arrive_count),
            None => continue,
        };
        let n = s.waiting + arrived;
        done[id] = match count {
            None => s.waiting >= live,
            Some(b) if n > b => {
                let what = format!("{n} threads at barrier {id}, whose thread count is {b}");
                return Err(match waiters.iter().find(|x| x.3.id == id) {
                    Some(&(_, _, pc, _)) => unsupported(cx, waiting_inst(cx, pc)?, what),
                    None => ExecError::Unsupported { kernel: cx.k.name.clone(), line: 0, what },
                });
            }
            Some(b) => n == b,
        };
    }
    if !done.contains(&true) {
        return Ok(false);
    }
    for (wi, group, pc, b) in waiters {
        if !done[b.id] {
            continue;
        }
        let w = &mut warps[wi];
        if let Some(red) = b.red {
            let i = waiting_inst(cx, pc)?;
            let s = st[b.id];
            let v = match red {
                Red::Popc => s.trues,
                Red::And => u32::from(s.trues == s.waiting),
                Red::Or => u32::from(s.trues != 0),
            };
            let Some(Opd::Reg(d)) = i.opds.first() else { return Err(unsupported(cx, i, "bar.red into a non-register")) };
            for l in lanes(group) {
                set(w, *d, l, u64::from(v));
            }
        }
        w.at_barrier &= !group;
        w.converged = None;
        for l in lanes(group) {
            w.pc[l] += 1;
        }
    }
    for (id, d) in done.iter().enumerate() {
        if *d {
            cx.arrivals[id] = (0, 0);
        }
    }
    Ok(true)
}

/// The instruction at `pc`, where lanes of `w` wait.
fn waiting_inst<'k>(cx: &Ctx<'k, '_>, pc: u32) -> R<&'k Inst> {
    cx.k.insts
        .get(pc as usize)
        .ok_or_else(|| ExecError::BadLaunch { kernel: cx.k.name.clone(), what: format!("a lane waits at instruction {pc} past the end") })
}

/// Every live thread waits and no barrier can complete: a device would hang here.
pub(super) fn deadlock(cx: &Ctx<'_, '_>, warps: &[Warp]) -> ExecError {
    let at = warps.iter().find_map(|w| lanes(w.at_barrier).next().and_then(|l| cx.k.insts.get(w.pc[l] as usize)));
    match at {
        Some(i) => unsupported(cx, i, "a barrier that cannot complete: every live thread of the block waits (a device would hang)"),
        None => ExecError::BadLaunch { kernel: cx.k.name.clone(), what: "no thread can run and none waits at a barrier".into() },
    }
}
