/* arch.c — the tables of arch.h and the functions that walk them. */
#include "arch.h"

#include <stdio.h>

#define N_OF(a) ((int)(sizeof(a) / sizeof *(a)))

/* Llama, Mistral, Qwen2 and Qwen3 (decoder-only, SwiGLU MLP, RMSNorm): Qwen2's q/k/v biases are
 * attention_bias, which hfconfig.c sets for it; Qwen3's per-head RMSNorms of q and k are qk_norm,
 * whole on every tp rank (each rank normalizes its own heads with the one [head_dim] weight); only
 * Llama reads mlp_bias. */
static const ArchTensorDef decoder_tensors[] = {
    /* name, place, role, kind, split, rows, cols, when */
    {"model.embed_tokens.weight", PLACE_BEFORE, ROLE_EMBED, DT_EMBED, SPLIT_ROWS, DIM_VOCAB, DIM_HIDDEN,
     WHEN_ALWAYS},
    {"input_layernorm.weight", PLACE_LAYER, ROLE_ATTN_NORM, DT_NORM, SPLIT_NONE, DIM_ONE, DIM_HIDDEN,
     WHEN_ALWAYS},
    {"self_attn.q_proj.weight", PLACE_LAYER, ROLE_Q, DT_LINEAR, SPLIT_ROWS, DIM_Q, DIM_HIDDEN, WHEN_ALWAYS},
    {"self_attn.k_proj.weight", PLACE_LAYER, ROLE_K, DT_LINEAR, SPLIT_ROWS, DIM_KV, DIM_HIDDEN, WHEN_ALWAYS},
    {"self_attn.v_proj.weight", PLACE_LAYER, ROLE_V, DT_LINEAR, SPLIT_ROWS, DIM_KV, DIM_HIDDEN, WHEN_ALWAYS},
    {"self_attn.q_proj.bias", PLACE_LAYER, ROLE_Q_BIAS, DT_BIAS, SPLIT_ROWS, DIM_ONE, DIM_Q,
     WHEN_ATTENTION_BIAS},
    {"self_attn.k_proj.bias", PLACE_LAYER, ROLE_K_BIAS, DT_BIAS, SPLIT_ROWS, DIM_ONE, DIM_KV,
     WHEN_ATTENTION_BIAS},
    {"self_attn.v_proj.bias", PLACE_LAYER, ROLE_V_BIAS, DT_BIAS, SPLIT_ROWS, DIM_ONE, DIM_KV,
     WHEN_ATTENTION_BIAS},
    {"self_attn.q_norm.weight", PLACE_LAYER, ROLE_Q_NORM, DT_NORM, SPLIT_PER_HEAD, DIM_ONE, DIM_HEAD,
     WHEN_QK_NORM},
    {"self_attn.k_norm.weight", PLACE_LAYER, ROLE_K_NORM, DT_NORM, SPLIT_PER_HEAD, DIM_ONE, DIM_HEAD,
     WHEN_QK_NORM},
    {"self_attn.o_proj.weight", PLACE_LAYER, ROLE_O, DT_LINEAR, SPLIT_COLS, DIM_HIDDEN, DIM_Q, WHEN_ALWAYS},
    {"self_attn.o_proj.bias", PLACE_LAYER, ROLE_O_BIAS, DT_BIAS, SPLIT_NONE, DIM_ONE, DIM_HIDDEN,
     WHEN_O_BIAS},
    {"post_attention_layernorm.weight", PLACE_LAYER, ROLE_MLP_NORM, DT_NORM, SPLIT_NONE, DIM_ONE, DIM_HIDDEN,
     WHEN_ALWAYS},
    {"mlp.gate_proj.weight", PLACE_LAYER, ROLE_GATE, DT_LINEAR, SPLIT_ROWS, DIM_FFN, DIM_HIDDEN, WHEN_ALWAYS},
    {"mlp.up_proj.weight", PLACE_LAYER, ROLE_UP, DT_LINEAR, SPLIT_ROWS, DIM_FFN, DIM_HIDDEN, WHEN_ALWAYS},
    {"mlp.down_proj.weight", PLACE_LAYER, ROLE_DOWN, DT_LINEAR, SPLIT_COLS, DIM_HIDDEN, DIM_FFN, WHEN_ALWAYS},
    {"mlp.gate_proj.bias", PLACE_LAYER, ROLE_GATE_BIAS, DT_BIAS, SPLIT_ROWS, DIM_ONE, DIM_FFN, WHEN_MLP_BIAS},
    {"mlp.up_proj.bias", PLACE_LAYER, ROLE_UP_BIAS, DT_BIAS, SPLIT_ROWS, DIM_ONE, DIM_FFN, WHEN_MLP_BIAS},
    {"mlp.down_proj.bias", PLACE_LAYER, ROLE_DOWN_BIAS, DT_BIAS, SPLIT_NONE, DIM_ONE, DIM_HIDDEN,
     WHEN_MLP_BIAS},
    {"model.norm.weight", PLACE_AFTER, ROLE_FINAL_NORM, DT_NORM, SPLIT_NONE, DIM_ONE, DIM_HIDDEN,
     WHEN_ALWAYS},
    {"lm_head.weight", PLACE_AFTER, ROLE_LM_HEAD, DT_LINEAR, SPLIT_ROWS, DIM_VOCAB, DIM_HIDDEN, WHEN_UNTIED},
};

