/* train.c — the main job: config → sources → coefficients → steps over the datasets → merged
 * model on disk. One driver for every backend; each step is read_micro_batches, then dam_step, which
 * reads top to bottom in src/engine/step.c. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "checkpoint.h"
#include "comm.h"
#include "commands.h"
#include "config.h"
#include "dataset.h"
#include "optim.h"
#include "output.h"
#include "pipeline.h"
#include "layout.h"
#include "runctl.h"
#include "safetensors.h"
#include "step.h"
#include "tokenizer.h"
#include "pair_weights.h"
#include "coefinit.h"

typedef struct {
    DamConfig cfg;
    ProcessGrid grid; /* dp x pp x tp, built once */
    int root;         /* world rank 0: prints, writes metrics */
    char *ckpt_dir;
    int start_step;
    int64_t tokens_seen;
    const Backend *be; /* config's device (DAM_BACKEND overrides) */
    BackendCtx *ctx;   /* on this rank's GPU (its local rank) */
    DamModel model;
    RunState *rs;                    /* = slots[0] */
    RunState *slots[64];             /* pipeline: one run state per micro-batch in flight */
    LossTerms *terms;                /* the step's loss terms, [local_mb * n_data] */
    int n_slots, local_mb;           /* this replica's micro-batches per step */
    int32_t **mb_ids, **mb_topk_idx; /* pipeline: every local micro-batch's inputs, read up front */
    int8_t **mb_mask;
    float **mb_topk_val;
    int n_data; /* datasets: one per source model, and base_dataset last when given */
    DamDataset data[DAM_MAX_SOURCES];
    /* dataset k: its file, the name logs give it, the model whose tokenizer made it, its teacher row
     * (source k; the base row for base_dataset) */
    const char *data_path[DAM_MAX_SOURCES], *data_name[DAM_MAX_SOURCES], *data_src[DAM_MAX_SOURCES];
    int teacher[DAM_MAX_SOURCES];
    int64_t cursor[DAM_MAX_SOURCES]; /* next row of each dataset (rows consumed; shuffled: see data_row) */
    /* train.shuffle: the order of epoch perm_epoch over shuffle_rows rows (the smallest dataset's) */
    int64_t *perm, perm_epoch, shuffle_rows;
    int in_eval; /* evaluation reads its rows in order */
    int T, B;    /* tokens per row used, rows per micro-batch */
    int32_t *ids, *topk_idx;
    int8_t *mask;
    float *topk_val;
    int total_steps;
    FILE *metrics;
} Trainer;

/* ---------------------------------------------------------------- setup */

static void init_coefficients(Trainer *tr) {
    DamModel *m = &tr->model;
    const DamConfig *c = &tr->cfg;
    if (c->init == INIT_RANDOM) { /* seeded random softmax over the sources, per column */
        dam_rng rng;
        dam_rng_seed(&rng, c->seed);
        float *cc = dam_model_coef_host(m, DAM_COEF_C);
        for (int t = 0; t < m->n_tensors; t++) {
            DamTensor *x = &m->tensors[t];
            for (int j = 0; j < x->dim; j++) {
                double e[DAM_MAX_SOURCES], s = 0;
                for (int i = 0; i < m->n_coef_rows; i++) s += (e[i] = exp(dam_rng_normal(&rng)));
                for (int i = 0; i < m->n_coef_rows; i++)
                    cc[x->coef_at + (size_t)i * x->dim + j] = (float)(e[i] / s);
            }
        }
        dam_model_coef_upload(m, DAM_COEF_C, cc);
        free(cc);
    } else if (c->init == INIT_RANDOM_TENSOR) {
        coef_init_random_tensor(m, c->seed);
    } else if (c->init == INIT_FILE) {
        output_load_coefficients(m, c->init_file);
    }
    if (c->bias_init == BIAS_INIT_ONE && c->init != INIT_FILE) /* the reference: dam.py:241 */
        dam_model_fill_kind(m, DT_BIAS, 1.0f);
    dam_model_refresh(m);
}

static void open_model(Trainer *tr) {
    DamConfig *c = &tr->cfg;
    const char *dirs[DAM_MAX_SOURCES], *names[DAM_MAX_SOURCES];
    int n = config_coef_rows(c, dirs, names);
    tr->n_data = c->n_models;
    for (int k = 0; k < c->n_models; k++) {
        tr->data_path[k] = c->models[k].dataset, tr->data_name[k] = c->models[k].name;
        tr->data_src[k] = c->models[k].path, tr->teacher[k] = k;
    }
    if (c->base_dataset) { /* the base teaches it (the reference's --base_model_dataset_name) */
        int k = tr->n_data++;
        tr->data_path[k] = c->base_dataset, tr->data_name[k] = "base", tr->data_src[k] = c->base_model;
        tr->teacher[k] = n - 1;
    }
    dam_model_open_parallel(&tr->model, n, dirs, names, tr->be, tr->ctx, &tr->grid.tp_group,
                            &tr->grid.pp_group, c->transport);
    dam_model_attach_dp(&tr->model, &tr->grid.dp_group);
    DamModel *m = &tr->model;
    m->nonlin = c->nonlinearity;
    m->coef_bf16 = c->coef_dtype == DAM_BF16;
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        if (x->kind == DT_EMBED) x->trainable = c->embeddings;
        if (x->kind == DT_NORM) x->trainable = c->norms;
    }
    if (c->base_model && !c->include_base) { /* the base must match too, for the config it lends */
        ModelConfig bc;
        char *p = dam_path_join(c->base_model, "config.json");
        hfconfig_load(&bc, p);
        free(p);
        hfconfig_check_same(&m->full_cfg, names[0], &bc, "base");
    }
    if (c->weighted_overlap > 0) wov_setup(m, c->include_base ? NULL : c->base_model);
    init_coefficients(tr);
}

