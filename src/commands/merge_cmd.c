/* merge_cmd.c — `dam_dist merge --method linear|task_arithmetic|ties|dare_ties|slerp --out DIR ...`:
 * the classic weight-space merges (merge_methods.h) of Hugging Face model directories, written as
 * the DAM run writes its model (bf16 shards + index, config.json and tokenizer files of the base or
 * first model) plus merge_report.json.
 *
 * Streaming: the tensors (sorted by name) are cut into output shards of at most --shard-size bytes
 * of bf16 before any work, and the shards are dealt to the MPI ranks in contiguous runs balanced by
 * bytes. A rank merges its tensors one at a time — every source's tensor read from its mapping and
 * converted to float, merged, written as bf16 by the safetensors writer, its pages released — so
 * its memory is about one tensor per source. The shard layout and every byte do not depend on the
 * number of ranks (dare_ties seeds each tensor's masks from its name). Rank 0 joins the shards into
 * one series with its index (output_join_shards), adds config.json, the tokenizer files and the
 * report, and swaps <out>.tmp into place (outdir.h). */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "config.h"
#include "merge_methods.h"
#include "output.h"
#include "safetensors.h"

#define MERGE_MARKER "merge_report.json"

/* The options each method takes beyond --model/--out (others are refused, not ignored). */
enum { OPT_WEIGHTS = 1, OPT_DENSITY = 2, OPT_LAMBDA = 4, OPT_T = 8, OPT_SEED = 16, OPT_NORMALIZE = 32 };
static const int method_options[] = {
    [MERGE_LINEAR] = OPT_WEIGHTS | OPT_NORMALIZE,
    [MERGE_TASK_ARITHMETIC] = OPT_WEIGHTS | OPT_LAMBDA | OPT_NORMALIZE,
    [MERGE_TIES] = OPT_WEIGHTS | OPT_DENSITY | OPT_LAMBDA | OPT_NORMALIZE,
    [MERGE_DARE_TIES] = OPT_WEIGHTS | OPT_DENSITY | OPT_LAMBDA | OPT_SEED | OPT_NORMALIZE,
    [MERGE_SLERP] = OPT_T,
};
static const char *const option_names[] = {"--weights", "--density", "--lambda",
                                           "--t",       "--seed",    "--normalize/--no-normalize"};

typedef struct {
    MergeParams p;
    const char *method_arg, *out, *config, *base;
    const char *models[DAM_MAX_SOURCES];
    float weights[DAM_MAX_SOURCES];
    int n_models, n_weights, given; /* given: OPT_* flags seen on the command line */
    int force;
    size_t shard_bytes;
} MergeArgs;

static float parse_float(const char *s, const char *opt) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v)) dam_fail("merge: %s expects a number, got '%s'", opt, s);
    return (float)v;
}

static int parse_weights(const char *s, float *w) {
    int n = 0;
    char *copy = dam_strdup(s), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == DAM_MAX_SOURCES) dam_fail("merge: --weights: at most %d weights", DAM_MAX_SOURCES);
        w[n++] = parse_float(tok, "--weights");
    }
    free(copy);
    if (!n) dam_fail("merge: --weights expects w1,w2,..., got '%s'", s);
    return n;
}

