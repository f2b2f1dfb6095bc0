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

use std::collections::BTreeMap;
use std::sync::Arc;

use vgpu_transport::sync::{AtomicUsize, Ordering};
use vgpu_transport::window::Staging;
use vgpu_transport::wire::{req, CallRequest, Win};
use vgpu_transport::OnComplete;

use crate::context::{lock, Context};
use crate::error::{CudaError, Result};
use crate::MemcpyKind;

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
    off: u64,
    left: AtomicUsize,
}

impl ChunkRef {
    fn put(&self, staging: &Staging) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            staging.release(self.off);
        }
    }
}

impl Context {
    /// Window offset of host range `[p, p+len)` if it lies in one live pinned allocation.
    pub(crate) fn pinned_offset(&self, p: usize, len: usize) -> Option<u64> {
        let off = (p as u64).checked_sub(self.window_base as u64)?;
        if off.checked_add(len as u64)? > self.window_len {
            return None;
        }
        lock(&self.pinned).find(off, len as u64).map(|_| off)
    }

    pub(crate) fn is_device(&self, p: u64) -> bool {
        self.allocation_of(p).is_some()
    }

    /// The live allocation `(base, len)` that contains address `p`.
    /// Symbols (`__device__`/`__constant__` variables of loaded modules) count as allocations.
    pub(crate) fn allocation_of(&self, p: u64) -> Option<(u64, u64)> {
        lock(&self.allocs)
            .range(..=p)
            .next_back()
            .filter(|(&b, &l)| p < b + l.max(1))
            .map(|(&b, &l)| (b, l))
            .or_else(|| self.symbol_range_of(p))
    }

    /// `Ok` if `[p, p+len)` lies inside one live allocation of this context; `InvalidValue`
    /// otherwise, as CUDA answers a memset or copy with a bad device range at the call. (The
    /// host checks every range again: it never trusts the guest.)
    pub(crate) fn check_device_range(&self, p: u64, len: u64) -> Result<()> {
        let end = p.checked_add(len).ok_or(CudaError::InvalidValue)?;
        match self.allocation_of(p) {
            Some((b, l)) if end <= b + l => Ok(()),
            _ => Err(CudaError::InvalidValue),
        }
    }

    /// What `cudaPointerGetAttributes` reports for `p`: a device pointer inside a live
    /// allocation, pinned memory (`cudaMallocHost`/`cudaHostAlloc`), registered host memory
    /// (`cudaHostRegister`), or anything else as unregistered host memory (CUDA 11+).
    pub(crate) fn pointer_info(&self, p: u64) -> PointerInfo {
        if self.is_device(p) {
            return PointerInfo { kind: MemoryType::Device, device: 0, device_ptr: p, host_ptr: 0 };
        }
        let host = usize::try_from(p).ok();
        let registered = host.is_some_and(|h| lock(&self.registered).range(..=h).next_back().is_some_and(|(&s, &l)| h < s + l));
        if host.is_some_and(|h| self.pinned_offset(h, 1).is_some()) || registered {
            // No device alias: mapped pinned memory is not supported (canMapHostMemory = 0).
            return PointerInfo { kind: MemoryType::Host, device: 0, device_ptr: 0, host_ptr: p };
        }
        PointerInfo { kind: MemoryType::Unregistered, device: INVALID_DEVICE_ID, device_ptr: 0, host_ptr: p }
    }

    pub(crate) fn malloc(&self, size: usize) -> Result<u64> {
        if size == 0 {
            return Ok(0);
        }
        let p = self.call(0, req::MemAlloc { size: size as u64 })?.ptr;
        lock(&self.allocs).insert(p, size as u64);
        Ok(p)
    }

    /// `cudaFree`: also reports the deferred error of earlier asynchronous work, as CUDA may.
    pub(crate) fn free(&self, p: u64) -> Result<()> {
        self.free_quiet(p)?;
        self.deferred()
    }

    /// Free without consuming the deferred error (for destructors, which cannot report it).
    pub(crate) fn free_quiet(&self, p: u64) -> Result<()> {
        if p == 0 {
            return Ok(());
        }
        self.sticky()?;
        if lock(&self.allocs).remove(&p).is_none() {
            return Err(CudaError::InvalidValue);
        }
        // cudaFree synchronises: it returns after earlier work using the memory is done.
        self.call(0, req::MemFree { ptr: p }).map(drop)
    }

