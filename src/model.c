/* model.c — the DAM model: tensor table, merged/teacher forward, loss and backward to the
 * coefficients. One training micro-batch reads top to bottom in dam_model_microbatch.
 * Every buffer of the model (sources, coefficients, workspace, run states) is device memory of the
 * backend (src/backend.h): this file only passes views of them to backend calls and device
 * communicators; host arrays are index lists (token ids, valid positions, cached top-K rows). */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loss.h"
#include "pipeline.h"

/* ---------------------------------------------------------------- tensor table */

/* Opens tensor `at` of every source and uploads this rank's share of it (arch_share). */
static DamTensor *add_tensor(DamModel *m, const ArchTensor *at) {
    DamTensor *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);
    const char *name = at->name;
    DamTensorKind kind = at->def->kind;
    snprintf(t->name, sizeof t->name, "%s", name);
    size_t rows = (size_t)at->rows, cols = (size_t)at->cols;
    int64_t shape[2] = {at->rows, at->cols};
    int ndim = (kind == DT_NORM || kind == DT_BIAS) ? 1 : 2;
    TensorShare s = arch_share(kind, at->def->split, rows, cols, m->tp_size, m->tp_rank);
    t->kind = kind;
    t->rows = s.rows, t->cols = s.cols;
    t->dim = s.dim, t->coef_full = s.coef_full, t->coef_off = s.coef_off;
    t->grad_partial = s.grad_partial;
    t->trainable = 1;
    for (int i = 0; i < m->n_rows; i++) {
        const StTensor *st = st_model_get(&m->files[i], name, ndim, ndim == 1 ? &shape[1] : shape);
        if (st->dtype != DAM_F32 && st->dtype != DAM_BF16 && st->dtype != DAM_F16)
            dam_fail("%s: tensor '%s' has dtype %s; expected BF16, F16 or F32", st->file, name,
                     dam_dtype_name(st->dtype));
        t->src[i] = m->be->upload_source(m->ctx, (const char *)st->data + s.first * dam_dtype_size(st->dtype),
                                         st->dtype, s.rows, s.cols, cols, name);
    }
    return t; /* its coefficient arrays are placed in the model's blocks by place_coefficients */
}

/* The coefficients, f(c), gradients and both Adam moments each in one F32 device block (tensor
 * after tensor): one collective or one copy moves all of them. Coefficients start at 1/n. */
static void place_coefficients(DamModel *m) {
    size_t total = 0;
    for (int t = 0; t < m->n_tensors; t++) total += (size_t)m->n_rows * m->tensors[t].dim;
    for (int b = 0; b < DAM_COEF_BLOCKS; b++)
        m->coef.block[b] = m->be->alloc(m->ctx, total, DAM_F32, "coefficient block"); /* zeroed */
    m->coef.n = total;
    m->be->fill(m->ctx, m->coef.block[DAM_COEF_C], 1.0f / (float)m->n_rows, total);
    size_t off = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        size_t n = (size_t)m->n_rows * x->dim;
        DevBuf *views[DAM_COEF_BLOCKS] = {&x->c, &x->fc, &x->grad, &x->adam_m, &x->adam_v};
        x->coef_at = off;
        for (int b = 0; b < DAM_COEF_BLOCKS; b++) *views[b] = devbuf_slice(m->coef.block[b], off, n);
        off += n;
    }
}

/* Where the forward pass finds a tensor of that role (layer: its DamLayer); NULL: one dam_dist does
 * not merge. */
static DamTensor **role_slot(DamModel *m, DamLayer *L, ArchRole role) {
    switch (role) {
    case ROLE_EMBED: return &m->embed;
    case ROLE_FINAL_NORM: return &m->final_norm;
    case ROLE_LM_HEAD: return &m->lm_head;
    case ROLE_ATTN_NORM: return &L->attn_norm;
    case ROLE_Q: return &L->q;
    case ROLE_K: return &L->k;
    case ROLE_V: return &L->v;
    case ROLE_Q_BIAS: return &L->q_bias;
    case ROLE_K_BIAS: return &L->k_bias;
    case ROLE_V_BIAS: return &L->v_bias;
    case ROLE_O: return &L->o;
    case ROLE_O_BIAS: return &L->o_bias;
    case ROLE_MLP_NORM: return &L->mlp_norm;
    case ROLE_GATE: return &L->gate;
    case ROLE_UP: return &L->up;
    case ROLE_DOWN: return &L->down;
    case ROLE_GATE_BIAS:
    case ROLE_UP_BIAS:
    case ROLE_DOWN_BIAS: break;
    }
    return NULL;
}

/* The tensors of this rank's stage, in the architecture's order (arch_tensors). */
static void build_tensor_table(DamModel *m) {
    const ModelConfig *c = &m->full_cfg;
    int n = arch_tensors(c, NULL);
    ArchTensor *all = dam_malloc((size_t)n * sizeof *all, "architecture tensors");
    arch_tensors(c, all);
    m->tensors = dam_calloc((size_t)n, sizeof(DamTensor), "tensor table");
    m->layers = dam_calloc((size_t)c->num_hidden_layers, sizeof(DamLayer), "layers");
    for (const ArchTensor *t = all; t < all + n; t++) {
        if (!arch_stage_holds(t, c, m->layer0, m->layer1, m->first, m->last)) continue;
        DamTensor **slot = role_slot(m, t->layer >= 0 ? &m->layers[t->layer] : NULL, t->def->role);
        if (!slot) dam_fail("tensor '%s' is not one dam_dist merges", t->name);
        *slot = add_tensor(m, t);
    }
    free(all);
}

/* The layer math runs on m->cfg holding this rank's share of heads, KV heads, FFN width and
 * vocabulary; m->full_cfg keeps the model's own numbers. */
static void shard_config(DamModel *m, const char *dir) {
    ModelConfig *c = &m->cfg;
    int tp = m->tp_size;
    const char *what[] = {"num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"};
    int *val[] = {&c->num_attention_heads, &c->num_key_value_heads, &c->intermediate_size, &c->vocab_size};
    for (int i = 0; i < 4; i++) {
        if (*val[i] % tp)
            dam_fail("tensor parallel size %d does not divide %s = %d of %s", tp, what[i], *val[i], dir);
        *val[i] /= tp;
    }
    m->vocab_offset = m->tp_rank * c->vocab_size;
}

double dam_layer_cost(const ModelConfig *c) {
    double d = c->hidden_size, F = c->intermediate_size, qd = (double)c->num_attention_heads * c->head_dim,
           kvd = (double)c->num_key_value_heads * c->head_dim;
    /* q, o, k, v, gate, up, down, each 2 flops per weight per token in the merged forward, its
     * recompute, the backward (twice) and the teachers' forward; attention itself is a few % at
     * real shapes and left out, so that the split does not depend on the sequence length */
    return 10 * (d * (2 * qd + 2 * kvd) + 3 * d * F);
}

double dam_head_cost(const ModelConfig *c) {
    return 8.0 * c->vocab_size * c->hidden_size; /* merged and teachers' logits, dx and weight GEMMs */
}

/* Contiguous stages minimising the largest stage cost (linear partition by dynamic programming):
 * layers cost `layer` each, the last stage adds `head`. cut[s] = first layer of stage s. */
static void balance_stages(int L, int pp, double layer, double head, int *cut) {
    double *best = dam_malloc((size_t)(pp + 1) * (L + 1) * sizeof(double), "stage split");
    int *from = dam_malloc((size_t)(pp + 1) * (L + 1) * sizeof(int), "stage split");
#define AT(a, s, l) a[(size_t)(s) * (L + 1) + (l)]
    for (int l = 0; l <= L; l++) AT(best, 1, l) = l * layer, AT(from, 1, l) = 0;
    for (int s = 2; s <= pp; s++)
        for (int l = s; l <= L; l++) {
            AT(best, s, l) = INFINITY;
            for (int k = s - 1; k < l; k++) { /* stage s holds layers [k, l) */
                double cost = (l - k) * layer + (s == pp ? head : 0);
                double worst = AT(best, s - 1, k) > cost ? AT(best, s - 1, k) : cost;
                if (worst < AT(best, s, l)) AT(best, s, l) = worst, AT(from, s, l) = k;
            }
        }
    if (pp == 1) cut[0] = 0;
    for (int s = pp, l = L; s >= 1; s--) cut[s - 1] = s == 1 ? 0 : (l = AT(from, s, l));
#undef AT
    free(best), free(from);
}

void dam_stage_layers(const ModelConfig *c, int pp, int stage, int *layer0, int *layer1) {
    int L = c->num_hidden_layers, *cut = dam_malloc((size_t)(pp + 1) * sizeof(int), "stage split");
    balance_stages(L, pp, dam_layer_cost(c), dam_head_cost(c), cut);
    cut[pp] = L;
    *layer0 = cut[stage], *layer1 = cut[stage + 1];
    free(cut);
}

/* This rank's stage of the decoder layers, balanced by cost (dam_stage_layers); the first stage
 * also holds the embedding, the last the final norm, the lm_head and the losses. */
