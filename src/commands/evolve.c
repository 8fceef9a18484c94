/* evolve.c — `dam_dist evolve --config F ...`: CMA-ES (cmaes.h) over merge weights, the
 * evolutionary baseline that DAM's gradient descent is compared with at equal compute.
 *
 * Genome: one weight per source (coefficient row) per decoder layer, plus one per source for the
 * embeddings and one for the final norm and lm_head; every tensor of a group takes its weight on all
 * of its columns, so the merged W = Σ_i w_i W_i is the DAM model with coefficients constant per
 * tensor (nonlinearity none) and the same forward (dam_micro_batches) evaluates it. Fitness: Σ over
 * the datasets of the per-token KL(source k || merged) at loss.temperature on the first --rows rows of
 * dataset k (default: the rows a DAM run of this config reads), as DAM's KL term and the --eval-rows
 * table define it. The search starts at the plain average (1/N each, 0 for a base row).
 *
 * Parallel: the config's dp x pp x tp layout. The candidates of a generation are dealt to the
 * data-parallel replicas (candidate c to replica c mod dp); the pp x tp ranks of a replica evaluate
 * one candidate together; the fitnesses are summed over the world (each one is nonzero on exactly
 * one rank, so the sum is exact). Every rank runs the same CMA-ES from the same seed, so only the
 * fitnesses cross ranks and every rank holds the same state.
 *
 * Checkpoint: <checkpoint dir>/evolve_state.bin after the initial evaluation and after every
 * generation (written as .tmp, renamed); a stop signal ends the run after the next one with exit 75.
 * --resume continues from it bit for bit (the CMA-ES state, counters, history, best genome). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cli.h"
#include "cmaes.h"
#include "comm.h"
#include "commands.h"
#include "config.h"
#include "dataset.h"
#include "layout.h"
#include "outdir.h"
#include "output.h"
#include "runctl.h"
#include "step.h"

typedef struct {
    const char *config, *resume_path;
    const char *out, *ckpt_dir; /* --out, --checkpoint-dir (NULL: the defaults, evolve's own) */
    ResumeMode resume;
    int population, generations, rows, seed_given, force;
    double sigma;
    uint64_t seed;
    long long max_evals; /* 0: no limit */
    int argc;            /* the command line as run (from the program name), for the resume line */
    char **argv;
} EvolveArgs;

/* One generation's line of the report. */
typedef struct {
    double best, gen_best, sigma, wall_s;
    int64_t evals, tokens;
} GenRecord;

typedef struct {
    DamConfig cfg;
    ProcessGrid grid;
    int root, reporter; /* world rank 0; the rank of a replica that contributes its fitnesses */
    const Backend *be;
    BackendCtx *ctx;
    DamModel model;
    RunState *rs;
    int n_data, T, B;
    DamDataset data[DAM_MAX_SOURCES];
    int64_t rows[DAM_MAX_SOURCES];
    int topk_cache; /* K of the teacher caches read (0: none; the teachers run) */
    int32_t *ids, *topk_idx;
    int8_t *mask;
    float *topk_val;
    int n_groups, dim; /* genome: n_groups x model.n_coef_rows */
    int *group;        /* group of each tensor */
    float *coef;       /* host coefficient block */
    CmaEs es;
    int64_t evals, tokens, tokens_per_eval;
    double wall_before, t0; /* wall seconds of earlier runs (resume); this run's start */
    double initial_f, best_f, initial_kl[DAM_MAX_SOURCES], best_kl[DAM_MAX_SOURCES];
    double *best_x;
    int n_gen;
    GenRecord *hist;
    char *ckpt_dir, *state_path;
} Evolver;

static const char evolve_cmd[] = "evolve";

/* ---------------------------------------------------------------- command line */

