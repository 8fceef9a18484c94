/* Before every #include (see vmath.h): the exponentials of the SwiGLU and of the attention's softmax
 * vectorize only without trapping math, and only if the headers' inline helpers are compiled under
 * the same options. Nothing here reads floating-point exception flags. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

/* backend_cpu.c — the reference backend: fp32 activations and compute with OpenBLAS sgemm; source
 * weights read in their stored dtype straight from the mapping (upload_source is a view, never a
 * copy, and never expanded wholesale). The ops trust their arguments: backend_api.c's front checked
 * them (backend_impl.h says what it guarantees). */
#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cblas.h>

#include "adam_bf16.h"
#include "backend_impl.h"
#include "threadpool.h"
#include "vmath.h"

#ifdef DAM_WITH_DNNL
#include <oneapi/dnnl/dnnl.h>
/* oneDNN 2.x exports its bf16 GEMM (row-major, as dnnl_sgemm; fp32 accumulation and output) without
 * declaring it in the public header; bf16 values are passed as their 16 bits. */
dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N, dnnl_dim_t K,
                                    float alpha, const uint16_t *A, dnnl_dim_t lda, const uint16_t *B,
                                    dnnl_dim_t ldb, float beta, float *C, dnnl_dim_t ldc);
#endif

/* Attention tiles: queries and keys in blocks of ATTN_TILE, so that the scratch is constant in T. */
enum { ATTN_TILE = 128, ATTN_SCRATCH = 2 * ATTN_TILE * ATTN_TILE + 2 * ATTN_TILE };
int cpu_attention_tile(void) { return ATTN_TILE; }

/* bf16 copies of GEMM operands, reused while nothing else was written (see bf16_copy). */
enum { BF16_CACHE = 6 };
typedef struct {
    const void *src; /* the fp32 buffer it was made from, NULL: unused */
    size_t n;
    unsigned long epoch; /* ctx->epoch when made */
    uint16_t *bf16;
    size_t cap;
} Bf16Copy;

struct BackendCtx {
    ThreadPool *pool;      /* the non-GEMM ops' threads (threadpool.h) */
    float *attn_scratch;   /* ATTN_SCRATCH floats per thread: one (sequence, head) at a time */
    dam_dtype gemm_inputs; /* DAM_F32, or DAM_BF16: GEMM inputs rounded to bf16 (set_gemm_inputs) */
    /* Bumped by every op that writes device memory other than a GEMM's output: a bf16 copy made at
     * an earlier epoch may be stale. */
    unsigned long epoch;
    Bf16Copy copies[BF16_CACHE];
    unsigned next_slot;
};

/* An op that writes device memory (other than a GEMM's output) invalidates the bf16 copies. */
#define WRITES(ctx) ((ctx)->epoch++)

struct BackendEvent {
    double t;
};

/* The data of DevBuf b as a float / int32 array (dtype and length checked by the front). */
#define F32(b) ((float *)(b).ptr)
#define I32(b) ((int32_t *)(b).ptr)

static int storable(dam_dtype t) { return t == DAM_F32 || t == DAM_BF16 || t == DAM_I32; }

/* n elements from src (dtype st) to dst (dtype dt): the same dtype, or F32 <-> BF16 (the front let
 * no other conversion through). */
static void convert(void *dst, dam_dtype dt, const void *src, dam_dtype st, size_t n, const char *op) {
    if (dt == st && storable(dt)) {
        memmove(dst, src, n * dam_dtype_size(dt));
    } else if (dt == DAM_F32 && st == DAM_BF16) {
        const uint16_t *s = src;
        float *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = dam_bf16_to_f32(s[i]);
    } else if (dt == DAM_BF16 && st == DAM_F32) {
        const float *s = src;
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = dam_f32_to_bf16(s[i]);
    } else {
        dam_fail("%s: cannot convert %s to %s (internal error)", op, dam_dtype_name(st), dam_dtype_name(dt));
    }
}

/* ---------------------------------------------------------------- context, memory, transfers */

static BackendCtx *cpu_ctx_new(int device_index) {
    BackendCtx *c = dam_calloc(1, sizeof *c, "CPU backend context");
    c->pool = pool_new(pool_default_threads());
    c->attn_scratch =
        dam_malloc((size_t)pool_threads(c->pool) * ATTN_SCRATCH * sizeof(float), "attention scratch");
    c->gemm_inputs = DAM_F32;
    return c;
}

static void cpu_ctx_free(BackendCtx *c) {
    if (!c) return;
    pool_free(c->pool);
    free(c->attn_scratch);
    for (int i = 0; i < BF16_CACHE; i++) free(c->copies[i].bf16);
    free(c);
}

/* Elements [lo, hi) of an op's range (its arguments in `op`). */
typedef void (*RangeBody)(const void *op, size_t lo, size_t hi);
typedef struct {
    RangeBody body;
    const void *op;
    size_t n;
    int parts;
} RangeJob;

static void range_part(void *arg, int part, int thread) {
    const RangeJob *j = arg;
    size_t lo, hi;
    pool_split(j->n, j->parts, part, &lo, &hi);
    j->body(j->op, lo, hi);
}

static int parts_for(const BackendCtx *c, size_t n, size_t grain);

/* body over [0, n) in parts of at least `grain` units on the pool's threads: for ops whose every
 * unit (element, row, column) is computed the same way in any split. */
static void parallel_range(BackendCtx *ctx, size_t n, size_t grain, RangeBody body, const void *op) {
    RangeJob j = {body, op, n, parts_for(ctx, n, grain)};
    pool_run(ctx->pool, j.parts, range_part, &j);
}

/* Parts for n units of work of which each part should have at least `grain`: a few per thread
 * (balance), one when single-threaded. Only ops whose result does not depend on the split use it. */
static int parts_for(const BackendCtx *c, size_t n, size_t grain) {
    int t = pool_threads(c->pool);
    if (t == 1 || n < 2 * grain) return 1;
    size_t p = n / grain;
    return p < (size_t)(4 * t) ? (int)p : 4 * t;
}

static DevBuf cpu_alloc(BackendCtx *ctx, size_t n, dam_dtype dtype, const char *what) {
    size_t es = dam_dtype_size(dtype);
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n * es : 64) != 0)
        dam_fail("out of memory: %zu bytes for %s", n * es, what);
    memset(p, 0, n ? n * es : 64);
    return (DevBuf){p, n, dtype, DAM_DEVICE_CPU};
}

static void cpu_free(BackendCtx *ctx, DevBuf *b) {
    WRITES(ctx);
    free(b->ptr);
    b->ptr = NULL, b->n = 0;
}

/* Elements a tensor of rows x cols with row stride ld spans. */
static size_t span(size_t rows, size_t cols, size_t ld) { return rows ? (rows - 1) * ld + cols : 0; }

static SrcWeight cpu_upload_source(BackendCtx *ctx, const void *host, dam_dtype dtype, size_t rows,
                                   size_t cols, size_t ld, const char *what) {
    if (!ld) ld = cols;
    return (SrcWeight){{(void *)host, span(rows, cols, ld), dtype, DAM_DEVICE_CPU}, ld};
}