static void stage_layers(DamModel *m, const char *dir) {
    int L = m->full_cfg.num_hidden_layers, pp = m->pp ? m->pp->size : 1, s = m->pp ? m->pp->rank : 0;
    if (pp > L) dam_fail("pipeline size %d exceeds the %d layers of %s", pp, L, dir);
    dam_stage_layers(&m->full_cfg, pp, s, &m->layer0, &m->layer1);
    m->first = s == 0, m->last = s == pp - 1;
}

void dam_model_open_tp(DamModel *m, int n, const char *const *dirs, const char *const *names,
                       const Backend *be, BackendCtx *ctx, const CommGroup *tp) {
    dam_model_open_parallel(m, n, dirs, names, be, ctx, tp, NULL, DAM_TRANSPORT_AUTO);
}

/* The device communicators of the model's groups (a NULL or single-rank group makes no-ops); dp's
 * is made at the first reduction over it. */
static void open_devcomms(DamModel *m) {
    devcomm_init(&m->dc_tp, m->tp, m->be, m->ctx, m->transport);
    devcomm_init(&m->dc_pp, m->pp, m->be, m->ctx, m->transport);
    devcomm_init(&m->dc_tied, m->tied.size > 1 ? &m->tied : NULL, m->be, m->ctx, m->transport);
    devcomm_init(&m->dc_dp, NULL, m->be, m->ctx, m->transport);
}

void dam_model_open_parallel(DamModel *m, int n, const char *const *dirs, const char *const *names,
                             const Backend *be, BackendCtx *ctx, const CommGroup *tp, const CommGroup *pp,
                             DamTransport transport) {
    memset(m, 0, sizeof *m);
    m->pp = pp && pp->size > 1 ? pp : NULL;
    if (n < 1 || n > DAM_MAX_SOURCES)
        dam_fail("%d source models given; dam_dist merges 1 to %d", n, DAM_MAX_SOURCES);
    if (!be || !ctx) dam_fail("dam_model_open: a backend and its context (be->ctx_new) are required");
    m->n_rows = n;
    m->be = be, m->ctx = ctx, m->transport = transport;
    m->tp = tp && tp->size > 1 ? tp : NULL;
    m->tp_size = m->tp ? tp->size : 1;
    m->tp_rank = m->tp ? tp->rank : 0;
    for (int i = 0; i < n; i++) {
        char *cfg_path = dam_path_join(dirs[i], "config.json");
        ModelConfig c;
        hfconfig_load(&c, cfg_path);
        free(cfg_path);
        if (i == 0)
            m->full_cfg = c;
        else
            hfconfig_check_same(&m->full_cfg, dirs[0], &c, dirs[i]); /* directories name both sides */
        m->row_names[i] = dam_strdup(names[i]);
        st_model_open(&m->files[i], dirs[i]);
    }
    if (m->full_cfg.mlp_bias) dam_fail("%s: mlp_bias is not supported", dirs[0]);
    m->cfg = m->full_cfg;
    shard_config(m, dirs[0]);
    stage_layers(m, dirs[0]);
    build_tensor_table(m);
    place_coefficients(m);
    m->ones = be->alloc(ctx, (size_t)m->cfg.hidden_size, DAM_F32, "ones");
    be->fill(ctx, m->ones, 1.0f, m->ones.n);
    if (m->pp && m->full_cfg.tie_word_embeddings) /* the group of the two stages holding the embedding */
        comm_split(m->pp, m->first || m->last ? 0 : -1, m->pp->rank, "tied", &m->tied);
    open_devcomms(m);
    dam_model_refresh(m);
}

void dam_model_open(DamModel *m, int n, const char *const *dirs, const char *const *names, const Backend *be,
                    BackendCtx *ctx) {
    dam_model_open_tp(m, n, dirs, names, be, ctx, NULL);
}

static void workspace_free(DamModel *m);

void dam_model_close(DamModel *m) {
    const Backend *be = m->be;
    workspace_free(m);
    devcomm_free(&m->dc_tp), devcomm_free(&m->dc_pp), devcomm_free(&m->dc_tied), devcomm_free(&m->dc_dp);
    comm_group_free(&m->tied);
    for (int b = 0; b < DAM_COEF_BLOCKS; b++) be->free(m->ctx, &m->coef.block[b]);
    be->free(m->ctx, &m->ones);
    if (!devbuf_null(m->bf16_scratch)) be->free(m->ctx, &m->bf16_scratch);
    for (int t = 0; t < m->n_tensors; t++) {
        for (int i = 0; i < m->n_rows; i++) be->free_source(m->ctx, &m->tensors[t].src[i]);
        if (!devbuf_null(m->tensors[t].wov)) be->free(m->ctx, &m->tensors[t].wov);
    }
    for (int i = 0; i < m->n_rows; i++) {
        st_model_close(&m->files[i]);
        free(m->row_names[i]);
    }
    free(m->tensors);
    free(m->layers);
    memset(m, 0, sizeof *m);
}

DamTensor *dam_model_find(DamModel *m, const char *name) {
    for (int t = 0; t < m->n_tensors; t++)
        if (!strcmp(m->tensors[t].name, name)) return &m->tensors[t];
    return NULL;
}

void dam_model_fill_kind(DamModel *m, DamTensorKind kind, float value) {
    for (int t = 0; t < m->n_tensors; t++)
        if (m->tensors[t].kind == kind)
            m->be->fill(m->ctx, m->tensors[t].c, value, (size_t)m->n_rows * m->tensors[t].dim);
}

/* A whole coefficient block rounded to bf16 values (merge.coef_dtype bfloat16), through a BF16
 * copy: the backends' F32 -> BF16 conversion rounds to nearest even. */
static void round_block_bf16(DamModel *m, DamCoefBlock which) {
    if (devbuf_null(m->bf16_scratch))
        m->bf16_scratch = m->be->alloc(m->ctx, m->coef.n, DAM_BF16, "bf16 coefficient rounding");
    m->be->copy(m->ctx, m->bf16_scratch, m->coef.block[which], m->coef.n);
    m->be->copy(m->ctx, m->coef.block[which], m->bf16_scratch, m->coef.n);
}

/* bf16: c is rounded first (an initial 1/3 becomes 0.333984375, as the reference's bf16 Parameter
 * holds it), then f(c) = bf16(f(c)), as torch's tanh of a bf16 tensor. */
void dam_model_refresh(DamModel *m) { /* one call over the whole block: f is element-wise */
    if (!m->coef.n) return;
    if (m->coef_bf16) round_block_bf16(m, DAM_COEF_C);
    m->be->coef_nonlin(m->ctx, m->coef.block[DAM_COEF_FC], m->coef.block[DAM_COEF_C], m->coef.n, m->nonlin);
    if (m->coef_bf16) round_block_bf16(m, DAM_COEF_FC);
}

void dam_model_zero_grad(DamModel *m) {
    if (m->coef.n) m->be->fill(m->ctx, m->coef.block[DAM_COEF_GRAD], 0.0f, m->coef.n);
}

void dam_model_reduce_grad(DamModel *m, const CommGroup *dp) {
    if (dp && dp->size > 1) {
        if (m->dp != dp) { /* (collective over dp, as the reduction itself) */
            devcomm_free(&m->dc_dp);
            devcomm_init(&m->dc_dp, dp, m->be, m->ctx, m->transport);
            m->dp = dp;
        }
        devcomm_allreduce_sum(&m->dc_dp, m->coef.block[DAM_COEF_GRAD], m->coef.n);
    }
    /* tied embeddings over stages: the first stage's input-side and the last stage's lm_head-side
     * gradients of the one embedding coefficient */
    if (m->tied.size > 1)
        devcomm_allreduce_sum(&m->dc_tied, m->embed->grad, (size_t)m->n_rows * m->embed->dim);
    for (int t = 0; t < m->n_tensors; t++) { /* column/vocabulary-parallel: each rank summed its rows */
        DamTensor *x = &m->tensors[t];
        if (m->tp && x->grad_partial) devcomm_allreduce_sum(&m->dc_tp, x->grad, (size_t)m->n_rows * x->dim);
    }
}

void dam_model_finish_grad(DamModel *m) {
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        size_t n = (size_t)m->n_rows * x->dim;
        if (x->trainable)
            m->be->coef_nonlin_grad(m->ctx, x->grad, x->c, n, m->nonlin);
        else
            m->be->fill(m->ctx, x->grad, 0.0f, n);
    }
    if (m->coef_bf16 && m->coef.n) round_block_bf16(m, DAM_COEF_GRAD); /* the reference's grads are bf16 */
}

size_t dam_model_num_coefs(const DamModel *m, int trainable_only) {
    size_t n = 0;
    for (int t = 0; t < m->n_tensors; t++)
        if (!trainable_only || m->tensors[t].trainable) n += (size_t)m->n_rows * m->tensors[t].dim;
    return n;
}

void dam_model_coef_download(const DamModel *m, DamCoefBlock which, float *host) {
    if (m->coef.n) m->be->download(m->ctx, host, DAM_F32, m->coef.block[which], m->coef.n);
}

void dam_model_coef_upload(DamModel *m, DamCoefBlock which, const float *host) {
    if (m->coef.n) m->be->upload(m->ctx, m->coef.block[which], host, DAM_F32, m->coef.n);
}

