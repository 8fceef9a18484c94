/* check_kernels.c — every op of the CUDA backend against the CPU backend (the reference), through the
 * same interface, on fresh random inputs, with every output poisoned (NaN) first so that an entry a
 * kernel forgets to write fails. Relative error by norm, ‖gpu − cpu‖ / ‖cpu‖: fp32 paths below 1e-5,
 * bf16 paths below 1e-2 (the CPU gets the same bf16-rounded inputs, so only the GPU's arithmetic and
 * its bf16 outputs differ). One line per check (OK / NOT OK, the error and the largest difference),
 * then one summary line. Exit status 0 when every check passed.
 *
 * Needs a GPU; builds with `make CUDA=1 cuda-test` (no MPI, HDF5, cJSON or BLAS: the CPU backend's
 * GEMMs use the naive tests/cuda/cblas_ref.c). Usage: check_kernels [seed [backend]]; the backend
 * under test is "cuda" unless named: "guard" checks this program itself on a machine without a GPU
 * (F32 only; every check must then pass with error 0). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adam_bf16.h"
#include "backend.h"

static const Backend *C_, *G_;
static BackendCtx *cctx, *gctx;
static dam_rng rng;
static int n_ok, n_bad;

static const double TOL_F32 = 1e-5, TOL_BF16 = 1e-2;

static double tol_for(dam_dtype t) { return t == DAM_BF16 ? TOL_BF16 : TOL_F32; }

/* ---------------------------------------------------------------- reporting */

static void report(const char *name, int ok, double rel, double maxdiff, const char *why) {
    printf("%-44s %-6s rel %.3e  max|diff| %.3e%s%s\n", name, ok ? "OK" : "NOT OK", rel, maxdiff,
           why ? "  " : "", why ? why : "");
    fflush(stdout);
    if (ok)
        n_ok++;
    else
        n_bad++;
}

/* ‖b − a‖ / max(‖a‖, floor) over n host values (a the reference); NaN in either fails. floor: the
 * norm of a quantity of the same scale, for a reference that is zero up to rounding (the attention
 * gradients dq and dk with a window of 1, where each query sees only itself). */
static void compare_host_floor(const char *name, const float *a, const float *b, size_t n, double tol,
                               double floor) {
    double num = 0, den = 0, mx = 0;
    size_t nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i])) {
            nan++;
            continue;
        }
        double d = (double)b[i] - a[i];
        num += d * d, den += (double)a[i] * a[i];
        mx = fabs(d) > mx ? fabs(d) : mx;
    }
    den = den > floor * floor ? den : floor * floor;
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    char why[96] = "";
    if (nan) snprintf(why, sizeof why, "%zu NaN entries (an output not written?)", nan);
    report(name, nan == 0 && rel < tol, rel, mx, nan ? why : NULL);
}

static void compare_host(const char *name, const float *a, const float *b, size_t n, double tol) {
    compare_host_floor(name, a, b, n, tol, 0);
}

static void compare_scalar(const char *name, double a, double b, double tol) {
    double d = fabs(b - a), rel = fabs(a) > 1e-30 ? d / fabs(a) : d;
    report(name, !isnan(a) && !isnan(b) && rel < tol, rel, d, NULL);
}

/* ---------------------------------------------------------------- paired buffers */

/* The same tensor on both backends: F32 on the CPU, gdt on the GPU. */
typedef struct {
    DevBuf c, g;
    size_t n;
} Pair;

static float bf16_round(float x) { return dam_bf16_to_f32(dam_f32_to_bf16(x)); }

static Pair pair_new(size_t n, dam_dtype gdt) {
    Pair p = {C_->alloc(cctx, n, gdt == DAM_I32 ? DAM_I32 : DAM_F32, "check"),
              G_->alloc(gctx, n, gdt, "check"), n};
    return p;
}

/* Uploads host values (F32) to both; a BF16 GPU buffer gets them rounded, so does the CPU's copy. */
static void pair_set(Pair p, float *h) {
    if (p.g.dtype == DAM_BF16)
        for (size_t i = 0; i < p.n; i++) h[i] = bf16_round(h[i]);
    C_->upload(cctx, p.c, h, DAM_F32, p.n);
    G_->upload(gctx, p.g, h, DAM_F32, p.n);
}

static float *rand_host(size_t n, float scale) {
    float *h = dam_malloc(n * sizeof(float) + 4, "check");
    for (size_t i = 0; i < n; i++) h[i] = scale * dam_rng_normal(&rng);
    return h;
}

static Pair pair_rand(size_t n, dam_dtype gdt, float scale) {
    Pair p = pair_new(n, gdt);
    float *h = rand_host(n, scale);
    pair_set(p, h);
    free(h);
    return p;
}

/* An output: NaN on both sides until the op writes it. */
static Pair pair_poison(size_t n, dam_dtype gdt) {
    Pair p = pair_new(n, gdt);
    C_->fill(cctx, p.c, NAN, n);
    G_->fill(gctx, p.g, NAN, n);
    return p;
}

static void pair_free(Pair *p) {
    C_->free(cctx, &p->c);
    G_->free(gctx, &p->g);
}

static void check_pair_floor(const char *name, Pair p, double tol, double floor) {
    float *a = dam_malloc(p.n * sizeof(float) + 4, "check"),
          *b = dam_malloc(p.n * sizeof(float) + 4, "check");
    C_->download(cctx, a, DAM_F32, p.c, p.n);
    G_->download(gctx, b, DAM_F32, p.g, p.n);
    compare_host_floor(name, a, b, p.n, tol, floor);
    free(a), free(b);
}

static void check_pair(const char *name, Pair p, double tol) { check_pair_floor(name, p, tol, 0); }

/* The norm of the CPU's values of p. */
static double pair_norm(Pair p) {
    float *a = dam_malloc(p.n * sizeof(float) + 4, "check");
    C_->download(cctx, a, DAM_F32, p.c, p.n);
    double s = 0;
    for (size_t i = 0; i < p.n; i++) s += (double)a[i] * a[i];
    free(a);
    return sqrt(s);
}

