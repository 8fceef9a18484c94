/* common.cuh — the CUDA backend's context, error checks, dtype-generic loads and stores, scratch and
 * staging buffers, and the launch helpers every other header of cuda/ uses. Included once, by
 * backend_cuda.cu (one translation unit, llm.c style). */
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <limits.h>
#include <math.h>
#include <time.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backend.h"
}
#include "backend_cuda.h"

/* ---------------------------------------------------------------- launches */

/* LAUNCH(kernel, grid, block, smem, stream)(args...): a kernel launch. With nvcc it is the <<<>>>
 * syntax; the CPU emulation (cuda/emu, `make cuda-emu-test`) defines it as a queued launch that a
 * host compiler can parse. DYNAMIC_SHARED(type, name): the block's dynamic shared memory. */
#ifndef DAM_CUDA_EMU
#define LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

/* ---------------------------------------------------------------- errors */

/* The rank's prefix comes from dam_fail (dam_set_log_rank); the device is named here. */
static int g_cuda_device_for_errors = -1;

static void dam_cuda_fail(const char *call, const char *msg, const char *file, int line) {
    if (g_cuda_device_for_errors < 0)
        dam_fail("%s failed (no CUDA device in use yet): %s (%s:%d)", call, msg, file, line);
    dam_fail("%s failed on CUDA device %d: %s (%s:%d)", call, g_cuda_device_for_errors, msg, file, line);
}

