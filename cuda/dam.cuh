/* dam.cuh — the DAM passes over the sources: materialize Σ_i f(c_i)·W_i (one pass over all
 * sources, output in its buffer's dtype, bf16 on the GPU), the coefficient gradient Σ_r W_i ⊙ G as a
 * column reduction (G read once for every source), the embedding gather and its coefficient
 * gradient. Sources on the device are BF16 or F32 (upload_source), rows ld elements apart. */
#pragma once

#include "common.cuh"

enum { DAM_SRC_MAX = 16 }; /* DAM_MAX_SOURCES of model.h */

/* The sources of one call, by value in the kernel's parameters. */
struct SrcSet {
    const void *w[DAM_SRC_MAX];
    size_t ld[DAM_SRC_MAX];
    int dt[DAM_SRC_MAX];
    int n;
    int all_bf16; /* every source BF16 with 8-aligned rows: the 16-byte load path */
};

static SrcSet src_set(const SrcWeight *src, int n_src, size_t cols, size_t rows, const char *op) {
    if (n_src > DAM_SRC_MAX)
        dam_fail("cuda %s: %d sources (at most %d in one launch)", op, n_src, DAM_SRC_MAX);
    SrcSet s;
    memset(&s, 0, sizeof s);
    s.n = n_src;
    s.all_bf16 = cols % 8 == 0;
    for (int i = 0; i < n_src; i++) {
        /* the front allows F16 sources (the CPU reads them); the GPU's are widened by upload_source */
        if (!is_float_dtype(src[i].w.dtype))
            dam_fail("cuda %s: source %d is %s (F32 or BF16 on the GPU)", op, i,
                     dam_dtype_name(src[i].w.dtype));
        size_t ld = src[i].ld ? src[i].ld : cols;
        s.w[i] = src[i].w.ptr;
        s.ld[i] = ld;
        s.dt[i] = dtcode(src[i].w.dtype);
        if (src[i].w.dtype != DAM_BF16 || ld % 8 || ((uintptr_t)src[i].w.ptr & 15)) s.all_bf16 = 0;
    }
    return s;
}

/* merged[r, j] = Σ_i fc[i·fstride + j] · W_i[r, j]  (fstride 0 with fc per source: scalar_coef) */
__global__ void k_materialize(void *merged, int mdt, SrcSet s, const float *fc, size_t rows, size_t cols,
                              int scalar) {
    size_t n = rows * cols;
    GRID_STRIDE(e, n) {
        size_t r = e / cols, j = e - r * cols;
        float acc = 0.0f;
        for (int i = 0; i < s.n; i++) {
            float a = scalar ? fc[i] : fc[(size_t)i * cols + j];
            acc += a * ldf(s.w[i], s.dt[i], r * s.ld[i] + j);
        }
        stf(merged, mdt, e, acc);
    }
}

/* The same with 8 bf16 columns (16 bytes) per thread from every source. */
__global__ void k_materialize_bf16x8(void *merged, int mdt, SrcSet s, const float *fc, size_t rows,
                                     size_t cols, int scalar) {
    size_t c8 = cols / 8, n = rows * c8;
    GRID_STRIDE(e, n) {
        size_t r = e / c8, j = (e - r * c8) * 8;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = 0; i < s.n; i++) {
            uint4 raw = *(const uint4 *)((const __nv_bfloat16 *)s.w[i] + r * s.ld[i] + j);
            const __nv_bfloat16 *h = (const __nv_bfloat16 *)&raw;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float a = scalar ? fc[i] : fc[(size_t)i * cols + j + k];
                acc[k] += a * __bfloat162float(h[k]);
            }
        }
        size_t o = r * cols + j;
        if (mdt == DT_BF16 && ((uintptr_t)merged & 15) == 0) {
            uint4 out;
            __nv_bfloat16 *ho = (__nv_bfloat16 *)&out;
#pragma unroll
            for (int k = 0; k < 8; k++) ho[k] = __float2bfloat16_rn(acc[k]);
            *(uint4 *)((__nv_bfloat16 *)merged + o) = out;
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) stf(merged, mdt, o + k, acc[k]);
        }
    }
}

static void cu_dam_materialize(BackendCtx *ctx, DevBuf merged, const SrcWeight *src, int n_src, DevBuf fc,
                               size_t rows, size_t cols, int scalar_coef) {
    const char *op = "dam_materialize";
    SrcSet s = src_set(src, n_src, cols, rows, op);
    if (rows * cols == 0) return;
    if (s.all_bf16) {
        LAUNCH(k_materialize_bf16x8, grid_for(rows * cols / 8, 256), 256, 0, ctx->stream)
        (merged.ptr, dtcode(merged.dtype), s, (const float *)fc.ptr, rows, cols, scalar_coef);
    } else {
        LAUNCH(k_materialize, grid_for(rows * cols, 256), 256, 0, ctx->stream)
        (merged.ptr, dtcode(merged.dtype), s, (const float *)fc.ptr, rows, cols, scalar_coef);
    }
    LAUNCH_CHECK(op);
}

