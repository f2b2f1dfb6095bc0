//! `vgpu run -- APP ARGS`: run a CUDA program (built against `libcudart.so.12` or `.13`) on vgpu.
//!
//! 1. The mediator: `--socket`/`$VGPU_SOCKET`/the default socket if a mediator answers there;
//!    otherwise a private `vgpu serve` child on a fresh socket, stopped when the program exits.
//! 2. The libraries: `libvgpu_cudart12.so` and `libvgpu_cudart13.so` (SONAMEs `libcudart.so.12`
//!    and `.13`) from `--lib-dir`, `$VGPU_LIB_DIR`, or the folder of the `vgpu` binary (where
//!    cargo puts them: `target/<profile>/`). A private folder gets `libcudart.so.12` and
//!    `libcudart.so.13` symlinks to them and goes first in `LD_LIBRARY_PATH`, so a program (or a
//!    `dlopen("libcudart.so.12")`) finds ours instead of NVIDIA's; with `--preload` (the default)
//!    both are also in `LD_PRELOAD`, which wins even over an `RPATH` pointing at a bundled real
//!    libcudart. Each library's exports are versioned `libcudart.so.12` / `.13`, so a program's
//!    `sym@libcudart.so.12` references bind to the matching one.
//!    A private mediator gets `--launch-log $VGPU_LAUNCH_LOG` when that variable is set.
//! 3. The program runs with `VGPU_SOCKET` set (and `VGPU_MEDIATOR_PID` when the mediator is a
//!    private one); `vgpu run` exits with its status (128 + signal number if a signal ended it),
//!    or with 125 and a message naming the fix when it cannot start it (libraries not built, no
//!    mediator at an explicitly named socket).

use std::path::{Path, PathBuf};
use std::process::Command;

use vgpu_mediator::child::Mediator;

/// The file cargo builds for each CUDA major version, and the name programs look for.
pub const LIBRARIES: [(&str, &str); 2] = [("libvgpu_cudart12.so", "libcudart.so.12"), ("libvgpu_cudart13.so", "libcudart.so.13")];
/// The runtime every CUDA-named library loads (one per process), found beside them.
pub const RUNTIME: &str = "libvgpu.so";
/// The command that builds all of them.
const BUILD: &str = "cargo build -p vgpu-cudart12 -p vgpu-cudart13 -p vgpu-runtime";

/// Options of `vgpu run`.
#[derive(Clone, Debug)]
pub struct RunOpts {
    pub socket: Option<PathBuf>,
    pub lib_dir: Option<PathBuf>,
    pub preload: bool,
    pub executor: String,
    pub program: Vec<String>,
}

