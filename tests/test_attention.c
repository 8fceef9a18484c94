/* test_attention.c — the tiled (flash-style) attention of the CPU backend against a plain
 * double-precision attention written here (scores, causal/sliding-window softmax, its analytic
 * backward), on sequences that cross tile boundaries (T = 1, a partial tile, several tiles), with
 * GQA and windows shorter than, equal to and longer than a tile. Relative error by norm < 2e-6
 * for out, lse, dq, dk and dv; outputs poisoned (NaN) first so that nothing unwritten passes. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend.h"

/* The CPU backend's attention tile (backend_cpu.c ATTN_TILE): the cases cross its boundaries. */
enum { DAM_ATTN_TILE = 128 };

/* host[n] onto a fresh device buffer of the backend (F32). */
static DevBuf dev_of(const Backend *be, BackendCtx *ctx, const float *host, size_t n) {
    DevBuf b = be->alloc(ctx, n, DAM_F32, "attention test");
    be->upload(ctx, b, host, DAM_F32, n);
    return b;
}

/* The device buffer into host[n], and freed. */
static void host_of(const Backend *be, BackendCtx *ctx, float *host, DevBuf *b, size_t n) {
    be->download(ctx, host, DAM_F32, *b, n);
    be->free(ctx, b);
}

typedef struct {
    AttnShape s;
    size_t nq, nk; /* elements of q (and out) and of k (and v) */
    double *P;     /* [B, H, T, T] reference probabilities */
} Ref;

static int visible(const AttnShape *s, int i, int j) {
    return j <= i && (s->window == 0 || i - j < s->window);
}

static size_t qi(const AttnShape *s, int b, int t, int h, int e) {
    return (((size_t)b * s->T + t) * s->H + h) * s->hd + e;
}
static size_t ki(const AttnShape *s, int b, int t, int h, int e) {
    return (((size_t)b * s->T + t) * s->KV + h / (s->H / s->KV)) * s->hd + e;
}

/* out and lse in double, keeping P for the backward. */
static void ref_forward(Ref *r, const float *q, const float *k, const float *v, double *out, double *lse) {
    const AttnShape *s = &r->s;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->T; i++) {
                double *p = r->P + (((size_t)b * s->H + h) * s->T + i) * s->T, mx = -INFINITY, sum = 0;
                for (int j = 0; j < s->T; j++) {
                    p[j] = -INFINITY;
                    if (!visible(s, i, j)) continue;
                    double dot = 0;
                    for (int e = 0; e < s->hd; e++)
                        dot += (double)q[qi(s, b, i, h, e)] * k[ki(s, b, j, h, e)];
                    p[j] = dot * s->scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < s->T; j++) sum += (p[j] = visible(s, i, j) ? exp(p[j] - mx) : 0);
                for (int j = 0; j < s->T; j++) p[j] /= sum;
                lse[((size_t)b * s->H + h) * s->T + i] = mx + log(sum);
                for (int e = 0; e < s->hd; e++) {
                    double o = 0;
                    for (int j = 0; j < s->T; j++) o += p[j] * v[ki(s, b, j, h, e)];
                    out[qi(s, b, i, h, e)] = o;
                }
            }
}

/* dS = P ⊙ (dP − Σ_j P dP) with dP = dO Vᵀ; dq = scale·dS K, dk = scale·dSᵀ Q, dv = Pᵀ dO. */
static void ref_backward(Ref *r, const float *q, const float *k, const float *v, const float *dout,
                         double *dq, double *dk, double *dv) {
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
                        dP[j] += (double)dout[qi(s, b, i, h, e)] * v[ki(s, b, j, h, e)];
                    corr += p[j] * dP[j];
                }
                for (int j = 0; j < s->T; j++) {
                    double dS = p[j] * (dP[j] - corr) * s->scale;
                    for (int e = 0; e < s->hd; e++) {
                        dq[qi(s, b, i, h, e)] += dS * k[ki(s, b, j, h, e)];
                        dk[ki(s, b, j, h, e)] += dS * q[qi(s, b, i, h, e)];
                        dv[ki(s, b, j, h, e)] += p[j] * dout[qi(s, b, i, h, e)];
                    }
                }
            }
    free(dP);
}

