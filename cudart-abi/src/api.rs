//! The entry points both `libcudart.so.12` and `libcudart.so.13` export.
//!
//! Each one: checks its C arguments the way the real runtime documents (null out-pointer →
//! `cudaErrorInvalidValue`, unknown `cudaMemcpyKind` → `cudaErrorInvalidMemcpyDirection`, a device
//! other than 0 → `cudaErrorInvalidDevice`), calls the matching runtime entry ([`vgpu_runtime_abi::rt`], in `libvgpu.so`), and
//! writes its result through the out-pointer. Handles cross as integers: `cudaStream_t` is the
//! runtime's stream handle (0 = legacy default stream, 1 = `cudaStreamLegacy`, 2 =
//! `cudaStreamPerThread`), `cudaEvent_t` the runtime's event handle.
//!
//! Safety: every function here is `unsafe extern "C"` with the contract of its CUDA Runtime API
//! documentation: each pointer argument is null (where the API allows it) or valid for the access
//! the API describes.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_void};

use crate::codes::*;
use crate::entry::{fail, guard, guard_value, non_null, unsupported, CallResult};
use vgpu_runtime_abi::rt;

/// A `cudaStream_t` as the runtime's integer handle.
pub type RawStream = u64;
/// A `cudaEvent_t` as the runtime's integer handle.
pub type RawEvent = u64;

/// `cudaStream_t` / `cudaEvent_t`: opaque pointers in C.
pub type Handle = *mut c_void;

fn stream(s: Handle) -> RawStream {
    s as usize as RawStream
}

fn event(e: Handle) -> RawEvent {
    e as usize as RawEvent
}

/// Write `v` through an out-pointer already checked non-null.
///
/// # Safety
/// `p` is non-null and valid for writing a `T` (alignment not required).
unsafe fn put<T>(p: *mut T, v: T) {
    // SAFETY: the caller's contract.
    unsafe { p.write_unaligned(v) }
}

/// Write an `int` version number (`cudaRuntimeGetVersion`, `cudaDriverGetVersion`).
///
/// # Safety
/// `p` is null or valid for writing an `int`.
pub unsafe fn put_version(p: *mut c_int, v: c_int) -> CallResult {
    non_null(p)?;
    // SAFETY: non-null (checked); the caller passes an `int*`.
    unsafe { put(p, v) };
    Ok(())
}

/// A `cudaMemcpyKind` value (`cudaMemcpyHostToHost` 0 ..= `cudaMemcpyDefault` 4), or
/// `cudaErrorInvalidMemcpyDirection`.
pub fn memcpy_kind(kind: c_int) -> Result<c_int, cudaError_t> {
    if (0..=4).contains(&kind) {
        Ok(kind)
    } else {
        Err(fail(cudaErrorInvalidMemcpyDirection))
    }
}

// ---------------------------------------------------------------------------------------------
// Device and errors

