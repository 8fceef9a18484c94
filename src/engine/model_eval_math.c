/* model_eval_math.c — loss math on the host over logits as dam_model_logits returns them (this
 * rank's vocabulary slice, on the last stage): top-K, the KL term and log-probabilities, combined
 * over the tp group by host collectives; and those collectives for the step's loss chunks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loss.h"
#include "model_internal.h"

static void reduce_sum_f64(void *ctx, double *buf, int n) { comm_allreduce_sum_f64(ctx, buf, (size_t)n); }
static void reduce_max_f64(void *ctx, double *buf, int n) { comm_allreduce_max_f64(ctx, buf, (size_t)n); }
static void reduce_gather(void *ctx, const int32_t *ids, const float *vals, int n, int32_t *all_ids,
                          float *all_vals) {
    comm_allgather(ctx, ids, (size_t)n * sizeof(int32_t), all_ids);
    comm_allgather(ctx, vals, (size_t)n * sizeof(float), all_vals);
}

LossReduce tp_loss_reduce(const DamModel *m) {
    return (LossReduce){.ctx = (void *)m->tp,
                        .group_size = m->tp_size,
                        .sum = reduce_sum_f64,
                        .max = reduce_max_f64,
                        .gather = reduce_gather};
}

void dam_model_topk(const DamModel *m, const float *logits, int rows, int K, int32_t *idx, float *val) {
    LossReduce red = tp_loss_reduce(m);
    loss_topk_sharded(idx, val, logits, rows, m->cfg.vocab_size, K, m->vocab_offset, m->tp ? &red : NULL);
}

double dam_model_kl_sum(const DamModel *m, const float *z, const float *zt, const int32_t *idx,
                        const float *val, int rows, const LossParams *loss) {
    if (rows <= 0) return 0;
    LossReduce red = tp_loss_reduce(m);
    int V = m->cfg.vocab_size, K = loss->topk;
    int32_t *own_idx = NULL;
    float *own_val = NULL;
    if (K > 0 && !idx) { /* the teacher's top-K from its logits, as the step's be->loss_topk */
        idx = own_idx = dam_malloc((size_t)rows * K * sizeof(int32_t), "top-k ids");
        val = own_val = dam_malloc((size_t)rows * K * sizeof(float), "top-k logits");
        dam_model_topk(m, zt, rows, K, own_idx, own_val);
    }
    /* KL on, no MSE or entropy, top-K, 1/n = 1, no batchmean */
    LossChunkParams p = {.tau = loss->temperature,
                         .kl = 1,
                         .mse = 0,
                         .entropy = 0,
                         .K = K,
                         .inv_n = 1.0f,
                         .V_full = m->full_cfg.vocab_size,
                         .vocab_offset = m->vocab_offset,
                         .reduce = m->tp ? &red : NULL,
                         .kl_rows = 1};
    LossSums sums = {.kl = 0, .mse = 0, .entropy = 0};
    int chunk = rows < LOSS_CHUNK ? rows : LOSS_CHUNK; /* loss_rows writes dz [C, V]: chunks of rows */
    float *dz = dam_malloc((size_t)chunk * V * sizeof(float), "loss gradient rows");
    for (int r0 = 0; r0 < rows; r0 += chunk) {
        int C = rows - r0 < chunk ? rows - r0 : chunk;
        size_t at = (size_t)r0 * V, ak = (size_t)r0 * (K > 0 ? K : 0);
        loss_rows(dz, &sums, z + at, zt + at, idx ? idx + ak : NULL, val ? val + ak : NULL, C, V, &p);
    }
    free(dz), free(own_idx), free(own_val);
    return sums.kl;
}

void dam_model_log_prob(const DamModel *m, const float *z, int rows, const int32_t *target, double *logp) {
    int V = m->cfg.vocab_size;
    double *st = dam_malloc((size_t)rows * 3 * sizeof(double), "log-probabilities");
    double *mx = st, *se = st + rows, *zt = st + 2 * (size_t)rows; /* max, Σ e^(z - max), z[target] */
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * V;
        mx[r] = -INFINITY;
        for (int v = 0; v < V; v++) mx[r] = zr[v] > mx[r] ? zr[v] : mx[r];
    }
    if (m->tp) comm_allreduce_max_f64(m->tp, mx, (size_t)rows);
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * V;
        int t = target[r] - m->vocab_offset;
        se[r] = 0, zt[r] = t >= 0 && t < V && target[r] >= 0 ? zr[t] : 0;
        for (int v = 0; v < V; v++) se[r] += exp(zr[v] - mx[r]);
    }
    if (m->tp) comm_allreduce_sum_f64(m->tp, se, 2 * (size_t)rows); /* the sums and the target's logit */
    for (int r = 0; r < rows; r++) logp[r] = target[r] < 0 ? 0 : zt[r] - mx[r] - log(se[r]);
    free(st);
}
