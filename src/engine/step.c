/* step.c — one DAM step, top to bottom; see step.h. Reading guide, the functions of one step in
 * the order they run:
 *   cmd_train (train.c): read_micro_batches, then per step
 *   dam_step (here): zero the gradients, then
 *     pipeline_run (mpi/pipeline.c): this rank's stage of every micro-batch under 1F1B, calling
 *       prepare_micro_batch (here): the valid positions, the number of forward passes;
 *       forward_and_loss (here), per pass (each teacher whose logits are needed, then the merged
 *         model): embed_forward, per layer materialize_layer + layer_forward, final_norm_forward
 *         (model_layers.c); on the last stage after the merged pass micro_batch_losses
 *         (model_loss.c): the logits, the loss terms, dL/dhid, the lm_head's gradient;
 *       backward_micro_batch (here): merged_backward (model_layers.c): per layer from the last,
 *         materialize_layer, the recompute (layer_forward, unless the activations were kept),
 *         layer_backward adding each coefficient's Σ W·dW;
 *     share_losses (model_loss.c) and sum_terms (here): the loss terms on every stage, over dp;
 *     dam_model_reduce_grad (model.c): the gradients over dp, the tied embedding and tp;
 *     dam_model_finish_grad (model.c): the coefficient gradients dL/dc = Σ W·dW · f'(c);
 *     reg_apply (optim.c): the regularizers;
 *     optim_clip_grad_norm, optim_step (optim.c): the update.
 * The merged weights are materialized again on every forward and every backward of a layer, not
 * cached: a cache of every layer's would be a copy of the stage's model, which `plan` does not
 * count (docs/method.md). */
#include "step.h"

#include <stdlib.h>
#include <string.h>

#include "model_internal.h"
#include "pipeline.h"

static RunState *slot_of(const DamStep *s, int mb) { return s->slots[mb % s->n_slots]; }

/* Pipeline callback, before micro-batch mb's forward: each segment's valid positions into the
 * workspace's list (every stage sees the mask, so all agree), its LossTerms zeroed with its
 * n_valid. Returns the forward passes: 0 for an all-padding micro-batch (nor a backward), else
 * the teachers' (when their logits are needed) and the merged model's. */
static int prepare_micro_batch(void *ctx, int mb) {
    const DamStep *s = ctx;
    RunState *rs = slot_of(s, mb);
    struct Workspace *ws = s->model->work;
    size_t segT = (size_t)s->B * s->T;
    int Bt = s->n_seg * s->B, total = 0;
    if (Bt > rs->B || s->T > rs->T)
        dam_fail("batch %dx%d exceeds the run state's %dx%d", Bt, s->T, rs->B, rs->T);
    for (int seg = 0; seg < s->n_seg; seg++) {
        LossTerms *o = &s->terms[(size_t)mb * s->n_seg + seg];
        rs->n_valid[seg] = 0;
        for (size_t t = seg * segT; t < (seg + 1) * segT; t++)
            if (!s->mask[mb] || s->mask[mb][t]) ws->valid[total + rs->n_valid[seg]++] = (int32_t)t;
        memset(o, 0, sizeof *o);
        o->n_valid = rs->n_valid[seg];
        total += rs->n_valid[seg];
    }
    rs->skip = total == 0;
    return rs->skip ? 0 : (step_needs_teacher(s, mb) ? s->n_seg : 0) + 1;
}

static int is_merged_pass(const DamStep *s, int mb, int pass) {
    return pass == (step_needs_teacher(s, mb) ? s->n_seg : 0);
}

/* Rows of sequences in a pass: one segment for a teacher, every segment for the merged model. */
static int pass_rows(const DamStep *s, int mb, int pass) {
    return is_merged_pass(s, mb, pass) ? s->n_seg * s->B : s->B;
}

/* Pipeline callback: where pass `pass`'s input from the previous stage goes. */
static DevBuf forward_input(void *ctx, int mb, int pass) {
    const DamStep *s = ctx;
    return layer_view(s->model, slot_of(s, mb), 0, (size_t)pass_rows(s, mb, pass) * s->T);
}

/* Pipeline callback, one forward pass through this stage: pass p < n_seg is teacher p on
 * segment p (its final hidden kept on the last stage), the last pass the merged model on every
 * segment (one forward for all datasets: the same merged weights, larger GEMMs). Each layer's
 * weights are materialized right before its forward. After the merged pass the last stage runs
 * the losses and their backward down to dL/dhid and the lm_head's gradient. */
static DevBuf forward_and_loss(void *ctx, int mb, int pass) {
    const DamStep *s = ctx;
    DamModel *m = s->model;
    RunState *rs = slot_of(s, mb);
    int merged = is_merged_pass(s, mb, pass), rows = pass_rows(s, mb, pass),
        src = merged ? -1 : s->teacher[pass];
    size_t segT = (size_t)s->B * s->T, BT = (size_t)rows * s->T, d = m->cfg.hidden_size;
    embed_forward(m, rs, s->ids[mb] + (merged ? 0 : pass * segT), rows, s->T, src);
    for (int l = m->layer0; l < m->layer1; l++) {
        int i = l - m->layer0;
        materialize_layer(m, l, src);
        LayerAct A = layer_acts(m, rs, i, BT, merged);
        layer_forward(m, &A, &m->layers[l], layer_view(m, rs, i, BT), layer_view(m, rs, i + 1, BT), rows,
                      s->T);
    }
    final_norm_forward(m, rs, BT, src);
    if (m->last && !merged)
        m->be->copy(m->ctx, devbuf_slice(m->work->hid_t, pass * segT * d, segT * d), m->work->hid, segT * d);
    if (m->last && merged) micro_batch_losses(s, mb);
    return layer_view(m, rs, m->layer1 - m->layer0, BT);
}

