//! The one place atomics, fences and locks come from (ARCHITECTURE rule 6).
//!
//! Under `--cfg vgpu_loom` every type here is loom's, so the models in `loom-tests/` explore the
//! real protocol code. Outside this module, clippy's `disallowed-types` (see `clippy.toml`) bans
//! `std::sync::atomic` types.
//!
//! Shared-memory atomics (`shm`) are always the standard ones: they are made from raw pointers into
//! a mapping another process writes, which loom cannot model. The protocol code reaches them through
//! [`crate::ring::RingMem`], which the loom models implement with loom atomics instead.
//!
//! # Weakening knobs
//! Each protocol's loom model must be shown to catch the bug it guards against. The code asks
//! [`ord`] for its memory orderings and [`keep`] whether to perform each re-check; outside loom both
//! are the identity and vanish at compile time. Under loom a model can turn a [`Knob`] on to weaken
//! exactly one ordering or drop exactly one re-check, and must then fail.

#![allow(clippy::disallowed_types)]

pub use std::sync::atomic::Ordering;

#[cfg(not(vgpu_loom))]
pub use plain::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(not(vgpu_loom))]
pub use std::sync::atomic::fence;
#[cfg(not(vgpu_loom))]
pub use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(vgpu_loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(vgpu_loom)]
pub use loom::sync::{Arc, Mutex, MutexGuard};

/// Thin `#[repr(transparent)]` wrappers over the standard atomics. They exist so that clippy's
/// `disallowed-types` can ban the standard types everywhere else: code outside this module names
/// atomics only through the shim.
pub mod plain {
    use std::sync::atomic::Ordering;

    macro_rules! atomic {
        ($name:ident, $std:ty, $t:ty) => {
            #[derive(Default)]
            #[repr(transparent)]
            pub struct $name($std);

            impl std::fmt::Debug for $name {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    self.0.fmt(f)
                }
            }

            impl $name {
                pub const fn new(v: $t) -> Self {
                    Self(<$std>::new(v))
                }
                /// Treat `ptr` as an atomic for the lifetime `'a`.
                ///
                /// # Safety
                /// As for the standard `from_ptr`: `ptr` is aligned, valid for reads and writes for
                /// `'a`, and only accessed atomically during `'a`.
                pub unsafe fn from_ptr<'a>(ptr: *mut $t) -> &'a Self {
                    // SAFETY: the caller upholds `from_ptr`'s contract; `Self` is
                    // `repr(transparent)` over the standard atomic, so the cast keeps layout.
                    unsafe { &*(<$std>::from_ptr(ptr) as *const $std as *const Self) }
                }
                #[inline(always)]
                pub fn load(&self, o: Ordering) -> $t {
                    self.0.load(o)
                }
                #[inline(always)]
                pub fn store(&self, v: $t, o: Ordering) {
                    self.0.store(v, o)
                }
                #[inline(always)]
                pub fn swap(&self, v: $t, o: Ordering) -> $t {
                    self.0.swap(v, o)
                }
                #[inline(always)]
                pub fn compare_exchange(&self, a: $t, b: $t, s: Ordering, f: Ordering) -> Result<$t, $t> {
                    self.0.compare_exchange(a, b, s, f)
                }
            }
        };
    }
    macro_rules! arith {
        ($name:ident, $t:ty) => {
            impl $name {
                #[inline(always)]
                pub fn fetch_add(&self, v: $t, o: Ordering) -> $t {
                    self.0.fetch_add(v, o)
                }
                #[inline(always)]
                pub fn fetch_sub(&self, v: $t, o: Ordering) -> $t {
                    self.0.fetch_sub(v, o)
                }
                #[inline(always)]
                pub fn fetch_or(&self, v: $t, o: Ordering) -> $t {
                    self.0.fetch_or(v, o)
                }
                #[inline(always)]
                pub fn fetch_max(&self, v: $t, o: Ordering) -> $t {
                    self.0.fetch_max(v, o)
                }
            }
        };
    }
    atomic!(AtomicU32, std::sync::atomic::AtomicU32, u32);
    atomic!(AtomicU64, std::sync::atomic::AtomicU64, u64);
    atomic!(AtomicUsize, std::sync::atomic::AtomicUsize, usize);
    atomic!(AtomicBool, std::sync::atomic::AtomicBool, bool);
    arith!(AtomicU32, u32);
    arith!(AtomicU64, u64);
    arith!(AtomicUsize, usize);
}

