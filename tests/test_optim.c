/* test_optim.c — the optimizer side against closed forms computed here independently:
 *   - learning-rate schedules (constant/linear/cosine with warmup) as transformers defines them, and
 *     the whole Hugging Face set against values transformers' get_scheduler printed, warmup_ratio;
 *   - AdamW: the first two updates of one coefficient, with and without weight decay;
 *   - MoFO: only the top-alpha fraction of entries by |momentum| moves;
 *   - global gradient-norm clipping to max_norm;
 *   - the reference's MoFO (train.mofo_scope "source", mofo_k "floor", mofo_decay "all"): k per
 *     source vector, decay on every entry, k = 0 (moments only, nothing moves);
 *   - "constant" with warmup ignored (train.warmup_under_constant false);
 *   - loss.kl_reduction "batchmean" at B = 2 against "token"; frozen kinds keep their coefficients;
 *   - the weighted overlap: its pair weights sin²(2θ) at known angles, its value and gradient by hand
 *     with ties (the lower row takes a tie's whole gradient, as the reference's torch.min). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include "test_dam.h"
#include "pair_weights.h"
#include "coefinit.h"

static DamConfig base_cfg(void) {
    DamConfig c;
    memset(&c, 0, sizeof c);
    c.lr = 0.1f, c.beta1 = 0.9f, c.beta2 = 0.999f, c.adam_eps = 1e-8f, c.mofo_alpha = 0.25f;
    c.num_cycles = 0.5, c.lr_end = 1e-7, c.power = 1; /* config.c's defaults for schedule_args */
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
        size_t o = x->coef_at, nx = (size_t)m->n_coef_rows * x->dim;
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
    size_t n = (size_t)m->n_coef_rows * x->dim, o = x->coef_at;
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

/* k of a selection: ceil (at least 1) and the reference's int(n·alpha) with alpha a double. */
static void test_mofo_keep(void **s) {
    (void)s;
    DamConfig c = base_cfg();
    c.mofo_alpha = 0.3;
    c.mofo_k = MOFO_K_CEIL;
    assert_int_equal(optim_mofo_keep(&c, 4096), 1229);
    assert_int_equal(optim_mofo_keep(&c, 3), 1);
    assert_int_equal(optim_mofo_keep(&c, 1), 1);
    c.mofo_k = MOFO_K_FLOOR;
    assert_int_equal(optim_mofo_keep(&c, 4096), 1228);  /* int(4096 * 0.3) = 1228 */
    assert_int_equal(optim_mofo_keep(&c, 14336), 4300); /* int(14336 * 0.3) = 4300 */
    assert_int_equal(optim_mofo_keep(&c, 10), 3);       /* 10 * 0.3 = 3.0000000000000004 */
    assert_int_equal(optim_mofo_keep(&c, 3), 0);
    assert_int_equal(optim_mofo_keep(&c, 1), 0); /* a bias coefficient: the reference's IndexError */
}

/* One step of the reference's MoFOAdamW (dam/optimizer.py) on the lm_head's coefficients, computed
 * here by hand: per source vector c_i of n = dim entries, every entry decayed by (1 − lr·wd), then
 * the floor(0.3·n) entries of largest |m| (distinct here) moved by lr·m̂/(√v̂ + ε); at t = 1 m̂ = g,
 * v̂ = g². Row i's gradient is g_j = (i + 1)·(j + 1)·(−1)^j·1e-3 over its columns j, so the selected
 * entries are the last k columns of every row. Then alpha with floor(alpha·n) = 0: the moments
 * move, the coefficients only decay. */
