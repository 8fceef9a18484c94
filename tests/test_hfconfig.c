/* test_hfconfig.c — config.json parsing against the published configs of real model families
 * (tests/fixtures/configs, copied from their Hugging Face repositories):
 *   - parameter counts equal the published model sizes (computed from the shapes by hand, see the
 *     comments), and the tensor list has the right names and shapes;
 *   - defaults of absent / null fields as in transformers 5 (LlamaConfig, MistralConfig, Qwen2Config,
 *     Qwen3Config: head_dim 128 when absent; sliding window and layer_types as Qwen3Config's
 *     __post_init__ and Qwen3Attention read them); mixture-of-experts families refused;
 *   - rope: rope_scaling + rope_theta (old files) and rope_parameters (transformers 5) agree, and the
 *     inverse frequencies match values printed by transformers' _compute_llama3_parameters and
 *     _compute_linear_scaling_rope_parameters (float32 there, so compared to 1e-6 relative);
 *   - every refusal names the file and the field; hfconfig_check_same names field, values, models. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <fcntl.h>

#include "hfconfig.h"
#include "test_util.h"
#include "util.h"

static void parse_text(const void *json) {
    ModelConfig c;
    hfconfig_parse(&c, json, "cfg.json");
}

static void assert_refused(const char *json, const char *want1, const char *want2) {
    char msg[1024];
    int failed = test_fails_in_child(parse_text, json, msg, sizeof msg);
    printf("  refused: %s\n", msg);
    assert_true(failed);
    assert_non_null(strstr(msg, "cfg.json"));
    assert_non_null(strstr(msg, want1));
    if (want2) assert_non_null(strstr(msg, want2));
}

static void load_fixture(ModelConfig *c, const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "configs/%s.json", name);
    char *path = test_fixture(rel);
    hfconfig_load(c, path);
    free(path);
}

/* ---------------------------------------------------------------- reference configs */

static void test_reference_param_counts(void **state) {
    (void)state;
    /* e.g. Llama-3-70B: embed 128256*8192 = 1,050,673,152, twice (untied); per layer q,o 8192^2,
     * k,v 1024*8192, MLP 3*28672*8192, norms 2*8192 -> 855,654,400 * 80; final norm 8192. */
    static const struct {
        const char *name;
        int64_t params;
    } want[] = {
        {"llama-3-70b", 70553706496LL},
        {"llama-3.1-70b", 70553706496LL},
        {"llama-3.1-8b", 8030261248LL},
        {"llama-3.2-1b", 1235814400LL},
        {"mistral-7b-v0.1", 7241732096LL},
        {"qwen2-7b", 7615616512LL},
        /* Qwen3-0.6B (tied): embed 151936*1024; per layer q,o 2048*1024, k,v 1024*1024, MLP
         * 3*3072*1024, norms 2*1024 + q/k norms 2*128 -> 15,730,944 * 28; final norm 1024.
         * Qwen3-8B (untied): embed 151936*4096 twice; per layer q,o 4096^2, k,v 1024*4096, MLP
         * 3*12288*4096, norms 2*4096 + 2*128 -> 192,946,432 * 36; final norm 4096. */
        {"qwen3-0.6b", 596049920LL},
        {"qwen3-8b", 8190735360LL},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        ModelConfig c;
        load_fixture(&c, want[i].name);
        printf("  %-16s %lld parameters\n", want[i].name, (long long)hfconfig_num_params(&c));
        assert_int_equal(hfconfig_num_params(&c), want[i].params);
    }
}

