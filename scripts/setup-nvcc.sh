#!/usr/bin/env bash
# Fetch NVIDIA's CUDA 13 compiler from PyPI, for the tests of vgpu-fatbin (host/fatbin/tests/nvcc.rs),
# which compile small kernels (host/fatbin/tests/cu) with nvcc and parse the result. nvcc needs no GPU.
# Nothing of NVIDIA's is committed: the wheels are downloaded into target/cuda-headers/wheels
# (shared with scripts/setup-cuda-headers.sh) and unpacked into <root> (default target/nvcc), so
# that the toolchain is <root>/nvidia/cu13/{bin,nvvm,include,lib}:
#
#   nvidia-cuda-nvcc==13.0.88 (nvcc, ptxas, fatbinary, cudafe++), nvidia-nvvm==13.0.88 (cicc,
#   libnvvm), nvidia-cuda-crt==13.0.88 (crt/ headers), nvidia-cuda-runtime==13.0.96 (cuda_runtime.h)
#
# This is what `pip install` of those wheels into a venv would lay out under site-packages, without
# the venv. Prints the path of nvcc. Needs python3 with pip and access to PyPI; a second run with
# everything in place does no network access. nvcc also needs a host compiler (gcc/g++).
set -euo pipefail
cd "$(dirname "$0")/.."
root="${VGPU_NVCC_ROOT:-$PWD/target/nvcc}"
wheels="$PWD/target/cuda-headers/wheels"
nvcc="$root/nvidia/cu13/bin/nvcc"
want=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96)
stamp="$root/.complete-${want[*]// /_}"
stamp="${stamp// /+}"

if [[ -f "$stamp" && -x "$nvcc" ]]; then
  echo "$nvcc"
  exit 0
fi

command -v python3 >/dev/null || { echo "setup-nvcc: python3 not found (needed to fetch nvcc from PyPI)" >&2; exit 1; }
mkdir -p "$wheels"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2010_x86_64 \
  --python-version 3.11 -d "$wheels" "${want[@]}" >&2

rm -rf "$root"
mkdir -p "$root"
# Unpack the nvidia/cu13 tree of each wanted wheel (and only that), keeping the executable bits.
python3 - "$wheels" "$root" "${want[@]}" <<'PY'
import pathlib, sys, zipfile
wheels, root, want = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
for spec in want:
    name, version = spec.split("==")
    found = sorted(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not found:
        sys.exit(f"setup-nvcc: no wheel for {spec} in {wheels}")
    with zipfile.ZipFile(found[0]) as z:
        for info in z.infolist():
            if not info.filename.startswith("nvidia/cu13/") or info.is_dir():
                continue
            dst = root / info.filename
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(z.read(info))
            if "/bin/" in info.filename:
                dst.chmod(0o755)
PY

[[ -x "$nvcc" ]] || { echo "setup-nvcc: $nvcc missing after unpacking" >&2; exit 1; }
touch "$stamp"
echo "$nvcc"
