//! Data paths: device memory, pinned memory carved from the data window, and copies.
//!
//! - **Pageable host → device**: the bytes are copied into staging chunks of the window and a
//!   `MemcpyHtoD` is fired per piece; each chunk goes back to the pool from the completion action
//!   of its last piece, so the guest fills chunk *k+1* while the host drains chunk *k*. An async
//!   copy returns once every byte is staged (what CUDA documents for pageable H2D). Small copies
//!   are packed into one open chunk across calls (and streams), so a burst of them costs no
//!   round trip; a caller that needs a whole chunk (D2H, `DeviceInfo`) closes it first.
//! - **Device → pageable host**: a `MemcpyDtoH` per piece into a staging chunk; its completion
//!   action (run by the reactor before the call counts as done) copies the bytes into the
//!   user's buffer and recycles the chunk. A later stream, event or device sync therefore sees the
//!   bytes, because its completion is delivered after the copy's.
//! - **Pinned memory** (`cudaMallocHost`, `cudaHostAlloc`) lies in the window part that staging
//!   does not use ([`vgpu_transport::window::Staging::rest`]), 256-byte aligned: copies from and to
//!   it name the window offset directly: zero-copy and truly asynchronous.
//! - **Registered memory** (`cudaHostRegister`) is recorded and otherwise treated as pageable:
//!   correct, just not zero-copy.

//!
//! This module holds the state (no I/O, no [`crate::Context`]): the pinned heap, the tables of
//! allocations and registrations, staging-chunk references. The copies themselves are methods
//! of the context (`context::copy`).

use std::collections::BTreeMap;
use std::sync::Arc;

use vgpu_transport::sync::{AtomicUsize, Ordering};
use vgpu_transport::window::Staging;

use crate::locks::{rank, OrderedMutex};

/// Alignment of pinned allocations (what `cudaMallocHost` guarantees is at least 256).
pub const PINNED_ALIGN: u64 = 256;

/// First-fit allocator over the pinned part of the window (window offsets).
#[derive(Debug)]
pub(crate) struct PinnedHeap {
    /// Free ranges: offset → length.
    free: BTreeMap<u64, u64>,
    /// Live allocations: offset → length (rounded up to the alignment).
    live: BTreeMap<u64, u64>,
}

impl PinnedHeap {
    pub fn new(off: u64, len: u64) -> PinnedHeap {
        let start = off.div_ceil(PINNED_ALIGN) * PINNED_ALIGN;
        let end = off + len;
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, (end - start) / PINNED_ALIGN * PINNED_ALIGN);
        }
        PinnedHeap { free, live: BTreeMap::new() }
    }

    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let size = size.max(1).checked_next_multiple_of(PINNED_ALIGN)?;
        let (&off, &len) = self.free.iter().find(|(_, &l)| l >= size)?;
        self.free.remove(&off);
        if len > size {
            self.free.insert(off + size, len - size);
        }
        self.live.insert(off, size);
        Some(off)
    }

    pub fn free(&mut self, off: u64) -> bool {
        let Some(len) = self.live.remove(&off) else { return false };
        let (mut start, mut l) = (off, len);
        if let Some((&p, &pl)) = self.free.range(..off).next_back() {
            if p + pl == off {
                self.free.remove(&p);
                start = p;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            l += nl;
        }
        self.free.insert(start, l);
        true
    }

    /// The live allocation that contains `[off, off+len)`.
    pub fn find(&self, off: u64, len: u64) -> Option<(u64, u64)> {
        let (&a, &al) = self.live.range(..=off).next_back()?;
        (off.checked_add(len)? <= a + al).then_some((a, al))
    }
}

/// `cudaMemoryType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum MemoryType {
    /// Host memory CUDA does not know (plain `malloc`, the stack, ...).
    Unregistered = 0,
    /// Pinned (`cudaMallocHost`, `cudaHostAlloc`) or registered (`cudaHostRegister`) host memory.
    Host = 1,
    /// Device memory from `cudaMalloc`.
    Device = 2,
    /// Managed memory (never returned: `cudaMallocManaged` is not supported).
    Managed = 3,
}

/// `cudaInvalidDeviceId`: the `device` CUDA reports for unregistered host memory.
pub const INVALID_DEVICE_ID: i32 = -2;

