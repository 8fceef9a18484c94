/* model.c — the DAM model: tensor table, merged/teacher forward, loss and backward to the
 * coefficients. One training micro-batch reads top to bottom in dam_model_microbatch. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "loss.h"
#include "pipeline.h"

/* ---------------------------------------------------------------- tensor table */

/* How a tensor is divided over the tensor-parallel group (Megatron): column-parallel layers split
 * their output rows (coefficients over the input stay whole, their gradients are partial sums),
 * row-parallel layers split their input columns (coefficients split with them). */
typedef enum { SPLIT_NONE, SPLIT_ROWS, SPLIT_COLS } TpSplit;

static DamTensor *add_tensor(DamModel *m, const char *name, DamTensorKind kind, size_t rows, size_t cols,
                             TpSplit split) {
    DamTensor *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    int64_t shape[2] = {(int64_t)rows, (int64_t)cols};
    int ndim = (kind == DT_NORM || kind == DT_BIAS) ? 1 : 2;
    /* a bias [out] of a column-parallel layer is split along its only axis (stored as cols) */
    int tp = m->tp_size, r = m->tp_rank;
    size_t rows_l = split == SPLIT_ROWS && kind != DT_BIAS ? rows / tp : rows;
    size_t cols_l = split == SPLIT_COLS || (split == SPLIT_ROWS && kind == DT_BIAS) ? cols / tp : cols;
    t->kind = kind;
    t->rows = rows_l, t->cols = cols_l;
    t->dim = kind == DT_BIAS ? 1 : (int)cols_l;
    t->coef_full = kind == DT_BIAS ? 1 : (int)cols;
    t->coef_off = kind != DT_BIAS && cols_l != cols ? (int)(r * cols_l) : 0;
    t->grad_partial = tp > 1 && split == SPLIT_ROWS;
    t->trainable = 1;
    size_t first = (rows_l != rows ? r * rows_l * cols : 0) + (cols_l != cols ? r * cols_l : 0);
    for (int i = 0; i < m->n_rows; i++) {
        const StTensor *st = st_model_get(&m->files[i], name, ndim, ndim == 1 ? &shape[1] : shape);
        if (st->dtype != DAM_F32 && st->dtype != DAM_BF16 && st->dtype != DAM_F16)
            dam_fail("%s: tensor '%s' has dtype %s; expected BF16, F16 or F32", st->file, name,
                     dam_dtype_name(st->dtype));
        t->src[i] = (SrcWeight){(const char *)st->data + first * dam_dtype_size(st->dtype), st->dtype, cols};
    }
    return t; /* its coefficient arrays are placed in the model's blocks by place_coefficients */
}

/* The coefficients, f(c), gradients and both Adam moments each in one contiguous block (tensor
 * after tensor): one collective or one copy moves all of them. Coefficients start at 1/n. */
static void place_coefficients(DamModel *m) {
    size_t total = 0;
    for (int t = 0; t < m->n_tensors; t++) total += (size_t)m->n_rows * m->tensors[t].dim;
    float **blocks[5] = {&m->coef.c, &m->coef.fc, &m->coef.grad, &m->coef.adam_m, &m->coef.adam_v};
    for (int b = 0; b < 5; b++) *blocks[b] = dam_calloc(total, sizeof(float), "coefficient block");
    m->coef.n = total;
    for (size_t j = 0; j < total; j++) m->coef.c[j] = 1.0f / (float)m->n_rows;
    size_t off = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        x->c = m->coef.c + off, x->fc = m->coef.fc + off, x->grad = m->coef.grad + off;
        x->adam_m = m->coef.adam_m + off, x->adam_v = m->coef.adam_v + off;
        off += (size_t)m->n_rows * x->dim;
    }
}

static DamTensor *add_layer_tensor(DamModel *m, int l, const char *suffix, DamTensorKind kind, size_t rows,
                                   size_t cols, TpSplit split) {
    char name[128];
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);
    return add_tensor(m, name, kind, rows, cols, split);
}