float *dam_model_coef_host(const DamModel *m, DamCoefBlock which) {
    float *h = dam_malloc((m->coef.n ? m->coef.n : 1) * sizeof(float), "coefficients (host copy)");
    dam_model_coef_download(m, which, h);
    return h;
}

void dam_model_release(const DamModel *m, const DamTensor *t) {
    /* weights under fine-tuning (wgrad set) live in writable memory, not in a file mapping: their
     * pages cannot be read back, so they stay */
    if (t->wgrad.ptr) return;
    for (int i = 0; i < m->n_rows; i++) m->be->release_source(m->ctx, &t->src[i], t->rows, t->cols);
}

/* ---------------------------------------------------------------- run state */

/* Merged (or one source's) weights of the decoder layer being computed, in the activation dtype. */
typedef struct {
    DevBuf attn_norm, q, k, v, o, qb, kb, vb, ob, mlp_norm, gate, up, down;
} LayerW;

/* One decoder layer's activations: what its backward reads (rstd1, rstd2 and lse are F32, the
 * others in the activation dtype). The workspace holds one set; a run state that keeps activations
 * (DamModel.keep_acts) holds one per layer of the stage, so that the backward skips the recompute. */
enum { N_ACT = 13 };
typedef union {
    struct {
        DevBuf xn, rstd1, q, k, v, lse, ao, h1, xn2, rstd2, gate, up, act;
    };
    DevBuf b[N_ACT];
} LayerAct;

/* Once per rank (owned by the DamModel), shared by every run state: the buffers that one forward
 * or one backward call works in. Nothing in it is needed after the call by another micro-batch,
 * so 1F1B with any number of micro-batches in flight needs one. Sized for the largest run state. */
struct Workspace {
    size_t BT; /* capacity in rows (sequences x tokens) */
    int T;
    LayerW w;
    LayerAct a;
    DevBuf dx, dh1, dxn, dxn2, dq, dk, dv, dao, dgate, dup, dact, dnorm, colsum;
    DevBuf G, final_norm_w, rope_cos, rope_sin;
    DevBuf hid, hid_t;          /* last stage: final-normed hidden of the merged model, of the teachers */
    DevBuf lm_w, lm_t, lm_G;    /* last stage: [V, d] merged lm_head, teacher lm_head, gradient GEMM */
    DevBuf hc, htc, dhc;        /* last stage: a loss chunk's hidden rows [C, d] */
    DevBuf z, zt, dz;           /* last stage: [C, V] F32 logits and dL/dz */
    DevBuf topk_idx, topk_val;  /* last stage: [C, K] the teacher's top-K (I32, F32) */
    int32_t *ids_local, *valid; /* host: token ids of this rank's vocabulary slice, valid positions */
    int32_t *h_topk_idx;        /* host: a chunk's rows of a precomputed top-K cache, uploaded */
    float *h_topk_val;
    size_t h_topk_cap;
};

/* Per micro-batch in flight: what 1F1B keeps between a micro-batch's forward and its backward. */
struct RunState {
    DamModel *m;
    int B, T;        /* capacity */
    int keep;        /* kept: each layer's activations of the merged forward (no recompute) */
    DevBuf layer_in; /* [(L+1), BT, d] input of each of this stage's layers; [L] = the last output */
    DevBuf grad_out; /* [BT, d] the gradient flowing back; also the backward's send buffer */
    DevBuf dhid;     /* last stage: dL/d(final hidden), from the losses */
    DevBuf rstd_f;   /* last stage: the final norm's rstd of the merged forward (F32) */
    LayerAct kept;   /* keep: [L] of each activation, layer after layer */
    int n_valid[DAM_MAX_SOURCES], skip; /* per segment; skip: an all-padding micro-batch */
};

enum { LOSS_CHUNK = 64 };

/* One buffer of a list: where its handle goes (a DevBuf, or an int32_t * for host index lists),
 * how many elements, of which kind. The allocator and the memory estimate
 * (dam_model_activation_bytes, used by `plan`) walk the same lists. */
typedef enum { BUF_ACT, BUF_WEIGHT, BUF_F32, BUF_I32, BUF_HOST_I32 } BufKind;
typedef struct {
    void *ptr;
    size_t n;
    BufKind kind;
} BufSpec;

#define SPEC(field, count, k) (specs[n++] = (BufSpec){(void *)&(field), (count), (k)})
#define ACT(field, count) SPEC(field, count, BUF_ACT)
#define WGT(field, count) SPEC(field, count, BUF_WEIGHT)
#define F32(field, count) SPEC(field, count, BUF_F32)

/* Elements per row (token) of each LayerAct buffer, and its kind, for this rank's share c. */
static void act_rows(const ModelConfig *c, size_t *per, BufKind *kind) {
    size_t d = c->hidden_size, F = c->intermediate_size, H = c->num_attention_heads;
    size_t qd = H * c->head_dim, kvd = (size_t)c->num_key_value_heads * c->head_dim;
    /* xn, rstd1, q, k, v, lse, ao, h1, xn2, rstd2, gate, up, act (LayerAct's order) */
    const size_t sizes[N_ACT] = {d, 1, qd, kvd, kvd, H, qd, d, d, 1, F, F, F};
    const BufKind kinds[N_ACT] = {BUF_ACT, BUF_F32, BUF_ACT, BUF_ACT, BUF_ACT, BUF_F32, BUF_ACT,
                                  BUF_ACT, BUF_ACT, BUF_F32, BUF_ACT, BUF_ACT, BUF_ACT};
    for (int i = 0; i < N_ACT; i++) per[i] = sizes[i], kind[i] = kinds[i];
}

/* The workspace's buffers for this rank's share c (last stage or not), BT rows of T tokens. */
static int workspace_specs(const ModelConfig *c, int last, size_t BT, int T, struct Workspace *ws,
                           BufSpec *specs) {
    size_t d = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, H = c->num_attention_heads;
    size_t qd = H * c->head_dim, kvd = (size_t)c->num_key_value_heads * c->head_dim;
    size_t maxcol = qd > F ? qd : F, half = (size_t)c->head_dim / 2;
    maxcol = maxcol > d ? maxcol : d;
    int n = 0;
    LayerW *w = &ws->w;
    ACT(w->attn_norm, d), ACT(w->mlp_norm, d), ACT(ws->final_norm_w, d);
    WGT(w->q, qd * d), WGT(w->k, kvd * d), WGT(w->v, kvd * d), WGT(w->o, d * qd);
    WGT(w->gate, F * d), WGT(w->up, F * d), WGT(w->down, d * F);
    ACT(w->qb, qd), ACT(w->kb, kvd), ACT(w->vb, kvd), ACT(w->ob, d);
    ACT(ws->G, F * d > qd * d ? F * d : qd * d), F32(ws->colsum, maxcol), F32(ws->dnorm, d);
    size_t per[N_ACT];
    BufKind kind[N_ACT];
    act_rows(c, per, kind);
    for (int i = 0; i < N_ACT; i++) SPEC(ws->a.b[i], BT * per[i], kind[i]);
    ACT(ws->dx, BT * d), ACT(ws->dh1, BT * d), ACT(ws->dxn, BT * d), ACT(ws->dxn2, BT * d);
    ACT(ws->dq, BT * qd), ACT(ws->dk, BT * kvd), ACT(ws->dv, BT * kvd), ACT(ws->dao, BT * qd);
    ACT(ws->dgate, BT * F), ACT(ws->dup, BT * F), ACT(ws->dact, BT * F);
    F32(ws->rope_cos, (size_t)T * half), F32(ws->rope_sin, (size_t)T * half);
    SPEC(ws->ids_local, BT, BUF_HOST_I32), SPEC(ws->valid, BT, BUF_HOST_I32);
    if (!last) return n;
    ACT(ws->hid, BT * d), ACT(ws->hid_t, BT * d);
    WGT(ws->lm_w, V * d), WGT(ws->lm_t, V * d);
    F32(ws->lm_G, V * d); /* accumulated over loss chunks and segments: fp32, whatever the activations */
    ACT(ws->hc, LOSS_CHUNK * d), ACT(ws->htc, LOSS_CHUNK * d), ACT(ws->dhc, LOSS_CHUNK * d);
    F32(ws->z, LOSS_CHUNK * V), F32(ws->zt, LOSS_CHUNK * V), F32(ws->dz, LOSS_CHUNK * V);
    SPEC(ws->topk_idx, LOSS_CHUNK * V, BUF_I32), F32(ws->topk_val, LOSS_CHUNK * V);
    return n;
}

/* A run state's buffers: n_layers layers of this stage, BT rows; with keep, every layer's
 * activations too. */
static int runstate_specs(const ModelConfig *c, int n_layers, int last, int keep, size_t BT, RunState *rs,
                          BufSpec *specs) {
    size_t d = c->hidden_size;
    int n = 0;
    ACT(rs->layer_in, (size_t)(n_layers + 1) * BT * d), ACT(rs->grad_out, BT * d);
    if (last) ACT(rs->dhid, BT * d), F32(rs->rstd_f, BT);
    if (!keep) return n;
    size_t per[N_ACT];
    BufKind kind[N_ACT];
    act_rows(c, per, kind);
    for (int i = 0; i < N_ACT; i++) SPEC(rs->kept.b[i], (size_t)n_layers * BT * per[i], kind[i]);
    return n;
}
#undef SPEC
#undef ACT
#undef WGT
#undef F32

