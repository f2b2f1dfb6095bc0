//! In-flight slots keyed by sequence number.
//!
//! Every command carries a `u64` sequence number; its slot is `seq & (depth - 1)`. A slot's state
//! word holds the sequence number of its current (or last) occupant and three flags, so a
//! completion for any other generation is detected as stale instead of answering the wrong call.
//!
//! ```text
//! state = seq << 3 | DETACHED | DONE | BUSY
//! free:        (last_seq << 3)          acquired by seq = last_seq + depth only
//! in flight:   (seq << 3) | BUSY
//! completed:   (seq << 3) | BUSY | DONE  results readable; the waiter releases
//! detached:    ... | DETACHED            nobody waits; whoever sets the second of
//!                                        DONE/DETACHED releases the slot
//! ```
//!
//! # Invariants
//! - Sequence numbers are handed out in order, so slot reuse is in order: seq `s + depth` cannot
//!   take the slot before seq `s` has released it (back-pressure, never a drop).
//! - Exactly one completer runs at a time (the holder of the client's completion-ring lock); it
//!   writes the results, then publishes DONE with Release. Waiters load the state with Acquire.
//! - A waiter registers its waker under the slot's lock, then re-checks DONE; the completer sets
//!   DONE, then takes the waker under the same lock. One of the two always sees the other.
//! - A releaser publishes the free state, `fence(SeqCst)`, then checks for threads waiting for a
//!   slot; a waiter counts itself in, `fence(SeqCst)`, then re-checks the slot. Between the two
//!   fences one side sees the other's store, so no waiter sleeps through a release.

use std::task::{Context, Poll, Waker};

use crate::sync::{fence, keep, lock, ord, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Knob, Mutex, Ordering};

const BUSY: u64 = 1;
const DONE: u64 = 2;
const DETACHED: u64 = 4;
const FLAGS: u64 = 7;

/// What a completed slot held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: u32,
    pub result: [u64; 2],
}

/// A completion arrived for a sequence number that is not in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("completion for seq {seq} does not match slot state {state:#x} (stale or foreign)")]
pub struct Stale {
    pub seq: u64,
    pub state: u64,
}

/// What `complete` did with the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// A waiter (or a later poll) will take it.
    ToWaiter,
    /// Nobody waits (fire-and-forget); the slot is already released. The outcome is returned so
    /// the caller can record a deferred error.
    Detached(Outcome),
}

struct Slot {
    state: AtomicU64,
    status: AtomicU32,
    r0: AtomicU64,
    r1: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

/// The slot table of one session.
pub struct Slots {
    /// Set once the link is down; see [`Slots::close`].
    closed: AtomicBool,
    depth: u64,
    next_seq: AtomicU64,
    slots: Box<[Slot]>,
    free_waiting: AtomicUsize,
    free_waiters: Mutex<Vec<Waker>>,
}

impl Slots {
    /// `depth` must be a power of two.
    pub fn new(depth: u32) -> Slots {
        assert!(depth.is_power_of_two());
        let depth = depth as u64;
        let slots = (0..depth)
            .map(|i| Slot {
                // "last occupant was seq i", so the first occupant is seq i + depth.
                state: AtomicU64::new(i << 3),
                status: AtomicU32::new(0),
                r0: AtomicU64::new(0),
                r1: AtomicU64::new(0),
                waker: Mutex::new(None),
            })
            .collect();
        Slots {
            closed: AtomicBool::new(false),
            depth,
            next_seq: AtomicU64::new(depth),
            slots,
            free_waiting: AtomicUsize::new(0),
            free_waiters: Mutex::new(Vec::new()),
        }
    }

    pub fn depth(&self) -> u64 {
        self.depth
    }

    fn slot(&self, seq: u64) -> &Slot {
        &self.slots[(seq & (self.depth - 1)) as usize]
    }

    /// Hand out the next sequence number. The caller must then acquire its slot.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Take the slot for `seq` if its previous occupant (`seq - depth`) has released it.
    pub fn try_acquire(&self, seq: u64) -> bool {
        let s = self.slot(seq);
        let expected = seq.wrapping_sub(self.depth) << 3;
        s.state.compare_exchange(expected, (seq << 3) | BUSY, Ordering::SeqCst, Ordering::Relaxed).is_ok()
    }

