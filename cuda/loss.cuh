/* loss.cuh — the fused logits losses of src/engine/loss.c on the device, fp32 logits, statistics in double:
 * full-vocabulary KL(p_teacher ‖ q_merged) with temperature, MSE, entropy, the top-K KL, and dz.
 * One block per row loops over the row's vocabulary share in chunks of its threads.
 *
 * The row statistics are computed in the same stages as loss.c (maxima; sums of exponentials;
 * partial KL / entropy / MSE sums) so that a vocabulary-parallel group combines each stage through
 * p->reduce: the stage's [C] doubles are downloaded, reduced by the host callbacks, and uploaded
 * back. Without a reducer they stay on the device. The loss sums are finished on the host in row
 * order, as loss.c does. */
#pragma once

#include "common.cuh"

enum { LOSS_THREADS = 256 };

/* mx[r] = max_v z·s, mx[C + r] = max_v zt·s (0 without the teacher) */
__global__ void k_loss_max(double *mx, const float *z, const float *zt, int C, int V, double s) {
    int r = blockIdx.x;
    const float *zr = z + (size_t)r * V, *tr = zt ? zt + (size_t)r * V : NULL;
    float a = -INFINITY, b = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        a = fmaxf(a, zr[v]);
        if (tr) b = fmaxf(b, tr[v]);
    }
    a = block_max(a);
    b = block_max(b);
    if (threadIdx.x == 0) mx[r] = a * s, mx[C + r] = tr ? b * s : 0.0;
}

/* se[r] = Σ e^(z·s − mx[r]), se[C + r] the same for zt */
__global__ void k_loss_sumexp(double *se, const double *mx, const float *z, const float *zt, int C, int V,
                              double s) {
    int r = blockIdx.x;
    const float *zr = z + (size_t)r * V, *tr = zt ? zt + (size_t)r * V : NULL;
    double a = 0, b = 0, ma = mx[r], mb = mx[C + r];
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        a += expf((float)(zr[v] * s - ma));
        if (tr) b += expf((float)(tr[v] * s - mb));
    }
    a = block_sum(a);
    b = block_sum(b);
    if (threadIdx.x == 0) se[r] = a, se[C + r] = b;
}

/* lse in place of the maxima: mx[r] += log se[r] (the teacher's only when present) */
__global__ void k_loss_lse(double *mx, const double *se, int C, int need_t) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= C) return;
    mx[r] += log(se[r]);
    mx[C + r] = need_t ? mx[C + r] + log(se[C + r]) : 0.0;
}

/* part[r] = Σ pt·(b − a), part[C + r] = Σ q·(z·s), part[2C + r] = Σ (z − zt)², each only when on */
__global__ void k_loss_partials(double *part, const double *lse, const float *z, const float *zt, int C,
                                int V, double s, int kl, int ent, int mse) {
    int r = blockIdx.x;
    const float *zr = z + (size_t)r * V, *tr = zt ? zt + (size_t)r * V : NULL;
    double la = lse[r], lb = lse[C + r], k_ = 0, q_ = 0, d_ = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        double zs = zr[v] * s;
        if (ent) q_ += expf((float)(zs - la)) * zs;
        if (kl) {
            double a = zs - la, b = tr[v] * s - lb;
            k_ += expf((float)b) * (b - a);
        }
        if (mse) {
            double d = (double)zr[v] - tr[v];
            d_ += d * d;
        }
    }
    k_ = block_sum(k_);
    q_ = block_sum(q_);
    d_ = block_sum(d_);
    if (threadIdx.x == 0) part[r] = k_, part[C + r] = q_, part[2 * C + r] = d_;
}

struct LossGradArgs {
    double s, c_kl, c_mse, c_ent; /* each term's factor (0 when off), dz_scale and inv_n folded in */
};

/* dz += c_kl·(q − pt) + c_mse·(z − zt) + c_ent·q·(a − ā) */
__global__ void k_loss_grad(float *dz, const double *lse, const double *part, const float *z, const float *zt,
                            int C, int V, LossGradArgs g) {
    int r = blockIdx.x;
    const float *zr = z + (size_t)r * V, *tr = zt ? zt + (size_t)r * V : NULL;
    float *dr = dz + (size_t)r * V;
    double la = lse[r], lb = lse[C + r], abar = part[C + r];
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        double zs = zr[v] * g.s, acc = 0;
        if (g.c_kl != 0)
            acc += g.c_kl * ((double)expf((float)(zs - la)) - (double)expf((float)(tr[v] * g.s - lb)));
        if (g.c_mse != 0) acc += g.c_mse * ((double)zr[v] - tr[v]);
        if (g.c_ent != 0) acc += g.c_ent * expf((float)(zs - la)) * (zs - abar);
        dr[v] += (float)acc;
    }
}

