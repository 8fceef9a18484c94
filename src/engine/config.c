/* config.c — see config.h. Unknown keys are refused (a typo must not silently become a default). */
#include "config.h"

#include <cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <strings.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"
#include "outdir.h"

static char *resolve(const char *cfg_path, const char *p) {
    if (!p) return NULL;
    if (p[0] == '/') return dam_strdup(p);
    char *tmp = dam_strdup(cfg_path);
    char *dir = dirname(tmp);
    char *out = strcmp(dir, ".") == 0 ? dam_strdup(p) : dam_path_join(dir, p);
    free(tmp);
    return out;
}

static void check_keys(const cJSON *obj, const char *file, const char *section, const char *const *allowed) {
    for (const cJSON *it = obj ? obj->child : NULL; it; it = it->next) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++) ok |= !strcmp(*a, it->string);
        if (!ok) dam_fail("%s: unknown key '%s%s%s'", file, section, *section ? "." : "", it->string);
    }
}

static int pick(const char *file, const char *field, const char *value, const char *const *names) {
    char allowed[256] = "";
    for (int i = 0; names[i]; i++) {
        if (!strcmp(value, names[i])) return i;
        size_t n = strlen(allowed);
        snprintf(allowed + n, sizeof allowed - n, "%s\"%s\"", i ? ", " : "", names[i]);
    }
    dam_fail("%s: field '%s': unknown value '%s' (allowed: %s)", file, field, value, allowed);
}

size_t config_parse_size(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0) return 0;
    while (*end == ' ') end++;
    double mult = 1;
    if (!strcasecmp(end, "KB") || !strcasecmp(end, "K"))
        mult = 1e3;
    else if (!strcasecmp(end, "MB") || !strcasecmp(end, "M"))
        mult = 1e6;
    else if (!strcasecmp(end, "GB") || !strcasecmp(end, "G"))
        mult = 1e9;
    else if (!strcasecmp(end, "KiB"))
        mult = 1024.0;
    else if (!strcasecmp(end, "MiB"))
        mult = 1024.0 * 1024;
    else if (!strcasecmp(end, "GiB"))
        mult = 1024.0 * 1024 * 1024;
    else if (*end)
        return 0;
    return (size_t)(v * mult);
}

static void parse_models(DamConfig *c, const cJSON *root) {
    const char *f = c->file;
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
    if (!cJSON_IsArray(models) || cJSON_GetArraySize(models) < 1)
        dam_fail("%s: field 'models': expected a non-empty array of {\"path\", \"dataset\"}", f);
    int n = cJSON_GetArraySize(models);
    if (n > DAM_MAX_SOURCES - 1)
        dam_fail("%s: field 'models': %d models; at most %d", f, n, DAM_MAX_SOURCES - 1);
    c->n_models = n;
    for (int i = 0; i < n; i++) {
        const cJSON *m = cJSON_GetArrayItem(models, i);
        char field[32];
        snprintf(field, sizeof field, "models[%d]", i);
        if (!cJSON_IsObject(m)) dam_fail("%s: field '%s': expected an object", f, field);
        static const char *const keys[] = {"path", "dataset", "name", NULL};
        check_keys(m, f, field, keys);
        json_set_section(field);
        const char *nm = json_opt_string(m, "name", NULL);
        const cJSON *pv = cJSON_GetObjectItemCaseSensitive(m, "path");
        const cJSON *dv = cJSON_GetObjectItemCaseSensitive(m, "dataset");
        const char *shown = nm; /* the source as the user knows it: its name, else its directory */
        if (!shown && cJSON_IsString(pv)) shown = pv->valuestring;
        char who[320];
        snprintf(who, sizeof who, "%s%s%s%s", field, shown ? " '" : "", shown ? shown : "", shown ? "'" : "");
        if (!pv || cJSON_IsNull(pv))
            dam_fail("%s: %s.path: missing (the Hugging Face model directory of source %s)", f, field, who);
        if (!dv || cJSON_IsNull(dv))
            dam_fail("%s: %s.dataset: missing (the HDF5 file that dam_dist prepare made for %s with its "
                     "tokenizer)",
                     f, field, who);
        c->models[i].path = resolve(f, json_get_string(m, "path", f, field));
        c->models[i].dataset = resolve(f, json_get_string(m, "dataset", f, field));
        if (!nm) {
            char *tmp = dam_strdup(c->models[i].path);
            c->models[i].name = dam_strdup(basename(tmp));
            free(tmp);
        } else
            c->models[i].name = dam_strdup(nm);
        json_set_section(NULL); /* `field` goes out of scope */
    }
}

