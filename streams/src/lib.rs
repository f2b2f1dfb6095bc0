//! # vgpu-streams
//!
//! The guest's CUDA execution model on top of `vgpu-transport`, and the async Rust API.
//!
//! - [`Context`]: one connection to the mediator (the process-wide one connects lazily on first
//!   use, at `$VGPU_SOCKET`, `$XDG_RUNTIME_DIR/vgpu.sock` or `/tmp/vgpu.sock`), with the guest's
//!   tables of streams, events, allocations, pinned and registered memory.
//! - Streams: the legacy default stream (raw handle 0 or [`STREAM_LEGACY`]; the host orders it
//!   against every blocking stream), [`STREAM_PER_THREAD`] (a blocking stream per guest thread,
//!   created lazily: it synchronises with the legacy stream but not with other per-thread
//!   streams, as CUDA documents), created streams with flags and priorities.
//! - Events with flags, `StreamWaitEvent`, query and synchronise; host functions run in stream
//!   order through a host-side token wait (`StreamWaitToken` / `SignalToken`).
//! - Errors: [`CudaError`] with CUDA's numeric values, sticky and non-sticky errors, the
//!   per-thread last error ([`error`]).
//! - Data paths ([`memory`]): staged pageable copies, pinned memory carved from the data
//!   window (zero-copy), registered memory treated as pageable.
//! - Kernels ([`kernel`]): the nvcc registration ABI recorded locally, modules uploaded lazily
//!   (by hash first), function info and parameter tables fetched once, fire-and-forget launches;
//!   capture and graphs ([`graph`]), with the capture state kept in the guest.
//! - [`rt`]: CUDA-Runtime-shaped synchronous functions for the `extern "C"` facade;
//!   [`device_flags`]: `cudaSetDeviceFlags` values, kept process-wide.
//! - The async Rust API: [`Device`], [`Stream`], [`Event`], [`DeviceBuffer`], [`PinnedBuffer`];
//!   `.await` on stream and event completion from any executor.
//!
//! Logs use the target `vgpu::streams`. See `API.md` for the summary.

#![deny(unsafe_op_in_unsafe_fn)]

mod api;
pub mod context;
pub mod device_flags;
pub mod error;
pub mod graph;
pub mod kernel;
pub mod memory;
pub mod rt;

pub use api::{Device, DeviceBuffer, Event, Function, Graph, GraphExec, KernelArg, Module, PinnedBuffer, Pod, Stream, SyncFuture};
pub use context::{default_socket, Context};
pub use error::{CudaError, Result};
pub use graph::{CaptureMode, CaptureStatus, RawGraph, RawGraphExec};
pub use kernel::{CallConfig, LaunchConfig};
pub use memory::{MemoryType, PointerInfo, INVALID_DEVICE_ID};
pub use vgpu_transport::wire::DeviceInfo;
pub use vgpu_transport::wire::{FuncInfo, ParamInfo};

/// A `cudaStream_t` value, as an integer.
pub type RawStream = u64;
/// A `cudaEvent_t` value, as an integer (never 0).
pub type RawEvent = u64;
/// The NULL stream: the legacy default stream.
pub const STREAM_LEGACY_DEFAULT: RawStream = 0;
/// `cudaStreamLegacy`.
pub const STREAM_LEGACY: RawStream = 1;
/// `cudaStreamPerThread`.
pub const STREAM_PER_THREAD: RawStream = 2;

/// `cudaStreamNonBlocking`.
pub const STREAM_NON_BLOCKING: u32 = 1;
/// `cudaEventBlockingSync`.
pub const EVENT_BLOCKING_SYNC: u32 = 1;
/// `cudaEventDisableTiming`.
pub const EVENT_DISABLE_TIMING: u32 = 2;
/// `cudaEventInterprocess`.
pub const EVENT_INTERPROCESS: u32 = 4;

/// Least (numerically greatest) stream priority, as `cudaDeviceGetStreamPriorityRange` reports.
pub const PRIORITY_LEAST: i32 = 0;
/// Greatest stream priority.
pub const PRIORITY_GREATEST: i32 = -5;

/// `cudaMemcpyKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum MemcpyKind {
    HostToHost = 0,
    HostToDevice = 1,
    DeviceToHost = 2,
    DeviceToDevice = 3,
    /// Inferred from the pointers (device pointers are this context's allocations).
    Default = 4,
}

impl MemcpyKind {
    /// Decode a `cudaMemcpyKind` value.
    pub fn from_raw(v: i32) -> Option<MemcpyKind> {
        Some(match v {
            0 => MemcpyKind::HostToHost,
            1 => MemcpyKind::HostToDevice,
            2 => MemcpyKind::DeviceToHost,
            3 => MemcpyKind::DeviceToDevice,
            4 => MemcpyKind::Default,
            _ => return None,
        })
    }
}
