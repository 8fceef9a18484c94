/* test_plan.c — `dam_dist plan` (src/commands/plan.c):
 *   - its coefficient count and shard bytes per (stage, tp rank) equal those of a model really opened
 *     with that share (dam_model_open_parallel on the fixture models; opening reads only the groups'
 *     rank and size, so one process opens every share; tied embeddings under pp need a real pp
 *     group, so those are checked at pp = 1);
 *   - the published Llama-3-70B and Llama-3.1-8B configs (tests/fixtures/configs) in model
 *     directories that hold only config.json: the source bytes per GPU, the fit verdicts and the
 *     layout plan names when a layout does not fit;
 *   - Qwen3's q/k norm activations (the projections before the norm, its rstd per head, their
 *     gradients) in the memory estimate, exactly, on the published Qwen3-8B config;
 *   - bad input: one error line, exit status 1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <cJSON.h>
#include <sys/stat.h>

#include "backend.h"
#include "comm.h"
#include "hfconfig.h"
#include "model.h"
#include "test_util.h"
#include "util.h"

/* src/commands/plan.c, exported for this test */
size_t plan_num_coefs(const ModelConfig *c, int n_rows, int tp, int pp, int stage);
double plan_source_bytes(const ModelConfig *c, int n_rows, double elem_bytes, int tp, int pp, int stage);

/* ---------------------------------------------------------------- against an opened model */

/* tp x pp shares of three copies of a fixture model; `max_pp` 1 for tied embeddings, whose two
 * stages get a communicator of their own when opened (a real pp group is needed for that). */
static void check_fixture_model(const char *name, int max_pp) {
    char rel[128];
    snprintf(rel, sizeof rel, "models/%s", name);
    char *dir = test_fixture(rel);
    const char *dirs[3] = {dir, dir, dir}, *names[3] = {"a", "b", "c"};
    ModelConfig cfg;
    char *cp = dam_path_join(dir, "config.json");
    hfconfig_load(&cfg, cp);
    free(cp);
    const int shares[][2] = {{1, 1}, {2, 1}, {1, 2}, {2, 2}}; /* tp, pp */
    const Backend *be = backend_by_name("cpu");
    BackendCtx *ctx = be->ctx_new(0);
    for (size_t k = 0; k < sizeof shares / sizeof *shares; k++) {
        int tp = shares[k][0], pp = shares[k][1];
        if (pp > max_pp) continue;
        for (int s = 0; s < pp; s++)
            for (int r = 0; r < tp; r++) {
                CommGroup tg = {.comm = MPI_COMM_NULL, .rank = r, .size = tp, .name = "tp"},
                          pg = {.comm = MPI_COMM_NULL, .rank = s, .size = pp, .name = "pp"};
                DamModel m;
                dam_model_open_parallel(&m, 3, dirs, names, be, ctx, &tg, &pg, DAM_TRANSPORT_AUTO);
                size_t model_coefs = dam_model_num_coefs(&m, 0),
                       plan_coefs = plan_num_coefs(&cfg, 3, tp, pp, s);
                double model_bytes = 0, es = (double)dam_dtype_size(m.tensors[0].src[0].w.dtype);
                for (int t = 0; t < m.n_tensors; t++)
                    for (int i = 0; i < m.n_coef_rows; i++)
                        model_bytes += (double)m.tensors[t].rows * m.tensors[t].cols *
                                       dam_dtype_size(m.tensors[t].src[i].w.dtype);
                double plan_bytes = plan_source_bytes(&cfg, 3, es, tp, pp, s);
                printf(
                    "  %-18s tp=%d pp=%d stage %d tp rank %d: coefficients %zu (model %zu), shard bytes %.0f "
                    "(model %.0f)\n",
                    name, tp, pp, s, r, plan_coefs, model_coefs, plan_bytes, model_bytes);
                assert_int_equal(plan_coefs, model_coefs);
                assert_true(plan_bytes == model_bytes);
                dam_model_close(&m);
            }
    }
    be->ctx_free(ctx);
    free(dir);
}

