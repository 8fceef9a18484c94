/* test_cpu_threads.c — the CPU backend's thread pool and its bf16 GEMMs.
 *
 * - The pool: every part runs exactly once, on any thread count, on its own threads and on the
 *   OpenMP team; pool_split tiles a range.
 * - Threads change no result: every op the pool runs gives bit-identical outputs with 1 thread and
 *   with 3 (DAM_CPU_THREADS; sizes large enough that every op splits), including the reductions
 *   (coefficient gradients over 300 rows, RMSNorm's weight gradient, column sums, loss sums); and
 *   with 3 threads of the OpenMP team the pool moves to under bf16 GEMMs (pool_use_openmp).
 * - The coefficient gradient, summed in blocks of rows, against a double-precision sum over the
 *   rows: within the one final rounding to fp32 (plus double's own, 2^-50 of Σ|w·g|).
 * - Materializing into bf16 (the GEMM weights under bf16 GEMMs) is the fp32 merge rounded once, bit
 *   for bit; a bf16 teacher's weight (one source, coefficient 1) comes out as stored.
 * - bf16 GEMM inputs (parallel.cpu_matmul "bf16", when built with oneDNN): each of the three GEMMs
 *   against a double-precision reference of the fp32 inputs within a bound derived from rounding:
 *   an input rounded to bf16 (8 significant bits, round to nearest) carries a relative error of at
 *   most u = 2^-9, a product of two at most 2u + u², and the fp32 accumulation of K terms adds at
 *   most K·2^-24 relative to Σ|a·b| (the classical γ_K bound); so
 *       |y − y_exact| <= (2u + u² + K·2^-24) · Σ_k |a_k·b_k|   element by element.
 *   On inputs exactly representable in bf16 (small integers) with exact sums the result equals the
 *   fp32 GEMM's bit for bit, which pins the operands' layouts (transposes, leading dimensions).
 *   The bf16 copy of a weight that the backend reuses is made again after the weight is written. A
 *   BF16 weight buffer gives the same bits as the F32 buffer it was rounded from.
 *   Attention stays fp32 in bf16 mode (its GEMMs then run in oneDNN's sgemm). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend.h"
#include "threadpool.h"
#include "test_dev.h"
#include "test_util.h"

/* ---------------------------------------------------------------- the pool */

typedef struct {
    int *count;
    int threads;
    int bad_thread;
} CountJob;

static void count_part(void *arg, int part, int thread) {
    CountJob *j = arg;
    __atomic_fetch_add(&j->count[part], 1, __ATOMIC_RELAXED);
    if (thread < 0 || thread >= j->threads) __atomic_store_n(&j->bad_thread, 1, __ATOMIC_RELAXED);
}

static void test_pool_runs_every_part_once(void **state) {
    const int threads[] = {1, 2, 3, 5}, parts[] = {0, 1, 2, 7, 64, 1000};
    for (size_t a = 0; a < 2 * sizeof threads / sizeof *threads; a++) {
        ThreadPool *p = pool_new(threads[a / 2]);
        if (a % 2 && !pool_use_openmp(p)) { /* the second time on the OpenMP team, where built */
            pool_free(p);
            continue;
        }
        assert_int_equal(pool_threads(p), threads[a / 2]);
        for (int rep = 0; rep < 20; rep++) /* again and again: the workers' wake-up and hand-back */
            for (size_t b = 0; b < sizeof parts / sizeof *parts; b++) {
                int n = parts[b], *count = calloc((size_t)n + 1, sizeof(int));
                CountJob j = {count, threads[a / 2], 0};
                pool_run(p, n, count_part, &j);
                for (int i = 0; i < n; i++)
                    if (count[i] != 1)
                        fail_msg("%d threads%s, %d parts: part %d ran %d times", threads[a / 2],
                                 a % 2 ? " (OpenMP)" : "", n, i, count[i]);
                assert_int_equal(j.bad_thread, 0);
                free(count);
            }
        pool_free(p);
    }
}

static void test_pool_split_tiles(void **state) {
    const size_t ns[] = {0, 1, 5, 64, 1001};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (int parts = 1; parts <= 9; parts++) {
            size_t next = 0;
            for (int k = 0; k < parts; k++) {
                size_t lo, hi;
                pool_split(ns[a], parts, k, &lo, &hi);
                assert_int_equal(lo, next);
                assert_true(hi - lo <= ns[a] / (size_t)parts + 1 && hi - lo >= ns[a] / (size_t)parts);
                next = hi;
            }
            assert_int_equal(next, ns[a]);
        }
}

/* ---------------------------------------------------------------- devices */

