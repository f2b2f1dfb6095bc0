//! # vgpu-mediator
//!
//! The host side of vgpu: the `vgpu` binary's subcommands, the per-session worker processes,
//! and the executors that run guest commands (`emu` now; `cuda` on a real GPU later).
//!
//! - [`serve`]: the control plane (tokio): accepts guests, spawns one worker per session,
//!   answers `vgpu stat`;
//! - [`worker`]: one session: handshake, [`vgpu_transport::Server`] loop, executor; or one VM
//!   on the `ivshmem` link, serving its guest sessions by epoch;
//! - [`ivshmem`]: the ivshmem-server protocol (the mediator is peer 0 of QEMU's `ivshmem-doorbell`);
//! - [`emu`]: the CPU executor;
//! - [`cuda`]: the GPU executor (CUDA driver API, loaded at run time);
//! - [`child`]: a mediator started as a child process (for tests and the `vgpu` commands).
//!
//! The `vgpu` binary and the commands that act as a guest (`bench`, `demo`, `doctor`, `run`)
//! live in `vgpu-cli` (`cli/`), so this crate depends on no guest crate.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod child;
pub mod cuda;
pub mod emu;
pub mod ivshmem;
pub mod modules;
pub mod serve;
pub mod worker;

/// Which executor runs a session's commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// The CPU stand-in: everything but kernel execution.
    Emu,
    /// The real GPU through the CUDA driver.
    Cuda,
    /// `cuda` where a GPU is usable, `emu` elsewhere.
    Auto,
}

impl ExecutorKind {
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Emu => "emu",
            ExecutorKind::Cuda => "cuda",
            ExecutorKind::Auto => "auto",
        }
    }
}

/// The default socket: `$VGPU_SOCKET`, else `$XDG_RUNTIME_DIR/vgpu.sock`, else `/tmp/vgpu.sock`
/// (one definition, the transport's, for guests and host alike).
pub use vgpu_transport::link::default_socket;

/// Set up `tracing` from `VGPU_LOG` (default `info`), to stderr: see [`vgpu_transport::logging`].
pub fn init_logging() {
    vgpu_transport::logging::init("info");
}
