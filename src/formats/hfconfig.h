/* hfconfig.h — the architecture of one Hugging Face model, read from its config.json.
 *
 * Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM (decoder-only,
 * SwiGLU MLP, RMSNorm, rotary embeddings, grouped-query attention; Qwen3 adds a per-head RMSNorm of q
 * and k). */
#ifndef DAM_HFCONFIG_H
#define DAM_HFCONFIG_H

#include <stdint.h>

typedef enum { ARCH_LLAMA = 0, ARCH_MISTRAL = 1, ARCH_QWEN2 = 2, ARCH_QWEN3 = 3 } ModelArch;
typedef enum { ROPE_DEFAULT = 0, ROPE_LLAMA3 = 1, ROPE_LINEAR = 2 } RopeType;

typedef struct {
    ModelArch arch;
    char architecture[64]; /* as written, e.g. "LlamaForCausalLM" */
    char model_type[32];
    int vocab_size;
    int hidden_size;         /* d */
    int intermediate_size;   /* F */
    int num_hidden_layers;   /* L */
    int num_attention_heads; /* H */
    int num_key_value_heads; /* KV (== H when absent) */
    int head_dim;            /* hd (hidden_size / H when absent or null; Qwen3: 128 when absent) */
    int max_position_embeddings;
    float rms_norm_eps;
    double rope_theta; /* default 10000 */
    RopeType rope_type;
    double rope_factor;                                 /* llama3 / linear */
    double rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int rope_original_max_position_embeddings;          /* llama3 */
    int tie_word_embeddings; /* default false for Llama/Mistral/Qwen2 as in transformers */
    int attention_bias;      /* q,k,v biases: Qwen2 always; Llama, Qwen3 when attention_bias is true */
    int o_bias;              /* o_proj bias: Llama's and Qwen3's attention_bias also adds it */
    int mlp_bias;            /* Llama mlp_bias */
    int sliding_window;    /* 0 = none (Mistral: config value; Qwen2, Qwen3: only when use_sliding_window) */
    int max_window_layers; /* Qwen2/3 with a window: only layers >= this use it (0 = all layers) */
    int qk_norm;           /* Qwen3: RMSNorm over head_dim of each head of q and k, before RoPE */
    int bos_token_id, eos_token_id, pad_token_id; /* -1 when absent (first one when a list) */
    char hidden_act[16];                          /* must be "silu" */
} ModelConfig;

/* Parse and validate `path` (a config.json). Fails with one line naming the file and field. */
void hfconfig_load(ModelConfig *c, const char *path);
/* Parse from a JSON text already in memory; `what` names it in messages. */
void hfconfig_parse(ModelConfig *c, const char *json, const char *what);
/* Fail when two configs differ in anything that changes tensor shapes or the forward pass,
 * naming the field and both values with the two names given. */
void hfconfig_check_same(const ModelConfig *a, const char *a_name, const ModelConfig *b, const char *b_name);
/* Inverse frequencies of the rotary embedding (head_dim/2 entries), with rope scaling applied
 * exactly as transformers' rope init functions do. */
void hfconfig_rope_inv_freq(const ModelConfig *c, double *inv_freq);
/* Parameter count of the whole model. */
int64_t hfconfig_num_params(const ModelConfig *c);

/* The tensors a Hugging Face checkpoint of this architecture holds, with the shape config.json
 * implies (ndim 1: shape[0] only). Order: embeddings, layer by layer, final norm, lm_head unless
 * tied. Fills specs when it is not NULL; returns the count either way (call with NULL to size). */
#define HF_TENSOR_NAME_MAX 96
typedef struct {
    char name[HF_TENSOR_NAME_MAX];
    int ndim;
    int64_t shape[2];
} HfTensorSpec;
int hfconfig_tensor_specs(const ModelConfig *c, HfTensorSpec *specs);

#endif
