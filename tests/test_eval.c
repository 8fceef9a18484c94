/* test_eval.c — `dam_dist eval`'s metrics (src/commands/eval.h) against references computed here:
 *  - a two-token example on models whose logits are known by hand: every decoder layer's weights are
 *    zero, so each layer passes its input through and the logits at position t are
 *    lm_head · norm(embed[ids[t]]); the embedding rows are 2·e_x (RMS 1), so the logits of token x
 *    are 2·L[:, x] / sqrt(1 + eps). Cross-entropy, KL at τ = 2 and top-1 are computed from L with
 *    plain double arithmetic;
 *  - exact match and greedy generation on crafted /answer_mask rows of such a model (its argmax after
 *    token x is x + 1 mod 4), through arrays and through an HDF5 file; no /answer_mask: not counted;
 *  - the KL equals the training step's (dam_micro_batches without the backward, with the merged model made
 * equal to the evaluated one by one-hot coefficients), full vocabulary and top-K, on models with random
 * layers;
 *  - a model against itself: KL 0, top-1 1;
 *  - a malformed /answer_mask is refused with one line naming it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"

#include <hdf5.h>

#include "test_dam.h"

#include "eval.h"

enum { V = 4, D = 4 };
static const double EPS = 1e-5;

/* Teacher A: argmax after token x is fa[x] = 1, 2, 0, 3; model B: x + 1 mod 4 (no ties in either). */
static const int fa[V] = {1, 2, 0, 3};
static float LA[V][D], LB[V][D];

static void fill_heads(void) {
    for (int v = 0; v < V; v++)
        for (int x = 0; x < D; x++) {
            LA[v][x] = v == fa[x] ? 1.2f : 0.1f * (float)((v + 2 * x) % 4);
            LB[v][x] = v == (x + 1) % 4 ? 1.0f : 0.25f * (float)v;
        }
}

static const char *hf_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
    "\"vocab_size\": 4, \"hidden_size\": 4, \"intermediate_size\": 4, "
    "\"num_hidden_layers\": 2, \"num_attention_heads\": 1, "
    "\"num_key_value_heads\": 1, \"head_dim\": 4, \"max_position_embeddings\": 16, "
    "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", "
    "\"tie_word_embeddings\": false, \"torch_dtype\": \"float32\"}";

/* A model directory: embedding 2·I, final norm ones, lm_head `head`; decoder layers zero (seed 0) or
 * random in [-0.5, 0.5) with norm weights near 1 (seed > 0, which also perturbs the embedding). */
static char *write_model(const char *root, const char *name, float (*head)[D], uint64_t seed) {
    char *dir = dam_path_join(root, name);
    dam_mkdir_p(dir);
    char *cfg_path = dam_path_join(dir, "config.json");
    dam_write_file_atomic(cfg_path, hf_config, strlen(hf_config));
    ModelConfig c;
    hfconfig_load(&c, cfg_path);
    free(cfg_path);
    int n = hfconfig_tensor_specs(&c, NULL);
    HfTensorSpec *specs = calloc((size_t)n, sizeof *specs);
    hfconfig_tensor_specs(&c, specs);
    dam_rng rng;
    dam_rng_seed(&rng, seed);
    StWriter *w = st_writer_new(dir, (size_t)1 << 30);
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)specs[i].shape[0] * (specs[i].ndim == 2 ? (size_t)specs[i].shape[1] : 1);
        float *data = calloc(cnt, sizeof(float));
        const char *nm = specs[i].name;
        int is_norm = strstr(nm, "norm") != NULL;
        if (!strcmp(nm, "model.embed_tokens.weight"))
            for (int x = 0; x < V; x++) data[x * D + x] = 2.0f;
        else if (!strcmp(nm, "lm_head.weight"))
            memcpy(data, head, sizeof(float) * V * D);
        else if (!strcmp(nm, "model.norm.weight"))
            for (size_t j = 0; j < cnt; j++) data[j] = 1.0f;
        if (seed && strcmp(nm, "lm_head.weight"))
            for (size_t j = 0; j < cnt; j++)
                data[j] += (is_norm ? 1.0f : 0.0f) + dam_rng_uniform(&rng) - 0.5f;
        st_writer_add_f32(w, nm, DAM_F32, specs[i].ndim, specs[i].shape, data);
        free(data);
    }
    st_writer_finish(w, "pt");
    free(specs);
    return dir;
}

/* The logits of token x by hand: 2·L[v][x] / sqrt(mean((2 e_x)²) + eps). */
static void hand_logits(float (*L)[D], int x, double *z) {
    for (int v = 0; v < V; v++) z[v] = 2.0 * L[v][x] / sqrt(1.0 + EPS);
}