enum { MAX_SPECS = 96 };

static size_t spec_size(BufKind kind, dam_dtype act, dam_dtype wdt) {
    return kind == BUF_ACT ? dam_dtype_size(act) : kind == BUF_WEIGHT ? dam_dtype_size(wdt) : 4;
}

static size_t specs_bytes(const BufSpec *specs, int n, dam_dtype act, dam_dtype wdt) {
    size_t b = 0;
    for (int i = 0; i < n; i++) b += specs[i].n * spec_size(specs[i].kind, act, wdt);
    return b;
}

/* The materialized GEMM weights' dtype: the backend's (BF16 under bf16 CPU GEMMs, so that the merge
 * writes the GEMM's operand once instead of fp32 rounded again at every GEMM), else the activations'. */
static dam_dtype weight_dtype(const DamModel *m) {
    return m->be->weight_dtype ? m->be->weight_dtype(m->ctx) : m->be->act_dtype;
}

void dam_model_activation_bytes(const ModelConfig *c, int n_layers, int last, int B, int T, dam_dtype act,
                                dam_dtype wdt, int keep, size_t *workspace, size_t *run_state) {
    struct Workspace ws;
    RunState rs;
    BufSpec specs[MAX_SPECS];
    size_t BT = (size_t)B * T;
    int n = workspace_specs(c, last, BT, T, &ws, specs); /* (fills specs first) */
    *workspace = specs_bytes(specs, n, act, wdt);
    n = runstate_specs(c, n_layers, last, keep, BT, &rs, specs);
    *run_state = specs_bytes(specs, n, act, wdt);
}

int dam_model_keep_fits(DamModel *m, int n_slots, int B, int T, size_t budget) {
    size_t ws, with, without;
    int nl = m->layer1 - m->layer0;
    dam_dtype act = m->be->act_dtype, wdt = weight_dtype(m);
    dam_model_activation_bytes(&m->cfg, nl, m->last, B, T, act, wdt, 1, &ws, &with);
    dam_model_activation_bytes(&m->cfg, nl, m->last, B, T, act, wdt, 0, &ws, &without);
    m->keep_acts = budget > 0 && (with - without) * (size_t)n_slots <= budget;
    return m->keep_acts;
}

static void specs_alloc(const DamModel *m, const BufSpec *specs, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        if (specs[i].kind == BUF_HOST_I32) {
            *(int32_t **)specs[i].ptr = dam_calloc(specs[i].n, sizeof(int32_t), what);
            continue;
        }
        dam_dtype dt = specs[i].kind == BUF_ACT      ? m->be->act_dtype
                       : specs[i].kind == BUF_WEIGHT ? weight_dtype(m)
                       : specs[i].kind == BUF_I32    ? DAM_I32
                                                     : DAM_F32;
        *(DevBuf *)specs[i].ptr = m->be->alloc(m->ctx, specs[i].n, dt, what);
    }
}

static void specs_free(const DamModel *m, const BufSpec *specs, int n) {
    for (int i = 0; i < n; i++) {
        if (specs[i].kind == BUF_HOST_I32) {
            free(*(int32_t **)specs[i].ptr);
            *(int32_t **)specs[i].ptr = NULL;
        } else {
            m->be->free(m->ctx, (DevBuf *)specs[i].ptr);
        }
    }
}

/* cos/sin [T, hd/2] on the host, uploaded once per workspace. */
static void rope_tables(const DamModel *m, struct Workspace *ws) {
    const ModelConfig *c = &m->cfg;
    int half = c->head_dim / 2;
    size_t n = (size_t)ws->T * half;
    double *inv = dam_malloc((size_t)half * sizeof(double), "rope");
    float *cs = dam_malloc(n * sizeof(float), "rope"), *sn = dam_malloc(n * sizeof(float), "rope");
    hfconfig_rope_inv_freq(c, inv);
    /* transformers computes the angles and their cos/sin in float32 (autocast off): do the same */
    for (int t = 0; t < ws->T; t++)
        for (int k = 0; k < half; k++) {
            float ang = (float)t * (float)inv[k];
            cs[(size_t)t * half + k] = cosf(ang);
            sn[(size_t)t * half + k] = sinf(ang);
        }
    m->be->upload(m->ctx, ws->rope_cos, cs, DAM_F32, n);
    m->be->upload(m->ctx, ws->rope_sin, sn, DAM_F32, n);
    free(inv), free(cs), free(sn);
}

static void workspace_free(DamModel *m) {
    if (!m->work) return;
    BufSpec specs[MAX_SPECS];
    int n_specs = workspace_specs(&m->cfg, m->last, m->work->BT, m->work->T, m->work, specs);
    specs_free(m, specs, n_specs);
    free(m->work->h_topk_idx), free(m->work->h_topk_val);
    free(m->work);
    m->work = NULL;
}

/* The model's workspace, grown (never while a call runs: only when a run state is made) to hold
 * BT rows of T tokens. */
static void workspace_reserve(DamModel *m, size_t BT, int T) {
    struct Workspace *ws = m->work;
    if (ws && ws->BT >= BT && ws->T >= T) return;
    if (ws) BT = BT > ws->BT ? BT : ws->BT, T = T > ws->T ? T : ws->T;
    workspace_free(m);
    ws = m->work = dam_calloc(1, sizeof *ws, "workspace");
    ws->BT = BT, ws->T = T;
    BufSpec specs[MAX_SPECS];
    int n_specs = workspace_specs(&m->cfg, m->last, BT, T, ws, specs);
    specs_alloc(m, specs, n_specs, "workspace");
    rope_tables(m, ws);
}

RunState *runstate_new(DamModel *m, int B, int T) {
    RunState *rs = dam_calloc(1, sizeof *rs, "run state");
    rs->B = B, rs->T = T, rs->keep = m->keep_acts;
    BufSpec specs[MAX_SPECS];
    int n_specs = runstate_specs(&m->cfg, m->layer1 - m->layer0, m->last, rs->keep, (size_t)B * T, rs, specs);
    specs_alloc(m, specs, n_specs, "run state");
    workspace_reserve(m, (size_t)B * T, T);
    rs->m = m;
    return rs;
}

void runstate_free(RunState *rs) {
    if (!rs) return;
    const DamModel *m = rs->m;
    BufSpec specs[MAX_SPECS];
    int n_specs =
        runstate_specs(&m->cfg, m->layer1 - m->layer0, m->last, rs->keep, (size_t)rs->B * rs->T, rs, specs);
    specs_free(m, specs, n_specs);
    free(rs);
}

/* Layer i's input (i = the stage's layer count: its output) for BT rows: the view the layer reads,
 * and what the pipeline receives or sends. */
static DevBuf layer_view(const DamModel *m, const RunState *rs, int i, size_t BT) {
    size_t n = BT * m->cfg.hidden_size;
    return devbuf_slice(rs->layer_in, (size_t)i * n, n);
}

/* The activations of layer i of a forward over BT rows: the run state's own for the merged model
 * when it keeps them, else the workspace's (recomputed by the backward). */
static LayerAct layer_acts(const DamModel *m, const RunState *rs, int i, size_t BT, int merged) {
    if (!merged || !rs->keep) return m->work->a;
    size_t per[N_ACT];
    BufKind kind[N_ACT];
    act_rows(&m->cfg, per, kind);
    LayerAct a;
    for (int j = 0; j < N_ACT; j++)
        a.b[j] = devbuf_slice(rs->kept.b[j], (size_t)i * BT * per[j], BT * per[j]);
    return a;
}

/* ---------------------------------------------------------------- materialize */

void dam_model_materialize(DamModel *m, const DamTensor *t, int src, DevBuf out) {
    out = devbuf_slice(out, 0, t->rows * t->cols);
    if (src >= 0) /* one source as stored (the teacher): a single scalar coefficient 1 */
        m->be->dam_materialize(m->ctx, out, &t->src[src], 1, m->ones, t->rows, t->cols, 1);
    else
        m->be->dam_materialize(m->ctx, out, t->src, m->n_rows, t->fc, t->rows, t->cols, t->kind == DT_BIAS);
}

static void materialize_w(DamModel *m, const DamTensor *t, int src, DevBuf out) {
    if (t) dam_model_materialize(m, t, src, out);
}

static void materialize_layer(DamModel *m, int l, int src) {
    const DamLayer *L = &m->layers[l];
    LayerW *w = &m->work->w;
    materialize_w(m, L->attn_norm, src, w->attn_norm);
    materialize_w(m, L->q, src, w->q), materialize_w(m, L->k, src, w->k);
    materialize_w(m, L->v, src, w->v), materialize_w(m, L->o, src, w->o);
    materialize_w(m, L->q_bias, src, w->qb), materialize_w(m, L->k_bias, src, w->kb);
    materialize_w(m, L->v_bias, src, w->vb), materialize_w(m, L->o_bias, src, w->ob);
    materialize_w(m, L->mlp_norm, src, w->mlp_norm);
    materialize_w(m, L->gate, src, w->gate), materialize_w(m, L->up, src, w->up);
    materialize_w(m, L->down, src, w->down);
}