/* The CPU's values of p on both sides (rounded to the GPU buffer's dtype on both, so that the two
 * hold the same numbers): the inputs of a backward or a gather taken from the reference. */
static void pair_sync_from_cpu(Pair p) {
    float *h = dam_malloc(p.n * sizeof(float) + 4, "check");
    C_->download(cctx, h, DAM_F32, p.c, p.n);
    pair_set(p, h);
    free(h);
}

static const char *dts(dam_dtype t) { return t == DAM_BF16 ? "bf16" : "f32"; }

/* ---------------------------------------------------------------- transfers */

/* Transfers larger than one pinned staging half (8 MiB): several chunks, both halves in turn, each
 * refilled only after its previous copy; and upload_source of a row-strided slice (ld > cols) in
 * chunks of whole rows, read back as the contiguous rows the device keeps. */
static void check_staging(void) {
    size_t n = 5000011; /* 20 MB of F32: three chunks */
    float *h = rand_host(n, 1.0f), *back = dam_malloc(n * sizeof(float), "check");
    DevBuf f = G_->alloc(gctx, n, DAM_F32, "f"), b = G_->alloc(gctx, n, DAM_BF16, "b");
    G_->upload(gctx, f, h, DAM_F32, n);
    G_->download(gctx, back, DAM_F32, f, n);
    compare_host("upload/download f32, 3 staging chunks", h, back, n, 1e-12);
    G_->upload(gctx, b, h, DAM_F32, n); /* converted on the host, chunk by chunk */
    G_->download(gctx, back, DAM_F32, b, n);
    for (size_t i = 0; i < n; i++) h[i] = bf16_round(h[i]);
    compare_host("upload f32 -> bf16 buffer, chunked", h, back, n, 1e-12);
    G_->free(gctx, &f), G_->free(gctx, &b);
    free(h), free(back);
    dam_dtype sdts[2] = {DAM_F32, DAM_BF16};
    for (int k = 0; k < 2; k++) {
        size_t rows = sdts[k] == DAM_F32 ? 2300 : 4500, cols = 1000, ld = 1024; /* two chunks of rows */
        float *src = rand_host(rows * ld, 1.0f), *want = dam_malloc(rows * cols * sizeof(float), "check"),
              *got = dam_malloc(rows * cols * sizeof(float), "check");
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < cols; j++)
                want[r * cols + j] = sdts[k] == DAM_BF16 ? bf16_round(src[r * ld + j]) : src[r * ld + j];
        if (sdts[k] == DAM_BF16) {
            uint16_t *hb = (uint16_t *)src;
            for (size_t j = 0; j < rows * ld; j++) hb[j] = dam_f32_to_bf16(src[j]);
        }
        SrcWeight s = G_->upload_source(gctx, src, sdts[k], rows, cols, ld, "strided source");
        DevBuf view = s.w;
        view.n = rows * cols;
        G_->download(gctx, got, DAM_F32, view, rows * cols);
        report(sdts[k] == DAM_F32 ? "upload_source f32 ld>cols, chunked: row stride"
                                  : "upload_source bf16 ld>cols, chunked: row stride",
               s.ld == cols, 0, 0, s.ld == cols ? NULL : "the device copy is not contiguous rows");
        compare_host(sdts[k] == DAM_F32 ? "upload_source f32 ld>cols, chunked"
                                        : "upload_source bf16 ld>cols, chunked",
                     want, got, rows * cols, 1e-12);
        G_->free_source(gctx, &s);
        free(src), free(want), free(got);
    }
}

static void check_transfers(void) {
    size_t n = 100003; /* one staging chunk (check_staging takes several); odd on purpose */
    float *h = rand_host(n, 1.0f), *back = dam_malloc(n * sizeof(float), "check");
    DevBuf f = G_->alloc(gctx, n, DAM_F32, "f"), b = G_->alloc(gctx, n, DAM_BF16, "b"),
           f2 = G_->alloc(gctx, n, DAM_F32, "f2");
    G_->upload(gctx, f, h, DAM_F32, n);
    G_->download(gctx, back, DAM_F32, f, n);
    compare_host("upload/download f32", h, back, n, 1e-12);
    G_->copy(gctx, b, f, n);
    G_->copy(gctx, f2, b, n);
    G_->download(gctx, back, DAM_F32, f2, n);
    float *hr = dam_malloc(n * sizeof(float), "check");
    for (size_t i = 0; i < n; i++) hr[i] = bf16_round(h[i]);
    compare_host("copy f32->bf16->f32 (exact rounding)", hr, back, n, 1e-12);
    uint16_t *hb = dam_malloc(n * 2, "check");
    G_->download(gctx, hb, DAM_BF16, b, n);
    for (size_t i = 0; i < n; i++) back[i] = dam_bf16_to_f32(hb[i]);
    compare_host("download bf16 as bf16", hr, back, n, 1e-12);
    G_->fill(gctx, f, 2.5f, n);
    G_->download(gctx, back, DAM_F32, f, n);
    for (size_t i = 0; i < n; i++) hr[i] = 2.5f;
    compare_host("fill 2.5", hr, back, n, 1e-12);
    DevBuf iv = G_->alloc(gctx, 1000, DAM_I32, "i");
    int32_t ih[1000], ib[1000];
    for (int i = 0; i < 1000; i++) ih[i] = i * 7 - 300;
    G_->upload(gctx, iv, ih, DAM_I32, 1000);
    G_->download(gctx, ib, DAM_I32, iv, 1000);
    report("upload/download i32", memcmp(ih, ib, sizeof ih) == 0, 0, 0, NULL);
    BackendEvent *e0 = G_->event_new(gctx), *e1 = G_->event_new(gctx);
    G_->event_record(gctx, e0);
    G_->copy(gctx, f2, f, n);
    G_->event_record(gctx, e1);
    double dt = G_->event_elapsed(gctx, e0, e1);
    report("events (elapsed >= 0)", dt >= 0 && dt < 10, dt, 0, NULL);
    report("host_begin is NULL on the GPU", G_->host_begin(gctx, f) == NULL, 0, 0, NULL);
    G_->event_free(gctx, e0), G_->event_free(gctx, e1);
    G_->free(gctx, &f), G_->free(gctx, &b), G_->free(gctx, &f2), G_->free(gctx, &iv);
    free(h), free(back), free(hr), free(hb);
    check_staging();
}

