/* inspect.c — `dam_dist inspect --model DIR [--model DIR2 ...]`: validate model directories the
 * way a merge would read them, and summarize each. `--coefficients FILE`: the mean learned
 * coefficient per source, per layer and tensor kind of a dam_coefficients.safetensors (the data of
 * the experiment's heat map).
 *
 * For each directory: the weights are opened (every header validated), config.json is parsed, and
 * every tensor the architecture implies is looked up with the shape config.json implies. With
 * several --model flags, every config must agree with the first in everything that shapes the
 * forward pass (hfconfig_check_same), exactly as a merge of those models requires. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <dirent.h>
#include <inttypes.h>

#include "checkpoint.h"
#include "cli.h"
#include "commands.h"
#include "hfconfig.h"
#include "safetensors.h"
#include "dataset.h"
#include "json_util.h"
#include "util.h"
#include "xxh64.h"

#define INSPECT_MAX_MODELS 64

typedef struct {
    int64_t params; /* elements of the expected tensors, as stored */
    int n_expected, n_extra;
    int per_dtype[DAM_F64 + 1]; /* expected tensors by dtype */
    const char *first_extra;
} Survey;

/* 1234567 -> "1,234,567" */
static const char *grouped(char *buf, size_t cap, unsigned long long v) {
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%llu", v), k = 0;
    for (int i = 0; i < n && (size_t)k + 2 < cap; i++) {
        if (i && (n - i) % 3 == 0) buf[k++] = ',';
        buf[k++] = digits[i];
    }
    buf[k] = 0;
    return buf;
}

static int is_float_dtype(dam_dtype t) { return t == DAM_F32 || t == DAM_BF16 || t == DAM_F16; }

/* Every expected tensor present with the expected shape and a float dtype. */
static void check_tensors(const StModel *m, const ModelConfig *c, Survey *s) {
    int n = hfconfig_tensor_specs(c, NULL);
    HfTensorSpec *specs = dam_malloc((size_t)n * sizeof *specs, "tensor specs");
    hfconfig_tensor_specs(c, specs);
    for (int i = 0; i < n; i++) {
        const StTensor *t = st_model_get(m, specs[i].name, specs[i].ndim, specs[i].shape);
        if (!is_float_dtype(t->dtype))
            dam_fail("%s: tensor '%s' has dtype %s; expected BF16, F16 or F32", t->file, t->name,
                     dam_dtype_name(t->dtype));
        s->per_dtype[t->dtype]++;
        s->params += (int64_t)t->numel;
    }
    s->n_expected = n;
    /* Extra tensors (e.g. lm_head.weight next to tied embeddings, or rotary inv_freq buffers in old
     * exports) are not errors: transformers ignores them too. */
    for (int i = 0; i < m->n_tensors; i++) {
        int expected = 0;
        for (int j = 0; j < n && !expected; j++) expected = strcmp(specs[j].name, m->by_name[i]->name) == 0;
        if (!expected && !s->n_extra++) s->first_extra = m->by_name[i]->name;
    }
    free(specs);
}

static void print_dtypes(const Survey *s) {
    printf("  dtype          ");
    int kinds = 0;
    for (int t = 0; t <= DAM_F64; t++)
        if (s->per_dtype[t])
            printf("%s%s %d", kinds++ ? ", " : "", dam_dtype_name((dam_dtype)t), s->per_dtype[t]);
    printf(" tensor(s)\n");
}

static const char *rope_name(RopeType t) {
    return t == ROPE_LLAMA3 ? "llama3" : t == ROPE_LINEAR ? "linear" : "default";
}

static void print_summary(const char *dir, const StModel *m, const ModelConfig *c, const Survey *s) {
    char a[40], b[40];
    printf("%s\n", dir);
    printf("  architecture   %s (%s)\n", c->architecture, c->model_type[0] ? c->model_type : "?");
    printf(
        "  shape          layers %d, hidden %d, intermediate %d, heads %d (kv %d, head_dim %d), vocab %d\n",
        c->num_hidden_layers, c->hidden_size, c->intermediate_size, c->num_attention_heads,
        c->num_key_value_heads, c->head_dim, c->vocab_size);
    printf("  rope           %s, theta %g", rope_name(c->rope_type), c->rope_theta);
    if (c->rope_type != ROPE_DEFAULT) printf(", factor %g", c->rope_factor);
    printf("\n  options        tied embeddings %s, qkv bias %s, sliding window %d\n",
           c->tie_word_embeddings ? "yes" : "no", c->attention_bias ? "yes" : "no", c->sliding_window);
    printf("  params         %s\n", grouped(a, sizeof a, (unsigned long long)s->params));
    print_dtypes(s);
    printf("  bytes          %s in %d file(s)\n", grouped(b, sizeof b, (unsigned long long)st_model_bytes(m)),
           m->n_files);
    if (s->n_extra) printf("  ignored        %d extra tensor(s), e.g. '%s'\n", s->n_extra, s->first_extra);
}

