/* test_optim.c — the optimizer side against closed forms computed here independently:
 *   - learning-rate schedules (constant/linear/cosine with warmup) as transformers defines them;
 *   - AdamW: the first two updates of one coefficient, with and without weight decay;
 *   - MoFO: only the top-alpha fraction of entries by |momentum| moves;
 *   - global gradient-norm clipping to max_norm. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include "test_dam.h"

static DamConfig base_cfg(void) {
    DamConfig c;
    memset(&c, 0, sizeof c);
    c.lr = 0.1f, c.beta1 = 0.9f, c.beta2 = 0.999f, c.adam_eps = 1e-8f, c.mofo_alpha = 0.25f;
    return c;
}

static void test_schedules(void **s) {
    (void)s;
    DamConfig c = base_cfg();
    c.warmup = 10;
    int total = 110;
    for (int step = 0; step < total; step++) {
        double warm = step < 10 ? step / 10.0 : 1.0, p = step < 10 ? 0 : (step - 10) / 100.0;
        c.schedule = SCHED_CONSTANT;
        assert_float_equal(optim_lr(&c, step, total), 0.1 * warm, 1e-7);
        c.schedule = SCHED_LINEAR;
        assert_float_equal(optim_lr(&c, step, total), step < 10 ? 0.1 * warm : 0.1 * (1 - p), 1e-7);
        c.schedule = SCHED_COSINE;
        assert_float_equal(optim_lr(&c, step, total),
                           step < 10 ? 0.1 * warm : 0.1 * 0.5 * (1 + cos(M_PI * p)), 1e-7);
    }
}

/* The llama3src fixture's model, one coefficient driven by hand against torch.optim.AdamW's update
 * rule (decoupled weight decay, bias-corrected moments, eps outside the square root). */
static void test_adamw_two_steps(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    DamModel *m = &dc.m;
    for (int wd = 0; wd < 2; wd++) {
        DamConfig c = base_cfg();
        c.weight_decay = wd ? 0.01f : 0.0f;
        DamTensor *x = m->lm_head;
        size_t o = x->coef_at, nx = (size_t)m->n_rows * x->dim;
        float *cb = test_coef_get(m, DAM_COEF_C), *am = test_coef_get(m, DAM_COEF_ADAM_M),
              *av = test_coef_get(m, DAM_COEF_ADAM_V);
        memset(am + o, 0, nx * 4), memset(av + o, 0, nx * 4);
        cb[o] = 0.5f;
        test_coef_put(m, DAM_COEF_C, cb), test_coef_put(m, DAM_COEF_ADAM_M, am),
            test_coef_put(m, DAM_COEF_ADAM_V, av);
        free(cb), free(am), free(av);
        double p = 0.5, mm = 0, vv = 0;
        const float g[2] = {0.3f, -0.2f};
        for (int t = 1; t <= 2; t++) {
            dam_model_zero_grad(m);
            float *gb = test_coef_get(m, DAM_COEF_GRAD);
            gb[o] = g[t - 1];
            test_coef_put(m, DAM_COEF_GRAD, gb);
            free(gb);
            optim_step(m, &c, c.lr, t);
            mm = 0.9 * mm + 0.1 * g[t - 1], vv = 0.999 * vv + 0.001 * (double)g[t - 1] * g[t - 1];
            double mh = mm / (1 - pow(0.9, t)), vh = vv / (1 - pow(0.999, t));
            p -= 0.1 * (mh / (sqrt(vh) + 1e-8) + c.weight_decay * p);
            cb = test_coef_get(m, DAM_COEF_C);
            assert_float_equal(cb[o], p, 1e-6);
            free(cb);
        }
        float *fc = test_coef_get(m, DAM_COEF_FC);
        cb = test_coef_get(m, DAM_COEF_C);
        assert_float_equal(fc[o], cb[o], 0); /* f(c) refreshed */
        free(fc), free(cb);
    }
    dam_case_close(&dc);
}

static void test_mofo_moves_top_fraction(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    DamModel *m = &dc.m;
    DamConfig c = base_cfg();
    c.optimizer = OPT_MOFO;
    for (int t = 0; t < m->n_tensors; t++) m->tensors[t].trainable = 0;
    DamTensor *x = m->lm_head;
    x->trainable = 1;
    size_t n = (size_t)m->n_rows * x->dim, o = x->coef_at;
    float *before = test_coef_get(m, DAM_COEF_C);
    dam_model_zero_grad(m);
    float *g = test_coef_get(m, DAM_COEF_GRAD);
    for (size_t j = 0; j < n; j++) g[o + j] = (float)(j + 1); /* distinct magnitudes */
    test_coef_put(m, DAM_COEF_GRAD, g);
    optim_step(m, &c, c.lr, 1);
    float *after = test_coef_get(m, DAM_COEF_C);
    size_t moved = 0, keep = (size_t)ceil(0.25 * (double)n);
    for (size_t j = 0; j < n; j++) {
        int changed = after[o + j] != before[o + j];
        moved += changed;
        assert_int_equal(changed, j >= n - keep); /* exactly the largest momenta */
    }
    assert_int_equal(moved, keep);
    free(before), free(after), free(g);
    dam_case_close(&dc);
}

static void test_clip(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    DamModel *m = &dc.m;
    dam_model_zero_grad(m);
    double ss = 0;
    float *gb = test_coef_get(m, DAM_COEF_GRAD);
    for (int t = 0; t < m->n_tensors; t++)
        for (size_t j = 0; j < (size_t)m->n_rows * m->tensors[t].dim; j++) {
            float g = (float)((j % 7) - 3) * 0.1f;
            gb[m->tensors[t].coef_at + j] = g;
            ss += (double)g * g;
        }
    test_coef_put(m, DAM_COEF_GRAD, gb);
    free(gb);
    double norm = optim_clip_grad_norm(m, 1.0f);
    assert_float_equal(norm, sqrt(ss), 1e-6 * sqrt(ss));
    assert_float_equal(optim_clip_grad_norm(m, 0), 1.0, 1e-5); /* now at max_norm (0: no clipping) */
    dam_case_close(&dc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedules),
        cmocka_unit_test(test_adamw_two_steps),
        cmocka_unit_test(test_mofo_moves_top_fraction),
        cmocka_unit_test(test_clip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
