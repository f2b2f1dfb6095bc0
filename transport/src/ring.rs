//! Single-producer single-consumer rings over shared memory, and the two wake-up handshakes.
//!
//! The same code serves both rings: the submission ring (guest produces, host consumes; the
//! consumer's flag is "needs kick") and the completion ring (host produces, guest consumes; the
//! flag is "wants interrupt").
//!
//! # Invariants
//! - Counters run free and wrap naturally; an entry lives at `counter & (depth - 1)`.
//! - `0 <= tail - head <= depth` (wrapping). A peer that breaks this gets [`RingError::Corrupt`],
//!   never an out-of-range access.
//! - Producer: write the entry, then store the tail with Release (rule 1). Consumer: load the
//!   tail with Acquire, read the entry, then store the head with Release, so the producer (which
//!   loads the head with Acquire) never overwrites an entry still being read.
//! - Kick (producer): publish the tail, `fence(SeqCst)`, then read the consumer's flag; notify
//!   only if it is set (rule 3).
//! - Arm (consumer): set the flag, `fence(SeqCst)`, re-check the ring; sleep only if still empty.
//!   Between the two fences at least one side sees the other's store, so a wake-up is never lost.
//! - A notification is a hint, never a count (rule 4): the consumer always drains to empty.
//!
//! The memory is abstract ([`RingMem`]) so the loom models run this exact code over loom atomics.

use std::marker::PhantomData;
// The region is real shared memory that loom never models, so its handle is always std's `Arc`
// (as in client.rs and server.rs); `crate::sync::Arc` becomes loom's under `--cfg vgpu_loom`.
use std::sync::Arc;

use crate::region::Region;
use crate::sync::{handshake_fence, keep, ord, Knob, Ordering};

/// Errors of ring access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring full")]
    Full,
    #[error("ring indices corrupt: head {head}, tail {tail}, depth {depth}")]
    Corrupt { head: u32, tail: u32, depth: u32 },
}

/// The memory a ring lives in: two indices, the consumer's wake-up flag, and `depth` entries.
pub trait RingMem {
    type Entry: Copy;
    /// Number of entries; a power of two.
    fn depth(&self) -> u32;
    fn load_head(&self, o: Ordering) -> u32;
    fn store_head(&self, v: u32, o: Ordering);
    fn load_tail(&self, o: Ordering) -> u32;
    fn store_tail(&self, v: u32, o: Ordering);
    /// The consumer's "wake me" flag.
    fn load_flag(&self, o: Ordering) -> u32;
    fn store_flag(&self, v: u32, o: Ordering);
    /// Read entry `slot` (< depth) by value.
    fn read_entry(&self, slot: u32) -> Self::Entry;
    /// Write entry `slot` (< depth).
    fn write_entry(&self, slot: u32, e: Self::Entry);
}

/// The producing half. Not `Clone`: exactly one exists per ring.
pub struct Producer<M: RingMem> {
    mem: M,
    tail: u32,
    head_cache: u32,
    published: u32,
}

impl<M: RingMem> Producer<M> {
    /// Start producing at the ring's current tail.
    pub fn new(mem: M) -> Self {
        let tail = mem.load_tail(Ordering::Relaxed);
        let head_cache = mem.load_head(Ordering::Acquire);
        Producer { mem, tail, head_cache, published: tail }
    }

