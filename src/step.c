/* step.c — see step.h. */
#include "step.h"

#include <stdlib.h>
#include <string.h>

/* The loss terms of this replica's micro-batches, weighted, then summed over dp. */
static void sum_terms(const LossTerms *lt, const StepInputs *in, const CommGroup *dp, StepStats *st) {
    double w = 1.0 / in->global_mb, buf[3 * DAM_MAX_SOURCES + 1] = {0};
    int n = in->n_seg;
    for (int i = 0; i < in->M; i++)
        for (int k = 0; k < n; k++) {
            const LossTerms *x = &lt[(size_t)i * n + k];
            buf[k] += x->kl * w, buf[n + k] += x->mse * w, buf[2 * n + k] += x->entropy * w;
            buf[3 * n] += (double)x->n_valid;
        }
    if (dp && dp->size > 1) comm_allreduce_sum_f64(dp, buf, (size_t)(3 * n + 1));
    for (int k = 0; k < n; k++) st->kl[k] = buf[k], st->mse[k] = buf[n + k], st->entropy[k] = buf[2 * n + k];
    st->tokens = (int64_t)buf[3 * n];
}

void dam_step_grad(DamModel *m, RunState *const *slots, int n_slots, const StepInputs *in, const DamConfig *c,
                   const CommGroup *dp, StepStats *st) {
    memset(st, 0, sizeof *st);
    dam_model_zero_grad(m);
    LossTerms *lt = dam_calloc((size_t)in->M * in->n_seg, sizeof(LossTerms), "loss terms");
    dam_model_step_1f1b(m, slots, n_slots, in->M, in->n_seg, in->teacher, in->ids, in->mask, in->topk_idx,
                        in->topk_val, in->B, in->T, &c->loss, 1.0f / (float)in->global_mb, lt);
    sum_terms(lt, in, dp, st);
    free(lt);
    dam_model_reduce_grad(m, dp);
    dam_model_finish_grad(m);
    reg_apply(m, c, &st->reg);
    st->total = reg_total(&st->reg);
    for (int k = 0; k < in->n_seg; k++) st->total += st->kl[k] + st->mse[k] + st->entropy[k];
}

void dam_step(DamModel *m, RunState *const *slots, int n_slots, const StepInputs *in, const DamConfig *c,
              const CommGroup *dp, int step, int total_steps, StepStats *st) {
    dam_step_grad(m, slots, n_slots, in, c, dp, st);
    st->grad_norm = optim_clip_grad_norm(m, c->max_grad_norm);
    optim_step(m, c, optim_lr(c, step, total_steps), step + 1);
}
