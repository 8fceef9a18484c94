/* precompute.c — `dam_dist precompute --config F [--topk K]`: each source's teacher forward over its
 * own dataset, storing the top-K teacher logits per position in the dataset file
 * (/topk_indices, /topk_logits; written to a copy and renamed, so a file is never half-updated).
 * A file that already holds a cache of at least K entries is skipped, so an interrupted run resumes
 * where it stopped. A DAM run with loss.topk = K then reads the cache instead of running teachers.
 * Distributed like the main job (the config's parallel section). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "config.h"
#include "dataset.h"
#include "layout.h"
#include "loss.h"
#include "model.h"

/* Dataset k's teacher cache: data-parallel replicas take rows r, r+dp, ...; each row's logits come
 * out of the pipeline on the last stage as tp vocabulary slices, whose top-K is chosen over tp; the
 * replicas' rows are summed into one array (each row written by one replica, zeros elsewhere) and
 * the last stage's tp rank 0 of replica 0 writes the file. */
static void precompute_one(DamModel *m, RunState *rs, const ProcessGrid *g, int k, const char *path, int K) {
    DamDataset d;
    dataset_open(&d, path);
    dataset_check_ids(&d, m->full_cfg.vocab_size);
    int have = d.topk;
    int64_t n = d.n_rows, L = d.seq_len, V = m->cfg.vocab_size;
    int writer = m->last && g->tp_idx == 0;
    if (have >= K) {
        dataset_close(&d);
        if (g->world.rank == 0) printf("precompute: %s already holds a top-%d cache; skipped\n", path, have);
        return;
    }
    size_t total = (size_t)(n * L * K);
    int32_t *idx = writer ? dam_calloc(total, sizeof(int32_t), "top-k ids") : NULL;
    float *val = writer ? dam_calloc(total, sizeof(float), "top-k logits") : NULL;
    int32_t *ids = dam_malloc((size_t)L * sizeof(int32_t), "ids");
    int8_t *mask = dam_malloc((size_t)L, "mask");
    float *logits = dam_malloc((size_t)(L * V) * sizeof(float), "logits");
    for (int64_t row = g->dp_idx; row < n; row += g->dp) { /* one sequence at a time: logits [L, V] */
        dataset_read_rows(&d, row, 1, ids, mask);
        dam_model_logits(m, rs, ids, 1, (int)L, k, logits);
        if (m->last) {
            int32_t *ri = writer ? idx + row * L * K : dam_malloc((size_t)(L * K) * sizeof(int32_t), "top-k");
            float *rv = writer ? val + row * L * K : dam_malloc((size_t)(L * K) * sizeof(float), "top-k");
            dam_model_topk(m, logits, (int)L, K, ri, rv);
            if (!writer) free(ri), free(rv);
        }
    }
    dataset_close(&d);
    if (writer) { /* every row came from exactly one replica */
        comm_allreduce_sum_i32(&g->dp_group, idx, total);
        comm_allreduce_sum_f32(&g->dp_group, val, total);
    }
    comm_barrier(&g->world); /* every rank has closed the file before it is replaced */
    if (writer && g->dp_idx == 0) {
        dataset_write_topk(path, K, idx, val);
        printf("precompute: %s: top-%d teacher logits of %s for %lld x %lld positions\n", path, K,
               m->row_names[k], (long long)n, (long long)L);
        fflush(stdout);
    }
    comm_barrier(&g->world);
    free(idx), free(val), free(ids), free(mask), free(logits);
}

int cmd_precompute(int argc, char **argv) {
    const char *config = NULL;
    int K = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (!strcmp(argv[i], "--topk") && i + 1 < argc)
            K = atoi(argv[++i]);
        else
            cli_bad_option("precompute", argv[i], "--config --topk");
    }
    if (!config) dam_fail("precompute: --config is required");
    DamConfig c;
    config_load(&c, config);
    if (K <= 0) K = c.loss.topk;
    if (K <= 0) dam_fail("%s: precompute needs --topk K or loss.topk > 0", config);
    ProcessGrid g;
    layout_init(&g, &c);
    const char *dirs[DAM_MAX_SOURCES], *names[DAM_MAX_SOURCES];
    for (int i = 0; i < c.n_models; i++) dirs[i] = c.models[i].path, names[i] = c.models[i].name;
    const Backend *be = config_backend(c.device);
    BackendCtx *ctx = config_backend_ctx(&c, be);
    DamModel m;
    dam_model_open_parallel(&m, c.n_models, dirs, names, be, ctx, &g.tp_group, &g.pp_group, c.transport);
    if (K > m.full_cfg.vocab_size)
        dam_fail("%s: top-%d exceeds the vocabulary (%d)", config, K, m.full_cfg.vocab_size);
    RunState *rs = NULL;
    for (int k = 0; k < c.n_models; k++) {
        DamDataset d;
        dataset_open(&d, c.models[k].dataset);
        int L = (int)d.seq_len;
        dataset_close(&d);
        if (L > m.full_cfg.max_position_embeddings)
            dam_fail("%s: rows of %d tokens exceed max_position_embeddings %d", c.models[k].dataset, L,
                     m.full_cfg.max_position_embeddings);
        runstate_free(rs);
        rs = runstate_new(&m, 1, L);
        precompute_one(&m, rs, &g, k, c.models[k].dataset, K);
    }
    runstate_free(rs);
    dam_model_close(&m);
    be->ctx_free(ctx);
    grid_free(&g);
    config_free(&c);
    return 0;
}