static void parse_args(EvolveArgs *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->generations = 100, a->sigma = 0.1;
    a->argc = argc + 1, a->argv = argv - 1; /* argv[-1] is the program (main passes argv + 1) */
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "--config") && next)
            a->config = argv[++i];
        else if (!strcmp(s, "--population") && next)
            a->population = (int)dam_parse_int(argv[++i], 2, 100000, "evolve: --population");
        else if (!strcmp(s, "--generations") && next)
            a->generations = (int)dam_parse_int(argv[++i], 0, 100000000, "evolve: --generations");
        else if (!strcmp(s, "--sigma") && next)
            a->sigma = dam_parse_positive(argv[++i], "evolve: --sigma");
        else if (!strcmp(s, "--rows") && next)
            a->rows = (int)dam_parse_int(argv[++i], 1, 1000000000, "evolve: --rows");
        else if (!strcmp(s, "--seed") && next)
            a->seed = (uint64_t)dam_parse_int(argv[++i], 0, INT64_MAX, "evolve: --seed"), a->seed_given = 1;
        else if (!strcmp(s, "--max-evals") && next)
            a->max_evals = dam_parse_int(argv[++i], 1, INT64_MAX, "evolve: --max-evals");
        else if (!strcmp(s, "--resume")) { /* --resume [auto | PATH]: bare, the default state file */
            a->resume = RESUME_REQUIRED;
            if (next && strncmp(next, "--", 2)) {
                i++;
                if (!strcmp(next, "auto"))
                    a->resume = RESUME_AUTO;
                else
                    a->resume_path = next;
            }
        } else if (!strcmp(s, "--out") && next)
            a->out = argv[++i];
        else if (!strcmp(s, "--checkpoint-dir") && next)
            a->ckpt_dir = argv[++i];
        else if (!strcmp(s, "--force"))
            a->force = 1;
        else
            cli_bad_option(evolve_cmd, s,
                           "--config --out --checkpoint-dir --population --generations --sigma --rows --seed "
                           "--max-evals");
    }
    if (!a->config) dam_fail("evolve: --config is required (dam_dist evolve --help lists the options)");
}

/* ---------------------------------------------------------------- setup */

/* The genome group of a tensor: 0 the embeddings, 1 + l decoder layer l, n_layers + 1 the final
 * norm and lm_head. */
static int tensor_group(const DamModel *m, const DamTensor *x) {
    int layer;
    if (sscanf(x->name, "model.layers.%d.", &layer) == 1) return 1 + layer;
    if (x->kind == DT_EMBED) return 0;
    return m->full_cfg.num_hidden_layers + 1;
}

static void open_model(Evolver *ev) {
    DamConfig *c = &ev->cfg;
    const char *dirs[DAM_MAX_SOURCES], *names[DAM_MAX_SOURCES];
    int n = config_coef_rows(c, dirs, names);
    ev->n_data = c->n_models;
    ev->be = config_backend(c->device);
    ev->ctx = config_backend_ctx(c, ev->be);
    dam_model_open_parallel(&ev->model, n, dirs, names, ev->be, ev->ctx, &ev->grid.tp_group,
                            &ev->grid.pp_group, c->transport);
    DamModel *m = &ev->model;
    m->nonlin = NONLIN_NONE; /* the genome's weights are the coefficients themselves */
    ev->n_groups = m->full_cfg.num_hidden_layers + 2;
    ev->dim = ev->n_groups * m->n_coef_rows;
    ev->group = dam_malloc((size_t)(m->n_tensors ? m->n_tensors : 1) * sizeof(int), "genome groups");
    for (int t = 0; t < m->n_tensors; t++) ev->group[t] = tensor_group(m, &m->tensors[t]);
    ev->coef = dam_malloc((m->coef.n ? m->coef.n : 1) * sizeof(float), "coefficients");
}

/* The rows a DAM run of this config reads from each dataset: steps x batch_size x micro_batches
 * (train.steps, or epochs over the smallest dataset), at most the dataset's rows. */
static void default_rows(Evolver *ev) {
    const DamConfig *c = &ev->cfg;
    int64_t per_step = (int64_t)c->batch_size * c->micro_batches, steps = c->steps;
    if (steps <= 0) {
        int64_t fewest = INT64_MAX;
        for (int k = 0; k < ev->n_data; k++)
            fewest = ev->data[k].n_rows < fewest ? ev->data[k].n_rows : fewest;
        steps = fewest / per_step * c->epochs;
    }
    for (int k = 0; k < ev->n_data; k++) {
        int64_t r = steps * per_step;
        ev->rows[k] = r < ev->data[k].n_rows ? r : ev->data[k].n_rows;
        if (ev->rows[k] < 1)
            dam_fail("%s: a DAM run of %s reads no rows of it; give evolve --rows N", ev->data[k].path,
                     c->file);
    }
}

