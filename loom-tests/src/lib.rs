//! Shared pieces of the loom models of vgpu-transport's lock-free protocols.
//!
//! Everything here exists only under `--cfg vgpu_loom` (see `README.md`); without it this crate is
//! empty and its test files compile to nothing, so a plain `cargo test --workspace` skips them.
//!
//! - [`model`]: run a model under `loom::model::Builder` with a preemption bound set in code.
//! - [`knobs`]: reset / set the transport's weakening knobs at the start of every test.
//! - [`LoomRing`]: a [`RingMem`](vgpu_transport::ring::RingMem) over loom atomics and
//!   `loom::cell::UnsafeCell` entries, so the real `Producer` / `Consumer` code runs under loom and
//!   loom sees every entry access (data races on entries are reported).
//! - [`Hint`]: a doorbell / interrupt: a hint to look at the ring, never a count (rule 4).
//! - [`block_on_poll`]: drive a `poll_*` function with a waker that wakes a sleeping loom thread.
//!
//! Shared state is held in `std::sync::Arc`, not loom's: loom's `Arc` models reference counts
//! (which no protocol here relies on), and dropping one while a thread unwinds from a detected
//! deadlock panics again inside loom and aborts the test process (so `#[should_panic]` could not
//! observe the deadlock).

#![cfg(vgpu_loom)]

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU32;
use loom::sync::{Condvar, Mutex};
use vgpu_transport::notify::Notify;
use vgpu_transport::ring::{Consumer, Producer, RingMem};
use vgpu_transport::sync::{set_knobs, Knob, Ordering};

/// Run `f` under loom, exploring every interleaving with at most `preemptions` preemptions.
///
/// The bound is set here, in code, so each model's run time is fixed and each weakened variant is
/// known to be caught within it. `LOOM_MAX_PREEMPTIONS`, when set, overrides it (for deeper local
/// runs); every weakened variant needs a bound of at least 2 to be caught.
pub fn model<F>(preemptions: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    // Counts explored executions (printed with `--nocapture`); a std mutex, outside the model.
    let runs = Arc::new(std::sync::Mutex::new(0u64));
    let counter = runs.clone();
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(preemptions);
    }
    let bound = b.preemption_bound;
    b.check(move || {
        *counter.lock().unwrap() += 1;
        f();
    });
    eprintln!("loom: {} executions explored (preemption bound {bound:?})", runs.lock().unwrap());
}

/// Turn exactly `on` knobs on (none: the real protocol). Every test calls this first: the knobs
/// are a process-wide global, which is why the models run with `--test-threads=1`.
pub fn knobs(on: &[Knob]) {
    set_knobs(on);
}

/// A ring of `depth` entries in loom-modelled memory.
///
/// Producer and consumer each hold a clone (a handle to the same cells), exactly as the two sides
/// of a real ring each map the same region.
pub struct LoomRing<E> {
    cells: Arc<Cells<E>>,
}

struct Cells<E> {
    head: AtomicU32,
    tail: AtomicU32,
    flag: AtomicU32,
    entries: Box<[UnsafeCell<E>]>,
}

// SAFETY: the entries are only reached through `UnsafeCell::with` / `with_mut`, which loom checks:
// any access not ordered by the ring protocol is reported as a data race (that is the point of the
// model). The atomics are `Sync` on their own.
unsafe impl<E: Send> Sync for Cells<E> {}

impl<E: Copy + Default> LoomRing<E> {
    /// A ring of `depth` (a power of two) default entries, both indices at `start` (to model
    /// counters that wrap), flag clear.
    pub fn new(depth: u32, start: u32) -> Self {
        assert!(depth.is_power_of_two());
        let entries = (0..depth).map(|_| UnsafeCell::new(E::default())).collect();
        LoomRing { cells: Arc::new(Cells { head: AtomicU32::new(start), tail: AtomicU32::new(start), flag: AtomicU32::new(0), entries }) }
    }

    /// The producer and consumer halves over one new ring.
    pub fn split(depth: u32, start: u32) -> (Producer<Self>, Consumer<Self>) {
        let r = LoomRing::new(depth, start);
        let c = Consumer::new(r.clone());
        (Producer::new(r), c)
    }
}

impl<E> Clone for LoomRing<E> {
    fn clone(&self) -> Self {
        LoomRing { cells: self.cells.clone() }
    }
}

impl<E: Copy> RingMem for LoomRing<E> {
    type Entry = E;
    fn depth(&self) -> u32 {
        self.cells.entries.len() as u32
    }
    fn load_head(&self, o: Ordering) -> u32 {
        self.cells.head.load(o)
    }
    fn store_head(&self, v: u32, o: Ordering) {
        self.cells.head.store(v, o)
    }
    fn load_tail(&self, o: Ordering) -> u32 {
        self.cells.tail.load(o)
    }
    fn store_tail(&self, v: u32, o: Ordering) {
        self.cells.tail.store(v, o)
    }
    fn load_flag(&self, o: Ordering) -> u32 {
        self.cells.flag.load(o)
    }
    fn store_flag(&self, v: u32, o: Ordering) {
        self.cells.flag.store(v, o)
    }
    fn read_entry(&self, slot: u32) -> E {
        // SAFETY: `slot < depth` (the ring masks it), so the pointer is to a live cell; loom's
        // `with` checks that no write to this cell races with the read.
        self.cells.entries[slot as usize].with(|p| unsafe { *p })
    }
    fn write_entry(&self, slot: u32, e: E) {
        // SAFETY: as for `read_entry`; loom's `with_mut` checks that the write races with no other
        // access to this cell.
        self.cells.entries[slot as usize].with_mut(|p| unsafe { *p = e })
    }
}

/// A doorbell or interrupt: "look at the ring". Notifications merge (a flag, not a counter), as
/// with an eventfd read to zero or a merged ivshmem interrupt.
#[derive(Default)]
pub struct Hint {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Hint {
    pub fn new() -> Self {
        Hint::default()
    }

    /// Block until a notification is pending, and consume it (and any merged with it). A model
    /// whose receiver sleeps here with nobody left to notify is reported by loom as a deadlock.
    #[track_caller]
    pub fn wait(&self) {
        let mut p = self.pending.lock().unwrap();
        while !*p {
            p = self.cv.wait(p).unwrap();
        }
        *p = false;
    }
}

impl Notify for Hint {
    fn notify(&self) {
        *self.pending.lock().unwrap() = true;
        self.cv.notify_one();
    }
}

/// A waker that notifies a [`Hint`] owned by one [`block_on_poll`] call.
///
/// Not `loom::thread::Thread::unpark`: in loom an unpark also makes a thread runnable that is
/// blocked in `join`, `recv` or a condvar (loom then fails an internal assertion), and a waker
/// left behind in a slot can legitimately fire after its poll returned. A per-call hint keeps a
/// late wake-up harmless, as an unpark token is for a real thread.
struct HintWaker(Arc<Hint>);

impl Wake for HintWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify();
    }
}

/// Poll `poll` with a waker that notifies this call's [`Hint`], sleeping on the hint between
/// polls until it is ready (what the client does with `thread::park`). A wake-up that is lost
/// leaves this thread asleep forever: loom reports a deadlock.
#[track_caller]
pub fn block_on_poll<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    let hint = Arc::new(Hint::new());
    let waker = Waker::from(Arc::new(HintWaker(hint.clone())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = poll(&mut cx) {
            return v;
        }
        hint.wait();
    }
}