static void test_coefficients_match_model(void **state) {
    (void)state;
    check_fixture_model("llama_gqa_tied", 1);    /* tied embeddings */
    check_fixture_model("llama_untied_bf16", 2); /* bf16 storage, separate lm_head */
    check_fixture_model("qwen2_bias", 1);        /* q/k/v biases, split with their layer; tied */
    check_fixture_model("qwen2_sw", 2);          /* q/k/v biases, untied */
    check_fixture_model("qwen3_tied", 1);        /* q_norm, k_norm whole on every tp rank; tied */
}

/* What qk_norm adds to the workspace and the run state: q_raw, k_raw and their gradients dq_raw,
 * dk_raw (activation dtype) and rstd per token and head (F32) for BT rows, the two [head_dim]
 * weights; with kept activations, q_raw, k_raw and the rstds of every layer. */
static void test_qwen3_activations(void **state) {
    (void)state;
    ModelConfig q3;
    char *fx = test_fixture("configs/qwen3-8b.json");
    hfconfig_load(&q3, fx);
    free(fx);
    ModelConfig plain = q3;
    plain.qk_norm = 0;
    const int B = 2, T = 512, L = 36;
    size_t BT = (size_t)B * T, act = 2, hd = (size_t)q3.head_dim, H = q3.num_attention_heads,
           KV = q3.num_key_value_heads, qd = H * hd, kvd = KV * hd;
    for (int keep = 0; keep <= 1; keep++) {
        size_t ws3, rs3, ws, rs;
        dam_model_activation_bytes(&q3, L, 1, B, T, DAM_BF16, DAM_BF16, keep, &ws3, &rs3);
        dam_model_activation_bytes(&plain, L, 1, B, T, DAM_BF16, DAM_BF16, keep, &ws, &rs);
        size_t per_layer = BT * ((qd + kvd) * act + (H + KV) * 4);
        printf("  Qwen3-8B, keep %d: workspace +%zu bytes, run state +%zu bytes for the q/k norms\n", keep,
               ws3 - ws, rs3 - rs);
        assert_int_equal(ws3 - ws, per_layer + BT * (qd + kvd) * act + 2 * hd * act);
        assert_int_equal(rs3 - rs, keep ? (size_t)L * per_layer : 0);
    }
}

/* ---------------------------------------------------------------- published configs */

static void write_text(const char *path, const char *text) {
    dam_write_file_atomic(path, text, strlen(text));
}

/* A run directory: three sources whose directories hold only `fixture`'s config.json, and a run
 * config with the given train and parallel sections. Returns the config path (heap). */
static char *make_run(const char *tmp, const char *fixture, const char *train, const char *parallel) {
    char rel[128];
    snprintf(rel, sizeof rel, "configs/%s.json", fixture);
    char *src = test_fixture(rel);
    size_t n;
    char *text = dam_read_file(src, &n);
    for (int i = 0; i < 3; i++) {
        char *d = dam_asprintf("%s/m%d", tmp, i), *p = dam_asprintf("%s/m%d/config.json", tmp, i);
        mkdir(d, 0755);
        write_text(p, text);
        free(d), free(p);
    }
    static int serial = 0;
    char *cfg = dam_asprintf("%s/%s-%d.json", tmp, fixture, serial++);
    char *json = dam_asprintf(
        "{\"models\": [{\"path\": \"m0\", \"dataset\": \"d0.h5\"}, {\"path\": \"m1\", \"dataset\": "
        "\"d1.h5\"}, {\"path\": \"m2\", \"dataset\": \"d2.h5\"}],\n \"train\": %s,\n \"parallel\": "
        "{\"dp\": %s}}\n",
        train, parallel);
    write_text(cfg, json);
    free(json), free(text), free(src);
    return cfg;
}