static void build_tensor_table(DamModel *m) {
    const ModelConfig *c = &m->full_cfg;
    size_t d = (size_t)c->hidden_size, F = (size_t)c->intermediate_size, V = (size_t)c->vocab_size;
    size_t qd = (size_t)c->num_attention_heads * c->head_dim,
           kvd = (size_t)c->num_key_value_heads * c->head_dim;
    m->tensors = dam_calloc((size_t)c->num_hidden_layers * 13 + 3, sizeof(DamTensor), "tensor table");
    m->layers = dam_calloc((size_t)c->num_hidden_layers, sizeof(DamLayer), "layers");
    /* tied embeddings: the last stage needs the embedding too, as its lm_head */
    if (m->first || (m->last && c->tie_word_embeddings))
        m->embed = add_tensor(m, "model.embed_tokens.weight", DT_EMBED, V, d, SPLIT_ROWS);
    for (int l = m->layer0; l < m->layer1; l++) {
        DamLayer *L = &m->layers[l];
        L->attn_norm = add_layer_tensor(m, l, "input_layernorm.weight", DT_NORM, 1, d, SPLIT_NONE);
        L->q = add_layer_tensor(m, l, "self_attn.q_proj.weight", DT_LINEAR, qd, d, SPLIT_ROWS);
        L->k = add_layer_tensor(m, l, "self_attn.k_proj.weight", DT_LINEAR, kvd, d, SPLIT_ROWS);
        L->v = add_layer_tensor(m, l, "self_attn.v_proj.weight", DT_LINEAR, kvd, d, SPLIT_ROWS);
        if (c->attention_bias) {
            L->q_bias = add_layer_tensor(m, l, "self_attn.q_proj.bias", DT_BIAS, 1, qd, SPLIT_ROWS);
            L->k_bias = add_layer_tensor(m, l, "self_attn.k_proj.bias", DT_BIAS, 1, kvd, SPLIT_ROWS);
            L->v_bias = add_layer_tensor(m, l, "self_attn.v_proj.bias", DT_BIAS, 1, kvd, SPLIT_ROWS);
        }
        L->o = add_layer_tensor(m, l, "self_attn.o_proj.weight", DT_LINEAR, d, qd, SPLIT_COLS);
        if (c->o_bias) L->o_bias = add_layer_tensor(m, l, "self_attn.o_proj.bias", DT_BIAS, 1, d, SPLIT_NONE);
        L->mlp_norm = add_layer_tensor(m, l, "post_attention_layernorm.weight", DT_NORM, 1, d, SPLIT_NONE);
        L->gate = add_layer_tensor(m, l, "mlp.gate_proj.weight", DT_LINEAR, F, d, SPLIT_ROWS);
        L->up = add_layer_tensor(m, l, "mlp.up_proj.weight", DT_LINEAR, F, d, SPLIT_ROWS);
        L->down = add_layer_tensor(m, l, "mlp.down_proj.weight", DT_LINEAR, d, F, SPLIT_COLS);
    }
    if (!m->last) return;
    m->final_norm = add_tensor(m, "model.norm.weight", DT_NORM, 1, d, SPLIT_NONE);
    m->lm_head = c->tie_word_embeddings ? NULL : add_tensor(m, "lm_head.weight", DT_LINEAR, V, d, SPLIT_ROWS);
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
                       const Backend *be, const CommGroup *tp) {
    dam_model_open_parallel(m, n, dirs, names, be, tp, NULL);
}

void dam_model_open_parallel(DamModel *m, int n, const char *const *dirs, const char *const *names,
                             const Backend *be, const CommGroup *tp, const CommGroup *pp) {
    memset(m, 0, sizeof *m);
    m->pp = pp && pp->size > 1 ? pp : NULL;
    if (n < 1 || n > DAM_MAX_SOURCES)
        dam_fail("%d source models given; dam_dist merges 1 to %d", n, DAM_MAX_SOURCES);
    m->n_rows = n;
    m->be = be;
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
    if (m->pp && m->full_cfg.tie_word_embeddings) /* the group of the two stages holding the embedding */
        comm_split(m->pp, m->first || m->last ? 0 : -1, m->pp->rank, "tied", &m->tied);
    dam_model_refresh(m);
}

void dam_model_open(DamModel *m, int n, const char *const *dirs, const char *const *names,
                    const Backend *be) {
    dam_model_open_tp(m, n, dirs, names, be, NULL);
}

static void workspace_free(DamModel *m);

void dam_model_close(DamModel *m) {
    workspace_free(m);
    comm_group_free(&m->tied);
    free(m->coef.c), free(m->coef.fc), free(m->coef.grad), free(m->coef.adam_m), free(m->coef.adam_v);
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

void dam_model_refresh(DamModel *m) {
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        size_t n = (size_t)m->n_rows * x->dim;
        for (size_t j = 0; j < n; j++) x->fc[j] = dam_nonlin(m->nonlin, x->c[j]);
    }
}

void dam_model_zero_grad(DamModel *m) { memset(m->coef.grad, 0, m->coef.n * sizeof(float)); }

void dam_model_reduce_grad(DamModel *m, const CommGroup *dp) {
    if (dp && dp->size > 1) comm_allreduce_sum_f32(dp, m->coef.grad, m->coef.n);
    /* tied embeddings over stages: the first stage's input-side and the last stage's lm_head-side
     * gradients of the one embedding coefficient */
    if (m->tied.size > 1) comm_allreduce_sum_f32(&m->tied, m->embed->grad, (size_t)m->n_rows * m->embed->dim);
    for (int t = 0; t < m->n_tensors; t++) { /* column/vocabulary-parallel: each rank summed its rows */
        DamTensor *x = &m->tensors[t];
        if (m->tp && x->grad_partial) comm_allreduce_sum_f32(m->tp, x->grad, (size_t)m->n_rows * x->dim);
    }
}

void dam_model_finish_grad(DamModel *m) {
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        size_t n = (size_t)m->n_rows * x->dim;
        for (size_t j = 0; j < n; j++)
            x->grad[j] = x->trainable ? x->grad[j] * dam_nonlin_grad(m->nonlin, x->c[j]) : 0;
    }
}

size_t dam_model_num_coefs(const DamModel *m, int trainable_only) {
    size_t n = 0;
    for (int t = 0; t < m->n_tensors; t++)
        if (!trainable_only || m->tensors[t].trainable) n += (size_t)m->n_rows * m->tensors[t].dim;
    return n;
}

void dam_model_release(const DamModel *m, const DamTensor *t) {
    static long page = 0;
    if (!page) page = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < m->n_rows; i++) {
        uintptr_t lo = (uintptr_t)t->src[i].data,
                  hi = lo + t->rows * t->cols * dam_dtype_size(t->src[i].dtype);
        lo = (lo + (uintptr_t)page - 1) & ~((uintptr_t)page - 1); /* whole pages inside the tensor only */
        hi &= ~((uintptr_t)page - 1);
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
}

/* ---------------------------------------------------------------- run state */

/* Merged (or one source's) fp32 weights of the decoder layer being computed. */
typedef struct {
    float *attn_norm, *q, *k, *v, *o, *qb, *kb, *vb, *ob, *mlp_norm, *gate, *up, *down;
} LayerW;

