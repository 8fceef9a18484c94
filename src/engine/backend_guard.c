/* backend_guard.c — the guard backend: the CPU backend's math on memory that no host code can touch.
 *
 * Every buffer (and every uploaded source, copied) lives in its own anonymous mapping of whole pages,
 * PROT_NONE outside backend calls: each op opens every registered buffer (read/write) on entry and
 * closes them again on exit, so a host dereference of a DevBuf anywhere else in the program is a
 * SIGSEGV at the faulting line instead of a silent CPU-only success that would break on a GPU. The
 * data sits at the end of its mapping with one more page after it that is never opened, so a read
 * or write past a buffer's end crashes too, inside the ops. host_begin/host_end keep a buffer open
 * for MPI between them (a count per mapping: several transfers may hold one buffer).
 * Opening everything per call is O(buffers) mprotect calls: simple, and the tests are small. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend_impl.h"

typedef struct {
    char *base;   /* the mapping: `bytes` of data pages, then one guard page */
    size_t bytes; /* data pages only */
    int held;     /* host_begin count */
    int open;     /* currently PROT_READ|PROT_WRITE */
} Region;

typedef struct {
    BackendCtx *cpu;
    Region *r;
    int n, cap;
    int in_op; /* inside a backend call: every region is open */
} GuardCtx;

/* The CPU backend's own table: the front (backend_api.c) checked the arguments of the guard's call. */
static const Backend *cpu(void) { return backend_cpu_impl(); }
static GuardCtx *guard_ctx(BackendCtx *ctx) { return (GuardCtx *)ctx; }

static size_t page_size(void) {
    static size_t page = 0;
    if (!page) page = (size_t)sysconf(_SC_PAGESIZE);
    return page;
}

