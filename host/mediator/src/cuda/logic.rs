//! The cuda executor's pure logic: everything that does not touch the driver, so that it is
//! unit-tested on machines without a GPU. Driver result codes are plain `u32` here (the values of
//! `CUresult`).

use std::collections::HashMap;

use vgpu_transport::wire::{ParamInfo, Status, MAX_PARAMS, MAX_PARAM_BYTES};

/// `CUresult` values the executor treats specially.
pub mod code {
    pub const SUCCESS: u32 = 0;
    pub const INVALID_VALUE: u32 = 1;
    pub const OUT_OF_MEMORY: u32 = 2;
    pub const NO_DEVICE: u32 = 100;
    pub const INVALID_IMAGE: u32 = 200;
    pub const NO_BINARY_FOR_GPU: u32 = 209;
    pub const INVALID_HANDLE: u32 = 400;
    pub const NOT_FOUND: u32 = 500;
    pub const NOT_READY: u32 = 600;
    pub const ILLEGAL_ADDRESS: u32 = 700;
    pub const LAUNCH_OUT_OF_RESOURCES: u32 = 701;
    pub const LAUNCH_TIMEOUT: u32 = 702;
    pub const ASSERT: u32 = 710;
    pub const HARDWARE_STACK_ERROR: u32 = 714;
    pub const LAUNCH_FAILED: u32 = 719;
    pub const NOT_SUPPORTED: u32 = 801;
    pub const STREAM_CAPTURE_UNSUPPORTED: u32 = 900;
    pub const STREAM_CAPTURE_INVALIDATED: u32 = 901;
    pub const GRAPH_EXEC_UPDATE_FAILURE: u32 = 910;
    pub const UNKNOWN: u32 = 999;
}

/// A failed command: its status, and the driver's `CUresult` for `Completion::aux` (0 unless
/// the status is [`Status::DeviceError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fail(pub Status, pub u32);

impl From<Status> for Fail {
    fn from(s: Status) -> Fail {
        Fail(s, 0)
    }
}

impl Fail {
    /// The failure a driver result stands for (`code` is not `SUCCESS`).
    pub fn driver(code: u32) -> Fail {
        let (s, aux) = status_of(code);
        Fail(s, aux)
    }
}

/// Map a driver result to the wire: the statuses the protocol names get their own value, every
/// other error becomes `DeviceError` carrying the `CUresult` (the guest maps it to the cudaError
/// of the same value, which CUDA keeps equal for the asynchronous errors: 700, 719, ...).
pub fn status_of(c: u32) -> (Status, u32) {
    match c {
        code::SUCCESS => (Status::Ok, 0),
        code::NOT_READY => (Status::NotReady, 0),
        code::INVALID_VALUE => (Status::InvalidArgument, 0),
        code::OUT_OF_MEMORY => (Status::OutOfMemory, 0),
        code::INVALID_HANDLE => (Status::InvalidHandle, 0),
        code::NOT_FOUND => (Status::NotFound, 0),
        code::INVALID_IMAGE => (Status::InvalidImage, 0),
        code::NO_BINARY_FOR_GPU => (Status::NoKernelImage, 0),
        code::LAUNCH_OUT_OF_RESOURCES => (Status::LaunchOutOfResources, 0),
        code::NOT_SUPPORTED => (Status::NotSupported, 0),
        code::STREAM_CAPTURE_UNSUPPORTED => (Status::CaptureUnsupported, 0),
        code::STREAM_CAPTURE_INVALIDATED => (Status::CaptureInvalidated, 0),
        c => (Status::DeviceError, c),
    }
}

/// Errors after which the context is unusable ("sticky"): every later call fails the same way.
pub fn is_sticky(c: u32) -> bool {
    matches!(
        c,
        code::ILLEGAL_ADDRESS | code::LAUNCH_TIMEOUT | code::ASSERT | code::HARDWARE_STACK_ERROR..=code::LAUNCH_FAILED | code::UNKNOWN
    ) || c == 214 // CUDA_ERROR_ECC_UNCORRECTABLE
}

