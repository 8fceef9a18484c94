/* finetune.c — `dam_dist finetune`: full fine-tuning of one model with AdamW on next-token
 * cross-entropy, on the DAM engine's forward and backward (see finetune.h for how), and a small
 * teacher-forced evaluator (cross-entropy and exact-match accuracy on /answer_mask tokens). */
#include "finetune.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "config.h"
#include "dataset.h"
#include "output.h"
#include "step.h"

/* ---------------------------------------------------------------- the trainable model */

/* Tensor x's weights as a writable F32 source: materialized from the stored one (any dtype), kept
 * on the host (the CPU's source is a view of it), uploaded as the new source. */
static float *make_writable(DamModel *m, DamTensor *x) {
    const Backend *be = m->be;
    size_t n = x->rows * x->cols;
    DevBuf tmp = be->alloc(m->ctx, n, DAM_F32, "fine-tuned weights");
    dam_model_materialize(m, x, 0, tmp);
    float *host = dam_malloc(n * sizeof(float), "fine-tuned weights");
    be->download(m->ctx, host, DAM_F32, tmp, n);
    be->free(m->ctx, &tmp);
    be->free_source(m->ctx, &x->src[0]);
    x->src[0] = be->upload_source(m->ctx, host, DAM_F32, x->rows, x->cols, x->cols, x->name);
    return host;
}

void finetune_open(Finetune *f, const char *dir, const Backend *be, BackendCtx *ctx, int B, int T) {
    memset(f, 0, sizeof *f);
    const char *names[] = {"model"};
    dam_model_open(&f->m, 1, &dir, names, be, ctx); /* one source: coefficients 1, no nonlinearity */
    DamModel *m = &f->m;
    f->host_w = dam_calloc((size_t)m->n_tensors, sizeof(float *), "fine-tuned weights");
    f->adam_m = dam_calloc((size_t)m->n_tensors, sizeof(DevBuf), "optimizer state");
    f->adam_v = dam_calloc((size_t)m->n_tensors, sizeof(DevBuf), "optimizer state");
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        size_t n = x->rows * x->cols;
        f->host_w[t] = make_writable(m, x);
        x->wgrad = be->alloc(ctx, n, DAM_F32, "weight gradient");
        f->adam_m[t] = be->alloc(ctx, n, DAM_F32, "optimizer state");
        f->adam_v[t] = be->alloc(ctx, n, DAM_F32, "optimizer state");
    }
    f->B = B, f->T = T;
    size_t V = (size_t)m->cfg.vocab_size, n = (size_t)B * T * V;
    f->topk_idx = dam_malloc(n * sizeof(int32_t), "one-hot targets");
    f->topk_val = dam_malloc(n * sizeof(float), "one-hot targets");
    for (size_t i = 0; i < n; i++) f->topk_idx[i] = (int32_t)(i % V);
    f->rs = runstate_new(m, B, T);
}

void finetune_close(Finetune *f) {
    DamModel *m = &f->m;
    const Backend *be = m->be;
    int n = m->n_tensors;
    runstate_free(f->rs);
    for (int t = 0; t < n; t++) {
        be->free(m->ctx, &m->tensors[t].wgrad);
        be->free(m->ctx, &f->adam_m[t]), be->free(m->ctx, &f->adam_v[t]);
    }
    dam_model_close(m); /* frees the sources (views of host_w on the CPU) */
    for (int t = 0; t < n; t++) free(f->host_w[t]);
    free(f->host_w), free(f->adam_m), free(f->adam_v), free(f->topk_idx), free(f->topk_val);
    memset(f, 0, sizeof *f);
}

int finetune_targets(const int8_t *mask, const int8_t *answer, int answer_only, int B, int T,
                     int8_t *target) {
    int n = 0;
    for (int r = 0; r < B; r++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)r * T + t;
            int on = t + 1 < T && (answer_only ? answer[i + 1] : mask[i] && mask[i + 1]);
            target[i] = (int8_t)on;
            n += on;
        }
    return n;
}