static void protect(Region *r, int open) {
    if (r->open == open) return;
    if (mprotect(r->base, r->bytes, open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0)
        dam_fail("guard backend: mprotect of %zu bytes failed", r->bytes);
    r->open = open;
}

static GuardCtx *enter(BackendCtx *ctx) {
    GuardCtx *g = guard_ctx(ctx);
    g->in_op = 1;
    for (int i = 0; i < g->n; i++) protect(&g->r[i], 1);
    return g;
}

static void leave(GuardCtx *g) {
    g->in_op = 0;
    for (int i = 0; i < g->n; i++)
        if (!g->r[i].held) protect(&g->r[i], 0);
}

/* The region whose data holds p (fails naming the caller otherwise). */
static Region *region_of(GuardCtx *g, const void *p, const char *op) {
    for (int i = 0; i < g->n; i++)
        if ((const char *)p >= g->r[i].base && (const char *)p < g->r[i].base + g->r[i].bytes)
            return &g->r[i];
    dam_fail("guard backend: %s of a pointer that is no buffer of this context", op);
}

/* A fresh mapping for `bytes` of data, registered (closed unless inside an op); returns where the
 * data starts (flush against the guard page). */
static void *map_region(GuardCtx *g, size_t bytes, const char *what) {
    size_t page = page_size(), data = bytes ? (bytes + page - 1) / page * page : page;
    char *base = mmap(NULL, data + page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) dam_fail("guard backend: out of memory: %zu bytes for %s", bytes, what);
    if (g->n == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 64;
        g->r = dam_realloc(g->r, (size_t)g->cap * sizeof *g->r, "guard regions");
    }
    Region *r = &g->r[g->n++];
    *r = (Region){base, data, 0, 0};
    protect(r, 1); /* zeroed by mmap; the caller fills it */
    return base + data - bytes;
}

static void unmap_region(GuardCtx *g, const void *p, const char *op) {
    Region *r = region_of(g, p, op);
    munmap(r->base, r->bytes + page_size());
    *r = g->r[--g->n];
}

/* ---------------------------------------------------------------- context, memory */

static BackendCtx *guard_ctx_new(int device_index) {
    GuardCtx *g = dam_calloc(1, sizeof *g, "guard backend context");
    g->cpu = cpu()->ctx_new(device_index);
    return (BackendCtx *)g;
}

static void guard_ctx_free(BackendCtx *ctx) {
    GuardCtx *g = guard_ctx(ctx);
    if (!g) return;
    for (int i = 0; i < g->n; i++) munmap(g->r[i].base, g->r[i].bytes + page_size());
    cpu()->ctx_free(g->cpu);
    free(g->r);
    free(g);
}

static DevBuf guard_alloc(BackendCtx *ctx, size_t n, dam_dtype dtype, const char *what) {
    size_t es = dam_dtype_size(dtype);
    /* the front checked n·es against SIZE_MAX; the mapping adds a page and rounds up to pages */
    if (n > SIZE_MAX / es / 2) dam_fail("alloc of %s: %zu elements overflow", what, n);
    GuardCtx *g = guard_ctx(ctx);
    void *p = map_region(g, n * es, what);
    if (!g->in_op) protect(&g->r[g->n - 1], 0);
    return (DevBuf){p, n, dtype, DAM_DEVICE_CPU};
}

static void guard_free(BackendCtx *ctx, DevBuf *b) {
    if (b->ptr) unmap_region(guard_ctx(ctx), b->ptr, "free");
    b->ptr = NULL, b->n = 0;
}

/* A copy in guarded pages: the sources are device memory like any other (no view of the file). */
static SrcWeight guard_upload_source(BackendCtx *ctx, const void *host, dam_dtype dtype, size_t rows,
                                     size_t cols, size_t ld, const char *what) {
    SrcWeight s =
        cpu()->upload_source(guard_ctx(ctx)->cpu, host, dtype, rows, cols, ld, what); /* span, stride */
    GuardCtx *g = guard_ctx(ctx);
    size_t bytes = s.w.n * dam_dtype_size(dtype);
    void *p = map_region(g, bytes, what);
    if (bytes) memcpy(p, host, bytes);
    if (!g->in_op) protect(&g->r[g->n - 1], 0);
    s.w.ptr = p;
    return s;
}

static void guard_free_source(BackendCtx *ctx, SrcWeight *s) {
    if (s->w.ptr) unmap_region(guard_ctx(ctx), s->w.ptr, "free_source");
    s->w.ptr = NULL, s->w.n = 0;
}

/* The copy is anonymous memory: dropping its pages would zero it. */
static void guard_release_source(BackendCtx *ctx, const SrcWeight *s, size_t rows, size_t cols) {}

static void guard_synchronize(BackendCtx *ctx) {}
static BackendEvent *guard_event_new(BackendCtx *ctx) { return cpu()->event_new(guard_ctx(ctx)->cpu); }
static void guard_event_free(BackendCtx *ctx, BackendEvent *e) { cpu()->event_free(guard_ctx(ctx)->cpu, e); }
static void guard_event_record(BackendCtx *ctx, BackendEvent *e) {
    cpu()->event_record(guard_ctx(ctx)->cpu, e);
}
static double guard_event_elapsed(BackendCtx *ctx, BackendEvent *a, BackendEvent *b) {
    return cpu()->event_elapsed(guard_ctx(ctx)->cpu, a, b);
}

/* b's mapping stays open until the matching host_end (MPI reads or writes it in between). */
static void *guard_host_begin(BackendCtx *ctx, DevBuf b) {
    if (!b.ptr) return NULL;
    Region *r = region_of(guard_ctx(ctx), b.ptr, "host_begin");
    r->held++;
    protect(r, 1);
    return b.ptr;
}

static void guard_host_end(BackendCtx *ctx, DevBuf b) {
    if (!b.ptr) return;
    GuardCtx *g = guard_ctx(ctx);
    Region *r = region_of(g, b.ptr, "host_end");
    if (r->held <= 0) dam_fail("guard backend: host_end without host_begin");
    if (--r->held == 0 && !g->in_op) protect(r, 0);
}

/* ---------------------------------------------------------------- every op: open, the CPU's, close */

#define UNPACK(...) __VA_ARGS__
#define WRAP(op, params, args)                                                                               \
    static void guard_##op params {                                                                          \
        GuardCtx *g = enter(ctx);                                                                            \
        cpu()->op(g->cpu, UNPACK args);                                                                      \
        leave(g);                                                                                            \
    }
#define WRAP_RET(type, op, params, args)                                                                     \
    static type guard_##op params {                                                                          \
        GuardCtx *g = enter(ctx);                                                                            \
        type ret = cpu()->op(g->cpu, UNPACK args);                                                           \
        leave(g);                                                                                            \
        return ret;                                                                                          \
    }

WRAP(upload, (BackendCtx * ctx, DevBuf dst, const void *host, dam_dtype hd, size_t n), (dst, host, hd, n))
WRAP(download, (BackendCtx * ctx, void *host, dam_dtype hd, DevBuf src, size_t n), (host, hd, src, n))
WRAP(copy, (BackendCtx * ctx, DevBuf dst, DevBuf src, size_t n), (dst, src, n))
WRAP(fill, (BackendCtx * ctx, DevBuf dst, float value, size_t n), (dst, value, n))
WRAP(matmul_xwt, (BackendCtx * ctx, DevBuf y, DevBuf x, DevBuf w, int T, int in, int out, int acc),
     (y, x, w, T, in, out, acc))