static double log_softmax_at(const double *z, int n, int i, double tau) {
    double mx = -INFINITY, s = 0;
    for (int v = 0; v < n; v++) mx = fmax(mx, z[v] / tau);
    for (int v = 0; v < n; v++) s += exp(z[v] / tau - mx);
    return z[i] / tau - mx - log(s);
}

static double kl_by_hand(const double *zt, const double *z, double tau) {
    double kl = 0;
    for (int v = 0; v < V; v++) {
        double lp = log_softmax_at(zt, V, v, tau), lq = log_softmax_at(z, V, v, tau);
        kl += exp(lp) * (lp - lq);
    }
    return tau * tau * kl;
}

typedef struct {
    char *root, *a, *b;
    DamModel m; /* sources: A (row 0), B (row 1) */
} Hand;

static void hand_open(Hand *h, uint64_t seed) {
    fill_heads();
    h->root = test_tmpdir();
    h->a = write_model(h->root, "a", LA, seed);
    h->b = write_model(h->root, "b", LB, seed ? seed + 1 : 0);
    const char *dirs[] = {h->a, h->b}, *names[] = {"a", "b"};
    dam_model_open(&h->m, 2, dirs, names, test_be(), test_ctx());
}

static void hand_close(Hand *h) {
    dam_model_close(&h->m);
    dam_rm_rf(h->root);
    free(h->root), free(h->a), free(h->b);
}

static LossParams loss_at(float tau, int topk) {
    LossParams lp;
    memset(&lp, 0, sizeof lp);
    lp.temperature = tau, lp.kl = 1, lp.topk = topk;
    return lp;
}

/* One row through eval_row for source row `model` against teacher row 0: sums and metrics. */
static void eval_one_row(DamModel *m, const int32_t *ids, const int8_t *mask, int T, int model,
                         const LossParams *lp, EvalSums *s, EvalMetrics *e) {
    Evaluator ev;
    eval_init(&ev, m, T, 0, 1, &model, lp, 0);
    memset(s, 0, sizeof *s);
    eval_row(&ev, ids, mask, NULL, NULL, NULL, s);
    eval_free(&ev);
    eval_metrics(s, lp, 1, e);
}

/* ids [0, 2]: cross-entropy of target 2 after token 0; KL and top-1 at both positions. */
static void test_two_tokens_by_hand(void **state) {
    Hand h;
    hand_open(&h, 0);
    int32_t ids[2] = {0, 2};
    int8_t mask[2] = {1, 1};
    LossParams lp = loss_at(2.0f, 0);
    EvalSums s;
    EvalMetrics e;
    eval_one_row(&h.m, ids, mask, 2, 1, &lp, &s, &e);
    double za[2][V], zb[2][V];
    for (int t = 0; t < 2; t++) hand_logits(LA, ids[t], za[t]), hand_logits(LB, ids[t], zb[t]);
    double ce = -log_softmax_at(zb[0], V, ids[1], 1.0);
    double kl = (kl_by_hand(za[0], zb[0], 2.0) + kl_by_hand(za[1], zb[1], 2.0)) / 2;
    printf("two tokens: CE %.9f (hand %.9f), KL %.9f (hand %.9f), top-1 %.3f (hand 0.5)\n", e.ce, ce, e.kl,
           kl, e.top1);
    assert_true(fabs(e.ce - ce) < 1e-6 * fabs(ce));
    assert_true(fabs(e.kl - kl) < 1e-6 * kl); /* dam_exp_approx: relative error < 2e-7 */
    assert_true(kl > 0.01);
    assert_true(e.top1 == 0.5); /* token 0: both pick 1; token 2: A picks 0, B picks 3 */
    assert_int_equal(e.tokens, 2);
    assert_int_equal(e.rows, 1);
    assert_true(isnan(e.exact)); /* no answer mask: not counted */
    /* batchmean divides the KL by the batch size, as the trainer's */
    lp.kl_batchmean = 1;
    EvalMetrics e2;
    eval_metrics(&s, &lp, 4, &e2);
    assert_true(fabs(e2.kl - e.kl / 4) < 1e-15);
    hand_close(&h);
}

/* Rows of B (argmax after x: x + 1 mod 4) with answer masks; exact match and generation counted. */
static const int32_t rows_ids[4][4] = {{0, 1, 2, 3}, {0, 1, 3, 0}, {0, 1, 2, 3}, {3, 0, 1, 2}};
static const int8_t rows_ans[4][4] = {
    {0, 0, 1, 1}, /* answers 2, 3 = argmax after 1, 2: exact; generated 2, 3: right */
    {0, 0, 1, 1}, /* answer 3 after 1 (argmax 2): wrong either way */
    {0, 1, 0, 1}, /* answers 1 (after 0) and 3 (after 2): exact; generated from [0]: 1, 2 ≠ 1, 3 */
    {0, 0, 0, 0}, /* no answer: not counted */
};

