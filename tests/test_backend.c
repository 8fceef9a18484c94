/* test_backend.c — the CPU backend's ops against naive references written here (double precision,
 * plain loops), the guard backend against the CPU backend (bit-identical for every op: the same math
 * on mprotected memory), DevBuf views and their bounds errors, dtype and length errors, and the
 * guard's purpose: a host dereference of one of its buffers is a SIGSEGV. Sizes are odd and index
 * lists unsorted on purpose. Attention's math is test_attention.c's; here its guard identity, and
 * its outputs (computed with the vectorized exponential) against a scalar exp() reference. */
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "attn_ref.h"
#include "backend.h"
#include "devcomm.h"
#include "pipeline.h"
#include "test_dev.h"
#include "test_util.h"

/* ---------------------------------------------------------------- helpers */

static Dev dev_new(const Backend *be) { return (Dev){be, be->ctx_new(0)}; }
static void dev_free(Dev *d) { d->be->ctx_free(d->ctx); }

static DevBuf up_i32(Dev *d, const int32_t *h, size_t n) {
    DevBuf b = d->be->alloc(d->ctx, n, DAM_I32, "test");
    d->be->upload(d->ctx, b, h, DAM_I32, n);
    return b;
}

/* b's n floats into a fresh host array, and b freed. */
static float *down(Dev *d, DevBuf *b, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    d->be->download(d->ctx, h, DAM_F32, *b, n);
    d->be->free(d->ctx, b);
    return h;
}

/* Largest |a - ref| relative to the reference's largest magnitude (floor 1e-30). */
static double rel_err(const float *a, const double *ref, size_t n) {
    double md = 0, mr = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a[i] - ref[i]);
        md = isnan(e) || e > md ? (isnan(e) ? INFINITY : e) : md;
        mr = fabs(ref[i]) > mr ? fabs(ref[i]) : mr;
    }
    return md / mr;
}

static void expect_close(const char *what, const float *a, const double *ref, size_t n, double tol) {
    double e = rel_err(a, ref, n);
    if (e > tol) fail_msg("%s: relative error %.3e > %.1e", what, e, tol);
}

static void expect_same(const char *what, const void *a, const void *b, size_t bytes) {
    if (memcmp(a, b, bytes) != 0) fail_msg("%s: the guard backend differs from the CPU backend", what);
}

/* ---------------------------------------------------------------- one op, both backends
 * Each case runs on a Dev and leaves its outputs in host arrays, so that the CPU run is checked
 * against the reference and the guard run against the CPU run. */

typedef struct {
    float *out[4];
    size_t n[4];
    double scalar[2];
} Out;

static void out_free(Out *o) {
    for (int i = 0; i < 4; i++) free(o->out[i]);
}

static void expect_identical(const char *what, const Out *a, const Out *b) {
    for (int i = 0; i < 4; i++) {
        assert_int_equal(a->n[i], b->n[i]);
        if (a->n[i]) expect_same(what, a->out[i], b->out[i], a->n[i] * sizeof(float));
    }
    expect_same(what, a->scalar, b->scalar, sizeof a->scalar);
}

typedef void (*CaseFn)(Dev *d, uint64_t seed, Out *o);

/* The case on the CPU and under the guard: bit-identical. Returns the CPU's outputs. */
static Out both(const char *what, CaseFn fn, uint64_t seed) {
    Dev c = dev_new(backend_cpu()), g = dev_new(backend_guard());
    Out oc = {0}, og = {0};
    fn(&c, seed, &oc);
    fn(&g, seed, &og);
    expect_identical(what, &oc, &og);
    out_free(&og);
    dev_free(&c), dev_free(&g);
    return oc;
}

/* ---------------------------------------------------------------- memory and transfers */

static void test_transfers(void **state) {
    Dev devs[2] = {dev_new(backend_cpu()), dev_new(backend_guard())};
    for (int k = 0; k < 2; k++) {
        Dev *d = &devs[k];
        dam_rng r;
        dam_rng_seed(&r, 1);
        size_t n = 1037;
        float *x = randv(&r, n, 3.0f), *y = malloc(n * sizeof(float));
        DevBuf a = d->be->alloc(d->ctx, n, DAM_F32, "a"), h = d->be->alloc(d->ctx, n, DAM_BF16, "h");
        d->be->download(d->ctx, y, DAM_F32, a, n); /* alloc zeroes */
        for (size_t i = 0; i < n; i++) assert_true(y[i] == 0.0f);
        d->be->upload(d->ctx, a, x, DAM_F32, n);
        d->be->copy(d->ctx, h, a, n); /* F32 -> BF16 rounds to nearest even */
        uint16_t *hb = malloc(n * sizeof(uint16_t));
        d->be->download(d->ctx, hb, DAM_BF16, h, n);
        for (size_t i = 0; i < n; i++) assert_int_equal(hb[i], dam_f32_to_bf16(x[i]));
        d->be->download(d->ctx, y, DAM_F32, h, n); /* BF16 -> F32 on the way out */
        for (size_t i = 0; i < n; i++) assert_true(y[i] == dam_bf16_to_f32(dam_f32_to_bf16(x[i])));
        /* upload into a view: only its elements change */
        d->be->fill(d->ctx, a, 2.5f, n);
        d->be->upload(d->ctx, devbuf_slice(a, 100, 37), x, DAM_F32, 37);
        d->be->download(d->ctx, y, DAM_F32, a, n);
        for (size_t i = 0; i < n; i++) assert_true(y[i] == (i >= 100 && i < 137 ? x[i - 100] : 2.5f));
        d->be->fill(d->ctx, devbuf_at(a, n - 5), 0.0f, 5);
        d->be->download(d->ctx, y, DAM_F32, devbuf_at(a, n - 6), 6);
        assert_true(y[0] == 2.5f && y[1] == 0 && y[5] == 0);
        /* I32 through upload, fill and copy */
        int32_t iv[7] = {-3, 0, 7, 1 << 30, -1, 5, 2}, io[7];
        DevBuf ib = up_i32(d, iv, 7), ib2 = d->be->alloc(d->ctx, 7, DAM_I32, "ib2");
        d->be->copy(d->ctx, ib2, ib, 7);
        d->be->download(d->ctx, io, DAM_I32, ib2, 7);
        assert_memory_equal(io, iv, sizeof iv);
        d->be->fill(d->ctx, ib2, 9.0f, 7);
        d->be->download(d->ctx, io, DAM_I32, ib2, 7);
        for (int i = 0; i < 7; i++) assert_int_equal(io[i], 9);
        /* events: elapsed time is not negative */
        BackendEvent *e0 = d->be->event_new(d->ctx), *e1 = d->be->event_new(d->ctx);
        d->be->event_record(d->ctx, e0);
        d->be->synchronize(d->ctx);
        d->be->event_record(d->ctx, e1);
        assert_true(d->be->event_elapsed(d->ctx, e0, e1) >= 0);
        d->be->event_free(d->ctx, e0), d->be->event_free(d->ctx, e1);
        d->be->free(d->ctx, &a), d->be->free(d->ctx, &h), d->be->free(d->ctx, &ib), d->be->free(d->ctx, &ib2);
        assert_null(a.ptr);
        free(x), free(y), free(hb);
        dev_free(d);
    }
}

static void test_devbuf_views(void **state) {
    float mem[10];
    DevBuf b = {mem, 10, DAM_F32, DAM_DEVICE_CPU};
    DevBuf s = devbuf_slice(b, 3, 4);
    assert_ptr_equal(s.ptr, mem + 3);
    assert_int_equal(s.n, 4);
    DevBuf t = devbuf_at(s, 4); /* the empty tail is a valid view */
    assert_int_equal(t.n, 0);
    assert_ptr_equal(t.ptr, mem + 7);
    uint16_t h[6];
    DevBuf hb = {h, 6, DAM_BF16, DAM_DEVICE_CPU};
    assert_ptr_equal(devbuf_at(hb, 5).ptr, h + 5); /* element size of the dtype */
}

/* ---------------------------------------------------------------- element-wise ops */

enum { ROWS = 37, COLS = 53 };

