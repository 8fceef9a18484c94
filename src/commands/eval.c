/* eval.c — `dam_dist eval --config F --model DIR [--model DIR ...] [--rows N] [--json] [--generate]`
 * (definitions in eval.h). One DamModel holds the config's sources (the teachers) and the evaluated
 * models as further source rows, so that each of them runs through the engine's forward as stored
 * (src >= 0: weight 1), on the config's dp x pp x tp layout: rows are split over the data-parallel
 * replicas, the logits come out of the last pipeline stage as tp vocabulary slices (dam_model_logits),
 * the KL is the training loss's own (dam_model_kl_sum → loss_rows), and the sums of every rank are
 * added once at the end. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "config.h"
#include "eval.h"
#include "layout.h"
#include "pipeline.h"

/* ---------------------------------------------------------------- one row */

void eval_init(Evaluator *ev, DamModel *m, int T, int teacher, int n_models, const int *models,
               const LossParams *loss, int generate) {
    memset(ev, 0, sizeof *ev);
    ev->m = m, ev->T = T, ev->teacher = teacher, ev->n_models = n_models, ev->generate = generate;
    memcpy(ev->models, models, (size_t)n_models * sizeof(int));
    ev->loss = *loss;
    ev->rs = runstate_new(m, 1, T);
    size_t TV = (size_t)T * m->cfg.vocab_size, K = loss->topk > 0 ? (size_t)loss->topk : 1;
    ev->z = dam_malloc(TV * sizeof(float), "logits");
    ev->zt = dam_malloc(TV * sizeof(float), "teacher logits");
    ev->arg_m = dam_malloc((size_t)T * sizeof(int32_t), "argmax");
    ev->arg_t = dam_malloc((size_t)T * sizeof(int32_t), "argmax");
    ev->seq = dam_malloc((size_t)T * sizeof(int32_t), "generated row");
    ev->target = dam_malloc((size_t)T * sizeof(int32_t), "targets");
    ev->valid = dam_malloc((size_t)T * sizeof(int32_t), "valid positions");
    ev->kidx = dam_malloc((size_t)T * K * sizeof(int32_t), "top-k ids");
    ev->kval = dam_malloc((size_t)T * K * sizeof(float), "top-k logits");
    ev->scratch = dam_malloc((size_t)T * sizeof(float), "top-1 logits");
    ev->logp = dam_malloc((size_t)T * sizeof(double), "log-probabilities");
}

void eval_free(Evaluator *ev) {
    runstate_free(ev->rs);
    free(ev->z), free(ev->zt), free(ev->arg_m), free(ev->arg_t);
    free(ev->seq), free(ev->target), free(ev->valid), free(ev->kidx), free(ev->kval), free(ev->scratch);
    free(ev->logp);
    memset(ev, 0, sizeof *ev);
}

/* The argmax of each of `rows` rows of logits (global ids, lower id on ties; over the tp group). */
static void argmax_rows(Evaluator *ev, const float *z, int rows, int32_t *arg) {
    dam_model_topk(ev->m, z, rows, 1, arg, ev->scratch);
}

/* The KL term over the valid positions, one run of consecutive valid positions at a time (the
 * logits stay where they are; every tp rank sees the same mask, so all make the same calls).
 * kidx/kval: the teacher cache per valid position (K each), or NULL. */
static double kl_valid(Evaluator *ev, const int8_t *mask, const int32_t *kidx, const float *kval) {
    size_t V = (size_t)ev->m->cfg.vocab_size, K = ev->loss.topk > 0 ? (size_t)ev->loss.topk : 0;
    double kl = 0;
    for (int t = 0, i = 0; t < ev->T;) { /* i: valid positions before t */
        if (!mask[t]) {
            t++;
            continue;
        }
        int t1 = t;
        while (t1 < ev->T && mask[t1]) t1++;
        kl += dam_model_kl_sum(ev->m, ev->z + t * V, ev->zt + t * V, kidx ? kidx + i * K : NULL,
                               kval ? kval + i * K : NULL, t1 - t, &ev->loss);
        i += t1 - t, t = t1;
    }
    return kl;
}

/* Greedy generation by source `src` from the prompt ids[0, a0) of as many tokens as the row has
 * answer tokens; 1 when they are the answer tokens. Every rank of the replica takes part (each
 * token goes from the last stage to the others) and stops at the first wrong token alike. */