WRAP(matmul_dyw, (BackendCtx * ctx, DevBuf dx, DevBuf dy, DevBuf w, int T, int in, int out, int acc),
     (dx, dy, w, T, in, out, acc))
WRAP(matmul_dytx, (BackendCtx * ctx, DevBuf gr, DevBuf dy, DevBuf x, int T, int in, int out, int acc),
     (gr, dy, x, T, in, out, acc))
WRAP(set_gemm_inputs, (BackendCtx * ctx, dam_dtype dtype), (dtype))
static dam_dtype guard_weight_dtype(BackendCtx *ctx) { return cpu()->weight_dtype(guard_ctx(ctx)->cpu); }
WRAP(dam_materialize,
     (BackendCtx * ctx, DevBuf merged, const SrcWeight *src, int n_src, DevBuf fc, size_t rows, size_t cols,
      int scalar),
     (merged, src, n_src, fc, rows, cols, scalar))
WRAP(dam_coef_grad,
     (BackendCtx * ctx, DevBuf acc, const SrcWeight *src, int n_src, DevBuf gr, size_t rows, size_t cols,
      int scalar),
     (acc, src, n_src, gr, rows, cols, scalar))
WRAP(dam_embed_gather,
     (BackendCtx * ctx, DevBuf out, const SrcWeight *src, int n_src, DevBuf fc, const int32_t *ids, int T,
      int d),
     (out, src, n_src, fc, ids, T, d))
WRAP(dam_embed_coef_grad,
     (BackendCtx * ctx, DevBuf acc, const SrcWeight *src, int n_src, DevBuf dh, const int32_t *ids, int T,
      int d),
     (acc, src, n_src, dh, ids, T, d))
WRAP(embed_grad, (BackendCtx * ctx, DevBuf acc, DevBuf dh, const int32_t *ids, int T, int d),
     (acc, dh, ids, T, d))
WRAP(rmsnorm_fwd, (BackendCtx * ctx, DevBuf out, DevBuf rstd, DevBuf x, DevBuf w, int T, int d, float eps),
     (out, rstd, x, w, T, d, eps))
WRAP(rmsnorm_bwd,
     (BackendCtx * ctx, DevBuf dx, DevBuf dw, DevBuf dout, DevBuf x, DevBuf rstd, DevBuf w, int T, int d,
      int acc),
     (dx, dw, dout, x, rstd, w, T, d, acc))
WRAP(rope, (BackendCtx * ctx, DevBuf x, DevBuf c, DevBuf s, int BT, int T, int heads, int hd, int inverse),
     (x, c, s, BT, T, heads, hd, inverse))
WRAP(attention_fwd,
     (BackendCtx * ctx, DevBuf out, DevBuf lse, DevBuf q, DevBuf k, DevBuf v, const AttnShape *s),
     (out, lse, q, k, v, s))
WRAP(attention_bwd,
     (BackendCtx * ctx, DevBuf dq, DevBuf dk, DevBuf dv, DevBuf dout, DevBuf out, DevBuf lse, DevBuf q,
      DevBuf k, DevBuf v, const AttnShape *s),
     (dq, dk, dv, dout, out, lse, q, k, v, s))
WRAP(swiglu_fwd, (BackendCtx * ctx, DevBuf act, DevBuf gate, DevBuf up, size_t n), (act, gate, up, n))
WRAP(swiglu_bwd, (BackendCtx * ctx, DevBuf dgate, DevBuf dup, DevBuf dact, DevBuf gate, DevBuf up, size_t n),
     (dgate, dup, dact, gate, up, n))
WRAP(add_bias, (BackendCtx * ctx, DevBuf y, DevBuf b, int T, int out), (y, b, T, out))
WRAP(add, (BackendCtx * ctx, DevBuf y, DevBuf x, size_t n), (y, x, n))
WRAP(scale, (BackendCtx * ctx, DevBuf y, float s, size_t n), (y, s, n))
WRAP(colsum, (BackendCtx * ctx, DevBuf out, DevBuf dy, int T, int cols), (out, dy, T, cols))
WRAP(gather_rows, (BackendCtx * ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d),
     (dst, src, rows, n, d))
WRAP(scatter_rows, (BackendCtx * ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d),
     (dst, src, rows, n, d))
WRAP(loss_rows,
     (BackendCtx * ctx, DevBuf dz, LossSums *sums, DevBuf z, DevBuf zt, DevBuf idx, DevBuf val, int C, int V,
      const LossChunkParams *p, float dz_scale),
     (dz, sums, z, zt, idx, val, C, V, p, dz_scale))