static double rel_err(const float *got, const double *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d, den += want[i] * want[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static float *randn(size_t n, unsigned *seed) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(rand_r(seed) % 2001 - 1000) / 500.0f;
    return x;
}

static float *poisoned(size_t n) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

static void check_case(int B, int T, int H, int KV, int hd, int window) {
    const Backend *be = backend_by_name("cpu"); /* (DAM_BACKEND: the guard pass) */
    BackendCtx *ctx = be->ctx_new(0);
    Ref r = {.s = {B, T, H, KV, hd, window, 1.0f / sqrtf((float)hd)}};
    r.nq = (size_t)B * T * H * hd, r.nk = (size_t)B * T * KV * hd;
    size_t nl = (size_t)B * H * T;
    unsigned seed = (unsigned)(T * 131 + window * 7 + H);
    float *q = randn(r.nq, &seed), *k = randn(r.nk, &seed), *v = randn(r.nk, &seed),
          *dout = randn(r.nq, &seed);
    float *out = poisoned(r.nq), *lse = poisoned(nl), *dq = poisoned(r.nq), *dk = poisoned(r.nk),
          *dv = poisoned(r.nk);
    r.P = malloc(nl * T * sizeof(double));
    double *ro = malloc(r.nq * sizeof(double)), *rl = malloc(nl * sizeof(double)),
           *rdq = malloc(r.nq * sizeof(double)), *rdk = malloc(r.nk * sizeof(double)),
           *rdv = malloc(r.nk * sizeof(double));
    DevBuf Q = dev_of(be, ctx, q, r.nq), K = dev_of(be, ctx, k, r.nk), Vb = dev_of(be, ctx, v, r.nk),
           DOUT = dev_of(be, ctx, dout, r.nq), OUT = dev_of(be, ctx, out, r.nq),
           LSE = dev_of(be, ctx, lse, nl), DQ = dev_of(be, ctx, dq, r.nq), DK = dev_of(be, ctx, dk, r.nk),
           DV = dev_of(be, ctx, dv, r.nk);
    be->attention_fwd(ctx, OUT, LSE, Q, K, Vb, &r.s);
    be->attention_bwd(ctx, DQ, DK, DV, DOUT, OUT, LSE, Q, K, Vb, &r.s);
    host_of(be, ctx, out, &OUT, r.nq), host_of(be, ctx, lse, &LSE, nl);
    host_of(be, ctx, dq, &DQ, r.nq), host_of(be, ctx, dk, &DK, r.nk), host_of(be, ctx, dv, &DV, r.nk);
    be->free(ctx, &Q), be->free(ctx, &K), be->free(ctx, &Vb), be->free(ctx, &DOUT);
    be->ctx_free(ctx);
    ref_forward(&r, q, k, v, ro, rl);
    ref_backward(&r, q, k, v, dout, rdq, rdk, rdv);
    double e[5] = {rel_err(out, ro, r.nq), rel_err(lse, rl, nl), rel_err(dq, rdq, r.nq),
                   rel_err(dk, rdk, r.nk), rel_err(dv, rdv, r.nk)};
    const char *names[5] = {"out", "lse", "dq", "dk", "dv"};
    for (int i = 0; i < 5; i++) {
        printf("%s B=%d T=%d H=%d KV=%d hd=%d window=%d: %s rel err %.2e\n",
               e[i] < 2e-6 ? "OK    " : "NOT OK", B, T, H, KV, hd, window, names[i], e[i]);
        assert_true(e[i] < 2e-6); /* NaN fails too */
    }
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
    free(r.P), free(ro), free(rl), free(rdq), free(rdk), free(rdv);
}

static void test_one_token(void **s) {
    (void)s;
    check_case(2, 1, 2, 1, 8, 0);
}

static void test_within_one_tile(void **s) {
    (void)s;
    check_case(2, 37, 4, 2, 16, 0);
}

static void test_across_tiles(void **s) {
    (void)s;
    check_case(1, 2 * DAM_ATTN_TILE + 45, 4, 2, 16, 0); /* two full tiles and a partial one */
}

static void test_windows_across_tiles(void **s) {
    (void)s;
    int T = 2 * DAM_ATTN_TILE + 45;
    check_case(1, T, 2, 1, 8, 37);                 /* shorter than a tile */
    check_case(1, T, 2, 1, 8, DAM_ATTN_TILE);      /* exactly a tile */
    check_case(1, T, 2, 1, 8, DAM_ATTN_TILE + 61); /* longer than a tile */
    check_case(2, DAM_ATTN_TILE, 3, 3, 8, 5);      /* one full tile, no GQA */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_token),
        cmocka_unit_test(test_within_one_tile),
        cmocka_unit_test(test_across_tiles),
        cmocka_unit_test(test_windows_across_tiles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
