#!/usr/bin/env bash
# Fetch NVIDIA's CUDA Runtime headers from PyPI, for the C conformance suite (tests/c, driven by
# tests/cudart.rs). Nothing of NVIDIA's is committed: the wheels are downloaded into
# target/cuda-headers/wheels; their include/ folders are unpacked into <root>/<major>/include, and
# NVIDIA's own libcudart.so.<major> into <root>/<major>/lib (the test shows that our preloaded
# library wins over it, as it must in an Ollama install that bundles the real one).
#
#   CUDA 12: nvidia-cuda-runtime-cu12==12.9.79 (cuda_runtime_api.h, driver_types.h, ...) and
#            nvidia-cuda-nvcc-cu12==12.9.86 (crt/host_defines.h, which cuda_runtime_api.h includes)
#   CUDA 13: nvidia-cuda-runtime==13.0.96 and nvidia-cuda-crt==13.0.88 (crt/)
#
# Prints the folder that holds 12/include and 13/include (the test reads it from
# $VGPU_CUDA_HEADERS, default target/cuda-headers). Needs python3 with pip and access to PyPI;
# a second run with everything in place does no network access.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${VGPU_CUDA_HEADERS:-$PWD/target/cuda-headers}"
wheels="$root/wheels"

want12=(nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86)
want13=(nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88)

if [[ -f "$root/12/include/cuda_runtime_api.h" && -f "$root/12/include/crt/host_defines.h" && -f "$root/12/lib/libcudart.so.12" &&
      -f "$root/13/include/cuda_runtime_api.h" && -f "$root/13/include/crt/host_defines.h" && -f "$root/13/lib/libcudart.so.13" ]]; then
  echo "$root"
  exit 0
fi

command -v python3 >/dev/null || { echo "setup-cuda-headers: python3 not found (needed to fetch the CUDA headers from PyPI)" >&2; exit 1; }
mkdir -p "$wheels"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2010_x86_64 \
  --python-version 3.11 -d "$wheels" "${want12[@]}" "${want13[@]}" >&2

# Unpack every wheel's include/ folder (and only that) into <root>/<major>/include.
python3 - "$wheels" "$root" <<'PY'
import pathlib, re, sys, zipfile
wheels, root = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for whl in sorted(wheels.glob("*.whl")):
    major = "13" if re.match(r"nvidia_cuda_(runtime|crt)-13\.", whl.name) else "12" if "cu12-12." in whl.name else None
    if major is None:
        continue
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            m = re.match(r"nvidia/[^/]+/(include/.+|lib/libcudart\.so\.1[23])$", name)
            if not m or name.endswith("/"):
                continue
            dst = root / major / m.group(1)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(z.read(name))
PY

for v in 12 13; do
  for h in include/cuda_runtime_api.h include/crt/host_defines.h lib/libcudart.so.$v; do
    [[ -f "$root/$v/$h" ]] || { echo "setup-cuda-headers: $root/$v/$h missing after unpacking" >&2; exit 1; }
  done
done
echo "$root"
