/* attention.cuh — tiled causal attention (flash-style), GQA and the sliding window, fp32 in shared
 * memory whatever the buffers' dtype. Only the log-sum-exp of each query row is kept (lse [B,H,T]);
 * memory is linear in T. Correctness first: the products run on the CUDA cores, tiles of ATT_B rows.
 *
 * Layout: q, out [B, T, H, hd]; k, v [B, T, KV, hd]; query head h reads key/value head h / (H/KV).
 * Backward without atomics: D = rowsum(dO ⊙ O); one kernel per key tile accumulates dK and dV over
 * every query tile (and every query head of its group) that sees it; one kernel per query tile
 * accumulates dQ; both recompute P from q, k and the lse. */
#pragma once

#include "common.cuh"

enum { ATT_B = 16, ATT_THREADS = 128 };

struct AttnArgs {
    int B, T, H, KV, hd, window, rep; /* rep = H / KV */
    float scale;
    int qdt, kdt, vdt;
};

__device__ __forceinline__ bool att_visible(int i, int j, int window) {
    return j <= i && (window <= 0 || i - j < window);
}

/* Rows [r0, r0 + n) of one head of x (row stride `stride` elements, head offset `off`) into sm
 * [ATT_B][hd + 1], zero-padded past n. */
__device__ void att_load(float *sm, const void *x, int dt, size_t base, int stride, int r0, int n, int hd) {
    for (int e = threadIdx.x; e < ATT_B * hd; e += blockDim.x) {
        int r = e / hd, c = e - r * hd;
        sm[r * (hd + 1) + c] = r < n ? ldf(x, dt, base + (size_t)(r0 + r) * stride + c) : 0.0f;
    }
}

__device__ float att_dot(const float *a, const float *b, int hd) {
    float s = 0.0f;
    for (int e = 0; e < hd; e++) s += a[e] * b[e];
    return s;
}

static size_t att_fwd_smem(int hd) {
    return (size_t)(4 * ATT_B * (hd + 1) + ATT_B * (ATT_B + 1) + 3 * ATT_B) * 4;
}
/* the dK/dV kernel's six tiles (the dQ kernel uses five) */
static size_t att_bwd_smem(int hd) {
    return (size_t)(6 * ATT_B * (hd + 1) + 2 * ATT_B * (ATT_B + 1) + 2 * ATT_B) * 4;
}

