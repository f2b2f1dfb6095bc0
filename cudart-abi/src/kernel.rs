//! Kernels and graphs: the nvcc registration ABI (`__cudaRegister*`, call configuration,
//! `__cudaGetKernel`/`__cudaLaunchKernel`), launches, function attributes, occupancy, symbols,
//! stream capture and graphs. The entry points both versions export; the versions differ only
//! in `cudaStreamGetCaptureInfo`, which each cdylib defines over [`capture_info`].
//!
//! Everything here converts C types and calls the runtime ([`vgpu_runtime_abi::rt`], in
//! `libvgpu.so`); the logic (registry, lazy upload, parameter packing, capture rules) lives in
//! `vgpu-streams`, inside that one runtime.
//!
//! Safety: every function here is `unsafe extern "C"` with the contract of its CUDA Runtime API
//! (or nvcc-generated code's) documentation: each pointer is null (where allowed) or valid for
//! the access described there.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};

use crate::api::Handle;
use crate::api::{memcpy_kind as kind, RawStream};
use crate::codes::*;
use crate::entry::{fail, guard, guard_value, non_null, unsupported, CallResult};
use vgpu_runtime_abi::{rt, CallConfig, LaunchParams as LaunchConfig, STREAM_PER_THREAD};

/// `cudaStreamCaptureStatusNone`.
const CAPTURE_NONE: c_int = 0;

/// `dim3` / `uint3`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dim3 {
    pub x: c_uint,
    pub y: c_uint,
    pub z: c_uint,
}

impl Dim3 {
    fn arr(self) -> [u32; 3] {
        [self.x, self.y, self.z]
    }
}

/// `struct cudaFuncAttributes` (144 bytes in CUDA 12.9 and 13.0).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FuncAttributes {
    pub shared_size_bytes: usize,
    pub const_size_bytes: usize,
    pub local_size_bytes: usize,
    pub max_threads_per_block: c_int,
    pub num_regs: c_int,
    pub ptx_version: c_int,
    pub binary_version: c_int,
    pub cache_mode_ca: c_int,
    pub max_dynamic_shared_size_bytes: c_int,
    pub preferred_shmem_carveout: c_int,
    pub cluster_dim_must_be_set: c_int,
    pub required_cluster_width: c_int,
    pub required_cluster_height: c_int,
    pub required_cluster_depth: c_int,
    pub cluster_scheduling_policy_preference: c_int,
    pub non_portable_cluster_size_allowed: c_int,
    pub reserved: [c_int; 16],
}

const _: () = assert!(std::mem::size_of::<FuncAttributes>() == 144);
const _: () = assert!(std::mem::offset_of!(FuncAttributes, max_dynamic_shared_size_bytes) == 44);

/// `cudaLaunchAttribute` (72 bytes): an id, padding, a 64-byte value union.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LaunchAttribute {
    pub id: c_int,
    pub pad: [u8; 4],
    pub val: [u8; 64],
}

/// `cudaLaunchConfig_t` (56 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LaunchConfigC {
    pub grid_dim: Dim3,
    pub block_dim: Dim3,
    pub dynamic_smem_bytes: usize,
    pub stream: Handle,
    pub attrs: *mut LaunchAttribute,
    pub num_attrs: c_uint,
}

const _: () = assert!(std::mem::size_of::<LaunchAttribute>() == 72);
const _: () = assert!(std::mem::size_of::<LaunchConfigC>() == 56);
const _: () = assert!(std::mem::offset_of!(LaunchConfigC, attrs) == 40);
const _: () = assert!(std::mem::offset_of!(LaunchConfigC, num_attrs) == 48);

/// `cudaGraphInstantiateParams` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GraphInstantiateParams {
    pub flags: c_ulonglong,
    pub upload_stream: Handle,
    pub err_node_out: Handle,
    pub result_out: c_int,
}

/// `cudaGraphExecUpdateResultInfo` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GraphExecUpdateResultInfo {
    pub result: c_int,
    pub error_node: Handle,
    pub error_from_node: Handle,
}

const _: () = assert!(std::mem::size_of::<GraphInstantiateParams>() == 32);
const _: () = assert!(std::mem::offset_of!(GraphInstantiateParams, result_out) == 24);
const _: () = assert!(std::mem::size_of::<GraphExecUpdateResultInfo>() == 24);

