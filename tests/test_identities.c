/* test_identities.c — exact identities of the merge:
 *   - coefficients one-hot on source k reproduce source k bit for bit (fp32);
 *   - N copies of one source with any coefficients summing to 1 per column reproduce it;
 *   - the merged model written to disk (bf16 shards + index.json) reloads and reproduces the
 *     in-memory merged logits: bit for bit when the merged weights are exactly representable
 *     (one-hot on a bf16 source), within bf16 rounding otherwise;
 *   - coefficients written and read back are identical;
 *   - the backward from kept activations equals the recomputing one bit for bit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include "test_dam.h"
#include "loss.h"

static void set_one_hot(DamModel *m, int k) {
    float *c = test_coef_get(m, DAM_COEF_C);
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        for (int i = 0; i < m->n_coef_rows; i++)
            for (int j = 0; j < x->dim; j++) c[x->coef_at + (size_t)i * x->dim + j] = i == k ? 1.0f : 0.0f;
    }
    test_coef_put(m, DAM_COEF_C, c);
    free(c);
    m->nonlin = NONLIN_NONE;
    dam_model_refresh(m);
}

static void test_one_hot_reproduces_source(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    size_t n = (size_t)dc.B * dc.T * dc.m.cfg.vocab_size;
    float *merged = malloc(n * sizeof(float)), *source = malloc(n * sizeof(float));
    for (int k = 0; k < dc.m.n_coef_rows; k++) {
        set_one_hot(&dc.m, k);
        dam_model_logits(&dc.m, dc.rs, dc.ids[0], dc.B, dc.T, -1, merged);
        dam_model_logits(&dc.m, dc.rs, dc.ids[0], dc.B, dc.T, k, source);
        printf("one-hot on source %d: %s\n", k,
               memcmp(merged, source, n * sizeof(float)) ? "NOT OK" : "OK (bitwise)");
        assert_memory_equal(merged, source, n * sizeof(float));
    }
    free(merged), free(source);
    dam_case_close(&dc);
}

static void test_identical_sources(void **s) {
    (void)s;
    char *dir = test_fixture("dam/llama3src/m1");
    const char *dirs[3] = {dir, dir, dir}, *names[3] = {"a", "b", "c"};
    DamModel m;
    dam_model_open(&m, 3, dirs, names, test_be(), test_ctx());
    dam_rng rng;
    dam_rng_seed(&rng, 7);
    float *cb = test_coef_get(&m, DAM_COEF_C);
    for (int t = 0; t < m.n_tensors; t++) { /* random positive coefficients summing to 1 per column */
        DamTensor *x = &m.tensors[t];
        float *c = cb + x->coef_at;
        for (int j = 0; j < x->dim; j++) {
            float a = dam_rng_uniform(&rng), b = dam_rng_uniform(&rng) * (1 - a);
            c[j] = a, c[x->dim + j] = b, c[2 * (size_t)x->dim + j] = 1 - a - b;
        }
    }
    test_coef_put(&m, DAM_COEF_C, cb);
    free(cb);
    dam_model_refresh(&m);
    int B = 2, T = 16;
    int32_t ids[32];
    for (int i = 0; i < B * T; i++) ids[i] = (i * 37 + 5) % m.cfg.vocab_size;
    RunState *rs = runstate_new(&m, B, T);
    size_t n = (size_t)B * T * m.cfg.vocab_size;
    float *merged = malloc(n * sizeof(float)), *source = malloc(n * sizeof(float));
    dam_model_logits(&m, rs, ids, B, T, -1, merged);
    dam_model_logits(&m, rs, ids, B, T, 0, source);
    /* Σ c_i·w differs from w only by fp32 rounding of the sum (a few ulps) */
    assert_true(test_report("identical sources, Σc = 1", test_max_rel_diff(merged, source, n, 1e-6), 1e-5));
    free(merged), free(source);
    runstate_free(rs);
    dam_model_close(&m);
    free(dir);
}

