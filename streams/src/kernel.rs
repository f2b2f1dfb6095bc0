//! Kernels: the nvcc registration ABI recorded locally, lazy module upload, function information,
//! launches, symbols and occupancy.
//!
//! # Registration (load time, no I/O)
//! nvcc's start-up code calls `__cudaRegisterFatBinary` for every translation unit, then
//! `__cudaRegisterFunction`/`__cudaRegisterVar` for its kernels and variables. Those land in the
//! process-wide registry ([`register_fatbin`], [`register_function`], [`register_var`]) as
//! pointers and names only: nothing is read from the fatbin and nothing is sent. A library that
//! registers 141 modules and launches from 3 of them uploads 3.
//!
//! # First use on a context (the contract's "Flow (guest)")
//! The first launch, attribute query or symbol access of a module on a [`Context`] hashes the
//! fatbin container ([`vgpu_transport::wire::module_hash`]) and asks the host to load it by hash
//! (`ModuleLoad` with upload id 0). On `NotFound` it uploads the image in staging-chunk sized
//! `ModuleData` parts and loads it again with the upload id. Then `FuncGet` fetches the
//! function's handle, [`FuncInfo`] and [`ParamInfo`] table once; every later launch of that
//! function on the context is local work plus one fire-and-forget `Launch`.
//!
//! # Launch
//! Grid and block are checked locally first (a zero dimension, more than 1024 threads per block,
//! grid y/z above 65535: `cudaErrorInvalidConfiguration` without a round trip). The `void**`
//! arguments are packed with the parameter table (zero padding) into the context's open staging
//! chunk, shared with small pageable copies, and the `Launch` is fired; its errors surface at the
//! next synchronising call, as CUDA's do.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CStr, CString};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};

use tracing::{debug, warn};
use vgpu_transport::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use vgpu_transport::wire::{self, launch, reply, req, Block, FuncInfo, Grid, ParamInfo, Status, Win};
use vgpu_transport::OnComplete;

use crate::context::{lock, Context};
use crate::error::{CudaError, Result};
use crate::{MemcpyKind, RawStream};

/// Magic of `__fatBinC_Wrapper_t` (what nvcc passes to `__cudaRegisterFatBinary`).
pub const WRAPPER_MAGIC: u32 = 0x4662_43b1;
/// Magic of a fatbin container.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;

/// Most threads per block on every device CUDA 12/13 supports.
pub const MAX_THREADS_PER_BLOCK: u32 = 1024;
/// Largest block z dimension.
pub const MAX_BLOCK_Z: u32 = 64;
/// Largest grid y and z dimensions.
pub const MAX_GRID_YZ: u32 = 65535;

// ---------------------------------------------------------------------------------------------
// The process-wide registry

/// Where a module's bytes are.
enum Source {
    /// The address of a `__fatBinC_Wrapper_t` in the program (registered by nvcc's start-up code).
    Wrapper(usize),
    /// A copy owned by the module (the Rust API's [`crate::Module`]).
    Bytes(Arc<[u8]>),
}

/// The fatbin container of a module: where it is, how long, its content hash.
#[derive(Clone, Copy, Debug)]
struct Image {
    ptr: usize,
    len: usize,
    hash: wire::ModuleHash,
}

/// A registered module (one fatbin container).
pub struct ModuleReg {
    /// Unique for the process lifetime (never reused, so stale caches never match).
    pub(crate) id: u64,
    source: Source,
    /// Located and hashed on first use (never at registration).
    image: OnceLock<std::result::Result<Image, CudaError>>,
    /// `__managed__` variables registered for this module.
    managed: AtomicUsize,
    live: AtomicBool,
}

impl std::fmt::Debug for ModuleReg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleReg").field("id", &self.id).finish()
    }
}