WRAP(loss_topk,
     (BackendCtx * ctx, DevBuf idx, DevBuf val, DevBuf zt, int C, int V, int K, int vocab_offset,
      const LossReduce *reduce),
     (idx, val, zt, C, V, K, vocab_offset, reduce))
WRAP(coef_nonlin, (BackendCtx * ctx, DevBuf fc, DevBuf c, size_t n, Nonlinearity f), (fc, c, n, f))
WRAP(coef_nonlin_grad, (BackendCtx * ctx, DevBuf gr, DevBuf c, size_t n, Nonlinearity f), (gr, c, n, f))
WRAP_RET(double, sumsq, (BackendCtx * ctx, DevBuf x, size_t n), (x, n))
WRAP(coef_gram, (BackendCtx * ctx, double *gram, DevBuf c, int n_src, int dim), (gram, c, n_src, dim))
WRAP(coef_mix_grad, (BackendCtx * ctx, DevBuf gr, DevBuf c, const double *A, int n_src, int dim),
     (gr, c, A, n_src, dim))
WRAP_RET(double, coef_l1, (BackendCtx * ctx, DevBuf gr, DevBuf c, size_t n, double lambda),
         (gr, c, n, lambda))
WRAP_RET(double, coef_overlap, (BackendCtx * ctx, DevBuf gr, DevBuf c, int n_src, int dim, double w),
         (gr, c, n_src, dim, w))
WRAP_RET(double, coef_weighted_overlap,
         (BackendCtx * ctx, DevBuf gr, DevBuf c, DevBuf wts, int n_src, int dim, double w),
         (gr, c, wts, n_src, dim, w))
WRAP_RET(float, mofo_threshold, (BackendCtx * ctx, DevBuf m, size_t n, float alpha), (m, n, alpha))
WRAP(adamw, (BackendCtx * ctx, DevBuf c, DevBuf gr, DevBuf m, DevBuf v, size_t n, const AdamParams *p),
     (c, gr, m, v, n, p))

static const Backend guard_backend = {
    .name = "guard",
    .device = DAM_DEVICE_CPU,
    .act_dtype = DAM_F32,
    .ctx_new = guard_ctx_new,
    .ctx_free = guard_ctx_free,
    .alloc = guard_alloc,
    .free = guard_free,
    .upload_source = guard_upload_source,
    .free_source = guard_free_source,
    .release_source = guard_release_source,
    .upload = guard_upload,
    .download = guard_download,
    .copy = guard_copy,
    .fill = guard_fill,
    .synchronize = guard_synchronize,
    .event_new = guard_event_new,
    .event_free = guard_event_free,
    .event_record = guard_event_record,
    .event_elapsed = guard_event_elapsed,
    .host_begin = guard_host_begin,
    .host_end = guard_host_end,
    .matmul_xwt = guard_matmul_xwt,
    .matmul_dyw = guard_matmul_dyw,
    .matmul_dytx = guard_matmul_dytx,
    .set_gemm_inputs = guard_set_gemm_inputs,
    .weight_dtype = guard_weight_dtype,
    .dam_materialize = guard_dam_materialize,
    .dam_coef_grad = guard_dam_coef_grad,
    .dam_embed_gather = guard_dam_embed_gather,
    .dam_embed_coef_grad = guard_dam_embed_coef_grad,
    .embed_grad = guard_embed_grad,
    .rmsnorm_fwd = guard_rmsnorm_fwd,
    .rmsnorm_bwd = guard_rmsnorm_bwd,
    .rope = guard_rope,
    .attention_fwd = guard_attention_fwd,
    .attention_bwd = guard_attention_bwd,
    .swiglu_fwd = guard_swiglu_fwd,
    .swiglu_bwd = guard_swiglu_bwd,
    .add_bias = guard_add_bias,
    .add = guard_add,
    .scale = guard_scale,
    .colsum = guard_colsum,
    .gather_rows = guard_gather_rows,
    .scatter_rows = guard_scatter_rows,
    .loss_rows = guard_loss_rows,
    .loss_topk = guard_loss_topk,
    .coef_nonlin = guard_coef_nonlin,
    .coef_nonlin_grad = guard_coef_nonlin_grad,
    .sumsq = guard_sumsq,
    .coef_gram = guard_coef_gram,
    .coef_mix_grad = guard_coef_mix_grad,
    .coef_l1 = guard_coef_l1,
    .coef_overlap = guard_coef_overlap,
    .coef_weighted_overlap = guard_coef_weighted_overlap,
    .mofo_threshold = guard_mofo_threshold,
    .adamw = guard_adamw,
};

const Backend *backend_guard_impl(void) { return &guard_backend; }
