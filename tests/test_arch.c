/* test_arch.c — the architecture tables of src/formats/arch.h against what they describe:
 *   - names and shapes: for each small model that transformers made (tests/fixtures/models,
 *     tests/fixtures/dam: Llama tied and untied, Mistral, Qwen2 with its q/k/v biases, Qwen3 with its
 *     q/k norms and explicit head_dim), the table's
 *     tensors are exactly those of its model.safetensors: every tensor in the file accounted for
 *     with its shape, none extra, and hfconfig_tensor_specs lists the same;
 *   - the tensor-parallel split follows Megatron, written here from the layer names: q, k, v, gate,
 *     up (and their biases), the embedding and lm_head split their output rows; o_proj and
 *     down_proj their input columns; norms and the o_proj bias stay whole; Qwen3's q_norm and k_norm
 *     stay whole with partial gradients (transformers' replicated_with_grad_allreduce);
 *   - the shares of tp ranks (arch_share) tile each split tensor and its coefficients exactly once,
 *     and a whole tensor is whole on every rank;
 *   - pipeline stages hold every tensor once, a tied embedding on the first and the last stage. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "arch.h"
#include "hfconfig.h"
#include "model.h"
#include "safetensors.h"
#include "test_util.h"
#include "util.h"

static const char *const fixture_models[] = {
    "models/llama_gqa_tied", "models/llama_untied_bf16", "models/mistral_sw",
    "models/qwen2_bias",     "models/qwen2_sw",          "dam/llama3src/m0",
    "dam/qwen2base/base",    "models/qwen3_tied",        "dam/qwen3src/m0",
};
#define N_MODELS (sizeof fixture_models / sizeof *fixture_models)

/* The config of a fixture model and its table (heap). */
static ArchTensor *load_model(const char *rel, ModelConfig *c, int *n, char **dir) {
    *dir = test_fixture(rel);
    char *cfg = dam_path_join(*dir, "config.json");
    hfconfig_load(c, cfg);
    free(cfg);
    *n = arch_tensors(c, NULL);
    ArchTensor *t = malloc((size_t)*n * sizeof *t);
    assert_int_equal(arch_tensors(c, t), *n);
    return t;
}

static int one_d(const ArchTensor *t) { return t->def->kind == DT_NORM || t->def->kind == DT_BIAS; }

static void test_tables_match_checkpoints(void **state) {
    (void)state;
    for (size_t i = 0; i < N_MODELS; i++) {
        ModelConfig c;
        int n;
        char *dir;
        ArchTensor *t = load_model(fixture_models[i], &c, &n, &dir);
        StModel st;
        st_model_open(&st, dir);
        printf("  %-24s %s: %d tensors in the table, %d in the file\n", fixture_models[i], c.architecture, n,
               st.n_tensors);
        for (int k = 0; k < n; k++) {
            const StTensor *x = st_model_find(&st, t[k].name);
            if (!x) fail_msg("%s: the table's %s is not in the file", dir, t[k].name);
            int64_t want[2] = {one_d(&t[k]) ? t[k].cols : t[k].rows, t[k].cols};
            assert_int_equal(x->ndim, one_d(&t[k]) ? 1 : 2);
            for (int d = 0; d < x->ndim; d++)
                if (x->shape[d] != want[d])
                    fail_msg("%s: %s dimension %d is %lld, the table says %lld", dir, t[k].name, d,
                             (long long)x->shape[d], (long long)want[d]);
        }
        assert_int_equal(st.n_tensors, n); /* names are unique: all found and as many means no extra */
        HfTensorSpec *s = malloc((size_t)n * sizeof *s);
        assert_int_equal(hfconfig_tensor_specs(&c, s), n);
        for (int k = 0; k < n; k++) {
            const StTensor *x = st_model_find(&st, s[k].name);
            assert_non_null(x);
            assert_int_equal(s[k].ndim, x->ndim);
            for (int d = 0; d < x->ndim; d++) assert_int_equal(s[k].shape[d], x->shape[d]);
        }
        free(s);
        st_model_close(&st);
        free(t), free(dir);
    }
}

