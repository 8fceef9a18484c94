/* finetune.h — full fine-tuning of one model (`dam_dist finetune`) on the DAM engine's own forward and
 * backward: the model is opened with its one directory as the only source, the source weights are
 * replaced by writable F32 copies, its coefficients are 1 with no nonlinearity (so the merged weight
 * IS the weight), and each tensor's DamTensor.wgrad receives dL/dW where DAM's backward has G.
 *
 * The loss is the mean next-token cross-entropy over the chosen target positions. It goes through
 * the engine's top-K KL with K = the whole vocabulary and a one-hot teacher (logit 0 at the target,
 * -1e30 elsewhere): both distributions are renormalised over all V entries, so the KL is
 * -log softmax(z)[target] exactly and dL/dz = softmax(z) - onehot. The price is a host array of
 * [positions x V] ids and logits per batch, fine for the toy vocabularies this is meant for. */
#ifndef DAM_FINETUNE_H
#define DAM_FINETUNE_H

#include <stdint.h>

#include "model.h"

typedef struct {
    DamModel m;
    float **host_w; /* per tensor: the CPU's writable weights (the source is a view of them) */
    DevBuf *adam_m, *adam_v;
    int32_t *topk_idx; /* [B*T*V]: 0..V-1 at every position (the one-hot teacher's ids) */
    float *topk_val;   /* [B*T*V]: 0 at each target, -1e30 elsewhere */
    int B, T;          /* capacity of the batch arrays */
    RunState *rs;
} Finetune;

/* Open dir as a trainable model on the backend (one process, no tensor or pipeline parallelism),
 * with room for batches of B sequences of T tokens. */
void finetune_open(Finetune *f, const char *dir, const Backend *be, BackendCtx *ctx, int B, int T);
void finetune_close(Finetune *f);

/* Next-token targets of a batch: target[r*T + t] = 1 when ids[r*T + t + 1] is predicted at position
 * t, i.e. (answer_only ? answer[t + 1] : mask[t] && mask[t + 1]); the last position never. answer
 * may be NULL when !answer_only. Returns how many. */
int finetune_targets(const int8_t *mask, const int8_t *answer, int answer_only, int B, int T, int8_t *target);

/* The mean cross-entropy of ids[r*T + t + 1] at the target positions of B sequences (B <= f->B, T
 * <= f->T), its weight gradients left in every tensor's wgrad (zeroed first). 0 when no target. */
double finetune_loss_grad(Finetune *f, const int32_t *ids, const int8_t *target, int B, int T);

/* Global gradient norm clipped to max_norm (<= 0: not clipped); returns the norm before. */
double finetune_clip(Finetune *f, double max_norm);

/* One AdamW step (t: 1-based) of every weight from its wgrad; decay applies to matrices only (linear
 * layers, embedding, lm_head), not to norms and biases. */
void finetune_adamw(Finetune *f, int t, float lr, float weight_decay);

/* Teacher-forced evaluation of B sequences: logits [B*T*V] on the host (dam_model_logits). */
void finetune_logits(Finetune *f, const int32_t *ids, int B, int T, float *logits);

#endif