/* A CPU context with `threads` threads (DAM_CPU_THREADS is read when a context is made). */
static Dev dev_threads(int threads) {
    char v[16];
    snprintf(v, sizeof v, "%d", threads);
    setenv("DAM_CPU_THREADS", v, 1);
    Dev d = {backend_cpu(), backend_cpu()->ctx_new(0)};
    unsetenv("DAM_CPU_THREADS");
    return d;
}

static float *down(Dev *d, DevBuf b, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    d->be->download(d->ctx, h, DAM_F32, b, n);
    return h;
}

static void expect_identical(const char *what, Dev *a, DevBuf ba, Dev *b, DevBuf bb, size_t n) {
    float *x = down(a, ba, n), *y = down(b, bb, n);
    for (size_t i = 0; i < n; i++)
        if (memcmp(&x[i], &y[i], sizeof(float)) != 0)
            fail_msg("%s: element %zu differs between 1 and 3 threads: %.9g vs %.9g", what, i, x[i], y[i]);
    free(x), free(y);
}

/* ---------------------------------------------------------------- threads change nothing */

/* A context with bf16 GEMMs, whose pool runs on the OpenMP team (pool_use_openmp); ctx NULL where
 * that is not built or this CPU cannot run bf16 GEMMs. */
static Dev dev_bf16(int threads) {
    Dev d = {backend_cpu(), NULL};
#ifdef DAM_WITH_DNNL
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx512f")) return d;
#endif
    d = dev_threads(threads);
    d.be->set_gemm_inputs(d.ctx, DAM_BF16);
#endif
    return d;
}

enum { ROWS = 300, COLS = 200, NSRC = 3 };

/* acc = fc + Σ_r W_i[r, j]·G[r, j] (per column) against the same sum in double over the rows in
 * order: the backend rounds each product to fp32 (2^-24 of Σ|w·g| in all), sums in double (2^-50 of
 * Σ|w·g| covers 300 terms) and rounds once to fp32; a lost or repeated block of rows is far outside. */
static void expect_coef_grad_exact(Dev *d, DevBuf acc, uint16_t *const src[NSRC], const float *fc,
                                   const float *g) {
    float *got = malloc((size_t)NSRC * COLS * sizeof(float));
    d->be->download(d->ctx, got, DAM_F32, acc, (size_t)NSRC * COLS);
    for (int i = 0; i < NSRC; i++)
        for (int j = 0; j < COLS; j++) {
            double s = 0, sa = 0;
            for (int r = 0; r < ROWS; r++) {
                double p = (double)dam_bf16_to_f32(src[i][(size_t)r * COLS + j]) * g[(size_t)r * COLS + j];
                s += p, sa += fabs(p);
            }
            double want = (double)fc[i * COLS + j] + s, e = fabs(got[i * COLS + j] - want);
            double bound = ldexp(fabs(want) + fabs((float)s) + fabs(fc[i * COLS + j]), -24) + ldexp(sa, -24) +
                           ldexp(sa, -50);
            if (e > bound)
                fail_msg("dam_coef_grad source %d column %d: %.9g, want %.9g (bound %.3g)", i, j,
                         got[i * COLS + j], want, bound);
        }
    free(got);
}

/* The DAM ops on one device; outputs left in out[]. Sources are bf16 as stored. */
static void dam_ops(Dev *d, uint16_t *const src[NSRC], const float *fc_h, const float *g_h, DevBuf out[4]) {
    SrcWeight s[NSRC];
    for (int i = 0; i < NSRC; i++)
        s[i] = d->be->upload_source(d->ctx, src[i], DAM_BF16, ROWS, COLS, COLS, "src");
    DevBuf fc = up(d, fc_h, (size_t)NSRC * COLS), g = up(d, g_h, (size_t)ROWS * COLS);
    out[0] = d->be->alloc(d->ctx, (size_t)ROWS * COLS, DAM_F32, "merged");
    d->be->dam_materialize(d->ctx, out[0], s, NSRC, fc, ROWS, COLS, 0);
    out[1] = d->be->alloc(d->ctx, (size_t)ROWS * COLS, DAM_F32, "merged scalar");
    d->be->dam_materialize(d->ctx, out[1], s, NSRC, fc, ROWS, COLS, 1);
    out[2] = up(d, fc_h, (size_t)NSRC * COLS); /* accumulated onto */
    d->be->dam_coef_grad(d->ctx, out[2], s, NSRC, g, ROWS, COLS, 0);
    out[3] = up(d, fc_h, NSRC);
    d->be->dam_coef_grad(d->ctx, out[3], s, NSRC, g, ROWS, COLS, 1);
    d->be->free(d->ctx, &fc), d->be->free(d->ctx, &g);
}