/* ---------------------------------------------------------------- GEMMs */

static void check_gemms(dam_dtype xt, dam_dtype wt, dam_dtype yt) {
    int T = 67, in = 96, out = 80;
    char name[96];
    for (int acc = 0; acc < 2; acc++) {
        double tol = (xt == DAM_BF16 || wt == DAM_BF16 || yt == DAM_BF16) ? TOL_BF16 : TOL_F32;
        Pair x = pair_rand((size_t)T * in, xt, 1), w = pair_rand((size_t)out * in, wt, 0.1f);
        Pair y = acc ? pair_rand((size_t)T * out, yt, 1) : pair_poison((size_t)T * out, yt);
        C_->matmul_xwt(cctx, y.c, x.c, w.c, T, in, out, acc);
        G_->matmul_xwt(gctx, y.g, x.g, w.g, T, in, out, acc);
        snprintf(name, sizeof name, "matmul_xwt x %s w %s y %s%s", dts(xt), dts(wt), dts(yt),
                 acc ? " acc" : "");
        check_pair(name, y, tol);
        Pair dy = pair_rand((size_t)T * out, xt, 1);
        Pair dx = acc ? pair_rand((size_t)T * in, yt, 1) : pair_poison((size_t)T * in, yt);
        C_->matmul_dyw(cctx, dx.c, dy.c, w.c, T, in, out, acc);
        G_->matmul_dyw(gctx, dx.g, dy.g, w.g, T, in, out, acc);
        snprintf(name, sizeof name, "matmul_dyw dy %s w %s dx %s%s", dts(xt), dts(wt), dts(yt),
                 acc ? " acc" : "");
        check_pair(name, dx, tol);
        Pair g = acc ? pair_rand((size_t)out * in, yt, 1) : pair_poison((size_t)out * in, yt);
        C_->matmul_dytx(cctx, g.c, dy.c, x.c, T, in, out, acc);
        G_->matmul_dytx(gctx, g.g, dy.g, x.g, T, in, out, acc);
        snprintf(name, sizeof name, "matmul_dytx dy %s x %s g %s%s", dts(xt), dts(xt), dts(yt),
                 acc ? " acc" : "");
        check_pair(name, g, tol);
        pair_free(&x), pair_free(&w), pair_free(&y), pair_free(&dy), pair_free(&dx), pair_free(&g);
    }
}

/* ---------------------------------------------------------------- DAM */

enum { NS = 3 };
typedef struct {
    float *host[NS];
    SrcWeight c[NS], g[NS];
} Sources;

/* NS sources of rows x ld stored in sdt; each backend views/uploads columns [0, cols). */
static void sources_new(Sources *s, dam_dtype sdt, size_t rows, size_t cols, size_t ld) {
    for (int i = 0; i < NS; i++) {
        size_t n = rows * ld;
        s->host[i] = rand_host(n, 0.5f);
        if (sdt == DAM_BF16) { /* stored as bf16: keep the raw halves in place of the floats */
            uint16_t *b = (uint16_t *)s->host[i];
            for (size_t j = 0; j < n; j++) b[j] = dam_f32_to_bf16(s->host[i][j]);
        }
        s->c[i] = C_->upload_source(cctx, s->host[i], sdt, rows, cols, ld, "source");
        s->g[i] = G_->upload_source(gctx, s->host[i], sdt, rows, cols, ld, "source");
    }
}

static void sources_free(Sources *s) {
    for (int i = 0; i < NS; i++) {
        C_->free_source(cctx, &s->c[i]);
        G_->free_source(gctx, &s->g[i]);
        free(s->host[i]);
    }
}

static void check_dam(dam_dtype sdt, dam_dtype act, size_t ld_extra) {
    /* rows > 64: several row blocks' atomics; > 2 x 64: strided past the emulated grid-y cap */
    size_t rows = 150, cols = 136, ld = cols + ld_extra;
    char name[96], tag[48];
    snprintf(tag, sizeof tag, "src %s out %s%s", dts(sdt), dts(act), ld_extra ? " ld>cols" : "");
    double tol = tol_for(act);
    Sources s;
    sources_new(&s, sdt, rows, cols, ld);
    for (int scalar = 0; scalar < 2; scalar++) {
        size_t nf = scalar ? NS : NS * cols;
        Pair fc = pair_rand(nf, DAM_F32, 1), m = pair_poison(rows * cols, act);
        C_->dam_materialize(cctx, m.c, s.c, NS, fc.c, rows, cols, scalar);
        G_->dam_materialize(gctx, m.g, s.g, NS, fc.g, rows, cols, scalar);
        snprintf(name, sizeof name, "dam_materialize %s%s", tag, scalar ? " scalar" : "");
        check_pair(name, m, tol);
        Pair G = pair_rand(rows * cols, act, 1), acc = pair_rand(nf, DAM_F32, 1);
        C_->dam_coef_grad(cctx, acc.c, s.c, NS, G.c, rows, cols, scalar);
        G_->dam_coef_grad(gctx, acc.g, s.g, NS, G.g, rows, cols, scalar);
        snprintf(name, sizeof name, "dam_coef_grad %s%s", tag, scalar ? " scalar" : "");
        check_pair(name, acc, act == DAM_BF16 ? TOL_BF16 : 1e-5);
        pair_free(&fc), pair_free(&m), pair_free(&G), pair_free(&acc);
    }
    /* the embedding: rows are the vocabulary, cols = d */
    int T = 150, d = (int)cols;
    int32_t ids[150];
    for (int t = 0; t < T; t++) ids[t] = t % 7 == 3 ? -1 : (int32_t)(dam_rng_u64(&rng) % rows);
    Pair fc = pair_rand((size_t)NS * d, DAM_F32, 1), out = pair_poison((size_t)T * d, act);
    C_->dam_embed_gather(cctx, out.c, s.c, NS, fc.c, ids, T, d);
    G_->dam_embed_gather(gctx, out.g, s.g, NS, fc.g, ids, T, d);
    snprintf(name, sizeof name, "dam_embed_gather %s", tag);
    check_pair(name, out, tol);
    Pair dh = pair_rand((size_t)T * d, act, 1), acc = pair_rand((size_t)NS * d, DAM_F32, 1);
    C_->dam_embed_coef_grad(cctx, acc.c, s.c, NS, dh.c, ids, T, d);
    G_->dam_embed_coef_grad(gctx, acc.g, s.g, NS, dh.g, ids, T, d);
    snprintf(name, sizeof name, "dam_embed_coef_grad %s", tag);
    check_pair(name, acc, act == DAM_BF16 ? TOL_BF16 : 1e-5);
    Pair wg = pair_rand(rows * (size_t)d, DAM_F32, 1); /* finetune's embedding weight gradient */
    C_->embed_grad(cctx, wg.c, dh.c, ids, T, d);
    G_->embed_grad(gctx, wg.g, dh.g, ids, T, d);
    snprintf(name, sizeof name, "embed_grad %s", tag);
    check_pair(name, wg, act == DAM_BF16 ? TOL_BF16 : 1e-5);
    pair_free(&fc), pair_free(&out), pair_free(&dh), pair_free(&acc), pair_free(&wg);
    sources_free(&s);
}