/* Pipeline callback: where the next stage's gradient goes (also the backward's send buffer). */
static DevBuf backward_input(void *ctx, int mb) {
    const DamStep *s = ctx;
    return devbuf_slice(slot_of(s, mb)->grad_out, 0,
                        (size_t)s->n_seg * s->B * s->T * s->model->cfg.hidden_size);
}

/* Pipeline callback: the merged model's backward through this stage. */
static DevBuf backward_micro_batch(void *ctx, int mb) {
    const DamStep *s = ctx;
    merged_backward(s->model, slot_of(s, mb), s->ids[mb], s->n_seg * s->B, s->T);
    return backward_input(ctx, mb);
}

static PipelineStage micro_batch_stage(const DamStep *s) {
    return (PipelineStage){.ctx = (void *)s,
                           .n_passes = prepare_micro_batch,
                           .pass_input = forward_input,
                           .pass_run = forward_and_loss,
                           .grad_input = backward_input,
                           .backward_run = backward_micro_batch};
}

/* The loss terms of this replica's micro-batches, weighted, then summed over dp. */
static void sum_terms(const DamStep *s, StepStats *st) {
    double w = 1.0 / s->global_mb, buf[3 * DAM_MAX_SOURCES + 1] = {0};
    int n = s->n_seg;
    for (int i = 0; i < s->M; i++)
        for (int k = 0; k < n; k++) {
            const LossTerms *x = &s->terms[(size_t)i * n + k];
            buf[k] += x->kl * w, buf[n + k] += x->mse * w, buf[2 * n + k] += x->entropy * w;
            buf[3 * n] += (double)x->n_valid;
        }
    const CommGroup *dp = s->model->dp;
    if (dp && dp->size > 1) comm_allreduce_sum_f64(dp, buf, (size_t)(3 * n + 1));
    for (int k = 0; k < n; k++) st->kl[k] = buf[k], st->mse[k] = buf[n + k], st->entropy[k] = buf[2 * n + k];
    st->tokens = (int64_t)buf[3 * n];
}

void dam_step(const DamStep *s, int step, StepStats *st) {
    DamModel *m = s->model;
    const DamConfig *c = s->cfg;
    if (!s->backward) dam_fail("dam_step: a step needs its backward (evaluation: dam_micro_batches)");
    memset(st, 0, sizeof *st);
    dam_model_zero_grad(m);
    /* per micro-batch: materialize, forward, loss, backward (the callbacks above), 1F1B */
    PipelineStage stage = micro_batch_stage(s);
    pipeline_run(pp_comm(m), s->M, s->n_slots, 1, &stage);
    share_losses(m, s->M * s->n_seg, s->terms); /* once, after the schedule: no collective inside it */
    sum_terms(s, st);
    dam_model_reduce_grad(m);
    dam_model_finish_grad(m); /* the coefficient gradients */
    reg_apply(m, c, &st->reg);
    st->total = reg_total(&st->reg);
    for (int k = 0; k < s->n_seg; k++) st->total += st->kl[k] + st->mse[k] + st->entropy[k];
    if (!s->update) return;
    st->grad_norm = optim_clip_grad_norm(m, c->max_grad_norm);
    optim_step(m, c, optim_lr(c, step, s->total_steps), step + 1);
}

void dam_micro_batches(const DamStep *s) {
    memset(s->terms, 0, (size_t)s->M * s->n_seg * sizeof *s->terms); /* stages that compute none */
    PipelineStage stage = micro_batch_stage(s);
    pipeline_run(pp_comm(s->model), s->M, s->n_slots, s->backward, &stage);
    share_losses(s->model, s->M * s->n_seg, s->terms);
}

LossTerms dam_one_micro_batch(DamModel *m, RunState *rs, int teacher, const MicroBatch *mb,
                              const LossParams *loss, int backward) {
    LossTerms out = {.n_valid = 0};
    DamStep s = {.model = m,
                 .slots = &rs,
                 .n_slots = 1,
                 .M = 1,
                 .n_seg = 1,
                 .B = mb->B,
                 .T = mb->T,
                 .global_mb = 1,
                 .teacher = &teacher,
                 .ids = &mb->ids,
                 .mask = &mb->mask,
                 .topk_idx = mb->topk_idx ? &mb->topk_idx : NULL,
                 .topk_val = mb->topk_idx ? &mb->topk_val : NULL,
                 .loss = loss,
                 .backward = backward,
                 .terms = &out};
    dam_micro_batches(&s);
    return out;
}