static void test_reference_fields(void **state) {
    (void)state;
    ModelConfig c;
    load_fixture(&c, "llama-3.1-8b");
    assert_int_equal(c.arch, ARCH_LLAMA);
    assert_string_equal(c.architecture, "LlamaForCausalLM");
    assert_int_equal(c.num_key_value_heads, 8);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.rope_type, ROPE_LLAMA3);
    assert_true(c.rope_theta == 500000.0 && c.rope_factor == 8.0);
    assert_true(c.rope_low_freq_factor == 1.0 && c.rope_high_freq_factor == 4.0);
    assert_int_equal(c.rope_original_max_position_embeddings, 8192);
    assert_int_equal(c.eos_token_id, 128001); /* a list: the first */
    assert_int_equal(c.bos_token_id, 128000);
    assert_int_equal(c.pad_token_id, -1);
    assert_true(c.rms_norm_eps == 1e-5f);
    assert_false(c.attention_bias || c.o_bias || c.tie_word_embeddings || c.sliding_window);

    load_fixture(&c, "llama-3.2-1b");
    assert_true(c.tie_word_embeddings);
    assert_int_equal(c.head_dim, 64);

    load_fixture(&c, "mistral-7b-v0.1");
    assert_int_equal(c.arch, ARCH_MISTRAL);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.rope_type, ROPE_DEFAULT);
    assert_false(c.attention_bias);

    load_fixture(&c, "qwen2-7b");
    assert_int_equal(c.arch, ARCH_QWEN2);
    assert_true(c.attention_bias); /* not written in the config: always on for Qwen2 */
    assert_false(c.o_bias);
    assert_int_equal(c.sliding_window, 0); /* use_sliding_window false */
    assert_true(c.rope_theta == 1000000.0);
    assert_int_equal(c.max_position_embeddings, 131072);

    load_fixture(&c, "qwen3-0.6b");
    assert_int_equal(c.arch, ARCH_QWEN3);
    assert_true(c.qk_norm);
    assert_int_equal(c.head_dim, 128); /* explicit: hidden_size / heads would be 64 */
    assert_true(c.tie_word_embeddings);
    assert_false(c.attention_bias || c.o_bias || c.mlp_bias);
    assert_int_equal(c.sliding_window, 0); /* use_sliding_window false, max_window_layers 28 */
    assert_int_equal(c.max_window_layers, 0);
    assert_true(c.rope_theta == 1000000.0 && c.rope_type == ROPE_DEFAULT);
    assert_true(c.rms_norm_eps == 1e-6f);

    load_fixture(&c, "qwen3-8b");
    assert_int_equal(c.head_dim, 128);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.num_key_value_heads, 8);
}

static void test_tensor_specs(void **state) {
    (void)state;
    ModelConfig c;
    load_fixture(&c, "qwen2-7b");
    int n = hfconfig_tensor_specs(&c, NULL);
    assert_int_equal(n, 1 + 28 * 12 + 1 + 1); /* 9 weights + 3 biases per layer */
    HfTensorSpec *s = malloc((size_t)n * sizeof *s);
    assert_int_equal(hfconfig_tensor_specs(&c, s), n);
    assert_string_equal(s[0].name, "model.embed_tokens.weight");
    assert_true(s[0].ndim == 2 && s[0].shape[0] == 152064 && s[0].shape[1] == 3584);
    assert_string_equal(s[3].name, "model.layers.0.self_attn.k_proj.weight");
    assert_true(s[3].shape[0] == 512 && s[3].shape[1] == 3584);
    assert_string_equal(s[5].name, "model.layers.0.self_attn.q_proj.bias");
    assert_true(s[5].ndim == 1 && s[5].shape[0] == 3584);
    assert_string_equal(s[n - 1].name, "lm_head.weight");
    free(s);

    load_fixture(&c, "qwen3-8b"); /* + q_norm, k_norm [head_dim] after v_proj */
    n = hfconfig_tensor_specs(&c, NULL);
    assert_int_equal(n, 1 + 36 * 11 + 1 + 1);
    s = malloc((size_t)n * sizeof *s);
    assert_int_equal(hfconfig_tensor_specs(&c, s), n);
    assert_string_equal(s[5].name, "model.layers.0.self_attn.q_norm.weight");
    assert_true(s[5].ndim == 1 && s[5].shape[0] == 128);
    assert_string_equal(s[6].name, "model.layers.0.self_attn.k_norm.weight");
    assert_string_equal(s[7].name, "model.layers.0.self_attn.o_proj.weight");
    assert_true(s[7].shape[0] == 4096 && s[7].shape[1] == 4096);
    free(s);

    load_fixture(&c, "llama-3.2-1b"); /* tied: no lm_head */
    n = hfconfig_tensor_specs(&c, NULL);
    assert_int_equal(n, 1 + 16 * 9 + 1);

    hfconfig_parse(&c,
                   "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
                   "\"intermediate_size\":12,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                   "\"attention_bias\":true,\"mlp_bias\":true}",
                   "cfg.json");
    n = hfconfig_tensor_specs(&c, NULL);
    assert_int_equal(n, 1 + (9 + 4 + 3) + 1 + 1);
    /* 10*8*2 + 8 + layer: norms 16, q/k/v/o 4*64 + biases 4*8, mlp 3*96 + biases 12+12+8 */
    assert_int_equal(hfconfig_num_params(&c), 160 + 8 + 16 + 256 + 32 + 288 + 32);
}

