//! # vgpu-transport
//!
//! The wire between a guest's CUDA runtime and the host mediator: one shared region holding a
//! header, a submission ring, a completion ring and a data window; in-flight slots keyed by
//! sequence number; completion by interrupt with check-after-arm; links that set the region up.
//!
//! Where to look:
//! - [`wire`]: every byte of the format (the executable form of `docs/protocol.md`);
//! - [`ring`]: the rings and the two wake-up handshakes;
//! - [`slots`]: in-flight slots and their generations;
//! - [`client`] (guest half) and [`server`] (host half);
//! - [`link`]: how a region, a doorbell and an interrupt are obtained (`direct`: memfd + eventfds
//!   over a Unix socket; `ivshmem`: a PCI BAR through VFIO, or a peer on the ivshmem server);
//!   [`connect_from_env`] picks one.
//! - [`sync`]: the only source of atomics, swapped for loom's under `--cfg vgpu_loom`.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod sync;

pub mod client;
pub mod link;
pub mod logging;
pub mod notify;
pub mod region;
pub mod ring;
pub mod server;
pub mod slots;
pub mod window;
pub mod wire;

pub use client::{Client, ClientConfig, OnComplete, SpinPolicy};
pub use link::{connect_from_env, LinkChoice};
pub use server::{Completer, Executor, Server, ServerConfig, ServerStats};
pub use wire::{Call, Command, Completion, Status};

/// Errors of the transport layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The host completed the call with a non-Ok status. `code` is the device's own error code
    /// (a CUresult) for [`Status::DeviceError`], from the completion's `aux` word; 0 otherwise.
    #[error("{call:?} failed on the host: {}{}", status.name(), if *code != 0 { format!(" (device error {code})") } else { String::new() })]
    Call { call: Call, status: Status, code: u32 },
    /// The host is gone (mediator died, worker killed, socket closed, heartbeat stopped).
    #[error("the vgpu host is gone: {0}")]
    LinkDown(String),
    /// The peer broke the protocol; the session is unusable.
    #[error("vgpu protocol error: {0}")]
    Protocol(String),
    /// Guest and host speak different protocol versions or features.
    #[error("vgpu version mismatch: {0}")]
    Version(String),
    /// Setting the link up failed; the message names the fix.
    #[error("{0}")]
    Setup(String),
    /// A window range outside the data window.
    #[error("window range {off}+{len} is outside the data window")]
    WindowRange { off: u64, len: u64 },
}

impl Error {
    /// The completion status of a failed call, if that is what this is.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Call { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