/* The table of an architecture: a ModelArch without a case here is a -Wswitch warning. */
static const ArchTensorDef *family_table(ModelArch arch, int *n) {
    switch (arch) {
    case ARCH_LLAMA:
    case ARCH_MISTRAL:
    case ARCH_QWEN2:
    case ARCH_QWEN3: *n = N_OF(decoder_tensors); return decoder_tensors;
    }
    *n = 0; /* not reached: hfconfig.c accepts only the architectures above */
    return NULL;
}

static int64_t dim_of(const ModelConfig *c, ArchDim d) {
    switch (d) {
    case DIM_ONE: return 1;
    case DIM_HEAD: return c->head_dim;
    case DIM_HIDDEN: return c->hidden_size;
    case DIM_Q: return (int64_t)c->num_attention_heads * c->head_dim;
    case DIM_KV: return (int64_t)c->num_key_value_heads * c->head_dim;
    case DIM_FFN: return c->intermediate_size;
    case DIM_VOCAB: return c->vocab_size;
    }
    return 0;
}

static int holds(const ModelConfig *c, ArchCondition when) {
    switch (when) {
    case WHEN_ALWAYS: return 1;
    case WHEN_ATTENTION_BIAS: return c->attention_bias;
    case WHEN_O_BIAS: return c->o_bias;
    case WHEN_MLP_BIAS: return c->mlp_bias;
    case WHEN_QK_NORM: return c->qk_norm;
    case WHEN_UNTIED: return !c->tie_word_embeddings;
    }
    return 0;
}

/* Appends the table's lines of `place` (at `layer`) that c holds, from out[*n] on when out is set. */
static void add_place(const ModelConfig *c, ArchPlace place, int layer, ArchTensor *out, int *n) {
    int n_defs;
    const ArchTensorDef *defs = family_table(c->arch, &n_defs);
    for (int i = 0; i < n_defs; i++) {
        const ArchTensorDef *d = &defs[i];
        if (d->place != place || !holds(c, d->when)) continue;
        if (out) {
            ArchTensor *t = &out[*n];
            if (place == PLACE_LAYER)
                snprintf(t->name, sizeof t->name, "model.layers.%d.%s", layer, d->name);
            else
                snprintf(t->name, sizeof t->name, "%s", d->name);
            t->def = d, t->layer = layer;
            t->rows = dim_of(c, d->rows), t->cols = dim_of(c, d->cols);
        }
        (*n)++;
    }
}

int arch_tensors(const ModelConfig *c, ArchTensor *out) {
    int n = 0;
    add_place(c, PLACE_BEFORE, -1, out, &n);
    for (int l = 0; l < c->num_hidden_layers; l++) add_place(c, PLACE_LAYER, l, out, &n);
    add_place(c, PLACE_AFTER, -1, out, &n);
    return n;
}

int arch_stage_holds(const ArchTensor *t, const ModelConfig *c, int layer0, int layer1, int first, int last) {
    switch (t->def->place) {
    case PLACE_LAYER: return t->layer >= layer0 && t->layer < layer1;
    case PLACE_BEFORE: return first || (last && c->tie_word_embeddings && t->def->kind == DT_EMBED);
    case PLACE_AFTER: return last;
    }
    return 0;
}

TensorShare arch_share(DamTensorKind kind, TensorSplit split, size_t rows, size_t cols, int tp, int rank) {
    TensorShare s;
    int bias = kind == DT_BIAS;
    s.rows = split == SPLIT_ROWS && !bias ? rows / tp : rows;
    s.cols = split == SPLIT_COLS || (split == SPLIT_ROWS && bias) ? cols / tp : cols;
    s.dim = bias ? 1 : (int)s.cols;
    s.coef_full = bias ? 1 : (int)cols;
    s.coef_off = !bias && s.cols != cols ? (int)(rank * s.cols) : 0;
    s.grad_partial = tp > 1 && (split == SPLIT_ROWS || split == SPLIT_PER_HEAD);
    s.first = (s.rows != rows ? rank * s.rows * cols : 0) + (s.cols != cols ? rank * s.cols : 0);
    return s;
}