static void test_mofo_source_floor(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    DamModel *m = &dc.m;
    DamTensor *x = m->lm_head;
    size_t o = x->coef_at, dim = (size_t)x->dim, nr = (size_t)m->n_coef_rows, n = nr * dim;
    for (int pass = 0; pass < 2; pass++) {
        DamConfig c = base_cfg();
        c.optimizer = OPT_MOFO, c.mofo_scope = MOFO_SCOPE_SOURCE, c.mofo_k = MOFO_K_FLOOR;
        c.mofo_decay = MOFO_DECAY_ALL, c.weight_decay = 0.01f, c.lr = 1e-3f;
        c.mofo_alpha = pass == 0 ? 0.3 : 0.5 / (double)dim;
        for (int t = 0; t < m->n_tensors; t++) m->tensors[t].trainable = 0;
        x->trainable = 1;
        float *cb = test_coef_get(m, DAM_COEF_C), *am = test_coef_get(m, DAM_COEF_ADAM_M),
              *av = test_coef_get(m, DAM_COEF_ADAM_V), *g = test_coef_get(m, DAM_COEF_GRAD);
        for (size_t e = 0; e < n; e++) {
            size_t i = e / dim, j = e % dim;
            cb[o + e] = 0.25f + 0.01f * (float)i;
            am[o + e] = av[o + e] = 0;
            g[o + e] = (float)((double)(i + 1) * (double)(j + 1) * (j % 2 ? -1.0 : 1.0) * 1e-3);
        }
        test_coef_put(m, DAM_COEF_C, cb), test_coef_put(m, DAM_COEF_ADAM_M, am),
            test_coef_put(m, DAM_COEF_ADAM_V, av), test_coef_put(m, DAM_COEF_GRAD, g);
        optim_step(m, &c, c.lr, 1);
        float *after = test_coef_get(m, DAM_COEF_C), *m1 = test_coef_get(m, DAM_COEF_ADAM_M);
        size_t k = pass == 0 ? (size_t)(dim * 3 / 10) : 0; /* floor(0.3·dim), dim = 64: 19 */
        if (pass == 0) assert_int_equal(optim_mofo_keep(&c, dim), (int64_t)k);
        for (size_t e = 0; e < n; e++) {
            size_t j = e % dim;
            double c0 = cb[o + e], gg = g[o + e];
            double want = c0 * (1.0 - 1e-3 * 0.01); /* decay on every entry */
            if (j >= dim - k) want -= 1e-3 * gg / (fabs(gg) + 1e-8);
            assert_float_equal(after[o + e], want, 2e-7);
            assert_float_equal(m1[o + e], (1 - 0.9f) * g[o + e], 1e-12); /* moments move, selected or not */
        }
        free(cb), free(am), free(av), free(g), free(after), free(m1);
    }
    dam_case_close(&dc);
}

/* "constant" with warmup: dam_dist warms up; with warmup_under_constant false (the Hugging Face
 * scheduler the reference uses) the warmup is ignored. Other schedules still warm up. */
static void test_constant_skips_warmup(void **s) {
    (void)s;
    DamConfig c = base_cfg();
    c.warmup = 10, c.constant_skips_warmup = 1;
    c.schedule = SCHED_CONSTANT;
    for (int step = 0; step < 20; step++) assert_float_equal(optim_lr(&c, step, 20), 0.1, 1e-7);
    c.schedule = SCHED_LINEAR;
    assert_float_equal(optim_lr(&c, 5, 20), 0.05, 1e-7);
}

/* loss.kl_reduction "batchmean" at B = 2: the KL terms and their gradients are exactly half those
 * of "token" (T²·Σ/(B·n_valid) against T²·Σ/n_valid). No regularizer, so every gradient is KL's. */
static void test_kl_batchmean(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    assert_int_equal(dc.B, 2);
    dc.cfg.similarity = 0;
    DamLosses l[2];
    float *g[2];
    for (int bm = 0; bm < 2; bm++) {
        dc.cfg.loss.kl_batchmean = bm;
        dam_case_loss(&dc, &l[bm]);
        g[bm] = test_coef_get(&dc.m, DAM_COEF_GRAD);
    }
    double gmax = 0;
    for (size_t e = 0; e < dc.m.coef.n; e++) gmax = fmax(gmax, fabs(g[0][e]));
    assert_true(gmax > 0);
    for (int k = 0; k < dc.n_data; k++) {
        assert_true(l[0].kl[k] > 0);
        assert_float_equal(l[1].kl[k], l[0].kl[k] / 2, 1e-12 * l[0].kl[k]);
    }
    for (size_t e = 0; e < dc.m.coef.n; e++) assert_float_equal(g[1][e], g[0][e] / 2, 1e-6 * gmax);
    free(g[0]), free(g[1]);
    dam_case_close(&dc);
}

/* Frozen embeddings and norms (merge.embeddings/norms false, as the reference): no gradient and no
 * change through a MoFO step with decay on every entry. */
