//! A mediator started as a child process (for `vgpu demo`, `vgpu bench` and tests).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a mediator child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("creating {}: {source}", dir.display())]
    Folder { dir: PathBuf, source: std::io::Error },
    #[error("starting {}: {source}", exe.display())]
    Spawn { exe: PathBuf, source: std::io::Error },
    #[error("the mediator exited at start: {0}")]
    Exited(std::process::ExitStatus),
    #[error("the mediator did not start listening within 10 s")]
    NotListening,
    #[error("locating the current executable: {0}")]
    CurrentExe(std::io::Error),
}

/// A running `vgpu serve` child, killed on drop.
pub struct Mediator {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Mediator {
    /// Start `exe serve` on a fresh socket in a private temporary folder and wait until it
    /// accepts connections.
    pub fn start(exe: &Path, executor: &str, spin_us: u64) -> Result<Mediator, ChildError> {
        Mediator::spawn(exe, executor, spin_us, false, &[])
    }

    /// [`start`](Self::start) with more `vgpu serve` arguments (e.g. `--launch-log PATH`).
    pub fn start_with_args(exe: &Path, executor: &str, spin_us: u64, extra: &[std::ffi::OsString]) -> Result<Mediator, ChildError> {
        Mediator::spawn(exe, executor, spin_us, false, extra)
    }

    fn spawn(exe: &Path, executor: &str, spin_us: u64, bound: bool, extra: &[std::ffi::OsString]) -> Result<Mediator, ChildError> {
        let dir = std::env::temp_dir().join(format!("vgpu-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).map_err(|source| ChildError::Folder { dir: dir.clone(), source })?;
        let socket = dir.join("vgpu.sock");
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--executor", executor, "--spin-us", &spin_us.to_string(), "--socket"])
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null());
        // The command that starts it (demo, bench, doctor, run) owns the terminal: the
        // mediator's routine INFO lines would interleave with its output, so it logs warnings
        // and errors only, unless VGPU_LOG says otherwise.
        if std::env::var_os("VGPU_LOG").is_none() {
            cmd.env("VGPU_LOG", "warn");
        }
        if bound {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only makes one
            // async-signal-safe system call (prctl).
            unsafe {
                cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from));
            }
        }
        let child = cmd.spawn().map_err(|source| ChildError::Spawn { exe: exe.to_path_buf(), source })?;
        let mut m = Mediator { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&m.socket).is_err() {
            if let Ok(Some(st)) = m.child.try_wait() {
                return Err(ChildError::Exited(st));
            }
            if Instant::now() > deadline {
                return Err(ChildError::NotListening);
            }
            // Polling for the socket to appear: there is no event to wait on for another
            // process's bind().
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(m)
    }

    /// Start the current executable as the mediator.
    pub fn start_self(executor: &str, spin_us: u64) -> Result<Mediator, ChildError> {
        let exe = std::env::current_exe().map_err(ChildError::CurrentExe)?;
        Mediator::start(&exe, executor, spin_us)
    }

    /// Start the current executable as a mediator that also stops (SIGTERM) when the thread that
    /// started it exits: for a process-wide guest context, which stays connected until the
    /// process exits, pair it with [`Mediator::stop_at_exit`] so the guest never sees its
    /// mediator go first.
    pub fn start_self_bound(executor: &str, spin_us: u64) -> Result<Mediator, ChildError> {
        let exe = std::env::current_exe().map_err(ChildError::CurrentExe)?;
        Mediator::spawn(&exe, executor, spin_us, true, &[])
    }

    /// Leave a mediator from [`Mediator::start_self_bound`] running until this process exits
    /// (the kernel then sends it SIGTERM); its folder is removed now (a connected guest no
    /// longer needs the socket's path).
    pub fn stop_at_exit(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::mem::forget(self);
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the mediator (its workers die with it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mediator {
    fn drop(&mut self) {
        // SIGTERM for a clean shutdown, then make sure. Only while the child is unreaped: after
        // `kill` (or an exit seen by `try_wait`) its pid may already belong to another process.
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                // std has no timed wait for a child; poll its exit against the deadline.
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::time::SystemTime;
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