/// Why `vgpu run` could not run the program; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no program given (usage: vgpu run [OPTIONS] -- APP [ARGS...])")]
    NoProgram,
    #[error(
        "{built} (or {soname}) not found in {} ({how}). Build the CUDA Runtime drop-ins with `{BUILD}` in the same \
         profile as this vgpu (add --release for a release vgpu), or point VGPU_LIB_DIR (or --lib-dir) at the folder \
         that holds them",
        dir.display()
    )]
    LibraryMissing { built: &'static str, soname: &'static str, dir: PathBuf, how: &'static str },
    #[error(
        "{RUNTIME} (the vgpu runtime the CUDA libraries load) not found in {} ({how}). Build it with `{BUILD}` in the \
         same profile as this vgpu, or point VGPU_LIB_DIR (or --lib-dir) at the folder that holds it",
        dir.display()
    )]
    RuntimeMissing { dir: PathBuf, how: &'static str },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(
        "no vgpu mediator answers at {path} (start one with `vgpu serve --socket {path}`, or leave --socket and \
         VGPU_SOCKET unset to let vgpu run start its own)",
        path = socket.display()
    )]
    NoMediator { socket: PathBuf },
    #[error(transparent)]
    Mediator(#[from] vgpu_mediator::child::ChildError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Where our libraries are: `explicit`, else `$VGPU_LIB_DIR`, else the folder of `exe`. Returns
/// the folder and the path of each library (12, 13), or an error that names the fix.
pub fn find_libraries(explicit: Option<&Path>, exe: &Path) -> Result<(PathBuf, [PathBuf; 2]), RunError> {
    let (dir, how) = match (explicit, std::env::var_os("VGPU_LIB_DIR")) {
        (Some(d), _) => (d.to_path_buf(), "--lib-dir"),
        (None, Some(d)) => (PathBuf::from(d), "$VGPU_LIB_DIR"),
        (None, None) => (exe.parent().map(Path::to_path_buf).unwrap_or_default(), "the folder of the vgpu binary"),
    };
    // A folder may hold cargo's names or the installed ones.
    let find = |(built, soname): (&'static str, &'static str)| {
        [dir.join(built), dir.join(soname)].into_iter().find(|p| p.is_file()).ok_or_else(|| RunError::LibraryMissing {
            built,
            soname,
            dir: dir.clone(),
            how,
        })
    };
    let libs = [find(LIBRARIES[0])?, find(LIBRARIES[1])?];
    if !dir.join(RUNTIME).is_file() {
        return Err(RunError::RuntimeMissing { dir, how });
    }
    Ok((dir, libs))
}

/// A private folder with `libcudart.so.12` / `.13` symlinks to `libs`, removed on drop.
pub struct LibLinks(PathBuf);

impl LibLinks {
    pub fn new(libs: &[PathBuf; 2]) -> Result<LibLinks, RunError> {
        let dir = std::env::temp_dir().join(format!("vgpu-run-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let links = LibLinks(dir);
        for (lib, (_, soname)) in libs.iter().zip(LIBRARIES) {
            let target = std::fs::canonicalize(lib).map_err(io(lib.display().to_string()))?;
            std::os::unix::fs::symlink(&target, links.0.join(soname)).map_err(io(format!("linking {soname}")))?;
        }
        // The runtime beside them, so the libraries' `dlopen("libvgpu.so")` finds it on LD_LIBRARY_PATH.
        if let Some(rt) = libs[0].parent().map(|d| d.join(RUNTIME)).filter(|p| p.is_file()) {
            let target = std::fs::canonicalize(&rt).map_err(io(rt.display().to_string()))?;
            std::os::unix::fs::symlink(&target, links.0.join(RUNTIME)).map_err(io(format!("linking {RUNTIME}")))?;
        }
        Ok(links)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LibLinks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Prepend `first` to a `:`-separated list variable's current value.
fn prepend(var: &str, first: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => format!("{first}:{v}"),
        _ => first.to_string(),
    }
}

/// Run the program; returns its exit code for `vgpu run` to exit with.
pub fn run(opts: RunOpts) -> Result<u8, RunError> {
    let (prog, args) = opts.program.split_first().ok_or(RunError::NoProgram)?;
    let exe = std::env::current_exe().map_err(io("locating the vgpu binary"))?;
    let (_, libs) = find_libraries(opts.lib_dir.as_deref(), &exe)?;
    let links = LibLinks::new(&libs)?;

    // A running mediator, or a private one for this program.
    let wanted = opts.socket.clone().unwrap_or_else(vgpu_mediator::default_socket);
    let mut private = None;
    let socket = if std::os::unix::net::UnixStream::connect(&wanted).is_ok() {
        if std::env::var_os("VGPU_LAUNCH_LOG").is_some_and(|l| !l.is_empty()) {
            tracing::warn!(target: "vgpu::run", "VGPU_LAUNCH_LOG applies to a mediator vgpu run starts; the one at {} logs launches only if it was started with --launch-log", wanted.display());
        }
        wanted
    } else if opts.socket.is_some() || std::env::var_os("VGPU_SOCKET").is_some() {
        return Err(RunError::NoMediator { socket: wanted });
    } else {
        // VGPU_LAUNCH_LOG: the private mediator appends every kernel launch there.
        let mut extra = Vec::new();
        if let Some(log) = std::env::var_os("VGPU_LAUNCH_LOG").filter(|l| !l.is_empty()) {
            extra.push("--launch-log".into());
            extra.push(log);
        }
        let m = Mediator::start_with_args(&exe, &opts.executor, 50, &extra)?;
        let s = m.socket().to_path_buf();
        tracing::info!(target: "vgpu::run", "started a private mediator (executor {}) at {}", opts.executor, s.display());
        private = Some(m);
        s
    };

    let mut cmd = Command::new(prog);
    cmd.args(args).env("VGPU_SOCKET", &socket).env("LD_LIBRARY_PATH", prepend("LD_LIBRARY_PATH", &links.path().to_string_lossy()));
    if let Some(m) = &private {
        cmd.env("VGPU_MEDIATOR_PID", m.pid().to_string());
    }
    if opts.preload {
        let pre: Vec<String> = LIBRARIES.iter().map(|(_, soname)| links.path().join(soname).to_string_lossy().into_owned()).collect();
        cmd.env("LD_PRELOAD", prepend("LD_PRELOAD", &pre.join(":")));
    }
    let status = cmd.status().map_err(io(format!("starting {prog}")))?;
    drop(private);
    drop(links);
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 1,
    })
}