    /// Whether entries were pushed since the last publish.
    pub fn has_unpublished(&self) -> bool {
        self.published != self.tail
    }

    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Free entries, reloading the consumer's head.
    pub fn free(&mut self) -> Result<u32, RingError> {
        let head = self.mem.load_head(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        let depth = self.mem.depth();
        if used > depth {
            return Err(RingError::Corrupt { head, tail: self.tail, depth });
        }
        self.head_cache = head;
        Ok(depth - used)
    }

    /// Write one entry; it becomes visible at the next [`publish`](Self::publish).
    pub fn push(&mut self, e: M::Entry) -> Result<(), RingError> {
        let depth = self.mem.depth();
        if self.tail.wrapping_sub(self.head_cache) >= depth && self.free()? == 0 {
            return Err(RingError::Full);
        }
        self.mem.write_entry(self.tail & (depth - 1), e);
        self.tail = self.tail.wrapping_add(1);
        Ok(())
    }

    /// Make every pushed entry visible to the consumer (Release).
    pub fn publish(&mut self) {
        self.published = self.tail;
        self.mem.store_tail(self.tail, ord(Ordering::Release, Knob::RingPublishRelaxed));
    }

    /// Publish, then decide whether the consumer must be notified (the kick handshake).
    #[must_use = "notify the consumer when this returns true"]
    pub fn publish_and_check(&mut self) -> bool {
        self.publish_and_flag() != 0
    }

    /// Publish, then read the consumer's wake-up flag (the kick handshake): 0 means no
    /// notification is needed; otherwise the value the consumer armed with (which, on the
    /// completion ring, selects the interrupt vector).
    #[must_use = "notify the consumer when this returns non-zero"]
    pub fn publish_and_flag(&mut self) -> u32 {
        self.publish();
        handshake_fence();
        self.mem.load_flag(Ordering::Relaxed)
    }
}

/// The consuming half. Not `Clone`: exactly one exists per ring.
pub struct Consumer<M: RingMem> {
    mem: M,
    head: u32,
}

impl<M: RingMem> Consumer<M> {
    /// Start consuming at the ring's current head.
    pub fn new(mem: M) -> Self {
        let head = mem.load_head(Ordering::Relaxed);
        Consumer { mem, head }
    }

    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Entries published and not yet consumed.
    pub fn pending(&self) -> Result<u32, RingError> {
        let tail = self.mem.load_tail(ord(Ordering::Acquire, Knob::RingConsumeRelaxed));
        let n = tail.wrapping_sub(self.head);
        let depth = self.mem.depth();
        if n > depth {
            return Err(RingError::Corrupt { head: self.head, tail, depth });
        }
        Ok(n)
    }

    /// Take the next entry, if any.
    pub fn pop(&mut self) -> Result<Option<M::Entry>, RingError> {
        if self.pending()? == 0 {
            return Ok(None);
        }
        let e = self.mem.read_entry(self.head & (self.mem.depth() - 1));
        self.head = self.head.wrapping_add(1);
        self.mem.store_head(self.head, Ordering::Release);
        Ok(Some(e))
    }

    /// Arm the wake-up flag before sleeping, then re-check. Returns `Ok(true)` if the caller may
    /// sleep (the ring was still empty after arming); `Ok(false)` if work arrived, in which case
    /// the flag is already cleared again.
    pub fn arm(&self) -> Result<bool, RingError> {
        self.arm_with(1)
    }