/* n doubles of a device array through a host reduction callback (vocabulary-parallel groups). */
static void stat_reduce(BackendCtx *ctx, double *dev, int n, const LossReduce *red, int is_max) {
    double *h = (double *)dam_malloc((size_t)n * sizeof(double), "loss row statistics");
    CUDA_CHECK(cudaMemcpyAsync(h, dev, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost, ctx->stream));
    ctx_sync(ctx);
    if (is_max)
        red->max(red->ctx, h, n);
    else
        red->sum(red->ctx, h, n);
    CUDA_CHECK(cudaMemcpyAsync(dev, h, (size_t)n * sizeof(double), cudaMemcpyHostToDevice, ctx->stream));
    ctx_sync(ctx); /* h is pageable and freed next */
    free(h);
}

static double *download_doubles(BackendCtx *ctx, const double *dev, size_t n) {
    double *h = (double *)dam_malloc(n * sizeof(double), "loss row statistics");
    CUDA_CHECK(cudaMemcpyAsync(h, dev, n * sizeof(double), cudaMemcpyDeviceToHost, ctx->stream));
    ctx_sync(ctx);
    return h;
}

/* Full-vocabulary terms (loss.c: full_vocab_rows). */
static void loss_full_vocab(BackendCtx *ctx, float *dz, LossSums *sums, const float *z, const float *zt,
                            int C, int V, const LossChunkParams *p, const LossReduce *red, float dz_scale) {
    double s = 1.0 / p->tau, tau2 = (double)p->tau * p->tau;
    int need_t = p->kl || p->mse > 0;
    const float *t = need_t ? zt : NULL;
    scratch_reserve(ctx, 3 * align256((size_t)3 * C * sizeof(double)));
    double *mx = (double *)scratch_take(ctx, (size_t)2 * C * sizeof(double));
    double *se = (double *)scratch_take(ctx, (size_t)2 * C * sizeof(double));
    double *part = (double *)scratch_take(ctx, (size_t)3 * C * sizeof(double));
    LAUNCH(k_loss_max, C, LOSS_THREADS, 0, ctx->stream)(mx, z, t, C, V, s);
    LAUNCH_CHECK("loss max");
    if (red) stat_reduce(ctx, mx, 2 * C, red, 1);
    LAUNCH(k_loss_sumexp, C, LOSS_THREADS, 0, ctx->stream)(se, mx, z, t, C, V, s);
    LAUNCH_CHECK("loss sumexp");
    if (red) stat_reduce(ctx, se, 2 * C, red, 0);
    LAUNCH(k_loss_lse, (C + 255) / 256, 256, 0, ctx->stream)(mx, se, C, need_t);
    LAUNCH_CHECK("loss lse");
    LAUNCH(k_loss_partials, C, LOSS_THREADS, 0, ctx->stream)
    (part, mx, z, t, C, V, s, p->kl, p->entropy > 0, p->mse > 0);
    LAUNCH_CHECK("loss partials");
    if (red) stat_reduce(ctx, part, 3 * C, red, 0);
    LossGradArgs g = {s, p->kl ? (double)p->tau * loss_kl_inv_n(p) * dz_scale : 0.0,
                      p->mse > 0 ? 2.0 * p->mse / p->V_full * p->inv_n * dz_scale : 0.0,
                      p->entropy > 0 ? -(double)p->entropy * p->tau * p->inv_n * dz_scale : 0.0};
    LAUNCH(k_loss_grad, C, LOSS_THREADS, 0, ctx->stream)(dz, mx, part, z, t, C, V, g);
    LAUNCH_CHECK("loss grad");
    double *hl = download_doubles(ctx, mx, (size_t)C), *hp = download_doubles(ctx, part, (size_t)3 * C);
    for (int r = 0; r < C; r++) {
        double H = hl[r] - hp[C + r];
        if (p->kl) sums->kl += tau2 * hp[r] * loss_kl_inv_n(p);
        if (p->mse > 0) sums->mse += p->mse * hp[2 * C + r] / p->V_full * p->inv_n;
        if (p->entropy > 0) sums->entropy += p->entropy * tau2 * H * p->inv_n;
    }
    free(hl), free(hp);
}

