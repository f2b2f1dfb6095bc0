//! Execution: a lowered [`Kernel`] over a grid, on the CPU.
//!
//! - **Blocks** run one after another in increasing linear block index (cub's decoupled
//!   look-back waits only on earlier blocks, so it completes).
//! - **Warps** of 32 lanes; each lane has its own PC. A warp step runs the instruction at the
//!   lowest PC among its live lanes, for the lanes at that PC (one simple correct scheme for
//!   divergence and reconvergence under unstructured control flow). Warps of a block take
//!   turns in time slices, so a warp spinning on shared memory lets the others progress.
//! - **Barriers** (`bar`/`barrier` `.sync`, `.arrive`, `.red`; `exec/barrier.rs`): a lane that
//!   reaches one waits; barrier `a` completes when `b` threads (its thread count) have arrived,
//!   or without a count when every live thread of the block waits there (exited threads count
//!   as arrived). A block whose threads all wait at barriers that cannot complete is an error.
//! - **Warp-wide matrix and mask operations**: `mma.sync`, `ldmatrix` (`exec/mma.rs`), `redux.sync`,
//!   `match.sync` (`exec/warp.rs`) check that the lanes the ISA requires execute them together.
//! - **Memory**: global (and `.const`, and module variables) through [`Memory`], the device's
//!   allocations, checked by it; shared per block and local per thread here, bounds-checked;
//!   parameters from the launch's buffer. Generic addresses: shared and local are mapped at
//!   [`SHARED_WINDOW`] and [`LOCAL_WINDOW`], everything else is global.
//! - **Stopping**: `cancel()` is asked before every time slice (the device passes its kill
//!   switch); an instruction budget bounds a launch.
//!
//! Anything the interpreter does not implement is an [`ExecError::Unsupported`] naming the
//! instruction and line, never a silent wrong result.

use crate::ast::Scalar;
use crate::lower::{Inst, Kernel, Mod, Op, Opd, RegId, Special, Word};

mod barrier;
mod fp8;
mod mma;
mod warp;

/// Where generic addresses of shared memory start (offset 0 of the block's shared memory).
pub const SHARED_WINDOW: u64 = 0xffff_8000_0000_0000;
/// Where generic addresses of local memory start (offset 0 of the thread's frame).
pub const LOCAL_WINDOW: u64 = 0xffff_9000_0000_0000;
const WINDOW_SPAN: u64 = 1 << 40;

/// Instructions a warp runs before the next warp of its block gets a turn.
const SLICE: u32 = 256;

/// Named barriers per block (`bar.sync 0` .. `bar.sync 15`).
const BARRIERS: usize = 16;

/// Global memory as the device has it.
pub trait Memory {
    /// Copy `buf.len()` bytes at device address `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault>;
    /// Copy `data` to device address `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Fault>;
    /// Atomically replace the `size`-byte value at `addr` (1 <= size <= 8) by `f(old)`, returning `old`.
    fn atomic(&self, addr: u64, size: usize, f: &mut dyn FnMut(u64) -> u64) -> Result<u64, Fault>;

    /// A warp's load: for each lane `l` of `mask` in increasing order, [`Memory::read`] of
    /// `size` (1 to 8) bytes at `addrs[l]` into `out[l]` (little-endian, the upper bytes
    /// zero). Stops at the first lane whose access faults, with its fault. An implementation
    /// may find the allocation once for the warp; the default reads lane by lane.
    fn read_lanes(&self, addrs: &[u64; 32], size: usize, mask: u32, out: &mut [u64; 32]) -> Result<(), Fault> {
        for l in (0..32).filter(|l| mask & (1 << l) != 0) {
            let mut b = [0u8; 8];
            self.read(addrs[l], b.get_mut(..size).ok_or(Fault { addr: addrs[l], len: size as u64 })?)?;
            out[l] = u64::from_le_bytes(b);
        }
        Ok(())
    }

    /// A warp's store: for each lane `l` of `mask` in increasing order, [`Memory::write`] of
    /// the low `size` (1 to 8) bytes of `vals[l]` at `addrs[l]`. Stops at the first lane
    /// whose access faults, with its fault (the lanes before it have written).
    fn write_lanes(&self, addrs: &[u64; 32], size: usize, mask: u32, vals: &[u64; 32]) -> Result<(), Fault> {
        for l in (0..32).filter(|l| mask & (1 << l) != 0) {
            let b = vals[l].to_le_bytes();
            self.write(addrs[l], b.get(..size).ok_or(Fault { addr: addrs[l], len: size as u64 })?)?;
        }
        Ok(())
    }
}

/// A bad global access: the address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub addr: u64,
    pub len: u64,
}

/// Why a launch stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// `cudaErrorIllegalAddress`.
    #[error("{kernel}: illegal address {addr:#x} ({len} bytes) at PTX line {line}")]
    IllegalAddress { kernel: String, addr: u64, len: u64, line: u32 },
    /// `cudaErrorLaunchFailure` after `trap`.
    #[error("{kernel}: trap at PTX line {line}")]
    Trap { kernel: String, line: u32 },
    /// The interpreter lacks this.
    #[error("{kernel}: PTX line {line}: {what} is not supported by vgpu's PTX interpreter")]
    Unsupported { kernel: String, line: u32, what: String },
    /// Stopped by the caller or by the instruction budget.
    #[error("{kernel}: stopped after {steps} warp instructions ({why})")]
    Stopped { kernel: String, steps: u64, why: &'static str },
    /// A launch the kernel cannot take (parameter buffer, dimensions).
    #[error("{kernel}: {what}")]
    BadLaunch { kernel: String, what: String },
}

/// One launch.
pub struct Launch<'a> {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// The packed parameters (the kernel's `param_bytes`).
    pub params: &'a [u8],
    /// Bytes of dynamic shared memory.
    pub dynamic_shared: u32,
    /// The device address of each module variable, by index in `Module::variables`.
    pub globals: &'a [u64],
    /// Warp instructions the launch may run in all (0: no limit).
    pub budget: u64,
    /// What a `call` of each module function (by index in `Module::functions`) runs.
    pub functions: &'a [Callee<'a>],
    /// Where `printf` output goes (one call per `printf`, the formatted text).
    pub printf: &'a dyn Fn(&str),
}

/// A function a kernel may call.
pub enum Callee<'a> {
    /// A `.func` with a body, lowered.
    Body(&'a Kernel),
    /// `vprintf`, the device runtime's `printf`.
    Printf,
    /// Declared without a body (and not one vgpu provides): calling it is an error.
    Missing,
}

struct Warp {
    pc: [u32; 32],
    /// Lanes that exist (a partial last warp has fewer).
    exists: u32,
    exited: u32,
    at_barrier: u32,
    regs: Vec<u64>,
    local: Vec<u8>,
    base_thread: u32,
    /// Per lane: the call area (`Kernel::call_param_bytes` each).
    call: Vec<u8>,
    /// In a called function, per lane: its parameters (`Kernel::param_bytes` each); `None` in
    /// the kernel itself, whose parameters are the launch's.
    params: Option<Vec<u8>>,
    /// Per lane: a called function's return values.
    ret: Vec<u8>,
    /// Set by `nanosleep`: the warp gives up the rest of its time slice.
    yielded: bool,
    /// `Some(pc)`: every ready lane (existing, not exited, not at a barrier) is at `pc`, so a
    /// step needs no scan of the lanes' PCs. Whoever changes a lane's PC, or lets a lane wait or
    /// go on, outside [`step`] sets `None`.
    converged: Option<u32>,
}

fn ret_bytes(k: &Kernel) -> u32 {
    k.returns.iter().map(|r| r.offset + r.size).max().unwrap_or(0)
}

impl Warp {
    fn new(k: &Kernel, exists: u32, base_thread: u32) -> Warp {
        Warp {
            pc: [0; 32],
            exists,
            exited: 0,
            at_barrier: 0,
            regs: vec![0; k.regs.len() * 32],
            local: vec![0; k.local_bytes as usize * 32],
            base_thread,
            call: vec![0; k.call_param_bytes as usize * 32],
            params: None,
            ret: vec![0; ret_bytes(k) as usize * 32],
            yielded: false,
            converged: Some(0),
        }
    }
}

struct Ctx<'k, 'a> {
    k: &'k Kernel,
    l: &'a Launch<'a>,
    mem: &'a dyn Memory,
    shared: Vec<u8>,
    ctaid: [u32; 3],
    steps: u64,
    /// Calls in progress.
    depth: u32,
    /// The caller's kill switch, asked every time slice (also inside called functions).
    cancel: &'a dyn Fn() -> bool,
    /// Per barrier (0-15): threads that arrived with `bar.arrive` since it last completed, and
    /// the thread count they gave.
    arrivals: [(u32, u32); BARRIERS],
    /// Threads arrived at a barrier or exited since barriers were last checked.
    barrier_news: bool,
    /// A barrier with a thread count (or `bar.arrive`) has run in this launch: a barrier may
    /// complete before every live thread waits.
    counted_barriers: bool,
}

type R<T> = Result<T, ExecError>;

/// Run `k` over `launch` on `mem`. Returns, when every thread has exited, the number of warp
/// instructions run; or the first error (the launch's effects so far stay, as on a device).
pub fn run(k: &Kernel, launch: &Launch<'_>, mem: &dyn Memory, cancel: &dyn Fn() -> bool) -> R<u64> {
    run_blocks(k, launch, mem, cancel, 0..block_count(launch))
}

/// Blocks in `launch`'s grid.
pub fn block_count(launch: &Launch<'_>) -> u64 {
    launch.grid.iter().map(|&d| u64::from(d)).product()
}

/// [`run`] for the blocks of linear index `blocks` only (x fastest, then y, then z), in
/// increasing order: a device runs disjoint ranges of one launch on several threads. The
/// budget is this call's.
pub fn run_blocks(k: &Kernel, launch: &Launch<'_>, mem: &dyn Memory, cancel: &dyn Fn() -> bool, blocks: std::ops::Range<u64>) -> R<u64> {
    let bad = |what: String| ExecError::BadLaunch { kernel: k.name.clone(), what };
    if (launch.params.len() as u64) < u64::from(k.param_bytes) {
        return Err(bad(format!("{} bytes of parameters, the kernel takes {}", launch.params.len(), k.param_bytes)));
    }
    let threads: u64 = launch.block.iter().map(|&d| u64::from(d)).product();
    if threads == 0 || threads > 1024 || launch.grid.contains(&0) {
        return Err(bad(format!("grid {:?} block {:?}", launch.grid, launch.block)));
    }
    if u64::from(k.local_bytes) * threads > 64 << 20 {
        return Err(bad(format!("{} bytes of local memory per thread for {threads} threads (at most 64 MiB a block)", k.local_bytes)));
    }
    let shared_len = u64::from(k.dynamic_shared_offset) + u64::from(launch.dynamic_shared);
    if shared_len > 256 << 10 {
        return Err(bad(format!("{shared_len} bytes of shared memory")));
    }
    let mut cx = Ctx {
        k,
        l: launch,
        mem,
        shared: vec![0; shared_len as usize],
        ctaid: [0; 3],
        steps: 0,
        depth: 0,
        cancel,
        arrivals: [(0, 0); BARRIERS],
        barrier_news: false,
        counted_barriers: false,
    };
    let [gx, gy, _] = launch.grid.map(u64::from);
    for b in blocks.start..blocks.end.min(block_count(launch)) {
        cx.ctaid = [(b % gx) as u32, (b / gx % gy) as u32, (b / (gx * gy)) as u32];
        cx.shared.fill(0);
        cx.arrivals = [(0, 0); BARRIERS];
        run_block(&mut cx, threads as u32)?;
    }
    Ok(cx.steps)
}