    /// [`arm`](Self::arm) with a flag value other than 1 (non-zero). On the completion ring the
    /// value names the interrupt vector the host must raise: `vector + 1`.
    pub fn arm_with(&self, value: u32) -> Result<bool, RingError> {
        debug_assert!(value != 0);
        self.mem.store_flag(value, Ordering::Relaxed);
        handshake_fence();
        if keep(Knob::ArmNoRecheck) && self.pending()? > 0 {
            self.mem.store_flag(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// Clear the wake-up flag (after waking, or while actively polling).
    pub fn disarm(&self) {
        self.mem.store_flag(0, Ordering::Relaxed);
    }

    /// Whether the flag is currently armed.
    pub fn armed(&self) -> bool {
        self.mem.load_flag(Ordering::Relaxed) != 0
    }
}

/// A ring inside a [`Region`], at offsets given by the header layout.
///
/// The peer writes the entries, so an entry type must be valid for every bit pattern:
/// `E: bytemuck::Pod`. A type with invalid bit patterns is rejected at compile time:
///
/// ```compile_fail
/// // `bool` has invalid bit patterns (2..=255), so it is no ring entry.
/// fn entries_of(r: &vgpu_transport::ring::RegionRing<bool>) {}
/// ```
///
/// ```
/// // The wire entries are `Pod`.
/// fn entries_of(r: &vgpu_transport::ring::RegionRing<vgpu_transport::wire::Command>) {}
/// ```
pub struct RegionRing<E: bytemuck::Pod> {
    region: Arc<Region>,
    head_off: usize,
    tail_off: usize,
    flag_off: usize,
    entries_off: usize,
    depth: u32,
    _e: PhantomData<fn() -> E>,
}

impl<E: bytemuck::Pod> RegionRing<E> {
    /// # Panics
    /// If the offsets are outside the region (they come from this crate's validated layout).
    pub fn new(region: Arc<Region>, head_off: usize, tail_off: usize, flag_off: usize, entries_off: usize, depth: u32) -> Self {
        assert!(depth.is_power_of_two());
        let end = entries_off + depth as usize * std::mem::size_of::<E>();
        assert!(end <= region.len(), "ring entries outside the region");
        RegionRing { region, head_off, tail_off, flag_off, entries_off, depth, _e: PhantomData }
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }
}

impl<E: bytemuck::Pod> RingMem for RegionRing<E> {
    type Entry = E;
    fn depth(&self) -> u32 {
        self.depth
    }
    fn load_head(&self, o: Ordering) -> u32 {
        self.region.atomic_u32(self.head_off).load(o)
    }
    fn store_head(&self, v: u32, o: Ordering) {
        self.region.atomic_u32(self.head_off).store(v, o)
    }
    fn load_tail(&self, o: Ordering) -> u32 {
        self.region.atomic_u32(self.tail_off).load(o)
    }
    fn store_tail(&self, v: u32, o: Ordering) {
        self.region.atomic_u32(self.tail_off).store(v, o)
    }
    fn load_flag(&self, o: Ordering) -> u32 {
        self.region.atomic_u32(self.flag_off).load(o)
    }
    fn store_flag(&self, v: u32, o: Ordering) {
        self.region.atomic_u32(self.flag_off).store(v, o)
    }
    fn read_entry(&self, slot: u32) -> E {
        debug_assert!(slot < self.depth);
        self.region.read_pod(self.entries_off + slot as usize * std::mem::size_of::<E>())
    }
    fn write_entry(&self, slot: u32, e: E) {
        debug_assert!(slot < self.depth);
        self.region.write_pod(self.entries_off + slot as usize * std::mem::size_of::<E>(), e)
    }
}

/// The submission ring of a region.
pub fn submission_ring(region: &Arc<Region>) -> RegionRing<crate::wire::Command> {
    use crate::wire::hdr;
    let l = *region.layout();
    RegionRing::new(region.clone(), hdr::SQ_HEAD, hdr::SQ_TAIL, hdr::NEEDS_KICK, l.sq_off as usize, l.sq_depth)
}

/// The completion ring of a region.
pub fn completion_ring(region: &Arc<Region>) -> RegionRing<crate::wire::Completion> {
    use crate::wire::hdr;
    let l = *region.layout();
    RegionRing::new(region.clone(), hdr::CQ_HEAD, hdr::CQ_TAIL, hdr::WANTS_INTERRUPT, l.cq_off as usize, l.cq_depth)
}

#[cfg(all(test, not(vgpu_loom)))]
mod tests {
    use super::*;
    use crate::wire::{hdr, Command, Layout};

    fn region(depth: u32) -> Arc<Region> {
        let (r, _fd) = crate::region::create(Layout::new(depth, 4096).unwrap(), 1).unwrap();
        Arc::new(r)
    }

    #[test]
    fn wraps_around_and_reports_full() {
        let r = region(4);
        let mut p = Producer::new(submission_ring(&r));
        let mut c = Consumer::new(submission_ring(&r));
        for round in 0..10u64 {
            for i in 0..4 {
                p.push(Command { seq: round * 4 + i, ..Default::default() }).unwrap();
            }
            assert_eq!(p.push(Command::default()), Err(RingError::Full));
            p.publish();
            for i in 0..4 {
                assert_eq!(c.pop().unwrap().unwrap().seq, round * 4 + i);
            }
            assert_eq!(c.pop().unwrap(), None);
        }
    }

    #[test]
    fn wraps_across_u32_overflow() {
        let r = region(4);
        r.atomic_u32(hdr::SQ_HEAD).store(u32::MAX - 1, Ordering::Relaxed);
        r.atomic_u32(hdr::SQ_TAIL).store(u32::MAX - 1, Ordering::Relaxed);
        let mut p = Producer::new(submission_ring(&r));
        let mut c = Consumer::new(submission_ring(&r));
        for i in 0..20 {
            p.push(Command { seq: i, ..Default::default() }).unwrap();
            p.publish();
            assert_eq!(c.pop().unwrap().unwrap().seq, i);
        }
    }

    #[test]
    fn corrupt_tail_is_an_error_not_an_access() {
        let r = region(4);
        let c = Consumer::new(submission_ring(&r));
        r.atomic_u32(hdr::SQ_TAIL).store(5, Ordering::Relaxed);
        assert!(matches!(c.pending(), Err(RingError::Corrupt { .. })));
        r.atomic_u32(hdr::SQ_TAIL).store(u32::MAX, Ordering::Relaxed);
        assert!(matches!(c.pending(), Err(RingError::Corrupt { .. })));
    }

    #[test]
    fn arm_sees_work_published_before_it() {
        let r = region(4);
        let mut p = Producer::new(submission_ring(&r));
        let c = Consumer::new(submission_ring(&r));
        assert!(!p.publish_and_check());
        assert!(c.arm().unwrap());
        p.push(Command::default()).unwrap();
        assert!(p.publish_and_check(), "armed consumer must be kicked");
        assert!(!c.arm().unwrap(), "re-check after arming must see the entry");
        assert!(!c.armed());
    }
}
