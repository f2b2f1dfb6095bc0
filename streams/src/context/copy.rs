//! Data paths on a context: device and pinned allocations, registrations, range checks, and the
//! copies (see [`crate::memory`] for the paths and the state they use).

use std::sync::Arc;

use vgpu_transport::client::Ticket;
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::{req, CallRequest, Win};
use vgpu_transport::OnComplete;

use super::Context;
use crate::error::{CudaError, Result};
use crate::locks;
use crate::memory::{ChunkRef, MemoryType, OpenChunk, PointerInfo, Seg, INVALID_DEVICE_ID};
use crate::types::MemcpyKind;

/// The direction of a staged copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Host memory → device (`MemcpyHtoD`): the guest writes the window, the host reads it.
    ToDevice,
    /// Device → host memory (`MemcpyDtoH`): the host writes the window, the reactor copies it out.
    ToHost,
}

impl Context {
    /// Window offset of host range `[p, p+len)` if it lies in one live pinned allocation.
    pub(crate) fn pinned_offset(&self, p: usize, len: usize) -> Option<u64> {
        let off = (p as u64).checked_sub(self.window_base as u64)?;
        if off.checked_add(len as u64)? > self.window_len {
            return None;
        }
        self.mem.lock().pinned.find(off, len as u64).map(|_| off)
    }

    pub(crate) fn is_device(&self, p: u64) -> bool {
        self.allocation_of(p).is_some()
    }