fn run_block(cx: &mut Ctx<'_, '_>, threads: u32) -> R<()> {
    let mut warps: Vec<Warp> = (0..threads.div_ceil(32))
        .map(|w| {
            let n = (threads - w * 32).min(32);
            Warp::new(cx.k, if n == 32 { u32::MAX } else { (1u32 << n) - 1 }, w * 32)
        })
        .collect();
    loop {
        let mut progressed = false;
        let mut all_done = true;
        for wi in 0..warps.len() {
            let w = &mut warps[wi];
            let live = w.exists & !w.exited;
            if live == 0 {
                continue;
            }
            all_done = false;
            if live & !w.at_barrier == 0 {
                continue;
            }
            if (cx.cancel)() {
                return Err(ExecError::Stopped { kernel: cx.k.name.clone(), steps: cx.steps, why: "cancelled" });
            }
            for _ in 0..SLICE {
                if !step(cx, w)? {
                    break;
                }
                progressed = true;
                if std::mem::take(&mut w.yielded) {
                    break;
                }
            }
            // A counted barrier may complete while other warps run; one without a count only
            // when no warp can go on (below).
            if std::mem::take(&mut cx.barrier_news) && cx.counted_barriers {
                barrier::release(cx, &mut warps)?;
            }
        }
        if all_done {
            return Ok(());
        }
        if !progressed && !barrier::release(cx, &mut warps)? {
            return Err(barrier::deadlock(cx, &warps));
        }
    }
}

/// One warp instruction. Returns false when the warp can't go on now (all live lanes at a
/// barrier or exited).
fn step(cx: &mut Ctx<'_, '_>, w: &mut Warp) -> R<bool> {
    let ready = w.exists & !w.exited & !w.at_barrier;
    if ready == 0 {
        return Ok(false);
    }
    let (pc, mask) = match w.converged {
        Some(pc) => (pc, ready),
        None => {
            // The lowest PC among the ready lanes, and the lanes at it.
            let mut pc = u32::MAX;
            for l in 0..32 {
                pc = pc.min(if ready & (1 << l) != 0 { w.pc[l] } else { u32::MAX });
            }
            let mut mask = 0u32;
            for l in 0..32 {
                mask |= u32::from(w.pc[l] == pc) << l;
            }
            (pc, mask & ready)
        }
    };
    // Whether, after this instruction, the ready lanes can still be at one PC.
    let all = mask == ready;
    cx.steps += 1;
    if cx.l.budget != 0 && cx.steps > cx.l.budget {
        return Err(ExecError::Stopped { kernel: cx.k.name.clone(), steps: cx.steps, why: "instruction budget spent" });
    }
    let Some(inst) = cx.k.insts.get(pc as usize) else {
        // Running off the end is an implicit exit.
        w.exited |= mask;
        w.converged = None;
        return Ok(true);
    };
    // The guard: lanes whose predicate fails skip the instruction.
    let mut run = mask;
    if let Some((neg, p)) = inst.guard {
        let r = &w.regs[p as usize * 32..p as usize * 32 + 32];
        let mut pass = 0u32;
        for (l, v) in r.iter().enumerate() {
            pass |= ((*v as u32 & 1) ^ u32::from(neg)) << l;
        }
        run &= pass;
    }
    if inst.op == Op::Bra && types(inst).all(|t| t.size() <= 8) {
        if let Some(Opd::Label(t)) = inst.opds.first() {
            // A direct branch: the lanes that take it go to the label, the others on.
            let t = *t;
            let keep = mask & !w.exited & !w.at_barrier;
            for l in 0..32 {
                if keep & (1 << l) != 0 {
                    w.pc[l] = if run & (1 << l) != 0 { t } else { pc + 1 };
                }
            }
            w.converged = match (all, run & keep) {
                (true, 0) => Some(pc + 1),
                (true, r) if r == keep => Some(t),
                _ => None,
            };
            return Ok(true);
        }
    }
    let mut next = [pc + 1; 32];
    // Until this step is done, the PCs are scanned (an error leaves the warp consistent).
    w.converged = None;
    exec(cx, w, inst, run, mask, &mut next)?;
    let keep = mask & !w.exited & !w.at_barrier;
    let mut same = true;
    if inst.op == Op::Bra {
        for (l, &n) in next.iter().enumerate() {
            if keep & (1 << l) != 0 {
                w.pc[l] = n;
                same &= n == pc + 1;
            }
        }
    } else {
        // Only `bra` sets `next`: every lane goes on to `pc + 1` (a blend the compiler vectorizes).
        for (l, p) in w.pc.iter_mut().enumerate() {
            *p = if keep & (1 << l) != 0 { pc + 1 } else { *p };
        }
    }
    if all && same && w.converged.is_none() {
        w.converged = Some(pc + 1);
    }
    Ok(true)
}

#[inline]
fn reg(w: &Warp, r: RegId, lane: usize) -> u64 {
    w.regs[r as usize * 32 + lane]
}

#[inline]
fn set(w: &mut Warp, r: RegId, lane: usize, v: u64) {
    w.regs[r as usize * 32 + lane] = v;
}

fn unsupported(cx: &Ctx<'_, '_>, i: &Inst, what: impl Into<String>) -> ExecError {
    ExecError::Unsupported { kernel: cx.k.name.clone(), line: i.line, what: what.into() }
}

/// The instruction's types, in order.
fn types(i: &Inst) -> impl Iterator<Item = Scalar> + '_ {
    i.mods.iter().filter_map(|m| if let Mod::Ty(t) = m { Some(*t) } else { None })
}

fn has(i: &Inst, w: Word) -> bool {
    i.mods.contains(&Mod::W(w))
}

fn last_type(cx: &Ctx<'_, '_>, i: &Inst) -> R<Scalar> {
    types(i).last().ok_or_else(|| unsupported(cx, i, format!("{} without a type", i.op.word())))
}

#[inline]
fn bits(t: Scalar) -> u32 {
    t.size() * 8
}

#[inline]
fn mask_to(t: Scalar, v: u64) -> u64 {
    match bits(t) {
        64 | 128 => v,
        n => v & ((1u64 << n) - 1),
    }
}

#[inline]
fn sext(t: Scalar, v: u64) -> i64 {
    let n = bits(t).min(64);
    ((v << (64 - n)) as i64) >> (64 - n)
}

#[inline]
fn is_signed(t: Scalar) -> bool {
    matches!(t, Scalar::S8 | Scalar::S16 | Scalar::S32 | Scalar::S64)
}

#[inline]
fn is_float(t: Scalar) -> bool {
    matches!(t, Scalar::F32 | Scalar::F64 | Scalar::F16 | Scalar::Bf16)
}

#[inline]
fn f32v(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

#[inline]
fn f(t: Scalar, v: u64) -> f64 {
    match t {
        Scalar::F64 => f64::from_bits(v),
        Scalar::F16 => half::f16::from_bits(v as u16).to_f64(),
        Scalar::Bf16 => half::bf16::from_bits(v as u16).to_f64(),
        _ => f64::from(f32v(v)),
    }
}

/// `x` as bits of `t`, rounded to nearest even (one rounding, from f64).
#[inline]
fn from_f(t: Scalar, x: f64) -> u64 {
    match t {
        Scalar::F64 => x.to_bits(),
        Scalar::F16 => u64::from(half::f16::from_f64(x).to_bits()),
        Scalar::Bf16 => u64::from(half::bf16::from_f64(x).to_bits()),
        _ => u64::from((x as f32).to_bits()),
    }
}

/// The scalar type of a packed pair (`.f16x2` → `.f16`).
fn packed_half(t: Scalar) -> Option<Scalar> {
    match t {
        Scalar::F16x2 => Some(Scalar::F16),
        Scalar::Bf16x2 => Some(Scalar::Bf16),
        _ => None,
    }
}

fn special(cx: &Ctx<'_, '_>, w: &Warp, s: Special, lane: usize) -> u64 {
    let tid = w.base_thread + lane as u32;
    let b = cx.l.block;
    let t = [tid % b[0], (tid / b[0]) % b[1], tid / (b[0] * b[1])];
    u64::from(match s {
        Special::Tid(a) => t[a as usize],
        Special::Ntid(a) => b[a as usize],
        Special::Ctaid(a) => cx.ctaid[a as usize],
        Special::Nctaid(a) => cx.l.grid[a as usize],
        Special::Laneid => lane as u32,
        Special::Warpid => w.base_thread / 32,
        Special::Nwarpid => b.iter().product::<u32>().div_ceil(32),
        Special::Smid => 0,
        Special::Nsmid => 1,
        Special::LanemaskEq => 1 << lane,
        Special::LanemaskLe => ((1u64 << (lane + 1)) - 1) as u32,
        Special::LanemaskLt => ((1u64 << lane) - 1) as u32,
        Special::LanemaskGe => !(((1u64 << lane) - 1) as u32),
        Special::LanemaskGt => !(((1u64 << (lane + 1)) - 1) as u32),
        Special::Clock | Special::Clock64 | Special::Globaltimer => return cx.steps,
        Special::Envreg(_) => 0,
    })
}

/// A source operand's value for `lane`, as bits of type `t`.
fn src(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, o: &Opd, t: Scalar, lane: usize) -> R<u64> {
    Ok(match o {
        Opd::Reg(r) => reg(w, *r, lane),
        Opd::Imm(v) => {
            if is_float(t) {
                // An integer literal as a float operand is its value.
                from_f(t, *v as i64 as f64)
            } else {
                *v
            }
        }
        Opd::Float(b) => {
            if is_float(t) {
                from_f(t, f64::from_bits(*b))
            } else {
                *b
            }
        }
        Opd::Special(s) => special(cx, w, *s, lane),
        Opd::Global(v) => *cx.l.globals.get(*v as usize).ok_or_else(|| unsupported(cx, i, "a module variable without an address"))?,
        Opd::Shared(off) | Opd::Local(off) | Opd::Param(off) => u64::from(*off),
        Opd::Not(inner) => (src(cx, w, i, inner, t, lane)? & 1) ^ 1,
        other => return Err(unsupported(cx, i, format!("the operand {other:?} of {}", i.op.word()))),
    })
}

fn dst(cx: &Ctx<'_, '_>, i: &Inst, n: usize) -> R<RegId> {
    match i.opds.get(n) {
        Some(Opd::Reg(r)) => Ok(*r),
        other => Err(unsupported(cx, i, format!("{} with destination {other:?}", i.op.word()))),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Where {
    Global,
    Shared,
    Local,
    Param,
    CallParam,
    Return,
}

/// The space and address of a memory operand for `lane`.
fn address(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, o: &Opd, lane: usize) -> R<(Where, u64)> {
    let declared = i.mods.iter().find_map(|m| match m {
        Mod::W(Word::Global) | Mod::W(Word::Const) => Some(Where::Global),
        Mod::W(Word::Shared) => Some(Where::Shared),
        Mod::W(Word::Local) => Some(Where::Local),
        Mod::W(Word::Param) => Some(Where::Param),
        _ => None,
    });
    let Opd::Addr(base, off) = o else { return Err(unsupported(cx, i, format!("the address {o:?}"))) };
    let (space, base) = match base.as_deref() {
        None => (declared, 0),
        Some(Opd::Reg(r)) => (declared, reg(w, *r, lane)),
        Some(Opd::Global(v)) => (Some(Where::Global), src(cx, w, i, &Opd::Global(*v), Scalar::U64, lane)?),
        Some(Opd::Shared(s)) => (Some(Where::Shared), u64::from(*s)),
        Some(Opd::Local(s)) => (Some(Where::Local), u64::from(*s)),
        Some(Opd::Param(s)) => (Some(Where::Param), u64::from(*s)),
        Some(Opd::CallParam(s)) => (Some(Where::CallParam), u64::from(*s)),
        Some(Opd::Return(s)) => (Some(Where::Return), u64::from(*s)),
        Some(other) => return Err(unsupported(cx, i, format!("an address based on {other:?}"))),
    };
    let a = base.wrapping_add(*off as u64);
    Ok(match space {
        Some(s) => (s, a),
        None if (SHARED_WINDOW..SHARED_WINDOW + WINDOW_SPAN).contains(&a) => (Where::Shared, a - SHARED_WINDOW),
        None if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW_SPAN).contains(&a) => (Where::Local, a - LOCAL_WINDOW),
        None => (Where::Global, a),
    })
}

/// The space and each lane's address of a memory operand, when the space is the same for every
/// lane (declared, or given by the symbol the address is based on) and the address is a
/// register or symbol plus an offset; `None`: the caller asks [`address`] lane by lane.
fn addresses(w: &Warp, i: &Inst, o: &Opd) -> Option<(Where, [u64; 32])> {
    let Opd::Addr(base, off) = o else { return None };
    let off = *off as u64;
    let declared = || {
        i.mods.iter().find_map(|m| match m {
            Mod::W(Word::Global) | Mod::W(Word::Const) => Some(Where::Global),
            Mod::W(Word::Shared) => Some(Where::Shared),
            Mod::W(Word::Local) => Some(Where::Local),
            Mod::W(Word::Param) => Some(Where::Param),
            _ => None,
        })
    };
    let (space, at) = match base.as_deref() {
        Some(Opd::Reg(r)) => {
            let space = declared()?;
            let r = *r as usize;
            let regs: &[u64; 32] = w.regs[r * 32..r * 32 + 32].try_into().ok()?;
            return Some((space, regs.map(|v| v.wrapping_add(off))));
        }
        Some(Opd::Shared(s)) => (Where::Shared, u64::from(*s)),
        Some(Opd::Local(s)) => (Where::Local, u64::from(*s)),
        Some(Opd::Param(s)) => (Where::Param, u64::from(*s)),
        Some(Opd::CallParam(s)) => (Where::CallParam, u64::from(*s)),
        Some(Opd::Return(s)) => (Where::Return, u64::from(*s)),
        _ => return None,
    };
    Some((space, [at.wrapping_add(off); 32]))
}

fn illegal(cx: &Ctx<'_, '_>, i: &Inst, addr: u64, len: usize) -> ExecError {
    ExecError::IllegalAddress { kernel: cx.k.name.clone(), addr, len: len as u64, line: i.line }
}

fn slice_of(buf: &[u8], at: u64, len: usize) -> Option<std::ops::Range<usize>> {
    let s = usize::try_from(at).ok()?;
    let e = s.checked_add(len)?;
    (e <= buf.len()).then_some(s..e)
}

/// The `size`-byte (1 to 8) little-endian value at `at` in `buf`, if inside it.
#[inline]
fn read_le(buf: &[u8], at: u64, size: usize) -> Option<u64> {
    let b = &buf[slice_of(buf, at, size)?];
    Some(match size {
        1 => u64::from(b[0]),
        2 => u64::from(u16::from_le_bytes(b.try_into().ok()?)),
        4 => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
        8 => u64::from_le_bytes(b.try_into().ok()?),
        _ => {
            let mut v = [0u8; 8];
            v.get_mut(..size)?.copy_from_slice(b);
            u64::from_le_bytes(v)
        }
    })
}

fn load(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, space: Where, a: u64, lane: usize, out: &mut [u8]) -> R<()> {
    let len = out.len();
    match space {
        Where::Global => cx.mem.read(a, out).map_err(|f| illegal(cx, i, f.addr, f.len as usize)),
        Where::Shared => {
            let r = slice_of(&cx.shared, a, len).ok_or_else(|| illegal(cx, i, a, len))?;
            out.copy_from_slice(&cx.shared[r]);
            Ok(())
        }
        Where::Param if w.params.is_none() => {
            let r = slice_of(cx.l.params, a, len).ok_or_else(|| illegal(cx, i, a, len))?;
            out.copy_from_slice(&cx.l.params[r]);
            Ok(())
        }
        _ => {
            let (buf, stride) = lane_area(cx.k, w, space);
            let r = lane_slice(buf, stride, lane, a, len).ok_or_else(|| illegal(cx, i, a, len))?;
            out.copy_from_slice(&buf[r]);
            Ok(())
        }
    }
}

/// The per-lane area of a space that lives in the warp, and its per-lane size.
fn lane_area<'w>(k: &Kernel, w: &'w Warp, space: Where) -> (&'w [u8], u32) {
    match space {
        Where::Local => (&w.local, k.local_bytes),
        Where::CallParam => (&w.call, k.call_param_bytes),
        Where::Return => (&w.ret, ret_bytes(k)),
        _ => (w.params.as_deref().unwrap_or(&[]), k.param_bytes),
    }
}

fn lane_area_mut<'w>(k: &Kernel, w: &'w mut Warp, space: Where) -> (&'w mut [u8], u32) {
    match space {
        Where::Local => (&mut w.local, k.local_bytes),
        Where::CallParam => (&mut w.call, k.call_param_bytes),
        Where::Return => (&mut w.ret, ret_bytes(k)),
        _ => (w.params.as_deref_mut().unwrap_or(&mut []), k.param_bytes),
    }
}

