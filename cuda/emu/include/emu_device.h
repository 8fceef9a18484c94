/* emu_device.h — the device side of the CUDA emulation (C++; included by cuda_runtime.h).
 *
 * A kernel launch is queued on its stream and runs when the host synchronises (emu.cc). A block's
 * threads are fibers on one host thread: each runs until it reaches __syncthreads, a warp operation
 * or its end, then the next one runs; the order of the threads in a block and of the blocks in a
 * grid is forward, reversed or shuffled (DAM_EMU_ORDER), so that code which depends on an order CUDA
 * does not promise (a missing barrier, a race on shared memory) gives other results. Static
 * __shared__ variables are function statics (one block runs at a time); dynamic shared memory is a
 * buffer of exactly the launch's size, filled with NaN bytes at every block. */
#ifndef DAM_CUDA_EMU_DEVICE_H
#define DAM_CUDA_EMU_DEVICE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

#ifndef __CUDACC__
#define __CUDACC__ 1 /* the kernels' headers pick their device paths (adam_bf16.h) */
#endif
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};

/* ---------------------------------------------------------------- bfloat16 */

struct __nv_bfloat16 {
    uint16_t bits;
};

static inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        h.bits = (uint16_t)((u >> 16) | 0x40); /* NaN stays a (quiet) NaN */
    else
        h.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    return h;
}

/* ---------------------------------------------------------------- the running thread */

namespace emu {
struct ThreadState; /* emu.cc */
extern thread_local uint3 cur_thread_idx, cur_block_idx;
extern thread_local dim3 cur_block_dim, cur_grid_dim;
void sync_block();
/* A warp operation of the calling lane: waits for every lane of mask, returns what lane src put
 * in (kind 0: shuffle of 8 bytes; 1: ballot, the OR of the lanes' bits of pred). */
uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane, int kind);
void note_float_atomic();
void *dynamic_smem();
} // namespace emu

#define threadIdx (::emu::cur_thread_idx)
#define blockIdx (::emu::cur_block_idx)
#define blockDim (::emu::cur_block_dim)
#define gridDim (::emu::cur_grid_dim)
#define warpSize 32

static inline void __syncthreads() { emu::sync_block(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::warp_exchange(mask, 0, (int)(threadIdx.x & 31), 0);
}

template <typename T> static inline T emu_shfl_from(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "a shuffled value is at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = emu::warp_exchange(mask, bits, src, 0);
    T r;
    memcpy(&r, &bits, sizeof r);
    return r;
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    int lane = (int)(threadIdx.x & 31);
    return emu_shfl_from(mask, v, (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1)));
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    int lane = (int)(threadIdx.x & 31);
    return emu_shfl_from(mask, v, (lane & ~(width - 1)) | (src & (width - 1)));
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    int lane = (int)(threadIdx.x & 31), in_seg = lane & (width - 1);
    return emu_shfl_from(mask, v, in_seg + (int)d < width ? lane + (int)d : lane);
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)emu::warp_exchange(mask, pred ? 1 : 0, 0, 1);
}

/* One host thread runs every fiber, so an atomic is a plain read-modify-write; the order of the
 * float additions follows the thread and block order (what the order checks vary). */
static inline float atomicAdd(float *p, float v) {
    emu::note_float_atomic();
    float old = *p;
    *p = old + v;
    return old;
}
static inline double atomicAdd(double *p, double v) {
    emu::note_float_atomic();
    double old = *p;
    *p = old + v;
    return old;
}
static inline int atomicAdd(int *p, int v) {
    int old = *p;
    *p = old + v;
    return old;
}
static inline unsigned atomicAdd(unsigned *p, unsigned v) {
    unsigned old = *p;
    *p = old + v;
    return old;
}
static inline int atomicMax(int *p, int v) {
    int old = *p;
    if (v > old) *p = v;
    return old;
}

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __fdividef(float a, float b) { return a / b; }

/* ---------------------------------------------------------------- launches */

namespace emu {
typedef void (*BlockBody)(void *closure);
/* Queue a kernel on stream s (cudaGetLastError reports a bad configuration). body(closure) runs
 * the kernel for the current thread; destroy(closure) frees it after the launch has run. */
void launch_kernel(const char *name, const void *func, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                   BlockBody body, void *closure, void (*destroy)(void *));

template <typename... P> struct Launcher {
    const char *name;
    void (*kernel)(P...);
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    /* The arguments converted to the kernel's parameter types at the call, as a launch copies them. */
    void operator()(P... args) const {
        typedef std::tuple<void (*)(P...), std::decay_t<P>...> Closure;
        Closure *c = new Closure(kernel, args...);
        launch_kernel(
            name, (const void *)kernel, grid, block, smem, stream,
            [](void *p) {
                Closure *cl = (Closure *)p;
                std::apply([](auto k, auto... a) { k(a...); }, *cl);
            },
            c, [](void *p) { delete (Closure *)p; });
    }
};
template <typename... P>
Launcher<P...> make_launcher(const char *name, void (*k)(P...), dim3 g, dim3 b, size_t smem, cudaStream_t s) {
    return Launcher<P...>{name, k, g, b, smem, s};
}
} // namespace emu

#define LAUNCH(kernel, grid, block, smem, stream)                                                            \
    ::emu::make_launcher(#kernel, kernel, dim3(grid), dim3(block), (size_t)(smem), (stream))
#define DYNAMIC_SHARED(type, name) type *name = (type *)::emu::dynamic_smem()

template <typename F> static inline cudaError_t cudaFuncSetAttribute(F *f, cudaFuncAttribute a, int v) {
    return cudaFuncSetAttribute((const void *)f, a, v);
}

#endif