/* `dam_dist plan ... --json` parsed; fails the test unless it exits 0 (fits) or 3 (does not fit). */
static cJSON *plan_json(const char *cfg, const char *args) {
    char *cmd = dam_asprintf("%s plan --config %s %s --json", test_dam_bin(), cfg, args);
    static TestRun r;
    test_run(&r, cmd);
    free(cmd);
    if (!r.exited || (r.status != 0 && r.status != 3)) printf("plan failed: %s\n", r.err);
    assert_true(r.exited && (r.status == 0 || r.status == 3));
    cJSON *j = cJSON_Parse(r.out);
    assert_non_null(j);
    /* exit status 0 when every rank fits, 3 when one does not (docs/memory.md) */
    assert_int_equal(r.status, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "fits")) ? 0 : 3);
    return j;
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

/* Σ over ranks of bytes.sources, and the largest total. */
static double sum_sources(const cJSON *j, int *n_ranks, int *n_fit) {
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(j, "ranks");
    double s = 0;
    *n_ranks = 0, *n_fit = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, ranks) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(r, "bytes");
        s += num(b, "sources");
        (*n_ranks)++;
        int fits = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "fits"));
        *n_fit += fits;
        assert_true(fits == (num(b, "total") <= num(j, "limit_bytes")));
        double parts = num(b, "sources") + num(b, "coefficients") + num(b, "workspace") +
                       num(b, "run_states") + num(b, "inputs") + num(b, "output_phase") + num(b, "baseline");
        assert_true(fabs(parts - num(b, "total")) <= 8); /* the terms add up (each rounded) */
    }
    return s;
}

/* The layout `best` names (smallest_fit), planned again: it must fit, every rank. */
static void check_named_layout(const char *tmp, const char *fixture, const char *train, const cJSON *best) {
    char parallel[64], args[96];
    snprintf(parallel, sizeof parallel, "1, \"pp\": %.0f, \"tp\": %.0f", num(best, "pp"), num(best, "tp"));
    snprintf(args, sizeof args, "--ranks %.0f --gpu-mem 80 --device cuda", num(best, "ranks"));
    char *cfg = make_run(tmp, fixture, train, parallel);
    cJSON *j = plan_json(cfg, args);
    int n, fit;
    sum_sources(j, &n, &fit);
    printf("  the layout plan names, pp=%.0f x tp=%.0f: %d of %d ranks fit\n", num(best, "pp"),
           num(best, "tp"), fit, n);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "fits")));
    assert_int_equal(fit, n);
    assert_true(num(best, "ranks") == n);
    cJSON_Delete(j);
    free(cfg);
}