/* ---------------------------------------------------------------- tensor parallel */

/* Sum a partial result over the tp group (row-parallel outputs, column-parallel input gradients). */
static void tp_sum(DamModel *m, DevBuf buf, size_t n) {
    if (m->tp) devcomm_allreduce_sum(&m->dc_tp, buf, n);
}

/* y = the row-parallel product x·Wᵀ summed over the tp group, plus `residual`. */
static void row_parallel(DamModel *m, DevBuf y, DevBuf x, DevBuf w, DevBuf residual, int BT, int in,
                         int out) {
    size_t n = (size_t)BT * out;
    if (!m->tp) { /* one rank: accumulate straight onto the residual */
        m->be->copy(m->ctx, y, residual, n);
        m->be->matmul_xwt(m->ctx, y, x, w, BT, in, out, 1);
        return;
    }
    m->be->matmul_xwt(m->ctx, y, x, w, BT, in, out, 0);
    tp_sum(m, y, n);
    m->be->add(m->ctx, y, residual, n);
}

/* Token ids as rows of this rank's vocabulary slice (-1: another rank's); a host list. */
static const int32_t *local_ids(const DamModel *m, const int32_t *ids, size_t n) {
    struct Workspace *ws = m->work;
    if (!m->tp) return ids;
    for (size_t t = 0; t < n; t++) {
        int32_t v = ids[t] - m->vocab_offset;
        ws->ids_local[t] = v >= 0 && v < m->cfg.vocab_size ? v : -1;
    }
    return ws->ids_local;
}

static void reduce_sum_f64(void *ctx, double *buf, int n) { comm_allreduce_sum_f64(ctx, buf, (size_t)n); }
static void reduce_max_f64(void *ctx, double *buf, int n) { comm_allreduce_max_f64(ctx, buf, (size_t)n); }
static void reduce_gather(void *ctx, const int32_t *ids, const float *vals, int n, int32_t *all_ids,
                          float *all_vals) {
    comm_allgather(ctx, ids, (size_t)n * sizeof(int32_t), all_ids);
    comm_allgather(ctx, vals, (size_t)n * sizeof(float), all_vals);
}

/* ---------------------------------------------------------------- forward */

/* Layer `layer`'s attention; a sliding window applies from max_window_layers on (Qwen2; 0 elsewhere). */
static AttnShape attn_shape(const ModelConfig *c, int B, int T, int layer) {
    int window = layer >= c->max_window_layers ? c->sliding_window : 0;
    return (AttnShape){B,           T,      c->num_attention_heads,          c->num_key_value_heads,
                       c->head_dim, window, 1.0f / sqrtf((float)c->head_dim)};
}

/* One decoder layer on the weights in the workspace: x_out = layer(x_in), activations into A. */
static void layer_forward(DamModel *m, const LayerAct *A, const DamLayer *L, DevBuf x_in, DevBuf x_out, int B,
                          int T) {
    struct Workspace *ws = m->work;
    const Backend *be = m->be;
    BackendCtx *cx = m->ctx;
    const ModelConfig *c = &m->cfg;
    int BT = B * T, d = c->hidden_size, F = c->intermediate_size;
    int qd = c->num_attention_heads * c->head_dim, kvd = c->num_key_value_heads * c->head_dim;
    LayerW *w = &ws->w;
    be->rmsnorm_fwd(cx, A->xn, A->rstd1, x_in, w->attn_norm, BT, d, c->rms_norm_eps);
    be->matmul_xwt(cx, A->q, A->xn, w->q, BT, d, qd, 0);
    be->matmul_xwt(cx, A->k, A->xn, w->k, BT, d, kvd, 0);
    be->matmul_xwt(cx, A->v, A->xn, w->v, BT, d, kvd, 0);
    if (L->q_bias) {
        be->add_bias(cx, A->q, w->qb, BT, qd);
        be->add_bias(cx, A->k, w->kb, BT, kvd);
        be->add_bias(cx, A->v, w->vb, BT, kvd);
    }
    be->rope(cx, A->q, ws->rope_cos, ws->rope_sin, BT, T, c->num_attention_heads, c->head_dim, 0);
    be->rope(cx, A->k, ws->rope_cos, ws->rope_sin, BT, T, c->num_key_value_heads, c->head_dim, 0);
    AttnShape s = attn_shape(c, B, T, (int)(L - m->layers));
    be->attention_fwd(cx, A->ao, A->lse, A->q, A->k, A->v, &s);
    row_parallel(m, A->h1, A->ao, w->o, x_in, BT, qd, d);
    if (L->o_bias) be->add_bias(cx, A->h1, w->ob, BT, d);
    be->rmsnorm_fwd(cx, A->xn2, A->rstd2, A->h1, w->mlp_norm, BT, d, c->rms_norm_eps);
    be->matmul_xwt(cx, A->gate, A->xn2, w->gate, BT, d, F, 0);
    be->matmul_xwt(cx, A->up, A->xn2, w->up, BT, d, F, 0);
    be->swiglu_fwd(cx, A->act, A->gate, A->up, (size_t)BT * F);
    row_parallel(m, x_out, A->act, w->down, A->h1, BT, F, d);
}

/* Forward of the merged model (src = -1) or of source src through this stage's layers: the input
 * comes from the embedding (first stage) or the previous stage, the output goes to the next stage
 * or (last stage) through the final norm into ws->hid. Layer view i is the input of layer0 + i. */
static void model_forward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src) {
    struct Workspace *ws = m->work;
    const ModelConfig *c = &m->cfg;
    size_t BT = (size_t)B * T, d = c->hidden_size;
    int nl = m->layer1 - m->layer0;
    if (B > rs->B || T > rs->T) dam_fail("batch %dx%d exceeds the run state's %dx%d", B, T, rs->B, rs->T);
    if (m->first) {
        const int32_t *lids = local_ids(m, ids, BT);
        DevBuf x0 = layer_view(m, rs, 0, BT);
        if (src >= 0)
            m->be->dam_embed_gather(m->ctx, x0, &m->embed->src[src], 1, m->ones, lids, (int)BT, (int)d);
        else
            m->be->dam_embed_gather(m->ctx, x0, m->embed->src, m->n_rows, m->embed->fc, lids, (int)BT,
                                    (int)d);
        tp_sum(m, x0, BT * d); /* vocabulary-parallel embedding */
    }                          /* else the pipeline received the previous stage's output into layer view 0 */
    for (int i = 0; i < nl; i++) {
        materialize_layer(m, m->layer0 + i, src);
        LayerAct A = layer_acts(m, rs, i, BT, src < 0);
        layer_forward(m, &A, &m->layers[m->layer0 + i], layer_view(m, rs, i, BT),
                      layer_view(m, rs, i + 1, BT), B, T);
    }
    if (!m->last) return; /* the pipeline sends layer view nl on */
    materialize_w(m, m->final_norm, src, ws->final_norm_w);
    m->be->rmsnorm_fwd(m->ctx, ws->hid, rs->rstd_f, layer_view(m, rs, nl, BT), ws->final_norm_w, (int)BT,
                       (int)d, c->rms_norm_eps);
}

static const DamTensor *lm_tensor(const DamModel *m) { return m->lm_head ? m->lm_head : m->embed; }

/* The pipeline's device communicator (NULL: one stage). */
static DevComm *pp_comm(DamModel *m) { return m->pp ? &m->dc_pp : NULL; }

typedef struct {
    DamModel *m;
    RunState *rs;
    const int32_t *ids;
    int B, T, src;
} LogitsPass;

static int lp_n_passes(void *ctx, int mb) { return (void)ctx, (void)mb, 1; }
static DevBuf lp_pass_input(void *ctx, int mb, int pass) {
    LogitsPass *l = ctx;
    return layer_view(l->m, l->rs, 0, (size_t)l->B * l->T);
}
static DevBuf lp_pass_run(void *ctx, int mb, int pass) {
    LogitsPass *l = ctx;
    model_forward(l->m, l->rs, l->ids, l->B, l->T, l->src);
    return layer_view(l->m, l->rs, l->m->layer1 - l->m->layer0, (size_t)l->B * l->T);
}

void dam_model_logits(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src, float *logits) {
    struct Workspace *ws = m->work;
    LogitsPass l = {m, rs, ids, B, T, src};
    PipelineStage st = {&l, lp_n_passes, lp_pass_input, lp_pass_run, NULL, NULL};
    pipeline_run(pp_comm(m), 1, 1, 0, &st); /* forward only, through every stage */
    if (!m->last) return;                   /* logits live on the last pipeline stage */
    int d = m->cfg.hidden_size, V = m->cfg.vocab_size, BT = B * T;
    materialize_w(m, lm_tensor(m), src, ws->lm_w);
    for (int r0 = 0; r0 < BT; r0 += LOSS_CHUNK) { /* through the loss chunk's [C, V] buffer */
        int C = BT - r0 < LOSS_CHUNK ? BT - r0 : LOSS_CHUNK;
        DevBuf h = devbuf_slice(ws->hid, (size_t)r0 * d, (size_t)C * d);
        m->be->matmul_xwt(m->ctx, ws->z, h, ws->lm_w, C, d, V, 0);
        m->be->download(m->ctx, logits + (size_t)r0 * V, DAM_F32, ws->z, (size_t)C * V);
    }
}

