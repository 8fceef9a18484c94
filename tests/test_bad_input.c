/* test_bad_input.c — the bad-input matrix, through the real binary: `$DAM_BIN inspect --model DIR`.
 *
 * Each test builds its own directory in /tmp — a tiny valid Llama (written with st_write_file and
 * a config.json string) with one thing broken — and checks what a user sees: the process exited
 * normally (no signal), with status 1, and stderr is exactly one line containing "error:" and the
 * name of the bad file, tensor or field. A valid directory is inspected first, so that a binary
 * refusing everything cannot pass. The run config's refusals go through `$DAM_BIN --config FILE`
 * (test_config_*). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdint.h>
#include <sys/stat.h>

#include "hfconfig.h"
#include "safetensors.h"
#include "test_util.h"
#include "util.h"

/* V=16, d=8, F=12, L=1, H=2, KV=1 (head_dim 4): every tensor tiny. */
static const char *const tiny_config =
    "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n  \"vocab_size\": 16,\n"
    "  \"hidden_size\": 8,\n  \"intermediate_size\": 12,\n  \"num_hidden_layers\": 1,\n"
    "  \"num_attention_heads\": 2,\n  \"num_key_value_heads\": 1,\n  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_theta\": 10000.0,\n  \"tie_word_embeddings\": false,\n  \"hidden_act\": \"silu\"\n}\n";

typedef struct {
    const char *config;  /* config.json text (NULL: none written) */
    const char *skip;    /* tensor to leave out */
    const char *reshape; /* tensor whose first dimension is stored one too small */
    int no_weights;      /* write config.json only */
} TinyModel;

static char *write_text(const char *dir, const char *name, const char *text) {
    char *path = dam_path_join(dir, name);
    dam_write_file_atomic(path, text, strlen(text));
    return path;
}

/* Write a tiny model directory; the tensors follow config.json via hfconfig_tensor_specs. */
static void make_model_dir(const char *dir, const TinyModel *tm) {
    const char *config = tm->config ? tm->config : tiny_config;
    free(write_text(dir, "config.json", config));
    if (tm->no_weights) return;
    ModelConfig c;
    hfconfig_parse(&c, config, "tiny config");
    int n = hfconfig_tensor_specs(&c, NULL);
    HfTensorSpec *specs = malloc((size_t)n * sizeof *specs);
    hfconfig_tensor_specs(&c, specs);
    const char **names = malloc((size_t)n * sizeof *names);
    const int64_t **shapes = malloc((size_t)n * sizeof *shapes);
    const void **datas = malloc((size_t)n * sizeof *datas);
    dam_dtype *dtypes = malloc((size_t)n * sizeof *dtypes);
    int *ndims = malloc((size_t)n * sizeof *ndims);
    static const float values[4096];
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (tm->skip && strcmp(specs[i].name, tm->skip) == 0) continue;
        if (tm->reshape && strcmp(specs[i].name, tm->reshape) == 0) specs[i].shape[0]--;
        names[k] = specs[i].name, shapes[k] = specs[i].shape, datas[k] = values;
        dtypes[k] = DAM_BF16, ndims[k] = specs[i].ndim;
        k++;
    }
    char *path = dam_path_join(dir, "model.safetensors");
    st_write_file(path, k, names, dtypes, ndims, shapes, datas);
    free(path);
    free(specs), free(names), free(shapes), free(datas), free(dtypes), free(ndims);
}

/* A model.safetensors from a literal header and data_bytes bytes of data. */
static void write_raw_weights(const char *dir, const char *header, size_t data_bytes) {
    char *path = dam_path_join(dir, "model.safetensors");
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(header);
    for (int i = 0; i < 8; i++) fputc((int)((n >> (8 * i)) & 0xff), f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_bytes; i++) fputc(0, f);
    fclose(f);
    free(path);
}

static void run_inspect(TestRun *r, const char *dir1, const char *dir2) {
    char cmd[2048];
    if (dir2)
        snprintf(cmd, sizeof cmd, "%s inspect --model %s --model %s", test_dam_bin(), dir1, dir2);
    else
        snprintf(cmd, sizeof cmd, "%s inspect --model %s", test_dam_bin(), dir1);
    test_run(r, cmd);
}