/// `len` bytes at `a` of `lane`'s part (of `stride` bytes) of a per-lane area, if inside it.
fn lane_slice(buf: &[u8], stride: u32, lane: usize, a: u64, len: usize) -> Option<std::ops::Range<usize>> {
    if !matches!(a.checked_add(len as u64), Some(e) if e <= u64::from(stride)) {
        return None;
    }
    slice_of(buf, u64::from(stride) * lane as u64 + a, len)
}

fn store(cx: &mut Ctx<'_, '_>, w: &mut Warp, i: &Inst, space: Where, a: u64, lane: usize, data: &[u8]) -> R<()> {
    let len = data.len();
    match space {
        Where::Global => cx.mem.write(a, data).map_err(|f| illegal(cx, i, f.addr, f.len as usize)),
        Where::Shared => {
            let r = slice_of(&cx.shared, a, len).ok_or_else(|| illegal(cx, i, a, len))?;
            cx.shared[r].copy_from_slice(data);
            Ok(())
        }
        Where::Param => Err(unsupported(cx, i, "a store to parameters")),
        _ => {
            let k = cx.k;
            let (buf, stride) = lane_area_mut(k, w, space);
            match lane_slice(buf, stride, lane, a, len) {
                Some(r) => {
                    buf[r].copy_from_slice(data);
                    Ok(())
                }
                None => Err(illegal(cx, i, a, len)),
            }
        }
    }
}

fn lanes(m: u32) -> impl Iterator<Item = usize> {
    (0..32).filter(move |l| m & (1 << l) != 0)
}

/// The fewest operands each instruction takes (checked before any is read).
fn min_operands(op: Op) -> usize {
    match op {
        Op::Ret | Op::Exit | Op::Trap | Op::Membar | Op::Fence | Op::Bar | Op::Barrier | Op::Call => 0,
        Op::Griddepcontrol => 0,
        Op::Bra | Op::Nanosleep => 1,
        Op::Ldmatrix => 2,
        Op::Mma => 4,
        Op::Mov | Op::Ld | Op::Ldu | Op::St | Op::Cvta | Op::Cvt | Op::Vote | Op::Red => 2,
        Op::Abs
        | Op::Neg
        | Op::Not
        | Op::Cnot
        | Op::Popc
        | Op::Clz
        | Op::Brev
        | Op::Rcp
        | Op::Sqrt
        | Op::Rsqrt
        | Op::Ex2
        | Op::Lg2
        | Op::Sin
        | Op::Cos
        | Op::Tanh => 2,
        Op::Setp | Op::Atom => 3,
        Op::Mad | Op::Fma | Op::Sad | Op::Dp4a | Op::Prmt | Op::Bfe | Op::Mad24 | Op::Selp | Op::Shfl => 4,
        Op::Bfi => 5,
        _ => 3,
    }
}