/* Once per rank (owned by the DamModel), shared by every run state: the buffers that one forward
 * or one backward call works in. Nothing in it is needed after the call by another micro-batch,
 * so 1F1B with any number of micro-batches in flight needs one. Sized for the largest run state. */
struct Workspace {
    size_t BT; /* capacity in rows (sequences x tokens) */
    int T;
    LayerW w;
    float *xn, *rstd1, *q, *k, *v, *lse, *ao, *h1, *xn2, *rstd2, *gate, *up, *act;
    float *dx, *dh1, *dxn, *dxn2, *dq, *dk, *dv, *dao, *dgate, *dup, *dact, *attn_scratch, *dnorm, *colsum;
    float *G, *ones, *final_norm_w, *rope_cos, *rope_sin;
    float *hid, *hid_t;        /* last stage: final-normed hidden of the merged model, of the teachers */
    float *lm_w, *lm_t, *lm_G; /* last stage: [V, d] merged lm_head, teacher lm_head, gradient GEMM */
    float *hc, *htc, *z, *zt, *dz, *dhc; /* last stage: loss chunk, [C, d] and [C, V] */
    float *topk_val;
    int32_t *topk_idx, *valid, *ids_local;
};

/* Per micro-batch in flight: what 1F1B keeps between a micro-batch's forward and its backward. */
struct RunState {
    const DamModel *m;
    int B, T;        /* capacity */
    float *layer_in; /* [(L+1), BT, d] input of each of this stage's layers; [L] = the last output */
    float *grad_out; /* [BT, d] the gradient flowing back; also the backward's send buffer */
    float *dhid;     /* last stage: dL/d(final hidden), from the losses */
    float *rstd_f;   /* last stage: the final norm's rstd of the merged forward */
    int n_valid[DAM_MAX_SOURCES], skip; /* per segment; skip: an all-padding micro-batch */
};

enum { LOSS_CHUNK = 64 };

/* One buffer of a list: where its pointer goes, how many 4-byte elements. The allocator and the
 * memory estimate (dam_model_activation_bytes, used by `plan`) walk the same lists. */
typedef struct {
    void *ptr;
    size_t n;
} BufSpec;

#define SPEC(field, count) (specs[n++] = (BufSpec){(void *)&(field), (count)})

/* The workspace's buffers for this rank's share c (last stage or not), BT rows of T tokens. */
static int workspace_specs(const ModelConfig *c, int last, size_t BT, int T, struct Workspace *ws,
                           BufSpec *specs) {
    size_t d = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, H = c->num_attention_heads;
    size_t qd = H * c->head_dim, kvd = (size_t)c->num_key_value_heads * c->head_dim;
    size_t maxcol = qd > F ? qd : F, half = (size_t)c->head_dim / 2;
    maxcol = maxcol > d ? maxcol : d;
    int n = 0;
    LayerW *w = &ws->w;
    SPEC(w->attn_norm, d), SPEC(w->mlp_norm, d), SPEC(ws->final_norm_w, d);
    SPEC(w->q, qd * d), SPEC(w->k, kvd * d), SPEC(w->v, kvd * d), SPEC(w->o, d * qd);
    SPEC(w->gate, F * d), SPEC(w->up, F * d), SPEC(w->down, d * F);
    SPEC(w->qb, qd), SPEC(w->kb, kvd), SPEC(w->vb, kvd), SPEC(w->ob, d);
    SPEC(ws->G, F * d > qd * d ? F * d : qd * d), SPEC(ws->ones, maxcol), SPEC(ws->colsum, maxcol);
    SPEC(ws->dnorm, d);
    SPEC(ws->xn, BT * d), SPEC(ws->xn2, BT * d), SPEC(ws->h1, BT * d), SPEC(ws->rstd1, BT),
        SPEC(ws->rstd2, BT);
    SPEC(ws->q, BT * qd), SPEC(ws->k, BT * kvd), SPEC(ws->v, BT * kvd), SPEC(ws->ao, BT * qd);
    SPEC(ws->lse, BT * H), SPEC(ws->attn_scratch, DAM_ATTN_SCRATCH);
    SPEC(ws->gate, BT * F), SPEC(ws->up, BT * F), SPEC(ws->act, BT * F);
    SPEC(ws->dx, BT * d), SPEC(ws->dh1, BT * d), SPEC(ws->dxn, BT * d), SPEC(ws->dxn2, BT * d);
    SPEC(ws->dq, BT * qd), SPEC(ws->dk, BT * kvd), SPEC(ws->dv, BT * kvd), SPEC(ws->dao, BT * qd);
    SPEC(ws->dgate, BT * F), SPEC(ws->dup, BT * F), SPEC(ws->dact, BT * F);
    SPEC(ws->rope_cos, (size_t)T * half), SPEC(ws->rope_sin, (size_t)T * half);
    SPEC(ws->ids_local, BT), SPEC(ws->valid, BT);
    if (!last) return n;
    SPEC(ws->hid, BT * d), SPEC(ws->hid_t, BT * d);
    SPEC(ws->lm_w, V * d), SPEC(ws->lm_t, V * d), SPEC(ws->lm_G, V * d);
    SPEC(ws->hc, LOSS_CHUNK * d), SPEC(ws->htc, LOSS_CHUNK * d), SPEC(ws->dhc, LOSS_CHUNK * d);
    SPEC(ws->z, LOSS_CHUNK * V), SPEC(ws->zt, LOSS_CHUNK * V), SPEC(ws->dz, LOSS_CHUNK * V);
    SPEC(ws->topk_idx, LOSS_CHUNK * V), SPEC(ws->topk_val, LOSS_CHUNK * V);
    return n;
}

