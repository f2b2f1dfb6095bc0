//! One worker process per guest session.
//!
//! The parent (`vgpu serve`) accepts a connection, reads its Hello, and re-executes itself as
//! `vgpu worker` with the connection on fd 3 and a statistics page on fd 4. The worker finishes
//! the handshake, serves the session with its executor, and exits when the guest goes away. A
//! crash, a hostile guest or a sticky fault therefore ends one session only, and the operating
//! system reclaims everything the session held.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use vgpu_transport::link::direct::{self, HostLimits};
use vgpu_transport::server::Exit;
use vgpu_transport::wire::handshake::MSG_LEN;
use vgpu_transport::{Server, ServerConfig, ServerStats};

use crate::emu::{Emu, EmuLimits};
use crate::ExecutorKind;

/// File descriptor numbers a worker inherits.
pub const CONN_FD: i32 = 3;
pub const STATS_FD: i32 = 4;

/// Settings passed from `vgpu serve` to each worker.
#[derive(Clone, Debug)]
pub struct WorkerOpts {
    pub session: u64,
    pub executor: ExecutorKind,
    pub spin: Duration,
    pub hello: [u8; MSG_LEN],
    pub limits: EmuLimits,
    /// `--launch-log`, `--module-cache`.
    pub kernels: crate::modules::KernelOpts,
}

/// Map the statistics page the parent created. It stays mapped for the life of the process.
pub fn map_stats(fd: &OwnedFd) -> std::io::Result<&'static ServerStats> {
    let map = memmap2::MmapOptions::new().len(4096).map_raw(fd)?;
    let ptr = map.as_mut_ptr().cast::<ServerStats>();
    std::mem::forget(map);
    // SAFETY: the mapping is 4096 bytes, page-aligned, never unmapped (forgotten above, so it
    // lives for the process), and ServerStats (256 bytes, repr(C) of atomics) is only ever
    // accessed atomically, here and in the parent.
    Ok(unsafe { &*ptr })
}

/// What a worker inherits from `vgpu serve`: the connection at [`CONN_FD`] and the statistics
/// page at [`STATS_FD`]. It also arranges to die with the mediator (a guest must learn that its
/// host is gone). `None` (logged) if the parent is already gone or the page cannot be mapped.
fn inherit() -> Option<(UnixStream, &'static ServerStats)> {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        warn!(target: "vgpu::worker", "PR_SET_PDEATHSIG: {e}");
    }
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        return None;
    }
    // SAFETY: the parent placed the connection at CONN_FD and the stats memfd at STATS_FD
    // (dup2 in pre_exec) and nothing else in this process owns them; this runs once per process.
    let (conn, stats_fd) = unsafe { (UnixStream::from_raw_fd(CONN_FD), OwnedFd::from_raw_fd(STATS_FD)) };
    match map_stats(&stats_fd) {
        Ok(s) => Some((conn, s)),
        Err(e) => {
            warn!(target: "vgpu::worker", "mapping the statistics page: {e}");
            None
        }
    }
}

/// Entry point of `vgpu worker`.
pub fn run(opts: WorkerOpts) -> i32 {
    let Some((conn, stats)) = inherit() else { return 1 };
    stats.pid.store(std::process::id() as u64, vgpu_transport::sync::Ordering::Relaxed);
    stats.session_id.store(opts.session, vgpu_transport::sync::Ordering::Relaxed);
    let link = match direct::accept(conn, &opts.hello, opts.session, HostLimits::default()) {
        Ok(l) => l,
        Err(e) => {
            warn!(target: "vgpu::worker", session = opts.session, "handshake failed: {e}");
            stats.state.store(2, vgpu_transport::sync::Ordering::Relaxed);
            return 2;
        }
    };
    info!(target: "vgpu::worker", session = opts.session, guest_pid = link.hello.pid, window = link.region.layout().window_len, depth = link.region.layout().sq_depth, "session open");
    serve_link(link, &opts, stats)
}

/// Serve an accepted link until the guest leaves.
pub fn serve_link(link: direct::HostLink, opts: &WorkerOpts, stats: &'static ServerStats) -> i32 {
    let region = link.region.clone();
    let hangup = OwnedFd::from(link.socket);
    let mut server = match Server::new(
        region.clone(),
        link.doorbell,
        link.interrupts.into_iter().map(|e| Box::new(e) as Box<dyn vgpu_transport::notify::Notify>).collect(),
        Some(hangup),
        ServerConfig { spin: opts.spin },
        stats,
    ) {
        Ok(s) => s,
        Err(e) => {
            warn!(target: "vgpu::worker", "server setup: {e}");
            return 1;
        }
    };
    let mut exec: Box<dyn vgpu_transport::Executor> = match opts.executor {
        ExecutorKind::Emu | ExecutorKind::Auto => {
            match Emu::new(Arc::clone(&region), stats, crate::emu::EmuLimits { kernels: opts.kernels.kernel_limits(), ..opts.limits }) {
                Ok(e) => {
                    let (cache, log) = opts.kernels.open();
                    Box::new(e.with_kernels(cache, log))
                }
                Err(e) => {
                    warn!(target: "vgpu::worker", "emu setup: {e}");
                    return 1;
                }
            }
        }
        ExecutorKind::Cuda => match crate::cuda::open_session(Arc::clone(&region), stats, opts.session, opts.limits, &opts.kernels) {
            Ok(e) => e,
            Err(e) => {
                warn!(target: "vgpu::worker", session = opts.session, "{e}");
                return 1;
            }
        },
    };
    let exit = server.run(exec.as_mut());
    match &exit {
        Exit::GuestGone => {
            info!(target: "vgpu::worker", session = opts.session, commands = stats.commands.load(vgpu_transport::sync::Ordering::Relaxed), "guest left; session closed")
        }
        Exit::ProtocolError(e) => warn!(target: "vgpu::worker", session = opts.session, "session ended: {e}"),
        Exit::Stopped => info!(target: "vgpu::worker", session = opts.session, "stopped"),
    }
    0
}