/* ---------------------------------------------------------------- backward */

/* grad accumulator += Σ_r W_i[r,:]·G[r,:] for a trainable tensor (fine-tuning: wgrad += G). */
static void coef_grad(DamModel *m, DamTensor *t, DevBuf G) {
    if (t && t->trainable && !devbuf_null(t->wgrad))
        m->be->add(m->ctx, t->wgrad, G, t->rows * t->cols);
    else if (t && t->trainable)
        m->be->dam_coef_grad(m->ctx, t->grad, t->src, m->n_rows, G, t->rows, t->cols, t->kind == DT_BIAS);
}

/* colsum[o] = Σ_t dy[t, o]: the gradient of a bias, reduced with the bias coefficients. */
static void bias_grad(DamModel *m, DamTensor *t, DevBuf dy, int BT, int out) {
    if (!t || !t->trainable) return;
    m->be->colsum(m->ctx, m->work->colsum, dy, BT, out);
    coef_grad(m, t, m->work->colsum);
}

/* Linear backward: dx (+)= dy·W; coefficient gradient through G = dyᵀ·x. */
static void linear_backward(DamModel *m, DamTensor *t, DevBuf w, DevBuf dx, DevBuf dy, DevBuf x, int BT,
                            int in, int out, int accumulate) {
    struct Workspace *ws = m->work;
    m->be->matmul_dyw(m->ctx, dx, dy, w, BT, in, out, accumulate);
    if (t->trainable && !devbuf_null(t->wgrad)) /* fine-tuning: the G GEMM accumulates into wgrad */
        m->be->matmul_dytx(m->ctx, t->wgrad, dy, x, BT, in, out, 1);
    else if (t->trainable) {
        m->be->matmul_dytx(m->ctx, ws->G, dy, x, BT, in, out, 0);
        coef_grad(m, t, ws->G);
    }
}

static void norm_backward(DamModel *m, DamTensor *t, DevBuf w, DevBuf dx, DevBuf dout, DevBuf x, DevBuf rstd,
                          int BT, int d) {
    struct Workspace *ws = m->work;
    m->be->fill(m->ctx, ws->dnorm, 0.0f, (size_t)d);
    m->be->rmsnorm_bwd(m->ctx, dx, ws->dnorm, dout, x, rstd, w, BT, d, 1);
    coef_grad(m, t, ws->dnorm);
}

/* Backward of one layer whose activations are in A (kept, or just recomputed): dx_in from dout. */
static void layer_backward(DamModel *m, const LayerAct *A, DamLayer *L, DevBuf x_in, DevBuf dout,
                           DevBuf dx_in, int B, int T) {
    struct Workspace *ws = m->work;
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    BackendCtx *cx = m->ctx;
    int BT = B * T, d = c->hidden_size, F = c->intermediate_size;
    int qd = c->num_attention_heads * c->head_dim, kvd = c->num_key_value_heads * c->head_dim;
    LayerW *w = &ws->w;
    /* MLP: out = h1 + down(silu(gate(xn2)) ⊙ up(xn2)) */
    linear_backward(m, L->down, w->down, ws->dact, dout, A->act, BT, F, d, 0);
    be->swiglu_bwd(cx, ws->dgate, ws->dup, ws->dact, A->gate, A->up, (size_t)BT * F);
    linear_backward(m, L->gate, w->gate, ws->dxn2, ws->dgate, A->xn2, BT, d, F, 0);
    linear_backward(m, L->up, w->up, ws->dxn2, ws->dup, A->xn2, BT, d, F, 1);
    tp_sum(m, ws->dxn2, (size_t)BT * d); /* column-parallel gate/up: input gradient summed */
    be->copy(cx, ws->dh1, dout, (size_t)BT * d);
    norm_backward(m, L->mlp_norm, w->mlp_norm, ws->dh1, ws->dxn2, A->h1, A->rstd2, BT, d);
    /* attention: h1 = x + o(attn(rope(q(xn)), rope(k(xn)), v(xn))) */
    bias_grad(m, L->o_bias, ws->dh1, BT, d);
    linear_backward(m, L->o, w->o, ws->dao, ws->dh1, A->ao, BT, qd, d, 0);
    AttnShape s = attn_shape(c, B, T, (int)(L - m->layers));
    be->attention_bwd(cx, ws->dq, ws->dk, ws->dv, ws->dao, A->ao, A->lse, A->q, A->k, A->v, &s);
    be->rope(cx, ws->dq, ws->rope_cos, ws->rope_sin, BT, T, c->num_attention_heads, c->head_dim, 1);
    be->rope(cx, ws->dk, ws->rope_cos, ws->rope_sin, BT, T, c->num_key_value_heads, c->head_dim, 1);
    bias_grad(m, L->q_bias, ws->dq, BT, qd);
    bias_grad(m, L->k_bias, ws->dk, BT, kvd);
    bias_grad(m, L->v_bias, ws->dv, BT, kvd);
    linear_backward(m, L->q, w->q, ws->dxn, ws->dq, A->xn, BT, d, qd, 0);
    linear_backward(m, L->k, w->k, ws->dxn, ws->dk, A->xn, BT, d, kvd, 1);
    linear_backward(m, L->v, w->v, ws->dxn, ws->dv, A->xn, BT, d, kvd, 1);
    tp_sum(m, ws->dxn, (size_t)BT * d); /* column-parallel q/k/v */
    be->copy(cx, dx_in, ws->dh1, (size_t)BT * d);
    norm_backward(m, L->attn_norm, w->attn_norm, dx_in, ws->dxn, x_in, A->rstd1, BT, d);
}

/* ---------------------------------------------------------------- loss */

/* A chunk's rows of a precomputed teacher cache (host arrays of the dataset, K per position) into
 * the device's top-K buffers. */
static void upload_topk_rows(DamModel *m, const int32_t *idx, const float *val, const int32_t *rows, int C,
                             int K) {
    struct Workspace *ws = m->work;
    size_t need = (size_t)LOSS_CHUNK * K;
    if (ws->h_topk_cap < need) {
        free(ws->h_topk_idx), free(ws->h_topk_val);
        ws->h_topk_idx = dam_malloc(need * sizeof(int32_t), "top-k rows");
        ws->h_topk_val = dam_malloc(need * sizeof(float), "top-k rows");
        ws->h_topk_cap = need;
    }
    for (int r = 0; r < C; r++) {
        size_t pos = (size_t)rows[r];
        memcpy(ws->h_topk_idx + (size_t)r * K, idx + pos * K, (size_t)K * sizeof(int32_t));
        memcpy(ws->h_topk_val + (size_t)r * K, val + pos * K, (size_t)K * sizeof(float));
    }
    m->be->upload(m->ctx, ws->topk_idx, ws->h_topk_idx, DAM_I32, (size_t)C * K);
    m->be->upload(m->ctx, ws->topk_val, ws->h_topk_val, DAM_F32, (size_t)C * K);
}

/* Losses over the valid positions of the batch, in chunks of rows; dL/dhid scattered into
 * rs->dhid and the lm_head weight gradient into ws->lm_G. */
static void logits_loss(DamModel *m, RunState *rs, const int32_t *valid, int n_valid, const int32_t *topk_idx,
                        const float *topk_val, int need_teacher_logits, const LossParams *lp, int B,
                        float weight, int backward, int accumulate_G, LossTerms *out) {
    struct Workspace *ws = m->work;
    const Backend *be = m->be;
    BackendCtx *cx = m->ctx;
    int d = m->cfg.hidden_size, V = m->cfg.vocab_size, K = lp->topk;
    const DamTensor *lm = lm_tensor(m);
    LossReduce red = {(void *)m->tp, m->tp_size, reduce_sum_f64, reduce_max_f64, reduce_gather};
    LossChunkParams p = {lp->temperature,
                         lp->kl,
                         lp->mse,
                         lp->entropy,
                         K,
                         1.0f / (float)n_valid,
                         m->full_cfg.vocab_size,
                         m->vocab_offset,
                         m->tp ? &red : NULL,
                         lp->kl_batchmean ? B : 1};
    LossSums sums = {0, 0, 0};
    int lm_trainable = lm->trainable;
    for (int r0 = 0; r0 < n_valid; r0 += LOSS_CHUNK) {
        int C = n_valid - r0 < LOSS_CHUNK ? n_valid - r0 : LOSS_CHUNK;
        const int32_t *rows = valid + r0;
        be->gather_rows(cx, ws->hc, ws->hid, rows, C, d);
        if (need_teacher_logits) be->gather_rows(cx, ws->htc, ws->hid_t, rows, C, d);
        if (K > 0 && topk_idx) upload_topk_rows(m, topk_idx, topk_val, rows, C, K); /* the teacher cache */
        be->matmul_xwt(cx, ws->z, ws->hc, ws->lm_w, C, d, V, 0);
        if (need_teacher_logits) be->matmul_xwt(cx, ws->zt, ws->htc, ws->lm_t, C, d, V, 0);
        if (K > 0 && !topk_idx)
            be->loss_topk(cx, ws->topk_idx, ws->topk_val, ws->zt, C, V, K, m->vocab_offset, p.reduce);
        be->loss_rows(cx, ws->dz, &sums, ws->z, ws->zt, ws->topk_idx, ws->topk_val, C, V, &p,
                      backward ? weight : 1.0f);
        if (!backward) continue;
        be->matmul_dyw(cx, ws->dhc, ws->dz, ws->lm_w, C, d, V, 0);
        tp_sum(m, ws->dhc, (size_t)C * d); /* vocabulary-parallel lm_head */
        be->scatter_rows(cx, rs->dhid, ws->dhc, rows, C, d);
        if (lm_trainable) be->matmul_dytx(cx, ws->lm_G, ws->dz, ws->hc, C, d, V, accumulate_G || r0 > 0);
    }
    out->kl = sums.kl, out->mse = sums.mse, out->entropy = sums.entropy;
}

