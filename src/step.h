/* step.h — one optimisation step of DAM, the same code for the trainer and the tests:
 *   dam_step_grad: this replica's micro-batches through the pipeline stages (1F1B), the loss terms
 *                  and the gradients reduced over every group (dam_model_reduce_grad), f'(c), the
 *                  regularizers: the step's loss and dL/dc;
 *   dam_step:      that, then global gradient clipping and the optimizer update. */
#ifndef DAM_STEP_H
#define DAM_STEP_H

#include "config.h"
#include "model.h"
#include "optim.h"

/* This replica's micro-batches of the step: micro-batch i holds n_seg segments (one per dataset)
 * of B rows of T tokens; segment s is taught by source teacher[s]. */
typedef struct {
    int M, n_seg, B, T;
    int global_mb; /* micro-batches of the step over every replica: each weighs 1/global_mb */
    const int *teacher;
    const int32_t *const *ids;
    const int8_t *const *mask;
    const int32_t *const *topk_idx; /* NULL without a teacher cache */
    const float *const *topk_val;
} StepInputs;

typedef struct {
    double kl[DAM_MAX_SOURCES], mse[DAM_MAX_SOURCES], entropy[DAM_MAX_SOURCES]; /* per dataset */
    RegTerms reg;
    double total, grad_norm;
    int64_t tokens; /* valid tokens of the step over every replica */
} StepStats;

/* slots: the run states of the micro-batches in flight (n_slots >= min(M, pp)); dp: the
 * data-parallel group (NULL: one replica). */
void dam_step_grad(DamModel *m, RunState *const *slots, int n_slots, const StepInputs *in, const DamConfig *c,
                   const CommGroup *dp, StepStats *st);
/* 0-based optimizer step `step` of `total_steps` (the learning-rate schedule). */
void dam_step(DamModel *m, RunState *const *slots, int n_slots, const StepInputs *in, const DamConfig *c,
              const CommGroup *dp, int step, int total_steps, StepStats *st);

#endif
