//! `vgpu`: the host mediator and its tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod doctor;
mod run;

use vgpu_mediator::emu::EmuLimits;
use vgpu_mediator::{default_socket, serve, worker, ExecutorKind};

#[derive(Parser)]
#[command(name = "vgpu", version, about = "vgpu: use a real GPU across a VM boundary", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve guests on a Unix socket, one worker process per session; and VMs on ivshmem sockets.
    Serve {
        /// Socket path (default: $VGPU_SOCKET, $XDG_RUNTIME_DIR/vgpu.sock or /tmp/vgpu.sock). It
        /// serves `direct` guests and `vgpu stat`, also when --ivshmem is given.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Serve one VM on this ivshmem-server socket (QEMU: `-chardev socket,path=SOCKET,id=ivs
        /// -device ivshmem-doorbell,chardev=ivs,vectors=2`). May be given several times, one
        /// socket per VM.
        #[arg(long, value_name = "SOCKET")]
        ivshmem: Vec<PathBuf>,
        /// Shared memory per VM, a power of two (e.g. 128M, 1G). Given once, it applies to every
        /// --ivshmem socket; given several times, the n-th applies to the n-th socket.
        #[arg(long, value_name = "SIZE")]
        size: Vec<String>,
        #[arg(long, value_enum, default_value = "auto")]
        executor: ExecutorKind,
        /// How long a worker polls for work before it sleeps on the doorbell (0: interrupt only).
        #[arg(long, default_value_t = 50)]
        spin_us: u64,
        /// Device memory each emu session may use, in GiB.
        #[arg(long, default_value_t = 16)]
        mem_gib: u64,
        /// Append one JSON line per kernel launch to this file (session, stream, kernel, grid,
        /// block, shared memory, parameter bytes).
        #[arg(long, value_name = "PATH")]
        launch_log: Option<PathBuf>,
        /// Cross-session module cache folder, or `none` (default: $XDG_CACHE_HOME/vgpu/modules,
        /// else ~/.cache/vgpu/modules).
        #[arg(long, value_name = "DIR|none")]
        module_cache: Option<String>,
        /// How long one kernel may run on emu before it is stopped with cudaErrorLaunchTimeout,
        /// in seconds (default 600).
        #[arg(long, value_name = "SECS")]
        kernel_timeout: Option<f64>,
    },
    /// Show a running mediator's sessions and counters.
    Stat {
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Measure the transport and the CUDA runtime layer against their anchors (eventfd, TCP loopback, memcpy, ...).
    Bench {
        /// A shorter run (under 30 s).
        #[arg(long)]
        quick: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a mediator on emu, run a guest workload through the transport, and show what it did.
    Demo,
    /// Check the link this machine would use (in a VM: the ivshmem device, vfio-pci, IOMMU,
    /// bus mastering, region version, host heartbeat; on a host: the mediator socket) and print
    /// the fix for each failure.
    Doctor {
        /// Check the direct-link mediator at this socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Check the ivshmem device at this PCI address (default: $VGPU_DEVICE, else auto-detected).
        #[arg(long)]
        device: Option<String>,
    },
    /// Run a CUDA program on vgpu: our libcudart.so.12/.13 first in LD_LIBRARY_PATH (and
    /// LD_PRELOAD), on the mediator at --socket/$VGPU_SOCKET, or on a private one started for it.
    Run {
        /// Mediator socket (default: $VGPU_SOCKET, $XDG_RUNTIME_DIR/vgpu.sock or /tmp/vgpu.sock; when
        /// neither option nor variable is given and nothing answers there, a private mediator is started).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Folder with libvgpu_cudart12.so and libvgpu_cudart13.so (default: $VGPU_LIB_DIR, else
        /// the folder of this vgpu binary).
        #[arg(long)]
        lib_dir: Option<PathBuf>,
        /// Only replace the libraries through LD_LIBRARY_PATH; do not set LD_PRELOAD.
        #[arg(long)]
        no_preload: bool,
        /// Executor of a private mediator.
        #[arg(long, value_enum, default_value = "emu")]
        executor: ExecutorKind,
        /// The program and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        program: Vec<String>,
    },
    /// Internal: serve one VM on an ivshmem socket (started by `vgpu serve --ivshmem`).
    #[command(hide = true)]
    IvshmemWorker {
        #[arg(long)]
        session: u64,
        #[arg(long, value_enum)]
        executor: ExecutorKind,
        #[arg(long)]
        spin_us: u64,
        #[arg(long)]
        mem_bytes: u64,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        generation: u64,
        #[command(flatten)]
        kernels: WorkerKernelArgs,
    },
    /// Internal: serve one session (started by `vgpu serve`).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        session: u64,
        #[arg(long, value_enum)]
        executor: ExecutorKind,
        #[arg(long)]
        spin_us: u64,
        #[arg(long)]
        mem_bytes: u64,
        #[arg(long)]
        hello: String,
        #[command(flatten)]
        kernels: WorkerKernelArgs,
    },
}