/* A run state's buffers: n_layers layers of this stage, BT rows. */
static int runstate_specs(const ModelConfig *c, int n_layers, int last, size_t BT, RunState *rs,
                          BufSpec *specs) {
    size_t d = c->hidden_size;
    int n = 0;
    SPEC(rs->layer_in, (size_t)(n_layers + 1) * BT * d), SPEC(rs->grad_out, BT * d);
    if (last) SPEC(rs->dhid, BT * d), SPEC(rs->rstd_f, BT);
    return n;
}
#undef SPEC

enum { MAX_SPECS = 96 };

static size_t specs_bytes(const BufSpec *specs, int n) {
    size_t b = 0;
    for (int i = 0; i < n; i++) b += specs[i].n * 4;
    return b;
}

void dam_model_activation_bytes(const ModelConfig *c, int n_layers, int last, int B, int T, size_t *workspace,
                                size_t *run_state) {
    struct Workspace ws;
    RunState rs;
    BufSpec specs[MAX_SPECS];
    size_t BT = (size_t)B * T;
    int n = workspace_specs(c, last, BT, T, &ws, specs); /* (fills specs first) */
    *workspace = specs_bytes(specs, n);
    n = runstate_specs(c, n_layers, last, BT, &rs, specs);
    *run_state = specs_bytes(specs, n);
}

static void specs_alloc(const DamModel *m, const BufSpec *specs, int n, const char *what) {
    for (int i = 0; i < n; i++) *(void **)specs[i].ptr = m->be->alloc(specs[i].n * 4, what);
}

static void specs_free(const DamModel *m, const BufSpec *specs, int n) {
    for (int i = 0; i < n; i++) {
        m->be->free(*(void **)specs[i].ptr);
        *(void **)specs[i].ptr = NULL;
    }
}

static void rope_tables(const ModelConfig *c, struct Workspace *ws) {
    int half = c->head_dim / 2;
    double *inv = dam_malloc((size_t)half * sizeof(double), "rope");
    hfconfig_rope_inv_freq(c, inv);
    /* transformers computes the angles and their cos/sin in float32 (autocast off): do the same */
    for (int t = 0; t < ws->T; t++)
        for (int k = 0; k < half; k++) {
            float ang = (float)t * (float)inv[k];
            ws->rope_cos[(size_t)t * half + k] = cosf(ang);
            ws->rope_sin[(size_t)t * half + k] = sinf(ang);
        }
    free(inv);
}

static void workspace_free(DamModel *m) {
    if (!m->work) return;
    BufSpec specs[MAX_SPECS];
    int n_specs = workspace_specs(&m->cfg, m->last, m->work->BT, m->work->T, m->work, specs);
    specs_free(m, specs, n_specs);
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
    size_t maxcol = (size_t)m->cfg.hidden_size; /* ones: as long as the colsum buffer */
    size_t F = m->cfg.intermediate_size, qd = (size_t)m->cfg.num_attention_heads * m->cfg.head_dim;
    maxcol = maxcol > F ? maxcol : F, maxcol = maxcol > qd ? maxcol : qd;
    for (size_t j = 0; j < maxcol; j++) ws->ones[j] = 1.0f;
    rope_tables(&m->cfg, ws);
}

RunState *runstate_new(DamModel *m, int B, int T) {
    RunState *rs = dam_calloc(1, sizeof *rs, "run state");
    rs->B = B, rs->T = T;
    BufSpec specs[MAX_SPECS];
    int n_specs = runstate_specs(&m->cfg, m->layer1 - m->layer0, m->last, (size_t)B * T, rs, specs);
    specs_alloc(m, specs, n_specs, "run state");
    workspace_reserve(m, (size_t)B * T, T);
    rs->m = m;
    return rs;
}

void runstate_free(RunState *rs) {
    if (!rs) return;
    const DamModel *m = rs->m;
    BufSpec specs[MAX_SPECS];
    int n_specs = runstate_specs(&m->cfg, m->layer1 - m->layer0, m->last, (size_t)rs->B * rs->T, rs, specs);
    specs_free(m, specs, n_specs);
    free(rs);
}

/* ---------------------------------------------------------------- materialize */

void dam_model_materialize(DamModel *m, const DamTensor *t, int src, float *out) {
    static const float one = 1.0f;
    if (src >= 0) /* one source as stored (the teacher): a single scalar coefficient 1 */
        m->be->dam_materialize(out, &t->src[src], 1, &one, t->rows, t->cols, 1);
    else
        m->be->dam_materialize(out, t->src, m->n_rows, t->fc, t->rows, t->cols, t->kind == DT_BIAS);
}

static void materialize_w(DamModel *m, RunState *rs, const DamTensor *t, int src, float *out) {
    (void)rs;
    if (t) dam_model_materialize(m, t, src, out);
}

static void materialize_layer(DamModel *m, RunState *rs, int l, int src) {
    struct Workspace *ws = m->work;
    const DamLayer *L = &m->layers[l];
    LayerW *w = &ws->w;
    materialize_w(m, rs, L->attn_norm, src, w->attn_norm);
    materialize_w(m, rs, L->q, src, w->q), materialize_w(m, rs, L->k, src, w->k);
    materialize_w(m, rs, L->v, src, w->v), materialize_w(m, rs, L->o, src, w->o);
    materialize_w(m, rs, L->q_bias, src, w->qb), materialize_w(m, rs, L->k_bias, src, w->kb);
    materialize_w(m, rs, L->v_bias, src, w->vb), materialize_w(m, rs, L->o_bias, src, w->ob);
    materialize_w(m, rs, L->mlp_norm, src, w->mlp_norm);
    materialize_w(m, rs, L->gate, src, w->gate), materialize_w(m, rs, L->up, src, w->up);
    materialize_w(m, rs, L->down, src, w->down);
}

