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
    pub executor: ExecutorKind,
    pub spin: Duration,
    pub limits: EmuLimits,
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
    })
}

impl Table {
    fn report(&self, opts: &ServeOpts) -> Value {
        let sessions: Vec<Value> = self
            .sessions
            .iter()
            .map(|s| {
                let mut v = stats_json(s.stats.get());
                v["id"] = json!(s.id);
                v["guest_pid"] = json!(s.guest_pid);
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
pub async fn serve(opts: ServeOpts) -> Result<(), String> {
    if opts.executor == ExecutorKind::Cuda {
        return Err("the cuda executor is not built yet in this release; run `vgpu serve --executor emu` (or `auto`)".into());
    }
    if opts.executor == ExecutorKind::Auto {
        info!(target: "vgpu::serve", "executor auto: this build has no cuda executor yet, using emu");
    }
    remove_stale(&opts.socket)?;
    let listener = UnixListener::bind(&opts.socket).map_err(|e| format!("cannot listen on {}: {e}", opts.socket.display()))?;
    info!(target: "vgpu::serve", socket = %opts.socket.display(), executor = opts.executor.name(), "listening");
    let table = Arc::new(Mutex::new(Table::default()));
    let opts = Arc::new(opts);
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
    let _ = std::fs::remove_file(&opts.socket);
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
    let id = {
        let mut t = lock(&table);
        t.next_id += 1;
        t.next_id
    };
    let stats_fd = vgpu_transport::region::create_memfd("vgpu-stats", 4096).map_err(|e| e.to_string())?;
    let map = memmap2::MmapOptions::new().len(4096).map_raw(&stats_fd).map_err(|e| e.to_string())?;
    let stats = StatsPage { ptr: map.as_ptr().cast(), _map: map };
    let std_conn = conn.into_std().map_err(|e| e.to_string())?;
    std_conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    let conn_fd = OwnedFd::from(std_conn);
    let mut child = spawn_worker(&opts, id, &first, &conn_fd, &stats_fd)?;
    drop(conn_fd);
    drop(stats_fd);
    let worker_pid = child.id().unwrap_or(0);
    info!(target: "vgpu::serve", session = id, guest_pid, worker_pid, "session started");
    lock(&table).sessions.push(Session { id, guest_pid, worker_pid, started: Instant::now(), ended: None, stats });
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let mut t = lock(&table);
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
    info!(target: "vgpu::serve", session = id, %status, "session ended");
    Ok(())
}

fn spawn_worker(
    opts: &ServeOpts,
    id: u64,
    hello: &[u8; MSG_LEN],
    conn: &OwnedFd,
    stats: &OwnedFd,
) -> Result<tokio::process::Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the vgpu binary: {e}"))?;
    let hex: String = hello.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("worker")
        .arg("--session")
        .arg(id.to_string())
        .arg("--executor")
        .arg(opts.executor.name())
        .arg("--spin-us")
        .arg(opts.spin.as_micros().to_string())
        .arg("--mem-bytes")
        .arg(opts.limits.mem_total.to_string())
        .arg("--hello")
        .arg(hex)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
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
        "{:>4} {:>8} {:<22} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10}\n",
        "id", "guest", "state", "commands", "blocking", "irq raised", "irq supp.", "spins", "h2d", "d2h", "mem"
    ));
    for s in v["sessions"].as_array().into_iter().flatten() {
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:>4} {:>8} {:<22} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10}\n",
            n("id"),
            n("guest_pid"),
            s["state"].as_str().unwrap_or("?"),
            n("commands"),
            n("blocking_round_trips"),
            n("interrupts_raised"),
            n("interrupts_suppressed"),
            n("guest_spin_hits") + n("host_spin_hits"),
            human_bytes(n("bytes_h2d")),
            human_bytes(n("bytes_d2h")),
            human_bytes(n("mem_in_use")),
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