static void open_data(Evolver *ev, int rows) {
    const DamConfig *c = &ev->cfg;
    const char *paths[DAM_MAX_SOURCES];
    for (int k = 0; k < c->n_models; k++) paths[k] = c->models[k].dataset;
    ev->T = config_open_datasets(c, &ev->model.full_cfg, c->n_models, paths, ev->data, &ev->topk_cache);
    int64_t L = ev->data[0].seq_len;
    for (int k = 0; k < ev->n_data; k++) {
        if (rows > ev->data[k].n_rows)
            dam_fail("evolve --rows %d: %s has only %lld rows", rows, ev->data[k].path,
                     (long long)ev->data[k].n_rows);
        ev->rows[k] = rows;
    }
    if (!rows) default_rows(ev);
    ev->B = c->batch_size;
    size_t cells = (size_t)ev->B * (size_t)L, K = (size_t)ev->topk_cache;
    ev->ids = dam_malloc(cells * sizeof(int32_t), "ids");
    ev->mask = dam_malloc(cells, "mask");
    if (K) {
        ev->topk_idx = dam_malloc(cells * K * sizeof(int32_t), "top-k ids");
        ev->topk_val = dam_malloc(cells * K * sizeof(float), "top-k logits");
    }
    ev->tokens_per_eval = 0;
    for (int k = 0; k < ev->n_data; k++) ev->tokens_per_eval += ev->rows[k] * ev->T;
    ev->rs = runstate_new(&ev->model, ev->B, ev->T);
}

/* ---------------------------------------------------------------- fitness */

/* Rows [row0, row0 + nb) of dataset k, compacted from the file's L tokens per row to T (and the
 * first loss.topk entries of the teacher cache). */
static void read_batch(Evolver *ev, int k, int64_t row0, int nb) {
    const DamDataset *d = &ev->data[k];
    int64_t L = d->seq_len, T = ev->T, Kc = ev->topk_cache, K = ev->cfg.loss.topk;
    dataset_read_rows(d, row0, nb, ev->ids, ev->mask);
    if (Kc) dataset_read_topk(d, row0, nb, ev->topk_idx, ev->topk_val);
    for (int64_t b = 0; b < nb; b++) {
        memmove(ev->ids + b * T, ev->ids + b * L, (size_t)T * sizeof(int32_t));
        memmove(ev->mask + b * T, ev->mask + b * L, (size_t)T);
    }
    for (int64_t r = 0; Kc && r < nb * T; r++) {
        memmove(ev->topk_idx + r * K, ev->topk_idx + ((r / T) * L + r % T) * Kc, (size_t)K * sizeof(int32_t));
        memmove(ev->topk_val + r * K, ev->topk_val + ((r / T) * L + r % T) * Kc, (size_t)K * sizeof(float));
    }
}

/* Genome x as the model's coefficients: group g's weight of row i on every column of its tensors. */
static void set_genome(Evolver *ev, const double *x) {
    DamModel *m = &ev->model;
    for (int t = 0; t < m->n_tensors; t++) {
        const DamTensor *tx = &m->tensors[t];
        for (int i = 0; i < m->n_coef_rows; i++)
            for (int j = 0; j < tx->dim; j++)
                ev->coef[tx->coef_at + (size_t)i * tx->dim + j] = (float)x[ev->group[t] * m->n_coef_rows + i];
    }
    dam_model_coef_upload(m, DAM_COEF_C, ev->coef);
    dam_model_refresh(m);
}

/* Per-token KL(source k || merged) on dataset k's rows, for each k (as --eval-rows computes it). */
static void dataset_kls(Evolver *ev, double *kl_out) {
    LossParams loss = ev->cfg.loss;
    loss.mse = 0, loss.entropy = 0, loss.kl = 1;
    for (int k = 0; k < ev->n_data; k++) {
        double kl = 0;
        int64_t tokens = 0;
        for (int64_t r = 0; r < ev->rows[k]; r += ev->B) {
            int nb = (int)(ev->rows[k] - r < ev->B ? ev->rows[k] - r : ev->B);
            read_batch(ev, k, r, nb);
            MicroBatch mb = {.ids = ev->ids,
                             .mask = ev->mask,
                             .topk_idx = ev->topk_cache ? ev->topk_idx : NULL,
                             .topk_val = ev->topk_cache ? ev->topk_val : NULL,
                             .B = nb,
                             .T = ev->T};
            LossTerms lt = dam_one_micro_batch(&ev->model, ev->rs, k, &mb, &loss, 0);
            kl += lt.kl * (double)lt.n_valid, tokens += lt.n_valid;
        }
        kl_out[k] = tokens ? kl / (double)tokens : NAN;
    }
}