static void test_frozen_kinds(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    DamModel *m = &dc.m;
    int frozen = 0;
    for (int t = 0; t < m->n_tensors; t++)
        if (m->tensors[t].kind == DT_EMBED || m->tensors[t].kind == DT_NORM)
            m->tensors[t].trainable = 0, frozen++;
    assert_true(frozen > 0);
    float *before = test_coef_get(m, DAM_COEF_C);
    dam_case_loss(&dc, NULL);
    DamConfig c = base_cfg();
    c.optimizer = OPT_MOFO, c.mofo_scope = MOFO_SCOPE_SOURCE, c.mofo_k = MOFO_K_FLOOR;
    c.mofo_decay = MOFO_DECAY_ALL, c.weight_decay = 0.01f, c.mofo_alpha = 0.3;
    float *g = test_coef_get(m, DAM_COEF_GRAD);
    optim_step(m, &c, c.lr, 1);
    float *after = test_coef_get(m, DAM_COEF_C);
    int moved_trainable = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const DamTensor *x = &m->tensors[t];
        for (size_t e = 0; e < (size_t)m->n_coef_rows * x->dim; e++) {
            if (x->trainable) {
                moved_trainable |= after[x->coef_at + e] != before[x->coef_at + e];
                continue;
            }
            assert_true(g[x->coef_at + e] == 0.0f);
            assert_true(after[x->coef_at + e] == before[x->coef_at + e]);
        }
    }
    assert_true(moved_trainable);
    free(before), free(g), free(after);
    dam_case_close(&dc);
}

/* The reference's own MoFOAdamW (dam/optimizer.py, run by tests/fixtures/make_mofo_fixture.py with
 * torch in fp32) on the three source vectors of 64 entries of one tensor for 5 steps: dam_dist's
 * per-source floor selection with decay on every entry gives the same coefficients (1e-6). */
static void test_mofo_matches_reference(void **s) {
    (void)s;
    char *path = test_fixture("mofo_reference.safetensors");
    StFile f;
    st_open(&f, path);
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    DamModel *m = &dc.m;
    DamTensor *x = m->lm_head;
    size_t o = x->coef_at, n = (size_t)m->n_coef_rows * x->dim;
    const StTensor *init = st_find(&f, "init");
    assert_int_equal(init->shape[0], m->n_coef_rows);
    assert_int_equal(init->shape[1], x->dim);
    for (int t = 0; t < m->n_tensors; t++) m->tensors[t].trainable = 0;
    x->trainable = 1;
    DamConfig c = base_cfg();
    c.optimizer = OPT_MOFO, c.mofo_scope = MOFO_SCOPE_SOURCE, c.mofo_k = MOFO_K_FLOOR;
    c.mofo_decay = MOFO_DECAY_ALL, c.weight_decay = 0.01f, c.lr = 1e-3f, c.mofo_alpha = 0.3;
    float *cb = test_coef_get(m, DAM_COEF_C), *am = test_coef_get(m, DAM_COEF_ADAM_M),
          *av = test_coef_get(m, DAM_COEF_ADAM_V), *g = test_coef_get(m, DAM_COEF_GRAD);
    memcpy(cb + o, init->data, n * sizeof(float));
    memset(am + o, 0, n * sizeof(float)), memset(av + o, 0, n * sizeof(float));
    test_coef_put(m, DAM_COEF_C, cb), test_coef_put(m, DAM_COEF_ADAM_M, am),
        test_coef_put(m, DAM_COEF_ADAM_V, av);
    double worst = 0;
    for (int t = 1; t <= 5; t++) {
        char key[32];
        snprintf(key, sizeof key, "grad/%d", t);
        memcpy(g + o, st_find(&f, key)->data, n * sizeof(float));
        test_coef_put(m, DAM_COEF_GRAD, g);
        optim_step(m, &c, c.lr, t);
        snprintf(key, sizeof key, "after/%d", t);
        const float *want = st_find(&f, key)->data;
        float *got = test_coef_get(m, DAM_COEF_C);
        for (size_t e = 0; e < n; e++) {
            worst = fmax(worst, fabs((double)got[o + e] - want[e]));
            assert_float_equal(got[o + e], want[e], 1e-6);
        }
        free(got);
    }
    printf("mofo against the reference's MoFOAdamW: max |diff| %.3g over 5 steps\n", worst);
    free(cb), free(am), free(av), free(g), free(path);
    st_close(&f);
    dam_case_close(&dc);
}