/// The driver's answer for `cuModuleLoadData` as the protocol wants it: a fatbin with nothing for
/// this GPU is NoKernelImage, a broken one InvalidImage; PTX the driver cannot JIT (too new:
/// 222, invalid: 218) keeps its code so the guest reports the same cudaError.
pub fn module_load_status(c: u32) -> Fail {
    Fail::driver(c)
}

/// Parameter layout of a kernel: offsets and sizes in the packed buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub params: Vec<ParamInfo>,
    /// Bytes a Launch must carry: the end of the last parameter.
    pub bytes: u32,
}

impl Params {
    /// Check a layout (from the driver or from the cubin) and compute its size. Every parameter
    /// lies inside `MAX_PARAM_BYTES`, and there are at most `MAX_PARAMS` of them.
    pub fn new(params: Vec<ParamInfo>) -> Result<Params, Status> {
        if params.len() > MAX_PARAMS {
            return Err(Status::InvalidImage);
        }
        let mut bytes = 0u64;
        for p in &params {
            let end = p.offset as u64 + p.size as u64;
            if end > MAX_PARAM_BYTES {
                return Err(Status::InvalidImage);
            }
            bytes = bytes.max(end);
        }
        Ok(Params { params, bytes: bytes as u32 })
    }

    /// Copy the guest's packed parameter bytes into 8-byte aligned storage (the offsets follow
    /// the C ABI, so every parameter lands at its natural alignment).
    pub fn storage(&self, packed: &[u8]) -> Result<Vec<u64>, Status> {
        if packed.len() != self.bytes as usize {
            return Err(Status::InvalidArgument);
        }
        let mut words = vec![0u64; packed.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(packed.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        Ok(words)
    }

    /// The `void** kernelParams` array: one pointer per parameter, at its offset in `storage`.
    /// Every offset + size lies inside `storage` ([`Params::new`] and [`Params::storage`]).
    pub fn pointers(&self, storage: &mut [u64]) -> Vec<*mut std::ffi::c_void> {
        let base = storage.as_mut_ptr().cast::<u8>();
        let len = storage.len() * 8;
        self.params
            .iter()
            .map(|p| {
                let off = (p.offset as usize).min(len);
                base.wrapping_add(off).cast::<std::ffi::c_void>()
            })
            .collect()
    }
}

/// A NUL-terminated name read from the window: the bytes before the first NUL. `None` if there
/// is none, or the name is empty.
pub fn c_name(buf: &[u8]) -> Option<std::ffi::CString> {
    let end = buf.iter().position(|&b| b == 0)?;
    if end == 0 {
        return None;
    }
    std::ffi::CString::new(&buf[..end]).ok()
}

/// A handle table: values never reused within a session, a bound on live entries.
pub struct Table<T> {
    map: HashMap<u64, T>,
    max: usize,
}

impl<T> Table<T> {
    pub fn new(max: usize) -> Table<T> {
        Table { map: HashMap::new(), max }
    }
    /// Insert under a fresh handle from `next` (shared by the tables of a session, so a handle
    /// of one kind is never valid as another).
    pub fn insert(&mut self, next: &mut u64, v: T) -> Result<u64, T> {
        if self.map.len() >= self.max {
            return Err(v);
        }
        *next += 1;
        self.map.insert(*next, v);
        Ok(*next)
    }
    pub fn get(&self, h: u64) -> Result<&T, Status> {
        self.map.get(&h).ok_or(Status::InvalidHandle)
    }
    pub fn get_mut(&mut self, h: u64) -> Result<&mut T, Status> {
        self.map.get_mut(&h).ok_or(Status::InvalidHandle)
    }
    pub fn remove(&mut self, h: u64) -> Result<T, Status> {
        self.map.remove(&h).ok_or(Status::InvalidHandle)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, T)> + '_ {
        self.map.drain()
    }
    pub fn retain(&mut self, f: impl FnMut(&u64, &mut T) -> bool) {
        self.map.retain(f)
    }
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.map.values()
    }
}

/// Device ranges the guest may name: allocations (freeable) and module globals (not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    Alloc,
    /// A `__device__`/`__constant__` variable of the module with this handle.
    Symbol(u64),
}