/* The per-dataset KLs [count x n_data] of `count` genomes [count x dim], on every rank: genome c is
 * evaluated by replica c mod dp; exactly one rank per genome contributes, so the sum is exact. */
static void evaluate(Evolver *ev, const double *X, int count, double *kls) {
    int nd = ev->n_data;
    memset(kls, 0, (size_t)count * nd * sizeof(double));
    for (int c = 0; c < count; c++) {
        if (c % ev->grid.dp != ev->grid.dp_idx) continue;
        double kl[DAM_MAX_SOURCES];
        set_genome(ev, X + (size_t)c * ev->dim);
        dataset_kls(ev, kl);
        if (ev->reporter) memcpy(kls + (size_t)c * nd, kl, (size_t)nd * sizeof(double));
    }
    comm_allreduce_sum_f64(&ev->grid.world, kls, (size_t)count * nd);
    ev->evals += count, ev->tokens += count * ev->tokens_per_eval;
}

static double kl_sum(const double *kl, int n) {
    double s = 0;
    for (int k = 0; k < n; k++) s += kl[k];
    return s;
}

/* ---------------------------------------------------------------- checkpoint */

/* A byte buffer written and read field by field (native byte order, doubles bit for bit). */
typedef struct {
    unsigned char *p;
    size_t n, cap, at;
    const char *what; /* the file, for messages when reading */
} Bytes;

static void put(Bytes *b, const void *v, size_t n) {
    if (!n) return; /* an empty history is NULL */
    if (b->n + n > b->cap) b->p = dam_realloc(b->p, b->cap = 2 * (b->n + n), "evolve state");
    memcpy(b->p + b->n, v, n), b->n += n;
}

static void get(Bytes *b, void *v, size_t n) {
    if (b->at + n > b->n) dam_fail("%s: truncated evolve state (%zu bytes)", b->what, b->n);
    if (n) memcpy(v, b->p + b->at, n), b->at += n;
}

static const char state_magic[8] = {'D', 'A', 'M', 'E', 'V', 'O', '0', '1'};

/* What a resumed run must share with the one that saved (besides the config's settings). */
typedef struct {
    uint64_t config_hash, seed;
    int32_t population, dim;
    double sigma;
    int64_t rows[DAM_MAX_SOURCES];
} StateKey;

static StateKey state_key(const Evolver *ev, const EvolveArgs *a) {
    StateKey k;
    memset(&k, 0, sizeof k);
    k.config_hash = ev->cfg.hash, k.seed = a->seed, k.population = ev->es.lambda, k.dim = ev->dim;
    k.sigma = a->sigma;
    memcpy(k.rows, ev->rows, sizeof k.rows);
    return k;
}

static void save_state(Evolver *ev, const EvolveArgs *a) {
    if (ev->root) {
        Bytes b = {0};
        StateKey key = state_key(ev, a);
        double wall = ev->wall_before + dam_now() - ev->t0;
        put(&b, state_magic, sizeof state_magic);
        put(&b, &key, sizeof key);
        put(&b, &ev->evals, sizeof ev->evals), put(&b, &ev->tokens, sizeof ev->tokens),
            put(&b, &wall, sizeof wall);
        put(&b, &ev->initial_f, sizeof ev->initial_f), put(&b, &ev->best_f, sizeof ev->best_f);
        put(&b, ev->initial_kl, sizeof ev->initial_kl), put(&b, ev->best_kl, sizeof ev->best_kl);
        put(&b, ev->best_x, (size_t)ev->dim * sizeof(double));
        put(&b, &ev->n_gen, sizeof ev->n_gen);
        put(&b, ev->hist, (size_t)ev->n_gen * sizeof(GenRecord));
        size_t es_bytes = cmaes_state_size(&ev->es);
        void *es_buf = dam_malloc(es_bytes, "CMA-ES state");
        cmaes_state_save(&ev->es, es_buf);
        put(&b, &es_bytes, sizeof es_bytes), put(&b, es_buf, es_bytes);
        dam_mkdir_p(ev->ckpt_dir);
        dam_write_file_atomic(ev->state_path, b.p, b.n);
        free(es_buf), free(b.p);
    }
    comm_barrier(&ev->grid.world);
}