static void open_data(Trainer *tr) {
    DamConfig *c = &tr->cfg;
    int topk;
    tr->T = config_open_datasets(c, &tr->model.full_cfg, tr->n_data, tr->data_path, tr->data, &topk);
    int64_t L = tr->data[0].seq_len;
    tr->B = c->batch_size;
    tr->shuffle_rows = INT64_MAX;
    for (int k = 0; k < tr->n_data; k++)
        tr->shuffle_rows = tr->data[k].n_rows < tr->shuffle_rows ? tr->data[k].n_rows : tr->shuffle_rows;
    int64_t steps_per_epoch = INT64_MAX;
    for (int k = 0; k < tr->n_data; k++) {
        int64_t s = tr->data[k].n_rows / ((int64_t)tr->B * c->micro_batches);
        steps_per_epoch = s < steps_per_epoch ? s : steps_per_epoch;
    }
    if (c->steps > 0)
        tr->total_steps = c->steps;
    else {
        if (steps_per_epoch == 0)
            dam_fail("%s: a step needs batch_size x micro_batches = %d rows; a dataset has fewer", c->file,
                     tr->B * c->micro_batches);
        tr->total_steps = (int)(steps_per_epoch * c->epochs);
    }
    size_t rows = (size_t)tr->n_data * tr->B * (size_t)L; /* one segment per dataset */
    tr->ids = dam_malloc(rows * sizeof(int32_t), "ids");
    tr->mask = dam_malloc(rows * sizeof(int8_t), "mask");
    if (topk > 0) {
        tr->topk_idx = dam_malloc(rows * (size_t)topk * sizeof(int32_t), "top-k ids");
        tr->topk_val = dam_malloc(rows * (size_t)topk * sizeof(float), "top-k logits");
    }
}

/* The dataset row that cursor value `cur` reads. In order: cur mod rows. Shuffled (train.shuffle):
 * epoch e = cur / R and position cur mod R of a permutation of R rows (R the smallest dataset's
 * rows, so every dataset reads the same rows in the same step, as the reference's zipped rows),
 * a pure function of (train.seed, e): a resume rebuilds it from the checkpoint's cursor. */
static int64_t data_row(Trainer *tr, const DamDataset *d, int64_t cur) {
    if (!tr->cfg.shuffle || tr->in_eval) return cur % d->n_rows;
    int64_t R = tr->shuffle_rows, e = cur / R;
    if (!tr->perm || e != tr->perm_epoch) {
        if (!tr->perm) tr->perm = dam_malloc((size_t)R * sizeof(int64_t), "shuffle order");
        dam_rng rng; /* Fisher-Yates over the identity */
        dam_rng_seed(&rng, dam_hash64(&e, sizeof e, tr->cfg.seed ^ 0x5348554646ull));
        for (int64_t i = 0; i < R; i++) tr->perm[i] = i;
        for (int64_t i = R - 1; i > 0; i--) {
            int64_t j = (int64_t)(dam_rng_u64(&rng) % (uint64_t)(i + 1)), t = tr->perm[i];
            tr->perm[i] = tr->perm[j], tr->perm[j] = t;
        }
        tr->perm_epoch = e;
    }
    return tr->perm[cur % R];
}

/* Read the next micro-batch of dataset k into segment `seg` of tr->ids/mask (and the teacher
 * cache): rows are read at stride L and compacted in place to stride T (segments at B*T), moving
 * data only downwards, so earlier segments are never overwritten. */
static void next_batch(Trainer *tr, int k, int seg) {
    DamDataset *d = &tr->data[k];
    int64_t L = d->seq_len, T = tr->T, B = tr->B, Kc = d->topk, K = tr->cfg.loss.topk;
    int32_t *ids = tr->ids + seg * B * L;
    int8_t *mask = tr->mask + seg * B * L;
    for (int64_t b = 0; b < B; b++) {
        int64_t row = data_row(tr, d, tr->cursor[k]++);
        dataset_read_rows(d, row, 1, ids + b * L, mask + b * L);
        if (tr->topk_idx)
            dataset_read_topk(d, row, 1, tr->topk_idx + (seg * B + b) * L * Kc,
                              tr->topk_val + (seg * B + b) * L * Kc);
    }
    for (int64_t b = 0; b < B; b++) {
        memmove(tr->ids + (seg * B + b) * T, ids + b * L, (size_t)T * sizeof(int32_t));
        memmove(tr->mask + (seg * B + b) * T, mask + b * L, (size_t)T);
    }
    for (int64_t r = 0; tr->topk_idx && r < B * T; r++) { /* first loss.topk entries of each position */
        int64_t dst = (seg * B * T + r) * K, src = (seg * B * L + (r / T) * L + r % T) * Kc;
        memmove(tr->topk_idx + dst, tr->topk_idx + src, (size_t)K * sizeof(int32_t));
        memmove(tr->topk_val + dst, tr->topk_val + src, (size_t)K * sizeof(float));
    }
}