static void cpu_free_source(BackendCtx *ctx, SrcWeight *s) { s->w.ptr = NULL, s->w.n = 0; }

/* The mapping's pages that lie wholly inside the tensor are dropped (they are read again from the
 * file if touched); a page shared with a neighbouring tensor stays. */
static void cpu_release_source(BackendCtx *ctx, const SrcWeight *s, size_t rows, size_t cols) {
    static long page = 0;
    if (!page) page = sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)s->w.ptr, hi = lo + span(rows, cols, s->ld) * dam_dtype_size(s->w.dtype);
    lo = (lo + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    hi &= ~((uintptr_t)page - 1);
    if (s->w.ptr && hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static void cpu_upload(BackendCtx *ctx, DevBuf dst, const void *host, dam_dtype host_dtype, size_t n) {
    WRITES(ctx);
    convert(dst.ptr, dst.dtype, host, host_dtype, n, "upload");
}

static void cpu_download(BackendCtx *ctx, void *host, dam_dtype host_dtype, DevBuf src, size_t n) {
    convert(host, host_dtype, src.ptr, src.dtype, n, "download");
}

static void cpu_copy(BackendCtx *ctx, DevBuf dst, DevBuf src, size_t n) {
    WRITES(ctx);
    convert(dst.ptr, dst.dtype, src.ptr, src.dtype, n, "copy");
}

static void cpu_fill(BackendCtx *ctx, DevBuf dst, float value, size_t n) {
    WRITES(ctx);
    if (value == 0.0f && !signbit(value)) {
        memset(dst.ptr, 0, n * dam_dtype_size(dst.dtype));
    } else if (dst.dtype == DAM_F32) {
        for (size_t i = 0; i < n; i++) ((float *)dst.ptr)[i] = value;
    } else if (dst.dtype == DAM_BF16) {
        uint16_t h = dam_f32_to_bf16(value);
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst.ptr)[i] = h;
    } else {
        for (size_t i = 0; i < n; i++) ((int32_t *)dst.ptr)[i] = (int32_t)value;
    }
}

static void cpu_synchronize(BackendCtx *ctx) {}

static BackendEvent *cpu_event_new(BackendCtx *ctx) { return dam_calloc(1, sizeof(BackendEvent), "event"); }
static void cpu_event_free(BackendCtx *ctx, BackendEvent *e) { free(e); }
static void cpu_event_record(BackendCtx *ctx, BackendEvent *e) { e->t = dam_now(); }
static double cpu_event_elapsed(BackendCtx *ctx, BackendEvent *a, BackendEvent *b) { return b->t - a->t; }

/* The memory is the host's: MPI works on it directly. */
static void *cpu_host_begin(BackendCtx *ctx, DevBuf b) {
    WRITES(ctx); /* the caller may write it (MPI) */
    return b.ptr;
}
static void cpu_host_end(BackendCtx *ctx, DevBuf b) {}

/* ---------------------------------------------------------------- GEMMs */

/* The GEMMs' inputs: fp32 (sgemm), or rounded to bf16 with fp32 accumulation (oneDNN's
 * dnnl_gemm_bf16bf16f32 on AVX512-BF16/AMX CPUs; the CUDA backend's contract, cuda/gemm.h). */
static void cpu_set_gemm_inputs(BackendCtx *ctx, dam_dtype dtype) {
#ifndef DAM_WITH_DNNL
    if (dtype == DAM_BF16)
        dam_fail(
            "parallel.cpu_matmul \"bf16\": this dam_dist was built without oneDNN (libdnnl-dev; make info "
            "says whether it is found)");
#elif defined(__x86_64__)
    /* oneDNN's bf16 GEMM needs AVX-512 (native bf16 dot products with AVX512_BF16 or AMX) */
    if (dtype == DAM_BF16 && !__builtin_cpu_supports("avx512f"))
        dam_fail(
            "parallel.cpu_matmul \"bf16\": oneDNN's bf16 GEMM needs a CPU with AVX-512; this one has none "
            "(use \"fp32\")");
#endif
    ctx->gemm_inputs = dtype;
    /* oneDNN runs its GEMMs on OpenMP threads: as many as the pool has, unless the user said; and
     * the pool's own ops run on those same threads */
    void (*omp_threads)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (dtype == DAM_BF16 && omp_threads && !getenv("OMP_NUM_THREADS")) omp_threads(pool_threads(ctx->pool));
    if (dtype == DAM_BF16) pool_use_openmp(ctx->pool);
}

#ifdef DAM_WITH_DNNL
typedef struct {
    uint16_t *dst;
    const float *src;
} RoundOp;

/* (The ops' pointers are copied into restrict locals: a store through a struct's pointer could
 * alias the struct under -fno-strict-aliasing, which kept these loops scalar.) */
static void round_range(const void *op, size_t lo, size_t hi) {
    const RoundOp *o = op;
    uint16_t *restrict dst = o->dst;
    const float *restrict src = o->src;
    for (size_t i = lo; i < hi; i++) dst[i] = dam_f32_to_bf16(src[i]);
}

/* n fp32 values rounded to bf16 into c (grown as needed), on the pool's threads. */
static const uint16_t *round_into(BackendCtx *ctx, Bf16Copy *c, const float *src, size_t n) {
    if (c->cap < n) {
        free(c->bf16);
        c->bf16 = dam_malloc(n * sizeof(uint16_t), "bf16 GEMM input"), c->cap = n;
    }
    RoundOp op = {c->bf16, src};
    parallel_range(ctx, n, 1 << 15, round_range, &op);
    c->src = src, c->n = n, c->epoch = ctx->epoch;
    return c->bf16;
}

/* The bf16 copy of a GEMM operand: reused while no op but a GEMM wrote memory since it was made
 * and no GEMM wrote over it (the lm_head's chunks reuse one weight for many GEMMs; q, k and v one
 * input), else made again in a round-robin slot. */
static const uint16_t *bf16_copy(BackendCtx *ctx, const float *x, size_t n) {
    for (int i = 0; i < BF16_CACHE; i++) {
        Bf16Copy *c = &ctx->copies[i];
        if (c->src == x && c->n == n && c->epoch == ctx->epoch) return c->bf16;
    }
    return round_into(ctx, &ctx->copies[ctx->next_slot++ % BF16_CACHE], x, n);
}

#endif

/* A GEMM's output overlapping a bf16 copy's source makes it stale. */
static void gemm_wrote(BackendCtx *ctx, const float *out, size_t n) {
    for (int i = 0; i < BF16_CACHE; i++) {
        Bf16Copy *c = &ctx->copies[i];
        if (c->src && (const float *)c->src < out + n && out < (const float *)c->src + c->n) c->src = NULL;
    }
}

#ifdef DAM_WITH_DNNL
/* A bf16 GEMM operand of n elements: a BF16 buffer as it is (weights the merge wrote in bf16), an
 * F32 one through its rounded copy. */
static const uint16_t *bf16_operand(BackendCtx *ctx, DevBuf b, size_t n) {
    if (b.dtype == DAM_BF16) return b.ptr;
    return bf16_copy(ctx, F32(b), n);
}
#endif

/* C[M,N] = op(A)·op(B) (+ C when acc), row-major; A spans sa elements, B sb. The operands are F32,
 * or (bf16 GEMM inputs) F32 or BF16. */
static void gemm(BackendCtx *ctx, int ta, int tb, int M, int N, int K, DevBuf A_, int lda, size_t sa,
                 DevBuf B_, int ldb, size_t sb, int acc, float *C, int ldc) {
    float beta = acc ? 1.0f : 0.0f;
    if (ctx->gemm_inputs == DAM_F32) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K,
                    1.0f, F32(A_), lda, F32(B_), ldb, beta, C, ldc);
        gemm_wrote(ctx, C, (size_t)M * ldc);
        return;
    }
