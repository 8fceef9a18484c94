/* backend_api.c — the backends as the program sees them: backend_by_name and the checked front
 * tables (as ggml-backend's public functions check a call once and then dispatch to the backend).
 *
 * Every entry of a front table validates its arguments (sizes against the buffers, dtypes, devices,
 * host index lists against the buffers they index, shapes, NULL where data is needed) with one
 * wording for all backends, naming the op and the argument, and then calls the backend's own table
 * (backend_impl.h), which no longer checks. Optional entries of a backend are defaulted here, so a
 * front table has every entry set. The checks read only DevBuf metadata and host arrays, never
 * device memory, so they hold on every backend.
 *
 * The call sites (m->be->op(ctx, ...)) stay as they are: a front table is a Backend like any other.
 * Since a BackendCtx is the backend's own (nccl_comm.c hands the CUDA one to the CUDA backend), the
 * front does not wrap it; each backend gets its own front table of small thunks instead, generated
 * from one list of the ops (BACKEND_OPS), that pass the backend's table to the shared checks. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"

/* ---------------------------------------------------------------- the checks */

/* A set of dtypes, one bit each. */
typedef unsigned Dtypes;
#define DT(t) (1u << (t))
enum {
    F32_ONLY = DT(DAM_F32),
    FLOATS = DT(DAM_F32) | DT(DAM_BF16),
    STORED = DT(DAM_F32) | DT(DAM_BF16) | DT(DAM_I32),
    I32_ONLY = DT(DAM_I32),
};

/* Activations and the workspace: the backend's act_dtype, or F32. */
static Dtypes act(const Backend *be) { return DT(DAM_F32) | DT(be->act_dtype); }

/* "F32", "F32 or BF16", "F32, BF16 or I32" (into buf). */
static const char *dtypes_name(Dtypes set, char *buf, size_t cap) {
    const dam_dtype all[] = {DAM_F32, DAM_BF16, DAM_F16, DAM_I32};
    int n = 0, total = 0;
    for (int i = 0; i < 4; i++) total += (set & DT(all[i])) != 0;
    buf[0] = 0;
    for (int i = 0; i < 4; i++) {
        if (!(set & DT(all[i]))) continue;
        const char *sep = n == 0 ? "" : n == total - 1 ? " or " : ", ";
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, "%s%s", sep, dam_dtype_name(all[i]));
        n++;
    }
    return buf;
}

static const char *device_name(DamDevice d) { return d == DAM_DEVICE_CUDA ? "CUDA" : "CPU"; }

/* b holds at least n elements of a dtype in `want`, on the backend's device (a null buffer is on
 * none), and is not null when n > 0. */
static void need(const Backend *be, DevBuf b, size_t n, Dtypes want, const char *op, const char *arg) {
    char names[48];
    if (b.ptr && b.device != be->device)
        dam_fail("%s: %s is not a %s buffer", op, arg, device_name(be->device));
    if (!(want & DT(b.dtype)))
        dam_fail("%s: %s is %s, expected %s", op, arg, dam_dtype_name(b.dtype),
                 dtypes_name(want, names, sizeof names));
    if (b.n < n) dam_fail("%s: %s holds %zu elements, needs %zu", op, arg, b.n, n);
    if (n && !b.ptr) dam_fail("%s: %s is a null buffer", op, arg);
}

/* A host pointer the op reads or writes when it has work (n > 0). */
static void need_host(const void *p, size_t n, const char *op, const char *arg) {
    if (n && !p) dam_fail("%s: %s is NULL", op, arg);
}

/* Conversions the backends make: the same dtype, or F32 <-> BF16. */
static void need_conversion(dam_dtype from, dam_dtype to, const char *op) {
    int same = from == to && (STORED & DT(from));
    int f32_bf16 = (FLOATS & DT(from)) && (FLOATS & DT(to));
    if (!same && !f32_bf16)
        dam_fail("%s: cannot convert %s to %s", op, dam_dtype_name(from), dam_dtype_name(to));
}

/* Elements a tensor of rows x cols with row stride ld spans. */
static size_t span(size_t rows, size_t cols, size_t ld) { return rows ? (rows - 1) * ld + cols : 0; }

/* n_src sources, each spanning rows x cols at its stride (rows 0: an embedding, indexed by ids). */
static void need_sources(const Backend *be, const SrcWeight *src, int n_src, size_t rows, size_t cols,
                         const char *op) {
    if (n_src < 1) dam_fail("%s: %d sources, at least 1 needed", op, n_src);
    need_host(src, 1, op, "src");
    for (int i = 0; i < n_src; i++) {
        const DevBuf *w = &src[i].w;
        size_t need_n = span(rows, cols, src[i].ld ? src[i].ld : cols);
        if (w->ptr && w->device != be->device)
            dam_fail("%s: source %d is not a %s buffer", op, i, device_name(be->device));
        if (w->dtype != DAM_F32 && w->dtype != DAM_BF16 && w->dtype != DAM_F16)
            dam_fail("%s: source %d is %s, expected F32, BF16 or F16", op, i, dam_dtype_name(w->dtype));
        if (w->n < need_n) dam_fail("%s: source %d holds %zu elements, needs %zu", op, i, w->n, need_n);
        if (need_n && !w->ptr) dam_fail("%s: source %d is a null buffer", op, i);
    }
}

/* Every non-negative token id names an embedding row of d columns inside every source (negative:
 * another tensor-parallel rank's vocabulary, skipped by the ops). */
