/* test_finetune.c — `finetune`'s weight gradients against central finite differences of its own
 * loss, for every tensor kind (embedding, q/k/v/o, gate/up/down, the three norms, biases, lm_head,
 * a tied embedding that is the lm_head too), the target positions against a hand-made example, and
 * the loss falling under AdamW.
 *
 * Tolerance: the loss is the model's fp32 forward (accumulated in double in the loss), so a central
 * difference with step h = 1e-2 along a unit direction over a whole tensor has rounding error about
 * 1e-7·L/h ≈ 5e-5 and truncation error h²·L''' — both below 1e-3 of the directional derivatives here
 * (0.01 to 1); 2e-2 relative is accepted, which a wrong gradient (a missing accumulation, the
 * transpose, a factor 2, the lm_head side of a tied embedding left out) exceeds by far. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include "test_dam.h"
#include "finetune.h"

enum { B = 2, T = 9 };

/* Random ids in [0, V), row 1 padded after 6 tokens; targets on every valid next token. */
static void make_batch(int V, int32_t *ids, int8_t *target) {
    dam_rng r;
    dam_rng_seed(&r, 7);
    int8_t mask[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(dam_rng_u64(&r) % (uint64_t)V), mask[i] = 1;
    for (int t = 6; t < T; t++) mask[T + t] = 0, ids[T + t] = 0;
    assert_int_equal(finetune_targets(mask, NULL, 0, B, T, target), (T - 1) + 5);
}

/* Directional derivative of the loss along a random unit direction over tensor x, analytic (wgrad)
 * and by central difference; fails beyond 2e-2 relative. */
static void check_tensor(Finetune *f, DamTensor *x, const int32_t *ids, const int8_t *target) {
    const Backend *be = f->m.be;
    BackendCtx *cx = f->m.ctx;
    size_t n = x->rows * x->cols;
    float *w = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float)), *dir = malloc(n * sizeof(float));
    float *moved = malloc(n * sizeof(float));
    be->download(cx, w, DAM_F32, x->src[0].w, n);
    finetune_loss_grad(f, ids, target, B, T);
    be->download(cx, g, DAM_F32, x->wgrad, n);
    dam_rng r;
    dam_rng_seed(&r, 11 + n);
    double norm = 0, analytic = 0;
    for (size_t j = 0; j < n; j++) dir[j] = dam_rng_normal(&r), norm += (double)dir[j] * dir[j];
    for (size_t j = 0; j < n; j++) dir[j] = (float)(dir[j] / sqrt(norm)), analytic += (double)g[j] * dir[j];
    const double h = 1e-2;
    double l[2];
    for (int s = 0; s < 2; s++) {
        for (size_t j = 0; j < n; j++) moved[j] = (float)(w[j] + (s ? -h : h) * dir[j]);
        be->upload(cx, x->src[0].w, moved, DAM_F32, n);
        l[s] = finetune_loss_grad(f, ids, target, B, T);
    }
    be->upload(cx, x->src[0].w, w, DAM_F32, n); /* restored */
    double fd = (l[0] - l[1]) / (2 * h), err = fabs(fd - analytic) / fmax(fabs(fd), 1e-3);
    printf("  %-48s analytic %+.6f  finite difference %+.6f  rel %.1e\n", x->name, analytic, fd, err);
    assert_true(fabs(analytic) > 1e-4); /* a direction the loss depends on */
    assert_true(err < 2e-2);
    free(w), free(g), free(dir), free(moved);
}

/* The fixture model `name` (tests/fixtures/models) opened for fine-tuning batches of B x T. */
static void open_fixture(Finetune *f, const char *name) {
    char *dir = test_fixture("models");
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    free(dir);
    finetune_open(f, path, test_be(), test_ctx(), B, T);
}

/* Every tensor of the fixture model `name`. */
static void check_model(const char *name) {
    Finetune f;
    open_fixture(&f, name);
    int32_t ids[B * T];
    int8_t target[B * T];
    make_batch(f.m.cfg.vocab_size, ids, target);
    for (int t = 0; t < f.m.n_tensors; t++) check_tensor(&f, &f.m.tensors[t], ids, target);
    finetune_close(&f);
}

static void test_fd_llama_untied(void **state) { check_model("llama_untied_bf16"); } /* lm_head */
static void test_fd_qwen2_tied_bias(void **state) { check_model("qwen2_bias"); }     /* tied, biases */

/* Targets by hand: position t predicts token t+1; padding and the last position never. */
static void test_targets(void **state) {
    const int8_t mask[2 * 4] = {1, 1, 1, 1, 1, 1, 0, 0};
    const int8_t answer[2 * 4] = {0, 0, 1, 1, 0, 1, 0, 0};
    int8_t target[8];
    const int8_t all[8] = {1, 1, 1, 0, 1, 0, 0, 0}, ans[8] = {0, 1, 1, 0, 1, 0, 0, 0};
    assert_int_equal(finetune_targets(mask, answer, 0, 2, 4, target), 4);
    assert_memory_equal(target, all, 8);
    assert_int_equal(finetune_targets(mask, answer, 1, 2, 4, target), 3);
    assert_memory_equal(target, ans, 8);
}

/* The loss by hand: all weights of the lm_head zero gives uniform logits,
 * so the cross-entropy is log V exactly, whatever the inputs. */
static void test_uniform_loss(void **state) {
    Finetune f;
    open_fixture(&f, "llama_untied_bf16");
    DamTensor *lm = f.m.lm_head;
    size_t n = lm->rows * lm->cols;
    f.m.be->fill(f.m.ctx, lm->src[0].w, 0.0f, n);
    int32_t ids[B * T];
    int8_t target[B * T];
    make_batch(f.m.cfg.vocab_size, ids, target);
    assert_true(fabs(finetune_loss_grad(&f, ids, target, B, T) - log((double)f.m.cfg.vocab_size)) < 1e-5);
    finetune_close(&f);
}

/* AdamW on one batch: the loss falls to well under half of where it started (memorisation). */
static void test_loss_falls(void **state) {
    Finetune f;
    open_fixture(&f, "qwen2_bias");
    int32_t ids[B * T];
    int8_t target[B * T];
    make_batch(f.m.cfg.vocab_size, ids, target);
    double first = 0, last = 0;
    for (int step = 1; step <= 40; step++) {
        last = finetune_loss_grad(&f, ids, target, B, T);
        if (step == 1) first = last;
        finetune_clip(&f, 1.0);
        finetune_adamw(&f, step, 1e-2f, 0.0f);
    }
    printf("  loss %.4f -> %.4f after 40 steps\n", first, last);
    assert_true(last < 0.5 * first);
    finetune_close(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_targets), cmocka_unit_test(test_uniform_loss),
                                       cmocka_unit_test(test_fd_llama_untied),
                                       cmocka_unit_test(test_fd_qwen2_tied_bias),
                                       cmocka_unit_test(test_loss_falls)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