/* ---------------------------------------------------------------- tensor parallel */

/* Sum a partial result over the tp group (row-parallel outputs, column-parallel input gradients). */
static void tp_sum(const DamModel *m, float *buf, size_t n) {
    if (m->tp) comm_allreduce_sum_f32(m->tp, buf, n);
}

/* y (+)= the row-parallel product x·Wᵀ summed over the tp group (plus `residual` when given). */
static void row_parallel(const DamModel *m, float *y, const float *x, const float *w, const float *residual,
                         int BT, int in, int out) {
    if (!m->tp) { /* one rank: accumulate straight onto the residual */
        memcpy(y, residual, (size_t)BT * out * sizeof(float));
        m->be->matmul_xwt(y, x, w, BT, in, out, 1);
        return;
    }
    m->be->matmul_xwt(y, x, w, BT, in, out, 0);
    tp_sum(m, y, (size_t)BT * out);
    for (size_t i = 0; i < (size_t)BT * out; i++) y[i] += residual[i];
}

/* Token ids as rows of this rank's vocabulary slice (-1: another rank's). */
static const int32_t *local_ids(const DamModel *m, RunState *rs, const int32_t *ids, size_t n) {
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

/* One decoder layer on the weights in ws->w: x_out = layer(x_in); activations stay in rs. */
static void layer_forward(const DamModel *m, RunState *rs, const DamLayer *L, const float *x_in, float *x_out,
                          int B, int T) {
    struct Workspace *ws = m->work;
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    int BT = B * T, d = c->hidden_size, F = c->intermediate_size;
    int qd = c->num_attention_heads * c->head_dim, kvd = c->num_key_value_heads * c->head_dim;
    LayerW *w = &ws->w;
    be->rmsnorm_fwd(ws->xn, ws->rstd1, x_in, w->attn_norm, BT, d, c->rms_norm_eps);
    be->matmul_xwt(ws->q, ws->xn, w->q, BT, d, qd, 0);
    be->matmul_xwt(ws->k, ws->xn, w->k, BT, d, kvd, 0);
    be->matmul_xwt(ws->v, ws->xn, w->v, BT, d, kvd, 0);
    if (L->q_bias) {
        be->add_bias(ws->q, w->qb, BT, qd);
        be->add_bias(ws->k, w->kb, BT, kvd);
        be->add_bias(ws->v, w->vb, BT, kvd);
    }
    be->rope(ws->q, ws->rope_cos, ws->rope_sin, BT, T, c->num_attention_heads, c->head_dim, 0);
    be->rope(ws->k, ws->rope_cos, ws->rope_sin, BT, T, c->num_key_value_heads, c->head_dim, 0);
    AttnShape s = attn_shape(c, B, T, (int)(L - m->layers));
    be->attention_fwd(ws->ao, ws->lse, ws->q, ws->k, ws->v, &s, ws->attn_scratch);
    row_parallel(m, ws->h1, ws->ao, w->o, x_in, BT, qd, d);
    if (L->o_bias) be->add_bias(ws->h1, w->ob, BT, d);
    be->rmsnorm_fwd(ws->xn2, ws->rstd2, ws->h1, w->mlp_norm, BT, d, c->rms_norm_eps);
    be->matmul_xwt(ws->gate, ws->xn2, w->gate, BT, d, F, 0);
    be->matmul_xwt(ws->up, ws->xn2, w->up, BT, d, F, 0);
    be->swiglu_fwd(ws->act, ws->gate, ws->up, (size_t)BT * F);
    row_parallel(m, x_out, ws->act, w->down, ws->h1, BT, F, d);
}

/* Forward of the merged model (src = -1) or of source src through this stage's layers: the input
 * comes from the embedding (first stage) or the previous stage, the output goes to the next stage
 * or (last stage) through the final norm into ws->hid. rs->layer_in[i] is the input of layer
 * layer0 + i. */
static void model_forward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src) {
    struct Workspace *ws = m->work;
    const ModelConfig *c = &m->cfg;
    size_t BT = (size_t)B * T, d = c->hidden_size;
    int nl = m->layer1 - m->layer0;
    if (B > rs->B || T > rs->T) dam_fail("batch %dx%d exceeds the run state's %dx%d", B, T, rs->B, rs->T);
    if (m->first) {
        const int32_t *lids = local_ids(m, rs, ids, BT);
        if (src >= 0)
            m->be->dam_embed_gather(rs->layer_in, &m->embed->src[src], 1, ws->ones, lids, (int)BT, (int)d);
        else
            m->be->dam_embed_gather(rs->layer_in, m->embed->src, m->n_rows, m->embed->fc, lids, (int)BT,
                                    (int)d);
        tp_sum(m, rs->layer_in, BT * d); /* vocabulary-parallel embedding */
    } /* else the pipeline received the previous stage's output into layer_in */
    for (int i = 0; i < nl; i++) {
        materialize_layer(m, rs, m->layer0 + i, src);
        layer_forward(m, rs, &m->layers[m->layer0 + i], rs->layer_in + i * BT * d,
                      rs->layer_in + (i + 1) * BT * d, B, T);
    }
    if (!m->last) return; /* the pipeline sends layer_in[nl] on */
    materialize_w(m, rs, m->final_norm, src, ws->final_norm_w);
    m->be->rmsnorm_fwd(ws->hid, rs->rstd_f, rs->layer_in + nl * BT * d, ws->final_norm_w, (int)BT, (int)d,
                       c->rms_norm_eps);
}

