#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and cross-process integration tests, and the
# loom models (each with its weakened variants, which must fail). This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (deny warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit + integration against real mediator processes)"
cargo test --workspace

step "loom models (--cfg vgpu_loom, preemption bound set per model)"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
RUSTFLAGS="--cfg vgpu_loom" cargo clippy -p vgpu-loom-tests --all-targets --target-dir target/loom -- -D warnings
RUSTFLAGS="--cfg vgpu_loom" cargo test -p vgpu-loom-tests --release --target-dir target/loom -- --test-threads=1
