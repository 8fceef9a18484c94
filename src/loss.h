/* loss.h — fused logits losses over a chunk of rows: KL with temperature (full vocabulary or
 * over the teacher's top-K entries), MSE and entropy, writing dL/dz for the same rows so that the
 * [tokens x vocab] logits of a whole batch are never held at once. */
#ifndef DAM_LOSS_H
#define DAM_LOSS_H

#include <stdint.h>

typedef struct {
    float tau;
    int kl;
    float mse, entropy;
    int K;       /* 0: full vocabulary; else top-K entries given in idx/val */
    float inv_n; /* 1 / number of valid positions of this dataset's micro-batch */
} LossChunkParams;

typedef struct {
    double kl, mse, entropy;
} LossSums;

/* z [C,V] merged logits; zt [C,V] teacher logits (needed unless only top-K KL is on);
 * idx/val [C,K] teacher top-K (when K > 0). dz [C,V] is overwritten with dL/dz. */
void loss_rows(float *dz, LossSums *sums, const float *z, const float *zt, const int32_t *idx,
               const float *val, int C, int V, const LossChunkParams *p);

/* The K largest entries of each row of zt [C,V] (descending; ties by lower index). */
void loss_topk(int32_t *idx, float *val, const float *zt, int C, int V, int K);

#endif