/* ---------------------------------------------------------------- defaults */

#define MIN_FIELDS                                                                                           \
    "\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":96,\"num_hidden_layers\":2,"                \
    "\"num_attention_heads\":8"

static void test_llama_defaults(void **state) {
    (void)state;
    ModelConfig c;
    hfconfig_parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"]," MIN_FIELDS "}", "cfg.json");
    assert_int_equal(c.num_key_value_heads, 8);
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_true(c.rms_norm_eps == 1e-6f);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.rope_type, ROPE_DEFAULT);
    assert_false(c.tie_word_embeddings || c.attention_bias || c.mlp_bias || c.sliding_window);
    assert_string_equal(c.hidden_act, "silu");
    assert_int_equal(c.eos_token_id, -1);
    hfconfig_parse(&c,
                   "{\"architectures\":[\"LlamaForCausalLM\"]," MIN_FIELDS
                   ",\"head_dim\":null,\"num_key_value_heads\":null,\"rope_scaling\":null}",
                   "cfg.json");
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.num_key_value_heads, 8);
    hfconfig_parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"]," MIN_FIELDS ",\"head_dim\":16}",
                   "cfg.json");
    assert_int_equal(c.head_dim, 16); /* explicit head_dim need not be hidden/heads */
}

static void test_mistral_defaults(void **state) {
    (void)state;
    ModelConfig c;
    hfconfig_parse(&c, "{\"architectures\":[\"MistralForCausalLM\"]," MIN_FIELDS "}", "cfg.json");
    assert_int_equal(c.num_key_value_heads, 8); /* MistralConfig's default when absent */
    assert_int_equal(c.max_position_embeddings, 4096 * 32);
    assert_int_equal(c.sliding_window, 4096);
    hfconfig_parse(&c,
                   "{\"architectures\":[\"MistralForCausalLM\"]," MIN_FIELDS
                   ",\"sliding_window\":null,\"num_key_value_heads\":null}",
                   "cfg.json");
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.num_key_value_heads, 8);
}

static void test_qwen2_defaults(void **state) {
    (void)state;
    ModelConfig c;
    const char *base = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":100,\"hidden_size\":128,"
                       "\"intermediate_size\":96,\"num_hidden_layers\":2,\"num_attention_heads\":32";
    char buf[512];
    snprintf(buf, sizeof buf, "%s}", base);
    hfconfig_parse(&c, buf, "cfg.json");
    assert_int_equal(c.num_key_value_heads, 32); /* Qwen2Config's default when absent */
    assert_int_equal(c.max_position_embeddings, 32768);
    assert_int_equal(c.sliding_window, 0);
    assert_true(c.attention_bias);
    snprintf(buf, sizeof buf, "%s,\"use_sliding_window\":true}", base);
    hfconfig_parse(&c, buf, "cfg.json");
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.max_window_layers, 28);
    snprintf(buf, sizeof buf,
             "%s,\"use_sliding_window\":true,\"sliding_window\":512,\"max_window_layers\":1}", base);
    hfconfig_parse(&c, buf, "cfg.json");
    assert_int_equal(c.sliding_window, 512);
    assert_int_equal(c.max_window_layers, 1);
}

