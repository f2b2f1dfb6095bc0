// A stand-in libcuda.so for testing vgpu's cuda executor on machines without a GPU.
//
// It implements the driver calls the executor makes, with the semantics the executor relies on,
// on the CPU: "device" memory is host memory (so copies really move bytes), each stream is a
// thread running its operations in order (copies, memsets, callbacks, event records, waits on
// events and on 32-bit values, launches), events complete when their stream reaches them.
// Legacy default-stream implicit synchronisation is NOT modelled (stream 0 is one more stream).
//
// Kernels: the mock cannot run device code. Every function behaves as
//   kernel(int *out, int value)            -> *out = value            (names not listed below)
//   "fault"                                -> the context fails with 700 (illegal address)
// and cuFuncGetParamInfo reports that layout (offset 0 size 8, offset 8 size 4). Module images must
// start with the fatbin magic 0xBA55ED50 (else CUDA_ERROR_INVALID_IMAGE); an image whose first entry's arch byte (offset 44)
// is 0xEE answers CUDA_ERROR_NO_BINARY_FOR_GPU. Globals: any name but "missing" is a 64-byte
// variable of its module.
//
// Built by tests/cuda_executor.rs with `cc -shared -fPIC -pthread`. Test code only.
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void (*CUstreamCallback)(void *stream, CUresult status, void *user);

enum { OK = 0, INVALID_VALUE = 1, INVALID_IMAGE = 200, NO_BINARY = 209, INVALID_HANDLE = 400, NOT_FOUND = 500,
       NOT_READY = 600, ILLEGAL_ADDRESS = 700, CAPTURE_INVALIDATED = 901 };

static volatile int ctx_error = 0;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

// ---- events ----
typedef struct event {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long recorded, done;
    double time;
    unsigned flags;
} event;

// ---- operations ----
enum { OP_COPY, OP_SET, OP_CALLBACK, OP_RECORD, OP_WAIT_EVENT, OP_WAIT_VALUE, OP_KERNEL, OP_FAULT };
typedef struct op {
    int kind;
    struct op *next;
    void *dst, *src;
    size_t n;
    int byte;
    CUstreamCallback cb;
    void *user;
    event *ev;
    unsigned long gen;
    volatile uint32_t *addr;
    uint32_t value;
    int *out;
    int kvalue;
} op;

static op *op_clone(const op *o) {
    op *c = malloc(sizeof *c);
    *c = *o;
    c->next = NULL;
    return c;
}

// ---- graphs (a captured list of operations) ----
typedef struct graph {
    op *head, *tail;
} graph;

static void graph_push(graph *g, op *o) {
    o->next = NULL;
    if (g->tail) g->tail->next = o; else g->head = o;
    g->tail = o;
}

// ---- streams ----
typedef struct stream {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    op *head, *tail;
    int running, dying;
    graph *capture;  // non-NULL while capturing
    pthread_t thread;
} stream;

static void run_op(stream *s, op *o) {
    switch (o->kind) {
    case OP_COPY: memmove(o->dst, o->src, o->n); break;
    case OP_SET: memset(o->dst, o->byte, o->n); break;
    case OP_CALLBACK: o->cb(s, ctx_error, o->user); break;
    case OP_RECORD:
        pthread_mutex_lock(&o->ev->mu);
        if (o->gen > o->ev->done) { o->ev->done = o->gen; o->ev->time = now_ms(); }
        pthread_cond_broadcast(&o->ev->cv);
        pthread_mutex_unlock(&o->ev->mu);
        break;
    case OP_WAIT_EVENT:
        pthread_mutex_lock(&o->ev->mu);
        while (o->ev->done < o->gen) pthread_cond_wait(&o->ev->cv, &o->ev->mu);
        pthread_mutex_unlock(&o->ev->mu);
        break;
    case OP_WAIT_VALUE:
        while ((int32_t)(__atomic_load_n(o->addr, __ATOMIC_ACQUIRE) - o->value) < 0) usleep(50);
        break;
    case OP_KERNEL:
        if (!ctx_error) *o->out = o->kvalue;
        break;
    case OP_FAULT: ctx_error = ILLEGAL_ADDRESS; break;
    }
}

static void *stream_main(void *arg) {
    stream *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->dying) pthread_cond_wait(&s->cv, &s->mu);
        if (!s->head && s->dying) break;
        op *o = s->head;
        s->head = o->next;
        if (!s->head) s->tail = NULL;
        s->running = 1;
        pthread_mutex_unlock(&s->mu);
        run_op(s, o);
        free(o);
        pthread_mutex_lock(&s->mu);
        s->running = 0;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static stream *all[4096];
static int nall;
static stream *legacy;

