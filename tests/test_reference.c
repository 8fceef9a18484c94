/* test_reference.c — dam_dist against fixtures made by the real Hugging Face transformers classes
 * and torch autograd (tests/fixtures/make_model_fixtures.py):
 *   - logits of tiny Llama (GQA, llama3 rope, tied/untied, bf16), Mistral (sliding window), Qwen2
 *     (biases) and Qwen3 (per-head q/k norms, explicit head_dim) models within 1e-4 relative (fp32
 *     here vs float64 there);
 *   - every DAM loss term and every coefficient gradient within 1e-3 relative. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include "test_dam.h"

static void check_logits(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "models/%s", name);
    char *dir = test_fixture(rel);
    snprintf(rel, sizeof rel, "models/%s.logits.safetensors", name);
    char *ref_path = test_fixture(rel);
    StFile ref;
    st_open(&ref, ref_path);
    const StTensor *ids = st_find(&ref, "input_ids"), *logits = st_find(&ref, "logits");
    assert_non_null(ids);
    assert_non_null(logits);
    int B = (int)ids->shape[0], T = (int)ids->shape[1];
    DamModel m;
    const char *dirs[1] = {dir}, *names[1] = {name};
    dam_model_open(&m, 1, dirs, names, test_be(), test_ctx());
    RunState *rs = runstate_new(&m, B, T);
    size_t n = (size_t)B * T * m.cfg.vocab_size;
    assert_int_equal(n, logits->numel);
    float *out = malloc(n * sizeof(float));
    dam_model_logits(&m, rs, ids->data, B, T, 0, out);
    char what[128];
    snprintf(what, sizeof what, "logits %s (source forward)", name);
    int ok = test_report(what, test_max_rel_diff(out, logits->data, n, 1e-6), 1e-4);
    /* the merged path with the single source's coefficient 1 must agree as well */
    dam_model_logits(&m, rs, ids->data, B, T, -1, out);
    snprintf(what, sizeof what, "logits %s (merged path, c = 1)", name);
    ok &= test_report(what, test_max_rel_diff(out, logits->data, n, 1e-6), 1e-4);
    free(out);
    runstate_free(rs);
    dam_model_close(&m);
    st_close(&ref);
    free(dir), free(ref_path);
    assert_true(ok);
}

static void test_logits_llama_gqa_tied(void **s) { (void)s, check_logits("llama_gqa_tied"); }
static void test_logits_llama_untied_bf16(void **s) { (void)s, check_logits("llama_untied_bf16"); }
static void test_logits_mistral_sw(void **s) { (void)s, check_logits("mistral_sw"); }
static void test_logits_qwen2_bias(void **s) { (void)s, check_logits("qwen2_bias"); }
/* Qwen2 with use_sliding_window: the window applies from max_window_layers on only */
static void test_logits_qwen2_sw(void **s) { (void)s, check_logits("qwen2_sw"); }
/* Qwen3: q_norm / k_norm per head before RoPE, head_dim 24 != hidden / heads, tied embeddings */
static void test_logits_qwen3_tied(void **s) { (void)s, check_logits("qwen3_tied"); }

static int check_scalar(const StFile *exp, const char *key, double got, double tol) {
    char k64[128];
    snprintf(k64, sizeof k64, "loss64/%s", key + 5); /* "loss/x" -> "loss64/x" */
    const StTensor *t = st_find(exp, k64);
    double want;
    if (t && t->dtype == DAM_F32)
        want = *(const float *)t->data;
    else if (t)
        want = *(const double *)t->data;
    else {
        t = st_find(exp, key);
        assert_non_null(t);
        want = *(const float *)t->data;
    }
    double rel = fabs(got - want) / fmax(fabs(want), 1e-8);
    printf("%-48s %s (got %.8g, want %.8g, rel %.2e)\n", key, rel <= tol ? "OK" : "NOT OK", got, want, rel);
    return rel <= tol;
}

