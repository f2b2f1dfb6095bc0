//! `libcudart.so.12`: the vgpu CUDA Runtime for programs built with CUDA 12.x.
//!
//! Everything common lives in `vgpu-cudart` (its `#[no_mangle]` functions are linked in and
//! exported through `exports.txt`); this crate adds what differs by version: the 1032-byte
//! `cudaDeviceProp`, the `cudaPointerAttributes` layout and the version numbers CUDA 12.9 reports.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_int, c_ulonglong, c_void};

use vgpu_cudart::cudaError_t;
use vgpu_cudart::entry::{guard, non_null};
use vgpu_cudart::kernel::capture_info;
use vgpu_cudart::props::DeviceProp12;

pub use vgpu_cudart::api;

/// `CUDART_VERSION` of the CUDA 12.9 headers.
pub const RUNTIME_VERSION: c_int = 12090;

#[no_mangle]
pub unsafe extern "C" fn cudaGetDeviceProperties_v2(prop: *mut DeviceProp12, device: c_int) -> cudaError_t {
    // SAFETY: the program passes a CUDA 12 `cudaDeviceProp*` (or null, which is checked).
    guard("cudaGetDeviceProperties_v2", || unsafe { vgpu_cudart::device::get_properties(prop, device) })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGetDeviceProperties(prop: *mut DeviceProp12, device: c_int) -> cudaError_t {
    // SAFETY: as `cudaGetDeviceProperties_v2` (CUDA 12 headers map the plain name to it).
    guard("cudaGetDeviceProperties", || unsafe { vgpu_cudart::device::get_properties(prop, device) })
}

#[no_mangle]
pub unsafe extern "C" fn cudaRuntimeGetVersion(version: *mut c_int) -> cudaError_t {
    // SAFETY: the program passes an `int*` (or null, which is checked).
    guard("cudaRuntimeGetVersion", || unsafe { api::put_version(version, RUNTIME_VERSION) })
}

#[no_mangle]
pub unsafe extern "C" fn cudaDriverGetVersion(version: *mut c_int) -> cudaError_t {
    // The guest has no driver; the host's stands behind the mediator. Report the runtime's own
    // version, which every driver able to run it is at least.
    // SAFETY: the program passes an `int*` (or null, which is checked).
    guard("cudaDriverGetVersion", || unsafe { api::put_version(version, RUNTIME_VERSION) })
}

/// `cudaPointerGetAttributes` with CUDA 12's 24-byte `cudaPointerAttributes`.
#[no_mangle]
pub unsafe extern "C" fn cudaPointerGetAttributes(attributes: *mut api::PointerAttributes, ptr: *const c_void) -> cudaError_t {
    guard("cudaPointerGetAttributes", || {
        non_null(attributes)?;
        let a = api::pointer_attributes(ptr)?;
        // SAFETY: non-null (checked); the program passes a CUDA 12 `cudaPointerAttributes*`.
        unsafe { attributes.write_unaligned(a) };
        Ok(())
    })
}

/// `cudaStreamGetCaptureInfo` as CUDA 12 exports it: the original three-argument form (the
/// 12.x headers map the name to `_v2`).
#[no_mangle]
pub unsafe extern "C" fn cudaStreamGetCaptureInfo(s: api::Handle, status: *mut c_int, id: *mut c_ulonglong) -> cudaError_t {
    // SAFETY: the program passes a status pointer and an optional id pointer.
    guard("cudaStreamGetCaptureInfo", || unsafe {
        capture_info(s, status, id, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamGetCaptureInfo_v2(
    s: api::Handle,
    status: *mut c_int,
    id: *mut c_ulonglong,
    graph: *mut api::Handle,
    deps: *mut *const api::Handle,
    num_deps: *mut usize,
) -> cudaError_t {
    // SAFETY: each pointer is null or valid for its type (CUDA's contract).
    guard("cudaStreamGetCaptureInfo_v2", || unsafe { capture_info(s, status, id, graph, deps, std::ptr::null_mut(), num_deps) })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamGetCaptureInfo_v3(
    s: api::Handle,
    status: *mut c_int,
    id: *mut c_ulonglong,
    graph: *mut api::Handle,
    deps: *mut *const api::Handle,
    edges: *mut *const c_void,
    num_deps: *mut usize,
) -> cudaError_t {
    // SAFETY: each pointer is null or valid for its type (CUDA's contract).
    guard("cudaStreamGetCaptureInfo_v3", || unsafe { capture_info(s, status, id, graph, deps, edges, num_deps) })
}