static void parse_merge(DamConfig *c, const cJSON *root) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "merge");
    static const char *const keys[] = {"embeddings", "norms",     "include_base", "nonlinearity",
                                       "init",       "bias_init", "coef_dtype",   NULL};
    check_keys(s, c->file, "merge", keys);
    json_set_section("merge");
    static const char *const bi[] = {"init", "one", NULL};
    c->bias_init = (BiasInit)pick(c->file, "merge.bias_init", json_opt_string(s, "bias_init", "init"), bi);
    static const char *const cd[] = {"float32", "bfloat16", NULL};
    c->coef_dtype = pick(c->file, "merge.coef_dtype", json_opt_string(s, "coef_dtype", "float32"), cd)
                        ? DAM_BF16
                        : DAM_F32;
    c->embeddings = json_opt_bool(s, "embeddings", 1);
    c->norms = json_opt_bool(s, "norms", 1);
    c->include_base = json_opt_bool(s, "include_base", 0);
    static const char *const nl[] = {"none", "tanh", "sigmoid", "relu", NULL};
    c->nonlinearity =
        (Nonlinearity)pick(c->file, "merge.nonlinearity", json_opt_string(s, "nonlinearity", "none"), nl);
    const char *init = json_opt_string(s, "init", "uniform");
    if (!strcmp(init, "uniform"))
        c->init = INIT_UNIFORM;
    else if (!strcmp(init, "random"))
        c->init = INIT_RANDOM;
    else if (!strcmp(init, "random_tensor"))
        c->init = INIT_RANDOM_TENSOR;
    else {
        c->init = INIT_FILE;
        c->init_file = resolve(c->file, init);
    }
}

static void parse_loss(DamConfig *c, const cJSON *root) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "loss");
    static const char *const keys[] = {
        "kl",   "temperature",  "similarity",       "l1",         "l2", "mse", "entropy", "overlap",
        "topk", "kl_reduction", "weighted_overlap", "reg_biases", NULL};
    check_keys(s, c->file, "loss", keys);
    json_set_section("loss");
    static const char *const red[] = {"token", "batchmean", NULL};
    c->loss.kl_batchmean =
        pick(c->file, "loss.kl_reduction", json_opt_string(s, "kl_reduction", "token"), red);
    c->loss.kl = json_opt_bool(s, "kl", 1);
    c->loss.temperature = (float)json_opt_number(s, "temperature", 2.0);
    c->similarity = (float)json_opt_number(s, "similarity", 0.01);
    c->l1 = (float)json_opt_number(s, "l1", 0);
    c->l2 = (float)json_opt_number(s, "l2", 0);
    c->loss.mse = (float)json_opt_number(s, "mse", 0);
    c->loss.entropy = (float)json_opt_number(s, "entropy", 0);
    c->overlap = (float)json_opt_number(s, "overlap", 0);
    c->weighted_overlap = (float)json_opt_number(s, "weighted_overlap", 0);
    c->reg_skip_biases = !json_opt_bool(s, "reg_biases", 1);
    c->loss.topk = json_opt_int(s, "topk", 0);
    if (c->loss.temperature <= 0) dam_fail("%s: field 'loss.temperature': expected > 0", c->file);
    if (c->loss.topk < 0) dam_fail("%s: field 'loss.topk': expected >= 0", c->file);
    const char *const wn[] = {"similarity", "l1", "l2", "mse", "entropy", "overlap", "weighted_overlap"};
    const float wv[] = {c->similarity,      c->l1, c->l2, c->loss.mse, c->loss.entropy, c->overlap,
                        c->weighted_overlap};
    for (int i = 0; i < 7; i++)
        if (wv[i] < 0) dam_fail("%s: field 'loss.%s': expected a weight >= 0, got %g", c->file, wn[i], wv[i]);
}

static const char *const schedule_names[] = {
    "constant",   "linear",       "cosine", "constant_with_warmup", "cosine_with_restarts",
    "polynomial", "inverse_sqrt", NULL};

/* train.schedule_args, with transformers' defaults (get_cosine_schedule_with_warmup num_cycles 0.5,
 * ..._with_hard_restarts 1, get_polynomial_decay_schedule_with_warmup lr_end 1e-7 and power 1,
 * get_inverse_sqrt_schedule timescale = the warmup steps or 10000). */
