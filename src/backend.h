/* backend.h — the compute interface the transformer and the DAM step call.
 *
 * One implementation per device: backend_cpu.c (C + OpenBLAS, fp32; the reference and CI path)
 * and, in cuda/, a CUDA one (cuBLAS, bf16 storage, fp32 accumulation) with the same signatures.
 * Buffers passed in are device buffers of that backend (host memory for the CPU). Source weights
 * arrive as SrcWeight views in their stored dtype; on the CPU they point into the mmapped files.
 * Shapes follow PyTorch: a linear weight is W[out, in], activations are x[T, in] row-major. */
#ifndef DAM_BACKEND_H
#define DAM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* One source's stored tensor (or a tensor-parallel slice of it): row r starts at data + r*ld
 * elements (ld = 0: rows are contiguous, ld = cols). */
typedef struct {
    const void *data;
    dam_dtype dtype;
    size_t ld;
} SrcWeight;

typedef enum { NONLIN_NONE = 0, NONLIN_TANH = 1, NONLIN_SIGMOID = 2, NONLIN_RELU = 3 } Nonlinearity;

/* Attention shape of one call: B sequences of T tokens, H query heads, KV key/value heads. */
typedef struct {
    int B, T, H, KV, hd;
    int window;  /* sliding window (keys j with i - j < window), 0 = full causal */
    float scale; /* 1/sqrt(hd) */
} AttnShape;

/* Attention tiles: queries and keys in blocks of DAM_ATTN_TILE; the scratch an attention call
 * needs, in floats, whatever the sequence length. */
#define DAM_ATTN_TILE 128
#define DAM_ATTN_SCRATCH (2 * DAM_ATTN_TILE * DAM_ATTN_TILE + 2 * DAM_ATTN_TILE)

typedef struct Backend {
    const char *name;
    void *(*alloc)(size_t bytes, const char *what);
    void (*free)(void *p);

    /* y[T,out] = x[T,in] · W[out,in]ᵀ (+ y when accumulate) */
    void (*matmul_xwt)(float *y, const float *x, const float *w, int T, int in, int out, int accumulate);
    /* dx[T,in] = dy[T,out] · W[out,in] (+ dx when accumulate) */
    void (*matmul_dyw)(float *dx, const float *dy, const float *w, int T, int in, int out, int accumulate);
    /* G[out,in] = dy[T,out]ᵀ · x[T,in] (+ G when accumulate) — the weight-gradient GEMM */
    void (*matmul_dytx)(float *g, const float *dy, const float *x, int T, int in, int out, int accumulate);

    /* merged[r, j] = Σ_i fc[i*cols + j] · W_i[r, j] for r < rows (a bias or norm is rows = 1).
     * With fc_per_row (scalar coefficients, biases) the coefficient is fc[i] for the whole tensor. */
    void (*dam_materialize)(float *merged, const SrcWeight *src, int n_src, const float *fc, size_t rows,
                            size_t cols, int scalar_coef);
    /* acc[i*cols + j] += Σ_r W_i[r, j] · G[r, j]  (scalar_coef: acc[i] += Σ_{r,j} W_i[r,j]·G[r,j]).
     * The caller multiplies by f'(c) once per step. One memory-bound pass per source. */
    void (*dam_coef_grad)(float *acc, const SrcWeight *src, int n_src, const float *g, size_t rows,
                          size_t cols, int scalar_coef);
    /* Rows ids[t] of the merged embedding: out[t, j] = Σ_i fc[i, j] · E_i[ids[t], j]; a negative id
     * (a token of another tensor-parallel rank's vocabulary slice) gives a zero row. */
    void (*dam_embed_gather)(float *out, const SrcWeight *src, int n_src, const float *fc, const int32_t *ids,
                             int T, int d);
    /* acc[i, j] += Σ_t E_i[ids[t], j] · dh[t, j] (negative ids skipped) */
    void (*dam_embed_coef_grad)(float *acc, const SrcWeight *src, int n_src, const float *dh,
                                const int32_t *ids, int T, int d);

    /* out = x̂ ⊙ w with x̂ = x·rstd, rstd[t] = 1/sqrt(mean(x[t]²) + eps) (rstd is saved). */
    void (*rmsnorm_fwd)(float *out, float *rstd, const float *x, const float *w, int T, int d, float eps);
    /* dx (+)= rstd·(dx̂ − x̂·mean(dx̂ ⊙ x̂)), dx̂ = dout ⊙ w; dw[j] += Σ_t dout[t,j]·x̂[t,j]. */
    void (*rmsnorm_bwd)(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                        const float *w, int T, int d, int accumulate_dx);
    /* Rotate heads in place (HF rotate_half layout): x[t, h*hd + k] for positions t mod T;
     * inverse applies the transpose (the backward). cos/sin are [T, hd/2]. */
    void (*rope)(float *x, const float *cos, const float *sin, int BT, int T, int heads, int hd, int inverse);
    /* Causal (optionally sliding-window) attention, tiled (flash-style): only the log-sum-exp of each
     * query row, lse [B,H,T], is saved for the backward, so memory is linear in T. scratch holds
     * DAM_ATTN_SCRATCH floats whatever T is. */
    void (*attention_fwd)(float *out, float *lse, const float *q, const float *k, const float *v,
                          const AttnShape *s, float *scratch);
    /* dq, dk, dv are overwritten; the probabilities are recomputed from q, k and lse, and
     * out (the forward's) gives the softmax's row correction Σ dout·out. */
    void (*attention_bwd)(float *dq, float *dk, float *dv, const float *dout, const float *out,
                          const float *lse, const float *q, const float *k, const float *v,
                          const AttnShape *s, float *scratch);
    /* act = silu(gate) ⊙ up */
    void (*swiglu_fwd)(float *act, const float *gate, const float *up, size_t n);
    /* dgate, dup from dact */
    void (*swiglu_bwd)(float *dgate, float *dup, const float *dact, const float *gate, const float *up,
                       size_t n);
    /* y[t, o] += b[o] */
    void (*add_bias)(float *y, const float *b, int T, int out);
} Backend;

/* The CPU backend (always available). */
const Backend *backend_cpu(void);

/* Element-wise nonlinearity of the coefficients and its derivative. */
float dam_nonlin(Nonlinearity f, float c);
float dam_nonlin_grad(Nonlinearity f, float c);

#endif