/* ---------------------------------------------------------------- transformer ops */

static void check_norm(dam_dtype act) {
    int T = 133, d = 200; /* T > 64: dw from several row blocks; > 2 x 64: past the emulated grid-y cap */
    char name[64];
    double tol = tol_for(act);
    Pair x = pair_rand((size_t)T * d, act, 1), w = pair_rand((size_t)d, act, 1);
    Pair out = pair_poison((size_t)T * d, act), rstd = pair_poison((size_t)T, DAM_F32);
    C_->rmsnorm_fwd(cctx, out.c, rstd.c, x.c, w.c, T, d, 1e-5f);
    G_->rmsnorm_fwd(gctx, out.g, rstd.g, x.g, w.g, T, d, 1e-5f);
    snprintf(name, sizeof name, "rmsnorm_fwd %s", dts(act));
    check_pair(name, out, tol);
    snprintf(name, sizeof name, "rmsnorm_fwd rstd (%s x)", dts(act));
    check_pair(name, rstd, 1e-5);
    for (int acc = 0; acc < 2; acc++) {
        Pair dout = pair_rand((size_t)T * d, act, 1), dw = pair_rand((size_t)d, DAM_F32, 1);
        Pair dx = acc ? pair_rand((size_t)T * d, act, 1) : pair_poison((size_t)T * d, act);
        C_->rmsnorm_bwd(cctx, dx.c, dw.c, dout.c, x.c, rstd.c, w.c, T, d, acc);
        G_->rmsnorm_bwd(gctx, dx.g, dw.g, dout.g, x.g, rstd.g, w.g, T, d, acc);
        snprintf(name, sizeof name, "rmsnorm_bwd dx %s%s", dts(act), acc ? " acc" : "");
        check_pair(name, dx, tol);
        snprintf(name, sizeof name, "rmsnorm_bwd dw (%s)%s", dts(act), acc ? " acc" : "");
        check_pair(name, dw, act == DAM_BF16 ? TOL_BF16 : 1e-5);
        pair_free(&dout), pair_free(&dw), pair_free(&dx);
    }
    pair_free(&x), pair_free(&w), pair_free(&out), pair_free(&rstd);
}

/* rmsnorm's weight gradient past the grid-y cap: its launch has one y-block per 64 rows (NORM_DW_ROWS,
 * cuda/norm.cuh), capped at DAM_CUDA_GRID_Y_MAX (CUDA's 65535; the emulated build sets it to 2), and
 * the kernel strides over the chunks beyond. rows = (cap + 1) x 64 + 7: two chunks past the cap, the
 * last partial. On a GPU that is 4.2M rows of d = 8 (134 MB a buffer); F32. dw is checked against
 * double sums on the host: the CPU backend's sequential fp32 sum over 4M rows drifts by ~1e-4, while
 * a kernel that ignored the chunks past the cap would lose 71 of 4.2M rows, ~4e-3. */
