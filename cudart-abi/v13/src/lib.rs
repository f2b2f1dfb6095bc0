//! `libcudart.so.13`: the vgpu CUDA Runtime for programs built with CUDA 13.x.
//!
//! Everything common lives in `vgpu-cudart` (its `#[no_mangle]` functions are linked in and
//! exported through `exports.txt`); this crate adds what differs by version: the 1008-byte
//! `cudaDeviceProp`, the `cudaPointerAttributes` layout and the version numbers CUDA 13.0 reports.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_int, c_ulonglong, c_void};

use vgpu_cudart::cudaError_t;
use vgpu_cudart::entry::{guard, non_null};
use vgpu_cudart::kernel::capture_info;
use vgpu_cudart::props::DeviceProp13;

pub use vgpu_cudart::api;

/// `CUDART_VERSION` of the CUDA 13.0 headers.
pub const RUNTIME_VERSION: c_int = 13000;

#[no_mangle]
pub unsafe extern "C" fn cudaGetDeviceProperties(prop: *mut DeviceProp13, device: c_int) -> cudaError_t {
    // SAFETY: the program passes a CUDA 13 `cudaDeviceProp*` (or null, which is checked).
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

/// `cudaPointerGetAttributes` with CUDA 13's 88-byte `cudaPointerAttributes` (`reserved` zeroed).
#[no_mangle]
pub unsafe extern "C" fn cudaPointerGetAttributes(attributes: *mut api::PointerAttributes13, ptr: *const c_void) -> cudaError_t {
    guard("cudaPointerGetAttributes", || {
        non_null(attributes)?;
        let head = api::pointer_attributes(ptr)?;
        // SAFETY: non-null (checked); the program passes a CUDA 13 `cudaPointerAttributes*`.
        unsafe { attributes.write_unaligned(api::PointerAttributes13 { head, reserved: [0; 8] }) };
        Ok(())
    })
}

/// `cudaStreamGetCaptureInfo` of CUDA 13 (the seven-argument form, with edge data).
#[no_mangle]
pub unsafe extern "C" fn cudaStreamGetCaptureInfo(
    s: api::Handle,
    status: *mut c_int,
    id: *mut c_ulonglong,
    graph: *mut api::Handle,
    deps: *mut *const api::Handle,
    edges: *mut *const c_void,
    num_deps: *mut usize,
) -> cudaError_t {
    // SAFETY: each pointer is null or valid for its type (CUDA's contract).
    guard("cudaStreamGetCaptureInfo", || unsafe { capture_info(s, status, id, graph, deps, edges, num_deps) })
}