static void need_ids(const SrcWeight *src, int n_src, const int32_t *ids, int T, int d, const char *op) {
    need_host(ids, T > 0, op, "ids");
    for (int i = 0; i < n_src; i++) {
        size_t ld = src[i].ld ? src[i].ld : (size_t)d;
        for (int t = 0; t < T; t++)
            if (ids[t] >= 0 && span((size_t)ids[t] + 1, (size_t)d, ld) > src[i].w.n)
                dam_fail("%s: token id %d is outside source %d (%zu elements, row stride %zu)", op, ids[t], i,
                         src[i].w.n, ld);
    }
}

/* Rows r < n of d columns lie inside b, named arg (d 0 moves nothing: no row is checked). */
static void need_rows(DevBuf b, const int32_t *rows, int n, int d, const char *op, const char *arg) {
    if (n <= 0 || d <= 0) return;
    need_host(rows, 1, op, "rows");
    size_t have = b.n / (size_t)d;
    for (int r = 0; r < n; r++)
        if (rows[r] < 0 || (size_t)rows[r] >= have)
            dam_fail("%s: row %d is outside %s's %zu rows of %d", op, rows[r], arg, have, d);
}

static void need_shape(const AttnShape *s, const char *op) {
    need_host(s, 1, op, "shape");
    if (s->B < 0 || s->T < 0 || s->H < 1 || s->KV < 1 || s->hd < 1 || s->H % s->KV != 0)
        dam_fail("%s: bad shape B=%d T=%d H=%d KV=%d hd=%d (H must be a multiple of KV)", op, s->B, s->T,
                 s->H, s->KV, s->hd);
}

static void need_alpha(float alpha, const char *op, const char *arg) {
    if (!(alpha > 0 && alpha <= 1)) dam_fail("%s: %s = %g is outside (0, 1]", op, arg, alpha);
}

/* ---------------------------------------------------------------- context, memory, transfers */

static BackendCtx *front_ctx_new(const Backend *be, int device_index) { return be->ctx_new(device_index); }
static void front_ctx_free(const Backend *be, BackendCtx *ctx) { be->ctx_free(ctx); }

static DevBuf front_alloc(const Backend *be, BackendCtx *ctx, size_t n, dam_dtype dtype, const char *what) {
    if (!(STORED & DT(dtype)))
        dam_fail("alloc of %s: dtype %s is not F32, BF16 or I32", what, dam_dtype_name(dtype));
    if (n > SIZE_MAX / dam_dtype_size(dtype)) dam_fail("alloc of %s: %zu elements overflow", what, n);
    return be->alloc(ctx, n, dtype, what);
}

static void front_free(const Backend *be, BackendCtx *ctx, DevBuf *b) { be->free(ctx, b); }

static SrcWeight front_upload_source(const Backend *be, BackendCtx *ctx, const void *host, dam_dtype dtype,
                                     size_t rows, size_t cols, size_t ld, const char *what) {
    if (dtype != DAM_F32 && dtype != DAM_BF16 && dtype != DAM_F16)
        dam_fail("upload_source of %s: stored dtype %s is not F32, BF16 or F16", what, dam_dtype_name(dtype));
    if (ld && ld < cols) dam_fail("upload_source of %s: row stride %zu < %zu columns", what, ld, cols);
    if (rows && cols && !host) dam_fail("upload_source of %s: the host data is NULL", what);
    return be->upload_source(ctx, host, dtype, rows, cols, ld, what);
}

static void front_free_source(const Backend *be, BackendCtx *ctx, SrcWeight *s) { be->free_source(ctx, s); }
static void front_release_source(const Backend *be, BackendCtx *ctx, const SrcWeight *s, size_t rows,
                                 size_t cols) {
    be->release_source(ctx, s, rows, cols);
}

static void front_upload(const Backend *be, BackendCtx *ctx, DevBuf dst, const void *host,
                         dam_dtype host_dtype, size_t n) {
    need(be, dst, n, STORED, "upload", "dst");
    need_conversion(host_dtype, dst.dtype, "upload");
    need_host(host, n, "upload", "host");
    be->upload(ctx, dst, host, host_dtype, n);
}

static void front_download(const Backend *be, BackendCtx *ctx, void *host, dam_dtype host_dtype, DevBuf src,
                           size_t n) {
    need(be, src, n, STORED, "download", "src");
    need_conversion(src.dtype, host_dtype, "download");
    need_host(host, n, "download", "host");
    be->download(ctx, host, host_dtype, src, n);
}

static int overlap(const void *a, size_t abytes, const void *b, size_t bbytes) {
    return (const char *)a < (const char *)b + bbytes && (const char *)b < (const char *)a + abytes;
}

static void front_copy(const Backend *be, BackendCtx *ctx, DevBuf dst, DevBuf src, size_t n) {
    need(be, dst, n, STORED, "copy", "dst");
    need(be, src, n, STORED, "copy", "src");
    need_conversion(src.dtype, dst.dtype, "copy");
    if (n && dst.dtype != src.dtype &&
        overlap(dst.ptr, n * dam_dtype_size(dst.dtype), src.ptr, n * dam_dtype_size(src.dtype)))
        dam_fail("copy: %s to %s between overlapping ranges (a conversion's may not overlap)",
                 dam_dtype_name(src.dtype), dam_dtype_name(dst.dtype));
    be->copy(ctx, dst, src, n);
}

static void front_fill(const Backend *be, BackendCtx *ctx, DevBuf dst, float value, size_t n) {
    need(be, dst, n, STORED, "fill", "dst");
    be->fill(ctx, dst, value, n);
}

