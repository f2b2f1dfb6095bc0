//! Logging set up once for every vgpu binary and library: `tracing` to stderr, filtered by
//! `VGPU_LOG` (e.g. `VGPU_LOG=debug`, `VGPU_LOG=vgpu::server=trace,warn`), with colour only when
//! stderr is a terminal, so files and CI logs hold no ANSI escape codes.

use std::io::IsTerminal;

/// Install the subscriber (`default` is the filter when `VGPU_LOG` is unset or invalid), unless
/// the process already has one: a program that set up its own `tracing` keeps it. Idempotent.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VGPU_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}