#ifndef DAM_CUDA_GRID_Y_MAX
#define DAM_CUDA_GRID_Y_MAX 65535
#endif
static void check_norm_rows_past_grid_cap(void) {
    int d = 8, T = (DAM_CUDA_GRID_Y_MAX + 1) * 64 + 7;
    size_t n = (size_t)T * d;
    Pair x = pair_rand(n, DAM_F32, 1), w = pair_rand((size_t)d, DAM_F32, 1);
    Pair out = pair_poison(n, DAM_F32), rstd = pair_poison((size_t)T, DAM_F32);
    C_->rmsnorm_fwd(cctx, out.c, rstd.c, x.c, w.c, T, d, 1e-5f);
    G_->rmsnorm_fwd(gctx, out.g, rstd.g, x.g, w.g, T, d, 1e-5f);
    check_pair("rmsnorm_fwd rows past grid cap", out, 1e-5);
    Pair dout = pair_rand(n, DAM_F32, 1), dw = pair_rand((size_t)d, DAM_F32, 1), dx = pair_poison(n, DAM_F32);
    float *hx = dam_malloc(n * sizeof(float), "check"), *hg = dam_malloc(n * sizeof(float), "check");
    float *hr = dam_malloc((size_t)T * sizeof(float), "check"),
          *hw = dam_malloc((size_t)d * 2 * sizeof(float), "check");
    C_->download(cctx, hx, DAM_F32, x.c, n);
    C_->download(cctx, hg, DAM_F32, dout.c, n);
    C_->download(cctx, hr, DAM_F32, rstd.c, (size_t)T);
    C_->download(cctx, hw, DAM_F32, dw.c, (size_t)d);
    double ref[8];
    for (int j = 0; j < d; j++) ref[j] = hw[j];
    for (size_t t = 0; t < (size_t)T; t++)
        for (int j = 0; j < d; j++) ref[j] += (double)hg[t * d + j] * ((double)hx[t * d + j] * hr[t]);
    G_->rmsnorm_bwd(gctx, dx.g, dw.g, dout.g, x.g, rstd.g, w.g, T, d, 0);
    C_->rmsnorm_bwd(cctx, dx.c, dw.c, dout.c, x.c, rstd.c, w.c, T, d, 0);
    check_pair("rmsnorm_bwd dx rows past grid cap", dx, 1e-5);
    float refv[8];
    for (int j = 0; j < d; j++) refv[j] = (float)ref[j];
    G_->download(gctx, hw + d, DAM_F32, dw.g, (size_t)d);
    compare_host("rmsnorm_bwd dw rows past grid cap", refv, hw + d, (size_t)d, 1e-4);
    free(hx), free(hg), free(hr), free(hw);
    pair_free(&x), pair_free(&w), pair_free(&out), pair_free(&rstd);
    pair_free(&dout), pair_free(&dw), pair_free(&dx);
}

static void check_rope(dam_dtype act) {
    int B = 2, T = 19, heads = 3, hd = 16, half = hd / 2;
    char name[64];
    float *cs = dam_malloc((size_t)T * half * sizeof(float), "c"),
          *sn = dam_malloc((size_t)T * half * sizeof(float), "s");
    for (int t = 0; t < T; t++)
        for (int k = 0; k < half; k++) {
            double f = t * pow(10000.0, -2.0 * k / hd);
            cs[t * half + k] = (float)cos(f), sn[t * half + k] = (float)sin(f);
        }
    Pair c = pair_new((size_t)T * half, DAM_F32), s = pair_new((size_t)T * half, DAM_F32);
    pair_set(c, cs), pair_set(s, sn);
    for (int inv = 0; inv < 2; inv++) {
        Pair x = pair_rand((size_t)B * T * heads * hd, act, 1);
        C_->rope(cctx, x.c, c.c, s.c, B * T, T, heads, hd, inv);
        G_->rope(gctx, x.g, c.g, s.g, B * T, T, heads, hd, inv);
        snprintf(name, sizeof name, "rope %s%s", dts(act), inv ? " inverse" : "");
        check_pair(name, x, tol_for(act));
        pair_free(&x);
    }
    pair_free(&c), pair_free(&s), free(cs), free(sn);
}

static void check_attention(dam_dtype act, int B, int T, int H, int KV, int hd, int window) {
    AttnShape s = {B, T, H, KV, hd, window, 1.0f / sqrtf((float)hd)};
    char tag[80], name[128];
    snprintf(tag, sizeof tag, "%s B%d T%d H%d KV%d hd%d w%d", dts(act), B, T, H, KV, hd, window);
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * KV * hd, nl = (size_t)B * H * T;
    double tol = tol_for(act);
    Pair q = pair_rand(nq, act, 1), k = pair_rand(nk, act, 1), v = pair_rand(nk, act, 1);
    Pair out = pair_poison(nq, act), lse = pair_poison(nl, DAM_F32);
    C_->attention_fwd(cctx, out.c, lse.c, q.c, k.c, v.c, &s);
    G_->attention_fwd(gctx, out.g, lse.g, q.g, k.g, v.g, &s);
    snprintf(name, sizeof name, "attention_fwd out %s", tag);
    check_pair(name, out, tol);
    snprintf(name, sizeof name, "attention_fwd lse %s", tag);
    check_pair(name, lse, act == DAM_BF16 ? TOL_BF16 : 1e-5);
    pair_sync_from_cpu(out), pair_sync_from_cpu(lse); /* the backward from the same forward */
    Pair dout = pair_rand(nq, act, 1), dq = pair_poison(nq, act), dk = pair_poison(nk, act),
         dv = pair_poison(nk, act);
    C_->attention_bwd(cctx, dq.c, dk.c, dv.c, dout.c, out.c, lse.c, q.c, k.c, v.c, &s);
    G_->attention_bwd(gctx, dq.g, dk.g, dv.g, dout.g, out.g, lse.g, q.g, k.g, v.g, &s);
    double dv_norm = pair_norm(dv); /* the scale of the gradients; dq, dk are ~0 with a window of 1 */
    snprintf(name, sizeof name, "attention_bwd dq %s", tag);
    check_pair_floor(name, dq, tol, dv_norm);
    snprintf(name, sizeof name, "attention_bwd dk %s", tag);
    check_pair_floor(name, dk, tol, dv_norm);
    snprintf(name, sizeof name, "attention_bwd dv %s", tag);
    check_pair(name, dv, tol);
    pair_free(&q), pair_free(&k), pair_free(&v), pair_free(&out), pair_free(&lse);
    pair_free(&dout), pair_free(&dq), pair_free(&dk), pair_free(&dv);
}