static void case_elementwise(Dev *d, uint64_t seed, Out *o) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    size_t n = ROWS * COLS;
    float *x = randv(&r, n, 1), *y = randv(&r, n, 1), *b = randv(&r, COLS, 1);
    DevBuf X = up(d, x, n), Y = up(d, y, n), Bb = up(d, b, COLS),
           S = d->be->alloc(d->ctx, COLS, DAM_F32, "s");
    d->be->add(d->ctx, Y, X, n);
    d->be->scale(d->ctx, Y, 0.75f, n);
    d->be->add_bias(d->ctx, Y, Bb, ROWS, COLS);
    d->be->colsum(d->ctx, S, Y, ROWS, COLS);
    o->out[0] = down(d, &Y, n), o->n[0] = n;
    o->out[1] = down(d, &S, COLS), o->n[1] = COLS;
    d->be->free(d->ctx, &X), d->be->free(d->ctx, &Bb);
    free(x), free(y), free(b);
}

static void test_elementwise(void **state) {
    Out o = both("add/scale/add_bias/colsum", case_elementwise, 2);
    dam_rng r;
    dam_rng_seed(&r, 2);
    size_t n = ROWS * COLS;
    float *x = randv(&r, n, 1), *y = randv(&r, n, 1), *b = randv(&r, COLS, 1);
    double *ref = malloc(n * sizeof(double)), cs[COLS] = {0};
    for (size_t i = 0; i < n; i++) ref[i] = ((double)y[i] + x[i]) * 0.75 + b[i % COLS];
    for (size_t i = 0; i < n; i++) cs[i % COLS] += o.out[0][i];
    expect_close("add/scale/add_bias", o.out[0], ref, n, 1e-6);
    expect_close("colsum", o.out[1], cs, COLS, 1e-6);
    free(x), free(y), free(b), free(ref);
    out_free(&o);
}

static const int32_t ROW_IDS[] = {5, 0, 36, 17, 17, 2, 30, 11, 8}; /* unsorted, one repeated (gather) */
enum { N_IDS = 9 };

static void case_gather_scatter(Dev *d, uint64_t seed, Out *o) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    float *x = randv(&r, ROWS * COLS, 1);
    DevBuf X = up(d, x, ROWS * COLS), G = d->be->alloc(d->ctx, N_IDS * COLS, DAM_F32, "g");
    DevBuf Z = d->be->alloc(d->ctx, ROWS * COLS, DAM_F32, "z");
    d->be->gather_rows(d->ctx, G, X, ROW_IDS, N_IDS, COLS);
    static const int32_t dst[] = {36, 1, 3, 12, 7, 0, 20, 33, 2}; /* scatter: distinct rows */
    d->be->scatter_rows(d->ctx, Z, G, dst, N_IDS, COLS);
    o->out[0] = down(d, &G, N_IDS * COLS), o->n[0] = N_IDS * COLS;
    o->out[1] = down(d, &Z, ROWS * COLS), o->n[1] = ROWS * COLS;
    d->be->free(d->ctx, &X);
    free(x);
}

static void test_gather_scatter(void **state) {
    Out o = both("gather_rows/scatter_rows", case_gather_scatter, 3);
    dam_rng r;
    dam_rng_seed(&r, 3);
    float *x = randv(&r, ROWS * COLS, 1);
    static const int32_t dst[] = {36, 1, 3, 12, 7, 0, 20, 33, 2};
    for (int i = 0; i < N_IDS; i++)
        for (int j = 0; j < COLS; j++) {
            assert_true(o.out[0][i * COLS + j] == x[ROW_IDS[i] * COLS + j]);
            assert_true(o.out[1][dst[i] * COLS + j] == x[ROW_IDS[i] * COLS + j]);
        }
    int untouched = 0;
    for (int i = 0; i < ROWS * COLS; i++) untouched += o.out[1][i] == 0.0f;
    assert_int_equal(untouched, (ROWS - N_IDS) * COLS);
    free(x);
    out_free(&o);
}

/* ---------------------------------------------------------------- GEMMs */

enum { MT = 13, MIN = 29, MOUT = 19 };

static void case_matmul(Dev *d, uint64_t seed, Out *o) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    float *x = randv(&r, MT * MIN, 1), *w = randv(&r, MOUT * MIN, 1), *dy = randv(&r, MT * MOUT, 1);
    DevBuf X = up(d, x, MT * MIN), W = up(d, w, MOUT * MIN), DY = up(d, dy, MT * MOUT);
    DevBuf Y = up(d, dy, MT * MOUT), DX = up(d, x, MT * MIN), GW = up(d, w, MOUT * MIN);
    d->be->matmul_xwt(d->ctx, Y, X, W, MT, MIN, MOUT, 1);    /* y = dy + x·wᵀ */
    d->be->matmul_dyw(d->ctx, DX, DY, W, MT, MIN, MOUT, 0);  /* dx = dy·w */
    d->be->matmul_dytx(d->ctx, GW, DY, X, MT, MIN, MOUT, 1); /* g = w + dyᵀ·x */
    o->out[0] = down(d, &Y, MT * MOUT), o->n[0] = MT * MOUT;
    o->out[1] = down(d, &DX, MT * MIN), o->n[1] = MT * MIN;
    o->out[2] = down(d, &GW, MOUT * MIN), o->n[2] = MOUT * MIN;
    d->be->free(d->ctx, &X), d->be->free(d->ctx, &W), d->be->free(d->ctx, &DY);
    free(x), free(w), free(dy);
}

static void test_matmul(void **state) {
    Out o = both("matmul_*", case_matmul, 4);
    dam_rng r;
    dam_rng_seed(&r, 4);
    float *x = randv(&r, MT * MIN, 1), *w = randv(&r, MOUT * MIN, 1), *dy = randv(&r, MT * MOUT, 1);
    double y[MT * MOUT], dx[MT * MIN], g[MOUT * MIN];
    for (int t = 0; t < MT; t++)
        for (int k = 0; k < MOUT; k++) {
            double s = dy[t * MOUT + k];
            for (int i = 0; i < MIN; i++) s += (double)x[t * MIN + i] * w[k * MIN + i];
            y[t * MOUT + k] = s;
        }
    for (int t = 0; t < MT; t++)
        for (int i = 0; i < MIN; i++) {
            double s = 0;
            for (int k = 0; k < MOUT; k++) s += (double)dy[t * MOUT + k] * w[k * MIN + i];
            dx[t * MIN + i] = s;
        }
    for (int k = 0; k < MOUT; k++)
        for (int i = 0; i < MIN; i++) {
            double s = w[k * MIN + i];
            for (int t = 0; t < MT; t++) s += (double)dy[t * MOUT + k] * x[t * MIN + i];
            g[k * MIN + i] = s;
        }
    expect_close("matmul_xwt", o.out[0], y, MT * MOUT, 1e-5);
    expect_close("matmul_dyw", o.out[1], dx, MT * MIN, 1e-5);
    expect_close("matmul_dytx", o.out[2], g, MOUT * MIN, 1e-5);
    free(x), free(w), free(dy);
    out_free(&o);
}

/* ---------------------------------------------------------------- DAM ops */

enum { NS = 3, DR = 11, DC = 21, LD = 25, VOC = 17, DD = 13, NT = 7 };
static const int32_t TOK[NT] = {4, -1, 16, 0, 4, 9, -3};

/* Source i: DR x LD bf16 rows, of which the first DC columns are the tensor (a column slice). */
static uint16_t *bf16_sources(uint64_t seed, size_t per) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    uint16_t *s = malloc(NS * per * sizeof(uint16_t));
    for (size_t i = 0; i < NS * per; i++) s[i] = dam_f32_to_bf16(dam_rng_normal(&r));
    return s;
}

