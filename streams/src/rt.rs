//! CUDA Runtime-shaped functions over the process-wide [`Context`], for the `extern "C"`
//! facade (`cudart-abi`). Each records its failure as the calling thread's last error.
//!
//! Which calls cost what:
//! - local (no round trip): [`get_device`], [`set_device`], [`get_last_error`],
//!   [`peek_at_last_error`], [`stream_is_capturing`], [`stream_get_flags`],
//!   [`stream_get_priority`], [`device_info`] after the first fetch, pinned allocation,
//!   [`pointer_attributes`], [`get_device_flags`], the device-range checks of memsets and copies;
//! - fire-and-forget (an enqueue): [`memset`], [`memset_async`], [`memcpy_async`] (H2D from pinned
//!   or once staged, D2D, D2H), [`event_record`], [`stream_wait_event`], [`launch_host_func`],
//!   [`stream_destroy`], [`event_destroy`];
//! - one round trip: [`malloc`], [`free`], [`mem_get_info`], creation, every synchronising call.

use std::sync::Arc;

use vgpu_transport::wire::{req, DeviceInfo};

use crate::context::Context;
pub use crate::error::{get_last_error, peek_at_last_error};
use crate::error::{record, CudaError, Result};
use crate::graph::{CaptureMode, CaptureStatus, RawGraph, RawGraphExec};
use crate::kernel::LaunchConfig;
use crate::memory::Seg;
use crate::types::{MemcpyKind, RawEvent, RawStream, PRIORITY_GREATEST, PRIORITY_LEAST};

fn ctx() -> Result<&'static Arc<Context>> {
    Context::global()
}