static void parse_args(MergeArgs *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->p.density = 1, a->p.lambda = 1, a->p.t = 0.5f, a->p.seed = 1, a->p.normalize = -1;
    a->shard_bytes = config_parse_size("5GB");
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes_value = 1;
        if (!strcmp(o, "--force") || !strcmp(o, "--normalize") || !strcmp(o, "--no-normalize")) {
            takes_value = 0;
            if (!strcmp(o, "--force"))
                a->force = 1;
            else
                a->p.normalize = !strcmp(o, "--normalize"), a->given |= OPT_NORMALIZE;
        } else if (!v) {
            cli_bad_option("merge", o,
                           "--method --out --config --base --model --weights --density --lambda --t --seed "
                           "--shard-size");
        } else if (!strcmp(o, "--method")) {
            a->method_arg = v;
        } else if (!strcmp(o, "--out")) {
            a->out = v;
        } else if (!strcmp(o, "--config")) {
            a->config = v;
        } else if (!strcmp(o, "--base")) {
            a->base = v;
        } else if (!strcmp(o, "--model")) {
            if (a->n_models == DAM_MAX_SOURCES) dam_fail("merge: at most %d --model flags", DAM_MAX_SOURCES);
            a->models[a->n_models++] = v;
        } else if (!strcmp(o, "--weights")) {
            a->n_weights = parse_weights(v, a->weights), a->given |= OPT_WEIGHTS;
        } else if (!strcmp(o, "--density")) {
            a->p.density = parse_float(v, o), a->given |= OPT_DENSITY;
            if (!(a->p.density > 0 && a->p.density <= 1))
                dam_fail("merge: --density must be in (0, 1], got %s", v);
        } else if (!strcmp(o, "--lambda")) {
            a->p.lambda = parse_float(v, o), a->given |= OPT_LAMBDA;
        } else if (!strcmp(o, "--t")) {
            a->p.t = parse_float(v, o), a->given |= OPT_T;
            if (!(a->p.t >= 0 && a->p.t <= 1)) dam_fail("merge: --t must be in [0, 1], got %s", v);
        } else if (!strcmp(o, "--seed")) {
            a->p.seed = (uint64_t)dam_parse_int(v, 0, INT64_MAX, "merge --seed"), a->given |= OPT_SEED;
        } else if (!strcmp(o, "--shard-size")) {
            a->shard_bytes = config_parse_size(v);
            if (!a->shard_bytes)
                dam_fail("merge: --shard-size expects a size like 5GB or 500MB, got '%s'", v);
        } else {
            cli_unknown_option("merge", o);
        }
        i += takes_value;
    }
}

/* The inputs: explicit flags over the config's base_model and models[].path. */
static void resolve_inputs(MergeArgs *a, DamConfig *cfg, int *have_cfg) {
    *have_cfg = 0;
    if (!a->config) return;
    config_load(cfg, a->config);
    *have_cfg = 1;
    if (!a->base) a->base = cfg->base_model;
    if (!a->n_models) {
        for (int i = 0; i < cfg->n_models; i++) a->models[i] = cfg->models[i].path;
        a->n_models = cfg->n_models;
    }
}

static void check_args(MergeArgs *a, int base_from_flag) {
    if (!a->method_arg)
        dam_fail("merge: --method is required (linear, task_arithmetic, ties, dare_ties or slerp)");
    if (merge_method_parse(a->method_arg, &a->p.method))
        dam_fail("merge: unknown --method '%s' (linear, task_arithmetic, ties, dare_ties or slerp)",
                 a->method_arg);
    MergeMethod m = a->p.method;
    const char *name = merge_method_name(m);
    if (!a->out) dam_fail("merge: --out DIR is required");
    if (!a->n_models) dam_fail("merge: no models: give --model DIR (repeated) or --config FILE");
    for (int k = 0; k < 6; k++)
        if ((a->given & (1 << k)) && !(method_options[m] & (1 << k)))
            dam_fail("merge: %s does not apply to --method %s", option_names[k], name);
    if (merge_method_uses_base(m) && !a->base)
        dam_fail("merge: --method %s needs a base model (--base DIR, or base_model in --config)", name);
    if (m == MERGE_LINEAR) {
        if (base_from_flag)
            dam_fail("merge: --method linear takes no --base (list that model with --model to include it)");
    }
    if (m == MERGE_SLERP) {
        int two = a->base ? a->n_models == 1 : a->n_models == 2;
        if (!two)
            dam_fail("merge: --method slerp merges exactly two models: --base DIR and one --model, or two "
                     "--model (got %s%d model(s))",
                     a->base ? "a base and " : "", a->n_models);
        if (!a->base) a->base = a->models[0], a->models[0] = a->models[1], a->n_models = 1;
    }
    if (m != MERGE_SLERP && a->n_weights && a->n_weights != a->n_models)
        dam_fail("merge: --weights has %d value(s) for %d model(s)", a->n_weights, a->n_models);
    for (int i = a->n_weights; i < a->n_models; i++) a->weights[i] = 1;
    a->p.n = a->n_models;
    a->p.weights = a->weights;
    if (a->p.normalize < 0) a->p.normalize = merge_default_normalize(m);
    double wsum = 0;
    for (int i = 0; i < a->n_models; i++) wsum += a->weights[i];
    if (m == MERGE_LINEAR && a->p.normalize && wsum == 0)
        dam_fail(
            "merge: the --weights sum to 0; linear with normalize divides by their sum (--no-normalize?)");
}

