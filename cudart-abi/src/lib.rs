//! # vgpu-cudart
//!
//! The CUDA Runtime API as `extern "C"` functions: the facade that the `vgpu-cudart12` and
//! `vgpu-cudart13` packages link as `libcudart.so.12` and `libcudart.so.13`. It is thin by design:
//! it checks C arguments (null pointers, enum values), converts C types and handles to what the
//! runtime takes, and calls it through [`vgpu_runtime_abi::rt`]. The runtime is `libvgpu.so`
//! (package `vgpu-runtime`, embedding `vgpu-streams`), loaded once per process whichever of our
//! libraries asks first, so `libcudart.so.12`, `.13` and the coming `libcuda.so.1` and
//! `libcublas.so.*` share one session, one device context and one kernel registry (see
//! `docs/runtime-abi.md`). Every ordering, staging, connection and error-stickiness rule lives in
//! the runtime; no protocol logic lives here.
//!
//! - [`codes`]: every `cudaError_t` value with the real name and message;
//! - [`props`]: `cudaDeviceProp` of CUDA 12.x and 13.x, offset for offset;
//! - [`device`]: device properties and attributes from the host's `DeviceInfo`;
//! - [`entry`]: the guard every entry point runs in (no panic crosses the C boundary), logging;
//! - [`kernel`]: kernels and graphs: nvcc's registration ABI, launches, function attributes,
//!   occupancy, symbols, stream capture and graphs;
//! - [`api`]: the entry points both versions export. The version-specific ones
//!   (`cudaGetDeviceProperties[_v2]`, `cudaRuntimeGetVersion`, `cudaDriverGetVersion`,
//!   `cudaPointerGetAttributes`) are defined by the two cdylib packages on top of
//!   [`device::get_properties`], [`api::put_version`] and [`api::pointer_attributes`].
//!
//! No constructor does any work: the first call loads the runtime, whose first call connects to
//! the mediator.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod codes;
pub mod device;
pub mod entry;
pub mod kernel;
pub mod props;

pub use codes::cudaError_t;

#[cfg(test)]
pub(crate) mod tests {
    /// Unit tests use the runtime linked into the test binary (`vgpu-runtime`'s rlib) instead of
    /// loading `libvgpu.so`; the loader is exercised by the C programs in `tests/cudart.rs`.
    pub fn runtime_in_process() {
        let _ = vgpu_runtime_abi::loader::install(&vgpu::TABLE);
    }
}
