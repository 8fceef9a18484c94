/* optim.h — what happens to the coefficients after the backward: regularizers on the raw
 * coefficients, global grad-norm clipping, the learning-rate schedule, AdamW and MoFO-AdamW. */
#ifndef DAM_OPTIM_H
#define DAM_OPTIM_H

#include "config.h"
#include "model.h"

typedef struct { /* five doubles in this order: reduced as an array over pipeline stages */
    double similarity, l1, l2, overlap, weighted_overlap;
} RegTerms;

/* The regularizers' sum. */
static inline double reg_total(const RegTerms *r) {
    return r->similarity + r->l1 + r->l2 + r->overlap + r->weighted_overlap;
}

/* Add the regularizers' values to *out and their gradients to each trainable tensor's grad
 * (call after dam_model_finish_grad). Similarity skips scalar (bias) coefficient tensors; the
 * weighted overlap covers the linear tensors whose weights wov_setup made. */
void reg_apply(DamModel *m, const DamConfig *c, RegTerms *out);

/* Global L2 norm of the trainable gradients; scales them to max_norm when above (max_norm > 0). */
double optim_clip_grad_norm(DamModel *m, float max_norm);

/* Learning rate for 0-based optimizer step `step` of `total`: transformers' get_scheduler (its
 * lambda times lr) for every train.schedule, warming up over optim_warmup_steps. */
float optim_lr(const DamConfig *c, int step, int total);
/* train.warmup, else ceil(total · train.warmup_ratio) (TrainingArguments.get_warmup_steps). */
int optim_warmup_steps(const DamConfig *c, int total);

/* One AdamW or MoFO-AdamW update of every trainable tensor (t = 1-based step count), then f(c). */
void optim_step(DamModel *m, const DamConfig *c, float lr, int t);
/* How many entries MoFO moves in a selection unit of n entries (train.mofo_k): ceil(alpha·n), at
 * least 1; or floor(alpha·n) with alpha a double, as the reference, which may be 0 (the unit's
 * moments are then updated and none of its entries moves). */
int64_t optim_mofo_keep(const DamConfig *c, size_t n);

#endif
