/* hfconfig.c — see hfconfig.h.
 *
 * Defaults follow transformers' LlamaConfig / MistralConfig / Qwen2Config / Qwen3Config (v5): a field absent
 * from config.json takes the dataclass default of its architecture, and a field written as null takes what
 * __post_init__ derives (e.g. num_key_value_heads null -> num_attention_heads). The two are not always the
 * same: Mistral's num_key_value_heads defaults to 8 when absent, Qwen2's to 32. */
#include "hfconfig.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "json_util.h"
#include "util.h"

/* Sizes above this are surely a typo, and keeping them below 2^30 keeps every product in int64. */
#define HF_MAX_SIZE (1 << 30)
/* Keeps the tensor count (about 16 per layer) far inside an int. */
#define HF_MAX_LAYERS 65536

typedef struct {
    const char *architecture;
    ModelArch arch;
    int default_kv_heads; /* when the key is absent; 0 = num_attention_heads */
    int default_max_positions;
    int default_head_dim; /* when the key is absent; 0 = hidden_size / num_attention_heads */
} ArchDefaults;

static const ArchDefaults arch_table[] = {
    {"LlamaForCausalLM", ARCH_LLAMA, 0, 2048, 0},
    {"MistralForCausalLM", ARCH_MISTRAL, 8, 4096 * 32, 0},
    {"Qwen2ForCausalLM", ARCH_QWEN2, 32, 32768, 0},
    {"Qwen3ForCausalLM", ARCH_QWEN3, 32, 32768, 128}, /* Qwen3Config's head_dim: int = 128 */
};

/* Mixture-of-experts families: their experts and router have no place in a dense merge. */
static const char *const moe_architectures[] = {"MixtralForCausalLM", "Qwen2MoeForCausalLM",
                                                "Qwen3MoeForCausalLM"};

static void copy_str(char *dst, size_t cap, const char *src, const char *what, const char *field) {
    if (strlen(src) >= cap) dam_fail("%s: field '%s': '%s' is too long", what, field, src);
    snprintf(dst, cap, "%s", src);
}

static const ArchDefaults *parse_architecture(ModelConfig *c, const cJSON *root, const char *what) {
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (!archs || cJSON_IsNull(archs)) dam_fail("%s: missing required field 'architectures'", what);
    if (!cJSON_IsArray(archs) || !cJSON_IsString(archs->child))
        dam_fail("%s: field 'architectures': expected a list of strings", what);
    const char *name = archs->child->valuestring;
    for (size_t i = 0; i < sizeof moe_architectures / sizeof *moe_architectures; i++)
        if (strcmp(name, moe_architectures[i]) == 0)
            dam_fail("%s: field 'architectures': %s is a mixture-of-experts model, which dam_dist does not "
                     "merge",
                     what, name);
    for (size_t i = 0; i < sizeof arch_table / sizeof *arch_table; i++)
        if (strcmp(name, arch_table[i].architecture) == 0) {
            copy_str(c->architecture, sizeof c->architecture, name, what, "architectures");
            c->arch = arch_table[i].arch;
            return &arch_table[i];
        }
    dam_fail("%s: field 'architectures': unsupported architecture %s (dam_dist supports LlamaForCausalLM, "
             "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)",
             what, name);
}

static int positive_field(const cJSON *root, const char *key, const char *what) {
    int64_t v = json_get_int(root, key, what, NULL);
    if (v <= 0 || v > HF_MAX_SIZE)
        dam_fail("%s: field '%s': expected a positive integer below 2^30, got %lld", what, key, (long long)v);
    return (int)v;
}

/* An int field where absent and null mean different things (see the comment at the top). */
static int int_absent_or_null(const cJSON *root, const char *key, int if_absent, int if_null,
                              const char *what) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it) return if_absent;
    if (cJSON_IsNull(it)) return if_null;
    int64_t v = json_get_int(root, key, what, NULL);
    if (v <= 0 || v > HF_MAX_SIZE)
        dam_fail("%s: field '%s': expected a positive integer below 2^30, got %lld", what, key, (long long)v);
    return (int)v;
}

