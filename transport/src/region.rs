//! The shared region: a mapping both sides write at any time.
//!
//! This is the trust boundary in types. Nothing here hands out `&T` or `&[u8]` into the mapping
//! (rule 5): plain data moves by value through volatile reads and writes, indices and flags are
//! atomics made from aligned raw pointers, and bulk bytes are copied in and out by offset with
//! every range checked against the mapping.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use memmap2::MmapRaw;

use crate::sync::shm::{AtomicU32, AtomicU64};
use crate::wire::{hdr, Layout, FEATURES_SUPPORTED, HEADER_SIZE, PROTOCOL_VERSION, REGION_MAGIC};
use crate::{Error, Result};

/// A mapped region. Cloned as `Arc<Region>` by the halves that use it.
pub struct Region {
    map: MmapRaw,
    len: usize,
    layout: Layout,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("len", &self.len).field("layout", &self.layout).finish()
    }
}

/// Create a sealed memfd of `len` bytes (host side). Seals forbid shrinking and growing, so a
/// peer can never make the other side's accesses fault (SIGBUS).
pub fn create_memfd(name: &str, len: u64) -> Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let cname = std::ffi::CString::new(name).map_err(|_| Error::Setup("memfd name has a NUL".into()))?;
    let fd = memfd_create(&cname, MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)
        .map_err(|e| Error::Setup(format!("memfd_create: {e}")))?;
    nix::unistd::ftruncate(&fd, len as i64).map_err(|e| Error::Setup(format!("ftruncate memfd to {len}: {e}")))?;
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL))
        .map_err(|e| Error::Setup(format!("sealing memfd: {e}")))?;
    Ok(fd)
}

/// Check that a memfd received from the host is sealed against shrinking (guest side).
pub fn check_sealed(fd: BorrowedFd<'_>) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(|e| Error::Setup(format!("F_GET_SEALS: {e}")))?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(SealFlag::F_SEAL_SHRINK) {
        return Err(Error::Setup("the region memfd is not sealed against shrinking".into()));
    }
    Ok(())
}

impl Region {
    /// Map `len` bytes of `fd` shared and read-write.
    pub fn map_fd(fd: impl AsFd, len: u64, layout: Layout) -> Result<Region> {
        let len_usize = usize::try_from(len).map_err(|_| Error::Setup("region too large".into()))?;
        let map = memmap2::MmapOptions::new()
            .len(len_usize)
            .map_raw(fd.as_fd().as_raw_fd())
            .map_err(|e| Error::Setup(format!("mmap of {len} byte region: {e}")))?;
        if map.len() < len_usize || layout.region_len > len {
            return Err(Error::Setup("region mapping shorter than its layout".into()));
        }
        Ok(Region { map, len: len_usize, layout })
    }

    /// Host side: write block 0 of a fresh (zeroed) region.
    pub fn init_header(&self, session_id: u64) {
        let l = self.layout;
        self.write_u64(hdr::REGION_LEN, l.region_len);
        self.write_u64(hdr::SQ_OFF, l.sq_off);
        self.write_u32(hdr::SQ_DEPTH, l.sq_depth);
        self.write_u32(hdr::CQ_DEPTH, l.cq_depth);
        self.write_u64(hdr::CQ_OFF, l.cq_off);
        self.write_u64(hdr::WINDOW_OFF, l.window_off);
        self.write_u64(hdr::WINDOW_LEN, l.window_len);
        self.write_u64(hdr::SESSION_ID, session_id);
        self.write_u32(hdr::VERSION, PROTOCOL_VERSION);
        self.write_u32(hdr::FEATURES, 0);
        // Magic last: a reader that sees it sees the rest (the fd is passed after this anyway).
        self.atomic_u64(hdr::MAGIC).store(REGION_MAGIC, std::sync::atomic::Ordering::Release);
    }

    /// Guest side: map a region and check its header (magic, version, layout) before any use.
    pub fn open_guest(fd: impl AsFd, len: u64) -> Result<Region> {
        Region::open_guest_at(fd, 0, len)
    }

    /// Guest side: map `len` bytes of `fd` starting at byte `offset` (page-aligned) and check the
    /// header. For mappings that are not a memfd: a VFIO device fd, whose BAR2 (the ivshmem
    /// shared memory) lives at the offset `VFIO_DEVICE_GET_REGION_INFO` reports, or a UIO map.
    pub fn open_guest_at(fd: impl AsFd, offset: u64, len: u64) -> Result<Region> {
        if len < HEADER_SIZE as u64 {
            return Err(Error::Setup(format!("region of {len} bytes is smaller than its header")));
        }
        let len_usize = usize::try_from(len).map_err(|_| Error::Setup("region too large".into()))?;
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(len_usize)
            .map_raw(fd.as_fd().as_raw_fd())
            .map_err(|e| Error::Setup(format!("mmap of the {len} byte region at offset {offset:#x}: {e}")))?;
        Region::open_guest_map(map)
    }