double finetune_loss_grad(Finetune *f, const int32_t *ids, const int8_t *target, int B, int T) {
    DamModel *m = &f->m;
    int V = m->cfg.vocab_size;
    if (B > f->B || T > f->T) dam_fail("finetune: batch %dx%d exceeds %dx%d", B, T, f->B, f->T);
    for (int t = 0; t < m->n_tensors; t++)
        m->be->fill(m->ctx, m->tensors[t].wgrad, 0.0f, m->tensors[t].rows * m->tensors[t].cols);
    for (size_t i = 0; i < (size_t)B * T; i++) { /* the one-hot teacher of each target position */
        if (!target[i]) continue;
        float *row = f->topk_val + i * V;
        for (int v = 0; v < V; v++) row[v] = -1e30f;
        row[ids[i + 1]] = 0.0f;
    }
    LossParams loss = {.temperature = 1.0f, .kl = 1, .topk = V};
    MicroBatch mb = {
        .ids = ids, .mask = target, .topk_idx = f->topk_idx, .topk_val = f->topk_val, .B = B, .T = T};
    LossTerms out = dam_one_micro_batch(m, f->rs, 0, &mb, &loss, 1);
    return out.n_valid ? out.kl : 0.0;
}

double finetune_clip(Finetune *f, double max_norm) {
    DamModel *m = &f->m;
    double sq = 0;
    for (int t = 0; t < m->n_tensors; t++)
        sq += m->be->sumsq(m->ctx, m->tensors[t].wgrad, m->tensors[t].rows * m->tensors[t].cols);
    double norm = sqrt(sq);
    if (max_norm > 0 && norm > max_norm)
        for (int t = 0; t < m->n_tensors; t++)
            m->be->scale(m->ctx, m->tensors[t].wgrad, (float)(max_norm / norm),
                         m->tensors[t].rows * m->tensors[t].cols);
    return norm;
}

void finetune_adamw(Finetune *f, int t, float lr, float weight_decay) {
    DamModel *m = &f->m;
    for (int k = 0; k < m->n_tensors; k++) {
        DamTensor *x = &m->tensors[k];
        int matrix = x->kind == DT_LINEAR || x->kind == DT_EMBED;
        AdamParams p = {lr, 0.9f, 0.999f, 1e-8f, matrix ? weight_decay : 0.0f, t, -1.0f, 0.0f, {ADAM_F32}};
        m->be->adamw(m->ctx, x->src[0].w, x->wgrad, f->adam_m[k], f->adam_v[k], x->rows * x->cols, &p);
    }
}

void finetune_logits(Finetune *f, const int32_t *ids, int B, int T, float *logits) {
    dam_model_logits(&f->m, f->rs, ids, B, T, -1, logits);
}

/* ---------------------------------------------------------------- evaluation */

typedef struct {
    double ce;
    int64_t n_tokens, rows, exact, counted; /* counted: rows with an answer token */
} EvalResult;

/* Cross-entropy of the next token over the answer tokens (or, in a file without any, over every
 * valid next token) and exact match of the rows with answer tokens, teacher forced. */