/* ---------------------------------------------------------------- one step */

/* This replica's micro-batches of the step (mb ≡ dp_idx mod dp), every dataset in one segment
 * each, read into the per-micro-batch buffers; other replicas' rows are skipped so that every layout
 * reads what one process reads. */
static void read_micro_batches(Trainer *tr) {
    size_t seg = (size_t)tr->n_data * tr->B * tr->T, K = (size_t)tr->cfg.loss.topk;
    for (int mb = 0, i = 0; mb < tr->cfg.micro_batches; mb++) {
        if (mb % tr->grid.dp != tr->grid.dp_idx) { /* another replica's micro-batch: skip its rows */
            for (int k = 0; k < tr->n_data; k++) tr->cursor[k] += tr->B;
            continue;
        }
        for (int k = 0; k < tr->n_data; k++) next_batch(tr, k, k);
        memcpy(tr->mb_ids[i], tr->ids, seg * sizeof(int32_t));
        memcpy(tr->mb_mask[i], tr->mask, seg);
        if (tr->topk_idx) {
            memcpy(tr->mb_topk_idx[i], tr->topk_idx, seg * K * sizeof(int32_t));
            memcpy(tr->mb_topk_val[i], tr->topk_val, seg * K * sizeof(float));
        }
        i++;
    }
}

/* The step (src/engine/step.c: the same code the tests run) over the micro-batches that
 * read_micro_batches fills in before each one. */
static DamStep trainer_step(Trainer *tr) {
    int have_topk = tr->topk_idx != NULL;
    return (DamStep){.model = &tr->model,
                     .cfg = &tr->cfg,
                     .slots = tr->slots,
                     .n_slots = tr->n_slots,
                     .M = tr->local_mb,
                     .n_seg = tr->n_data,
                     .B = tr->B,
                     .T = tr->T,
                     .global_mb = tr->cfg.micro_batches,
                     .teacher = tr->teacher,
                     .ids = (const int32_t *const *)tr->mb_ids,
                     .mask = (const int8_t *const *)tr->mb_mask,
                     .topk_idx = have_topk ? (const int32_t *const *)tr->mb_topk_idx : NULL,
                     .topk_val = have_topk ? (const float *const *)tr->mb_topk_val : NULL,
                     .loss = &tr->cfg.loss,
                     .backward = 1,
                     .update = 1,
                     .total_steps = tr->total_steps,
                     .terms = tr->terms};
}

/* ---------------------------------------------------------------- logging */

static void fmt_eta(char *out, size_t n, double s) {
    int h = (int)(s / 3600), mi = (int)(fmod(s, 3600) / 60), se = (int)fmod(s, 60);
    snprintf(out, n, "%02d:%02d:%02d", h, mi, se);
}

static void log_step(Trainer *tr, int step, const StepStats *st, float lr, double dt, double elapsed) {
    if (!tr->root) return;
    int done = step + 1;
    char eta[32];
    fmt_eta(eta, sizeof eta, elapsed / (done - tr->start_step) * (tr->total_steps - done));
    printf("step %4d/%d | loss %.5f | kl", done, tr->total_steps, st->total);
    for (int k = 0; k < tr->n_data; k++) printf(" %.5f", st->kl[k]);
    if (tr->cfg.loss.mse > 0) printf(" | mse %.4g", st->mse[0]);
    if (tr->cfg.loss.entropy > 0) printf(" | ent %.4g", st->entropy[0]);
    printf(" | sim %.5f", st->reg.similarity);
    if (tr->cfg.l1 > 0 || tr->cfg.l2 > 0) printf(" | l1 %.3g l2 %.3g", st->reg.l1, st->reg.l2);
    if (tr->cfg.weighted_overlap > 0) printf(" | wov %.4g", st->reg.weighted_overlap);
    printf(" | gnorm %.3g | lr %.2e | %lld tok/step | %.0f tok/s | ETA %s\n", st->grad_norm, lr,
           (long long)st->tokens, st->tokens / dt, eta);
    fflush(stdout);
    if (!tr->metrics) return;
    FILE *f = tr->metrics;
    fprintf(f, "{\"step\":%d,\"total_steps\":%d,\"loss\":%.9g,\"kl\":[", done, tr->total_steps, st->total);
    for (int k = 0; k < tr->n_data; k++) fprintf(f, "%s%.9g", k ? "," : "", st->kl[k]);
    fprintf(f, "],\"mse\":[");
    for (int k = 0; k < tr->n_data; k++) fprintf(f, "%s%.9g", k ? "," : "", st->mse[k]);
    fprintf(f, "],\"entropy\":[");
    for (int k = 0; k < tr->n_data; k++) fprintf(f, "%s%.9g", k ? "," : "", st->entropy[k]);
    fprintf(f,
            "],\"similarity\":%.9g,\"l1\":%.9g,\"l2\":%.9g,\"overlap\":%.9g,\"weighted_overlap\":%.9g,"
            "\"grad_norm\":%.9g,\"lr\":%.9g,\"tokens\":%lld,\"tokens_per_s\":%.3f,\"elapsed_s\":%.3f}\n",
            st->reg.similarity, st->reg.l1, st->reg.l2, st->reg.overlap, st->reg.weighted_overlap,
            st->grad_norm, lr, (long long)st->tokens, st->tokens / dt, elapsed);
    fflush(f);
}

