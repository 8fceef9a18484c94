/* eval.h — `dam_dist eval`: how well models do on the config's datasets, measured against each
 * dataset's teacher (the source it belongs to) by the engine's own forward, on any layout.
 *
 * Every metric is over the rows' first T tokens (train.seq_len, else the whole row):
 *   cross-entropy  mean −log q(ids[t+1]) of the model's softmax at position t, over the positions t
 *                  where both t and t+1 are valid (attention mask), natural log, temperature 1;
 *   KL             the training loss's KL term (loss.c; τ²·KL(teacher ‖ model) at loss.temperature,
 *                  over loss.topk entries when set) per valid position; loss.kl_reduction
 *                  "batchmean" divides it by train.batch_size as the trainer's --eval-rows does;
 *   top-1          the fraction of valid positions where the model's argmax is the teacher's;
 *   exact match    rows whose every answer token (/answer_mask; t >= 1) is the model's argmax at
 *                  position t−1 under teacher forcing, over the rows that have answer tokens;
 *   generated      (optional) rows whose answer tokens the model generates greedily from the prompt
 *                  (the tokens before the first answer token), as many as the row has. */
#ifndef DAM_EVAL_H
#define DAM_EVAL_H

#include "dataset.h"
#include "model.h"

/* Sums of one model on one dataset (host; summed over ranks, then turned into metrics). */
typedef struct {
    double ce, ce_n;         /* Σ −log q(next token), targets */
    double kl, kl_n;         /* Σ τ²·KL over valid positions, valid positions */
    double agree;            /* valid positions where the argmaxes agree */
    double answer_rows;      /* rows with at least one answer token */
    double exact, generated; /* of those, exact under teacher forcing; generated greedily */
    double rows;
} EvalSums;
#define EVAL_N_SUMS ((int)(sizeof(EvalSums) / sizeof(double)))

typedef struct {
    double ce, kl, top1, exact, generated; /* exact, generated: NAN when no row has answer tokens */
    int64_t rows, tokens, answer_rows;
} EvalMetrics;

/* What one dataset's rows are evaluated with: teacher source `teacher`, models `models[j]` (source
 * rows of m), T tokens per row. Holds the host buffers of one row's logits. */
typedef struct {
    DamModel *m;
    RunState *rs; /* for 1 x T */
    int T, teacher, n_models, generate;
    int models[DAM_MAX_SOURCES];
    LossParams loss;
    float *z, *zt;          /* [T, V]: a model's and the teacher's logits (last stage) */
    int32_t *arg_m, *arg_t; /* argmax per position */
    int32_t *seq, *target, *valid, *kidx;
    float *kval, *scratch;
    double *logp;
} Evaluator;

/* Buffers for rows of T tokens (and the run state when rs is NULL: it is then owned). */
void eval_init(Evaluator *ev, DamModel *m, int T, int teacher, int n_models, const int *models,
               const LossParams *loss, int generate);
void eval_free(Evaluator *ev);

/* One row (ids, mask, answer [T]; answer may be NULL; topk_idx/val [T*loss.topk] the teacher cache
 * or NULL) on every rank of one data-parallel replica: sums[j] of model j gain the row's terms on
 * the last stage's tp rank 0 only (elsewhere they are left alone), so that a sum over all ranks
 * counts each row once. */
void eval_row(Evaluator *ev, const int32_t *ids, const int8_t *mask, const int8_t *answer,
              const int32_t *topk_idx, const float *topk_val, EvalSums *sums);

/* Rows [row0, row0 + n) of d, row row0 + i by replica i mod dp (this is replica dp_idx), each
 * through eval_row; the teacher cache is used when loss.topk > 0 and d holds one. */
void eval_rows(Evaluator *ev, const DamDataset *d, int64_t row0, int64_t n, int dp, int dp_idx,
               EvalSums *sums);

/* Sums (over all ranks) to metrics; batch_size divides the KL under loss.kl_reduction batchmean. */
void eval_metrics(const EvalSums *s, const LossParams *loss, int batch_size, EvalMetrics *out);

#endif