impl ModuleReg {
    fn new(source: Source) -> Arc<ModuleReg> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(ModuleReg {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            source,
            image: OnceLock::new(),
            managed: AtomicUsize::new(0),
            live: AtomicBool::new(true),
        })
    }

    /// A module over a copy of a fatbin container (or a whole `__fatBinC_Wrapper_t`-free
    /// `.nv_fatbin` image starting with a container).
    pub fn from_bytes(bytes: &[u8]) -> Arc<ModuleReg> {
        ModuleReg::new(Source::Bytes(bytes.into()))
    }

    fn image(&self) -> Result<Image> {
        *self.image.get_or_init(|| {
            let r = self.locate();
            if let Err(e) = &r {
                warn!(target: "vgpu::streams", module = self.id, "the registered fatbin is not usable: {e}");
            }
            r
        })
    }

    fn locate(&self) -> Result<Image> {
        let (ptr, avail) = match &self.source {
            Source::Bytes(b) => (b.as_ptr() as usize, Some(b.len())),
            Source::Wrapper(w) => {
                // SAFETY: nvcc's contract for `__cudaRegisterFatBinary`: `w` is the address of a
                // `__fatBinC_Wrapper_t` (24 bytes, 8-aligned) in the program's data, alive while
                // the module is registered. Read unaligned anyway; nothing is assumed about it.
                let (magic, data) = unsafe {
                    let p = *w as *const u8;
                    (p.cast::<u32>().read_unaligned(), p.add(8).cast::<u64>().read_unaligned())
                };
                if magic != WRAPPER_MAGIC || data == 0 {
                    return Err(CudaError::InvalidKernelImage);
                }
                (data as usize, None)
            }
        };
        if avail.is_some_and(|n| n < 16) {
            return Err(CudaError::InvalidKernelImage);
        }
        // SAFETY: `ptr` points at a fatbin container: either our own copy (at least 16 bytes,
        // checked) or the one nvcc's wrapper names, which lives in the program's data.
        let (magic, header_len, body_len) = unsafe {
            let p = ptr as *const u8;
            (p.cast::<u32>().read_unaligned(), p.add(6).cast::<u16>().read_unaligned(), p.add(8).cast::<u64>().read_unaligned())
        };
        if magic != FATBIN_MAGIC || header_len < 16 {
            return Err(CudaError::InvalidKernelImage);
        }
        let len = (header_len as u64).checked_add(body_len).filter(|&l| l <= wire::MAX_MODULE_LEN).ok_or(CudaError::InvalidKernelImage)?;
        if avail.is_some_and(|n| (n as u64) < len) {
            return Err(CudaError::InvalidKernelImage);
        }
        let len = len as usize;
        // SAFETY: the container is `len` bytes long (its own header says so, and for our copy
        // the length was checked above); it is not written while registered.
        let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        Ok(Image { ptr, len, hash: wire::module_hash(bytes) })
    }

    fn bytes(&self, img: &Image) -> &[u8] {
        // SAFETY: as in `locate`: `img` was located there and the bytes live as long as the
        // registration (or our own copy, owned by `self`).
        unsafe { std::slice::from_raw_parts(img.ptr as *const u8, img.len) }
    }
}

/// A function registered by `__cudaRegisterFunction`.
#[derive(Debug)]
struct FuncReg {
    module: Arc<ModuleReg>,
    name: CString,
}

/// A variable registered by `__cudaRegisterVar` / `__cudaRegisterManagedVar`.
#[derive(Debug)]
struct VarReg {
    module: Arc<ModuleReg>,
    name: CString,
    size: u64,
    constant: bool,
    managed: bool,
}

#[derive(Default)]
struct Registry {
    /// Handle given to nvcc (the address of a leaked cookie) → module.
    modules: HashMap<usize, Arc<ModuleReg>>,
    /// Host stub address → function.
    funcs: HashMap<usize, Arc<FuncReg>>,
    /// Host shadow variable address → variable.
    vars: HashMap<usize, Arc<VarReg>>,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| RwLock::new(Registry::default()));

fn registry() -> std::sync::RwLockReadGuard<'static, Registry> {
    REGISTRY.read().unwrap_or_else(|e| e.into_inner())
}

fn registry_mut() -> std::sync::RwLockWriteGuard<'static, Registry> {
    REGISTRY.write().unwrap_or_else(|e| e.into_inner())
}

/// `__cudaRegisterFatBinary`: record the wrapper's address; returns the handle nvcc keeps (the
/// address of a small leaked cookie, never dereferenced by us). No I/O, nothing is read.
pub fn register_fatbin(wrapper: usize) -> usize {
    let m = ModuleReg::new(Source::Wrapper(wrapper));
    let cookie = Box::into_raw(Box::new([m.id as usize, wrapper])) as usize;
    debug!(target: "vgpu::streams", module = m.id, wrapper, "fatbin registered");
    registry_mut().modules.insert(cookie, m);
    cookie
}

/// `__cudaUnregisterFatBinary`: forget the module, its functions and variables (a later
/// library may reuse their addresses). Nothing is sent: nvcc calls this from `atexit`, when
/// thread-locals (logging's among them) are already gone, and the host frees a session's modules
/// when it ends.
pub fn unregister_fatbin(handle: usize) {
    let m = {
        let mut r = registry_mut();
        let Some(m) = r.modules.remove(&handle) else { return };
        r.funcs.retain(|_, f| f.module.id != m.id);
        r.vars.retain(|_, v| v.module.id != m.id);
        m
    };
    m.live.store(false, Ordering::Release);
    if let Some(c) = Context::global_if_connected() {
        c.forget_module(m.id, false);
    }
}

/// `__cudaRegisterFunction`. Unknown handles are ignored (logged).
pub fn register_function(handle: usize, host_fun: usize, name: &CStr) {
    let mut r = registry_mut();
    let Some(m) = r.modules.get(&handle).cloned() else {
        warn!(target: "vgpu::streams", handle, "__cudaRegisterFunction with an unknown module handle; ignored");
        return;
    };
    r.funcs.insert(host_fun, Arc::new(FuncReg { module: m, name: name.to_owned() }));
}