static void test_dam_ops_threads(void **state) {
    dam_rng r;
    dam_rng_seed(&r, 11);
    uint16_t *src[NSRC];
    for (int i = 0; i < NSRC; i++) {
        float *w = randv(&r, (size_t)ROWS * COLS, 0.5f);
        src[i] = malloc((size_t)ROWS * COLS * sizeof(uint16_t));
        for (size_t k = 0; k < (size_t)ROWS * COLS; k++) src[i][k] = dam_f32_to_bf16(w[k]);
        free(w);
    }
    float *fc = randv(&r, (size_t)NSRC * COLS, 1), *g = randv(&r, (size_t)ROWS * COLS, 1);
    Dev one = dev_threads(1);
    DevBuf a[4];
    dam_ops(&one, src, fc, g, a);
    const char *what[] = {"dam_materialize", "dam_materialize (scalar)", "dam_coef_grad",
                          "dam_coef_grad (scalar)"};
    const size_t n[] = {(size_t)ROWS * COLS, (size_t)ROWS * COLS, (size_t)NSRC * COLS, NSRC};
    for (int openmp = 0; openmp < 2; openmp++) {
        Dev three = openmp ? dev_bf16(3) : dev_threads(3);
        if (!three.ctx) continue;
        DevBuf b[4];
        dam_ops(&three, src, fc, g, b);
        for (int k = 0; k < 4; k++) {
            expect_identical(what[k], &one, a[k], &three, b[k], n[k]);
            three.be->free(three.ctx, &b[k]);
        }
        three.be->ctx_free(three.ctx);
    }
    expect_coef_grad_exact(&one, a[2], src, fc, g);
    for (int k = 0; k < 4; k++) one.be->free(one.ctx, &a[k]);
    one.be->ctx_free(one.ctx);
    for (int i = 0; i < NSRC; i++) free(src[i]);
    free(fc), free(g);
}

/* Materializing into a BF16 buffer is the F32 merge rounded once (both coefficient kinds, 1 and 3
 * threads); one bf16 source with the scalar coefficient 1 (a teacher) is copied as stored. */
static void test_materialize_bf16_output(void **state) {
    dam_rng r;
    dam_rng_seed(&r, 17);
    size_t n = (size_t)ROWS * COLS;
    uint16_t *src[NSRC];
    for (int i = 0; i < NSRC; i++) {
        float *w = randv(&r, n, 0.5f);
        src[i] = malloc(n * sizeof(uint16_t));
        for (size_t k = 0; k < n; k++) src[i][k] = dam_f32_to_bf16(w[k]);
        free(w);
    }
    float *fc = randv(&r, (size_t)NSRC * COLS, 1), one_coef = 1.0f;
    uint16_t *got = malloc(n * sizeof(uint16_t));
    float *want = malloc(n * sizeof(float));
    for (int threads = 1; threads <= 3; threads += 2) {
        Dev d = dev_threads(threads);
        SrcWeight s[NSRC];
        for (int i = 0; i < NSRC; i++)
            s[i] = d.be->upload_source(d.ctx, src[i], DAM_BF16, ROWS, COLS, COLS, "src");
        DevBuf FC = up(&d, fc, (size_t)NSRC * COLS), ONE = up(&d, &one_coef, 1);
        DevBuf m32 = d.be->alloc(d.ctx, n, DAM_F32, "merged"),
               m16 = d.be->alloc(d.ctx, n, DAM_BF16, "merged");
        for (int scalar = 0; scalar <= 2; scalar++) { /* 2: the teacher's copy */
            int ns = scalar == 2 ? 1 : NSRC;
            DevBuf coef = scalar == 2 ? ONE : FC;
            d.be->dam_materialize(d.ctx, m32, s, ns, coef, ROWS, COLS, scalar > 0);
            d.be->dam_materialize(d.ctx, m16, s, ns, coef, ROWS, COLS, scalar > 0);
            d.be->download(d.ctx, want, DAM_F32, m32, n);
            d.be->download(d.ctx, got, DAM_BF16, m16, n);
            for (size_t k = 0; k < n; k++) {
                uint16_t w16 = scalar == 2 ? src[0][k] : dam_f32_to_bf16(want[k]);
                if (got[k] != w16)
                    fail_msg("materialize into bf16 (%s, %d threads): element %zu is %#x, want %#x",
                             scalar == 2 ? "teacher copy"
                             : scalar    ? "scalar"
                                         : "per column",
                             threads, k, got[k], w16);
            }
        }
        DevBuf fr[] = {FC, ONE, m32, m16};
        for (int i = 0; i < 4; i++) d.be->free(d.ctx, &fr[i]);
        d.be->ctx_free(d.ctx);
    }
    for (int i = 0; i < NSRC; i++) free(src[i]);
    free(fc), free(got), free(want);
}

