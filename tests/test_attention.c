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

#include "attn_ref.h"
#include "backend.h"

/* The CPU backend's attention tile (backend_cpu.c ATTN_TILE, through cpu_attention_tile): the cases
 * are sized from it, and each asserts where it stands against it (one tile, a partial one, across
 * tiles), so that a changed tile cannot turn an "across tiles" case into one inside a single tile. */
static int tile(void) { return cpu_attention_tile(); }

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
    AttnRef r = {.s = {B, T, H, KV, hd, window, 1.0f / sqrtf((float)hd)}};
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
    attn_ref_forward(&r, q, k, v, ro, rl);
    attn_ref_backward(&r, q, k, v, dout, rdq, rdk, rdv);
    double e[5] = {rel_err(out, ro, r.nq), rel_err(lse, rl, nl), rel_err(dq, rdq, r.nq),
                   rel_err(dk, rdk, r.nk), rel_err(dv, rdv, r.nk)};
    const char *names[5] = {"out", "lse", "dq", "dk", "dv"};
    for (int i = 0; i < 5; i++) {
        printf("%s B=%d T=%d (%d tile(s) of %d) H=%d KV=%d hd=%d window=%d: %s rel err %.2e\n",
               e[i] < 2e-6 ? "OK    " : "NOT OK", B, T, (T + tile() - 1) / tile(), tile(), H, KV, hd, window,
               names[i], e[i]);
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
    int T = 37;
    assert_true(T < tile()); /* a partial tile */
    check_case(2, T, 4, 2, 16, 0);
}

/* Two full tiles and a partial one: T > 2 tiles, not a multiple of the tile. */
static int across_T(void) {
    int T = 2 * tile() + 45;
    assert_true(T > 2 * tile() && T % tile() != 0);
    return T;
}

static void test_across_tiles(void **s) {
    (void)s;
    check_case(1, across_T(), 4, 2, 16, 0);
}

static void test_windows_across_tiles(void **s) {
    (void)s;
    int T = across_T(), shorter = 37, longer = tile() + 61;
    assert_true(shorter < tile() && longer > tile() && longer < T); /* windows that end inside T */
    check_case(1, T, 2, 1, 8, shorter);                             /* shorter than a tile */
    check_case(1, T, 2, 1, 8, tile());                              /* exactly a tile */
    check_case(1, T, 2, 1, 8, longer);                              /* longer than a tile */
    check_case(2, tile(), 3, 3, 8, 5);                              /* one full tile, no GQA */
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
