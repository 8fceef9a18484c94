/* attn_ref.h — a plain double-precision causal (optionally sliding-window, GQA) attention with exp()
 * and its analytic backward: the reference that test_attention.c checks the tiled CPU attention
 * against, and test_backend.c the vectorized exponential's result (header-only, static inline functions).
 * Layouts as the backend's: q, out [B, T, H, hd]; k, v [B, T, KV, hd]; lse [B, H, T]. */
#ifndef DAM_ATTN_REF_H
#define DAM_ATTN_REF_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

typedef struct {
    AttnShape s;
    size_t nq, nk; /* elements of q (and out) and of k (and v) */
    double *P;     /* [B, H, T, T] reference probabilities */
} AttnRef;

static inline int attn_ref_visible(const AttnShape *s, int i, int j) {
    return j <= i && (s->window == 0 || i - j < s->window);
}

static inline size_t attn_ref_qi(const AttnShape *s, int b, int t, int h, int e) {
    return (((size_t)b * s->T + t) * s->H + h) * s->hd + e;
}
static inline size_t attn_ref_ki(const AttnShape *s, int b, int t, int h, int e) {
    return (((size_t)b * s->T + t) * s->KV + h / (s->H / s->KV)) * s->hd + e;
}

/* out and lse in double, keeping P for the backward. */
static inline void attn_ref_forward(AttnRef *r, const float *q, const float *k, const float *v, double *out,
                                    double *lse) {
    const AttnShape *s = &r->s;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->T; i++) {
                double *p = r->P + (((size_t)b * s->H + h) * s->T + i) * s->T, mx = -INFINITY, sum = 0;
                for (int j = 0; j < s->T; j++) {
                    p[j] = -INFINITY;
                    if (!attn_ref_visible(s, i, j)) continue;
                    double dot = 0;
                    for (int e = 0; e < s->hd; e++)
                        dot += (double)q[attn_ref_qi(s, b, i, h, e)] * k[attn_ref_ki(s, b, j, h, e)];
                    p[j] = dot * s->scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < s->T; j++) sum += (p[j] = attn_ref_visible(s, i, j) ? exp(p[j] - mx) : 0);
                for (int j = 0; j < s->T; j++) p[j] /= sum;
                lse[((size_t)b * s->H + h) * s->T + i] = mx + log(sum);
                for (int e = 0; e < s->hd; e++) {
                    double o = 0;
                    for (int j = 0; j < s->T; j++) o += p[j] * v[attn_ref_ki(s, b, j, h, e)];
                    out[attn_ref_qi(s, b, i, h, e)] = o;
                }
            }
}

/* dS = P ⊙ (dP − Σ_j P dP) with dP = dO Vᵀ; dq = scale·dS K, dk = scale·dSᵀ Q, dv = Pᵀ dO. */
static inline void attn_ref_backward(AttnRef *r, const float *q, const float *k, const float *v,
                                     const float *dout, double *dq, double *dk, double *dv) {
    const AttnShape *s = &r->s;
    memset(dq, 0, r->nq * sizeof(double)), memset(dk, 0, r->nk * sizeof(double)),
        memset(dv, 0, r->nk * sizeof(double));
    double *dP = malloc((size_t)s->T * sizeof(double));
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->T; i++) {
                const double *p = r->P + (((size_t)b * s->H + h) * s->T + i) * s->T;
                double corr = 0;
                for (int j = 0; j < s->T; j++) {
                    dP[j] = 0;
                    for (int e = 0; e < s->hd; e++)
                        dP[j] += (double)dout[attn_ref_qi(s, b, i, h, e)] * v[attn_ref_ki(s, b, j, h, e)];
                    corr += p[j] * dP[j];
                }
                for (int j = 0; j < s->T; j++) {
                    double dS = p[j] * (dP[j] - corr) * s->scale;
                    for (int e = 0; e < s->hd; e++) {
                        dq[attn_ref_qi(s, b, i, h, e)] += dS * k[attn_ref_ki(s, b, j, h, e)];
                        dk[attn_ref_ki(s, b, j, h, e)] += dS * q[attn_ref_qi(s, b, i, h, e)];
                        dv[attn_ref_ki(s, b, j, h, e)] += p[j] * dout[attn_ref_qi(s, b, i, h, e)];
                    }
                }
            }
    free(dP);
}

#endif