static int generate_matches(Evaluator *ev, int src, const int32_t *ids, const int8_t *answer) {
    DamModel *m = ev->m;
    int T = ev->T, a0 = -1, n_ans = 0;
    size_t V = (size_t)m->cfg.vocab_size;
    for (int t = 1; t < T; t++)
        if (answer[t]) {
            if (a0 < 0) a0 = t;
            ev->target[n_ans++] = ids[t]; /* the answer tokens in order */
        }
    if (a0 < 1) return 0; /* no answer token: not counted (eval_row asks only for rows with one) */
    memcpy(ev->seq, ids, (size_t)a0 * sizeof(int32_t));
    for (int j = 0; j < n_ans; j++) {
        int len = a0 + j; /* the next token comes from the logits at position len - 1 */
        dam_model_logits(m, ev->rs, ev->seq, 1, len, src, ev->z);
        int32_t tok = 0;
        if (m->last) argmax_rows(ev, ev->z + (size_t)(len - 1) * V, 1, &tok);
        pipeline_share_from_last(m->pp, &tok, sizeof tok);
        if (tok != ev->target[j]) return 0;
        ev->seq[len] = tok;
    }
    return 1;
}

/* Model j's terms of the row, on the last stage (its logits in ev->z, the teacher's in ev->zt and
 * their argmax in ev->arg_t; n_valid valid positions). */
static void row_terms(Evaluator *ev, const int32_t *ids, const int8_t *mask, const int8_t *answer,
                      const int32_t *kidx, const float *kval, int n_valid, EvalSums *s) {
    DamModel *m = ev->m;
    int T = ev->T;
    argmax_rows(ev, ev->z, T, ev->arg_m);
    double kl = kl_valid(ev, mask, kidx, kval);
    int n_targets = 0;
    for (int t = 0; t + 1 < T; t++) ev->target[t] = mask[t] && mask[t + 1] ? (n_targets++, ids[t + 1]) : -1;
    dam_model_log_prob(m, ev->z, T - 1, ev->target, ev->logp);
    if (m->tp_rank != 0) return; /* every tp rank computed the same: count it once */
    s->kl += kl, s->kl_n += n_valid, s->ce_n += n_targets, s->rows += 1;
    for (int t = 0; t + 1 < T; t++) s->ce -= ev->logp[t];
    for (int i = 0; i < n_valid; i++) s->agree += ev->arg_m[ev->valid[i]] == ev->arg_t[ev->valid[i]];
    int n_ans = 0, exact = 1;
    for (int t = 1; answer && t < T; t++)
        if (answer[t]) n_ans++, exact &= ev->arg_m[t - 1] == ids[t];
    if (n_ans) s->answer_rows += 1, s->exact += exact;
}

void eval_row(Evaluator *ev, const int32_t *ids, const int8_t *mask, const int8_t *answer,
              const int32_t *topk_idx, const float *topk_val, EvalSums *sums) {
    DamModel *m = ev->m;
    int T = ev->T, n_valid = 0, K = ev->loss.topk, has_answer = 0;
    for (int t = 0; t < T; t++)
        if (mask[t]) ev->valid[n_valid++] = t;
    for (int t = 1; answer && t < T; t++) has_answer |= answer[t] != 0;
    const int32_t *kidx = NULL;
    const float *kval = NULL;
    if (K > 0 && topk_idx) { /* the teacher cache of the valid positions */
        for (int i = 0; i < n_valid; i++) {
            memcpy(ev->kidx + (size_t)i * K, topk_idx + (size_t)ev->valid[i] * K,
                   (size_t)K * sizeof(int32_t));
            memcpy(ev->kval + (size_t)i * K, topk_val + (size_t)ev->valid[i] * K, (size_t)K * sizeof(float));
        }
        kidx = ev->kidx, kval = ev->kval;
    }
    dam_model_logits(m, ev->rs, ids, 1, T, ev->teacher, ev->zt);
    if (m->last) argmax_rows(ev, ev->zt, T, ev->arg_t);
    for (int j = 0; j < ev->n_models; j++) {
        dam_model_logits(m, ev->rs, ids, 1, T, ev->models[j], ev->z);
        if (m->last) row_terms(ev, ids, mask, answer, kidx, kval, n_valid, &sums[j]);
        if (ev->generate && has_answer) {
            int ok = generate_matches(ev, ev->models[j], ids, answer);
            if (m->last && m->tp_rank == 0) sums[j].generated += ok;
        }
    }
}

