/* backend_cpu.c — the reference backend: fp32 compute with OpenBLAS sgemm; source weights read
 * in their stored dtype straight from the mapping (never expanded wholesale). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "backend.h"

static void *cpu_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
        dam_fail("out of memory: %zu bytes for %s", bytes, what);
    return p;
}

static void cpu_free(void *p) { free(p); }

static void cpu_matmul_xwt(float *y, const float *x, const float *w, int T, int in, int out, int acc) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, x, in, w, in, acc ? 1.0f : 0.0f, y,
                out);
}

static void cpu_matmul_dyw(float *dx, const float *dy, const float *w, int T, int in, int out, int acc) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, in, out, 1.0f, dy, out, w, in,
                acc ? 1.0f : 0.0f, dx, in);
}

static void cpu_matmul_dytx(float *g, const float *dy, const float *x, int T, int in, int out, int acc) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, T, 1.0f, dy, out, x, in, acc ? 1.0f : 0.0f,
                g, in);
}

/* Row r of a stored tensor as fp32 into buf (cols entries). */
static inline void load_row(float *buf, const SrcWeight *s, size_t r, size_t cols) {
    size_t off = r * (s->ld ? s->ld : cols);
    if (s->dtype == DAM_BF16) {
        const uint16_t *p = (const uint16_t *)s->data + off;
        for (size_t j = 0; j < cols; j++) buf[j] = dam_bf16_to_f32(p[j]);
    } else if (s->dtype == DAM_F32) {
        memcpy(buf, (const float *)s->data + off, cols * sizeof(float));
    } else {
        dam_to_f32(buf, (const uint16_t *)s->data + off, s->dtype, cols);
    }
}

static void cpu_dam_materialize(float *merged, const SrcWeight *src, int n_src, const float *fc, size_t rows,
                                size_t cols, int scalar_coef) {
    float *row = malloc(cols * sizeof(float));
    for (size_t r = 0; r < rows; r++) {
        float *m = merged + r * cols;
        for (int i = 0; i < n_src; i++) {
            load_row(row, &src[i], r, cols);
            if (scalar_coef) {
                float a = fc[i];
                if (i == 0)
                    for (size_t j = 0; j < cols; j++) m[j] = a * row[j];
                else
                    for (size_t j = 0; j < cols; j++) m[j] += a * row[j];
            } else {
                const float *a = fc + (size_t)i * cols;
                if (i == 0)
                    for (size_t j = 0; j < cols; j++) m[j] = a[j] * row[j];
                else
                    for (size_t j = 0; j < cols; j++) m[j] += a[j] * row[j];
            }
        }
    }
    free(row);
}

static void cpu_dam_coef_grad(float *acc, const SrcWeight *src, int n_src, const float *g, size_t rows,
                              size_t cols, int scalar_coef) {
    float *row = malloc(cols * sizeof(float));
    /* Per-source column sums in double: the sum runs over `rows` terms (up to the vocabulary). */
    double *sum = calloc(cols, sizeof(double));
    for (int i = 0; i < n_src; i++) {
        memset(sum, 0, cols * sizeof(double));
        for (size_t r = 0; r < rows; r++) {
            load_row(row, &src[i], r, cols);
            const float *gr = g + r * cols;
            for (size_t j = 0; j < cols; j++) sum[j] += (double)(row[j] * gr[j]);
        }
        if (scalar_coef) {
            double s = 0;
            for (size_t j = 0; j < cols; j++) s += sum[j];
            acc[i] += (float)s;
        } else {
            float *a = acc + (size_t)i * cols;
            for (size_t j = 0; j < cols; j++) a[j] += (float)sum[j];
        }
    }
    free(sum);
    free(row);
}

static void cpu_dam_embed_gather(float *out, const SrcWeight *src, int n_src, const float *fc,
                                 const int32_t *ids, int T, int d) {
    float *row = malloc((size_t)d * sizeof(float));
    for (int t = 0; t < T; t++) {
        float *o = out + (size_t)t * d;
        if (ids[t] < 0) {
            memset(o, 0, (size_t)d * sizeof(float));
            continue;
        }
        for (int i = 0; i < n_src; i++) {
            load_row(row, &src[i], (size_t)ids[t], (size_t)d);
            const float *a = fc + (size_t)i * d;
            if (i == 0)
                for (int j = 0; j < d; j++) o[j] = a[j] * row[j];
            else
                for (int j = 0; j < d; j++) o[j] += a[j] * row[j];
        }
    }
    free(row);
}