enum { T = 203, D = 300, H = 5, HD = 60, NE = 100003 };

/* Norms, rope, SwiGLU, add, scale and column sums on one device; outputs in out[]. */
static void layer_ops(Dev *d, const float *x_h, const float *y_h, const float *w_h, const float *cs_h,
                      DevBuf out[9]) {
    const Backend *be = d->be;
    BackendCtx *c = d->ctx;
    DevBuf x = up(d, x_h, (size_t)T * D), w = up(d, w_h, D), rstd = be->alloc(c, T, DAM_F32, "rstd");
    out[0] = be->alloc(c, (size_t)T * D, DAM_F32, "norm out");
    be->rmsnorm_fwd(c, out[0], rstd, x, w, T, D, 1e-5f);
    out[1] = up(d, y_h, (size_t)T * D); /* dx accumulated onto */
    out[2] = up(d, w_h, D);             /* dw accumulated onto */
    DevBuf dout = up(d, y_h + 7, (size_t)T * D);
    be->rmsnorm_bwd(c, out[1], out[2], dout, x, rstd, w, T, D, 1);
    out[3] = up(d, x_h, (size_t)T * H * HD); /* D == H * HD */
    DevBuf cs = up(d, cs_h, (size_t)T * HD / 2), sn = up(d, cs_h + 11, (size_t)T * HD / 2);
    be->rope(c, out[3], cs, sn, T, T, H, HD, 0);
    DevBuf gate = up(d, x_h, NE), upv = up(d, y_h, NE), dact = up(d, x_h + 3, NE);
    out[4] = be->alloc(c, NE, DAM_F32, "act");
    be->swiglu_fwd(c, out[4], gate, upv, NE);
    out[5] = be->alloc(c, NE, DAM_F32, "dgate"), out[6] = be->alloc(c, NE, DAM_F32, "dup");
    be->swiglu_bwd(c, out[5], out[6], dact, gate, upv, NE);
    out[7] = up(d, y_h, NE);
    be->add(c, out[7], gate, NE);
    be->scale(c, out[7], 0.37f, NE);
    out[8] = be->alloc(c, D, DAM_F32, "colsum");
    be->colsum(c, out[8], x, T, D);
    DevBuf fr[] = {x, w, rstd, dout, cs, sn, gate, upv, dact};
    for (size_t i = 0; i < sizeof fr / sizeof *fr; i++) be->free(c, &fr[i]);
}

static void test_layer_ops_threads(void **state) {
    dam_rng r;
    dam_rng_seed(&r, 12);
    float *x = randv(&r, NE + 16, 1), *y = randv(&r, NE + 16, 1), *w = randv(&r, D, 1),
          *cs = randv(&r, (size_t)T * HD, 1);
    Dev one = dev_threads(1);
    DevBuf a[9];
    layer_ops(&one, x, y, w, cs, a);
    const char *what[] = {"rmsnorm_fwd",      "rmsnorm_bwd dx", "rmsnorm_bwd dw", "rope",  "swiglu_fwd",
                          "swiglu_bwd dgate", "swiglu_bwd dup", "add, scale",     "colsum"};
    const size_t n[] = {(size_t)T * D, (size_t)T * D, D, (size_t)T * D, NE, NE, NE, NE, D};
    for (int openmp = 0; openmp < 2; openmp++) {
        Dev three = openmp ? dev_bf16(3) : dev_threads(3);
        if (!three.ctx) continue;
        DevBuf b[9];
        layer_ops(&three, x, y, w, cs, b);
        for (int k = 0; k < 9; k++) {
            expect_identical(what[k], &one, a[k], &three, b[k], n[k]);
            three.be->free(three.ctx, &b[k]);
        }
        three.be->ctx_free(three.ctx);
    }
    for (int k = 0; k < 9; k++) one.be->free(one.ctx, &a[k]);
    one.be->ctx_free(one.ctx);
    free(x), free(y), free(w), free(cs);
}

enum { LC = 9, LV = 5003, LK = 17 };