static const DamTensor *lm_tensor(const DamModel *m) { return m->lm_head ? m->lm_head : m->embed; }

typedef struct {
    DamModel *m;
    RunState *rs;
    const int32_t *ids;
    int B, T, src;
} LogitsPass;

static int lp_n_passes(void *ctx, int mb) { return (void)ctx, (void)mb, 1; }
static float *lp_pass_input(void *ctx, int mb, int pass, size_t *n) {
    LogitsPass *l = ctx;
    *n = (size_t)l->B * l->T * l->m->cfg.hidden_size;
    return l->rs->layer_in;
}
static const float *lp_pass_run(void *ctx, int mb, int pass, size_t *n) {
    LogitsPass *l = ctx;
    model_forward(l->m, l->rs, l->ids, l->B, l->T, l->src);
    *n = (size_t)l->B * l->T * l->m->cfg.hidden_size;
    return l->rs->layer_in + (size_t)(l->m->layer1 - l->m->layer0) * *n;
}

void dam_model_logits(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src, float *logits) {
    struct Workspace *ws = m->work;
    LogitsPass l = {m, rs, ids, B, T, src};
    PipelineStage st = {&l, lp_n_passes, lp_pass_input, lp_pass_run, NULL, NULL};
    pipeline_run(m->pp, 1, 1, 0, &st); /* forward only, through every stage */
    if (!m->last) return;              /* logits live on the last pipeline stage */
    materialize_w(m, rs, lm_tensor(m), src, ws->lm_w);
    m->be->matmul_xwt(logits, ws->hid, ws->lm_w, B * T, m->cfg.hidden_size, m->cfg.vocab_size, 0);
}

/* ---------------------------------------------------------------- backward */

/* grad accumulator += Σ_r W_i[r,:]·G[r,:] for a trainable tensor. */
static void coef_grad(DamModel *m, DamTensor *t, const float *G) {
    if (t && t->trainable)
        m->be->dam_coef_grad(t->grad, t->src, m->n_rows, G, t->rows, t->cols, t->kind == DT_BIAS);
}

/* colsum[o] = Σ_t dy[t, o]: the gradient of a bias, reduced with the bias coefficients. */
static void bias_grad(DamModel *m, RunState *rs, DamTensor *t, const float *dy, int BT, int out) {
    struct Workspace *ws = m->work;
    if (!t || !t->trainable) return;
    memset(ws->colsum, 0, (size_t)out * sizeof(float));
    for (int r = 0; r < BT; r++)
        for (int o = 0; o < out; o++) ws->colsum[o] += dy[(size_t)r * out + o];
    coef_grad(m, t, ws->colsum);
}

/* Linear backward: dx (+)= dy·W; coefficient gradient through G = dyᵀ·x. */
static void linear_backward(DamModel *m, RunState *rs, DamTensor *t, const float *w, float *dx,
                            const float *dy, const float *x, int BT, int in, int out, int accumulate) {
    struct Workspace *ws = m->work;
    m->be->matmul_dyw(dx, dy, w, BT, in, out, accumulate);
    if (t->trainable) {
        m->be->matmul_dytx(ws->G, dy, x, BT, in, out, 0);
        coef_grad(m, t, ws->G);
    }
}

static void norm_backward(DamModel *m, RunState *rs, DamTensor *t, const float *w, float *dx,
                          const float *dout, const float *x, const float *rstd, int BT, int d) {
    struct Workspace *ws = m->work;
    memset(ws->dnorm, 0, (size_t)d * sizeof(float));
    m->be->rmsnorm_bwd(dx, ws->dnorm, dout, x, rstd, w, BT, d, 1);
    coef_grad(m, t, ws->dnorm);
}

/* Backward of one layer whose activations are in rs (just recomputed): dx_in from dout. */
static void layer_backward(DamModel *m, RunState *rs, DamLayer *L, const float *x_in, const float *dout,
                           float *dx_in, int B, int T) {
    struct Workspace *ws = m->work;
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    int BT = B * T, d = c->hidden_size, F = c->intermediate_size;
    int qd = c->num_attention_heads * c->head_dim, kvd = c->num_key_value_heads * c->head_dim;
    LayerW *w = &ws->w;
    /* MLP: out = h1 + down(silu(gate(xn2)) ⊙ up(xn2)) */
    linear_backward(m, rs, L->down, w->down, ws->dact, dout, ws->act, BT, F, d, 0);
    be->swiglu_bwd(ws->dgate, ws->dup, ws->dact, ws->gate, ws->up, (size_t)BT * F);
    linear_backward(m, rs, L->gate, w->gate, ws->dxn2, ws->dgate, ws->xn2, BT, d, F, 0);
    linear_backward(m, rs, L->up, w->up, ws->dxn2, ws->dup, ws->xn2, BT, d, F, 1);
    tp_sum(m, ws->dxn2, (size_t)BT * d); /* column-parallel gate/up: input gradient summed */
    memcpy(ws->dh1, dout, (size_t)BT * d * sizeof(float));
    norm_backward(m, rs, L->mlp_norm, w->mlp_norm, ws->dh1, ws->dxn2, ws->h1, ws->rstd2, BT, d);
    /* attention: h1 = x + o(attn(rope(q(xn)), rope(k(xn)), v(xn))) */
    bias_grad(m, rs, L->o_bias, ws->dh1, BT, d);
    linear_backward(m, rs, L->o, w->o, ws->dao, ws->dh1, ws->ao, BT, qd, d, 0);
    AttnShape s = attn_shape(c, B, T, (int)(L - m->layers));
    be->attention_bwd(ws->dq, ws->dk, ws->dv, ws->dao, ws->ao, ws->lse, ws->q, ws->k, ws->v, &s,
                      ws->attn_scratch);
    be->rope(ws->dq, ws->rope_cos, ws->rope_sin, BT, T, c->num_attention_heads, c->head_dim, 1);
    be->rope(ws->dk, ws->rope_cos, ws->rope_sin, BT, T, c->num_key_value_heads, c->head_dim, 1);
    bias_grad(m, rs, L->q_bias, ws->dq, BT, qd);
    bias_grad(m, rs, L->k_bias, ws->dk, BT, kvd);
    bias_grad(m, rs, L->v_bias, ws->dv, BT, kvd);
    linear_backward(m, rs, L->q, w->q, ws->dxn, ws->dq, ws->xn, BT, d, qd, 0);
    linear_backward(m, rs, L->k, w->k, ws->dxn, ws->dk, ws->xn, BT, d, kvd, 1);
    linear_backward(m, rs, L->v, w->v, ws->dxn, ws->dv, ws->xn, BT, d, kvd, 1);
    tp_sum(m, ws->dxn, (size_t)BT * d); /* column-parallel q/k/v */
    memcpy(dx_in, ws->dh1, (size_t)BT * d * sizeof(float));
    norm_backward(m, rs, L->attn_norm, w->attn_norm, dx_in, ws->dxn, x_in, ws->rstd1, BT, d);
}