/// Run `f` on the global context and record its error.
fn with<T>(f: impl FnOnce(&'static Arc<Context>) -> Result<T>) -> Result<T> {
    record(ctx().and_then(f))
}

/// `cudaGetDeviceCount`: 1 when the mediator is reachable; `NoDevice` otherwise.
pub fn get_device_count() -> Result<i32> {
    with(|_| Ok(1))
}

/// `cudaSetDevice`: only device 0 exists.
pub fn set_device(device: i32) -> Result<()> {
    with(|c| if device == 0 { c.sticky() } else { Err(CudaError::InvalidDevice) })
}

/// `cudaGetDevice`: always 0 (local).
pub fn get_device() -> Result<i32> {
    with(|c| c.sticky().map(|_| 0))
}

/// Device properties: one round trip the first time, then cached.
pub fn device_info() -> Result<DeviceInfo> {
    with(|c| c.device_info())
}

/// `cudaDeviceSynchronize` (`StreamCaptureUnsupported` while a stream captures).
pub fn device_synchronize() -> Result<()> {
    with(|c| {
        c.capture_check_sync(None)?;
        c.device_synchronize()
    })
}

/// `cudaDeviceReset`: waits for all work, then frees every allocation, stream, event and pinned
/// buffer of the process and forgets host registrations (see [`Context`]'s `reset`). Old
/// pointers and handles are rejected afterwards (`InvalidValue`, `InvalidResourceHandle`);
/// per-thread streams are created again on their next use. The device flags stay.
pub fn device_reset() -> Result<()> {
    with(|c| {
        c.capture_forget(None);
        c.reset()
    })
}

/// `cudaSetDeviceFlags`: validated as CUDA does ([`crate::device_flags::validate`]) and kept
/// process-wide. The schedule flag picks how blocked callers of a connection made afterwards
/// wait (`BlockingSync`: no spinning; `Spin`: adaptive spinning; otherwise the default), so it
/// takes effect when set before the first device call, as programs do; set later, it is
/// recorded and reported by [`get_device_flags`] only. Connects, as CUDA initialises the device.
pub fn set_device_flags(flags: u32) -> Result<()> {
    record(crate::device_flags::validate(flags)).inspect(|_| crate::device_flags::set(flags))?;
    with(|c| c.sticky())
}

/// `cudaGetDeviceFlags`: the flags last set (0 by default; `cudaDeviceMapHost` is not implied,
/// since pinned memory has no device alias here).
pub fn get_device_flags() -> Result<u32> {
    with(|c| c.sticky().map(|_| crate::device_flags::get()))
}

/// `cudaPointerGetAttributes`: device pointers inside a live allocation (`Device`), pinned or
/// registered host memory (`Host`), anything else, null included, unregistered host memory
/// (`Unregistered`, device [`crate::INVALID_DEVICE_ID`]), as CUDA 11 and later answer. Local.
pub fn pointer_attributes(ptr: u64) -> Result<crate::memory::PointerInfo> {
    with(|c| c.sticky().map(|_| c.pointer_info(ptr)))
}

/// `cudaMemGetInfo`: `(free, total)`.
pub fn mem_get_info() -> Result<(u64, u64)> {
    with(|c| c.call(0, req::MemGetInfo {}).map(|r| (r.free, r.total)))
}

/// `cudaDeviceGetStreamPriorityRange`: `(least, greatest)`.
pub fn stream_priority_range() -> Result<(i32, i32)> {
    with(|c| c.sticky().map(|_| (PRIORITY_LEAST, PRIORITY_GREATEST)))
}

/// Blocking round trips made by this process so far (0 before the first connection).
pub fn blocking_round_trips() -> u64 {
    Context::global_if_connected().map_or(0, |c| c.blocking_round_trips())
}

/// `cudaMalloc`: size 0 gives a null pointer, as CUDA.
pub fn malloc(size: usize) -> Result<u64> {
    with(|c| {
        c.capture_check_unsafe()?;
        c.malloc(size)
    })
}

/// `cudaFree`: null is a no-op; anything not returned by [`malloc`] is `InvalidValue`.
pub fn free(dev_ptr: u64) -> Result<()> {
    with(|c| {
        c.capture_check_unsafe()?;
        c.free(dev_ptr)
    })
}

/// `cudaMallocHost`: pinned memory from the data window, 256-byte aligned.
pub fn malloc_host(size: usize) -> Result<*mut u8> {
    with(|c| c.host_alloc(size, 0))
}

/// `cudaHostAlloc`: as [`malloc_host`]; all flags are accepted (`Mapped` memory has no device
/// alias yet: `cudaHostGetDevicePointer` is not supported).
pub fn host_alloc(size: usize, flags: u32) -> Result<*mut u8> {
    with(|c| c.host_alloc(size, flags))
}

/// `cudaFreeHost`: waits for in-flight work, then releases the range.
pub fn free_host(ptr: *mut u8) -> Result<()> {
    with(|c| c.free_host(ptr))
}

/// `cudaHostRegister`: recorded; the memory behaves as pageable memory (staged copies).
pub fn host_register(ptr: *mut u8, size: usize, flags: u32) -> Result<()> {
    with(|c| c.host_register(ptr, size, flags))
}

/// `cudaHostUnregister`.
pub fn host_unregister(ptr: *mut u8) -> Result<()> {
    with(|c| c.host_unregister(ptr))
}

/// Whether `[ptr, ptr+len)` lies in one live pinned allocation of the global context.
pub fn is_pinned(ptr: *const u8, len: usize) -> bool {
    Context::global_if_connected().is_some_and(|c| c.pinned_offset(ptr as usize, len).is_some())
}

/// `cudaMemcpy`: synchronous for host memory; device-to-device is asynchronous to the host, as
/// CUDA. Issued on the legacy default stream.
///
/// # Safety
/// Host ranges (as `kind` or the pointers say) must be valid for `count` bytes.
pub unsafe fn memcpy(dst: *mut u8, src: *const u8, count: usize, kind: MemcpyKind) -> Result<()> {
    // SAFETY: forwarded caller guarantee.
    with(|c| unsafe { c.copy_sync(dst as u64, src as u64, count, kind, 0) })
}

/// A synchronous copy ordered on `stream` (for the `_ptds` forms of `cudaMemcpy`, which use
/// the per-thread stream): returns when host memory is done, like [`memcpy`].
///
/// # Safety
/// As [`memcpy`].
pub unsafe fn memcpy_on(dst: *mut u8, src: *const u8, count: usize, kind: MemcpyKind, stream: RawStream) -> Result<()> {
    with(|c| {
        let h = c.host_stream(stream)?;
        // SAFETY: forwarded caller guarantee.
        unsafe { c.copy_sync(dst as u64, src as u64, count, kind, h) }
    })
}

/// `cudaMemcpyAsync`. H2D from pageable memory returns once the bytes are staged; from pinned
/// memory at once (zero-copy). D2H into pageable memory returns once the bytes are in `dst`,
/// CUDA's documented behaviour (the reactor copies them out of the window before the copy counts
/// as done). With `VGPU_ASYNC_PAGEABLE_D2H=1` it returns at once instead and the bytes are there
/// when a later sync of the stream (or an event recorded after it) returns; `dst` must then stay
/// valid until that sync.
///
/// # Safety
/// Host ranges must be valid for `count` bytes until the copy completes.
pub unsafe fn memcpy_async(dst: *mut u8, src: *const u8, count: usize, kind: MemcpyKind, stream: RawStream) -> Result<()> {
    with(|c| {
        let h = c.host_stream(stream)?;
        // SAFETY: forwarded caller guarantee.
        unsafe { c.copy_1d(dst as u64, src as u64, count, kind, h, false) }
    })
}

/// `cudaMemcpy2D`.
///
/// # Safety
/// Every host row must be valid.
pub unsafe fn memcpy_2d(
    dst: *mut u8,
    dpitch: usize,
    src: *const u8,
    spitch: usize,
    width: usize,
    height: usize,
    kind: MemcpyKind,
) -> Result<()> {
    with(|c| {
        // SAFETY: forwarded caller guarantee.
        unsafe { c.copy_2d(dst as u64, dpitch, src as u64, spitch, width, height, kind, 0, true)? };
        c.deferred()
    })
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
    kind: MemcpyKind,
    stream: RawStream,
) -> Result<()> {
    with(|c| {
        let h = c.host_stream(stream)?;
        // SAFETY: forwarded caller guarantee.
        unsafe { c.copy_2d(dst as u64, dpitch, src as u64, spitch, width, height, kind, h, false) }
    })
}

/// `cudaMemset` (asynchronous to the host for device memory, as CUDA).
pub fn memset(dev_ptr: u64, value: i32, count: usize) -> Result<()> {
    with(|c| c.memset_on(dev_ptr, value, count, 0))
}

/// `cudaMemsetAsync`.
pub fn memset_async(dev_ptr: u64, value: i32, count: usize, stream: RawStream) -> Result<()> {
    with(|c| {
        let h = c.host_stream(stream)?;
        c.memset_on(dev_ptr, value, count, h)
    })
}

fn peer_devices(dst_device: i32, src_device: i32) -> Result<()> {
    if dst_device != 0 || src_device != 0 {
        return Err(CudaError::InvalidDevice);
    }
    Ok(())
}

/// `cudaMemcpyPeer` (one device: a device-to-device copy).
pub fn memcpy_peer(dst: u64, dst_device: i32, src: u64, src_device: i32, count: usize) -> Result<()> {
    with(|c| {
        peer_devices(dst_device, src_device)?;
        // SAFETY: device-to-device: no host memory is touched.
        unsafe { c.copy_1d(dst, src, count, MemcpyKind::DeviceToDevice, 0, false) }
    })
}

/// `cudaMemcpyPeerAsync`.
pub fn memcpy_peer_async(dst: u64, dst_device: i32, src: u64, src_device: i32, count: usize, stream: RawStream) -> Result<()> {
    with(|c| {
        peer_devices(dst_device, src_device)?;
        let h = c.host_stream(stream)?;
        // SAFETY: device-to-device: no host memory is touched.
        unsafe { c.copy_1d(dst, src, count, MemcpyKind::DeviceToDevice, h, false) }
    })
}

/// `cudaStreamCreateWithPriority` (`cudaStreamCreate` = flags 0, priority 0).
pub fn stream_create(flags: u32, priority: i32) -> Result<RawStream> {
    with(|c| c.stream_create(flags, priority))
}

/// `cudaStreamDestroy`: returns at once; the stream's queued work still completes.
pub fn stream_destroy(stream: RawStream) -> Result<()> {
    with(|c| {
        // (Not for the special handles: resolving the per-thread one would create it.)
        if stream > crate::types::STREAM_PER_THREAD {
            if let Ok(h) = c.host_stream(stream) {
                c.capture_forget(Some(h));
            }
        }
        c.stream_destroy(stream)
    })
}

/// `cudaStreamSynchronize`.
pub fn stream_synchronize(stream: RawStream) -> Result<()> {
    with(|c| {
        c.capture_check_sync(Some(c.host_stream(stream)?))?;
        c.stream_synchronize(stream)
    })
}

/// `cudaStreamQuery`: `Err(NotReady)` while work is pending (not recorded as last error).
pub fn stream_query(stream: RawStream) -> Result<()> {
    with(|c| {
        c.capture_check_sync(Some(c.host_stream(stream)?))?;
        c.stream_query(stream)
    })
}

/// `cudaStreamGetFlags` (local).
pub fn stream_get_flags(stream: RawStream) -> Result<u32> {
    with(|c| c.stream_entry(stream).map(|e| e.flags))
}

/// `cudaStreamGetPriority` (local).
pub fn stream_get_priority(stream: RawStream) -> Result<i32> {
    with(|c| c.stream_entry(stream).map(|e| e.priority))
}

/// `cudaStreamWaitEvent`: later work on `stream` waits for the event's captured work.
pub fn stream_wait_event(stream: RawStream, event: RawEvent, flags: u32) -> Result<()> {
    with(|c| {
        if flags & !1 != 0 {
            return Err(CudaError::InvalidValue);
        }
        let h = c.host_stream(stream)?;
        let e = c.event(event)?;
        c.capture_check(h, false)?;
        c.fire(h, req::StreamWaitEvent { event: e.host, flags: 0 })
    })
}

/// `cudaStreamIsCapturing`: whether a capture (active or invalidated) is under way (local).
pub fn stream_is_capturing(stream: RawStream) -> Result<bool> {
    stream_capture_info(stream).map(|(s, _)| s != CaptureStatus::None)
}

/// `cudaLaunchHostFunc`: `f` runs on the host-function thread once all earlier work on the
/// stream is done; later work on the stream waits for it to return.
pub fn launch_host_func(stream: RawStream, f: Box<dyn FnOnce() + Send>) -> Result<()> {
    with(|c| {
        c.capture_check(c.host_stream(stream)?, false)?;
        c.host_fn(
            stream,
            Box::new(move |status| {
                if status == CudaError::Success {
                    f()
                }
            }),
        )
    })
}

/// `cudaStreamAddCallback`: as [`launch_host_func`], and the callback learns the stream's status.
/// `flags` must be 0.
pub fn stream_add_callback(stream: RawStream, f: Box<dyn FnOnce(CudaError) + Send>, flags: u32) -> Result<()> {
    with(|c| {
        if flags != 0 {
            return Err(CudaError::InvalidValue);
        }
        c.capture_check(c.host_stream(stream)?, false)?;
        c.host_fn(stream, f)
    })
}

/// `cudaEventCreateWithFlags` (`cudaEventCreate` = 0).
pub fn event_create(flags: u32) -> Result<RawEvent> {
    with(|c| c.event_create(flags))
}

/// `cudaEventDestroy`.
pub fn event_destroy(event: RawEvent) -> Result<()> {
    with(|c| c.event_destroy(event))
}

/// `cudaEventRecord`.
pub fn event_record(event: RawEvent, stream: RawStream) -> Result<()> {
    event_record_with_flags(event, stream, 0)
}

/// `cudaEventRecordWithFlags` (`cudaEventRecordExternal` only matters during graph capture).
pub fn event_record_with_flags(event: RawEvent, stream: RawStream, flags: u32) -> Result<()> {
    with(|c| {
        if flags & !1 != 0 {
            return Err(CudaError::InvalidValue);
        }
        let e = c.event(event)?;
        let h = c.host_stream(stream)?;
        c.capture_check(h, false)?;
        c.fire(h, req::EventRecord { event: e.host })
    })
}

/// `cudaEventQuery`: `Err(NotReady)` while the captured work is pending.
pub fn event_query(event: RawEvent) -> Result<()> {
    with(|c| {
        let e = c.event(event)?;
        c.call(0, req::EventQuery { event: e.host })?;
        c.deferred()
    })
}

/// `cudaEventSynchronize`.
pub fn event_synchronize(event: RawEvent) -> Result<()> {
    with(|c| {
        let e = c.event(event)?;
        c.call(0, req::EventSync { event: e.host })?;
        c.deferred()
    })
}

/// `cudaEventElapsedTime`, in milliseconds.
pub fn event_elapsed_time(start: RawEvent, end: RawEvent) -> Result<f32> {
    with(|c| {
        let (s, e) = (c.event(start)?, c.event(end)?);
        Ok(c.call(0, req::EventElapsed { start: s.host, end: e.host })?.ms)
    })
}

/// Copy helper for tests and tools: device → `dst`, synchronous (legacy stream).
pub fn download(src: u64, dst: &mut [u8]) -> Result<()> {
    with(|c| {
        c.check_device_range(src, dst.len() as u64)?;
        // SAFETY: `dst` is a live exclusive slice for the whole call and the copy waits.
        unsafe { c.d2h(&[Seg { dev: src, host: dst.as_mut_ptr() as usize, len: dst.len() }], 0, true)? };
        c.deferred()
    })
}

// ---------------------------------------------------------------------------------------------
// Kernels

/// `cudaLaunchKernel`, `__cudaLaunchKernel`, `cudaLaunchKernelExC`, `cudaLaunchCooperativeKernel`
/// (fire-and-forget). `host_fun` is a registered host stub (or the kernel handle
/// `__cudaGetKernel` gave, which is the same). Bad dimensions: `InvalidConfiguration` without a
/// round trip; the first launch of a function on the context loads its module and fetches its
/// parameter table (round trips), later ones only enqueue.
///
/// # Safety
/// `args` is null (for a kernel without parameters) or holds one pointer per parameter, each to
/// at least the parameter's size in bytes.
pub unsafe fn launch_kernel(host_fun: usize, cfg: &LaunchConfig, args: *const *const std::ffi::c_void) -> Result<()> {
    // SAFETY: forwarded caller guarantee.
    with(|c| unsafe { c.launch_c(host_fun, cfg, args) })
}

/// `__cudaGetKernel`: the handle of a registered host stub (local).
pub fn get_kernel(host_fun: usize) -> Result<usize> {
    crate::kernel::kernel_handle(host_fun)
}

/// `cudaFuncGetAttributes`: the host's [`vgpu_transport::wire::FuncInfo`] (fetched once per
/// function, then local) and the cluster attributes set on it.
pub fn func_get_attributes(host_fun: usize) -> Result<(vgpu_transport::wire::FuncInfo, [i32; 6])> {
    with(|c| c.function(host_fun).map(|f| (f.info(), f.cluster_attributes())))
}

/// `cudaFuncSetAttribute` (`cudaFuncAttribute` values 8..=15): one round trip.
pub fn func_set_attribute(host_fun: usize, attr: i32, value: i32) -> Result<()> {
    with(|c| {
        let attr = u32::try_from(attr).map_err(|_| CudaError::InvalidValue)?;
        if !(8..=15).contains(&attr) {
            return Err(CudaError::InvalidValue);
        }
        let f = c.function(host_fun)?;
        c.func_set_attribute(&f, attr, value)
    })
}

/// `cudaFuncSetCacheConfig` / `cudaFuncSetSharedMemConfig`: preferences the device may ignore
/// (and vgpu does): checks the function is registered and the value is in range (local).
pub fn func_set_preference(host_fun: usize, value: i32, max: i32) -> Result<()> {
    with(|c| {
        c.sticky()?;
        crate::kernel::kernel_handle(host_fun)?;
        if !(0..=max).contains(&value) {
            return Err(CudaError::InvalidValue);
        }
        Ok(())
    })
}

/// `cudaOccupancyMaxActiveBlocksPerMultiprocessor[WithFlags]`: one round trip per distinct
/// query of a function, then cached.
pub fn occupancy_max_active_blocks(host_fun: usize, block_size: i32, shared: usize, flags: u32) -> Result<i32> {
    with(|c| {
        let f = c.function(host_fun)?;
        c.occupancy(&f, block_size, shared as u64, flags)
    })
}

/// `cudaGetSymbolAddress` / `cudaGetSymbolSize`: `(device address, size)` of a registered
/// `__device__`/`__constant__` variable (one round trip the first time per context).
pub fn symbol(host_var: usize) -> Result<(u64, u64)> {
    with(|c| c.symbol(host_var))
}

/// `cudaMemcpyToSymbol` (`stream` = None: synchronous on the legacy stream) and
/// `cudaMemcpyToSymbolAsync`.
///
/// # Safety
/// `src` is valid for `count` bytes (until the copy is staged or, from pinned memory, done).
pub unsafe fn memcpy_to_symbol(
    host_var: usize,
    src: *const u8,
    count: usize,
    offset: usize,
    kind: MemcpyKind,
    stream: Option<RawStream>,
) -> Result<()> {
    // SAFETY: forwarded caller guarantee.
    with(|c| unsafe { c.memcpy_to_symbol(host_var, src, count, offset, kind, stream) })
}

/// `cudaMemcpyFromSymbol` and `cudaMemcpyFromSymbolAsync`.
///
/// # Safety
/// `dst` is valid for `count` bytes until the copy completes.
pub unsafe fn memcpy_from_symbol(
    dst: *mut u8,
    host_var: usize,
    count: usize,
    offset: usize,
    kind: MemcpyKind,
    stream: Option<RawStream>,
) -> Result<()> {
    // SAFETY: forwarded caller guarantee.
    with(|c| unsafe { c.memcpy_from_symbol(dst, host_var, count, offset, kind, stream) })
}

// ---------------------------------------------------------------------------------------------
// Capture and graphs

/// `cudaStreamBeginCapture` (one round trip). `mode` is a `cudaStreamCaptureMode`.
pub fn stream_begin_capture(stream: RawStream, mode: i32) -> Result<()> {
    with(|c| {
        let mode = CaptureMode::from_raw(mode).ok_or(CudaError::InvalidValue)?;
        c.begin_capture(stream, mode)
    })
}

/// `cudaStreamEndCapture` (one round trip): the graph, or `StreamCaptureInvalidated`.
pub fn stream_end_capture(stream: RawStream) -> Result<RawGraph> {
    with(|c| c.end_capture(stream))
}

/// `cudaStreamGetCaptureInfo`: status and capture id (local).
pub fn stream_capture_info(stream: RawStream) -> Result<(CaptureStatus, u64)> {
    with(|c| c.capture_info(stream))
}

/// `cudaThreadExchangeStreamCaptureMode`: the calling thread's previous mode.
pub fn thread_exchange_capture_mode(mode: i32) -> Result<i32> {
    record(CaptureMode::from_raw(mode).ok_or(CudaError::InvalidValue)).map(|m| crate::graph::exchange_thread_mode(m) as i32)
}

/// `cudaGraphInstantiate[WithFlags|WithParams]` (one round trip).
pub fn graph_instantiate(graph: RawGraph, flags: u64) -> Result<RawGraphExec> {
    with(|c| c.graph_instantiate(graph, flags))
}

/// `cudaGraphExecUpdate` (one round trip): the `cudaGraphExecUpdateResult`; non-zero means the
/// exec is unchanged (the facade returns `cudaErrorGraphExecUpdateFailure`).
pub fn graph_exec_update(exec: RawGraphExec, graph: RawGraph) -> Result<u32> {
    with(|c| c.graph_exec_update(exec, graph))
}

/// `cudaGraphLaunch` (fire-and-forget).
pub fn graph_launch(exec: RawGraphExec, stream: RawStream) -> Result<()> {
    with(|c| c.graph_launch(exec, stream))
}

/// `cudaGraphDestroy`.
pub fn graph_destroy(graph: RawGraph) -> Result<()> {
    with(|c| c.graph_destroy(graph))
}

/// `cudaGraphExecDestroy`.
pub fn graph_exec_destroy(exec: RawGraphExec) -> Result<()> {
    with(|c| c.graph_exec_destroy(exec))
}