    pub(crate) fn host_alloc(&self, size: usize, flags: u32) -> Result<*mut u8> {
        self.sticky()?;
        if flags & !0x7 != 0 {
            return Err(CudaError::InvalidValue);
        }
        let off = lock(&self.pinned).alloc(size as u64).ok_or_else(|| {
            tracing::warn!(target: "vgpu::streams", size, "pinned memory exhausted (it lives in the data window; ask the mediator for a larger window)");
            CudaError::MemoryAllocation
        })?;
        Ok((self.window_base + off as usize) as *mut u8)
    }

    pub(crate) fn free_host(&self, p: *mut u8) -> Result<()> {
        if p.is_null() {
            return Ok(());
        }
        self.sticky()?;
        let off = (p as u64).checked_sub(self.window_base as u64).ok_or(CudaError::InvalidValue)?;
        if lock(&self.pinned).find(off, 0).map(|(a, _)| a) != Some(off) {
            return Err(CudaError::InvalidValue);
        }
        // In-flight copies may still use the range: wait for all work first (cudaFreeHost
        // synchronises too), then give the range back.
        let r = self.call(0, req::DeviceSync {});
        lock(&self.pinned).free(off);
        r.map(drop)
    }

    pub(crate) fn host_register(&self, p: *mut u8, size: usize, flags: u32) -> Result<()> {
        self.sticky()?;
        if p.is_null() || size == 0 || flags & !0xf != 0 {
            return Err(CudaError::InvalidValue);
        }
        let start = p as usize;
        let end = start.checked_add(size).ok_or(CudaError::InvalidValue)?;
        let mut r = lock(&self.registered);
        let overlaps = r.range(..end).next_back().is_some_and(|(&s, &l)| s + l > start);
        if overlaps || self.pinned_offset(start, 1).is_some() {
            return Err(CudaError::HostMemoryAlreadyRegistered);
        }
        r.insert(start, size);
        Ok(())
    }

    pub(crate) fn host_unregister(&self, p: *mut u8) -> Result<()> {
        self.sticky()?;
        lock(&self.registered).remove(&(p as usize)).map(drop).ok_or(CudaError::HostMemoryNotRegistered)
    }

    /// Resolve `Default` to a concrete direction from the pointers.
    pub(crate) fn resolve_kind(&self, kind: MemcpyKind, dst: u64, src: u64) -> MemcpyKind {
        if kind != MemcpyKind::Default {
            return kind;
        }
        match (self.is_device(dst), self.is_device(src)) {
            (true, true) => MemcpyKind::DeviceToDevice,
            (true, false) => MemcpyKind::HostToDevice,
            (false, true) => MemcpyKind::DeviceToHost,
            (false, false) => MemcpyKind::HostToHost,
        }
    }