/* ---------------------------------------------------------------- loss */

/* Losses over the valid positions of the batch, in chunks of rows; dL/dhid into ws->dx and the
 * lm_head weight gradient into ws->lm_G. */
static void logits_loss(DamModel *m, RunState *rs, const int32_t *valid, int n_valid, const int32_t *topk_idx,
                        const float *topk_val, int need_teacher_logits, const LossParams *lp, float weight,
                        int backward, int accumulate_G, LossTerms *out) {
    struct Workspace *ws = m->work;
    const Backend *be = m->be;
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
                         m->tp ? &red : NULL};
    LossSums sums = {0, 0, 0};
    int lm_trainable = lm->trainable;
    for (int r0 = 0; r0 < n_valid; r0 += LOSS_CHUNK) {
        int C = n_valid - r0 < LOSS_CHUNK ? n_valid - r0 : LOSS_CHUNK;
        for (int r = 0; r < C; r++) {
            size_t pos = (size_t)valid[r0 + r];
            memcpy(ws->hc + (size_t)r * d, ws->hid + pos * d, (size_t)d * sizeof(float));
            if (need_teacher_logits)
                memcpy(ws->htc + (size_t)r * d, ws->hid_t + pos * d, (size_t)d * sizeof(float));
            if (K > 0 && topk_idx) { /* precomputed teacher cache */
                memcpy(ws->topk_idx + (size_t)r * K, topk_idx + pos * K, (size_t)K * sizeof(int32_t));
                memcpy(ws->topk_val + (size_t)r * K, topk_val + pos * K, (size_t)K * sizeof(float));
            }
        }
        be->matmul_xwt(ws->z, ws->hc, ws->lm_w, C, d, V, 0);
        if (need_teacher_logits) be->matmul_xwt(ws->zt, ws->htc, ws->lm_t, C, d, V, 0);
        if (K > 0 && !topk_idx)
            loss_topk_sharded(ws->topk_idx, ws->topk_val, ws->zt, C, V, K, m->vocab_offset, p.reduce);
        loss_rows(ws->dz, &sums, ws->z, ws->zt, ws->topk_idx, ws->topk_val, C, V, &p);
        if (!backward) continue;
        if (weight != 1.0f)
            for (size_t j = 0; j < (size_t)C * V; j++) ws->dz[j] *= weight;
        be->matmul_dyw(ws->dhc, ws->dz, ws->lm_w, C, d, V, 0);
        tp_sum(m, ws->dhc, (size_t)C * d); /* vocabulary-parallel lm_head */
        for (int r = 0; r < C; r++)
            memcpy(rs->dhid + (size_t)valid[r0 + r] * d, ws->dhc + (size_t)r * d, (size_t)d * sizeof(float));
        if (lm_trainable) be->matmul_dytx(ws->lm_G, ws->dz, ws->hc, C, d, V, accumulate_G || r0 > 0);
    }
    out->kl = sums.kl, out->mse = sums.mse, out->entropy = sums.entropy;
}

/* Backward of the merged model through this stage: from dL/dhid in ws->dx (last stage) or the next
 * stage's input gradient, each layer recomputed from its saved input (the merged weights
 * materialized once per layer), then to the previous stage or into the embedding coefficients. */
