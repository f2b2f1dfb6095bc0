//! # vgpu-runtime-abi
//!
//! The internal C ABI between the guest runtime and the CUDA-named libraries.
//!
//! A process gets exactly one guest runtime — one session with the mediator, one device
//! context, one kernel registry — whichever of our libraries it loads, in whatever order and by
//! whatever means (`LD_PRELOAD`, `DT_NEEDED`, `dlopen`). The runtime is one shared library,
//! `libvgpu.so` (package `vgpu-runtime`, which embeds `vgpu-streams`); every CUDA-named library
//! (`libcudart.so.12`, `.13`, and the coming `libcuda.so.1`, `libcublas.so.*`,
//! `libnvidia-ml.so.1`) is a thin facade that translates C types and error codes and calls into
//! it through this ABI. See `docs/runtime-abi.md` for the mechanism and why it was chosen.
//!
//! The ABI is one table of `extern "C"` function pointers ([`RuntimeTable`]), defined once, in
//! the [`runtime_abi!`] invocation below:
//! - the runtime implements the [`Runtime`] trait and exports
//!   `vgpu_runtime_v1() -> *const RuntimeTable` (version node `VGPU_RUNTIME_1`), the table
//!   built by [`RuntimeTable::of`], whose thunks catch panics;
//! - a facade calls [`raw`] (one function per table entry, loading the runtime on first use via
//!   [`loader`]) or, more conveniently, the Rust-shaped wrappers in [`rt`];
//! - the table starts with a [`Header`]: ABI version, table size and a hash of every signature
//!   and struct layout here, so a facade and a runtime from different builds refuse each other
//!   with a message instead of calling through a mismatched table.
//!
//! Every entry returns a [`Status`]: `0` or a CUDA Runtime error code (`cudaError_t` numbering,
//! the runtime's own). Out-values go through pointers, which the runtime checks for null.
//! Handles (streams, events, graphs) are the runtime's integers; the runtime records each
//! failure as the calling thread's last error, so the facade need not.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod loader;
pub mod rt;

use std::ffi::{c_char, c_void};

pub use vgpu_transport::wire::{DeviceInfo, FuncInfo};

/// `0` (`cudaSuccess`) or a `cudaError_t` value.
pub type Status = i32;
/// `cudaSuccess`.
pub const SUCCESS: Status = 0;
/// `cudaErrorInvalidValue`: a null out-pointer reached the runtime.
pub const INVALID_VALUE: Status = 1;
/// `cudaErrorInitializationError`: the runtime could not be loaded (see [`loader`]).
pub const INITIALIZATION_ERROR: Status = 3;
/// `cudaErrorMissingConfiguration`: `pop_call_configuration` with nothing pushed.
pub const MISSING_CONFIGURATION: Status = 52;
/// `cudaErrorUnknown`: a panic inside the runtime, caught at the table's boundary.
pub const UNKNOWN: Status = 999;

/// `cudaStreamPerThread` as a runtime stream handle.
pub const STREAM_PER_THREAD: u64 = 2;

/// What `cudaPointerGetAttributes` needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PointerAttrs {
    /// `cudaMemoryType`.
    pub kind: i32,
    pub device: i32,
    pub device_ptr: u64,
    pub host_ptr: u64,
}

/// One kernel launch's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LaunchParams {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared: u64,
    pub stream: u64,
    /// 1 for a cooperative launch.
    pub cooperative: u32,
    pub _pad: u32,
}

/// One `<<<grid, block, shared, stream>>>` (`__cudaPushCallConfiguration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CallConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared: u64,
    pub stream: u64,
}

/// `cudaFuncGetAttributes`'s answer: the host's [`FuncInfo`] and the cluster attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FuncAttrs {
    pub info: FuncInfo,
    pub cluster: [i32; 6],
    pub _pad: i32,
}

/// `cudaHostFn_t`.
pub type HostFn = unsafe extern "C" fn(user: *mut c_void);
/// `cudaStreamCallback_t`: (the stream as the program named it, status, user data).
pub type StreamCallback = unsafe extern "C" fn(stream: *mut c_void, status: Status, user: *mut c_void);

/// The first words of the table: what a facade checks before it calls anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Header {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<RuntimeTable>()`.
    pub table_size: u32,
    /// [`ABI_HASH`]: every signature and struct layout of this crate.
    pub abi_hash: u64,
}

/// Bumped by hand when the meaning of an entry changes without its signature changing.
pub const ABI_VERSION: u32 = 1;
/// The symbol `libvgpu.so` exports, in version node [`VERSION_NODE`].
pub const ENTRY_SYMBOL: &str = "vgpu_runtime_v1";
/// The version node of `libvgpu.so`'s one export.
pub const VERSION_NODE: &str = "VGPU_RUNTIME_1";
/// The runtime's file name and SONAME.
pub const LIBRARY: &str = "libvgpu.so";