#ifdef DAM_WITH_DNNL
    const uint16_t *a = bf16_operand(ctx, A_, sa), *b = bf16_operand(ctx, B_, sb);
    dnnl_status_t st =
        dnnl_gemm_bf16bf16f32(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, a, lda, b, ldb, beta, C, ldc);
    if (st != dnnl_success)
        dam_fail("bf16 GEMM %dx%dx%d: oneDNN's dnnl_gemm_bf16bf16f32 returned status %d (this CPU may lack "
                 "AVX-512; set parallel.cpu_matmul to \"fp32\")",
                 M, N, K, (int)st);
    gemm_wrote(ctx, C, (size_t)M * ldc);
#else
    dam_fail("bf16 GEMM: built without oneDNN");
#endif
}

static void cpu_matmul_xwt(BackendCtx *ctx, DevBuf y, DevBuf x, DevBuf w, int T, int in, int out, int acc) {
    size_t Ti = (size_t)T * in, io = (size_t)in * out;
    gemm(ctx, 0, 1, T, out, in, x, in, Ti, w, in, io, acc, F32(y), out);
}

static void cpu_matmul_dyw(BackendCtx *ctx, DevBuf dx, DevBuf dy, DevBuf w, int T, int in, int out, int acc) {
    size_t To = (size_t)T * out, io = (size_t)in * out;
    gemm(ctx, 0, 0, T, in, out, dy, out, To, w, in, io, acc, F32(dx), in);
}

static void cpu_matmul_dytx(BackendCtx *ctx, DevBuf g, DevBuf dy, DevBuf x, int T, int in, int out, int acc) {
    size_t Ti = (size_t)T * in, To = (size_t)T * out;
    gemm(ctx, 1, 0, out, in, T, dy, out, To, x, in, Ti, acc, F32(g), in);
}

static dam_dtype cpu_weight_dtype(BackendCtx *ctx) { return ctx->gemm_inputs; }

/* ---------------------------------------------------------------- DAM */

/* Row r of a stored tensor as fp32 into buf (cols entries). */
static inline void load_row(float *buf, const SrcWeight *s, size_t r, size_t cols) {
    size_t off = r * (s->ld ? s->ld : cols);
    if (s->w.dtype == DAM_BF16) {
        const uint16_t *p = (const uint16_t *)s->w.ptr + off;
        for (size_t j = 0; j < cols; j++) buf[j] = dam_bf16_to_f32(p[j]);
    } else if (s->w.dtype == DAM_F32) {
        memcpy(buf, (const float *)s->w.ptr + off, cols * sizeof(float));
    } else {
        dam_to_f32(buf, (const uint16_t *)s->w.ptr + off, s->w.dtype, cols);
    }
}

/* A DAM op over a tensor's rows or columns, split into parts (each row and column is computed the
 * same way in any split). */
typedef struct {
    void *out; /* F32, or BF16 (out_bf16: materialize into bf16 GEMM weights) */
    double *sums;
    const float *in; /* fc (materialize) or G (coefficient gradient) */
    const SrcWeight *src;
    int n_src, scalar_coef, parts, out_bf16;
    size_t rows, cols;
} DamJob;

