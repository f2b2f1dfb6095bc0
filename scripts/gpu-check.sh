#!/usr/bin/env bash
# gpu-check.sh: the one check of vgpu on a real GPU (issue 4). Two halves, on two machines:
#
#   1. Here (Rust toolchain, PyPI access, no GPU needed):
#        bash scripts/gpu-check.sh --prepare [DIR]        # DIR defaults to target/gpu-check
#      runs `cargo build --release` of the vgpu binary and libcudart.so.12/.13 (vgpu-cudart12/13),
#      builds the .cu suite (tests/cu/*.cu) and the benchmark (tests/cu/bench/gpubench.cu) with nvcc 13
#      from PyPI (scripts/setup-nvcc.sh) against our libcudart.so.13, and stages everything in DIR
#      (under 64 MiB): bin/vgpu, lib/libvgpu_cudart1{2,3}.so and lib/libvgpu.so, cu/<programs>, and nvidia/libcudart.so.13
#      (NVIDIA's runtime from the same PyPI wheels, used for the native run only if the device machine
#      has none of its own), and bin/cuda_executor (tests/cuda_executor.rs built with --no-run). DIR is under target/, so nothing of it (NVIDIA's files included) is in git.
#      The binaries need glibc >= 2.34 on the device machine (built on Debian 12 here).
#
#   2. On the device machine (one NVIDIA H100/H200, driver 580, no Rust, no network), with DIR carried
#      over (the run tool: carry ["target/gpu-check"]):
#        bash scripts/gpu-check.sh [DIR]
#      uses only DIR and the machine's driver. It prints nvidia-smi; runs every .cu program natively
#      (NVIDIA's libcudart.so.13) and through vgpu (`vgpu serve --executor cuda` + our libcudart.so.13)
#      and compares their RESULT lines bit for bit; runs bin/cuda_executor (the cuda executor's own
#      tests, VGPU_EXE=bin/vgpu, 120 s at most); runs gpubench both ways and prints one table of
#      vgpu/native ratios with PASS/MISS per target:
#        pinned H2D/D2H >= 0.95x native, pageable >= 0.8x (judged on copies of 64 MiB and more; every
#        size from 1 MiB to 1 GiB is listed), async launch rate >= 0.8x, empty-stream sync <= native + 3 us
#        (graph launch latency and launch+sync latency are listed without a target).
#      Everything runs under timeouts within a budget of 7.5 minutes (GPU_CHECK_BUDGET_S). Logs and
#      outputs go to $OUT when set (the run tool brings that folder back), else DIR/results.
#      Exit status: 0 when every program passed both ways with equal results (benchmark MISSes are
#      reported, not failures); 1 when a program failed or results differ; 2 when there is no GPU.
#
#   Also: bash scripts/gpu-check.sh --emu-smoke [DIR]   (no GPU needed) runs the staged programs through
#   the staged vgpu on the emu executor: checks the bundle is complete and runs without cargo or nvcc.
#
# Native libcudart.so.13 search order: $GPU_CHECK_NATIVE_CUDART (a folder), /usr/local/cuda*/lib64 and
# targets/x86_64-linux/lib, the ld.so cache, Python site-packages (nvidia/cu13/lib, nvidia/cuda_runtime/lib),
# then DIR/nvidia.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

mode=run
case "${1:-}" in
  --prepare) mode=prepare; shift ;;
  --emu-smoke) mode=emu-smoke; shift ;;
  -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
esac
dir="${1:-$here/target/gpu-check}"
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac

nvcc_flags=(-O2 -std=c++17 -cudart shared -gencode arch=compute_80,code=sm_80 -gencode "arch=compute_90,code=[sm_90,compute_90]")

die() { echo "gpu-check: $*" >&2; exit "${code:-1}"; }