/* bos/eos/pad: an int, a list of ints (the first is taken), null or absent (-1). */
static int token_id(const cJSON *root, const char *key, const char *what) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsArray(it)) it = it->child;
    if (!it || cJSON_IsNull(it)) return -1;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < -1 ||
        it->valuedouble > 2e9)
        dam_fail("%s: field '%s': expected a token id (an integer or a list of integers)", what, key);
    return (int)it->valuedouble;
}

/* transformers 5 writes "rope_parameters"; older files write "rope_scaling" next to "rope_theta".
 * As in transformers, a non-empty rope_scaling wins over rope_parameters, and a rope_theta inside
 * the dict wins over the top-level one. */
static const cJSON *rope_dict(const cJSON *root, const char *what) {
    const char *keys[] = {"rope_scaling", "rope_parameters"};
    for (int i = 0; i < 2; i++) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
        if (!d || cJSON_IsNull(d)) continue;
        if (!cJSON_IsObject(d)) dam_fail("%s: field '%s': expected an object or null", what, keys[i]);
        if (d->child) return d;
    }
    return NULL;
}

static double positive_number(const cJSON *obj, const char *key, const char *section, double def,
                              int required, const char *what) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    double v = def;
    if (required || (it && !cJSON_IsNull(it))) v = json_get_number(obj, key, what, section);
    if (!(v > 0) || !isfinite(v))
        dam_fail("%s: field '%s%s%s': expected a positive number, got %g", what, section ? section : "",
                 section ? "." : "", key, v);
    return v;
}

static void parse_rope(ModelConfig *c, const cJSON *root, const char *what) {
    double top_theta = positive_number(root, "rope_theta", NULL, 10000.0, 0, what);
    const cJSON *d = rope_dict(root, what);
    c->rope_type = ROPE_DEFAULT;
    c->rope_theta = top_theta;
    c->rope_factor = 1.0;
    c->rope_low_freq_factor = c->rope_high_freq_factor = 0.0;
    c->rope_original_max_position_embeddings = 0;
    if (!d) return;
    const char *sec = d->string; /* "rope_scaling" or "rope_parameters" */
    c->rope_theta = positive_number(d, "rope_theta", sec, top_theta, 0, what);
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(d, "rope_type");
    if (!ty || cJSON_IsNull(ty)) ty = cJSON_GetObjectItemCaseSensitive(d, "type");
    const char *type = "default";
    if (ty && !cJSON_IsNull(ty)) {
        if (!cJSON_IsString(ty)) dam_fail("%s: field '%s.rope_type': expected a string", what, sec);
        type = ty->valuestring;
    }
    const cJSON *prf = cJSON_GetObjectItemCaseSensitive(d, "partial_rotary_factor");
    if (prf && !cJSON_IsNull(prf) && !(cJSON_IsNumber(prf) && prf->valuedouble == 1.0))
        dam_fail("%s: field '%s.partial_rotary_factor': only 1.0 is supported", what, sec);
    if (strcmp(type, "default") == 0) return;
    if (strcmp(type, "linear") == 0) {
        c->rope_type = ROPE_LINEAR;
        c->rope_factor = positive_number(d, "factor", sec, 0, 1, what);
    } else if (strcmp(type, "llama3") == 0) {
        c->rope_type = ROPE_LLAMA3;
        c->rope_factor = positive_number(d, "factor", sec, 0, 1, what);
        c->rope_low_freq_factor = positive_number(d, "low_freq_factor", sec, 0, 1, what);
        c->rope_high_freq_factor = positive_number(d, "high_freq_factor", sec, 0, 1, what);
        double omax = positive_number(d, "original_max_position_embeddings", sec,
                                      (double)c->max_position_embeddings, 0, what);
        if (omax != floor(omax) || omax > HF_MAX_SIZE)
            dam_fail(
                "%s: field '%s.original_max_position_embeddings': expected a positive integer below 2^30",
                what, sec);
        c->rope_original_max_position_embeddings = (int)omax;
    } else {
        dam_fail("%s: field '%s.rope_type': unsupported rope type '%s' (dam_dist supports default, linear, "
                 "llama3)",
                 what, sec, type);
    }
}