/* Write the merged model of dc, reload it as a single source, compare logits with the in-memory ones. */
static double written_vs_memory(DamCase *dc, const char *out_dir, int bitwise) {
    DamConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    char *src_dir = test_fixture("dam/llama3src/m0");
    cfg.models[0].path = src_dir;
    cfg.n_models = 1;
    cfg.out_dir = (char *)out_dir;
    cfg.shard_bytes = 64 * 1024; /* several shards + index.json */
    OutputReport rep = {.steps = 0, .n_data = 0};
    output_write(&dc->m, &cfg, &rep);
    char *idx = dam_path_join(out_dir, "model.safetensors.index.json");
    assert_true(dam_file_exists(idx));
    free(idx);
    size_t n = (size_t)dc->B * dc->T * dc->m.cfg.vocab_size;
    float *mem = malloc(n * sizeof(float)), *disk = malloc(n * sizeof(float));
    dam_model_logits(&dc->m, dc->rs, dc->ids[0], dc->B, dc->T, -1, mem);
    DamModel w;
    const char *dirs[1] = {out_dir}, *names[1] = {"written"};
    dam_model_open(&w, 1, dirs, names, test_be(), test_ctx());
    RunState *rs = runstate_new(&w, dc->B, dc->T);
    dam_model_logits(&w, rs, dc->ids[0], dc->B, dc->T, 0, disk);
    double rel = test_max_rel_diff(disk, mem, n, 1e-6);
    if (bitwise) assert_memory_equal(disk, mem, n * sizeof(float));
    runstate_free(rs);
    dam_model_close(&w);
    free(mem), free(disk), free(src_dir);
    return rel;
}

static void test_written_model_reproduces_logits(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    char *tmp = test_tmpdir();
    char *out = dam_path_join(tmp, "merged");
    set_one_hot(&dc.m, 2);
    assert_true(test_report("written one-hot merge (bitwise)", written_vs_memory(&dc, out, 1), 0));
    /* the GPU's way (row chunks of a bounded device buffer, downloaded), on this backend */
    setenv("DAM_OUTPUT_CHUNK", "1000", 1);
    dam_rm_rf(out);
    assert_true(
        test_report("written one-hot merge, in row chunks (bitwise)", written_vs_memory(&dc, out, 1), 0));
    unsetenv("DAM_OUTPUT_CHUNK");
    dam_rm_rf(out);
    /* generic coefficients: the merged weights are rounded to bf16 on disk; logits of these tiny
     * models move by ~1e-2 of their scale under that rounding */
    char *init = test_fixture("dam/llama3src/coef_init.safetensors");
    output_load_coefficients(&dc.m, init);
    assert_true(test_report("written merge (bf16 storage)", written_vs_memory(&dc, out, 0), 3e-2));
    /* the coefficients file round-trips exactly */
    char *coef = dam_path_join(out, "dam_coefficients.safetensors");
    DamCase again;
    dam_case_open(&again, "llama3src", "kl");
    output_load_coefficients(&again.m, coef);
    float *ca = test_coef_get(&again.m, DAM_COEF_C), *cd = test_coef_get(&dc.m, DAM_COEF_C);
    assert_int_equal(again.m.coef.n, dc.m.coef.n);
    assert_memory_equal(ca, cd, dc.m.coef.n * 4);
    free(ca), free(cd);
    dam_case_close(&again);
    dam_rm_rf(tmp);
    free(coef), free(init), free(out), free(tmp);
    dam_case_close(&dc);
}

/* A teacher cache (top-K indices and logits, as `precompute` stores them) gives the same losses and
 * gradients as picking the teacher's top-K on the fly. */
