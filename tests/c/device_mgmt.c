/* Device management and pointer queries: cudaSetDeviceFlags / cudaGetDeviceFlags (validated as
 * CUDA does), cudaPointerGetAttributes for device, pinned, registered and unregistered memory
 * (CUDA 11+ answers cudaMemoryTypeUnregistered for plain host memory), and cudaDeviceReset
 * (everything of the process is freed; old pointers and handles are rejected, not crashed on;
 * the device works again afterwards, per-thread stream included). */
#include <stdint.h>
#include "check.h"

static struct cudaPointerAttributes attrs(const void *p) {
  struct cudaPointerAttributes a;
  memset(&a, 0xa5, sizeof a); /* every field must be written (CUDA 13: reserved zeroed) */
  OK(cudaPointerGetAttributes(&a, p));
#if CUDART_VERSION >= 13000
  for (int i = 0; i < 8; i++) CHECK(a.reserved[i] == 0);
#endif
  return a;
}

int main(void) {
  /* Flags before the first device call, as programs set them. */
  unsigned int flags = 12345;
  OK(cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync | cudaDeviceMapHost));
  OK(cudaGetDeviceFlags(&flags));
  CHECK(flags == (cudaDeviceScheduleBlockingSync | cudaDeviceMapHost));
  EXPECT(cudaSetDeviceFlags(3), cudaErrorInvalidValue); /* spin | yield */
  EXPECT(cudaSetDeviceFlags(cudaDeviceScheduleSpin | cudaDeviceScheduleBlockingSync), cudaErrorInvalidValue);
  EXPECT(cudaSetDeviceFlags(0x100), cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  OK(cudaGetDeviceFlags(&flags));
  CHECK(flags == (cudaDeviceScheduleBlockingSync | cudaDeviceMapHost)); /* unchanged by failures */
  OK(cudaSetDeviceFlags(cudaDeviceScheduleSpin | cudaDeviceLmemResizeToMax));
  OK(cudaGetDeviceFlags(&flags));
  CHECK(flags == (cudaDeviceScheduleSpin | cudaDeviceLmemResizeToMax));
  EXPECT(cudaGetDeviceFlags(NULL), cudaErrorInvalidValue);
  OK(cudaSetDeviceFlags(cudaDeviceScheduleAuto));

  /* Pointer attributes. */
  unsigned char *d = NULL, *pinned = NULL;
  OK(cudaMalloc((void **)&d, 1 << 20));
  struct cudaPointerAttributes a = attrs(d);
  CHECK(a.type == cudaMemoryTypeDevice && a.device == 0 && a.devicePointer == d && a.hostPointer == NULL);
  a = attrs(d + 12345); /* inside the allocation */
  CHECK(a.type == cudaMemoryTypeDevice && a.devicePointer == d + 12345);
  a = attrs(d + (1 << 20)); /* one past the end: not device memory */
  CHECK(a.type == cudaMemoryTypeUnregistered);
  OK(cudaMallocHost((void **)&pinned, 4096));
  a = attrs(pinned + 100);
  CHECK(a.type == cudaMemoryTypeHost && a.device == 0 && a.hostPointer == pinned + 100);
  unsigned char *plain = malloc(8192);
  int on_stack = 0;
  a = attrs(plain);
  CHECK(a.type == cudaMemoryTypeUnregistered && a.device == -2 && a.devicePointer == NULL);
  a = attrs(&on_stack);
  CHECK(a.type == cudaMemoryTypeUnregistered);
  OK(cudaHostRegister(plain, 8192, cudaHostRegisterDefault));
  a = attrs(plain + 8000);
  CHECK(a.type == cudaMemoryTypeHost && a.device == 0 && a.hostPointer == plain + 8000);
  OK(cudaHostUnregister(plain));
  a = attrs(plain);
  CHECK(a.type == cudaMemoryTypeUnregistered);
  EXPECT(cudaPointerGetAttributes(NULL, d), cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);

  /* cudaDeviceReset: all of it goes away. */
  size_t free0 = 0, total = 0, free1 = 0;
  OK(cudaMemGetInfo(&free0, &total));
  CHECK(free0 < total);
  cudaStream_t s;
  cudaEvent_t e;
  OK(cudaStreamCreate(&s));
  OK(cudaEventCreate(&e));
  OK(cudaMemsetAsync(d, 7, 1 << 20, s));
  OK(cudaEventRecord(e, s));
  OK(cudaMemsetAsync(d, 9, 4096, cudaStreamPerThread));
  OK(cudaHostRegister(plain, 8192, cudaHostRegisterDefault));
  OK(cudaDeviceReset());
  OK(cudaMemGetInfo(&free1, &total));
  CHECK(free1 == total);
  a = attrs(d);
  CHECK(a.type == cudaMemoryTypeUnregistered); /* no allocation there any more */
  a = attrs(pinned);
  CHECK(a.type == cudaMemoryTypeUnregistered);
  a = attrs(plain);
  CHECK(a.type == cudaMemoryTypeUnregistered); /* registrations are gone too */
  EXPECT(cudaMemset(d, 0, 16), cudaErrorInvalidValue);
  EXPECT(cudaMemcpy(plain, d, 16, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT(cudaFree(d), cudaErrorInvalidValue);
  EXPECT(cudaFreeHost(pinned), cudaErrorInvalidValue);
  EXPECT(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);
  EXPECT(cudaEventQuery(e), cudaErrorInvalidResourceHandle);
  EXPECT(cudaHostUnregister(plain), cudaErrorHostMemoryNotRegistered);
  (void)cudaGetLastError();

  /* The device works again, the per-thread stream too. */
  OK(cudaMalloc((void **)&d, 4096));
  OK(cudaMemsetAsync(d, 0x5a, 4096, cudaStreamPerThread));
  OK(cudaStreamSynchronize(cudaStreamPerThread));
  OK(cudaMemcpy(plain, d, 4096, cudaMemcpyDeviceToHost));
  CHECK(plain[0] == 0x5a && plain[4095] == 0x5a);
  OK(cudaStreamCreate(&s));
  OK(cudaStreamQuery(s));
  OK(cudaStreamDestroy(s));
  OK(cudaMallocHost((void **)&pinned, 4096));
  OK(cudaFreeHost(pinned));
  OK(cudaFree(d));
  OK(cudaDeviceReset()); /* twice in a row is fine */
  CHECK(cudaGetLastError() == cudaSuccess);
  free(plain);
  PASS("device_mgmt");
}