/* The saved run's key against this one's: the first setting that differs, or NULL. */
static const char *key_differs(const StateKey *have, const StateKey *want) {
    if (have->config_hash != want->config_hash) return "the config's settings";
    if (have->seed != want->seed) return "--seed";
    if (have->population != want->population) return "--population";
    if (have->dim != want->dim) return "the genome (models, layers)";
    if (have->sigma != want->sigma) return "--sigma";
    if (memcmp(have->rows, want->rows, sizeof have->rows)) return "--rows";
    return NULL;
}

/* Every rank reads the state file (all alike, so a refusal is one line from rank 0). Returns 0 when
 * --resume auto finds none. */
static int load_state(Evolver *ev, const EvolveArgs *a) {
    const char *path = a->resume_path ? a->resume_path : ev->state_path;
    int exists = dam_file_exists(path);
    if (!exists && a->resume == RESUME_AUTO) {
        if (ev->root) printf("evolve: --resume auto: no state in %s; starting fresh\n", path);
        return 0;
    }
    comm_fail_on_root(!exists, "evolve --resume: no saved state %s", path);
    Bytes b = {0};
    b.what = path;
    b.p = (unsigned char *)dam_read_file(path, &b.n);
    char magic[sizeof state_magic];
    get(&b, magic, sizeof magic);
    comm_fail_on_root(memcmp(magic, state_magic, sizeof magic) != 0, "%s: not an evolve state file", path);
    StateKey have, want = state_key(ev, a);
    get(&b, &have, sizeof have);
    const char *diff = key_differs(&have, &want);
    comm_fail_on_root(diff != NULL,
                      "%s: saved by a run with other settings (%s differs); resume with the same ones", path,
                      diff ? diff : "");
    get(&b, &ev->evals, sizeof ev->evals), get(&b, &ev->tokens, sizeof ev->tokens);
    get(&b, &ev->wall_before, sizeof ev->wall_before);
    get(&b, &ev->initial_f, sizeof ev->initial_f), get(&b, &ev->best_f, sizeof ev->best_f);
    get(&b, ev->initial_kl, sizeof ev->initial_kl), get(&b, ev->best_kl, sizeof ev->best_kl);
    get(&b, ev->best_x, (size_t)ev->dim * sizeof(double));
    get(&b, &ev->n_gen, sizeof ev->n_gen);
    if (ev->n_gen < 0 || ev->n_gen > 100000000) dam_fail("%s: corrupt evolve state", path);
    ev->hist = dam_realloc(ev->hist, ((size_t)ev->n_gen + 1) * sizeof(GenRecord), "evolve history");
    get(&b, ev->hist, (size_t)ev->n_gen * sizeof(GenRecord));
    size_t es_bytes;
    get(&b, &es_bytes, sizeof es_bytes);
    if (es_bytes != b.n - b.at) dam_fail("%s: truncated evolve state (%zu bytes)", path, b.n);
    cmaes_free(&ev->es);
    cmaes_state_load(&ev->es, b.p + b.at, es_bytes, path);
    free(b.p);
    if (ev->root)
        printf("evolve: resumed from %s after generation %d (%lld evaluations)\n", path, ev->n_gen,
               (long long)ev->evals);
    return 1;
}

/* ---------------------------------------------------------------- report */

static const char *group_name(const Evolver *ev, int g, char *buf, size_t cap) {
    if (g == 0) return "embeddings";
    if (g == ev->n_groups - 1) return "final_norm_lm_head";
    snprintf(buf, cap, "layer_%d", g - 1);
    return buf;
}