/* ---------------------------------------------------------------- the inputs */

typedef struct {
    StModel files[DAM_MAX_SOURCES + 1]; /* [0] the base or first endpoint (when used), then the models */
    const char *dirs[DAM_MAX_SOURCES + 1];
    int n, has_base;
} Inputs;

static int is_float_dtype(dam_dtype t) { return t == DAM_F32 || t == DAM_BF16 || t == DAM_F16; }

/* Every input has exactly the reference's tensors, with its shapes, in a float dtype. */
static void check_same_tensors(const Inputs *in) {
    const StModel *ref = &in->files[0];
    for (int k = 0; k < in->n; k++) {
        const StModel *m = &in->files[k];
        for (int i = 0; i < m->n_tensors; i++) {
            const StTensor *t = m->by_name[i];
            if (!is_float_dtype(t->dtype))
                dam_fail("%s: tensor '%s' has dtype %s; merge takes BF16, F16 or F32 tensors only", t->file,
                         t->name, dam_dtype_name(t->dtype));
            const StTensor *r = st_model_find(ref, t->name);
            if (!r)
                dam_fail("%s: tensor '%s' is not in %s; every model of a merge must have the same tensors",
                         m->dir, t->name, ref->dir);
            int same = r->ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = r->shape[d] == t->shape[d];
            if (!same) {
                char a[160], b[160];
                dam_fail("%s: tensor '%s' has shape %s; %s has %s", m->dir, t->name,
                         st_shape_str(a, sizeof a, t->ndim, t->shape), ref->dir,
                         st_shape_str(b, sizeof b, r->ndim, r->shape));
            }
        }
        if (m->n_tensors != ref->n_tensors)
            for (int i = 0; i < ref->n_tensors; i++)
                if (!st_model_find(m, ref->by_name[i]->name))
                    dam_fail(
                        "%s: tensor '%s' of %s is missing; every model of a merge must have the same tensors",
                        m->dir, ref->by_name[i]->name, ref->dir);
    }
}

static void open_inputs(Inputs *in, const MergeArgs *a) {
    memset(in, 0, sizeof *in);
    in->has_base = merge_method_uses_base(a->p.method) || a->p.method == MERGE_SLERP;
    if (in->has_base) in->dirs[in->n++] = a->base;
    for (int i = 0; i < a->n_models; i++) in->dirs[in->n++] = a->models[i];
    for (int k = 0; k < in->n; k++) st_model_open(&in->files[k], in->dirs[k]);
    check_same_tensors(in);
}

/* ---------------------------------------------------------------- shards and ranks */

typedef struct {
    int n_shards;
    int *first;   /* n_shards + 1: shard s holds tensors [first[s], first[s+1]) of the reference */
    int *owner;   /* n_shards: the rank that writes it */
    double total; /* bytes of bf16 */
} ShardPlan;

static size_t bf16_bytes(const StTensor *t) { return t->numel * 2; }

/* Tensors in name order, a new shard when the next one would pass shard_bytes (a larger tensor
 * gets a shard alone), as the safetensors writer cuts them; shards to ranks in contiguous runs,
 * shard s to the rank whose equal share of the bytes holds the shard's middle. */