    /// Guest side: take an existing shared read-write mapping (it must stay mapped as long as the
    /// region lives: it is moved in) and check the header.
    pub fn open_guest_map(map: MmapRaw) -> Result<Region> {
        let len = map.len() as u64;
        if len < HEADER_SIZE as u64 {
            return Err(Error::Setup(format!("region of {len} bytes is smaller than its header")));
        }
        let probe = Layout { region_len: HEADER_SIZE as u64, sq_off: 0, sq_depth: 0, cq_off: 0, cq_depth: 0, window_off: 0, window_len: 0 };
        let r = Region { len: map.len(), map, layout: probe };
        let magic = r.atomic_u64(hdr::MAGIC).load(std::sync::atomic::Ordering::Acquire);
        if magic == 0 {
            return Err(Error::Setup(
                "the shared region is all zero: no vgpu mediator has initialised it (start `vgpu serve --ivshmem SOCKET` before the VM)"
                    .into(),
            ));
        }
        if magic != REGION_MAGIC {
            return Err(Error::Version(format!("region magic is {magic:#018x}, expected {REGION_MAGIC:#018x}")));
        }
        let v = r.read_u32(hdr::VERSION);
        if v != PROTOCOL_VERSION {
            return Err(Error::Version(format!(
                "region speaks protocol v{v}, this guest speaks v{PROTOCOL_VERSION}: install matching vgpu versions on host and guest"
            )));
        }
        let f = r.read_u32(hdr::FEATURES);
        if f & !FEATURES_SUPPORTED != 0 {
            return Err(Error::Version(format!(
                "the region grants feature bits {f:#x}, this guest (protocol v{PROTOCOL_VERSION}) knows only {FEATURES_SUPPORTED:#x}: install matching vgpu versions on host and guest"
            )));
        }
        let layout = Layout {
            region_len: r.read_u64(hdr::REGION_LEN),
            sq_off: r.read_u64(hdr::SQ_OFF),
            sq_depth: r.read_u32(hdr::SQ_DEPTH),
            cq_off: r.read_u64(hdr::CQ_OFF),
            cq_depth: r.read_u32(hdr::CQ_DEPTH),
            window_off: r.read_u64(hdr::WINDOW_OFF),
            window_len: r.read_u64(hdr::WINDOW_LEN),
        };
        layout.validate(len).map_err(Error::Setup)?;
        Ok(Region { layout, ..r })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, size: usize, align: usize) {
        // Offsets passed here come from this crate's constants and validated layouts, never
        // straight from the peer; a failure is a bug in this crate, so it is an assert.
        assert!(
            off.is_multiple_of(align) && off.checked_add(size).is_some_and(|e| e <= self.len),
            "region access {off}+{size} out of bounds"
        );
    }