/// The session's device ranges, for `dev(a, l)` checks.
#[derive(Default)]
pub struct Ranges {
    map: std::collections::BTreeMap<u64, (u64, MemKind)>,
}

impl Ranges {
    pub fn insert(&mut self, base: u64, len: u64, kind: MemKind) {
        self.map.insert(base, (len, kind));
    }
    /// Whether `[ptr, ptr+len)` lies inside one live range. A zero length needs no range.
    pub fn contains(&self, ptr: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some((base, (l, _))) = self.map.range(..=ptr).next_back() else { return false };
        match ptr.checked_add(len) {
            Some(end) => end <= base + l,
            None => false,
        }
    }
    /// Remove the allocation starting at `base`; `None` if `base` is not one (a symbol is not).
    pub fn remove_alloc(&mut self, base: u64) -> Option<u64> {
        match self.map.get(&base) {
            Some((l, MemKind::Alloc)) => {
                let l = *l;
                self.map.remove(&base);
                Some(l)
            }
            _ => None,
        }
    }
    /// Forget the globals of a module.
    pub fn remove_module(&mut self, module: u64) {
        self.map.retain(|_, (_, k)| *k != MemKind::Symbol(module));
    }
    pub fn allocs(&self) -> impl Iterator<Item = u64> + '_ {
        self.map.iter().filter(|(_, (_, k))| *k == MemKind::Alloc).map(|(b, _)| *b)
    }
    pub fn clear(&mut self) {
        self.map.clear()
    }
    pub fn alloc_count(&self) -> usize {
        self.map.values().filter(|(_, k)| *k == MemKind::Alloc).count()
    }
}

/// Host-function tokens: which flag word each live token waits on, and the value that releases
/// it. A word is reused only after its stream has passed the wait; each use waits for the next
/// value of the word (a wrapping counter), so a late signal of an old token cannot release a new
/// one.
pub struct TokenSlots {
    live: HashMap<u64, (usize, u32)>,
    free: Vec<usize>,
    last: Vec<u32>,
    cap: usize,
}

impl TokenSlots {
    pub fn new(cap: usize) -> TokenSlots {
        TokenSlots { live: HashMap::new(), free: Vec::new(), last: Vec::new(), cap }
    }
    /// Make `token` live: `(slot, value to wait for)`.
    pub fn open(&mut self, token: u64) -> Result<(usize, u32), Status> {
        if token == 0 || self.live.contains_key(&token) {
            return Err(Status::InvalidArgument);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.last.len() < self.cap => {
                self.last.push(0);
                self.last.len() - 1
            }
            None => return Err(Status::QuotaExceeded),
        };
        let target = self.last[slot].wrapping_add(1);
        self.last[slot] = target;
        self.live.insert(token, (slot, target));
        Ok((slot, target))
    }
    /// The slot and value a signal of `token` writes.
    pub fn signal(&self, token: u64) -> Result<(usize, u32), Status> {
        self.live.get(&token).copied().ok_or(Status::InvalidHandle)
    }
    /// The stream has passed the wait (or it was never queued): the token is no longer live.
    pub fn close(&mut self, token: u64) {
        if let Some((slot, _)) = self.live.remove(&token) {
            self.free.push(slot);
        }
    }
    /// Every live token's slot and value (to release them all at session end).
    pub fn all(&self) -> Vec<(usize, u32)> {
        self.live.values().copied().collect()
    }
    pub fn live(&self) -> usize {
        self.live.len()
    }
}

/// First-fit allocator of byte ranges in a fixed arena (the pinned bounce buffer): offsets
/// aligned to `align`, neighbours merged on free.
pub struct FreeList {
    free: std::collections::BTreeMap<u64, u64>,
    align: u64,
}

impl FreeList {
    pub fn new(len: u64, align: u64) -> FreeList {
        let mut free = std::collections::BTreeMap::new();
        if len > 0 {
            free.insert(0, len);
        }
        FreeList { free, align: align.max(1) }
    }

