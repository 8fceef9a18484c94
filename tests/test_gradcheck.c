/* test_gradcheck.c — central finite differences of the full DAM loss against the analytic
 * coefficient gradients, for every tensor kind (linear, lm_head, embedding, RMSNorm, bias, Qwen3's
 * per-head q/k RMSNorm) and every
 * loss term taken alone (KL, top-K KL, MSE, entropy, similarity, L1, L2, overlap, weighted overlap).
 *
 * Tolerance: the loss is computed in fp32 (accumulated in double), so a central difference with step
 * h = 1e-2 along a unit direction has rounding error ~1e-7·L/h and truncation error ~h²·L''' — both
 * below 1e-3 of the directional derivatives here; we accept 2e-2 relative, which a wrong gradient
 * (sign, factor 2, a missing f'(c), a missing term) exceeds by orders of magnitude. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <string.h>

#include "test_util.h"
#include "test_dam.h"
#include "pair_weights.h"

static size_t ncoef(const DamModel *m, int t) {
    return (size_t)m->n_coef_rows * (size_t)(unsigned)m->tensors[t].dim;
}

typedef enum { K_LINEAR, K_LM_HEAD, K_EMBED, K_NORM, K_BIAS, K_HEAD_NORM } Kind;
static const char *const kind_names[] = {"linear", "lm_head", "embedding", "rmsnorm", "bias", "head-norm"};

/* Qwen3's q_norm / k_norm: an RMSNorm over each head, a separate kind to check on its own. */
static int head_norm(const DamTensor *x) {
    return x->kind == DT_NORM && (strstr(x->name, "q_norm") || strstr(x->name, "k_norm"));
}

static int in_kind(const DamModel *m, const DamTensor *x, Kind k) {
    switch (k) {
    case K_LINEAR: return x->kind == DT_LINEAR && x != m->lm_head;
    case K_LM_HEAD: return x == m->lm_head;
    case K_EMBED: return x->kind == DT_EMBED;
    case K_NORM: return x->kind == DT_NORM && !head_norm(x);
    case K_BIAS: return x->kind == DT_BIAS;
    case K_HEAD_NORM: return head_norm(x);
    }
    return 0;
}

/* Returns 1 when the kind exists in the model and the check passed, -1 when it does not exist. */
static int fd_check(DamCase *dc, Kind kind, const char *term) {
    DamModel *m = &dc->m;
    dam_rng rng;
    dam_rng_seed(&rng, 42 + kind);
    dam_case_loss(dc, NULL);
    double gu, norm = 0;
    float **dir = dam_calloc((size_t)(unsigned)m->n_tensors, sizeof(float *), "dirs");
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        if (!in_kind(m, x, kind) || !x->trainable) continue;
        size_t n = ncoef(m, t);
        dir[t] = malloc(n * sizeof(float));
        for (size_t j = 0; j < n; j++)
            dir[t][j] = dam_rng_normal(&rng), norm += (double)dir[t][j] * dir[t][j];
    }
    if (norm == 0) {
        free(dir);
        return -1;
    }
    norm = sqrt(norm);
    for (int t = 0; t < m->n_tensors; t++)
        if (dir[t])
            for (size_t j = 0; j < ncoef(m, t); j++) dir[t][j] = (float)(dir[t][j] / norm);
    /* piecewise-linear terms (kinks of |c| and min) need a small step; smooth ones a larger one */
    const double h = (strstr(term, "overlap") || !strcmp(term, "l1")) ? 1e-4 : 1e-2;
    double lp = 0, lm = 0, fp32_part = 0;
    /* perturb, evaluate, restore (the coefficient block on the host, uploaded whole) */
    float *saved = test_coef_get(m, DAM_COEF_C), *moved = test_coef_get(m, DAM_COEF_C);
    for (int sgn = 1; sgn >= -1; sgn -= 2) {
        for (int t = 0; t < m->n_tensors; t++)
            if (dir[t])
                for (size_t j = 0, o = m->tensors[t].coef_at; j < ncoef(m, t); j++)
                    moved[o + j] = (float)(saved[o + j] + sgn * h * dir[t][j]);
        test_coef_put(m, DAM_COEF_C, moved);
        DamLosses parts;
        double l = dam_case_loss(dc, &parts);
        for (int k = 0; k < dc->n_data;
             k++) /* the logits terms are fp32 computations; regularizers are double */
            fp32_part = fmax(fp32_part, fabs(parts.kl[k]) + fabs(parts.mse[k]) + fabs(parts.entropy[k]));
        if (sgn == 1)
            lp = l;
        else
            lm = l;
        test_coef_put(m, DAM_COEF_C, saved);
    }
    dam_case_loss(dc, NULL); /* gradients at the centre again */
    double gu_step = 0;      /* g · (c₊ − c₋) / 2h with c± as rounded to fp32 */
    float *grad = test_coef_get(m, DAM_COEF_GRAD);
    for (int t = 0; t < m->n_tensors; t++)
        if (dir[t])
            for (size_t j = 0, o = m->tensors[t].coef_at; j < ncoef(m, t); j++) {
                float cp = (float)(saved[o + j] + h * dir[t][j]), cm = (float)(saved[o + j] - h * dir[t][j]);
                gu_step += (double)grad[o + j] * ((double)cp - cm) / (2 * h);
            }
    gu = gu_step;
    free(saved), free(moved), free(grad);
    double fd = (lp - lm) / (2 * h);
    /* fp32 logits losses: rounding error of the difference ~ a few ulps of them divided by 2h */
    double round_bound = 4 * 6e-8 * fp32_part * dc->n_data / (2 * h);
    double err = fabs(fd - gu), rel = err / fmax(fmax(fabs(fd), fabs(gu)), 1e-12);
    int ok = err <= 2e-2 * fmax(fabs(fd), fabs(gu)) + round_bound;
    printf("%-10s %-10s analytic %+.6e  finite-diff %+.6e  rel %.2e (rounding bound %.1e)  %s\n", term,
           kind_names[kind], gu, fd, rel, round_bound, ok ? "OK" : "NOT OK");
    for (int t = 0; t < m->n_tensors; t++) free(dir[t]);
    free(dir);
    return ok;
}