static void parse_schedule_args(DamConfig *c, const cJSON *a) {
    const char *f = c->file;
    if (a && !cJSON_IsObject(a)) dam_fail("%s: field 'train.schedule_args': expected an object", f);
    static const char *const keys[] = {"num_cycles", "lr_end", "power", "timescale", NULL};
    check_keys(a, f, "train.schedule_args", keys);
    json_set_section("train.schedule_args");
    c->num_cycles = json_opt_number(a, "num_cycles", c->schedule == SCHED_COSINE_WITH_RESTARTS ? 1 : 0.5);
    c->lr_end = json_opt_number(a, "lr_end", 1e-7);
    c->power = json_opt_number(a, "power", 1.0);
    c->timescale = json_opt_int(a, "timescale", 0);
    json_set_section("train");
    if (c->num_cycles <= 0) dam_fail("%s: field 'train.schedule_args.num_cycles': expected > 0", f);
    if (c->power <= 0) dam_fail("%s: field 'train.schedule_args.power': expected > 0", f);
    if (c->timescale < 0)
        dam_fail("%s: field 'train.schedule_args.timescale': expected >= 0 (0: default)", f);
    if (c->lr_end < 0 || (c->schedule == SCHED_POLYNOMIAL && c->lr_end >= c->lr))
        dam_fail("%s: field 'train.schedule_args.lr_end': expected >= 0 and below train.lr (%g), got %g", f,
                 (double)c->lr, c->lr_end);
}

static void parse_train(DamConfig *c, const cJSON *root) {
    const char *f = c->file;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "train");
    static const char *const keys[] = {"optimizer",
                                       "lr",
                                       "weight_decay",
                                       "betas",
                                       "eps",
                                       "mofo_alpha",
                                       "schedule",
                                       "warmup",
                                       "steps",
                                       "epochs",
                                       "batch_size",
                                       "micro_batches",
                                       "seq_len",
                                       "max_grad_norm",
                                       "seed",
                                       "mofo_scope",
                                       "mofo_k",
                                       "mofo_decay",
                                       "warmup_under_constant",
                                       "shuffle",
                                       "warmup_ratio",
                                       "schedule_args",
                                       NULL};
    check_keys(s, f, "train", keys);
    json_set_section("train");
    static const char *const scope[] = {"tensor", "source", NULL}, *const kk[] = {"ceil", "floor", NULL},
                             *const dec[] = {"selected", "all", NULL};
    c->mofo_scope = (MofoScope)pick(f, "train.mofo_scope", json_opt_string(s, "mofo_scope", "tensor"), scope);
    c->mofo_k = (MofoK)pick(f, "train.mofo_k", json_opt_string(s, "mofo_k", "ceil"), kk);
    c->mofo_decay = (MofoDecay)pick(f, "train.mofo_decay", json_opt_string(s, "mofo_decay", "selected"), dec);
    c->constant_skips_warmup = !json_opt_bool(s, "warmup_under_constant", 1);
    static const char *const opts[] = {"adamw", "mofo", NULL};
    c->optimizer = (OptimizerKind)pick(f, "train.optimizer", json_opt_string(s, "optimizer", "adamw"), opts);
    c->lr = (float)json_opt_number(s, "lr", 1e-3);
    c->weight_decay = (float)json_opt_number(s, "weight_decay", 0);
    c->beta1 = 0.9f, c->beta2 = 0.999f;
    const cJSON *betas = s ? cJSON_GetObjectItemCaseSensitive(s, "betas") : NULL;
    if (betas) {
        if (!cJSON_IsArray(betas) || cJSON_GetArraySize(betas) != 2)
            dam_fail("%s: field 'train.betas': expected [beta1, beta2]", f);
        c->beta1 = (float)cJSON_GetArrayItem(betas, 0)->valuedouble;
        c->beta2 = (float)cJSON_GetArrayItem(betas, 1)->valuedouble;
    }
    c->adam_eps = (float)json_opt_number(s, "eps", 1e-8);
    c->mofo_alpha = json_opt_number(s, "mofo_alpha", 0.3);
    c->schedule =
        (ScheduleKind)pick(f, "train.schedule", json_opt_string(s, "schedule", "constant"), schedule_names);
    c->warmup = json_opt_int(s, "warmup", 0);
    c->warmup_ratio = json_opt_number(s, "warmup_ratio", 0);
    c->steps = json_opt_int(s, "steps", 0);
    c->epochs = json_opt_int(s, "epochs", 1);
    c->batch_size = json_opt_int(s, "batch_size", 1);
    c->micro_batches = json_opt_int(s, "micro_batches", 1);
    c->seq_len = json_opt_int(s, "seq_len", 0);
    c->max_grad_norm = (float)json_opt_number(s, "max_grad_norm", 1.0);
    c->seed = (uint64_t)json_opt_number(s, "seed", 1);
    c->shuffle = json_opt_bool(s, "shuffle", 0);
    if (c->lr <= 0) dam_fail("%s: field 'train.lr': expected > 0", f);
    const char *const at_least_1[] = {"batch_size", "micro_batches", "epochs"};
    const int v1[] = {c->batch_size, c->micro_batches, c->epochs};
    for (int i = 0; i < 3; i++)
        if (v1[i] < 1) dam_fail("%s: field 'train.%s': expected >= 1, got %d", f, at_least_1[i], v1[i]);
    const char *const at_least_0[] = {"steps", "warmup", "seq_len"};
    const int v0[] = {c->steps, c->warmup, c->seq_len};
    for (int i = 0; i < 3; i++)
        if (v0[i] < 0) dam_fail("%s: field 'train.%s': expected >= 0, got %d", f, at_least_0[i], v0[i]);
    if (c->mofo_alpha <= 0 || c->mofo_alpha > 1)
        dam_fail("%s: field 'train.mofo_alpha': expected in (0, 1]", f);
    if (c->warmup_ratio < 0 || c->warmup_ratio >= 1)
        dam_fail("%s: field 'train.warmup_ratio': expected in [0, 1), got %g", f, c->warmup_ratio);
    if (c->warmup_ratio > 0 && c->warmup > 0)
        dam_fail("%s: fields 'train.warmup' and 'train.warmup_ratio': give one of them", f);
    parse_schedule_args(c, s ? cJSON_GetObjectItemCaseSensitive(s, "schedule_args") : NULL);
}