static void test_topk_cache_equals_on_the_fly(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "qwen2base", "topk");
    int K = dc.cfg.loss.topk, V = dc.m.cfg.vocab_size, n = dc.n_data;
    size_t seg = (size_t)dc.B * dc.T;
    int32_t *ids = malloc(n * seg * sizeof(int32_t)), *idx = malloc(n * seg * K * sizeof(int32_t));
    int8_t *mask = malloc(n * seg);
    float *val = malloc(n * seg * K * sizeof(float)), *logits = malloc(seg * V * sizeof(float));
    int teacher[DAM_MAX_SOURCES];
    for (int k = 0; k < n; k++) {
        memcpy(ids + k * seg, dc.ids[k], seg * sizeof(int32_t));
        memcpy(mask + k * seg, dc.mask[k], seg);
        teacher[k] = k;
        dam_model_logits(&dc.m, dc.rs, dc.ids[k], dc.B, dc.T, k, logits);
        loss_topk(idx + k * seg * K, val + k * seg * K, logits, (int)seg, V, K);
    }
    LossTerms fly[DAM_MAX_SOURCES], cache[DAM_MAX_SOURCES];
    size_t total = dam_model_num_coefs(&dc.m, 0);
    float *g_fly = malloc(total * sizeof(float)), *g_cache = malloc(total * sizeof(float));
    const int32_t *ids_p = ids, *idx_p = idx;
    const int8_t *mask_p = mask;
    const float *val_p = val;
    DamStep step = {.model = &dc.m,
                    .slots = &dc.rs,
                    .n_slots = 1,
                    .M = 1,
                    .n_seg = n,
                    .B = dc.B,
                    .T = dc.T,
                    .global_mb = 1,
                    .teacher = teacher,
                    .ids = &ids_p,
                    .mask = &mask_p,
                    .loss = &dc.cfg.loss,
                    .backward = 1};
    for (int pass = 0; pass < 2; pass++) {
        dam_model_zero_grad(&dc.m);
        step.topk_idx = pass ? &idx_p : NULL, step.topk_val = pass ? &val_p : NULL;
        step.terms = pass ? cache : fly;
        dam_micro_batches(&step);
        dam_model_coef_download(&dc.m, DAM_COEF_GRAD, pass ? g_cache : g_fly); /* (total = the block) */
    }
    for (int k = 0; k < n; k++) assert_float_equal(cache[k].kl, fly[k].kl, 1e-6 * fabs(fly[k].kl));
    assert_true(test_report("top-K cache vs on the fly: gradients",
                            test_max_rel_diff(g_cache, g_fly, total, 1e-8), 1e-5));
    /* and the cache is what is read: a flat teacher cache changes the loss */
    for (size_t j = 0; j < n * seg * K; j++) val[j] = 0;
    step.topk_idx = &idx_p, step.topk_val = &val_p, step.terms = cache;
    dam_micro_batches(&step);
    assert_true(fabs(cache[0].kl - fly[0].kl) > 1e-3 * fabs(fly[0].kl));
    free(ids), free(idx), free(mask), free(val), free(logits), free(g_fly), free(g_cache);
    dam_case_close(&dc);
}

/* The backward from kept activations (DamModel.keep_acts) equals the one that recomputes each layer
 * from its input, bit for bit: losses and every coefficient gradient, one batch of every dataset. */
static void test_kept_activations_equal_recompute(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "qwen2base", "relu"); /* biases, a base row, relu: every tensor kind */
    dc.batched = 1;
    DamLosses l[2];
    float *g[2];
    for (int keep = 0; keep < 2; keep++) {
        runstate_free(dc.rs);
        dc.m.keep_acts = keep;
        dc.rs = runstate_new(&dc.m, dc.n_data * dc.B, dc.T);
        dam_case_loss(&dc, &l[keep]);
        g[keep] = test_coef_get(&dc.m, DAM_COEF_GRAD);
    }
    printf("kept activations vs recompute: loss %.9g vs %.9g, gradients %s\n", l[1].total, l[0].total,
           memcmp(g[0], g[1], dc.m.coef.n * 4) ? "differ" : "equal (bitwise)");
    assert_true(l[0].total == l[1].total);
    assert_memory_equal(g[0], g[1], dc.m.coef.n * 4);
    assert_true(dam_model_keep_fits(&dc.m, 1, dc.n_data * dc.B, dc.T, (size_t)1 << 30));
    assert_false(dam_model_keep_fits(&dc.m, 1, dc.n_data * dc.B, dc.T, 1));
    assert_false(dam_model_keep_fits(&dc.m, 1, dc.n_data * dc.B, dc.T, 0));
    free(g[0]), free(g[1]);
    dam_case_close(&dc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_hot_reproduces_source),
        cmocka_unit_test(test_identical_sources),
        cmocka_unit_test(test_written_model_reproduces_logits),
        cmocka_unit_test(test_topk_cache_equals_on_the_fly),
        cmocka_unit_test(test_kept_activations_equal_recompute),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