/* Row r of the merged tensor into m (fp32); row: a scratch row. */
static void materialize_row(const DamJob *job, size_t r, float *m, float *row) {
    size_t cols = job->cols;
    const float *fc = job->in;
    for (int i = 0; i < job->n_src; i++) {
        load_row(row, &job->src[i], r, cols);
        if (job->scalar_coef) {
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

/* The part's rows of the merged tensor; a bf16 output gets each fp32 merged row rounded once (as the
 * bf16 GEMM would round an fp32 weight). */
static void materialize_part(void *arg, int part, int thread) {
    const DamJob *job = arg;
    size_t r0, r1, cols = job->cols;
    pool_split(job->rows, job->parts, part, &r0, &r1);
    /* row: a source's row; tmp (bf16 output only): the fp32 merged row before its rounding */
    float *row = dam_malloc((job->out_bf16 ? 2 : 1) * cols * sizeof(float) + 1, "materialize row"),
          *tmp = row + cols;
    for (size_t r = r0; r < r1; r++) {
        if (!job->out_bf16) {
            materialize_row(job, r, (float *)job->out + r * cols, row);
            continue;
        }
        materialize_row(job, r, tmp, row);
        uint16_t *o = (uint16_t *)job->out + r * cols;
        for (size_t j = 0; j < cols; j++) o[j] = dam_f32_to_bf16(tmp[j]);
    }
    free(row);
}

/* A bf16 tensor copied as stored: a teacher's weight (one bf16 source, coefficient 1) in bf16. */
static int materialize_is_copy(const DamJob *job) {
    const SrcWeight *s = job->src;
    return job->out_bf16 && job->n_src == 1 && job->scalar_coef && job->in[0] == 1.0f &&
           s->w.dtype == DAM_BF16 && (!s->ld || s->ld == job->cols);
}

static void cpu_dam_materialize(BackendCtx *ctx, DevBuf merged_, const SrcWeight *src, int n_src, DevBuf fc_,
                                size_t rows, size_t cols, int scalar_coef) {
    WRITES(ctx);
    int bf16 = merged_.dtype == DAM_BF16;
    DamJob job = {merged_.ptr, NULL, F32(fc_), src, n_src, scalar_coef, parts_for(ctx, rows * cols, 1 << 14),
                  bf16,        rows, cols};
    if (materialize_is_copy(&job)) {
        memcpy(job.out, src->w.ptr, rows * cols * sizeof(uint16_t));
        return;
    }
    if ((size_t)job.parts > rows) job.parts = rows ? (int)rows : 1;
    pool_run(ctx->pool, job.parts, materialize_part, &job);
}

/* The coefficient gradient sums over a tensor's rows in fixed blocks of rows (their number depends
 * on the shape alone, so any thread count gives the same bits): each block's per-source column sums
 * in double, in row order, then the blocks' sums in block order. Rows, not columns, are split so
 * that every pass reads whole rows of G and of the sources (the stride-free walk the prefetcher
 * follows; a column split read 72-float pieces of each row). */
enum { COEF_BLOCK_ROWS = 64, COEF_MAX_BLOCKS = 64, COEF_PARTIAL_BUDGET = 1 << 21 /* doubles */ };

static int coef_grad_blocks(size_t rows, size_t cols, int n_src) {
    size_t nb = rows / COEF_BLOCK_ROWS, cap = COEF_PARTIAL_BUDGET / ((size_t)n_src * cols + 1);
    if (nb > COEF_MAX_BLOCKS) nb = COEF_MAX_BLOCKS;
    if (nb > cap) nb = cap;
    return nb > 1 ? (int)nb : 1;
}

/* acc[j] += Σ w[j]·g[j] in double (restrict: the loop vectorizes). */
static void coef_grad_row(double *restrict acc, const float *restrict w, const float *restrict g, size_t n) {
    for (size_t j = 0; j < n; j++) acc[j] += (double)(w[j] * g[j]);
}

static void coef_grad_part(void *arg, int part, int thread) {
    const DamJob *job = arg;
    size_t r0, r1, cols = job->cols;
    pool_split(job->rows, job->parts, part, &r0, &r1);
    double *sums = job->sums + (size_t)part * job->n_src * cols;
    float *row = dam_malloc(cols * sizeof(float) + 1, "coefficient gradient row");
    for (size_t r = r0; r < r1; r++) {
        const float *gr = job->in + r * cols;
        for (int i = 0; i < job->n_src; i++) {
            load_row(row, &job->src[i], r, cols);
            coef_grad_row(sums + (size_t)i * cols, row, gr, cols);
        }
    }
    free(row);
}

static void cpu_dam_coef_grad(BackendCtx *ctx, DevBuf acc_, const SrcWeight *src, int n_src, DevBuf g_,
                              size_t rows, size_t cols, int scalar_coef) {
    WRITES(ctx);
    float *acc = F32(acc_);
    int nb = coef_grad_blocks(rows, cols, n_src);
    size_t per_block = (size_t)n_src * cols;
    double *sums = dam_calloc((size_t)nb * per_block + 1, sizeof(double), "coefficient gradient sums");
    DamJob job = {NULL, sums, F32(g_), src, n_src, scalar_coef, nb, 0, rows, cols};
    pool_run(ctx->pool, job.parts, coef_grad_part, &job);
    for (int b = 1; b < nb; b++) /* the blocks' sums, in block order, into block 0's */
        for (size_t k = 0; k < per_block; k++) sums[k] += sums[(size_t)b * per_block + k];
    for (int i = 0; i < n_src; i++) {
        const double *sum = sums + (size_t)i * cols;
        if (scalar_coef) {
            double s = 0;
            for (size_t j = 0; j < cols; j++) s += sum[j];
            acc[i] += (float)s;
        } else {
            float *a = acc + (size_t)i * cols;
            for (size_t j = 0; j < cols; j++) a[j] += (float)sum[j];
        }
    }
    free(sums);
}

static void cpu_dam_embed_gather(BackendCtx *ctx, DevBuf out_, const SrcWeight *src, int n_src, DevBuf fc_,
                                 const int32_t *ids, int T, int d) {
    WRITES(ctx);
    float *out = F32(out_);
    const float *fc = F32(fc_);
    float *row = dam_malloc((size_t)d * sizeof(float) + 1, "embedding row");
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

static void cpu_dam_embed_coef_grad(BackendCtx *ctx, DevBuf acc_, const SrcWeight *src, int n_src, DevBuf dh_,
                                    const int32_t *ids, int T, int d) {
    WRITES(ctx);
    float *acc = F32(acc_);
    const float *dh = F32(dh_);
    float *row = dam_malloc((size_t)d * sizeof(float) + 1, "embedding row");
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

static void cpu_embed_grad(BackendCtx *ctx, DevBuf acc_, DevBuf dh_, const int32_t *ids, int T, int d) {
    float *acc = F32(acc_);
    const float *dh = F32(dh_);
    for (int t = 0; t < T; t++) {
        if (ids[t] < 0) continue;
        float *a = acc + (size_t)ids[t] * d;
        const float *g = dh + (size_t)t * d;
        for (int j = 0; j < d; j++) a[j] += g[j];
    }
}

/* ---------------------------------------------------------------- transformer */

/* RMSNorm's arguments, for its row and column ranges. */
typedef struct {
    float *out, *rstd, *dx, *dw;
    const float *x, *w, *dout, *rstd_in;
    int d, acc, T;
    float eps;
} NormOp;

/* Rows of d elements per part: about 16K elements. */
static size_t row_grain(int d) { return d > 0 && d < (1 << 14) ? (size_t)(1 << 14) / (size_t)d : 1; }

static void rmsnorm_fwd_rows(const void *op_, size_t t0, size_t t1);

static void cpu_rmsnorm_fwd(BackendCtx *ctx, DevBuf out_, DevBuf rstd_, DevBuf x_, DevBuf w_, int T, int d,
                            float eps) {
    WRITES(ctx);
    NormOp op = {.out = F32(out_), .rstd = F32(rstd_), .x = F32(x_), .w = F32(w_), .d = d, .eps = eps};
    parallel_range(ctx, (size_t)T, row_grain(d), rmsnorm_fwd_rows, &op);
}

static void rmsnorm_fwd_rows(const void *op_, size_t t0, size_t t1) {
    const NormOp *op = op_;
    float *out = op->out, *rstd = op->rstd, eps = op->eps;
    const float *x = op->x, *w = op->w;
    int d = op->d;
    for (size_t t = t0; t < t1; t++) {
        const float *xr = x + (size_t)t * d;
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)xr[j] * xr[j];
        float r = (float)(1.0 / sqrt(ss / d + eps));
        rstd[t] = r;
        float *o = out + (size_t)t * d;
        for (int j = 0; j < d; j++) o[j] = w[j] * (xr[j] * r);
    }
}

static void rmsnorm_bwd_rows(const void *op_, size_t t0, size_t t1);
static void rmsnorm_dw_cols(const void *op_, size_t j0, size_t j1);

static void cpu_rmsnorm_bwd(BackendCtx *ctx, DevBuf dx_, DevBuf dw_, DevBuf dout_, DevBuf x_, DevBuf rstd_,
                            DevBuf w_, int T, int d, int acc) {
    WRITES(ctx);
    NormOp op = {.dx = F32(dx_),
                 .dw = devbuf_null(dw_) ? NULL : F32(dw_),
                 .dout = F32(dout_),
                 .x = F32(x_),
                 .rstd_in = F32(rstd_),
                 .w = F32(w_),
                 .d = d,
                 .acc = acc};
    parallel_range(ctx, (size_t)T, row_grain(d), rmsnorm_bwd_rows, &op);
    /* dw over columns, each summed in t order as one thread would */
    if (op.dw)
        parallel_range(
            ctx, (size_t)d, 64, rmsnorm_dw_cols,
            &(NormOp){.dw = op.dw, .dout = op.dout, .x = op.x, .rstd_in = op.rstd_in, .d = d, .T = T});
}

/* dw[j] += Σ_t dout[t,j]·x̂[t,j] for columns [j0, j1). */
static void rmsnorm_dw_cols(const void *op_, size_t j0, size_t j1) {
    const NormOp *op = op_;
    size_t d = (size_t)op->d;
    for (int t = 0; t < op->T; t++) {
        const float *xr = op->x + (size_t)t * d, *go = op->dout + (size_t)t * d;
        float r = op->rstd_in[t];
        for (size_t j = j0; j < j1; j++) op->dw[j] += go[j] * (xr[j] * r);
    }
}

static void rmsnorm_bwd_rows(const void *op_, size_t t0, size_t t1) {
    const NormOp *op = op_;
    const float *x = op->x, *dout = op->dout, *rstd = op->rstd_in, *w = op->w;
    float *dx = op->dx;
    int d = op->d, acc = op->acc;
    for (size_t t = t0; t < t1; t++) {
        const float *xr = x + (size_t)t * d, *go = dout + (size_t)t * d;
        float r = rstd[t];
        double dot = 0; /* Σ_j dx̂ ⊙ x̂ */
        for (int j = 0; j < d; j++) dot += (double)(go[j] * w[j]) * (xr[j] * r);
        float mean = (float)(dot / d);
        float *o = dx + (size_t)t * d;
        for (int j = 0; j < d; j++) {
            float v = r * (go[j] * w[j] - xr[j] * r * mean);
            o[j] = acc ? o[j] + v : v;
        }
    }
}

typedef struct {
    float *x;
    const float *cos, *sin;
    int T, heads, hd;
    float sgn;
} RopeOp;

static void rope_rows(const void *op_, size_t bt0, size_t bt1);

static void cpu_rope(BackendCtx *ctx, DevBuf x_, DevBuf cos_, DevBuf sin_, int BT, int T, int heads, int hd,
                     int inverse) {
    WRITES(ctx);
    RopeOp op = {F32(x_), F32(cos_), F32(sin_), T, heads, hd, inverse ? -1.0f : 1.0f};
    parallel_range(ctx, (size_t)BT, row_grain(heads * hd), rope_rows, &op);
}

static void rope_rows(const void *op_, size_t bt0, size_t bt1) {
    const RopeOp *op = op_;
    float *x = op->x, sgn = op->sgn;
    const float *cos = op->cos, *sin = op->sin;
    int T = op->T, heads = op->heads, hd = op->hd, half = hd / 2;
    for (size_t bt = bt0; bt < bt1; bt++) {
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
 * probability tile. Memory is linear in T (the lse) plus the context's constant scratch; a sequence
 * of up to ATTN_TILE tokens is one tile, so short sequences cost what plain GEMM attention costs. */
typedef struct {
    const float *q, *k, *v; /* this (sequence, head)'s rows, strides qs and ks */
    int qs, ks, hd, T, window;
    float scale;
    int dnnl; /* the GEMMs run in oneDNN (bf16 mode): its fp32 GEMM here too, so that one threading
               * runtime runs (OpenBLAS's idle threads spin against oneDNN's) */
} AttnHead;

/* Attention's GEMMs, fp32 always (row-major). */
static void attn_gemm(const AttnHead *a, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *C, int ldc) {
#ifdef DAM_WITH_DNNL
    if (a->dnnl) {
        if (dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) !=
            dnnl_success)
            dam_fail("attention: oneDNN's dnnl_sgemm failed on %dx%dx%d", M, N, K);
        return;
    }
#endif
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha,
                A, lda, B, ldb, beta, C, ldc);
}

/* S[nq, nk] = scale · Q[i0..] K[j0..]ᵀ, with the keys a row may not see set to -inf. */
static void attn_scores(float *S, const AttnHead *a, int i0, int nq, int j0, int nk) {
    attn_gemm(a, 0, 1, nq, nk, a->hd, a->scale, a->q + (size_t)i0 * a->qs, a->qs, a->k + (size_t)j0 * a->ks,
              a->ks, 0.0f, S, nk);
    for (int r = 0; r < nq; r++) {
        int i = i0 + r, lo = attn_lo(i, a->window);
        for (int c = 0; c < nk; c++)
            if (j0 + c < lo || j0 + c > i) S[(size_t)r * nk + c] = -INFINITY;
    }
}

enum { LANES = 8 };

/* row[c] = e^(row[c] − m) (vectorized: dam_exp_approx), returning their sum (LANES partial sums). */
static float exp_row(float *row, int nk, float m) {
    float acc[LANES] = {0};
    int c = 0;
    for (; c + LANES <= nk; c += LANES)
        for (int u = 0; u < LANES; u++) acc[u] += (row[c + u] = dam_exp_approx(row[c + u] - m));
    for (; c < nk; c++) acc[0] += (row[c] = dam_exp_approx(row[c] - m));
    float s = 0;
    for (int u = 0; u < LANES; u++) s += acc[u];
    return s;
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
                float corr = expf(mx[r] - m), part = exp_row(row, nk, m);
                sum[r] = sum[r] * corr + part, mx[r] = m;
                float *o = out + (size_t)(i0 + r) * os;
                for (int e = 0; e < a->hd; e++) o[e] *= corr;
            }
            attn_gemm(a, 0, 0, nq, a->hd, nk, 1.0f, S, nk, a->v + (size_t)j0 * a->ks, a->ks, 1.0f,
                      out + (size_t)i0 * os, os);
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
    return (AttnHead){q + qo, k + ko, v + ko, qs, ks, s->hd, s->T, s->window, s->scale, 0};
}

static void cpu_attention_fwd(BackendCtx *ctx, DevBuf out_, DevBuf lse_, DevBuf q_, DevBuf k_, DevBuf v_,
                              const AttnShape *s) {
    WRITES(ctx);
    float *out = F32(out_), *lse = F32(lse_);
    const float *q = F32(q_), *k = F32(k_), *v = F32(v_);
    int qs = s->H * s->hd;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++) {
            AttnHead a = attn_head(q, k, v, s, b, h);
            a.dnnl = ctx->gemm_inputs == DAM_BF16;
            attn_head_fwd(out + (size_t)b * s->T * qs + (size_t)h * s->hd, qs,
                          lse + ((size_t)b * s->H + h) * s->T, &a, ctx->attn_scratch);
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
            for (int r = 0; r < nq; r++) {
                float *row = P + (size_t)r * nk, l = lse[i0 + r];
                for (int c = 0; c < nk; c++) row[c] = dam_exp_approx(row[c] - l);
            }
            const float *dO = dout + (size_t)i0 * qs;
            /* dV += Pᵀ dO ; dP = dO Vᵀ ; dS = P ⊙ (dP − D) · scale ; dQ += dS K ; dK += dSᵀ Q */
            attn_gemm(a, 1, 0, nk, a->hd, nq, 1.0f, P, nk, dO, qs, 1.0f, dv + (size_t)j0 * ks, ks);
            attn_gemm(a, 0, 1, nq, nk, a->hd, 1.0f, dO, qs, a->v + (size_t)j0 * ks, ks, 0.0f, dS, nk);
            for (int r = 0; r < nq; r++)
                for (int c = 0; c < nk; c++) {
                    size_t x = (size_t)r * nk + c;
                    dS[x] = P[x] * (dS[x] - D[r]) * a->scale;
                }
            attn_gemm(a, 0, 0, nq, a->hd, nk, 1.0f, dS, nk, a->k + (size_t)j0 * ks, ks, 1.0f,
                      dq + (size_t)i0 * qs, qs);
            attn_gemm(a, 1, 0, nk, a->hd, nq, 1.0f, dS, nk, a->q + (size_t)i0 * qs, qs, 1.0f,
                      dk + (size_t)j0 * ks, ks);
        }
    }
}

static void cpu_attention_bwd(BackendCtx *ctx, DevBuf dq_, DevBuf dk_, DevBuf dv_, DevBuf dout_, DevBuf out_,
                              DevBuf lse_, DevBuf q_, DevBuf k_, DevBuf v_, const AttnShape *s) {
    WRITES(ctx);
    size_t nk = (size_t)s->B * s->T * s->KV * s->hd;
    float *dq = F32(dq_), *dk = F32(dk_), *dv = F32(dv_);
    const float *dout = F32(dout_), *out = F32(out_), *lse = F32(lse_);
    const float *q = F32(q_), *k = F32(k_), *v = F32(v_);
    int qs = s->H * s->hd;
    memset(dk, 0, nk * sizeof(float));
    memset(dv, 0, nk * sizeof(float));
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++) {
            AttnHead a = attn_head(q, k, v, s, b, h);
            a.dnnl = ctx->gemm_inputs == DAM_BF16;
            size_t qo = (size_t)b * s->T * qs + (size_t)h * s->hd, ko = a.k - k;
            attn_head_bwd(dq + qo, dk + ko, dv + ko, dout + qo, out + qo, lse + ((size_t)b * s->H + h) * s->T,
                          &a, ctx->attn_scratch);
        }
}