/// `__cudaRegisterVar` (`managed` = false) and `__cudaRegisterManagedVar` (true).
pub fn register_var(handle: usize, host_var: usize, name: &CStr, size: u64, constant: bool, managed: bool) {
    let mut r = registry_mut();
    let Some(m) = r.modules.get(&handle).cloned() else {
        warn!(target: "vgpu::streams", handle, "__cudaRegisterVar with an unknown module handle; ignored");
        return;
    };
    if managed {
        m.managed.fetch_add(1, Ordering::Relaxed);
    }
    r.vars.insert(host_var, Arc::new(VarReg { module: m, name: name.to_owned(), size, constant, managed }));
}

/// `__cudaInitModule`: `true` for a known module without managed variables. Managed memory is
/// not supported; a module with `__managed__` variables answers `false` (logged).
pub fn init_module(handle: usize) -> bool {
    let Some(m) = registry().modules.get(&handle).cloned() else { return false };
    if m.managed.load(Ordering::Relaxed) > 0 {
        warn!(target: "vgpu::streams", module = m.id, "__cudaInitModule: the module has __managed__ variables, which vgpu does not support");
        return false;
    }
    true
}

/// `__cudaGetKernel`: the kernel handle of a registered host stub is the stub's address (local).
pub fn kernel_handle(host_fun: usize) -> Result<usize> {
    crate::error::record(if registry().funcs.contains_key(&host_fun) { Ok(host_fun) } else { Err(CudaError::InvalidDeviceFunction) })
}

/// Number of registered modules, functions and variables (for tests and logs).
pub fn registered() -> (usize, usize, usize) {
    let r = registry();
    (r.modules.len(), r.funcs.len(), r.vars.len())
}

fn func_reg(host_fun: usize) -> Result<Arc<FuncReg>> {
    registry().funcs.get(&host_fun).cloned().ok_or(CudaError::InvalidDeviceFunction)
}

fn var_reg(host_var: usize) -> Result<Arc<VarReg>> {
    registry().vars.get(&host_var).cloned().ok_or(CudaError::InvalidSymbol)
}

// ---------------------------------------------------------------------------------------------
// Call configuration (`<<<...>>>`): thread-local, no round trip

/// One `<<<grid, block, shared, stream>>>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared: u64,
    pub stream: RawStream,
}

thread_local! {
    static CONFIGS: std::cell::RefCell<Vec<CallConfig>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `__cudaPushCallConfiguration`.
pub fn push_call_configuration(c: CallConfig) {
    CONFIGS.with(|s| s.borrow_mut().push(c));
}

/// `__cudaPopCallConfiguration`: `None` if nothing was pushed (`cudaErrorMissingConfiguration`).
pub fn pop_call_configuration() -> Option<CallConfig> {
    CONFIGS.with(|s| s.borrow_mut().pop())
}

// ---------------------------------------------------------------------------------------------
// Per-context state

/// A function loaded on a context: its host handle, what the host told about it, and what the
/// guest set on it.
#[derive(Debug)]
pub struct Func {
    pub(crate) handle: u64,
    pub(crate) module_id: u64,
    pub(crate) name: CString,
    pub(crate) params: Box<[ParamInfo]>,
    info: Mutex<FuncInfo>,
    /// Cluster attributes set with `cudaFuncSetAttribute` (ids 10..=15), reported back.
    cluster: Mutex<[i32; 6]>,
    occupancy: Mutex<HashMap<(i32, u64, u32), i32>>,
}

impl Func {
    /// The current [`FuncInfo`] (attributes set since are included).
    pub fn info(&self) -> FuncInfo {
        *lock(&self.info)
    }

    /// The parameter table.
    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// The device (mangled) name.
    pub fn name(&self) -> &CStr {
        &self.name
    }

    /// `[clusterDimMustBeSet, requiredClusterWidth, requiredClusterHeight, requiredClusterDepth,
    /// clusterSchedulingPolicyPreference, nonPortableClusterSizeAllowed]` as last set.
    pub fn cluster_attributes(&self) -> [i32; 6] {
        *lock(&self.cluster)
    }
}

/// Kernel state of one context.
#[derive(Debug, Default)]
pub(crate) struct KernelState {
    /// Module id → host module handle, or the error loading it gave for good (no image for
    /// this device, not an image): a module is never uploaded twice to learn that again.
    modules: Mutex<HashMap<u64, Result<u64>>>,
    /// Host stub → function (process-wide context only; cleared per module on unregister).
    by_host: Mutex<HashMap<usize, Arc<Func>>>,
    /// (module id, name) → function.
    by_name: Mutex<HashMap<(u64, CString), Arc<Func>>>,
    /// Host shadow variable → (device address, size, module id).
    symbols: Mutex<HashMap<usize, (u64, u64, u64)>>,
    /// Device ranges of symbols (base → size): valid device memory for copies.
    pub(crate) symbol_ranges: Mutex<BTreeMap<u64, u64>>,
    /// Serialises first-use loading (module upload, FuncGet) on this context.
    loading: Mutex<()>,
    next_upload: AtomicU64,
    /// Modules loaded by hash (the host had them) and uploaded, for tests and logs.
    pub(crate) loaded_by_hash: AtomicU64,
    pub(crate) uploaded: AtomicU64,
}

/// Launch parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared: u64,
    pub stream: RawStream,
    /// `cudaLaunchCooperativeKernel` / `cudaLaunchAttributeCooperative`.
    pub cooperative: bool,
}

