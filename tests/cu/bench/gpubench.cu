// GPU benchmark for scripts/gpu-check.sh: the same program runs natively (NVIDIA's libcudart) and
// through vgpu (our libcudart on `vgpu serve --executor cuda`); the script compares the two runs.
// Prints one `BENCH <key> <value>` line per figure (units in the key), nothing is judged here.
//
//   launch_rate_per_s        empty kernel, async on one stream, N launches then one sync
//   launch_enqueue_rate_per_s   the same, enqueue only (before the sync)
//   launch_sync_us           p50 of one launch + cudaStreamSynchronize
//   sync_empty_us            p50 of cudaStreamSynchronize on an idle stream
//   graph_launch_sync_us     p50 of cudaGraphLaunch (one empty kernel node) + cudaStreamSynchronize
//   graph_launch_rate_per_s  graph launches back to back, then one sync
//   {pinned,pageable}_{h2d,d2h}_<size>_gbps   cudaMemcpy bandwidth, median of several copies
//
// Options: --quick (fewer iterations, sizes to 256 MiB), --max-mib N (largest copy, default 1024).
#include <algorithm>
#include <chrono>
#include <vector>

#include "../cu_check.h"

__global__ void empty_kernel() {}

typedef std::chrono::steady_clock Clock;

static double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char **argv) {
  bool quick = false;
  size_t max_mib = 1024;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) {
      quick = true;
      max_mib = 256;
    } else if (!strcmp(argv[i], "--max-mib") && i + 1 < argc) {
      max_mib = (size_t)atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: gpubench [--quick] [--max-mib N]\n");
      return 2;
    }
  }
  cu_init("gpubench");
  if (cu_emu) {
    fprintf(stderr, "gpubench: the device is the vgpu emu executor (a CPU interpreter), not a GPU: nothing to measure\n");
    return 3;
  }
  printf("BENCH device \"%s\"\n", cu_prop.name);
  cudaStream_t s;
  CU_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  // Launch rate.
  const int warm = 1000, nlaunch = quick ? 20000 : 200000;
  for (int i = 0; i < warm; i++) empty_kernel<<<1, 1, 0, s>>>();
  CU_OK(cudaStreamSynchronize(s));
  Clock::time_point t0 = Clock::now();
  for (int i = 0; i < nlaunch; i++) empty_kernel<<<1, 1, 0, s>>>();
  Clock::time_point t1 = Clock::now();
  CU_OK(cudaStreamSynchronize(s));
  Clock::time_point t2 = Clock::now();
  CU_OK(cudaGetLastError());
  printf("BENCH launch_rate_per_s %.0f\n", nlaunch / secs(t0, t2));
  printf("BENCH launch_enqueue_rate_per_s %.0f\n", nlaunch / secs(t0, t1));

  const int iters = quick ? 2000 : 20000;
  std::vector<double> v;
  v.reserve(iters);
  for (int i = 0; i < iters; i++) {
    Clock::time_point a = Clock::now();
    empty_kernel<<<1, 1, 0, s>>>();
    CU_OK(cudaStreamSynchronize(s));
    v.push_back(secs(a, Clock::now()));
  }
  printf("BENCH launch_sync_us %.2f\n", median(v) * 1e6);

  v.clear();
  for (int i = 0; i < iters; i++) {
    Clock::time_point a = Clock::now();
    CU_OK(cudaStreamSynchronize(s));
    v.push_back(secs(a, Clock::now()));
  }
  printf("BENCH sync_empty_us %.2f\n", median(v) * 1e6);

  // Graphs: one empty kernel node.
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CU_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  empty_kernel<<<1, 1, 0, s>>>();
  CU_OK(cudaStreamEndCapture(s, &g));
  CU_OK(cudaGraphInstantiate(&ge, g, 0));
  for (int i = 0; i < 100; i++) CU_OK(cudaGraphLaunch(ge, s));
  CU_OK(cudaStreamSynchronize(s));
  v.clear();
  const int giters = quick ? 1000 : 10000;
  for (int i = 0; i < giters; i++) {
    Clock::time_point a = Clock::now();
    CU_OK(cudaGraphLaunch(ge, s));
    CU_OK(cudaStreamSynchronize(s));
    v.push_back(secs(a, Clock::now()));
  }
  printf("BENCH graph_launch_sync_us %.2f\n", median(v) * 1e6);
  t0 = Clock::now();
  for (int i = 0; i < giters; i++) CU_OK(cudaGraphLaunch(ge, s));
  CU_OK(cudaStreamSynchronize(s));
  printf("BENCH graph_launch_rate_per_s %.0f\n", giters / secs(t0, Clock::now()));
  CU_OK(cudaGraphExecDestroy(ge));
  CU_OK(cudaGraphDestroy(g));

  // Bandwidth, 1 MiB .. max_mib (powers of 4).
  size_t maxb = max_mib << 20;
  void *dev = NULL;
  while (cudaMalloc(&dev, maxb) != cudaSuccess) {
    (void)cudaGetLastError();
    maxb /= 2;
    CU_REQUIRE(maxb >= (1u << 20), "cannot allocate 1 MiB of device memory");
  }
  // Pinned: as large as the runtime gives (vgpu's pinned memory lives in its data window, at most 1 GiB).
  size_t pinb = maxb;
  void *pin = NULL;
  while (cudaMallocHost(&pin, pinb) != cudaSuccess) {
    (void)cudaGetLastError();
    pinb /= 2;
    if (pinb < (1u << 20)) {
      pin = NULL;
      pinb = 0;
      break;
    }
  }
  printf("BENCH pinned_max_mib %zu\n", pinb >> 20);
  char *pg = (char *)malloc(maxb);
  CU_REQUIRE(pg != NULL, "malloc %zu", maxb);
  memset(pg, 1, maxb);
  if (pin) memset(pin, 2, pinb);
  for (size_t size = 1u << 20; size <= maxb; size *= 4) {
    int reps = size <= (16u << 20) ? (quick ? 10 : 30) : size <= (256u << 20) ? (quick ? 3 : 8) : 4;
    const char *kinds[2] = {"pinned", "pageable"};
    for (int k = 0; k < 2; k++) {
      char *host = k == 0 ? (char *)pin : pg;
      if (k == 0 && size > pinb) {
        printf("BENCH pinned_h2d_%zuMiB_gbps n/a\nBENCH pinned_d2h_%zuMiB_gbps n/a\n", size >> 20, size >> 20);
        continue;
      }
      for (int dir = 0; dir < 2; dir++) {
        v.clear();
        CU_OK(cudaMemcpy(dir == 0 ? dev : (void *)host, dir == 0 ? (const void *)host : dev, size,
                         dir == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost));
        for (int r = 0; r < reps; r++) {
          Clock::time_point a = Clock::now();
          CU_OK(cudaMemcpy(dir == 0 ? dev : (void *)host, dir == 0 ? (const void *)host : dev, size,
                           dir == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost));
          v.push_back(secs(a, Clock::now()));
        }
        printf("BENCH %s_%s_%zuMiB_gbps %.2f\n", kinds[k], dir == 0 ? "h2d" : "d2h", size >> 20, size / median(v) / 1e9);
      }
    }
  }
  free(pg);
  if (pin) CU_OK(cudaFreeHost(pin));
  CU_OK(cudaFree(dev));
  CU_OK(cudaStreamDestroy(s));
  return cu_pass();
}