/* Full-vocabulary KL + entropy + MSE, then top-K KL; dz of both and the sums. */
static void loss_ops(Dev *d, const float *z_h, const float *zt_h, DevBuf dz[2], LossSums sums[2]) {
    const Backend *be = d->be;
    BackendCtx *c = d->ctx;
    DevBuf z = up(d, z_h, (size_t)LC * LV), zt = up(d, zt_h, (size_t)LC * LV);
    DevBuf idx = be->alloc(c, (size_t)LC * LK, DAM_I32, "idx"),
           val = be->alloc(c, (size_t)LC * LK, DAM_F32, "val");
    LossChunkParams p = {
        .tau = 2.0f, .kl = 1, .mse = 0.3f, .entropy = 0.2f, .K = 0, .inv_n = 1.0f / 13, .V_full = LV};
    dz[0] = be->alloc(c, (size_t)LC * LV, DAM_F32, "dz");
    be->loss_rows(c, dz[0], &sums[0], z, zt, idx, val, LC, LV, &p, 0.5f);
    be->loss_topk(c, idx, val, zt, LC, LV, LK, 0, NULL);
    p.K = LK, p.mse = 0, p.entropy = 0;
    dz[1] = be->alloc(c, (size_t)LC * LV, DAM_F32, "dz topk");
    be->loss_rows(c, dz[1], &sums[1], z, zt, idx, val, LC, LV, &p, 1.0f);
    DevBuf fr[] = {z, zt, idx, val};
    for (size_t i = 0; i < 4; i++) be->free(c, &fr[i]);
}

static void test_losses_threads(void **state) {
    dam_rng r;
    dam_rng_seed(&r, 13);
    float *z = randv(&r, (size_t)LC * LV, 3), *zt = randv(&r, (size_t)LC * LV, 3);
    Dev one = dev_threads(1), three = dev_threads(3);
    DevBuf a[2], b[2];
    LossSums sa[2] = {{0.125, 0.25, 0.5}, {0.125, 0, 0}}, sb[2] = {{0.125, 0.25, 0.5}, {0.125, 0, 0}};
    loss_ops(&one, z, zt, a, sa);
    loss_ops(&three, z, zt, b, sb);
    for (int k = 0; k < 2; k++) {
        expect_identical(k ? "loss_rows dz (top-K)" : "loss_rows dz", &one, a[k], &three, b[k],
                         (size_t)LC * LV);
        if (memcmp(&sa[k], &sb[k], sizeof(LossSums)) != 0)
            fail_msg("loss sums %d differ between 1 and 3 threads: kl %.17g vs %.17g", k, sa[k].kl, sb[k].kl);
        one.be->free(one.ctx, &a[k]), three.be->free(three.ctx, &b[k]);
    }
    assert_true(sa[0].kl > 0.125 && sa[0].mse > 0.25 && sa[1].kl > 0.125); /* the terms were on */
    one.be->ctx_free(one.ctx), three.be->ctx_free(three.ctx);
    free(z), free(zt);
}

/* ---------------------------------------------------------------- bf16 GEMMs */

#ifdef DAM_WITH_DNNL
enum { MT = 37, MIN = 301, MOUT = 129 };

/* The bf16 GEMMs need AVX-512 (the backend refuses them otherwise): skipped on other CPUs. */
static int bf16_setup(void **state) {
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx512f")) skip();
#endif
    return 0;
}

/* y = x·Wᵀ (xwt), dx = dy·W (dyw), G = dyᵀ·x (dytx) in double from the fp32 inputs, with
 * Σ|a·b| per element for the bound. which: 0 xwt, 1 dyw, 2 dytx. */
static void gemm_ref(int which, const float *x, const float *w, const float *dy, double *ref,
                     double *absref) {
    int R = which == 2 ? MOUT : MT,
        Cn = which == 1   ? MIN
             : which == 0 ? MOUT
                          : MIN,
        K = which == 0   ? MIN
            : which == 1 ? MOUT
                         : MT;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < Cn; j++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) {
                double a, b;
                if (which == 0)
                    a = x[(size_t)i * MIN + k], b = w[(size_t)j * MIN + k];
                else if (which == 1)
                    a = dy[(size_t)i * MOUT + k], b = w[(size_t)k * MIN + j];
                else
                    a = dy[(size_t)k * MOUT + i], b = x[(size_t)k * MIN + j];
                s += a * b, sa += fabs(a * b);
            }
            ref[(size_t)i * Cn + j] = s, absref[(size_t)i * Cn + j] = sa;
        }
}

static void run_gemm(Dev *d, int which, DevBuf out, DevBuf x, DevBuf w, DevBuf dy, int acc) {
    if (which == 0) d->be->matmul_xwt(d->ctx, out, x, w, MT, MIN, MOUT, acc);
    if (which == 1) d->be->matmul_dyw(d->ctx, out, dy, w, MT, MIN, MOUT, acc);
    if (which == 2) d->be->matmul_dytx(d->ctx, out, dy, x, MT, MIN, MOUT, acc);
}

static const size_t gemm_out_n[3] = {(size_t)MT * MOUT, (size_t)MT *MIN, (size_t)MOUT *MIN};
static const int gemm_k[3] = {MIN, MOUT, MT};
static const char *const gemm_name[3] = {"matmul_xwt", "matmul_dyw", "matmul_dytx"};

