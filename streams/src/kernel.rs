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
//!
//! This module holds the registry and the state (no I/O, no [`crate::Context`]); the loading,
//! launches and symbol copies are methods of the context (`context::launch`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CStr, CString};
use std::sync::{Arc, LazyLock, OnceLock};

use tracing::{debug, warn};
use vgpu_transport::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use vgpu_transport::wire::{self, FuncInfo, ParamInfo, Status};

use crate::error::{CudaError, Result};
use crate::locks::{rank, OrderedMutex, OrderedReadGuard, OrderedRwLock, OrderedWriteGuard};
use crate::types::RawStream;

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
pub(crate) struct Image {
    ptr: usize,
    pub len: usize,
    pub hash: wire::ModuleHash,
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
    pub(crate) live: AtomicBool,
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

    pub(crate) fn image(&self) -> Result<Image> {
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

    pub(crate) fn bytes(&self, img: &Image) -> &[u8] {
        // SAFETY: as in `locate`: `img` was located there and the bytes live as long as the
        // registration (or our own copy, owned by `self`).
        unsafe { std::slice::from_raw_parts(img.ptr as *const u8, img.len) }
    }
}

/// A function registered by `__cudaRegisterFunction`.
#[derive(Debug)]
pub(crate) struct FuncReg {
    pub module: Arc<ModuleReg>,
    pub name: CString,
}

/// A variable registered by `__cudaRegisterVar` / `__cudaRegisterManagedVar`.
#[derive(Debug)]
pub(crate) struct VarReg {
    pub module: Arc<ModuleReg>,
    pub name: CString,
    pub size: u64,
    pub constant: bool,
    pub managed: bool,
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

/// The process-wide registry ([`rank::REGISTRY`]): taken with no other lock held, and nothing is
/// taken under it.
static REGISTRY: LazyLock<OrderedRwLock<Registry, { rank::REGISTRY }>> = LazyLock::new(|| OrderedRwLock::new(Registry::default()));

fn registry() -> OrderedReadGuard<'static, Registry, { rank::REGISTRY }> {
    REGISTRY.read()
}

fn registry_mut() -> OrderedWriteGuard<'static, Registry, { rank::REGISTRY }> {
    REGISTRY.write()
}

/// Told the id of every unregistered module: set by the process-wide context when it connects
/// (it forgets what it cached of the module). A hook rather than a call, because this module
/// sits below the context (see the crate's layering).
static ON_UNREGISTER: OnceLock<fn(u64)> = OnceLock::new();

/// Install the unregistration hook (the first one stays).
pub(crate) fn on_unregister(f: fn(u64)) {
    let _ = ON_UNREGISTER.set(f);
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
    if let Some(f) = ON_UNREGISTER.get() {
        f(m.id);
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

pub(crate) fn func_reg(host_fun: usize) -> Result<Arc<FuncReg>> {
    registry().funcs.get(&host_fun).cloned().ok_or(CudaError::InvalidDeviceFunction)
}

pub(crate) fn var_reg(host_var: usize) -> Result<Arc<VarReg>> {
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
    /// What can change after loading, under one lock ([`rank::FUNC`]): the occupancy cache is
    /// valid for the attributes next to it, so an attribute change and the cache's clearing
    /// are one step.
    pub(crate) state: OrderedMutex<FuncState, { rank::FUNC }>,
}

/// The mutable part of a [`Func`].
#[derive(Debug)]
pub(crate) struct FuncState {
    pub info: FuncInfo,
    /// Cluster attributes set with `cudaFuncSetAttribute` (ids 10..=15), reported back.
    pub cluster: [i32; 6],
    /// (block size, shared bytes, flags) → active blocks per multiprocessor.
    pub occupancy: HashMap<(i32, u64, u32), i32>,
}

impl Func {
    /// A function as `FuncGet` described it.
    pub(crate) fn new(handle: u64, module_id: u64, name: CString, params: Box<[ParamInfo]>, info: FuncInfo) -> Func {
        Func { handle, module_id, name, params, state: OrderedMutex::new(FuncState { info, cluster: [0; 6], occupancy: HashMap::new() }) }
    }

    /// The current [`FuncInfo`] (attributes set since are included).
    pub fn info(&self) -> FuncInfo {
        self.state.lock().info
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
        self.state.lock().cluster
    }
}

/// Kernel state of one context.
#[derive(Debug, Default)]
pub(crate) struct KernelState {
    /// The tables, under one lock ([`rank::KERNELS`]; never held across I/O).
    pub tables: OrderedMutex<KernelTables, { rank::KERNELS }>,
    /// Serialises first-use loading (module upload, FuncGet) on this context ([`rank::LOADING`]:
    /// the one lock held across round trips, taken before any other).
    pub loading: OrderedMutex<(), { rank::LOADING }>,
    pub(crate) next_upload: AtomicU64,
    /// Modules loaded by hash (the host had them) and uploaded, for tests and logs.
    pub(crate) loaded_by_hash: AtomicU64,
    pub(crate) uploaded: AtomicU64,
}

/// The modules, functions and symbols one context has loaded.
#[derive(Debug, Default)]
pub(crate) struct KernelTables {
    /// Module id → host module handle, or the error loading it gave for good (no image for
    /// this device, not an image): a module is never uploaded twice to learn that again.
    pub modules: HashMap<u64, Result<u64>>,
    /// Host stub → function (process-wide context only; cleared per module on unregister).
    pub by_host: HashMap<usize, Arc<Func>>,
    /// (module id, name) → function.
    pub by_name: HashMap<(u64, CString), Arc<Func>>,
    /// Host shadow variable → (device address, size, module id).
    pub symbols: HashMap<usize, (u64, u64, u64)>,
    /// Device ranges of symbols (base → size): valid device memory for copies.
    pub symbol_ranges: BTreeMap<u64, u64>,
}

impl KernelTables {
    /// The symbol range containing device address `p`, if any.
    pub fn symbol_range_of(&self, p: u64) -> Option<(u64, u64)> {
        self.symbol_ranges.range(..=p).next_back().filter(|(&b, &l)| p < b + l).map(|(&b, &l)| (b, l))
    }

    /// Forget module `module_id`: its functions, symbols and their ranges; its host handle, if
    /// it was loaded.
    pub fn forget_module(&mut self, module_id: u64) -> Option<Result<u64>> {
        self.by_host.retain(|_, f| f.module_id != module_id);
        self.by_name.retain(|(m, _), _| *m != module_id);
        let ranges = &mut self.symbol_ranges;
        self.symbols.retain(|_, &mut (a, _, m)| {
            if m == module_id {
                ranges.remove(&a);
            }
            m != module_id
        });
        self.modules.remove(&module_id)
    }
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
    let total = func.state.lock().info.param_bytes as usize;
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

pub(crate) fn raw_status(e: &vgpu_transport::Error) -> Option<Status> {
    match e {
        vgpu_transport::Error::Call { status, .. } => Some(*status),
        _ => None,
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