/* ---------------------------------------------------------------- evaluation */

/* Mean KL of the merged model to source k over the last n_eval rows of dataset k. */
static double eval_kl(Trainer *tr, int k, int n_eval) {
    DamDataset *d = &tr->data[k];
    int64_t first = d->n_rows - n_eval, saved = tr->cursor[k];
    double kl = 0;
    int64_t tokens = 0;
    LossParams loss = tr->cfg.loss;
    loss.mse = 0, loss.entropy = 0, loss.kl = 1;
    tr->cursor[k] = first;
    tr->in_eval = 1;
    for (int64_t r = 0; r + tr->B <= n_eval; r += tr->B) {
        next_batch(tr, k, 0);
        MicroBatch mb = {.ids = tr->ids,
                         .mask = tr->mask,
                         .topk_idx = tr->topk_idx,
                         .topk_val = tr->topk_val,
                         .B = tr->B,
                         .T = tr->T};
        LossTerms lt = dam_one_micro_batch(&tr->model, tr->rs, tr->teacher[k], &mb, &loss, 0);
        kl += lt.kl * (double)lt.n_valid, tokens += lt.n_valid;
    }
    tr->cursor[k] = saved;
    tr->in_eval = 0;
    return tokens ? kl / (double)tokens : NAN;
}

/* f(c) = 1/N on every source row (0 on the base row): the plain average of the sources. */
static void set_plain_average(DamModel *m, int n_sources) {
    float *fc = dam_malloc((m->coef.n ? m->coef.n : 1) * sizeof(float), "plain average");
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        for (int i = 0; i < m->n_coef_rows; i++)
            for (int j = 0; j < x->dim; j++)
                fc[x->coef_at + (size_t)i * x->dim + j] = i < n_sources ? 1.0f / n_sources : 0.0f;
    }
    dam_model_coef_upload(m, DAM_COEF_FC, fc);
    free(fc);
}

/* n_eval was checked before the first step (check_before_first_step). */
static void eval_table(Trainer *tr, int n_eval) {
    double dam[DAM_MAX_SOURCES] = {0}, avg[DAM_MAX_SOURCES] = {0};
    for (int k = 0; k < tr->n_data; k++) dam[k] = eval_kl(tr, k, n_eval);
    set_plain_average(&tr->model, tr->cfg.n_models);
    for (int k = 0; k < tr->n_data; k++) avg[k] = eval_kl(tr, k, n_eval);
    dam_model_refresh(&tr->model);
    if (!tr->root) return;
    printf("\nKL(source || merged) per token at temperature %.1f on the last %d rows of each dataset\n",
           tr->cfg.loss.temperature, n_eval);
    printf("%-16s %14s %14s %10s\n", "dataset", "DAM", "plain average", "DAM/avg");
    double sd = 0, sa = 0;
    for (int k = 0; k < tr->n_data; k++) {
        printf("%-16s %14.6f %14.6f %10.3f\n", tr->data_name[k], dam[k], avg[k], dam[k] / avg[k]);
        sd += dam[k], sa += avg[k];
    }
    double below = sa > 0 ? 100.0 * (sa - sd) / sa : 0;
    printf("lower is better; summed over the datasets, DAM's KL is %.1f %% %s the plain average's (%.6f vs "
           "%.6f)\n",
           fabs(below), below >= 0 ? "below" : "above", sd, sa);
}

/* ---------------------------------------------------------------- checkpoints */

static void ckpt_meta(const Trainer *tr, int step, CkptMeta *meta) {
    memset(meta, 0, sizeof *meta);
    meta->step = step, meta->total_steps = tr->total_steps, meta->tokens_seen = tr->tokens_seen;
    meta->n_datasets = tr->n_data;
    memcpy(meta->cursor, tr->cursor, sizeof tr->cursor);
    meta->config_hash = tr->cfg.hash;
    meta->config = tr->cfg.effective;
    for (int i = 0; i < tr->model.n_coef_rows; i++) {
        if (i) strncat(meta->sources, ";", sizeof meta->sources - strlen(meta->sources) - 1);
        strncat(meta->sources, tr->model.row_names[i], sizeof meta->sources - strlen(meta->sources) - 1);
    }
}