static void test_bf16_gemm_bound(void **state) {
    dam_rng r;
    dam_rng_seed(&r, 14);
    float *x = randv(&r, (size_t)MT * MIN, 1), *w = randv(&r, (size_t)MOUT * MIN, 0.1f),
          *dy = randv(&r, (size_t)MT * MOUT, 1), *prev = randv(&r, (size_t)MOUT * MIN, 1);
    Dev d = dev_bf16(2);
    DevBuf X = up(&d, x, (size_t)MT * MIN), W = up(&d, w, (size_t)MOUT * MIN),
           DY = up(&d, dy, (size_t)MT * MOUT);
    const double u = ldexp(1, -9);
    for (int which = 0; which < 3; which++)
        for (int acc = 0; acc <= 1; acc++) {
            size_t n = gemm_out_n[which];
            double *ref = malloc(n * sizeof(double)), *absref = malloc(n * sizeof(double));
            gemm_ref(which, x, w, dy, ref, absref);
            DevBuf out = up(&d, prev, n);
            run_gemm(&d, which, out, X, W, DY, acc);
            float *y = down(&d, out, n);
            double tol_rel = 2 * u + u * u + gemm_k[which] * ldexp(1, -24), worst = 0, maxdiff = 0;
            for (size_t i = 0; i < n; i++) {
                double want = ref[i] + (acc ? prev[i] : 0), err = fabs(y[i] - want);
                /* prev added in fp32: one more rounding of the result */
                double bound =
                    tol_rel * absref[i] + (acc ? ldexp(fabs(want) + fabs(prev[i]), -24) : 0) + 1e-30;
                worst = err / bound > worst ? err / bound : worst;
                maxdiff = err > maxdiff ? err : maxdiff;
            }
            if (worst > 1)
                fail_msg("%s (accumulate %d): error %.3g times the bf16 bound", gemm_name[which], acc, worst);
            /* the inputs were rounded: an fp32 GEMM would be ~2^-24 off, this one much more */
            if (maxdiff < 1e-5)
                fail_msg("%s: bf16 mode gave fp32 accuracy (%.3g): not engaged?", gemm_name[which], maxdiff);
            free(y), free(ref), free(absref);
            d.be->free(d.ctx, &out);
        }
    DevBuf fr[] = {X, W, DY};
    for (int i = 0; i < 3; i++) d.be->free(d.ctx, &fr[i]);
    d.be->ctx_free(d.ctx);
    free(x), free(w), free(dy), free(prev);
}

/* Small integers are exact in bf16 and their products' sums exact in fp32: bf16 and fp32 GEMMs
 * agree bit for bit, which checks every operand's layout. */
static float *small_ints(dam_rng *r, size_t n) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)(dam_rng_uniform(r) * 15) - 7);
    return x;
}

static void test_bf16_gemm_exact_layouts(void **state) {
    dam_rng r;
    dam_rng_seed(&r, 15);
    float *x = small_ints(&r, (size_t)MT * MIN), *w = small_ints(&r, (size_t)MOUT * MIN),
          *dy = small_ints(&r, (size_t)MT * MOUT), *prev = small_ints(&r, (size_t)MOUT * MIN);
    Dev f = dev_threads(1), b = dev_bf16(2);
    for (int which = 0; which < 3; which++)
        for (int acc = 0; acc <= 1; acc++) {
            size_t n = gemm_out_n[which];
            DevBuf of = up(&f, prev, n), ob = up(&b, prev, n);
            DevBuf Xf = up(&f, x, (size_t)MT * MIN), Wf = up(&f, w, (size_t)MOUT * MIN),
                   Df = up(&f, dy, (size_t)MT * MOUT);
            DevBuf Xb = up(&b, x, (size_t)MT * MIN), Wb = up(&b, w, (size_t)MOUT * MIN),
                   Db = up(&b, dy, (size_t)MT * MOUT);
            run_gemm(&f, which, of, Xf, Wf, Df, acc);
            run_gemm(&b, which, ob, Xb, Wb, Db, acc);
            float *yf = down(&f, of, n), *yb = down(&b, ob, n);
            if (memcmp(yf, yb, n * sizeof(float)) != 0)
                fail_msg("%s (accumulate %d): bf16 and fp32 differ on exact inputs", gemm_name[which], acc);
            free(yf), free(yb);
            DevBuf fr[] = {of, Xf, Wf, Df}, br[] = {ob, Xb, Wb, Db};
            for (int i = 0; i < 4; i++) f.be->free(f.ctx, &fr[i]), b.be->free(b.ctx, &br[i]);
        }
    f.be->ctx_free(f.ctx), b.be->ctx_free(b.ctx);
    free(x), free(w), free(dy), free(prev);
}