static void cpu_dam_embed_coef_grad(float *acc, const SrcWeight *src, int n_src, const float *dh,
                                    const int32_t *ids, int T, int d) {
    float *row = malloc((size_t)d * sizeof(float));
    for (int i = 0; i < n_src; i++) {
        float *a = acc + (size_t)i * d;
        for (int t = 0; t < T; t++) {
            if (ids[t] < 0) continue;
            load_row(row, &src[i], (size_t)ids[t], (size_t)d);
            const float *g = dh + (size_t)t * d;
            for (int j = 0; j < d; j++) a[j] += row[j] * g[j];
        }
    }
    free(row);
}

static void cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int T, int d,
                            float eps) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * d;
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)xr[j] * xr[j];
        float r = (float)(1.0 / sqrt(ss / d + eps));
        rstd[t] = r;
        float *o = out + (size_t)t * d;
        for (int j = 0; j < d; j++) o[j] = w[j] * (xr[j] * r);
    }
}

static void cpu_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                            const float *w, int T, int d, int acc) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * d, *go = dout + (size_t)t * d;
        float r = rstd[t];
        double dot = 0; /* Σ_j dx̂ ⊙ x̂ */
        for (int j = 0; j < d; j++) {
            float xh = xr[j] * r;
            dot += (double)(go[j] * w[j]) * xh;
            if (dw) dw[j] += go[j] * xh;
        }
        float mean = (float)(dot / d);
        float *o = dx + (size_t)t * d;
        for (int j = 0; j < d; j++) {
            float v = r * (go[j] * w[j] - xr[j] * r * mean);
            o[j] = acc ? o[j] + v : v;
        }
    }
}

static void cpu_rope(float *x, const float *cos, const float *sin, int BT, int T, int heads, int hd,
                     int inverse) {
    int half = hd / 2;
    float sgn = inverse ? -1.0f : 1.0f;
    for (int bt = 0; bt < BT; bt++) {
        const float *c = cos + (size_t)(bt % T) * half, *s = sin + (size_t)(bt % T) * half;
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)bt * heads + h) * hd;
            for (int k = 0; k < half; k++) {
                float a = v[k], b = v[k + half], sk = sgn * s[k];
                v[k] = a * c[k] - b * sk;
                v[k + half] = b * c[k] + a * sk;
            }
        }
    }
}

/* Keys visible from query i: j in [lo, i]. */
static inline int attn_lo(int i, int window) { return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0; }

/* Flash-style attention: query tiles of ATTN_TILE rows against key tiles of ATTN_TILE keys, with
 * an online softmax; only the per-row log-sum-exp is kept for the backward, which recomputes each
 * probability tile. Memory is linear in T (the lse) plus a constant scratch; a sequence of up to
 * ATTN_TILE tokens is one tile, so short sequences cost what plain GEMM attention costs. */
enum { ATTN_TILE = DAM_ATTN_TILE };

typedef struct {
    const float *q, *k, *v; /* this (sequence, head)'s rows, strides qs and ks */
    int qs, ks, hd, T, window;
    float scale;
} AttnHead;

/* S[nq, nk] = scale · Q[i0..] K[j0..]ᵀ, with the keys a row may not see set to -inf. */
static void attn_scores(float *S, const AttnHead *a, int i0, int nq, int j0, int nk) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, a->hd, a->scale, a->q + (size_t)i0 * a->qs,
                a->qs, a->k + (size_t)j0 * a->ks, a->ks, 0.0f, S, nk);
    for (int r = 0; r < nq; r++) {
        int i = i0 + r, lo = attn_lo(i, a->window);
        for (int c = 0; c < nk; c++)
            if (j0 + c < lo || j0 + c > i) S[(size_t)r * nk + c] = -INFINITY;
    }
}