static void merged_backward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T) {
    struct Workspace *ws = m->work;
    const ModelConfig *c = &m->cfg;
    size_t BT = (size_t)B * T, d = c->hidden_size;
    int nl = m->layer1 - m->layer0;
    float *grad_out = rs->grad_out;
    if (m->last) {
        memset(grad_out, 0, BT * d * sizeof(float));
        materialize_w(m, rs, m->final_norm, -1, ws->final_norm_w); /* a teacher's may be there */
        norm_backward(m, rs, m->final_norm, ws->final_norm_w, grad_out, rs->dhid,
                      rs->layer_in + (size_t)nl * BT * d, rs->rstd_f, (int)BT, (int)d);
    } /* else the pipeline received the next stage's gradient into grad_out */
    for (int i = nl - 1; i >= 0; i--) {
        const float *x_in = rs->layer_in + (size_t)i * BT * d;
        DamLayer *L = &m->layers[m->layer0 + i];
        materialize_layer(m, rs, m->layer0 + i, -1);
        layer_forward(m, rs, L, x_in, rs->layer_in + (size_t)(i + 1) * BT * d, B, T);
        layer_backward(m, rs, L, x_in, grad_out, ws->dx, B, T);
        memcpy(grad_out, ws->dx, BT * d * sizeof(float));
    }
    if (m->first && m->embed->trainable) /* else the pipeline sends grad_out back */
        m->be->dam_embed_coef_grad(m->embed->grad, m->embed->src, m->n_rows, grad_out,
                                   local_ids(m, rs, ids, BT), (int)BT, (int)d);
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

static float *sb_pass_input(void *ctx, int mb, int pass, size_t *n) {
    StepBatch *sb = ctx;
    int rows = is_merged_pass(sb, mb, pass) ? sb->n_seg * sb->B : sb->B;
    *n = (size_t)rows * sb->T * sb->m->cfg.hidden_size;
    return slot_of(sb, mb)->layer_in;
}

/* The last stage: each segment's losses against its teacher, dL/dhid (zero at padding) and the
 * lm_head coefficient gradient. */
static void sb_losses(StepBatch *sb, int mb) {
    DamModel *m = sb->m;
    struct Workspace *ws = m->work;
    RunState *rs = slot_of(sb, mb);
    const DamTensor *lm = lm_tensor(m);
    int nt = need_teacher(sb, mb);
    materialize_w(m, rs, lm, -1, ws->lm_w);
    memset(rs->dhid, 0, (size_t)sb->n_seg * sb->B * sb->T * m->cfg.hidden_size * sizeof(float));
    for (int s = 0, first = 0; s < sb->n_seg; first += rs->n_valid[s], s++) {
        if (!rs->n_valid[s]) continue;
        if (nt) materialize_w(m, rs, lm, sb->teacher[s], ws->lm_t);
        logits_loss(m, rs, ws->valid + first, rs->n_valid[s], topk_idx_of(sb, mb),
                    sb->topk_val ? sb->topk_val[mb] : NULL, nt, sb->lp, sb->weight, sb->backward, first > 0,
                    &sb->out[(size_t)mb * sb->n_seg + s]);
    }
    if (sb->backward) coef_grad(m, (DamTensor *)lm, ws->lm_G);
}

/* Pass p < n_seg: teacher p on segment p (its final hidden kept on the last stage); the last pass:
 * the merged model over every segment (one forward for all datasets: the merged weights are the
 * same, materialized once per layer, larger GEMMs), then the losses. */
static const float *sb_pass_run(void *ctx, int mb, int pass, size_t *n) {
    StepBatch *sb = ctx;
    DamModel *m = sb->m;
    RunState *rs = slot_of(sb, mb);
    size_t segT = (size_t)sb->B * sb->T, d = m->cfg.hidden_size;
    int merged = is_merged_pass(sb, mb, pass), rows = merged ? sb->n_seg * sb->B : sb->B;
    const int32_t *ids = sb->ids[mb] + (merged ? 0 : pass * segT);
    model_forward(m, rs, ids, rows, sb->T, merged ? -1 : sb->teacher[pass]);
    if (m->last && !merged) memcpy(m->work->hid_t + pass * segT * d, m->work->hid, segT * d * sizeof(float));
    if (m->last && merged) sb_losses(sb, mb);
    *n = (size_t)rows * sb->T * d;
    return rs->layer_in + (size_t)(m->layer1 - m->layer0) * *n;
}

static float *sb_grad_input(void *ctx, int mb, size_t *n) {
    StepBatch *sb = ctx;
    *n = (size_t)sb->n_seg * sb->B * sb->T * sb->m->cfg.hidden_size;
    return slot_of(sb, mb)->grad_out;
}

static const float *sb_backward_run(void *ctx, int mb, size_t *n) {
    StepBatch *sb = ctx;
    RunState *rs = slot_of(sb, mb);
    merged_backward(sb->m, rs, sb->ids[mb], sb->n_seg * sb->B, sb->T);
    *n = (size_t)sb->n_seg * sb->B * sb->T * sb->m->cfg.hidden_size;
    return rs->grad_out;
}

/* Every micro-batch through the pipeline (mpi/pipeline.c), then the loss terms to every stage. */
static void run_batch(StepBatch *sb, int M) {
    PipelineStage st = {sb, sb_n_passes, sb_pass_input, sb_pass_run, sb_grad_input, sb_backward_run};
    pipeline_run(sb->m->pp, M, sb->n_slots, sb->backward, &st);
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

/* Is tensor x split over tp, and how: 0 whole, 1 rows (or a bias's only axis), 2 columns. */
int dam_model_split_kind(const DamModel *m, const DamTensor *x) {
    if (!m->tp) return 0;
    if (x->kind != DT_BIAS && x->coef_full != x->dim) return 2;
    return x->grad_partial ? 1 : 0;
}

int dam_model_owns(const DamModel *m, const DamTensor *x) {
    return !(m->pp && !m->first && x->kind == DT_EMBED);
}

void dam_model_topk(const DamModel *m, const float *logits, int rows, int K, int32_t *idx, float *val) {
    LossReduce red = {(void *)m->tp, m->tp_size, reduce_sum_f64, reduce_max_f64, reduce_gather};
    loss_topk_sharded(idx, val, logits, rows, m->cfg.vocab_size, K, m->vocab_offset, m->tp ? &red : NULL);
}