/* A BF16 fixture tensor [rows, n] as floats (exact). */
static void bf16_rows(const StFile *f, const char *key, float *out, size_t n) {
    const StTensor *t = st_find(f, key);
    assert_non_null(t);
    assert_int_equal(t->dtype, DAM_BF16);
    assert_int_equal(t->numel, n);
    const uint16_t *h = t->data;
    for (size_t e = 0; e < n; e++) out[e] = dam_bf16_to_f32(h[e]);
}

/* bf16 values apart (both bf16 values of one sign: their bit patterns differ by that much). */
static unsigned bf16_ulps(float a, float b) {
    int ia = (int)dam_f32_to_bf16(a), ib = (int)dam_f32_to_bf16(b);
    return (unsigned)abs(ia - ib);
}

/* The lm_head's coefficients, zero moments, every other tensor frozen: the unit the bf16 tests step. */
static DamTensor *bf16_case(DamCase *dc, DamConfig *c, OptimizerKind opt, float lr) {
    dam_case_open(dc, "llama3src", "kl");
    DamModel *m = &dc->m;
    for (int t = 0; t < m->n_tensors; t++) m->tensors[t].trainable = 0;
    m->lm_head->trainable = 1;
    m->coef_bf16 = 1;
    *c = base_cfg();
    c->coef_dtype = DAM_BF16, c->optimizer = opt, c->weight_decay = 0.01f, c->lr = lr, c->mofo_alpha = 0.3;
    c->mofo_scope = MOFO_SCOPE_SOURCE, c->mofo_k = MOFO_K_FLOOR, c->mofo_decay = MOFO_DECAY_ALL;
    return m->lm_head;
}

/* merge.coef_dtype "bfloat16" against torch on bf16 tensors (tests/fixtures/
 * make_bf16_optim_fixture.py, torch's CPU kernels): the reference's own MoFOAdamW and
 * torch.optim.AdamW over 10 steps of bf16 gradients on three source vectors of 64 entries, at lr
 * 1e-3 and 1e-2: c, m and v bit for bit after every step. */
static void test_bf16_optim_matches_torch(void **s) {
    (void)s;
    char *path = test_fixture("bf16_optim_reference.safetensors");
    StFile f;
    st_open(&f, path);
    static const char *const lrs[] = {"lr1e-3", "lr1e-2"};
    static const float lr_value[] = {1e-3f, 1e-2f};
    static const char *const kinds[] = {"mofo", "adamw"};
    for (int v = 0; v < 4; v++) {
        DamCase dc;
        DamConfig c;
        DamTensor *x = bf16_case(&dc, &c, v / 2 ? OPT_ADAMW : OPT_MOFO, lr_value[v % 2]);
        DamModel *m = &dc.m;
        size_t o = x->coef_at, n = (size_t)m->n_coef_rows * x->dim;
        float *blk[5], want[3 * 64];
        assert_true(n <= 3 * 64);
        static const DamCoefBlock which[] = {DAM_COEF_C, DAM_COEF_GRAD, DAM_COEF_ADAM_M, DAM_COEF_ADAM_V};
        for (int b = 0; b < 4; b++) blk[b] = test_coef_get(m, which[b]);
        bf16_rows(&f, "init", blk[0] + o, n);
        memset(blk[2] + o, 0, n * sizeof(float)), memset(blk[3] + o, 0, n * sizeof(float));
        test_coef_put(m, DAM_COEF_C, blk[0]), test_coef_put(m, DAM_COEF_ADAM_M, blk[2]);
        test_coef_put(m, DAM_COEF_ADAM_V, blk[3]);
        unsigned worst = 0, moved = 0;
        for (int t = 1; t <= 10; t++) {
            char key[64];
            snprintf(key, sizeof key, "grad/%d", t);
            bf16_rows(&f, key, blk[1] + o, n);
            test_coef_put(m, DAM_COEF_GRAD, blk[1]);
            float *before = test_coef_get(m, DAM_COEF_C);
            optim_step(m, &c, c.lr, t);
            static const char *const names[] = {"c", "m", "v"};
            for (int q = 0; q < 3; q++) {
                snprintf(key, sizeof key, "%s/%s/%s/%d", kinds[v / 2], lrs[v % 2], names[q], t);
                bf16_rows(&f, key, want, n);
                float *got = test_coef_get(m, which[q ? q + 1 : 0]);
                for (size_t e = 0; e < n; e++) {
                    worst = bf16_ulps(got[o + e], want[e]) > worst ? bf16_ulps(got[o + e], want[e]) : worst;
                    if (!q) moved += got[o + e] != before[o + e];
                }
                assert_memory_equal(got + o, want, n * sizeof(float));
                free(got);
            }
            free(before);
        }
        printf("bf16 %s %s against torch: max %u bf16 ulp over 10 steps, %u coefficient moves\n",
               kinds[v / 2], lrs[v % 2], worst, moved);
        assert_true(moved > 0);
        for (int b = 0; b < 4; b++) free(blk[b]);
        dam_case_close(&dc);
    }
    free(path);
    st_close(&f);
}

