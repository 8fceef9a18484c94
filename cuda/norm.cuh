/* norm.cuh — RMSNorm forward and backward, one block per row, fp32 statistics. */
#pragma once

#include "common.cuh"

enum { NORM_THREADS = 256 };

/* out = w ⊙ (x·rstd), rstd = 1/sqrt(mean(x²) + eps) */
__global__ void k_rmsnorm_fwd(void *out, int odt, float *rstd, const void *x, int xdt, const void *w, int wdt,
                              int d, float eps) {
    size_t row = (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = ldf(x, xdt, row + j);
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = rsqrtf(ss / d + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        stf(out, odt, row + j, ldf(w, wdt, j) * (ldf(x, xdt, row + j) * r));
}

/* dx (+)= rstd·(dx̂ − x̂·mean(dx̂ ⊙ x̂)), dx̂ = dout ⊙ w */
__global__ void k_rmsnorm_bwd_dx(void *dx, int dxdt, const void *dout, int gdt, const void *x, int xdt,
                                 const float *rstd, const void *w, int wdt, int d, int accumulate) {
    size_t row = (size_t)blockIdx.x * d;
    float r = rstd[blockIdx.x], dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        dot += ldf(dout, gdt, row + j) * ldf(w, wdt, j) * (ldf(x, xdt, row + j) * r);
    float mean = block_sum(dot) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = r * (ldf(dout, gdt, row + j) * ldf(w, wdt, j) - ldf(x, xdt, row + j) * r * mean);
        if (accumulate) v += ldf(dx, dxdt, row + j);
        stf(dx, dxdt, row + j, v);
    }
}

/* dw[j] += Σ_t dout[t,j]·x[t,j]·rstd[t]: columns per thread, rows in chunks of NORM_DW_ROWS, one
 * atomicAdd per chunk. A block takes chunks blockIdx.y, +gridDim.y, ... (gridDim.y is capped, and
 * T = tokens x heads for per-head norms can pass 65535 chunks); each chunk's sum is the same as with
 * one block per chunk, so results below the cap are unchanged. */
enum { NORM_DW_ROWS = 64 };
__global__ void k_rmsnorm_bwd_dw(float *dw, const void *dout, int gdt, const void *x, int xdt,
                                 const float *rstd, int T, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    for (size_t t0 = (size_t)blockIdx.y * NORM_DW_ROWS; t0 < (size_t)T;
         t0 += (size_t)gridDim.y * NORM_DW_ROWS) {
        size_t t1 = t0 + NORM_DW_ROWS < (size_t)T ? t0 + NORM_DW_ROWS : (size_t)T;
        float s = 0.0f;
        for (size_t t = t0; t < t1; t++) s += ldf(dout, gdt, t * d + j) * (ldf(x, xdt, t * d + j) * rstd[t]);
        atomicAdd(&dw[j], s);
    }
}

static void cu_rmsnorm_fwd(BackendCtx *ctx, DevBuf out, DevBuf rstd, DevBuf x, DevBuf w, int T, int d,
                           float eps) {
    if (T <= 0) return;
    LAUNCH(k_rmsnorm_fwd, T, NORM_THREADS, 0, ctx->stream)
    (out.ptr, dtcode(out.dtype), (float *)rstd.ptr, x.ptr, dtcode(x.dtype), w.ptr, dtcode(w.dtype), d, eps);
    LAUNCH_CHECK("rmsnorm_fwd");
}

static void cu_rmsnorm_bwd(BackendCtx *ctx, DevBuf dx, DevBuf dw, DevBuf dout, DevBuf x, DevBuf rstd,
                           DevBuf w, int T, int d, int accumulate_dx) {
    if (T <= 0) return;
    LAUNCH(k_rmsnorm_bwd_dx, T, NORM_THREADS, 0, ctx->stream)
    (dx.ptr, dtcode(dx.dtype), dout.ptr, dtcode(dout.dtype), x.ptr, dtcode(x.dtype), (const float *)rstd.ptr,
     w.ptr, dtcode(w.dtype), d, accumulate_dx);
    LAUNCH_CHECK("rmsnorm_bwd");
    if (devbuf_null(dw)) return;
    dim3 grid((unsigned)((d + 255) / 256), grid_y_for(((size_t)T + NORM_DW_ROWS - 1) / NORM_DW_ROWS));
    LAUNCH(k_rmsnorm_bwd_dw, grid, 256, 0, ctx->stream)
    ((float *)dw.ptr, dout.ptr, dtcode(dout.dtype), x.ptr, dtcode(x.dtype), (const float *)rstd.ptr, T, d);
    LAUNCH_CHECK("rmsnorm_bwd");
}