/* The backend keeps the bf16 copy of a weight between GEMMs; writing the weight (an upload, or a
 * GEMM whose output it is) must make it convert the new values. */
static void test_bf16_weight_copy_refreshed(void **state) {
    dam_rng r;
    dam_rng_seed(&r, 16);
    float *x = small_ints(&r, (size_t)MT * MIN), *w1 = small_ints(&r, (size_t)MOUT * MIN),
          *w2 = small_ints(&r, (size_t)MOUT * MIN), *dy = small_ints(&r, (size_t)MT * MOUT);
    Dev f = dev_threads(1), b = dev_bf16(2);
    size_t n = (size_t)MT * MOUT;
    DevBuf Xf = up(&f, x, (size_t)MT * MIN), Wf = up(&f, w1, (size_t)MOUT * MIN),
           Yf = f.be->alloc(f.ctx, n, DAM_F32, "y");
    DevBuf Xb = up(&b, x, (size_t)MT * MIN), Wb = up(&b, w1, (size_t)MOUT * MIN),
           Yb = b.be->alloc(b.ctx, n, DAM_F32, "y");
    float *hot = calloc(n, sizeof(float));
    for (int o = 0; o < MOUT; o++) hot[(size_t)(o % MT) * MOUT + o] = 1;
    DevBuf Df = up(&f, dy, n), Db = up(&b, dy, n), Hf = up(&f, hot, n), Hb = up(&b, hot, n);
    for (int round = 0; round < 3; round++) {
        run_gemm(&f, 0, Yf, Xf, Wf, Df, 0);
        run_gemm(&b, 0, Yb, Xb, Wb, Db, 0);
        float *yf = down(&f, Yf, n), *yb = down(&b, Yb, n);
        if (memcmp(yf, yb, n * sizeof(float)) != 0)
            fail_msg("round %d: a stale bf16 copy of the weight was used", round);
        free(yf), free(yb);
        if (round == 0) { /* the weight rewritten by an upload */
            f.be->upload(f.ctx, Wf, w2, DAM_F32, (size_t)MOUT * MIN);
            b.be->upload(b.ctx, Wb, w2, DAM_F32, (size_t)MOUT * MIN);
        } else { /* the weight rewritten as a GEMM's output: W = dyᵀ·x with a one-hot dy (row o of W
                  * becomes row o mod MT of x: small integers again, exact in bf16) */
            run_gemm(&f, 2, Wf, Xf, Wf, Hf, 0);
            run_gemm(&b, 2, Wb, Xb, Wb, Hb, 0);
        }
    }
    DevBuf fr[] = {Xf, Wf, Yf, Df, Hf}, br[] = {Xb, Wb, Yb, Db, Hb};
    for (int i = 0; i < 5; i++) f.be->free(f.ctx, &fr[i]), b.be->free(b.ctx, &br[i]);
    f.be->ctx_free(f.ctx), b.be->ctx_free(b.ctx);
    free(x), free(w1), free(w2), free(dy), free(hot);
}

/* A BF16 weight buffer (what the merge writes under bf16 GEMMs) and the F32 buffer it was rounded
 * from give the same bits in each GEMM that reads a weight (random values: the rounding is real). */
static void test_bf16_weight_operand(void **state) {
    dam_rng r;
    dam_rng_seed(&r, 18);
    float *x = randv(&r, (size_t)MT * MIN, 1), *w = randv(&r, (size_t)MOUT * MIN, 0.1f),
          *dy = randv(&r, (size_t)MT * MOUT, 1);
    Dev b = dev_bf16(2);
    assert_int_equal(b.be->weight_dtype(b.ctx), DAM_BF16);
    DevBuf X = up(&b, x, (size_t)MT * MIN), W32 = up(&b, w, (size_t)MOUT * MIN),
           DY = up(&b, dy, (size_t)MT * MOUT);
    DevBuf W16 = b.be->alloc(b.ctx, (size_t)MOUT * MIN, DAM_BF16, "w bf16");
    b.be->copy(b.ctx, W16, W32, (size_t)MOUT * MIN); /* F32 -> BF16: rounded to nearest even */
    for (int which = 0; which < 2; which++) {
        size_t n = gemm_out_n[which];
        DevBuf o32 = b.be->alloc(b.ctx, n, DAM_F32, "y"), o16 = b.be->alloc(b.ctx, n, DAM_F32, "y");
        run_gemm(&b, which, o32, X, W32, DY, 0);
        run_gemm(&b, which, o16, X, W16, DY, 0);
        float *y32 = down(&b, o32, n), *y16 = down(&b, o16, n);
        if (memcmp(y32, y16, n * sizeof(float)) != 0)
            fail_msg("%s: a BF16 weight and its F32 source give different results", gemm_name[which]);
        free(y32), free(y16);
        b.be->free(b.ctx, &o32), b.be->free(b.ctx, &o16);
    }
    DevBuf fr[] = {X, W32, DY, W16};
    for (int i = 0; i < 4; i++) b.be->free(b.ctx, &fr[i]);
    b.be->ctx_free(b.ctx);
    Dev f = dev_threads(1); /* fp32 GEMMs: the weights stay F32 */
    assert_int_equal(f.be->weight_dtype(f.ctx), DAM_F32);
    f.be->ctx_free(f.ctx);
    free(x), free(w), free(dy);
}

