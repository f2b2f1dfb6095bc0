//! Ranked locks: the lock order of the guest context (written down in [`crate::context`]),
//! checked.
//!
//! Every mutex and read-write lock of this crate is an [`OrderedMutex`] or [`OrderedRwLock`]
//! with a rank (the constants below; the type aliases name each lock's rank once). A thread may
//! take a lock only while every lock it already holds has a *lower* rank. In debug builds (every
//! `cargo test`, so every unit and integration test exercises the order) each thread keeps the
//! set of ranks it holds in a thread-local bit set, and taking a lock whose rank is not above all
//! of them panics, naming both ranks, before it waits: an inversion is reported the first time
//! its path runs, even when no second thread is there to deadlock with it. Taking a second lock
//! of the *same* rank (the same lock again, or another instance of it: two contexts' tables)
//! panics too. [`may_block`] asserts that a thread about to wait for the host holds no lock
//! other than the two that are documented to be held across waits.
//!
//! Release builds compile to plain `std::sync` locks: no thread-local, no extra atomic.
//!
//! Poisoning is ignored, as before: a panic while holding a table leaves the table usable (each
//! critical section keeps its table consistent at every step that can panic).

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Ranks, in the order they may be taken (lowest first). See [`crate::context`] for what each
/// lock guards and why it sits where it does.
pub(crate) mod rank {
    /// `KernelState::loading`: serialises first-use loading (module upload, `FuncGet`); held
    /// across round trips.
    pub const LOADING: u8 = 1;
    /// `Context::open_h2d`: the shared open staging chunk; held across staging waits and
    /// submissions.
    pub const STAGING: u8 = 2;
    /// The process-wide kernel registry (`kernel::REGISTRY`).
    pub const REGISTRY: u8 = 3;
    /// `KernelState::tables`: modules, functions and symbols of one context.
    pub const KERNELS: u8 = 4;
    /// `Captures::table`: the capture sequences of one context.
    pub const CAPTURES: u8 = 5;
    /// `Context::handles`: streams, events, the legacy stream's query event.
    pub const HANDLES: u8 = 6;
    /// `Context::mem`: device allocations, pinned heap, registered ranges.
    pub const MEMORY: u8 = 7;
    /// `Func::state`: one function's attributes and occupancy cache.
    pub const FUNC: u8 = 8;
    /// The highest rank a thread may hold while it waits for the host ([`super::may_block`]).
    pub const MAY_BLOCK_BELOW: u8 = STAGING + 1;
}

#[cfg(debug_assertions)]
mod held {
    use std::cell::Cell;

    thread_local! {
        /// Bit `r` set: this thread holds the lock of rank `r`.
        static HELD: Cell<u32> = const { Cell::new(0) };
    }

    /// Before waiting for a lock of `rank`: every held rank must be lower.
    pub fn acquire(rank: u8, what: &str) {
        // `try_with`: a thread-local destructor (a per-thread stream's) may take a lock late.
        let _ = HELD.try_with(|h| {
            let held = h.get();
            let bit = 1u32 << rank;
            if held & !(bit - 1) != 0 {
                let top = 31 - held.leading_zeros();
                panic!("lock order violated: taking {what} (rank {rank}) while holding rank {top} (held ranks {held:#b}); see vgpu_streams::context");
            }
            h.set(held | bit);
        });
    }

    pub fn release(rank: u8) {
        let _ = HELD.try_with(|h| h.set(h.get() & !(1u32 << rank)));
    }

    pub fn may_block(what: &str) {
        let _ = HELD.try_with(|h| {
            let held = h.get();
            let allowed = (1u32 << super::rank::MAY_BLOCK_BELOW) - 1;
            assert!(
                held & !allowed == 0,
                "{what} waits for the host while holding a lock of rank {} (held ranks {held:#b}); see vgpu_streams::context",
                31 - held.leading_zeros()
            );
        });
    }
}

/// Assert (debug builds) that the calling thread holds no lock that must not be held across a
/// wait for the host: only [`rank::LOADING`] and [`rank::STAGING`] may be.
#[inline]
pub(crate) fn may_block(_what: &str) {
    #[cfg(debug_assertions)]
    held::may_block(_what);
}

/// A mutex of rank `RANK` (see the module docs).
pub(crate) struct OrderedMutex<T, const RANK: u8> {
    inner: Mutex<T>,
}

/// The guard of an [`OrderedMutex`]: unlocks (and forgets the rank) on drop.
pub(crate) struct OrderedGuard<'a, T, const RANK: u8> {
    guard: MutexGuard<'a, T>,
}

impl<T, const RANK: u8> OrderedMutex<T, RANK> {
    pub const fn new(v: T) -> Self {
        OrderedMutex { inner: Mutex::new(v) }
    }