/* silu's sigmoid with the vectorizable exponential (relative error of e^x < 2e-7). */
static inline float sigmoid_fast(float x) { return 1.0f / (1.0f + dam_exp_approx(-x)); }

/* The element-wise ops' arguments: outputs y, y2; inputs a, b, c; a scalar. */
typedef struct {
    float *y, *y2;
    const float *a, *b, *c;
    float s;
} ElemOp;

enum { ELEM_GRAIN = 1 << 14 };

/* (restrict locals, as in round_range: the loops vectorize) */
static void swiglu_fwd_range(const void *op_, size_t lo, size_t hi) {
    const ElemOp *o = op_;
    float *restrict y = o->y;
    const float *restrict gate = o->a, *restrict up = o->b;
    for (size_t i = lo; i < hi; i++) y[i] = gate[i] * sigmoid_fast(gate[i]) * up[i];
}

static void cpu_swiglu_fwd(BackendCtx *ctx, DevBuf act_, DevBuf gate_, DevBuf up_, size_t n) {
    WRITES(ctx);
    ElemOp op = {.y = F32(act_), .a = F32(gate_), .b = F32(up_)};
    parallel_range(ctx, n, ELEM_GRAIN, swiglu_fwd_range, &op);
}

static void swiglu_bwd_range(const void *op_, size_t lo, size_t hi) {
    const ElemOp *o = op_;
    const float *restrict gate = o->a, *restrict up = o->b, *restrict dact = o->c;
    float *restrict dgate = o->y, *restrict dup = o->y2;
    for (size_t i = lo; i < hi; i++) {
        float sg = sigmoid_fast(gate[i]), silu = gate[i] * sg;
        dup[i] = dact[i] * silu;
        dgate[i] = dact[i] * up[i] * (sg * (1.0f + gate[i] * (1.0f - sg)));
    }
}