/* Qwen3's layer_types (transformers 5 writes it): one "full_attention" or "sliding_attention" per
 * layer. Qwen3Attention slides only where the type says so and config.sliding_window is set, i.e.
 * with use_sliding_window. The engine slides the layers from max_window_layers on, so with a window
 * the sliding layers must be the last ones; they set max_window_layers (none sliding: no window). */
static void parse_layer_types(ModelConfig *c, const cJSON *types, const char *what) {
    if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != c->num_hidden_layers)
        dam_fail("%s: field 'layer_types': expected a list of %d strings (one per layer)", what,
                 c->num_hidden_layers);
    int first_sliding = c->num_hidden_layers, i = 0;
    for (const cJSON *t = types->child; t; t = t->next, i++) {
        int sliding = cJSON_IsString(t) && strcmp(t->valuestring, "sliding_attention") == 0;
        if (!sliding && !(cJSON_IsString(t) && strcmp(t->valuestring, "full_attention") == 0))
            dam_fail("%s: field 'layer_types': entry %d is not \"full_attention\" or \"sliding_attention\" "
                     "(the only layer types dam_dist supports)",
                     what, i);
        if (sliding && first_sliding > i) first_sliding = i;
        if (c->sliding_window && !sliding && first_sliding < i)
            dam_fail(
                "%s: field 'layer_types': full attention in layer %d after sliding attention in layer %d; "
                "dam_dist supports sliding attention only in the last layers",
                what, i, first_sliding);
    }
    if (!c->sliding_window) return; /* checked, but without a window no layer slides */
    if (first_sliding == c->num_hidden_layers) c->sliding_window = 0;
    c->max_window_layers = c->sliding_window ? first_sliding : 0;
}

static void parse_sliding_window(ModelConfig *c, const cJSON *root, const char *what) {
    c->sliding_window = 0;
    c->max_window_layers = 0;
    if (c->arch == ARCH_MISTRAL) {
        c->sliding_window = int_absent_or_null(root, "sliding_window", 4096, 0, what);
    } else if ((c->arch == ARCH_QWEN2 || c->arch == ARCH_QWEN3) &&
               json_opt_bool(root, "use_sliding_window", 0)) {
        c->sliding_window = int_absent_or_null(root, "sliding_window", 4096, 0, what);
        c->max_window_layers = json_opt_int_range(root, "max_window_layers", 28, 0, HF_MAX_SIZE);
    }
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (c->arch == ARCH_QWEN3 && types && !cJSON_IsNull(types)) parse_layer_types(c, types, what);
}

static void parse_biases(ModelConfig *c, const cJSON *root) {
    c->attention_bias = c->o_bias = c->mlp_bias = 0;
    if (c->arch == ARCH_QWEN2) c->attention_bias = 1;   /* hard-wired in Qwen2Attention, not in config */
    if (c->arch == ARCH_LLAMA || c->arch == ARCH_QWEN3) /* Qwen3Attention: bias on q, k, v and o */
        c->attention_bias = c->o_bias = json_opt_bool(root, "attention_bias", 0);
    if (c->arch == ARCH_LLAMA) c->mlp_bias = json_opt_bool(root, "mlp_bias", 0);
}

/* Parameters in double: every later count is int64, so a config whose sizes multiply past any
 * real model (2^50 parameters is ~1000x the largest published) is refused here, once. */
static double approx_params(const ModelConfig *c) {
    double d = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    double q = (double)c->num_attention_heads * c->head_dim,
           kv = (double)c->num_key_value_heads * c->head_dim;
    double layer = 2 * q * d + 2 * kv * d + 3 * F * d + 2 * d + q + 2 * kv + d + 2 * F + d;
    return 2 * V * d + d + c->num_hidden_layers * layer;
}