    /// Acquire the slot for `seq`, registering `cx`'s waker if it is still busy.
    pub fn poll_acquire(&self, seq: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.try_acquire(seq) {
            return Poll::Ready(());
        }
        {
            let mut w = lock(&self.free_waiters);
            w.push(cx.waker().clone());
            self.free_waiting.fetch_add(1, Ordering::SeqCst);
        }
        // Pairs with the fence in `release` (rule 3): either this re-check sees the released
        // state, or the releaser sees `free_waiting > 0` and wakes us. SeqCst on the accesses alone
        // does not give this (the failed compare-exchange is a Relaxed load) and loom cannot check it.
        fence(Ordering::SeqCst);
        if self.try_acquire(seq) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Release the slot of `seq` (free, last occupant `seq`) and wake slot waiters.
    fn release(&self, seq: u64) {
        self.slot(seq).state.store(seq << 3, Ordering::SeqCst);
        // Pairs with the fence in `poll_acquire`: publish the free state, fence, then look for
        // waiters.
        fence(Ordering::SeqCst);
        if keep(Knob::ReleaseNoWake) && self.free_waiting.load(Ordering::SeqCst) > 0 {
            let ws = {
                let mut w = lock(&self.free_waiters);
                self.free_waiting.fetch_sub(w.len(), Ordering::SeqCst);
                std::mem::take(&mut *w)
            };
            for w in ws {
                w.wake();
            }
        }
    }

    /// Publish the outcome of `seq`. Only the single completer may call this.
    pub fn complete(&self, seq: u64, status: u32, result: [u64; 2]) -> Result<Delivered, Stale> {
        let s = self.slot(seq);
        let cur = s.state.load(Ordering::Acquire);
        let generation_ok = !keep(Knob::SlotNoGeneration) || cur >> 3 == seq;
        if !generation_ok || cur & BUSY == 0 || cur & DONE != 0 {
            return Err(Stale { seq, state: cur });
        }
        let seq = cur >> 3;
        s.status.store(status, Ordering::Relaxed);
        s.r0.store(result[0], Ordering::Relaxed);
        s.r1.store(result[1], Ordering::Relaxed);
        let prev = s.state.fetch_or(DONE, ord(Ordering::AcqRel, Knob::SlotPublishRelaxed));
        if prev & DETACHED != 0 {
            self.release(seq);
            return Ok(Delivered::Detached(Outcome { status, result }));
        }
        let w = lock(&s.waker).take();
        if let Some(w) = w {
            w.wake();
        }
        Ok(Delivered::ToWaiter)
    }

    /// Whether `seq` has completed (its outcome is waiting to be taken).
    pub fn is_done(&self, seq: u64) -> bool {
        self.slot(seq).state.load(Ordering::Acquire) == (seq << 3) | BUSY | DONE
    }

    /// Take the outcome of `seq` if it has completed, releasing the slot.
    pub fn try_take(&self, seq: u64) -> Option<Outcome> {
        let s = self.slot(seq);
        if s.state.load(Ordering::Acquire) != (seq << 3) | BUSY | DONE {
            return None;
        }
        let o = Outcome { status: s.status.load(Ordering::Relaxed), result: [s.r0.load(Ordering::Relaxed), s.r1.load(Ordering::Relaxed)] };
        self.release(seq);
        Some(o)
    }

    /// Wait for the outcome of `seq` without losing a wake-up.
    pub fn poll_result(&self, seq: u64, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Some(o) = self.try_take(seq) {
            return Poll::Ready(o);
        }
        {
            let mut w = lock(&self.slot(seq).waker);
            match &mut *w {
                Some(old) if old.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            }
        }
        if keep(Knob::WaiterNoRecheck) {
            if let Some(o) = self.try_take(seq) {
                return Poll::Ready(o);
            }
        }
        Poll::Pending
    }

    /// Give up waiting for `seq`. If it already completed, its outcome is returned (and the slot
    /// released); otherwise the completer releases the slot when the completion arrives.
    pub fn detach(&self, seq: u64) -> Option<Outcome> {
        let s = self.slot(seq);
        let prev = s.state.fetch_or(DETACHED, Ordering::AcqRel);
        debug_assert_eq!(prev >> 3, seq);
        if prev & DONE != 0 {
            let o =
                Outcome { status: s.status.load(Ordering::Relaxed), result: [s.r0.load(Ordering::Relaxed), s.r1.load(Ordering::Relaxed)] };
            self.release(seq);
            return Some(o);
        }
        None
    }

    /// Undo an acquire for a command that was never published (submission failed).
    pub fn abandon(&self, seq: u64) {
        self.release(seq);
    }

    /// Close the table (the link is down) and return the sequence numbers in flight, which the
    /// caller (the completer) must now fail.
    ///
    /// Handshake with [`confirm`](Self::confirm): close stores `closed`, fences, then scans; a
    /// submitter takes its slot, fences, then loads `closed`. Either the scan sees the busy slot
    /// or the submitter sees `closed`, so no call is published after the failure sweep and then
    /// waits forever.
    pub fn close(&self) -> Vec<u64> {
        self.closed.store(true, Ordering::SeqCst);
        if keep(Knob::CloseNoFence) {
            fence(Ordering::SeqCst);
        }
        self.in_flight()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// After acquiring the slot of `seq`, check that the table is still open. If it is closed,
    /// the slot is released again and `false` returned: the call must not be published.
    pub fn confirm(&self, seq: u64) -> bool {
        if keep(Knob::CloseNoFence) {
            fence(Ordering::SeqCst);
        }
        if self.closed.load(Ordering::SeqCst) {
            self.abandon(seq);
            return false;
        }
        true
    }

    /// Sequence numbers in flight (busy, not done). For failing them when the link dies; the
    /// caller must hold the completer role.
    pub fn in_flight(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter_map(|s| {
                let st = s.state.load(Ordering::Acquire);
                (st & FLAGS & (BUSY | DONE) == BUSY).then_some(st >> 3)
            })
            .collect()
    }

    /// Wake everyone waiting for a free slot (used when the link dies, so they see it).
    pub fn wake_all_acquirers(&self) {
        let ws = {
            let mut w = lock(&self.free_waiters);
            self.free_waiting.fetch_sub(w.len(), Ordering::SeqCst);
            std::mem::take(&mut *w)
        };
        for w in ws {
            w.wake();
        }
    }
}

#[cfg(all(test, not(vgpu_loom)))]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn generations_reject_stale_completions() {
        let s = Slots::new(2);
        let a = s.next_seq();
        assert!(s.try_acquire(a));
        let b = s.next_seq();
        let c = s.next_seq(); // same slot as a
        assert!(s.try_acquire(b));
        assert!(!s.try_acquire(c), "slot still held by a");
        assert_eq!(s.complete(a, 0, [1, 2]), Ok(Delivered::ToWaiter));
        assert!(s.complete(a, 0, [1, 2]).is_err(), "double completion");
        assert_eq!(s.try_take(a), Some(Outcome { status: 0, result: [1, 2] }));
        assert!(s.try_acquire(c));
        assert!(s.complete(a, 0, [9, 9]).is_err(), "stale generation");
        assert!(s.complete(c + 2, 0, [9, 9]).is_err(), "future generation");
        assert_eq!(s.complete(c, 5, [3, 4]), Ok(Delivered::ToWaiter));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(s.poll_result(c, &mut cx), Poll::Ready(Outcome { status: 5, result: [3, 4] }));
    }

    #[test]
    fn detach_releases_exactly_once() {
        let s = Slots::new(1);
        let a = s.next_seq();
        assert!(s.try_acquire(a));
        assert_eq!(s.detach(a), None);
        assert_eq!(s.complete(a, 7, [0, 0]), Ok(Delivered::Detached(Outcome { status: 7, result: [0, 0] })));
        let b = s.next_seq();
        assert!(s.try_acquire(b));
        assert_eq!(s.complete(b, 0, [1, 0]), Ok(Delivered::ToWaiter));
        assert_eq!(s.detach(b), Some(Outcome { status: 0, result: [1, 0] }));
        let c = s.next_seq();
        assert!(s.try_acquire(c));
        assert_eq!(s.in_flight(), vec![c]);
    }
}
