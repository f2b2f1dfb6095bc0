//! `vgpu serve`: the control plane. It owns the listening socket and the session table, starts
//! one worker process per guest, and answers `vgpu stat`. It never touches a region itself.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::handshake::{self, MSG_LEN};
use vgpu_transport::ServerStats;

use crate::emu::EmuLimits;
use crate::worker::{CONN_FD, STATS_FD};
use crate::ExecutorKind;

/// Settings of `vgpu serve`.
#[derive(Clone, Debug)]
pub struct ServeOpts {
    pub socket: PathBuf,
    /// ivshmem-server sockets, one VM each.
    pub ivshmem: Vec<IvshmemSocket>,
    pub executor: ExecutorKind,
    pub spin: Duration,
    pub limits: EmuLimits,
    /// `--launch-log`, `--module-cache`: passed to every worker.
    pub kernels: crate::modules::KernelOpts,
}

/// One `--ivshmem SOCKET` with its region size.
#[derive(Clone, Debug)]
pub struct IvshmemSocket {
    pub path: PathBuf,
    pub size: u64,
}

/// Pair `--ivshmem` sockets with `--size` values: none given means the default for all, one
/// means that size for all, otherwise one per socket, in order.
pub fn ivshmem_sockets(paths: Vec<PathBuf>, sizes: &[String]) -> Result<Vec<IvshmemSocket>, String> {
    let sizes: Vec<u64> = sizes.iter().map(|s| crate::ivshmem::parse_size(s)).collect::<Result<_, _>>()?;
    if sizes.len() > 1 && sizes.len() != paths.len() {
        return Err(format!(
            "{} --size values for {} --ivshmem sockets: give one size for all, or one per socket",
            sizes.len(),
            paths.len()
        ));
    }
    if !sizes.is_empty() && paths.is_empty() {
        return Err("--size applies to --ivshmem sockets; none was given".into());
    }
    let mut seen = std::collections::HashSet::new();
    paths
        .into_iter()
        .enumerate()
        .map(|(i, path)| {
            let size = match sizes.len() {
                0 => crate::ivshmem::DEFAULT_SIZE,
                1 => sizes[0],
                _ => sizes[i],
            };
            crate::ivshmem::check_size(size)?;
            if !seen.insert(path.clone()) {
                return Err(format!("--ivshmem {} given twice", path.display()));
            }
            Ok(IvshmemSocket { path, size })
        })
        .collect()
}

struct StatsPage {
    ptr: *const ServerStats,
    _map: memmap2::MmapRaw,
}

// SAFETY: the page is only read through atomics (ServerStats is made of them), so sharing the
// pointer across threads is sound; the mapping lives as long as the StatsPage.
unsafe impl Send for StatsPage {}
// SAFETY: see Send.
unsafe impl Sync for StatsPage {}

impl StatsPage {
    fn get(&self) -> &ServerStats {
        // SAFETY: `ptr` points at the start of the live 4096-byte mapping `_map`, aligned, and
        // ServerStats (256 bytes of atomics) is only accessed atomically by both processes.
        unsafe { &*self.ptr }
    }
}

struct Session {
    id: u64,
    /// `None`: a direct session; `Some(socket)`: a VM on that ivshmem socket.
    ivshmem: Option<PathBuf>,
    guest_pid: u32,
    worker_pid: u32,
    started: Instant,
    ended: Option<String>,
    stats: StatsPage,
}

#[derive(Default)]
struct Table {
    sessions: Vec<Session>,
    next_id: u64,
}