/// What `cudaPointerGetAttributes` reports (`struct cudaPointerAttributes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointerInfo {
    pub kind: MemoryType,
    /// 0 for device, pinned and registered memory; [`INVALID_DEVICE_ID`] for unregistered memory.
    pub device: i32,
    /// The device address of the memory (device pointers only; 0 otherwise: pinned memory has
    /// no device alias here).
    pub device_ptr: u64,
    /// The host address of the memory (0 for device pointers).
    pub host_ptr: u64,
}

/// One piece of a copy: a device address, a host address, a length.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seg {
    pub dev: u64,
    pub host: usize,
    pub len: usize,
}

/// Gives a staging chunk back when the last piece staged in it has completed (and the packer
/// is done with it).
pub(crate) struct ChunkRef {
    /// Window offset of the chunk.
    pub off: u64,
    left: AtomicUsize,
}

impl ChunkRef {
    /// A reference to the chunk at window offset `off`, held by the packer (one count).
    pub fn new(off: u64) -> Arc<ChunkRef> {
        Arc::new(ChunkRef { off, left: AtomicUsize::new(1) })
    }

    /// One more count, for a piece staged in the chunk: its completion action calls
    /// [`put`](Self::put) on the returned reference.
    pub fn hold(self: &Arc<Self>) -> Arc<ChunkRef> {
        self.left.fetch_add(1, Ordering::AcqRel);
        self.clone()
    }

    /// Drop one count; the last one gives the chunk back to `staging`.
    pub fn put(&self, staging: &Staging) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            staging.release(self.off);
        }
    }
}

/// The open staging chunk small pageable H2D copies (and launch parameters, symbol names) are
/// packed into, and the bytes used in it.
pub(crate) type OpenChunk = Option<(Arc<ChunkRef>, usize)>;

/// The lock of the open staging chunk ([`rank::STAGING`]).
pub(crate) type StagingLock = OrderedMutex<OpenChunk, { rank::STAGING }>;

/// The memory tables of one context, under one lock ([`rank::MEMORY`]): what a range check, a
/// pointer query or a registration looks at, together.
#[derive(Debug)]
pub(crate) struct MemTables {
    /// Live device allocations: base → length.
    pub allocs: BTreeMap<u64, u64>,
    /// Registered host ranges (`cudaHostRegister`): start address → length.
    pub registered: BTreeMap<usize, usize>,
    /// The pinned part of the window.
    pub pinned: PinnedHeap,
}

/// The lock of [`MemTables`].
pub(crate) type MemLock = OrderedMutex<MemTables, { rank::MEMORY }>;

impl MemTables {
    /// Empty tables over the pinned part `[off, off+len)` of the window.
    pub fn new(pinned_off: u64, pinned_len: u64) -> MemTables {
        MemTables { allocs: BTreeMap::new(), registered: BTreeMap::new(), pinned: PinnedHeap::new(pinned_off, pinned_len) }
    }

    /// The live allocation `(base, len)` that contains device address `p`.
    pub fn allocation_of(&self, p: u64) -> Option<(u64, u64)> {
        self.allocs.range(..=p).next_back().filter(|(&b, &l)| p < b + l.max(1)).map(|(&b, &l)| (b, l))
    }

    /// Whether host address `h` lies in a registered range.
    pub fn is_registered(&self, h: usize) -> bool {
        self.registered.range(..=h).next_back().is_some_and(|(&s, &l)| h < s + l)
    }

    /// Whether `[start, end)` overlaps a registered range.
    pub fn overlaps_registered(&self, start: usize, end: usize) -> bool {
        self.registered.range(..end).next_back().is_some_and(|(&s, &l)| s + l > start)
    }
}

impl Default for MemTables {
    fn default() -> MemTables {
        MemTables::new(0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_heap_aligns_coalesces_and_finds() {
        let mut h = PinnedHeap::new(100, 4096);
        let a = h.alloc(1).unwrap();
        assert_eq!(a % PINNED_ALIGN, 0);
        assert!(a >= 100);
        let b = h.alloc(300).unwrap();
        assert_eq!(b, a + 256);
        assert_eq!(h.find(b + 10, 100), Some((b, 512)));
        assert_eq!(h.find(b + 500, 100), None);
        assert!(h.free(a));
        assert!(!h.free(a), "double free");
        assert!(h.free(b));
        assert_eq!(h.free.len(), 1, "free ranges coalesce: {:?}", h.free);
        assert!(h.alloc(1 << 20).is_none());
    }
}