static void test_llama3_70b(void **state) {
    (void)state;
    char *tmp = test_tmpdir();
    ModelConfig mc;
    char *fx = test_fixture("configs/llama-3-70b.json");
    hfconfig_load(&mc, fx);
    free(fx);
    double per_source = (double)hfconfig_num_params(&mc) * 2; /* bf16: 141.1 GB */
    const char *train = "{\"batch_size\": 1, \"micro_batches\": 8, \"seq_len\": 2048}";
    char *cfg = make_run(tmp, "llama-3-70b", train, "1, \"pp\": 0, \"tp\": 1");

    /* 8 GPUs, pp = 8: the source shards average 423 GB / 8 = 52.9 GB per GPU, and every stage fits
     * in 80 GiB: stage s keeps min(m, pp - s) micro-batches in flight (8 on the first, 1 on the
     * last, which also holds the lm_head buffers), activations in bf16 (docs/memory.md). */
    cJSON *j = plan_json(cfg, "--ranks 8 --gpu-mem 80 --device cuda");
    int n, fit;
    double total = sum_sources(j, &n, &fit);
    const cJSON *lay = cJSON_GetObjectItemCaseSensitive(j, "layout");
    printf("  70B x3, 8 ranks (pp=%.0f): sources %.1f GB in all (3 x %.1f GB), %.2f GB per GPU on average; "
           "%d of 8 ranks fit in 80 GiB\n",
           num(lay, "pp"), total / 1e9, per_source / 1e9, total / n / 1e9, fit);
    assert_int_equal(n, 8);
    assert_true(num(lay, "pp") == 8 && num(lay, "tp") == 1);
    assert_true(fabs(total - 3 * per_source) <= 0.01 * 3 * per_source);
    assert_true(fabs(total / 8 - 52.9e9) <= 0.01 * 52.9e9);
    assert_int_equal(fit, 8);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "fits")));
    cJSON_Delete(j);

    /* 4 GPUs: the shards alone (105.8 GB each) exceed 80 GiB; plan names a layout of more ranks
     * that fits (8 at most: pp = 4 x tp = 2 does) */
    j = plan_json(cfg, "--ranks 4 --gpu-mem 80 --device cuda");
    sum_sources(j, &n, &fit);
    assert_int_equal(n, 4);
    assert_int_equal(fit, 0);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "fits")));
    const cJSON *best = cJSON_GetObjectItemCaseSensitive(j, "smallest_fit");
    assert_true(cJSON_IsObject(best) && num(best, "ranks") > 4 && num(best, "ranks") <= 8);
    assert_true(num(j, "bubble") > 0.27 && num(j, "bubble") < 0.28); /* 3 / (8 + 3) */
    assert_true(num(j, "stop_lead_s") > 0 && num(j, "load_s") > 0);
    const cJSON *sug = cJSON_GetObjectItemCaseSensitive(j, "suggestion");
    assert_true(cJSON_IsString(sug) && !strncmp(sug->valuestring, "--signal=B:USR1@", 16));
    printf("  70B x3, 4 ranks: no rank fits; smallest layout that fits: pp=%.0f x tp=%.0f; %s\n",
           num(best, "pp"), num(best, "tp"), sug->valuestring);
    check_named_layout(tmp, "llama-3-70b", train, best);
    cJSON_Delete(j);
    free(cfg);
    dam_rm_rf(tmp);
    free(tmp);
}

static void test_llama31_8b_one_node(void **state) {
    (void)state;
    char *tmp = test_tmpdir();
    ModelConfig mc;
    char *fx = test_fixture("configs/llama-3.1-8b.json");
    hfconfig_load(&mc, fx);
    free(fx);
    double per_source = (double)hfconfig_num_params(&mc) * 2; /* 16.06 GB */
    char *cfg = make_run(tmp, "llama-3.1-8b", "{\"batch_size\": 1, \"micro_batches\": 8, \"seq_len\": 2048}",
                         "1, \"pp\": 0, \"tp\": 1");
    /* one GPU of 80 GiB holds three 8B sources */
    cJSON *j = plan_json(cfg, "--ranks 1 --gpu-mem 80 --device cuda");
    int n, fit;
    double total = sum_sources(j, &n, &fit);
    printf("  8B x3 on 1 GPU: sources %.2f GB (3 x %.2f GB), fits: %d\n", total / 1e9, per_source / 1e9, fit);
    assert_true(fit == 1 && fabs(total - 3 * per_source) <= 0.01 * 3 * per_source);
    assert_true(num(j, "bubble") == 0);
    /* the layers' activations (32 layers x 3 x 2048 tokens) do not fit the default 256 MB budget:
     * recomputed; with parallel.keep_activations large enough they are kept, in the run state */
    const cJSON *r0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "ranks"), 0);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r0, "activations_kept")));
    double rs_recompute = num(cJSON_GetObjectItemCaseSensitive(r0, "bytes"), "run_states");
    char *keep = make_run(tmp, "llama-3.1-8b", "{\"batch_size\": 1, \"micro_batches\": 8, \"seq_len\": 2048}",
                          "1, \"pp\": 0, \"tp\": 1, \"keep_activations\": \"1000GB\"");
    cJSON *jk = plan_json(keep, "--ranks 1 --gpu-mem 80 --device cuda");
    const cJSON *k0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(jk, "ranks"), 0);
    double rs_kept = num(cJSON_GetObjectItemCaseSensitive(k0, "bytes"), "run_states");
    printf("  8B x3 on 1 GPU: run state %.2f GB recomputing, %.2f GB keeping the activations\n",
           rs_recompute / 1e9, rs_kept / 1e9);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(k0, "activations_kept")));
    assert_true(rs_kept > 5 * rs_recompute);
    cJSON_Delete(jk);
    free(keep);
    cJSON_Delete(j);
    /* one CPU node, 8 ranks of 64 GiB: the stages cover the 32 layers in order */
    j = plan_json(cfg, "--ranks 8 --mem-per-rank 64");
    total = sum_sources(j, &n, &fit);
    printf("  8B x3 on 8 CPU ranks: resident sources %.2f GB in all, %d of %d ranks fit\n", total / 1e9, fit,
           n);
    assert_true(n == 8 && fit == 8 && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "fits")));
    const cJSON *st,
        *stages = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "layout"), "stages");
    int next = 0;
    cJSON_ArrayForEach(st, stages) {
        assert_true(num(st, "layer0") == next && num(st, "layer1") > next);
        next = (int)num(st, "layer1");
    }
    assert_int_equal(next, 32);
    cJSON_Delete(j);
    free(cfg);
    dam_rm_rf(tmp);
    free(tmp);
}