/// FNV-1a over bytes, at compile time; with `skip_ws`, ASCII whitespace is left out
/// (`stringify!` lays lines out as it likes).
const fn fnv1a(mut h: u64, bytes: &[u8], skip_ws: bool) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        if !(skip_ws && bytes[i].is_ascii_whitespace()) {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        i += 1;
    }
    h
}

const fn mix(h: u64, v: usize) -> u64 {
    fnv1a(h, &(v as u64).to_le_bytes(), false)
}

/// The hash of [`SIGNATURES`] and of the size of every struct that crosses the ABI.
pub const ABI_HASH: u64 = {
    let mut h = fnv1a(0xcbf2_9ce4_8422_2325, SIGNATURES.as_bytes(), true);
    h = mix(h, std::mem::size_of::<DeviceInfo>());
    h = mix(h, std::mem::size_of::<FuncInfo>());
    h = mix(h, std::mem::size_of::<PointerAttrs>());
    h = mix(h, std::mem::size_of::<LaunchParams>());
    h = mix(h, std::mem::size_of::<CallConfig>());
    h = mix(h, std::mem::size_of::<FuncAttrs>());
    h
};

impl Header {
    /// The header of a table built from this crate.
    pub const fn current() -> Header {
        Header { abi_version: ABI_VERSION, table_size: std::mem::size_of::<RuntimeTable>() as u32, abi_hash: ABI_HASH }
    }
}

/// Run a thunk's body; a panic becomes [`UNKNOWN`] (no unwind crosses the table).
#[doc(hidden)]
pub fn guarded(body: impl FnOnce() -> Status) -> Status {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(UNKNOWN)
}

/// Defines the table, the [`Runtime`] trait, the thunks and the [`raw`] callers from one list.
macro_rules! runtime_abi {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?); )*) => {
        /// The runtime's entry points, in the order of the definition.
        #[repr(C)]
        pub struct RuntimeTable {
            pub header: Header,
            $( $(#[$doc])* pub $name: unsafe extern "C" fn($($ty),*) -> Status, )*
        }

        /// What the runtime implements: one function per table entry.
        ///
        /// # Safety
        /// Each function gets the raw arguments a facade passed; pointers are null or valid
        /// for what the entry documents.
        #[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
        pub trait Runtime {
            $( $(#[$doc])* unsafe fn $name($($arg: $ty),*) -> Status; )*
        }

        /// Every entry's name and signature, as written: hashed into [`ABI_HASH`].
        pub const SIGNATURES: &str = stringify!($( fn $name($($arg: $ty),*); )*);

        /// The names of the entries, in table order.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];

        impl RuntimeTable {
            /// The table whose entries call `R`'s functions, each inside [`guarded`].
            pub const fn of<R: Runtime>() -> RuntimeTable {
                $(
                    #[allow(clippy::too_many_arguments)]
                    unsafe extern "C" fn $name<R: Runtime>($($arg: $ty),*) -> Status {
                        // SAFETY: the facade's arguments, forwarded under the entry's contract.
                        guarded(|| unsafe { R::$name($($arg),*) })
                    }
                )*
                RuntimeTable { header: Header::current(), $( $name: $name::<R>, )* }
            }
        }

        /// One caller per table entry: loads the runtime on first use ([`loader::table`]) and
        /// calls through the table; if the runtime cannot be loaded, returns
        /// [`INITIALIZATION_ERROR`] (the reason is logged once).
        pub mod raw {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$doc])*
                ///
                /// # Safety
                /// As the entry documents.
                #[inline]
                #[allow(clippy::too_many_arguments)]
                pub unsafe fn $name($($arg: $ty),*) -> Status {
                    match crate::loader::table() {
                        // SAFETY: a checked table of this ABI; the caller's contract.
                        Ok(t) => unsafe { (t.$name)($($arg),*) },
                        Err(code) => code,
                    }
                }
            )*
        }
    };
}