/* evolve_report.json's text (heap). */
static char *evolve_report(const Evolver *ev, const EvolveArgs *a, double wall) {
    const DamModel *m = &ev->model;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "written_by", "dam_dist evolve");
    cJSON_AddStringToObject(r, "method", "CMA-ES (mu/mu_w, lambda), per-layer per-source weights");
    cJSON_AddNumberToObject(r, "genome_length", ev->dim);
    cJSON_AddNumberToObject(r, "population", ev->es.lambda);
    cJSON_AddNumberToObject(r, "sigma0", a->sigma);
    cJSON_AddNumberToObject(r, "seed", (double)a->seed);
    cJSON_AddNumberToObject(r, "temperature", ev->cfg.loss.temperature);
    cJSON *rows = cJSON_AddObjectToObject(r, "rows");
    for (int k = 0; k < ev->n_data; k++)
        cJSON_AddNumberToObject(rows, ev->cfg.models[k].name, (double)ev->rows[k]);
    cJSON_AddNumberToObject(r, "tokens_per_evaluation", (double)ev->tokens_per_eval);
    cJSON_AddNumberToObject(r, "generations", ev->n_gen);
    cJSON_AddNumberToObject(r, "evaluations", (double)ev->evals);
    cJSON_AddNumberToObject(r, "tokens_forwarded", (double)ev->tokens);
    cJSON_AddNumberToObject(r, "wall_time_s", wall);
    cJSON_AddNumberToObject(r, "initial_fitness", ev->initial_f);
    cJSON_AddNumberToObject(r, "best_fitness", ev->best_f);
    cJSON *kl = cJSON_AddObjectToObject(r, "best_kl");
    for (int k = 0; k < ev->n_data; k++) cJSON_AddNumberToObject(kl, ev->cfg.models[k].name, ev->best_kl[k]);
    cJSON *hist = cJSON_AddArrayToObject(r, "per_generation");
    for (int g = 0; g < ev->n_gen; g++) {
        const GenRecord *h = &ev->hist[g];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "generation", g + 1);
        cJSON_AddNumberToObject(o, "best_fitness", h->best);
        cJSON_AddNumberToObject(o, "generation_best", h->gen_best);
        cJSON_AddNumberToObject(o, "sigma", h->sigma);
        cJSON_AddNumberToObject(o, "evaluations", (double)h->evals);
        cJSON_AddNumberToObject(o, "tokens", (double)h->tokens);
        cJSON_AddNumberToObject(o, "wall_s", h->wall_s);
        cJSON_AddItemToArray(hist, o);
    }
    cJSON *w = cJSON_AddObjectToObject(r, "best_weights");
    cJSON *names = cJSON_AddArrayToObject(w, "rows");
    for (int i = 0; i < m->n_coef_rows; i++) cJSON_AddItemToArray(names, cJSON_CreateString(m->row_names[i]));
    for (int g = 0; g < ev->n_groups; g++) {
        char buf[32];
        cJSON_AddItemToObject(
            w, group_name(ev, g, buf, sizeof buf),
            cJSON_CreateDoubleArray(ev->best_x + (size_t)g * m->n_coef_rows, m->n_coef_rows));
    }
    char *text = cJSON_Print(r);
    cJSON_Delete(r);
    return text;
}

/* ---------------------------------------------------------------- the search */

/* Keep the best evaluated genome (the first of equals). */
static void note_best(Evolver *ev, const double *x, const double *kl) {
    double f = kl_sum(kl, ev->n_data);
    if (!(f < ev->best_f)) return;
    ev->best_f = f;
    memcpy(ev->best_kl, kl, (size_t)ev->n_data * sizeof(double));
    memcpy(ev->best_x, x, (size_t)ev->dim * sizeof(double));
}

/* The plain average as the first evaluation and the CMA-ES mean's start. */
static void start_fresh(Evolver *ev, const EvolveArgs *a) {
    DamModel *m = &ev->model;
    double *x0 = dam_malloc((size_t)ev->dim * sizeof(double), "genome");
    for (int g = 0; g < ev->n_groups; g++)
        for (int i = 0; i < m->n_coef_rows; i++)
            x0[g * m->n_coef_rows + i] = i < ev->n_data ? 1.0 / ev->n_data : 0.0;
    cmaes_free(&ev->es);
    cmaes_init(&ev->es, ev->dim, x0, a->sigma, a->population, a->seed);
    evaluate(ev, x0, 1, ev->initial_kl);
    ev->initial_f = kl_sum(ev->initial_kl, ev->n_data);
    note_best(ev, x0, ev->initial_kl);
    free(x0);
}