    /// Copy `segs` from host to device on `host_stream`. Pinned sources go straight from the
    /// window; pageable ones are staged. Returns once every byte is staged; with `wait`, once
    /// the host has copied every piece.
    ///
    /// # Safety
    /// Every `host..host+len` range must be readable for the duration of this call.
    pub(crate) unsafe fn h2d(&self, segs: &[Seg], host_stream: u32, wait: bool) -> Result<()> {
        self.sticky()?;
        // Only copies from pinned memory (window offsets) can be captured into a graph.
        if self.capture_active() {
            self.capture_check(host_stream, !wait && segs.iter().all(|s| self.pinned_offset(s.host, s.len).is_some()))?;
        }
        let mut tickets = Vec::new();
        let staging = self.client.staging();
        let chunk_len = staging.chunk_len() as usize;
        // Small copies share the context's open chunk across calls, so a burst of them costs
        // window space, not a round trip each. Held for the whole staging loop: staging
        // serialises H2D callers, and only this loop touches the open chunk.
        let mut open = lock(&self.open_h2d);
        let mut cur: Option<(Arc<ChunkRef>, usize)> = open.take();
        let mut result = Ok(());
        'segs: for seg in segs {
            if let Some(off) = self.pinned_offset(seg.host, seg.len) {
                match self.submit(host_stream, req::MemcpyHtoD { dst: seg.dev, src: Win::new(off, seg.len as u64) }, None, wait) {
                    Ok(t) => tickets.extend(t),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
                continue;
            }
            let mut done = 0;
            while done < seg.len {
                let n = (seg.len - done).min(chunk_len);
                let need_new = match &cur {
                    Some((_, used)) => used + n > chunk_len,
                    None => true,
                };
                if need_new {
                    if let Some((c, _)) = cur.take() {
                        c.put(staging);
                    }
                    match self.check(self.client.acquire_staging()) {
                        Ok(off) => cur = Some((Arc::new(ChunkRef { off, left: AtomicUsize::new(1) }), 0)),
                        Err(e) => {
                            result = Err(e);
                            break 'segs;
                        }
                    }
                }
                let Some((c, used)) = cur.as_mut() else { break 'segs };
                let woff = c.off + *used as u64;
                // SAFETY: the caller guarantees `seg.host..seg.host+seg.len` is readable now;
                // `done + n <= seg.len`.
                let bytes = unsafe { std::slice::from_raw_parts((seg.host + done) as *const u8, n) };
                if let Err(e) = self.check(self.client.region().write_window(woff, bytes)) {
                    result = Err(e);
                    break 'segs;
                }
                c.left.fetch_add(1, Ordering::AcqRel);
                let c2 = c.clone();
                let action: OnComplete = Box::new(move |_, staging, _| c2.put(staging));
                match self.submit(
                    host_stream,
                    req::MemcpyHtoD { dst: seg.dev.wrapping_add(done as u64), src: Win::new(woff, n as u64) },
                    Some(action),
                    wait,
                ) {
                    Ok(t) => tickets.extend(t),
                    Err(e) => {
                        result = Err(e);
                        break 'segs;
                    }
                }
                *used += n;
                done += n;
            }
        }
        match cur.take() {
            // Keep a chunk with room open for the next copy.
            Some((c, used)) if result.is_ok() && used < chunk_len => *open = Some((c, used)),
            Some((c, _)) => c.put(staging),
            None => {}
        }
        drop(open);
        let waited = self.wait_all(tickets);
        result.and(waited)
    }

    /// Put `bytes` (at most one chunk) into the open staging chunk shared with small H2D copies,
    /// 8-byte aligned: the window offset, and the completion action that gives the space back
    /// (attach it to the command that carries the offset). For launch parameters and names.
    pub(crate) fn stage_small(&self, bytes: &[u8]) -> Result<(u64, OnComplete)> {
        let staging = self.client.staging();
        let chunk_len = staging.chunk_len() as usize;
        let n = bytes.len();
        if n > chunk_len {
            return Err(CudaError::InvalidValue);
        }
        let mut open = lock(&self.open_h2d);
        let fits = open.as_ref().is_some_and(|(_, used)| used.next_multiple_of(8) + n <= chunk_len);
        if !fits {
            if let Some((c, _)) = open.take() {
                c.put(staging);
            }
            let off = self.check(self.client.acquire_staging())?;
            *open = Some((Arc::new(ChunkRef { off, left: AtomicUsize::new(1) }), 0));
        }
        let Some((c, used)) = open.as_mut() else { return Err(CudaError::Unknown) };
        let start = used.next_multiple_of(8);
        let woff = c.off + start as u64;
        self.check(self.client.region().write_window(woff, bytes))?;
        c.left.fetch_add(1, Ordering::AcqRel);
        *used = start + n;
        let c2 = c.clone();
        Ok((woff, Box::new(move |_, staging, _| c2.put(staging))))
    }

    /// Give the open H2D staging chunk back (once its pieces are done), so that callers who need
    /// a whole chunk never wait for it.
    pub(crate) fn close_open_chunk(&self) {
        if let Some((c, _)) = lock(&self.open_h2d).take() {
            c.put(self.client.staging());
        }
    }

    /// Copy `segs` from device to host on `host_stream`. Pinned destinations are written by the
    /// host directly; pageable ones are filled by completion actions. With `wait`, returns once
    /// every byte is in place; otherwise once every piece is submitted (the bytes are in place
    /// when a later sync of the stream returns).
    ///
    /// # Safety
    /// Every `host..host+len` range must stay writable, and not be accessed by the caller, until
    /// the copy has completed (a later sync of the stream, or this call's return with `wait`).
    pub(crate) unsafe fn d2h(&self, segs: &[Seg], host_stream: u32, wait: bool) -> Result<()> {
        self.sticky()?;
        if self.capture_active() {
            self.capture_check(host_stream, !wait && segs.iter().all(|s| self.pinned_offset(s.host, s.len).is_some()))?;
        }
        self.close_open_chunk();
        let mut tickets = Vec::new();
        let staging = self.client.staging();
        let chunk_len = staging.chunk_len() as usize;
        let mut cur: Option<(Arc<ChunkRef>, usize)> = None;
        let mut result = Ok(());
        'segs: for seg in segs {
            if let Some(off) = self.pinned_offset(seg.host, seg.len) {
                match self.submit(host_stream, req::MemcpyDtoH { src: seg.dev, dst: Win::new(off, seg.len as u64) }, None, wait) {
                    Ok(t) => tickets.extend(t),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
                continue;
            }
            let mut done = 0;
            while done < seg.len {
                let n = (seg.len - done).min(chunk_len);
                let need_new = match &cur {
                    Some((_, used)) => used + n > chunk_len,
                    None => true,
                };
                if need_new {
                    if let Some((c, _)) = cur.take() {
                        c.put(staging);
                    }
                    match self.check(self.client.acquire_staging()) {
                        Ok(off) => cur = Some((Arc::new(ChunkRef { off, left: AtomicUsize::new(1) }), 0)),
                        Err(e) => {
                            result = Err(e);
                            break 'segs;
                        }
                    }
                }
                let Some((c, used)) = cur.as_mut() else { break 'segs };
                let woff = c.off + *used as u64;
                c.left.fetch_add(1, Ordering::AcqRel);
                let c2 = c.clone();
                let dst = seg.host + done;
                let action: OnComplete = Box::new(move |region, staging, ok| {
                    if ok {
                        // SAFETY: the caller of `d2h` keeps `dst..dst+n` writable and untouched
                        // until the copy completes, which is now: this action runs before the
                        // copy counts as done.
                        let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, n) };
                        let _ = region.read_window(woff, out);
                    }
                    c2.put(staging);
                });
                match self.submit(
                    host_stream,
                    req::MemcpyDtoH { src: seg.dev.wrapping_add(done as u64), dst: Win::new(woff, n as u64) },
                    Some(action),
                    wait,
                ) {
                    Ok(t) => tickets.extend(t),
                    Err(e) => {
                        result = Err(e);
                        break 'segs;
                    }
                }
                *used += n;
                done += n;
            }
        }
        if let Some((c, _)) = cur.take() {
            c.put(staging);
        }
        let waited = self.wait_all(tickets);
        result.and(waited)
    }

