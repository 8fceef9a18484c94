/* model.c — the DAM model: open and close, the tensor table (every source's tensors, this rank's
 * share of them), the coefficient blocks (f(c), the gradient's reductions and f'(c)) and the
 * device communicators of its groups, all built once at open (dp's by dam_model_attach_dp).
 * The rest of the model is in model_buffers.c (stages, workspace, run states), model_layers.c
 * (materialize, forward, backward), model_loss.c (the losses) and model_eval_math.c (host-side
 * loss math); one step reads top to bottom in src/engine/step.c.
 * Every buffer of the model (sources, coefficients, workspace, run states) is device memory of the
 * backend (src/engine/backend.h): this file only passes views of them to backend calls and device
 * communicators; host arrays are index lists. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

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
    for (int i = 0; i < m->n_coef_rows; i++) {
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
    for (int t = 0; t < m->n_tensors; t++) total += (size_t)m->n_coef_rows * m->tensors[t].dim;
    for (int b = 0; b < DAM_COEF_BLOCKS; b++)
        m->coef.block[b] = m->be->alloc(m->ctx, total, DAM_F32, "coefficient block"); /* zeroed */
    m->coef.n = total;
    m->be->fill(m->ctx, m->coef.block[DAM_COEF_C], 1.0f / (float)m->n_coef_rows, total);
    size_t off = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        size_t n = (size_t)m->n_coef_rows * x->dim;
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
    case ROLE_Q_NORM: return &L->q_norm;
    case ROLE_K_NORM: return &L->k_norm;
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
 * is made by dam_model_attach_dp. */
static void open_devcomms(DamModel *m) {
    struct ModelComms *c = m->comms;
    devcomm_init(&c->tp, m->tp, m->be, m->ctx, c->transport);
    devcomm_init(&c->pp, m->pp, m->be, m->ctx, c->transport);
    devcomm_init(&c->tied, c->tied_group.size > 1 ? &c->tied_group : NULL, m->be, m->ctx, c->transport);
    devcomm_init(&c->dp, NULL, m->be, m->ctx, c->transport);
}

void dam_model_open_parallel(DamModel *m, int n, const char *const *dirs, const char *const *names,
                             const Backend *be, BackendCtx *ctx, const CommGroup *tp, const CommGroup *pp,
                             DamTransport transport) {
    memset(m, 0, sizeof *m);
    m->pp = pp && pp->size > 1 ? pp : NULL;
    if (n < 1 || n > DAM_MAX_SOURCES)
        dam_fail("%d source models given; dam_dist merges 1 to %d", n, DAM_MAX_SOURCES);
    if (!be || !ctx) dam_fail("dam_model_open: a backend and its context (be->ctx_new) are required");
    m->n_coef_rows = n;
    m->be = be, m->ctx = ctx;
    m->comms = dam_calloc(1, sizeof *m->comms, "model communicators");
    m->comms->transport = transport;
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
        comm_split(m->pp, m->first || m->last ? 0 : -1, m->pp->rank, "tied", &m->comms->tied_group);
    open_devcomms(m);
    dam_model_refresh(m);
}

void dam_model_open(DamModel *m, int n, const char *const *dirs, const char *const *names, const Backend *be,
                    BackendCtx *ctx) {
    dam_model_open_tp(m, n, dirs, names, be, ctx, NULL);
}

void dam_model_close(DamModel *m) {
    const Backend *be = m->be;
    workspace_free(m);
    struct ModelComms *c = m->comms;
    devcomm_free(&c->tp), devcomm_free(&c->pp), devcomm_free(&c->tied), devcomm_free(&c->dp);
    comm_group_free(&c->tied_group);
    free(c);
    for (int b = 0; b < DAM_COEF_BLOCKS; b++) be->free(m->ctx, &m->coef.block[b]);
    be->free(m->ctx, &m->ones);
    if (!devbuf_null(m->bf16_scratch)) be->free(m->ctx, &m->bf16_scratch);
    for (int t = 0; t < m->n_tensors; t++) {
        for (int i = 0; i < m->n_coef_rows; i++) be->free_source(m->ctx, &m->tensors[t].src[i]);
        if (!devbuf_null(m->tensors[t].wov)) be->free(m->ctx, &m->tensors[t].wov);
    }
    for (int i = 0; i < m->n_coef_rows; i++) {
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
            m->be->fill(m->ctx, m->tensors[t].c, value, (size_t)m->n_coef_rows * m->tensors[t].dim);
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

void dam_model_attach_dp(DamModel *m, const CommGroup *dp) {
    if (!dp || dp->size < 2) return;
    devcomm_free(&m->comms->dp);
    devcomm_init(&m->comms->dp, dp, m->be, m->ctx, m->comms->transport);
    m->dp = dp;
}

void dam_model_reduce_grad(DamModel *m) {
    if (m->dp) devcomm_allreduce_sum(&m->comms->dp, m->coef.block[DAM_COEF_GRAD], m->coef.n);
    /* tied embeddings over stages: the first stage's input-side and the last stage's lm_head-side
     * gradients of the one embedding coefficient */
    if (m->comms->tied_group.size > 1)
        devcomm_allreduce_sum(&m->comms->tied, m->embed->grad, (size_t)m->n_coef_rows * m->embed->dim);
    for (int t = 0; t < m->n_tensors; t++) { /* column/vocabulary-parallel: each rank summed its rows */
        DamTensor *x = &m->tensors[t];
        if (m->tp && x->grad_partial)
            devcomm_allreduce_sum(&m->comms->tp, x->grad, (size_t)m->n_coef_rows * x->dim);
    }
}

void dam_model_finish_grad(DamModel *m) {
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        size_t n = (size_t)m->n_coef_rows * x->dim;
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
        if (!trainable_only || m->tensors[t].trainable) n += (size_t)m->n_coef_rows * m->tensors[t].dim;
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
    for (int i = 0; i < m->n_coef_rows; i++) m->be->release_source(m->ctx, &t->src[i], t->rows, t->cols);
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
    if (!m->tp || x->kind == DT_NORM) return SPLIT_NONE; /* a norm is whole (q_norm: partial gradients) */
    if (x->kind != DT_BIAS && x->coef_full != x->dim) return SPLIT_COLS;
    return x->grad_partial ? SPLIT_ROWS : SPLIT_NONE;
}

int dam_model_owns(const DamModel *m, const DamTensor *x) {
    return !(m->pp && !m->first && x->kind == DT_EMBED);
}