/// `cudaErrorInvalidConfiguration` for dimensions no device accepts (checked before anything is
/// sent): a zero dimension, a block over 1024 threads (or x/y over 1024, z over 64), grid x over
/// 2^31-1 or y/z over 65535.
pub fn check_dims(grid: [u32; 3], block: [u32; 3]) -> Result<()> {
    // Saturating: three u32 dimensions can overflow a u64 product.
    let threads = block.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
    let bad = grid.contains(&0)
        || block.contains(&0)
        || threads > MAX_THREADS_PER_BLOCK as u64
        || block[0] > MAX_THREADS_PER_BLOCK
        || block[1] > MAX_THREADS_PER_BLOCK
        || block[2] > MAX_BLOCK_Z
        || grid[0] > i32::MAX as u32
        || grid[1] > MAX_GRID_YZ
        || grid[2] > MAX_GRID_YZ;
    if bad {
        Err(CudaError::InvalidConfiguration)
    } else {
        Ok(())
    }
}

/// Pack kernel arguments with the parameter table: `arg(i)` gives parameter `i`'s bytes (at
/// least its size; extra bytes are ignored). Gaps are zero.
pub fn pack_params<'a>(func: &Func, mut arg: impl FnMut(usize, usize) -> Result<&'a [u8]>) -> Result<Vec<u8>> {
    let total = lock(&func.info).param_bytes as usize;
    let mut buf = vec![0u8; total];
    for (i, p) in func.params.iter().enumerate() {
        let (off, size) = (p.offset as usize, p.size as usize);
        let src = arg(i, size)?;
        if src.len() < size || off + size > total {
            return Err(CudaError::InvalidValue);
        }
        buf[off..off + size].copy_from_slice(&src[..size]);
    }
    Ok(buf)
}

/// Pack C `void** args` (nvcc's launch stubs, `cudaLaunchKernel`).
///
/// # Safety
/// `args` is null (only for a function without parameters) or points at one valid pointer per
/// parameter, each to at least the parameter's size in bytes, as CUDA requires.
pub unsafe fn pack_c_args(func: &Func, args: *const *const c_void) -> Result<Vec<u8>> {
    if func.params.is_empty() {
        return Ok(Vec::new());
    }
    if args.is_null() {
        return Err(CudaError::InvalidValue);
    }
    pack_params(func, |i, size| {
        // SAFETY: the caller's contract: `args[i]` exists and points at `size` readable bytes.
        let p = unsafe { *args.add(i) };
        if p.is_null() {
            return Err(CudaError::InvalidValue);
        }
        // SAFETY: as above.
        Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size) })
    })
}

fn raw_status(e: &vgpu_transport::Error) -> Option<Status> {
    match e {
        vgpu_transport::Error::Call { status, .. } => Some(*status),
        _ => None,
    }
}

impl Context {
    /// The host handle of `module` on this context, loading it (by hash, else by upload) on
    /// first use.
    pub(crate) fn ensure_module(&self, module: &ModuleReg) -> Result<u64> {
        if let Some(&h) = lock(&self.kern.modules).get(&module.id) {
            return h;
        }
        self.sticky()?;
        let _g = lock(&self.kern.loading);
        if let Some(&h) = lock(&self.kern.modules).get(&module.id) {
            return h;
        }
        if !module.live.load(Ordering::Acquire) {
            return Err(CudaError::InvalidDeviceFunction);
        }
        let r = self.load_module(module);
        let for_good = matches!(r, Err(CudaError::InvalidKernelImage | CudaError::NoKernelImageForDevice | CudaError::NotSupported));
        if r.is_ok() || for_good {
            if let Err(e) = r {
                warn!(target: "vgpu::streams", module = module.id, "the module cannot be loaded on this device: {e}");
            }
            lock(&self.kern.modules).insert(module.id, r);
        }
        r
    }

