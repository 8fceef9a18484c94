/* elementwise.cuh — fill, dtype-converting copy, residual add, scale, bias, the bias gradient
 * (column sum) and row gather/scatter; every buffer in its own dtype, arithmetic in fp32. */
#pragma once

#include "common.cuh"

__global__ void k_convert(void *dst, int ddt, const void *src, int sdt, size_t n) {
    GRID_STRIDE(i, n) stf(dst, ddt, i, ldf(src, sdt, i));
}

__global__ void k_fill_f(void *dst, int dt, float v, size_t n) { GRID_STRIDE(i, n) stf(dst, dt, i, v); }

__global__ void k_fill_i32(int32_t *dst, int32_t v, size_t n) { GRID_STRIDE(i, n) dst[i] = v; }

__global__ void k_add(void *y, int ydt, const void *x, int xdt, size_t n) {
    GRID_STRIDE(i, n) stf(y, ydt, i, ldf(y, ydt, i) + ldf(x, xdt, i));
}

__global__ void k_scale(void *y, int ydt, float s, size_t n) {
    GRID_STRIDE(i, n) stf(y, ydt, i, ldf(y, ydt, i) * s);
}

__global__ void k_add_bias(void *y, int ydt, const void *b, int bdt, int T, int out) {
    size_t n = (size_t)T * out;
    GRID_STRIDE(i, n) stf(y, ydt, i, ldf(y, ydt, i) + ldf(b, bdt, i % out));
}

/* out[o] = Σ_t dy[t, o]: one thread per column, rows in chunks, one atomicAdd per chunk; a block
 * takes chunks blockIdx.y, +gridDim.y, ... (gridDim.y is capped), each summed as before */
enum { COLSUM_ROWS = 64 };
__global__ void k_colsum(float *out, const void *dy, int dt, int T, int cols) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= cols) return;
    for (size_t t0 = (size_t)blockIdx.y * COLSUM_ROWS; t0 < (size_t)T;
         t0 += (size_t)gridDim.y * COLSUM_ROWS) {
        size_t t1 = t0 + COLSUM_ROWS < (size_t)T ? t0 + COLSUM_ROWS : (size_t)T;
        float s = 0.0f;
        for (size_t t = t0; t < t1; t++) s += ldf(dy, dt, t * cols + o);
        atomicAdd(&out[o], s);
    }
}

/* dst[dr(r), :] = src[sr(r), :] with either index list given (the other the identity) */
__global__ void k_move_rows(void *dst, int ddt, const void *src, int sdt, const int32_t *drow,
                            const int32_t *srow, int n, int d) {
    size_t total = (size_t)n * d;
    GRID_STRIDE(e, total) {
        size_t r = e / d, j = e - r * d;
        size_t di = drow ? (size_t)drow[r] : r, si = srow ? (size_t)srow[r] : r;
        stf(dst, ddt, di * d + j, ldf(src, sdt, si * d + j));
    }
}

static void cu_fill(BackendCtx *ctx, DevBuf dst, float value, size_t n) {
    if (n == 0) return;
    if (value == 0.0f && !signbit(value)) {
        CUDA_CHECK(cudaMemsetAsync(dst.ptr, 0, n * dam_dtype_size(dst.dtype), ctx->stream));
        return;
    }
    if (dst.dtype == DAM_I32)
        LAUNCH(k_fill_i32, grid_for(n, 256), 256, 0, ctx->stream)((int32_t *)dst.ptr, (int32_t)value, n);
    else {
        LAUNCH(k_fill_f, grid_for(n, 256), 256, 0, ctx->stream)(dst.ptr, dtcode(dst.dtype), value, n);
    }
    LAUNCH_CHECK("fill");
}

static int overlap(const void *a, size_t abytes, const void *b, size_t bbytes) {
    return (const char *)a < (const char *)b + bbytes && (const char *)b < (const char *)a + abytes;
}

/* Same dtype: memmove's semantics, as the contract says (backend.h); cudaMemcpyAsync leaves
 * overlapping ranges undefined, so those go through scratch. A conversion's ranges may not overlap. */
