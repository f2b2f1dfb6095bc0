//! # vgpu-runtime: `libvgpu.so`
//!
//! The process's one guest runtime. It embeds `vgpu-streams` (the session with the mediator,
//! the device context, the kernel registry, streams, events, graphs, the thread's last error)
//! and offers it to every CUDA-named library through the table of `vgpu-runtime-abi`, returned
//! by its one export, `vgpu_runtime_v1` (version node `VGPU_RUNTIME_1`). The facades load it
//! with `dlopen("libvgpu.so")`, so the dynamic loader hands every one of them the same copy.
//!
//! Each entry here is a translation: raw arguments → a `vgpu_streams::rt` call → a status and
//! out-values. Nothing else lives here but what the process must hold once and the device
//! doesn't: the `cudaLimit` values.
//!
//! Loading the library runs nothing; logging (target `vgpu::runtime` and the runtime's own
//! targets, filter `VGPU_LOG`) is set up when a facade first asks for the table.

#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_void, CStr};
use std::sync::{Mutex, Once};

use vgpu_runtime_abi as abi;
use vgpu_runtime_abi::{CallConfig, DeviceInfo, FuncAttrs, HostFn, LaunchParams, PointerAttrs, RuntimeTable, Status, StreamCallback};
use vgpu_streams::error::set_last_error;
use vgpu_streams::{kernel, rt, CudaError, MemcpyKind};

// The constants both sides name must agree.
const _: () = assert!(abi::STREAM_PER_THREAD == vgpu_streams::STREAM_PER_THREAD);
const _: () = assert!(abi::INVALID_VALUE == CudaError::InvalidValue as i32);
const _: () = assert!(abi::INITIALIZATION_ERROR == CudaError::InitializationError as i32);
const _: () = assert!(abi::MISSING_CONFIGURATION == CudaError::MissingConfiguration as i32);
const _: () = assert!(abi::UNKNOWN == CudaError::Unknown as i32);

/// The runtime's table.
pub static TABLE: RuntimeTable = RuntimeTable::of::<Vgpu>();

/// The one export: the table. Sets up logging the first time.
#[no_mangle]
pub extern "C" fn vgpu_runtime_v1() -> *const RuntimeTable {
    static LOG: Once = Once::new();
    LOG.call_once(|| {
        let _ = std::panic::catch_unwind(|| vgpu_transport::logging::init("warn"));
        tracing::debug!(target: "vgpu::runtime", "libvgpu.so: table of {} entries handed out", abi::NAMES.len());
    });
    &TABLE
}

/// An error this layer found itself: recorded as the thread's last error, as the real runtime.
fn fail(e: CudaError) -> Status {
    set_last_error(e);
    e.code()
}

fn st(r: vgpu_streams::Result<()>) -> Status {
    match r {
        Ok(()) => abi::SUCCESS,
        Err(e) => e.code(),
    }
}

/// Null-check `out`, run `f`, write its value to `out`.
///
/// # Safety
/// `out` is null or valid for writing a `T`.
unsafe fn put<T>(out: *mut T, f: impl FnOnce() -> vgpu_streams::Result<T>) -> Status {
    if out.is_null() {
        return fail(CudaError::InvalidValue);
    }
    match f() {
        Ok(v) => {
            // SAFETY: non-null (checked); the caller's contract.
            unsafe { out.write_unaligned(v) };
            abi::SUCCESS
        }
        Err(e) => e.code(),
    }
}

/// As [`put`] for two out-values.
///
/// # Safety
/// Each pointer is null or valid for writing its type.
unsafe fn put2<A, B>(a: *mut A, b: *mut B, f: impl FnOnce() -> vgpu_streams::Result<(A, B)>) -> Status {
    if a.is_null() || b.is_null() {
        return fail(CudaError::InvalidValue);
    }
    match f() {
        Ok((x, y)) => {
            // SAFETY: non-null (checked); the caller's contract.
            unsafe {
                a.write_unaligned(x);
                b.write_unaligned(y);
            }
            abi::SUCCESS
        }
        Err(e) => e.code(),
    }
}

fn kind(k: i32) -> Result<MemcpyKind, Status> {
    MemcpyKind::from_raw(k).ok_or_else(|| fail(CudaError::InvalidMemcpyDirection))
}

/// `cudaLimit` values and the defaults a CUDA 12/13 device starts with: stack size, printf FIFO,
/// malloc heap, device-runtime sync depth, pending launches, max L2 fetch granularity,
/// persisting L2 cache size.
const LIMIT_DEFAULTS: [usize; 7] = [1024, 1 << 20, 8 << 20, 2, 2048, 64, 0];
static LIMITS: Mutex<[usize; 7]> = Mutex::new(LIMIT_DEFAULTS);