static void validate(const ModelConfig *c, const char *what) {
    int H = c->num_attention_heads, KV = c->num_key_value_heads;
    if (c->num_hidden_layers > HF_MAX_LAYERS)
        dam_fail("%s: field 'num_hidden_layers': %d is more than %d", what, c->num_hidden_layers,
                 HF_MAX_LAYERS);
    if (approx_params(c) > 0x1p50)
        dam_fail(
            "%s: sizes imply %.3g parameters; not a plausible model (check hidden_size, intermediate_size, "
            "vocab_size, head_dim)",
            what, approx_params(c));
    if (H % KV != 0)
        dam_fail("%s: field 'num_key_value_heads': %d does not divide num_attention_heads %d", what, KV, H);
    if (c->head_dim <= 0 || c->head_dim % 2 != 0)
        dam_fail("%s: field 'head_dim': %d; rotary embeddings need a positive even head_dim", what,
                 c->head_dim);
    if (strcmp(c->hidden_act, "silu") != 0)
        dam_fail("%s: field 'hidden_act': '%s' is not supported (only silu)", what, c->hidden_act);
    if (!(c->rms_norm_eps > 0)) dam_fail("%s: field 'rms_norm_eps': must be positive", what);
}

static void parse_root(ModelConfig *c, const cJSON *root, const char *what) {
    if (!cJSON_IsObject(root)) dam_fail("%s: expected a JSON object", what);
    const ArchDefaults *ad = parse_architecture(c, root, what);
    copy_str(c->model_type, sizeof c->model_type, json_opt_string(root, "model_type", ""), what,
             "model_type");
    c->vocab_size = positive_field(root, "vocab_size", what);
    c->hidden_size = positive_field(root, "hidden_size", what);
    c->intermediate_size = positive_field(root, "intermediate_size", what);
    c->num_hidden_layers = positive_field(root, "num_hidden_layers", what);
    c->num_attention_heads = positive_field(root, "num_attention_heads", what);
    int H = c->num_attention_heads;
    c->num_key_value_heads = int_absent_or_null(root, "num_key_value_heads",
                                                ad->default_kv_heads ? ad->default_kv_heads : H, H, what);
    c->head_dim =
        int_absent_or_null(root, "head_dim", ad->default_head_dim ? ad->default_head_dim : c->hidden_size / H,
                           c->hidden_size / H, what);
    c->qk_norm = c->arch == ARCH_QWEN3;
    c->max_position_embeddings =
        json_opt_int_range(root, "max_position_embeddings", ad->default_max_positions, 1, 1 << 30);
    c->rms_norm_eps = (float)positive_number(root, "rms_norm_eps", NULL, 1e-6, 0, what);
    parse_rope(c, root, what);
    c->tie_word_embeddings = json_opt_bool(root, "tie_word_embeddings", 0);
    parse_biases(c, root);
    parse_sliding_window(c, root, what);
    c->bos_token_id = token_id(root, "bos_token_id", what);
    c->eos_token_id = token_id(root, "eos_token_id", what);
    c->pad_token_id = token_id(root, "pad_token_id", what);
    copy_str(c->hidden_act, sizeof c->hidden_act, json_opt_string(root, "hidden_act", "silu"), what,
             "hidden_act");
    validate(c, what);
}

void hfconfig_parse(ModelConfig *c, const char *json, const char *what) {
    memset(c, 0, sizeof *c);
    cJSON *root = json_parse_text(json, strlen(json), what);
    const char *prev = json_set_context(what);
    parse_root(c, root, what);
    json_set_context(prev);
    cJSON_Delete(root);
}

void hfconfig_load(ModelConfig *c, const char *path) {
    size_t n;
    char *text = dam_read_file(path, &n);
    if (strlen(text) != n) dam_fail("%s: contains a NUL byte; not a JSON text", path);
    hfconfig_parse(c, text, path);
    free(text);
}

/* ---------------------------------------------------------------- comparisons */

static DAM_NORETURN void differ_int(const char *field, long long a, const char *an, long long b,
                                    const char *bn) {
    dam_fail("%s and %s differ in config field '%s': %lld vs %lld", an, bn, field, a, b);
}

static DAM_NORETURN void differ_num(const char *field, double a, const char *an, double b, const char *bn) {
    dam_fail("%s and %s differ in config field '%s': %.17g vs %.17g", an, bn, field, a, b);
}