/* Column reduction: acc[i·cols + j] += Σ_r W_i[row(r), j] · G[r, j], where row(r) = ids[r] when ids
 * is given (a negative id skips the row) else r. Block (x: 256 columns, y: a chunk of rows); each
 * thread sums its column over the chunk for every source (G read once), then one atomicAdd per
 * source. scalar: every column's sum goes into acc[i] (a block sum first). */
enum { CG_THREADS = 256, CG_ROWS = 64 };

__global__ void k_coef_grad(float *acc, SrcSet s, const void *g, int gdt, const int32_t *ids, size_t rows,
                            size_t cols, int scalar) {
    size_t j = (size_t)blockIdx.x * CG_THREADS + threadIdx.x;
    /* chunks blockIdx.y, +gridDim.y, ... (gridDim.y is capped); the count is the same for every thread
     * of the block, as block_sum needs */
    for (size_t r0 = (size_t)blockIdx.y * CG_ROWS; r0 < rows; r0 += (size_t)gridDim.y * CG_ROWS) {
        size_t r1 = r0 + CG_ROWS < rows ? r0 + CG_ROWS : rows;
        float sum[DAM_SRC_MAX];
#pragma unroll
        for (int i = 0; i < DAM_SRC_MAX; i++) sum[i] = 0.0f;
        if (j < cols)
            for (size_t r = r0; r < r1; r++) {
                long long wr = ids ? (long long)ids[r] : (long long)r;
                if (wr < 0) continue;
                float gv = ldf(g, gdt, r * cols + j);
#pragma unroll
                for (int i = 0; i < DAM_SRC_MAX; i++)
                    if (i < s.n) sum[i] += gv * ldf(s.w[i], s.dt[i], (size_t)wr * s.ld[i] + j);
            }
#pragma unroll
        for (int i = 0; i < DAM_SRC_MAX; i++) {
            if (i >= s.n) break;
            if (scalar) {
                float b = block_sum(sum[i]);
                if (threadIdx.x == 0) atomicAdd(&acc[i], b);
            } else if (j < cols) {
                atomicAdd(&acc[(size_t)i * cols + j], sum[i]);
            }
        }
    }
}

/* The bandwidth path: NS bf16 sources and a bf16 G, 8 columns (16 bytes) per thread, NS known at
 * compile time so that the NS x 8 sums stay in registers. Chunks strided as k_coef_grad's. */
template <int NS>
__global__ void k_coef_grad_bf16x8(float *acc, SrcSet s, const __nv_bfloat16 *g, const int32_t *ids,
                                   size_t rows, size_t cols, int scalar) {
    size_t j = ((size_t)blockIdx.x * CG_THREADS + threadIdx.x) * 8;
    for (size_t r0 = (size_t)blockIdx.y * CG_ROWS; r0 < rows; r0 += (size_t)gridDim.y * CG_ROWS) {
        size_t r1 = r0 + CG_ROWS < rows ? r0 + CG_ROWS : rows;
        float sum[NS][8];
#pragma unroll
        for (int i = 0; i < NS; i++)
#pragma unroll
            for (int k = 0; k < 8; k++) sum[i][k] = 0.0f;
        if (j < cols)
            for (size_t r = r0; r < r1; r++) {
                long long wr = ids ? (long long)ids[r] : (long long)r;
                if (wr < 0) continue;
                uint4 graw = *(const uint4 *)(g + r * cols + j);
                const __nv_bfloat16 *gh = (const __nv_bfloat16 *)&graw;
#pragma unroll
                for (int i = 0; i < NS; i++) {
                    uint4 wraw = *(const uint4 *)((const __nv_bfloat16 *)s.w[i] + (size_t)wr * s.ld[i] + j);
                    const __nv_bfloat16 *wh = (const __nv_bfloat16 *)&wraw;
#pragma unroll
                    for (int k = 0; k < 8; k++)
                        sum[i][k] += __bfloat162float(gh[k]) * __bfloat162float(wh[k]);
                }
            }
#pragma unroll
        for (int i = 0; i < NS; i++) {
            if (scalar) {
                float t = 0.0f;
#pragma unroll
                for (int k = 0; k < 8; k++) t += sum[i][k];
                t = block_sum(t);
                if (threadIdx.x == 0) atomicAdd(&acc[i], t);
            } else if (j < cols) {
#pragma unroll
                for (int k = 0; k < 8; k++) atomicAdd(&acc[(size_t)i * cols + j + k], sum[i][k]);
            }
        }
    }
}