fn exec(cx: &mut Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32, mask: u32, next: &mut [u32; 32]) -> R<()> {
    if i.opds.len() < min_operands(i.op) {
        return Err(unsupported(cx, i, format!("{} with {} operands", i.op.word(), i.opds.len())));
    }
    if types(i).any(|t| t.size() > 8) {
        return Err(unsupported(cx, i, "128-bit operands"));
    }
    match i.op {
        Op::Bra => {
            let Some(Opd::Label(t)) = i.opds.first() else { return Err(unsupported(cx, i, "an indirect branch")) };
            for l in lanes(run) {
                next[l] = *t;
            }
        }
        Op::Ret | Op::Exit => {
            w.exited |= run;
            cx.barrier_news = true;
        }
        Op::Trap => {
            if run != 0 {
                return Err(ExecError::Trap { kernel: cx.k.name.clone(), line: i.line });
            }
        }
        Op::Bar | Op::Barrier => barrier::arrive(cx, w, i, run)?,
        Op::Membar | Op::Fence => {}
        Op::Mov => {
            let t = last_type(cx, i)?;
            match (i.opds.first(), i.opds.get(1)) {
                (Some(Opd::Vector(parts)), Some(s)) => {
                    // Unpack: mov.b64 {%r1, %r2}, %rd1.
                    if !matches!(parts.len(), 2 | 4) {
                        return Err(unsupported(cx, i, "a mov vector that is not of 2 or 4"));
                    }
                    let each = bits(t) / parts.len() as u32;
                    for l in lanes(run) {
                        let v = src(cx, w, i, s, t, l)?;
                        for (k, p) in parts.iter().enumerate() {
                            if let Opd::Reg(r) = p {
                                set(w, *r, l, (v >> (k as u32 * each)) & ((1u64 << each) - 1));
                            }
                        }
                    }
                }
                (Some(Opd::Reg(d)), Some(Opd::Vector(parts))) => {
                    if !matches!(parts.len(), 2 | 4) {
                        return Err(unsupported(cx, i, "a mov vector that is not of 2 or 4"));
                    }
                    let each = bits(t) / parts.len() as u32;
                    for l in lanes(run) {
                        let mut v = 0u64;
                        for (k, p) in parts.iter().enumerate() {
                            v |= (src(cx, w, i, p, Scalar::B64, l)? & ((1u64 << each) - 1)) << (k as u32 * each);
                        }
                        set(w, *d, l, v);
                    }
                }
                _ => {
                    let d = dst(cx, i, 0)?;
                    if let Some(v) = pre(cx, w, i, &i.opds[1], t) {
                        let d = &mut w.regs[d as usize * 32..d as usize * 32 + 32];
                        for l in lanes(run) {
                            d[l] = mask_to(t, v[l]);
                        }
                    } else {
                        for l in lanes(run) {
                            let v = src(cx, w, i, &i.opds[1], t, l)?;
                            set(w, d, l, mask_to(t, v));
                        }
                    }
                }
            }
        }
        Op::Ld | Op::Ldu => {
            let t = last_type(cx, i)?;
            let size = t.size() as usize;
            let vec = if has(i, Word::V4) {
                4
            } else if has(i, Word::V2) {
                2
            } else {
                1
            };
            let dsts: &[Opd] = match &i.opds[0] {
                Opd::Vector(v) => v,
                o => std::slice::from_ref(o),
            };
            if dsts.len() != vec {
                return Err(unsupported(cx, i, "a vector load whose destination count differs"));
            }
            if let (1, [Opd::Reg(d)], Some((space, addrs))) = (vec, dsts, addresses(w, i, &i.opds[1])) {
                // One element a lane, the addresses decoded for the whole warp.
                let mut vals = [0u64; 32];
                if space == Where::Global {
                    cx.mem.read_lanes(&addrs, size, run, &mut vals).map_err(|f| illegal(cx, i, f.addr, f.len as usize))?;
                } else if space == Where::Shared || (space == Where::Param && w.params.is_none()) {
                    let buf: &[u8] = if space == Where::Shared { &cx.shared } else { cx.l.params };
                    if addrs.iter().all(|&a| a == addrs[0]) {
                        // One address for the warp (a parameter, a shared variable): read once.
                        if run != 0 {
                            let v = read_le(buf, addrs[0], size).ok_or_else(|| illegal(cx, i, addrs[0], size))?;
                            vals = [v; 32];
                        }
                    } else {
                        for l in lanes(run) {
                            vals[l] = read_le(buf, addrs[l], size).ok_or_else(|| illegal(cx, i, addrs[l], size))?;
                        }
                    }
                } else {
                    for l in lanes(run) {
                        let mut v = [0u8; 8];
                        load(cx, w, i, space, addrs[l], l, &mut v[..size])?;
                        vals[l] = u64::from_le_bytes(v);
                    }
                }
                for l in lanes(run) {
                    let raw = vals[l];
                    set(w, *d, l, if is_signed(t) { sext(t, raw) as u64 } else { raw });
                }
                return Ok(());
            }
            for l in lanes(run) {
                let (space, a) = address(cx, w, i, &i.opds[1], l)?;
                let mut buf = [0u8; 64];
                load(cx, w, i, space, a, l, &mut buf[..size * vec])?;
                for (k, d) in dsts.iter().enumerate() {
                    let mut v = [0u8; 8];
                    v[..size].copy_from_slice(&buf[k * size..k * size + size]);
                    let raw = u64::from_le_bytes(v);
                    let val = if is_signed(t) { sext(t, raw) as u64 } else { raw };
                    match d {
                        Opd::Reg(r) => set(w, *r, l, val),
                        Opd::Sink => {}
                        other => return Err(unsupported(cx, i, format!("a load into {other:?}"))),
                    }
                }
            }
        }
        Op::St => {
            let t = last_type(cx, i)?;
            let size = t.size() as usize;
            let srcs: &[Opd] = match &i.opds[1] {
                Opd::Vector(v) => v,
                o => std::slice::from_ref(o),
            };
            if srcs.len() > 4 {
                return Err(unsupported(cx, i, "a store of more than 4 elements"));
            }
            if let ([v], Some((space, addrs))) = (srcs, addresses(w, i, &i.opds[0])) {
                if let Some(v) = lanes_of(cx, w, i, v, t) {
                    // One element a lane, the addresses and values fetched for the whole warp.
                    let vals = fetch(w, v);
                    if space == Where::Global {
                        cx.mem.write_lanes(&addrs, size, run, &vals).map_err(|f| illegal(cx, i, f.addr, f.len as usize))?;
                    } else {
                        for l in lanes(run) {
                            store(cx, w, i, space, addrs[l], l, &vals[l].to_le_bytes()[..size])?;
                        }
                    }
                    return Ok(());
                }
            }
            for l in lanes(run) {
                let (space, a) = address(cx, w, i, &i.opds[0], l)?;
                let mut buf = [0u8; 64];
                for (k, s) in srcs.iter().enumerate() {
                    let v = src(cx, w, i, s, t, l)?;
                    buf[k * size..k * size + size].copy_from_slice(&v.to_le_bytes()[..size]);
                }
                store(cx, w, i, space, a, l, &buf[..size * srcs.len()])?;
            }
        }
        Op::Cvta => {
            let shared = has(i, Word::Shared);
            let local = has(i, Word::Local);
            let to = has(i, Word::To);
            let d = dst(cx, i, 0)?;
            let pv = pre(cx, w, i, &i.opds[1], Scalar::U64);
            for l in lanes(run) {
                let v = val(cx, w, i, &i.opds[1], Scalar::U64, l, &pv)?;
                let out = match (shared, local, to) {
                    (true, _, false) => v.wrapping_add(SHARED_WINDOW),
                    (true, _, true) => v.wrapping_sub(SHARED_WINDOW),
                    (_, true, false) => v.wrapping_add(LOCAL_WINDOW),
                    (_, true, true) => v.wrapping_sub(LOCAL_WINDOW),
                    _ => v, // global and const are identity-mapped
                };
                set(w, d, l, out);
            }
        }
        Op::Setp => setp(cx, w, i, run)?,
        Op::Selp => {
            let t = last_type(cx, i)?;
            let d = dst(cx, i, 0)?;
            let (pa, pb, pc) = (pre(cx, w, i, &i.opds[1], t), pre(cx, w, i, &i.opds[2], t), pre(cx, w, i, &i.opds[3], Scalar::Pred));
            for l in lanes(run) {
                let c = val(cx, w, i, &i.opds[3], Scalar::Pred, l, &pc)? & 1;
                let v = if c != 0 { val(cx, w, i, &i.opds[1], t, l, &pa)? } else { val(cx, w, i, &i.opds[2], t, l, &pb)? };
                set(w, d, l, v);
            }
        }
        Op::Cvt => cvt(cx, w, i, run)?,
        Op::Shfl => shfl(cx, w, i, run)?,
        Op::Vote => {
            let d = i.opds.first().cloned().unwrap_or(Opd::Sink);
            let mut ballot = 0u32;
            for l in lanes(run) {
                if src(cx, w, i, &i.opds[1], Scalar::Pred, l)? & 1 != 0 {
                    ballot |= 1 << l;
                }
            }
            let value = if has(i, Word::Ballot) {
                u64::from(ballot)
            } else if has(i, Word::Any) {
                u64::from(ballot != 0)
            } else if has(i, Word::All) {
                u64::from(ballot == run)
            } else {
                return Err(unsupported(cx, i, "this vote mode"));
            };
            if let Opd::Reg(r) = d {
                for l in lanes(run) {
                    set(w, r, l, value);
                }
            }
        }
        Op::Atom | Op::Red => atom(cx, w, i, run)?,
        Op::Call => call(cx, w, i, run)?,
        Op::Mma => mma::mma(cx, w, i, run, mask)?,
        Op::Ldmatrix => mma::ldmatrix(cx, w, i, run, mask)?,
        Op::Redux => warp::redux(cx, w, i, run)?,
        Op::Match => warp::match_sync(cx, w, i, run)?,
        Op::Nanosleep => {
            // A hint that the thread may sleep up to `t` ns: the warp yields its time slice.
            if run != 0 {
                w.yielded = true;
            }
        }
        Op::Griddepcontrol => griddepcontrol(cx, i)?,
        _ => alu(cx, w, i, run)?,
    }
    Ok(())
}

/// `griddepcontrol.wait` and `griddepcontrol.launch_dependents` (PTX ISA, "Parallel Synchronization and
/// Communication Instructions: griddepcontrol", programmatic dependent launch): no-ops here, and correctly so. `wait` blocks until the
/// grids this one depends on have completed and their memory operations are visible; the
/// device runs the launches of a stream one after another, each starting only after the
/// previous one has finished, so that already holds when the first instruction runs.
/// `launch_dependents` only allows a dependent grid to start *early*; never doing so is
/// what a launch without programmatic dependent launch does.
fn griddepcontrol(cx: &Ctx<'_, '_>, i: &Inst) -> R<()> {
    match i.mods[..] {
        [Mod::W(Word::Wait | Word::LaunchDependents)] if i.opds.is_empty() => Ok(()),
        _ => Err(unsupported(cx, i, "this form of griddepcontrol")),
    }
}

fn setp(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    let t = last_type(cx, i)?;
    let cmp = i
        .mods
        .iter()
        .find_map(|m| match m {
            Mod::W(
                c @ (Word::Eq
                | Word::Ne
                | Word::Lt
                | Word::Le
                | Word::Gt
                | Word::Ge
                | Word::Lo
                | Word::Ls
                | Word::Hi
                | Word::Hs
                | Word::Equ
                | Word::Neu
                | Word::Ltu
                | Word::Leu
                | Word::Gtu
                | Word::Geu
                | Word::Num
                | Word::Nan),
            ) => Some(*c),
            _ => None,
        })
        .ok_or_else(|| unsupported(cx, i, "setp without a comparison"))?;
    let combine = i.mods.iter().rev().find_map(|m| match m {
        Mod::W(c @ (Word::And | Word::Or | Word::Xor)) => Some(*c),
        _ => None,
    });
    let (p, q) = match &i.opds[0] {
        Opd::Reg(p) => (*p, None),
        Opd::PredPair(p, q) => (*p, Some(*q)),
        other => return Err(unsupported(cx, i, format!("setp into {other:?}"))),
    };
    let (pa, pb) = (pre(cx, w, i, &i.opds[1], t), pre(cx, w, i, &i.opds[2], t));
    // The type's class and conversions decided once (`f`, `sext`, `mask_to` of `t`).
    let (float, signed, nb) = (is_float(t), is_signed(t), bits(t));
    let fl = move |v: u64| if t == Scalar::F32 { f64::from(f32v(v)) } else { f(t, v) };
    let sx = move |v: u64| match nb {
        32 => v as u32 as i32 as i64,
        64 => v as i64,
        _ => sext(t, v),
    };
    let mk = move |v: u64| match nb {
        32 => v as u32 as u64,
        64 => v,
        _ => mask_to(t, v),
    };
    for l in lanes(run) {
        let a = val(cx, w, i, &i.opds[1], t, l, &pa)?;
        let b = val(cx, w, i, &i.opds[2], t, l, &pb)?;
        let r = if float {
            let (x, y) = (fl(a), fl(b));
            let un = x.is_nan() || y.is_nan();
            match cmp {
                Word::Eq => x == y,
                Word::Ne => !un && x != y,
                Word::Lt => x < y,
                Word::Le => x <= y,
                Word::Gt => x > y,
                Word::Ge => x >= y,
                Word::Equ => un || x == y,
                Word::Neu => un || x != y,
                Word::Ltu => un || x < y,
                Word::Leu => un || x <= y,
                Word::Gtu => un || x > y,
                Word::Geu => un || x >= y,
                Word::Num => !un,
                Word::Nan => un,
                _ => return Err(unsupported(cx, i, "this float comparison")),
            }
        } else if signed {
            let (x, y) = (sx(a), sx(b));
            match cmp {
                Word::Eq => x == y,
                Word::Ne => x != y,
                Word::Lt => x < y,
                Word::Le => x <= y,
                Word::Gt => x > y,
                Word::Ge => x >= y,
                _ => return Err(unsupported(cx, i, "this signed comparison")),
            }
        } else {
            let (x, y) = (mk(a), mk(b));
            match cmp {
                Word::Eq => x == y,
                Word::Ne => x != y,
                Word::Lt | Word::Lo => x < y,
                Word::Le | Word::Ls => x <= y,
                Word::Gt | Word::Hi => x > y,
                Word::Ge | Word::Hs => x >= y,
                _ => return Err(unsupported(cx, i, "this unsigned comparison")),
            }
        };
        let (mut r, mut nr) = (r, !r);
        if let Some(c) = combine {
            let c_in = src(
                cx,
                w,
                i,
                i.opds.get(3).ok_or_else(|| unsupported(cx, i, "setp with a boolean op and no predicate"))?,
                Scalar::Pred,
                l,
            )? & 1
                != 0;
            let op = |x: bool| match c {
                Word::And => x && c_in,
                Word::Or => x || c_in,
                _ => x ^ c_in,
            };
            (r, nr) = (op(r), op(nr));
        }
        set(w, p, l, u64::from(r));
        if let Some(q) = q {
            set(w, q, l, u64::from(nr));
        }
    }
    Ok(())
}

fn round_f(x: f64, i: &Inst) -> f64 {
    if has(i, Word::Rni) || has(i, Word::Rn) {
        x.round_ties_even()
    } else if has(i, Word::Rzi) || has(i, Word::Rz) {
        x.trunc()
    } else if has(i, Word::Rmi) || has(i, Word::Rm) {
        x.floor()
    } else if has(i, Word::Rpi) || has(i, Word::Rp) {
        x.ceil()
    } else {
        x
    }
}