static void plan_shards(ShardPlan *sp, const StModel *ref, size_t shard_bytes, int n_ranks) {
    memset(sp, 0, sizeof *sp);
    sp->first = dam_malloc((size_t)(ref->n_tensors + 1) * sizeof(int), "shard plan");
    size_t cur = 0;
    for (int i = 0; i < ref->n_tensors; i++) {
        size_t b = bf16_bytes(ref->by_name[i]);
        if (i == 0 || (cur > 0 && cur + b > shard_bytes)) sp->first[sp->n_shards++] = i, cur = 0;
        cur += b;
        sp->total += (double)b;
    }
    sp->first[sp->n_shards] = ref->n_tensors;
    sp->owner = dam_malloc((size_t)(sp->n_shards > 0 ? sp->n_shards : 1) * sizeof(int), "shard owners");
    double at = 0;
    for (int s = 0; s < sp->n_shards; s++) {
        double b = 0;
        for (int i = sp->first[s]; i < sp->first[s + 1]; i++) b += (double)bf16_bytes(ref->by_name[i]);
        int r = sp->total > 0 ? (int)((at + b / 2) / sp->total * n_ranks) : 0;
        sp->owner[s] = r < n_ranks ? r : n_ranks - 1;
        at += b;
    }
}

/* One shard: its tensors merged one at a time into <tmp>/stage-SSS/model.safetensors. */
static void write_shard(const Inputs *in, const MergeParams *p, const ShardPlan *sp, int s, const char *tmp,
                        float **bufs, float *out) {
    char *dir = dam_asprintf("%s/stage-%03d", tmp, s);
    dam_mkdir_p(dir);
    StWriter *w = st_writer_new(dir, SIZE_MAX);
    const StModel *ref = &in->files[0];
    for (int i = sp->first[s]; i < sp->first[s + 1]; i++) {
        const char *name = ref->by_name[i]->name;
        const StTensor *t = NULL;
        for (int k = 0; k < in->n; k++) {
            t = st_model_find(&in->files[k], name);
            dam_to_f32(bufs[k], t->data, t->dtype, t->numel);
            st_tensor_release(t);
        }
        merge_tensor(p, name, in->has_base ? bufs[0] : NULL, bufs + in->has_base, t->numel, out);
        st_writer_add_f32(w, name, DAM_BF16, t->ndim, t->shape, out);
    }
    st_writer_finish(w, "pt");
    free(dir);
}

/* ---------------------------------------------------------------- the report */

static void write_report(const MergeArgs *a, const Inputs *in, const ShardPlan *sp, int n_ranks, double wall,
                         const char *path) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "method", merge_method_name(a->p.method));
    cJSON *par = cJSON_AddObjectToObject(r, "parameters");
    int opts = method_options[a->p.method];
    if (opts & OPT_WEIGHTS) {
        cJSON *w = cJSON_AddArrayToObject(par, "weights");
        for (int i = 0; i < a->n_models; i++) cJSON_AddItemToArray(w, cJSON_CreateNumber(a->weights[i]));
    }
    if (opts & OPT_DENSITY) cJSON_AddNumberToObject(par, "density", a->p.density);
    if (opts & OPT_LAMBDA) cJSON_AddNumberToObject(par, "lambda", a->p.lambda);
    if (opts & OPT_T) cJSON_AddNumberToObject(par, "t", a->p.t);
    if (opts & OPT_SEED) cJSON_AddNumberToObject(par, "seed", (double)a->p.seed);
    if (opts & OPT_NORMALIZE) cJSON_AddBoolToObject(par, "normalize", a->p.normalize);
    cJSON *inputs = cJSON_AddObjectToObject(r, "inputs");
    if (in->has_base) cJSON_AddStringToObject(inputs, "base", in->dirs[0]);
    cJSON *models = cJSON_AddArrayToObject(inputs, "models");
    for (int k = in->has_base; k < in->n; k++) cJSON_AddItemToArray(models, cJSON_CreateString(in->dirs[k]));
    if (a->config) cJSON_AddStringToObject(inputs, "config", a->config);
    cJSON_AddNumberToObject(r, "tensors", in->files[0].n_tensors);
    cJSON_AddNumberToObject(r, "bytes", sp->total);
    cJSON_AddNumberToObject(r, "shards", sp->n_shards);
    cJSON_AddNumberToObject(r, "ranks", n_ranks);
    cJSON *per_rank = cJSON_AddArrayToObject(r, "shards_per_rank");
    for (int k = 0; k < n_ranks; k++) {
        int c = 0;
        for (int s = 0; s < sp->n_shards; s++) c += sp->owner[s] == k;
        cJSON_AddItemToArray(per_rank, cJSON_CreateNumber(c));
    }
    cJSON_AddNumberToObject(r, "wall_time_s", wall);
    outdir_write_marker(r, "dam_dist merge", path);
}