static void front_synchronize(const Backend *be, BackendCtx *ctx) { be->synchronize(ctx); }
static BackendEvent *front_event_new(const Backend *be, BackendCtx *ctx) { return be->event_new(ctx); }
static void front_event_free(const Backend *be, BackendCtx *ctx, BackendEvent *e) { be->event_free(ctx, e); }
static void front_event_record(const Backend *be, BackendCtx *ctx, BackendEvent *e) {
    be->event_record(ctx, e);
}
static double front_event_elapsed(const Backend *be, BackendCtx *ctx, BackendEvent *start,
                                  BackendEvent *end) {
    return be->event_elapsed(ctx, start, end);
}
static void *front_host_begin(const Backend *be, BackendCtx *ctx, DevBuf b) { return be->host_begin(ctx, b); }
static void front_host_end(const Backend *be, BackendCtx *ctx, DevBuf b) { be->host_end(ctx, b); }

/* ---------------------------------------------------------------- GEMMs */

/* Default: the GEMM weights in the activation dtype. */
static dam_dtype front_weight_dtype(const Backend *be, BackendCtx *ctx) {
    return be->weight_dtype ? be->weight_dtype(ctx) : be->act_dtype;
}

/* Default: one precision (the backend's), whatever is asked. */
static void front_set_gemm_inputs(const Backend *be, BackendCtx *ctx, dam_dtype dtype) {
    if (dtype != DAM_F32 && dtype != DAM_BF16)
        dam_fail("set_gemm_inputs: %s is not F32 or BF16", dam_dtype_name(dtype));
    if (be->set_gemm_inputs) be->set_gemm_inputs(ctx, dtype);
}

/* A GEMM's inputs: F32, activations, or weights as the backend materializes them. */
static Dtypes gemm_in(const Backend *be, BackendCtx *ctx) {
    return act(be) | DT(front_weight_dtype(be, ctx));
}

static void front_matmul_xwt(const Backend *be, BackendCtx *ctx, DevBuf y, DevBuf x, DevBuf w, int T, int in,
                             int out, int accumulate) {
    size_t Ti = (size_t)T * in, To = (size_t)T * out, io = (size_t)in * out;
    need(be, x, Ti, gemm_in(be, ctx), "matmul_xwt", "x");
    need(be, w, io, gemm_in(be, ctx), "matmul_xwt", "w");
    need(be, y, To, act(be), "matmul_xwt", "y");
    be->matmul_xwt(ctx, y, x, w, T, in, out, accumulate);
}

static void front_matmul_dyw(const Backend *be, BackendCtx *ctx, DevBuf dx, DevBuf dy, DevBuf w, int T,
                             int in, int out, int accumulate) {
    size_t Ti = (size_t)T * in, To = (size_t)T * out, io = (size_t)in * out;
    need(be, dy, To, gemm_in(be, ctx), "matmul_dyw", "dy");
    need(be, w, io, gemm_in(be, ctx), "matmul_dyw", "w");
    need(be, dx, Ti, act(be), "matmul_dyw", "dx");
    be->matmul_dyw(ctx, dx, dy, w, T, in, out, accumulate);
}

static void front_matmul_dytx(const Backend *be, BackendCtx *ctx, DevBuf g, DevBuf dy, DevBuf x, int T,
                              int in, int out, int accumulate) {
    size_t Ti = (size_t)T * in, To = (size_t)T * out, io = (size_t)in * out;
    need(be, dy, To, gemm_in(be, ctx), "matmul_dytx", "dy");
    need(be, x, Ti, gemm_in(be, ctx), "matmul_dytx", "x");
    need(be, g, io, act(be), "matmul_dytx", "g");
    be->matmul_dytx(ctx, g, dy, x, T, in, out, accumulate);
}

/* ---------------------------------------------------------------- DAM */

static size_t coef_n(int n_src, size_t cols, int scalar_coef) {
    return scalar_coef ? (size_t)n_src : (size_t)n_src * cols;
}

static void front_dam_materialize(const Backend *be, BackendCtx *ctx, DevBuf merged, const SrcWeight *src,
                                  int n_src, DevBuf fc, size_t rows, size_t cols, int scalar_coef) {
    const char *op = "dam_materialize";
    need(be, merged, rows * cols, FLOATS, op, "merged");
    need(be, fc, coef_n(n_src, cols, scalar_coef), F32_ONLY, op, "fc");
    need_sources(be, src, n_src, rows, cols, op);
    be->dam_materialize(ctx, merged, src, n_src, fc, rows, cols, scalar_coef);
}

static void front_dam_coef_grad(const Backend *be, BackendCtx *ctx, DevBuf acc, const SrcWeight *src,
                                int n_src, DevBuf g, size_t rows, size_t cols, int scalar_coef) {
    const char *op = "dam_coef_grad";
    need(be, acc, coef_n(n_src, cols, scalar_coef), F32_ONLY, op, "acc");
    need_sources(be, src, n_src, rows, cols, op);
    need(be, g, rows * cols, act(be), op, "g");
    be->dam_coef_grad(ctx, acc, src, n_src, g, rows, cols, scalar_coef);
}

static void front_dam_embed_gather(const Backend *be, BackendCtx *ctx, DevBuf out, const SrcWeight *src,
                                   int n_src, DevBuf fc, const int32_t *ids, int T, int d) {
    const char *op = "dam_embed_gather";
    need(be, out, (size_t)T * d, act(be), op, "out");
    need(be, fc, (size_t)n_src * d, F32_ONLY, op, "fc");
    need_sources(be, src, n_src, 0, (size_t)d, op);
    need_ids(src, n_src, ids, T, d, op);
    be->dam_embed_gather(ctx, out, src, n_src, fc, ids, T, d);
}