/* ---------------------------------------------------------------- bad input */

/* `dam_dist plan ARGS` (ARGS printf-formatted) must fail with one line naming `want`, status 1. */
static void expect_refused(const char *want, const char *fmt, ...) DAM_PRINTF(2, 3);
static void expect_refused(const char *want, const char *fmt, ...) {
    char args[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    char *cmd = dam_asprintf("%s plan %s", test_dam_bin(), args);
    static TestRun r;
    test_run(&r, cmd);
    free(cmd);
    printf("  plan %s\n    -> status %d: %s", args, r.status, r.err);
    assert_true(r.exited && r.status == 1);
    assert_int_equal(test_count_lines(r.err), 1);
    assert_non_null(strstr(r.err, "error:"));
    assert_non_null(strstr(r.err, want));
}

/* --device cuda: the baseline column is the CUDA overhead model (plan.c, docs/memory.md): context +
 * cuBLAS workspace + output chunk (696 MiB) on every GPU; NCCL by the groups of more than one rank
 * (two communicators of 32 MiB each, and ring buffers of 16 channels x 8.85 MiB to each of 2
 * neighbours, 1 in a group of 2; point-to-point 2 channels x 4 MiB per neighbour stage); the
 * pipeline's send slots (the bf16 hidden states of a micro-batch, per in-flight micro-batch and
 * neighbour). */
static void test_cuda_overhead(void **state) {
    (void)state;
    char *tmp = test_tmpdir();
    const char *train = "{\"batch_size\": 1, \"micro_batches\": 8, \"seq_len\": 2048}";
    const double MiB = 1024.0 * 1024.0, fixed = 696 * MiB, msg = 3.0 * 2048 * 8192 * 2;
    struct {
        const char *parallel;
        int ranks, rank;
        double nccl_mib, slots;
    } cases[] = {
        {"1, \"pp\": 0, \"tp\": 8", 8, 3, 2 * 32 + 2 * 16 * 8.85, 0}, /* tp 8: a ring */
        {"1, \"pp\": 0, \"tp\": 2", 2, 1, 2 * 32 + 1 * 16 * 8.85, 0}, /* tp 2: one neighbour */
        {"2, \"pp\": 4, \"tp\": 1", 8, 0, 2 * 32 + 16 * 8.85 + 2 * 32 + 2 * 4, 4 * msg}, /* dp 2, stage 0 */
        {"1, \"pp\": 8, \"tp\": 1", 8, 1, 2 * 32 + 2 * 2 * 4, 2 * 7 * msg}, /* stage 1: 7 in flight */
        {"1, \"pp\": 1, \"tp\": 1", 1, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *cfg = make_run(tmp, "llama-3-70b", train, cases[i].parallel);
        char args[96];
        snprintf(args, sizeof args, "--ranks %d --gpu-mem 80 --device cuda", cases[i].ranks);
        cJSON *j = plan_json(cfg, args);
        const cJSON *r = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "ranks"), cases[i].rank);
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(r, "cuda_baseline_bytes");
        double base = num(cJSON_GetObjectItemCaseSensitive(r, "bytes"), "baseline");
        printf("  dp %s, rank %d: baseline %.0f MiB = %.0f + NCCL %.1f + send slots %.0f MiB\n",
               cases[i].parallel, cases[i].rank, base / MiB, num(o, "context_cublas_output") / MiB,
               num(o, "nccl") / MiB, num(o, "send_slots") / MiB);
        assert_true(fabs(num(o, "context_cublas_output") - fixed) <= 1);
        assert_true(fabs(num(o, "nccl") - cases[i].nccl_mib * MiB) <= 1);
        assert_true(fabs(num(o, "send_slots") - cases[i].slots) <= 1);
        assert_true(fabs(base - fixed - cases[i].nccl_mib * MiB - cases[i].slots) <= 2);
        cJSON_Delete(j);
        free(cfg);
    }
    dam_rm_rf(tmp);
    free(tmp);
}