static stream *stream_new(void) {
    stream *s = calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_create(&s->thread, NULL, stream_main, s);
    pthread_mutex_lock(&all_mu);
    if (nall < 4096) all[nall++] = s;
    pthread_mutex_unlock(&all_mu);
    return s;
}

static stream *S(void *h) {
    if (h == NULL || h == (void *)1 || h == (void *)2) {
        pthread_mutex_lock(&all_mu);
        if (!legacy) {
            pthread_mutex_unlock(&all_mu);
            stream *l = stream_new();
            pthread_mutex_lock(&all_mu);
            if (!legacy) legacy = l;
        }
        pthread_mutex_unlock(&all_mu);
        return legacy;
    }
    return h;
}

// Queue an operation (or record it into the stream's capture).
static CUresult push(void *h, op o) {
    if (ctx_error) return ctx_error;
    stream *s = S(h);
    op *c = op_clone(&o);
    pthread_mutex_lock(&s->mu);
    if (s->capture) {
        graph_push(s->capture, c);
    } else {
        if (s->tail) s->tail->next = c; else s->head = c;
        s->tail = c;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return OK;
}

static int stream_idle(stream *s) {
    pthread_mutex_lock(&s->mu);
    int idle = !s->head && !s->running;
    pthread_mutex_unlock(&s->mu);
    return idle;
}

// ---- initialisation, device, context ----
CUresult cuInit(unsigned f) { (void)f; return OK; }
CUresult cuDriverGetVersion(int *v) { *v = 12080; return OK; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return OK; }
CUresult cuDeviceGet(int *d, int i) { if (i != 0) return INVALID_VALUE; *d = 0; return OK; }
CUresult cuDeviceGetName(char *name, int len, int dev) { (void)dev; strncpy(name, "vgpu mock GPU (libcuda_mock)", len); return OK; }
CUresult cuDeviceTotalMem_v2(size_t *b, int dev) { (void)dev; *b = 16ull << 30; return OK; }
CUresult cuDeviceGetAttribute(int *v, int a, int dev) {
    (void)dev;
    switch (a) {
    case 1: *v = 1024; break;                 // max threads per block
    case 2: case 3: *v = 1024; break;         // block x, y
    case 4: *v = 64; break;                   // block z
    case 5: *v = 2147483647; break;           // grid x
    case 6: case 7: *v = 65535; break;        // grid y, z
    case 8: *v = 48 << 10; break;             // shared per block
    case 10: *v = 32; break;                  // warp
    case 12: *v = 65536; break;               // regs per block
    case 13: *v = 1980000; break;             // clock kHz
    case 16: *v = 132; break;                 // SMs
    case 33: *v = 0x41; break;                // PCI bus
    case 34: *v = 0; break;
    case 39: *v = 2048; break;
    case 50: *v = 0; break;
    case 75: *v = 9; break;                   // cc 9.0
    case 76: *v = 0; break;
    case 81: *v = 228 << 10; break;
    case 82: *v = 65536; break;
    case 97: *v = 227 << 10; break;
    case 106: *v = 32; break;
    case 111: *v = 1024; break;
    default: *v = 0;
    }
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = (void *)0x5eed; return OK; }
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { (void)dev; return OK; }
CUresult cuDevicePrimaryCtxReset_v2(int dev) { (void)dev; ctx_error = 0; return OK; }
CUresult cuCtxSetCurrent(void *ctx) { (void)ctx; return OK; }
CUresult cuCtxGetStreamPriorityRange(int *least, int *greatest) { *least = 0; *greatest = -5; return OK; }
CUresult cuCtxSynchronize(void) {
    for (;;) {
        int busy = 0;
        pthread_mutex_lock(&all_mu);
        for (int i = 0; i < nall; i++) busy |= !stream_idle(all[i]);
        pthread_mutex_unlock(&all_mu);
        if (!busy) return ctx_error;
        usleep(100);
    }
}
CUresult cuGetErrorName(CUresult r, const char **s) {
    switch (r) {
    case OK: *s = "CUDA_SUCCESS"; return OK;
    case ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; return OK;
    default: *s = "CUDA_ERROR_(mock)"; return OK;
    }
}

// ---- memory ----
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    if (ctx_error) return ctx_error;
    if (n > (8ull << 30)) return 2;  // CUDA_ERROR_OUT_OF_MEMORY
    void *m = NULL;
    if (posix_memalign(&m, 256, n ? n : 1)) return 2;
    memset(m, 0, n);
    *p = (CUdeviceptr)(uintptr_t)m;
    return OK;
}
CUresult cuMemFree_v2(CUdeviceptr p) { free((void *)(uintptr_t)p); return ctx_error; }
CUresult cuMemGetInfo_v2(size_t *f, size_t *t) { *f = 15ull << 30; *t = 16ull << 30; return ctx_error; }
CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned f) { (void)p; (void)n; (void)f; return getenv("MOCK_NO_REGISTER") ? 1 : OK; }
CUresult cuMemHostUnregister(void *p) { (void)p; return OK; }
CUresult cuMemHostAlloc(void **p, size_t n, unsigned f) { (void)f; *p = calloc(1, n); return *p ? OK : 2; }
CUresult cuMemFreeHost(void *p) { free(p); return OK; }
CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *d, void *p, unsigned f) { (void)f; *d = (CUdeviceptr)(uintptr_t)p; return OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *st) {
    return push(st, (op){ .kind = OP_COPY, .dst = (void *)(uintptr_t)d, .src = (void *)s, .n = n });
}
CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, void *st) {
    return push(st, (op){ .kind = OP_COPY, .dst = d, .src = (void *)(uintptr_t)s, .n = n });
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void *st) {
    return push(st, (op){ .kind = OP_COPY, .dst = (void *)(uintptr_t)d, .src = (void *)(uintptr_t)s, .n = n });
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char b, size_t n, void *st) {
    return push(st, (op){ .kind = OP_SET, .dst = (void *)(uintptr_t)d, .byte = b, .n = n });
}

