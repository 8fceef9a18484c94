/* model_loss.c — the last stage's losses of one micro-batch: per segment (dataset), in chunks of
 * LOSS_CHUNK valid positions, the logits of the merged model and of the segment's teacher (or its
 * cached top-K), the loss terms (be->loss_rows) and, with the backward, dL/dhid and the lm_head's
 * weight gradient; then the terms shared over the pipeline stages. */
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"
#include "pipeline.h"
#include "step.h"

static const int32_t *topk_idx_of(const DamStep *s, int mb) { return s->topk_idx ? s->topk_idx[mb] : NULL; }

int step_needs_teacher(const DamStep *s, int mb) {
    return (s->loss->kl && !(s->loss->topk > 0 && topk_idx_of(s, mb))) || s->loss->mse > 0;
}

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

/* The settings of one segment's loss chunks: 1/its valid positions, the batchmean rows, the tp
 * reductions (NULL without tp). */
static LossChunkParams chunk_params(const DamModel *m, const LossParams *loss, int n_valid, int B,
                                    const LossReduce *red) {
    return (LossChunkParams){.tau = loss->temperature,
                             .kl = loss->kl,
                             .mse = loss->mse,
                             .entropy = loss->entropy,
                             .K = loss->topk,
                             .inv_n = 1.0f / (float)n_valid,
                             .V_full = m->full_cfg.vocab_size,
                             .vocab_offset = m->vocab_offset,
                             .reduce = red,
                             .kl_rows = loss->kl_batchmean ? B : 1};
}

/* A chunk's C rows of logits: the merged model's into ws->z, the teacher's into ws->zt when its
 * logits are needed (nt), and with a top-K KL the teacher's top-K, from the cache or from zt. */
static void chunk_logits(const DamStep *s, int mb, const int32_t *rows, int C, int nt,
                         const LossReduce *red) {
    DamModel *m = s->model;
    struct Workspace *ws = m->work;
    const Backend *be = m->be;
    BackendCtx *cx = m->ctx;
    int d = m->cfg.hidden_size, V = m->cfg.vocab_size, K = s->loss->topk;
    const int32_t *topk_idx = topk_idx_of(s, mb);
    be->gather_rows(cx, ws->hc, ws->hid, rows, C, d);
    if (nt) be->gather_rows(cx, ws->htc, ws->hid_t, rows, C, d);
    if (K > 0 && topk_idx) upload_topk_rows(m, topk_idx, s->topk_val[mb], rows, C, K); /* the teacher cache */
    be->matmul_xwt(cx, ws->z, ws->hc, ws->lm_w, C, d, V, 0);
    if (nt) be->matmul_xwt(cx, ws->zt, ws->htc, ws->lm_t, C, d, V, 0);
    if (K > 0 && !topk_idx)
        be->loss_topk(cx, ws->topk_idx, ws->topk_val, ws->zt, C, V, K, m->vocab_offset, red);
}

/* A chunk's dL/dz back: dL/dhid scattered into the run state's rows, the lm_head weight gradient
 * into ws->lm_dW (accumulated after the step's first chunk). */
static void chunk_backward(DamModel *m, RunState *rs, const int32_t *rows, int C, int accumulate) {
    struct Workspace *ws = m->work;
    const Backend *be = m->be;
    BackendCtx *cx = m->ctx;
    int d = m->cfg.hidden_size, V = m->cfg.vocab_size;
    be->matmul_dyw(cx, ws->dhc, ws->dz, ws->lm_w, C, d, V, 0);
    tp_sum(m, ws->dhc, (size_t)C * d); /* vocabulary-parallel lm_head */
    be->scatter_rows(cx, rs->dhid, ws->dhc, rows, C, d);
    if (lm_tensor(m)->trainable) be->matmul_dytx(cx, ws->lm_dW, ws->dz, ws->hc, C, d, V, accumulate);
}

/* Segment seg of micro-batch mb: its losses over its valid positions (the workspace's list from
 * `first` on) against its teacher, in chunks of rows, into its LossTerms; with the backward their
 * gradients, each micro-batch weighing 1/global_mb. */
static void segment_loss(const DamStep *s, int mb, int seg, int first) {
    DamModel *m = s->model;
    struct Workspace *ws = m->work;
    RunState *rs = s->slots[mb % s->n_slots];
    int n_valid = rs->n_valid[seg], nt = step_needs_teacher(s, mb), V = m->cfg.vocab_size;
    LossReduce red = tp_loss_reduce(m);
    LossChunkParams p = chunk_params(m, s->loss, n_valid, s->B, m->tp ? &red : NULL);
    float weight = s->backward ? 1.0f / (float)s->global_mb : 1.0f;
    LossSums sums = {.kl = 0, .mse = 0, .entropy = 0};
    for (int r0 = 0; r0 < n_valid; r0 += LOSS_CHUNK) {
        int C = n_valid - r0 < LOSS_CHUNK ? n_valid - r0 : LOSS_CHUNK;
        const int32_t *rows = ws->valid + first + r0;
        chunk_logits(s, mb, rows, C, nt, p.reduce);
        m->be->loss_rows(m->ctx, ws->dz, &sums, ws->z, ws->zt, ws->topk_idx, ws->topk_val, C, V, &p, weight);
        if (s->backward) chunk_backward(m, rs, rows, C, first > 0 || r0 > 0);
    }
    LossTerms *out = &s->terms[(size_t)mb * s->n_seg + seg];
    out->kl = sums.kl, out->mse = sums.mse, out->entropy = sums.entropy;
}

void micro_batch_losses(const DamStep *s, int mb) {
    DamModel *m = s->model;
    struct Workspace *ws = m->work;
    RunState *rs = s->slots[mb % s->n_slots];
    const DamTensor *lm = lm_tensor(m);
    int nt = step_needs_teacher(s, mb);
    materialize_w(m, lm, -1, ws->lm_w);
    m->be->fill(m->ctx, rs->dhid, 0.0f, (size_t)s->n_seg * s->B * s->T * m->cfg.hidden_size);
    for (int seg = 0, first = 0; seg < s->n_seg; first += rs->n_valid[seg], seg++) {
        if (!rs->n_valid[seg]) continue;
        if (nt) materialize_w(m, lm, s->teacher[seg], ws->lm_t);
        segment_loss(s, mb, seg, first);
    }
    if (s->backward) coef_grad(m, (DamTensor *)lm, ws->lm_dW);
}

void share_losses(const DamModel *m, int n, LossTerms *terms) {
    if (!m->pp) return;
    double *buf = dam_malloc((size_t)n * 3 * sizeof(double), "losses");
    for (int s = 0; s < n; s++)
        buf[3 * s] = terms[s].kl, buf[3 * s + 1] = terms[s].mse, buf[3 * s + 2] = terms[s].entropy;
    pipeline_share_from_last(m->pp, buf, (size_t)n * 3 * sizeof(double));
    for (int s = 0; s < n; s++)
        terms[s].kl = buf[3 * s], terms[s].mse = buf[3 * s + 1], terms[s].entropy = buf[3 * s + 2];
}