    fn load_module(&self, module: &ModuleReg) -> Result<u64> {
        let img = module.image()?;
        let by_hash = self.client.call_blocking_req(0, req::ModuleLoad { upload: 0, len: img.len as u64, hash: img.hash });
        match by_hash {
            Ok(r) => {
                self.kern.loaded_by_hash.fetch_add(1, Ordering::Relaxed);
                debug!(target: "vgpu::streams", module = module.id, hash = format_args!("{:x}", img.hash), "module loaded by hash");
                Ok(r.module)
            }
            Err(e) if raw_status(&e) == Some(Status::NotFound) => {
                let id = self.upload_module(module, &img)?;
                let r = self.call(0, req::ModuleLoad { upload: id, len: img.len as u64, hash: img.hash })?;
                self.kern.uploaded.fetch_add(1, Ordering::Relaxed);
                debug!(target: "vgpu::streams", module = module.id, hash = format_args!("{:x}", img.hash), len = img.len, "module uploaded and loaded");
                Ok(r.module)
            }
            Err(e) => Err(self.convert(&e)),
        }
    }

    /// Send the image in `ModuleData` parts of one staging chunk each (pipelined); returns the
    /// upload id once the host has every part.
    fn upload_module(&self, module: &ModuleReg, img: &Image) -> Result<u64> {
        let id = self.kern.next_upload.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = module.bytes(img);
        let staging = self.client.staging();
        let chunk = staging.chunk_len() as usize;
        self.close_open_chunk();
        let mut tickets = Vec::new();
        let mut first = Ok(());
        for (i, part) in bytes.chunks(chunk).enumerate() {
            let off = match self.check(self.client.acquire_staging()) {
                Ok(o) => o,
                Err(e) => {
                    first = Err(e);
                    break;
                }
            };
            if let Err(e) = self.check(self.client.region().write_window(off, part)) {
                staging.release(off);
                first = Err(e);
                break;
            }
            let release: OnComplete = Box::new(move |_, s, _| s.release(off));
            let r = req::ModuleData { upload: id, part: Win::new(off, part.len() as u64), at: (i * chunk) as u64, total: img.len as u64 };
            match self.check(self.client.submit_then_req(0, r, release)) {
                Ok(t) => tickets.push(t),
                Err(e) => {
                    first = Err(e);
                    break;
                }
            }
        }
        self.client.stats().blocking_waits.fetch_add(1, Ordering::Relaxed);
        for t in tickets {
            if let Err(e) = t.wait() {
                let e = self.convert(&e);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first.map(|_| id)
    }

    /// The module was unregistered: drop what this context knows of it and, with `unload`,
    /// unload it on the host (fire-and-forget).
    pub(crate) fn forget_module(&self, module_id: u64, unload: bool) {
        lock(&self.kern.by_host).retain(|_, f| f.module_id != module_id);
        let handle = lock(&self.kern.modules).remove(&module_id);
        lock(&self.kern.by_name).retain(|(m, _), _| *m != module_id);
        let dead: Vec<u64> = {
            let mut s = lock(&self.kern.symbols);
            let dead = s.values().filter(|(_, _, m)| *m == module_id).map(|(a, _, _)| *a).collect();
            s.retain(|_, (_, _, m)| *m != module_id);
            dead
        };
        let mut ranges = lock(&self.kern.symbol_ranges);
        for a in dead {
            ranges.remove(&a);
        }
        drop(ranges);
        if let (Some(Ok(h)), true) = (handle, unload) {
            let _ = self.fire(0, req::ModuleUnload { module: h });
        }
    }

    /// The function `name` of `module` on this context (loading the module, then one `FuncGet`,
    /// on first use).
    pub(crate) fn function_by_name(&self, module: &Arc<ModuleReg>, name: &CStr) -> Result<Arc<Func>> {
        let key = (module.id, name.to_owned());
        if let Some(f) = lock(&self.kern.by_name).get(&key) {
            return Ok(f.clone());
        }
        let mh = self.ensure_module(module)?;
        let _g = lock(&self.kern.loading);
        if let Some(f) = lock(&self.kern.by_name).get(&key) {
            return Ok(f.clone());
        }
        let f = Arc::new(self.func_get(mh, module.id, name)?);
        lock(&self.kern.by_name).insert(key, f.clone());
        Ok(f)
    }

    /// One `FuncGet` round trip through a whole staging chunk.
    fn func_get(&self, module: u64, module_id: u64, name: &CStr) -> Result<Func> {
        let name_bytes = name.to_bytes_with_nul();
        let staging = self.client.staging();
        let chunk = staging.chunk_len();
        if name_bytes.len() as u64 > chunk {
            return Err(CudaError::InvalidDeviceFunction);
        }
        self.close_open_chunk();
        let off = self.check(self.client.acquire_staging())?;
        let r = (|| {
            self.check(self.client.region().write_window(off, name_bytes))?;
            let r = match self.client.call_blocking_req(0, req::FuncGet { module, buf: Win::new(off, chunk) }) {
                Ok(r) => r,
                Err(e) if raw_status(&e) == Some(Status::NotFound) => return Err(CudaError::InvalidDeviceFunction),
                Err(e) => return Err(self.convert(&e)),
            };
            let written = r.written.min(chunk) as usize;
            let mut bytes = vec![0u8; written];
            self.check(self.client.region().read_window(off, &mut bytes))?;
            // A host answer that does not decode or breaks the limits is the host's fault.
            let (info, params) = wire::decode_func_info(&bytes).ok_or(CudaError::Unknown)?;
            if info.param_bytes as u64 > wire::MAX_PARAM_BYTES {
                return Err(CudaError::Unknown);
            }
            let params: Box<[ParamInfo]> = params.into();
            if params.iter().any(|p| p.offset as u64 + p.size as u64 > info.param_bytes as u64) {
                return Err(CudaError::Unknown);
            }
            Ok(Func {
                handle: r.func,
                module_id,
                name: name.to_owned(),
                params,
                info: Mutex::new(info),
                cluster: Mutex::new([0; 6]),
                occupancy: Mutex::new(HashMap::new()),
            })
        })();
        staging.release(off);
        r
    }

    /// The function registered for host stub `host_fun` (process-wide registry), loaded on this
    /// context on first use.
    pub fn function(&self, host_fun: usize) -> Result<Arc<Func>> {
        if let Some(f) = lock(&self.kern.by_host).get(&host_fun) {
            return Ok(f.clone());
        }
        let reg = func_reg(host_fun)?;
        let f = self.function_by_name(&reg.module, &reg.name)?;
        lock(&self.kern.by_host).insert(host_fun, f.clone());
        Ok(f)
    }

    /// Launch `func` with packed parameters (fire-and-forget).
    pub(crate) fn launch_packed(self: &Arc<Self>, func: &Func, cfg: &LaunchConfig, params: &[u8]) -> Result<()> {
        check_dims(cfg.grid, cfg.block)?;
        let flags = if cfg.cooperative { launch::COOPERATIVE } else { 0 };
        let grid = Grid::new(cfg.grid[0], cfg.grid[1], cfg.grid[2]).ok_or(CudaError::InvalidConfiguration)?;
        let block = Block::new(cfg.block[0], cfg.block[1], cfg.block[2], flags).ok_or(CudaError::InvalidConfiguration)?;
        let info = *lock(&func.info);
        if params.len() != info.param_bytes as usize {
            return Err(CudaError::InvalidValue);
        }
        // More threads than the function can run with (`__launch_bounds__`, registers): CUDA
        // refuses the launch at the call.
        let threads = cfg.block.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        if info.max_threads_per_block != 0 && threads > info.max_threads_per_block as u64 {
            return Err(CudaError::LaunchOutOfResources);
        }
        let h = self.host_stream(cfg.stream)?;
        self.capture_check(h, true)?;
        self.sticky()?;
        let r = req::Launch { func: func.handle, grid, block, shared: cfg.shared, params: Win::default() };
        if params.is_empty() {
            return self.fire(h, r);
        }
        let (woff, done) = self.stage_small(params)?;
        let r = req::Launch { params: Win::new(woff, params.len() as u64), ..r };
        self.check(self.client.fire_then_req(h, r, done))
    }

    /// `cudaLaunchKernel` and friends: `args` is C's `void**`.
    ///
    /// # Safety
    /// As [`pack_c_args`].
    pub unsafe fn launch_c(self: &Arc<Self>, host_fun: usize, cfg: &LaunchConfig, args: *const *const c_void) -> Result<()> {
        // Configuration errors come first and cost nothing.
        check_dims(cfg.grid, cfg.block)?;
        let f = self.function(host_fun)?;
        // SAFETY: forwarded caller guarantee.
        let params = unsafe { pack_c_args(&f, args)? };
        self.launch_packed(&f, cfg, &params)
    }

    /// `cudaFuncSetAttribute`: one round trip; the cached attributes follow.
    pub fn func_set_attribute(&self, func: &Func, attr: u32, value: i32) -> Result<()> {
        if !(8..=15).contains(&attr) || (attr == 8 && value < 0) || (attr == 9 && !(-1..=100).contains(&value)) {
            return Err(CudaError::InvalidValue);
        }
        self.call(0, req::FuncSetAttr { func: func.handle, attr: attr.into(), value: value as u32 })?;
        match attr {
            8 => lock(&func.info).max_dynamic_shared_size_bytes = value as u32,
            9 => lock(&func.info).preferred_shmem_carveout = value,
            a => lock(&func.cluster)[(a - 10) as usize] = value,
        }
        lock(&func.occupancy).clear();
        Ok(())
    }

    /// `cudaOccupancyMaxActiveBlocksPerMultiprocessor[WithFlags]`: one round trip per distinct
    /// (block size, shared memory, flags) of a function, then cached.
    pub fn occupancy(&self, func: &Func, block_size: i32, shared: u64, flags: u32) -> Result<i32> {
        if flags & !1 != 0 || block_size <= 0 {
            return Err(CudaError::InvalidValue);
        }
        if let Some(&n) = lock(&func.occupancy).get(&(block_size, shared, flags)) {
            return Ok(n);
        }
        let r = self.call(0, req::Occupancy { func: func.handle, block_threads: block_size as u64, shared, flags: flags.into() })?;
        let n = i32::try_from(r.blocks).map_err(|_| CudaError::Unknown)?;
        lock(&func.occupancy).insert((block_size, shared, flags), n);
        Ok(n)
    }

    /// `(device address, size)` of the variable registered for `host_var`: `SymbolGet` once per
    /// context. Managed variables are not supported.
    pub fn symbol(&self, host_var: usize) -> Result<(u64, u64)> {
        if let Some(&(a, s, _)) = lock(&self.kern.symbols).get(&host_var) {
            return Ok((a, s));
        }
        let v = var_reg(host_var)?;
        if v.managed {
            warn!(target: "vgpu::streams", name = ?v.name, "a __managed__ variable was used: managed memory is not supported by vgpu");
            return Err(CudaError::NotSupported);
        }
        let mh = self.ensure_module(&v.module)?;
        let name = v.name.to_bytes_with_nul();
        let (woff, done) = self.stage_small(name)?;
        let r = req::SymbolGet { module: mh, name: Win::new(woff, name.len() as u64), size: v.size };
        let t = self.check(self.client.submit_then_req(0, r, done))?;
        self.client.stats().blocking_waits.fetch_add(1, Ordering::Relaxed);
        let r = match t.wait_reply::<reply::SymbolGet>() {
            Ok(r) => r,
            Err(e) if raw_status(&e) == Some(Status::NotFound) => return Err(CudaError::InvalidSymbol),
            Err(e) => return Err(self.convert(&e)),
        };
        let (addr, size) = (r.addr, r.size);
        debug!(target: "vgpu::streams", name = ?v.name, addr, size, constant = v.constant, "symbol resolved");
        lock(&self.kern.symbols).insert(host_var, (addr, size, v.module.id));
        if size > 0 {
            lock(&self.kern.symbol_ranges).insert(addr, size);
        }
        Ok((addr, size))
    }

    /// The symbol range containing device address `p`, if any.
    pub(crate) fn symbol_range_of(&self, p: u64) -> Option<(u64, u64)> {
        lock(&self.kern.symbol_ranges).range(..=p).next_back().filter(|(&b, &l)| p < b + l).map(|(&b, &l)| (b, l))
    }

    /// `cudaMemcpyToSymbol[Async]`: `kind` is HostToDevice, DeviceToDevice or Default.
    ///
    /// # Safety
    /// `src` is valid for `count` bytes (host memory until the copy is staged / completes).
    pub unsafe fn memcpy_to_symbol(
        self: &Arc<Self>,
        host_var: usize,
        src: *const u8,
        count: usize,
        offset: usize,
        kind: MemcpyKind,
        stream: Option<RawStream>,
    ) -> Result<()> {
        if !matches!(kind, MemcpyKind::HostToDevice | MemcpyKind::DeviceToDevice | MemcpyKind::Default) {
            return Err(CudaError::InvalidMemcpyDirection);
        }
        let dst = self.symbol_range(host_var, offset, count)?;
        let kind = self.symbol_kind(kind, src as u64, MemcpyKind::HostToDevice);
        // SAFETY: forwarded caller guarantee.
        unsafe { self.symbol_copy(dst, src as u64, count, kind, stream) }
    }

    /// `cudaMemcpyFromSymbol[Async]`: `kind` is DeviceToHost, DeviceToDevice or Default.
    ///
    /// # Safety
    /// `dst` is valid for `count` bytes until the copy completes.
    pub unsafe fn memcpy_from_symbol(
        self: &Arc<Self>,
        dst: *mut u8,
        host_var: usize,
        count: usize,
        offset: usize,
        kind: MemcpyKind,
        stream: Option<RawStream>,
    ) -> Result<()> {
        if !matches!(kind, MemcpyKind::DeviceToHost | MemcpyKind::DeviceToDevice | MemcpyKind::Default) {
            return Err(CudaError::InvalidMemcpyDirection);
        }
        let src = self.symbol_range(host_var, offset, count)?;
        let kind = self.symbol_kind(kind, dst as u64, MemcpyKind::DeviceToHost);
        // SAFETY: forwarded caller guarantee.
        unsafe { self.symbol_copy(dst as u64, src, count, kind, stream) }
    }

    /// The device address of `count` bytes at `offset` in the variable registered at `host_var`;
    /// `cudaErrorInvalidValue` if the range runs past the variable.
    fn symbol_range(self: &Arc<Self>, host_var: usize, offset: usize, count: usize) -> Result<u64> {
        let (addr, size) = self.symbol(host_var)?;
        let end = offset.checked_add(count).ok_or(CudaError::InvalidValue)?;
        if end as u64 > size {
            return Err(CudaError::InvalidValue);
        }
        Ok(addr + offset as u64)
    }

    /// `cudaMemcpyDefault` resolved by where the other side (`other`) lives: device memory makes
    /// it a device-to-device copy, host memory `host_kind`.
    fn symbol_kind(&self, kind: MemcpyKind, other: u64, host_kind: MemcpyKind) -> MemcpyKind {
        match kind {
            MemcpyKind::Default if self.is_device(other) => MemcpyKind::DeviceToDevice,
            MemcpyKind::Default => host_kind,
            k => k,
        }
    }

    /// A copy to or from a symbol: synchronous on the legacy stream (`stream` = None), or
    /// asynchronous on `stream`.
    ///
    /// # Safety
    /// Host ranges as for `copy_1d`.
    unsafe fn symbol_copy(self: &Arc<Self>, dst: u64, src: u64, count: usize, kind: MemcpyKind, stream: Option<RawStream>) -> Result<()> {
        match stream {
            None => {
                let wait = kind != MemcpyKind::DeviceToDevice;
                // SAFETY: forwarded caller guarantee.
                unsafe { self.copy_1d(dst, src, count, kind, 0, wait)? };
                if wait {
                    self.deferred()?;
                }
                Ok(())
            }
            Some(s) => {
                let h = self.host_stream(s)?;
                // SAFETY: forwarded caller guarantee.
                unsafe { self.copy_1d(dst, src, count, kind, h, false) }
            }
        }
    }

    /// Modules this context loaded by hash and by upload (for tests and logs).
    pub fn module_counts(&self) -> (u64, u64) {
        (self.kern.loaded_by_hash.load(Ordering::Relaxed), self.kern.uploaded.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_are_checked_as_cuda_does() {
        assert!(check_dims([1, 1, 1], [1024, 1, 1]).is_ok());
        assert!(check_dims([i32::MAX as u32, 65535, 65535], [32, 32, 1]).is_ok());
        assert_eq!(check_dims([0, 1, 1], [1, 1, 1]), Err(CudaError::InvalidConfiguration));
        assert_eq!(check_dims([1, 1, 1], [1, 0, 1]), Err(CudaError::InvalidConfiguration));
        assert_eq!(check_dims([1, 1, 1], [1025, 1, 1]), Err(CudaError::InvalidConfiguration));
        assert_eq!(check_dims([1, 1, 1], [32, 32, 2]), Err(CudaError::InvalidConfiguration));
        assert_eq!(check_dims([1, 1, 1], [1, 1, 65]), Err(CudaError::InvalidConfiguration));
        assert_eq!(check_dims([1, 65536, 1], [1, 1, 1]), Err(CudaError::InvalidConfiguration));
        assert_eq!(check_dims([1u32 << 31, 1, 1], [1, 1, 1]), Err(CudaError::InvalidConfiguration));
        // A block whose thread count overflows 64 bits is refused, not a panic.
        assert_eq!(check_dims([1, 1, 1], [u32::MAX; 3]), Err(CudaError::InvalidConfiguration));
    }

    #[test]
    fn registration_is_recorded_and_forgotten() {
        let wrapper = Box::into_raw(Box::new([0u64; 3])) as usize;
        let h = register_fatbin(wrapper);
        let name = CString::new("_Z1kv").unwrap();
        let stub = 0x1234_5678usize;
        register_function(h, stub, &name);
        register_var(h, stub + 8, &CString::new("sym").unwrap(), 4, false, false);
        assert_eq!(kernel_handle(stub), Ok(stub));
        assert!(init_module(h));
        register_var(h, stub + 16, &CString::new("m").unwrap(), 4, false, true);
        assert!(!init_module(h), "managed variables are not supported");
        unregister_fatbin(h);
        assert_eq!(kernel_handle(stub), Err(CudaError::InvalidDeviceFunction));
        assert_eq!(var_reg(stub + 8).err(), Some(CudaError::InvalidSymbol));
    }

    #[test]
    fn a_bad_wrapper_is_an_invalid_image_at_first_use() {
        let m = ModuleReg::from_bytes(&[0u8; 32]);
        assert_eq!(m.image().err(), Some(CudaError::InvalidKernelImage));
        let mut c = vec![0u8; 48];
        c[..4].copy_from_slice(&FATBIN_MAGIC.to_le_bytes());
        c[6..8].copy_from_slice(&16u16.to_le_bytes());
        c[8..16].copy_from_slice(&32u64.to_le_bytes());
        let m = ModuleReg::from_bytes(&c);
        let img = m.image().unwrap();
        assert_eq!(img.len, 48);
        assert_eq!(img.hash, wire::module_hash(&c));
    }

    #[test]
    fn call_configurations_nest_per_thread() {
        let a = CallConfig { grid: [1, 2, 3], block: [4, 5, 6], shared: 7, stream: 0 };
        let b = CallConfig { grid: [9, 1, 1], ..a };
        push_call_configuration(a);
        push_call_configuration(b);
        std::thread::spawn(|| assert_eq!(pop_call_configuration(), None)).join().unwrap();
        assert_eq!(pop_call_configuration(), Some(b));
        assert_eq!(pop_call_configuration(), Some(a));
        assert_eq!(pop_call_configuration(), None);
    }
}