/* Backward of the merged model through this stage: from dL/dhid (last stage) or the next stage's
 * input gradient, each layer from its kept activations or recomputed from its saved input (the
 * merged weights materialized once per layer), then to the previous stage or into the embedding
 * coefficients. */
static void merged_backward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T) {
    struct Workspace *ws = m->work;
    const ModelConfig *c = &m->cfg;
    size_t BT = (size_t)B * T, d = c->hidden_size;
    int nl = m->layer1 - m->layer0;
    DevBuf grad_out = devbuf_slice(rs->grad_out, 0, BT * d);
    if (m->last) {
        m->be->fill(m->ctx, grad_out, 0.0f, BT * d);
        materialize_w(m, m->final_norm, -1, ws->final_norm_w); /* a teacher's may be there */
        norm_backward(m, m->final_norm, ws->final_norm_w, grad_out, rs->dhid, layer_view(m, rs, nl, BT),
                      rs->rstd_f, (int)BT, (int)d);
    } /* else the pipeline received the next stage's gradient into grad_out */
    for (int i = nl - 1; i >= 0; i--) {
        DevBuf x_in = layer_view(m, rs, i, BT);
        DamLayer *L = &m->layers[m->layer0 + i];
        LayerAct A = layer_acts(m, rs, i, BT, 1);
        materialize_layer(m, m->layer0 + i, -1);
        if (!rs->keep) layer_forward(m, &A, L, x_in, layer_view(m, rs, i + 1, BT), B, T);
        layer_backward(m, &A, L, x_in, grad_out, ws->dx, B, T);
        m->be->copy(m->ctx, grad_out, ws->dx, BT * d);
    }
    if (m->first && m->embed->trainable && !devbuf_null(m->embed->wgrad)) /* fine-tuning */
        m->be->embed_grad(m->ctx, m->embed->wgrad, grad_out, local_ids(m, ids, BT), (int)BT, (int)d);
    else if (m->first && m->embed->trainable) /* else the pipeline sends grad_out back */
        m->be->dam_embed_coef_grad(m->ctx, m->embed->grad, m->embed->src, m->n_rows, grad_out,
                                   local_ids(m, ids, BT), (int)BT, (int)d);
}

/* The last stage's loss terms to every stage. */
static void share_losses(const DamModel *m, int n_seg, LossTerms *out) {
    if (!m->pp) return;
    double *buf = dam_malloc((size_t)n_seg * 3 * sizeof(double), "losses");
    for (int s = 0; s < n_seg; s++)
        buf[3 * s] = out[s].kl, buf[3 * s + 1] = out[s].mse, buf[3 * s + 2] = out[s].entropy;
    pipeline_share_from_last(m->pp, buf, (size_t)n_seg * 3 * sizeof(double));
    for (int s = 0; s < n_seg; s++)
        out[s].kl = buf[3 * s], out[s].mse = buf[3 * s + 1], out[s].entropy = buf[3 * s + 2];
}

/* ---------------------------------------------------------------- a step's micro-batches as a pipeline stage
 */

/* One call's micro-batches: micro-batch i has n_seg segments of B sequences (rows s*B*T ... of
 * ids[i]/mask[i]/top-k), segment s taught by source teacher[s]; it uses run state slots[i % n_slots]
 * and its terms go to out[i*n_seg + s]. */
typedef struct {
    DamModel *m;
    RunState *const *slots;
    int n_slots, n_seg, B, T, backward;
    const int *teacher;
    const int32_t *const *ids;
    const int8_t *const *mask;
    const int32_t *const *topk_idx;
    const float *const *topk_val;
    const LossParams *lp;
    float weight;
    LossTerms *out;
} StepBatch;

static RunState *slot_of(const StepBatch *sb, int mb) { return sb->slots[mb % sb->n_slots]; }
static const int32_t *topk_idx_of(const StepBatch *sb, int mb) {
    return sb->topk_idx ? sb->topk_idx[mb] : NULL;
}
static int need_teacher(const StepBatch *sb, int mb) {
    return (sb->lp->kl && !(sb->lp->topk > 0 && topk_idx_of(sb, mb))) || sb->lp->mse > 0;
}

/* Valid positions per segment (every stage sees the mask, so all agree); 0 passes for an
 * all-padding micro-batch, else the teachers' (when their logits are needed) and the merged one. */
static int sb_n_passes(void *ctx, int mb) {
    StepBatch *sb = ctx;
    RunState *rs = slot_of(sb, mb);
    struct Workspace *ws = sb->m->work;
    size_t segT = (size_t)sb->B * sb->T;
    int Bt = sb->n_seg * sb->B, total = 0;
    if (Bt > rs->B || sb->T > rs->T)
        dam_fail("batch %dx%d exceeds the run state's %dx%d", Bt, sb->T, rs->B, rs->T);
    for (int s = 0; s < sb->n_seg; s++) {
        LossTerms *o = &sb->out[(size_t)mb * sb->n_seg + s];
        rs->n_valid[s] = 0;
        for (size_t t = s * segT; t < (s + 1) * segT; t++)
            if (!sb->mask[mb] || sb->mask[mb][t]) ws->valid[total + rs->n_valid[s]++] = (int32_t)t;
        memset(o, 0, sizeof *o);
        o->n_valid = rs->n_valid[s];
        total += rs->n_valid[s];
    }
    rs->skip = total == 0;
    return rs->skip ? 0 : (need_teacher(sb, mb) ? sb->n_seg : 0) + 1;
}

static int is_merged_pass(const StepBatch *sb, int mb, int pass) {
    return pass == (need_teacher(sb, mb) ? sb->n_seg : 0);
}

static DevBuf sb_pass_input(void *ctx, int mb, int pass) {
    StepBatch *sb = ctx;
    int rows = is_merged_pass(sb, mb, pass) ? sb->n_seg * sb->B : sb->B;
    return layer_view(sb->m, slot_of(sb, mb), 0, (size_t)rows * sb->T);
}

/* The last stage: each segment's losses against its teacher, dL/dhid (zero at padding) and the
 * lm_head coefficient gradient. */
static void sb_losses(StepBatch *sb, int mb) {
    DamModel *m = sb->m;
    struct Workspace *ws = m->work;
    RunState *rs = slot_of(sb, mb);
    const DamTensor *lm = lm_tensor(m);
    int nt = need_teacher(sb, mb);
    materialize_w(m, lm, -1, ws->lm_w);
    m->be->fill(m->ctx, rs->dhid, 0.0f, (size_t)sb->n_seg * sb->B * sb->T * m->cfg.hidden_size);
    for (int s = 0, first = 0; s < sb->n_seg; first += rs->n_valid[s], s++) {
        if (!rs->n_valid[s]) continue;
        if (nt) materialize_w(m, lm, sb->teacher[s], ws->lm_t);
        logits_loss(m, rs, ws->valid + first, rs->n_valid[s], topk_idx_of(sb, mb),
                    sb->topk_val ? sb->topk_val[mb] : NULL, nt, sb->lp, sb->B, sb->weight, sb->backward,
                    first > 0, &sb->out[(size_t)mb * sb->n_seg + s]);
    }
    if (sb->backward) coef_grad(m, (DamTensor *)lm, ws->lm_G);
}

/* Pass p < n_seg: teacher p on segment p (its final hidden kept on the last stage); the last pass:
 * the merged model over every segment (one forward for all datasets: the merged weights are the
 * same, materialized once per layer, larger GEMMs), then the losses. */
static DevBuf sb_pass_run(void *ctx, int mb, int pass) {
    StepBatch *sb = ctx;
    DamModel *m = sb->m;
    RunState *rs = slot_of(sb, mb);
    size_t segT = (size_t)sb->B * sb->T, d = m->cfg.hidden_size;
    int merged = is_merged_pass(sb, mb, pass), rows = merged ? sb->n_seg * sb->B : sb->B;
    const int32_t *ids = sb->ids[mb] + (merged ? 0 : pass * segT);
    model_forward(m, rs, ids, rows, sb->T, merged ? -1 : sb->teacher[pass]);
    if (m->last && !merged)
        m->be->copy(m->ctx, devbuf_slice(m->work->hid_t, pass * segT * d, segT * d), m->work->hid, segT * d);
    if (m->last && merged) sb_losses(sb, mb);
    return layer_view(m, rs, m->layer1 - m->layer0, (size_t)rows * sb->T);
}

