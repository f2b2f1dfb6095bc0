/* Return codes for invalid arguments, error names and strings, versions and device properties. */
#include "check.h"

int main(void) {
  int n = -1;
  OK(cudaGetDeviceCount(&n));
  CHECK(n == 1);
  EXPECT(cudaGetDeviceCount(NULL), cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue); /* recorded ... */
  CHECK(cudaGetLastError() == cudaSuccess);           /* ... and cleared by reading it */

  EXPECT(cudaMalloc(NULL, 16), cudaErrorInvalidValue);
  EXPECT(cudaSetDevice(1), cudaErrorInvalidDevice);
  EXPECT(cudaSetDevice(-1), cudaErrorInvalidDevice);
  OK(cudaSetDevice(0));
  int dev = -1;
  OK(cudaGetDevice(&dev));
  CHECK(dev == 0);
  EXPECT(cudaGetDevice(NULL), cudaErrorInvalidValue);

  void *d = NULL;
  OK(cudaMalloc(&d, 1024));
  char host[1024];
  EXPECT(cudaMemcpy(host, d, sizeof host, (enum cudaMemcpyKind)42), cudaErrorInvalidMemcpyDirection);
  EXPECT(cudaMemGetInfo(NULL, NULL), cudaErrorInvalidValue);
  EXPECT(cudaStreamCreate(NULL), cudaErrorInvalidValue);
  EXPECT(cudaEventCreate(NULL), cudaErrorInvalidValue);
  EXPECT(cudaEventElapsedTime(NULL, NULL, NULL), cudaErrorInvalidValue);
  EXPECT(cudaLaunchHostFunc(0, NULL, NULL), cudaErrorInvalidValue);
  EXPECT(cudaMallocHost(NULL, 64), cudaErrorInvalidValue);
  EXPECT(cudaStreamAddCallback(0, NULL, NULL, 0), cudaErrorInvalidValue);
  EXPECT(cudaMallocManaged(&d, 64, cudaMemAttachGlobal), cudaErrorNotSupported);
  OK(cudaFree(d));
  OK(cudaFree(NULL));

  int v = 0;
  EXPECT(cudaDeviceGetAttribute(&v, (enum cudaDeviceAttr)100000, 0), cudaErrorInvalidValue);
  EXPECT(cudaDeviceGetAttribute(&v, cudaDevAttrWarpSize, 3), cudaErrorInvalidDevice);
  EXPECT(cudaDeviceGetAttribute(NULL, cudaDevAttrWarpSize, 0), cudaErrorInvalidValue);
  OK(cudaDeviceGetAttribute(&v, cudaDevAttrWarpSize, 0));
  CHECK(v == 32);

  /* Properties: the layout of this header version, agreeing with the attributes. */
  struct cudaDeviceProp p;
  memset(&p, 0x7f, sizeof p);
  EXPECT(cudaGetDeviceProperties(NULL, 0), cudaErrorInvalidValue);
  EXPECT(cudaGetDeviceProperties(&p, 1), cudaErrorInvalidDevice);
  OK(cudaGetDeviceProperties(&p, 0));
  CHECK(strlen(p.name) > 0 && strlen(p.name) < sizeof p.name);
  CHECK(p.totalGlobalMem > 0);
  CHECK(p.warpSize == 32);
  OK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0));
  CHECK(v == p.major && p.major >= 5);
  OK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMinor, 0));
  CHECK(v == p.minor);
  OK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0));
  CHECK(v == p.multiProcessorCount && v > 0);
  OK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  CHECK((size_t)v == p.sharedMemPerBlockOptin && v >= 48 * 1024);
  CHECK(p.integrated == 0);
  CHECK(p.reserved[0] == 0); /* the whole struct is written, up to its last field */

  char bus[64];
  OK(cudaDeviceGetPCIBusId(bus, sizeof bus, 0));
  CHECK(strlen(bus) == 12 && bus[4] == ':' && bus[7] == ':' && bus[10] == '.');
  EXPECT(cudaDeviceGetPCIBusId(bus, sizeof bus, 2), cudaErrorInvalidDevice);

  int rv = 0, dv = 0;
  OK(cudaRuntimeGetVersion(&rv));
  CHECK(rv == CUDART_VERSION);
  OK(cudaDriverGetVersion(&dv));
  CHECK(dv >= rv);
  EXPECT(cudaRuntimeGetVersion(NULL), cudaErrorInvalidValue);

  /* Names and messages, exactly as NVIDIA's runtime spells them. */
  CHECK(strcmp(cudaGetErrorName(cudaSuccess), "cudaSuccess") == 0);
  CHECK(strcmp(cudaGetErrorString(cudaSuccess), "no error") == 0);
  CHECK(strcmp(cudaGetErrorName(cudaErrorInvalidValue), "cudaErrorInvalidValue") == 0);
  CHECK(strcmp(cudaGetErrorString(cudaErrorInvalidValue), "invalid argument") == 0);
  CHECK(strcmp(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory") == 0);
  CHECK(strcmp(cudaGetErrorName((cudaError_t)12345), "unrecognized error code") == 0);

  int least = 1, greatest = 1;
  OK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  CHECK(greatest <= least);
  OK(cudaDeviceGetStreamPriorityRange(NULL, NULL));

  size_t lim = 0;
  OK(cudaDeviceGetLimit(&lim, cudaLimitStackSize));
  CHECK(lim > 0);
  OK(cudaDeviceSetLimit(cudaLimitStackSize, 4096));
  OK(cudaDeviceGetLimit(&lim, cudaLimitStackSize));
  CHECK(lim == 4096);
  EXPECT(cudaDeviceGetLimit(&lim, (enum cudaLimit)77), cudaErrorUnsupportedLimit);
  PASS("invalid_args");
}