/* bf16 at 1/3 with lr 1e-3 (the reference's start for three sources): c is held as 0.333984375;
 * weight decay alone, c·(1 − 1e-5), rounds back to c; the first Adam step of 1e-3 becomes one bf16
 * spacing, 2^-9; the second, |m̂/√v̂| = 0.9·0.1/0.19 / √(0.999·0.001/0.001999) ≈ 0.67, is under half a
 * spacing and is rounded away. f(c) = bf16(tanh(0.333984375)) = 0.322265625. Exact identities. */
static void test_bf16_third(void **s) {
    (void)s;
    DamCase dc;
    DamConfig c;
    DamTensor *x = bf16_case(&dc, &c, OPT_ADAMW, 1e-3f);
    DamModel *m = &dc.m;
    m->nonlin = NONLIN_TANH;
    size_t o = x->coef_at, n = (size_t)m->n_coef_rows * x->dim;
    m->be->fill(m->ctx, x->c, 1.0f / 3.0f, n);
    dam_model_refresh(m);
    float *cc = test_coef_get(m, DAM_COEF_C), *fc = test_coef_get(m, DAM_COEF_FC);
    assert_true(cc[o] == 0.333984375f && fc[o] == 0.322265625f);
    free(cc), free(fc);
    float *g = test_coef_get(m, DAM_COEF_GRAD);
    for (int t = 1; t <= 3; t++) { /* no gradient: decay only */
        memset(g + o, 0, n * sizeof(float)), test_coef_put(m, DAM_COEF_GRAD, g);
        optim_step(m, &c, c.lr, t);
    }
    cc = test_coef_get(m, DAM_COEF_C);
    for (size_t e = 0; e < n; e++) assert_true(cc[o + e] == 0.333984375f);
    free(cc);
    float *zero = calloc(n, sizeof(float)); /* fresh moments for the two steps below */
    float *am = test_coef_get(m, DAM_COEF_ADAM_M), *av = test_coef_get(m, DAM_COEF_ADAM_V);
    memcpy(am + o, zero, n * sizeof(float)), memcpy(av + o, zero, n * sizeof(float));
    test_coef_put(m, DAM_COEF_ADAM_M, am), test_coef_put(m, DAM_COEF_ADAM_V, av);
    for (size_t e = 0; e < n; e++) g[o + e] = 0.0625f;
    test_coef_put(m, DAM_COEF_GRAD, g);
    optim_step(m, &c, c.lr, 1);
    cc = test_coef_get(m, DAM_COEF_C);
    for (size_t e = 0; e < n; e++) assert_true(cc[o + e] == 0.333984375f - 0x1p-9f);
    free(cc);
    memset(g + o, 0, n * sizeof(float)), test_coef_put(m, DAM_COEF_GRAD, g);
    optim_step(m, &c, c.lr, 2);
    cc = test_coef_get(m, DAM_COEF_C);
    for (size_t e = 0; e < n; e++) assert_true(cc[o + e] == 0.333984375f - 0x1p-9f);
    free(cc), free(zero), free(am), free(av), free(g);
    dam_case_close(&dc);
    /* the same three steps in fp32 move c every time: the identities above are bf16's */
    DamTensor *y = bf16_case(&dc, &c, OPT_ADAMW, 1e-3f);
    m = &dc.m, m->coef_bf16 = 0, c.coef_dtype = DAM_F32, o = y->coef_at;
    m->be->fill(m->ctx, y->c, 1.0f / 3.0f, n);
    dam_model_refresh(m);
    optim_step(m, &c, c.lr, 1);
    cc = test_coef_get(m, DAM_COEF_C);
    assert_true(cc[o] < 1.0f / 3.0f && cc[o] > 0.3333f);
    free(cc);
    dam_case_close(&dc);
}

