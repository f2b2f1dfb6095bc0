//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`: seeds from real inputs, and every
//! input a fuzzer found crashing, once fixed) through the fuzz targets' own entry points. An
//! ordinary test on stable Rust: CI runs it with `cargo test --workspace`, no fuzzer needed.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        eprintln!("{target}: {} ({} bytes)", f.file_name().unwrap_or_default().to_string_lossy(), data.len());
        run(&data);
    }
}

#[test]
fn fatbin_corpus() {
    replay("fatbin", vgpu_fuzz::fatbin);
}

#[test]
fn modules_corpus() {
    replay("modules", vgpu_fuzz::modules);
}

#[test]
fn commands_corpus() {
    replay("commands", vgpu_fuzz::commands);
}

#[test]
fn handshake_corpus() {
    replay("handshake", vgpu_fuzz::handshake);
}

#[test]
fn ptx_corpus() {
    replay("ptx", vgpu_fuzz::ptx);
}

#[test]
fn ptx_exec_corpus() {
    // The parser's corpus: the same inputs, run.
    replay("ptx", vgpu_fuzz::ptx_exec);
}