fn stream(s: Handle) -> RawStream {
    s as usize as RawStream
}

/// The stream of a `_ptsz` entry point: the NULL stream means the per-thread default stream.
fn stream_ptsz(s: Handle) -> RawStream {
    match stream(s) {
        0 => STREAM_PER_THREAD,
        r => r,
    }
}

/// # Safety
/// `p` is non-null and valid for writing a `T` (alignment not required).
unsafe fn put<T>(p: *mut T, v: T) {
    // SAFETY: the caller's contract.
    unsafe { p.write_unaligned(v) }
}

/// A C string from nvcc's registration code (null → empty).
///
/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn name<'a>(p: *const c_char) -> &'a CStr {
    if p.is_null() {
        c""
    } else {
        // SAFETY: the caller's contract.
        unsafe { CStr::from_ptr(p) }
    }
}

// ---------------------------------------------------------------------------------------------
// nvcc's registration ABI: recorded locally, no I/O

#[no_mangle]
pub unsafe extern "C" fn __cudaRegisterFatBinary(fat_cubin: *mut c_void) -> *mut *mut c_void {
    guard_value("__cudaRegisterFatBinary", std::ptr::null_mut(), || {
        // SAFETY: nvcc passes its fat binary wrapper, which lives as long as the program.
        unsafe { rt::register_fatbin(fat_cubin as usize) }.map_or(std::ptr::null_mut(), |h| h as *mut *mut c_void)
    })
}

#[no_mangle]
pub unsafe extern "C" fn __cudaRegisterFatBinaryEnd(_handle: *mut *mut c_void) {
    // Nothing to do: every module is loaded lazily, on first use.
}

#[no_mangle]
pub unsafe extern "C" fn __cudaUnregisterFatBinary(handle: *mut *mut c_void) {
    guard_value("__cudaUnregisterFatBinary", (), || {
        let _ = rt::unregister_fatbin(handle as usize);
    })
}

#[no_mangle]
pub unsafe extern "C" fn __cudaRegisterFunction(
    handle: *mut *mut c_void,
    host_fun: *const c_char,
    device_fun: *mut c_char,
    device_name: *const c_char,
    _thread_limit: c_int,
    _tid: *mut Dim3,
    _bid: *mut Dim3,
    _b_dim: *mut Dim3,
    _g_dim: *mut Dim3,
    _w_size: *mut c_int,
) {
    guard_value("__cudaRegisterFunction", (), || {
        // SAFETY: nvcc passes the kernel's NUL-terminated device name in both name arguments.
        let n = unsafe {
            if device_name.is_null() {
                name(device_fun)
            } else {
                name(device_name)
            }
        };
        let _ = rt::register_function(handle as usize, host_fun as usize, n);
    })
}

#[no_mangle]
pub unsafe extern "C" fn __cudaRegisterVar(
    handle: *mut *mut c_void,
    host_var: *mut c_char,
    _device_address: *mut c_char,
    device_name: *const c_char,
    _ext: c_int,
    size: usize,
    constant: c_int,
    _global: c_int,
) {
    guard_value("__cudaRegisterVar", (), || {
        // SAFETY: nvcc passes the variable's NUL-terminated device name.
        let n = unsafe { name(device_name) };
        let _ = rt::register_var(handle as usize, host_var as usize, n, size as u64, u32::from(constant != 0));
    })
}

/// Recorded; managed memory is not supported, so using the variable fails (`cudaErrorNotSupported`,
/// logged) and `__cudaInitModule` of its module answers 0.
#[no_mangle]
pub unsafe extern "C" fn __cudaRegisterManagedVar(
    handle: *mut *mut c_void,
    host_var_ptr_address: *mut *mut c_void,
    _device_address: *mut c_char,
    device_name: *const c_char,
    _ext: c_int,
    size: usize,
    constant: c_int,
    _global: c_int,
) {
    guard_value("__cudaRegisterManagedVar", (), || {
        // SAFETY: nvcc passes the variable's NUL-terminated device name.
        let n = unsafe { name(device_name) };
        let _ = rt::register_var(handle as usize, host_var_ptr_address as usize, n, size as u64, u32::from(constant != 0) | 2);
    })
}