void eval_rows(Evaluator *ev, const DamDataset *d, int64_t row0, int64_t n, int dp, int dp_idx,
               EvalSums *sums) {
    int64_t L = d->seq_len;
    int K = ev->loss.topk, Kc = d->topk, cached = K > 0 && Kc >= K;
    int32_t *ids = dam_malloc((size_t)L * sizeof(int32_t), "ids");
    int8_t *mask = dam_malloc((size_t)L, "mask"), *answer = dam_malloc((size_t)L, "answer mask");
    int32_t *cidx = cached ? dam_malloc((size_t)(L * Kc) * sizeof(int32_t), "top-k ids") : NULL;
    float *cval = cached ? dam_malloc((size_t)(L * Kc) * sizeof(float), "top-k logits") : NULL;
    for (int64_t i = dp_idx; i < n; i += dp) {
        dataset_read_rows(d, row0 + i, 1, ids, mask);
        dataset_read_answer(d, row0 + i, 1, answer);
        if (cached) { /* the first loss.topk entries of each position, in place */
            dataset_read_topk(d, row0 + i, 1, cidx, cval);
            for (int64_t r = 0; r < ev->T; r++) {
                memmove(cidx + r * K, cidx + r * Kc, (size_t)K * sizeof(int32_t));
                memmove(cval + r * K, cval + r * Kc, (size_t)K * sizeof(float));
            }
        }
        eval_row(ev, ids, mask, d->has_answer ? answer : NULL, cidx, cval, sums);
    }
    free(ids), free(mask), free(answer), free(cidx), free(cval);
}

void eval_metrics(const EvalSums *s, const LossParams *loss, int batch_size, EvalMetrics *out) {
    double b = loss->kl_batchmean && batch_size > 1 ? batch_size : 1;
    out->ce = s->ce_n > 0 ? s->ce / s->ce_n : NAN;
    out->kl = s->kl_n > 0 ? s->kl / s->kl_n / b : NAN;
    out->top1 = s->kl_n > 0 ? s->agree / s->kl_n : NAN;
    out->exact = s->answer_rows > 0 ? s->exact / s->answer_rows : NAN;
    out->generated = s->answer_rows > 0 ? s->generated / s->answer_rows : NAN;
    out->rows = (int64_t)s->rows, out->tokens = (int64_t)s->kl_n, out->answer_rows = (int64_t)s->answer_rows;
}

/* ---------------------------------------------------------------- the command */

typedef struct {
    const char *config;
    const char *models[DAM_MAX_SOURCES];
    int n_models, json, generate;
    long long rows; /* 0: all */
} EvalArgs;

static void eval_args_parse(EvalArgs *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            a->config = argv[++i];
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            if (a->n_models == DAM_MAX_SOURCES)
                dam_fail("eval: more than %d --model directories", DAM_MAX_SOURCES);
            a->models[a->n_models++] = argv[++i];
        } else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            a->rows = dam_parse_int(argv[++i], 1, INT32_MAX, "eval: --rows");
        else if (!strcmp(argv[i], "--json"))
            a->json = 1;
        else if (!strcmp(argv[i], "--generate"))
            a->generate = 1;
        else
            cli_bad_option("eval", argv[i], "--config --model --rows");
    }
    /* every rank sees the same: one line from rank 0, every rank ends */
    comm_fail_on_root(!a->config, "eval: --config FILE is required");
    comm_fail_on_root(!a->n_models, "eval: at least one --model DIR is required");
    for (int i = 0; i < a->n_models; i++)
        comm_fail_on_root(!dam_is_dir(a->models[i]), "eval: --model %s: no such directory", a->models[i]);
}

typedef struct {
    EvalArgs a;
    DamConfig c;
    ProcessGrid g;
    const Backend *be;
    BackendCtx *ctx;
    DamModel m;
    int T[DAM_MAX_SOURCES];         /* tokens per row of dataset k */
    int64_t first[DAM_MAX_SOURCES]; /* its first evaluated row */
    EvalSums *sums;                 /* [model][dataset] */
} EvalRun;