/* zk[r, k] = z[r, idx[r, k] − offset] where this rank holds that id, else 0 */
__global__ void k_topk_gather(double *zk, const float *z, const int32_t *idx, int C, int V, int K,
                              int offset) {
    size_t n = (size_t)C * K;
    GRID_STRIDE(e, n) {
        size_t r = e / K;
        int v = idx[e] - offset;
        zk[e] = v >= 0 && v < V ? (double)z[r * V + v] : 0.0;
    }
}

/* One thread per row: both distributions renormalised over the K ids (loss.c: topk_rows). */
__global__ void k_topk_rows(float *dz, double *kl, const double *zk, const int32_t *idx, const float *val,
                            int C, int V, int K, int offset, double s, double c_dz) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= C) return;
    const double *a_ = zk + (size_t)r * K;
    const float *b_ = val + (size_t)r * K;
    double mz = -INFINITY, mt = -INFINITY, sz = 0, st = 0, acc = 0;
    for (int k = 0; k < K; k++) mz = fmax(mz, a_[k] * s), mt = fmax(mt, b_[k] * s);
    for (int k = 0; k < K; k++) sz += exp(a_[k] * s - mz), st += exp(b_[k] * s - mt);
    double lse_a = mz + log(sz), lse_b = mt + log(st);
    for (int k = 0; k < K; k++) {
        double a = a_[k] * s - lse_a, b = b_[k] * s - lse_b, pt = exp(b), q = exp(a);
        acc += pt * (b - a);
        int v = idx[(size_t)r * K + k] - offset;
        if (v >= 0 && v < V) dz[(size_t)r * V + v] += (float)(c_dz * (q - pt));
    }
    kl[r] = acc;
}

static void loss_topk_kl(BackendCtx *ctx, float *dz, LossSums *sums, const float *z, const int32_t *idx,
                         const float *val, int C, int V, const LossChunkParams *p, const LossReduce *red,
                         float dz_scale) {
    int K = p->K;
    double s = 1.0 / p->tau, tau2 = (double)p->tau * p->tau;
    scratch_reserve(ctx, align256((size_t)C * K * sizeof(double)) + align256((size_t)C * sizeof(double)));
    double *zk = (double *)scratch_take(ctx, (size_t)C * K * sizeof(double));
    double *kl = (double *)scratch_take(ctx, (size_t)C * sizeof(double));
    LAUNCH(k_topk_gather, grid_for((size_t)C * K, 256), 256, 0, ctx->stream)
    (zk, z, idx, C, V, K, p->vocab_offset);
    LAUNCH_CHECK("topk gather");
    if (red) stat_reduce(ctx, zk, C * K, red, 0);
    LAUNCH(k_topk_rows, (C + 127) / 128, 128, 0, ctx->stream)
    (dz, kl, zk, idx, val, C, V, K, p->vocab_offset, s, (double)p->tau * loss_kl_inv_n(p) * dz_scale);
    LAUNCH_CHECK("topk rows");
    double *h = download_doubles(ctx, kl, (size_t)C);
    for (int r = 0; r < C; r++) sums->kl += tau2 * h[r] * loss_kl_inv_n(p);
    free(h);
}

static void cu_loss_rows(BackendCtx *ctx, DevBuf dz, LossSums *sums, DevBuf z, DevBuf zt, DevBuf idx,
                         DevBuf val, int C, int V, const LossChunkParams *p, float dz_scale) {
    size_t n = (size_t)C * V;
    if (C <= 0 || V <= 0) return;
    CUDA_CHECK(cudaMemsetAsync(dz.ptr, 0, n * sizeof(float), ctx->stream));
    const LossReduce *red = p->reduce && p->reduce->group_size > 1 ? p->reduce : NULL;
    LossChunkParams full = *p;
    if (p->K > 0) {
        if (p->kl) {
            /* loss.c reduces the top-K logits whenever a reducer is given */
            loss_topk_kl(ctx, (float *)dz.ptr, sums, (const float *)z.ptr, (const int32_t *)idx.ptr,
                         (const float *)val.ptr, C, V, p, p->reduce, dz_scale);
        }
        full.kl = 0;
    }
    if (full.kl || full.mse > 0 || full.entropy > 0) {
        loss_full_vocab(ctx, (float *)dz.ptr, sums, (const float *)z.ptr,
                        full.kl || full.mse > 0 ? (const float *)zt.ptr : NULL, C, V, &full, red, dz_scale);
    }
}

