#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and cross-process integration tests, and the
# loom models (each with its weakened variants, which must fail). This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Run a test command, keeping its output for the summary at the end.
run_tests() { "$@" 2>&1 | tee -a "$log"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (deny warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "CUDA headers for the C conformance suite (scripts/setup-cuda-headers.sh: PyPI wheels, nothing committed)"
if VGPU_CUDA_HEADERS=$(bash scripts/setup-cuda-headers.sh); then
  export VGPU_CUDA_HEADERS
  echo "$VGPU_CUDA_HEADERS"
elif [[ -n "${CI:-}" ]]; then
  echo "setup-cuda-headers.sh failed: CI must run the C conformance suite" >&2
  exit 1
else
  echo "warning: could not fetch the CUDA headers (no PyPI?); tests/cudart.rs will skip the C suite" >&2
fi

step "nvcc for the fatbin/cubin parser tests (scripts/setup-nvcc.sh: PyPI wheels, nothing committed)"
if VGPU_NVCC=$(bash scripts/setup-nvcc.sh); then
  export VGPU_NVCC
  echo "$VGPU_NVCC"
elif [[ -n "${CI:-}" ]]; then
  echo "setup-nvcc.sh failed: CI must run the fatbin tests against real nvcc output" >&2
  exit 1
else
  echo "warning: could not fetch nvcc (no PyPI?); host/fatbin/tests/nvcc.rs will skip" >&2
fi

step "cargo test (unit + integration against real mediator processes)"
run_tests cargo test --workspace

step "loom models (--cfg vgpu_loom, preemption bound set per model)"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
RUSTFLAGS="--cfg vgpu_loom" cargo clippy -p vgpu-loom-tests --all-targets --target-dir target/loom -- -D warnings
RUSTFLAGS="--cfg vgpu_loom" run_tests cargo test -p vgpu-loom-tests --release --target-dir target/loom -- --test-threads=1

step "VM test: a QEMU guest (TCG) on the ivshmem link through VFIO (scripts/vm-test.sh; VGPU_SKIP_VM=1 skips it outside CI)"
if [[ -n "${VGPU_SKIP_VM:-}" && -z "${CI:-}" ]]; then
  echo "skipped: VGPU_SKIP_VM is set"
else
  vm_rc=0
  bash scripts/vm-test.sh || vm_rc=$?
  if [[ $vm_rc == 77 && -z "${CI:-}" ]]; then
    echo "warning: this machine cannot run the VM test (see above); CI runs it" >&2
  elif [[ $vm_rc != 0 ]]; then
    echo "scripts/vm-test.sh failed (exit $vm_rc)" >&2
    exit 1
  fi
fi

# One closing line over every test binary above (pipefail already stopped us on any failure).
counts=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { printf "%d %d", p, f }' "$log")
passed=${counts% *}
failed=${counts#* }
printf '\n== summary\n%s passed, %s failed\n' "$passed" "$failed"