static int ends_with(const char *s, const char *tail) {
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

/* Megatron's split of a Llama-family tensor, from its name alone. */
static TensorSplit megatron_split(const char *name) {
    static const char *const column_parallel[] = {
        "q_proj.weight",  "k_proj.weight", "v_proj.weight",       "q_proj.bias",
        "k_proj.bias",    "v_proj.bias",   "gate_proj.weight",    "up_proj.weight",
        "gate_proj.bias", "up_proj.bias",  "embed_tokens.weight", "lm_head.weight"};
    static const char *const row_parallel[] = {"o_proj.weight", "down_proj.weight"};
    for (size_t i = 0; i < sizeof column_parallel / sizeof *column_parallel; i++)
        if (ends_with(name, column_parallel[i])) return SPLIT_ROWS;
    for (size_t i = 0; i < sizeof row_parallel / sizeof *row_parallel; i++)
        if (ends_with(name, row_parallel[i])) return SPLIT_COLS;
    if (ends_with(name, "q_norm.weight") || ends_with(name, "k_norm.weight")) return SPLIT_PER_HEAD;
    return SPLIT_NONE;
}

/* A per-head tensor: whole on every rank, its gradients partial sums over more than one rank. */
static void check_per_head_share(const ArchTensor *t) {
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols;
    for (int tp = 1; tp <= 4; tp *= 2)
        for (int r = 0; r < tp; r++) {
            TensorShare s = arch_share(t->def->kind, SPLIT_PER_HEAD, rows, cols, tp, r);
            assert_true(s.rows == rows && s.cols == cols && s.first == 0 && s.coef_off == 0);
            assert_true(s.dim == (int)cols && s.coef_full == (int)cols);
            assert_int_equal(s.grad_partial, tp > 1);
        }
}

/* A split tensor: every element of the whole tensor and every coefficient column in exactly one rank's
 * share; a whole one: all of it on every rank. */
static void check_shares_tile(const ArchTensor *t, int tp) {
    if (t->def->split == SPLIT_PER_HEAD) {
        check_per_head_share(t);
        return;
    }
    if (t->def->split == SPLIT_NONE) tp = 1; /* each rank's share is rank 0's */
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols;
    unsigned char *seen = calloc(rows * cols, 1), *coef = calloc(cols, 1);
    for (int r = 0; r < tp; r++) {
        TensorShare s = arch_share(t->def->kind, t->def->split, rows, cols, tp, r);
        if (t->def->split == SPLIT_NONE)
            for (int other = 1; other < 4; other++) {
                TensorShare o = arch_share(t->def->kind, SPLIT_NONE, rows, cols, 4, other);
                assert_true(o.rows == rows && o.cols == cols && o.first == 0 && !o.grad_partial);
            }
        size_t r0 = s.first / cols, c0 = s.first % cols;
        assert_true(r0 + s.rows <= rows && c0 + s.cols <= cols);
        for (size_t i = 0; i < s.rows; i++)
            for (size_t j = 0; j < s.cols; j++) seen[(r0 + i) * cols + c0 + j]++;
        int bias = t->def->kind == DT_BIAS;
        assert_int_equal(s.dim, bias ? 1 : (int)s.cols);
        assert_int_equal(s.coef_full, bias ? 1 : (int)cols);
        assert_int_equal(s.grad_partial, tp > 1 && t->def->split == SPLIT_ROWS);
        if (!bias && t->def->split == SPLIT_COLS)
            for (int j = 0; j < s.dim; j++) coef[s.coef_off + j]++;
        else
            assert_int_equal(s.coef_off, 0);
    }
    for (size_t e = 0; e < rows * cols; e++)
        if (seen[e] != 1) fail_msg("%s, tp %d: element %zu in %d shares", t->name, tp, e, seen[e]);
    if (t->def->kind != DT_BIAS && t->def->split == SPLIT_COLS)
        for (size_t j = 0; j < cols; j++) assert_int_equal(coef[j], 1);
    free(seen), free(coef);
}

static void test_tensor_parallel_split(void **state) {
    (void)state;
    for (size_t i = 0; i < N_MODELS; i++) {
        ModelConfig c;
        int n;
        char *dir;
        ArchTensor *t = load_model(fixture_models[i], &c, &n, &dir);
        for (int k = 0; k < n; k++) {
            if (t[k].def->split != megatron_split(t[k].name))
                fail_msg("%s: split %d, Megatron's is %d", t[k].name, t[k].def->split,
                         megatron_split(t[k].name));
            for (int tp = 1; tp <= 4; tp *= 2)
                if (c.num_key_value_heads % tp == 0 && c.vocab_size % tp == 0 &&
                    c.intermediate_size % tp == 0)
                    check_shares_tile(&t[k], tp);
        }
        free(t), free(dir);
    }
}

static void test_stages_hold_each_tensor_once(void **state) {
    (void)state;
    for (size_t i = 0; i < N_MODELS; i++) {
        ModelConfig c;
        int n;
        char *dir;
        ArchTensor *t = load_model(fixture_models[i], &c, &n, &dir);
        for (int pp = 1; pp <= c.num_hidden_layers; pp++)
            for (int k = 0; k < n; k++) {
                int held = 0;
                for (int s = 0; s < pp; s++) {
                    int l0, l1;
                    dam_stage_layers(&c, pp, s, &l0, &l1);
                    held += arch_stage_holds(&t[k], &c, l0, l1, s == 0, s == pp - 1);
                }
                int tied_twice = pp > 1 && c.tie_word_embeddings && t[k].def->kind == DT_EMBED;
                assert_int_equal(held, tied_twice ? 2 : 1);
            }
        free(t), free(dir);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables_match_checkpoints),
        cmocka_unit_test(test_tensor_parallel_split),
        cmocka_unit_test(test_stages_hold_each_tensor_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
