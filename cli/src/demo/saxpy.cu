// The kernel `vgpu demo` runs on emu. Its PTX (saxpy.ptx) is committed, so the demo needs no
// nvcc; remade with: nvcc -ptx -arch=compute_75 -O3 saxpy.cu -o saxpy.ptx (nvcc 13, PyPI wheels).
extern "C" __global__ void saxpy(float a, const float *x, float *y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