#define QWEN3_HEAD "{\"architectures\":[\"Qwen3ForCausalLM\"],"
#define QWEN3_KV4 QWEN3_HEAD "\"num_key_value_heads\":4," /* Qwen3's default 32 does not divide 8 heads */

static void test_qwen3_defaults(void **state) {
    (void)state;
    ModelConfig c;
    hfconfig_parse(&c,
                   QWEN3_HEAD "\"vocab_size\":100,\"hidden_size\":128,\"intermediate_size\":96,"
                              "\"num_hidden_layers\":2,\"num_attention_heads\":32}",
                   "cfg.json");
    assert_int_equal(c.head_dim, 128); /* Qwen3Config's default, not hidden_size / heads = 4 */
    assert_int_equal(c.num_key_value_heads, 32);
    assert_int_equal(c.max_position_embeddings, 32768);
    assert_true(c.qk_norm);
    assert_false(c.attention_bias || c.o_bias || c.tie_word_embeddings || c.sliding_window);
    hfconfig_parse(&c, QWEN3_HEAD MIN_FIELDS ",\"head_dim\":null,\"num_key_value_heads\":null}", "cfg.json");
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.num_key_value_heads, 8);
    hfconfig_parse(&c, QWEN3_KV4 MIN_FIELDS ",\"attention_bias\":true}", "cfg.json");
    assert_true(c.attention_bias && c.o_bias); /* Qwen3Attention: q, k, v and o */
    /* the window: only with use_sliding_window; then the Qwen2 rule, or layer_types */
    hfconfig_parse(&c, QWEN3_KV4 MIN_FIELDS ",\"sliding_window\":512,\"max_window_layers\":1}", "cfg.json");
    assert_int_equal(c.sliding_window, 0);
    hfconfig_parse(&c,
                   QWEN3_KV4 MIN_FIELDS ",\"sliding_window\":512,\"layer_types\":[\"full_attention\","
                                        "\"sliding_attention\"]}",
                   "cfg.json");
    assert_int_equal(c.sliding_window, 0); /* the types say sliding, but sliding_window is None */
    hfconfig_parse(&c, QWEN3_KV4 MIN_FIELDS ",\"layer_types\":[\"sliding_attention\",\"full_attention\"]}",
                   "cfg.json");
    assert_int_equal(c.sliding_window, 0); /* any order: nothing slides */
    hfconfig_parse(&c,
                   QWEN3_KV4 MIN_FIELDS ",\"use_sliding_window\":true,\"sliding_window\":512,"
                                        "\"max_window_layers\":1}",
                   "cfg.json");
    assert_int_equal(c.sliding_window, 512);
    assert_int_equal(c.max_window_layers, 1);
    hfconfig_parse(&c, QWEN3_KV4 MIN_FIELDS ",\"use_sliding_window\":true}", "cfg.json");
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.max_window_layers, 28); /* >= the 2 layers: none slides, as in transformers */
    hfconfig_parse(&c,
                   QWEN3_KV4 MIN_FIELDS ",\"use_sliding_window\":true,\"sliding_window\":512,"
                                        "\"max_window_layers\":1,\"layer_types\":[\"sliding_attention\","
                                        "\"sliding_attention\"]}",
                   "cfg.json");
    assert_int_equal(c.sliding_window, 512); /* layer_types, when written, win over max_window_layers */
    assert_int_equal(c.max_window_layers, 0);
    hfconfig_parse(&c,
                   QWEN3_KV4 MIN_FIELDS ",\"use_sliding_window\":true,\"sliding_window\":512,"
                                        "\"layer_types\":[\"full_attention\",\"full_attention\"]}",
                   "cfg.json");
    assert_int_equal(c.sliding_window, 0);
}