/* One (sequence, head): out rows and lse for every query. scratch: ATTN_TILE² + 2·ATTN_TILE. */
static void attn_head_fwd(float *out, int os, float *lse, const AttnHead *a, float *scratch) {
    float *S = scratch, *mx = S + ATTN_TILE * ATTN_TILE, *sum = mx + ATTN_TILE;
    for (int i0 = 0; i0 < a->T; i0 += ATTN_TILE) {
        int nq = a->T - i0 < ATTN_TILE ? a->T - i0 : ATTN_TILE, klo = attn_lo(i0, a->window), khi = i0 + nq;
        for (int r = 0; r < nq; r++) {
            mx[r] = -INFINITY, sum[r] = 0;
            memset(out + (size_t)(i0 + r) * os, 0, (size_t)a->hd * sizeof(float));
        }
        for (int j0 = klo; j0 < khi; j0 += ATTN_TILE) {
            int nk = khi - j0 < ATTN_TILE ? khi - j0 : ATTN_TILE;
            attn_scores(S, a, i0, nq, j0, nk);
            for (int r = 0; r < nq; r++) { /* online softmax: rescale what was accumulated */
                float *row = S + (size_t)r * nk, m = mx[r];
                for (int c = 0; c < nk; c++) m = row[c] > m ? row[c] : m;
                if (m == -INFINITY) { /* no visible key in this tile: it adds nothing */
                    memset(row, 0, (size_t)nk * sizeof(float));
                    continue;
                }
                float corr = expf(mx[r] - m), part = 0;
                for (int c = 0; c < nk; c++) part += (row[c] = expf(row[c] - m));
                sum[r] = sum[r] * corr + part, mx[r] = m;
                float *o = out + (size_t)(i0 + r) * os;
                for (int e = 0; e < a->hd; e++) o[e] *= corr;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, a->hd, nk, 1.0f, S, nk,
                        a->v + (size_t)j0 * a->ks, a->ks, 1.0f, out + (size_t)i0 * os, os);
        }
        for (int r = 0; r < nq; r++) {
            float *o = out + (size_t)(i0 + r) * os, inv = 1.0f / sum[r];
            for (int e = 0; e < a->hd; e++) o[e] *= inv;
            lse[i0 + r] = mx[r] + logf(sum[r]);
        }
    }
}

static AttnHead attn_head(const float *q, const float *k, const float *v, const AttnShape *s, int b, int h) {
    int qs = s->H * s->hd, ks = s->KV * s->hd, kvh = h / (s->H / s->KV);
    size_t qo = (size_t)b * s->T * qs + (size_t)h * s->hd, ko = (size_t)b * s->T * ks + (size_t)kvh * s->hd;
    return (AttnHead){q + qo, k + ko, v + ko, qs, ks, s->hd, s->T, s->window, s->scale};
}

static void cpu_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                              const AttnShape *s, float *scratch) {
    int qs = s->H * s->hd;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++) {
            AttnHead a = attn_head(q, k, v, s, b, h);
            attn_head_fwd(out + (size_t)b * s->T * qs + (size_t)h * s->hd, qs,
                          lse + ((size_t)b * s->H + h) * s->T, &a, scratch);
        }
}

/* One (sequence, head): dq (overwritten), dk and dv (accumulated: GQA heads share them), each
 * probability tile recomputed from the lse. D_i = dO_i · O_i is the softmax's row correction. */