static void parse_rest(DamConfig *c, const cJSON *root) {
    const char *f = c->file;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "parallel");
    static const char *const pk[] = {"dp",         "pp", "tp", "device", "transport", "keep_activations",
                                     "cpu_matmul", NULL};
    check_keys(p, f, "parallel", pk);
    json_set_section("parallel");
    /* 0 (or absent): chosen for the rank count (layout.c) */
    c->dp = json_opt_int(p, "dp", 0), c->pp = json_opt_int(p, "pp", 0), c->tp = json_opt_int(p, "tp", 0);
    static const char *const dev[] = {"cpu", "cuda", NULL}, *const tr[] = {"auto", "mpi", "nccl", NULL};
    c->device = pick(f, "parallel.device", json_opt_string(p, "device", "cpu"), dev) ? "cuda" : "cpu";
    /* (DamTransport's values are the names' indices) */
    c->transport = (DamTransport)pick(f, "parallel.transport", json_opt_string(p, "transport", "auto"), tr);
    static const char *const mm[] = {"fp32", "bf16", NULL};
    c->cpu_matmul_bf16 = pick(f, "parallel.cpu_matmul", json_opt_string(p, "cpu_matmul", "fp32"), mm);
    const char *keep = json_opt_string(p, "keep_activations", "256MB");
    c->keep_activations = !strcmp(keep, "0") ? 0 : config_parse_size(keep);
    if (!c->keep_activations && strcmp(keep, "0"))
        dam_fail("%s: field 'parallel.keep_activations': expected a size like \"256MB\" or \"0\", got '%s'",
                 f, keep);
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, "checkpoint");
    static const char *const ck[] = {"dir", "every", "keep", NULL};
    check_keys(k, f, "checkpoint", ck);
    json_set_section("checkpoint");
    c->ckpt_dir = resolve(f, json_opt_string(k, "dir", NULL));
    c->ckpt_every = json_opt_int(k, "every", 0);
    c->ckpt_keep = json_opt_int(k, "keep", 2);
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "output");
    static const char *const ok[] = {"dir", "dtype", "shard_size", "metrics", NULL};
    check_keys(o, f, "output", ok);
    json_set_section("output");
    c->out_dir = resolve(f, json_opt_string(o, "dir", "out/merged"));
    const char *dt = json_opt_string(o, "dtype", "bfloat16");
    if (strcmp(dt, "bfloat16")) dam_fail("%s: field 'output.dtype': only \"bfloat16\" is supported", f);
    const char *ss = json_opt_string(o, "shard_size", "5GB");
    c->shard_bytes = config_parse_size(ss);
    if (!c->shard_bytes)
        dam_fail("%s: field 'output.shard_size': expected a size like \"5GB\", got '%s'", f, ss);
    const char *mf = json_opt_string(o, "metrics", NULL);
    c->metrics_file = mf ? resolve(f, mf) : outdir_default_metrics_file(c->out_dir);
}

