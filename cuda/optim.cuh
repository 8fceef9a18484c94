/* optim.cuh — coefficients and optimizer on the device (all F32): f(c) and f'(c), Σx², the Gram
 * matrix, the mixing gradient of the similarity / L2 terms, L1, overlap, weighted overlap, the MoFO threshold
 * (a CUB radix sort of |m|) and AdamW. Scalars come back through per-block partials summed on the host in
 * block order (deterministic). Math as src/engine/optim.c. */
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"
#include "adam_bf16.h"

__device__ __forceinline__ float nonlin_f(int f, float c) {
    switch (f) {
    case NONLIN_TANH: return tanhf(c);
    case NONLIN_SIGMOID: return 1.0f / (1.0f + expf(-c));
    case NONLIN_RELU: return c > 0 ? c : 0.0f;
    default: return c;
    }
}

__device__ __forceinline__ float nonlin_grad_f(int f, float c) {
    switch (f) {
    case NONLIN_TANH: {
        float t = tanhf(c);
        return 1.0f - t * t;
    }
    case NONLIN_SIGMOID: {
        float s = 1.0f / (1.0f + expf(-c));
        return s * (1.0f - s);
    }
    case NONLIN_RELU: return c > 0 ? 1.0f : 0.0f;
    default: return 1.0f;
    }
}

__global__ void k_coef_nonlin(float *fc, const float *c, size_t n, int f) {
    GRID_STRIDE(i, n) fc[i] = nonlin_f(f, c[i]);
}

__global__ void k_coef_nonlin_grad(float *g, const float *c, size_t n, int f) {
    GRID_STRIDE(i, n) g[i] *= nonlin_grad_f(f, c[i]);
}

static void cu_coef_nonlin(BackendCtx *ctx, DevBuf fc, DevBuf c, size_t n, Nonlinearity f) {
    if (n == 0) return;
    LAUNCH(k_coef_nonlin, grid_for(n, 256), 256, 0, ctx->stream)
    ((float *)fc.ptr, (const float *)c.ptr, n, (int)f);
    LAUNCH_CHECK("coef_nonlin");
}

static void cu_coef_nonlin_grad(BackendCtx *ctx, DevBuf g, DevBuf c, size_t n, Nonlinearity f) {
    if (n == 0) return;
    LAUNCH(k_coef_nonlin_grad, grid_for(n, 256), 256, 0, ctx->stream)
    ((float *)g.ptr, (const float *)c.ptr, n, (int)f);
    LAUNCH_CHECK("coef_nonlin_grad");
}