/* "model.layers.12.mlp.up_proj.weight" -> layer 12, kind "up_proj"; outside the layers layer -1 and
 * the kind is the name without "model." and ".weight" (embed_tokens, norm, lm_head). */
static int coef_layer_kind(const char *name, char *kind, size_t cap) {
    int layer = -1, used = 0;
    const char *rest = name;
    if (sscanf(name, "model.layers.%d.%n", &layer, &used) == 1 && used > 0) {
        rest = name + used;
        const char *dot = strchr(rest, '.');
        if (dot && (!strncmp(rest, "self_attn.", 10) || !strncmp(rest, "mlp.", 4))) rest = dot + 1;
    } else if (!strncmp(name, "model.", 6)) {
        rest = name + 6;
    }
    snprintf(kind, cap, "%s", rest);
    char *suffix = strstr(kind, ".weight");
    if (suffix && suffix[7] == 0)
        *suffix = 0;
    else if ((suffix = strstr(kind, ".bias")) && suffix[5] == 0)
        memcpy(suffix, "_bias", 6);
    return layer;
}

/* One line per tensor: layer (-1 outside the decoder layers), kind, then the mean coefficient of
 * each source row. A whitespace table, so that gnuplot and awk read it as it is. */
static int print_coefficients(const char *path) {
    StFile f;
    st_open(&f, path);
    if (f.n_tensors == 0) dam_fail("%s: no coefficient tensors", path);
    int rows = -1;
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        if (t->dtype != DAM_F32 || t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1)
            dam_fail("%s: tensor '%s' is not a 2-D F32 [sources, columns] array of coefficients", path,
                     t->name);
        if (rows >= 0 && t->shape[0] != rows)
            dam_fail("%s: tensor '%s' has %lld source rows; the first tensor has %d", path, t->name,
                     (long long)t->shape[0], rows);
        rows = (int)t->shape[0];
    }
    /* the sources' names from the file's metadata (dam_dist writes them); source0.. for older files */
    char *names_json = st_metadata(&f, ST_COEF_ROWS_KEY);
    cJSON *names = names_json ? cJSON_Parse(names_json) : NULL;
    int named = cJSON_IsArray(names) && cJSON_GetArraySize(names) == rows;
    for (int r = 0; named && r < rows; r++) {
        const cJSON *v = cJSON_GetArrayItem(names, r);
        named = cJSON_IsString(v) && v->valuestring[0] && !strpbrk(v->valuestring, " \t\n#");
    }
    printf("# %s: mean coefficient per source row\n# layer kind", path);
    for (int r = 0; r < rows; r++)
        if (named)
            printf(" %s", cJSON_GetArrayItem(names, r)->valuestring);
        else
            printf(" source%d", r);
    printf("\n");
    cJSON_Delete(names);
    free(names_json);
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        char kind[128];
        int layer = coef_layer_kind(t->name, kind, sizeof kind);
        printf("%d %s", layer, kind);
        const unsigned char *bytes = t->data; /* safetensors offsets need not be 4-byte aligned */
        for (int64_t r = 0; r < rows; r++) {
            double s = 0;
            for (int64_t j = 0; j < t->shape[1]; j++) {
                float v;
                memcpy(&v, bytes + 4 * (r * t->shape[1] + j), 4);
                s += v;
            }
            printf(" %.6f", s / (double)t->shape[1]);
        }
        printf("\n");
    }
    st_close(&f);
    return 0;
}

/* ---------------------------------------------------------------- checksums (--verify, --checkpoint, --data)
 */

/* An output directory against the shard hashes its dam_report.json records. */
static int verify_output(const char *dir) {
    char *rp = dam_path_join(dir, "dam_report.json");
    if (!dam_file_exists(rp)) dam_fail("%s: no dam_report.json: not a dam_dist output directory", dir);
    size_t n;
    char *text = dam_read_file(rp, &n);
    cJSON *r = cJSON_ParseWithLength(text, n);
    const cJSON *h = r ? cJSON_GetObjectItemCaseSensitive(r, "shard_xxh64") : NULL;
    if (!r) dam_fail("%s: not valid JSON", rp);
    if (!cJSON_IsObject(h))
        dam_fail("%s: records no shard hashes (written before they were added): nothing to verify against",
                 rp);
    int k = 0, bad = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, h) {
        char *p = dam_path_join(dir, e->string), hex[17] = "missing";
        uint64_t v;
        if (dam_xxh64_file(p, &v) == 0) snprintf(hex, sizeof hex, "%016" PRIx64, v);
        int ok = cJSON_IsString(e) && !strcmp(hex, e->valuestring);
        printf("%-40s %s\n", e->string, ok ? "ok" : !strcmp(hex, "missing") ? "MISSING" : "CHANGED");
        bad += !ok, k++;
        free(p);
    }
    DIR *d = opendir(dir); /* a shard the report does not know */
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len >= 12 && !strcmp(de->d_name + len - 12, ".safetensors") &&
            !cJSON_GetObjectItemCaseSensitive(h, de->d_name))
            printf("%-40s NOT IN REPORT\n", de->d_name), bad++;
    }
    if (d) closedir(d);
    cJSON_Delete(r), free(text), free(rp);
    if (bad) dam_fail("%s: %d of %d shard(s) do not match dam_report.json's hashes", dir, bad, k);
    printf("%s: all %d shard(s) match dam_report.json (xxh64)\n", dir, k);
    return 0;
}