fn limit_index(limit: i32) -> Result<usize, Status> {
    usize::try_from(limit).ok().filter(|&i| i < LIMIT_DEFAULTS.len()).ok_or_else(|| fail(CudaError::UnsupportedLimit))
}

/// A user pointer carried to the thread that runs a host function or stream callback.
struct UserData(*mut c_void);
// SAFETY: CUDA's contract for `cudaLaunchHostFunc` / `cudaStreamAddCallback` is that `userData`
// is handed, unchanged, to the callback on a runtime thread; what it points to is the program's.
unsafe impl Send for UserData {}

/// The runtime behind the table.
pub struct Vgpu;

impl abi::Runtime for Vgpu {
    unsafe fn get_device_count(out: *mut i32) -> Status {
        // SAFETY: forwarded out-pointer contract (for every `put`/`put2` below).
        unsafe { put(out, rt::get_device_count) }
    }
    unsafe fn set_device(device: i32) -> Status {
        st(rt::set_device(device))
    }
    unsafe fn get_device(out: *mut i32) -> Status {
        // SAFETY: as above.
        unsafe { put(out, rt::get_device) }
    }
    unsafe fn device_info(out: *mut DeviceInfo) -> Status {
        // SAFETY: as above.
        unsafe { put(out, rt::device_info) }
    }
    unsafe fn device_synchronize() -> Status {
        st(rt::device_synchronize())
    }
    unsafe fn device_reset() -> Status {
        st(rt::device_reset())
    }
    unsafe fn set_device_flags(flags: u32) -> Status {
        st(rt::set_device_flags(flags))
    }
    unsafe fn get_device_flags(out: *mut u32) -> Status {
        // SAFETY: as above.
        unsafe { put(out, rt::get_device_flags) }
    }
    unsafe fn set_limit(limit: i32, value: usize) -> Status {
        let i = match limit_index(limit) {
            Ok(i) => i,
            Err(s) => return s,
        };
        // cudaLimitMaxL2FetchGranularity: 0..=128 bytes.
        if i == 5 && value > 128 {
            return fail(CudaError::InvalidValue);
        }
        LIMITS.lock().unwrap_or_else(|e| e.into_inner())[i] = value;
        abi::SUCCESS
    }
    unsafe fn get_limit(limit: i32, out: *mut usize) -> Status {
        if out.is_null() {
            return fail(CudaError::InvalidValue);
        }
        let i = match limit_index(limit) {
            Ok(i) => i,
            Err(s) => return s,
        };
        let v = LIMITS.lock().unwrap_or_else(|e| e.into_inner())[i];
        // SAFETY: as above.
        unsafe { put(out, || Ok(v)) }
    }
    unsafe fn pointer_attributes(ptr: u64, out: *mut PointerAttrs) -> Status {
        // SAFETY: as above.
        unsafe {
            put(out, || {
                rt::pointer_attributes(ptr).map(|i| PointerAttrs {
                    kind: i.kind as i32,
                    device: i.device,
                    device_ptr: i.device_ptr,
                    host_ptr: i.host_ptr,
                })
            })
        }
    }
    unsafe fn mem_get_info(free: *mut u64, total: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put2(free, total, rt::mem_get_info) }
    }
    unsafe fn stream_priority_range(least: *mut i32, greatest: *mut i32) -> Status {
        // SAFETY: as above.
        unsafe { put2(least, greatest, rt::stream_priority_range) }
    }
    unsafe fn get_last_error() -> Status {
        rt::get_last_error().code()
    }
    unsafe fn peek_at_last_error() -> Status {
        rt::peek_at_last_error().code()
    }
    unsafe fn set_last_error(code: Status) -> Status {
        match CudaError::from_code(code) {
            Some(e) => {
                set_last_error(e);
                abi::SUCCESS
            }
            None => fail(CudaError::InvalidValue),
        }
    }
    unsafe fn malloc(size: usize, out: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::malloc(size)) }
    }
    unsafe fn free(ptr: u64) -> Status {
        st(rt::free(ptr))
    }
    unsafe fn malloc_host(size: usize, out: *mut *mut u8) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::malloc_host(size)) }
    }
    unsafe fn host_alloc(size: usize, flags: u32, out: *mut *mut u8) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::host_alloc(size, flags)) }
    }
    unsafe fn free_host(ptr: *mut u8) -> Status {
        st(rt::free_host(ptr))
    }
    unsafe fn host_register(ptr: *mut u8, size: usize, flags: u32) -> Status {
        st(rt::host_register(ptr, size, flags))
    }
    unsafe fn host_unregister(ptr: *mut u8) -> Status {
        st(rt::host_unregister(ptr))
    }
    unsafe fn memcpy(dst: *mut u8, src: *const u8, count: usize, k: i32) -> Status {
        match kind(k) {
            // SAFETY: the facade's contract (CUDA's): host ranges valid for `count` bytes.
            Ok(k) => st(unsafe { rt::memcpy(dst, src, count, k) }),
            Err(s) => s,
        }
    }
    unsafe fn memcpy_async(dst: *mut u8, src: *const u8, count: usize, k: i32, stream: u64) -> Status {
        match kind(k) {
            // SAFETY: as above, until the copy completes.
            Ok(k) => st(unsafe { rt::memcpy_async(dst, src, count, k, stream) }),
            Err(s) => s,
        }
    }
    unsafe fn memcpy_2d(dst: *mut u8, dpitch: usize, src: *const u8, spitch: usize, width: usize, height: usize, k: i32) -> Status {
        match kind(k) {
            // SAFETY: as above, every row.
            Ok(k) => st(unsafe { rt::memcpy_2d(dst, dpitch, src, spitch, width, height, k) }),
            Err(s) => s,
        }
    }
    unsafe fn memcpy_2d_async(
        dst: *mut u8,
        dpitch: usize,
        src: *const u8,
        spitch: usize,
        width: usize,
        height: usize,
        k: i32,
        stream: u64,
    ) -> Status {
        match kind(k) {
            // SAFETY: as above, every row, until the copy completes.
            Ok(k) => st(unsafe { rt::memcpy_2d_async(dst, dpitch, src, spitch, width, height, k, stream) }),
            Err(s) => s,
        }
    }
    unsafe fn memset(ptr: u64, value: i32, count: usize) -> Status {
        st(rt::memset(ptr, value, count))
    }
    unsafe fn memset_async(ptr: u64, value: i32, count: usize, stream: u64) -> Status {
        st(rt::memset_async(ptr, value, count, stream))
    }
    unsafe fn memcpy_peer(dst: u64, dst_device: i32, src: u64, src_device: i32, count: usize) -> Status {
        st(rt::memcpy_peer(dst, dst_device, src, src_device, count))
    }
    unsafe fn memcpy_peer_async(dst: u64, dst_device: i32, src: u64, src_device: i32, count: usize, stream: u64) -> Status {
        st(rt::memcpy_peer_async(dst, dst_device, src, src_device, count, stream))
    }
    unsafe fn stream_create(flags: u32, priority: i32, out: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::stream_create(flags, priority)) }
    }
    unsafe fn stream_destroy(stream: u64) -> Status {
        st(rt::stream_destroy(stream))
    }
    unsafe fn stream_synchronize(stream: u64) -> Status {
        st(rt::stream_synchronize(stream))
    }
    unsafe fn stream_query(stream: u64) -> Status {
        st(rt::stream_query(stream))
    }
    unsafe fn stream_get_flags(stream: u64, out: *mut u32) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::stream_get_flags(stream)) }
    }
    unsafe fn stream_get_priority(stream: u64, out: *mut i32) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::stream_get_priority(stream)) }
    }
    unsafe fn stream_wait_event(stream: u64, event: u64, flags: u32) -> Status {
        st(rt::stream_wait_event(stream, event, flags))
    }
    unsafe fn launch_host_func(stream: u64, f: HostFn, user: *mut c_void) -> Status {
        let ud = UserData(user);
        st(rt::launch_host_func(
            stream,
            Box::new(move || {
                let ud = ud;
                // SAFETY: CUDA's contract: `f` is a valid host function taking `userData`.
                unsafe { f(ud.0) }
            }),
        ))
    }
    unsafe fn stream_add_callback(stream: u64, cb: StreamCallback, handle: *mut c_void, user: *mut c_void, flags: u32) -> Status {
        let (h, ud) = (UserData(handle), UserData(user));
        st(rt::stream_add_callback(
            stream,
            Box::new(move |status: CudaError| {
                let (h, ud) = (h, ud);
                // SAFETY: CUDA's contract: `cb` is a valid callback taking (stream, status, userData).
                unsafe { cb(h.0, status.code(), ud.0) }
            }),
            flags,
        ))
    }
    unsafe fn event_create(flags: u32, out: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::event_create(flags)) }
    }
    unsafe fn event_destroy(event: u64) -> Status {
        st(rt::event_destroy(event))
    }
    unsafe fn event_record(event: u64, stream: u64) -> Status {
        st(rt::event_record(event, stream))
    }
    unsafe fn event_record_with_flags(event: u64, stream: u64, flags: u32) -> Status {
        st(rt::event_record_with_flags(event, stream, flags))
    }
    unsafe fn event_query(event: u64) -> Status {
        st(rt::event_query(event))
    }
    unsafe fn event_synchronize(event: u64) -> Status {
        st(rt::event_synchronize(event))
    }
    unsafe fn event_elapsed_time(start: u64, end: u64, out: *mut f32) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::event_elapsed_time(start, end)) }
    }
    unsafe fn register_fatbin(wrapper: usize, out: *mut usize) -> Status {
        // SAFETY: as above; `wrapper` is nvcc's wrapper (its contents are checked when used).
        unsafe { put(out, || Ok(kernel::register_fatbin(wrapper))) }
    }
    unsafe fn unregister_fatbin(handle: usize) -> Status {
        kernel::unregister_fatbin(handle);
        abi::SUCCESS
    }
    unsafe fn register_function(handle: usize, host_fun: usize, name: *const c_char) -> Status {
        if name.is_null() {
            return fail(CudaError::InvalidValue);
        }
        // SAFETY: non-null; nvcc passes a NUL-terminated name.
        kernel::register_function(handle, host_fun, unsafe { CStr::from_ptr(name) });
        abi::SUCCESS
    }
    unsafe fn register_var(handle: usize, host_var: usize, name: *const c_char, size: u64, flags: u32) -> Status {
        if name.is_null() {
            return fail(CudaError::InvalidValue);
        }
        // SAFETY: non-null; nvcc passes a NUL-terminated name.
        kernel::register_var(handle, host_var, unsafe { CStr::from_ptr(name) }, size, flags & 1 != 0, flags & 2 != 0);
        abi::SUCCESS
    }
    unsafe fn init_module(handle: usize, out: *mut u8) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || Ok(u8::from(kernel::init_module(handle)))) }
    }
    unsafe fn push_call_configuration(cfg: *const CallConfig) -> Status {
        if cfg.is_null() {
            return fail(CudaError::InvalidValue);
        }
        // SAFETY: non-null; the facade passes a live `CallConfig`.
        let c = unsafe { cfg.read_unaligned() };
        kernel::push_call_configuration(kernel::CallConfig { grid: c.grid, block: c.block, shared: c.shared, stream: c.stream });
        abi::SUCCESS
    }
    unsafe fn pop_call_configuration(out: *mut CallConfig) -> Status {
        if out.is_null() {
            return fail(CudaError::InvalidValue);
        }
        match kernel::pop_call_configuration() {
            // SAFETY: non-null (checked).
            Some(c) => unsafe { put(out, || Ok(CallConfig { grid: c.grid, block: c.block, shared: c.shared, stream: c.stream })) },
            None => fail(CudaError::MissingConfiguration),
        }
    }
    unsafe fn launch_kernel(host_fun: usize, cfg: *const LaunchParams, args: *const *const c_void) -> Status {
        if cfg.is_null() {
            return fail(CudaError::InvalidValue);
        }
        // SAFETY: non-null; the facade passes a live `LaunchParams`.
        let p = unsafe { cfg.read_unaligned() };
        let lc = kernel::LaunchConfig { grid: p.grid, block: p.block, shared: p.shared, stream: p.stream, cooperative: p.cooperative != 0 };
        // SAFETY: CUDA's contract for `args`, forwarded.
        st(unsafe { rt::launch_kernel(host_fun, &lc, args) })
    }
    unsafe fn get_kernel(host_fun: usize, out: *mut usize) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::get_kernel(host_fun)) }
    }
    unsafe fn func_get_attributes(host_fun: usize, out: *mut FuncAttrs) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::func_get_attributes(host_fun).map(|(info, cluster)| FuncAttrs { info, cluster, _pad: 0 })) }
    }
    unsafe fn func_set_attribute(host_fun: usize, attr: i32, value: i32) -> Status {
        st(rt::func_set_attribute(host_fun, attr, value))
    }
    unsafe fn func_set_preference(host_fun: usize, value: i32, max: i32) -> Status {
        st(rt::func_set_preference(host_fun, value, max))
    }
    unsafe fn occupancy_max_active_blocks(host_fun: usize, block_size: i32, shared: usize, flags: u32, out: *mut i32) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::occupancy_max_active_blocks(host_fun, block_size, shared, flags)) }
    }
    unsafe fn symbol(host_var: usize, addr: *mut u64, size: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put2(addr, size, || rt::symbol(host_var)) }
    }
    unsafe fn memcpy_to_symbol(host_var: usize, src: *const u8, count: usize, offset: usize, k: i32, stream: *const u64) -> Status {
        let k = match kind(k) {
            Ok(k) => k,
            Err(s) => return s,
        };
        // SAFETY: `stream` is null or a live `u64` (the facade's local).
        let s = unsafe { stream.as_ref() }.copied();
        // SAFETY: CUDA's contract for `src`, forwarded.
        st(unsafe { rt::memcpy_to_symbol(host_var, src, count, offset, k, s) })
    }
    unsafe fn memcpy_from_symbol(dst: *mut u8, host_var: usize, count: usize, offset: usize, k: i32, stream: *const u64) -> Status {
        let k = match kind(k) {
            Ok(k) => k,
            Err(s) => return s,
        };
        // SAFETY: `stream` is null or a live `u64` (the facade's local).
        let s = unsafe { stream.as_ref() }.copied();
        // SAFETY: CUDA's contract for `dst`, forwarded.
        st(unsafe { rt::memcpy_from_symbol(dst, host_var, count, offset, k, s) })
    }
    unsafe fn stream_begin_capture(stream: u64, mode: i32) -> Status {
        st(rt::stream_begin_capture(stream, mode))
    }
    unsafe fn stream_end_capture(stream: u64, out: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::stream_end_capture(stream)) }
    }
    unsafe fn stream_capture_info(stream: u64, status: *mut i32, id: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put2(status, id, || rt::stream_capture_info(stream).map(|(s, id)| (s as i32, id))) }
    }
    unsafe fn thread_exchange_capture_mode(mode: i32, old: *mut i32) -> Status {
        // SAFETY: as above.
        unsafe { put(old, || rt::thread_exchange_capture_mode(mode)) }
    }
    unsafe fn graph_instantiate(graph: u64, flags: u64, out: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::graph_instantiate(graph, flags)) }
    }
    unsafe fn graph_exec_update(exec: u64, graph: u64, out: *mut u32) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || rt::graph_exec_update(exec, graph)) }
    }
    unsafe fn graph_launch(exec: u64, stream: u64) -> Status {
        st(rt::graph_launch(exec, stream))
    }
    unsafe fn graph_destroy(graph: u64) -> Status {
        st(rt::graph_destroy(graph))
    }
    unsafe fn graph_exec_destroy(exec: u64) -> Status {
        st(rt::graph_exec_destroy(exec))
    }
    unsafe fn blocking_round_trips(out: *mut u64) -> Status {
        // SAFETY: as above.
        unsafe { put(out, || Ok(rt::blocking_round_trips())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_the_current_header_and_errors_record() {
        // SAFETY: the entry returns the static table.
        let t = unsafe { &*vgpu_runtime_v1() };
        assert_eq!(t.header, abi::Header::current());
        // A bad limit is the facade's error to report, recorded as the last error.
        // SAFETY: plain values.
        assert_eq!(unsafe { (t.set_limit)(99, 0) }, CudaError::UnsupportedLimit.code());
        // SAFETY: no arguments.
        assert_eq!(unsafe { (t.get_last_error)() }, CudaError::UnsupportedLimit.code());
        // SAFETY: a null out-pointer is refused, not written.
        assert_eq!(unsafe { (t.get_limit)(0, std::ptr::null_mut()) }, CudaError::InvalidValue.code());
        let mut v = 0usize;
        // SAFETY: a live local.
        assert_eq!(unsafe { (t.get_limit)(0, &mut v) }, 0);
        assert_eq!(v, 1024);
        let mut c = CallConfig::default();
        // SAFETY: a live local (nothing pushed on this thread yet).
        assert_eq!(unsafe { (t.pop_call_configuration)(&mut c) }, CudaError::MissingConfiguration.code());
        let pushed = CallConfig { grid: [1, 2, 3], block: [4, 5, 6], shared: 7, stream: 8 };
        // SAFETY: a live local; then popped back.
        assert_eq!(unsafe { (t.push_call_configuration)(&pushed) }, 0);
        // SAFETY: a live local.
        assert_eq!(unsafe { (t.pop_call_configuration)(&mut c) }, 0);
        assert_eq!(c, pushed);
        // SAFETY: an invalid copy direction is refused before any pointer is used.
        assert_eq!(unsafe { (t.memcpy)(std::ptr::null_mut(), std::ptr::null(), 0, 9) }, CudaError::InvalidMemcpyDirection.code());
    }
}