/* Every rank: rank 0 creates the file, the stages of replica 0 add their tensors in turn (each
 * gathered over tp, written by tp rank 0), rank 0 renames it into place and updates `latest`. A
 * failure (a full disk) ends the job before `latest` moves, so the previous checkpoint stays usable. */
static void save_checkpoint(Trainer *tr, int step) {
    const ProcessGrid *g = &tr->grid;
    DamModel *m = &tr->model;
    char *tmp = ckpt_tmp_path(tr->ckpt_dir, step), *prev = ckpt_latest(tr->ckpt_dir);
    char *note = prev ? dam_asprintf("the previous checkpoint %s and 'latest' are intact", prev)
                      : dam_strdup("no earlier checkpoint exists");
    dam_set_error_note(note);
    free(note), free(prev);
    if (tr->root) {
        dam_mkdir_p(tr->ckpt_dir);
        CkptMeta meta;
        ckpt_meta(tr, step, &meta);
        ckpt_create(tmp, &meta);
    }
    for (int s = 0; s < g->pp; s++) {
        comm_barrier(&g->world);
        if (g->dp_idx != 0 || g->pp_idx != s) continue;
        CkptFile *f = g->tp_idx == 0 ? ckpt_append(tmp) : NULL;
        float *blocks[3] = {dam_model_coef_host(m, DAM_COEF_C), dam_model_coef_host(m, DAM_COEF_ADAM_M),
                            dam_model_coef_host(m, DAM_COEF_ADAM_V)};
        for (int t = 0; t < m->n_tensors; t++) {
            DamTensor *x = &m->tensors[t];
            if (!dam_model_owns(m, x)) continue;
            int split = dam_model_split_kind(m, x) == SPLIT_COLS, full = split ? x->coef_full : x->dim;
            float *v[3];
            for (int i = 0; i < 3; i++)
                v[i] = dam_model_gather_split(m, blocks[i] + x->coef_at, (size_t)m->n_coef_rows,
                                              (size_t)x->dim, split);
            if (f) ckpt_put(f, x->name, m->n_coef_rows, full, v[0], v[1], v[2]);
            for (int i = 0; i < 3; i++) free(v[i]);
        }
        for (int i = 0; i < 3; i++) free(blocks[i]);
        ckpt_close(f);
    }
    comm_barrier(&g->world);
    if (tr->root) free(ckpt_commit(tr->ckpt_dir, tmp, step, tr->cfg.ckpt_keep));
    comm_barrier(&g->world);
    dam_set_error_note(NULL);
    free(tmp);
}

/* The checkpoint's settings against this run's: one line naming the keys that differ. */
static void check_resumed_config(Trainer *tr, const CkptMeta *meta, const char *path, int allow) {
    if (meta->format_version < 2) {
        if (tr->root) printf("dam_dist: note: %s predates recorded settings; they are not compared\n", path);
        return;
    }
    char diff[2048];
    int n = config_diff(meta->config, tr->cfg.effective, diff, sizeof diff);
    if (n == 0) return;
    comm_fail_on_root(
        !allow,
        "%s: checkpoint was made with other settings: %s; resume with the same settings, or pass "
        "--allow-config-change to go on with these",
        path, diff);
    if (tr->root)
        printf("dam_dist: note: resuming with changed settings (--allow-config-change): %s\n", diff);
}

/* Every rank reads its own tensors (its tp columns) from the newest checkpoint that verifies
 * (rank 0 checks the checksums of each candidate, newest first, and names the one it takes): any
 * layout. Returns 0 when --resume auto finds none (a fresh start). */
static int resume_checkpoint(Trainer *tr, const TrainArgs *a) {
    char chosen[4096] = "";
    int info[2] = {0, 0}; /* candidates tried, one verified */
    if (tr->root) {
        char *p = ckpt_find_resumable(tr->ckpt_dir, &info[0]);
        if (p) snprintf(chosen, sizeof chosen, "%s", p), info[1] = 1;
        free(p);
    }
    comm_bcast(&tr->grid.world, info, sizeof info, 0);
    comm_bcast(&tr->grid.world, chosen, sizeof chosen, 0);
    if (info[0] == 0 && a->resume == RESUME_AUTO) {
        if (tr->root) printf("dam_dist: --resume auto: no checkpoint in %s; starting fresh\n", tr->ckpt_dir);
        return 0;
    }
    comm_fail_on_root(info[0] == 0, "--resume: no checkpoint in %s (no 'latest' file)", tr->ckpt_dir);
    comm_fail_on_root(!info[1],
                      "--resume: none of the %d checkpoint(s) in %s verifies (each named above); nothing "
                      "to resume from",
                      info[0], tr->ckpt_dir);
    char *path = dam_strdup(chosen);
    CkptMeta meta;
    CkptFile *f = ckpt_open_read(path, &meta);
    comm_fail_on_root(
        meta.total_steps != tr->total_steps || meta.n_datasets != tr->n_data,
        "%s: checkpoint was made for a run of %lld steps over %d datasets; this one has %d over %d", path,
        (long long)meta.total_steps, meta.n_datasets, tr->total_steps, tr->n_data);
    check_resumed_config(tr, &meta, path, a->allow_config_change);
    ckpt_read_model(f, &tr->model);
    ckpt_close(f);
    tr->start_step = (int)meta.step;
    tr->tokens_seen = meta.tokens_seen;
    memcpy(tr->cursor, meta.cursor, sizeof tr->cursor);
    if (tr->root) printf("dam_dist: resumed from %s at step %d/%d\n", path, tr->start_step, tr->total_steps);
    free(path);
    return 1;
}

