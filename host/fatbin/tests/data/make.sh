#!/usr/bin/env bash
# Rebuilds the committed test fatbins of host/fatbin/tests/data from tiny.cu, with the nvcc 13.0.88
# that scripts/setup-nvcc.sh unpacks (`$VGPU_NVCC`, default target/nvcc/nvidia/cu13/bin/nvcc).
# tests/compress.rs reads them (no nvcc needed at test time). Exact commands:
#
#   tiny_<mode>.fatbin  nvcc -fatbin -arch=sm_80 -Xfatbin -compress-all -compress-mode=<mode> tiny.cu
#                       for mode in default size balance speed none: an sm_80 cubin and compute_80
#                       PTX, both compressed (speed: LZ4, flag 0x2000; default/size/balance:
#                       Zstandard, flag 0x8000; none: neither)
#   tiny_ptx75.fatbin   nvcc -fatbin -gencode arch=compute_75,code=compute_75 tiny.cu
#                       PTX only (compressed by default: Zstandard)
#   tiny_ptx75_speed.fatbin  the same with -compress-mode=speed (LZ4)
set -euo pipefail
cd "$(dirname "$0")"
nvcc="${VGPU_NVCC:-../../../../target/nvcc/nvidia/cu13/bin/nvcc}"
for mode in default size balance speed none; do
  "$nvcc" -fatbin -arch=sm_80 -Xfatbin -compress-all -compress-mode="$mode" tiny.cu -o "tiny_$mode.fatbin"
done
"$nvcc" -fatbin -gencode arch=compute_75,code=compute_75 tiny.cu -o tiny_ptx75.fatbin
"$nvcc" -fatbin -gencode arch=compute_75,code=compute_75 -compress-mode=speed tiny.cu -o tiny_ptx75_speed.fatbin