fn cvt(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    if let Some(fmt) = fp8::format(i) {
        return fp8::cvt(cx, w, i, run, fmt);
    }
    let ts: Vec<Scalar> = types(i).collect();
    let [dt, st] = ts[..] else { return Err(unsupported(cx, i, "cvt without two types")) };
    let d = dst(cx, i, 0)?;
    if let Some(h) = packed_half(dt) {
        // cvt.rn.f16x2.f32 d, a, b: d = {a (upper half), b (lower half)}, each rounded.
        if st != Scalar::F32 || i.opds.len() < 3 {
            return Err(unsupported(cx, i, "this packed conversion"));
        }
        for l in lanes(run) {
            let a = f(st, src(cx, w, i, &i.opds[1], st, l)?);
            let b = f(st, src(cx, w, i, &i.opds[2], st, l)?);
            let pack = |x: f64| {
                let x = if has(i, Word::Relu) && x < 0.0 { 0.0 } else { x };
                from_f(h, x) & 0xffff
            };
            set(w, d, l, pack(a) << 16 | pack(b));
        }
        return Ok(());
    }
    if packed_half(st).is_some() {
        return Err(unsupported(cx, i, "a conversion from a packed pair"));
    }
    for l in lanes(run) {
        let v = src(cx, w, i, &i.opds[1], st, l)?;
        let out = match (is_float(dt), is_float(st)) {
            (true, true) => {
                let x = f(st, v);
                let x = if dt == st { round_f(x, i) } else { x };
                from_f(dt, x)
            }
            (true, false) => from_f(dt, if is_signed(st) { sext(st, v) as f64 } else { mask_to(st, v) as f64 }),
            (false, true) => {
                let x = round_f(f(st, v), i);
                let x = if x.is_nan() { 0.0 } else { x };
                if is_signed(dt) {
                    let n = bits(dt);
                    let (lo, hi) = (-(2f64.powi(n as i32 - 1)), 2f64.powi(n as i32 - 1) - 1.0);
                    mask_to(dt, x.clamp(lo, hi) as i64 as u64)
                } else {
                    let hi = 2f64.powi(bits(dt) as i32) - 1.0;
                    x.clamp(0.0, hi) as u64
                }
            }
            (false, false) => {
                let s = if is_signed(st) { sext(st, v) as u64 } else { mask_to(st, v) };
                let s = if has(i, Word::Sat) && is_signed(st) != is_signed(dt) && (s as i64) < 0 { 0 } else { s };
                if is_signed(dt) {
                    sext(dt, mask_to(dt, s)) as u64
                } else {
                    mask_to(dt, s)
                }
            }
        };
        set(w, d, l, out);
    }
    Ok(())
}

fn shfl(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    // shfl.sync.mode.b32 d[|p], a, b, c, membermask;
    let (d, p) = match &i.opds[0] {
        Opd::Reg(d) => (*d, None),
        Opd::PredPair(d, p) => (*d, Some(*p)),
        other => return Err(unsupported(cx, i, format!("shfl into {other:?}"))),
    };
    let vals: Vec<u64> =
        (0..32).map(|l| if run & (1 << l) != 0 { src(cx, w, i, &i.opds[1], Scalar::B32, l).unwrap_or(0) } else { 0 }).collect();
    let mut out = [(0u64, false); 32];
    for l in lanes(run) {
        let b = src(cx, w, i, &i.opds[2], Scalar::B32, l)? as u32;
        let c = src(cx, w, i, &i.opds[3], Scalar::B32, l)? as u32;
        let seg_mask = (c >> 8) & 0x1f;
        let max_lane = c & 0x1f;
        let lane = l as u32;
        let min_lane = lane & seg_mask;
        let max_lane = min_lane | (max_lane & !seg_mask);
        let (j, ok) = if has(i, Word::Up) {
            let j = lane.wrapping_sub(b);
            (j, j as i32 >= min_lane as i32)
        } else if has(i, Word::Down) {
            let j = lane.wrapping_add(b);
            (j, j <= max_lane)
        } else if has(i, Word::Bfly) {
            let j = lane ^ b;
            (j, j <= max_lane)
        } else if has(i, Word::Idx) {
            let j = min_lane | (b & !seg_mask);
            (j, j <= max_lane)
        } else {
            return Err(unsupported(cx, i, "this shfl mode"));
        };
        let j = if ok && j < 32 && run & (1 << j) != 0 { j } else { lane };
        out[l] = (vals[j as usize], ok);
    }
    for l in lanes(run) {
        set(w, d, l, out[l].0);
        if let Some(p) = p {
            set(w, p, l, u64::from(out[l].1));
        }
    }
    Ok(())
}

fn atom(cx: &mut Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    let t = last_type(cx, i)?;
    let size = t.size() as usize;
    let red = i.op == Op::Red;
    let (addr_at, first_src) = if red { (0, 1) } else { (1, 2) };
    let op = i
        .mods
        .iter()
        .find_map(|m| match m {
            Mod::W(
                o @ (Word::AddOp
                | Word::Inc
                | Word::Dec
                | Word::Min
                | Word::Max
                | Word::Exch
                | Word::Cas
                | Word::And
                | Word::Or
                | Word::Xor),
            ) => Some(*o),
            _ => None,
        })
        .ok_or_else(|| unsupported(cx, i, "atom without an operation"))?;
    // Lanes in order: the result is as if they ran one after another.
    for l in lanes(run) {
        let (space, a) = address(cx, w, i, &i.opds[addr_at], l)?;
        let b = src(cx, w, i, &i.opds[first_src], t, l)?;
        let c = if op == Word::Cas { src(cx, w, i, &i.opds[first_src + 1], t, l)? } else { 0 };
        let mut apply = |old: u64| -> u64 {
            let old = mask_to(t, old);
            let r = match op {
                Word::AddOp if is_float(t) => from_f(t, f(t, old) + f(t, b)),
                Word::AddOp => old.wrapping_add(b),
                Word::Inc => {
                    if old >= mask_to(t, b) {
                        0
                    } else {
                        old + 1
                    }
                }
                Word::Dec => {
                    if old == 0 || old > mask_to(t, b) {
                        mask_to(t, b)
                    } else {
                        old - 1
                    }
                }
                Word::Min if is_signed(t) => sext(t, old).min(sext(t, b)) as u64,
                Word::Max if is_signed(t) => sext(t, old).max(sext(t, b)) as u64,
                Word::Min if is_float(t) => from_f(t, f(t, old).min(f(t, b))),
                Word::Max if is_float(t) => from_f(t, f(t, old).max(f(t, b))),
                Word::Min => old.min(mask_to(t, b)),
                Word::Max => old.max(mask_to(t, b)),
                Word::Exch => b,
                Word::Cas => {
                    if old == mask_to(t, b) {
                        c
                    } else {
                        old
                    }
                }
                Word::And => old & b,
                Word::Or => old | b,
                _ => old ^ b,
            };
            mask_to(t, r)
        };
        let old = match space {
            Where::Global => cx.mem.atomic(a, size, &mut apply).map_err(|f| illegal(cx, i, f.addr, f.len as usize))?,
            Where::Shared => {
                let r = slice_of(&cx.shared, a, size).ok_or_else(|| illegal(cx, i, a, size))?;
                let mut v = [0u8; 8];
                v[..size].copy_from_slice(&cx.shared[r.clone()]);
                let old = u64::from_le_bytes(v);
                let new = apply(old);
                cx.shared[r].copy_from_slice(&new.to_le_bytes()[..size]);
                old
            }
            _ => return Err(unsupported(cx, i, "atomics outside global and shared memory")),
        };
        if !red {
            if let Opd::Reg(d) = i.opds[0] {
                set(w, d, l, if is_signed(t) { sext(t, old) as u64 } else { old });
            }
        }
    }
    Ok(())
}

/// One float operation of `t` (`.ftz`, `.sat` applied; the result rounded to `t` by the caller).
fn float_op(cx: &Ctx<'_, '_>, i: &Inst, t: Scalar, x: f64, y: f64, z: f64) -> R<f64> {
    let r = match i.op {
        Op::Add => x + y,
        Op::Sub => x - y,
        Op::Mul => x * y,
        Op::Fma | Op::Mad => x.mul_add(y, z),
        Op::Div => x / y,
        Op::Abs => x.abs(),
        Op::Neg => -x,
        Op::Min => x.min(y),
        Op::Max => x.max(y),
        Op::Rcp => 1.0 / x,
        Op::Sqrt => x.sqrt(),
        Op::Rsqrt => 1.0 / x.sqrt(),
        Op::Ex2 => x.exp2(),
        Op::Lg2 => x.log2(),
        Op::Sin => x.sin(),
        Op::Cos => x.cos(),
        Op::Tanh => x.tanh(),
        Op::Copysign => y.copysign(x),
        _ => return Err(unsupported(cx, i, format!("{} on floats", i.op.word()))),
    };
    let r = if t == Scalar::F32 { f64::from(r as f32) } else { r };
    let r = if has(i, Word::Sat) {
        if r.is_nan() {
            0.0
        } else {
            r.clamp(0.0, 1.0)
        }
    } else {
        r
    };
    let r =
        if has(i, Word::Ftz) && t == Scalar::F32 && r != 0.0 && r.abs() < f64::from(f32::MIN_POSITIVE) { 0.0f64.copysign(r) } else { r };
    Ok(r)
}

/// Operand `o` for every lane, fetched at once when it is a register or an immediate (its
/// value then does not need [`src`] lane by lane).
fn pre(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, o: &Opd, t: Scalar) -> Option<[u64; 32]> {
    if let Opd::Special(s) = o {
        let b = cx.l.block;
        let x0 = w.base_thread % b[0];
        if let (Special::Tid(0), true) = (s, x0 + 32 <= b[0]) {
            // The warp's lanes are consecutive in x (no row wraps inside it).
            return Some(std::array::from_fn(|l| u64::from(x0 + l as u32)));
        }
        if matches!(
            s,
            Special::Tid(_)
                | Special::Laneid
                | Special::LanemaskEq
                | Special::LanemaskLe
                | Special::LanemaskLt
                | Special::LanemaskGe
                | Special::LanemaskGt
        ) {
            return Some(std::array::from_fn(|l| special(cx, w, *s, l)));
        }
        // The others do not depend on the lane.
        return Some([special(cx, w, *s, 0); 32]);
    }
    lanes_of(cx, w, i, o, t).map(|s| fetch(w, s))
}

/// [`src`] for `lane`, from `p` when [`pre`] fetched it.
fn val(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, o: &Opd, t: Scalar, lane: usize, p: &Option<[u64; 32]>) -> R<u64> {
    match p {
        Some(v) => Ok(v[lane]),
        None => src(cx, w, i, o, t, lane),
    }
}

/// A source operand decoded once for a whole warp: a register's slot or one value for every lane.
#[derive(Clone, Copy)]
enum Lanes {
    Reg(usize),
    Same(u64),
}

/// `o` as a [`Lanes`], when it is a register or an immediate (whose value as `t` is the same
/// for every lane).
fn lanes_of(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, o: &Opd, t: Scalar) -> Option<Lanes> {
    match o {
        Opd::Reg(r) => Some(Lanes::Reg(*r as usize)),
        Opd::Imm(_) | Opd::Float(_) => src(cx, w, i, o, t, 0).ok().map(Lanes::Same),
        _ => None,
    }
}

#[inline]
fn fetch(w: &Warp, s: Lanes) -> [u64; 32] {
    match s {
        Lanes::Reg(r) => w.regs[r * 32..r * 32 + 32].try_into().unwrap_or([0; 32]),
        Lanes::Same(v) => [v; 32],
    }
}

/// `d = f(a, b, c)` for the lanes `run`, the operands fetched for the whole warp at once
/// (a loop the compiler vectorizes; lanes outside `run` keep their value).
fn map3(w: &mut Warp, d: RegId, a: Lanes, b: Lanes, c: Lanes, run: u32, f: impl Fn(u64, u64, u64) -> u64) {
    let (a, b, c) = (fetch(w, a), fetch(w, b), fetch(w, c));
    let d = &mut w.regs[d as usize * 32..d as usize * 32 + 32];
    for l in 0..32 {
        let v = f(a[l], b[l], c[l]);
        if run & (1 << l) != 0 {
            d[l] = v;
        }
    }
}

/// `op` of two f32 bits computed in f64 and rounded once to f32, as [`float_op`] does.
#[inline]
fn f32op(a: u64, b: u64, op: impl Fn(f64, f64) -> f64) -> u64 {
    u64::from((op(f64::from(f32v(a)), f64::from(f32v(b))) as f32).to_bits())
}