static void front_dam_embed_coef_grad(const Backend *be, BackendCtx *ctx, DevBuf acc, const SrcWeight *src,
                                      int n_src, DevBuf dh, const int32_t *ids, int T, int d) {
    const char *op = "dam_embed_coef_grad";
    need(be, acc, (size_t)n_src * d, F32_ONLY, op, "acc");
    need(be, dh, (size_t)T * d, act(be), op, "dh");
    need_sources(be, src, n_src, 0, (size_t)d, op);
    need_ids(src, n_src, ids, T, d, op);
    be->dam_embed_coef_grad(ctx, acc, src, n_src, dh, ids, T, d);
}

static void front_embed_grad(const Backend *be, BackendCtx *ctx, DevBuf acc, DevBuf dh, const int32_t *ids,
                             int T, int d) {
    const char *op = "embed_grad";
    need(be, acc, (size_t)d, F32_ONLY, op, "acc");
    need(be, dh, (size_t)T * d, act(be), op, "dh");
    need_host(ids, T > 0, op, "ids");
    size_t rows = d > 0 ? acc.n / (size_t)d : 0;
    for (int t = 0; d > 0 && t < T; t++)
        if (ids[t] >= 0 && (size_t)ids[t] >= rows)
            dam_fail("%s: token id %d beyond the %zu rows of acc", op, ids[t], rows);
    be->embed_grad(ctx, acc, dh, ids, T, d);
}

/* ---------------------------------------------------------------- transformer */

static void front_rmsnorm_fwd(const Backend *be, BackendCtx *ctx, DevBuf out, DevBuf rstd, DevBuf x, DevBuf w,
                              int T, int d, float eps) {
    const char *op = "rmsnorm_fwd";
    size_t Td = (size_t)T * d;
    need(be, out, Td, act(be), op, "out");
    need(be, rstd, (size_t)T, F32_ONLY, op, "rstd");
    need(be, x, Td, act(be), op, "x");
    need(be, w, (size_t)d, act(be), op, "w");
    be->rmsnorm_fwd(ctx, out, rstd, x, w, T, d, eps);
}

static void front_rmsnorm_bwd(const Backend *be, BackendCtx *ctx, DevBuf dx, DevBuf dw, DevBuf dout, DevBuf x,
                              DevBuf rstd, DevBuf w, int T, int d, int accumulate_dx) {
    const char *op = "rmsnorm_bwd";
    size_t Td = (size_t)T * d;
    need(be, dx, Td, act(be), op, "dx");
    if (!devbuf_null(dw)) need(be, dw, (size_t)d, F32_ONLY, op, "dw");
    need(be, dout, Td, act(be), op, "dout");
    need(be, x, Td, act(be), op, "x");
    need(be, rstd, (size_t)T, F32_ONLY, op, "rstd");
    need(be, w, (size_t)d, act(be), op, "w");
    be->rmsnorm_bwd(ctx, dx, dw, dout, x, rstd, w, T, d, accumulate_dx);
}

static void front_rope(const Backend *be, BackendCtx *ctx, DevBuf x, DevBuf cos, DevBuf sin, int BT, int T,
                       int heads, int hd, int inverse) {
    size_t half = (size_t)T * (hd / 2);
    need(be, x, (size_t)BT * heads * hd, act(be), "rope", "x");
    need(be, cos, half, F32_ONLY, "rope", "cos");
    need(be, sin, half, F32_ONLY, "rope", "sin");
    be->rope(ctx, x, cos, sin, BT, T, heads, hd, inverse);
}

/* Elements of the queries (and outputs), of the keys and values, and of the lse. */
static size_t attn_nq(const AttnShape *s) { return (size_t)s->B * s->T * s->H * s->hd; }
static size_t attn_nk(const AttnShape *s) { return (size_t)s->B * s->T * s->KV * s->hd; }
static size_t attn_nl(const AttnShape *s) { return (size_t)s->B * s->H * s->T; }

static void front_attention_fwd(const Backend *be, BackendCtx *ctx, DevBuf out, DevBuf lse, DevBuf q,
                                DevBuf k, DevBuf v, const AttnShape *s) {
    const char *op = "attention_fwd";
    need_shape(s, op);
    need(be, out, attn_nq(s), act(be), op, "out");
    need(be, lse, attn_nl(s), F32_ONLY, op, "lse");
    need(be, q, attn_nq(s), act(be), op, "q");
    need(be, k, attn_nk(s), act(be), op, "k");
    need(be, v, attn_nk(s), act(be), op, "v");
    be->attention_fwd(ctx, out, lse, q, k, v, s);
}

static void front_attention_bwd(const Backend *be, BackendCtx *ctx, DevBuf dq, DevBuf dk, DevBuf dv,
                                DevBuf dout, DevBuf out, DevBuf lse, DevBuf q, DevBuf k, DevBuf v,
                                const AttnShape *s) {
    const char *op = "attention_bwd";
    need_shape(s, op);
    need(be, dq, attn_nq(s), act(be), op, "dq");
    need(be, dk, attn_nk(s), act(be), op, "dk");
    need(be, dv, attn_nk(s), act(be), op, "dv");
    need(be, dout, attn_nq(s), act(be), op, "dout");
    need(be, out, attn_nq(s), act(be), op, "out");
    need(be, lse, attn_nl(s), F32_ONLY, op, "lse");
    need(be, q, attn_nq(s), act(be), op, "q");
    need(be, k, attn_nk(s), act(be), op, "k");
    need(be, v, attn_nk(s), act(be), op, "v");
    be->attention_bwd(ctx, dq, dk, dv, dout, out, lse, q, k, v, s);
}