static void cu_copy(BackendCtx *ctx, DevBuf dst, DevBuf src, size_t n) {
    if (n == 0) return;
    size_t db = n * dam_dtype_size(dst.dtype), sb = n * dam_dtype_size(src.dtype);
    if (dst.dtype == src.dtype) {
        if (dst.ptr == src.ptr) return;
        const void *from = src.ptr;
        if (overlap(dst.ptr, db, src.ptr, sb)) {
            scratch_reserve(ctx, db);
            void *t = scratch_take(ctx, db);
            CUDA_CHECK(cudaMemcpyAsync(t, src.ptr, db, cudaMemcpyDeviceToDevice, ctx->stream));
            from = t;
        }
        CUDA_CHECK(cudaMemcpyAsync(dst.ptr, from, db, cudaMemcpyDeviceToDevice, ctx->stream));
        return;
    }
    /* (the front refused a conversion between overlapping ranges) */
    LAUNCH(k_convert, grid_for(n, 256), 256, 0, ctx->stream)
    (dst.ptr, dtcode(dst.dtype), src.ptr, dtcode(src.dtype), n);
    LAUNCH_CHECK("copy");
}

static void cu_add(BackendCtx *ctx, DevBuf y, DevBuf x, size_t n) {
    if (n == 0) return;
    LAUNCH(k_add, grid_for(n, 256), 256, 0, ctx->stream)(y.ptr, dtcode(y.dtype), x.ptr, dtcode(x.dtype), n);
    LAUNCH_CHECK("add");
}

static void cu_scale(BackendCtx *ctx, DevBuf y, float s, size_t n) {
    if (n == 0) return;
    LAUNCH(k_scale, grid_for(n, 256), 256, 0, ctx->stream)(y.ptr, dtcode(y.dtype), s, n);
    LAUNCH_CHECK("scale");
}

static void cu_add_bias(BackendCtx *ctx, DevBuf y, DevBuf b, int T, int out) {
    if ((size_t)T * out == 0) return;
    LAUNCH(k_add_bias, grid_for((size_t)T * out, 256), 256, 0, ctx->stream)
    (y.ptr, dtcode(y.dtype), b.ptr, dtcode(b.dtype), T, out);
    LAUNCH_CHECK("add_bias");
}

/* out = Σ_t dy[t, :] (out overwritten, as the CPU backend's bias gradient) */
static void cu_colsum(BackendCtx *ctx, DevBuf out, DevBuf dy, int T, int cols) {
    if (cols <= 0) return;
    CUDA_CHECK(cudaMemsetAsync(out.ptr, 0, (size_t)cols * sizeof(float), ctx->stream));
    if (T <= 0) return;
    dim3 grid((unsigned)((cols + 255) / 256), grid_y_for(((size_t)T + COLSUM_ROWS - 1) / COLSUM_ROWS));
    LAUNCH(k_colsum, grid, 256, 0, ctx->stream)((float *)out.ptr, dy.ptr, dtcode(dy.dtype), T, cols);
    LAUNCH_CHECK("colsum");
}

static void cu_gather_rows(BackendCtx *ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d) {
    if (n <= 0 || d <= 0) return;
    const int32_t *ir = upload_indices(ctx, rows, (size_t)n);
    LAUNCH(k_move_rows, grid_for((size_t)n * d, 256), 256, 0, ctx->stream)
    (dst.ptr, dtcode(dst.dtype), src.ptr, dtcode(src.dtype), NULL, ir, n, d);
    LAUNCH_CHECK("gather_rows");
}

static void cu_scatter_rows(BackendCtx *ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d) {
    if (n <= 0 || d <= 0) return;
    const int32_t *ir = upload_indices(ctx, rows, (size_t)n);
    LAUNCH(k_move_rows, grid_for((size_t)n * d, 256), 256, 0, ctx->stream)
    (dst.ptr, dtcode(dst.dtype), src.ptr, dtcode(src.dtype), ir, NULL, n, d);
    LAUNCH_CHECK("scatter_rows");
}