static void cpu_swiglu_bwd(BackendCtx *ctx, DevBuf dgate_, DevBuf dup_, DevBuf dact_, DevBuf gate_,
                           DevBuf up_, size_t n) {
    WRITES(ctx);
    ElemOp op = {.y = F32(dgate_), .y2 = F32(dup_), .a = F32(gate_), .b = F32(up_), .c = F32(dact_)};
    parallel_range(ctx, n, ELEM_GRAIN, swiglu_bwd_range, &op);
}

static void cpu_add_bias(BackendCtx *ctx, DevBuf y_, DevBuf b_, int T, int out) {
    WRITES(ctx);
    float *y = F32(y_);
    const float *b = F32(b_);
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) y[(size_t)t * out + o] += b[o];
}

static void add_range(const void *op_, size_t lo, size_t hi) {
    const ElemOp *o = op_;
    float *restrict y = o->y;
    const float *restrict a = o->a;
    for (size_t i = lo; i < hi; i++) y[i] += a[i];
}

static void cpu_add(BackendCtx *ctx, DevBuf y_, DevBuf x_, size_t n) {
    WRITES(ctx);
    ElemOp op = {.y = F32(y_), .a = F32(x_)};
    parallel_range(ctx, n, ELEM_GRAIN, add_range, &op);
}

static void scale_range(const void *op_, size_t lo, size_t hi) {
    const ElemOp *o = op_;
    float *restrict y = o->y, s = o->s;
    for (size_t i = lo; i < hi; i++) y[i] *= s;
}

static void cpu_scale(BackendCtx *ctx, DevBuf y_, float s, size_t n) {
    WRITES(ctx);
    ElemOp op = {.y = F32(y_), .s = s};
    parallel_range(ctx, n, ELEM_GRAIN, scale_range, &op);
}

/* out[o] = Σ_t dy[t, o] over T rows of cols. */
typedef struct {
    float *out;
    const float *dy;
    int T, cols;
} ColsumOp;

/* In t order, in float: the sums the model computed before the port, per column whatever the split. */
static void colsum_cols(const void *op_, size_t o0, size_t o1) {
    const ColsumOp *op = op_;
    for (size_t o = o0; o < o1; o++) op->out[o] = 0;
    for (int t = 0; t < op->T; t++)
        for (size_t o = o0; o < o1; o++) op->out[o] += op->dy[(size_t)t * op->cols + o];
}

static void cpu_colsum(BackendCtx *ctx, DevBuf out_, DevBuf dy_, int T, int cols) {
    WRITES(ctx);
    ColsumOp op = {F32(out_), F32(dy_), T, cols};
    parallel_range(ctx, (size_t)cols, 64, colsum_cols, &op);
}

static void cpu_gather_rows(BackendCtx *ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d) {
    WRITES(ctx);
    size_t ds = dam_dtype_size(dst.dtype), ss = dam_dtype_size(src.dtype);
    for (int r = 0; r < n; r++)
        convert((char *)dst.ptr + (size_t)r * d * ds, dst.dtype,
                (const char *)src.ptr + (size_t)rows[r] * d * ss, src.dtype, (size_t)d, "gather_rows");
}