    /// Submit one copy piece: keep its ticket when the caller waits, fire it otherwise.
    fn submit<R: CallRequest>(
        &self,
        stream: u32,
        r: R,
        action: Option<OnComplete>,
        keep: bool,
    ) -> Result<Option<vgpu_transport::client::Ticket>> {
        let t = match action {
            Some(act) => self.client.submit_then_req(stream, r, act),
            None => self.client.submit_req(stream, r),
        };
        let t = self.check(t)?;
        Ok(keep.then_some(t))
    }

    fn wait_all(&self, tickets: Vec<vgpu_transport::client::Ticket>) -> Result<()> {
        if tickets.is_empty() {
            return Ok(());
        }
        self.client.stats().blocking_waits.fetch_add(1, Ordering::Relaxed);
        let mut first = Ok(());
        for t in tickets {
            if let Err(e) = t.wait() {
                let e = self.convert(&e);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// A copy of any direction, on `host_stream`. `wait`: return only when it has completed.
    ///
    /// # Safety
    /// Host ranges as for [`h2d`](Self::h2d) and [`d2h`](Self::d2h).
    pub(crate) unsafe fn copy_1d(&self, dst: u64, src: u64, n: usize, kind: MemcpyKind, host_stream: u32, wait: bool) -> Result<()> {
        if n == 0 {
            return self.sticky();
        }
        let kind = self.resolve_kind(kind, dst, src);
        self.sticky()?;
        // Device ranges are checked here, synchronously, as CUDA does.
        if matches!(kind, MemcpyKind::HostToDevice | MemcpyKind::DeviceToDevice) {
            self.check_device_range(dst, n as u64)?;
        }
        if matches!(kind, MemcpyKind::DeviceToHost | MemcpyKind::DeviceToDevice) {
            self.check_device_range(src, n as u64)?;
        }
        match kind {
            MemcpyKind::HostToHost => {
                self.sticky()?;
                // Done by the guest at once: nothing the host could record.
                self.capture_check(host_stream, false)?;
                if wait {
                    // Host-to-host copies are ordered after earlier work on the stream.
                    self.call(host_stream, req::StreamSync {})?;
                }
                // SAFETY: the caller guarantees both host ranges are valid for `n` bytes;
                // `copy` tolerates overlap.
                unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
                Ok(())
            }
            MemcpyKind::HostToDevice => {
                // SAFETY: forwarded caller guarantee.
                unsafe { self.h2d(&[Seg { dev: dst, host: src as usize, len: n }], host_stream, wait) }
            }
            MemcpyKind::DeviceToHost => {
                let wait = wait || (self.sync_pageable_d2h && self.pinned_offset(dst as usize, n).is_none());
                // SAFETY: forwarded caller guarantee.
                unsafe { self.d2h(&[Seg { dev: src, host: dst as usize, len: n }], host_stream, wait) }
            }
            MemcpyKind::DeviceToDevice => {
                self.capture_check(host_stream, !wait)?;
                if wait {
                    self.call(host_stream, req::MemcpyDtoD { dst, src, len: n as u64 }).map(drop)
                } else {
                    self.fire(host_stream, req::MemcpyDtoD { dst, src, len: n as u64 })
                }
            }
            MemcpyKind::Default => Err(CudaError::InvalidMemcpyDirection),
        }
    }

    /// A 2D copy: `height` rows of `width` bytes, rows `dpitch` / `spitch` apart.
    ///
    /// # Safety
    /// Host ranges as for [`h2d`](Self::h2d) and [`d2h`](Self::d2h), for every row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn copy_2d(
        &self,
        dst: u64,
        dpitch: usize,
        src: u64,
        spitch: usize,
        width: usize,
        height: usize,
        kind: MemcpyKind,
        host_stream: u32,
        wait: bool,
    ) -> Result<()> {
        self.sticky()?;
        if width == 0 || height == 0 {
            return Ok(());
        }
        if width > dpitch || width > spitch {
            return Err(CudaError::InvalidPitchValue);
        }
        if wait {
            self.capture_check(host_stream, false)?;
        }
        // The last row must be addressable on both sides; the host rejects device ranges that
        // are not inside an allocation, and host ranges are the caller's promise.
        let span =
            |pitch: usize, base: u64| (height - 1).checked_mul(pitch).and_then(|o| base.checked_add(o as u64)?.checked_add(width as u64));
        let (Some(dst_end), Some(src_end)) = (span(dpitch, dst), span(spitch, src)) else {
            return Err(CudaError::InvalidValue);
        };
        let kind = self.resolve_kind(kind, dst, src);
        // Every row of a device side lies between its first byte and the last row's end, so one
        // check of that span covers them all.
        if matches!(kind, MemcpyKind::HostToDevice | MemcpyKind::DeviceToDevice) {
            self.check_device_range(dst, dst_end - dst)?;
        }
        if matches!(kind, MemcpyKind::DeviceToHost | MemcpyKind::DeviceToDevice) {
            self.check_device_range(src, src_end - src)?;
        }
        let rows = |d: u64, s: u64| (0..height).map(move |r| (d + (r * dpitch) as u64, s + (r * spitch) as u64));
        match kind {
            MemcpyKind::HostToDevice => {
                let segs: Vec<Seg> = rows(dst, src).map(|(d, s)| Seg { dev: d, host: s as usize, len: width }).collect();
                // SAFETY: forwarded caller guarantee.
                unsafe { self.h2d(&segs, host_stream, wait) }
            }
            MemcpyKind::DeviceToHost => {
                let segs: Vec<Seg> = rows(dst, src).map(|(d, s)| Seg { dev: s, host: d as usize, len: width }).collect();
                let wait = wait || self.sync_pageable_d2h;
                // SAFETY: forwarded caller guarantee.
                unsafe { self.d2h(&segs, host_stream, wait) }
            }
            k => {
                for (d, s) in rows(dst, src) {
                    // SAFETY: forwarded caller guarantee.
                    unsafe { self.copy_1d(d, s, width, k, host_stream, false)? };
                }
                if wait {
                    self.call(host_stream, req::StreamSync {})?;
                    self.deferred()?;
                }
                Ok(())
            }
        }
    }

    pub(crate) fn memset_on(&self, p: u64, value: i32, n: usize, host_stream: u32) -> Result<()> {
        if n == 0 {
            return self.sticky();
        }
        self.sticky()?;
        self.check_device_range(p, n as u64)?;
        self.capture_check(host_stream, true)?;
        self.fire(host_stream, req::Memset { dst: p, value: (value as u32 & 0xff) as u8, len: n as u64 })
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