/* Settings compare and print as the user wrote them (config.h). */
double config_decimal(float f) {
    char b[32];
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(b, sizeof b, "%.*g", digits, (double)f);
        if ((float)strtod(b, NULL) == f) break;
    }
    return strtod(b, NULL);
}

static void add_float(cJSON *o, const char *key, float f) {
    cJSON_AddNumberToObject(o, key, config_decimal(f));
}

static void add_real_path(cJSON *o, const char *key, const char *path) {
    if (!path) {
        cJSON_AddNullToObject(o, key);
        return;
    }
    char *real = dam_realpath_lenient(path);
    cJSON_AddStringToObject(o, key, real);
    free(real);
}

/* The schedule_args the schedule reads (none for constant, constant_with_warmup and linear). */
static void add_schedule_args(cJSON *t, const DamConfig *c) {
    ScheduleKind k = c->schedule;
    if (k != SCHED_COSINE && k != SCHED_COSINE_WITH_RESTARTS && k != SCHED_POLYNOMIAL &&
        k != SCHED_INVERSE_SQRT)
        return;
    cJSON *a = cJSON_AddObjectToObject(t, "schedule_args");
    if (k == SCHED_COSINE || k == SCHED_COSINE_WITH_RESTARTS)
        cJSON_AddNumberToObject(a, "num_cycles", c->num_cycles);
    if (k == SCHED_POLYNOMIAL)
        cJSON_AddNumberToObject(a, "lr_end", c->lr_end), cJSON_AddNumberToObject(a, "power", c->power);
    if (k == SCHED_INVERSE_SQRT) cJSON_AddNumberToObject(a, "timescale", c->timescale);
}

cJSON *config_effective(const DamConfig *c) {
    static const char *const nl[] = {"none", "tanh", "sigmoid", "relu"};
    static const char *const opt[] = {"adamw", "mofo"};
    cJSON *r = cJSON_CreateObject();
    if (c->preset) cJSON_AddStringToObject(r, "preset", c->preset);
    add_real_path(r, "base_model", c->base_model);
    if (c->base_dataset) add_real_path(r, "base_dataset", c->base_dataset); /* absent before it existed */
    cJSON *models = cJSON_AddArrayToObject(r, "models");
    for (int i = 0; i < c->n_models; i++) {
        cJSON *m = cJSON_CreateObject();
        add_real_path(m, "path", c->models[i].path);
        add_real_path(m, "dataset", c->models[i].dataset);
        cJSON_AddStringToObject(m, "name", c->models[i].name);
        cJSON_AddItemToArray(models, m);
    }
    cJSON *mg = cJSON_AddObjectToObject(r, "merge");
    cJSON_AddBoolToObject(mg, "embeddings", c->embeddings);
    cJSON_AddBoolToObject(mg, "norms", c->norms);
    cJSON_AddBoolToObject(mg, "include_base", c->include_base);
    cJSON_AddStringToObject(mg, "nonlinearity", nl[c->nonlinearity]);
    cJSON_AddStringToObject(mg, "coef_dtype", c->coef_dtype == DAM_BF16 ? "bfloat16" : "float32");
    if (c->init == INIT_FILE)
        add_real_path(mg, "init", c->init_file);
    else
        cJSON_AddStringToObject(mg, "init",
                                c->init == INIT_RANDOM          ? "random"
                                : c->init == INIT_RANDOM_TENSOR ? "random_tensor"
                                                                : "uniform");
    cJSON_AddStringToObject(mg, "bias_init", c->bias_init == BIAS_INIT_ONE ? "one" : "init");
    cJSON *l = cJSON_AddObjectToObject(r, "loss");
    cJSON_AddBoolToObject(l, "kl", c->loss.kl);
    add_float(l, "temperature", c->loss.temperature);
    add_float(l, "similarity", c->similarity);
    add_float(l, "l1", c->l1);
    add_float(l, "l2", c->l2);
    add_float(l, "mse", c->loss.mse);
    add_float(l, "entropy", c->loss.entropy);
    add_float(l, "overlap", c->overlap);
    cJSON_AddNumberToObject(l, "topk", c->loss.topk);
    cJSON_AddStringToObject(l, "kl_reduction", c->loss.kl_batchmean ? "batchmean" : "token");
    add_float(l, "weighted_overlap", c->weighted_overlap);
    cJSON_AddBoolToObject(l, "reg_biases", !c->reg_skip_biases);
    cJSON *t = cJSON_AddObjectToObject(r, "train");
    cJSON_AddStringToObject(t, "optimizer", opt[c->optimizer]);
    add_float(t, "lr", c->lr);
    add_float(t, "weight_decay", c->weight_decay);
    cJSON_AddItemToObject(
        t, "betas",
        cJSON_CreateDoubleArray((const double[]){config_decimal(c->beta1), config_decimal(c->beta2)}, 2));
    add_float(t, "eps", c->adam_eps);
    cJSON_AddNumberToObject(t, "mofo_alpha", c->mofo_alpha);
    cJSON_AddStringToObject(t, "mofo_scope", c->mofo_scope == MOFO_SCOPE_SOURCE ? "source" : "tensor");
    cJSON_AddStringToObject(t, "mofo_k", c->mofo_k == MOFO_K_FLOOR ? "floor" : "ceil");
    cJSON_AddStringToObject(t, "mofo_decay", c->mofo_decay == MOFO_DECAY_ALL ? "all" : "selected");
    cJSON_AddStringToObject(t, "schedule", schedule_names[c->schedule]);
    cJSON_AddBoolToObject(t, "warmup_under_constant", !c->constant_skips_warmup);
    cJSON_AddNumberToObject(t, "warmup", c->warmup);
    cJSON_AddNumberToObject(t, "warmup_ratio", c->warmup_ratio);
    add_schedule_args(t, c);
    cJSON_AddNumberToObject(t, "steps", c->steps);
    cJSON_AddNumberToObject(t, "epochs", c->epochs);
    cJSON_AddNumberToObject(t, "batch_size", c->batch_size);
    cJSON_AddNumberToObject(t, "micro_batches", c->micro_batches);
    cJSON_AddNumberToObject(t, "seq_len", c->seq_len);
    add_float(t, "max_grad_norm", c->max_grad_norm);
    cJSON_AddNumberToObject(t, "seed", (double)c->seed);
    cJSON_AddBoolToObject(t, "shuffle", c->shuffle);
    return r;
}