#define CUDA_CHECK(call)                                                                                     \
    do {                                                                                                     \
        cudaError_t dam_cuda_rc_ = (call);                                                                   \
        if (dam_cuda_rc_ != cudaSuccess)                                                                     \
            dam_cuda_fail(#call, cudaGetErrorString(dam_cuda_rc_), __FILE__, __LINE__);                      \
    } while (0)

#define CUBLAS_CHECK(call)                                                                                   \
    do {                                                                                                     \
        cublasStatus_t dam_cublas_rc_ = (call);                                                              \
        if (dam_cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                                         \
            dam_cuda_fail(#call, cublasGetStatusString(dam_cublas_rc_), __FILE__, __LINE__);                 \
    } while (0)

/* After every launch: a bad configuration is reported at the launch, not at the next sync. */
#define LAUNCH_CHECK(what) CUDA_CHECK(cudaGetLastError())

/* ---------------------------------------------------------------- context */

enum {
    STAGE_HALF = 8 << 20
}; /* bytes per pinned staging half (two halves: fill one while the other copies) */
enum { PARTIALS_MAX = 4096 }; /* per-block partial sums of the scalar reductions */

struct BackendEvent {
    cudaEvent_t e;
};

struct BackendCtx {
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *cublas_ws;
    /* Pinned staging for uploads/downloads, two halves guarded by events. */
    unsigned char *stage;
    cudaEvent_t stage_done[2];
    /* Small host index lists (token ids, row lists) go through their own pinned buffer (idx_cap
     * entries, in chunks when a list is longer) into a device list of idx_dev_cap entries. */
    int32_t *idx_host;
    int32_t *idx_dev;
    size_t idx_cap, idx_dev_cap;
    cudaEvent_t idx_done;
    /* Per-call device scratch (bump allocator, reset at each op). */
    unsigned char *scratch;
    size_t scratch_cap, scratch_used;
    /* Per-block partial sums of reductions, and their pinned host copy. */
    double *partials;
    double *partials_host;
    int max_smem_optin;
    int n_sm;
    /* Called while the host waits for the device (the NCCL transport's error and time-out checks,
     * mpi/nccl_comm.c): with any registered, waits poll instead of blocking. */
    struct {
        DamCudaWatch fn;
        void *arg;
    } watch[8];
    int n_watch;
};

/* ---------------------------------------------------------------- waiting for the device */

static double wall_s() {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Wait until query() is no longer cudaErrorNotReady. Without watchers: the blocking call. With them,
 * poll (yielding the first millisecond, then sleeping 20 us) and call each watcher with the seconds
 * waited, so that a dead or stuck NCCL peer ends the run with a line instead of a hang. */
template <typename Q, typename B> static void ctx_wait(BackendCtx *ctx, Q query, B block, const char *what) {
    if (ctx->n_watch == 0) {
        cudaError_t rc = block();
        if (rc != cudaSuccess) dam_cuda_fail(what, cudaGetErrorString(rc), __FILE__, __LINE__);
        return;
    }
    double t0 = wall_s();
    for (;;) {
        cudaError_t rc = query();
        if (rc == cudaSuccess) return;
        if (rc != cudaErrorNotReady) dam_cuda_fail(what, cudaGetErrorString(rc), __FILE__, __LINE__);
        (void)cudaGetLastError(); /* "not ready" is no error of the next launch's */
        double waited = wall_s() - t0;
        for (int i = 0; i < ctx->n_watch; i++) ctx->watch[i].fn(ctx->watch[i].arg, waited);
        struct timespec ts = {0, waited < 1e-3 ? 0 : 20000};
        nanosleep(&ts, NULL);
    }
}

static void ctx_wait_stream(BackendCtx *ctx, cudaStream_t s) {
    ctx_wait(
        ctx, [s]() { return cudaStreamQuery(s); }, [s]() { return cudaStreamSynchronize(s); },
        "cudaStreamSynchronize");
}

static void ctx_wait_event(BackendCtx *ctx, cudaEvent_t e) {
    ctx_wait(
        ctx, [e]() { return cudaEventQuery(e); }, [e]() { return cudaEventSynchronize(e); },
        "cudaEventSynchronize");
}

/* Everything queued on the context's stream so far is done. */
static void ctx_sync(BackendCtx *ctx) { ctx_wait_stream(ctx, ctx->stream); }

/* ---------------------------------------------------------------- dtypes */

static inline int is_float_dtype(dam_dtype t) { return t == DAM_F32 || t == DAM_BF16; }

/* dtype codes passed to kernels (uniform across a launch, so the branch costs nothing) */
enum { DT_F32 = 0, DT_BF16 = 1 };
static inline int dtcode(dam_dtype t) { return t == DAM_BF16 ? DT_BF16 : DT_F32; }

__device__ __forceinline__ float ldf(const void *p, int dt, size_t i) {
    return dt == DT_BF16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
__device__ __forceinline__ void stf(void *p, int dt, size_t i, float v) {
    if (dt == DT_BF16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else
        ((float *)p)[i] = v;
}

/* ---------------------------------------------------------------- launch shapes */

/* CUDA's limit on gridDim.y and gridDim.z. Launches whose y extent comes from a data size (row
 * chunks) cap it here and loop over their chunks with stride gridDim.y; the emulated build
 * (cuda/emu/emu.mk) sets it small so that check_kernels' small inputs take the strided path. */
#ifndef DAM_CUDA_GRID_Y_MAX
#define DAM_CUDA_GRID_Y_MAX 65535
#endif

/* gridDim.y for `chunks` row chunks: all of them, or the cap (the kernel strides over the rest) */
static inline unsigned grid_y_for(size_t chunks) {
    size_t g = chunks < (size_t)DAM_CUDA_GRID_Y_MAX ? chunks : (size_t)DAM_CUDA_GRID_Y_MAX;
    return (unsigned)(g ? g : 1);
}

static inline unsigned grid_for(size_t n, int threads) {
    size_t g = (n + threads - 1) / threads;
    if (g > 65535u * 16u) g = 65535u * 16u; /* grid-stride loops cover the rest */
    return (unsigned)(g ? g : 1);
}

#define GRID_STRIDE(i, n)                                                                                    \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                                  \
         i += (size_t)gridDim.x * blockDim.x)

/* ---------------------------------------------------------------- scratch and staging */

/* Make room for `bytes` of scratch for the op about to run. A growth is stream-ordered (the old
 * scratch freed after the work queued before, the new one allocated for the work after): no wait
 * for the device, which would hold up the pipeline's sends in flight (backend.h). */
static void scratch_reserve(BackendCtx *ctx, size_t bytes) {
    ctx->scratch_used = 0;
    if (bytes <= ctx->scratch_cap) return;
    if (ctx->scratch) CUDA_CHECK(cudaFreeAsync(ctx->scratch, ctx->stream));
    size_t cap = bytes + bytes / 4;
    CUDA_CHECK(cudaMallocAsync((void **)&ctx->scratch, cap, ctx->stream));
    ctx->scratch_cap = cap;
}

/* The next 256-byte aligned piece of the reserved scratch. */
static void *scratch_take(BackendCtx *ctx, size_t bytes) {
    size_t off = (ctx->scratch_used + 255) & ~(size_t)255;
    if (off + bytes > ctx->scratch_cap)
        dam_fail("cuda scratch: %zu bytes asked beyond the %zu reserved (internal error)", bytes,
                 ctx->scratch_cap);
    ctx->scratch_used = off + bytes;
    return ctx->scratch + off;
}

static inline size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

/* A host index list (n int32) onto the device; the pointer stays valid until the next call. The
 * pinned buffer never grows (cudaMallocHost and cudaFreeHost wait for the whole device): a longer
 * list goes through it in chunks; the device list grows stream-ordered. */
static const int32_t *upload_indices(BackendCtx *ctx, const int32_t *host, size_t n) {
    if (n == 0) return ctx->idx_dev;
    if (n > ctx->idx_dev_cap) {
        CUDA_CHECK(cudaFreeAsync(ctx->idx_dev, ctx->stream));
        ctx->idx_dev_cap = n + n / 2;
        CUDA_CHECK(cudaMallocAsync((void **)&ctx->idx_dev, ctx->idx_dev_cap * sizeof(int32_t), ctx->stream));
    }
    for (size_t off = 0; off < n; off += ctx->idx_cap) {
        size_t k = n - off < ctx->idx_cap ? n - off : ctx->idx_cap;
        ctx_wait_event(ctx, ctx->idx_done); /* the previous chunk has left the pinned buffer */
        memcpy(ctx->idx_host, host + off, k * sizeof(int32_t));
        CUDA_CHECK(cudaMemcpyAsync(ctx->idx_dev + off, ctx->idx_host, k * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, ctx->stream));
        CUDA_CHECK(cudaEventRecord(ctx->idx_done, ctx->stream));
    }
    return ctx->idx_dev;
}

/* Sum of the first nblocks per-block partials (downloaded; summed on the host in block order, so
 * the result is deterministic). */
static double sum_partials(BackendCtx *ctx, int nblocks) {
    CUDA_CHECK(cudaMemcpyAsync(ctx->partials_host, ctx->partials, (size_t)nblocks * sizeof(double),
                               cudaMemcpyDeviceToHost, ctx->stream));
    ctx_sync(ctx);
    double s = 0;
    for (int b = 0; b < nblocks; b++) s += ctx->partials_host[b];
    return s;
}

/* ---------------------------------------------------------------- block reductions */

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T> __device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. */
template <typename T> __device__ T block_sum(T v) {
    __shared__ T sh[32];
    __syncthreads(); /* sh may still be read by a previous call */
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    T r = lane < nw ? sh[lane] : (T)0;
    return warp_sum(r);
}

template <typename T> __device__ T block_max(T v) {
    __shared__ T sh[32];
    __syncthreads();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    T r = lane < nw ? sh[lane] : (T)-INFINITY;
    return warp_max(r);
}

/* Scalar reduction kernels write one partial per block. */
enum { RED_THREADS = 256 };
static inline int red_blocks(size_t n) {
    size_t b = (n + RED_THREADS - 1) / RED_THREADS;
    return (int)(b < 1 ? 1 : b > 1024 ? 1024 : b);
}