/// The common arithmetic forms (32- and 64-bit integers, f32 and f64 without `.sat`/`.ftz`)
/// over the whole warp at once, computing exactly what [`alu`]'s per-lane path computes.
/// `false`: not one of them (the caller runs the general path).
fn alu_warp(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, t: Scalar, d: RegId, run: u32) -> bool {
    let n = i.opds.len();
    if !(3..=4).contains(&n) || i.mods.iter().any(|m| matches!(m, Mod::W(Word::Sat | Word::Ftz | Word::Hi))) {
        return false;
    }
    let wide = has(i, Word::Wide);
    let Some(a) = lanes_of(cx, w, i, &i.opds[1], t) else { return false };
    let Some(b) = lanes_of(cx, w, i, &i.opds[2], t) else { return false };
    let c = if n > 3 {
        match lanes_of(cx, w, i, &i.opds[3], if wide { wide_of(t) } else { t }) {
            Some(c) => c,
            None => return false,
        }
    } else {
        Lanes::Same(0)
    };
    let three = n == 4;
    match (t, i.op) {
        (Scalar::F32, Op::Add) if !three => map3(w, d, a, b, c, run, |a, b, _| f32op(a, b, |x, y| x + y)),
        (Scalar::F32, Op::Sub) if !three => map3(w, d, a, b, c, run, |a, b, _| f32op(a, b, |x, y| x - y)),
        (Scalar::F32, Op::Mul) if !three => map3(w, d, a, b, c, run, |a, b, _| f32op(a, b, |x, y| x * y)),
        (Scalar::F32, Op::Fma | Op::Mad) if three => map3(w, d, a, b, c, run, |a, b, c| {
            let (x, y, z) = (f64::from(f32v(a)), f64::from(f32v(b)), f64::from(f32v(c)));
            u64::from((x.mul_add(y, z) as f32).to_bits())
        }),
        (Scalar::F64, Op::Add) if !three => map3(w, d, a, b, c, run, |a, b, _| (f64::from_bits(a) + f64::from_bits(b)).to_bits()),
        (Scalar::F64, Op::Sub) if !three => map3(w, d, a, b, c, run, |a, b, _| (f64::from_bits(a) - f64::from_bits(b)).to_bits()),
        (Scalar::F64, Op::Mul) if !three => map3(w, d, a, b, c, run, |a, b, _| (f64::from_bits(a) * f64::from_bits(b)).to_bits()),
        (Scalar::F64, Op::Fma | Op::Mad) if three => {
            map3(w, d, a, b, c, run, |a, b, c| f64::from_bits(a).mul_add(f64::from_bits(b), f64::from_bits(c)).to_bits())
        }
        (Scalar::S32 | Scalar::U32 | Scalar::B32 | Scalar::S64 | Scalar::U64 | Scalar::B64, op) => {
            if wide && !matches!(op, Op::Mul | Op::Mad) {
                return false;
            }
            let s = is_signed(t);
            let nb = bits(t);
            // The per-lane path's operand and result conversions.
            // (`sext` and `mask_to` of 32 or 64 bits, without their type dispatch.)
            let narrow = nb == 32;
            let x = move |a: u64| match (narrow, s) {
                (true, true) => a as u32 as i32 as i64 as u64,
                (true, false) => a as u32 as u64,
                _ => a,
            };
            let out = x;
            match op {
                Op::Mul | Op::Mad if wide => {
                    if !matches!(t, Scalar::S32 | Scalar::U32) || (op == Op::Mad) != three {
                        return false;
                    }
                    let ot = wide_of(t);
                    let full = move |x: u64, y: u64| -> u64 {
                        if s {
                            (x as i64 as i128 * y as i64 as i128) as u128 as u64
                        } else {
                            (x as u128 * y as u128) as u64
                        }
                    };
                    let out = move |r: u64| if s { sext(ot, mask_to(ot, r)) as u64 } else { mask_to(ot, r) };
                    map3(w, d, a, b, c, run, |a, b, c| out(full(x(a), x(b)).wrapping_add(if three { c } else { 0 })))
                }
                Op::Add if !three => map3(w, d, a, b, c, run, |a, b, _| out(x(a).wrapping_add(x(b)))),
                Op::Sub if !three => map3(w, d, a, b, c, run, |a, b, _| out(x(a).wrapping_sub(x(b)))),
                Op::Mul if !three => map3(w, d, a, b, c, run, |a, b, _| out(x(a).wrapping_mul(x(b)))),
                Op::Mad if three => map3(w, d, a, b, c, run, |a, b, c| out(x(a).wrapping_mul(x(b)).wrapping_add(c))),
                Op::And if !three => map3(w, d, a, b, c, run, |a, b, _| out(a & b)),
                Op::Or if !three => map3(w, d, a, b, c, run, |a, b, _| out(a | b)),
                Op::Xor if !three => map3(w, d, a, b, c, run, |a, b, _| out(a ^ b)),
                Op::Shl if !three => map3(w, d, a, b, c, run, |a, b, _| {
                    let sh = b as u32;
                    out(if sh >= nb { 0 } else { a << sh })
                }),
                Op::Shr if !three => map3(w, d, a, b, c, run, |a, b, _| {
                    let sh = (b as u32).min(nb);
                    out(if s {
                        (sext(t, a) >> sh.min(63)) as u64
                    } else if sh >= nb {
                        0
                    } else {
                        mask_to(t, a) >> sh
                    })
                }),
                _ => return false,
            }
        }
        _ => return false,
    }
    true
}

fn alu(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    let t = last_type(cx, i)?;
    let d = dst(cx, i, 0)?;
    if run == 0 || alu_warp(cx, w, i, t, d, run) {
        return Ok(());
    }
    alu_lanes(cx, w, i, t, d, run)
}

/// [`alu`] lane by lane: every form.
fn alu_lanes(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, t: Scalar, d: RegId, run: u32) -> R<()> {
    let wide = has(i, Word::Wide);
    let hi = has(i, Word::Hi);
    let n = i.opds.len();
    let pa = pre(cx, w, i, &i.opds[1], t);
    let pb = if n > 2 { pre(cx, w, i, &i.opds[2], t) } else { None };
    for l in lanes(run) {
        let a = val(cx, w, i, &i.opds[1], t, l, &pa)?;
        let b = if n > 2 { val(cx, w, i, &i.opds[2], t, l, &pb)? } else { 0 };
        let c = if n > 3 && i.op != Op::Setp { src(cx, w, i, &i.opds[3], if wide { wide_of(t) } else { t }, l)? } else { 0 };
        let v = if let Some(h) = packed_half(t) {
            // Two halves, each computed as its scalar type.
            let mut out = 0u64;
            for k in 0..2 {
                let part = |v: u64| (v >> (16 * k)) & 0xffff;
                let r = float_op(cx, i, h, f(h, part(a)), f(h, part(b)), f(h, part(c)))?;
                out |= (from_f(h, r) & 0xffff) << (16 * k);
            }
            out
        } else if is_float(t) {
            from_f(t, float_op(cx, i, t, f(t, a), f(t, b), f(t, c))?)
        } else {
            let s = is_signed(t);
            let (x, y) = (if s { sext(t, a) as u64 } else { mask_to(t, a) }, if s { sext(t, b) as u64 } else { mask_to(t, b) });
            let nb = bits(t);
            let full = |x: u64, y: u64| -> u128 {
                if s {
                    (x as i64 as i128 * y as i64 as i128) as u128
                } else {
                    x as u128 * y as u128
                }
            };
            let r = match i.op {
                Op::Add => x.wrapping_add(y),
                Op::Sub => x.wrapping_sub(y),
                Op::Mul | Op::Mad if wide => {
                    let p = full(x, y) as u64;
                    if i.op == Op::Mad {
                        p.wrapping_add(c)
                    } else {
                        p
                    }
                }
                Op::Mul | Op::Mad if hi => {
                    let p = (full(x, y) >> nb) as u64;
                    if i.op == Op::Mad {
                        p.wrapping_add(c)
                    } else {
                        p
                    }
                }
                Op::Mul => x.wrapping_mul(y),
                Op::Mad => x.wrapping_mul(y).wrapping_add(c),
                Op::Mul24 => (x & 0xff_ffff).wrapping_mul(y & 0xff_ffff),
                Op::Mad24 => (x & 0xff_ffff).wrapping_mul(y & 0xff_ffff).wrapping_add(c),
                Op::Sad => (if s { (x as i64).abs_diff(y as i64) } else { x.abs_diff(y) }).wrapping_add(c),
                Op::Div | Op::Rem => {
                    if mask_to(t, y) == 0 {
                        // Division by zero: all ones, as the hardware.
                        u64::MAX
                    } else if s {
                        let (p, q) = (x as i64, y as i64);
                        (if i.op == Op::Div { p.wrapping_div(q) } else { p.wrapping_rem(q) }) as u64
                    } else if i.op == Op::Div {
                        x / y
                    } else {
                        x % y
                    }
                }
                Op::Min => {
                    if s {
                        (x as i64).min(y as i64) as u64
                    } else {
                        x.min(y)
                    }
                }
                Op::Max => {
                    if s {
                        (x as i64).max(y as i64) as u64
                    } else {
                        x.max(y)
                    }
                }
                Op::Abs => (x as i64).unsigned_abs(),
                Op::Neg => x.wrapping_neg(),
                Op::And => a & b,
                Op::Or => a | b,
                Op::Xor => a ^ b,
                Op::Not => !a,
                Op::Cnot => u64::from(mask_to(t, a) == 0),
                Op::Shl => {
                    let sh = b as u32;
                    if sh >= nb {
                        0
                    } else {
                        a << sh
                    }
                }
                Op::Shr => {
                    let sh = (b as u32).min(nb);
                    if s {
                        (sext(t, a) >> sh.min(63)) as u64
                    } else if sh >= nb {
                        0
                    } else {
                        mask_to(t, a) >> sh
                    }
                }
                Op::Popc => u64::from(mask_to(t, a).count_ones()),
                Op::Clz => u64::from(mask_to(t, a).leading_zeros() - (64 - nb)),
                Op::Brev => mask_to(t, a).reverse_bits() >> (64 - nb),
                Op::Bfi => {
                    // bfi.b32 d, a (insert), b (base), c (pos), e (len)
                    let pos = c as u32 & 0xff;
                    let len = src(cx, w, i, &i.opds[4], Scalar::U32, l)? as u32 & 0xff;
                    if len == 0 || pos >= nb {
                        b
                    } else {
                        let len = len.min(nb - pos);
                        let m = if len >= 64 { u64::MAX } else { ((1u64 << len) - 1) << pos };
                        (b & !m) | ((a << pos) & m)
                    }
                }
                Op::Bfe => {
                    let pos = b as u32 & 0xff;
                    let len = c as u32 & 0xff;
                    if len == 0 {
                        0
                    } else {
                        let v = if pos >= 64 { 0 } else { mask_to(t, a) >> pos };
                        let len = len.min(nb);
                        let m = if len >= 64 { u64::MAX } else { (1u64 << len) - 1 };
                        let v = v & m;
                        if s && len < 64 && (v >> (len - 1)) & 1 != 0 {
                            v | !m
                        } else {
                            v
                        }
                    }
                }
                Op::Dp4a => {
                    // dp4a.atype.btype d, a, b, c (c is s32/u32).
                    let ts: Vec<Scalar> = types(i).collect();
                    let (sa, sb) = (ts.first().is_some_and(|t| is_signed(*t)), ts.get(1).is_some_and(|t| is_signed(*t)));
                    let byte = |v: u64, k: u32, sg: bool| -> i64 {
                        let b = (v >> (8 * k)) & 0xff;
                        if sg {
                            b as u8 as i8 as i64
                        } else {
                            b as i64
                        }
                    };
                    let mut acc = sext(Scalar::S32, c);
                    for k in 0..4 {
                        acc = acc.wrapping_add(byte(a, k, sa) * byte(b, k, sb));
                    }
                    acc as u64
                }
                Op::Prmt => {
                    let mode = i.mods.iter().find_map(|m| match m {
                        Mod::W(w @ (Word::F4e | Word::B4e | Word::Rc8 | Word::Ecl | Word::Ecr | Word::Rc16)) => Some(*w),
                        _ => None,
                    });
                    u64::from(prmt(a as u32, b as u32, c as u32, mode))
                }
                _ => return Err(unsupported(cx, i, format!("{} on integers", i.op.word()))),
            };
            let out_t = if wide { wide_of(t) } else { t };
            let r = if has(i, Word::Sat) && t == Scalar::S32 && matches!(i.op, Op::Add | Op::Sub) {
                let (p, q) = (x as i64, y as i64);
                (if i.op == Op::Add { p + q } else { p - q }).clamp(i32::MIN as i64, i32::MAX as i64) as u64
            } else {
                r
            };
            if is_signed(out_t) {
                sext(out_t, mask_to(out_t, r)) as u64
            } else {
                mask_to(out_t, r)
            }
        };
        set(w, d, l, v);
    }
    Ok(())
}