runtime_abi! {
    // ---- device
    /// `cudaGetDeviceCount`.
    fn get_device_count(out: *mut i32);
    /// `cudaSetDevice`.
    fn set_device(device: i32);
    /// `cudaGetDevice`.
    fn get_device(out: *mut i32);
    /// The host's device description (fetched once).
    fn device_info(out: *mut DeviceInfo);
    /// `cudaDeviceSynchronize`.
    fn device_synchronize();
    /// `cudaDeviceReset`.
    fn device_reset();
    /// `cudaSetDeviceFlags`.
    fn set_device_flags(flags: u32);
    /// `cudaGetDeviceFlags`.
    fn get_device_flags(out: *mut u32);
    /// `cudaDeviceSetLimit` (`limit` is a `cudaLimit`).
    fn set_limit(limit: i32, value: usize);
    /// `cudaDeviceGetLimit`.
    fn get_limit(limit: i32, out: *mut usize);
    /// `cudaPointerGetAttributes`.
    fn pointer_attributes(ptr: u64, out: *mut PointerAttrs);
    /// `cudaMemGetInfo`.
    fn mem_get_info(free: *mut u64, total: *mut u64);
    /// `cudaDeviceGetStreamPriorityRange`.
    fn stream_priority_range(least: *mut i32, greatest: *mut i32);
    // ---- errors (these return the error itself, not a status of the call)
    /// `cudaGetLastError`: the thread's last error, reset.
    fn get_last_error();
    /// `cudaPeekAtLastError`.
    fn peek_at_last_error();
    /// Record `code` as the thread's last error (an error the facade found itself).
    fn set_last_error(code: Status);
    // ---- memory
    /// `cudaMalloc`.
    fn malloc(size: usize, out: *mut u64);
    /// `cudaFree`.
    fn free(ptr: u64);
    /// `cudaMallocHost`.
    fn malloc_host(size: usize, out: *mut *mut u8);
    /// `cudaHostAlloc`.
    fn host_alloc(size: usize, flags: u32, out: *mut *mut u8);
    /// `cudaFreeHost`.
    fn free_host(ptr: *mut u8);
    /// `cudaHostRegister`.
    fn host_register(ptr: *mut u8, size: usize, flags: u32);
    /// `cudaHostUnregister`.
    fn host_unregister(ptr: *mut u8);
    /// `cudaMemcpy` (`kind` is a `cudaMemcpyKind`).
    fn memcpy(dst: *mut u8, src: *const u8, count: usize, kind: i32);
    /// `cudaMemcpyAsync`.
    fn memcpy_async(dst: *mut u8, src: *const u8, count: usize, kind: i32, stream: u64);
    /// `cudaMemcpy2D`.
    fn memcpy_2d(dst: *mut u8, dpitch: usize, src: *const u8, spitch: usize, width: usize, height: usize, kind: i32);
    /// `cudaMemcpy2DAsync`.
    fn memcpy_2d_async(dst: *mut u8, dpitch: usize, src: *const u8, spitch: usize, width: usize, height: usize, kind: i32, stream: u64);
    /// `cudaMemset`.
    fn memset(ptr: u64, value: i32, count: usize);
    /// `cudaMemsetAsync`.
    fn memset_async(ptr: u64, value: i32, count: usize, stream: u64);
    /// `cudaMemcpyPeer`.
    fn memcpy_peer(dst: u64, dst_device: i32, src: u64, src_device: i32, count: usize);
    /// `cudaMemcpyPeerAsync`.
    fn memcpy_peer_async(dst: u64, dst_device: i32, src: u64, src_device: i32, count: usize, stream: u64);
    // ---- streams
    /// `cudaStreamCreateWithPriority`.
    fn stream_create(flags: u32, priority: i32, out: *mut u64);
    /// `cudaStreamDestroy`.
    fn stream_destroy(stream: u64);
    /// `cudaStreamSynchronize`.
    fn stream_synchronize(stream: u64);
    /// `cudaStreamQuery`.
    fn stream_query(stream: u64);
    /// `cudaStreamGetFlags`.
    fn stream_get_flags(stream: u64, out: *mut u32);
    /// `cudaStreamGetPriority`.
    fn stream_get_priority(stream: u64, out: *mut i32);
    /// `cudaStreamWaitEvent`.
    fn stream_wait_event(stream: u64, event: u64, flags: u32);
    /// `cudaLaunchHostFunc`: `f(user)` in stream order.
    fn launch_host_func(stream: u64, f: HostFn, user: *mut c_void);
    /// `cudaStreamAddCallback`: `cb(handle, status, user)` in stream order (`handle` is the
    /// stream as the program named it, passed back unchanged).
    fn stream_add_callback(stream: u64, cb: StreamCallback, handle: *mut c_void, user: *mut c_void, flags: u32);
    // ---- events
    /// `cudaEventCreateWithFlags`.
    fn event_create(flags: u32, out: *mut u64);
    /// `cudaEventDestroy`.
    fn event_destroy(event: u64);
    /// `cudaEventRecord`.
    fn event_record(event: u64, stream: u64);
    /// `cudaEventRecordWithFlags`.
    fn event_record_with_flags(event: u64, stream: u64, flags: u32);
    /// `cudaEventQuery`.
    fn event_query(event: u64);
    /// `cudaEventSynchronize`.
    fn event_synchronize(event: u64);
    /// `cudaEventElapsedTime`.
    fn event_elapsed_time(start: u64, end: u64, out: *mut f32);
    // ---- nvcc's registration ABI and kernels
    /// `__cudaRegisterFatBinary`: the module handle.
    fn register_fatbin(wrapper: usize, out: *mut usize);
    /// `__cudaUnregisterFatBinary`.
    fn unregister_fatbin(handle: usize);
    /// `__cudaRegisterFunction`.
    fn register_function(handle: usize, host_fun: usize, name: *const c_char);
    /// `__cudaRegisterVar` / `__cudaRegisterManagedVar` (`flags`: bit 0 constant, bit 1 managed).
    fn register_var(handle: usize, host_var: usize, name: *const c_char, size: u64, flags: u32);
    /// `__cudaInitModule`: 1 if the module is usable.
    fn init_module(handle: usize, out: *mut u8);
    /// `__cudaPushCallConfiguration`.
    fn push_call_configuration(cfg: *const CallConfig);
    /// `__cudaPopCallConfiguration`: [`MISSING_CONFIGURATION`] if none was pushed.
    fn pop_call_configuration(out: *mut CallConfig);
    /// `cudaLaunchKernel` and its forms: `args` is null or one pointer per parameter.
    fn launch_kernel(host_fun: usize, cfg: *const LaunchParams, args: *const *const c_void);
    /// `__cudaGetKernel`.
    fn get_kernel(host_fun: usize, out: *mut usize);
    /// `cudaFuncGetAttributes`.
    fn func_get_attributes(host_fun: usize, out: *mut FuncAttrs);
    /// `cudaFuncSetAttribute`.
    fn func_set_attribute(host_fun: usize, attr: i32, value: i32);
    /// `cudaFuncSetCacheConfig` (`max` 3) / `cudaFuncSetSharedMemConfig` (`max` 2).
    fn func_set_preference(host_fun: usize, value: i32, max: i32);
    /// `cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags`.
    fn occupancy_max_active_blocks(host_fun: usize, block_size: i32, shared: usize, flags: u32, out: *mut i32);
    /// `cudaGetSymbolAddress` / `cudaGetSymbolSize`.
    fn symbol(host_var: usize, addr: *mut u64, size: *mut u64);
    /// `cudaMemcpyToSymbol[Async]`: `stream` null for the synchronous form.
    fn memcpy_to_symbol(host_var: usize, src: *const u8, count: usize, offset: usize, kind: i32, stream: *const u64);
    /// `cudaMemcpyFromSymbol[Async]`: `stream` null for the synchronous form.
    fn memcpy_from_symbol(dst: *mut u8, host_var: usize, count: usize, offset: usize, kind: i32, stream: *const u64);
    // ---- capture and graphs
    /// `cudaStreamBeginCapture` (`mode` a `cudaStreamCaptureMode`).
    fn stream_begin_capture(stream: u64, mode: i32);
    /// `cudaStreamEndCapture`: the graph.
    fn stream_end_capture(stream: u64, out: *mut u64);
    /// `cudaStreamGetCaptureInfo`: `cudaStreamCaptureStatus` and capture id.
    fn stream_capture_info(stream: u64, status: *mut i32, id: *mut u64);
    /// `cudaThreadExchangeStreamCaptureMode`: the previous mode.
    fn thread_exchange_capture_mode(mode: i32, old: *mut i32);
    /// `cudaGraphInstantiate`.
    fn graph_instantiate(graph: u64, flags: u64, out: *mut u64);
    /// `cudaGraphExecUpdate`: the `cudaGraphExecUpdateResult`.
    fn graph_exec_update(exec: u64, graph: u64, out: *mut u32);
    /// `cudaGraphLaunch`.
    fn graph_launch(exec: u64, stream: u64);
    /// `cudaGraphDestroy`.
    fn graph_destroy(graph: u64);
    /// `cudaGraphExecDestroy`.
    fn graph_exec_destroy(exec: u64);
    /// The number of blocking round trips this process has made (a statistic for tests).
    fn blocking_round_trips(out: *mut u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_header_then_one_pointer_per_entry() {
        let want = std::mem::size_of::<Header>() + NAMES.len() * std::mem::size_of::<usize>();
        assert_eq!(std::mem::size_of::<RuntimeTable>(), want);
        assert!(NAMES.len() > 60, "{}", NAMES.len());
    }

    #[test]
    fn the_hash_covers_the_signatures() {
        assert_ne!(ABI_HASH, 0);
        let flat = SIGNATURES.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("fn malloc (size : usize, out : *mut u64);"), "{flat}");
        assert_eq!(fnv1a(1, b"a b", true), fnv1a(1, b"ab", true));
        assert_ne!(fnv1a(1, b"a", false), fnv1a(1, b"b", false));
    }
}