#[no_mangle]
pub unsafe extern "C" fn __cudaInitModule(handle: *mut *mut c_void) -> c_char {
    guard_value("__cudaInitModule", 0, || c_char::from(rt::init_module(handle as usize).unwrap_or(false)))
}

#[no_mangle]
pub unsafe extern "C" fn __cudaPushCallConfiguration(grid: Dim3, block: Dim3, shared: usize, s: *mut c_void) -> c_uint {
    guard_value("__cudaPushCallConfiguration", 1, || {
        let r = rt::push_call_configuration(CallConfig { grid: grid.arr(), block: block.arr(), shared: shared as u64, stream: stream(s) });
        c_uint::from(r.is_err())
    })
}

#[no_mangle]
pub unsafe extern "C" fn __cudaPopCallConfiguration(grid: *mut Dim3, block: *mut Dim3, shared: *mut usize, s: *mut c_void) -> cudaError_t {
    guard("__cudaPopCallConfiguration", || {
        let cfg = rt::pop_call_configuration()?;
        let d = |a: [u32; 3]| Dim3 { x: a[0], y: a[1], z: a[2] };
        // SAFETY: nvcc's stub passes its four locals (each written only when non-null).
        unsafe {
            if !grid.is_null() {
                put(grid, d(cfg.grid));
            }
            if !block.is_null() {
                put(block, d(cfg.block));
            }
            if !shared.is_null() {
                put(shared, cfg.shared as usize);
            }
            if !s.is_null() {
                put(s.cast::<Handle>(), cfg.stream as usize as Handle);
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn __cudaGetKernel(out: *mut *mut c_void, func: *const c_void) -> cudaError_t {
    guard("__cudaGetKernel", || {
        non_null(out)?;
        let k = rt::get_kernel(func as usize)?;
        // SAFETY: non-null (checked).
        unsafe { put(out, k as *mut c_void) };
        Ok(())
    })
}

/// # Safety
/// As `cudaLaunchKernel`.
unsafe fn launch(name: &'static str, func: *const c_void, cfg: LaunchConfig, args: *mut *mut c_void) -> cudaError_t {
    // SAFETY: CUDA's contract for `args`: one pointer per kernel parameter.
    guard(name, || unsafe { rt::launch_kernel(func as usize, &cfg, args as *const *const c_void) })
}

fn config(grid: Dim3, block: Dim3, shared: usize, s: RawStream, cooperative: bool) -> LaunchConfig {
    LaunchConfig { grid: grid.arr(), block: block.arr(), shared: shared as u64, stream: s, cooperative: u32::from(cooperative), _pad: 0 }
}

#[no_mangle]
pub unsafe extern "C" fn __cudaLaunchKernel(
    k: *mut c_void,
    grid: Dim3,
    block: Dim3,
    args: *mut *mut c_void,
    shared: usize,
    s: Handle,
) -> cudaError_t {
    // SAFETY: forwarded contract (the kernel handle is the host stub's address).
    unsafe { launch("__cudaLaunchKernel", k, config(grid, block, shared, stream(s), false), args) }
}

#[no_mangle]
pub unsafe extern "C" fn __cudaLaunchKernel_ptsz(
    k: *mut c_void,
    grid: Dim3,
    block: Dim3,
    args: *mut *mut c_void,
    shared: usize,
    s: Handle,
) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { launch("__cudaLaunchKernel_ptsz", k, config(grid, block, shared, stream_ptsz(s), false), args) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaLaunchKernel(
    func: *const c_void,
    grid: Dim3,
    block: Dim3,
    args: *mut *mut c_void,
    shared: usize,
    s: Handle,
) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { launch("cudaLaunchKernel", func, config(grid, block, shared, stream(s), false), args) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaLaunchKernel_ptsz(
    func: *const c_void,
    grid: Dim3,
    block: Dim3,
    args: *mut *mut c_void,
    shared: usize,
    s: Handle,
) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { launch("cudaLaunchKernel_ptsz", func, config(grid, block, shared, stream_ptsz(s), false), args) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaLaunchCooperativeKernel(
    func: *const c_void,
    grid: Dim3,
    block: Dim3,
    args: *mut *mut c_void,
    shared: usize,
    s: Handle,
) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { launch("cudaLaunchCooperativeKernel", func, config(grid, block, shared, stream(s), true), args) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaLaunchCooperativeKernel_ptsz(
    func: *const c_void,
    grid: Dim3,
    block: Dim3,
    args: *mut *mut c_void,
    shared: usize,
    s: Handle,
) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { launch("cudaLaunchCooperativeKernel_ptsz", func, config(grid, block, shared, stream_ptsz(s), true), args) }
}

/// `cudaLaunchAttributeID` values.
mod attr {
    pub const IGNORE: i32 = 0;
    pub const ACCESS_POLICY_WINDOW: i32 = 1;
    pub const COOPERATIVE: i32 = 2;
    pub const SYNCHRONIZATION_POLICY: i32 = 3;
    pub const CLUSTER_DIMENSION: i32 = 4;
    pub const CLUSTER_SCHEDULING_POLICY_PREFERENCE: i32 = 5;
    pub const PROGRAMMATIC_STREAM_SERIALIZATION: i32 = 6;
    pub const PROGRAMMATIC_EVENT: i32 = 7;
    pub const PRIORITY: i32 = 8;
    pub const MEM_SYNC_DOMAIN_MAP: i32 = 9;
    pub const MEM_SYNC_DOMAIN: i32 = 10;
    pub const PREFERRED_CLUSTER_DIMENSION: i32 = 11;
    pub const LAUNCH_COMPLETION_EVENT: i32 = 12;
    pub const DEVICE_UPDATABLE_KERNEL_NODE: i32 = 13;
    pub const PREFERRED_SHARED_MEMORY_CARVEOUT: i32 = 14;
    pub const NVLINK_UTIL_CENTRIC_SCHEDULING: i32 = 16;
}

/// The launch of a `cudaLaunchConfig_t`: attributes that only tune performance (PDL, priority,
/// access policy, synchronisation policy, memory sync domains, carveout, scheduling
/// preferences) are honoured by running the launch fully ordered, which is always correct;
/// cooperative launches are forwarded; a cluster of more than one block, programmatic and
/// completion events and device-updatable nodes cannot be done: `cudaErrorNotSupported` (logged).
fn ex_config(name: &str, cfg: &LaunchConfigC, s: RawStream) -> Result<LaunchConfig, cudaError_t> {
    let mut cooperative = false;
    if cfg.num_attrs > 0 {
        non_null(cfg.attrs)?;
    }
    for i in 0..cfg.num_attrs as usize {
        // SAFETY: `attrs` holds `num_attrs` attributes (CUDA's contract; non-null checked).
        let a = unsafe { cfg.attrs.add(i).read_unaligned() };
        let int = |o: usize| i32::from_ne_bytes([a.val[o], a.val[o + 1], a.val[o + 2], a.val[o + 3]]);
        match a.id {
            attr::COOPERATIVE => cooperative = int(0) != 0,
            attr::CLUSTER_DIMENSION | attr::PREFERRED_CLUSTER_DIMENSION => {
                let (x, y, z) = (int(0), int(4), int(8));
                if x.max(1) * y.max(1) * z.max(1) > 1 {
                    return Err(unsupported(name, "thread block clusters cannot be launched over vgpu"));
                }
            }
            attr::PROGRAMMATIC_EVENT | attr::LAUNCH_COMPLETION_EVENT => {
                return Err(unsupported(name, "launch events (programmatic or completion) are not supported"));
            }
            attr::DEVICE_UPDATABLE_KERNEL_NODE => {
                return Err(unsupported(name, "device-updatable graph kernel nodes are not supported"));
            }
            attr::IGNORE
            | attr::ACCESS_POLICY_WINDOW
            | attr::SYNCHRONIZATION_POLICY
            | attr::CLUSTER_SCHEDULING_POLICY_PREFERENCE
            | attr::PROGRAMMATIC_STREAM_SERIALIZATION
            | attr::PRIORITY
            | attr::MEM_SYNC_DOMAIN_MAP
            | attr::MEM_SYNC_DOMAIN
            | attr::PREFERRED_SHARED_MEMORY_CARVEOUT
            | attr::NVLINK_UTIL_CENTRIC_SCHEDULING => {}
            _ => return Err(fail(cudaErrorInvalidValue)),
        }
    }
    Ok(config(cfg.grid_dim, cfg.block_dim, cfg.dynamic_smem_bytes, s, cooperative))
}

/// # Safety
/// As `cudaLaunchKernelExC`.
unsafe fn launch_ex(name: &'static str, cfg: *const LaunchConfigC, func: *const c_void, args: *mut *mut c_void, ptsz: bool) -> cudaError_t {
    guard(name, || {
        non_null(cfg)?;
        // SAFETY: non-null (checked); the program passes a `cudaLaunchConfig_t*`.
        let cfg = unsafe { cfg.read_unaligned() };
        let s = if ptsz { stream_ptsz(cfg.stream) } else { stream(cfg.stream) };
        let lc = ex_config(name, &cfg, s)?;
        // SAFETY: CUDA's contract for `args`.
        unsafe { rt::launch_kernel(func as usize, &lc, args as *const *const c_void) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaLaunchKernelExC(config: *const LaunchConfigC, func: *const c_void, args: *mut *mut c_void) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { launch_ex("cudaLaunchKernelExC", config, func, args, false) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaLaunchKernelExC_ptsz(
    config: *const LaunchConfigC,
    func: *const c_void,
    args: *mut *mut c_void,
) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { launch_ex("cudaLaunchKernelExC_ptsz", config, func, args, true) }
}

// ---------------------------------------------------------------------------------------------
// Function attributes and occupancy

#[no_mangle]
pub unsafe extern "C" fn cudaFuncGetAttributes(out: *mut FuncAttributes, func: *const c_void) -> cudaError_t {
    guard("cudaFuncGetAttributes", || {
        non_null(out)?;
        let fa = rt::func_get_attributes(func as usize)?;
        let (i, cl) = (fa.info, fa.cluster);
        let a = FuncAttributes {
            shared_size_bytes: i.shared_size_bytes as usize,
            const_size_bytes: i.const_size_bytes as usize,
            local_size_bytes: i.local_size_bytes as usize,
            max_threads_per_block: i.max_threads_per_block as c_int,
            num_regs: i.num_regs as c_int,
            ptx_version: i.ptx_version as c_int,
            binary_version: i.binary_version as c_int,
            cache_mode_ca: i.cache_mode_ca as c_int,
            max_dynamic_shared_size_bytes: i.max_dynamic_shared_size_bytes as c_int,
            preferred_shmem_carveout: i.preferred_shmem_carveout,
            cluster_dim_must_be_set: cl[0],
            required_cluster_width: cl[1],
            required_cluster_height: cl[2],
            required_cluster_depth: cl[3],
            cluster_scheduling_policy_preference: cl[4],
            non_portable_cluster_size_allowed: cl[5],
            reserved: [0; 16],
        };
        // SAFETY: non-null (checked); the program passes a `struct cudaFuncAttributes*`.
        unsafe { put(out, a) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaFuncSetAttribute(func: *const c_void, attr: c_int, value: c_int) -> cudaError_t {
    guard("cudaFuncSetAttribute", || rt::func_set_attribute(func as usize, attr, value))
}

#[no_mangle]
pub unsafe extern "C" fn cudaFuncSetCacheConfig(func: *const c_void, config: c_int) -> cudaError_t {
    // cudaFuncCachePreferNone..cudaFuncCachePreferEqual (0..=3): a preference, as on CUDA.
    guard("cudaFuncSetCacheConfig", || rt::func_set_preference(func as usize, config, 3))
}

#[no_mangle]
pub unsafe extern "C" fn cudaFuncSetSharedMemConfig(func: *const c_void, config: c_int) -> cudaError_t {
    // cudaSharedMemBankSizeDefault..EightByte (0..=2): ignored by every device since Volta.
    guard("cudaFuncSetSharedMemConfig", || rt::func_set_preference(func as usize, config, 2))
}

/// # Safety
/// `out` is null or valid for writing an `int`.
unsafe fn occupancy(name: &'static str, out: *mut c_int, func: *const c_void, block: c_int, shared: usize, flags: c_uint) -> cudaError_t {
    guard(name, || {
        non_null(out)?;
        let n = rt::occupancy_max_active_blocks(func as usize, block, shared, flags)?;
        // SAFETY: non-null (checked).
        unsafe { put(out, n) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaOccupancyMaxActiveBlocksPerMultiprocessor(
    out: *mut c_int,
    func: *const c_void,
    block_size: c_int,
    shared: usize,
) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { occupancy("cudaOccupancyMaxActiveBlocksPerMultiprocessor", out, func, block_size, shared, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    out: *mut c_int,
    func: *const c_void,
    block_size: c_int,
    shared: usize,
    flags: c_uint,
) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { occupancy("cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", out, func, block_size, shared, flags) }
}

// ---------------------------------------------------------------------------------------------
// Symbols

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpyToSymbol(
    symbol: *const c_void,
    src: *const c_void,
    count: usize,
    offset: usize,
    k: c_int,
) -> cudaError_t {
    guard("cudaMemcpyToSymbol", || {
        let k = kind(k)?;
        // SAFETY: CUDA's contract: `src` holds `count` bytes.
        unsafe { rt::memcpy_to_symbol(symbol as usize, src.cast(), count, offset, k, None) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpyFromSymbol(
    dst: *mut c_void,
    symbol: *const c_void,
    count: usize,
    offset: usize,
    k: c_int,
) -> cudaError_t {
    guard("cudaMemcpyFromSymbol", || {
        let k = kind(k)?;
        // SAFETY: CUDA's contract: `dst` holds `count` bytes.
        unsafe { rt::memcpy_from_symbol(dst.cast(), symbol as usize, count, offset, k, None) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpyToSymbolAsync(
    symbol: *const c_void,
    src: *const c_void,
    count: usize,
    offset: usize,
    k: c_int,
    s: Handle,
) -> cudaError_t {
    guard("cudaMemcpyToSymbolAsync", || {
        let k = kind(k)?;
        // SAFETY: CUDA's contract: `src` holds `count` bytes until the copy is done.
        unsafe { rt::memcpy_to_symbol(symbol as usize, src.cast(), count, offset, k, Some(stream(s))) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpyFromSymbolAsync(
    dst: *mut c_void,
    symbol: *const c_void,
    count: usize,
    offset: usize,
    k: c_int,
    s: Handle,
) -> cudaError_t {
    guard("cudaMemcpyFromSymbolAsync", || {
        let k = kind(k)?;
        // SAFETY: CUDA's contract: `dst` holds `count` bytes until the copy is done.
        unsafe { rt::memcpy_from_symbol(dst.cast(), symbol as usize, count, offset, k, Some(stream(s))) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGetSymbolAddress(dev_ptr: *mut *mut c_void, symbol: *const c_void) -> cudaError_t {
    guard("cudaGetSymbolAddress", || {
        non_null(dev_ptr)?;
        let (a, _) = rt::symbol(symbol as usize)?;
        // SAFETY: non-null (checked).
        unsafe { put(dev_ptr, a as usize as *mut c_void) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGetSymbolSize(size: *mut usize, symbol: *const c_void) -> cudaError_t {
    guard("cudaGetSymbolSize", || {
        non_null(size)?;
        let (_, n) = rt::symbol(symbol as usize)?;
        // SAFETY: non-null (checked).
        unsafe { put(size, n as usize) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Capture and graphs

#[no_mangle]
pub unsafe extern "C" fn cudaStreamBeginCapture(s: Handle, mode: c_int) -> cudaError_t {
    guard("cudaStreamBeginCapture", || rt::stream_begin_capture(stream(s), mode))
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamEndCapture(s: Handle, graph: *mut Handle) -> cudaError_t {
    guard("cudaStreamEndCapture", || {
        non_null(graph)?;
        let r = rt::stream_end_capture(stream(s));
        // SAFETY: non-null (checked); NULL on failure, as CUDA.
        unsafe { put(graph, r.as_ref().map_or(std::ptr::null_mut(), |&g| g as usize as Handle)) };
        r.map(drop)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaThreadExchangeStreamCaptureMode(mode: *mut c_int) -> cudaError_t {
    guard("cudaThreadExchangeStreamCaptureMode", || {
        non_null(mode)?;
        // SAFETY: non-null (checked).
        let old = rt::thread_exchange_capture_mode(unsafe { mode.read_unaligned() })?;
        // SAFETY: as above.
        unsafe { put(mode, old) };
        Ok(())
    })
}

/// `cudaStreamGetCaptureInfo` in all its versions: status (required), capture id, graph (NULL:
/// the graph being built lives on the host), dependencies (none are tracked: NULL and 0), edge
/// data (NULL). Local.
///
/// # Safety
/// Each pointer is null or valid for writing its type.
pub unsafe fn capture_info(
    s: Handle,
    status: *mut c_int,
    id: *mut c_ulonglong,
    graph: *mut Handle,
    deps: *mut *const Handle,
    edges: *mut *const c_void,
    num_deps: *mut usize,
) -> CallResult {
    non_null(status)?;
    let (st, cid) = rt::stream_capture_info(stream(s))?;
    // SAFETY: each pointer is written only when non-null (the caller's contract for the rest).
    unsafe {
        put(status, st as c_int);
        if st != CAPTURE_NONE {
            if !id.is_null() {
                put(id, cid);
            }
            if !graph.is_null() {
                put(graph, std::ptr::null_mut());
            }
            if !deps.is_null() {
                put(deps, std::ptr::null());
            }
            if !edges.is_null() {
                put(edges, std::ptr::null());
            }
            if !num_deps.is_null() {
                put(num_deps, 0);
            }
        }
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphInstantiate(exec: *mut Handle, graph: Handle, flags: c_ulonglong) -> cudaError_t {
    guard("cudaGraphInstantiate", || {
        non_null(exec)?;
        let e = rt::graph_instantiate(graph as usize as u64, flags)?;
        // SAFETY: non-null (checked).
        unsafe { put(exec, e as usize as Handle) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphInstantiateWithFlags(exec: *mut Handle, graph: Handle, flags: c_ulonglong) -> cudaError_t {
    guard("cudaGraphInstantiateWithFlags", || {
        non_null(exec)?;
        let e = rt::graph_instantiate(graph as usize as u64, flags)?;
        // SAFETY: non-null (checked).
        unsafe { put(exec, e as usize as Handle) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphInstantiateWithParams(
    exec: *mut Handle,
    graph: Handle,
    params: *mut GraphInstantiateParams,
) -> cudaError_t {
    guard("cudaGraphInstantiateWithParams", || {
        non_null(exec)?;
        non_null(params)?;
        // SAFETY: non-null (checked); the program passes a `cudaGraphInstantiateParams*`.
        let mut p = unsafe { params.read_unaligned() };
        let r = rt::graph_instantiate(graph as usize as u64, p.flags);
        // cudaGraphInstantiateSuccess = 0, cudaGraphInstantiateError = 1.
        p.result_out = c_int::from(r.is_err());
        p.err_node_out = std::ptr::null_mut();
        // SAFETY: as above; `exec` non-null (checked).
        unsafe {
            put(params, p);
            if let Ok(e) = r {
                put(exec, e as usize as Handle);
            }
        }
        r.map(drop)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphExecUpdate(exec: Handle, graph: Handle, info: *mut GraphExecUpdateResultInfo) -> cudaError_t {
    guard("cudaGraphExecUpdate", || {
        non_null(info)?;
        let result = rt::graph_exec_update(exec as usize as u64, graph as usize as u64)?;
        let i =
            GraphExecUpdateResultInfo { result: result as c_int, error_node: std::ptr::null_mut(), error_from_node: std::ptr::null_mut() };
        // SAFETY: non-null (checked).
        unsafe { put(info, i) };
        if result != 0 {
            return Err(fail(cudaErrorGraphExecUpdateFailure));
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphLaunch(exec: Handle, s: Handle) -> cudaError_t {
    guard("cudaGraphLaunch", || rt::graph_launch(exec as usize as u64, stream(s)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphLaunch_ptsz(exec: Handle, s: Handle) -> cudaError_t {
    guard("cudaGraphLaunch_ptsz", || rt::graph_launch(exec as usize as u64, stream_ptsz(s)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphExecDestroy(exec: Handle) -> cudaError_t {
    guard("cudaGraphExecDestroy", || rt::graph_exec_destroy(exec as usize as u64))
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphDestroy(graph: Handle) -> cudaError_t {
    guard("cudaGraphDestroy", || rt::graph_destroy(graph as usize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(id: c_int, ints: &[i32]) -> LaunchAttribute {
        let mut a = LaunchAttribute { id, pad: [0; 4], val: [0; 64] };
        for (i, v) in ints.iter().enumerate() {
            a.val[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        a
    }

    fn cfg(attrs: &mut [LaunchAttribute]) -> LaunchConfigC {
        LaunchConfigC {
            grid_dim: Dim3 { x: 2, y: 1, z: 1 },
            block_dim: Dim3 { x: 64, y: 1, z: 1 },
            dynamic_smem_bytes: 128,
            stream: std::ptr::null_mut(),
            attrs: attrs.as_mut_ptr(),
            num_attrs: attrs.len() as c_uint,
        }
    }

    #[test]
    fn call_configuration_round_trips_through_the_c_abi() {
        crate::tests::runtime_in_process();
        let (g, b) = (Dim3 { x: 3, y: 2, z: 1 }, Dim3 { x: 128, y: 1, z: 1 });
        // SAFETY: by-value arguments; the stream handle is an opaque integer.
        assert_eq!(unsafe { __cudaPushCallConfiguration(g, b, 64, 0x20 as *mut c_void) }, 0);
        let (mut g2, mut b2, mut sh, mut s) = (Dim3::default(), Dim3::default(), 0usize, std::ptr::null_mut::<c_void>());
        // SAFETY: four valid locals, as nvcc's stub passes.
        let r = unsafe { __cudaPopCallConfiguration(&mut g2, &mut b2, &mut sh, (&mut s as *mut Handle).cast()) };
        assert_eq!((r, g2, b2, sh, s as usize), (cudaSuccess, g, b, 64, 0x20));
        // SAFETY: as above.
        let r = unsafe { __cudaPopCallConfiguration(&mut g2, &mut b2, &mut sh, (&mut s as *mut Handle).cast()) };
        assert_eq!(r, cudaErrorMissingConfiguration, "nothing pushed");
    }

    #[test]
    fn launch_attributes_are_honoured_or_refused() {
        crate::tests::runtime_in_process();
        let mut a = [attr(attr::PROGRAMMATIC_STREAM_SERIALIZATION, &[1]), attr(attr::PRIORITY, &[3]), attr(attr::COOPERATIVE, &[1])];
        let lc = ex_config("t", &cfg(&mut a), 5).unwrap();
        assert_eq!(lc.cooperative, 1);
        assert_eq!((lc.grid, lc.block, lc.shared, lc.stream), ([2, 1, 1], [64, 1, 1], 128, 5));
        let mut a = [attr(attr::CLUSTER_DIMENSION, &[1, 1, 1])];
        assert_eq!(ex_config("t", &cfg(&mut a), 0).unwrap().cooperative, 0, "a 1x1x1 cluster is a plain launch");
        let mut a = [attr(attr::CLUSTER_DIMENSION, &[2, 1, 1])];
        assert_eq!(ex_config("t", &cfg(&mut a), 0).err(), Some(cudaErrorNotSupported));
        let mut a = [attr(attr::LAUNCH_COMPLETION_EVENT, &[])];
        assert_eq!(ex_config("t", &cfg(&mut a), 0).err(), Some(cudaErrorNotSupported));
        let mut a = [attr(99, &[])];
        assert_eq!(ex_config("t", &cfg(&mut a), 0).err(), Some(cudaErrorInvalidValue));
        let mut c = cfg(&mut []);
        c.num_attrs = 1;
        c.attrs = std::ptr::null_mut();
        assert_eq!(ex_config("t", &c, 0).err(), Some(cudaErrorInvalidValue));
    }

    #[test]
    fn ptsz_forms_map_the_null_stream_to_the_per_thread_stream() {
        assert_eq!(stream_ptsz(std::ptr::null_mut()), STREAM_PER_THREAD);
        assert_eq!(stream_ptsz(1 as Handle), 1, "cudaStreamLegacy stays legacy");
        assert_eq!(stream_ptsz(0x110 as Handle), 0x110);
    }
}