/// `prmt.b32{.mode} d, a, b, c` (PTX ISA, "Data Movement and Conversion Instructions:
/// prmt"): four bytes picked from the eight of
/// `{b, a}` (`a` bytes 0-3, `b` bytes 4-7).
///
/// - Default mode: byte `k` of `d` is chosen by nibble `k` of `c`: its low 3 bits index the
///   source byte; with bit 3 set, the chosen byte's sign bit is replicated over the byte.
/// - `.f4e .b4e .rc8 .ecl .ecr .rc16`: `c[1:0]` selects a row of the ISA's table, which lists
///   the source byte of `d.b3 d.b2 d.b1 d.b0`:
///
/// | mode | c=0     | c=1     | c=2     | c=3     |
/// |------|---------|---------|---------|---------|
/// | f4e  | 3 2 1 0 | 4 3 2 1 | 5 4 3 2 | 6 5 4 3 |
/// | b4e  | 5 6 7 0 | 6 7 0 1 | 7 0 1 2 | 0 1 2 3 |
/// | rc8  | 0 0 0 0 | 1 1 1 1 | 2 2 2 2 | 3 3 3 3 |
/// | ecl  | 3 2 1 0 | 3 2 1 1 | 3 2 2 2 | 3 3 3 3 |
/// | ecr  | 0 0 0 0 | 1 1 1 0 | 2 2 1 0 | 3 2 1 0 |
/// | rc16 | 1 0 1 0 | 3 2 3 2 | 1 0 1 0 | 3 2 3 2 |
fn prmt(a: u32, b: u32, c: u32, mode: Option<Word>) -> u32 {
    let bytes = (u64::from(b) << 32 | u64::from(a)).to_le_bytes();
    let Some(mode) = mode else {
        return (0..4).fold(0u32, |out, k| {
            let sel = (c >> (4 * k)) & 0xf;
            let mut byte = bytes[(sel & 7) as usize];
            if sel & 8 != 0 {
                byte = if byte & 0x80 != 0 { 0xff } else { 0 };
            }
            out | u32::from(byte) << (8 * k)
        });
    };
    let s = (c & 3) as usize;
    // Source bytes of d.b3, d.b2, d.b1, d.b0.
    let row: [usize; 4] = match mode {
        Word::F4e => [s + 3, s + 2, s + 1, s],
        Word::B4e => [(s + 5) % 8, (s + 6) % 8, (s + 7) % 8, s],
        Word::Rc8 => [s; 4],
        Word::Ecl => [3, s.max(2), s.max(1), s],
        Word::Ecr => [s, s.min(2), s.min(1), 0],
        _ => [2 * (s & 1) + 1, 2 * (s & 1), 2 * (s & 1) + 1, 2 * (s & 1)],
    };
    row.iter().enumerate().fold(0u32, |out, (k, &src)| out | u32::from(bytes[src]) << (8 * (3 - k)))
}