/* ---------------------------------------------------------------- top-K of the teacher's logits */

/* (v, id) comes before (w, jd): larger value, ties by lower id */
__device__ __forceinline__ bool topk_before(float v, int id, float w, int jd) {
    return v > w || (v == w && id < jd);
}

/* K passes, each the block's best entry among those after the previous pick (ids are global). */
__global__ void k_topk_select(int32_t *idx, float *val, const float *zt, int V, int K, int offset) {
    __shared__ float sv[32];
    __shared__ int si[32];
    int r = blockIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const float *row = zt + (size_t)r * V;
    float pv = INFINITY;
    int pid = -1;
    for (int k = 0; k < K; k++) {
        float bv = -INFINITY;
        int bi = INT_MAX;
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float x = row[v];
            int id = offset + v;
            if ((k == 0 || topk_before(pv, pid, x, id)) && topk_before(x, id, bv, bi)) bv = x, bi = id;
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (topk_before(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        __syncthreads();
        if (lane == 0) sv[w] = bv, si[w] = bi;
        __syncthreads();
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : INT_MAX;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (topk_before(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        if (threadIdx.x == 0) {
            idx[(size_t)r * K + k] = bi == INT_MAX ? -1 : bi;
            val[(size_t)r * K + k] = bv;
        }
        pv = bv, pid = bi;
    }
}

/* Insert (x, id) into the descending list of n <= K entries (loss.c: topk_insert). */
static int topk_insert_host(int32_t *ir, float *vr, int n, int K, float x, int32_t id) {
    if (n == K && !(x > vr[K - 1] || (x == vr[K - 1] && id < ir[K - 1]))) return n;
    int pos = n < K ? n++ : K - 1;
    while (pos > 0 && (x > vr[pos - 1] || (x == vr[pos - 1] && id < ir[pos - 1]))) {
        vr[pos] = vr[pos - 1], ir[pos] = ir[pos - 1];
        pos--;
    }
    vr[pos] = x, ir[pos] = id;
    return n;
}

static void cu_loss_topk(BackendCtx *ctx, DevBuf idx, DevBuf val, DevBuf zt, int C, int V, int K,
                         int vocab_offset, const LossReduce *reduce) {
    if (C <= 0) return;
    LAUNCH(k_topk_select, C, 256, 0, ctx->stream)
    ((int32_t *)idx.ptr, (float *)val.ptr, (const float *)zt.ptr, V, K, vocab_offset);
    LAUNCH_CHECK("loss_topk");
    if (!reduce || reduce->group_size <= 1) return;
    /* every rank's K candidates per row, then the global K best (on the host, as loss.c) */
    size_t n = (size_t)C * K, G = (size_t)reduce->group_size;
    int32_t *li = (int32_t *)dam_malloc(n * sizeof(int32_t), "top-k"),
            *ai = (int32_t *)dam_malloc(n * G * 4, "top-k");
    float *lv = (float *)dam_malloc(n * sizeof(float), "top-k"),
          *av = (float *)dam_malloc(n * G * 4, "top-k");
    CUDA_CHECK(cudaMemcpyAsync(li, idx.ptr, n * 4, cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_CHECK(cudaMemcpyAsync(lv, val.ptr, n * 4, cudaMemcpyDeviceToHost, ctx->stream));
    ctx_sync(ctx);
    reduce->gather(reduce->ctx, li, lv, (int)n, ai, av);
    for (int row = 0; row < C; row++) {
        int m = 0;
        for (size_t g = 0; g < G; g++)
            for (int k = 0; k < K; k++) {
                size_t j = (g * C + row) * K + k;
                m = topk_insert_host(li + (size_t)row * K, lv + (size_t)row * K, m, K, av[j], ai[j]);
            }
    }
    CUDA_CHECK(cudaMemcpyAsync(idx.ptr, li, n * 4, cudaMemcpyHostToDevice, ctx->stream));
    CUDA_CHECK(cudaMemcpyAsync(val.ptr, lv, n * 4, cudaMemcpyHostToDevice, ctx->stream));
    ctx_sync(ctx);
    free(li), free(ai), free(lv), free(av);
}