/* The refusal contract: normal exit, status 1, one stderr line with "error:" and the names. */
static void assert_refused(const char *dir1, const char *dir2, const char *want1, const char *want2) {
    static TestRun r;
    run_inspect(&r, dir1, dir2);
    printf("  %s", r.err);
    assert_true(r.exited);
    assert_int_equal(r.status, 1);
    assert_int_equal(test_count_lines(r.err), 1);
    assert_non_null(strstr(r.err, "error:"));
    assert_non_null(strstr(r.err, want1));
    if (want2) assert_non_null(strstr(r.err, want2));
}

static char *fresh_model(const TinyModel *tm) {
    char *dir = test_tmpdir();
    make_model_dir(dir, tm);
    return dir;
}

static void done(char *dir) {
    dam_rm_rf(dir);
    free(dir);
}

static void test_valid_model_accepted(void **state) {
    (void)state;
    TinyModel tm = {0};
    char *a = fresh_model(&tm), *b = fresh_model(&tm);
    static TestRun r;
    run_inspect(&r, a, b);
    printf("%s%s", r.out, r.err);
    assert_true(r.exited);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.err, "");
    assert_non_null(strstr(r.out, "LlamaForCausalLM"));
    assert_non_null(strstr(r.out, "params         760")); /* 2*16*8 + 8 + 2*8 + 64+32+32+64 + 3*12*8 */
    assert_non_null(strstr(r.out, "BF16 12 tensor(s)"));
    done(a), done(b);
}

static void test_truncated_safetensors(void **state) {
    (void)state;
    TinyModel tm = {0};
    char *dir = fresh_model(&tm);
    char *path = dam_path_join(dir, "model.safetensors");
    struct stat st;
    stat(path, &st);
    assert_int_equal(truncate(path, st.st_size - 100), 0); /* the last tensors lose their bytes */
    assert_refused(dir, NULL, path, "end past the data section");
    assert_int_equal(truncate(path, 5), 0);
    assert_refused(dir, NULL, path, "is 5 bytes");
    free(path);
    done(dir);
}

static void test_header_length_past_end(void **state) {
    (void)state;
    TinyModel tm = {0};
    char *dir = fresh_model(&tm);
    char *path = dam_path_join(dir, "model.safetensors");
    FILE *f = fopen(path, "r+b");
    const uint8_t len[8] = {0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00}; /* 1 MiB */
    fwrite(len, 1, 8, f);
    fclose(f);
    assert_refused(dir, NULL, path, "header length 1048576 runs past the end");
    free(path);
    done(dir);
}

static void test_offsets_out_of_range(void **state) {
    (void)state;
    TinyModel tm = {.no_weights = 1};
    char *dir = fresh_model(&tm);
    write_raw_weights(
        dir, "{\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[8],\"data_offsets\":[100,116]}}", 64);
    assert_refused(dir, NULL,
                   "model.safetensors: tensor 'model.norm.weight': data_offsets [100, 116] end past",
                   "(64 bytes)");
    done(dir);
}

static void test_overlapping_offsets(void **state) {
    (void)state;
    TinyModel tm = {.no_weights = 1};
    char *dir = fresh_model(&tm);
    write_raw_weights(dir,
                      "{\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[8],\"data_offsets\":[0,16]},"
                      "\"model.layers.0.input_layernorm.weight\":{\"dtype\":\"BF16\",\"shape\":[8],"
                      "\"data_offsets\":[8,24]}}",
                      24);
    assert_refused(dir, NULL, "tensor 'model.layers.0.input_layernorm.weight'",
                   "overlap tensor 'model.norm.weight'");
    done(dir);
}

