/* model_buffers.c — the model's memory besides its sources and coefficients: which layers a
 * pipeline stage holds (balanced by cost, also for `plan`), the workspace and run-state buffers
 * as lists of specs that the allocator and the memory estimate (dam_model_activation_bytes, used
 * by `plan`) both walk, and the views of a run state's layers. */
#include <math.h>
#include <stdlib.h>

#include "model_internal.h"

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
    size_t KV = c->num_key_value_heads, qd = H * c->head_dim, kvd = KV * c->head_dim, qk = c->qk_norm ? 1 : 0;
    /* xn, rstd1, q, k, v, lse, ao, h1, xn2, rstd2, gate, up, act, q_raw, k_raw, rstd_q, rstd_k
     * (LayerAct's order) */
    const size_t sizes[N_ACT] = {d, 1, qd, kvd, kvd,     H,        qd,     d,      d,
                                 1, F, F,  F,   qk * qd, qk * kvd, qk * H, qk * KV};
    const BufKind kinds[N_ACT] = {BUF_ACT, BUF_F32, BUF_ACT, BUF_ACT, BUF_ACT, BUF_F32,
                                  BUF_ACT, BUF_ACT, BUF_ACT, BUF_F32, BUF_ACT, BUF_ACT,
                                  BUF_ACT, BUF_ACT, BUF_ACT, BUF_F32, BUF_F32};
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
    size_t hd = c->qk_norm ? (size_t)c->head_dim : 0; /* q_norm / k_norm width */
    ACT(w->q_norm, hd), ACT(w->k_norm, hd);
    ACT(ws->dW, F * d > qd * d ? F * d : qd * d), F32(ws->colsum, maxcol), F32(ws->dnorm, hd > d ? hd : d);
    size_t per[N_ACT];
    BufKind kind[N_ACT];
    act_rows(c, per, kind);
    for (int i = 0; i < N_ACT; i++) SPEC(ws->a.b[i], BT * per[i], kind[i]);
    ACT(ws->dx, BT * d), ACT(ws->dh1, BT * d), ACT(ws->dxn, BT * d), ACT(ws->dxn2, BT * d);
    ACT(ws->dq, BT * qd), ACT(ws->dk, BT * kvd), ACT(ws->dv, BT * kvd), ACT(ws->dao, BT * qd);
    ACT(ws->dgate, BT * F), ACT(ws->dup, BT * F), ACT(ws->dact, BT * F);
    ACT(ws->dq_raw, hd ? BT * qd : 0), ACT(ws->dk_raw, hd ? BT * kvd : 0);
    F32(ws->rope_cos, (size_t)T * half), F32(ws->rope_sin, (size_t)T * half);
    SPEC(ws->ids_local, BT, BUF_HOST_I32), SPEC(ws->valid, BT, BUF_HOST_I32);
    if (!last) return n;
    ACT(ws->hid, BT * d), ACT(ws->hid_t, BT * d);
    WGT(ws->lm_w, V * d), WGT(ws->lm_t, V * d);
    F32(ws->lm_dW, V * d); /* accumulated over loss chunks and segments: fp32, whatever the activations */
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
    return m->be->weight_dtype(m->ctx); /* the front table defaults it (backend_api.c) */
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

/* A device buffer of no elements (one the model's family does not use, e.g. q_raw without qk_norm)
 * stays a null DevBuf: nothing to allocate, and no backend has to make sense of a zero-byte buffer. */
static void specs_alloc(const DamModel *m, const BufSpec *specs, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        if (specs[i].n == 0 && specs[i].kind != BUF_HOST_I32) continue;
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
        } else if (!devbuf_null(*(DevBuf *)specs[i].ptr)) {
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

void workspace_free(DamModel *m) {
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

DevBuf layer_view(const DamModel *m, const RunState *rs, int i, size_t BT) {
    size_t n = BT * m->cfg.hidden_size;
    return devbuf_slice(rs->layer_in, (size_t)i * n, n);
}

LayerAct layer_acts(const DamModel *m, const RunState *rs, int i, size_t BT, int merged) {
    if (!merged || !rs->keep) return m->work->a;
    size_t per[N_ACT];
    BufKind kind[N_ACT];
    act_rows(&m->cfg, per, kind);
    LayerAct a;
    for (int j = 0; j < N_ACT; j++)
        a.b[j] = devbuf_slice(rs->kept.b[j], (size_t)i * BT * per[j], BT * per[j]);
    return a;
}