/* partial[block] = Σ a·b over the block's grid-stride share (b NULL: Σ a²) */
__global__ void k_dot(double *partial, const float *a, const float *b, size_t n) {
    double s = 0;
    GRID_STRIDE(i, n) s += (double)a[i] * (b ? b[i] : a[i]);
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

static double dev_dot(BackendCtx *ctx, const float *a, const float *b, size_t n) {
    if (n == 0) return 0;
    int nb = red_blocks(n);
    LAUNCH(k_dot, nb, RED_THREADS, 0, ctx->stream)(ctx->partials, a, b, n);
    LAUNCH_CHECK("dot");
    return sum_partials(ctx, nb);
}

static double cu_sumsq(BackendCtx *ctx, DevBuf x, size_t n) {
    return dev_dot(ctx, (const float *)x.ptr, NULL, n);
}

/* G[i·n + j] = c_i · c_j (the upper triangle computed, mirrored) */
static void cu_coef_gram(BackendCtx *ctx, double *G, DevBuf c, int n_src, int dim) {
    const float *p = (const float *)c.ptr;
    for (int i = 0; i < n_src; i++)
        for (int j = i; j < n_src; j++)
            G[i * n_src + j] = G[j * n_src + i] =
                dev_dot(ctx, p + (size_t)i * dim, p + (size_t)j * dim, (size_t)dim);
}

struct MixArgs {
    double A[DAM_SRC_MAX * DAM_SRC_MAX];
    int n;
};

/* g_i[k] += Σ_j A[i·n + j] · c_j[k] */
__global__ void k_mix_grad(float *g, const float *c, MixArgs m, int dim) {
    GRID_STRIDE(k, (size_t)dim) {
        float cj[DAM_SRC_MAX];
        for (int j = 0; j < m.n; j++) cj[j] = c[(size_t)j * dim + k];
        for (int i = 0; i < m.n; i++) {
            double s = 0;
            for (int j = 0; j < m.n; j++) s += m.A[i * m.n + j] * cj[j];
            g[(size_t)i * dim + k] += (float)s;
        }
    }
}

static void cu_coef_mix_grad(BackendCtx *ctx, DevBuf g, DevBuf c, const double *A, int n_src, int dim) {
    if (n_src > DAM_SRC_MAX) dam_fail("cuda coef_mix_grad: %d sources (at most %d)", n_src, DAM_SRC_MAX);
    if (dim <= 0) return;
    MixArgs m;
    m.n = n_src;
    for (int e = 0; e < n_src * n_src; e++) m.A[e] = A[e];
    LAUNCH(k_mix_grad, grid_for((size_t)dim, 256), 256, 0, ctx->stream)
    ((float *)g.ptr, (const float *)c.ptr, m, dim);
    LAUNCH_CHECK("coef_mix_grad");
}

/* partial = Σ|c|; g += λ·sign(c) */
__global__ void k_l1(double *partial, float *g, const float *c, size_t n, float lambda) {
    double s = 0;
    GRID_STRIDE(i, n) {
        float x = c[i];
        s += fabsf(x);
        g[i] += lambda * (float)((x > 0) - (x < 0));
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

static double cu_coef_l1(BackendCtx *ctx, DevBuf g, DevBuf c, size_t n, double lambda) {
    if (n == 0) return 0;
    int nb = red_blocks(n);
    LAUNCH(k_l1, nb, RED_THREADS, 0, ctx->stream)
    (ctx->partials, (float *)g.ptr, (const float *)c.ptr, n, (float)lambda);
    LAUNCH_CHECK("coef_l1");
    return lambda * sum_partials(ctx, nb);
}

/* partial = Σ_{a<b} min(|c_a|, |c_b|) over the block's columns; the gradient w·share·sign into g */
__global__ void k_overlap(double *partial, float *g, const float *c, int n, int dim, float w) {
    double s = 0;
    GRID_STRIDE(k, (size_t)dim) {
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++) {
                float x = c[(size_t)a * dim + k], y = c[(size_t)b * dim + k], ax = fabsf(x), ay = fabsf(y);
                s += ax < ay ? ax : ay;
                float sx = (float)((x > 0) - (x < 0)), sy = (float)((y > 0) - (y < 0));
                float share_a = ax < ay ? 1.0f : ax > ay ? 0.0f : 0.5f;
                g[(size_t)a * dim + k] += w * share_a * sx;
                g[(size_t)b * dim + k] += w * (1.0f - share_a) * sy;
            }
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

static double cu_coef_overlap(BackendCtx *ctx, DevBuf g, DevBuf c, int n_src, int dim, double w) {
    if (n_src < 2 || dim <= 0) return 0;
    int nb = red_blocks((size_t)dim);
    LAUNCH(k_overlap, nb, RED_THREADS, 0, ctx->stream)
    (ctx->partials, (float *)g.ptr, (const float *)c.ptr, n_src, dim, (float)w);
    LAUNCH_CHECK("coef_overlap");
    return w * sum_partials(ctx, nb);
}

/* partial = Σ_{a<b} min(|c_a|, |c_b|)·wts[pair] over the block's columns; the gradient w·wts·sign into
 * g of the smaller side, of a at a tie (torch.min over the stacked pair, in the reference) */
__global__ void k_weighted_overlap(double *partial, float *g, const float *c, const float *wts, int n,
                                   int dim, float w) {
    double s = 0;
    GRID_STRIDE(k, (size_t)dim) {
        for (int a = 0, p = 0; a < n; a++)
            for (int b = a + 1; b < n; b++, p++) {
                float x = c[(size_t)a * dim + k], y = c[(size_t)b * dim + k], ax = fabsf(x), ay = fabsf(y);
                float wk = wts[(size_t)p * dim + k];
                int to_a = ax <= ay;
                s += (double)(to_a ? ax : ay) * wk;
                float sg = to_a ? (float)((x > 0) - (x < 0)) : (float)((y > 0) - (y < 0));
                g[(size_t)(to_a ? a : b) * dim + k] += w * wk * sg;
            }
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

static double cu_coef_weighted_overlap(BackendCtx *ctx, DevBuf g, DevBuf c, DevBuf wts, int n_src, int dim,
                                       double w) {
    if (n_src < 2 || dim <= 0) return 0;
    int nb = red_blocks((size_t)dim);
    LAUNCH(k_weighted_overlap, nb, RED_THREADS, 0, ctx->stream)
    (ctx->partials, (float *)g.ptr, (const float *)c.ptr, (const float *)wts.ptr, n_src, dim, (float)w);
    LAUNCH_CHECK("coef_weighted_overlap");
    return w * sum_partials(ctx, nb);
}

__global__ void k_abs(float *dst, const float *src, size_t n) { GRID_STRIDE(i, n) dst[i] = fabsf(src[i]); }

/* The ceil(alpha·n)-th largest |m|: |m| sorted descending by CUB's radix sort, one element read back. */
static float cu_mofo_threshold(BackendCtx *ctx, DevBuf m, size_t n, float alpha) {
    if (n == 0) return 0.0f;
    if (n > (size_t)INT_MAX) dam_fail("cuda mofo_threshold: %zu entries in one tensor", n);
    size_t keep = (size_t)ceil(alpha * (double)n);
    if (keep < 1) keep = 1;
    if (keep > n) keep = n;
    size_t temp = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending((void *)NULL, temp, (const float *)NULL,
                                                        (float *)NULL, (int)n, 0, 32, ctx->stream));
    scratch_reserve(ctx, 2 * align256(n * sizeof(float)) + align256(temp));
    float *keys = (float *)scratch_take(ctx, n * sizeof(float)),
          *sorted = (float *)scratch_take(ctx, n * sizeof(float));
    void *tmp = scratch_take(ctx, temp);
    LAUNCH(k_abs, grid_for(n, 256), 256, 0, ctx->stream)(keys, (const float *)m.ptr, n);
    LAUNCH_CHECK("mofo_threshold");
    CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(tmp, temp, keys, sorted, (int)n, 0, 32, ctx->stream));
    float thr;
    CUDA_CHECK(cudaMemcpyAsync(&thr, sorted + keep - 1, sizeof(float), cudaMemcpyDeviceToHost, ctx->stream));
    ctx_sync(ctx);
    return thr;
}

struct AdamArgs {
    float lr, beta1, beta2, eps, wd, thr;
    double bc1, bc2;
    AdamBf16 bf16; /* mode != ADAM_F32: bf16 coefficients, torch's ops each rounded (adam_bf16.h) */
};

/* optim.c's optim_step for one tensor: moments in fp32, the update in double. moments_only: the
 * first half of MoFO with mofo_alpha (the threshold comes from the updated moments); update_only:
 * the second half. */
__global__ void k_adamw(float *c, const float *g, float *m, float *v, size_t n, AdamArgs a, int moments,
                        int update) {
    GRID_STRIDE(j, n) {
        float mj = m[j], vj = v[j];
        if (a.bf16.mode != ADAM_F32) {
            if (moments)
                c[j] = adam_bf16(c[j]), adam_bf16_moments(&a.bf16, g[j], &mj, &vj), m[j] = mj, v[j] = vj;
            if (update && (a.thr < 0 || fabsf(mj) >= a.thr)) c[j] = adam_bf16_update(&a.bf16, c[j], mj, vj);
            continue;
        }
        if (moments) {
            float gj = g[j];
            mj = a.beta1 * mj + (1 - a.beta1) * gj;
            vj = a.beta2 * vj + (1 - a.beta2) * gj * gj;
            m[j] = mj, v[j] = vj;
        }
        if (!update || (a.thr >= 0 && fabsf(mj) < a.thr)) continue; /* MoFO: only the largest momenta move */
        double mh = mj / a.bc1, vh = vj / a.bc2;
        c[j] -= (float)(a.lr * (mh / (sqrt(vh) + a.eps) + a.wd * c[j]));
    }
}

static void cu_adamw(BackendCtx *ctx, DevBuf c, DevBuf g, DevBuf m, DevBuf v, size_t n, const AdamParams *p) {
    if (n == 0) return;
    AdamArgs a = {p->lr,
                  p->beta1,
                  p->beta2,
                  p->eps,
                  p->weight_decay,
                  p->mofo_threshold,
                  1.0 - pow(p->beta1, p->t),
                  1.0 - pow(p->beta2, p->t),
                  p->bf16};
    unsigned grid = grid_for(n, 256);
    if (p->mofo_alpha > 0) { /* moments, the threshold of the updated |m|, then the update */
        LAUNCH(k_adamw, grid, 256, 0, ctx->stream)
        ((float *)c.ptr, (const float *)g.ptr, (float *)m.ptr, (float *)v.ptr, n, a, 1, 0);
        LAUNCH_CHECK("adamw");
        a.thr = cu_mofo_threshold(ctx, m, n, p->mofo_alpha);
        LAUNCH(k_adamw, grid, 256, 0, ctx->stream)
        ((float *)c.ptr, (const float *)g.ptr, (float *)m.ptr, (float *)v.ptr, n, a, 0, 1);
    } else {
        LAUNCH(k_adamw, grid, 256, 0, ctx->stream)
        ((float *)c.ptr, (const float *)g.ptr, (float *)m.ptr, (float *)v.ptr, n, a, 1, 1);
    }
    LAUNCH_CHECK("adamw");
}