#[no_mangle]
pub unsafe extern "C" fn cudaGetDeviceCount(count: *mut c_int) -> cudaError_t {
    guard("cudaGetDeviceCount", || {
        non_null(count)?;
        let n = rt::get_device_count()?;
        // SAFETY: non-null (checked).
        unsafe { put(count, n) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGetDevice(device: *mut c_int) -> cudaError_t {
    guard("cudaGetDevice", || {
        non_null(device)?;
        let d = rt::get_device()?;
        // SAFETY: non-null (checked).
        unsafe { put(device, d) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaSetDevice(device: c_int) -> cudaError_t {
    guard("cudaSetDevice", || rt::set_device(device))
}

#[no_mangle]
pub unsafe extern "C" fn cudaSetDeviceFlags(flags: c_uint) -> cudaError_t {
    guard("cudaSetDeviceFlags", || rt::set_device_flags(flags))
}

#[no_mangle]
pub unsafe extern "C" fn cudaGetDeviceFlags(flags: *mut c_uint) -> cudaError_t {
    guard("cudaGetDeviceFlags", || {
        non_null(flags)?;
        let f = rt::get_device_flags()?;
        // SAFETY: non-null (checked).
        unsafe { put(flags, f) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceGetAttribute(value: *mut c_int, attr: c_int, device: c_int) -> cudaError_t {
    // SAFETY: the caller passes an `int*` (or null, which is checked).
    guard("cudaDeviceGetAttribute", || unsafe { crate::device::get_attribute(value, attr, device) })
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceGetPCIBusId(pci_bus_id: *mut c_char, len: c_int, device: c_int) -> cudaError_t {
    guard("cudaDeviceGetPCIBusId", || {
        non_null(pci_bus_id)?;
        if len <= 0 {
            return Err(fail(cudaErrorInvalidValue));
        }
        let f = crate::device::facts(device)?;
        let s = format!("{:04x}:{:02x}:{:02x}.0", f.pci_domain, f.pci_bus, f.pci_device);
        let n = s.len().min(len as usize - 1);
        // SAFETY: the caller's buffer holds `len` bytes; we write `n + 1 <= len` of them.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), pci_bus_id, n);
            pci_bus_id.add(n).write(0);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemGetInfo(free: *mut usize, total: *mut usize) -> cudaError_t {
    guard("cudaMemGetInfo", || {
        non_null(free)?;
        non_null(total)?;
        let (f, t) = rt::mem_get_info()?;
        // SAFETY: both non-null (checked).
        unsafe {
            put(free, f as usize);
            put(total, t as usize);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) -> cudaError_t {
    guard("cudaDeviceGetStreamPriorityRange", || {
        let (l, g) = rt::stream_priority_range()?;
        // SAFETY: each pointer is written only when non-null (both may be NULL, as documented).
        unsafe {
            if !least.is_null() {
                put(least, l);
            }
            if !greatest.is_null() {
                put(greatest, g);
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceSynchronize() -> cudaError_t {
    guard("cudaDeviceSynchronize", rt::device_synchronize)
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceReset() -> cudaError_t {
    guard("cudaDeviceReset", rt::device_reset)
}

// `cudaLimit` values live in the runtime (one per process): it checks the limit and the value.

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceSetLimit(limit: c_int, value: usize) -> cudaError_t {
    guard("cudaDeviceSetLimit", || rt::set_limit(limit, value))
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceGetLimit(value: *mut usize, limit: c_int) -> cudaError_t {
    guard("cudaDeviceGetLimit", || {
        non_null(value)?;
        let v = rt::get_limit(limit)?;
        // SAFETY: non-null (checked).
        unsafe { put(value, v) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceCanAccessPeer(can_access: *mut c_int, device: c_int, peer: c_int) -> cudaError_t {
    guard("cudaDeviceCanAccessPeer", || {
        non_null(can_access)?;
        crate::device::facts(device)?;
        crate::device::facts(peer)?;
        // One device: no peer can be accessed (the real runtime also answers 0 for itself).
        // SAFETY: non-null (checked).
        unsafe { put(can_access, 0) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceEnablePeerAccess(peer: c_int, flags: c_uint) -> cudaError_t {
    guard("cudaDeviceEnablePeerAccess", || {
        if flags != 0 {
            return Err(fail(cudaErrorInvalidValue));
        }
        crate::device::facts(peer)?;
        // The only valid peer is the current device itself, which the real runtime refuses too.
        Err(fail(cudaErrorInvalidDevice))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGetLastError() -> cudaError_t {
    guard_value("cudaGetLastError", cudaErrorUnknown, rt::get_last_error)
}

#[no_mangle]
pub unsafe extern "C" fn cudaPeekAtLastError() -> cudaError_t {
    guard_value("cudaPeekAtLastError", cudaErrorUnknown, rt::peek_at_last_error)
}

#[no_mangle]
pub unsafe extern "C" fn cudaGetErrorName(error: cudaError_t) -> *const c_char {
    guard_value("cudaGetErrorName", crate::codes::UNRECOGNIZED.as_ptr().cast(), || crate::codes::name(error))
}

#[no_mangle]
pub unsafe extern "C" fn cudaGetErrorString(error: cudaError_t) -> *const c_char {
    guard_value("cudaGetErrorString", crate::codes::UNRECOGNIZED.as_ptr().cast(), || crate::codes::message(error))
}

// ---------------------------------------------------------------------------------------------
// Memory

#[no_mangle]
pub unsafe extern "C" fn cudaMalloc(dev_ptr: *mut *mut c_void, size: usize) -> cudaError_t {
    guard("cudaMalloc", || {
        non_null(dev_ptr)?;
        let p = rt::malloc(size)?;
        // SAFETY: non-null (checked).
        unsafe { put(dev_ptr, p as usize as *mut c_void) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaFree(dev_ptr: *mut c_void) -> cudaError_t {
    guard("cudaFree", || rt::free(dev_ptr as usize as u64))
}

#[no_mangle]
pub unsafe extern "C" fn cudaMallocManaged(dev_ptr: *mut *mut c_void, _size: usize, _flags: c_uint) -> cudaError_t {
    guard("cudaMallocManaged", || {
        non_null(dev_ptr)?;
        Err(unsupported("cudaMallocManaged", "managed memory cannot cross the VM boundary; cudaDevAttrManagedMemory is 0"))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMallocHost(ptr: *mut *mut c_void, size: usize) -> cudaError_t {
    guard("cudaMallocHost", || {
        non_null(ptr)?;
        let p = rt::malloc_host(size)?;
        // SAFETY: non-null (checked).
        unsafe { put(ptr, p.cast()) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaHostAlloc(ptr: *mut *mut c_void, size: usize, flags: c_uint) -> cudaError_t {
    guard("cudaHostAlloc", || {
        non_null(ptr)?;
        let p = rt::host_alloc(size, flags)?;
        // SAFETY: non-null (checked).
        unsafe { put(ptr, p.cast()) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaFreeHost(ptr: *mut c_void) -> cudaError_t {
    guard("cudaFreeHost", || rt::free_host(ptr.cast()))
}

#[no_mangle]
pub unsafe extern "C" fn cudaHostGetDevicePointer(p_device: *mut *mut c_void, p_host: *mut c_void, flags: c_uint) -> cudaError_t {
    guard("cudaHostGetDevicePointer", || {
        non_null(p_device)?;
        non_null(p_host)?;
        if flags != 0 {
            return Err(fail(cudaErrorInvalidValue));
        }
        Err(unsupported("cudaHostGetDevicePointer", "mapped pinned memory has no device address; cudaDevAttrCanMapHostMemory is 0"))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaHostRegister(ptr: *mut c_void, size: usize, flags: c_uint) -> cudaError_t {
    guard("cudaHostRegister", || {
        if ptr.is_null() || size == 0 {
            return Err(fail(cudaErrorInvalidValue));
        }
        rt::host_register(ptr.cast(), size, flags)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaHostUnregister(ptr: *mut c_void) -> cudaError_t {
    guard("cudaHostUnregister", || {
        non_null(ptr)?;
        rt::host_unregister(ptr.cast())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemset(dev_ptr: *mut c_void, value: c_int, count: usize) -> cudaError_t {
    guard("cudaMemset", || rt::memset(dev_ptr as usize as u64, value, count))
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemsetAsync(dev_ptr: *mut c_void, value: c_int, count: usize, s: Handle) -> cudaError_t {
    guard("cudaMemsetAsync", || rt::memset_async(dev_ptr as usize as u64, value, count, stream(s)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpy(dst: *mut c_void, src: *const c_void, count: usize, kind: c_int) -> cudaError_t {
    guard("cudaMemcpy", || {
        let k = memcpy_kind(kind)?;
        // SAFETY: the program passes `count` valid bytes at `src` and `dst` (CUDA's contract).
        unsafe { rt::memcpy(dst.cast(), src.cast(), count, k) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpyAsync(dst: *mut c_void, src: *const c_void, count: usize, kind: c_int, s: Handle) -> cudaError_t {
    guard("cudaMemcpyAsync", || {
        let k = memcpy_kind(kind)?;
        // SAFETY: as `cudaMemcpy`; the program keeps the buffers alive until the copy completes.
        unsafe { rt::memcpy_async(dst.cast(), src.cast(), count, k, stream(s)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpy2D(
    dst: *mut c_void,
    dpitch: usize,
    src: *const c_void,
    spitch: usize,
    width: usize,
    height: usize,
    kind: c_int,
) -> cudaError_t {
    guard("cudaMemcpy2D", || {
        let k = memcpy_kind(kind)?;
        // SAFETY: the program passes `height` rows of `width` bytes at the given pitches.
        unsafe { rt::memcpy_2d(dst.cast(), dpitch, src.cast(), spitch, width, height, k) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpy2DAsync(
    dst: *mut c_void,
    dpitch: usize,
    src: *const c_void,
    spitch: usize,
    width: usize,
    height: usize,
    kind: c_int,
    s: Handle,
) -> cudaError_t {
    guard("cudaMemcpy2DAsync", || {
        let k = memcpy_kind(kind)?;
        // SAFETY: as `cudaMemcpy2D`; the buffers stay alive until the copy completes.
        unsafe { rt::memcpy_2d_async(dst.cast(), dpitch, src.cast(), spitch, width, height, k, stream(s)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpyPeer(
    dst: *mut c_void,
    dst_device: c_int,
    src: *const c_void,
    src_device: c_int,
    count: usize,
) -> cudaError_t {
    guard("cudaMemcpyPeer", || rt::memcpy_peer(dst as usize as u64, dst_device, src as usize as u64, src_device, count))
}

#[no_mangle]
pub unsafe extern "C" fn cudaMemcpyPeerAsync(
    dst: *mut c_void,
    dst_device: c_int,
    src: *const c_void,
    src_device: c_int,
    count: usize,
    s: Handle,
) -> cudaError_t {
    guard("cudaMemcpyPeerAsync", || {
        rt::memcpy_peer_async(dst as usize as u64, dst_device, src as usize as u64, src_device, count, stream(s))
    })
}

/// `struct cudaPointerAttributes` of CUDA 12 (24 bytes). CUDA 13 appends `long reserved[8]`
/// ([`PointerAttributes13`]), which must be zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PointerAttributes {
    pub type_: c_int,
    pub device: c_int,
    pub device_pointer: *mut c_void,
    pub host_pointer: *mut c_void,
}

/// `struct cudaPointerAttributes` of CUDA 13 (88 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PointerAttributes13 {
    pub head: PointerAttributes,
    pub reserved: [std::ffi::c_long; 8],
}

const _: () = assert!(std::mem::size_of::<PointerAttributes>() == 24);
const _: () = assert!(std::mem::offset_of!(PointerAttributes, device) == 4);
const _: () = assert!(std::mem::offset_of!(PointerAttributes, device_pointer) == 8);
const _: () = assert!(std::mem::offset_of!(PointerAttributes, host_pointer) == 16);
const _: () = assert!(std::mem::size_of::<PointerAttributes13>() == 88);
const _: () = assert!(std::mem::offset_of!(PointerAttributes13, reserved) == 24);

/// The attributes of `ptr` as CUDA 12 lays them out: device memory (`cudaMemoryTypeDevice`),
/// pinned or registered host memory (`cudaMemoryTypeHost`), anything else unregistered host
/// memory (`cudaMemoryTypeUnregistered`, device `cudaInvalidDeviceId`), as CUDA 11+ answers.
pub fn pointer_attributes(ptr: *const c_void) -> Result<PointerAttributes, cudaError_t> {
    let i = rt::pointer_attributes(ptr as usize as u64)?;
    Ok(PointerAttributes {
        type_: i.kind,
        device: i.device,
        device_pointer: i.device_ptr as usize as *mut c_void,
        host_pointer: i.host_ptr as usize as *mut c_void,
    })
}

// ---------------------------------------------------------------------------------------------
// Streams

unsafe fn create_stream(name: &'static str, out: *mut Handle, flags: c_uint, priority: c_int) -> cudaError_t {
    guard(name, || {
        non_null(out)?;
        let s = rt::stream_create(flags, priority)?;
        // SAFETY: non-null (checked).
        unsafe { put(out, s as usize as Handle) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamCreate(out: *mut Handle) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { create_stream("cudaStreamCreate", out, 0, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamCreateWithFlags(out: *mut Handle, flags: c_uint) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { create_stream("cudaStreamCreateWithFlags", out, flags, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamCreateWithPriority(out: *mut Handle, flags: c_uint, priority: c_int) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { create_stream("cudaStreamCreateWithPriority", out, flags, priority) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamDestroy(s: Handle) -> cudaError_t {
    guard("cudaStreamDestroy", || rt::stream_destroy(stream(s)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamSynchronize(s: Handle) -> cudaError_t {
    guard("cudaStreamSynchronize", || rt::stream_synchronize(stream(s)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamQuery(s: Handle) -> cudaError_t {
    guard("cudaStreamQuery", || rt::stream_query(stream(s)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamWaitEvent(s: Handle, e: Handle, flags: c_uint) -> cudaError_t {
    guard("cudaStreamWaitEvent", || rt::stream_wait_event(stream(s), event(e), flags))
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamGetFlags(s: Handle, flags: *mut c_uint) -> cudaError_t {
    guard("cudaStreamGetFlags", || {
        non_null(flags)?;
        let f = rt::stream_get_flags(stream(s))?;
        // SAFETY: non-null (checked).
        unsafe { put(flags, f) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamGetPriority(s: Handle, priority: *mut c_int) -> cudaError_t {
    guard("cudaStreamGetPriority", || {
        non_null(priority)?;
        let p = rt::stream_get_priority(stream(s))?;
        // SAFETY: non-null (checked).
        unsafe { put(priority, p) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamIsCapturing(s: Handle, status: *mut c_int) -> cudaError_t {
    guard("cudaStreamIsCapturing", || {
        non_null(status)?;
        let (st, _) = rt::stream_capture_info(stream(s))?;
        // cudaStreamCaptureStatusNone = 0, Active = 1, Invalidated = 2.
        // SAFETY: non-null (checked).
        unsafe { put(status, st as c_int) };
        Ok(())
    })
}

/// `cudaHostFn_t`.
pub type HostFn = Option<unsafe extern "C" fn(*mut c_void)>;
/// `cudaStreamCallback_t`.
pub type StreamCallback = Option<unsafe extern "C" fn(Handle, cudaError_t, *mut c_void)>;

#[no_mangle]
pub unsafe extern "C" fn cudaLaunchHostFunc(s: Handle, f: HostFn, user_data: *mut c_void) -> cudaError_t {
    guard("cudaLaunchHostFunc", || {
        let f = f.ok_or_else(|| fail(cudaErrorInvalidValue))?;
        // SAFETY: CUDA's contract: `f` is a valid host function taking `userData`, called once
        // on a runtime thread.
        unsafe { rt::launch_host_func(stream(s), f, user_data) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamAddCallback(s: Handle, cb: StreamCallback, user_data: *mut c_void, flags: c_uint) -> cudaError_t {
    guard("cudaStreamAddCallback", || {
        let cb = cb.ok_or_else(|| fail(cudaErrorInvalidValue))?;
        if flags != 0 {
            return Err(fail(cudaErrorInvalidValue));
        }
        // SAFETY: CUDA's contract: `cb` is a valid callback taking (stream, status, userData);
        // the runtime passes `s` back unchanged as the stream.
        unsafe { rt::stream_add_callback(stream(s), cb, s, user_data, flags) }
    })
}

// ---------------------------------------------------------------------------------------------
// Events

unsafe fn create_event(name: &'static str, out: *mut Handle, flags: c_uint) -> cudaError_t {
    guard(name, || {
        non_null(out)?;
        let e = rt::event_create(flags)?;
        // SAFETY: non-null (checked).
        unsafe { put(out, e as usize as Handle) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventCreate(out: *mut Handle) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { create_event("cudaEventCreate", out, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventCreateWithFlags(out: *mut Handle, flags: c_uint) -> cudaError_t {
    // SAFETY: forwarded contract.
    unsafe { create_event("cudaEventCreateWithFlags", out, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventDestroy(e: Handle) -> cudaError_t {
    guard("cudaEventDestroy", || rt::event_destroy(event(e)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventRecord(e: Handle, s: Handle) -> cudaError_t {
    guard("cudaEventRecord", || rt::event_record(event(e), stream(s)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventRecordWithFlags(e: Handle, s: Handle, flags: c_uint) -> cudaError_t {
    guard("cudaEventRecordWithFlags", || rt::event_record_with_flags(event(e), stream(s), flags))
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventQuery(e: Handle) -> cudaError_t {
    guard("cudaEventQuery", || rt::event_query(event(e)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventSynchronize(e: Handle) -> cudaError_t {
    guard("cudaEventSynchronize", || rt::event_synchronize(event(e)))
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventElapsedTime(ms: *mut f32, start: Handle, end: Handle) -> cudaError_t {
    guard("cudaEventElapsedTime", || {
        non_null(ms)?;
        let t = rt::event_elapsed_time(event(start), event(end))?;
        // SAFETY: non-null (checked).
        unsafe { put(ms, t) };
        Ok(())
    })
}