# ---------------------------------------------------------------------------------------------
prepare() {
  set -e
  cd "$here"
  command -v cargo >/dev/null || die "--prepare needs cargo (build here, run on the device machine)"
  echo "== cargo build --release (vgpu, libcudart.so.12/.13)"
  # Two commands: `--bin vgpu` would also filter out the cdylibs of the other packages.
  cargo build --release -p vgpu-cli --bin vgpu
  cargo build --release -p vgpu-cudart12 -p vgpu-cudart13 -p vgpu-runtime
  local rel="$here/target/release"
  for f in vgpu libvgpu_cudart12.so libvgpu_cudart13.so libvgpu.so; do
    [[ -f "$rel/$f" ]] || die "$rel/$f was not built"
  done
  echo "== nvcc (scripts/setup-nvcc.sh)"
  local nvcc="${VGPU_NVCC:-}"
  [[ -n "$nvcc" && -x "$nvcc" ]] || nvcc="$(bash scripts/setup-nvcc.sh)"
  [[ -x "$nvcc" ]] || die "no nvcc"
  local nvroot; nvroot="$(dirname "$(dirname "$nvcc")")"

  rm -rf "$dir"
  mkdir -p "$dir/bin" "$dir/lib" "$dir/cu" "$dir/nvidia" "$dir/.link"
  cp "$rel/vgpu" "$dir/bin/vgpu"
  strip "$dir/bin/vgpu" 2>/dev/null || true
  cp "$rel/libvgpu_cudart12.so" "$rel/libvgpu_cudart13.so" "$rel/libvgpu.so" "$dir/lib/"
  strip --strip-debug "$dir/lib/libvgpu_cudart12.so" "$dir/lib/libvgpu_cudart13.so" "$dir/lib/libvgpu.so" 2>/dev/null || true
  cp "$nvroot/lib/libcudart.so.13" "$dir/nvidia/libcudart.so.13"
  # The cuda executor's own integration test (tests/cuda_executor.rs), run there without cargo.
  echo "== cargo test --release --no-run: tests/cuda_executor.rs"
  local exe
  exe=$(cargo test --release -p vgpu-tests --test cuda_executor --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda_executor" and m.get("executable"):
        print(m["executable"])' | tail -1) || true
  if [[ -n "$exe" && -x "$exe" ]]; then
    cp "$exe" "$dir/bin/cuda_executor"
    strip --strip-debug "$dir/bin/cuda_executor" 2>/dev/null || true
  else
    echo "   warning: tests/cuda_executor.rs did not build; the device run will skip it" >&2
  fi
  # Link-time folder: libcudart.so -> our library (the binaries record libcudart.so.13, its SONAME).
  ln -s "$dir/lib/libvgpu_cudart13.so" "$dir/.link/libcudart.so"
  ln -s "$nvroot/lib/libcudadevrt.a" "$dir/.link/libcudadevrt.a"
  echo "== nvcc: tests/cu/*.cu, tests/cu/bench/gpubench.cu"
  local src name
  for src in tests/cu/*.cu tests/cu/bench/gpubench.cu; do
    name="$(basename "$src" .cu)"
    echo "   $name"
    "$nvcc" "${nvcc_flags[@]}" -I tests/cu -L "$dir/.link" -o "$dir/cu/$name" "$src"
  done
  rm -rf "$dir/.link"
  cp "$here/scripts/gpu-check.sh" "$dir/gpu-check.sh"
  {
    echo "built $(date -u +%FT%TZ) from $(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "nvcc: $("$nvcc" --version | tail -1)"
    (cd "$dir" && find . -type f ! -name MANIFEST -printf '%P\n' | sort | xargs sha256sum)
  } > "$dir/MANIFEST"
  local bytes; bytes=$(du -sb "$dir" | cut -f1)
  echo "== staged in $dir: $((bytes / 1024 / 1024)) MiB"
  (( bytes < 64 * 1024 * 1024 )) || die "$dir is $bytes bytes: over the 64 MiB the device machine accepts"
  echo "On the device machine: bash scripts/gpu-check.sh ${dir#"$here"/}   (carry: [\"${dir#"$here"/}\"])"
}

# ---------------------------------------------------------------------------------------------
budget=${GPU_CHECK_BUDGET_S:-450}
start=$SECONDS
left() { echo $(( budget - (SECONDS - start) )); }

# run_to OUTFILE TIMEOUT cmd... : run with a timeout capped by the remaining budget; stdout+stderr
# into OUTFILE; returns the command's status (124 on timeout, 125 when no time was left).
run_to() {
  local out="$1" t="$2"; shift 2
  local l; l=$(left)
  (( l < t )) && t=$l
  if (( t < 5 )); then
    echo "SKIPPED: out of time budget (${budget}s)" > "$out"
    return 125
  fi
  timeout -k 5 "$t" "$@" > "$out" 2>&1
}

check_bundle() {
  [[ -x "$dir/bin/vgpu" && -f "$dir/lib/libvgpu_cudart13.so" && -d "$dir/cu" ]] \
    || die "$dir is not a prepared bundle (run: bash scripts/gpu-check.sh --prepare, then carry $dir)"
  # Built on the preparing machine: needs glibc >= 2.34 here.
  local v
  v=$(timeout 10 "$dir/bin/vgpu" --version 2>&1) || die "the staged vgpu does not run on this machine: $v"
  echo "   $v"
  programs=()
  local f
  for f in "$dir"/cu/*; do
    [[ -x "$f" && "$(basename "$f")" != gpubench ]] && programs+=("$(basename "$f")")
  done
  (( ${#programs[@]} > 0 )) || die "no programs in $dir/cu"
  [[ -x "$dir/cu/gpubench" ]] || die "no $dir/cu/gpubench"
}

# Private folders for this run: results, a lib folder whose libcudart.so.13 is ours (made here, so
# the bundle needs no symlinks), the mediator's socket and module cache.
setup_run() {
  out="${GPU_CHECK_OUT:-${OUT:-$dir/results}}"
  mkdir -p "$out/native" "$out/vgpu"
  work="$(mktemp -d /tmp/gpu-check.XXXXXX)"
  mkdir -p "$work/vgpu-lib"
  ln -s "$dir/lib/libvgpu_cudart13.so" "$work/vgpu-lib/libcudart.so.13"
  ln -s "$dir/lib/libvgpu_cudart12.so" "$work/vgpu-lib/libcudart.so.12"
  ln -s "$dir/lib/libvgpu.so" "$work/vgpu-lib/libvgpu.so"
  mediator_pid=""
  trap cleanup EXIT
}

cleanup() {
  if [[ -n "${mediator_pid:-}" ]] && kill -0 "$mediator_pid" 2>/dev/null; then
    kill -TERM "$mediator_pid" 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$mediator_pid" 2>/dev/null || break; sleep 0.3; done
    kill -KILL "$mediator_pid" 2>/dev/null
  fi
  [[ -n "${work:-}" ]] && rm -rf "$work"
}

# start_mediator EXECUTOR
start_mediator() {
  local sock="$work/vgpu.sock"
  # The cuda mediator logs at info ("cuda session open ... window=registered|shadowed", warnings).
  local level=warn
  [[ "$1" == cuda ]] && level=info
  VGPU_LOG="${VGPU_LOG:-$level}" "$dir/bin/vgpu" serve --executor "$1" --socket "$sock" \
    --module-cache "$work/modules" > "$out/vgpu/mediator.log" 2>&1 &
  mediator_pid=$!
  local i
  for i in $(seq 1 200); do
    [[ -S "$sock" ]] && return 0
    kill -0 "$mediator_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "vgpu serve --executor $1 did not start:"; sed 's/^/    /' "$out/vgpu/mediator.log"
  mediator_pid=""
  return 1
}

# run_prog SIDE NAME TIMEOUT [args]: SIDE native|vgpu; output in $out/SIDE/NAME.out
run_prog() {
  local side="$1" name="$2" t="$3"; shift 3
  if [[ "$side" == native ]]; then
    run_to "$out/native/$name.out" "$t" env -u LD_PRELOAD LD_LIBRARY_PATH="$native_dir" "$dir/cu/$name" "$@"
  else
    # gpubench asks for the largest data window (1 GiB): pinned buffers live there.
    local win=()
    [[ "$name" == gpubench ]] && win=(VGPU_WINDOW_MIB="${VGPU_WINDOW_MIB:-1024}")
    run_to "$out/vgpu/$name.out" "$t" env -u LD_PRELOAD LD_LIBRARY_PATH="$work/vgpu-lib" VGPU_SOCKET="$work/vgpu.sock" \
      "${win[@]}" VGPU_LOG="${VGPU_LOG:-warn}" "$dir/cu/$name" "$@"
  fi
}

find_native_cudart() {
  local c
  local cands=()
  [[ -n "${GPU_CHECK_NATIVE_CUDART:-}" ]] && cands+=("$GPU_CHECK_NATIVE_CUDART")
  for c in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
           /usr/local/cuda-13*/targets/x86_64-linux/lib; do
    cands+=("$c")
  done
  c=$(ldconfig -p 2>/dev/null | awk '/libcudart\.so\.13 /{print $NF; exit}')
  [[ -n "$c" ]] && cands+=("$(dirname "$c")")
  if command -v python3 >/dev/null; then
    while IFS= read -r c; do cands+=("$c"); done < <(timeout 20 python3 - 2>/dev/null <<'PY'
import site, sys, glob, os
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
for r in sorted(p for p in roots if p and os.path.isdir(p)):
    for g in ("nvidia/cu13/lib", "nvidia/cuda_runtime/lib"):
        d = os.path.join(r, g)
        if os.path.isfile(os.path.join(d, "libcudart.so.13")):
            print(d)
PY
)
  fi
  cands+=("$dir/nvidia")
  for c in "${cands[@]}"; do
    if [[ -f "$c/libcudart.so.13" ]]; then
      native_dir="$c"
      return 0
    fi
  done
  return 1
}

results_of() { grep '^RESULT ' "$1" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
emu_smoke() {
  check_bundle
  setup_run
  echo "== emu smoke: the staged programs through the staged vgpu (executor emu: the PTX interpreter; each program checks its results)"
  start_mediator emu || exit 1
  local name fails=0
  for name in "${programs[@]}"; do
    if run_prog vgpu "$name" 60 && grep -qx "ok $name" "$out/vgpu/$name.out"; then
      printf '  %-16s ok (%d launches, %d checked results)\n' "$name" "$(grep -c '^EXPECT-LAUNCH' "$out/vgpu/$name.out")" \
        "$(grep -c '^RESULT' "$out/vgpu/$name.out")"
    else
      echo "  $name FAILED:"; tail -15 "$out/vgpu/$name.out" | sed 's/^/    /'; fails=$((fails + 1))
    fi
  done
  run_prog vgpu gpubench 30 --quick
  local st=$?
  if (( st == 3 )); then echo "  gpubench        refuses emu (exit 3), as it should"; else echo "  gpubench exit $st (expected 3)"; fails=$((fails + 1)); fi
  echo "outputs in $out"
  (( fails == 0 )) || exit 1
}

# ---------------------------------------------------------------------------------------------
gpu_run() {
  echo "== gpu-check $(date -u +%FT%TZ), bundle $dir"
  if ! command -v nvidia-smi >/dev/null; then
    code=2 die "no NVIDIA GPU here: nvidia-smi not found (this must run on the device machine; see the top of $0)"
  fi
  echo "== nvidia-smi"
  if ! timeout 30 nvidia-smi; then
    code=2 die "no NVIDIA GPU here: nvidia-smi failed"
  fi
  timeout 30 nvidia-smi -L | grep -q '^GPU ' || code=2 die "no NVIDIA GPU here: nvidia-smi -L lists none"
  check_bundle
  [[ -f "$dir/MANIFEST" ]] && head -2 "$dir/MANIFEST"
  setup_run
  find_native_cudart || die "no native libcudart.so.13 found (set GPU_CHECK_NATIVE_CUDART)"
  echo "== native runtime: $native_dir/libcudart.so.13"

  local name fails=0
  declare -A nat_ok vg_ok
  echo "== .cu suite natively"
  for name in "${programs[@]}"; do
    if run_prog native "$name" 45 && grep -qx "ok $name" "$out/native/$name.out"; then
      nat_ok[$name]=1; printf '  %-16s ok, %d results\n' "$name" "$(results_of "$out/native/$name.out" | wc -l)"
    else
      nat_ok[$name]=0; fails=$((fails + 1)); echo "  $name FAILED natively:"; tail -10 "$out/native/$name.out" | sed 's/^/    /'
    fi
  done

  echo "== .cu suite through vgpu (vgpu serve --executor cuda)"
  local have_mediator=0
  start_mediator cuda && have_mediator=1
  for name in "${programs[@]}"; do
    if (( have_mediator )) && run_prog vgpu "$name" 60 && grep -qx "ok $name" "$out/vgpu/$name.out"; then
      vg_ok[$name]=1; printf '  %-16s ok, %d results\n' "$name" "$(results_of "$out/vgpu/$name.out" | wc -l)"
    else
      vg_ok[$name]=0; fails=$((fails + 1)); echo "  $name FAILED through vgpu:"; tail -10 "$out/vgpu/$name.out" 2>/dev/null | sed 's/^/    /'
    fi
  done

  echo "== RESULT lines, native vs vgpu (bit for bit)"
  for name in "${programs[@]}"; do
    if [[ "${nat_ok[$name]}" == 1 && "${vg_ok[$name]}" == 1 ]]; then
      if diff <(results_of "$out/native/$name.out") <(results_of "$out/vgpu/$name.out") > "$out/$name.resultdiff"; then
        printf '  %-16s SAME (%d results)\n' "$name" "$(results_of "$out/native/$name.out" | wc -l)"
        rm -f "$out/$name.resultdiff"
      else
        fails=$((fails + 1)); echo "  $name DIFFERENT:"; sed 's/^/    /' "$out/$name.resultdiff"
      fi
    else
      printf '  %-16s not compared (a run failed)\n' "$name"
    fi
  done

  echo "== tests/cuda_executor.rs (the cuda executor's own tests, VGPU_EXE = the staged vgpu)"
  if [[ -x "$dir/bin/cuda_executor" ]]; then
    run_to "$out/cuda_executor.out" 120 env VGPU_EXE="$dir/bin/vgpu" VGPU_LOG="${VGPU_LOG:-info}" \
      "$dir/bin/cuda_executor" --test-threads 1 --nocapture
    local st=$?
    grep -E '^test result|^test .* (FAILED|ok)$' "$out/cuda_executor.out" | sed 's/^/  /'
    grep -E 'skipped: ' "$out/cuda_executor.out" | sed 's/^/  /'
    if (( st != 0 )); then
      fails=$((fails + 1)); echo "  cuda_executor FAILED (exit $st; see $out/cuda_executor.out)"
    fi
  else
    echo "  not staged (bin/cuda_executor missing): skipped"
  fi

  echo "== gpubench natively"
  run_prog native gpubench 150 || echo "  gpubench native: exit $? (see $out/native/gpubench.out)"
  echo "== gpubench through vgpu"
  if (( have_mediator )); then
    run_prog vgpu gpubench 200 || echo "  gpubench vgpu: exit $? (see $out/vgpu/gpubench.out)"
  fi
  bench_table "$out/native/gpubench.out" "$out/vgpu/gpubench.out" | tee "$out/summary.txt"

  echo "== mediator log (tail; all of it in $out/vgpu/mediator.log)"; tail -20 "$out/vgpu/mediator.log" 2>/dev/null | sed 's/^/    /'
  echo "outputs in $out"
  if (( fails > 0 )); then
    echo "gpu-check: $fails failure(s) in the .cu suite (see above)"; exit 1
  fi
  echo "gpu-check: the .cu suite passed natively and through vgpu with equal results"
}

# bench_table NATIVE_OUT VGPU_OUT
bench_table() {
  if ! command -v python3 >/dev/null; then
    awk_table "$1" "$2"
    return
  fi
  python3 - "$1" "$2" <<'PY'
import sys
def load(p):
    d = {}
    try:
        for l in open(p):
            f = l.split()
            if len(f) == 3 and f[0] == "BENCH":
                try: d[f[1]] = float(f[2])
                except ValueError: d[f[1]] = None
    except OSError:
        pass
    return d
n, v = load(sys.argv[1]), load(sys.argv[2])
rows, verdicts = [], {}
def row(name, key, unit, target=None, lower_better=False):
    a, b = n.get(key), v.get(key)
    ratio = (b / a) if (a and b) else None
    verdict = ""
    if target and a is not None and b is not None:
        ok = target(a, b)
        verdict = "PASS" if ok else "MISS"
    elif target:
        verdict = "n/a"
    fmt = lambda x: "n/a" if x is None else (f"{x:,.0f}" if x >= 1000 else f"{x:.2f}")
    rows.append((name, fmt(a), fmt(b), "n/a" if ratio is None else f"{ratio:.2f}x", unit, verdict))
    return verdict
print()
print("GPU benchmark: native vs vgpu (tests/cu/bench/gpubench.cu)")
summary = []
s = row("async launch rate (empty kernel)", "launch_rate_per_s", "launches/s", lambda a, b: b >= 0.8 * a)
summary.append(("async launch rate >= 0.8x native", s))
row("  enqueue only", "launch_enqueue_rate_per_s", "launches/s")
s = row("empty-stream cudaStreamSynchronize p50", "sync_empty_us", "us", lambda a, b: b <= a + 3.0)
summary.append(("empty sync <= native + 3 us", s))
row("launch + sync p50", "launch_sync_us", "us")
row("graph launch + sync p50", "graph_launch_sync_us", "us")
row("graph launch rate", "graph_launch_rate_per_s", "launches/s")
big = {"pinned": [], "pageable": []}
for kind, t in (("pinned", 0.95), ("pageable", 0.8)):
    for d in ("h2d", "d2h"):
        for mib in (1, 4, 16, 64, 256, 1024):
            k = f"{kind}_{d}_{mib}MiB_gbps"
            if k not in n and k not in v:
                continue
            s = row(f"{kind} {d.upper()} {mib} MiB", k, "GB/s", lambda a, b, t=t: b >= t * a)
            if mib >= 64:
                big[kind].append(s)
for kind, t in (("pinned", 0.95), ("pageable", 0.8)):
    vs = big[kind]
    s = "n/a" if not vs or all(x == "n/a" for x in vs) else ("MISS" if "MISS" in vs else "PASS")
    summary.append((f"{kind} H2D/D2H >= {t}x native (64 MiB and up)", s))
w = max(len(r[0]) for r in rows)
print(f"{'figure':<{w}}  {'native':>12}  {'vgpu':>12}  {'vgpu/native':>11}  {'unit':<10}  target")
for r in rows:
    print(f"{r[0]:<{w}}  {r[1]:>12}  {r[2]:>12}  {r[3]:>11}  {r[4]:<10}  {r[5]}")
print()
for name, s in summary:
    print(f"{s:<5} {name}")
mib = lambda d: 'n/a' if d.get('pinned_max_mib') is None else int(d['pinned_max_mib'])
print(f"(verdicts over the sizes measured both ways; pinned buffers: native up to {mib(n)} MiB, vgpu up to {mib(v)} MiB: "
      "vgpu's pinned memory lives in its data window, at most 1 GiB with the staging chunks)")
PY
}

# Fallback without python3: the raw figures side by side.
awk_table() {
  echo "GPU benchmark (python3 missing: raw figures, no ratios)"
  join -a1 -a2 -e n/a -o 0,1.2,2.2 <(awk '$1=="BENCH"{print $2, $3}' "$1" | sort) <(awk '$1=="BENCH"{print $2, $3}' "$2" | sort) \
    | awk '{printf "%-32s %14s %14s\n", $1, $2, $3}'
}

case "$mode" in
  prepare) prepare ;;
  emu-smoke) emu_smoke ;;
  run) gpu_run ;;
esac
