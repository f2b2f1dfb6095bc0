//! The runtime's entries in Rust shape, for facades: out-pointers become return values and a
//! [`Status`] other than success becomes `Err`. Each is one call through the table ([`raw`]);
//! the runtime has already recorded a failure as the thread's last error.

use std::ffi::{c_char, c_void, CStr};

use crate::{raw, CallConfig, DeviceInfo, FuncAttrs, HostFn, LaunchParams, PointerAttrs, Status, StreamCallback, SUCCESS};

/// A result with a `cudaError_t` value as the error.
pub type Result<T> = std::result::Result<T, Status>;

fn ok(s: Status) -> Result<()> {
    if s == SUCCESS {
        Ok(())
    } else {
        Err(s)
    }
}

/// Call `f` with a pointer to a default `T` and return it on success.
fn out<T: Default>(f: impl FnOnce(*mut T) -> Status) -> Result<T> {
    let mut v = T::default();
    ok(f(&mut v))?;
    Ok(v)
}

fn out2<A: Default, B: Default>(f: impl FnOnce(*mut A, *mut B) -> Status) -> Result<(A, B)> {
    let (mut a, mut b) = (A::default(), B::default());
    ok(f(&mut a, &mut b))?;
    Ok((a, b))
}

// SAFETY (for every `unsafe { raw::x(..) }` below without its own comment): the out-pointers
// are live locals; the other arguments are plain values.

pub fn get_device_count() -> Result<i32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::get_device_count(p) })
}
pub fn set_device(device: i32) -> Result<()> {
    // SAFETY: see above.
    ok(unsafe { raw::set_device(device) })
}
pub fn get_device() -> Result<i32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::get_device(p) })
}
pub fn device_info() -> Result<DeviceInfo> {
    // SAFETY: see above.
    out(|p| unsafe { raw::device_info(p) })
}
pub fn device_synchronize() -> Result<()> {
    // SAFETY: see above.
    ok(unsafe { raw::device_synchronize() })
}
pub fn device_reset() -> Result<()> {
    // SAFETY: see above.
    ok(unsafe { raw::device_reset() })
}
pub fn set_device_flags(flags: u32) -> Result<()> {
    // SAFETY: see above.
    ok(unsafe { raw::set_device_flags(flags) })
}
pub fn get_device_flags() -> Result<u32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::get_device_flags(p) })
}
pub fn set_limit(limit: i32, value: usize) -> Result<()> {
    // SAFETY: see above.
    ok(unsafe { raw::set_limit(limit, value) })
}
pub fn get_limit(limit: i32) -> Result<usize> {
    // SAFETY: see above.
    out(|p| unsafe { raw::get_limit(limit, p) })
}
pub fn pointer_attributes(ptr: u64) -> Result<PointerAttrs> {
    // SAFETY: see above.
    out(|p| unsafe { raw::pointer_attributes(ptr, p) })
}
/// (free, total).
pub fn mem_get_info() -> Result<(u64, u64)> {
    // SAFETY: see above.
    out2(|a, b| unsafe { raw::mem_get_info(a, b) })
}
/// (least, greatest).
pub fn stream_priority_range() -> Result<(i32, i32)> {
    // SAFETY: see above.
    out2(|a, b| unsafe { raw::stream_priority_range(a, b) })
}
/// The thread's last error, reset (`cudaGetLastError`).
pub fn get_last_error() -> Status {
    // SAFETY: no arguments.
    unsafe { raw::get_last_error() }
}
/// `cudaPeekAtLastError`.
pub fn peek_at_last_error() -> Status {
    // SAFETY: no arguments.
    unsafe { raw::peek_at_last_error() }
}
/// Record `code` as the thread's last error (ignored if the runtime cannot be loaded).
pub fn set_last_error(code: Status) {
    // SAFETY: a plain value.
    let _ = unsafe { raw::set_last_error(code) };
}
pub fn malloc(size: usize) -> Result<u64> {
    // SAFETY: see above.
    out(|p| unsafe { raw::malloc(size, p) })
}
pub fn free(ptr: u64) -> Result<()> {
    // SAFETY: see above.
    ok(unsafe { raw::free(ptr) })
}
pub fn malloc_host(size: usize) -> Result<*mut u8> {
    let mut p = std::ptr::null_mut();
    // SAFETY: see above.
    ok(unsafe { raw::malloc_host(size, &mut p) })?;
    Ok(p)
}
pub fn host_alloc(size: usize, flags: u32) -> Result<*mut u8> {
    let mut p = std::ptr::null_mut();
    // SAFETY: see above.
    ok(unsafe { raw::host_alloc(size, flags, &mut p) })?;
    Ok(p)
}
// The runtime treats `ptr` as an address to look up or record, never reads through it.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn free_host(ptr: *mut u8) -> Result<()> {
    // SAFETY: the runtime only looks `ptr` up in its tables.
    ok(unsafe { raw::free_host(ptr) })
}
// The runtime treats `ptr` as an address to look up or record, never reads through it.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn host_register(ptr: *mut u8, size: usize, flags: u32) -> Result<()> {
    // SAFETY: the runtime records the range; CUDA's contract makes it the program's memory.
    ok(unsafe { raw::host_register(ptr, size, flags) })
}
// The runtime treats `ptr` as an address to look up or record, never reads through it.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn host_unregister(ptr: *mut u8) -> Result<()> {
    // SAFETY: the runtime only looks `ptr` up in its tables.
    ok(unsafe { raw::host_unregister(ptr) })
}