static void one_generation(Evolver *ev) {
    int lambda = ev->es.lambda, nd = ev->n_data;
    const double *X = cmaes_ask(&ev->es);
    double *kls = dam_malloc((size_t)lambda * nd * sizeof(double), "fitnesses"),
           *fit = dam_malloc((size_t)lambda * sizeof(double), "fitnesses");
    evaluate(ev, X, lambda, kls);
    double gen_best = INFINITY;
    for (int c = 0; c < lambda; c++) {
        fit[c] = kl_sum(kls + (size_t)c * nd, nd);
        gen_best = fit[c] < gen_best ? fit[c] : gen_best;
        note_best(ev, X + (size_t)c * ev->dim, kls + (size_t)c * nd);
    }
    cmaes_tell(&ev->es, fit);
    ev->hist = dam_realloc(ev->hist, ((size_t)ev->n_gen + 1) * sizeof(GenRecord), "evolve history");
    ev->hist[ev->n_gen++] = (GenRecord){
        ev->best_f, gen_best, ev->es.sigma, ev->wall_before + dam_now() - ev->t0, ev->evals, ev->tokens};
    free(kls), free(fit);
}

static void log_generation(const Evolver *ev, int total) {
    if (!ev->root) return;
    const GenRecord *h = &ev->hist[ev->n_gen - 1];
    printf("gen %4d/%d | best %.6f | gen best %.6f | sigma %.4g | evals %lld | tokens %lld | %.1f s\n",
           ev->n_gen, total, h->best, h->gen_best, h->sigma, (long long)h->evals, (long long)h->tokens,
           h->wall_s);
    fflush(stdout);
}

static void print_header(const Evolver *ev, const EvolveArgs *a) {
    if (!ev->root) return;
    printf(
        "evolve: %d sources, genome %d = %d groups (embeddings, %d layers, final norm + lm_head) x %d rows; "
        "population %d, sigma %g, seed %llu; fitness = sum of KL at temperature %g over %d datasets (",
        ev->n_data, ev->dim, ev->n_groups, ev->n_groups - 2, ev->model.n_coef_rows, ev->es.lambda, a->sigma,
        (unsigned long long)a->seed, ev->cfg.loss.temperature, ev->n_data);
    for (int k = 0; k < ev->n_data; k++) printf("%s%lld", k ? ", " : "", (long long)ev->rows[k]);
    printf(" rows of %d tokens), %lld tokens per evaluation; layout dp=%d x pp=%d x tp=%d\n", ev->T,
           (long long)ev->tokens_per_eval, ev->grid.dp, ev->grid.pp, ev->grid.tp);
    printf("evolve: initial mean (plain average) fitness %.6f (", ev->initial_f);
    for (int k = 0; k < ev->n_data; k++)
        printf("%s%s %.6f", k ? ", " : "", ev->cfg.models[k].name, ev->initial_kl[k]);
    printf(")\n");
    fflush(stdout);
}

static void write_output(Evolver *ev, const EvolveArgs *a) {
    char *note = dam_asprintf("the evolve state %s is complete: rerun with --resume to write the output",
                              ev->state_path);
    dam_set_error_note(note);
    free(note);
    set_genome(ev, ev->best_x);
    double wall = ev->wall_before + dam_now() - ev->t0;
    OutputReport rep = {.steps = ev->n_gen,
                        .total_steps = a->generations,
                        .wall_s = wall,
                        .n_data = ev->n_data,
                        .loss = ev->best_f};
    for (int k = 0; k < ev->n_data; k++) rep.kl[k] = ev->best_kl[k], rep.names[k] = ev->cfg.models[k].name;
    char *report = evolve_report(ev, a, wall); /* inside the directory before it is swapped in */
    rep.extra_name = "evolve_report.json", rep.extra_text = report;
    if (ev->grid.dp_idx == 0) output_write_parallel(&ev->model, &ev->cfg, &rep, &ev->grid.replica);
    comm_barrier(&ev->grid.world);
    free(report);
    if (ev->root) {
        printf("evolve: wrote %s (best fitness %.6f, initial %.6f; %d generations, %lld evaluations, %lld "
               "tokens, "
               "%.1f s)\n",
               ev->cfg.out_dir, ev->best_f, ev->initial_f, ev->n_gen, (long long)ev->evals,
               (long long)ev->tokens, wall);
        fflush(stdout);
    }
    dam_set_error_note(NULL);
}