/// Atomics placed in shared memory, always the real ones (loom cannot model another process).
pub mod shm {
    pub use super::plain::{AtomicU32, AtomicU64};
}

/// Process-local atomics that no protocol depends on (statistics counters), always the real ones.
pub mod stat {
    pub use super::plain::{AtomicU64, AtomicUsize};
}

/// One weakening of one protocol. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Knob {
    /// Ring: the producer publishes its tail with `Relaxed` instead of `Release`.
    RingPublishRelaxed = 1 << 0,
    /// Ring: the consumer loads the producer's tail with `Relaxed` instead of `Acquire`.
    RingConsumeRelaxed = 1 << 1,
    /// Ring: the consumer does not re-check the ring after arming its wake-up flag.
    ArmNoRecheck = 1 << 2,
    /// Ring: the `SeqCst` fences of the kick / arm handshakes are left out.
    HandshakeNoFence = 1 << 3,
    /// Slots: the completer publishes DONE with `Relaxed` instead of `Release`.
    SlotPublishRelaxed = 1 << 4,
    /// Slots: the waiter does not re-check the slot after registering its waker.
    WaiterNoRecheck = 1 << 5,
    /// Slots: acquiring a slot does not check the previous occupant's generation.
    SlotNoGeneration = 1 << 6,
    /// Slots: a releaser does not wake threads waiting for a free slot.
    ReleaseNoWake = 1 << 7,
    /// Slots: closing (link down) and confirming an acquired slot skip their `SeqCst` fences.
    CloseNoFence = 1 << 8,
}

#[cfg(vgpu_loom)]
static KNOBS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Turn knobs on (loom builds only). Models run one at a time (`--test-threads=1`).
#[cfg(vgpu_loom)]
pub fn set_knobs(knobs: &[Knob]) {
    let bits = knobs.iter().fold(0u32, |a, k| a | *k as u32);
    KNOBS.store(bits, std::sync::atomic::Ordering::SeqCst);
}

#[inline(always)]
fn knob_on(_k: Knob) -> bool {
    #[cfg(vgpu_loom)]
    {
        KNOBS.load(std::sync::atomic::Ordering::SeqCst) & _k as u32 != 0
    }
    #[cfg(not(vgpu_loom))]
    {
        false
    }
}

/// The ordering to use: `strong`, or `Relaxed` when `knob` is on in a loom model.
#[inline(always)]
pub fn ord(strong: Ordering, knob: Knob) -> Ordering {
    if knob_on(knob) {
        Ordering::Relaxed
    } else {
        strong
    }
}

/// Whether to perform a re-check / fence / wake guarded by `knob`: always, unless a loom model
/// turned the knob on.
#[inline(always)]
pub fn keep(knob: Knob) -> bool {
    !knob_on(knob)
}

/// `fence(SeqCst)` for the kick / arm handshakes (dropped under `Knob::HandshakeNoFence`).
#[inline(always)]
pub fn handshake_fence() {
    if keep(Knob::HandshakeNoFence) {
        fence(Ordering::SeqCst);
    }
}

/// Lock a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before any operation that could panic.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(not(vgpu_loom))]
    {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
    #[cfg(vgpu_loom)]
    {
        m.lock().unwrap()
    }
}

/// Try to lock a mutex without blocking.
pub fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    #[cfg(not(vgpu_loom))]
    {
        match m.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
    #[cfg(vgpu_loom)]
    {
        m.try_lock().ok()
    }
}
