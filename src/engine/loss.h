/* loss.h — fused logits losses over a chunk of rows: KL with temperature (full vocabulary or
 * over the teacher's top-K entries), MSE and entropy, writing dL/dz for the same rows so that the
 * [tokens x vocab] logits of a whole batch are never held at once. */
#ifndef DAM_LOSS_H
#define DAM_LOSS_H

#include <stdint.h>

/* How rows' statistics are combined over a vocabulary-parallel group (NULL: one rank holds all). */
typedef struct {
    void *ctx;
    int group_size;
    void (*sum)(void *ctx, double *buf, int n); /* in place, over the group */
    void (*max)(void *ctx, double *buf, int n);
    /* every rank's n ids and values, concatenated in rank order */
    void (*gather)(void *ctx, const int32_t *ids, const float *vals, int n, int32_t *all_ids,
                   float *all_vals);
} LossReduce;

typedef struct {
    float tau;
    int kl;
    float mse, entropy;
    int K;            /* 0: full vocabulary; else top-K entries given in idx/val (global vocabulary ids) */
    float inv_n;      /* 1 / number of valid positions of this dataset's micro-batch */
    int V_full;       /* the whole vocabulary (MSE is a mean over it) */
    int vocab_offset; /* first vocabulary id of the columns this rank holds */
    const LossReduce *reduce;
    /* loss.kl_reduction "batchmean": the KL term (value and dz) is also divided by this many rows
     * (the dataset's micro-batch B), as torch's reduction='batchmean'; 0 or 1: per valid token */
    int kl_rows;
} LossChunkParams;

/* The KL term's factor: 1/n_valid, divided by kl_rows under batchmean. */
static inline double loss_kl_inv_n(const LossChunkParams *p) {
    return (double)p->inv_n / (p->kl_rows > 1 ? p->kl_rows : 1);
}

typedef struct {
    double kl, mse, entropy;
} LossSums;

/* z [C,V] merged logits; zt [C,V] teacher logits (needed unless only top-K KL is on);
 * idx/val [C,K] teacher top-K (when K > 0). dz [C,V] is overwritten with dL/dz. V is this rank's
 * share of the vocabulary. */
void loss_rows(float *dz, LossSums *sums, const float *z, const float *zt, const int32_t *idx,
               const float *val, int C, int V, const LossChunkParams *p);

/* The K largest entries of each row of zt [C,V] (descending; ties by lower id). */
void loss_topk(int32_t *idx, float *val, const float *zt, int C, int V, int K);
/* The same over a vocabulary-parallel group: zt holds ids [vocab_offset, vocab_offset + V). */
void loss_topk_sharded(int32_t *idx, float *val, const float *zt, int C, int V, int K, int vocab_offset,
                       const LossReduce *r);

#endif
