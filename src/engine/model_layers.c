/* model_layers.c — the transformer of the merged model (or of one source, the teacher) on this
 * rank's share: materialize the merged weights (on every forward and every recompute, into the one
 * layer's buffers of the workspace), the decoder layer forward and backward, the embedding and
 * final norm of the first and last stages, the stage's backward, and the logits pass. */
#include <math.h>
#include <stdlib.h>

#include "model_internal.h"
#include "pipeline.h"

/* ---------------------------------------------------------------- materialize */

void dam_model_materialize(DamModel *m, const DamTensor *t, int src, DevBuf out) {
    out = devbuf_slice(out, 0, t->rows * t->cols);
    if (src >= 0) /* one source as stored (the teacher): a single scalar coefficient 1 */
        m->be->dam_materialize(m->ctx, out, &t->src[src], 1, m->ones, t->rows, t->cols, 1);
    else
        m->be->dam_materialize(m->ctx, out, t->src, m->n_coef_rows, t->fc, t->rows, t->cols,
                               t->kind == DT_BIAS);
}

void materialize_w(DamModel *m, const DamTensor *t, int src, DevBuf out) {
    if (t) dam_model_materialize(m, t, src, out);
}

void materialize_layer(DamModel *m, int l, int src) {
    const DamLayer *L = &m->layers[l];
    LayerW *w = &m->work->w;
    materialize_w(m, L->attn_norm, src, w->attn_norm);
    materialize_w(m, L->q, src, w->q), materialize_w(m, L->k, src, w->k);
    materialize_w(m, L->v, src, w->v), materialize_w(m, L->o, src, w->o);
    materialize_w(m, L->q_bias, src, w->qb), materialize_w(m, L->k_bias, src, w->kb);
    materialize_w(m, L->v_bias, src, w->vb), materialize_w(m, L->o_bias, src, w->ob);
    materialize_w(m, L->q_norm, src, w->q_norm), materialize_w(m, L->k_norm, src, w->k_norm);
    materialize_w(m, L->mlp_norm, src, w->mlp_norm);
    materialize_w(m, L->gate, src, w->gate), materialize_w(m, L->up, src, w->up);
    materialize_w(m, L->down, src, w->down);
}

/* ---------------------------------------------------------------- tensor parallel */

void tp_sum(DamModel *m, DevBuf buf, size_t n) {
    if (m->tp) devcomm_allreduce_sum(&m->comms->tp, buf, n);
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

/* ---------------------------------------------------------------- forward */

/* Layer `layer`'s attention; a sliding window applies from max_window_layers on (Qwen2; 0 elsewhere). */
static AttnShape attn_shape(const ModelConfig *c, int B, int T, int layer) {
    int window = layer >= c->max_window_layers ? c->sliding_window : 0;
    return (AttnShape){.B = B,
                       .T = T,
                       .H = c->num_attention_heads,
                       .KV = c->num_key_value_heads,
                       .hd = c->head_dim,
                       .window = window,
                       .scale = 1.0f / sqrtf((float)c->head_dim)};
}

void layer_forward(DamModel *m, const LayerAct *A, const DamLayer *L, DevBuf x_in, DevBuf x_out, int B,
                   int T) {
    struct Workspace *ws = m->work;
    const Backend *be = m->be;
    BackendCtx *cx = m->ctx;
    const ModelConfig *c = &m->cfg;
    int BT = B * T, d = c->hidden_size, F = c->intermediate_size, hd = c->head_dim;
    int H = c->num_attention_heads, KV = c->num_key_value_heads, qd = H * hd, kvd = KV * hd;
    LayerW *w = &ws->w;
    /* Qwen3: the projections go to q_raw / k_raw, and their per-head norm into q / k */
    DevBuf q = L->q_norm ? A->q_raw : A->q, k = L->k_norm ? A->k_raw : A->k;
    be->rmsnorm_fwd(cx, A->xn, A->rstd1, x_in, w->attn_norm, BT, d, c->rms_norm_eps);
    be->matmul_xwt(cx, q, A->xn, w->q, BT, d, qd, 0);
    be->matmul_xwt(cx, k, A->xn, w->k, BT, d, kvd, 0);
    be->matmul_xwt(cx, A->v, A->xn, w->v, BT, d, kvd, 0);
    if (L->q_bias) {
        be->add_bias(cx, q, w->qb, BT, qd);
        be->add_bias(cx, k, w->kb, BT, kvd);
        be->add_bias(cx, A->v, w->vb, BT, kvd);
    }
    if (L->q_norm) /* each head's hd values are one row: BT x heads rows */
        be->rmsnorm_fwd(cx, A->q, A->rstd_q, q, w->q_norm, BT * H, hd, c->rms_norm_eps);
    if (L->k_norm) be->rmsnorm_fwd(cx, A->k, A->rstd_k, k, w->k_norm, BT * KV, hd, c->rms_norm_eps);
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

void embed_forward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src) {
    size_t BT = (size_t)B * T, d = m->cfg.hidden_size;
    if (B > rs->B || T > rs->T) dam_fail("batch %dx%d exceeds the run state's %dx%d", B, T, rs->B, rs->T);
    if (!m->first) return; /* the pipeline received the previous stage's output into layer view 0 */
    const int32_t *lids = local_ids(m, ids, BT);
    DevBuf x0 = layer_view(m, rs, 0, BT);
    if (src >= 0)
        m->be->dam_embed_gather(m->ctx, x0, &m->embed->src[src], 1, m->ones, lids, (int)BT, (int)d);
    else
        m->be->dam_embed_gather(m->ctx, x0, m->embed->src, m->n_coef_rows, m->embed->fc, lids, (int)BT,
                                (int)d);
    tp_sum(m, x0, BT * d); /* vocabulary-parallel embedding */
}

void final_norm_forward(DamModel *m, RunState *rs, size_t BT, int src) {
    struct Workspace *ws = m->work;
    int nl = m->layer1 - m->layer0, d = m->cfg.hidden_size;
    if (!m->last) return; /* the pipeline sends layer view nl on */
    materialize_w(m, m->final_norm, src, ws->final_norm_w);
    m->be->rmsnorm_fwd(m->ctx, ws->hid, rs->rstd_f, layer_view(m, rs, nl, BT), ws->final_norm_w, (int)BT, d,
                       m->cfg.rms_norm_eps);
}

/* Forward of the merged model (src = -1) or of source src through this stage's layers, as the
 * step's forward_and_loss (src/engine/step.c) runs it, for the logits. */
static void model_forward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src) {
    size_t BT = (size_t)B * T;
    embed_forward(m, rs, ids, B, T, src);
    for (int l = m->layer0; l < m->layer1; l++) {
        int i = l - m->layer0;
        materialize_layer(m, l, src);
        LayerAct A = layer_acts(m, rs, i, BT, src < 0);
        layer_forward(m, &A, &m->layers[l], layer_view(m, rs, i, BT), layer_view(m, rs, i + 1, BT), B, T);
    }
    final_norm_forward(m, rs, BT, src);
}