fn stats_json(s: &ServerStats) -> Value {
    let l = |a: &vgpu_transport::sync::stat::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "commands": l(&s.commands),
        "blocking_round_trips": l(&s.blocking_calls),
        "errors": l(&s.errors),
        "protocol_errors": l(&s.protocol_errors),
        "completions": l(&s.completions),
        "interrupts_raised": l(&s.interrupts_raised),
        "interrupts_suppressed": l(&s.interrupts_suppressed),
        "doorbell_wakeups": l(&s.doorbell_wakeups),
        "host_sleeps": l(&s.sleeps),
        "host_spin_hits": l(&s.spin_hits),
        "guest_spin_hits": l(&s.guest_spin_hits),
        "guest_parks": l(&s.guest_parks),
        "bytes_h2d": l(&s.bytes_h2d),
        "bytes_d2h": l(&s.bytes_d2h),
        "bytes_d2d": l(&s.bytes_d2d),
        "mem_in_use": l(&s.mem_in_use),
        "mem_peak": l(&s.mem_peak),
        "allocations": l(&s.allocations),
        "streams": l(&s.streams),
        "events": l(&s.events),
        "launches": l(&s.launches),
        "kernel_warp_insts": l(&s.kernel_warp_insts),
        "kernel_faults": l(&s.kernel_faults),
        "modules_loaded": l(&s.modules_loaded),
        "modules_cached": l(&s.modules_cached),
        "graph_launches": l(&s.graph_launches),
    })
}

impl Table {
    fn report(&self, opts: &ServeOpts) -> Value {
        let sessions: Vec<Value> = self
            .sessions
            .iter()
            .map(|s| {
                let st = s.stats.get();
                let mut v = stats_json(st);
                v["id"] = json!(s.id);
                v["guest_pid"] = json!(s.guest_pid);
                v["link"] = json!(if s.ivshmem.is_some() { "ivshmem" } else { "direct" });
                if let Some(p) = &s.ivshmem {
                    // A VM: its current guest process (from the region, informational) and the
                    // guest sessions (epochs) served so far.
                    v["ivshmem_socket"] = json!(p.display().to_string());
                    v["guest_pid"] = json!(st.guest_pid.load(Ordering::Relaxed));
                    v["epoch"] = json!(st.epoch.load(Ordering::Relaxed));
                    v["guest_sessions"] = json!(st.guest_sessions.load(Ordering::Relaxed));
                }
                v["worker_pid"] = json!(s.worker_pid);
                v["age_s"] = json!(s.started.elapsed().as_secs_f64());
                v["state"] = json!(match &s.ended {
                    None => "serving".to_string(),
                    Some(why) => format!("ended ({why})"),
                });
                v
            })
            .collect();
        let live_mem: u64 =
            self.sessions.iter().filter(|s| s.ended.is_none()).map(|s| s.stats.get().mem_in_use.load(Ordering::Relaxed)).sum();
        json!({
            "executor": opts.executor.name(),
            "pid": std::process::id(),
            "live_sessions": self.sessions.iter().filter(|s| s.ended.is_none()).count(),
            "mem_in_use": live_mem,
            "sessions": sessions,
        })
    }
}