static void evaluate(Finetune *f, const char *path, EvalResult *res) {
    DamDataset d;
    dataset_open(&d, path);
    int V = f->m.cfg.vocab_size, T = (int)d.seq_len, B = f->B;
    dataset_check_ids(&d, V);
    size_t n = (size_t)B * T;
    int32_t *ids = dam_malloc(n * sizeof(int32_t), "eval batch");
    int8_t *mask = dam_malloc(n, "eval batch"), *ans = dam_malloc(n, "eval batch");
    int8_t *target = dam_malloc(n, "eval batch");
    float *logits = dam_malloc(n * V * sizeof(float), "eval logits");
    int has_answer = 0;
    for (int64_t r0 = 0; r0 < d.n_rows && !has_answer; r0 += B) { /* does the file mark answers? */
        int nr = (int)(d.n_rows - r0 < B ? d.n_rows - r0 : B);
        dataset_read_answer(&d, r0, nr, ans);
        for (size_t i = 0; i < (size_t)nr * T; i++) has_answer |= ans[i] != 0;
    }
    memset(res, 0, sizeof *res);
    for (int64_t r0 = 0; r0 < d.n_rows; r0 += B) {
        int nr = (int)(d.n_rows - r0 < B ? d.n_rows - r0 : B);
        dataset_read_rows(&d, r0, nr, ids, mask);
        dataset_read_answer(&d, r0, nr, ans);
        finetune_targets(mask, ans, has_answer, nr, T, target);
        finetune_logits(f, ids, nr, T, logits);
        for (int r = 0; r < nr; r++) {
            int answered = 0, right = 1;
            for (int t = 0; t + 1 < T; t++) {
                size_t i = (size_t)r * T + t;
                if (!target[i]) continue;
                const float *z = logits + i * V;
                int best = 0, y = ids[i + 1];
                double mx = z[0], se = 1; /* the largest logit's own term, exp(0) */
                for (int v = 1; v < V; v++)
                    if (z[v] > z[best]) best = v, mx = z[v];
                for (int v = 0; v < V; v++)
                    if (v != best) se += exp(z[v] - mx);
                res->ce += mx + log(se) - z[y], res->n_tokens++;
                answered = 1, right &= best == y;
            }
            res->rows++;
            if (has_answer && answered) res->counted++, res->exact += right;
        }
    }
    if (res->n_tokens) res->ce /= (double)res->n_tokens;
    free(ids), free(mask), free(ans), free(target), free(logits);
    dataset_close(&d);
}

static void print_eval(const char *path, const EvalResult *e) {
    printf("finetune: eval %s: %lld rows, cross-entropy %.4f over %lld tokens, exact_match %.4f (%lld of "
           "%lld)\n",
           path, (long long)e->rows, e->ce, (long long)e->n_tokens,
           e->counted ? (double)e->exact / (double)e->counted : 0.0, (long long)e->exact,
           (long long)e->counted);
    fflush(stdout);
}

/* ---------------------------------------------------------------- the command */

enum { MAX_FILES = DAM_MAX_SOURCES };

typedef struct {
    const char *model, *out, *device;
    const char *data[MAX_FILES], *eval[MAX_FILES];
    int n_data, n_eval, steps, batch, answer_only, force;
    float lr, weight_decay, max_grad_norm;
    uint64_t seed;
} FinetuneArgs;

static void add_file(const char **list, int *n, const char *path, const char *opt) {
    if (*n == MAX_FILES) dam_fail("finetune: at most %d %s files", MAX_FILES, opt);
    list[(*n)++] = path;
}

static float parse_float(const char *s, float lo, float hi, const char *what) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi))
        dam_fail("%s: expected a number from %g to %g, got '%s'", what, (double)lo, (double)hi, s);
    return (float)v;
}