/* ---------------------------------------------------------------- checks before the first step */

/* Dataset k against source k's tokenizer, on the canonical hash that `prepare` records. */
static void check_tokenizers(Trainer *tr, int allow) {
    char skipped[512] = "";
    for (int k = 0; k < tr->n_data; k++) {
        const char *src = tr->data_src[k];
        char have[64] = "", kind[64] = "";
        uint64_t want;
        int got = dataset_attr_string(&tr->data[k], "tokenizer_hash", have, sizeof have) == 0 &&
                  dataset_attr_string(&tr->data[k], "tokenizer_hash_kind", kind, sizeof kind) == 0 &&
                  !strcmp(kind, TOKENIZER_HASH_KIND);
        if (!got || tokenizer_canonical_hash(src, &want) != 0) {
            size_t n = strlen(skipped);
            snprintf(skipped + n, sizeof skipped - n, "%s%s", n ? ", " : "", tr->data_name[k]);
            continue;
        }
        char want_hex[32];
        snprintf(want_hex, sizeof want_hex, "%016llx", (unsigned long long)want);
        if (!strcmp(have, want_hex)) continue;
        if (!allow)
            dam_fail("%s was prepared with another tokenizer (hash %s) than source %s (%s/tokenizer.json, "
                     "hash %s); "
                     "prepare it with that tokenizer, or pass --allow-tokenizer-mismatch",
                     tr->data[k].path, have, tr->data_name[k], src, want_hex);
        printf("dam_dist: note: %s: tokenizer differs from %s's (--allow-tokenizer-mismatch)\n",
               tr->data[k].path, tr->data_name[k]);
    }
    if (*skipped)
        printf(
            "dam_dist: note: tokenizers not compared for %s (no tokenizer.json in the source, or a dataset "
            "without a recorded tokenizer hash)\n",
            skipped);
}

/* Everything that could fail after training, checked before the first step (rank 0 decides and
 * prints; the others wait at the barrier and are ended with it). */
static void check_before_first_step(Trainer *tr, const TrainArgs *a) {
    if (tr->root) {
        output_check(&tr->cfg, tr->ckpt_dir);
        if (a->eval_rows > 0)
            for (int k = 0; k < tr->n_data; k++)
                if (a->eval_rows < tr->B || a->eval_rows > tr->data[k].n_rows)
                    dam_fail("--eval-rows %d: needs at least batch_size (%d) and at most the %lld rows of %s",
                             a->eval_rows, tr->B, (long long)tr->data[k].n_rows, tr->data[k].path);
        check_tokenizers(tr, a->allow_tokenizer_mismatch);
        int steps = a->max_steps >= 0 && a->max_steps < tr->total_steps ? a->max_steps : tr->total_steps;
        int64_t used = (int64_t)steps * tr->B * tr->cfg.micro_batches;
        for (int k = 0; a->eval_rows > 0 && k < tr->n_data; k++)
            if (used > tr->data[k].n_rows - a->eval_rows)
                dam_warn("training reads %lld rows of %s (steps %d x batch_size %d x micro_batches %d) but "
                         "only %lld "
                         "precede its last %d, the evaluation rows: the evaluation overlaps training",
                         (long long)used, tr->data[k].path, steps, tr->B, tr->cfg.micro_batches,
                         (long long)(tr->data[k].n_rows - a->eval_rows), a->eval_rows);
        fflush(stdout);
    }
    comm_barrier(&tr->grid.world);
}

static void setup_grid(Trainer *tr) {
    layout_init(&tr->grid, &tr->cfg);
    tr->root = tr->grid.world.rank == 0;
}

/* The backend of the config's device (or --device; DAM_BACKEND overrides both) and its context on
 * this rank's GPU, said in the job's first lines. */
static void setup_backend(Trainer *tr) {
    tr->be = config_backend(tr->cfg.device);
    int local = config_local_rank();
    tr->ctx = config_backend_ctx(&tr->cfg, tr->be);
    if (!tr->root) return;
    static const char *const tn[] = {"auto", "mpi", "nccl"};
    printf("dam_dist: backend %s (activations %s), device collectives: transport %s, local rank %d\n",
           tr->be->name, dam_dtype_name(tr->be->act_dtype), tn[tr->cfg.transport], local);
    fflush(stdout);
}

/* ---------------------------------------------------------------- command */

