//! The `cuda` executor: guest commands on a real GPU through the CUDA driver API, loaded at run
//! time (cudarc, `dynamic-loading`), so that `vgpu` builds and runs where no driver exists.
//!
//! - [`driver`]: loading the driver without panicking, its error names, stream callbacks;
//! - [`exec`]: the executor of one session ([`Cuda`]);
//! - [`logic`]: the pure parts (parameter packing, handle tables, error mapping), unit-tested
//!   without a GPU.
//!
//! `docs/executors.md` maps each call to the driver and lists what only a GPU run verifies.

pub mod driver;
pub mod exec;
pub mod logic;

pub use driver::{load, Driver, NO_DRIVER};
pub use exec::{Cuda, CudaOpts};

use tracing::info;

/// `CUDA_DEVICE_MAX_CONNECTIONS` for worker processes (unless already set): hardware work queues
/// per context. A stream held for a host-function token waits on the GPU
/// (`cuStreamWaitValue32`), and streams beyond the queue count share queues, so a held stream
/// could stall an unrelated stream behind it; 32 (the maximum) makes that sharing rarer than
/// CUDA's default of 8.
pub const MAX_CONNECTIONS: &str = "32";

use crate::ExecutorKind;

/// Resolve `--executor`: `cuda` needs a loadable driver and a device (the error names the fix);
/// `auto` picks `cuda` when both are there, else `emu`, and logs which and why.
pub fn select(kind: ExecutorKind) -> Result<ExecutorKind, String> {
    match kind {
        ExecutorKind::Emu => Ok(ExecutorKind::Emu),
        ExecutorKind::Cuda => {
            let d = load().map_err(|e| format!("--executor cuda: {e}"))?;
            info!(target: "vgpu::serve", device = %d.name, ordinal = d.ordinal, driver = d.version, "executor cuda: using {} (device {} of {}, driver API {}.{})", d.name, d.ordinal, d.devices, d.version / 1000, d.version % 1000 / 10);
            Ok(ExecutorKind::Cuda)
        }
        ExecutorKind::Auto => match load() {
            Ok(d) => {
                info!(target: "vgpu::serve", "executor auto: using cuda on {} (device {} of {}, driver API {}.{})", d.name, d.ordinal, d.devices, d.version / 1000, d.version % 1000 / 10);
                Ok(ExecutorKind::Cuda)
            }
            Err(e) => {
                info!(target: "vgpu::serve", "executor auto: using emu, because the cuda executor cannot run here: {e}");
                Ok(ExecutorKind::Emu)
            }
        },
    }
}

/// Open the cuda executor for one session (a worker, or one epoch of an ivshmem worker).
pub fn open_session(
    region: std::sync::Arc<vgpu_transport::region::Region>,
    stats: &'static vgpu_transport::ServerStats,
    session: u64,
    limits: crate::emu::EmuLimits,
    kernels: &crate::modules::KernelOpts,
) -> Result<Box<dyn vgpu_transport::Executor>, String> {
    let (cache, launch_log) = kernels.open();
    Cuda::new(region, stats, CudaOpts { session, limits, cache, launch_log })
        .map(|c| Box::new(c) as Box<dyn vgpu_transport::Executor>)
        .map_err(|e| format!("cuda setup: {e}"))
}