fn wide_of(t: Scalar) -> Scalar {
    match t {
        Scalar::S16 => Scalar::S32,
        Scalar::U16 => Scalar::U32,
        Scalar::S32 => Scalar::S64,
        Scalar::U32 => Scalar::U64,
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Calls: device functions (run to completion for the calling lanes) and printf

/// The deepest call nesting (nvcc inlines almost everything; a recursion is refused, not a stack
/// overflow).
const MAX_CALL_DEPTH: u32 = 16;

fn call(cx: &mut Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32) -> R<()> {
    if run == 0 {
        return Ok(());
    }
    let none: &[Opd] = &[];
    let (rets, f, args) = match i.opds.as_slice() {
        [Opd::List(r), Opd::Func(f), Opd::List(a)] => (r.as_slice(), *f, a.as_slice()),
        [Opd::Func(f), Opd::List(a)] => (none, *f, a.as_slice()),
        [Opd::List(r), Opd::Func(f)] => (r.as_slice(), *f, none),
        [Opd::Func(f)] => (none, *f, none),
        _ => return Err(unsupported(cx, i, "this form of call (an indirect call)")),
    };
    let offsets = |v: &[Opd]| -> R<Vec<u32>> {
        v.iter()
            .map(|o| match o {
                Opd::CallParam(x) => Ok(*x),
                other => Err(unsupported(cx, i, format!("the call argument {other:?}"))),
            })
            .collect()
    };
    let (ro, ao) = (offsets(rets)?, offsets(args)?);
    match cx.l.functions.get(f as usize) {
        Some(Callee::Printf) => printf(cx, w, i, run, &ro, &ao),
        Some(Callee::Body(k)) => call_body(cx, w, i, run, k, &ro, &ao),
        _ => Err(unsupported(cx, i, "a call of a function without a body")),
    }
}

/// Copy `len` bytes between per-lane areas, bounds-checked on both sides.
#[allow(clippy::too_many_arguments)]
fn copy_lane(from: &[u8], fs: u32, fo: u32, to: &mut [u8], ts: u32, to_off: u32, lane: usize, len: u32) -> bool {
    match (lane_slice(from, fs, lane, u64::from(fo), len as usize), lane_slice(to, ts, lane, u64::from(to_off), len as usize)) {
        (Some(a), Some(b)) => {
            to[b].copy_from_slice(&from[a]);
            true
        }
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn call_body(cx: &mut Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32, k: &Kernel, ro: &[u32], ao: &[u32]) -> R<()> {
    if cx.depth >= MAX_CALL_DEPTH {
        return Err(unsupported(cx, i, format!("calls nested deeper than {MAX_CALL_DEPTH}")));
    }
    if k.params.len() != ao.len() || k.returns.len() != ro.len() {
        return Err(unsupported(cx, i, format!("a call of {} with {} arguments and {} results", k.name, ao.len(), ro.len())));
    }
    let mut child = Warp::new(k, run, w.base_thread);
    let mut params = vec![0u8; k.param_bytes as usize * 32];
    let cs = cx.k.call_param_bytes;
    for l in lanes(run) {
        for (p, &o) in k.params.iter().zip(ao) {
            if !copy_lane(&w.call, cs, o, &mut params, k.param_bytes, p.offset, l, p.size) {
                return Err(illegal(cx, i, u64::from(o), p.size as usize));
            }
        }
    }
    child.params = Some(params);
    let shared = std::mem::take(&mut cx.shared);
    let mut ccx = Ctx {
        k,
        l: cx.l,
        mem: cx.mem,
        shared,
        ctaid: cx.ctaid,
        steps: cx.steps,
        depth: cx.depth + 1,
        cancel: cx.cancel,
        arrivals: cx.arrivals,
        barrier_news: false,
        counted_barriers: cx.counted_barriers,
    };
    let r = (|| -> R<()> {
        // A called function may loop for ever: ask the kill switch every time slice here too.
        let mut n = 0u32;
        while step(&mut ccx, &mut child)? {
            n += 1;
            if n == SLICE {
                n = 0;
            }
            if n == 0 && (ccx.cancel)() {
                return Err(ExecError::Stopped { kernel: ccx.k.name.clone(), steps: ccx.steps, why: "cancelled" });
            }
        }
        Ok(())
    })();
    cx.shared = std::mem::take(&mut ccx.shared);
    cx.steps = ccx.steps;
    cx.arrivals = ccx.arrivals;
    r?;
    if child.at_barrier != 0 {
        return Err(unsupported(cx, i, format!("a barrier inside the called function {}", k.name)));
    }
    let rs = ret_bytes(k);
    for l in lanes(run) {
        for (rp, &o) in k.returns.iter().zip(ro) {
            if !copy_lane(&child.ret, rs, rp.offset, &mut w.call, cs, o, l, rp.size) {
                return Err(illegal(cx, i, u64::from(o), rp.size as usize));
            }
        }
    }
    Ok(())
}

/// `len` bytes at generic address `a` as `lane` sees it.
fn read_generic(cx: &Ctx<'_, '_>, w: &Warp, i: &Inst, lane: usize, a: u64, out: &mut [u8]) -> R<()> {
    let (space, at) = if (SHARED_WINDOW..SHARED_WINDOW + WINDOW_SPAN).contains(&a) {
        (Where::Shared, a - SHARED_WINDOW)
    } else if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW_SPAN).contains(&a) {
        (Where::Local, a - LOCAL_WINDOW)
    } else {
        (Where::Global, a)
    };
    load(cx, w, i, space, at, lane, out)
}

/// The longest format string and the most output of one `printf`.
const PRINTF_MAX: usize = 4096;

fn printf(cx: &mut Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32, ro: &[u32], ao: &[u32]) -> R<()> {
    let [fmt_at, args_at] = ao[..] else { return Err(unsupported(cx, i, "vprintf without its two arguments")) };
    let cs = cx.k.call_param_bytes;
    for l in lanes(run) {
        let word = |o: u32| -> R<u64> {
            let r = lane_slice(&w.call, cs, l, u64::from(o), 8).ok_or_else(|| illegal(cx, i, u64::from(o), 8))?;
            Ok(u64::from_le_bytes(w.call[r].try_into().unwrap_or([0; 8])))
        };
        let (fmt_addr, args) = (word(fmt_at)?, word(args_at)?);
        let mut fmt = Vec::new();
        loop {
            let mut b = [0u8; 1];
            read_generic(cx, w, i, l, fmt_addr + fmt.len() as u64, &mut b)?;
            if b[0] == 0 || fmt.len() >= PRINTF_MAX {
                break;
            }
            fmt.push(b[0]);
        }
        let mut at = args;
        let mut next = |size: usize, cx: &Ctx<'_, '_>, w: &Warp| -> R<u64> {
            at = at.div_ceil(size as u64) * size as u64;
            let mut b = [0u8; 8];
            read_generic(cx, w, i, l, at, &mut b[..size])?;
            at += size as u64;
            Ok(u64::from_le_bytes(b))
        };
        let text = format_printf(&fmt, &mut |size| next(size, cx, w), &mut |addr| {
            let mut s = Vec::new();
            while s.len() < PRINTF_MAX {
                let mut b = [0u8; 1];
                if read_generic(cx, w, i, l, addr + s.len() as u64, &mut b).is_err() || b[0] == 0 {
                    break;
                }
                s.push(b[0]);
            }
            String::from_utf8_lossy(&s).into_owned()
        })?;
        (cx.l.printf)(&text);
        if let Some(&r) = ro.first() {
            let n = (text.len() as u32).to_le_bytes();
            if let Some(rg) = lane_slice(&w.call, cs, l, u64::from(r), 4) {
                w.call[rg].copy_from_slice(&n);
            }
        }
    }
    Ok(())
}

/// C's `printf` over vprintf's argument buffer: `%d %i %u %x %X %o %c %s %p %f %F %e %E %g %G %%`
/// with flags, width, precision and length (`hh h l ll z`). `arg(size)` reads the next argument
/// (4 or 8 bytes; floats are doubles), `string(addr)` a C string.
fn format_printf(fmt: &[u8], arg: &mut dyn FnMut(usize) -> R<u64>, string: &mut dyn FnMut(u64) -> String) -> R<String> {
    let mut out = String::new();
    let mut k = 0;
    while k < fmt.len() && out.len() < PRINTF_MAX {
        let c = fmt[k];
        k += 1;
        if c != b'%' {
            out.push(c as char);
            continue;
        }
        let (mut left, mut zero, mut plus, mut space, mut alt) = (false, false, false, false, false);
        while k < fmt.len() {
            match fmt[k] {
                b'-' => left = true,
                b'0' => zero = true,
                b'+' => plus = true,
                b' ' => space = true,
                b'#' => alt = true,
                _ => break,
            }
            k += 1;
        }
        let num = |k: &mut usize| -> Option<usize> {
            let s = *k;
            while *k < fmt.len() && fmt[*k].is_ascii_digit() {
                *k += 1;
            }
            std::str::from_utf8(&fmt[s..*k]).ok()?.parse().ok().map(|v: usize| v.min(512))
        };
        let width = num(&mut k).unwrap_or(0);
        let prec = if k < fmt.len() && fmt[k] == b'.' {
            k += 1;
            Some(num(&mut k).unwrap_or(0))
        } else {
            None
        };
        let mut long = 0;
        while k < fmt.len() && matches!(fmt[k], b'l' | b'h' | b'z' | b'j' | b't' | b'L') {
            if matches!(fmt[k], b'l' | b'z' | b'j' | b't') {
                long += 1;
            }
            k += 1;
        }
        let Some(&conv) = fmt.get(k) else { break };
        k += 1;
        let size = if long > 0 { 8 } else { 4 };
        let body = match conv {
            b'%' => "%".to_string(),
            b'd' | b'i' => {
                let v = arg(size)?;
                let v = if size == 4 { v as u32 as i32 as i64 } else { v as i64 };
                let sign = if v < 0 {
                    "-"
                } else if plus {
                    "+"
                } else if space {
                    " "
                } else {
                    ""
                };
                let digits = v.unsigned_abs().to_string();
                let digits = match prec {
                    Some(p) if digits.len() < p => format!("{}{digits}", "0".repeat(p - digits.len())),
                    _ => digits,
                };
                if zero && !left && prec.is_none() && sign.len() + digits.len() < width {
                    format!("{sign}{}{digits}", "0".repeat(width - sign.len() - digits.len()))
                } else {
                    format!("{sign}{digits}")
                }
            }
            b'u' | b'x' | b'X' | b'o' => {
                let v = arg(size)?;
                let v = if size == 4 { v & 0xffff_ffff } else { v };
                let s = match conv {
                    b'u' => v.to_string(),
                    b'x' => format!("{}{v:x}", if alt && v != 0 { "0x" } else { "" }),
                    b'X' => format!("{}{v:X}", if alt && v != 0 { "0X" } else { "" }),
                    _ => format!("{}{v:o}", if alt { "0" } else { "" }),
                };
                if zero && !left && s.len() < width {
                    format!("{}{s}", "0".repeat(width - s.len()))
                } else {
                    s
                }
            }
            b'c' => char::from(arg(4)? as u8).to_string(),
            b'p' => format!("0x{:x}", arg(8)?),
            b's' => {
                let s = string(arg(8)?);
                match prec {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                }
            }
            b'f' | b'F' | b'e' | b'E' | b'g' | b'G' => {
                let x = f64::from_bits(arg(8)?);
                let p = prec.unwrap_or(6);
                let s = match conv {
                    b'f' | b'F' => format!("{x:.p$}"),
                    b'e' | b'E' => c_exp(x, p, conv == b'E'),
                    _ => {
                        let p = p.max(1);
                        let e = if x == 0.0 { 0 } else { x.abs().log10().floor() as i32 };
                        let s = if e < -4 || e >= p as i32 {
                            c_exp(x, p - 1, conv == b'G')
                        } else {
                            format!("{x:.*}", (p as i32 - 1 - e).max(0) as usize)
                        };
                        if alt || !s.contains('.') {
                            s
                        } else if let Some((m, ex)) = s.split_once(['e', 'E']) {
                            format!("{}{}{ex}", m.trim_end_matches('0').trim_end_matches('.'), if conv == b'G' { "E" } else { "e" })
                        } else {
                            s.trim_end_matches('0').trim_end_matches('.').to_string()
                        }
                    }
                };
                if plus && x >= 0.0 {
                    format!("+{s}")
                } else {
                    s
                }
            }
            other => format!("%{}", other as char),
        };
        if body.len() < width {
            let pad = " ".repeat(width - body.len());
            if left {
                out.push_str(&body);
                out.push_str(&pad);
            } else {
                out.push_str(&pad);
                out.push_str(&body);
            }
        } else {
            out.push_str(&body);
        }
    }
    Ok(out)
}

/// `%e`: `d.ddde+XX` with at least two exponent digits, as C.
fn c_exp(x: f64, p: usize, upper: bool) -> String {
    let s = format!("{x:.p$e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let (sign, digits) = match e.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', e),
    };
    let e = format!("{}{sign}{digits:0>2}", if upper { 'E' } else { 'e' });
    format!("{m}{e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(f: &str, args: &[u64]) -> String {
        let mut it = args.iter().copied();
        format_printf(f.as_bytes(), &mut |_| Ok(it.next().unwrap_or(0)), &mut |_| "str".into()).unwrap()
    }

    #[test]
    fn the_warp_alu_computes_what_the_lane_by_lane_path_computes() {
        let ops = [
            "add.f32 %a, %b, %c",
            "sub.f32 %a, %b, %c",
            "mul.f32 %a, %b, 0f3F800001",
            "fma.rn.f32 %a, %b, %c, %d",
            "mad.rn.f32 %a, %b, %c, %d",
            "add.f64 %a, %b, %c",
            "sub.f64 %a, %b, 0d3FF0000000000001",
            "mul.f64 %a, %b, %c",
            "fma.rn.f64 %a, %b, %c, %d",
            "add.s32 %a, %b, %c",
            "add.u32 %a, %b, -7",
            "sub.s64 %a, %b, %c",
            "sub.u64 %a, %b, %c",
            "mul.lo.s32 %a, %b, %c",
            "mul.lo.u64 %a, %b, 12345",
            "mad.lo.s32 %a, %b, %c, %d",
            "mad.lo.u32 %a, %b, %c, %d",
            "mul.wide.s32 %a, %b, %c",
            "mul.wide.u32 %a, %b, 4",
            "mad.wide.s32 %a, %b, %c, %d",
            "mad.wide.u32 %a, %b, %c, %d",
            "and.b32 %a, %b, %c",
            "or.b64 %a, %b, %c",
            "xor.b32 %a, %b, 255",
            "shl.b32 %a, %b, %c",
            "shl.b64 %a, %b, 3",
            "shr.u32 %a, %b, %c",
            "shr.s32 %a, %b, %c",
            "shr.s64 %a, %b, %c",
            "shr.u64 %a, %b, 65",
            "shr.b32 %a, %b, %c",
        ];
        let body: String = ops.iter().map(|o| format!("{o};\n")).collect();
        let src = format!(".version 9.0\n.target sm_90\n.address_size 64\n.entry k()\n{{\n.reg .b64 %a, %b, %c, %d;\n{body}ret;\n}}\n");
        let m = crate::Module::parse(&src).unwrap();
        let k = m.lower(&m.functions[0]).unwrap();
        let mem = crate::mem::Allocations::default();
        let l = Launch {
            grid: [1; 3],
            block: [32, 1, 1],
            params: &[],
            dynamic_shared: 0,
            globals: &[],
            budget: 0,
            functions: &[],
            printf: &|_| {},
        };
        let cx = Ctx {
            k: &k,
            l: &l,
            mem: &mem,
            shared: Vec::new(),
            ctaid: [0; 3],
            steps: 0,
            depth: 0,
            cancel: &|| false,
            arrivals: [(0, 0); BARRIERS],
            barrier_news: false,
            counted_barriers: false,
        };
        // Values that find the edges: zero, signs, NaNs, infinities, subnormals, shifts past the width.
        let special = [
            0u64,
            1,
            31,
            32,
            33,
            63,
            64,
            u64::MAX,
            0x8000_0000,
            0x7fff_ffff,
            0xffff_ffff,
            0x8000_0000_0000_0000,
            f32::NAN.to_bits() as u64,
            f32::INFINITY.to_bits() as u64,
            f32::MIN_POSITIVE.to_bits() as u64 / 3,
            f64::NAN.to_bits(),
            (-0.0f64).to_bits(),
            1.5f64.to_bits(),
            (1e300f64).to_bits(),
            0x3f80_0001,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..64 {
            let mut w = Warp::new(&k, u32::MAX, 0);
            for v in w.regs.iter_mut() {
                let r = rnd();
                *v = match r % 4 {
                    0 => special[(r >> 8) as usize % special.len()],
                    1 => r >> 40,
                    2 => (r >> 3) as u32 as u64,
                    _ => r,
                };
            }
            let run = if round % 2 == 0 { u32::MAX } else { rnd() as u32 };
            for i in &k.insts[..ops.len()] {
                let t = last_type(&cx, i).unwrap();
                let d = dst(&cx, i, 0).unwrap();
                let mut fast = Warp::new(&k, u32::MAX, 0);
                fast.regs.clone_from(&w.regs);
                assert!(alu_warp(&cx, &mut fast, i, t, d, run), "line {}", i.line);
                let mut slow = Warp::new(&k, u32::MAX, 0);
                slow.regs.clone_from(&w.regs);
                alu_lanes(&cx, &mut slow, i, t, d, run).unwrap();
                assert_eq!(fast.regs, slow.regs, "line {} round {round}", i.line);
            }
        }
    }

    #[test]
    fn prmt_modes_follow_the_isa_table() {
        // {b, a} = bytes 7..0 = 0x77 0x66 ... 0x00 (byte n is 0xnn), so d's bytes name their sources.
        let (a, b) = (0x3322_1100, 0x7766_5544);
        let table: [(Word, [u32; 4]); 6] = [
            (Word::F4e, [0x3322_1100, 0x4433_2211, 0x5544_3322, 0x6655_4433]),
            (Word::B4e, [0x5566_7700, 0x6677_0011, 0x7700_1122, 0x0011_2233]),
            (Word::Rc8, [0x0000_0000, 0x1111_1111, 0x2222_2222, 0x3333_3333]),
            (Word::Ecl, [0x3322_1100, 0x3322_1111, 0x3322_2222, 0x3333_3333]),
            (Word::Ecr, [0x0000_0000, 0x1111_1100, 0x2222_1100, 0x3322_1100]),
            (Word::Rc16, [0x1100_1100, 0x3322_3322, 0x1100_1100, 0x3322_3322]),
        ];
        for (mode, rows) in table {
            for (sel, want) in rows.into_iter().enumerate() {
                // Only c[1:0] selects: the other bits of c are ignored.
                assert_eq!(prmt(a, b, sel as u32 | 0xfff0, Some(mode)), want, "{mode:?} {sel}");
            }
        }
        // Default mode: nibble k of c picks d's byte k; bit 3 replicates the byte's sign.
        assert_eq!(prmt(a, b, 0x7531, None), 0x7755_3311);
        assert_eq!(prmt(0x0000_80ff, 0, 0x4498, None), 0x0000_ffff);
        assert_eq!(prmt(0x0000_7f01, 0, 0x4409, None), 0x0000_0100);
    }

    #[test]
    fn printf_formats_as_c() {
        assert_eq!(fmt("a %d b %5d|%-4d|%03d", &[(-7i32) as u32 as u64, 42, 1, 5]), "a -7 b    42|1   |005");
        assert_eq!(fmt("%u %x %X %#x %lld", &[u32::MAX as u64, 255, 255, 16, (-3i64) as u64]), "4294967295 ff FF 0x10 -3");
        assert_eq!(
            fmt(
                "%f %.2f %e %g %g",
                &[1.5f64.to_bits(), 2.5678f64.to_bits(), 12345.678f64.to_bits(), 0.0001f64.to_bits(), 1e20f64.to_bits()]
            ),
            "1.500000 2.57 1.234568e+04 0.0001 1e+20"
        );
        assert_eq!(fmt("%s %c %% %p", &[0, b'z' as u64, 0x10]), "str z % 0x10");
    }
}