const DamTensor *lm_tensor(const DamModel *m) { return m->lm_head ? m->lm_head : m->embed; }

DevComm *pp_comm(DamModel *m) { return m->pp ? &m->comms->pp : NULL; }

typedef struct {
    DamModel *m;
    RunState *rs;
    const int32_t *ids;
    int B, T, src;
} LogitsPass;

static int logits_pass_count(void *ctx, int mb) { return (void)ctx, (void)mb, 1; }
static DevBuf logits_pass_input(void *ctx, int mb, int pass) {
    LogitsPass *l = ctx;
    return layer_view(l->m, l->rs, 0, (size_t)l->B * l->T);
}
static DevBuf logits_pass_run(void *ctx, int mb, int pass) {
    LogitsPass *l = ctx;
    model_forward(l->m, l->rs, l->ids, l->B, l->T, l->src);
    return layer_view(l->m, l->rs, l->m->layer1 - l->m->layer0, (size_t)l->B * l->T);
}

void dam_model_logits(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src, float *logits) {
    struct Workspace *ws = m->work;
    LogitsPass l = {.m = m, .rs = rs, .ids = ids, .B = B, .T = T, .src = src};
    PipelineStage st = {.ctx = &l,
                        .n_passes = logits_pass_count,
                        .pass_input = logits_pass_input,
                        .pass_run = logits_pass_run};
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

/* grad accumulator += Σ_r W_i[r,:]·dW[r,:] for a trainable tensor (fine-tuning: wgrad += dW). */
void coef_grad(DamModel *m, DamTensor *t, DevBuf dW) {
    if (t && t->trainable && !devbuf_null(t->wgrad))
        m->be->add(m->ctx, t->wgrad, dW, t->rows * t->cols);
    else if (t && t->trainable)
        m->be->dam_coef_grad(m->ctx, t->grad, t->src, m->n_coef_rows, dW, t->rows, t->cols,
                             t->kind == DT_BIAS);
}

/* colsum[o] = Σ_t dy[t, o]: the gradient of a bias, reduced with the bias coefficients. */
static void bias_grad(DamModel *m, DamTensor *t, DevBuf dy, int BT, int out) {
    if (!t || !t->trainable) return;
    m->be->colsum(m->ctx, m->work->colsum, dy, BT, out);
    coef_grad(m, t, m->work->colsum);
}

/* Linear backward: dx (+)= dy·W; coefficient gradient through dW = dyᵀ·x. */
static void linear_backward(DamModel *m, DamTensor *t, DevBuf w, DevBuf dx, DevBuf dy, DevBuf x, int BT,
                            int in, int out, int accumulate) {
    struct Workspace *ws = m->work;
    m->be->matmul_dyw(m->ctx, dx, dy, w, BT, in, out, accumulate);
    if (t->trainable && !devbuf_null(t->wgrad)) /* fine-tuning: the dW GEMM accumulates into wgrad */
        m->be->matmul_dytx(m->ctx, t->wgrad, dy, x, BT, in, out, 1);
    else if (t->trainable) {
        m->be->matmul_dytx(m->ctx, ws->dW, dy, x, BT, in, out, 0);
        coef_grad(m, t, ws->dW);
    }
}

/* dx (+)= the norm's input gradient (accumulate: onto the residual's); the weight gradient, summed
 * over all rows, into t's coefficient gradient. */
static void norm_backward(DamModel *m, DamTensor *t, DevBuf w, DevBuf dx, DevBuf dout, DevBuf x, DevBuf rstd,
                          int rows, int d, int accumulate) {
    struct Workspace *ws = m->work;
    m->be->fill(m->ctx, ws->dnorm, 0.0f, (size_t)d);
    m->be->rmsnorm_bwd(m->ctx, dx, ws->dnorm, dout, x, rstd, w, rows, d, accumulate);
    coef_grad(m, t, ws->dnorm);
}

/* Qwen3: through the per-head norms of q and k (rows = tokens x heads) to the projections' outputs
 * dq_raw, dk_raw. On a tp rank the weight gradient covers its own heads: dam_model_reduce_grad sums
 * it (SPLIT_PER_HEAD). */
static void qk_norm_backward(DamModel *m, const LayerAct *A, DamLayer *L, int BT) {
    struct Workspace *ws = m->work;
    const ModelConfig *c = &m->cfg;
    int hd = c->head_dim;
    norm_backward(m, L->q_norm, ws->w.q_norm, ws->dq_raw, ws->dq, A->q_raw, A->rstd_q,
                  BT * c->num_attention_heads, hd, 0);
    norm_backward(m, L->k_norm, ws->w.k_norm, ws->dk_raw, ws->dk, A->k_raw, A->rstd_k,
                  BT * c->num_key_value_heads, hd, 0);
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
    norm_backward(m, L->mlp_norm, w->mlp_norm, ws->dh1, ws->dxn2, A->h1, A->rstd2, BT, d, 1);
    /* attention: h1 = x + o(attn(rope(q(xn)), rope(k(xn)), v(xn))) */
    bias_grad(m, L->o_bias, ws->dh1, BT, d);
    linear_backward(m, L->o, w->o, ws->dao, ws->dh1, A->ao, BT, qd, d, 0);
    AttnShape s = attn_shape(c, B, T, (int)(L - m->layers));
    be->attention_bwd(cx, ws->dq, ws->dk, ws->dv, ws->dao, A->ao, A->lse, A->q, A->k, A->v, &s);
    be->rope(cx, ws->dq, ws->rope_cos, ws->rope_sin, BT, T, c->num_attention_heads, c->head_dim, 1);
    be->rope(cx, ws->dk, ws->rope_cos, ws->rope_sin, BT, T, c->num_key_value_heads, c->head_dim, 1);
    if (L->q_norm) qk_norm_backward(m, A, L, BT);
    DevBuf dq = L->q_norm ? ws->dq_raw : ws->dq, dk = L->k_norm ? ws->dk_raw : ws->dk;
    bias_grad(m, L->q_bias, dq, BT, qd);
    bias_grad(m, L->k_bias, dk, BT, kvd);
    bias_grad(m, L->v_bias, ws->dv, BT, kvd);
    linear_backward(m, L->q, w->q, ws->dxn, dq, A->xn, BT, d, qd, 0);
    linear_backward(m, L->k, w->k, ws->dxn, dk, A->xn, BT, d, kvd, 1);
    linear_backward(m, L->v, w->v, ws->dxn, ws->dv, A->xn, BT, d, kvd, 1);
    tp_sum(m, ws->dxn, (size_t)BT * d); /* column-parallel q/k/v */
    be->copy(cx, dx_in, ws->dh1, (size_t)BT * d);
    norm_backward(m, L->attn_norm, w->attn_norm, dx_in, ws->dxn, x_in, A->rstd1, BT, d, 1);
}

/* Each layer from its kept activations or recomputed from its saved input (the merged weights
 * materialized again for each layer's backward). */
void merged_backward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T) {
    struct Workspace *ws = m->work;
    const ModelConfig *c = &m->cfg;
    size_t BT = (size_t)B * T, d = c->hidden_size;
    int nl = m->layer1 - m->layer0;
    DevBuf grad_out = devbuf_slice(rs->grad_out, 0, BT * d);
    if (m->last) {
        m->be->fill(m->ctx, grad_out, 0.0f, BT * d);
        materialize_w(m, m->final_norm, -1, ws->final_norm_w); /* a teacher's may be there */
        norm_backward(m, m->final_norm, ws->final_norm_w, grad_out, rs->dhid, layer_view(m, rs, nl, BT),
                      rs->rstd_f, (int)BT, (int)d, 1);
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
        m->be->dam_embed_coef_grad(m->ctx, m->embed->grad, m->embed->src, m->n_coef_rows, grad_out,
                                   local_ids(m, ids, BT), (int)BT, (int)d);
}