/* ---------------------------------------------------------------- rope */

static void test_rope_formats_agree(void **state) {
    (void)state;
    const char *old_style =
        "{\"architectures\":[\"LlamaForCausalLM\"]," MIN_FIELDS
        ",\"rope_theta\":500000.0,\"rope_scaling\":{\"type\":\"llama3\",\"factor\":8.0,"
        "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}";
    const char *new_style =
        "{\"architectures\":[\"LlamaForCausalLM\"]," MIN_FIELDS
        ",\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":500000.0,\"factor\":8.0,"
        "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}";
    ModelConfig a, b;
    hfconfig_parse(&a, old_style, "old.json");
    hfconfig_parse(&b, new_style, "new.json");
    hfconfig_check_same(&a, "old", &b, "new");
    assert_int_equal(a.rope_type, ROPE_LLAMA3);
    assert_true(b.rope_theta == 500000.0);
    /* original_max_position_embeddings falls back to max_position_embeddings, as in transformers */
    hfconfig_parse(
        &a,
        "{\"architectures\":[\"LlamaForCausalLM\"]," MIN_FIELDS
        ",\"max_position_embeddings\":4096,\"rope_parameters\":{\"rope_type\":\"llama3\",\"factor\":8,"
        "\"low_freq_factor\":1,\"high_freq_factor\":4}}",
        "cfg.json");
    assert_int_equal(a.rope_original_max_position_embeddings, 4096);
    assert_true(a.rope_theta == 10000.0);
    /* rope_parameters of type default just carries the theta */
    hfconfig_parse(&a,
                   "{\"architectures\":[\"Qwen2ForCausalLM\"],\"num_key_value_heads\":8," MIN_FIELDS
                   ",\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1000000.0}}",
                   "cfg.json");
    assert_int_equal(a.rope_type, ROPE_DEFAULT);
    assert_true(a.rope_theta == 1000000.0);
}

static void check_inv_freq(const double *got, const int *idx, const double *want, int n) {
    for (int i = 0; i < n; i++) {
        double rel = fabs(got[idx[i]] - want[i]) / want[i];
        printf("  inv_freq[%2d] %.17g vs transformers %.17g (rel %.1e)\n", idx[i], got[idx[i]], want[i], rel);
        assert_true(rel < 1e-6);
    }
}

static void test_rope_inv_freq_llama3(void **state) {
    (void)state;
    ModelConfig c;
    load_fixture(&c, "llama-3.1-8b");
    double inv[64];
    hfconfig_rope_inv_freq(&c, inv);
    /* printed by transformers 5.24 ROPE_INIT_FUNCTIONS["llama3"] for this config: indices 0-28 lie
     * in the high-frequency band (unchanged), 29-31 in the smoothed band, 32- in the low band (/8) */
    static const int idx[] = {0, 1, 20, 28, 29, 30, 31, 32, 35, 40, 63};
    static const double want[] = {1.0,
                                  0.8146172165870667,
                                  0.016560440883040428,
                                  0.0032114461064338684,
                                  0.0021665706299245358,
                                  0.0013718936825171113,
                                  0.0008567514596506953,
                                  0.0005248460220173001,
                                  9.556212171446532e-05,
                                  3.428102354519069e-05,
                                  3.068925877869333e-07};
    check_inv_freq(inv, idx, want, 11);
}

static void test_rope_inv_freq_default_and_linear(void **state) {
    (void)state;
    ModelConfig c;
    hfconfig_parse(&c,
                   "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":32,"
                   "\"intermediate_size\":12,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                   "\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":4.0}}",
                   "cfg.json");
    double inv[4];
    hfconfig_rope_inv_freq(&c, inv);
    static const int idx[] = {0, 1, 2, 3};
    static const double linear[] = {0.25, 0.02500000037252903, 0.0024999999441206455, 0.0002500000118743628};
    check_inv_freq(inv, idx, linear, 4);
    c.rope_type = ROPE_DEFAULT;
    hfconfig_rope_inv_freq(&c, inv);
    for (int i = 0; i < 4; i++) assert_true(inv[i] == 1.0 / pow(10000.0, (2.0 * i) / 8.0));
}