/* merge.bias_init "one" on a model with biases (Qwen2's q/k/v): every bias coefficient of every
 * source is 1 (the reference's dam.py:241), every other coefficient keeps its value; under tanh the
 * merged bias then starts at tanh(1)·Σ_i b_i. */
static void test_bias_init_one(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "qwen2base", "relu");
    DamModel *m = &dc.m;
    float *before = test_coef_get(m, DAM_COEF_C);
    dam_model_fill_kind(m, DT_BIAS, 1.0f);
    float *after = test_coef_get(m, DAM_COEF_C);
    int biases = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const DamTensor *x = &m->tensors[t];
        biases += x->kind == DT_BIAS;
        for (size_t e = 0; e < (size_t)m->n_coef_rows * x->dim; e++)
            assert_true(after[x->coef_at + e] == (x->kind == DT_BIAS ? 1.0f : before[x->coef_at + e]));
    }
    assert_true(biases > 0);
    free(before), free(after);
    dam_case_close(&dc);
}

/* loss.reg_biases false (the reference's L1/L2/overlap see only self.mergers, dam.py:117-135): on
 * qwen2base (q/k/v biases) the regularizers lose exactly the bias tensors' terms, computed here by
 * hand, and the bias coefficients get no gradient from them. */
static void test_reg_biases(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "qwen2base", "relu");
    DamModel *m = &dc.m;
    for (int t = 0; t < m->n_tensors; t++) m->tensors[t].trainable = 1;
    DamConfig c = base_cfg();
    c.l1 = 0.01f, c.l2 = 0.02f, c.overlap = 0.03f, c.reg_skip_biases = 0;
    float *cc = test_coef_get(m, DAM_COEF_C), *zero = calloc(m->coef.n, sizeof(float));
    double want_l1 = 0, want_l2 = 0, want_ov = 0;
    int n = m->n_coef_rows, pairs = n * (n - 1) / 2, biases = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const DamTensor *x = &m->tensors[t];
        if (x->kind != DT_BIAS) continue;
        biases++;
        const float *b = cc + x->coef_at; /* dim 1: one scalar per row */
        for (int i = 0; i < n; i++) want_l1 += c.l1 * fabs(b[i]), want_l2 += c.l2 * fabs(b[i]);
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) want_ov += c.overlap / pairs * fmin(fabs(b[i]), fabs(b[j]));
    }
    assert_true(biases > 0);
    RegTerms with, without;
    test_coef_put(m, DAM_COEF_GRAD, zero);
    reg_apply(m, &c, &with);
    c.reg_skip_biases = 1;
    test_coef_put(m, DAM_COEF_GRAD, zero);
    reg_apply(m, &c, &without);
    float *g = test_coef_get(m, DAM_COEF_GRAD);
    assert_float_equal(with.l1 - without.l1, (float)want_l1, 1e-6);
    assert_float_equal(with.l2 - without.l2, (float)want_l2, 1e-6);
    assert_float_equal(with.overlap - without.overlap, (float)want_ov, 1e-6);
    for (int t = 0; t < m->n_tensors; t++)
        if (m->tensors[t].kind == DT_BIAS)
            for (int i = 0; i < n; i++) assert_true(g[m->tensors[t].coef_at + i] == 0.0f);
    free(cc), free(zero), free(g);
    dam_case_close(&dc);
}

/* merge.init random_tensor: per tensor one softmax of N draws from U[0,1), the same on every column
 * (rows sum to 1, each within [1/(1 + (N−1)e), e/(e + N − 1)]), tensors differ, and the values
 * depend only on the seed and the tensor's name (the same under any layout). */