static void check_answers(const EvalSums *s) {
    EvalMetrics e;
    LossParams lp = loss_at(1.0f, 0);
    eval_metrics(s, &lp, 1, &e);
    printf("answers: %lld rows, exact %.4f (2/3), generated %.4f (1/3)\n", (long long)e.answer_rows, e.exact,
           e.generated);
    assert_int_equal(e.answer_rows, 3);
    assert_true(fabs(e.exact - 2.0 / 3) < 1e-15);
    assert_true(fabs(e.generated - 1.0 / 3) < 1e-15);
    assert_int_equal(e.rows, 4);
}

static void test_exact_match_and_generation(void **state) {
    Hand h;
    hand_open(&h, 0);
    int model = 1;
    LossParams lp = loss_at(1.0f, 0);
    Evaluator ev;
    eval_init(&ev, &h.m, 4, 0, 1, &model, &lp, 1);
    EvalSums s;
    memset(&s, 0, sizeof s);
    int8_t mask[4] = {1, 1, 1, 1};
    for (int r = 0; r < 4; r++) eval_row(&ev, rows_ids[r], mask, rows_ans[r], NULL, NULL, &s);
    check_answers(&s);

    /* the same rows from an HDF5 file with /answer_mask (int8 [n, L]) */
    char *path = dam_path_join(h.root, "answers.h5");
    dataset_write(path, 4, 4, &rows_ids[0][0], NULL, 0, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t dims[2] = {4, 4};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t ds = H5Dcreate2(f, "answer_mask", H5T_STD_I8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(H5Dwrite(ds, H5T_NATIVE_INT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, rows_ans) >= 0);
    H5Dclose(ds), H5Sclose(sp), H5Fclose(f);
    DamDataset d;
    dataset_open(&d, path);
    assert_int_equal(d.has_answer, 1);
    int8_t back[16];
    dataset_read_answer(&d, 1, 2, back);
    assert_memory_equal(back, &rows_ans[1][0], 8);
    memset(&s, 0, sizeof s);
    eval_rows(&ev, &d, 0, 4, 1, 0, &s);
    check_answers(&s);
    /* split over two "replicas" the sums add up to the same */
    EvalSums s0, s1;
    memset(&s0, 0, sizeof s0), memset(&s1, 0, sizeof s1);
    eval_rows(&ev, &d, 0, 4, 2, 0, &s0);
    eval_rows(&ev, &d, 0, 4, 2, 1, &s1);
    assert_true(s0.rows == 2 && s1.rows == 2 && s0.exact + s1.exact == s.exact);
    dataset_close(&d);

    /* without /answer_mask: reads zeros, no row counted */
    char *plain = dam_path_join(h.root, "plain.h5");
    dataset_write(plain, 4, 4, &rows_ids[0][0], NULL, 0, NULL);
    dataset_open(&d, plain);
    assert_int_equal(d.has_answer, 0);
    memset(back, 7, sizeof back);
    dataset_read_answer(&d, 0, 4, back);
    for (int i = 0; i < 16; i++) assert_int_equal(back[i], 0);
    memset(&s, 0, sizeof s);
    eval_rows(&ev, &d, 0, 4, 1, 0, &s);
    assert_true(s.answer_rows == 0 && s.rows == 4);
    dataset_close(&d);
    eval_free(&ev);
    free(path), free(plain);
    hand_close(&h);
}

/* The eval KL of B against teacher A equals the training step's KL of the merged model when its
 * coefficients make it B (one-hot on B's row): full vocabulary and top-2, with padding inside and at the end
 * of a row. */
static void kl_equals_training(int topk) {
    Hand h;
    hand_open(&h, 7); /* random decoder layers: positions interact */
    enum { B = 2, T = 6 };
    int32_t ids[B * T] = {0, 1, 2, 3, 2, 1, 3, 3, 0, 2, 1, 0};
    int8_t mask[B * T] = {1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1}; /* two runs of valid positions in row 0 */
    float *fc = dam_model_coef_host(&h.m, DAM_COEF_FC);
    for (int t = 0; t < h.m.n_tensors; t++) {
        DamTensor *x = &h.m.tensors[t];
        for (int j = 0; j < x->dim; j++) fc[x->coef_at + j] = 0.0f, fc[x->coef_at + x->dim + j] = 1.0f;
    }
    dam_model_coef_upload(&h.m, DAM_COEF_FC, fc);
    free(fc);
    LossParams lp = loss_at(2.0f, topk);
    RunState *rs = runstate_new(&h.m, B, T);
    MicroBatch both = {.ids = ids, .mask = mask, .B = B, .T = T};
    LossTerms lt = dam_one_micro_batch(&h.m, rs, 0, &both, &lp, 0);
    /* row 1 alone, all of it valid: the training step's GEMMs then have eval's shapes */
    MicroBatch second = {.ids = ids + T, .mask = mask + T, .B = 1, .T = T};
    LossTerms row = dam_one_micro_batch(&h.m, rs, 0, &second, &lp, 0);
    runstate_free(rs);
    int model = 1;
    Evaluator ev;
    eval_init(&ev, &h.m, T, 0, 1, &model, &lp, 0);
    EvalSums s, s1;
    memset(&s1, 0, sizeof s1);
    eval_row(&ev, ids + T, mask + T, NULL, NULL, NULL, &s1);
    s = s1;
    eval_row(&ev, ids, mask, NULL, NULL, NULL, &s);
    eval_free(&ev);
    EvalMetrics e, e1;
    eval_metrics(&s, &lp, B, &e);
    eval_metrics(&s1, &lp, B, &e1);
    printf("top-%d: eval KL %.12f, training step's KL %.12f over %lld positions; row 1: %.12f and %.12f\n",
           topk, e.kl, lt.kl, (long long)lt.n_valid, e1.kl, row.kl);
    assert_int_equal(e.tokens, lt.n_valid);
    assert_true(lt.kl > 1e-3 && row.kl > 1e-3);
    /* the step divides by n_valid through a float 1/n_valid (LossChunkParams.inv_n): undo that
     * rounding, then the same shapes give the same numbers but for the order of double sums */
    double f1 = (double)(1.0f / (float)T) * T, fb = (double)(1.0f / (float)lt.n_valid) * (double)lt.n_valid;
    assert_true(fabs(e1.kl * f1 - row.kl) <= 1e-12 * row.kl);
    assert_true(fabs(e.kl * fb - lt.kl) <= 1e-9 * lt.kl);
    hand_close(&h);
}

static void test_kl_equals_training_full(void **state) { kl_equals_training(0); }
static void test_kl_equals_training_topk(void **state) { kl_equals_training(2); }

static void test_self_is_zero(void **state) {
    Hand h;
    hand_open(&h, 11);
    int32_t ids[5] = {3, 1, 0, 2, 2};
    int8_t mask[5] = {1, 1, 1, 1, 0};
    LossParams lp = loss_at(2.0f, 0);
    EvalSums s;
    EvalMetrics e;
    eval_one_row(&h.m, ids, mask, 5, 0, &lp, &s, &e); /* A against itself */
    assert_true(fabs(e.kl) < 1e-12);
    assert_true(e.top1 == 1.0);
    assert_int_equal(e.tokens, 4);
    assert_true(s.ce_n == 3); /* targets 1..3 (position 3's target is padding) */
    hand_close(&h);
}

/* Malformed /answer_mask: one line naming it. */
static char g_bad_path[512];
static void open_bad(const void *arg) {
    DamDataset d;
    dataset_open(&d, (const char *)arg);
}

static void write_bad_answer(const char *path, hsize_t rows, hid_t type) {
    int32_t ids[8] = {0};
    dataset_write(path, 2, 4, ids, NULL, 0, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t dims[2] = {rows, 4};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t ds = H5Dcreate2(f, "answer_mask", type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(ds), H5Sclose(sp), H5Fclose(f);
}

static void test_bad_answer_mask(void **state) {
    char *dir = test_tmpdir();
    char msg[512];
    snprintf(g_bad_path, sizeof g_bad_path, "%s/shape.h5", dir);
    write_bad_answer(g_bad_path, 3, H5T_STD_I8LE);
    assert_true(test_fails_in_child(open_bad, g_bad_path, msg, sizeof msg));
    printf("refused: %s\n", msg);
    assert_non_null(strstr(msg, "/answer_mask is [3, 4] but /input_ids is [2, 4]"));
    snprintf(g_bad_path, sizeof g_bad_path, "%s/type.h5", dir);
    write_bad_answer(g_bad_path, 2, H5T_STD_I32LE);
    assert_true(test_fails_in_child(open_bad, g_bad_path, msg, sizeof msg));
    printf("refused: %s\n", msg);
    assert_non_null(strstr(msg, "/answer_mask has the wrong element type (expected int8)"));
    dam_rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_tokens_by_hand),
        cmocka_unit_test(test_exact_match_and_generation),
        cmocka_unit_test(test_kl_equals_training_full),
        cmocka_unit_test(test_kl_equals_training_topk),
        cmocka_unit_test(test_self_is_zero),
        cmocka_unit_test(test_bad_answer_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