static void check_elementwise(dam_dtype act) {
    size_t n = 5000;
    int T = 137, cols = 135; /* T > 64: colsum from several row blocks, > 2 x 64 past the emulated
                                  grid-y cap; prime to 5 (rows below) */
    char name[64];
    double tol = tol_for(act);
    Pair gate = pair_rand(n, act, 2), up = pair_rand(n, act, 1), a = pair_poison(n, act);
    C_->swiglu_fwd(cctx, a.c, gate.c, up.c, n);
    G_->swiglu_fwd(gctx, a.g, gate.g, up.g, n);
    snprintf(name, sizeof name, "swiglu_fwd %s", dts(act));
    check_pair(name, a, tol);
    Pair dact = pair_rand(n, act, 1), dg = pair_poison(n, act), du = pair_poison(n, act);
    C_->swiglu_bwd(cctx, dg.c, du.c, dact.c, gate.c, up.c, n);
    G_->swiglu_bwd(gctx, dg.g, du.g, dact.g, gate.g, up.g, n);
    snprintf(name, sizeof name, "swiglu_bwd dgate %s", dts(act));
    check_pair(name, dg, tol);
    snprintf(name, sizeof name, "swiglu_bwd dup %s", dts(act));
    check_pair(name, du, tol);
    Pair y = pair_rand((size_t)T * cols, act, 1), b = pair_rand((size_t)cols, act, 1);
    C_->add_bias(cctx, y.c, b.c, T, cols);
    G_->add_bias(gctx, y.g, b.g, T, cols);
    snprintf(name, sizeof name, "add_bias %s", dts(act));
    check_pair(name, y, tol);
    C_->add(cctx, a.c, up.c, n);
    G_->add(gctx, a.g, up.g, n);
    snprintf(name, sizeof name, "add %s", dts(act));
    check_pair(name, a, tol);
    C_->scale(cctx, a.c, -0.37f, n);
    G_->scale(gctx, a.g, -0.37f, n);
    snprintf(name, sizeof name, "scale %s", dts(act));
    check_pair(name, a, tol);
    Pair cs = pair_poison((size_t)cols, DAM_F32);
    C_->colsum(cctx, cs.c, y.c, T, cols);
    G_->colsum(gctx, cs.g, y.g, T, cols);
    snprintf(name, sizeof name, "colsum (dy %s)", dts(act));
    check_pair(name, cs, act == DAM_BF16 ? TOL_BF16 : 1e-5);
    pair_sync_from_cpu(y); /* the same numbers on both sides: a gather is exact */
    int32_t rows[11];
    for (int r = 0; r < 11; r++) rows[r] = (r * 5 + 3) % T; /* distinct rows (T prime to 5) */
    Pair dst = pair_poison((size_t)11 * cols, DAM_F32);
    C_->gather_rows(cctx, dst.c, y.c, rows, 11, cols);
    G_->gather_rows(gctx, dst.g, y.g, rows, 11, cols);
    snprintf(name, sizeof name, "gather_rows %s -> f32", dts(act));
    check_pair(name, dst, 1e-6);
    C_->scatter_rows(cctx, y.c, dst.c, rows, 11, cols);
    G_->scatter_rows(gctx, y.g, dst.g, rows, 11, cols);
    snprintf(name, sizeof name, "scatter_rows f32 -> %s", dts(act));
    check_pair(name, y, tol);
    pair_free(&gate), pair_free(&up), pair_free(&a), pair_free(&dact), pair_free(&dg), pair_free(&du);
    pair_free(&y), pair_free(&b), pair_free(&cs), pair_free(&dst);
    /* copy within one buffer, the ranges overlapping (the contract: memmove's result), both ways */
    Pair m = pair_rand(1000, act, 1);
    size_t shifts[2][2] = {{3, 0}, {0, 5}}; /* {dst offset, src offset} */
    for (int k = 0; k < 2; k++) {
        C_->copy(cctx, devbuf_slice(m.c, shifts[k][0], 900), devbuf_slice(m.c, shifts[k][1], 900), 900);
        G_->copy(gctx, devbuf_slice(m.g, shifts[k][0], 900), devbuf_slice(m.g, shifts[k][1], 900), 900);
        snprintf(name, sizeof name, "copy overlapping %s (%s)", dts(act), k ? "down" : "up");
        check_pair(name, m, 1e-12);
    }
    pair_free(&m);
}

/* ---------------------------------------------------------------- losses */

/* A vocabulary-parallel group of two, simulated: the other rank contributes nothing to sums and
 * maxima, and its top-K candidates are ours with ids shifted past our share and values halved. The
 * same callbacks serve both backends, so their results must agree; this runs the reducer paths. */
typedef struct {
    int V;
} FakeGroup;
static void fake_sum(void *ctx, double *buf, int n) { (void)ctx, (void)buf, (void)n; }
static void fake_max(void *ctx, double *buf, int n) { (void)ctx, (void)buf, (void)n; }
static void fake_gather(void *ctx, const int32_t *ids, const float *vals, int n, int32_t *all_ids,
                        float *all_vals) {
    int V = ((FakeGroup *)ctx)->V;
    for (int i = 0; i < n; i++) {
        all_ids[i] = ids[i], all_vals[i] = vals[i];
        all_ids[n + i] = ids[i] + V, all_vals[n + i] = vals[i] * 0.5f;
    }
}