static void case_dam(Dev *d, uint64_t seed, Out *o) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    uint16_t *w = bf16_sources(seed, DR * LD);
    float *e = randv(&r, NS * VOC * DD, 1); /* f32 embedding sources */
    float *fc = randv(&r, NS * DC, 1), *g = randv(&r, DR * DC, 1), *fce = randv(&r, NS * DD, 1);
    float *dh = randv(&r, NT * DD, 1);
    SrcWeight src[NS], emb[NS];
    for (int i = 0; i < NS; i++) {
        src[i] = d->be->upload_source(d->ctx, w + (size_t)i * DR * LD, DAM_BF16, DR, DC, LD, "w");
        emb[i] = d->be->upload_source(d->ctx, e + (size_t)i * VOC * DD, DAM_F32, VOC, DD, DD, "e");
    }
    DevBuf FC = up(d, fc, NS * DC), G = up(d, g, DR * DC), M = d->be->alloc(d->ctx, DR * DC, DAM_F32, "m");
    DevBuf MS = d->be->alloc(d->ctx, DR * DC, DAM_F32, "ms"), ACC = up(d, fc, NS * DC), ACS = up(d, fc, NS);
    DevBuf FCE = up(d, fce, NS * DD), DH = up(d, dh, NT * DD), EO = up(d, dh, NT * DD),
           EA = up(d, fce, NS * DD);
    d->be->dam_materialize(d->ctx, M, src, NS, FC, DR, DC, 0);
    d->be->dam_materialize(d->ctx, MS, src, NS, FC, DR, DC, 1); /* scalar: fc[0..NS) */
    d->be->dam_coef_grad(d->ctx, ACC, src, NS, G, DR, DC, 0);
    d->be->dam_coef_grad(d->ctx, ACS, src, NS, G, DR, DC, 1);
    d->be->dam_embed_gather(d->ctx, EO, emb, NS, FCE, TOK, NT, DD);
    d->be->dam_embed_coef_grad(d->ctx, EA, emb, NS, DH, TOK, NT, DD);
    for (int i = 0; i < NS; i++) {
        d->be->release_source(d->ctx, &src[i], DR, DC); /* heap memory smaller than a page: a no-op */
        d->be->free_source(d->ctx, &src[i]), d->be->free_source(d->ctx, &emb[i]);
    }
    /* four outputs: merged (per column, then scalar), coefficient grads (per column, scalar), embeddings */
    size_t nm = DR * DC;
    o->out[0] = malloc(2 * nm * sizeof(float)), o->n[0] = 2 * nm;
    d->be->download(d->ctx, o->out[0], DAM_F32, M, nm);
    d->be->download(d->ctx, o->out[0] + nm, DAM_F32, MS, nm);
    o->out[1] = malloc((NS * DC + NS) * sizeof(float)), o->n[1] = NS * DC + NS;
    d->be->download(d->ctx, o->out[1], DAM_F32, ACC, NS * DC);
    d->be->download(d->ctx, o->out[1] + NS * DC, DAM_F32, ACS, NS);
    o->out[2] = down(d, &EO, NT * DD), o->n[2] = NT * DD;
    o->out[3] = down(d, &EA, NS * DD), o->n[3] = NS * DD;
    DevBuf *all[] = {&FC, &G, &M, &MS, &ACC, &ACS, &FCE, &DH};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) d->be->free(d->ctx, all[i]);
    free(w), free(e), free(fc), free(g), free(fce), free(dh);
}

static void test_dam_ops(void **state) {
    Out o = both("dam_*", case_dam, 5);
    dam_rng r;
    dam_rng_seed(&r, 5);
    uint16_t *w = bf16_sources(5, DR * LD);
    float *e = randv(&r, NS * VOC * DD, 1);
    float *fc = randv(&r, NS * DC, 1), *g = randv(&r, DR * DC, 1), *fce = randv(&r, NS * DD, 1);
    float *dh = randv(&r, NT * DD, 1);
#define W(i, rr, j) ((double)dam_bf16_to_f32(w[((size_t)(i)*DR + (rr)) * LD + (j)]))
    double m[2 * DR * DC] = {0}, acc[NS * DC + NS], eo[NT * DD] = {0}, ea[NS * DD];
    for (int rr = 0; rr < DR; rr++)
        for (int j = 0; j < DC; j++)
            for (int i = 0; i < NS; i++) {
                m[rr * DC + j] += fc[i * DC + j] * W(i, rr, j);
                m[DR * DC + rr * DC + j] += fc[i] * W(i, rr, j);
            }
    for (int i = 0; i < NS; i++) {
        acc[NS * DC + i] = fc[i];
        for (int j = 0; j < DC; j++) {
            acc[i * DC + j] = fc[i * DC + j];
            for (int rr = 0; rr < DR; rr++) {
                acc[i * DC + j] += W(i, rr, j) * g[rr * DC + j];
                acc[NS * DC + i] += W(i, rr, j) * g[rr * DC + j];
            }
        }
    }
    for (int i = 0; i < NS * DD; i++) ea[i] = fce[i];
    for (int t = 0; t < NT; t++)
        for (int j = 0; j < DD; j++)
            for (int i = 0; i < NS; i++) {
                if (TOK[t] < 0) continue;
                double ev = e[((size_t)i * VOC + TOK[t]) * DD + j];
                eo[t * DD + j] += fce[i * DD + j] * ev;
                ea[i * DD + j] += ev * dh[t * DD + j];
            }
#undef W
    expect_close("dam_materialize", o.out[0], m, 2 * DR * DC, 1e-6);
    expect_close("dam_coef_grad", o.out[1], acc, NS * DC + NS, 1e-5);
    expect_close("dam_embed_gather", o.out[2], eo, NT * DD, 1e-6);
    expect_close("dam_embed_coef_grad", o.out[3], ea, NS * DD, 1e-6);
    for (int j = 0; j < DD; j++) assert_true(o.out[2][1 * DD + j] == 0.0f); /* negative id: zero row */
    free(w), free(e), free(fc), free(g), free(fce), free(dh);
    out_free(&o);
}

/* ---------------------------------------------------------------- norm, rope, swiglu */

enum { RT = 9, RD = 37, RH = 3, HD = 10 };

static void case_norm_rope(Dev *d, uint64_t seed, Out *o) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    float *x = randv(&r, RT * RD, 1), *w = randv(&r, RD, 1), *dout = randv(&r, RT * RD, 1);
    float *dx0 = randv(&r, RT * RD, 1), *q = randv(&r, 2 * RT * RH * HD, 1);
    float cs[RT * HD / 2], sn[RT * HD / 2];
    for (int t = 0; t < RT; t++)
        for (int k = 0; k < HD / 2; k++) {
            double ang = t * pow(10000.0, -2.0 * k / HD);
            cs[t * HD / 2 + k] = (float)cos(ang), sn[t * HD / 2 + k] = (float)sin(ang);
        }
    DevBuf X = up(d, x, RT * RD), Wt = up(d, w, RD), DO = up(d, dout, RT * RD), DX = up(d, dx0, RT * RD);
    DevBuf O = d->be->alloc(d->ctx, RT * RD, DAM_F32, "o"), RS = d->be->alloc(d->ctx, RT, DAM_F32, "rstd");
    DevBuf DW = d->be->alloc(d->ctx, RD, DAM_F32, "dw"), Q = up(d, q, 2 * RT * RH * HD);
    DevBuf CS = up(d, cs, RT * HD / 2), SN = up(d, sn, RT * HD / 2);
    d->be->rmsnorm_fwd(d->ctx, O, RS, X, Wt, RT, RD, 1e-5f);
    d->be->rmsnorm_bwd(d->ctx, DX, DW, DO, X, RS, Wt, RT, RD, 1); /* dx accumulated */
    DevBuf none = {0};
    d->be->rmsnorm_bwd(d->ctx, DO, none, DO, X, RS, Wt, RT, RD,
                       0);                                 /* no dw; dx over dout is not read after */
    d->be->rope(d->ctx, Q, CS, SN, 2 * RT, RT, RH, HD, 0); /* two sequences: positions t mod T */
    o->out[0] = down(d, &O, RT * RD), o->n[0] = RT * RD;
    o->out[1] = down(d, &DX, RT * RD), o->n[1] = RT * RD;
    o->out[2] = down(d, &DW, RD), o->n[2] = RD;
    o->out[3] = down(d, &Q, 2 * RT * RH * HD), o->n[3] = 2 * RT * RH * HD;
    DevBuf *all[] = {&X, &Wt, &DO, &RS, &CS, &SN};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) d->be->free(d->ctx, all[i]);
    free(x), free(w), free(dout), free(dx0), free(q);
}

