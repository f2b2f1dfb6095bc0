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
//!
//! # Layering
//! The modules form an acyclic graph: each imports only modules of a lower layer (the crate
//! root only declares them and re-exports; nothing imports it).
//!
//! 1. Leaves, importing nothing of this crate: `types` (the handle and flag types the root
//!    re-exports: [`RawStream`], [`MemcpyKind`], ...), `locks` (the ranked mutexes that check
//!    the lock order written down in [`context`]), [`error`] ([`CudaError`], the per-thread last
//!    error and the process-wide sticky error).
//! 2. State without I/O, importing only leaves: [`device_flags`]; [`memory`] (the pinned heap,
//!    the allocation and registration tables, staging-chunk references, pointer attributes);
//!    [`graph`] (capture modes and the capture table's rules); [`kernel`] (the process-wide
//!    registration registry, call configurations, [`kernel::Func`], the per-context kernel
//!    tables, parameter packing). None of them knows [`Context`]: `kernel` tells the
//!    process-wide context about an unregistered module through a hook the context installs.
//! 3. [`context`]: the [`Context`], which owns the state of layer 2 and does the I/O; its
//!    methods are split over its child modules `context::copy` (data paths), `context::launch`
//!    (modules, functions, launches, symbols) and `context::capture` (capture, graphs).
//! 4. The two APIs over it: [`rt`] (CUDA-Runtime-shaped) and the async Rust API (`api`).

#![deny(unsafe_op_in_unsafe_fn)]

mod api;
pub mod context;
pub mod device_flags;
pub mod error;
pub mod graph;
pub mod kernel;
mod locks;
pub mod memory;
mod printf;
pub mod rt;
mod types;

pub use api::{Device, DeviceBuffer, Event, Function, Graph, GraphExec, KernelArg, Module, PinnedBuffer, Pod, Stream, SyncFuture};
pub use context::{default_socket, Context};
pub use error::{CudaError, Result};
pub use graph::{CaptureMode, CaptureStatus, RawGraph, RawGraphExec};
pub use kernel::{CallConfig, LaunchConfig};
pub use memory::{MemoryType, PointerInfo, INVALID_DEVICE_ID};
pub use types::{
    MemcpyKind, RawEvent, RawStream, EVENT_BLOCKING_SYNC, EVENT_DISABLE_TIMING, EVENT_INTERPROCESS, PRIORITY_GREATEST, PRIORITY_LEAST,
    STREAM_LEGACY, STREAM_LEGACY_DEFAULT, STREAM_NON_BLOCKING, STREAM_PER_THREAD,
};
pub use vgpu_transport::wire::DeviceInfo;
pub use vgpu_transport::wire::{FuncInfo, ParamInfo};