/// `cudaMemcpy`.
///
/// # Safety
/// Host ranges must be valid for `count` bytes.
pub unsafe fn memcpy(dst: *mut u8, src: *const u8, count: usize, kind: i32) -> Result<()> {
    // SAFETY: the caller's contract.
    ok(unsafe { raw::memcpy(dst, src, count, kind) })
}
/// `cudaMemcpyAsync`.
///
/// # Safety
/// Host ranges must be valid for `count` bytes until the copy completes.
pub unsafe fn memcpy_async(dst: *mut u8, src: *const u8, count: usize, kind: i32, stream: u64) -> Result<()> {
    // SAFETY: the caller's contract.
    ok(unsafe { raw::memcpy_async(dst, src, count, kind, stream) })
}
/// `cudaMemcpy2D`.
///
/// # Safety
/// Every host row must be valid.
pub unsafe fn memcpy_2d(dst: *mut u8, dpitch: usize, src: *const u8, spitch: usize, width: usize, height: usize, kind: i32) -> Result<()> {
    // SAFETY: the caller's contract.
    ok(unsafe { raw::memcpy_2d(dst, dpitch, src, spitch, width, height, kind) })
}
/// `cudaMemcpy2DAsync`.
///
/// # Safety
/// Every host row must be valid until the copy completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn memcpy_2d_async(
    dst: *mut u8,
    dpitch: usize,
    src: *const u8,
    spitch: usize,
    width: usize,
    height: usize,
    kind: i32,
    stream: u64,
) -> Result<()> {
    // SAFETY: the caller's contract.
    ok(unsafe { raw::memcpy_2d_async(dst, dpitch, src, spitch, width, height, kind, stream) })
}
pub fn memset(ptr: u64, value: i32, count: usize) -> Result<()> {
    // SAFETY: device addresses are checked by the runtime.
    ok(unsafe { raw::memset(ptr, value, count) })
}
pub fn memset_async(ptr: u64, value: i32, count: usize, stream: u64) -> Result<()> {
    // SAFETY: device addresses are checked by the runtime.
    ok(unsafe { raw::memset_async(ptr, value, count, stream) })
}
pub fn memcpy_peer(dst: u64, dst_device: i32, src: u64, src_device: i32, count: usize) -> Result<()> {
    // SAFETY: device addresses are checked by the runtime.
    ok(unsafe { raw::memcpy_peer(dst, dst_device, src, src_device, count) })
}
pub fn memcpy_peer_async(dst: u64, dst_device: i32, src: u64, src_device: i32, count: usize, stream: u64) -> Result<()> {
    // SAFETY: device addresses are checked by the runtime.
    ok(unsafe { raw::memcpy_peer_async(dst, dst_device, src, src_device, count, stream) })
}
pub fn stream_create(flags: u32, priority: i32) -> Result<u64> {
    // SAFETY: see above.
    out(|p| unsafe { raw::stream_create(flags, priority, p) })
}
pub fn stream_destroy(stream: u64) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::stream_destroy(stream) })
}
pub fn stream_synchronize(stream: u64) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::stream_synchronize(stream) })
}
pub fn stream_query(stream: u64) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::stream_query(stream) })
}
pub fn stream_get_flags(stream: u64) -> Result<u32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::stream_get_flags(stream, p) })
}
pub fn stream_get_priority(stream: u64) -> Result<i32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::stream_get_priority(stream, p) })
}
pub fn stream_wait_event(stream: u64, event: u64, flags: u32) -> Result<()> {
    // SAFETY: plain values.
    ok(unsafe { raw::stream_wait_event(stream, event, flags) })
}