static void front_swiglu_fwd(const Backend *be, BackendCtx *ctx, DevBuf act_, DevBuf gate, DevBuf up,
                             size_t n) {
    need(be, act_, n, act(be), "swiglu_fwd", "act");
    need(be, gate, n, act(be), "swiglu_fwd", "gate");
    need(be, up, n, act(be), "swiglu_fwd", "up");
    be->swiglu_fwd(ctx, act_, gate, up, n);
}

static void front_swiglu_bwd(const Backend *be, BackendCtx *ctx, DevBuf dgate, DevBuf dup, DevBuf dact,
                             DevBuf gate, DevBuf up, size_t n) {
    const char *op = "swiglu_bwd";
    need(be, dgate, n, act(be), op, "dgate");
    need(be, dup, n, act(be), op, "dup");
    need(be, gate, n, act(be), op, "gate");
    need(be, up, n, act(be), op, "up");
    need(be, dact, n, act(be), op, "dact");
    be->swiglu_bwd(ctx, dgate, dup, dact, gate, up, n);
}

static void front_add_bias(const Backend *be, BackendCtx *ctx, DevBuf y, DevBuf b, int T, int out) {
    need(be, y, (size_t)T * out, act(be), "add_bias", "y");
    need(be, b, (size_t)out, act(be), "add_bias", "b");
    be->add_bias(ctx, y, b, T, out);
}

static void front_add(const Backend *be, BackendCtx *ctx, DevBuf y, DevBuf x, size_t n) {
    need(be, y, n, act(be), "add", "y");
    need(be, x, n, act(be), "add", "x");
    be->add(ctx, y, x, n);
}

static void front_scale(const Backend *be, BackendCtx *ctx, DevBuf y, float s, size_t n) {
    need(be, y, n, act(be), "scale", "y");
    be->scale(ctx, y, s, n);
}

static void front_colsum(const Backend *be, BackendCtx *ctx, DevBuf out, DevBuf dy, int T, int cols) {
    need(be, out, (size_t)cols, F32_ONLY, "colsum", "out");
    need(be, dy, (size_t)T * cols, act(be), "colsum", "dy");
    be->colsum(ctx, out, dy, T, cols);
}

static void front_gather_rows(const Backend *be, BackendCtx *ctx, DevBuf dst, DevBuf src, const int32_t *rows,
                              int n, int d) {
    need(be, dst, (size_t)n * d, FLOATS, "gather_rows", "dst");
    need(be, src, 0, FLOATS, "gather_rows", "src");
    need_rows(src, rows, n, d, "gather_rows", "src");
    be->gather_rows(ctx, dst, src, rows, n, d);
}

static void front_scatter_rows(const Backend *be, BackendCtx *ctx, DevBuf dst, DevBuf src,
                               const int32_t *rows, int n, int d) {
    need(be, src, (size_t)n * d, FLOATS, "scatter_rows", "src");
    need(be, dst, 0, FLOATS, "scatter_rows", "dst");
    need_rows(dst, rows, n, d, "scatter_rows", "dst");
    be->scatter_rows(ctx, dst, src, rows, n, d);
}

/* ---------------------------------------------------------------- losses */

static void front_loss_rows(const Backend *be, BackendCtx *ctx, DevBuf dz, LossSums *sums, DevBuf z,
                            DevBuf zt, DevBuf idx, DevBuf val, int C, int V, const LossChunkParams *p,
                            float dz_scale) {
    const char *op = "loss_rows";
    need_host(p, 1, op, "params");
    need_host(sums, 1, op, "sums");
    size_t CV = (size_t)C * V, CK = (size_t)C * (p->K > 0 ? p->K : 0);
    int need_t = (p->kl && p->K <= 0) || p->mse > 0; /* full-vocabulary terms read the teacher's logits */
    need(be, dz, CV, F32_ONLY, op, "dz");
    need(be, z, CV, F32_ONLY, op, "z");
    if (need_t || !devbuf_null(zt)) need(be, zt, need_t ? CV : 0, F32_ONLY, op, "zt");
    if (p->K > 0) {
        need(be, idx, CK, I32_ONLY, op, "idx");
        need(be, val, CK, F32_ONLY, op, "val");
    }
    be->loss_rows(ctx, dz, sums, z, zt, idx, val, C, V, p, dz_scale);
}

static void front_loss_topk(const Backend *be, BackendCtx *ctx, DevBuf idx, DevBuf val, DevBuf zt, int C,
                            int V, int K, int vocab_offset, const LossReduce *reduce) {
    const char *op = "loss_topk";
    if (K < 1 || K > V) dam_fail("%s: K = %d is outside [1, %d]", op, K, V);
    size_t CK = (size_t)C * K;
    need(be, idx, CK, I32_ONLY, op, "idx");
    need(be, val, CK, F32_ONLY, op, "val");
    need(be, zt, (size_t)C * V, F32_ONLY, op, "zt");
    be->loss_topk(ctx, idx, val, zt, C, V, K, vocab_offset, reduce);
}

/* ---------------------------------------------------------------- coefficients and optimizer (F32) */

static void front_coef_nonlin(const Backend *be, BackendCtx *ctx, DevBuf fc, DevBuf c, size_t n,
                              Nonlinearity f) {
    need(be, fc, n, F32_ONLY, "coef_nonlin", "fc");
    need(be, c, n, F32_ONLY, "coef_nonlin", "c");
    be->coef_nonlin(ctx, fc, c, n, f);
}

static void front_coef_nonlin_grad(const Backend *be, BackendCtx *ctx, DevBuf g, DevBuf c, size_t n,
                                   Nonlinearity f) {
    need(be, g, n, F32_ONLY, "coef_nonlin_grad", "g");
    need(be, c, n, F32_ONLY, "coef_nonlin_grad", "c");
    be->coef_nonlin_grad(ctx, g, c, n, f);
}

