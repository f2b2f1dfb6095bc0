//! Finding nvcc for the tests that compile CUDA (one definition, for `vgpu-tests` and, through
//! `#[path]`, for `vgpu-fatbin`'s tests, which cannot depend on this crate). Std only.
//!
//! `$VGPU_NVCC` if it names a file; else the PyPI install of `scripts/setup-nvcc.sh` under
//! `target/nvcc`; else that script is run. Without nvcc a test skips, saying so, except under CI
//! (`CI` set), where it fails: there it must run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root: the first folder above the including crate's that has `scripts/setup-nvcc.sh`.
fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().find(|d| d.join("scripts/setup-nvcc.sh").is_file()).unwrap_or(here).to_path_buf()
}

fn skip(msg: String) -> Option<PathBuf> {
    assert!(!matches!(std::env::var_os("CI"), Some(v) if !v.is_empty()), "{msg}: CI must run the nvcc tests");
    eprintln!("SKIPPED: {msg}");
    None
}

/// nvcc, or `None` (after a skip message) where there is none.
pub fn nvcc() -> Option<&'static Path> {
    static NVCC: OnceLock<Option<PathBuf>> = OnceLock::new();
    NVCC.get_or_init(|| {
        if let Some(p) = std::env::var_os("VGPU_NVCC").map(PathBuf::from) {
            if p.is_file() {
                return Some(p);
            }
            eprintln!("VGPU_NVCC={} is not a file; trying scripts/setup-nvcc.sh", p.display());
        }
        let root = root();
        let p = root.join("target/nvcc/nvidia/cu13/bin/nvcc");
        if p.is_file() {
            return Some(p);
        }
        match Command::new("bash").arg(root.join("scripts/setup-nvcc.sh")).output() {
            Ok(o) if o.status.success() => {
                let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                if p.is_file() {
                    Some(p)
                } else {
                    skip(format!("scripts/setup-nvcc.sh printed {}, which is not a file", p.display()))
                }
            }
            Ok(o) => skip(format!("scripts/setup-nvcc.sh failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => skip(format!("running scripts/setup-nvcc.sh: {e}")),
        }
    })
    .as_deref()
}