static void test_random_tensor_init(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    DamModel *m = &dc.m;
    coef_init_random_tensor(m, 42);
    float *a = test_coef_get(m, DAM_COEF_C);
    int n = m->n_coef_rows;
    double lo = 1 / (1 + (n - 1) * M_E), hi = M_E / (M_E + n - 1);
    for (int t = 0; t < m->n_tensors; t++) {
        const DamTensor *x = &m->tensors[t];
        const float *c = a + x->coef_at;
        double sum = 0;
        for (int i = 0; i < n; i++) {
            sum += c[(size_t)i * x->dim];
            assert_true(c[(size_t)i * x->dim] >= lo && c[(size_t)i * x->dim] <= hi);
            for (int j = 1; j < x->dim; j++) assert_true(c[(size_t)i * x->dim + j] == c[(size_t)i * x->dim]);
        }
        assert_float_equal(sum, 1.0, 1e-6);
        if (t > 0) assert_true(c[0] != a[m->tensors[t - 1].coef_at]); /* another draw per tensor */
    }
    /* the same tensor names in another order: the same values (what another layout sees) */
    DamTensor first = m->tensors[0];
    m->tensors[0] = m->tensors[1], m->tensors[1] = first;
    coef_init_random_tensor(m, 42);
    float *b = test_coef_get(m, DAM_COEF_C);
    for (size_t e = 0; e < m->coef.n; e++) assert_true(a[e] == b[e]);
    m->tensors[1] = m->tensors[0], m->tensors[0] = first;
    coef_init_random_tensor(m, 43);
    float *d = test_coef_get(m, DAM_COEF_C);
    assert_true(d[0] != a[0]); /* the seed matters */
    free(a), free(b), free(d);
    dam_case_close(&dc);
}

/* Every schedule at lr 0.1, 10 warmup steps of 110, against the learning rates transformers 5.24's
 * get_scheduler(name, SGD(lr=0.1), num_warmup_steps=10, num_training_steps=110,
 * scheduler_specific_kwargs=...) gave the optimizer at steps 0, 5, 10, 37, 60, 109. */
static void test_hf_schedules(void **s) {
    (void)s;
    static const int steps[6] = {0, 5, 10, 37, 60, 109};
    static const struct {
        ScheduleKind kind;
        double num_cycles, lr_end, power;
        int timescale;
        double lr[6];
    } want[] = {
        {SCHED_CONSTANT_WITH_WARMUP, 0.5, 1e-7, 1, 0, {0.0, 0.05, 0.1, 0.1, 0.1, 0.1}},
        {SCHED_LINEAR, 0.5, 1e-7, 1, 0, {0.0, 0.05, 0.1, 0.073, 0.05, 0.001}},
        {SCHED_COSINE, 0.5, 1e-7, 1, 0, {0.0, 0.05, 0.1, 0.0830655932661826, 0.05, 2.467198171342e-05}},
        {SCHED_COSINE_WITH_RESTARTS,
         3,
         1e-7,
         1,
         0,
         {0.0, 0.05, 0.1, 0.008645971286271903, 0.05, 0.00022190176984600575}},
        {SCHED_POLYNOMIAL,
         0.5,
         1e-3,
         2,
         0,
         {0.0, 0.05, 0.1, 0.053757099999999995, 0.025750000000000002, 0.0010099}},
        {SCHED_INVERSE_SQRT,
         0.5,
         1e-7,
         1,
         0,
         {0.0, 0.05, 0.1, 0.051987524491003634, 0.04082482904638631, 0.030289126640769132}},
        {SCHED_INVERSE_SQRT,
         0.5,
         1e-7,
         1,
         25,
         {0.0, 0.05, 0.1, 0.06933752452815364, 0.05773502691896259, 0.04490132550669373}},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        DamConfig c = base_cfg();
        c.schedule = want[i].kind, c.warmup = 10, c.num_cycles = want[i].num_cycles;
        c.lr_end = want[i].lr_end, c.power = want[i].power, c.timescale = want[i].timescale;
        for (int j = 0; j < 6; j++) {
            double got = optim_lr(&c, steps[j], 110), w = want[i].lr[j];
            if (fabs(got - w) > 1e-7 * 0.1 + 1e-6 * w)
                fail_msg("schedule %d step %d: %.9g, transformers %.9g", (int)want[i].kind, steps[j], got, w);
        }
        /* warmup_ratio 0.09 of 110 steps: ceil(9.9) = 10 warmup steps, the same schedule */
        c.warmup = 0, c.warmup_ratio = 0.09;
        assert_int_equal(optim_warmup_steps(&c, 110), 10);
        for (int j = 0; j < 6; j++) assert_float_equal(optim_lr(&c, steps[j], 110), want[i].lr[j], 1e-7);
    }
}

/* Task vectors of 3 rows over 2 stored rows and 4 columns; row 2 is a base row (τ = 0). Columns:
 * 45°, parallel, orthogonal, 30° between rows 0 and 1. */