static void check_losses(int with_reducer) {
    int C = 13, V = 1003, K = 7;
    char name[96];
    const char *tag = with_reducer ? " (reducer)" : "";
    FakeGroup fg = {V};
    LossReduce red = {&fg, 2, fake_sum, fake_max, fake_gather};
    Pair z = pair_rand((size_t)C * V, DAM_F32, 3), zt = pair_rand((size_t)C * V, DAM_F32, 3);
    for (int i = 0; i < C * 3; i++) { /* a few ties in the teacher's rows, for the top-K order */
        float one = 7.0f;
        size_t at = (size_t)(i / 3) * V + (size_t)(i % 3) * 11;
        C_->upload(cctx, devbuf_slice(zt.c, at, 1), &one, DAM_F32, 1);
        G_->upload(gctx, devbuf_slice(zt.g, at, 1), &one, DAM_F32, 1);
    }
    Pair idx = pair_new((size_t)C * K, DAM_I32), val = pair_poison((size_t)C * K, DAM_F32);
    C_->loss_topk(cctx, idx.c, val.c, zt.c, C, V, K, 0, with_reducer ? &red : NULL);
    G_->loss_topk(gctx, idx.g, val.g, zt.g, C, V, K, 0, with_reducer ? &red : NULL);
    int32_t *ia = dam_malloc((size_t)C * K * 4, "i"), *ib = dam_malloc((size_t)C * K * 4, "i");
    C_->download(cctx, ia, DAM_I32, idx.c, (size_t)C * K);
    G_->download(gctx, ib, DAM_I32, idx.g, (size_t)C * K);
    snprintf(name, sizeof name, "loss_topk ids (ties by lower id)%s", tag);
    report(name, memcmp(ia, ib, (size_t)C * K * 4) == 0, 0, 0, NULL);
    snprintf(name, sizeof name, "loss_topk values%s", tag);
    check_pair(name, val, 1e-6);
    struct {
        const char *what;
        int kl, K;
        float mse, ent;
    } cases[] = {{"kl", 1, 0, 0, 0},
                 {"kl+mse+entropy", 1, 0, 0.3f, 0.2f},
                 {"entropy only", 0, 0, 0, 0.5f},
                 {"top-k kl + mse", 1, K, 0.3f, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        LossChunkParams p = {2.0f,
                             cases[c].kl,
                             cases[c].mse,
                             cases[c].ent,
                             cases[c].K,
                             1.0f / 40,
                             V,
                             0,
                             with_reducer ? &red : NULL,
                             c % 2 ? 2 : 1}; /* every other case: loss.kl_reduction batchmean, B = 2 */
        LossSums sc = {0.1, 0.2, 0.3}, sg = sc;
        Pair dz = pair_poison((size_t)C * V, DAM_F32);
        C_->loss_rows(cctx, dz.c, &sc, z.c, zt.c, idx.c, val.c, C, V, &p, 0.5f);
        G_->loss_rows(gctx, dz.g, &sg, z.g, zt.g, idx.g, val.g, C, V, &p, 0.5f);
        snprintf(name, sizeof name, "loss_rows dz %s%s", cases[c].what, tag);
        check_pair(name, dz, TOL_F32);
        snprintf(name, sizeof name, "loss_rows kl sum %s%s", cases[c].what, tag);
        compare_scalar(name, sc.kl, sg.kl, TOL_F32);
        snprintf(name, sizeof name, "loss_rows mse sum %s%s", cases[c].what, tag);
        compare_scalar(name, sc.mse, sg.mse, TOL_F32);
        snprintf(name, sizeof name, "loss_rows entropy sum %s%s", cases[c].what, tag);
        compare_scalar(name, sc.entropy, sg.entropy, TOL_F32);
        pair_free(&dz);
    }
    free(ia), free(ib);
    pair_free(&z), pair_free(&zt), pair_free(&idx), pair_free(&val);
}

/* ---------------------------------------------------------------- coefficients and optimizer */

static void check_optim(void) {
    int ns = 4, dim = 777;
    size_t n = (size_t)ns * dim;
    char name[64];
    Pair c = pair_rand(n, DAM_F32, 1);
    for (int f = 0; f < 4; f++) {
        Pair fc = pair_poison(n, DAM_F32), g = pair_rand(n, DAM_F32, 1);
        C_->coef_nonlin(cctx, fc.c, c.c, n, (Nonlinearity)f);
        G_->coef_nonlin(gctx, fc.g, c.g, n, (Nonlinearity)f);
        snprintf(name, sizeof name, "coef_nonlin f=%d", f);
        check_pair(name, fc, TOL_F32);
        C_->coef_nonlin_grad(cctx, g.c, c.c, n, (Nonlinearity)f);
        G_->coef_nonlin_grad(gctx, g.g, c.g, n, (Nonlinearity)f);
        snprintf(name, sizeof name, "coef_nonlin_grad f=%d", f);
        check_pair(name, g, TOL_F32);
        pair_free(&fc), pair_free(&g);
    }
    compare_scalar("sumsq", C_->sumsq(cctx, c.c, n), G_->sumsq(gctx, c.g, n), 1e-9);
    double Ga[16], Gb[16], A[16];
    C_->coef_gram(cctx, Ga, c.c, ns, dim);
    G_->coef_gram(gctx, Gb, c.g, ns, dim);
    float fa[16], fb[16];
    for (int i = 0; i < ns * ns; i++) fa[i] = (float)Ga[i], fb[i] = (float)Gb[i], A[i] = dam_rng_normal(&rng);
    compare_host("coef_gram", fa, fb, (size_t)ns * ns, 1e-7);
    Pair g = pair_rand(n, DAM_F32, 1);
    C_->coef_mix_grad(cctx, g.c, c.c, A, ns, dim);
    G_->coef_mix_grad(gctx, g.g, c.g, A, ns, dim);
    check_pair("coef_mix_grad", g, TOL_F32);
    compare_scalar("coef_l1 value", C_->coef_l1(cctx, g.c, c.c, n, 0.01),
                   G_->coef_l1(gctx, g.g, c.g, n, 0.01), 1e-9);
    check_pair("coef_l1 gradient", g, TOL_F32);
    float *h = rand_host(n, 1);
    for (int k = 0; k < dim; k += 5) h[dim + k] = -h[k]; /* |c_0| = |c_1|: the half-and-half ties */
    Pair c2 = pair_new(n, DAM_F32);
    pair_set(c2, h);
    compare_scalar("coef_overlap value", C_->coef_overlap(cctx, g.c, c2.c, ns, dim, 0.2),
                   G_->coef_overlap(gctx, g.g, c2.g, ns, dim, 0.2), 1e-9);
    check_pair("coef_overlap gradient", g, TOL_F32);
    size_t np = (size_t)(ns * (ns - 1) / 2) * dim; /* the weighted overlap: the ties go to row 0 */
    Pair wts = pair_rand(np, DAM_F32, 1);
    compare_scalar("coef_weighted_overlap value",
                   C_->coef_weighted_overlap(cctx, g.c, c2.c, wts.c, ns, dim, 0.2),
                   G_->coef_weighted_overlap(gctx, g.g, c2.g, wts.g, ns, dim, 0.2), 1e-9);
    check_pair("coef_weighted_overlap gradient", g, TOL_F32);
    pair_free(&wts);
    float ta = C_->mofo_threshold(cctx, c.c, n, 0.1f), tb = G_->mofo_threshold(gctx, c.g, n, 0.1f);
    report("mofo_threshold (exact)", ta == tb, fabs((double)ta - tb), fabs((double)ta - tb), NULL);
    for (int mofo = 0; mofo < 5; mofo++) {
        Pair cc = pair_rand(n, DAM_F32, 1), gg = pair_rand(n, DAM_F32, 1), m = pair_rand(n, DAM_F32, 0.1f);
        Pair v = pair_rand(n, DAM_F32, 0.1f);
        float *hv = dam_malloc(n * sizeof(float), "v");
        C_->download(cctx, hv, DAM_F32, v.c, n);
        for (size_t i = 0; i < n; i++) hv[i] = fabsf(hv[i]); /* a second moment is >= 0 */
        pair_set(v, hv);
        free(hv);
        /* mofo 0: plain AdamW; 1: a given threshold; 2: the threshold from the updated moments;
         * 3, 4: AdamW and MoFO on bf16 coefficients (merge.coef_dtype bfloat16: bit for bit) */
        AdamParams p = {1e-2f,
                        0.9f,
                        0.999f,
                        1e-8f,
                        0.01f,
                        3,
                        mofo == 1 ? 0.05f : -1.0f,
                        mofo == 2 || mofo == 4 ? 0.3f : 0.0f,
                        {ADAM_F32}};
        if (mofo >= 3) /* the scalars of optim.c's bf16_scalars at lr 1e-2, wd 0.01, t = 3 */
            p.bf16 = (AdamBf16){mofo == 3 ? ADAM_BF16_ADAMW : ADAM_BF16_MOFO,
                                (float)(1.0 - 1e-2 * 0.01),
                                0.9f,
                                mofo == 3 ? 0.1f : adam_bf16(0.1f),
                                0.999f,
                                (float)(1.0 - 0.999),
                                (float)sqrt(1.0 - pow(0.999, 3)),
                                1e-8f,
                                mofo == 3 ? (float)(-1e-2 / (1.0 - pow(0.9, 3)))
                                          : adam_bf16((float)(-1e-2 / (1.0 - pow(0.9, 3))))};
        C_->adamw(cctx, cc.c, gg.c, m.c, v.c, n, &p);
        G_->adamw(gctx, cc.g, gg.g, m.g, v.g, n, &p);
        static const char *const hows[] = {"", " (mofo threshold)", " (mofo alpha)", " (bf16)",
                                           " (bf16 mofo)"};
        double tol = mofo >= 3 ? 1e-30 : TOL_F32; /* bf16: no difference at all (rel < tol) */
        snprintf(name, sizeof name, "adamw c%s", hows[mofo]);
        check_pair(name, cc, tol);
        snprintf(name, sizeof name, "adamw m%s", hows[mofo]);
        check_pair(name, m, tol);
        snprintf(name, sizeof name, "adamw v%s", hows[mofo]);
        check_pair(name, v, tol);
        pair_free(&cc), pair_free(&gg), pair_free(&m), pair_free(&v);
    }
    free(h);
    pair_free(&c), pair_free(&c2), pair_free(&g);
}

int main(int argc, char **argv) {
    dam_rng_seed(&rng, argc > 1 ? (uint64_t)strtoull(argv[1], NULL, 10) : 1234);
    const char *under_test = argc > 2 ? argv[2] : "cuda";
    C_ = backend_cpu();
    G_ = strcmp(under_test, "cuda") == 0 ? backend_cuda() : backend_by_name(under_test);
    if (!G_) {
        printf("check_kernels: this build has no CUDA backend\n");
        return 2;
    }
    printf("check_kernels: backend %s against cpu, seed %s\n", G_->name, argc > 1 ? argv[1] : "1234");
    fflush(stdout);
    cctx = C_->ctx_new(0);
    gctx = G_->ctx_new(0);
    if (G_->device != DAM_DEVICE_CPU) check_transfers();
    int bf16 = G_->act_dtype == DAM_BF16; /* a CPU-side backend under test has F32 buffers only */
    dam_dtype acts[2] = {DAM_F32, DAM_BF16};
    for (int a = 0; a < 1 + bf16; a++) {
        dam_dtype t = acts[a];
        check_gemms(t, t, t);
        if (bf16 || a == 0) check_dam(DAM_BF16, t, 0);
        check_dam(DAM_F32, t, 8);
        check_norm(t);
        check_rope(t);
        check_attention(t, 2, 37, 4, 2, 16, 0);
        check_attention(t, 1, 70, 2, 1, 32, 9);
        check_attention(t, 1, 40, 2, 2, 128, 0); /* more than 48 KiB of shared memory */
        check_attention(t, 1, 300, 2, 1, 16, 0); /* past the CPU's 128-key tiles */
        check_attention(t, 3, 5, 4, 1, 8, 1);    /* window 1: each query sees itself only */
        check_attention(t, 1, 20, 2, 1, 256, 7); /* hd 256 (Gemma): ~100 KiB of shared memory */
        check_elementwise(t);
    }
    if (bf16) {
        check_gemms(DAM_F32, DAM_BF16, DAM_BF16); /* dL/dz (F32) against a bf16 weight */
        check_gemms(DAM_BF16, DAM_BF16, DAM_F32);
        check_gemms(DAM_F32, DAM_F32, DAM_BF16); /* no such cublasGemmEx: computed in bf16 */
    }
    if (G_->device != DAM_DEVICE_CPU) check_norm_rows_past_grid_cap(); /* a CUDA limit: GPU backends only */
    check_losses(0);
    check_losses(1);
    check_optim();
    G_->ctx_free(gctx);
    C_->ctx_free(cctx);
    printf("check_kernels: %d passed, %d failed\n", n_ok, n_bad);
    return n_bad ? 1 : 0;
}