/// Run the control plane until SIGINT/SIGTERM.
pub async fn serve(mut opts: ServeOpts) -> Result<(), String> {
    // `cuda` needs a driver and a device (the error names the fix); `auto` becomes `cuda` or
    // `emu` here, once, and the workers get the resolved kind.
    opts.executor = crate::cuda::select(opts.executor)?;
    // ivshmem sockets first: once the control socket answers, every VM socket listens (a
    // script may start QEMU as soon as `vgpu stat` works).
    let mut vm_listeners = Vec::new();
    for v in &opts.ivshmem {
        remove_stale(&v.path)?;
        let l = UnixListener::bind(&v.path).map_err(|e| format!("cannot listen on {}: {e}", v.path.display()))?;
        info!(target: "vgpu::serve", socket = %v.path.display(), size = v.size, "ivshmem: listening for a VM");
        vm_listeners.push((l, v.clone()));
    }
    remove_stale(&opts.socket)?;
    let listener = UnixListener::bind(&opts.socket).map_err(|e| format!("cannot listen on {}: {e}", opts.socket.display()))?;
    info!(target: "vgpu::serve", socket = %opts.socket.display(), executor = opts.executor.name(), "listening");
    let table = Arc::new(Mutex::new(Table::default()));
    let opts = Arc::new(opts);
    let generation = host_generation();
    for (l, v) in vm_listeners {
        tokio::spawn(serve_vms(l, v, generation, table.clone(), opts.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((conn, _)) => {
                    let (t, o) = (table.clone(), opts.clone());
                    tokio::spawn(async move {
                        if let Err(e) = handle(conn, t, o).await {
                            warn!(target: "vgpu::serve", "connection: {e}");
                        }
                    });
                }
                Err(e) => warn!(target: "vgpu::serve", "accept: {e}"),
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    stop_vm_workers(&table).await;
    let _ = std::fs::remove_file(&opts.socket);
    for v in &opts.ivshmem {
        let _ = std::fs::remove_file(&v.path);
    }
    info!(target: "vgpu::serve", "shut down");
    Ok(())
}

fn remove_stale(path: &Path) -> Result<(), String> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!("a mediator is already listening on {}; stop it or choose another --socket", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
    }
    Ok(())
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

async fn handle(mut conn: UnixStream, table: Arc<Mutex<Table>>, opts: Arc<ServeOpts>) -> Result<(), String> {
    let mut first = [0u8; MSG_LEN];
    match tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut first)).await {
        Err(_) => return Err("no request within 5 s".to_string()),
        // A connect-and-close (a liveness probe, `vgpu run` checking for a mediator) is normal.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
        Ok(Err(e)) => return Err(format!("reading the first message: {e}")),
        Ok(Ok(_)) => {}
    }
    let magic = u64::from_le_bytes(first[..8].try_into().unwrap_or_default());
    if magic == handshake::STAT_MAGIC {
        let text = serde_json::to_string_pretty(&lock(&table).report(&opts)).unwrap_or_default();
        conn.write_all(text.as_bytes()).await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    if magic != handshake::HELLO_MAGIC {
        return Err(format!("unknown request magic {magic:#018x}"));
    }
    let guest_pid = u32::from_le_bytes(first[28..32].try_into().unwrap_or_default());
    let (id, stats, stats_fd, conn_fd) = new_session(&table, conn)?;
    let mut child = spawn_worker(&opts, id, &first, &conn_fd, &stats_fd)?;
    drop(conn_fd);
    drop(stats_fd);
    let worker_pid = child.id().unwrap_or(0);
    info!(target: "vgpu::serve", session = id, guest_pid, worker_pid, "session started");
    lock(&table).sessions.push(Session { id, ivshmem: None, guest_pid, worker_pid, started: Instant::now(), ended: None, stats });
    let status = child.wait().await.map_err(|e| e.to_string())?;
    session_ended(&table, id, status);
    info!(target: "vgpu::serve", session = id, %status, "session ended");
    Ok(())
}

/// What every worker starts from: a session id, the statistics page the parent reads (and the
/// memfd the worker maps), and the connection as a blocking fd for the worker to inherit.
fn new_session(table: &Mutex<Table>, conn: UnixStream) -> Result<(u64, StatsPage, OwnedFd, OwnedFd), String> {
    let id = {
        let mut t = lock(table);
        t.next_id += 1;
        t.next_id
    };
    let stats_fd = vgpu_transport::region::create_memfd("vgpu-stats", 4096).map_err(|e| e.to_string())?;
    let map = memmap2::MmapOptions::new().len(4096).map_raw(&stats_fd).map_err(|e| e.to_string())?;
    let stats = StatsPage { ptr: map.as_ptr().cast(), _map: map };
    let std_conn = conn.into_std().map_err(|e| e.to_string())?;
    std_conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    Ok((id, stats, stats_fd, OwnedFd::from(std_conn)))
}

/// Mark a session's worker as gone (its memory went with it) and keep the table short.
fn session_ended(table: &Mutex<Table>, id: u64, status: std::process::ExitStatus) {
    let mut t = lock(table);
    if let Some(s) = t.sessions.iter_mut().find(|s| s.id == id) {
        // The worker process is gone, and with it every byte of the session's memory.
        let st = s.stats.get();
        st.mem_in_use.store(0, Ordering::Relaxed);
        st.state.store(2, Ordering::Relaxed);
        s.ended = Some(match status.code() {
            Some(c) => format!("worker exit {c}"),
            None => "worker killed".into(),
        });
    }
    // Keep the most recent ended sessions for `vgpu stat`.
    let ended: Vec<u64> = t.sessions.iter().filter(|s| s.ended.is_some()).map(|s| s.id).collect();
    if ended.len() > 64 {
        let drop_ids: Vec<u64> = ended[..ended.len() - 64].to_vec();
        t.sessions.retain(|s| !drop_ids.contains(&s.id));
    }
}

/// Ask every VM worker to stop (SIGTERM: it marks its region Closed, so the guests fail their
/// calls at once) and give them up to 2 s; whatever is left dies with this process (the
/// workers' parent-death signal).
async fn stop_vm_workers(table: &Mutex<Table>) {
    let live =
        |t: &Table| -> Vec<u32> { t.sessions.iter().filter(|s| s.ivshmem.is_some() && s.ended.is_none()).map(|s| s.worker_pid).collect() };
    for pid in live(&lock(table)) {
        if pid != 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !live(&lock(table)).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `HOST_GENERATION` of this mediator instance: its start time in nanoseconds, odd (never 0).
fn host_generation() -> u64 {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    (ns ^ ((std::process::id() as u64) << 48)) | 1
}

/// How long a new connection waits for the previous VM's worker to finish detaching.
const VM_HANDOVER_GRACE: Duration = Duration::from_secs(2);

/// Accept VMs on one ivshmem socket: one at a time. A connection while a VM is attached is
/// refused (closed) unless that VM detaches within [`VM_HANDOVER_GRACE`].
async fn serve_vms(listener: UnixListener, vm: IvshmemSocket, generation: u64, table: Arc<Mutex<Table>>, opts: Arc<ServeOpts>) {
    let busy = Arc::new(vgpu_transport::sync::stat::AtomicUsize::new(0));
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                warn!(target: "vgpu::serve", socket = %vm.path.display(), "accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (t, o, v, b) = (table.clone(), opts.clone(), vm.clone(), busy.clone());
        tokio::spawn(async move {
            // A VM that just hung up is still attached until its worker has noticed and exited
            // (milliseconds): a peer that reconnects at once (a restarted QEMU, the next guest
            // test process) waits for that instead of being refused. A VM still attached after
            // the grace period is a second VM, and is refused.
            let deadline = Instant::now() + VM_HANDOVER_GRACE;
            while b.swap(1, Ordering::AcqRel) != 0 {
                if Instant::now() >= deadline {
                    warn!(target: "vgpu::serve", socket = %v.path.display(), "refusing a second connection: a VM is already attached to this socket (one socket per VM)");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Err(e) = handle_vm(conn, &v, generation, t, o).await {
                warn!(target: "vgpu::serve", socket = %v.path.display(), "VM: {e}");
            }
            b.store(0, Ordering::Release);
        });
    }
}

async fn handle_vm(
    conn: UnixStream,
    vm: &IvshmemSocket,
    generation: u64,
    table: Arc<Mutex<Table>>,
    opts: Arc<ServeOpts>,
) -> Result<(), String> {
    let (id, stats, stats_fd, conn_fd) = new_session(&table, conn)?;
    let args = vec![
        "ivshmem-worker".to_string(),
        "--session".into(),
        id.to_string(),
        "--executor".into(),
        opts.executor.name().into(),
        "--spin-us".into(),
        opts.spin.as_micros().to_string(),
        "--mem-bytes".into(),
        opts.limits.mem_total.to_string(),
        "--size".into(),
        vm.size.to_string(),
        "--generation".into(),
        generation.to_string(),
    ];
    let mut child = spawn_with_fds(&[args, opts.kernels.worker_args()].concat(), &conn_fd, &stats_fd)?;
    drop(conn_fd);
    drop(stats_fd);
    let worker_pid = child.id().unwrap_or(0);
    info!(target: "vgpu::serve", session = id, worker_pid, socket = %vm.path.display(), "VM attached");
    lock(&table).sessions.push(Session {
        id,
        ivshmem: Some(vm.path.clone()),
        guest_pid: 0,
        worker_pid,
        started: Instant::now(),
        ended: None,
        stats,
    });
    let status = child.wait().await.map_err(|e| e.to_string())?;
    session_ended(&table, id, status);
    info!(target: "vgpu::serve", session = id, %status, socket = %vm.path.display(), "VM detached; its region and sessions are released");
    Ok(())
}

fn spawn_worker(
    opts: &ServeOpts,
    id: u64,
    hello: &[u8; MSG_LEN],
    conn: &OwnedFd,
    stats: &OwnedFd,
) -> Result<tokio::process::Child, String> {
    let hex: String = hello.iter().map(|b| format!("{b:02x}")).collect();
    let args = vec![
        "worker".to_string(),
        "--session".into(),
        id.to_string(),
        "--executor".into(),
        opts.executor.name().into(),
        "--spin-us".into(),
        opts.spin.as_micros().to_string(),
        "--mem-bytes".into(),
        opts.limits.mem_total.to_string(),
        "--hello".into(),
        hex,
    ];
    spawn_with_fds(&[args, opts.kernels.worker_args()].concat(), conn, stats)
}

/// Start `vgpu ARGS` with `conn` at [`CONN_FD`] and `stats` at [`STATS_FD`].
fn spawn_with_fds(args: &[String], conn: &OwnedFd, stats: &OwnedFd) -> Result<tokio::process::Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the vgpu binary: {e}"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(false);
    if std::env::var_os("CUDA_DEVICE_MAX_CONNECTIONS").is_none() {
        // cuda executor: see `cuda::MAX_CONNECTIONS` (read by the driver at cuInit, so it is set
        // for the worker process from its start).
        cmd.env("CUDA_DEVICE_MAX_CONNECTIONS", crate::cuda::MAX_CONNECTIONS);
    }
    let (c, s) = (conn.as_raw_fd(), stats.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl/dup2, which
    // are async-signal-safe. It moves the two fds out of the way (>= 10) first so that placing
    // them at 3 and 4 cannot clobber either, and dup2 leaves the targets without FD_CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            let hc = libc::fcntl(c, libc::F_DUPFD, 10);
            let hs = libc::fcntl(s, libc::F_DUPFD, 10);
            if hc < 0 || hs < 0 || libc::dup2(hc, CONN_FD) < 0 || libc::dup2(hs, STATS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(hc);
            libc::close(hs);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("starting a worker process: {e}"))
}

/// `vgpu stat`: ask a running mediator for its sessions, as JSON.
pub fn query_stat(socket: &Path) -> Result<Value, String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!("cannot reach a mediator at {}: {e}. Is `vgpu serve --socket {}` running?", socket.display(), socket.display())
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut req = [0u8; MSG_LEN];
    req[..8].copy_from_slice(&handshake::STAT_MAGIC.to_le_bytes());
    s.write_all(&req).map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("bad stat answer: {e}"))
}

/// Render a stat report as a table.
pub fn render_stat(v: &Value) -> String {
    let mut out = format!(
        "mediator pid {}  executor {}  live sessions {}  device memory in use {}\n",
        v["pid"],
        v["executor"].as_str().unwrap_or("?"),
        v["live_sessions"],
        human_bytes(v["mem_in_use"].as_u64().unwrap_or(0))
    );
    out.push_str(&format!(
        "{:>4} {:>8} {:<22} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>9} {:>14} {:>8}\n",
        "id",
        "guest",
        "state",
        "commands",
        "blocking",
        "irq raised",
        "irq supp.",
        "spins",
        "h2d",
        "d2h",
        "mem",
        "launches",
        "modules/cached",
        "graphs"
    ));
    for s in v["sessions"].as_array().into_iter().flatten() {
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:>4} {:>8} {:<22} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>9} {:>14} {:>8}\n",
            n("id"),
            n("guest_pid"),
            match s["link"].as_str() {
                // A VM: how many guest processes (epochs) it has served.
                Some("ivshmem") => format!("{} vm/{}", s["state"].as_str().unwrap_or("?"), n("guest_sessions")),
                _ => s["state"].as_str().unwrap_or("?").to_string(),
            },
            n("commands"),
            n("blocking_round_trips"),
            n("interrupts_raised"),
            n("interrupts_suppressed"),
            n("guest_spin_hits") + n("host_spin_hits"),
            human_bytes(n("bytes_h2d")),
            human_bytes(n("bytes_d2h")),
            human_bytes(n("mem_in_use")),
            n("launches"),
            format!("{}/{}", n("modules_loaded"), n("modules_cached")),
            n("graph_launches"),
        ));
    }
    out
}

/// `1.5 MiB` style.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