/* Leaves of a JSON value as "path=value" lines, in document order. */
static void flatten(const cJSON *v, const char *path, cJSON *out) {
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        int i = 0;
        for (const cJSON *it = v->child; it; it = it->next, i++) {
            char sub[512];
            if (cJSON_IsObject(v))
                snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", it->string);
            else
                snprintf(sub, sizeof sub, "%s[%d]", path, i);
            flatten(it, sub, out);
        }
        return;
    }
    char *text = cJSON_PrintUnformatted(v);
    cJSON_AddStringToObject(out, path, text);
    cJSON_free(text); /* cJSON's allocator (the fuzz harness tracks it) */
}

/* Settings recorded since checkpoint format 2 was first written, with the value that reproduces the
 * older behaviour: a checkpoint made before a key existed ran with that value, so "absent" there
 * equals it here (a resume across an upgrade is not a change of settings). */
static int later_key_at_old_default(const char *key, const char *value) {
    static const char *const later[][2] = {
        {"preset", NULL}, /* absent: no preset */
        {"merge.bias_init", "\"init\""},
        {"merge.coef_dtype", "\"float32\""},
        {"loss.kl_reduction", "\"token\""},
        {"loss.weighted_overlap", "0"},
        {"loss.reg_biases", "true"},
        {"train.mofo_scope", "\"tensor\""},
        {"train.mofo_k", "\"ceil\""},
        {"train.mofo_decay", "\"selected\""},
        {"train.warmup_under_constant", "true"},
        {"train.shuffle", "false"},
        {"train.warmup_ratio", "0"},
        {"train.schedule_args.num_cycles", "0.5"}, /* cosine's, which had no arguments before */
    };
    for (size_t i = 0; i < sizeof later / sizeof later[0]; i++)
        if (!strcmp(key, later[i][0])) return later[i][1] && !strcmp(value, later[i][1]);
    return 0;
}