static void test_unknown_dtype(void **state) {
    (void)state;
    TinyModel tm = {.no_weights = 1};
    char *dir = fresh_model(&tm);
    write_raw_weights(
        dir, "{\"model.norm.weight\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8);
    assert_refused(dir, NULL, "tensor 'model.norm.weight'", "unknown dtype 'F8_E4M3'");
    write_raw_weights(
        dir, "{\"model.norm.weight\":{\"dtype\":\"C64\",\"shape\":[8],\"data_offsets\":[0,64]}}", 64);
    assert_refused(dir, NULL, "tensor 'model.norm.weight'", "unknown dtype 'C64'");
    done(dir);
}

static void test_missing_tensor(void **state) {
    (void)state;
    TinyModel tm = {.skip = "model.layers.0.mlp.up_proj.weight"};
    char *dir = fresh_model(&tm);
    assert_refused(dir, NULL, "tensor 'model.layers.0.mlp.up_proj.weight' is missing", dir);
    done(dir);
}

static void test_wrong_shape(void **state) {
    (void)state;
    TinyModel tm = {.reshape = "model.layers.0.self_attn.k_proj.weight"};
    char *dir = fresh_model(&tm);
    assert_refused(dir, NULL,
                   "model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has shape [3, 8]",
                   "config.json implies [4, 8]");
    done(dir);
}

static void test_malformed_config(void **state) {
    (void)state;
    TinyModel tm = {0};
    char *dir = fresh_model(&tm);
    char *cfg =
        write_text(dir, "config.json", "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 16,");
    assert_refused(dir, NULL, cfg, "malformed JSON");
    free(cfg);
    done(dir);
}

static void test_missing_required_field(void **state) {
    (void)state;
    TinyModel tm = {0};
    char *dir = fresh_model(&tm);
    char *cfg = write_text(dir, "config.json",
                           "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":16,\"hidden_size\":8,"
                           "\"num_hidden_layers\":1,\"num_attention_heads\":2}");
    assert_refused(dir, NULL, cfg, "missing required field 'intermediate_size'");
    free(cfg);
    done(dir);
}

static void test_unsupported_architecture(void **state) {
    (void)state;
    TinyModel tm = {0};
    char *dir = fresh_model(&tm);
    char *cfg = write_text(dir, "config.json",
                           "{\"architectures\":[\"GPT2LMHeadModel\"],\"vocab_size\":16,\"hidden_size\":8,"
                           "\"intermediate_size\":12,\"num_hidden_layers\":1,\"num_attention_heads\":2}");
    assert_refused(dir, NULL, cfg, "unsupported architecture GPT2LMHeadModel");
    free(cfg);
    done(dir);
}

static void test_pickle_only_directory(void **state) {
    (void)state;
    TinyModel tm = {.no_weights = 1};
    char *dir = fresh_model(&tm);
    free(write_text(dir, "pytorch_model.bin", "PK\003\004 not really a zip"));
    assert_refused(dir, NULL, "only pickle checkpoints (pytorch_model.bin)", "safetensors only");
    done(dir);
}

static void test_empty_directory(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    assert_refused(dir, NULL, dir, "empty directory");
    char *missing = dam_path_join(dir, "no_such_model");
    assert_refused(missing, NULL, missing, "does not exist");
    free(missing);
    done(dir);
}

static void test_index_names_absent_tensor(void **state) {
    (void)state;
    TinyModel tm = {0};
    char *dir = fresh_model(&tm);
    char *index = write_text(dir, "model.safetensors.index.json",
                             "{\"metadata\":{},\"weight_map\":{\"model.norm.weight\":\"model.safetensors\","
                             "\"model.extra.weight\":\"model.safetensors\"}}");
    assert_refused(dir, NULL, "tensor 'model.extra.weight' is mapped to", "which lacks it");
    free(index);
    done(dir);
}

static void test_sources_disagree(void **state) {
    (void)state;
    TinyModel tm = {0};
    char *a = fresh_model(&tm);
    /* a valid model on its own, with a wider MLP: its weights match its config, not a's */
    char wider[1024];
    const char *at = strstr(tiny_config, "\"intermediate_size\": 12");
    snprintf(wider, sizeof wider, "%.*s\"intermediate_size\": 16%s", (int)(at - tiny_config), tiny_config,
             at + strlen("\"intermediate_size\": 12"));
    TinyModel tb = {.config = wider};
    char *b = fresh_model(&tb);
    assert_refused(a, b, "differ in config field 'intermediate_size': 12 vs 16", a);
    assert_refused(a, b, b, NULL);
    done(a), done(b);
}

/* Run configs (dam_dist --config FILE): refused while the file is read, before any model is opened,
 * with the field's full path, the allowed values, or the line and column of a syntax error. */
static void assert_config_refused(const char *text, const char *want1, const char *want2) {
    char *dir = test_tmpdir();
    char *cfg = write_text(dir, "run.json", text);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s --config %s --out %s/out", test_dam_bin(), cfg, dir);
    static TestRun r;
    test_run(&r, cmd);
    printf("  %s", r.err);
    assert_true(r.exited);
    assert_int_equal(r.status, 1);
    assert_int_equal(test_count_lines(r.err), 1);
    assert_non_null(strstr(r.err, "error:"));
    assert_non_null(strstr(r.err, cfg));
    assert_non_null(strstr(r.err, want1));
    if (want2) assert_non_null(strstr(r.err, want2));
    free(cfg);
    done(dir);
}

static void test_config_missing_dataset(void **state) {
    (void)state;
    assert_config_refused("{\"models\": [{\"path\": \"a\", \"dataset\": \"a.h5\"}, {\"path\": \"b\"}]}",
                          "models[1].dataset: missing", "dam_dist prepare made for models[1] 'b'");
    assert_config_refused("{\"models\": [{\"dataset\": \"a.h5\", \"name\": \"ja\"}]}",
                          "models[0].path: missing", "models[0] 'ja'");
    assert_config_refused("{\"models\": [{\"path\": \"a\", \"dataset\": 3}]}", "field 'models[0].dataset'",
                          "expected a string");
}

static void test_config_field_paths(void **state) {
    (void)state;
    const char *m = "{\"models\": [{\"path\": \"a\", \"dataset\": \"a.h5\"}], ";
    char text[512];
    snprintf(text, sizeof text, "%s\"train\": {\"lr\": \"big\"}}", m);
    assert_config_refused(text, "field 'train.lr': expected a number", NULL);
    snprintf(text, sizeof text, "%s\"train\": {\"batch_size\": 0}}", m);
    assert_config_refused(text, "field 'train.batch_size': expected >= 1, got 0", NULL);
    snprintf(text, sizeof text, "%s\"loss\": {\"l1\": -1}}", m);
    assert_config_refused(text, "field 'loss.l1'", ">= 0");
    snprintf(text, sizeof text, "%s\"parallel\": {\"dp\": \"2\"}}", m);
    assert_config_refused(text, "field 'parallel.dp': expected an integer", NULL);
    snprintf(text, sizeof text, "%s\"merge\": {\"norms\": 1}}", m);
    assert_config_refused(text, "field 'merge.norms': expected true or false", NULL);
}

static void test_config_allowed_values(void **state) {
    (void)state;
    const char *m = "{\"models\": [{\"path\": \"a\", \"dataset\": \"a.h5\"}], ";
    char text[512];
    snprintf(text, sizeof text, "%s\"merge\": {\"nonlinearity\": \"x\"}}", m);
    assert_config_refused(text, "field 'merge.nonlinearity': unknown value 'x'",
                          "(allowed: \"none\", \"tanh\", \"sigmoid\", \"relu\")");
    snprintf(text, sizeof text, "%s\"parallel\": {\"device\": \"gpu\"}}", m);
    assert_config_refused(text, "field 'parallel.device': unknown value 'gpu'", "\"cpu\", \"cuda\"");
    snprintf(text, sizeof text, "%s\"parallel\": {\"transport\": \"tcp\"}}", m);
    assert_config_refused(text, "field 'parallel.transport'", "\"auto\", \"mpi\", \"nccl\"");
    snprintf(text, sizeof text, "%s\"parallel\": {\"keep_activations\": \"lots\"}}", m);
    assert_config_refused(text, "field 'parallel.keep_activations'", "\"256MB\" or \"0\"");
}

static void test_config_malformed_line_column(void **state) {
    (void)state;
    /* a missing comma: cJSON stops at the '"' of "dataset" on line 2, column 29 */
    assert_config_refused("{\"models\": [\n  {\"path\": \"a\", \"name\": \"x\" \"dataset\": \"a.h5\"}]}\n",
                          "run.json:2:29: malformed JSON at line 2, column 29", NULL);
    assert_config_refused("{\"models\": [\n  {\"path\": \"a\"", "run.json:2:", "ends inside an object");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_model_accepted),
        cmocka_unit_test(test_truncated_safetensors),
        cmocka_unit_test(test_header_length_past_end),
        cmocka_unit_test(test_offsets_out_of_range),
        cmocka_unit_test(test_overlapping_offsets),
        cmocka_unit_test(test_unknown_dtype),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_malformed_config),
        cmocka_unit_test(test_missing_required_field),
        cmocka_unit_test(test_unsupported_architecture),
        cmocka_unit_test(test_pickle_only_directory),
        cmocka_unit_test(test_empty_directory),
        cmocka_unit_test(test_index_names_absent_tensor),
        cmocka_unit_test(test_sources_disagree),
        cmocka_unit_test(test_config_missing_dataset),
        cmocka_unit_test(test_config_field_paths),
        cmocka_unit_test(test_config_allowed_values),
        cmocka_unit_test(test_config_malformed_line_column),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