static void cpu_scatter_rows(BackendCtx *ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d) {
    WRITES(ctx);
    size_t ds = dam_dtype_size(dst.dtype), ss = dam_dtype_size(src.dtype);
    for (int r = 0; r < n; r++)
        convert((char *)dst.ptr + (size_t)rows[r] * d * ds, dst.dtype,
                (const char *)src.ptr + (size_t)r * d * ss, src.dtype, (size_t)d, "scatter_rows");
}

/* ---------------------------------------------------------------- losses */

typedef struct {
    float *dz;
    LossSums *row_sums;
    const float *z, *zt;
    const int32_t *idx;
    const float *val;
    int V;
    const LossChunkParams *p;
    float dz_scale;
} LossOp;

/* Rows [r0, r1) as one loss_rows call, their sums into *row_sums. */
static void loss_chunk_rows(const LossOp *op, size_t r0, size_t r1) {
    size_t V = (size_t)op->V, K = op->p->K > 0 ? (size_t)op->p->K : 0;
    float *dz = op->dz + r0 * V;
    loss_rows(dz, op->row_sums, op->z + r0 * V, op->zt ? op->zt + r0 * V : NULL,
              op->idx ? op->idx + r0 * K : NULL, op->val ? op->val + r0 * K : NULL, (int)(r1 - r0), op->V,
              op->p);
    if (op->dz_scale != 1.0f)
        for (size_t j = 0; j < (r1 - r0) * V; j++) dz[j] *= op->dz_scale;
}

static void loss_each_row(const void *op_, size_t r0, size_t r1) {
    const LossOp *op = op_;
    for (size_t r = r0; r < r1; r++) {
        LossOp one = *op;
        one.row_sums = op->row_sums + r;
        loss_chunk_rows(&one, r, r + 1);
    }
}

static void cpu_loss_rows(BackendCtx *ctx, DevBuf dz_, LossSums *sums, DevBuf z_, DevBuf zt_, DevBuf idx_,
                          DevBuf val_, int C, int V, const LossChunkParams *p, float dz_scale) {
    WRITES(ctx);
    LossOp op = {F32(dz_),
                 NULL,
                 F32(z_),
                 F32(zt_), /* NULL when the loss needs no teacher logits */
                 p->K > 0 ? I32(idx_) : NULL,
                 p->K > 0 ? F32(val_) : NULL,
                 V,
                 p,
                 dz_scale};
    if (p->reduce) { /* a group's reductions (MPI): on this thread, all rows in one call */
        op.row_sums = sums;
        loss_chunk_rows(&op, 0, (size_t)C);
        return;
    }
    /* Row by row, each row's sums apart, then added in row order: what one call over the C rows
     * adds, in the same order, whatever the split. */
    op.row_sums = dam_calloc((size_t)C + 1, sizeof(LossSums), "loss row sums");
    parallel_range(ctx, (size_t)C, 1, loss_each_row, &op);
    for (int r = 0; r < C; r++) {
        sums->kl += op.row_sums[r].kl;
        sums->mse += op.row_sums[r].mse;
        sums->entropy += op.row_sums[r].entropy;
    }
    free(op.row_sums);
}

static void cpu_loss_topk(BackendCtx *ctx, DevBuf idx_, DevBuf val_, DevBuf zt_, int C, int V, int K,
                          int vocab_offset, const LossReduce *reduce) {
    WRITES(ctx);
    loss_topk_sharded(I32(idx_), F32(val_), F32(zt_), C, V, K, vocab_offset, reduce);
}

/* ---------------------------------------------------------------- coefficients and optimizer
 * The regularizers' and AdamW's host math of the trainer before the port, element for element, so
 * that a run's coefficients do not change with it. */

static void cpu_coef_nonlin(BackendCtx *ctx, DevBuf fc_, DevBuf c_, size_t n, Nonlinearity f) {
    WRITES(ctx);
    float *fc = F32(fc_);
    const float *c = F32(c_);
    for (size_t j = 0; j < n; j++) fc[j] = dam_nonlin(f, c[j]);
}

static void cpu_coef_nonlin_grad(BackendCtx *ctx, DevBuf g_, DevBuf c_, size_t n, Nonlinearity f) {
    WRITES(ctx);
    float *g = F32(g_);
    const float *c = F32(c_);
    for (size_t j = 0; j < n; j++) g[j] = g[j] * dam_nonlin_grad(f, c[j]);
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t j = 0; j < n; j++) s += (double)a[j] * b[j];
    return s;
}

static double cpu_sumsq(BackendCtx *ctx, DevBuf x_, size_t n) {
    const float *x = F32(x_);
    return dot(x, x, n);
}

static void cpu_coef_gram(BackendCtx *ctx, double *gram, DevBuf c_, int n_src, int dim) {
    const float *c = F32(c_);
    for (int i = 0; i < n_src; i++)
        for (int j = 0; j < n_src; j++)
            gram[i * n_src + j] = dot(c + (size_t)i * dim, c + (size_t)j * dim, (size_t)dim);
}

static void cpu_coef_mix_grad(BackendCtx *ctx, DevBuf g_, DevBuf c_, const double *A, int n_src, int dim) {
    WRITES(ctx);
    float *g = F32(g_);
    const float *c = F32(c_);
    for (int i = 0; i < n_src; i++)
        for (int k = 0; k < dim; k++) {
            double s = 0;
            for (int j = 0; j < n_src; j++) s += A[i * n_src + j] * c[(size_t)j * dim + k];
            g[(size_t)i * dim + k] += (float)s;
        }
}

static double cpu_coef_l1(BackendCtx *ctx, DevBuf g_, DevBuf c_, size_t n, double lambda) {
    WRITES(ctx);
    float *g = F32(g_);
    const float *c = F32(c_);
    double s = 0;
    for (size_t j = 0; j < n; j++) {
        s += fabs(c[j]);
        g[j] += (float)(lambda * ((c[j] > 0) - (c[j] < 0)));
    }
    return lambda * s;
}

/* At a tie each side gets half, as torch.minimum's gradient does. */
static double cpu_coef_overlap(BackendCtx *ctx, DevBuf g_, DevBuf c_, int n, int dim, double w) {
    WRITES(ctx);
    float *g = F32(g_);
    const float *c = F32(c_);
    double s = 0;
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++)
            for (int k = 0; k < dim; k++) {
                float x = c[(size_t)a * dim + k], y = c[(size_t)b * dim + k], ax = fabsf(x), ay = fabsf(y);
                s += ax < ay ? ax : ay;
                float sx = (float)((x > 0) - (x < 0)), sy = (float)((y > 0) - (y < 0));
                float share_a = ax < ay ? 1.0f : ax > ay ? 0.0f : 0.5f;
                g[(size_t)a * dim + k] += (float)(w * share_a * sx);
                g[(size_t)b * dim + k] += (float)(w * (1.0f - share_a) * sy);
            }
    return w * s;
}