int config_diff(const char *a, const char *b, char *out, size_t cap) {
    cJSON *ja = cJSON_Parse(a), *jb = cJSON_Parse(b), *fa = cJSON_CreateObject(), *fb = cJSON_CreateObject();
    flatten(ja, "", fa), flatten(jb, "", fb);
    int n = 0;
    out[0] = 0;
    for (int pass = 0; pass < 2; pass++) /* keys of a (changed or gone), then keys only b has */
        for (const cJSON *it = (pass ? fb : fa)->child; it; it = it->next) {
            const cJSON *other = cJSON_GetObjectItemCaseSensitive(pass ? fa : fb, it->string);
            if (pass && other) continue;
            if (pass && later_key_at_old_default(it->string, it->valuestring)) continue;
            if (other && !strcmp(other->valuestring, it->valuestring)) continue;
            const char *va = pass ? "absent" : it->valuestring, *vb = pass ? it->valuestring : "absent";
            if (other) vb = other->valuestring;
            size_t len = strlen(out);
            snprintf(out + len, cap - len, "%s%s (%s -> %s)", n ? ", " : "", it->string, va, vb);
            n++;
        }
    cJSON_Delete(ja), cJSON_Delete(jb), cJSON_Delete(fa), cJSON_Delete(fb);
    return n;
}

/* The reference's effective settings (arcee-ai/DAM at 3e9cb8a; docs/config.md lists each with the
 * file and line it comes from). Written into the config's sections before they are parsed, for each
 * key the config does not set itself: explicit keys override the preset. */
static const char arcee_preset[] =
    "{\"merge\": {\"embeddings\": false, \"norms\": false, \"nonlinearity\": \"tanh\", \"init\": \"uniform\","
    "             \"bias_init\": \"one\", \"coef_dtype\": \"bfloat16\"},"
    " \"loss\": {\"kl\": true, \"temperature\": 2.0, \"similarity\": 0.01, \"l1\": 0, \"l2\": 0, \"mse\": 0,"
    "          \"entropy\": 0, \"overlap\": 0, \"kl_reduction\": \"batchmean\", \"weighted_overlap\": 0,"
    "          \"reg_biases\": false},"
    " \"train\": {\"optimizer\": \"mofo\", \"lr\": 1e-3, \"weight_decay\": 0.01, \"betas\": [0.9, 0.999],"
    "           \"eps\": 1e-8, \"mofo_alpha\": 0.3, \"mofo_scope\": \"source\", \"mofo_k\": \"floor\","
    "           \"mofo_decay\": \"all\", \"schedule\": \"constant\", \"warmup_under_constant\": false,"
    "           \"epochs\": 1, \"batch_size\": 1, \"micro_batches\": 1, \"max_grad_norm\": 1.0,"
    "           \"shuffle\": true, \"seed\": 42}}";

static void apply_preset(DamConfig *c, cJSON *root) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "preset");
    if (!p) return;
    if (!cJSON_IsString(p)) dam_fail("%s: field 'preset': expected a string (allowed: \"arcee\")", c->file);
    static const char *const names[] = {"arcee", NULL};
    pick(c->file, "preset", p->valuestring, names);
    c->preset = "arcee";
    cJSON *preset = cJSON_Parse(arcee_preset);
    if (!preset) dam_fail("internal: the arcee preset does not parse");
    for (cJSON *sec = preset->child; sec; sec = sec->next) {
        cJSON *dst = cJSON_GetObjectItemCaseSensitive(root, sec->string);
        if (!dst) dst = cJSON_AddObjectToObject(root, sec->string);
        if (!cJSON_IsObject(dst)) dam_fail("%s: field '%s': expected an object", c->file, sec->string);
        for (cJSON *it = sec->child; it; it = it->next)
            if (!cJSON_GetObjectItemCaseSensitive(dst, it->string))
                cJSON_AddItemToObject(dst, it->string, cJSON_Duplicate(it, 1));
    }
    cJSON_Delete(preset);
}