void hfconfig_check_same(const ModelConfig *a, const char *an, const ModelConfig *b, const char *bn) {
    if (a->arch != b->arch)
        dam_fail("%s and %s differ in config field 'architectures': %s vs %s", an, bn, a->architecture,
                 b->architecture);
#define SAME_INT(f)                                                                                          \
    if (a->f != b->f) differ_int(#f, a->f, an, b->f, bn)
#define SAME_NUM(f)                                                                                          \
    if (a->f != b->f) differ_num(#f, a->f, an, b->f, bn)
    SAME_INT(vocab_size);
    SAME_INT(hidden_size);
    SAME_INT(intermediate_size);
    SAME_INT(num_hidden_layers);
    SAME_INT(num_attention_heads);
    SAME_INT(num_key_value_heads);
    SAME_INT(head_dim);
    SAME_INT(tie_word_embeddings);
    SAME_INT(attention_bias);
    SAME_INT(o_bias);
    SAME_INT(mlp_bias);
    SAME_INT(sliding_window);
    SAME_INT(max_window_layers);
    SAME_INT(qk_norm);
    SAME_NUM(rms_norm_eps);
    SAME_NUM(rope_theta);
    SAME_INT(rope_type);
    SAME_NUM(rope_factor);
    SAME_NUM(rope_low_freq_factor);
    SAME_NUM(rope_high_freq_factor);
    SAME_INT(rope_original_max_position_embeddings);
#undef SAME_INT
#undef SAME_NUM
}

/* ---------------------------------------------------------------- rotary embedding */

void hfconfig_rope_inv_freq(const ModelConfig *c, double *inv_freq) {
    int dim = c->head_dim;
    for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)dim);
    if (c->rope_type == ROPE_LINEAR) {
        for (int i = 0; i < dim / 2; i++) inv_freq[i] /= c->rope_factor;
    } else if (c->rope_type == ROPE_LLAMA3) {
        /* transformers' _compute_llama3_parameters: long wavelengths are divided by factor, short
         * ones kept, the band between interpolated smoothly. */
        double factor = c->rope_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
        double old_len = (double)c->rope_original_max_position_embeddings;
        double low_freq_wavelen = old_len / lo, high_freq_wavelen = old_len / hi;
        for (int i = 0; i < dim / 2; i++) {
            double wavelen = 2 * M_PI / inv_freq[i];
            if (wavelen > low_freq_wavelen) {
                inv_freq[i] = inv_freq[i] / factor;
            } else if (!(wavelen < high_freq_wavelen)) {
                double smooth = (old_len / wavelen - lo) / (hi - lo);
                inv_freq[i] = (1 - smooth) * inv_freq[i] / factor + smooth * inv_freq[i];
            }
        }
    }
}

/* ---------------------------------------------------------------- tensors and parameters */

/* arch.h's table, as a checkpoint stores it: a norm or bias one-dimensional. */
int hfconfig_tensor_specs(const ModelConfig *c, HfTensorSpec *specs) {
    int n = arch_tensors(c, NULL);
    if (!specs) return n;
    ArchTensor *all = dam_malloc((size_t)n * sizeof *all, "architecture tensors");
    arch_tensors(c, all);
    for (int i = 0; i < n; i++) {
        HfTensorSpec *s = &specs[i];
        DamTensorKind kind = all[i].def->kind;
        snprintf(s->name, sizeof s->name, "%s", all[i].name);
        s->ndim = kind == DT_NORM || kind == DT_BIAS ? 1 : 2;
        s->shape[0] = s->ndim == 2 ? all[i].rows : all[i].cols;
        s->shape[1] = s->ndim == 2 ? all[i].cols : 0;
    }
    free(all);
    return n;
}

int64_t hfconfig_num_params(const ModelConfig *c) {
    int n = hfconfig_tensor_specs(c, NULL);
    HfTensorSpec *specs = dam_malloc((size_t)n * sizeof *specs, "tensor specs");
    hfconfig_tensor_specs(c, specs);
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += specs[i].shape[0] * (specs[i].ndim == 2 ? specs[i].shape[1] : 1);
    free(specs);
    return total;
}