static void test_norm_rope(void **state) {
    Out o = both("rmsnorm/rope", case_norm_rope, 6);
    dam_rng r;
    dam_rng_seed(&r, 6);
    float *x = randv(&r, RT * RD, 1), *w = randv(&r, RD, 1), *dout = randv(&r, RT * RD, 1);
    float *dx0 = randv(&r, RT * RD, 1), *q = randv(&r, 2 * RT * RH * HD, 1);
    double out[RT * RD], dx[RT * RD], dw[RD] = {0}, rq[2 * RT * RH * HD];
    for (int t = 0; t < RT; t++) { /* y = w·x/rms; dx = (w·g)/rms − x·Σ(w·g·x)/(d·rms³) */
        double ss = 0, dot = 0;
        for (int j = 0; j < RD; j++) ss += (double)x[t * RD + j] * x[t * RD + j];
        double rs = 1 / sqrt(ss / RD + 1e-5);
        for (int j = 0; j < RD; j++) dot += (double)w[j] * dout[t * RD + j] * x[t * RD + j];
        for (int j = 0; j < RD; j++) {
            out[t * RD + j] = w[j] * x[t * RD + j] * rs;
            dx[t * RD + j] =
                dx0[t * RD + j] + w[j] * dout[t * RD + j] * rs - x[t * RD + j] * dot * rs * rs * rs / RD;
            dw[j] += dout[t * RD + j] * x[t * RD + j] * rs;
        }
    }
    for (int bt = 0; bt < 2 * RT; bt++)
        for (int h = 0; h < RH; h++)
            for (int k = 0; k < HD / 2; k++) {
                double ang = (bt % RT) * pow(10000.0, -2.0 * k / HD);
                const float *v = q + ((size_t)bt * RH + h) * HD;
                rq[(bt * RH + h) * HD + k] = v[k] * cos(ang) - v[k + HD / 2] * sin(ang);
                rq[(bt * RH + h) * HD + k + HD / 2] = v[k + HD / 2] * cos(ang) + v[k] * sin(ang);
            }
    expect_close("rmsnorm_fwd", o.out[0], out, RT * RD, 1e-6);
    expect_close("rmsnorm_bwd dx", o.out[1], dx, RT * RD, 1e-5);
    expect_close("rmsnorm_bwd dw", o.out[2], dw, RD, 1e-5);
    expect_close("rope", o.out[3], rq, 2 * RT * RH * HD, 1e-6);
    free(x), free(w), free(dout), free(dx0), free(q);
    out_free(&o);
}

static void test_rope_inverse(void **state) {
    Dev d = dev_new(backend_cpu());
    dam_rng r;
    dam_rng_seed(&r, 7);
    float *q = randv(&r, RT * RH * HD, 1), *cs = randv(&r, RT * HD / 2, 1), *sn = malloc(RT * HD / 2 * 4);
    for (int i = 0; i < RT * HD / 2; i++) /* any rotation: cos² + sin² = 1 */
        cs[i] = cosf(cs[i]), sn[i] = sinf(acosf(cs[i]));
    DevBuf Q = up(&d, q, RT * RH * HD), C = up(&d, cs, RT * HD / 2), S = up(&d, sn, RT * HD / 2);
    d.be->rope(d.ctx, Q, C, S, RT, RT, RH, HD, 0);
    d.be->rope(d.ctx, Q, C, S, RT, RT, RH, HD, 1);
    float *back = down(&d, &Q, RT * RH * HD);
    double ref[RT * RH * HD];
    for (int i = 0; i < RT * RH * HD; i++) ref[i] = q[i];
    expect_close("rope then its inverse", back, ref, RT * RH * HD, 1e-6);
    d.be->free(d.ctx, &C), d.be->free(d.ctx, &S);
    free(q), free(cs), free(sn), free(back);
    dev_free(&d);
}

enum { SN = 1031 };

static void case_swiglu(Dev *d, uint64_t seed, Out *o) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    float *g = randv(&r, SN, 4), *u = randv(&r, SN, 1), *da = randv(&r, SN, 1);
    g[0] = -95.0f, g[1] = 95.0f, g[2] = 0.0f, g[3] = -30.0f; /* saturated, and the exp's clamp */
    DevBuf G = up(d, g, SN), U = up(d, u, SN), DA = up(d, da, SN);
    DevBuf A = d->be->alloc(d->ctx, SN, DAM_F32, "a"), DG = d->be->alloc(d->ctx, SN, DAM_F32, "dg");
    DevBuf DU = d->be->alloc(d->ctx, SN, DAM_F32, "du");
    d->be->swiglu_fwd(d->ctx, A, G, U, SN);
    d->be->swiglu_bwd(d->ctx, DG, DU, DA, G, U, SN);
    o->out[0] = down(d, &A, SN), o->out[1] = down(d, &DG, SN), o->out[2] = down(d, &DU, SN);
    o->n[0] = o->n[1] = o->n[2] = SN;
    d->be->free(d->ctx, &G), d->be->free(d->ctx, &U), d->be->free(d->ctx, &DA);
    free(g), free(u), free(da);
}

/* Against the scalar expf formulas the backend used before the vectorized exponential: within 1e-6
 * of each output's largest magnitude (element by element the error can be larger where
 * dgate's 1 + g·(1 − σ) cancels). */
static void test_swiglu(void **state) {
    Out o = both("swiglu", case_swiglu, 8);
    dam_rng r;
    dam_rng_seed(&r, 8);
    float *g = randv(&r, SN, 4), *u = randv(&r, SN, 1), *da = randv(&r, SN, 1);
    g[0] = -95.0f, g[1] = 95.0f, g[2] = 0.0f, g[3] = -30.0f;
    double *ref[3];
    for (int k = 0; k < 3; k++) ref[k] = malloc(SN * sizeof(double));
    for (int i = 0; i < SN; i++) {
        float sg = 1.0f / (1.0f + expf(-g[i])), silu = g[i] * sg;
        ref[0][i] = g[i] * sg * u[i];
        ref[1][i] = da[i] * u[i] * (sg * (1.0f + g[i] * (1.0f - sg)));
        ref[2][i] = da[i] * silu;
    }
    double worst = 0;
    for (int k = 0; k < 3; k++) {
        double e = rel_err(o.out[k], ref[k], SN);
        worst = e > worst ? e : worst;
        free(ref[k]);
    }
    printf("swiglu vs scalar expf: max |diff| / max |ref| %.3e\n", worst);
    assert_true(worst < 1e-6);
    free(g), free(u), free(da);
    out_free(&o);
}

/* ---------------------------------------------------------------- attention: the guard's identity,
 * and the CPU's outputs (its exponentials are dam_exp_approx, vectorized) against the plain
 * attention of attn_ref.h, whose exponentials are scalar exp() in double (test_attention.c checks
 * the tiling on more shapes against the same reference) */

/* GQA, T = tile + 3 (two query tiles) and a window of tile + 2: the second query tile's rows see
 * keys of two key tiles (the online softmax rescales), and the last row not key 0 (a real window). */
static AttnShape attn_case(void) {
    int tile = cpu_attention_tile();
    return (AttnShape){2, tile + 3, 4, 2, 8, tile + 2, 1.0f / sqrtf(8.0f)};
}

/* The case's inputs for a seed: q, k, v, dout (heap). */
static void attn_inputs(uint64_t seed, float **q, float **k, float **v, float **dout) {
    const AttnShape s = attn_case();
    size_t nq = (size_t)s.B * s.T * s.H * s.hd, nk = (size_t)s.B * s.T * s.KV * s.hd;
    dam_rng r;
    dam_rng_seed(&r, seed);
    *q = randv(&r, nq, 1), *k = randv(&r, nk, 1), *v = randv(&r, nk, 1), *dout = randv(&r, nq, 1);
}

static void case_attention(Dev *d, uint64_t seed, Out *o) {
    AttnShape s = attn_case();
    size_t nq = (size_t)s.B * s.T * s.H * s.hd, nk = (size_t)s.B * s.T * s.KV * s.hd,
           nl = (size_t)s.B * s.H * s.T;
    float *q, *k, *v, *dout;
    attn_inputs(seed, &q, &k, &v, &dout);
    DevBuf Q = up(d, q, nq), K = up(d, k, nk), V = up(d, v, nk), DO = up(d, dout, nq);
    DevBuf O = d->be->alloc(d->ctx, nq, DAM_F32, "o"), L = d->be->alloc(d->ctx, nl, DAM_F32, "lse");
    DevBuf DQ = d->be->alloc(d->ctx, nq, DAM_F32, "dq"), DK = d->be->alloc(d->ctx, nk, DAM_F32, "dk");
    DevBuf DV = d->be->alloc(d->ctx, nk, DAM_F32, "dv");
    d->be->attention_fwd(d->ctx, O, L, Q, K, V, &s);
    d->be->attention_bwd(d->ctx, DQ, DK, DV, DO, O, L, Q, K, V, &s);
    o->out[0] = down(d, &O, nq), o->n[0] = nq;
    o->out[1] = down(d, &DQ, nq), o->n[1] = nq;
    o->out[2] = down(d, &DK, nk), o->n[2] = nk;
    o->out[3] = malloc(nk * sizeof(float) + nl * sizeof(float)), o->n[3] = nk + nl;
    d->be->download(d->ctx, o->out[3], DAM_F32, DV, nk);
    d->be->download(d->ctx, o->out[3] + nk, DAM_F32, L, nl);
    DevBuf *all[] = {&Q, &K, &V, &DO, &L, &DV};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) d->be->free(d->ctx, all[i]);
    free(q), free(k), free(v), free(dout);
}

