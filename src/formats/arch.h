/* arch.h — the tensors of each supported architecture, written once: their Hugging Face names, kind,
 * shape (from config.json), the condition under which a checkpoint holds them, and how tensor
 * parallelism divides them. The model (model.c build_tensor_table), `plan` (plan.c) and the list of
 * a checkpoint's tensors (hfconfig_tensor_specs) all walk these tables, so adding a model family is
 * one table in arch.c (plus the forward pass for any new role). No MPI, no backend. */
#ifndef DAM_ARCH_H
#define DAM_ARCH_H

#include <stddef.h>
#include <stdint.h>

#include "hfconfig.h"

typedef enum { DT_LINEAR = 0, DT_EMBED = 1, DT_NORM = 2, DT_BIAS = 3 } DamTensorKind;

/* How a tensor is divided over the tensor-parallel group (Megatron): column-parallel layers split
 * their output rows (coefficients over the input stay whole, their gradients are partial sums),
 * row-parallel layers split their input columns (coefficients split with them). A bias of a
 * column-parallel layer is SPLIT_ROWS and splits along its only axis. */
typedef enum {
    SPLIT_NONE = 0,
    SPLIT_ROWS = 1,
    SPLIT_COLS = 2,
    /* Whole on every rank but applied to the rank's own heads only (Qwen3's q_norm / k_norm,
     * transformers' replicated_with_grad_allreduce): its gradients are partial sums over tp. */
    SPLIT_PER_HEAD = 3
} TensorSplit;

/* A length of a tensor's shape, in terms of config.json. */
typedef enum {
    DIM_ONE,    /* 1: the rows of a norm or bias, stored as 2-D */
    DIM_HEAD,   /* head_dim */
    DIM_HIDDEN, /* hidden_size */
    DIM_Q,      /* num_attention_heads * head_dim */
    DIM_KV,     /* num_key_value_heads * head_dim */
    DIM_FFN,    /* intermediate_size */
    DIM_VOCAB   /* vocab_size */
} ArchDim;

/* When a checkpoint holds the tensor. */
typedef enum {
    WHEN_ALWAYS,
    WHEN_ATTENTION_BIAS, /* q, k, v biases */
    WHEN_O_BIAS,
    WHEN_MLP_BIAS,
    WHEN_QK_NORM, /* Qwen3's q_norm, k_norm */
    WHEN_UNTIED   /* lm_head: not with tie_word_embeddings */
} ArchCondition;

/* Where a tensor sits in the model: before the decoder layers (first pipeline stage), in each of
 * them, or after them (last stage). Its order in a table is its order within the place. */
typedef enum { PLACE_BEFORE, PLACE_LAYER, PLACE_AFTER } ArchPlace;

/* What the forward pass uses the tensor as (model.c keeps each in its DamModel / DamLayer slot). */
typedef enum {
    ROLE_EMBED,
    ROLE_FINAL_NORM,
    ROLE_LM_HEAD,
    ROLE_ATTN_NORM,
    ROLE_Q,
    ROLE_K,
    ROLE_V,
    ROLE_Q_BIAS,
    ROLE_K_BIAS,
    ROLE_V_BIAS,
    ROLE_Q_NORM, /* Qwen3: per-head RMSNorm of q, k before RoPE */
    ROLE_K_NORM,
    ROLE_O,
    ROLE_O_BIAS,
    ROLE_MLP_NORM,
    ROLE_GATE,
    ROLE_UP,
    ROLE_DOWN,
    ROLE_GATE_BIAS, /* mlp_bias: in checkpoints, not merged (the model refuses mlp_bias) */
    ROLE_UP_BIAS,
    ROLE_DOWN_BIAS
} ArchRole;

/* One line of an architecture's table. */
typedef struct {
    const char *name; /* the Hugging Face name; in a layer, what follows "model.layers.<l>." */
    ArchPlace place;
    ArchRole role;
    DamTensorKind kind;
    TensorSplit split;
    ArchDim rows, cols; /* the stored shape as 2-D: a norm or bias has rows DIM_ONE */
    ArchCondition when;
} ArchTensorDef;

/* One tensor of a model: a table line at a layer, with its name and whole shape. */
typedef struct {
    char name[HF_TENSOR_NAME_MAX];
    const ArchTensorDef *def;
    int layer;          /* -1 for a tensor outside the decoder layers */
    int64_t rows, cols; /* the whole stored shape as 2-D: a norm or bias is rows = 1 */
} ArchTensor;

/* The tensors a checkpoint of c's architecture holds, in the model's order: those before the
 * layers, each layer's in turn, those after. Fills out when it is not NULL; returns the count
 * either way (call with NULL to size). */
int arch_tensors(const ModelConfig *c, ArchTensor *out);

/* Whether a pipeline stage holding layers [layer0, layer1) holds t: a layer's tensor in its range,
 * the first stage what comes before the layers, the last what comes after them and, with tied
 * embeddings, the embedding too (as its lm_head). */
int arch_stage_holds(const ArchTensor *t, const ModelConfig *c, int layer0, int layer1, int first, int last);

/* One tp rank's share of a tensor of whole stored shape rows x cols (as 2-D). */
typedef struct {
    size_t rows, cols; /* the share's shape */
    size_t first;      /* the element of the whole tensor (row-major) the share starts at */
    int dim;           /* coefficient length: cols, or 1 for a bias (one scalar per source) */
    int coef_full;     /* the whole tensor's coefficient length */
    int coef_off;      /* the share's first coefficient column (row-parallel layers) */
    int grad_partial;  /* coefficient gradients are partial sums over the tp group */
} TensorShare;

/* Share `rank` of `tp` of a tensor of that kind and split; rows and cols divide by tp where split. */
TensorShare arch_share(DamTensorKind kind, TensorSplit split, size_t rows, size_t cols, int tp, int rank);

#endif