static void known_angles(void *ctx, int row, size_t o, double *out) {
    (void)ctx;
    static const double tv[2][2][4] = {{{1, 1, 1, 1}, {0, 0, 0, 0}},
                                       {{1, 2, 0, 1.7320508075688772}, {1, 0, 3, 1}}};
    for (int j = 0; j < 4; j++) out[j] = row == 2 ? 0 : tv[row][o][j];
}

static void test_wov_pair_weights(void **s) {
    (void)s;
    double w[3 * 4];
    wov_pair_weights(3, 2, 4, known_angles, NULL, w);
    /* sin²(2θ) = 4cos²θ(1 − cos²θ), cos with the reference's 1e-8 added to each norm: 1 at 45°, 0.75
     * at 30°, ~1e-7 for parallel columns (cos = 1 − 1.5e-8), 0 for orthogonal ones */
    const double dot[4] = {1, 2, 0, 1.7320508075688772}, n0[4] = {1, 1, 1, 1}, n1[4] = {sqrt(2), 2, 3, 2};
    for (int j = 0; j < 4; j++) {
        double cs = dot[j] / ((n0[j] + 1e-8) * (n1[j] + 1e-8)), want = 4 * cs * cs * (1 - cs * cs);
        assert_float_equal(w[j], want, 1e-12);
        assert_true(fabs(want - (double[]){1, 0, 0, 0.75}[j]) < 2e-7);
        assert_float_equal(w[4 + j], 0, 1e-12); /* pairs with the base row: cos 0, sin²(180°) */
        assert_float_equal(w[8 + j], 0, 1e-12);
    }
}

/* The weighted overlap op by hand: c rows [0.3, -0.2], [0.3, 0.5], [-0.3, 0.2]; column 0 ties three
 * ways, column 1 ties between rows 0 and 2. */
static void test_weighted_overlap_ties(void **s) {
    (void)s;
    const Backend *be = test_be();
    BackendCtx *ctx = test_ctx();
    const float c[6] = {0.3f, -0.2f, 0.3f, 0.5f, -0.3f, 0.2f}, wts[6] = {1, 0.5f, 0.25f, 2, 4, 1};
    DevBuf dc = be->alloc(ctx, 6, DAM_F32, "c"), dw = be->alloc(ctx, 6, DAM_F32, "wts"),
           dg = be->alloc(ctx, 6, DAM_F32, "g");
    be->upload(ctx, dc, c, DAM_F32, 6), be->upload(ctx, dw, wts, DAM_F32, 6);
    double v = be->coef_weighted_overlap(ctx, dg, dc, dw, 3, 2, 0.1);
    float g[6];
    be->download(ctx, g, DAM_F32, dg, 6);
    /* column 0: 0.3·(1 + 0.25 + 4); column 1: 0.2·0.5 + 0.2·2 + 0.2·1 */
    assert_float_equal(v, 0.1 * (0.3 * 5.25 + 0.2 * 3.5), 1e-7);
    /* (0,1) and (0,2) tie in column 0: row 0 takes both; (1,2) ties: row 1 takes it. Column 1: row 0
     * is the smaller of (0,1) (sign −), takes the tie (0,2) (sign −); row 2 the smaller of (1,2). */
    const float want[6] = {0.1f * 1.25f, 0.1f * (-0.5f - 2), 0.1f * 4, 0, 0, 0.1f * 1};
    for (int j = 0; j < 6; j++) assert_float_equal(g[j], want[j], 1e-7);
    be->free(ctx, &dc), be->free(ctx, &dw), be->free(ctx, &dg);
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
        for (size_t j = 0; j < (size_t)m->n_coef_rows * m->tensors[t].dim; j++) {
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
        cmocka_unit_test(test_mofo_keep),
        cmocka_unit_test(test_mofo_source_floor),
        cmocka_unit_test(test_constant_skips_warmup),
        cmocka_unit_test(test_kl_batchmean),
        cmocka_unit_test(test_frozen_kinds),
        cmocka_unit_test(test_mofo_matches_reference),
        cmocka_unit_test(test_bf16_optim_matches_torch),
        cmocka_unit_test(test_bf16_third),
        cmocka_unit_test(test_bias_init_one),
        cmocka_unit_test(test_wov_pair_weights),
        cmocka_unit_test(test_hf_schedules),
        cmocka_unit_test(test_reg_biases),
        cmocka_unit_test(test_random_tensor_init),
        cmocka_unit_test(test_weighted_overlap_ties),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