/* The teachers (the config's sources) and the evaluated models, as rows of one model. */
static void open_models(EvalRun *r) {
    const DamConfig *c = &r->c;
    int n = c->n_models + r->a.n_models;
    if (n > DAM_MAX_SOURCES)
        dam_fail("eval: the config's %d sources and %d --model directories make %d models; at most %d",
                 c->n_models, r->a.n_models, n, DAM_MAX_SOURCES);
    const char *dirs[DAM_MAX_SOURCES], *names[DAM_MAX_SOURCES];
    for (int i = 0; i < c->n_models; i++) dirs[i] = c->models[i].path, names[i] = c->models[i].name;
    for (int j = 0; j < r->a.n_models; j++) dirs[c->n_models + j] = names[c->n_models + j] = r->a.models[j];
    r->be = config_backend(c->device);
    r->ctx = config_backend_ctx(c, r->be);
    dam_model_open_parallel(&r->m, n, dirs, names, r->be, r->ctx, &r->g.tp_group, &r->g.pp_group,
                            c->transport);
}

/* Dataset k's rows and tokens per row, checked before any forward. */
static void check_dataset(EvalRun *r, int k, DamDataset *d) {
    const ModelConfig *mc = &r->m.full_cfg;
    dataset_open(d, r->c.models[k].dataset);
    dataset_check_ids(d, mc->vocab_size);
    int T = r->c.seq_len > 0 ? r->c.seq_len : (int)d->seq_len;
    if (T > d->seq_len)
        dam_fail("%s: train.seq_len %d is longer than the rows of %s (%lld)", r->c.file, T, d->path,
                 (long long)d->seq_len);
    if (T > mc->max_position_embeddings)
        dam_fail("%s: rows of %d tokens exceed max_position_embeddings %d", d->path, T,
                 mc->max_position_embeddings);
    if (T < 2) dam_fail("%s: rows of %d token: cross-entropy needs at least 2", d->path, T);
    comm_fail_on_root(r->a.rows > d->n_rows, "eval: --rows %lld: %s has only %lld rows", r->a.rows, d->path,
                      (long long)d->n_rows);
    r->T[k] = T;
    r->first[k] = r->a.rows ? d->n_rows - r->a.rows : 0;
}

static void run_datasets(EvalRun *r) {
    int nd = r->c.n_models, nm = r->a.n_models, models[DAM_MAX_SOURCES];
    for (int j = 0; j < nm; j++) models[j] = nd + j;
    LossParams loss = r->c.loss;
    loss.kl = 1, loss.mse = 0, loss.entropy = 0;
    DamDataset d[DAM_MAX_SOURCES];
    for (int k = 0; k < nd; k++) check_dataset(r, k, &d[k]);
    r->sums = dam_calloc((size_t)nm * nd, sizeof(EvalSums), "eval sums");
    EvalSums *per = dam_calloc((size_t)nm, sizeof(EvalSums), "eval sums");
    for (int k = 0; k < nd; k++) {
        Evaluator ev;
        eval_init(&ev, &r->m, r->T[k], k, nm, models, &loss, r->a.generate);
        memset(per, 0, (size_t)nm * sizeof *per);
        eval_rows(&ev, &d[k], r->first[k], d[k].n_rows - r->first[k], r->g.dp, r->g.dp_idx, per);
        for (int j = 0; j < nm; j++) r->sums[(size_t)j * nd + k] = per[j];
        eval_free(&ev);
        dataset_close(&d[k]);
    }
    free(per);
    comm_allreduce_sum_f64(&r->g.world, (double *)r->sums, (size_t)nm * nd * EVAL_N_SUMS);
}

/* A metric with its digits, or "-" when it is not defined. */
static const char *fmt_metric(char *buf, size_t n, double v, const char *fmt) {
    if (isnan(v)) return "-";
    snprintf(buf, n, fmt, v);
    return buf;
}