// ---- streams ----
CUresult cuStreamCreateWithPriority(void **s, unsigned flags, int prio) { (void)flags; (void)prio; *s = stream_new(); return OK; }
CUresult cuStreamDestroy_v2(void *h) {
    stream *s = S(h);
    pthread_mutex_lock(&s->mu);
    s->dying = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return OK;
}
CUresult cuStreamQuery(void *h) { return stream_idle(S(h)) ? ctx_error : NOT_READY; }
CUresult cuStreamAddCallback(void *h, CUstreamCallback cb, void *user, unsigned flags) {
    if (flags) return INVALID_VALUE;
    stream *s = S(h);
    if (s->capture) return 900;  // not capturable
    op o = { .kind = OP_CALLBACK, .cb = cb, .user = user };
    op *c = op_clone(&o);
    pthread_mutex_lock(&s->mu);  // callbacks still run after a fault (with the error)
    if (s->tail) s->tail->next = c; else s->head = c;
    s->tail = c;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return OK;
}
CUresult cuStreamWaitValue32_v2(void *h, CUdeviceptr addr, uint32_t value, unsigned flags) {
    if (flags != 0 || getenv("MOCK_NO_WAIT_VALUE")) return 801;  // only GEQ; or "not supported"
    return push(h, (op){ .kind = OP_WAIT_VALUE, .addr = (volatile uint32_t *)(uintptr_t)addr, .value = value });
}

// ---- events ----
CUresult cuEventCreate(void **e, unsigned flags) {
    event *ev = calloc(1, sizeof *ev);
    pthread_mutex_init(&ev->mu, NULL);
    pthread_cond_init(&ev->cv, NULL);
    ev->flags = flags;
    *e = ev;
    return OK;
}
CUresult cuEventDestroy_v2(void *e) { (void)e; return OK; }  // leaked: a queued op may still use it
CUresult cuEventRecord(void *e, void *h) {
    event *ev = e;
    pthread_mutex_lock(&ev->mu);
    unsigned long gen = ++ev->recorded;
    pthread_mutex_unlock(&ev->mu);
    return push(h, (op){ .kind = OP_RECORD, .ev = ev, .gen = gen });
}
CUresult cuEventQuery(void *e) {
    event *ev = e;
    pthread_mutex_lock(&ev->mu);
    int done = ev->done >= ev->recorded;
    pthread_mutex_unlock(&ev->mu);
    return done ? ctx_error : NOT_READY;
}
CUresult cuStreamWaitEvent(void *h, void *e, unsigned flags) {
    (void)flags;
    event *ev = e;
    pthread_mutex_lock(&ev->mu);
    unsigned long gen = ev->recorded;
    pthread_mutex_unlock(&ev->mu);
    if (gen == 0) return ctx_error;
    return push(h, (op){ .kind = OP_WAIT_EVENT, .ev = ev, .gen = gen });
}
CUresult cuEventElapsedTime(float *ms, void *a, void *b) {
    event *s = a, *e = b;
    if ((s->flags | e->flags) & 2) return INVALID_HANDLE;
    if (!s->recorded || !e->recorded) return INVALID_HANDLE;
    if (s->done < s->recorded || e->done < e->recorded) return NOT_READY;
    *ms = (float)(e->time - s->time);
    return OK;
}

// ---- modules and functions ----
typedef struct module { int id; char globals[16][64]; char names[16][64]; int nglobals; } module;
typedef struct func { int fault; } func;