/* Element by element: the largest |CPU − reference| of each output, relative to the output's largest
 * magnitude, below 5e-6 (measured 7e-8 to 5e-7: fp32 GEMMs and dam_exp_approx's < 2e-7; a
 * wrong exponential, scale or rescale of the online softmax is far above it). */
static void test_attention_guard(void **state) {
    Out o = both("attention", case_attention, 9);
    AttnRef r = {.s = attn_case()};
    const AttnShape *s = &r.s;
    r.nq = (size_t)s->B * s->T * s->H * s->hd, r.nk = (size_t)s->B * s->T * s->KV * s->hd;
    size_t nl = (size_t)s->B * s->H * s->T;
    float *q, *k, *v, *dout;
    attn_inputs(9, &q, &k, &v, &dout);
    r.P = malloc(nl * s->T * sizeof(double));
    double *ro = malloc(r.nq * sizeof(double)), *rl = malloc(nl * sizeof(double)),
           *rdq = malloc(r.nq * sizeof(double)), *rdk = malloc(r.nk * sizeof(double)),
           *rdv = malloc(r.nk * sizeof(double));
    attn_ref_forward(&r, q, k, v, ro, rl);
    attn_ref_backward(&r, q, k, v, dout, rdq, rdk, rdv);
    struct {
        const char *name;
        const float *got;
        const double *want;
        size_t n;
    } cmp[] = {{"out", o.out[0], ro, r.nq},
               {"dq", o.out[1], rdq, r.nq},
               {"dk", o.out[2], rdk, r.nk},
               {"dv", o.out[3], rdv, r.nk},
               {"lse", o.out[3] + r.nk, rl, nl}};
    int bad = 0;
    for (size_t i = 0; i < sizeof cmp / sizeof *cmp; i++) {
        double e = rel_err(cmp[i].got, cmp[i].want, cmp[i].n);
        printf("%s attention %-3s vs scalar exp(): max |diff| / max |ref| %.3e\n",
               e < 5e-6 ? "OK    " : "NOT OK", cmp[i].name, e);
        bad |= !(e < 5e-6); /* NaN fails too */
    }
    free(q), free(k), free(v), free(dout);
    free(r.P), free(ro), free(rl), free(rdq), free(rdk), free(rdv);
    out_free(&o);
    assert_false(bad);
}

/* ---------------------------------------------------------------- losses: the wrappers equal loss.c */

enum { LC = 5, LV = 67, LK = 6 };

static void case_loss(Dev *d, uint64_t seed, Out *o) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    float *z = randv(&r, LC * LV, 2), *zt = randv(&r, LC * LV, 2);
    DevBuf Z = up(d, z, LC * LV), ZT = up(d, zt, LC * LV), DZ = d->be->alloc(d->ctx, LC * LV, DAM_F32, "dz");
    DevBuf IDX = d->be->alloc(d->ctx, LC * LK, DAM_I32, "idx"),
           VAL = d->be->alloc(d->ctx, LC * LK, DAM_F32, "v");
    d->be->loss_topk(d->ctx, IDX, VAL, ZT, LC, LV, LK, 0, NULL);
    LossChunkParams full = {.tau = 2.0f, .kl = 1, .mse = 0.3f, .entropy = 0.1f, .inv_n = 0.25f, .V_full = LV};
    LossChunkParams topk = {.tau = 1.5f, .kl = 1, .K = LK, .inv_n = 0.5f, .V_full = LV};
    LossSums s1 = {0}, s2 = {0};
    o->out[0] = malloc(2 * LC * LV * sizeof(float)), o->n[0] = 2 * LC * LV;
    d->be->loss_rows(d->ctx, DZ, &s1, Z, ZT, IDX, VAL, LC, LV, &full, 1.0f);
    d->be->download(d->ctx, o->out[0], DAM_F32, DZ, LC * LV);
    DevBuf none = {0};
    d->be->loss_rows(d->ctx, DZ, &s2, Z, none, IDX, VAL, LC, LV, &topk, 0.375f); /* no teacher logits */
    d->be->download(d->ctx, o->out[0] + LC * LV, DAM_F32, DZ, LC * LV);
    o->scalar[0] = s1.kl + s1.mse + s1.entropy, o->scalar[1] = s2.kl;
    o->out[1] = down(d, &VAL, LC * LK), o->n[1] = LC * LK;
    int32_t idx[LC * LK];
    d->be->download(d->ctx, idx, DAM_I32, IDX, LC * LK);
    o->out[2] = malloc(sizeof idx), o->n[2] = LC * LK;
    memcpy(o->out[2], idx, sizeof idx);
    d->be->free(d->ctx, &IDX), d->be->free(d->ctx, &Z), d->be->free(d->ctx, &ZT), d->be->free(d->ctx, &DZ);
    free(z), free(zt);
}

static void test_losses(void **state) {
    Out o = both("loss_rows/loss_topk", case_loss, 10);
    dam_rng r;
    dam_rng_seed(&r, 10);
    float *z = randv(&r, LC * LV, 2), *zt = randv(&r, LC * LV, 2), *dz = malloc(LC * LV * sizeof(float));
    int32_t idx[LC * LK];
    float val[LC * LK];
    loss_topk(idx, val, zt, LC, LV, LK);
    assert_memory_equal(o.out[2], idx, sizeof idx);
    assert_memory_equal(o.out[1], val, sizeof val);
    LossChunkParams full = {.tau = 2.0f, .kl = 1, .mse = 0.3f, .entropy = 0.1f, .inv_n = 0.25f, .V_full = LV};
    LossChunkParams topk = {.tau = 1.5f, .kl = 1, .K = LK, .inv_n = 0.5f, .V_full = LV};
    LossSums s1 = {0}, s2 = {0};
    loss_rows(dz, &s1, z, zt, idx, val, LC, LV, &full);
    assert_memory_equal(o.out[0], dz, LC * LV * sizeof(float));
    loss_rows(dz, &s2, z, NULL, idx, val, LC, LV, &topk);
    for (int i = 0; i < LC * LV; i++) assert_true(o.out[0][LC * LV + i] == dz[i] * 0.375f);
    assert_true(o.scalar[0] == s1.kl + s1.mse + s1.entropy && o.scalar[1] == s2.kl);
    free(z), free(zt), free(dz);
    out_free(&o);
}

/* ---------------------------------------------------------------- coefficients and optimizer */

enum { CN = 4, CD = 23 };

static void case_coef(Dev *d, uint64_t seed, Out *o) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    float *c = randv(&r, CN * CD, 1), *g = randv(&r, CN * CD, 1);
    for (int k = 0; k < CD; k += 3) c[CD + k] = -c[k]; /* ties between sources 0 and 1: |c| equal */
    c[5] = 0.0f;
    double A[CN * CN], G[CN * CN];
    for (int i = 0; i < CN * CN; i++) A[i] = 0.1 * (i % 5) - 0.2;
    DevBuf C = up(d, c, CN * CD), Gr = up(d, g, CN * CD), FC = d->be->alloc(d->ctx, CN * CD, DAM_F32, "fc");
    d->be->coef_nonlin(d->ctx, FC, C, CN * CD, NONLIN_SIGMOID);
    d->be->coef_nonlin_grad(d->ctx, Gr, C, CN * CD, NONLIN_TANH);
    d->be->coef_gram(d->ctx, G, C, CN, CD);
    d->be->coef_mix_grad(d->ctx, Gr, C, A, CN, CD);
    o->scalar[0] = d->be->coef_l1(d->ctx, Gr, C, CN * CD, 0.01);
    o->scalar[1] = d->be->coef_overlap(d->ctx, Gr, C, CN, CD, 0.3) + d->be->sumsq(d->ctx, C, CN * CD);
    o->out[0] = down(d, &FC, CN * CD), o->n[0] = CN * CD;
    o->out[1] = down(d, &Gr, CN * CD), o->n[1] = CN * CD;
    o->out[2] = malloc(sizeof G), o->n[2] = 2 * CN * CN;
    memcpy(o->out[2], G, sizeof G);
    d->be->free(d->ctx, &C);
    free(c), free(g);
}