/* One checkpoint file, or every step_*.h5 of a checkpoint directory, against their checksums. */
static int verify_checkpoints(const char *path) {
    int64_t *steps = NULL;
    int n = dam_is_dir(path) ? ckpt_list_steps(path, &steps) : 1, bad = 0;
    if (n == 0) dam_fail("%s: no checkpoint (step_*.h5) in this directory", path);
    char why[512], *first_bad = NULL;
    for (int i = 0; i < n; i++) {
        char *p = steps ? dam_asprintf("%s/step_%08" PRId64 ".h5", path, steps[i]) : dam_strdup(path);
        int rc = ckpt_verify(p, why, sizeof why);
        printf("%s: %s%s\n", p, rc < 0 ? "DAMAGED: " : "", why);
        if (rc < 0 && !bad++) first_bad = dam_strdup(p);
        free(p);
    }
    free(steps);
    if (bad) dam_fail("%s fails verification (%d of %d checkpoint(s) damaged)", first_bad, bad, n);
    return 0;
}

/* A token file opened as a run opens it (checksums verified), and the XXH64 of its ids and mask as
 * read: two files with the same content print the same value. */
static int verify_data(const char *path) {
    DamDataset d;
    dataset_open(&d, path);
    int64_t L = d.seq_len;
    int32_t *ids = dam_malloc((size_t)L * sizeof *ids, "row");
    int8_t *mask = dam_malloc((size_t)L, "row");
    DamXxh64 h;
    dam_xxh64_init(&h, 0);
    for (int64_t r = 0; r < d.n_rows; r++) {
        dataset_read_rows(&d, r, 1, ids, mask);
        dam_xxh64_update(&h, ids, (size_t)L * sizeof *ids), dam_xxh64_update(&h, mask, (size_t)L);
    }
    printf("%s: %lld rows x %lld tokens, content xxh64 %016" PRIx64 "\n", path, (long long)d.n_rows,
           (long long)L, dam_xxh64_digest(&h));
    free(ids), free(mask);
    dataset_close(&d);
    return 0;
}

static int parse_args(int argc, char **argv, const char **dirs, const char **coef_file) {
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && argc == 3 && !strcmp(argv[i], "--verify")) exit(verify_output(argv[i + 1]));
        if (i + 1 < argc && argc == 3 && !strcmp(argv[i], "--checkpoint"))
            exit(verify_checkpoints(argv[i + 1]));
        if (i + 1 < argc && argc == 3 && !strcmp(argv[i], "--data")) exit(verify_data(argv[i + 1]));
        if (strcmp(argv[i], "--coefficients") == 0) {
            if (i + 1 >= argc) cli_missing_value("inspect", argv[i]);
            *coef_file = argv[++i];
        } else if (strcmp(argv[i], "--model") == 0) {
            if (i + 1 >= argc) cli_missing_value("inspect", argv[i]);
            if (n == INSPECT_MAX_MODELS) dam_fail("inspect: at most %d --model flags", INSPECT_MAX_MODELS);
            dirs[n++] = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("%s", cli_help_text("inspect"));
            exit(0);
        } else {
            cli_unknown_option("inspect", argv[i]);
        }
    }
    if (n == 0 && !*coef_file)
        dam_fail(
            "inspect: --model DIR, --coefficients FILE, --verify DIR, --checkpoint PATH or --data FILE is "
            "required");
    if (n > 0 && *coef_file) dam_fail("inspect: give either --model or --coefficients, not both");
    return n;
}

int cmd_inspect(int argc, char **argv) {
    const char *dirs[INSPECT_MAX_MODELS], *coef_file = NULL;
    int n = parse_args(argc, argv, dirs, &coef_file);
    if (coef_file) return print_coefficients(coef_file);
    ModelConfig first;
    for (int i = 0; i < n; i++) {
        StModel m;
        st_model_open(&m, dirs[i]);
        ModelConfig c;
        char *cfg_path = dam_path_join(dirs[i], "config.json");
        hfconfig_load(&c, cfg_path);
        free(cfg_path);
        Survey s;
        memset(&s, 0, sizeof s);
        check_tensors(&m, &c, &s);
        if (i == 0)
            first = c;
        else
            hfconfig_check_same(&first, dirs[0], &c, dirs[i]);
        print_summary(dirs[i], &m, &c, &s);
        st_model_close(&m);
    }
    if (n > 1) printf("all %d models share one architecture: they can be merged\n", n);
    return 0;
}