static double front_sumsq(const Backend *be, BackendCtx *ctx, DevBuf x, size_t n) {
    need(be, x, n, F32_ONLY, "sumsq", "x");
    return be->sumsq(ctx, x, n);
}

static void front_coef_gram(const Backend *be, BackendCtx *ctx, double *gram, DevBuf c, int n_src, int dim) {
    need(be, c, (size_t)n_src * dim, F32_ONLY, "coef_gram", "c");
    need_host(gram, n_src > 0, "coef_gram", "the Gram matrix");
    be->coef_gram(ctx, gram, c, n_src, dim);
}

static void front_coef_mix_grad(const Backend *be, BackendCtx *ctx, DevBuf g, DevBuf c, const double *A,
                                int n_src, int dim) {
    need(be, g, (size_t)n_src * dim, F32_ONLY, "coef_mix_grad", "g");
    need(be, c, (size_t)n_src * dim, F32_ONLY, "coef_mix_grad", "c");
    need_host(A, n_src > 0, "coef_mix_grad", "A");
    be->coef_mix_grad(ctx, g, c, A, n_src, dim);
}

static double front_coef_l1(const Backend *be, BackendCtx *ctx, DevBuf g, DevBuf c, size_t n, double lambda) {
    need(be, g, n, F32_ONLY, "coef_l1", "g");
    need(be, c, n, F32_ONLY, "coef_l1", "c");
    return be->coef_l1(ctx, g, c, n, lambda);
}

static double front_coef_overlap(const Backend *be, BackendCtx *ctx, DevBuf g, DevBuf c, int n_src, int dim,
                                 double w) {
    need(be, g, (size_t)n_src * dim, F32_ONLY, "coef_overlap", "g");
    need(be, c, (size_t)n_src * dim, F32_ONLY, "coef_overlap", "c");
    return be->coef_overlap(ctx, g, c, n_src, dim, w);
}

static double front_coef_weighted_overlap(const Backend *be, BackendCtx *ctx, DevBuf g, DevBuf c, DevBuf wts,
                                          int n_src, int dim, double w) {
    const char *op = "coef_weighted_overlap";
    need(be, g, (size_t)n_src * dim, F32_ONLY, op, "g");
    need(be, c, (size_t)n_src * dim, F32_ONLY, op, "c");
    need(be, wts, (size_t)(n_src * (n_src - 1) / 2) * dim, F32_ONLY, op, "wts");
    return be->coef_weighted_overlap(ctx, g, c, wts, n_src, dim, w);
}

static float front_mofo_threshold(const Backend *be, BackendCtx *ctx, DevBuf m, size_t n, float alpha) {
    need(be, m, n, F32_ONLY, "mofo_threshold", "m");
    need_alpha(alpha, "mofo_threshold", "alpha");
    return be->mofo_threshold(ctx, m, n, alpha);
}

static void front_adamw(const Backend *be, BackendCtx *ctx, DevBuf c, DevBuf g, DevBuf m, DevBuf v, size_t n,
                        const AdamParams *p) {
    need_host(p, 1, "adamw", "params");
    need(be, c, n, F32_ONLY, "adamw", "c");
    need(be, m, n, F32_ONLY, "adamw", "m");
    need(be, v, n, F32_ONLY, "adamw", "v");
    need(be, g, n, F32_ONLY, "adamw", "g");
    if (p->mofo_alpha > 0) need_alpha(p->mofo_alpha, "adamw", "mofo_alpha"); /* the threshold it computes */
    be->adamw(ctx, c, g, m, v, n, p);
}

/* ---------------------------------------------------------------- one front table per backend */

/* Every entry of a table: OPV(B, name, params, args) for an op without a result, OPR(B, type,
 * name, params, args) for one with; params and args start with the context. */