/* Run states (one per pipeline micro-batch in flight) and the pipeline's per-micro-batch inputs. */
static void alloc_step_buffers(Trainer *tr) {
    tr->local_mb = tr->cfg.micro_batches / tr->grid.dp;
    tr->n_slots = pipeline_slots(tr->local_mb, tr->grid.pp, tr->grid.pp_idx); /* 1F1B's in flight here */
    if (tr->n_slots > 64) tr->n_slots = 64;
    /* the backward skips recomputing the layers when their activations fit the budget (plan alike) */
    if (dam_model_keep_fits(&tr->model, tr->n_slots, tr->n_data * tr->B, tr->T, tr->cfg.keep_activations) &&
        tr->root)
        printf("dam_dist: the backward keeps the layers' activations (within parallel.keep_activations = %zu "
               "bytes per rank): no recompute\n",
               tr->cfg.keep_activations);
    for (int i = 0; i < tr->n_slots; i++) tr->slots[i] = runstate_new(&tr->model, tr->n_data * tr->B, tr->T);
    tr->rs = tr->slots[0];
    size_t seg = (size_t)tr->n_data * tr->B * tr->T, K = (size_t)tr->cfg.loss.topk;
    int M = tr->local_mb;
    tr->terms = dam_calloc((size_t)M * tr->n_data, sizeof *tr->terms, "loss terms");
    tr->mb_ids = dam_calloc((size_t)M, sizeof(int32_t *), "micro-batches");
    tr->mb_mask = dam_calloc((size_t)M, sizeof(int8_t *), "micro-batches");
    tr->mb_topk_idx = dam_calloc((size_t)M, sizeof(int32_t *), "micro-batches");
    tr->mb_topk_val = dam_calloc((size_t)M, sizeof(float *), "micro-batches");
    for (int i = 0; i < M; i++) {
        tr->mb_ids[i] = dam_malloc(seg * sizeof(int32_t), "micro-batch ids");
        tr->mb_mask[i] = dam_malloc(seg, "micro-batch mask");
        if (tr->topk_idx) {
            tr->mb_topk_idx[i] = dam_malloc(seg * K * sizeof(int32_t), "micro-batch top-k");
            tr->mb_topk_val[i] = dam_malloc(seg * K * sizeof(float), "micro-batch top-k");
        }
    }
}

static void trainer_free(Trainer *tr) {
    if (tr->metrics) fclose(tr->metrics);
    for (int i = 0; i < tr->n_slots; i++) runstate_free(tr->slots[i]);
    for (int i = 0; tr->mb_ids && i < tr->local_mb; i++)
        free(tr->mb_ids[i]), free(tr->mb_mask[i]), free(tr->mb_topk_idx[i]), free(tr->mb_topk_val[i]);
    free(tr->mb_ids), free(tr->mb_mask), free(tr->mb_topk_idx), free(tr->mb_topk_val);
    free(tr->terms), free(tr->perm);
    for (int k = 0; k < tr->n_data; k++) dataset_close(&tr->data[k]);
    free(tr->ids), free(tr->mask), free(tr->topk_idx), free(tr->topk_val), free(tr->ckpt_dir);
    dam_model_close(&tr->model);
    if (tr->ctx) tr->be->ctx_free(tr->ctx);
    grid_free(&tr->grid);
    config_free(&tr->cfg);
}

/* The checkpoint is written; say so and how to go on. */
static int report_stop(Trainer *tr, const TrainArgs *a, int step, int sig) {
    if (tr->root) {
        char *cmd = resume_command(a, tr->grid.world.size);
        printf("dam_dist: stopped by SIG%s after step %d/%d; checkpoint in %s; resume with: %s\n",
               sig ? sigabbrev_np(sig) : "?", step, tr->total_steps, tr->ckpt_dir, cmd);
        free(cmd);
        fflush(stdout);
    }
    trainer_free(tr);
    return DAM_EXIT_STOPPED;
}

static void print_run_header(const Trainer *tr) {
    if (!tr->root) return;
    int mb = tr->cfg.micro_batches;
    long long per_step = (long long)tr->n_data * tr->B * mb * tr->T;
    printf("dam_dist: %d sources (%s, %lld parameters per source), %d steps of %lld tokens each "
           "(%d datasets x batch_size %d x micro_batches %d x seq_len %d), layout dp=%d x pp=%d x tp=%d\n",
           tr->model.n_coef_rows, tr->model.full_cfg.architecture,
           (long long)hfconfig_num_params(&tr->model.full_cfg), tr->total_steps, per_step, tr->n_data, tr->B,
           mb, tr->T, tr->grid.dp, tr->grid.pp, tr->grid.tp);
    const DamConfig *c = &tr->cfg;
    if (c->preset)
        printf("dam_dist: preset \"%s\" (every resolved setting is in the run's config)\n", c->preset);
    if (c->optimizer == OPT_MOFO) { /* vectors MoFO can never move (the reference raises IndexError) */
        int said[4] = {0, 0, 0, 0};
        for (int t = 0; t < tr->model.n_tensors; t++) {
            const DamTensor *x = &tr->model.tensors[t];
            size_t n =
                c->mofo_scope == MOFO_SCOPE_SOURCE ? (size_t)x->dim : (size_t)tr->model.n_coef_rows * x->dim;
            if (!x->trainable || said[x->kind] || optim_mofo_keep(c, n) > 0) continue;
            said[x->kind] = 1;
            printf(
                "dam_dist: note: MoFO keeps floor(%g x %zu) = 0 entries of %s (e.g. '%s'): their moments are "
                "updated, the coefficients never move (train.mofo_k \"floor\"; the reference raises "
                "IndexError there)\n",
                c->mofo_alpha, n, c->mofo_scope == MOFO_SCOPE_SOURCE ? "each source's vector" : "the tensor",
                x->name);
        }
    }
    fflush(stdout);
}