static void test_coef_ops(void **state) {
    Out o = both("coef_*", case_coef, 11);
    dam_rng r;
    dam_rng_seed(&r, 11);
    float *c = randv(&r, CN * CD, 1), *g = randv(&r, CN * CD, 1);
    for (int k = 0; k < CD; k += 3) c[CD + k] = -c[k];
    c[5] = 0.0f;
    double A[CN * CN], fc[CN * CD], rg[CN * CD], G[CN * CN], l1 = 0, ov = 0, ss = 0;
    for (int i = 0; i < CN * CN; i++) A[i] = 0.1 * (i % 5) - 0.2;
    for (int i = 0; i < CN * CD; i++) {
        fc[i] = 1 / (1 + exp(-(double)c[i]));
        rg[i] = g[i] * (1 - tanh(c[i]) * tanh(c[i]));
        ss += (double)c[i] * c[i];
    }
    for (int i = 0; i < CN; i++)
        for (int j = 0; j < CN; j++) {
            G[i * CN + j] = 0;
            for (int k = 0; k < CD; k++) G[i * CN + j] += (double)c[i * CD + k] * c[j * CD + k];
        }
    for (int i = 0; i < CN; i++)
        for (int k = 0; k < CD; k++)
            for (int j = 0; j < CN; j++) rg[i * CD + k] += A[i * CN + j] * c[j * CD + k];
    for (int i = 0; i < CN * CD; i++) { /* sign(0) = 0 */
        l1 += 0.01 * fabs(c[i]);
        rg[i] += 0.01 * ((c[i] > 0) - (c[i] < 0));
    }
    for (int a = 0; a < CN; a++) /* min(|x|, |y|): the smaller side's sign, half each at a tie */
        for (int b = a + 1; b < CN; b++)
            for (int k = 0; k < CD; k++) {
                double x = c[a * CD + k], y = c[b * CD + k], sx = (x > 0) - (x < 0), sy = (y > 0) - (y < 0);
                ov += 0.3 * fmin(fabs(x), fabs(y));
                double wa = fabs(x) < fabs(y) ? 1 : fabs(x) > fabs(y) ? 0 : 0.5;
                rg[a * CD + k] += 0.3 * wa * sx, rg[b * CD + k] += 0.3 * (1 - wa) * sy;
            }
    expect_close("coef_nonlin", o.out[0], fc, CN * CD, 1e-6);
    expect_close("coef_nonlin_grad + mix + l1 + overlap", o.out[1], rg, CN * CD, 1e-5);
    const double *got = (const double *)o.out[2];
    for (int i = 0; i < CN * CN; i++) assert_true(fabs(got[i] - G[i]) <= 1e-9 * fabs(G[i]) + 1e-12);
    assert_true(fabs(o.scalar[0] - l1) < 1e-9);
    assert_true(fabs(o.scalar[1] - (ov + ss)) < 1e-9 * (ov + ss));
    free(c), free(g);
    out_free(&o);
}

/* The optimizer's update exactly as optim_step computed it (float moments, double step). */
static void ref_adamw(float *c, const float *g, float *m, float *v, size_t n, const AdamParams *p,
                      float thr) {
    double bc1 = 1.0 - pow(p->beta1, p->t), bc2 = 1.0 - pow(p->beta2, p->t);
    for (size_t j = 0; j < n; j++) {
        m[j] = p->beta1 * m[j] + (1 - p->beta1) * g[j];
        v[j] = p->beta2 * v[j] + (1 - p->beta2) * g[j] * g[j];
    }
    if (p->mofo_alpha > 0) { /* sort |m| descending: the ceil(alpha·n)-th */
        float *s = malloc(n * sizeof(float));
        for (size_t j = 0; j < n; j++) s[j] = fabsf(m[j]);
        for (size_t a = 1; a < n; a++) /* insertion sort: n is small */
            for (size_t b = a; b > 0 && s[b] > s[b - 1]; b--) {
                float t = s[b];
                s[b] = s[b - 1], s[b - 1] = t;
            }
        size_t keep = (size_t)ceil(p->mofo_alpha * (double)n);
        thr = s[(keep < 1 ? 1 : keep) - 1];
        free(s);
    }
    for (size_t j = 0; j < n; j++) {
        if (thr >= 0 && fabsf(m[j]) < thr) continue;
        double mh = m[j] / bc1, vh = v[j] / bc2;
        c[j] -= (float)(p->lr * (mh / (sqrt(vh) + p->eps) + p->weight_decay * c[j]));
    }
}

enum { AN = 301 };

/* The AdamW case's inputs (v >= 0; every 7th m and g zero: repeated |m| for the threshold) and its
 * two first updates: plain AdamW at t = 3, then MoFO (alpha 0.3) at t = 4. */
static void adamw_case_inputs(uint64_t seed, float **c, float **g, float **m, float **v, AdamParams *plain,
                              AdamParams *mofo) {
    dam_rng r;
    dam_rng_seed(&r, seed);
    *c = randv(&r, AN, 1), *g = randv(&r, AN, 0.1f), *m = randv(&r, AN, 0.01f), *v = randv(&r, AN, 0.001f);
    for (int i = 0; i < AN; i++) (*v)[i] = fabsf((*v)[i]);
    for (int i = 0; i < AN; i += 7) (*m)[i] = (*g)[i] = 0;
    *plain = (AdamParams){.lr = 1e-2f,
                          .beta1 = 0.9f,
                          .beta2 = 0.999f,
                          .eps = 1e-8f,
                          .weight_decay = 0.01f,
                          .t = 3,
                          .mofo_threshold = -1};
    *mofo = *plain;
    mofo->t = 4, mofo->mofo_alpha = 0.3f;
}

static void case_adamw(Dev *d, uint64_t seed, Out *o) {
    float *c, *g, *m, *v;
    AdamParams plain, mofo;
    adamw_case_inputs(seed, &c, &g, &m, &v, &plain, &mofo);
    DevBuf C = up(d, c, AN), G = up(d, g, AN), M = up(d, m, AN), V = up(d, v, AN);
    d->be->adamw(d->ctx, C, G, M, V, AN, &plain);
    d->be->adamw(d->ctx, C, G, M, V, AN, &mofo);
    AdamParams fixed = plain; /* an explicit threshold, from the op */
    fixed.t = 5, fixed.mofo_threshold = d->be->mofo_threshold(d->ctx, M, AN, 0.5f);
    o->scalar[0] = fixed.mofo_threshold;
    d->be->adamw(d->ctx, C, G, M, V, AN, &fixed);
    o->out[0] = down(d, &C, AN), o->out[1] = down(d, &M, AN), o->out[2] = down(d, &V, AN);
    o->n[0] = o->n[1] = o->n[2] = AN;
    d->be->free(d->ctx, &G);
    free(c), free(g), free(m), free(v);
}

static void test_adamw_mofo(void **state) {
    Out o = both("adamw/mofo_threshold", case_adamw, 12);
    float *c, *g, *m, *v;
    AdamParams plain, mofo;
    adamw_case_inputs(12, &c, &g, &m, &v, &plain, &mofo);
    ref_adamw(c, g, m, v, AN, &plain, -1);
    ref_adamw(c, g, m, v, AN, &mofo, -1);
    AdamParams fixed = plain;
    fixed.t = 5;
    float thr;
    { /* |m| sorted: the ceil(0.5·AN)-th largest */
        float s[AN];
        for (int j = 0; j < AN; j++) s[j] = fabsf(m[j]);
        for (int a = 1; a < AN; a++)
            for (int b = a; b > 0 && s[b] > s[b - 1]; b--) {
                float t = s[b];
                s[b] = s[b - 1], s[b - 1] = t;
            }
        thr = s[(AN + 1) / 2 - 1];
    }
    assert_true(o.scalar[0] == thr);
    ref_adamw(c, g, m, v, AN, &fixed, thr);
    assert_memory_equal(o.out[0], c, AN * sizeof(float)); /* bit for bit: optim_step's arithmetic */
    assert_memory_equal(o.out[1], m, AN * sizeof(float));
    assert_memory_equal(o.out[2], v, AN * sizeof(float));
    free(c), free(g), free(m), free(v);
    out_free(&o);
}

