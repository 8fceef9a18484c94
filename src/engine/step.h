/* step.h — one optimisation step of DAM, the same code for the trainer and the tests, and the
 * micro-batch runs that evaluation and fine-tuning share with it. One DamStep, built by the caller
 * with designated initialisers, goes unchanged from the trainer down to the model's pipeline
 * callbacks (src/engine/step.c opens with a reading guide to the functions of one step). */
#ifndef DAM_STEP_H
#define DAM_STEP_H

#include "config.h"
#include "model.h"
#include "optim.h"

/* This replica's micro-batches of a step (or of an evaluation): micro-batch i holds n_seg
 * segments (one per dataset) of B rows of T tokens; segment s is taught by source teacher[s]. */
typedef struct DamStep {
    DamModel *model;
    const DamConfig *cfg;   /* dam_step: regularizers, clipping, the optimizer */
    RunState *const *slots; /* micro-batch i runs in slots[i % n_slots] (n_slots >= min(M, pp)) */
    int n_slots;
    int M, n_seg, B, T;
    int global_mb; /* micro-batches of the step over every replica: each weighs 1/global_mb */
    const int *teacher;
    const int32_t *const *ids;      /* [M]: n_seg * B * T ids, segment s's from s * B * T on */
    const int8_t *const *mask;      /* [M], alike (an entry NULL: every position valid) */
    const int32_t *const *topk_idx; /* [M], K per position: the teachers' top-K cache, or NULL */
    const float *const *topk_val;
    const LossParams *loss;
    int backward;     /* 0: the losses only (evaluation) */
    int update;       /* dam_step: 1 clips and updates (the trainer); 0 stops at dL/dc (the tests) */
    int total_steps;  /* dam_step: the length of the learning-rate schedule */
    LossTerms *terms; /* out, [M * n_seg]: micro-batch i's segment s at i * n_seg + s, on every stage */
} DamStep;

typedef struct {
    double kl[DAM_MAX_SOURCES], mse[DAM_MAX_SOURCES], entropy[DAM_MAX_SOURCES]; /* per dataset */
    RegTerms reg;
    double total, grad_norm;
    int64_t tokens; /* valid tokens of the step over every replica */
} StepStats;

/* One step, 0-based optimizer step `step`: every micro-batch's forward, losses and backward
 * (1F1B over the pipeline stages), the gradients reduced over every group (the model's dp group
 * from dam_model_attach_dp), dL/dc, the regularizers: the step's loss; then, with s->update,
 * global gradient clipping and the optimizer update. */
void dam_step(const DamStep *s, int step, StepStats *st);

/* s's micro-batches through the pipeline stages: their losses into s->terms on every stage and,
 * with s->backward, their gradients added to the coefficients' accumulators (not reduced). */
void dam_micro_batches(const DamStep *s);

/* The host arrays of one micro-batch of one dataset: B rows of T tokens. */
typedef struct {
    const int32_t *ids;
    const int8_t *mask;      /* NULL: every position valid */
    const int32_t *topk_idx; /* K per position: the teacher's top-K cache, or NULL */
    const float *topk_val;
    int B, T;
} MicroBatch;

/* dam_micro_batches of that one micro-batch, taught by source `teacher`, in run state rs (one
 * pipeline slot): its loss terms, on every stage; with `backward` its gradients added to the
 * accumulators. What evaluation, fine-tuning and the tests run one batch at a time with. */
LossTerms dam_one_micro_batch(DamModel *m, RunState *rs, int teacher, const MicroBatch *mb,
                              const LossParams *loss, int backward);

#endif