/// `cudaLaunchHostFunc`.
///
/// # Safety
/// `f` must be safe to call with `user` on a runtime thread.
pub unsafe fn launch_host_func(stream: u64, f: HostFn, user: *mut c_void) -> Result<()> {
    // SAFETY: the caller's contract.
    ok(unsafe { raw::launch_host_func(stream, f, user) })
}
/// `cudaStreamAddCallback`.
///
/// # Safety
/// `cb` must be safe to call with (`handle`, a status, `user`) on a runtime thread.
pub unsafe fn stream_add_callback(stream: u64, cb: StreamCallback, handle: *mut c_void, user: *mut c_void, flags: u32) -> Result<()> {
    // SAFETY: the caller's contract.
    ok(unsafe { raw::stream_add_callback(stream, cb, handle, user, flags) })
}
pub fn event_create(flags: u32) -> Result<u64> {
    // SAFETY: see above.
    out(|p| unsafe { raw::event_create(flags, p) })
}
pub fn event_destroy(event: u64) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::event_destroy(event) })
}
pub fn event_record(event: u64, stream: u64) -> Result<()> {
    // SAFETY: plain values.
    ok(unsafe { raw::event_record(event, stream) })
}
pub fn event_record_with_flags(event: u64, stream: u64, flags: u32) -> Result<()> {
    // SAFETY: plain values.
    ok(unsafe { raw::event_record_with_flags(event, stream, flags) })
}
pub fn event_query(event: u64) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::event_query(event) })
}
pub fn event_synchronize(event: u64) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::event_synchronize(event) })
}
pub fn event_elapsed_time(start: u64, end: u64) -> Result<f32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::event_elapsed_time(start, end, p) })
}

/// `__cudaRegisterFatBinary`: the module handle.
///
/// # Safety
/// `wrapper` is the address of nvcc's fat binary wrapper, valid for the life of the module.
pub unsafe fn register_fatbin(wrapper: usize) -> Result<usize> {
    // SAFETY: the caller's contract.
    out(|p| unsafe { raw::register_fatbin(wrapper, p) })
}
pub fn unregister_fatbin(handle: usize) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::unregister_fatbin(handle) })
}
pub fn register_function(handle: usize, host_fun: usize, name: &CStr) -> Result<()> {
    // SAFETY: `name` is NUL-terminated; the runtime copies it.
    ok(unsafe { raw::register_function(handle, host_fun, name.as_ptr()) })
}
/// `flags`: bit 0 constant, bit 1 managed.
pub fn register_var(handle: usize, host_var: usize, name: &CStr, size: u64, flags: u32) -> Result<()> {
    // SAFETY: `name` is NUL-terminated; the runtime copies it.
    ok(unsafe { raw::register_var(handle, host_var, name.as_ptr() as *const c_char, size, flags) })
}
pub fn init_module(handle: usize) -> Result<bool> {
    // SAFETY: see above.
    out(|p: *mut u8| unsafe { raw::init_module(handle, p) }).map(|v| v != 0)
}
pub fn push_call_configuration(c: CallConfig) -> Result<()> {
    // SAFETY: a live local.
    ok(unsafe { raw::push_call_configuration(&c) })
}
pub fn pop_call_configuration() -> Result<CallConfig> {
    // SAFETY: see above.
    out(|p| unsafe { raw::pop_call_configuration(p) })
}