/* The threshold over sizes and alphas (ties included) against sorting. */
static void test_mofo_threshold(void **state) {
    Dev d = dev_new(backend_cpu());
    dam_rng r;
    dam_rng_seed(&r, 13);
    size_t sizes[] = {1, 2, 7, 64, 1000};
    float alphas[] = {0.001f, 0.1f, 0.5f, 0.999f, 1.0f};
    for (size_t si = 0; si < 5; si++) {
        size_t n = sizes[si];
        float *x = randv(&r, n, 1), *s = malloc(n * sizeof(float));
        for (size_t j = 0; j < n; j += 3) x[j] = j % 2 ? 0.5f : -0.5f; /* many equal |m| */
        for (size_t j = 0; j < n; j++) s[j] = fabsf(x[j]);
        for (size_t a = 1; a < n; a++)
            for (size_t b = a; b > 0 && s[b] > s[b - 1]; b--) {
                float t = s[b];
                s[b] = s[b - 1], s[b - 1] = t;
            }
        DevBuf X = up(&d, x, n);
        for (int ai = 0; ai < 5; ai++) {
            size_t keep = (size_t)ceil(alphas[ai] * (double)n);
            keep = keep < 1 ? 1 : keep;
            assert_true(d.be->mofo_threshold(d.ctx, X, n, alphas[ai]) == s[keep - 1]);
        }
        d.be->free(d.ctx, &X);
        free(x), free(s);
    }
    dev_free(&d);
}

/* ---------------------------------------------------------------- errors */

static void bad_slice(const void *a) { devbuf_slice((DevBuf){(void *)a, 10, DAM_F32, 0}, 8, 3); }
static void bad_at(const void *a) { devbuf_at((DevBuf){(void *)a, 10, DAM_BF16, 0}, 11); }

static void bad_dtype(const void *a) {
    Dev d = dev_new(backend_cpu());
    DevBuf y = d.be->alloc(d.ctx, 6, DAM_F32, "y"), x = d.be->alloc(d.ctx, 6, DAM_BF16, "x");
    d.be->add(d.ctx, y, x, 6);
}

static void bad_length(const void *a) {
    Dev d = dev_new(backend_cpu());
    DevBuf y = d.be->alloc(d.ctx, 2 * 3, DAM_F32, "y"), x = d.be->alloc(d.ctx, 2 * 4, DAM_F32, "x");
    DevBuf w = d.be->alloc(d.ctx, 3 * 3, DAM_F32, "w"); /* needs 3 x 4 */
    d.be->matmul_xwt(d.ctx, y, x, w, 2, 4, 3, 0);
}

static void bad_convert(const void *a) {
    Dev d = dev_new(backend_cpu());
    DevBuf y = d.be->alloc(d.ctx, 4, DAM_F32, "y");
    int32_t h[4] = {0};
    d.be->upload(d.ctx, y, h, DAM_I32, 4);
}

static void bad_row(const void *a) {
    Dev d = dev_new(backend_cpu());
    DevBuf s = d.be->alloc(d.ctx, 3 * 4, DAM_F32, "s"), o = d.be->alloc(d.ctx, 2 * 4, DAM_F32, "o");
    int32_t rows[2] = {1, 3};
    d.be->gather_rows(d.ctx, o, s, rows, 2, 4);
}

static void bad_alloc(const void *a) {
    Dev d = dev_new(backend_guard());
    d.be->alloc(d.ctx, 4, DAM_F16, "halves");
}

static void bad_name(const void *a) { backend_by_name("tpu"); }

static void expect_fail(void (*fn)(const void *), const char *expect) {
    char msg[512];
    static float mem[16];
    assert_true(test_fails_in_child(fn, mem, msg, sizeof msg));
    if (!strstr(msg, expect)) fail_msg("error \"%s\" does not say \"%s\"", msg, expect);
    assert_null(strchr(msg, '\n')); /* one line */
}

static void test_errors(void **state) {
    expect_fail(bad_slice, "devbuf_slice: elements [8, 11) outside a F32 buffer of 10");
    expect_fail(bad_at, "devbuf_at: element 11 outside a BF16 buffer of 10");
    expect_fail(bad_dtype, "add: x is BF16, expected F32");
    expect_fail(bad_length, "matmul_xwt: w holds 9 elements, needs 12");
    expect_fail(bad_convert, "upload: cannot convert I32 to F32");
    expect_fail(bad_row, "gather_rows: row 3 is outside src's 3 rows of 4");
    expect_fail(bad_alloc, "alloc of halves: dtype F16 is not F32, BF16 or I32");
    unsetenv("DAM_BACKEND");
    expect_fail(bad_name, "backend \"tpu\" is not available (available: cpu, guard");
}

static void test_by_name(void **state) {
    char *saved = getenv("DAM_BACKEND") ? strdup(getenv("DAM_BACKEND")) : NULL;
    unsetenv("DAM_BACKEND");
    assert_ptr_equal(backend_by_name("cpu"), backend_cpu());
    assert_ptr_equal(backend_by_name("guard"), backend_guard());
    setenv("DAM_BACKEND", "guard", 1);
    assert_ptr_equal(backend_by_name("cpu"), backend_guard()); /* the environment wins */
    if (saved)
        setenv("DAM_BACKEND", saved, 1);
    else
        unsetenv("DAM_BACKEND");
    free(saved);
    assert_string_equal(backend_cpu()->name, "cpu");
    assert_int_equal(backend_guard()->act_dtype, DAM_F32);
}

/* Every entry of a table the program gets is set (the front defaults a backend's optional ones), so
 * that no call site needs a NULL check. The entries from ctx_new on are function pointers. */
static void test_front_complete(void **state) {
    const Backend *bes[] = {backend_cpu(), backend_guard(), backend_cuda()};
    for (int b = 0; b < 3; b++) {
        if (!bes[b]) continue; /* no CUDA in this build */
        for (size_t off = offsetof(Backend, ctx_new); off < sizeof(Backend); off += sizeof(void (*)(void))) {
            void (*fn)(void);
            memcpy(&fn, (const char *)bes[b] + off, sizeof fn);
            if (!fn) fail_msg("backend %s: the entry at byte %zu is NULL", bes[b]->name, off);
        }
    }
    Dev d = dev_new(backend_cpu());
    d.be->set_gemm_inputs(d.ctx, DAM_F32);
    assert_int_equal(d.be->weight_dtype(d.ctx), DAM_F32);
    dev_free(&d);
}

/* ---------------------------------------------------------------- the guard's purpose */

/* In a child: touch(b) on the host; returns the signal that ended the child (0: none). */
static int signal_of(void (*touch)(Dev *d, DevBuf b)) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL); /* not cmocka's handler: the child ends with the signal */
        Dev d = dev_new(backend_guard());
        DevBuf b = d.be->alloc(d.ctx, 100, DAM_F32, "b");
        d.be->fill(d.ctx, b, 1.0f, 100); /* after an op, too, the memory is closed */
        touch(&d, b);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) ? WTERMSIG(st) : 0;
}

static void read_host(Dev *d, DevBuf b) {
    volatile float *p = b.ptr;
    float x = p[3];
    (void)x;
}
static void write_host(Dev *d, DevBuf b) { ((volatile float *)b.ptr)[0] = 2.0f; }
/* between host_begin and host_end the memory is the caller's; after host_end it is closed again */
static void held_then_released(Dev *d, DevBuf b) {
    float *h = d->be->host_begin(d->ctx, b);
    d->be->scale(d->ctx, b, 2.0f, 100); /* an op in between leaves the held buffer open */
    if (h[99] != 2.0f) _exit(3);
    h[0] = 5.0f;
    d->be->host_end(d->ctx, b);
    read_host(d, b);
}
static void held_only(Dev *d, DevBuf b) {
    float *h = d->be->host_begin(d->ctx, b);
    h[1] = h[2] + 1.0f;
    d->be->host_end(d->ctx, b);
}
static void source_touched(Dev *d, DevBuf b) { /* uploaded sources are guarded copies */
    static float w[12];
    SrcWeight s = d->be->upload_source(d->ctx, w, DAM_F32, 3, 4, 4, "w");
    read_host(d, s.w);
}

static void test_guard_segv(void **state) {
    assert_int_equal(signal_of(read_host), SIGSEGV);
    assert_int_equal(signal_of(write_host), SIGSEGV);
    assert_int_equal(signal_of(held_then_released), SIGSEGV);
    assert_int_equal(signal_of(source_touched), SIGSEGV);
    assert_int_equal(signal_of(held_only), 0);
}