/// The kernel settings `vgpu serve` passes to its workers ([`vgpu_mediator::modules::KernelOpts`]).
#[derive(clap::Args)]
struct WorkerKernelArgs {
    #[arg(long)]
    launch_log: Option<PathBuf>,
    /// Absent: no module cache.
    #[arg(long)]
    module_cache: Option<PathBuf>,
    #[arg(long)]
    kernel_timeout_ms: Option<u64>,
}

impl WorkerKernelArgs {
    fn opts(self) -> vgpu_mediator::modules::KernelOpts {
        vgpu_mediator::modules::KernelOpts {
            launch_log: self.launch_log,
            module_cache: self.module_cache,
            kernel_timeout: self.kernel_timeout_ms.map(Duration::from_millis),
        }
    }
}

fn parse_hello(hex: &str) -> Option<[u8; 64]> {
    let mut out = [0u8; 64];
    if hex.len() != 128 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn main() -> ExitCode {
    vgpu_mediator::init_logging();
    let cli = Cli::parse();
    let r: Result<(), String> = match cli.cmd {
        Cmd::Serve { socket, ivshmem, size, executor, spin_us, mem_gib, launch_log, module_cache, kernel_timeout } => {
            let mut kernels = match vgpu_mediator::modules::KernelOpts::from_flags(launch_log, module_cache.as_deref()) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("vgpu serve: {e}");
                    return ExitCode::from(2);
                }
            };
            match kernel_timeout.map(Duration::try_from_secs_f64) {
                None => {}
                Some(Ok(t)) if !t.is_zero() => kernels.kernel_timeout = Some(t),
                Some(_) => {
                    eprintln!("vgpu serve: --kernel-timeout takes a positive number of seconds");
                    return ExitCode::from(2);
                }
            }
            let ivshmem = match serve::ivshmem_sockets(ivshmem, &size) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("vgpu serve: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = serve::ServeOpts {
                socket: socket.unwrap_or_else(default_socket),
                ivshmem,
                executor,
                spin: Duration::from_micros(spin_us),
                limits: EmuLimits { mem_total: mem_gib << 30, ..EmuLimits::default() },
                kernels,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(serve::serve(opts)))
        }
        Cmd::Stat { socket, json } => serve::query_stat(&socket.unwrap_or_else(default_socket)).map(|v| {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", serve::render_stat(&v));
            }
        }),
        Cmd::Bench { quick, json } => bench::run(quick, json),
        Cmd::Demo => demo::run(),
        Cmd::Doctor { socket, device } => doctor::run(doctor::DoctorOpts { socket, device, sys: None }),
        Cmd::Run { socket, lib_dir, no_preload, executor, program } => {
            let opts = run::RunOpts { socket, lib_dir, preload: !no_preload, executor: executor.name().to_string(), program };
            return match run::run(opts) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("vgpu run: {e}");
                    ExitCode::from(125)
                }
            };
        }
        Cmd::IvshmemWorker { session, executor, spin_us, mem_bytes, size, generation, kernels } => {
            let opts = worker::IvshmemWorkerOpts {
                session,
                executor,
                spin: Duration::from_micros(spin_us),
                limits: EmuLimits { mem_total: mem_bytes, ..EmuLimits::default() },
                size,
                generation,
                kernels: kernels.opts(),
            };
            return ExitCode::from(worker::run_ivshmem(opts).clamp(0, 255) as u8);
        }
        Cmd::Worker { session, executor, spin_us, mem_bytes, hello, kernels } => {
            let Some(hello) = parse_hello(&hello) else {
                eprintln!("vgpu worker: bad --hello");
                return ExitCode::from(2);
            };
            let opts = worker::WorkerOpts {
                session,
                executor,
                spin: Duration::from_micros(spin_us),
                hello,
                limits: EmuLimits { mem_total: mem_bytes, ..EmuLimits::default() },
                kernels: kernels.opts(),
            };
            return ExitCode::from(worker::run(opts).clamp(0, 255) as u8);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpu: {e}");
            ExitCode::FAILURE
        }
    }
}