typedef enum { T_KL, T_TOPK, T_MSE, T_ENTROPY, T_SIM, T_L1, T_L2, T_OVERLAP, T_WOV, T_COUNT } Term;
static const char *const term_names[] = {"kl", "topk-kl", "mse",     "entropy",  "similarity",
                                         "l1", "l2",      "overlap", "w-overlap"};

static void only_term(DamConfig *c, Term t) {
    c->loss.kl = t == T_KL || t == T_TOPK;
    c->loss.topk = t == T_TOPK ? 5 : 0;
    c->loss.mse = t == T_MSE ? 0.5f : 0;
    c->loss.entropy = t == T_ENTROPY ? 0.2f : 0;
    c->similarity = t == T_SIM ? 0.5f : 0;
    c->l1 = t == T_L1 ? 0.01f : 0;
    c->l2 = t == T_L2 ? 0.05f : 0;
    c->overlap = t == T_OVERLAP ? 0.01f : 0;
    c->weighted_overlap = t == T_WOV ? 0.05f : 0;
}

static void run_case(const char *name, const char *variant, int expect_kinds) {
    DamCase dc;
    dam_case_open(&dc, name, variant);
    dc.batched = 1;                                                         /* the path training uses */
    for (int t = 0; t < dc.m.n_tensors; t++) dc.m.tensors[t].trainable = 1; /* cover every kind */
    char base_rel[64];
    snprintf(base_rel, sizeof base_rel, "dam/%s/base", name);
    char *base = dc.cfg.include_base ? NULL : test_fixture(base_rel); /* else the base is the last row */
    wov_setup(&dc.m, base); /* the weighted overlap's pair weights from the task vectors */
    free(base);
    int ok = 1, kinds_seen = 0;
    for (int term = 0; term < T_COUNT; term++) {
        only_term(&dc.cfg, (Term)term);
        for (int k = K_LINEAR; k <= K_HEAD_NORM; k++) {
            int r = fd_check(&dc, (Kind)k, term_names[term]);
            if (r < 0) continue;
            ok &= r;
            if (term == 0) kinds_seen++;
        }
    }
    assert_int_equal(kinds_seen, expect_kinds);
    dam_case_close(&dc);
    assert_true(ok);
}

/* The base as a teacher (base_dataset): qwen2base's datasets taught by its base row (include_base,
 * the last row) instead of their sources; the KL term alone, every kind. */
static void test_fd_base_teacher(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "qwen2base", "relu");
    dc.batched = 1;
    for (int t = 0; t < dc.m.n_tensors; t++) dc.m.tensors[t].trainable = 1;
    only_term(&dc.cfg, T_KL);
    double by_source = dam_case_loss(&dc, NULL);
    dc.base_teacher = 1;
    double by_base = dam_case_loss(&dc, NULL);
    printf("KL taught by the sources %.6f, by the base %.6f\n", by_source, by_base);
    assert_true(fabs(by_base - by_source) > 1e-3 * by_source); /* another teacher indeed */
    int ok = 1, kinds = 0;
    for (int k = K_LINEAR; k <= K_BIAS; k++) {
        int r = fd_check(&dc, (Kind)k, "kl-base");
        if (r < 0) continue;
        ok &= r, kinds++;
    }
    dam_case_close(&dc);
    assert_int_equal(kinds, 4);
    assert_true(ok);
}

/* llama3src: untied (linear, lm_head, embedding, norm), tanh */
static void test_fd_llama(void **s) { (void)s, run_case("llama3src", "all", 4); }
/* qwen2base: tied embeddings (lm_head is the embedding), biases, sigmoid, include_base */
static void test_fd_qwen2(void **s) { (void)s, run_case("qwen2base", "topk", 4); }
/* qwen3src: tied embeddings, per-head q/k norms, tanh */
static void test_fd_qwen3(void **s) { (void)s, run_case("qwen3src", "all", 4); }

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fd_llama), cmocka_unit_test(test_fd_qwen2),
                                       cmocka_unit_test(test_fd_qwen3),
                                       cmocka_unit_test(test_fd_base_teacher)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