static void attn_head_bwd(float *dq, float *dk, float *dv, const float *dout, const float *out,
                          const float *lse, const AttnHead *a, float *scratch) {
    float *P = scratch, *dS = P + ATTN_TILE * ATTN_TILE, *D = dS + ATTN_TILE * ATTN_TILE;
    int qs = a->qs, ks = a->ks;
    for (int i0 = 0; i0 < a->T; i0 += ATTN_TILE) {
        int nq = a->T - i0 < ATTN_TILE ? a->T - i0 : ATTN_TILE, klo = attn_lo(i0, a->window), khi = i0 + nq;
        for (int r = 0; r < nq; r++) {
            const float *o = out + (size_t)(i0 + r) * qs, *g = dout + (size_t)(i0 + r) * qs;
            double dot = 0;
            for (int e = 0; e < a->hd; e++) dot += (double)o[e] * g[e];
            D[r] = (float)dot;
            memset(dq + (size_t)(i0 + r) * qs, 0, (size_t)a->hd * sizeof(float));
        }
        for (int j0 = klo; j0 < khi; j0 += ATTN_TILE) {
            int nk = khi - j0 < ATTN_TILE ? khi - j0 : ATTN_TILE;
            attn_scores(P, a, i0, nq, j0, nk);
            for (int r = 0; r < nq; r++)
                for (int c = 0; c < nk; c++)
                    P[(size_t)r * nk + c] = expf(P[(size_t)r * nk + c] - lse[i0 + r]);
            const float *dO = dout + (size_t)i0 * qs;
            /* dV += Pᵀ dO ; dP = dO Vᵀ ; dS = P ⊙ (dP − D) · scale ; dQ += dS K ; dK += dSᵀ Q */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, a->hd, nq, 1.0f, P, nk, dO, qs, 1.0f,
                        dv + (size_t)j0 * ks, ks);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, a->hd, 1.0f, dO, qs,
                        a->v + (size_t)j0 * ks, ks, 0.0f, dS, nk);
            for (int r = 0; r < nq; r++)
                for (int c = 0; c < nk; c++) {
                    size_t x = (size_t)r * nk + c;
                    dS[x] = P[x] * (dS[x] - D[r]) * a->scale;
                }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, a->hd, nk, 1.0f, dS, nk,
                        a->k + (size_t)j0 * ks, ks, 1.0f, dq + (size_t)i0 * qs, qs);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, a->hd, nq, 1.0f, dS, nk,
                        a->q + (size_t)i0 * qs, qs, 1.0f, dk + (size_t)j0 * ks, ks);
        }
    }
}

static void cpu_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *out,
                              const float *lse, const float *q, const float *k, const float *v,
                              const AttnShape *s, float *scratch) {
    int qs = s->H * s->hd, ks = s->KV * s->hd;
    memset(dk, 0, (size_t)s->B * s->T * ks * sizeof(float));
    memset(dv, 0, (size_t)s->B * s->T * ks * sizeof(float));
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++) {
            AttnHead a = attn_head(q, k, v, s, b, h);
            size_t qo = (size_t)b * s->T * qs + (size_t)h * s->hd, ko = a.k - k;
            attn_head_bwd(dq + qo, dk + ko, dv + ko, dout + qo, out + qo, lse + ((size_t)b * s->H + h) * s->T,
                          &a, scratch);
        }
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

static void cpu_swiglu_fwd(float *act, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) act[i] = gate[i] * sigmoidf(gate[i]) * up[i];
}

static void cpu_swiglu_bwd(float *dgate, float *dup, const float *dact, const float *gate, const float *up,
                           size_t n) {
    for (size_t i = 0; i < n; i++) {
        float sg = sigmoidf(gate[i]), silu = gate[i] * sg;
        dup[i] = dact[i] * silu;
        dgate[i] = dact[i] * up[i] * (sg * (1.0f + gate[i] * (1.0f - sg)));
    }
}

static void cpu_add_bias(float *y, const float *b, int T, int out) {
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) y[(size_t)t * out + o] += b[o];
}

static const Backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .matmul_xwt = cpu_matmul_xwt,
    .matmul_dyw = cpu_matmul_dyw,
    .matmul_dytx = cpu_matmul_dytx,
    .dam_materialize = cpu_dam_materialize,
    .dam_coef_grad = cpu_dam_coef_grad,
    .dam_embed_gather = cpu_dam_embed_gather,
    .dam_embed_coef_grad = cpu_dam_embed_coef_grad,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope = cpu_rope,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .add_bias = cpu_add_bias,
};

const Backend *backend_cpu(void) { return &cpu_backend; }

float dam_nonlin(Nonlinearity f, float c) {
    switch (f) {
    case NONLIN_TANH: return tanhf(c);
    case NONLIN_SIGMOID: return sigmoidf(c);
    case NONLIN_RELU: return c > 0 ? c : 0;
    default: return c;
    }
}

float dam_nonlin_grad(Nonlinearity f, float c) {
    switch (f) {
    case NONLIN_TANH: {
        float t = tanhf(c);
        return 1.0f - t * t;
    }
    case NONLIN_SIGMOID: {
        float s = sigmoidf(c);
        return s * (1.0f - s);
    }
    case NONLIN_RELU: return c > 0 ? 1.0f : 0.0f;
    default: return 1.0f;
    }
}