/* ---------------------------------------------------------------- the command */

int cmd_merge(int argc, char **argv) {
    double t0 = dam_now();
    CommGroup world = {MPI_COMM_WORLD, comm_world_rank(), comm_world_size(), "world"};
    int root = world.rank == 0;
    MergeArgs a;
    DamConfig cfg;
    int have_cfg;
    Inputs in;
    /* rank 0 checks everything first, so that a refusal is its one line (MPI_Abort stops the rest) */
    if (!root) comm_barrier(&world);
    parse_args(&a, argc, argv);
    int base_from_flag = a.base != NULL;
    resolve_inputs(&a, &cfg, &have_cfg);
    check_args(&a, base_from_flag);
    open_inputs(&in, &a);
    const char *inputs[DAM_MAX_SOURCES + 2] = {a.base};
    for (int i = 0; i < a.n_models; i++) inputs[1 + i] = a.models[i];
    OutDir od = {.dir = a.out,
                 .what = "merge --out",
                 .written_by = "dam_dist merge",
                 .marker = MERGE_MARKER,
                 .inputs = inputs,
                 .n_inputs = 1 + a.n_models,
                 .force = a.force};
    if (root) outdir_check(&od), comm_barrier(&world);

    ShardPlan sp;
    plan_shards(&sp, &in.files[0], a.shard_bytes, world.size);
    char *tmp = dam_asprintf("%s.tmp", a.out);
    if (root) {
        printf("merge: %s of %d model(s)%s%s, %d tensors, %.1f MB of bf16 in %d shard(s) over %d rank(s)\n",
               merge_method_name(a.p.method), a.n_models, in.has_base ? ", base " : "",
               in.has_base ? a.base : "", in.files[0].n_tensors, sp.total / 1e6, sp.n_shards, world.size);
        fflush(stdout);
        free(outdir_begin(&od));
    }
    comm_barrier(&world);
    size_t max_numel = 1;
    for (int i = 0; i < in.files[0].n_tensors; i++)
        if (in.files[0].by_name[i]->numel > max_numel) max_numel = in.files[0].by_name[i]->numel;
    float *bufs[DAM_MAX_SOURCES + 1];
    for (int k = 0; k < in.n; k++) bufs[k] = dam_malloc(max_numel * sizeof(float), "merge source tensor");
    float *out = dam_malloc(max_numel * sizeof(float), "merged tensor");
    for (int s = 0; s < sp.n_shards; s++)
        if (sp.owner[s] == world.rank) write_shard(&in, &a.p, &sp, s, tmp, bufs, out);
    for (int k = 0; k < in.n; k++) free(bufs[k]);
    free(out);
    comm_barrier(&world);
    if (root) {
        output_join_shards(tmp, sp.n_shards);
        output_remove_stages(tmp, sp.n_shards);
        output_copy_donor_files(in.dirs[0], tmp);
        char *report = dam_path_join(tmp, MERGE_MARKER);
        write_report(&a, &in, &sp, world.size, dam_now() - t0, report);
        free(report);
        outdir_commit(&od, tmp);
        printf("merge: wrote %s in %.1f s\n", a.out, dam_now() - t0);
    }
    comm_barrier(&world);
    free(tmp), free(sp.first), free(sp.owner);
    for (int k = 0; k < in.n; k++) st_model_close(&in.files[k]);
    if (have_cfg) config_free(&cfg);
    return 0;
}