static void coef_grad_launch(BackendCtx *ctx, DevBuf acc, SrcSet s, DevBuf g, const int32_t *ids, size_t rows,
                             size_t cols, int scalar) {
    if (rows == 0 || cols == 0) return;
    unsigned by = grid_y_for((rows + CG_ROWS - 1) / CG_ROWS); /* more chunks: the kernels stride */
    int vec = s.all_bf16 && s.n <= 4 && g.dtype == DAM_BF16 && ((uintptr_t)g.ptr & 15) == 0;
    if (vec) {
        dim3 grid((unsigned)((cols / 8 + CG_THREADS - 1) / CG_THREADS), by);
        float *a = (float *)acc.ptr;
        const __nv_bfloat16 *gp = (const __nv_bfloat16 *)g.ptr;
        switch (s.n) {
        case 1:
            LAUNCH(k_coef_grad_bf16x8<1>, grid, CG_THREADS, 0, ctx->stream)
            (a, s, gp, ids, rows, cols, scalar);
            break;
        case 2:
            LAUNCH(k_coef_grad_bf16x8<2>, grid, CG_THREADS, 0, ctx->stream)
            (a, s, gp, ids, rows, cols, scalar);
            break;
        case 3:
            LAUNCH(k_coef_grad_bf16x8<3>, grid, CG_THREADS, 0, ctx->stream)
            (a, s, gp, ids, rows, cols, scalar);
            break;
        default:
            LAUNCH(k_coef_grad_bf16x8<4>, grid, CG_THREADS, 0, ctx->stream)
            (a, s, gp, ids, rows, cols, scalar);
            break;
        }
    } else {
        dim3 grid((unsigned)((cols + CG_THREADS - 1) / CG_THREADS), by);
        LAUNCH(k_coef_grad, grid, CG_THREADS, 0, ctx->stream)
        ((float *)acc.ptr, s, g.ptr, dtcode(g.dtype), ids, rows, cols, scalar);
    }
    LAUNCH_CHECK("coef_grad");
}

static void cu_dam_coef_grad(BackendCtx *ctx, DevBuf acc, const SrcWeight *src, int n_src, DevBuf g,
                             size_t rows, size_t cols, int scalar_coef) {
    const char *op = "dam_coef_grad";
    SrcSet s = src_set(src, n_src, cols, rows, op);
    coef_grad_launch(ctx, acc, s, g, NULL, rows, cols, scalar_coef);
}

/* out[t, j] = Σ_i fc[i, j] · E_i[ids[t], j]; a negative id gives a zero row. */
__global__ void k_embed_gather(void *out, int odt, SrcSet s, const float *fc, const int32_t *ids, int T,
                               int d) {
    size_t n = (size_t)T * d;
    GRID_STRIDE(e, n) {
        size_t t = e / d, j = e - t * d;
        int id = ids[t];
        float acc = 0.0f;
        if (id >= 0)
            for (int i = 0; i < s.n; i++)
                acc += fc[(size_t)i * d + j] * ldf(s.w[i], s.dt[i], (size_t)id * s.ld[i] + j);
        stf(out, odt, e, acc);
    }
}

static void cu_dam_embed_gather(BackendCtx *ctx, DevBuf out, const SrcWeight *src, int n_src, DevBuf fc,
                                const int32_t *ids, int T, int d) {
    const char *op = "dam_embed_gather";
    SrcSet s = src_set(src, n_src, (size_t)d, 0, op);
    if (T <= 0 || d <= 0) return;
    const int32_t *dids = upload_indices(ctx, ids, (size_t)T);
    LAUNCH(k_embed_gather, grid_for((size_t)T * d, 256), 256, 0, ctx->stream)
    (out.ptr, dtcode(out.dtype), s, (const float *)fc.ptr, dids, T, d);
    LAUNCH_CHECK(op);
}

/* acc[ids[t], j] += dh[t, j] (atomic: a token may repeat in the batch). */
__global__ void k_embed_grad(float *acc, const void *dh, int ddt, const int32_t *ids, int T, int d) {
    size_t n = (size_t)T * d;
    GRID_STRIDE(e, n) {
        size_t t = e / d, j = e - t * d;
        int id = ids[t];
        if (id >= 0) atomicAdd(&acc[(size_t)id * d + j], ldf(dh, ddt, e));
    }
}

static void cu_embed_grad(BackendCtx *ctx, DevBuf acc, DevBuf dh, const int32_t *ids, int T, int d) {
    if (T <= 0 || d <= 0) return;
    const int32_t *dids = upload_indices(ctx, ids, (size_t)T);
    LAUNCH(k_embed_grad, grid_for((size_t)T * d, 256), 256, 0, ctx->stream)
    ((float *)acc.ptr, dh.ptr, dtcode(dh.dtype), dids, T, d);
    LAUNCH_CHECK("embed_grad");
}

static void cu_dam_embed_coef_grad(BackendCtx *ctx, DevBuf acc, const SrcWeight *src, int n_src, DevBuf dh,
                                   const int32_t *ids, int T, int d) {
    const char *op = "dam_embed_coef_grad";
    SrcSet s = src_set(src, n_src, (size_t)d, 0, op);
    if (T <= 0 || d <= 0) return;
    const int32_t *dids = upload_indices(ctx, ids, (size_t)T);
    coef_grad_launch(ctx, acc, s, dh, dids, (size_t)T, (size_t)d, 0);
}