#define BACKEND_OPS(B, OPV, OPR)                                                                             \
    OPR(B, BackendCtx *, ctx_new, (int device_index), (device_index))                                        \
    OPV(B, ctx_free, (BackendCtx * ctx), (ctx))                                                              \
    OPR(B, DevBuf, alloc, (BackendCtx * ctx, size_t n, dam_dtype dtype, const char *what),                   \
        (ctx, n, dtype, what))                                                                               \
    OPV(B, free, (BackendCtx * ctx, DevBuf * b), (ctx, b))                                                   \
    OPR(B, SrcWeight, upload_source,                                                                         \
        (BackendCtx * ctx, const void *host, dam_dtype dtype, size_t rows, size_t cols, size_t ld,           \
         const char *what),                                                                                  \
        (ctx, host, dtype, rows, cols, ld, what))                                                            \
    OPV(B, free_source, (BackendCtx * ctx, SrcWeight * s), (ctx, s))                                         \
    OPV(B, release_source, (BackendCtx * ctx, const SrcWeight *s, size_t rows, size_t cols),                 \
        (ctx, s, rows, cols))                                                                                \
    OPV(B, upload, (BackendCtx * ctx, DevBuf dst, const void *host, dam_dtype hd, size_t n),                 \
        (ctx, dst, host, hd, n))                                                                             \
    OPV(B, download, (BackendCtx * ctx, void *host, dam_dtype hd, DevBuf src, size_t n),                     \
        (ctx, host, hd, src, n))                                                                             \
    OPV(B, copy, (BackendCtx * ctx, DevBuf dst, DevBuf src, size_t n), (ctx, dst, src, n))                   \
    OPV(B, fill, (BackendCtx * ctx, DevBuf dst, float value, size_t n), (ctx, dst, value, n))                \
    OPV(B, synchronize, (BackendCtx * ctx), (ctx))                                                           \
    OPR(B, BackendEvent *, event_new, (BackendCtx * ctx), (ctx))                                             \
    OPV(B, event_free, (BackendCtx * ctx, BackendEvent * e), (ctx, e))                                       \
    OPV(B, event_record, (BackendCtx * ctx, BackendEvent * e), (ctx, e))                                     \
    OPR(B, double, event_elapsed, (BackendCtx * ctx, BackendEvent * a, BackendEvent * b), (ctx, a, b))       \
    OPR(B, void *, host_begin, (BackendCtx * ctx, DevBuf b), (ctx, b))                                       \
    OPV(B, host_end, (BackendCtx * ctx, DevBuf b), (ctx, b))                                                 \
    OPV(B, matmul_xwt, (BackendCtx * ctx, DevBuf y, DevBuf x, DevBuf w, int T, int in, int out, int acc),    \
        (ctx, y, x, w, T, in, out, acc))                                                                     \
    OPV(B, matmul_dyw, (BackendCtx * ctx, DevBuf dx, DevBuf dy, DevBuf w, int T, int in, int out, int acc),  \
        (ctx, dx, dy, w, T, in, out, acc))                                                                   \
    OPV(B, matmul_dytx, (BackendCtx * ctx, DevBuf g, DevBuf dy, DevBuf x, int T, int in, int out, int acc),  \
        (ctx, g, dy, x, T, in, out, acc))                                                                    \
    OPV(B, set_gemm_inputs, (BackendCtx * ctx, dam_dtype dtype), (ctx, dtype))                               \
    OPR(B, dam_dtype, weight_dtype, (BackendCtx * ctx), (ctx))                                               \
    OPV(B, dam_materialize,                                                                                  \
        (BackendCtx * ctx, DevBuf merged, const SrcWeight *src, int n_src, DevBuf fc, size_t rows,           \
         size_t cols, int scalar),                                                                           \
        (ctx, merged, src, n_src, fc, rows, cols, scalar))                                                   \
    OPV(B, dam_coef_grad,                                                                                    \
        (BackendCtx * ctx, DevBuf acc, const SrcWeight *src, int n_src, DevBuf g, size_t rows, size_t cols,  \
         int scalar),                                                                                        \
        (ctx, acc, src, n_src, g, rows, cols, scalar))                                                       \
    OPV(B, dam_embed_gather,                                                                                 \
        (BackendCtx * ctx, DevBuf out, const SrcWeight *src, int n_src, DevBuf fc, const int32_t *ids,       \
         int T, int d),                                                                                      \
        (ctx, out, src, n_src, fc, ids, T, d))                                                               \
    OPV(B, dam_embed_coef_grad,                                                                              \
        (BackendCtx * ctx, DevBuf acc, const SrcWeight *src, int n_src, DevBuf dh, const int32_t *ids,       \
         int T, int d),                                                                                      \
        (ctx, acc, src, n_src, dh, ids, T, d))                                                               \
    OPV(B, embed_grad, (BackendCtx * ctx, DevBuf acc, DevBuf dh, const int32_t *ids, int T, int d),          \
        (ctx, acc, dh, ids, T, d))                                                                           \
    OPV(B, rmsnorm_fwd,                                                                                      \
        (BackendCtx * ctx, DevBuf out, DevBuf rstd, DevBuf x, DevBuf w, int T, int d, float eps),            \
        (ctx, out, rstd, x, w, T, d, eps))                                                                   \
    OPV(B, rmsnorm_bwd,                                                                                      \
        (BackendCtx * ctx, DevBuf dx, DevBuf dw, DevBuf dout, DevBuf x, DevBuf rstd, DevBuf w, int T, int d, \
         int acc),                                                                                           \
        (ctx, dx, dw, dout, x, rstd, w, T, d, acc))                                                          \
    OPV(B, rope,                                                                                             \
        (BackendCtx * ctx, DevBuf x, DevBuf c, DevBuf s, int BT, int T, int heads, int hd, int inv),         \
        (ctx, x, c, s, BT, T, heads, hd, inv))                                                               \
    OPV(B, attention_fwd,                                                                                    \
        (BackendCtx * ctx, DevBuf out, DevBuf lse, DevBuf q, DevBuf k, DevBuf v, const AttnShape *s),        \
        (ctx, out, lse, q, k, v, s))                                                                         \
    OPV(B, attention_bwd,                                                                                    \
        (BackendCtx * ctx, DevBuf dq, DevBuf dk, DevBuf dv, DevBuf dout, DevBuf out, DevBuf lse, DevBuf q,   \
         DevBuf k, DevBuf v, const AttnShape *s),                                                            \
        (ctx, dq, dk, dv, dout, out, lse, q, k, v, s))                                                       \
    OPV(B, swiglu_fwd, (BackendCtx * ctx, DevBuf a, DevBuf gate, DevBuf up, size_t n),                       \
        (ctx, a, gate, up, n))                                                                               \
    OPV(B, swiglu_bwd,                                                                                       \
        (BackendCtx * ctx, DevBuf dgate, DevBuf dup, DevBuf dact, DevBuf gate, DevBuf up, size_t n),         \
        (ctx, dgate, dup, dact, gate, up, n))                                                                \
    OPV(B, add_bias, (BackendCtx * ctx, DevBuf y, DevBuf b, int T, int out), (ctx, y, b, T, out))            \
    OPV(B, add, (BackendCtx * ctx, DevBuf y, DevBuf x, size_t n), (ctx, y, x, n))                            \
    OPV(B, scale, (BackendCtx * ctx, DevBuf y, float s, size_t n), (ctx, y, s, n))                           \
    OPV(B, colsum, (BackendCtx * ctx, DevBuf out, DevBuf dy, int T, int cols), (ctx, out, dy, T, cols))      \
    OPV(B, gather_rows, (BackendCtx * ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d),       \
        (ctx, dst, src, rows, n, d))                                                                         \
    OPV(B, scatter_rows, (BackendCtx * ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d),      \
        (ctx, dst, src, rows, n, d))                                                                         \
    OPV(B, loss_rows,                                                                                        \
        (BackendCtx * ctx, DevBuf dz, LossSums * sums, DevBuf z, DevBuf zt, DevBuf idx, DevBuf val, int C,   \
         int V, const LossChunkParams *p, float dz_scale),                                                   \
        (ctx, dz, sums, z, zt, idx, val, C, V, p, dz_scale))                                                 \
    OPV(B, loss_topk,                                                                                        \
        (BackendCtx * ctx, DevBuf idx, DevBuf val, DevBuf zt, int C, int V, int K, int off,                  \
         const LossReduce *reduce),                                                                          \
        (ctx, idx, val, zt, C, V, K, off, reduce))                                                           \
    OPV(B, coef_nonlin, (BackendCtx * ctx, DevBuf fc, DevBuf c, size_t n, Nonlinearity f),                   \
        (ctx, fc, c, n, f))                                                                                  \
    OPV(B, coef_nonlin_grad, (BackendCtx * ctx, DevBuf g, DevBuf c, size_t n, Nonlinearity f),               \
        (ctx, g, c, n, f))                                                                                   \
    OPR(B, double, sumsq, (BackendCtx * ctx, DevBuf x, size_t n), (ctx, x, n))                               \
    OPV(B, coef_gram, (BackendCtx * ctx, double *gram, DevBuf c, int n_src, int dim),                        \
        (ctx, gram, c, n_src, dim))                                                                          \
    OPV(B, coef_mix_grad, (BackendCtx * ctx, DevBuf g, DevBuf c, const double *A, int n_src, int dim),       \
        (ctx, g, c, A, n_src, dim))                                                                          \
    OPR(B, double, coef_l1, (BackendCtx * ctx, DevBuf g, DevBuf c, size_t n, double lambda),                 \
        (ctx, g, c, n, lambda))                                                                              \
    OPR(B, double, coef_overlap, (BackendCtx * ctx, DevBuf g, DevBuf c, int n_src, int dim, double w),       \
        (ctx, g, c, n_src, dim, w))                                                                          \
    OPR(B, double, coef_weighted_overlap,                                                                    \
        (BackendCtx * ctx, DevBuf g, DevBuf c, DevBuf wts, int n_src, int dim, double w),                    \
        (ctx, g, c, wts, n_src, dim, w))                                                                     \
    OPR(B, float, mofo_threshold, (BackendCtx * ctx, DevBuf m, size_t n, float alpha), (ctx, m, n, alpha))   \
    OPV(B, adamw, (BackendCtx * ctx, DevBuf c, DevBuf g, DevBuf m, DevBuf v, size_t n, const AdamParams *p), \
        (ctx, c, g, m, v, n, p))