    /// An atomic u32 at `off` (4-aligned, inside the region).
    pub fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: `check` proved off..off+4 is inside the live mapping (which outlives `self`)
        // and 4-aligned (the mapping is page-aligned). The location is only ever accessed
        // atomically by both sides, so treating it as an AtomicU32 is sound.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    /// An atomic u64 at `off` (8-aligned, inside the region).
    pub fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: as in `atomic_u32`, with 8 bytes and 8-alignment.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        self.read_pod(off)
    }
    pub fn read_u64(&self, off: usize) -> u64 {
        self.read_pod(off)
    }
    pub fn write_u32(&self, off: usize, v: u32) {
        self.write_pod(off, v)
    }
    pub fn write_u64(&self, off: usize, v: u64) {
        self.write_pod(off, v)
    }

    /// Volatile read of a plain-data value at `off`.
    ///
    /// `T: Pod` is valid for every bit pattern (the peer may write anything there).
    pub(crate) fn read_pod<T: bytemuck::Pod>(&self, off: usize) -> T {
        self.check(off, std::mem::size_of::<T>(), std::mem::align_of::<T>());
        // SAFETY: in bounds and aligned (checked above); `T: Pod` is valid for any bit pattern,
        // so whatever the peer wrote is a `T`; volatile because the peer may be writing
        // concurrently, and we copy out by value.
        unsafe { std::ptr::read_volatile(self.map.as_ptr().add(off).cast::<T>()) }
    }

    /// Volatile write of a plain-data value at `off`.
    pub(crate) fn write_pod<T: bytemuck::Pod>(&self, off: usize, v: T) {
        self.check(off, std::mem::size_of::<T>(), std::mem::align_of::<T>());
        // SAFETY: in bounds and aligned (checked above); volatile store by value, no reference
        // into the shared mapping is created.
        unsafe { std::ptr::write_volatile(self.map.as_mut_ptr().add(off).cast::<T>(), v) }
    }

    /// Check that `[off, off+len)` lies inside the data window; returns the absolute offset.
    pub fn window_range(&self, off: u64, len: u64) -> Option<usize> {
        let end = off.checked_add(len)?;
        if end > self.layout.window_len {
            return None;
        }
        usize::try_from(self.layout.window_off + off).ok()
    }

    /// Copy `src` into the data window at window offset `off`.
    pub fn write_window(&self, off: u64, src: &[u8]) -> Result<()> {
        let abs = self.window_range(off, src.len() as u64).ok_or(Error::WindowRange { off, len: src.len() as u64 })?;
        // SAFETY: `window_range` proved abs..abs+len is inside the window, hence inside the live
        // mapping; `src` is a local buffer that cannot overlap the mapping's pages we own as raw
        // memory. The peer may write these bytes concurrently; bytes are opaque (no validity
        // invariant), so a race can only produce wrong bytes, never unsoundness in our types.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.map.as_mut_ptr().add(abs), src.len()) };
        Ok(())
    }

    /// Copy from the data window at window offset `off` into `dst`.
    pub fn read_window(&self, off: u64, dst: &mut [u8]) -> Result<()> {
        let abs = self.window_range(off, dst.len() as u64).ok_or(Error::WindowRange { off, len: dst.len() as u64 })?;
        // SAFETY: as in `write_window`, in the other direction.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(abs), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copy `len` window bytes at `off` into a new vector. The allocation is fallible (a peer
    /// cannot abort this process with a huge length): `None` if it fails.
    pub fn read_window_vec(&self, off: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let abs = self.window_range(off, len).ok_or(Error::WindowRange { off, len })?;
        let n = len as usize;
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(n).is_err() {
            return Ok(None);
        }
        // SAFETY: `abs..abs+n` is inside the mapping (checked above) and `v` has capacity for
        // `n` bytes that cannot overlap the mapping; after the copy those `n` bytes are
        // initialised, so `set_len(n)` exposes only initialised bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(abs), v.as_mut_ptr(), n);
            v.set_len(n);
        }
        Ok(Some(v))
    }

    /// Fill `len` window bytes at `off` with `byte`.
    pub fn fill_window(&self, off: u64, byte: u8, len: u64) -> Result<()> {
        let abs = self.window_range(off, len).ok_or(Error::WindowRange { off, len })?;
        // SAFETY: range checked by `window_range`; raw byte writes into our own mapping.
        unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(abs), byte, len as usize) };
        Ok(())
    }

    /// Raw pointer to window offset `off` with `len` bytes checked, for zero-copy users that
    /// uphold the region rules themselves (pinned memory, bulk copies into device memory).
    pub fn window_ptr(&self, off: u64, len: u64) -> Option<*mut u8> {
        let abs = self.window_range(off, len)?;
        // SAFETY: `abs` is inside the mapping (checked), so the offset pointer stays in bounds.
        Some(unsafe { self.map.as_mut_ptr().add(abs) })
    }
}

// SAFETY: a Region is a raw shared mapping accessed only through atomics, volatile copies and
// raw byte copies; no Rust references into it exist, so sharing it across threads is sound.
unsafe impl Send for Region {}
// SAFETY: see `Send`.
unsafe impl Sync for Region {}

/// A region backed by a fresh sealed memfd (host side): returns the fd to pass to the guest.
pub fn create(layout: Layout, session_id: u64) -> Result<(Region, OwnedFd)> {
    let fd = create_memfd("vgpu-region", layout.region_len)?;
    let r = Region::map_fd(&fd, layout.region_len, layout)?;
    r.init_header(session_id);
    Ok((r, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_sees_host_header_and_window_is_bounds_checked() {
        let layout = Layout::new(64, 1 << 20).unwrap();
        let (host, fd) = create(layout, 42).unwrap();
        check_sealed(fd.as_fd()).unwrap();
        let guest = Region::open_guest(&fd, layout.region_len).unwrap();
        assert_eq!(*guest.layout(), layout);
        assert_eq!(guest.read_u64(hdr::SESSION_ID), 42);
        guest.write_window(100, b"hello").unwrap();
        let mut b = [0u8; 5];
        host.read_window(100, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(host.read_window(layout.window_len - 2, &mut b).is_err());
        assert!(host.window_range(u64::MAX - 1, 4).is_none());
        assert!(host.window_range(layout.window_len, 0).is_some());
        assert!(host.window_range(layout.window_len + 1, 0).is_none());
    }

    #[test]
    fn guest_rejects_wrong_version() {
        let layout = Layout::new(64, 1 << 16).unwrap();
        let (host, fd) = create(layout, 1).unwrap();
        host.write_u32(hdr::VERSION, 99);
        let e = Region::open_guest(&fd, layout.region_len).unwrap_err().to_string();
        assert!(e.contains("v99") && e.contains(&format!("v{PROTOCOL_VERSION}")), "{e}");
    }
}