static void test_bad_input(void **state) {
    (void)state;
    char *tmp = test_tmpdir();
    const char *train = "{\"batch_size\": 1, \"micro_batches\": 3, \"seq_len\": 2048}";
    char *cfg = make_run(tmp, "llama-3-70b", train, "1, \"pp\": 0, \"tp\": 1");
    char *tp3 = make_run(tmp, "llama-3-70b", train, "2, \"pp\": 0, \"tp\": 3");
    char *dp2 = make_run(tmp, "llama-3-70b", train, "2, \"pp\": 2, \"tp\": 1");
    /* the same with micro_batches 4 (the rank count is the only thing wrong) */
    char *dp2m4 = make_run(tmp, "llama-3-70b", "{\"batch_size\": 1, \"micro_batches\": 4, \"seq_len\": 2048}",
                           "2, \"pp\": 2, \"tp\": 1");
    expect_refused("--config", "--ranks 8");
    expect_refused("--ranks", "--config %s", cfg);
    expect_refused("unknown option", "--config %s --ranks 8 --frobnicate", cfg);
    expect_refused("--gpu-mem", "--config %s --ranks 8 --device cuda", cfg);
    /* a rank count no layout of dp=1 x tp=1 can use: named, with the counts that work */
    expect_refused("96 ranks: no dp x pp x tp layout with parallel.dp=1, parallel.tp=1 runs",
                   "--config %s --ranks 96", cfg);
    expect_refused("rank counts that work: 1-80\n", "--config %s --ranks 96", cfg);
    /* layouts that do not divide: tp = 3 over 64 heads; 9 ranks over dp=2 x tp=3 */
    expect_refused("does not divide num_attention_heads", "--config %s --ranks 12", tp3);
    expect_refused("does not divide num_attention_heads", "--config %s --ranks 9", tp3);
    expect_refused("micro_batches=3 is not divisible", "--config %s --ranks 4", dp2);
    /* the rank count comes before the batch: 6 ranks with dp=2 x pp=2 */
    expect_refused("6 ranks: no dp x pp x tp layout", "--config %s --ranks 6", dp2);
    expect_refused("6 ranks: no dp x pp x tp layout", "--config %s --ranks 6", dp2m4);
    expect_refused("rank counts that work: 4\n", "--config %s --ranks 6", dp2m4);
    expect_refused("missing.json", "--config %s/missing.json --ranks 1", tmp);
    free(cfg), free(tp3), free(dp2), free(dp2m4);
    dam_rm_rf(tmp);
    free(tmp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_coefficients_match_model),
        cmocka_unit_test(test_qwen3_activations),
        cmocka_unit_test(test_llama3_70b),
        cmocka_unit_test(test_llama31_8b_one_node),
        cmocka_unit_test(test_cuda_overhead),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