static void print_table(const EvalRun *r) {
    int nd = r->c.n_models, nm = r->a.n_models, gen = r->a.generate;
    char rows[48] = "all rows";
    if (r->a.rows) snprintf(rows, sizeof rows, "the last %lld rows", r->a.rows);
    printf("eval: %d model%s on %d dataset%s (%s of each, layout dp=%d x pp=%d x tp=%d); KL(teacher || "
           "model) at temperature %g%s\n",
           nm, nm > 1 ? "s" : "", nd, nd > 1 ? "s" : "", rows, r->g.dp, r->g.pp, r->g.tp,
           r->c.loss.temperature, r->c.loss.topk > 0 ? " over the teacher's top-K" : "");
    printf("%-24s %-16s %10s %10s %8s %8s%s %8s %10s\n", "model", "dataset", "CE", "KL", "top-1", "exact",
           gen ? "      gen" : "", "rows", "tokens");
    for (int j = 0; j < nm; j++)
        for (int k = 0; k < nd; k++) {
            EvalMetrics e;
            eval_metrics(&r->sums[(size_t)j * nd + k], &r->c.loss, r->c.batch_size, &e);
            char b[4][32];
            printf("%-24s %-16s %10.6f %10.6f %8.4f %8s", r->a.models[j], r->c.models[k].name, e.ce, e.kl,
                   e.top1, fmt_metric(b[0], sizeof b[0], e.exact, "%.4f"));
            if (gen) printf(" %8s", fmt_metric(b[1], sizeof b[1], e.generated, "%.4f"));
            printf(" %8lld %10lld\n", (long long)e.rows, (long long)e.tokens);
        }
    printf("CE: cross-entropy of the next token (nats), lower is better; KL: the training loss's KL to the "
           "dataset's source, lower is better;\ntop-1: agreement with the source's argmax, higher is better; "
           "exact: "
           "rows whose answer tokens are all argmax (/answer_mask; \"-\": none), higher is better%s;\n"
           "rows: rows evaluated; tokens: their valid positions (those of KL and top-1)\n",
           gen ? ";\ngen: rows whose answer greedy generation reproduces, higher is better" : "");
}

static void add_metric(cJSON *o, const char *key, double v) {
    if (isnan(v))
        cJSON_AddNullToObject(o, key);
    else
        cJSON_AddNumberToObject(o, key, v);
}

/* { "config", "temperature", "rows", "models": { DIR: { DATASET: { metrics } } } } */
static void print_json(const EvalRun *r) {
    int nd = r->c.n_models, nm = r->a.n_models;
    cJSON *root = cJSON_CreateObject(), *models = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "config", r->c.file);
    cJSON_AddNumberToObject(root, "temperature", r->c.loss.temperature);
    cJSON_AddNumberToObject(root, "topk", r->c.loss.topk);
    cJSON_AddStringToObject(root, "kl_reduction", r->c.loss.kl_batchmean ? "batchmean" : "token");
    if (r->a.rows)
        cJSON_AddNumberToObject(root, "rows", (double)r->a.rows);
    else
        cJSON_AddStringToObject(root, "rows", "all");
    cJSON_AddItemToObject(root, "models", models);
    for (int j = 0; j < nm; j++) {
        cJSON *mo = cJSON_CreateObject();
        cJSON_AddItemToObject(models, r->a.models[j], mo);
        for (int k = 0; k < nd; k++) {
            EvalMetrics e;
            eval_metrics(&r->sums[(size_t)j * nd + k], &r->c.loss, r->c.batch_size, &e);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddItemToObject(mo, r->c.models[k].name, o);
            cJSON_AddStringToObject(o, "file", r->c.models[k].dataset);
            cJSON_AddStringToObject(o, "teacher", r->c.models[k].path);
            add_metric(o, "cross_entropy", e.ce);
            add_metric(o, "kl", e.kl);
            add_metric(o, "top1", e.top1);
            add_metric(o, "exact_match", e.exact);
            if (r->a.generate) add_metric(o, "generate", e.generated);
            cJSON_AddNumberToObject(o, "answer_rows", (double)e.answer_rows);
            cJSON_AddNumberToObject(o, "rows", (double)e.rows);
            cJSON_AddNumberToObject(o, "tokens", (double)e.tokens);
            cJSON_AddNumberToObject(o, "seq_len", r->T[k]);
        }
    }
    char *s = cJSON_Print(root);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(root);
}

int cmd_eval(int argc, char **argv) {
    EvalRun r;
    memset(&r, 0, sizeof r);
    eval_args_parse(&r.a, argc, argv);
    config_load(&r.c, r.a.config);
    layout_init(&r.g, &r.c);
    open_models(&r);
    run_datasets(&r);
    if (r.g.world.rank == 0) {
        if (r.a.json)
            print_json(&r);
        else
            print_table(&r);
        fflush(stdout);
    }
    free(r.sums);
    dam_model_close(&r.m);
    r.be->ctx_free(r.ctx);
    grid_free(&r.g);
    config_free(&r.c);
    return 0;
}