    /// The live allocation `(base, len)` that contains address `p`.
    /// Symbols (`__device__`/`__constant__` variables of loaded modules) count as allocations.
    pub(crate) fn allocation_of(&self, p: u64) -> Option<(u64, u64)> {
        // Two locks one after the other, never one inside the other.
        let a = self.mem.lock().allocation_of(p);
        a.or_else(|| self.kern.tables.lock().symbol_range_of(p))
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
        let registered = host.is_some_and(|h| self.mem.lock().is_registered(h));
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
        self.mem.lock().allocs.insert(p, size as u64);
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
        if self.mem.lock().allocs.remove(&p).is_none() {
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
        let off = self.mem.lock().pinned.alloc(size as u64).ok_or_else(|| {
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
        if self.mem.lock().pinned.find(off, 0).map(|(a, _)| a) != Some(off) {
            return Err(CudaError::InvalidValue);
        }
        // In-flight copies may still use the range: wait for all work first (cudaFreeHost
        // synchronises too), then give the range back.
        let r = self.call(0, req::DeviceSync {});
        self.mem.lock().pinned.free(off);
        r.map(drop)
    }

    pub(crate) fn host_register(&self, p: *mut u8, size: usize, flags: u32) -> Result<()> {
        self.sticky()?;
        if p.is_null() || size == 0 || flags & !0xf != 0 {
            return Err(CudaError::InvalidValue);
        }
        let start = p as usize;
        let end = start.checked_add(size).ok_or(CudaError::InvalidValue)?;
        let in_window = (start as u64).checked_sub(self.window_base as u64).filter(|&o| o < self.window_len);
        // One lock for the check and the insert: two overlapping registrations cannot both pass.
        let mut m = self.mem.lock();
        let pinned = in_window.is_some_and(|off| m.pinned.find(off, 1).is_some());
        if m.overlaps_registered(start, end) || pinned {
            return Err(CudaError::HostMemoryAlreadyRegistered);
        }
        m.registered.insert(start, size);
        Ok(())
    }

    pub(crate) fn host_unregister(&self, p: *mut u8) -> Result<()> {
        self.sticky()?;
        self.mem.lock().registered.remove(&(p as usize)).map(drop).ok_or(CudaError::HostMemoryNotRegistered)
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
    /// window; pageable ones are staged, packed into the context's open chunk (shared with
    /// other small copies across calls, so a burst of them costs window space, not a round trip
    /// each). Returns once every byte is staged; with `wait`, once the host has copied every
    /// piece.
    ///
    /// # Safety
    /// Every `host..host+len` range must be readable for the duration of this call.
    pub(crate) unsafe fn h2d(&self, segs: &[Seg], host_stream: u32, wait: bool) -> Result<()> {
        // SAFETY: forwarded caller guarantee.
        unsafe { self.copy_staged(Dir::ToDevice, segs, host_stream, wait) }
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
        // SAFETY: forwarded caller guarantee.
        unsafe { self.copy_staged(Dir::ToHost, segs, host_stream, wait) }
    }

    /// Both directions of [`h2d`](Self::h2d) and [`d2h`](Self::d2h): the capture check, the
    /// staging loop, what becomes of the last chunk, the wait.
    ///
    /// # Safety
    /// As `h2d` (for `ToDevice`) or `d2h` (for `ToHost`).
    unsafe fn copy_staged(&self, dir: Dir, segs: &[Seg], host_stream: u32, wait: bool) -> Result<()> {
        self.sticky()?;
        // Only copies from and to pinned memory (window offsets) can be captured into a graph.
        if self.capture_active() {
            self.capture_check(host_stream, !wait && segs.iter().all(|s| self.pinned_offset(s.host, s.len).is_some()))?;
        }
        let staging = self.client.staging();
        let chunk_len = staging.chunk_len() as usize;
        let mut tickets = Vec::new();
        let result = match dir {
            Dir::ToDevice => {
                // The open chunk is held for the whole loop ([`rank::STAGING`]): staging
                // serialises H2D callers, and only this loop and `stage_small` touch it.
                let mut open = self.open_h2d.lock();
                let mut cur = open.take();
                // SAFETY: forwarded caller guarantee.
                let r = unsafe { self.stage_loop(dir, segs, host_stream, wait, &mut cur, &mut tickets) };
                match cur {
                    // Keep a chunk with room open for the next copy.
                    Some((c, used)) if r.is_ok() && used < chunk_len => *open = Some((c, used)),
                    Some((c, _)) => c.put(staging),
                    None => {}
                }
                r
            }
            Dir::ToHost => {
                // The host fills whole chunks of its own: give the shared open chunk back first.
                self.close_open_chunk();
                let mut cur = None;
                // SAFETY: forwarded caller guarantee.
                let r = unsafe { self.stage_loop(dir, segs, host_stream, wait, &mut cur, &mut tickets) };
                if let Some((c, _)) = cur {
                    c.put(staging);
                }
                r
            }
        };
        let waited = self.wait_all(tickets);
        result.and(waited)
    }

    /// The staging loop, written once for both directions: each segment goes straight through
    /// the window if it is pinned; otherwise in pieces of at most one chunk, packed into `cur`
    /// (a new chunk when the piece does not fit), each piece holding its chunk until its
    /// completion action has run. The tickets of the pieces are kept in `tickets` with `wait`.
    /// On an error, what was submitted stays submitted (and in `tickets`).
    ///
    /// # Safety
    /// As [`copy_staged`](Self::copy_staged).
    unsafe fn stage_loop(
        &self,
        dir: Dir,
        segs: &[Seg],
        host_stream: u32,
        wait: bool,
        cur: &mut OpenChunk,
        tickets: &mut Vec<Ticket>,
    ) -> Result<()> {
        let staging = self.client.staging();
        let chunk_len = staging.chunk_len() as usize;
        for seg in segs {
            if let Some(off) = self.pinned_offset(seg.host, seg.len) {
                tickets.extend(self.submit_piece(dir, host_stream, seg.dev, Win::new(off, seg.len as u64), None, wait)?);
                continue;
            }
            let mut done = 0;
            while done < seg.len {
                let n = (seg.len - done).min(chunk_len);
                let (c, start) = self.chunk_with_room(cur, n, 1)?;
                let woff = c.off + start as u64;
                let host = seg.host + done;
                let action: OnComplete = match dir {
                    Dir::ToDevice => {
                        // SAFETY: the caller guarantees `seg.host..seg.host+seg.len` is readable
                        // now; `done + n <= seg.len`.
                        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, n) };
                        self.check(self.client.region().write_window(woff, bytes))?;
                        let c2 = c.hold();
                        Box::new(move |_, staging, _| c2.put(staging))
                    }
                    Dir::ToHost => {
                        let c2 = c.hold();
                        Box::new(move |region, staging, ok| {
                            if ok {
                                // SAFETY: the caller of `d2h` keeps `host..host+n` writable and
                                // untouched until the copy completes, which is now: this action
                                // runs before the copy counts as done.
                                let out = unsafe { std::slice::from_raw_parts_mut(host as *mut u8, n) };
                                let _ = region.read_window(woff, out);
                            }
                            c2.put(staging);
                        })
                    }
                };
                let piece = Win::new(woff, n as u64);
                tickets.extend(self.submit_piece(dir, host_stream, seg.dev.wrapping_add(done as u64), piece, Some(action), wait)?);
                if let Some((_, used)) = cur.as_mut() {
                    *used = start + n;
                }
                done += n;
            }
        }
        Ok(())
    }

    /// Make room for `n` bytes (at most one chunk) at an `align`-aligned start in `cur`: the
    /// chunk and that start. A chunk without room is put back (it goes to the pool once its
    /// pieces are done) and a new one acquired, which may wait for the pool.
    fn chunk_with_room(&self, cur: &mut OpenChunk, n: usize, align: usize) -> Result<(Arc<ChunkRef>, usize)> {
        let staging = self.client.staging();
        let chunk_len = staging.chunk_len() as usize;
        match cur {
            Some((c, used)) if used.next_multiple_of(align) + n <= chunk_len => Ok((c.clone(), used.next_multiple_of(align))),
            _ => {
                if let Some((c, _)) = cur.take() {
                    c.put(staging);
                }
                let c = ChunkRef::new(self.check(self.client.acquire_staging())?);
                *cur = Some((c.clone(), 0));
                Ok((c, 0))
            }
        }
    }

    /// Put `bytes` (at most one chunk) into the open staging chunk shared with small H2D copies,
    /// 8-byte aligned: the window offset, and the completion action that gives the space back
    /// (attach it to the command that carries the offset). For launch parameters and names.
    pub(crate) fn stage_small(&self, bytes: &[u8]) -> Result<(u64, OnComplete)> {
        let n = bytes.len();
        if n as u64 > self.client.staging().chunk_len() {
            return Err(CudaError::InvalidValue);
        }
        let mut open = self.open_h2d.lock();
        let (c, start) = self.chunk_with_room(&mut open, n, 8)?;
        let woff = c.off + start as u64;
        self.check(self.client.region().write_window(woff, bytes))?;
        if let Some((_, used)) = open.as_mut() {
            *used = start + n;
        }
        let c2 = c.hold();
        Ok((woff, Box::new(move |_, staging, _| c2.put(staging))))
    }

    /// Give the open H2D staging chunk back (once its pieces are done), so that callers who need
    /// a whole chunk never wait for it.
    pub(crate) fn close_open_chunk(&self) {
        if let Some((c, _)) = self.open_h2d.lock().take() {
            c.put(self.client.staging());
        }
    }

    /// Submit one copy piece between device address `dev` and window range `win`: keep its
    /// ticket when the caller waits (`keep`), fire it otherwise.
    fn submit_piece(&self, dir: Dir, stream: u32, dev: u64, win: Win, action: Option<OnComplete>, keep: bool) -> Result<Option<Ticket>> {
        match dir {
            Dir::ToDevice => self.submit(stream, req::MemcpyHtoD { dst: dev, src: win }, action, keep),
            Dir::ToHost => self.submit(stream, req::MemcpyDtoH { src: dev, dst: win }, action, keep),
        }
    }

    fn submit<R: CallRequest>(&self, stream: u32, r: R, action: Option<OnComplete>, keep: bool) -> Result<Option<Ticket>> {
        let t = match action {
            Some(act) => self.client.submit_then_req(stream, r, act),
            None => self.client.submit_req(stream, r),
        };
        let t = self.check(t)?;
        Ok(keep.then_some(t))
    }

    /// Wait for every ticket (one blocking wait counted); the first error.
    pub(crate) fn wait_all(&self, tickets: Vec<Ticket>) -> Result<()> {
        if tickets.is_empty() {
            return Ok(());
        }
        locks::may_block("a copy");
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

    /// A synchronous copy ordered on `host_stream` (`cudaMemcpy`, its `_ptds` form, symbol
    /// copies): returns when host memory is done (a device-to-device copy returns once
    /// submitted, as CUDA's), and reports the deferred error of earlier work when it waited.
    ///
    /// # Safety
    /// Host ranges as for [`copy_1d`](Self::copy_1d).
    pub(crate) unsafe fn copy_sync(&self, dst: u64, src: u64, n: usize, kind: MemcpyKind, host_stream: u32) -> Result<()> {
        let kind = self.resolve_kind(kind, dst, src);
        let wait = kind != MemcpyKind::DeviceToDevice;
        // SAFETY: forwarded caller guarantee.
        unsafe { self.copy_1d(dst, src, n, kind, host_stream, wait)? };
        if wait {
            self.deferred()?;
        }
        Ok(())
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