    /// A range of `n` bytes (rounded up to the alignment); `None` when no free range fits.
    pub fn alloc(&mut self, n: u64) -> Option<(u64, u64)> {
        let n = n.max(1).checked_next_multiple_of(self.align)?;
        let (&off, &len) = self.free.iter().find(|(_, &l)| l >= n)?;
        self.free.remove(&off);
        if len > n {
            self.free.insert(off + n, len - n);
        }
        Some((off, n))
    }

    /// Return a range `alloc` gave.
    pub fn free(&mut self, off: u64, n: u64) {
        let (mut off, mut n) = (off, n);
        if let Some((&p, &pl)) = self.free.range(..off).next_back() {
            if p + pl == off {
                self.free.remove(&p);
                off = p;
                n += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(off + n)) {
            self.free.remove(&(off + n));
            n += nl;
        }
        self.free.insert(off, n);
    }

    /// Free bytes in all.
    pub fn available(&self) -> u64 {
        self.free.values().sum()
    }
}

/// The `CUfunction_attribute` a FuncSetAttr names (the cudaFuncAttribute values 8..=15 are the
/// same numbers); `None` for anything else.
pub fn settable_func_attr(a: u64) -> Option<u32> {
    (8..=15).contains(&a).then_some(a as u32)
}

/// A FuncSetAttr value: the bits of an i32 in the low 32 bits, the rest zero (as emu).
pub fn i32_arg(v: u64) -> Option<i32> {
    u32::try_from(v).ok().map(|v| v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(offset: u32, size: u32) -> ParamInfo {
        ParamInfo { offset, size }
    }

    #[test]
    fn params_pack_at_their_offsets() {
        // kernel(float* a, int n, double d, char c): 0..8, 8..12, 16..24, 24..25.
        let l = Params::new(vec![p(0, 8), p(8, 4), p(16, 8), p(24, 1)]).unwrap();
        assert_eq!(l.bytes, 25);
        let mut packed = vec![0u8; 25];
        packed[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        packed[8..12].copy_from_slice(&42i32.to_le_bytes());
        packed[16..24].copy_from_slice(&1.5f64.to_le_bytes());
        packed[24] = b'x';
        let mut st = l.storage(&packed).unwrap();
        assert_eq!(st.len(), 4);
        let ptrs = l.pointers(&mut st);
        assert_eq!(ptrs.len(), 4);
        // SAFETY: each pointer points into `st` at a parameter's offset, inside its length,
        // aligned to the parameter's natural alignment (storage is 8-aligned).
        unsafe {
            assert_eq!(*ptrs[0].cast::<u64>(), 0x1122_3344_5566_7788);
            assert_eq!(*ptrs[1].cast::<i32>(), 42);
            assert_eq!(*ptrs[2].cast::<f64>(), 1.5);
            assert_eq!(*ptrs[3].cast::<u8>(), b'x');
        }
        assert_eq!(l.storage(&packed[..24]), Err(Status::InvalidArgument));
    }

    #[test]
    fn params_without_parameters_and_bounds() {
        let l = Params::new(vec![]).unwrap();
        assert_eq!(l.bytes, 0);
        let mut st = l.storage(&[]).unwrap();
        assert!(l.pointers(&mut st).is_empty());
        assert_eq!(Params::new(vec![p(32760, 8)]), Err(Status::InvalidImage));
        assert!(Params::new(vec![p(32760, 4)]).is_ok());
        assert_eq!(Params::new(vec![p(0, 4); MAX_PARAMS + 1]), Err(Status::InvalidImage));
    }

    #[test]
    fn error_mapping() {
        assert_eq!(status_of(0), (Status::Ok, 0));
        assert_eq!(status_of(209), (Status::NoKernelImage, 0));
        assert_eq!(status_of(200), (Status::InvalidImage, 0));
        assert_eq!(status_of(500), (Status::NotFound, 0));
        assert_eq!(status_of(701), (Status::LaunchOutOfResources, 0));
        assert_eq!(status_of(700), (Status::DeviceError, 700));
        assert_eq!(status_of(222), (Status::DeviceError, 222));
        assert_eq!(status_of(901), (Status::CaptureInvalidated, 0));
        assert_eq!(Fail::driver(2), Fail(Status::OutOfMemory, 0));
        assert!(is_sticky(700) && is_sticky(719) && is_sticky(716) && !is_sticky(1) && !is_sticky(701) && !is_sticky(600));
    }

    #[test]
    fn names_from_the_window() {
        assert_eq!(c_name(b"_Z6kernelPfi\0junk").unwrap().as_bytes(), b"_Z6kernelPfi");
        assert!(c_name(b"no terminator").is_none());
        assert!(c_name(b"\0").is_none());
    }

    #[test]
    fn tables_never_reuse_handles() {
        let mut next = 0;
        let mut t: Table<&str> = Table::new(2);
        let a = t.insert(&mut next, "a").unwrap();
        let b = t.insert(&mut next, "b").unwrap();
        assert!(t.insert(&mut next, "c").is_err());
        assert_eq!(t.remove(a), Ok("a"));
        let c = t.insert(&mut next, "c").unwrap();
        assert!(c != a && c != b && a != 0);
        assert_eq!(t.get(a), Err(Status::InvalidHandle));
    }

    #[test]
    fn ranges() {
        let mut r = Ranges::default();
        r.insert(0x1000, 0x100, MemKind::Alloc);
        r.insert(0x2000, 0x10, MemKind::Symbol(7));
        assert!(r.contains(0x1000, 0x100) && r.contains(0x10ff, 1) && r.contains(0x2008, 8));
        assert!(!r.contains(0x10ff, 2) && !r.contains(0xfff, 1) && !r.contains(u64::MAX, 2));
        assert!(r.contains(0xdead, 0));
        assert_eq!(r.remove_alloc(0x2000), None);
        r.remove_module(7);
        assert!(!r.contains(0x2000, 1));
        assert_eq!(r.remove_alloc(0x1000), Some(0x100));
        assert!(!r.contains(0x1000, 1));
    }

    #[test]
    fn token_slots() {
        let mut t = TokenSlots::new(2);
        assert_eq!(t.open(0), Err(Status::InvalidArgument));
        let (s1, v1) = t.open(10).unwrap();
        assert_eq!(t.open(10), Err(Status::InvalidArgument));
        let (s2, _) = t.open(11).unwrap();
        assert_ne!(s1, s2);
        assert_eq!(t.open(12), Err(Status::QuotaExceeded));
        assert_eq!(t.signal(10), Ok((s1, v1)));
        t.close(10);
        assert_eq!(t.signal(10), Err(Status::InvalidHandle));
        let (s3, v3) = t.open(12).unwrap();
        assert_eq!(s3, s1);
        assert_eq!(v3, v1.wrapping_add(1));
        assert_eq!(t.live(), 2);
    }

    #[test]
    fn free_list() {
        let mut f = FreeList::new(4096, 256);
        let a = f.alloc(1).unwrap();
        assert_eq!(a, (0, 256));
        let b = f.alloc(1000).unwrap();
        assert_eq!(b, (256, 1024));
        let c = f.alloc(2816).unwrap();
        assert_eq!(c, (1280, 2816));
        assert!(f.alloc(1).is_none());
        f.free(b.0, b.1);
        assert!(f.alloc(1025).is_none());
        f.free(a.0, a.1);
        assert_eq!(f.alloc(1280).unwrap(), (0, 1280));
        f.free(0, 1280);
        f.free(c.0, c.1);
        assert_eq!(f.available(), 4096);
        assert_eq!(f.alloc(4096).unwrap(), (0, 4096));
        assert!(FreeList::new(0, 256).alloc(1).is_none());
        assert!(FreeList::new(4096, 256).alloc(u64::MAX).is_none());
    }

    #[test]
    fn attribute_arguments() {
        assert_eq!(settable_func_attr(8), Some(8));
        assert_eq!(settable_func_attr(7), None);
        assert_eq!(settable_func_attr(16), None);
        assert_eq!(i32_arg(5), Some(5));
        assert_eq!(i32_arg(0xffff_ffff), Some(-1));
        assert_eq!(i32_arg(-1i64 as u64), None);
        assert_eq!(i32_arg(1 << 40), None);
    }
}