void config_load(DamConfig *c, const char *path) {
    memset(c, 0, sizeof *c);
    c->file = dam_strdup(path);
    size_t n;
    char *text = dam_read_file(path, &n);
    json_set_context(path);
    cJSON *root = json_parse_text(text, n, path);
    if (!cJSON_IsObject(root)) dam_fail("%s: expected a JSON object at the top level", path);
    static const char *const top[] = {"base_model", "models",       "merge",  "loss",   "train",
                                      "parallel",   "checkpoint",   "preset", "output", "base_dataset",
                                      "comment",    "model_config", NULL};
    check_keys(root, path, "", top);
    json_set_section(NULL);
    apply_preset(c, root);
    c->base_model = resolve(path, json_opt_string(root, "base_model", NULL));
    c->base_dataset = resolve(path, json_opt_string(root, "base_dataset", NULL));
    c->model_config = resolve(path, json_opt_string(root, "model_config", NULL));
    parse_models(c, root);
    parse_merge(c, root);
    parse_loss(c, root);
    parse_train(c, root);
    parse_rest(c, root);
    json_set_section(NULL);
    if (c->include_base && !c->base_model)
        dam_fail("%s: field 'merge.include_base' is true but 'base_model' is not set", path);
    if (c->base_dataset && !c->include_base)
        dam_fail("%s: field 'base_dataset' needs 'merge.include_base': true (the base row is its teacher)",
                 path);
    if (c->base_dataset && c->loss.topk > 0)
        dam_fail(
            "%s: field 'base_dataset' cannot be combined with loss.topk yet (no teacher cache for the base)",
            path);
    if (c->weighted_overlap > 0 && !c->base_model)
        dam_fail(
            "%s: field 'loss.weighted_overlap' is > 0 but 'base_model' is not set (its weights come from "
            "the sources' task vectors against the base)",
            path);
    if (c->loss.topk > 0 && c->loss.mse > 0)
        dam_fail("%s: loss.mse needs full teacher logits; it cannot be combined with loss.topk", path);
    if (c->optimizer == OPT_MOFO && c->mofo_scope == MOFO_SCOPE_SOURCE && c->tp > 1)
        dam_fail("%s: train.mofo_scope \"source\" is not supported with parallel.tp > 1 yet (a row-parallel "
                 "tensor's source vector is split over the tp group); use \"tensor\" or tp 1",
                 path);
    cJSON *eff = config_effective(c);
    char *printed = cJSON_PrintUnformatted(eff);
    c->effective = dam_strdup(printed); /* freed with free() by config_free */
    cJSON_free(printed);
    c->hash = dam_hash64(c->effective, strlen(c->effective), 0);
    cJSON_Delete(eff);
    cJSON_Delete(root);
    free(text);
}

void config_free(DamConfig *c) {
    for (int i = 0; i < c->n_models; i++)
        free(c->models[i].path), free(c->models[i].dataset), free(c->models[i].name);
    free(c->file), free(c->base_model), free(c->model_config), free(c->base_dataset), free(c->init_file),
        free(c->ckpt_dir), free(c->out_dir), free(c->metrics_file), free(c->effective);
    memset(c, 0, sizeof *c);
}

const Backend *config_backend(const char *device) { return backend_by_name(device ? device : "cpu"); }

int config_coef_rows(const DamConfig *c, const char **dirs, const char **names) {
    int n = 0;
    for (int i = 0; i < c->n_models; i++) dirs[n] = c->models[i].path, names[n++] = c->models[i].name;
    if (c->include_base) dirs[n] = c->base_model, names[n++] = "base";
    return n;
}

BackendCtx *config_backend_ctx(const DamConfig *c, const Backend *be) {
    BackendCtx *ctx = be->ctx_new(config_local_rank());
    if (c->cpu_matmul_bf16) be->set_gemm_inputs(ctx, DAM_BF16);
    return ctx;
}

int config_local_rank(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"};
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

int config_open_datasets(const DamConfig *c, const ModelConfig *mc, int n, const char *const *paths,
                         DamDataset *data, int *topk_cache) {
    int64_t L = -1, topk = -1;
    for (int k = 0; k < n; k++) {
        DamDataset *d = &data[k];
        dataset_open(d, paths[k]);
        dataset_check_ids(d, mc->vocab_size);
        if (L >= 0 && d->seq_len != L)
            dam_fail("%s: rows of %lld tokens; %s has %lld (all datasets must share one length)", d->path,
                     (long long)d->seq_len, data[0].path, (long long)L);
        L = d->seq_len;
        int k_cache = c->loss.topk > 0 && d->topk > 0 ? d->topk : 0;
        if (topk >= 0 && k_cache != topk)
            dam_fail("%s: teacher cache differs from the other datasets'", d->path);
        topk = k_cache;
        if (k_cache && k_cache < c->loss.topk)
            dam_fail("%s: teacher cache holds top-%d; loss.topk asks for %d", d->path, k_cache, c->loss.topk);
    }
    int T = c->seq_len > 0 ? c->seq_len : (int)L;
    if (T > L)
        dam_fail("%s: train.seq_len %d is longer than the dataset rows (%lld)", c->file, T, (long long)L);
    if (T > mc->max_position_embeddings)
        dam_fail("%s: sequence length %d exceeds max_position_embeddings %d of %s", data[0].path, T,
                 mc->max_position_embeddings, c->models[0].path);
    *topk_cache = (int)topk;
    return T;
}