    /// Lock, ignoring poisoning. Debug builds: panics if the thread holds a lock of this rank or
    /// a higher one.
    #[inline]
    pub fn lock(&self) -> OrderedGuard<'_, T, RANK> {
        #[cfg(debug_assertions)]
        held::acquire(RANK, std::any::type_name::<T>());
        OrderedGuard { guard: self.inner.lock().unwrap_or_else(|e| e.into_inner()) }
    }
}

impl<T: Default, const RANK: u8> Default for OrderedMutex<T, RANK> {
    fn default() -> Self {
        OrderedMutex::new(T::default())
    }
}

impl<T, const RANK: u8> std::fmt::Debug for OrderedMutex<T, RANK> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedMutex").field("rank", &RANK).finish_non_exhaustive()
    }
}

impl<T, const RANK: u8> std::ops::Deref for OrderedGuard<'_, T, RANK> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, const RANK: u8> std::ops::DerefMut for OrderedGuard<'_, T, RANK> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T, const RANK: u8> Drop for OrderedGuard<'_, T, RANK> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::release(RANK);
    }
}

/// A read-write lock of rank `RANK`: readers and writers both count as holding the rank.
pub(crate) struct OrderedRwLock<T, const RANK: u8> {
    inner: RwLock<T>,
}

/// A read guard of an [`OrderedRwLock`].
pub(crate) struct OrderedReadGuard<'a, T, const RANK: u8> {
    guard: RwLockReadGuard<'a, T>,
}

/// A write guard of an [`OrderedRwLock`].
pub(crate) struct OrderedWriteGuard<'a, T, const RANK: u8> {
    guard: RwLockWriteGuard<'a, T>,
}

impl<T, const RANK: u8> OrderedRwLock<T, RANK> {
    pub const fn new(v: T) -> Self {
        OrderedRwLock { inner: RwLock::new(v) }
    }

    #[inline]
    pub fn read(&self) -> OrderedReadGuard<'_, T, RANK> {
        #[cfg(debug_assertions)]
        held::acquire(RANK, std::any::type_name::<T>());
        OrderedReadGuard { guard: self.inner.read().unwrap_or_else(|e| e.into_inner()) }
    }

    #[inline]
    pub fn write(&self) -> OrderedWriteGuard<'_, T, RANK> {
        #[cfg(debug_assertions)]
        held::acquire(RANK, std::any::type_name::<T>());
        OrderedWriteGuard { guard: self.inner.write().unwrap_or_else(|e| e.into_inner()) }
    }
}

impl<T, const RANK: u8> std::ops::Deref for OrderedReadGuard<'_, T, RANK> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, const RANK: u8> Drop for OrderedReadGuard<'_, T, RANK> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::release(RANK);
    }
}

impl<T, const RANK: u8> std::ops::Deref for OrderedWriteGuard<'_, T, RANK> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, const RANK: u8> std::ops::DerefMut for OrderedWriteGuard<'_, T, RANK> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T, const RANK: u8> Drop for OrderedWriteGuard<'_, T, RANK> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::release(RANK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increasing_ranks_and_any_release_order_are_fine() {
        let a: OrderedMutex<u32, { rank::STAGING }> = OrderedMutex::new(1);
        let b: OrderedMutex<u32, { rank::MEMORY }> = OrderedMutex::new(2);
        let r: OrderedRwLock<u32, { rank::REGISTRY }> = OrderedRwLock::new(3);
        let ga = a.lock();
        let gr = r.read();
        let gb = b.lock();
        // Released out of order: the held set forgets exactly the released rank.
        drop(ga);
        drop(gb);
        drop(gr);
        // The same locks again, in order, after everything was released.
        let _ga = a.lock();
        let gw = r.write();
        let gb = b.lock();
        drop((gb, gw));
        may_block("a test holding STAGING");
    }

    #[test]
    fn ranks_are_per_thread() {
        let m: OrderedMutex<u32, { rank::LOADING }> = OrderedMutex::new(0);
        let _high: OrderedMutex<u32, { rank::FUNC }> = OrderedMutex::new(0);
        let _g = _high.lock();
        // Another thread holds nothing: it may take the lowest rank while this one holds FUNC.
        std::thread::scope(|s| {
            s.spawn(|| *m.lock() += 1);
        });
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violated")]
    fn the_same_rank_twice_panics() {
        let a: OrderedMutex<u32, { rank::HANDLES }> = OrderedMutex::new(0);
        let b: OrderedMutex<u32, { rank::HANDLES }> = OrderedMutex::new(0);
        let _a = a.lock();
        let _b = b.lock();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "waits for the host")]
    fn waiting_with_a_table_locked_panics() {
        let m: OrderedMutex<u32, { rank::HANDLES }> = OrderedMutex::new(0);
        let _g = m.lock();
        may_block("a test");
    }
}