CUresult cuModuleLoadData(void **m, const void *image) {
    const unsigned char *b = image;
    uint32_t magic;
    memcpy(&magic, b, 4);
    if (magic != 0xBA55ED50u) return INVALID_IMAGE;
    if (b[44] == 0xEE) return NO_BINARY;  // the first entry's arch
    *m = calloc(1, sizeof(module));
    return OK;
}
CUresult cuModuleUnload(void *m) { (void)m; return OK; }  // leaked: globals may still be copied
CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
    (void)m;
    if (!strcmp(name, "missing")) return NOT_FOUND;
    func *fn = calloc(1, sizeof *fn);
    fn->fault = !strcmp(name, "fault");
    *f = fn;
    return OK;
}
CUresult cuModuleGetGlobal_v2(CUdeviceptr *p, size_t *bytes, void *mh, const char *name) {
    module *m = mh;
    if (!strcmp(name, "missing")) return NOT_FOUND;
    for (int i = 0; i < m->nglobals; i++)
        if (!strncmp(m->names[i], name, 63)) { *p = (CUdeviceptr)(uintptr_t)m->globals[i]; *bytes = 64; return OK; }
    if (m->nglobals == 16) return NOT_FOUND;
    strncpy(m->names[m->nglobals], name, 63);
    *p = (CUdeviceptr)(uintptr_t)m->globals[m->nglobals++];
    *bytes = 64;
    return OK;
}
CUresult cuFuncGetParamInfo(void *f, size_t i, size_t *off, size_t *size) {
    (void)f;
    if (i == 0) { *off = 0; *size = 8; return OK; }
    if (i == 1) { *off = 8; *size = 4; return OK; }
    return INVALID_VALUE;
}
static int func_attrs[16] = { 1024, 0, 0, 0, 16, 90, 90, 0, 48 << 10, -1 };
CUresult cuFuncGetAttribute(int *v, int a, void *f) { (void)f; if (a < 0 || a > 9) return INVALID_VALUE; *v = func_attrs[a]; return OK; }
CUresult cuFuncSetAttribute(void *f, int a, int v) {
    (void)f;
    if (a == 8) { if (v < 0 || v > (227 << 10)) return INVALID_VALUE; func_attrs[8] = v; }
    if (a == 9) func_attrs[9] = v;
    return OK;
}
static CUresult launch(void *f, void *st, void **params) {
    func *fn = f;
    if (fn->fault) return push(st, (op){ .kind = OP_FAULT });
    if (!params) return INVALID_VALUE;
    int *out;
    memcpy(&out, params[0], 8);
    int value;
    memcpy(&value, params[1], 4);
    return push(st, (op){ .kind = OP_KERNEL, .out = out, .kvalue = value });
}
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared,
                        void *st, void **params, void **extra) {
    (void)gx; (void)gy; (void)gz; (void)shared; (void)extra;
    if ((unsigned long)bx * by * bz > 1024) return INVALID_VALUE;
    return launch(f, st, params);
}
CUresult cuLaunchCooperativeKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                   unsigned shared, void *st, void **params) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, st, params, NULL);
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *n, void *f, int block, size_t shared, unsigned flags) {
    (void)f; (void)shared; (void)flags;
    *n = block > 0 ? 2048 / block : 0;
    return OK;
}

// ---- capture and graphs ----
CUresult cuStreamBeginCapture_v2(void *h, int mode) {
    (void)mode;
    stream *s = S(h);
    if (h == NULL || h == (void *)1) return 900;
    if (s->capture) return INVALID_VALUE;
    s->capture = calloc(1, sizeof(graph));
    return OK;
}
CUresult cuStreamEndCapture(void *h, void **g) {
    stream *s = S(h);
    if (!s->capture) return INVALID_VALUE;
    *g = s->capture;
    s->capture = NULL;
    return OK;
}
CUresult cuGraphInstantiateWithFlags(void **e, void *g, unsigned long long flags) {
    (void)flags;
    graph *src = g, *dst = calloc(1, sizeof *dst);
    for (op *o = src->head; o; o = o->next) graph_push(dst, op_clone(o));
    *e = dst;
    return OK;
}
CUresult cuGraphExecUpdate_v2(void *e, void *g, void *info) { (void)e; (void)g; memset(info, 0, 24); return OK; }
CUresult cuGraphLaunch(void *e, void *h) {
    graph *g = e;
    for (op *o = g->head; o; o = o->next) {
        CUresult r = push(h, *o);
        if (r) return r;
    }
    return OK;
}
CUresult cuGraphDestroy(void *g) { (void)g; return OK; }
CUresult cuGraphExecDestroy(void *e) { (void)e; return OK; }
