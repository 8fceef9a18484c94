/* precompute.c — `dam_dist precompute --config F [--topk K]`: each source's teacher forward over its
 * own dataset, storing the top-K teacher logits per position in the dataset file
 * (/topk_indices, /topk_logits; written to a copy and renamed, so a file is never half-updated).
 * A file that already holds a cache of at least K entries is skipped, so an interrupted run resumes
 * where it stopped. A DAM run with loss.topk = K then reads the cache instead of running teachers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "commands.h"
#include "config.h"
#include "dataset.h"
#include "loss.h"
#include "model.h"

enum { PRECOMPUTE_ROWS = 4 }; /* rows per teacher forward */

static void precompute_one(DamModel *m, RunState *rs, int k, const char *path, int K) {
    DamDataset d;
    dataset_open(&d, path);
    dataset_check_ids(&d, m->cfg.vocab_size);
    if (d.topk >= K) {
        printf("precompute: %s already holds a top-%d cache; skipped\n", path, d.topk);
        dataset_close(&d);
        return;
    }
    int64_t n = d.n_rows, L = d.seq_len, V = m->cfg.vocab_size;
    int32_t *idx = dam_malloc((size_t)(n * L * K) * sizeof(int32_t), "top-k ids");
    float *val = dam_malloc((size_t)(n * L * K) * sizeof(float), "top-k logits");
    int32_t *ids = dam_malloc((size_t)(PRECOMPUTE_ROWS * L) * sizeof(int32_t), "ids");
    int8_t *mask = dam_malloc((size_t)(PRECOMPUTE_ROWS * L), "mask");
    float *logits = dam_malloc((size_t)(L * V) * sizeof(float), "logits");
    for (int64_t r0 = 0; r0 < n; r0 += PRECOMPUTE_ROWS) {
        int rows = (int)(n - r0 < PRECOMPUTE_ROWS ? n - r0 : PRECOMPUTE_ROWS);
        dataset_read_rows(&d, r0, rows, ids, mask);
        for (int r = 0; r < rows; r++) { /* one sequence at a time bounds the logits to [L, V] */
            dam_model_logits(m, rs, ids + r * L, 1, (int)L, k, logits);
            loss_topk(idx + (r0 + r) * L * K, val + (r0 + r) * L * K, logits, (int)L, (int)V, K);
        }
    }
    dataset_close(&d);
    dataset_write_topk(path, K, idx, val);
    printf("precompute: %s: top-%d teacher logits of %s for %lld x %lld positions\n", path, K,
           m->row_names[k], (long long)n, (long long)L);
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
            dam_fail("precompute: unknown argument '%s' (usage: dam_dist precompute --config F [--topk K])",
                     argv[i]);
    }
    if (!config) dam_fail("precompute: --config is required");
    if (comm_world_size() > 1) dam_fail("precompute runs in one process in this version (start it without mpirun -n)");
    DamConfig c;
    config_load(&c, config);
    if (K <= 0) K = c.loss.topk;
    if (K <= 0) dam_fail("%s: precompute needs --topk K or loss.topk > 0", config);
    const char *dirs[DAM_MAX_SOURCES], *names[DAM_MAX_SOURCES];
    for (int i = 0; i < c.n_models; i++) dirs[i] = c.models[i].path, names[i] = c.models[i].name;
    DamModel m;
    dam_model_open(&m, c.n_models, dirs, names, backend_cpu());
    if (K > m.cfg.vocab_size) dam_fail("%s: top-%d exceeds the vocabulary (%d)", config, K, m.cfg.vocab_size);
    RunState *rs = NULL;
    for (int k = 0; k < c.n_models; k++) {
        DamDataset d;
        dataset_open(&d, c.models[k].dataset);
        int L = (int)d.seq_len;
        dataset_close(&d);
        if (L > m.cfg.max_position_embeddings)
            dam_fail("%s: rows of %d tokens exceed max_position_embeddings %d", c.models[k].dataset, L,
                     m.cfg.max_position_embeddings);
        runstate_free(rs);
        rs = runstate_new(&m, 1, L);
        precompute_one(&m, rs, k, c.models[k].dataset, K);
    }
    runstate_free(rs);
    dam_model_close(&m);
    config_free(&c);
    return 0;
}