static void parse_args(FinetuneArgs *a, int argc, char **argv) {
    *a = (FinetuneArgs){.steps = 100, .batch = 16, .lr = 1e-3f, .max_grad_norm = 1.0f, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(o, "--model") && has)
            a->model = argv[++i];
        else if (!strcmp(o, "--data") && has)
            add_file(a->data, &a->n_data, argv[++i], "--data");
        else if (!strcmp(o, "--eval") && has)
            add_file(a->eval, &a->n_eval, argv[++i], "--eval");
        else if (!strcmp(o, "--out") && has)
            a->out = argv[++i];
        else if (!strcmp(o, "--steps") && has)
            a->steps = (int)dam_parse_int(argv[++i], 0, 100000000, "finetune --steps");
        else if (!strcmp(o, "--batch") && has)
            a->batch = (int)dam_parse_int(argv[++i], 1, 65536, "finetune --batch");
        else if (!strcmp(o, "--seed") && has)
            a->seed = (uint64_t)dam_parse_int(argv[++i], 0, INT64_MAX, "finetune --seed");
        else if (!strcmp(o, "--lr") && has)
            a->lr = parse_float(argv[++i], 0.0f, 10.0f, "finetune --lr");
        else if (!strcmp(o, "--weight-decay") && has)
            a->weight_decay = parse_float(argv[++i], 0.0f, 10.0f, "finetune --weight-decay");
        else if (!strcmp(o, "--max-grad-norm") && has)
            a->max_grad_norm = parse_float(argv[++i], 0.0f, 1e30f, "finetune --max-grad-norm");
        else if (!strcmp(o, "--device") && has)
            a->device = argv[++i];
        else if (!strcmp(o, "--answer-only"))
            a->answer_only = 1;
        else if (!strcmp(o, "--force"))
            a->force = 1;
        else
            cli_bad_option("finetune", o,
                           "--model --data --eval --out --steps --batch --seed --lr --weight-decay "
                           "--max-grad-norm --device");
    }
    if (!a->model) dam_fail("finetune: --model DIR is required");
    if (a->steps > 0 && (!a->n_data || !a->out))
        dam_fail("finetune: training (--steps %d) needs --data F.h5 and --out DIR", a->steps);
    if (a->steps == 0 && !a->n_eval && !a->out)
        dam_fail("finetune: nothing to do (--steps 0 without --eval or --out)");
}

/* The output directory as the DAM run's writer sees it: the model is the donor (config.json and
 * tokenizer files), the model and the data files are inputs that are never written over. */
static void output_config(DamConfig *cfg, const FinetuneArgs *a, char *effective) {
    memset(cfg, 0, sizeof *cfg);
    cfg->base_model = (char *)a->model;
    cfg->n_models = a->n_data ? a->n_data : 1;
    for (int i = 0; i < cfg->n_models; i++)
        cfg->models[i].path = (char *)a->model,
        cfg->models[i].dataset = (char *)(a->n_data ? a->data[i] : NULL);
    cfg->out_dir = (char *)a->out;
    cfg->shard_bytes = (size_t)5 << 30;
    cfg->force = a->force;
    cfg->out_from_cli = 1;
    cfg->command = "dam_dist finetune";
    cfg->effective = effective;
}

static char *settings_json(const FinetuneArgs *a) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "command", "finetune");
    cJSON_AddStringToObject(s, "model", a->model);
    cJSON *data = cJSON_AddArrayToObject(s, "data");
    for (int i = 0; i < a->n_data; i++) cJSON_AddItemToArray(data, cJSON_CreateString(a->data[i]));
    cJSON_AddNumberToObject(s, "steps", a->steps);
    cJSON_AddNumberToObject(s, "batch", a->batch);
    cJSON_AddNumberToObject(s, "lr", a->lr);
    cJSON_AddNumberToObject(s, "weight_decay", a->weight_decay);
    cJSON_AddNumberToObject(s, "max_grad_norm", a->max_grad_norm);
    cJSON_AddNumberToObject(s, "seed", (double)a->seed);
    cJSON_AddBoolToObject(s, "answer_only", a->answer_only);
    char *text = cJSON_PrintUnformatted(s);
    cJSON_Delete(s);
    return text;
}

/* The training files, opened and checked: one sequence length, ids inside the vocabulary. */
static int64_t open_data(DamDataset *d, const FinetuneArgs *a, int V, int *T) {
    int64_t rows = 0;
    *T = 0;
    if (a->n_data < 1) return 0;
    for (int i = 0; i < a->n_data; i++) {
        dataset_open(&d[i], a->data[i]);
        dataset_check_ids(&d[i], V);
        if (i && d[i].seq_len != d[0].seq_len)
            dam_fail("%s: rows of %lld tokens; %s has %lld (the training files must agree)", a->data[i],
                     (long long)d[i].seq_len, a->data[0], (long long)d[0].seq_len);
        rows += d[i].n_rows;
    }
    *T = (int)d[0].seq_len;
    return rows;
}