/// Settings passed from `vgpu serve --ivshmem` to the worker of one VM.
#[derive(Clone, Debug)]
pub struct IvshmemWorkerOpts {
    pub session: u64,
    pub executor: ExecutorKind,
    pub spin: Duration,
    pub limits: EmuLimits,
    /// Region size (the VM's BAR2).
    pub size: u64,
    /// `HOST_GENERATION`: unique to the mediator instance.
    pub generation: u64,
    /// `--launch-log`, `--module-cache`.
    pub kernels: crate::modules::KernelOpts,
}

/// Entry point of `vgpu ivshmem-worker`: one VM, on the QEMU connection at [`CONN_FD`]. Serves
/// the VM's successive guest sessions (by epoch) until QEMU hangs up; the process exit then
/// returns every byte of the VM's region and sessions to the system.
pub fn run_ivshmem(opts: IvshmemWorkerOpts) -> i32 {
    use vgpu_transport::sync::Ordering::Relaxed;
    let Some((conn, stats)) = inherit() else { return 1 };
    stats.pid.store(std::process::id() as u64, Relaxed);
    stats.session_id.store(opts.session, Relaxed);
    let vm = match crate::ivshmem::attach(conn, opts.size, opts.session, opts.generation) {
        Ok(v) => v,
        Err(e) => {
            warn!(target: "vgpu::worker", session = opts.session, "ivshmem setup failed: {e}");
            stats.state.store(2, Relaxed);
            return 2;
        }
    };
    let region = vm.region.clone();
    info!(target: "vgpu::worker", session = opts.session, size = opts.size, window = region.layout().window_len, depth = region.layout().sq_depth, "VM attached");
    let mut doorbells = vm.doorbells.into_iter();
    let Some(d0) = doorbells.next() else { return 1 };
    let interrupts = vm.interrupts.into_iter().map(|e| Box::new(e) as Box<dyn vgpu_transport::notify::Notify>).collect();
    let mut server =
        match Server::new(region.clone(), d0, interrupts, Some(OwnedFd::from(vm.conn)), ServerConfig { spin: opts.spin }, stats) {
            Ok(s) => s,
            Err(e) => {
                warn!(target: "vgpu::worker", "server setup: {e}");
                return 1;
            }
        };
    for d in doorbells {
        if let Err(e) = server.add_doorbell(d) {
            warn!(target: "vgpu::worker", "server setup: {e}");
            return 1;
        }
    }
    // SIGTERM (the mediator shutting down) stops the server, which stores HOST_STATE = Closed so
    // the guest fails its calls at once instead of waiting for the heartbeat to go quiet. The
    // signal is blocked here, before any other thread exists (threads inherit the mask), and
    // taken by one thread with sigwait.
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(nix::sys::signal::Signal::SIGTERM);
    if term.thread_block().is_ok() {
        let stop = server.stopper();
        let _ = std::thread::Builder::new().name("sigterm".into()).spawn(move || {
            if term.wait().is_ok() {
                stop.signal();
            }
        });
    }
    let mut new_exec = || -> Result<Box<dyn vgpu_transport::Executor>, String> {
        match opts.executor {
            ExecutorKind::Emu | ExecutorKind::Auto => {
                let (cache, log) = opts.kernels.open();
                Emu::new(Arc::clone(&region), stats, crate::emu::EmuLimits { kernels: opts.kernels.kernel_limits(), ..opts.limits })
                    .map(|e| Box::new(e.with_kernels(cache, log)) as Box<dyn vgpu_transport::Executor>)
                    .map_err(|e| format!("emu setup: {e}"))
            }
            ExecutorKind::Cuda => crate::cuda::open_session(Arc::clone(&region), stats, opts.session, opts.limits, &opts.kernels),
        }
    };
    let exit = server.run_epochs(&mut new_exec);
    info!(target: "vgpu::worker", session = opts.session, sessions = stats.guest_sessions.load(Relaxed), commands = stats.commands.load(Relaxed), ?exit, "VM detached");
    0
}