#define UNPACK(...) __VA_ARGS__
/* B's thunk of an op: the shared front function with B's own table. */
#define THUNK_V(B, op, params, args)                                                                         \
    static void B##_##op params { front_##op(backend_##B##_impl(), UNPACK args); }
#define THUNK_R(B, type, op, params, args)                                                                   \
    static type B##_##op params { return front_##op(backend_##B##_impl(), UNPACK args); }
#define ENTRY_V(B, op, params, args) t->op = B##_##op;
#define ENTRY_R(B, type, op, params, args) t->op = B##_##op;

/* B's front table (built once: its name, device and act_dtype are the backend's). */
#define FRONT(B)                                                                                             \
    BACKEND_OPS(B, THUNK_V, THUNK_R)                                                                         \
    static Backend B##_front;                                                                                \
    static void B##_front_build(void) {                                                                      \
        const Backend *impl = backend_##B##_impl();                                                          \
        Backend *t = &B##_front;                                                                             \
        t->name = impl->name, t->device = impl->device, t->act_dtype = impl->act_dtype;                      \
        BACKEND_OPS(B, ENTRY_V, ENTRY_R)                                                                     \
    }                                                                                                        \
    const Backend *backend_##B(void) {                                                                       \
        static pthread_once_t once = PTHREAD_ONCE_INIT;                                                      \
        pthread_once(&once, B##_front_build);                                                                \
        return &B##_front;                                                                                   \
    }

FRONT(cpu)
FRONT(guard)
#ifdef DAM_WITH_CUDA
FRONT(cuda)
#else
const Backend *backend_cuda(void) { return NULL; }
#endif

/* ---------------------------------------------------------------- by name */

const Backend *backend_by_name(const char *name) {
    const char *env = getenv("DAM_BACKEND");
    if (env && *env) name = env; /* the test suite runs whole under "guard" */
    const Backend *cuda = backend_cuda();
    if (name && strcmp(name, "cpu") == 0) return backend_cpu();
    if (name && strcmp(name, "guard") == 0) return backend_guard();
    if (name && strcmp(name, "cuda") == 0 && cuda) return cuda;
    dam_fail("backend \"%s\"%s is not available (available: cpu, guard%s)%s", name ? name : "(none)",
             env && *env ? " (from DAM_BACKEND)" : "", cuda ? ", cuda" : "",
             name && strcmp(name, "cuda") == 0 ? ": this dam_dist was built without CUDA" : "");
}