/* ---------------------------------------------------------------- refusals */

#define LLAMA_HEAD "{\"architectures\":[\"LlamaForCausalLM\"],"

static void test_refusals(void **state) {
    (void)state;
    assert_refused("{\"architectures\":[\"LlamaForCausalLM\"", "malformed JSON", NULL);
    assert_refused("[]", "expected a JSON object", NULL);
    assert_refused("{\"architectures\":[\"GPT2LMHeadModel\"]," MIN_FIELDS "}",
                   "unsupported architecture GPT2LMHeadModel", "architectures");
    assert_refused("{" MIN_FIELDS "}", "'architectures'", NULL);
    const char *moe[] = {"Qwen3MoeForCausalLM", "MixtralForCausalLM", "Qwen2MoeForCausalLM"};
    for (int i = 0; i < 3; i++) {
        char json[512];
        snprintf(json, sizeof json, "{\"architectures\":[\"%s\"]," MIN_FIELDS "}", moe[i]);
        assert_refused(json, moe[i], "is a mixture-of-experts model, which dam_dist does not merge");
    }
    assert_refused(QWEN3_KV4 MIN_FIELDS ",\"layer_types\":[\"full_attention\"]}", "'layer_types'",
                   "one per layer");
    assert_refused(QWEN3_KV4 MIN_FIELDS ",\"layer_types\":[\"full_attention\",\"linear_attention\"]}",
                   "'layer_types'", "entry 1");
    assert_refused(QWEN3_KV4 MIN_FIELDS ",\"layer_types\":[\"full_attention\",3]}", "'layer_types'",
                   "entry 1");
    assert_refused(QWEN3_KV4 MIN_FIELDS ",\"use_sliding_window\":true,\"layer_types\":[\"sliding_attention\","
                                        "\"full_attention\"]}",
                   "'layer_types'", "only in the last layers");
    assert_refused("{\"architectures\":\"LlamaForCausalLM\"," MIN_FIELDS "}", "'architectures'", "list");
    assert_refused(LLAMA_HEAD "\"vocab_size\":100,\"intermediate_size\":96,\"num_hidden_layers\":2,"
                              "\"num_attention_heads\":8}",
                   "missing required field 'hidden_size'", NULL);
    assert_refused(LLAMA_HEAD "\"vocab_size\":100,\"hidden_size\":\"64\",\"intermediate_size\":96,"
                              "\"num_hidden_layers\":2,\"num_attention_heads\":8}",
                   "field 'hidden_size': expected a number", NULL);
    assert_refused(LLAMA_HEAD "\"vocab_size\":100,\"hidden_size\":64.5,\"intermediate_size\":96,"
                              "\"num_hidden_layers\":2,\"num_attention_heads\":8}",
                   "field 'hidden_size': expected an integer", NULL);
    assert_refused(LLAMA_HEAD "\"vocab_size\":0,\"hidden_size\":64,\"intermediate_size\":96,"
                              "\"num_hidden_layers\":2,\"num_attention_heads\":8}",
                   "'vocab_size'", "positive");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"num_key_value_heads\":3}", "'num_key_value_heads'",
                   "does not divide");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"head_dim\":7}", "'head_dim'", "even");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"hidden_act\":\"gelu\"}", "'hidden_act'", "gelu");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
                   "unsupported rope type 'yarn'", "rope_scaling.rope_type");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"rope_parameters\":{\"rope_type\":\"dynamic\",\"factor\":4}}",
                   "unsupported rope type 'dynamic'", "rope_parameters");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}",
                   "'rope_scaling.low_freq_factor'", NULL);
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"rope_scaling\":{\"rope_type\":\"linear\"}}",
                   "'rope_scaling.factor'", NULL);
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"rope_scaling\":\"linear\"}", "'rope_scaling'", "object");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"rope_theta\":-1}", "'rope_theta'", "positive");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"rms_norm_eps\":0}", "'rms_norm_eps'", "positive");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"tie_word_embeddings\":1}", "'tie_word_embeddings'",
                   "true or false");
    assert_refused(LLAMA_HEAD MIN_FIELDS ",\"eos_token_id\":\"</s>\"}", "'eos_token_id'", NULL);
    assert_refused(LLAMA_HEAD MIN_FIELDS
                   ",\"rope_parameters\":{\"rope_type\":\"default\",\"partial_rotary_factor\":0.5}}",
                   "partial_rotary_factor", NULL);
}