static DevBuf sb_grad_input(void *ctx, int mb) {
    StepBatch *sb = ctx;
    return devbuf_slice(slot_of(sb, mb)->grad_out, 0,
                        (size_t)sb->n_seg * sb->B * sb->T * sb->m->cfg.hidden_size);
}

static DevBuf sb_backward_run(void *ctx, int mb) {
    StepBatch *sb = ctx;
    merged_backward(sb->m, slot_of(sb, mb), sb->ids[mb], sb->n_seg * sb->B, sb->T);
    return sb_grad_input(ctx, mb);
}

/* Every micro-batch through the pipeline (mpi/pipeline.c), then the loss terms to every stage. */
static void run_batch(StepBatch *sb, int M) {
    PipelineStage st = {sb, sb_n_passes, sb_pass_input, sb_pass_run, sb_grad_input, sb_backward_run};
    pipeline_run(pp_comm(sb->m), M, sb->n_slots, sb->backward, &st);
    share_losses(sb->m, M * sb->n_seg, sb->out); /* once, after the schedule: no collective inside it */
}

void dam_model_step_1f1b(DamModel *m, RunState *const *slots, int n_slots, int M, int n_seg,
                         const int *teacher, const int32_t *const *ids, const int8_t *const *mask,
                         const int32_t *const *topk_idx, const float *const *topk_val, int B, int T,
                         const LossParams *lp, float weight, LossTerms *out) {
    StepBatch sb = {m,   slots, n_slots,  n_seg,    B,  T,      1,  teacher,
                    ids, mask,  topk_idx, topk_val, lp, weight, out};
    run_batch(&sb, M);
}

/* One micro-batch (forward and, with backward, backward) through every stage. */
static void one_micro_batch(DamModel *m, RunState *rs, int n_seg, const int *teacher, const int32_t *ids,
                            const int8_t *mask, const int32_t *topk_idx, const float *topk_val, int B, int T,
                            const LossParams *lp, float weight, int backward, LossTerms *out) {
    memset(out, 0, (size_t)n_seg * sizeof *out); /* terms of stages and segments that compute none */
    StepBatch sb = {m,
                    &rs,
                    1,
                    n_seg,
                    B,
                    T,
                    backward,
                    teacher,
                    &ids,
                    &mask,
                    topk_idx ? &topk_idx : NULL,
                    topk_val ? &topk_val : NULL,
                    lp,
                    weight,
                    out};
    run_batch(&sb, 1);
}

void dam_model_step(DamModel *m, RunState *rs, int n_seg, const int *teacher, const int32_t *ids,
                    const int8_t *mask, const int32_t *topk_idx, const float *topk_val, int B, int T,
                    const LossParams *lp, float weight, LossTerms *out) {
    one_micro_batch(m, rs, n_seg, teacher, ids, mask, topk_idx, topk_val, B, T, lp, weight, 1, out);
}

void dam_model_microbatch(DamModel *m, RunState *rs, int k, const int32_t *ids, const int8_t *mask,
                          const int32_t *topk_idx, const float *topk_val, int B, int T, const LossParams *lp,
                          float weight, LossTerms *out) {
    one_micro_batch(m, rs, 1, &k, ids, mask, topk_idx, topk_val, B, T, lp, weight, 1, out);
}

void dam_model_eval(DamModel *m, RunState *rs, int k, const int32_t *ids, const int8_t *mask,
                    const int32_t *topk_idx, const float *topk_val, int B, int T, const LossParams *lp,
                    LossTerms *out) {
    one_micro_batch(m, rs, 1, &k, ids, mask, topk_idx, topk_val, B, T, lp, 1.0f, 0, out);
}

/* ---------------------------------------------------------------- gathering splits */

/* The whole of a tensor-parallel split array: `local` is this rank's rows x cols piece; rows-split
 * pieces (and biases split along their only axis) are concatenated, column-split ones interleaved.
 * Returns a heap buffer of tp * rows * cols floats (or a copy of local without tp). */
float *dam_model_gather_split(const DamModel *m, const float *local, size_t rows, size_t cols,
                              int cols_split) {
    size_t n = rows * cols;
    int tp = m->tp_size;
    float *all = dam_malloc(n * (size_t)tp * sizeof(float), "gathered tensor");
    if (!m->tp) {
        memcpy(all, local, n * sizeof(float));
        return all;
    }
    comm_allgather(m->tp, local, n * sizeof(float), all);
    if (!cols_split) return all;
    float *full = dam_malloc(n * (size_t)tp * sizeof(float), "gathered tensor");
    for (int k = 0; k < tp; k++)
        for (size_t r = 0; r < rows; r++)
            memcpy(full + r * cols * tp + k * cols, all + k * n + r * cols, cols * sizeof(float));
    free(all);
    return full;
}

/* Read back from the share add_tensor made (arch_share): only split tensors differ from whole. */
TensorSplit dam_model_split_kind(const DamModel *m, const DamTensor *x) {
    if (!m->tp) return SPLIT_NONE;
    if (x->kind != DT_BIAS && x->coef_full != x->dim) return SPLIT_COLS;
    return x->grad_partial ? SPLIT_ROWS : SPLIT_NONE;
}

int dam_model_owns(const DamModel *m, const DamTensor *x) {
    return !(m->pp && !m->first && x->kind == DT_EMBED);
}

void dam_model_topk(const DamModel *m, const float *logits, int rows, int K, int32_t *idx, float *val) {
    LossReduce red = {(void *)m->tp, m->tp_size, reduce_sum_f64, reduce_max_f64, reduce_gather};
    loss_topk_sharded(idx, val, logits, rows, m->cfg.vocab_size, K, m->vocab_offset, m->tp ? &red : NULL);
}

double dam_model_kl_sum(const DamModel *m, const float *z, const float *zt, const int32_t *idx,
                        const float *val, int rows, const LossParams *lp) {
    if (rows <= 0) return 0;
    LossReduce red = {(void *)m->tp, m->tp_size, reduce_sum_f64, reduce_max_f64, reduce_gather};
    int V = m->cfg.vocab_size, K = lp->topk;
    int32_t *own_idx = NULL;
    float *own_val = NULL;
    if (K > 0 && !idx) { /* the teacher's top-K from its logits, as the step's be->loss_topk */
        idx = own_idx = dam_malloc((size_t)rows * K * sizeof(int32_t), "top-k ids");
        val = own_val = dam_malloc((size_t)rows * K * sizeof(float), "top-k logits");
        dam_model_topk(m, zt, rows, K, own_idx, own_val);
    }
    /* KL on, no MSE or entropy, top-K, 1/n = 1, no batchmean */
    LossChunkParams p = {lp->temperature,     1, 0, 0, K, 1.0f, m->full_cfg.vocab_size, m->vocab_offset,
                         m->tp ? &red : NULL, 1};
    LossSums sums = {0, 0, 0};
    int chunk = rows < LOSS_CHUNK ? rows : LOSS_CHUNK; /* loss_rows writes dz [C, V]: chunks of rows */
    float *dz = dam_malloc((size_t)chunk * V * sizeof(float), "loss gradient rows");
    for (int r0 = 0; r0 < rows; r0 += chunk) {
        int C = rows - r0 < chunk ? rows - r0 : chunk;
        size_t at = (size_t)r0 * V, ak = (size_t)r0 * (K > 0 ? K : 0);
        loss_rows(dz, &sums, z + at, zt + at, idx ? idx + ak : NULL, val ? val + ak : NULL, C, V, &p);
    }
    free(dz), free(own_idx), free(own_val);
    return sums.kl;
}

void dam_model_log_prob(const DamModel *m, const float *z, int rows, const int32_t *target, double *logp) {
    int V = m->cfg.vocab_size;
    double *st = dam_malloc((size_t)rows * 3 * sizeof(double), "log-probabilities");
    double *mx = st, *se = st + rows, *zt = st + 2 * (size_t)rows; /* max, Σ e^(z - max), z[target] */
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * V;
        mx[r] = -INFINITY;
        for (int v = 0; v < V; v++) mx[r] = zr[v] > mx[r] ? zr[v] : mx[r];
    }
    if (m->tp) comm_allreduce_max_f64(m->tp, mx, (size_t)rows);
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * V;
        int t = target[r] - m->vocab_offset;
        se[r] = 0, zt[r] = t >= 0 && t < V && target[r] >= 0 ? zr[t] : 0;
        for (int v = 0; v < V; v++) se[r] += exp(zr[v] - mx[r]);
    }
    if (m->tp) comm_allreduce_sum_f64(m->tp, se, 2 * (size_t)rows); /* the sums and the target's logit */
    for (int r = 0; r < rows; r++) logp[r] = target[r] < 0 ? 0 : zt[r] - mx[r] - log(se[r]);
    free(st);
}