/* In bf16 mode attention runs its fp32 GEMMs in oneDNN instead of the BLAS: the same math, fp32
 * rounding apart (relative 1e-5 of the largest value). Two query tiles, grouped KV heads. */
static void test_bf16_mode_attention_fp32(void **state) {
    AttnShape sh = {2, 150, 4, 2, 16, 0, 0.25f};
    size_t nq = (size_t)sh.B * sh.T * sh.H * sh.hd, nk = (size_t)sh.B * sh.T * sh.KV * sh.hd,
           nl = (size_t)sh.B * sh.H * sh.T;
    dam_rng r;
    dam_rng_seed(&r, 17);
    float *q = randv(&r, nq, 1), *k = randv(&r, nk, 1), *v = randv(&r, nk, 1), *g = randv(&r, nq, 1);
    float *res[2][6];
    for (int mode = 0; mode < 2; mode++) {
        Dev d = dev_threads(2);
        if (mode) d.be->set_gemm_inputs(d.ctx, DAM_BF16);
        DevBuf Q = up(&d, q, nq), K = up(&d, k, nk), V = up(&d, v, nk), G = up(&d, g, nq);
        DevBuf O = d.be->alloc(d.ctx, nq, DAM_F32, "out"), L = d.be->alloc(d.ctx, nl, DAM_F32, "lse");
        DevBuf dQ = d.be->alloc(d.ctx, nq, DAM_F32, "dq"), dK = d.be->alloc(d.ctx, nk, DAM_F32, "dk"),
               dV = d.be->alloc(d.ctx, nk, DAM_F32, "dv");
        d.be->attention_fwd(d.ctx, O, L, Q, K, V, &sh);
        d.be->attention_bwd(d.ctx, dQ, dK, dV, G, O, L, Q, K, V, &sh);
        DevBuf outs[6] = {O, L, dQ, dK, dV, Q};
        const size_t ns[6] = {nq, nl, nq, nk, nk, nq};
        for (int i = 0; i < 6; i++) res[mode][i] = down(&d, outs[i], ns[i]);
        DevBuf fr[] = {Q, K, V, G, O, L, dQ, dK, dV};
        for (size_t i = 0; i < sizeof fr / sizeof *fr; i++) d.be->free(d.ctx, &fr[i]);
        d.be->ctx_free(d.ctx);
    }
    const char *what[5] = {"out", "lse", "dq", "dk", "dv"};
    const size_t ns[5] = {nq, nl, nq, nk, nk};
    for (int i = 0; i < 5; i++) {
        double md = 0, mr = 1e-30;
        for (size_t j = 0; j < ns[i]; j++) {
            double e = fabs((double)res[0][i][j] - res[1][i][j]);
            md = e > md || isnan(e) ? e : md;
            mr = fabs(res[0][i][j]) > mr ? fabs(res[0][i][j]) : mr;
        }
        if (!(md <= 1e-5 * mr))
            fail_msg("attention %s: oneDNN's fp32 GEMMs differ by %.3g of %.3g", what[i], md, mr);
    }
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < 6; i++) free(res[m][i]);
    free(q), free(k), free(v), free(g);
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_runs_every_part_once),
        cmocka_unit_test(test_pool_split_tiles),
        cmocka_unit_test(test_dam_ops_threads),
        cmocka_unit_test(test_materialize_bf16_output),
        cmocka_unit_test(test_layer_ops_threads),
        cmocka_unit_test(test_losses_threads),
#ifdef DAM_WITH_DNNL
        cmocka_unit_test_setup(test_bf16_gemm_bound, bf16_setup),
        cmocka_unit_test_setup(test_bf16_gemm_exact_layouts, bf16_setup),
        cmocka_unit_test_setup(test_bf16_weight_copy_refreshed, bf16_setup),
        cmocka_unit_test_setup(test_bf16_weight_operand, bf16_setup),
        cmocka_unit_test_setup(test_bf16_mode_attention_fp32, bf16_setup),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