static void check_dam_path(const char *name, const char *variant, int batched) {
    DamCase dc;
    dam_case_open(&dc, name, variant);
    dc.batched = batched;
    DamLosses l;
    dam_case_loss(&dc, &l);
    char rel[256];
    snprintf(rel, sizeof rel, "dam/%s/expected_%s.safetensors", name, variant);
    char *path = test_fixture(rel);
    StFile exp;
    st_open(&exp, path);
    int ok = 1;
    char key[192];
    printf("-- %s / %s (%s)\n", name, variant,
           batched ? "all datasets in one step" : "one micro-batch per dataset");
    for (int k = 0; k < dc.n_data; k++) {
        snprintf(key, sizeof key, "loss/kl/%d", k);
        ok &= check_scalar(&exp, key, l.kl[k], 1e-4);
        if (dc.cfg.loss.mse > 0)
            snprintf(key, sizeof key, "loss/mse/%d", k), ok &= check_scalar(&exp, key, l.mse[k], 1e-4);
        if (dc.cfg.loss.entropy > 0)
            snprintf(key, sizeof key, "loss/entropy/%d", k),
                ok &= check_scalar(&exp, key, l.entropy[k], 1e-4);
    }
    if (dc.cfg.similarity > 0) ok &= check_scalar(&exp, "loss/similarity", l.reg.similarity, 1e-4);
    if (dc.cfg.l1 > 0) ok &= check_scalar(&exp, "loss/l1", l.reg.l1, 1e-4);
    if (dc.cfg.l2 > 0) ok &= check_scalar(&exp, "loss/l2", l.reg.l2, 1e-4);
    if (dc.cfg.overlap > 0) ok &= check_scalar(&exp, "loss/overlap", l.reg.overlap, 1e-4);
    ok &= check_scalar(&exp, "loss/total", l.total, 1e-4);
    int n_grads = 0;
    float *grad = test_coef_get(&dc.m, DAM_COEF_GRAD);
    for (int t = 0; t < dc.m.n_tensors; t++) {
        DamTensor *x = &dc.m.tensors[t];
        snprintf(key, sizeof key, "grad/%s", x->name);
        const StTensor *g = st_find(&exp, key);
        if (!x->trainable) {
            assert_null(g); /* the reference has gradients for trainable tensors only */
            continue;
        }
        assert_non_null(g);
        assert_int_equal(g->numel, (size_t)dc.m.n_coef_rows * x->dim);
        ok &= test_report(key, test_max_rel_diff(grad + x->coef_at, g->data, g->numel, 1e-8), 1e-3);
        n_grads++;
    }
    free(grad);
    assert_true(n_grads > 0);
    st_close(&exp);
    free(path);
    dam_case_close(&dc);
    assert_true(ok);
}

/* both the per-dataset path and the all-datasets-in-one-batch path must match the reference */
static void check_dam(const char *name, const char *variant) {
    check_dam_path(name, variant, 0);
    check_dam_path(name, variant, 1);
}

static void test_dam_llama_kl(void **s) { (void)s, check_dam("llama3src", "kl"); }
static void test_dam_llama_all_terms(void **s) { (void)s, check_dam("llama3src", "all"); }
static void test_dam_qwen2_topk(void **s) { (void)s, check_dam("qwen2base", "topk"); }
static void test_dam_qwen2_relu(void **s) { (void)s, check_dam("qwen2base", "relu"); }
/* Qwen3: the q_norm / k_norm coefficient gradients are among those checked */
static void test_dam_qwen3_kl(void **s) { (void)s, check_dam("qwen3src", "kl"); }
static void test_dam_qwen3_all_terms(void **s) { (void)s, check_dam("qwen3src", "all"); }
static void test_dam_qwen3_topk(void **s) { (void)s, check_dam("qwen3src", "topk"); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_llama_gqa_tied), cmocka_unit_test(test_logits_llama_untied_bf16),
        cmocka_unit_test(test_logits_mistral_sw),     cmocka_unit_test(test_logits_qwen2_bias),
        cmocka_unit_test(test_logits_qwen2_sw),       cmocka_unit_test(test_dam_llama_kl),
        cmocka_unit_test(test_dam_llama_all_terms),   cmocka_unit_test(test_dam_qwen2_topk),
        cmocka_unit_test(test_dam_qwen2_relu),        cmocka_unit_test(test_logits_qwen3_tied),
        cmocka_unit_test(test_dam_qwen3_kl),          cmocka_unit_test(test_dam_qwen3_all_terms),
        cmocka_unit_test(test_dam_qwen3_topk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