__global__ void k_attn_fwd(void *out, int odt, float *lse, const void *q, const void *k, const void *v,
                           AttnArgs a) {
    DYNAMIC_SHARED(float, sm);
    int hd = a.hd, ld = hd + 1, i0 = blockIdx.x * ATT_B, h = blockIdx.y, b = blockIdx.z, g = h / a.rep;
    float *Qs = sm, *Ks = Qs + ATT_B * ld, *Vs = Ks + ATT_B * ld, *Os = Vs + ATT_B * ld;
    float *S = Os + ATT_B * ld, *mx = S + ATT_B * (ATT_B + 1), *sum = mx + ATT_B, *corr = sum + ATT_B;
    int nq = min(ATT_B, a.T - i0);
    size_t qbase = (size_t)b * a.T * a.H * hd + (size_t)h * hd,
           kbase = (size_t)b * a.T * a.KV * hd + (size_t)g * hd;
    att_load(Qs, q, a.qdt, qbase, a.H * hd, i0, nq, hd);
    for (int e = threadIdx.x; e < ATT_B * ld; e += blockDim.x) Os[e] = 0.0f;
    if (threadIdx.x < ATT_B) mx[threadIdx.x] = -INFINITY, sum[threadIdx.x] = 0.0f;
    int klo = a.window > 0 ? max(0, i0 - a.window + 1) : 0, khi = i0 + nq;
    for (int j0 = klo; j0 < khi; j0 += ATT_B) {
        int nk = min(ATT_B, khi - j0);
        __syncthreads(); /* the previous tile's K, V and S are no longer read */
        att_load(Ks, k, a.kdt, kbase, a.KV * hd, j0, nk, hd);
        att_load(Vs, v, a.vdt, kbase, a.KV * hd, j0, nk, hd);
        __syncthreads();
        for (int p = threadIdx.x; p < ATT_B * ATT_B; p += blockDim.x) {
            int r = p / ATT_B, c = p % ATT_B;
            bool ok = r < nq && c < nk && att_visible(i0 + r, j0 + c, a.window);
            S[r * (ATT_B + 1) + c] = ok ? a.scale * att_dot(Qs + r * ld, Ks + c * ld, hd) : -INFINITY;
        }
        __syncthreads();
        if (threadIdx.x < ATT_B) { /* online softmax of row r over this tile */
            int r = threadIdx.x;
            float *row = S + r * (ATT_B + 1), m = mx[r];
            for (int c = 0; c < ATT_B; c++) m = fmaxf(m, row[c]);
            if (m == -INFINITY) { /* nothing visible yet: the tile adds nothing */
                for (int c = 0; c < ATT_B; c++) row[c] = 0.0f;
                corr[r] = 1.0f;
            } else {
                float cr = expf(mx[r] - m), part = 0.0f;
                for (int c = 0; c < ATT_B; c++) part += (row[c] = expf(row[c] - m));
                sum[r] = sum[r] * cr + part, mx[r] = m, corr[r] = cr;
            }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_B * hd; e += blockDim.x) {
            int r = e / hd, c = e - r * hd;
            float acc = Os[r * ld + c] * corr[r];
            for (int j = 0; j < ATT_B; j++) acc += S[r * (ATT_B + 1) + j] * Vs[j * ld + c];
            Os[r * ld + c] = acc;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nq * hd; e += blockDim.x) {
        int r = e / hd, c = e - r * hd;
        stf(out, odt, qbase + (size_t)(i0 + r) * a.H * hd + c, Os[r * ld + c] / sum[r]);
    }
    if (threadIdx.x < nq)
        lse[((size_t)b * a.H + h) * a.T + i0 + threadIdx.x] = mx[threadIdx.x] + logf(sum[threadIdx.x]);
}

/* D[b, h, t] = Σ_e dO·O */
__global__ void k_attn_rowdot(float *D, const void *dout, int gdt, const void *out, int odt, AttnArgs a) {
    size_t rows = (size_t)a.B * a.T * a.H; /* (b, t, h) order, as the buffers */
    size_t warps = (size_t)gridDim.x * blockDim.x / 32;
    int lane = threadIdx.x & 31;
    for (size_t w = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; w < rows; w += warps) {
        float s = 0.0f;
        for (int e = lane; e < a.hd; e += 32) s += ldf(dout, gdt, w * a.hd + e) * ldf(out, odt, w * a.hd + e);
        s = warp_sum(s);
        size_t h = w % a.H, bt = w / a.H, t = bt % a.T, b = bt / a.T;
        if (lane == 0) D[(b * a.H + h) * a.T + t] = s;
    }
}

/* P and dS of a (query tile, key tile) pair from the tiles in shared memory:
 * P = exp(scale·QKᵀ − lse) where visible, dS = P ⊙ (dO Vᵀ − D) · scale. */
__device__ void att_p_ds(float *P, float *dS, const float *Qs, const float *Ks, const float *Vs,
                         const float *dOs, const float *lse_s, const float *D_s, int i0, int nq, int j0,
                         int nk, const AttnArgs &a) {
    int ld = a.hd + 1;
    for (int p = threadIdx.x; p < ATT_B * ATT_B; p += blockDim.x) {
        int r = p / ATT_B, c = p % ATT_B;
        float pv = 0.0f, ds = 0.0f;
        if (r < nq && c < nk && att_visible(i0 + r, j0 + c, a.window)) {
            pv = expf(a.scale * att_dot(Qs + r * ld, Ks + c * ld, a.hd) - lse_s[r]);
            ds = pv * (att_dot(dOs + r * ld, Vs + c * ld, a.hd) - D_s[r]) * a.scale;
        }
        P[r * (ATT_B + 1) + c] = pv, dS[r * (ATT_B + 1) + c] = ds;
    }
}

__device__ void att_load_rowstats(float *lse_s, float *D_s, const float *lse, const float *D, size_t off,
                                  int nq) {
    if (threadIdx.x < ATT_B) {
        lse_s[threadIdx.x] = (int)threadIdx.x < nq ? lse[off + threadIdx.x] : 0.0f;
        D_s[threadIdx.x] = (int)threadIdx.x < nq ? D[off + threadIdx.x] : 0.0f;
    }
}

/* One key tile of one key/value head: dK, dV over every query that sees it, in every query head of
 * the group. */
__global__ void k_attn_bwd_kv(void *dk, int dkdt, void *dv, int dvdt, const void *dout, int gdt,
                              const float *lse, const float *D, const void *q, const void *k, const void *v,
                              AttnArgs a) {
    DYNAMIC_SHARED(float, sm);
    int hd = a.hd, ld = hd + 1, j0 = blockIdx.x * ATT_B, g = blockIdx.y, b = blockIdx.z;
    float *Ks = sm, *Vs = Ks + ATT_B * ld, *dKs = Vs + ATT_B * ld, *dVs = dKs + ATT_B * ld,
          *Qs = dVs + ATT_B * ld;
    float *dOs = Qs + ATT_B * ld, *P = dOs + ATT_B * ld, *dS = P + ATT_B * (ATT_B + 1),
          *lse_s = dS + ATT_B * (ATT_B + 1);
    float *D_s = lse_s + ATT_B;
    int nk = min(ATT_B, a.T - j0);
    size_t kbase = (size_t)b * a.T * a.KV * hd + (size_t)g * hd;
    att_load(Ks, k, a.kdt, kbase, a.KV * hd, j0, nk, hd);
    att_load(Vs, v, a.vdt, kbase, a.KV * hd, j0, nk, hd);
    for (int e = threadIdx.x; e < ATT_B * ld; e += blockDim.x) dKs[e] = 0.0f, dVs[e] = 0.0f;
    int qhi = a.window > 0 ? min(a.T, j0 + nk - 1 + a.window) : a.T;
    for (int u = 0; u < a.rep; u++) {
        int h = g * a.rep + u;
        size_t qbase = (size_t)b * a.T * a.H * hd + (size_t)h * hd, rs = ((size_t)b * a.H + h) * a.T;
        for (int i0 = j0; i0 < qhi; i0 += ATT_B) {
            int nq = min(ATT_B, qhi - i0);
            __syncthreads();
            att_load(Qs, q, a.qdt, qbase, a.H * hd, i0, nq, hd);
            att_load(dOs, dout, gdt, qbase, a.H * hd, i0, nq, hd);
            att_load_rowstats(lse_s, D_s, lse, D, rs + i0, nq);
            __syncthreads();
            att_p_ds(P, dS, Qs, Ks, Vs, dOs, lse_s, D_s, i0, nq, j0, nk, a);
            __syncthreads();
            for (int e = threadIdx.x; e < ATT_B * hd; e += blockDim.x) { /* dV += Pᵀ dO ; dK += dSᵀ Q */
                int c = e / hd, x = e - c * hd;
                float av = 0.0f, ak = 0.0f;
                for (int r = 0; r < ATT_B; r++) {
                    av += P[r * (ATT_B + 1) + c] * dOs[r * ld + x];
                    ak += dS[r * (ATT_B + 1) + c] * Qs[r * ld + x];
                }
                dVs[c * ld + x] += av, dKs[c * ld + x] += ak;
            }
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nk * hd; e += blockDim.x) {
        int c = e / hd, x = e - c * hd;
        size_t o = kbase + (size_t)(j0 + c) * a.KV * hd + x;
        stf(dk, dkdt, o, dKs[c * ld + x]);
        stf(dv, dvdt, o, dVs[c * ld + x]);
    }
}

/* One query tile of one head: dQ = Σ over visible key tiles of dS K. */
__global__ void k_attn_bwd_q(void *dq, int dqdt, const void *dout, int gdt, const float *lse, const float *D,
                             const void *q, const void *k, const void *v, AttnArgs a) {
    DYNAMIC_SHARED(float, sm);
    int hd = a.hd, ld = hd + 1, i0 = blockIdx.x * ATT_B, h = blockIdx.y, b = blockIdx.z, g = h / a.rep;
    float *Qs = sm, *dOs = Qs + ATT_B * ld, *Ks = dOs + ATT_B * ld, *Vs = Ks + ATT_B * ld,
          *dQs = Vs + ATT_B * ld;
    float *P = dQs + ATT_B * ld, *dS = P + ATT_B * (ATT_B + 1), *lse_s = dS + ATT_B * (ATT_B + 1);
    float *D_s = lse_s + ATT_B;
    int nq = min(ATT_B, a.T - i0);
    size_t qbase = (size_t)b * a.T * a.H * hd + (size_t)h * hd,
           kbase = (size_t)b * a.T * a.KV * hd + (size_t)g * hd;
    att_load(Qs, q, a.qdt, qbase, a.H * hd, i0, nq, hd);
    att_load(dOs, dout, gdt, qbase, a.H * hd, i0, nq, hd);
    att_load_rowstats(lse_s, D_s, lse, D, ((size_t)b * a.H + h) * a.T + i0, nq);
    for (int e = threadIdx.x; e < ATT_B * ld; e += blockDim.x) dQs[e] = 0.0f;
    int klo = a.window > 0 ? max(0, i0 - a.window + 1) : 0, khi = i0 + nq;
    for (int j0 = klo; j0 < khi; j0 += ATT_B) {
        int nk = min(ATT_B, khi - j0);
        __syncthreads();
        att_load(Ks, k, a.kdt, kbase, a.KV * hd, j0, nk, hd);
        att_load(Vs, v, a.vdt, kbase, a.KV * hd, j0, nk, hd);
        __syncthreads();
        att_p_ds(P, dS, Qs, Ks, Vs, dOs, lse_s, D_s, i0, nq, j0, nk, a);
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_B * hd; e += blockDim.x) {
            int r = e / hd, x = e - r * hd;
            float acc = 0.0f;
            for (int c = 0; c < ATT_B; c++) acc += dS[r * (ATT_B + 1) + c] * Ks[c * ld + x];
            dQs[r * ld + x] += acc;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nq * hd; e += blockDim.x) {
        int r = e / hd, x = e - r * hd;
        stf(dq, dqdt, qbase + (size_t)(i0 + r) * a.H * hd + x, dQs[r * ld + x]);
    }
}

static AttnArgs attn_args(const AttnShape *s, DevBuf q, DevBuf k, DevBuf v, const char *op) {
    /* (the front checked the shape and the buffers) */
    if (s->hd % 2) dam_fail("cuda %s: head dimension %d is odd (the CUDA kernels need it even)", op, s->hd);
    AttnArgs a = {s->B,           s->T,         s->H,     s->KV,           s->hd,
                  s->window,      s->H / s->KV, s->scale, dtcode(q.dtype), dtcode(k.dtype),
                  dtcode(v.dtype)};
    return a;
}

/* Dynamic shared memory above 48 KiB must be allowed per kernel. */
template <typename K> static void att_smem(BackendCtx *ctx, K kernel, size_t bytes, const char *op) {
    if (bytes > (size_t)ctx->max_smem_optin)
        dam_fail("cuda %s: head dimension too large for shared memory (%zu bytes, %d available)", op, bytes,
                 ctx->max_smem_optin);
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

static void cu_attention_fwd(BackendCtx *ctx, DevBuf out, DevBuf lse, DevBuf q, DevBuf k, DevBuf v,
                             const AttnShape *s) {
    const char *op = "attention_fwd";
    AttnArgs a = attn_args(s, q, k, v, op);
    if (s->B <= 0 || s->T <= 0) return;
    size_t smem = att_fwd_smem(s->hd);
    att_smem(ctx, k_attn_fwd, smem, op);
    dim3 grid((unsigned)((s->T + ATT_B - 1) / ATT_B), (unsigned)s->H, (unsigned)s->B);
    LAUNCH(k_attn_fwd, grid, ATT_THREADS, smem, ctx->stream)
    (out.ptr, dtcode(out.dtype), (float *)lse.ptr, q.ptr, k.ptr, v.ptr, a);
    LAUNCH_CHECK(op);
}

static void cu_attention_bwd(BackendCtx *ctx, DevBuf dq, DevBuf dk, DevBuf dv, DevBuf dout, DevBuf out,
                             DevBuf lse, DevBuf q, DevBuf k, DevBuf v, const AttnShape *s) {
    const char *op = "attention_bwd";
    AttnArgs a = attn_args(s, q, k, v, op);
    if (s->B <= 0 || s->T <= 0) return;
    size_t rows = (size_t)s->B * s->H * s->T;
    scratch_reserve(ctx, rows * sizeof(float));
    float *D = (float *)scratch_take(ctx, rows * sizeof(float));
    LAUNCH(k_attn_rowdot, grid_for(rows * 32, 256), 256, 0, ctx->stream)
    (D, dout.ptr, dtcode(dout.dtype), out.ptr, dtcode(out.dtype), a);
    LAUNCH_CHECK(op);
    size_t smem = att_bwd_smem(s->hd);
    att_smem(ctx, k_attn_bwd_kv, smem, op);
    att_smem(ctx, k_attn_bwd_q, smem, op);
    unsigned tiles = (unsigned)((s->T + ATT_B - 1) / ATT_B);
    LAUNCH(k_attn_bwd_kv, dim3(tiles, (unsigned)s->KV, (unsigned)s->B), ATT_THREADS, smem, ctx->stream)
    (dk.ptr, dtcode(dk.dtype), dv.ptr, dtcode(dv.dtype), dout.ptr, dtcode(dout.dtype), (const float *)lse.ptr,
     D, q.ptr, k.ptr, v.ptr, a);
    LAUNCH_CHECK(op);
    LAUNCH(k_attn_bwd_q, dim3(tiles, (unsigned)s->H, (unsigned)s->B), ATT_THREADS, smem, ctx->stream)
    (dq.ptr, dtcode(dq.dtype), dout.ptr, dtcode(dout.dtype), (const float *)lse.ptr, D, q.ptr, k.ptr, v.ptr,
     a);
    LAUNCH_CHECK(op);
}