/// `cudaLaunchKernel`.
///
/// # Safety
/// `args` is null or holds one pointer per parameter, each to at least the parameter's size.
pub unsafe fn launch_kernel(host_fun: usize, cfg: &LaunchParams, args: *const *const c_void) -> Result<()> {
    // SAFETY: the caller's contract.
    ok(unsafe { raw::launch_kernel(host_fun, cfg, args) })
}
pub fn get_kernel(host_fun: usize) -> Result<usize> {
    // SAFETY: see above.
    out(|p| unsafe { raw::get_kernel(host_fun, p) })
}
pub fn func_get_attributes(host_fun: usize) -> Result<FuncAttrs> {
    // SAFETY: see above.
    out(|p| unsafe { raw::func_get_attributes(host_fun, p) })
}
pub fn func_set_attribute(host_fun: usize, attr: i32, value: i32) -> Result<()> {
    // SAFETY: plain values.
    ok(unsafe { raw::func_set_attribute(host_fun, attr, value) })
}
pub fn func_set_preference(host_fun: usize, value: i32, max: i32) -> Result<()> {
    // SAFETY: plain values.
    ok(unsafe { raw::func_set_preference(host_fun, value, max) })
}
pub fn occupancy_max_active_blocks(host_fun: usize, block_size: i32, shared: usize, flags: u32) -> Result<i32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::occupancy_max_active_blocks(host_fun, block_size, shared, flags, p) })
}
/// (device address, size).
pub fn symbol(host_var: usize) -> Result<(u64, u64)> {
    // SAFETY: see above.
    out2(|a, b| unsafe { raw::symbol(host_var, a, b) })
}

/// `cudaMemcpyToSymbol[Async]` (`stream` None: synchronous).
///
/// # Safety
/// `src` is valid for `count` bytes (until the copy is staged or done).
pub unsafe fn memcpy_to_symbol(host_var: usize, src: *const u8, count: usize, offset: usize, kind: i32, stream: Option<u64>) -> Result<()> {
    let s = stream.as_ref().map_or(std::ptr::null(), |s| s as *const u64);
    // SAFETY: the caller's contract; `s` is null or a live local.
    ok(unsafe { raw::memcpy_to_symbol(host_var, src, count, offset, kind, s) })
}
/// `cudaMemcpyFromSymbol[Async]`.
///
/// # Safety
/// `dst` is valid for `count` bytes until the copy completes.
pub unsafe fn memcpy_from_symbol(dst: *mut u8, host_var: usize, count: usize, offset: usize, kind: i32, stream: Option<u64>) -> Result<()> {
    let s = stream.as_ref().map_or(std::ptr::null(), |s| s as *const u64);
    // SAFETY: the caller's contract; `s` is null or a live local.
    ok(unsafe { raw::memcpy_from_symbol(dst, host_var, count, offset, kind, s) })
}
pub fn stream_begin_capture(stream: u64, mode: i32) -> Result<()> {
    // SAFETY: plain values.
    ok(unsafe { raw::stream_begin_capture(stream, mode) })
}
pub fn stream_end_capture(stream: u64) -> Result<u64> {
    // SAFETY: see above.
    out(|p| unsafe { raw::stream_end_capture(stream, p) })
}
/// (`cudaStreamCaptureStatus`, capture id).
pub fn stream_capture_info(stream: u64) -> Result<(i32, u64)> {
    // SAFETY: see above.
    out2(|a, b| unsafe { raw::stream_capture_info(stream, a, b) })
}
pub fn thread_exchange_capture_mode(mode: i32) -> Result<i32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::thread_exchange_capture_mode(mode, p) })
}
pub fn graph_instantiate(graph: u64, flags: u64) -> Result<u64> {
    // SAFETY: see above.
    out(|p| unsafe { raw::graph_instantiate(graph, flags, p) })
}
pub fn graph_exec_update(exec: u64, graph: u64) -> Result<u32> {
    // SAFETY: see above.
    out(|p| unsafe { raw::graph_exec_update(exec, graph, p) })
}
pub fn graph_launch(exec: u64, stream: u64) -> Result<()> {
    // SAFETY: plain values.
    ok(unsafe { raw::graph_launch(exec, stream) })
}
pub fn graph_destroy(graph: u64) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::graph_destroy(graph) })
}
pub fn graph_exec_destroy(exec: u64) -> Result<()> {
    // SAFETY: a plain value.
    ok(unsafe { raw::graph_exec_destroy(exec) })
}
pub fn blocking_round_trips() -> Result<u64> {
    // SAFETY: see above.
    out(|p| unsafe { raw::blocking_round_trips(p) })
}