/* After the last step (its checkpoint written): the evaluation table, the merged model, the peak
 * RSS of every rank. A failure here says that the checkpoint is complete. */
static void finish_run(Trainer *tr, const TrainArgs *a, int step, const StepStats *st, double t0) {
    char *note =
        dam_asprintf("the checkpoint of step %d in %s is complete: rerun with --resume to write the output",
                     step, tr->ckpt_dir);
    dam_set_error_note(note);
    free(note);
    if (a->eval_rows > 0) eval_table(tr, a->eval_rows);
    OutputReport rep = {
        .steps = step, .total_steps = tr->total_steps, .wall_s = dam_now() - t0, .n_data = tr->n_data};
    for (int k = 0; k < tr->n_data; k++) rep.kl[k] = st->kl[k], rep.names[k] = tr->data_name[k];
    rep.loss = st->total;
    if (tr->grid.dp_idx == 0) output_write_parallel(&tr->model, &tr->cfg, &rep, &tr->grid.replica);
    comm_barrier(&tr->grid.world);
    dam_set_error_note(NULL);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss = (double)ru.ru_maxrss, all_rss[1024];
    int world = tr->grid.world.size;
    if (world <= 1024) comm_allgather(&tr->grid.world, &rss, sizeof rss, all_rss);
    if (!tr->root) return;
    printf("dam_dist: wrote %s (%d steps, %.1f s, peak RSS %ld KiB)\n", tr->cfg.out_dir, step, rep.wall_s,
           ru.ru_maxrss);
    if (world > 1 && world <= 1024) {
        printf("dam_dist: peak RSS per rank (KiB):");
        for (int r = 0; r < world; r++) printf(" %.0f", all_rss[r]);
        printf("\n");
    }
}

int cmd_train(int argc, char **argv) {
    TrainArgs a;
    train_args_parse(&a, argc, argv);
    stop_signals_install();
    Trainer tr;
    memset(&tr, 0, sizeof tr);
    config_load(&tr.cfg, a.config);
    tr.cfg.force = a.force;
    if (a.device) tr.cfg.device = a.device;
    if (a.out) {
        free(tr.cfg.out_dir), free(tr.cfg.metrics_file);
        tr.cfg.out_dir = dam_strdup(a.out);
        tr.cfg.metrics_file = outdir_default_metrics_file(a.out);
        tr.cfg.out_from_cli = 1;
    }
    /* preemption must always be able to save: without checkpoint.dir, beside the output */
    tr.ckpt_dir = tr.cfg.ckpt_dir ? dam_strdup(tr.cfg.ckpt_dir) : outdir_default_ckpt_dir(tr.cfg.out_dir);
    setup_grid(&tr);
    setup_backend(&tr);
    open_model(&tr);
    open_data(&tr);
    check_before_first_step(&tr, &a);
    alloc_step_buffers(&tr);
    int resumed = a.resume != RESUME_NO && resume_checkpoint(&tr, &a);
    if (tr.root) tr.metrics = metrics_open(tr.cfg.metrics_file, resumed, tr.start_step);
    print_run_header(&tr);
    int last = a.max_steps >= 0 && a.max_steps < tr.total_steps ? a.max_steps : tr.total_steps;
    double t0 = dam_now();
    StepStats st;
    memset(&st, 0, sizeof st);
    int step = tr.start_step, stopped = 0;
    double last_step_s = -1;
    const DamStep ds = trainer_step(&tr);
    for (;;) { /* every rank agrees on a stop at the step boundary, whichever got the signal */
        stopped = comm_max_int(&tr.grid.world, stop_signal_pending());
        if (stopped || step >= last) break;
        double ts = dam_now();
        stop_progress(step + 1, step > tr.start_step ? last_step_s : -1);
        read_micro_batches(&tr);
        dam_step(&ds, step, &st);
        tr.tokens_seen += st.tokens;
        last_step_s = dam_now() - ts;
        log_step(&tr, step, &st, optim_lr(&tr.cfg, step, tr.total_steps), last_step_s, dam_now() - t0);
        step++;
        if (tr.cfg.ckpt_every > 0 && step % tr.cfg.ckpt_every == 0 && step < last) save_checkpoint(&tr, step);
    }
    save_checkpoint(&tr, step); /* the end, a --max-steps stop or a signal: resumable from here */
    if (stopped) return report_stop(&tr, &a, step, stopped);
    finish_run(&tr, &a, step, &st, t0);
    trainer_free(&tr);
    return 0;
}