static void load_missing(const void *path) {
    ModelConfig c;
    hfconfig_load(&c, path);
}

static void test_missing_file(void **state) {
    (void)state;
    char msg[1024];
    assert_true(test_fails_in_child(load_missing, "/nonexistent/config.json", msg, sizeof msg));
    assert_non_null(strstr(msg, "/nonexistent/config.json"));
}

/* ---------------------------------------------------------------- check_same */

static const char *g_pair[2];

static void check_pair(const void *unused) {
    (void)unused;
    ModelConfig a, b;
    hfconfig_parse(&a, g_pair[0], "a.json");
    hfconfig_parse(&b, g_pair[1], "b.json");
    hfconfig_check_same(&a, "models/a", &b, "models/b");
}

static void test_check_same(void **state) {
    (void)state;
    char msg[1024];
    g_pair[0] = LLAMA_HEAD MIN_FIELDS "}";
    g_pair[1] = LLAMA_HEAD MIN_FIELDS ",\"bos_token_id\":5,\"max_position_embeddings\":4096}";
    assert_false(
        test_fails_in_child(check_pair, NULL, msg, sizeof msg)); /* token ids and context length may differ */
    g_pair[1] = LLAMA_HEAD "\"vocab_size\":100,\"hidden_size\":128,\"intermediate_size\":96,"
                           "\"num_hidden_layers\":2,\"num_attention_heads\":8}";
    assert_true(test_fails_in_child(check_pair, NULL, msg, sizeof msg));
    printf("  refused: %s\n", msg);
    assert_non_null(strstr(msg, "models/a and models/b differ in config field 'hidden_size': 64 vs 128"));
    g_pair[1] = "{\"architectures\":[\"MistralForCausalLM\"]," MIN_FIELDS "}";
    assert_true(test_fails_in_child(check_pair, NULL, msg, sizeof msg));
    assert_non_null(strstr(msg, "LlamaForCausalLM vs MistralForCausalLM"));
    g_pair[1] = LLAMA_HEAD MIN_FIELDS ",\"rope_theta\":500000}";
    assert_true(test_fails_in_child(check_pair, NULL, msg, sizeof msg));
    assert_non_null(strstr(msg, "'rope_theta': 10000 vs 500000"));
    g_pair[1] = LLAMA_HEAD MIN_FIELDS ",\"tie_word_embeddings\":true}";
    assert_true(test_fails_in_child(check_pair, NULL, msg, sizeof msg));
    assert_non_null(strstr(msg, "'tie_word_embeddings'"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_param_counts),
        cmocka_unit_test(test_reference_fields),
        cmocka_unit_test(test_tensor_specs),
        cmocka_unit_test(test_llama_defaults),
        cmocka_unit_test(test_mistral_defaults),
        cmocka_unit_test(test_qwen2_defaults),
        cmocka_unit_test(test_qwen3_defaults),
        cmocka_unit_test(test_rope_formats_agree),
        cmocka_unit_test(test_rope_inv_freq_llama3),
        cmocka_unit_test(test_rope_inv_freq_default_and_linear),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_check_same),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