/* At a tie the whole gradient goes to the lower row, as torch.min over the stacked pair does. */
static double cpu_coef_weighted_overlap(BackendCtx *ctx, DevBuf g_, DevBuf c_, DevBuf wts_, int n, int dim,
                                        double w) {
    float *g = F32(g_);
    const float *c = F32(c_), *wts = F32(wts_);
    double s = 0;
    for (int a = 0, p = 0; a < n; a++)
        for (int b = a + 1; b < n; b++, p++)
            for (int k = 0; k < dim; k++) {
                float x = c[(size_t)a * dim + k], y = c[(size_t)b * dim + k], ax = fabsf(x), ay = fabsf(y);
                float wk = wts[(size_t)p * dim + k];
                int to_a = ax <= ay;
                s += (double)(to_a ? ax : ay) * wk;
                float sg = to_a ? (float)((x > 0) - (x < 0)) : (float)((y > 0) - (y < 0));
                g[(size_t)(to_a ? a : b) * dim + k] += (float)(w * wk * sg);
            }
    return w * s;
}

static void swapf(float *x, size_t i, size_t j) {
    float t = x[i];
    x[i] = x[j], x[j] = t;
}

/* The k-th largest (1-based) of x[0..n), reordering x: quickselect with a three-way partition
 * (momenta repeat: zeros), expected linear time, the same value a full sort would give. */
static float kth_largest(float *x, size_t n, size_t k) {
    size_t lo = 0, hi = n, want = k - 1; /* the answer is in [lo, hi) */
    for (;;) {
        if (hi - lo == 1) return x[lo];
        float a = x[lo], b = x[lo + (hi - lo) / 2], c = x[hi - 1]; /* median of three */
        float pivot = a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
        size_t lt = lo, i = lo, gt = hi; /* [lo, lt) > pivot, [lt, i) == pivot, [gt, hi) < pivot */
        while (i < gt) {
            if (x[i] > pivot)
                swapf(x, lt++, i++);
            else if (x[i] < pivot)
                swapf(x, i, --gt);
            else
                i++;
        }
        if (want < lt)
            hi = lt;
        else if (want >= gt)
            lo = gt;
        else
            return pivot;
    }
}

static float cpu_mofo_threshold(BackendCtx *ctx, DevBuf m_, size_t n, float alpha) {
    const float *m = F32(m_);
    if (n == 0) return 0;
    float *a = dam_malloc(n * sizeof(float), "mofo");
    for (size_t j = 0; j < n; j++) a[j] = fabsf(m[j]);
    size_t keep = (size_t)ceil(alpha * (double)n);
    float thr = kth_largest(a, n, keep < 1 ? 1 : keep > n ? n : keep);
    free(a);
    return thr;
}

/* Moments, then (MoFO: where |m| reaches the threshold) the bias-corrected step with the decoupled
 * weight decay inside the learning rate's factor, as optim_step did it. */
static void cpu_adamw(BackendCtx *ctx, DevBuf c_, DevBuf g_, DevBuf m_, DevBuf v_, size_t n,
                      const AdamParams *p) {
    WRITES(ctx);
    float *c = F32(c_), *m = F32(m_), *v = F32(v_);
    const float *g = F32(g_);
    if (p->bf16.mode != ADAM_F32) { /* bf16 coefficients: torch's ops, each rounded (adam_bf16.h) */
        for (size_t j = 0; j < n; j++)
            c[j] = adam_bf16(c[j]), adam_bf16_moments(&p->bf16, g[j], &m[j], &v[j]);
        float thr = p->mofo_alpha > 0 ? cpu_mofo_threshold(ctx, m_, n, p->mofo_alpha) : p->mofo_threshold;
        for (size_t j = 0; j < n; j++)
            if (thr < 0 || fabsf(m[j]) >= thr) c[j] = adam_bf16_update(&p->bf16, c[j], m[j], v[j]);
        return;
    }
    for (size_t j = 0; j < n; j++) {
        m[j] = p->beta1 * m[j] + (1 - p->beta1) * g[j];
        v[j] = p->beta2 * v[j] + (1 - p->beta2) * g[j] * g[j];
    }
    float thr = p->mofo_alpha > 0 ? cpu_mofo_threshold(ctx, m_, n, p->mofo_alpha) : p->mofo_threshold;
    double bc1 = 1.0 - pow(p->beta1, p->t), bc2 = 1.0 - pow(p->beta2, p->t);
    for (size_t j = 0; j < n; j++) {
        if (thr >= 0 && fabsf(m[j]) < thr) continue; /* MoFO: only the largest momenta move */
        double mh = m[j] / bc1, vh = v[j] / bc2;
        c[j] -= (float)(p->lr * (mh / (sqrt(vh) + p->eps) + p->weight_decay * c[j]));
    }
}

static const Backend cpu_backend = {
    .name = "cpu",
    .device = DAM_DEVICE_CPU,
    .act_dtype = DAM_F32,
    .ctx_new = cpu_ctx_new,
    .ctx_free = cpu_ctx_free,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload_source = cpu_upload_source,
    .free_source = cpu_free_source,
    .release_source = cpu_release_source,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .synchronize = cpu_synchronize,
    .event_new = cpu_event_new,
    .event_free = cpu_event_free,
    .event_record = cpu_event_record,
    .event_elapsed = cpu_event_elapsed,
    .host_begin = cpu_host_begin,
    .host_end = cpu_host_end,
    .matmul_xwt = cpu_matmul_xwt,
    .matmul_dyw = cpu_matmul_dyw,
    .matmul_dytx = cpu_matmul_dytx,
    .set_gemm_inputs = cpu_set_gemm_inputs,
    .weight_dtype = cpu_weight_dtype,
    .dam_materialize = cpu_dam_materialize,
    .dam_coef_grad = cpu_dam_coef_grad,
    .dam_embed_gather = cpu_dam_embed_gather,
    .dam_embed_coef_grad = cpu_dam_embed_coef_grad,
    .embed_grad = cpu_embed_grad,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope = cpu_rope,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .add_bias = cpu_add_bias,
    .add = cpu_add,
    .scale = cpu_scale,
    .colsum = cpu_colsum,
    .gather_rows = cpu_gather_rows,
    .scatter_rows = cpu_scatter_rows,
    .loss_rows = cpu_loss_rows,
    .loss_topk = cpu_loss_topk,
    .coef_nonlin = cpu_coef_nonlin,
    .coef_nonlin_grad = cpu_coef_nonlin_grad,
    .sumsq = cpu_sumsq,
    .coef_gram = cpu_coef_gram,
    .coef_mix_grad = cpu_coef_mix_grad,
    .coef_l1 = cpu_coef_l1,
    .coef_overlap = cpu_coef_overlap,
    .coef_weighted_overlap = cpu_coef_weighted_overlap,
    .mofo_threshold = cpu_mofo_threshold,
    .adamw = cpu_adamw,
};

const Backend *backend_cpu_impl(void) { return &cpu_backend; }