/* Global row g of the training files into one batch row. */
static void read_row(const DamDataset *d, int n, int64_t g, int32_t *ids, int8_t *mask, int8_t *ans) {
    int k = 0;
    while (k < n - 1 && g >= d[k].n_rows) g -= d[k++].n_rows;
    dataset_read_rows(&d[k], g, 1, ids, mask);
    dataset_read_answer(&d[k], g, 1, ans);
}

static double train(Finetune *f, const FinetuneArgs *a, const DamDataset *d, int64_t rows, int T) {
    int B = a->batch, every = a->steps >= 10 ? a->steps / 10 : 1;
    size_t n = (size_t)B * T;
    int32_t *ids = dam_malloc(n * sizeof(int32_t), "batch");
    int8_t *mask = dam_malloc(n, "batch"), *ans = dam_malloc(n, "batch"), *target = dam_malloc(n, "batch");
    dam_rng rng;
    dam_rng_seed(&rng, a->seed);
    double sum = 0, last = 0;
    int count = 0;
    for (int step = 1; step <= a->steps; step++) {
        for (int r = 0; r < B; r++)
            read_row(d, a->n_data, (int64_t)(dam_rng_u64(&rng) % (uint64_t)rows), ids + (size_t)r * T,
                     mask + (size_t)r * T, ans + (size_t)r * T);
        finetune_targets(mask, ans, a->answer_only, B, T, target);
        double loss = finetune_loss_grad(f, ids, target, B, T);
        double norm = finetune_clip(f, a->max_grad_norm);
        finetune_adamw(f, step, a->lr, a->weight_decay);
        sum += loss, count++;
        if (step % every == 0 || step == a->steps) {
            last = sum / count;
            printf("finetune: step %d/%d loss %.4f grad_norm %.3f\n", step, a->steps, last, norm);
            fflush(stdout);
            sum = 0, count = 0;
        }
    }
    free(ids), free(mask), free(ans), free(target);
    return last;
}

int cmd_finetune(int argc, char **argv) {
    FinetuneArgs a;
    parse_args(&a, argc, argv);
    if (comm_world_size() > 1)
        dam_fail("finetune runs in one process (started with %d ranks): run it without mpirun",
                 comm_world_size());
    char *effective = settings_json(&a);
    DamConfig cfg;
    output_config(&cfg, &a, effective);
    if (a.out) { /* before any work: may the output be written? */
        OutputTarget target;
        output_target(&target, &cfg);
        outdir_check(&target.od);
    }
    const Backend *be = config_backend(a.device ? a.device : "cpu");
    BackendCtx *ctx = be->ctx_new(config_local_rank());
    ModelConfig mc;
    char *cfg_path = dam_path_join(a.model, "config.json");
    hfconfig_load(&mc, cfg_path);
    free(cfg_path);
    DamDataset d[MAX_FILES];
    int T = 0;
    int64_t rows = a.n_data ? open_data(d, &a, mc.vocab_size, &T) : 0;
    for (int i = 0; i < a.n_eval; i++) { /* the run state holds the longest rows */
        DamDataset e;
        dataset_open(&e, a.eval[i]);
        T = e.seq_len > T ? (int)e.seq_len : T;
        dataset_close(&e);
    }
    Finetune f;
    finetune_open(&f, a.model, be, ctx, a.batch, T ? T : 1);
    double t0 = dam_now(), loss = a.steps ? train(&f, &a, d, rows, T) : 0;
    double wall = dam_now() - t0;
    for (int i = 0; i < a.n_data; i++) dataset_close(&d[i]);
    for (int i = 0; i < a.n_eval; i++) {
        EvalResult e;
        evaluate(&f, a.eval[i], &e);
        print_eval(a.eval[i], &e);
    }
    if (a.out) {
        OutputReport rep = {.steps = a.steps, .total_steps = a.steps, .wall_s = wall, .loss = loss};
        output_write(&f.m, &cfg, &rep);
        printf("finetune: wrote %s (%d steps, %.1f s)\n", a.out, a.steps, wall);
    }
    finetune_close(&f);
    be->ctx_free(ctx);
    free(effective);
    return 0;
}