/* ---------------------------------------------------------------- device communicators (2 ranks)
 * test_backend --devcomm under mpirun -np 2: sums and transfers on host memory (cpu, guard) and
 * host-staged (a CPU backend whose memory is not host-addressable), and a send that returns before
 * the data left: the staged copy keeps the value the buffer had at the send. */

static void *no_host(BackendCtx *ctx, DevBuf b) { return NULL; }

static int check_devcomm(const Backend *be, const CommGroup *w) {
    Dev d = dev_new(be);
    DevComm dc;
    devcomm_init(&dc, w, be, d.ctx, DAM_TRANSPORT_AUTO);
    int bad = 0, n = 1001, me = w->rank;
    float *h = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) h[i] = (float)(i % 17) + me * 100.0f;
    DevBuf a = up(&d, h, n), hb = d.be->alloc(d.ctx, n, DAM_BF16, "bf16");
    d.be->copy(d.ctx, hb, a, n);
    devcomm_allreduce_sum(&dc, devbuf_slice(a, 1, n - 1), n - 1); /* a view: element 0 stays */
    devcomm_allreduce_sum(&dc, hb, n);
    float *o = malloc(n * sizeof(float));
    d.be->download(d.ctx, o, DAM_F32, a, n);
    for (int i = 0; i < n; i++) bad |= o[i] != (i == 0 ? (float)me * 100 : 2.0f * (i % 17) + 100.0f);
    d.be->download(d.ctx, o, DAM_F32, hb, n);
    for (int i = 0; i < n; i++) bad |= o[i] != dam_bf16_to_f32(dam_f32_to_bf16(2.0f * (i % 17) + 100.0f));
    /* rank 0 sends a then overwrites it (staged: allowed); rank 1 receives */
    DevRequest req = {0};
    if (me == 0) {
        d.be->fill(d.ctx, a, 7.0f, n);
        devcomm_isend(&dc, a, n, 1, &req);
        if (be->host_begin == no_host) d.be->fill(d.ctx, a, -1.0f, n);
        devcomm_wait(&dc, &req);
        devcomm_wait(&dc, &req); /* completed: a no-op */
    } else {
        devcomm_recv(&dc, a, n, 0);
        d.be->download(d.ctx, o, DAM_F32, a, n);
        for (int i = 0; i < n; i++) bad |= o[i] != 7.0f;
    }
    d.be->free(d.ctx, &a), d.be->free(d.ctx, &hb);
    devcomm_free(&dc);
    dev_free(&d);
    free(h), free(o);
    return bad;
}

/* A two-stage pipeline: stage 0 sends mb+1 forward, stage 1 returns 10·(mb+1) back. */
typedef struct {
    Dev *d;
    DevBuf slot[2], grad[2];
    int stage;
    float got[8];
} PipeCtx;
static int pc_passes(void *c, int mb) { return 1; }
static DevBuf pc_input(void *c, int mb, int pass) { return ((PipeCtx *)c)->slot[mb % 2]; }
static DevBuf pc_run(void *c, int mb, int pass) {
    PipeCtx *p = c;
    if (p->stage == 0) p->d->be->fill(p->d->ctx, p->slot[mb % 2], (float)(mb + 1), 3);
    return p->slot[mb % 2];
}
static DevBuf pc_grad_input(void *c, int mb) { return ((PipeCtx *)c)->grad[mb % 2]; }
static DevBuf pc_backward(void *c, int mb) {
    PipeCtx *p = c;
    float v[3];
    if (p->stage == 1) {
        p->d->be->download(p->d->ctx, v, DAM_F32, p->slot[mb % 2], 3);
        p->d->be->fill(p->d->ctx, p->grad[mb % 2], 10 * v[0], 3);
    } else {
        p->d->be->download(p->d->ctx, v, DAM_F32, p->grad[mb % 2], 3);
        p->got[mb] = v[2];
    }
    return p->grad[mb % 2];
}

static int check_pipeline(const Backend *be, const CommGroup *w) {
    Dev d = dev_new(be);
    DevComm dc;
    devcomm_init(&dc, w, be, d.ctx, DAM_TRANSPORT_MPI);
    PipeCtx pc = {&d, {{0}}, {{0}}, w->rank, {0}};
    for (int i = 0; i < 2; i++)
        pc.slot[i] = d.be->alloc(d.ctx, 3, DAM_F32, "slot"),
        pc.grad[i] = d.be->alloc(d.ctx, 3, DAM_F32, "grad");
    PipelineStage st = {&pc, pc_passes, pc_input, pc_run, pc_grad_input, pc_backward};
    pipeline_run(&dc, 8, 2, 1, &st);
    int bad = 0;
    if (w->rank == 0)
        for (int mb = 0; mb < 8; mb++) bad |= pc.got[mb] != 10.0f * (mb + 1);
    for (int i = 0; i < 2; i++) d.be->free(d.ctx, &pc.slot[i]), d.be->free(d.ctx, &pc.grad[i]);
    devcomm_free(&dc);
    dev_free(&d);
    return bad;
}

static int devcomm_main(int argc, char **argv) {
    comm_init(&argc, &argv);
    CommGroup w = {MPI_COMM_WORLD, comm_world_rank(), comm_world_size(), "world"};
    Backend staged = *backend_cpu();
    staged.host_begin = no_host;
    const Backend *bes[] = {backend_cpu(), backend_guard(), &staged};
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        int b = check_devcomm(bes[i], &w) | check_pipeline(bes[i], &w) << 1;
        if (b)
            printf("rank %d: %s%s: devcomm %s, pipeline %s\n", w.rank, bes[i]->name,
                   i == 2 ? " (staged)" : "", b & 1 ? "WRONG" : "ok", b & 2 ? "WRONG" : "ok");
        bad |= b;
    }
    bad = comm_max_int(&w, bad);
    if (w.rank == 0 && !bad) printf("devcomm ok\n");
    comm_finalize();
    return bad != 0;
}

static void test_devcomm_two_ranks(void **state) {
    char exe[4096], cmd[8400];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = 0;
    /* no leak report from the ranks: Open MPI's plugins keep allocations until exit, from modules
     * unloaded by then that the suppressions cannot name (ASan's other checks stay on) */
    const char *asan = getenv("ASAN_OPTIONS");
    snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=%s%sdetect_leaks=0 mpirun -np 2 %s --devcomm", asan ? asan : "",
             asan && *asan ? ":" : "", exe);
    TestRun *r = malloc(sizeof *r);
    test_run(r, cmd);
    if (!r->exited || r->status != 0 || !strstr(r->out, "devcomm ok"))
        fail_msg("%s: status %d\n%s%s", cmd, r->status, r->out, r->err);
    free(r);
}

static void nccl_without_cuda(const void *a) {
    Dev d = dev_new(backend_cpu());
    DevComm dc;
    devcomm_init(&dc, NULL, d.be, d.ctx, DAM_TRANSPORT_NCCL);
}
static void bad_transport(const void *a) {
    Dev d = dev_new(backend_cpu());
    DevComm dc;
    setenv("DAM_TRANSPORT", "carrier-pigeon", 1);
    devcomm_init(&dc, NULL, d.be, d.ctx, DAM_TRANSPORT_AUTO);
}

static void test_transport_errors(void **state) {
    expect_fail(nccl_without_cuda, "transport nccl on group (none): NCCL needs the cuda backend");
    expect_fail(bad_transport, "DAM_TRANSPORT=carrier-pigeon: expected auto, mpi or nccl");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--devcomm") == 0) return devcomm_main(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_devbuf_views),     cmocka_unit_test(test_transfers),
        cmocka_unit_test(test_elementwise),      cmocka_unit_test(test_gather_scatter),
        cmocka_unit_test(test_matmul),           cmocka_unit_test(test_dam_ops),
        cmocka_unit_test(test_norm_rope),        cmocka_unit_test(test_rope_inverse),
        cmocka_unit_test(test_swiglu),           cmocka_unit_test(test_attention_guard),
        cmocka_unit_test(test_losses),           cmocka_unit_test(test_coef_ops),
        cmocka_unit_test(test_adamw_mofo),       cmocka_unit_test(test_mofo_threshold),
        cmocka_unit_test(test_errors),           cmocka_unit_test(test_by_name),
        cmocka_unit_test(test_guard_segv),       cmocka_unit_test(test_devcomm_two_ranks),
        cmocka_unit_test(test_transport_errors), cmocka_unit_test(test_front_complete),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