static void evolver_free(Evolver *ev) {
    cmaes_free(&ev->es);
    runstate_free(ev->rs);
    for (int k = 0; k < ev->n_data; k++) dataset_close(&ev->data[k]);
    free(ev->ids), free(ev->mask), free(ev->topk_idx), free(ev->topk_val);
    free(ev->group), free(ev->coef), free(ev->best_x), free(ev->hist), free(ev->ckpt_dir),
        free(ev->state_path);
    dam_model_close(&ev->model);
    if (ev->ctx) ev->be->ctx_free(ev->ctx);
    grid_free(&ev->grid);
    config_free(&ev->cfg);
}

/* Whether another generation runs: within --generations and, with --max-evals, within the budget. */
static int another_generation(const Evolver *ev, const EvolveArgs *a) {
    if (ev->n_gen >= a->generations) return 0;
    return a->max_evals <= 0 || ev->evals + ev->es.lambda <= a->max_evals;
}

/* evolve's output and checkpoint directories are its own, never the DAM run's of the same config:
 * --out, else <output.dir>-evolve; --checkpoint-dir, else <out>.ckpt (checkpoint.dir is the DAM
 * run's). */
static void set_output_dirs(Evolver *ev, const EvolveArgs *a) {
    DamConfig *c = &ev->cfg;
    char *out = a->out ? dam_strdup(a->out) : dam_asprintf("%s-evolve", c->out_dir);
    free(c->out_dir);
    c->out_dir = out;
    c->out_from_cli = a->out != NULL;
    c->command = "dam_dist evolve";
    c->force = a->force;
    ev->ckpt_dir = a->ckpt_dir ? dam_strdup(a->ckpt_dir) : outdir_default_ckpt_dir(out);
}

int cmd_evolve(int argc, char **argv) {
    EvolveArgs a;
    parse_args(&a, argc, argv);
    stop_signals_install();
    Evolver ev;
    memset(&ev, 0, sizeof ev);
    config_load(&ev.cfg, a.config);
    set_output_dirs(&ev, &a);
    if (!a.seed_given) a.seed = ev.cfg.seed;
    ev.state_path = dam_path_join(ev.ckpt_dir, "evolve_state.bin");
    layout_init(&ev.grid, &ev.cfg);
    ev.root = ev.grid.world.rank == 0;
    ev.reporter = ev.grid.pp_idx == 0 && ev.grid.tp_idx == 0; /* the losses reach every stage */
    if (ev.root) output_check(&ev.cfg, ev.ckpt_dir);
    comm_barrier(&ev.grid.world);
    open_model(&ev);
    open_data(&ev, a.rows);
    ev.best_x = dam_calloc((size_t)ev.dim, sizeof(double), "best genome");
    ev.best_f = INFINITY;
    ev.t0 = dam_now();
    /* the CMA-ES is built first so that the state key (its population) is known to a resume */
    cmaes_init(&ev.es, ev.dim, ev.best_x, a.sigma, a.population, a.seed);
    int resumed = a.resume != RESUME_NO && load_state(&ev, &a);
    if (!resumed) {
        start_fresh(&ev, &a);
        save_state(&ev, &a);
    }
    print_header(&ev, &a);
    int stopped = 0;
    for (;;) { /* every rank agrees on a stop at the generation boundary */
        stopped = comm_max_int(&ev.grid.world, stop_signal_pending());
        if (stopped || !another_generation(&ev, &a)) break;
        one_generation(&ev);
        log_generation(&ev, a.generations);
        save_state(&ev, &a);
    }
    if (stopped) {
        if (ev.root) {
            TrainArgs ta = {.argc = a.argc, .argv = a.argv};
            char *cmd = resume_command(&ta, ev.grid.world.size);
            printf("evolve: stopped by SIG%s after generation %d; state in %s; resume with: %s\n",
                   sigabbrev_np(stopped), ev.n_gen, ev.state_path, cmd);
            free(cmd);
            fflush(stdout);
        }
        evolver_free(&ev);
        return DAM_EXIT_STOPPED;
    }
    write_output(&ev, &a);
    evolver_free(&ev);
    return 0;
}
