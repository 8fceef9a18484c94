/* output.c — see output.h. */
#include "comm.h"
#include "output.h"

#include <cJSON.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json_util.h"
#include "safetensors.h"
#include "xxh64.h"

static const char *const copied_files[] = {"tokenizer.json",
                                           "tokenizer_config.json",
                                           "special_tokens_map.json",
                                           "tokenizer.model",
                                           "vocab.json",
                                           "merges.txt",
                                           "generation_config.json",
                                           "added_tokens.json",
                                           NULL};

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *data = dam_read_file(from, &n);
    dam_write_file_atomic(to, data, n);
    free(data);
}

/* config.json of the donor with the stored dtype set to bfloat16. */
static void write_config(const char *donor_dir, const char *out_dir) {
    char *src = dam_path_join(donor_dir, "config.json"), *dst = dam_path_join(out_dir, "config.json");
    cJSON *root = json_parse_file(src);
    const char *keys[] = {"torch_dtype", "dtype"};
    for (int i = 0; i < 2; i++) {
        if (i == 1 && !cJSON_GetObjectItemCaseSensitive(root, keys[i])) continue;
        cJSON_DeleteItemFromObjectCaseSensitive(root, keys[i]);
        cJSON_AddStringToObject(root, keys[i], "bfloat16");
    }
    char *text = cJSON_Print(root);
    dam_write_file_atomic(dst, text, strlen(text));
    free(text);
    cJSON_Delete(root);
    free(src), free(dst);
}

void output_load_coefficients(DamModel *m, const char *path) {
    StFile f;
    st_open(&f, path);
    float *c = dam_model_coef_host(m, DAM_COEF_C); /* every tensor is overwritten below */
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        const StTensor *s = st_find(&f, x->name);
        if (!s) dam_fail("%s: no coefficients for tensor '%s'", path, x->name);
        int full = x->coef_full ? x->coef_full : x->dim;
        if (s->dtype != DAM_F32 || s->ndim != 2 || s->shape[0] != m->n_coef_rows || s->shape[1] != full)
            dam_fail("%s: tensor '%s': expected F32 [%d, %d]", path, x->name, m->n_coef_rows, full);
        for (int i = 0; i < m->n_coef_rows; i++) /* this rank's columns of a tensor-parallel split */
            memcpy(c + x->coef_at + (size_t)i * x->dim,
                   (const float *)s->data + (size_t)i * full + x->coef_off, (size_t)x->dim * sizeof(float));
    }
    st_close(&f);
    dam_model_coef_upload(m, DAM_COEF_C, c);
    free(c);
    dam_model_refresh(m);
}

/* "shard_xxh64": {file: 16 hex digits} of every *.safetensors in dir (the merged shards and the
 * coefficients), for `dam_dist inspect --verify DIR` after a copy. */
static void add_shard_hashes(cJSON *r, const char *dir) {
    cJSON *h = cJSON_AddObjectToObject(r, "shard_xxh64");
    DIR *d = opendir(dir);
    if (!d) dam_fail("%s: cannot list the output directory", dir);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors")) continue;
        char *p = dam_path_join(dir, e->d_name), hex[17];
        uint64_t v;
        if (dam_xxh64_file(p, &v) != 0) dam_fail("%s: cannot read it back to hash it", p);
        snprintf(hex, sizeof hex, "%016" PRIx64, v);
        cJSON_AddStringToObject(h, e->d_name, hex);
        free(p);
    }
    closedir(d);
}

static void write_report(const DamModel *m, const DamConfig *cfg, const OutputReport *rep, const char *path) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "steps", rep->steps);
    cJSON_AddNumberToObject(r, "total_steps", rep->total_steps);
    cJSON_AddNumberToObject(r, "wall_time_s", rep->wall_s);
    cJSON_AddNumberToObject(r, "final_loss", rep->loss);
    cJSON *kl = cJSON_AddObjectToObject(r, "final_kl");
    for (int k = 0; k < rep->n_data; k++) cJSON_AddNumberToObject(kl, rep->names[k], rep->kl[k]);
    cJSON *rows = cJSON_AddArrayToObject(r, "coefficient_rows");
    for (int i = 0; i < m->n_coef_rows; i++) cJSON_AddItemToArray(rows, cJSON_CreateString(m->row_names[i]));
    cJSON_AddStringToObject(r, "architecture", m->full_cfg.architecture);
    cJSON_AddItemToObject(r, "config", cJSON_Parse(cfg->effective));
    char *dir = dam_strdup(path);
    *strrchr(dir, '/') = 0;
    add_shard_hashes(r, dir);
    free(dir);
    outdir_write_marker(r, cfg->command ? cfg->command : "dam_dist train", path);
}

/* ---------------------------------------------------------------- over stages and tp ranks */

/* Floats of the device buffer a merged tensor goes through on a GPU (64 MiB; within the CUDA
 * overhead plan counts): the tensor is materialized there in row chunks and downloaded.
 * DAM_OUTPUT_CHUNK (floats) sets it and takes that path on any device (the tests' way to run the
 * GPU's path on the CPU). */
static size_t out_chunk(int *forced) {
    const char *e = getenv("DAM_OUTPUT_CHUNK");
    *forced = e && atol(e) > 0;
    return *forced ? (size_t)atol(e) : (size_t)1 << 24;
}

/* Rows [r0, r0 + R) of x as a tensor of its own (views of its sources' rows; the coefficients are
 * per column, so they stay whole). */
static DamTensor row_range(const DamModel *m, const DamTensor *x, size_t r0, size_t R) {
    DamTensor part = *x;
    part.rows = R;
    for (int i = 0; i < m->n_coef_rows; i++) {
        size_t ld = x->src[i].ld;
        part.src[i].w = devbuf_slice(x->src[i].w, r0 * ld, (R - 1) * ld + x->cols);
    }
    return part;
}

/* Merged tensor x (F32) on the host (heap), from a GPU: materialized in row chunks of a bounded
 * device buffer and downloaded; its source pages released after. */
static float *merged_local(DamModel *m, const DamTensor *x) {
    const Backend *be = m->be;
    int forced;
    size_t n = x->rows * x->cols, chunk = out_chunk(&forced), R = chunk / x->cols ? chunk / x->cols : 1;
    float *host = dam_malloc(n * sizeof(float), "merged tensor");
    if (R >= x->rows) R = x->rows;
    DevBuf dev = be->alloc(m->ctx, R * x->cols, DAM_F32, "merged tensor");
    for (size_t r0 = 0; r0 < x->rows; r0 += R) {
        size_t k = x->rows - r0 < R ? x->rows - r0 : R;
        DamTensor part = row_range(m, x, r0, k);
        dam_model_materialize(m, &part, -1, dev);
        be->download(m->ctx, host + r0 * x->cols, DAM_F32, dev, k * x->cols);
    }
    be->free(m->ctx, &dev);
    dam_model_release(m, x);
    return host;
}

/* Merged tensor x (F32) of every tp rank, gathered (dam_model_gather_split). On a host-addressable
 * device (CPU, guard) materialized into one buffer and read where it lies (host_begin: no second
 * copy of the tensor, the output-phase RSS plan counts); on a GPU through merged_local. */
static float *merged_tensor(DamModel *m, const DamTensor *x, int cols_split) {
    const Backend *be = m->be;
    float *full;
    int forced;
    out_chunk(&forced);
    if (be->device == DAM_DEVICE_CPU && !forced) { /* in place: the training-time RSS plan counts */
        DevBuf dev = be->alloc(m->ctx, x->rows * x->cols, DAM_F32, "merged tensor");
        dam_model_materialize(m, x, -1, dev);
        dam_model_release(m, x);
        float *host = be->host_begin(m->ctx, dev);
        if (host) {
            full = dam_model_gather_split(m, host, x->rows, x->cols, cols_split);
            be->host_end(m->ctx, dev);
        } else { /* (a host-side device that is not host-addressable after all) */
            host = dam_malloc(x->rows * x->cols * sizeof(float), "merged tensor");
            be->download(m->ctx, host, DAM_F32, dev, x->rows * x->cols);
            full = dam_model_gather_split(m, host, x->rows, x->cols, cols_split);
            free(host);
        }
        be->free(m->ctx, &dev);
    } else {
        float *host = merged_local(m, x);
        full = dam_model_gather_split(m, host, x->rows, x->cols, cols_split);
        free(host);
    }
    return full;
}

/* Merged tensors of this rank's stage, gathered over tp and written by tp rank 0 into dir; with
 * `coef_path`, their coefficients too. Every tp rank takes part. */
static void write_stage_tensors(DamModel *m, const char *dir, size_t shard_bytes, const char *coef_path) {
    int writer = m->tp_rank == 0;
    StWriter *w = writer ? st_writer_new(dir, shard_bytes) : NULL;
    float *c = dam_model_coef_host(m, DAM_COEF_C);
    int n_out = 0;
    const char **names = dam_calloc((size_t)m->n_tensors, sizeof(char *), "names");
    float **coefs = dam_calloc((size_t)m->n_tensors, sizeof(float *), "coefficients");
    int64_t *cshape = dam_calloc((size_t)m->n_tensors * 2, sizeof(int64_t), "shapes");
    for (int t = 0; t < m->n_tensors; t++) { /* each merged tensor materialized once */
        const DamTensor *x = &m->tensors[t];
        if (!dam_model_owns(m, x)) continue;
        TensorSplit split = dam_model_split_kind(m, x);
        int tp = split != SPLIT_NONE ? m->tp_size : 1, cols_split = split == SPLIT_COLS;
        int rows_split = split == SPLIT_ROWS && x->kind != DT_BIAS; /* a bias's only axis is its cols */
        float *full = merged_tensor(m, x, cols_split);
        int64_t shape[2] = {(int64_t)(x->rows * (rows_split ? tp : 1)),
                            (int64_t)(x->cols * (rows_split ? 1 : tp))};
        int one_d = x->kind == DT_NORM || x->kind == DT_BIAS;
        if (writer) st_writer_add_f32(w, x->name, DAM_BF16, one_d ? 1 : 2, one_d ? &shape[1] : shape, full);
        free(full);
        /* coefficients: whole on every tp rank unless their columns are split with the weight */
        coefs[n_out] =
            dam_model_gather_split(m, c + x->coef_at, (size_t)m->n_coef_rows, (size_t)x->dim, cols_split);
        names[n_out] = x->name;
        cshape[2 * n_out] = m->n_coef_rows, cshape[2 * n_out + 1] = cols_split ? x->coef_full : x->dim;
        n_out++;
    }
    free(c);
    if (writer) st_writer_finish(w, "pt");
    if (writer && coef_path) {
        dam_dtype *dt = dam_malloc((size_t)n_out * sizeof(dam_dtype), "dtypes");
        int *nd = dam_malloc((size_t)n_out * sizeof(int), "ndims");
        const int64_t **shapes = dam_malloc((size_t)n_out * sizeof(int64_t *), "shapes");
        for (int i = 0; i < n_out; i++) dt[i] = DAM_F32, nd[i] = 2, shapes[i] = &cshape[2 * i];
        /* the rows' names, so that the file says which source each row is (inspect --coefficients) */
        cJSON *rows = cJSON_CreateArray();
        for (int i = 0; i < m->n_coef_rows; i++)
            cJSON_AddItemToArray(rows, cJSON_CreateString(m->row_names[i]));
        char *rows_json = cJSON_PrintUnformatted(rows);
        cJSON_Delete(rows);
        const char *meta[] = {ST_COEF_ROWS_KEY, rows_json};
        st_write_file_meta(coef_path, n_out, names, dt, nd, shapes, (const void *const *)coefs, 1, meta);
        free(rows_json), free(dt), free(nd), free(shapes);
    }
    for (int i = 0; i < n_out; i++) free(coefs[i]);
    free(coefs), free(names), free(cshape);
}

void output_join_shards(const char *tmp, int n_stages) {
    char **files = NULL;
    int n_files = 0;
    for (int s = 0; s < n_stages; s++) {
        char *dir = dam_asprintf("%s/stage-%03d", tmp, s);
        char *single = dam_path_join(dir, "model.safetensors");
        if (dam_file_exists(single)) {
            files = dam_realloc(files, (size_t)(n_files + 1) * sizeof(char *), "files");
            files[n_files++] = single;
        } else {
            free(single);
            for (int k = 1;; k++) { /* model-00001-of-0000N.safetensors */
                char *name = NULL;
                for (int of = k; of < 100000 && !name; of++) {
                    char *p = dam_asprintf("%s/model-%05d-of-%05d.safetensors", dir, k, of);
                    if (dam_file_exists(p))
                        name = p;
                    else
                        free(p);
                }
                if (!name) break;
                files = dam_realloc(files, (size_t)(n_files + 1) * sizeof(char *), "files");
                files[n_files++] = name;
            }
        }
        free(dir);
    }
    cJSON *index = cJSON_CreateObject(), *map = cJSON_CreateObject();
    double total = 0;
    for (int i = 0; i < n_files; i++) {
        char *final = n_files == 1 ? dam_strdup("model.safetensors")
                                   : dam_asprintf("model-%05d-of-%05d.safetensors", i + 1, n_files);
        StFile f;
        st_open(&f, files[i]);
        for (int t = 0; t < f.n_tensors; t++) {
            cJSON_AddStringToObject(map, f.tensors[t].name, final);
            total += (double)f.tensors[t].nbytes;
        }
        st_close(&f);
        char *dst = dam_path_join(tmp, final);
        if (rename(files[i], dst) != 0) dam_fail("%s: cannot move %s into place", dst, files[i]);
        free(dst), free(final), free(files[i]);
    }
    free(files);
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", total);
    cJSON_AddItemToObject(index, "weight_map", map);
    if (n_files > 1) {
        char *text = cJSON_Print(index), *p = dam_path_join(tmp, "model.safetensors.index.json");
        dam_write_file_atomic(p, text, strlen(text));
        free(text), free(p);
    }
    cJSON_Delete(index);
}

void output_remove_stages(const char *tmp, int n_stages) {
    for (int s = 0; s < n_stages; s++) {
        char *dir = dam_asprintf("%s/stage-%03d", tmp, s);
        dam_rm_rf(dir);
        free(dir);
    }
}

/* Rank 0: the stages' shards joined into one series, and their coefficient files merged, in stage
 * order. */
static void merge_stage_outputs(const char *tmp, int n_stages) {
    output_join_shards(tmp, n_stages);
    /* one coefficients file, tensors in stage order */
    StFile *cf = dam_calloc((size_t)n_stages, sizeof(StFile), "stage coefficients");
    int n = 0;
    for (int s = 0; s < n_stages; s++) {
        char *p = dam_asprintf("%s/stage-%03d/coefficients.safetensors", tmp, s);
        st_open(&cf[s], p);
        n += cf[s].n_tensors;
        free(p);
    }
    const char **names = dam_malloc((size_t)n * sizeof(char *), "names");
    dam_dtype *dt = dam_malloc((size_t)n * sizeof(dam_dtype), "dtypes");
    int *nd = dam_malloc((size_t)n * sizeof(int), "ndims");
    const int64_t **shapes = dam_malloc((size_t)n * sizeof(int64_t *), "shapes");
    const void **data = dam_malloc((size_t)n * sizeof(void *), "data");
    int i = 0;
    for (int s = 0; s < n_stages; s++)
        for (int t = 0; t < cf[s].n_tensors; t++, i++) {
            const StTensor *x = &cf[s].tensors[t];
            names[i] = x->name, dt[i] = DAM_F32, nd[i] = 2, shapes[i] = x->shape, data[i] = x->data;
        }
    char *coef = dam_path_join(tmp, "dam_coefficients.safetensors"),
         *rows = st_metadata(&cf[0], ST_COEF_ROWS_KEY);
    const char *meta[] = {ST_COEF_ROWS_KEY, rows};
    st_write_file_meta(coef, n, names, dt, nd, shapes, data, rows ? 1 : 0, meta);
    free(coef), free(rows), free(names), free(dt), free(nd), free(shapes), free(data);
    for (int s = 0; s < n_stages; s++) st_close(&cf[s]);
    free(cf);
    output_remove_stages(tmp, n_stages);
}

/* Everything but the tensors, by rank 0, then the directory renamed into place. */
void output_copy_donor_files(const char *donor, const char *dir) {
    write_config(donor, dir);
    for (const char *const *f = copied_files; *f; f++) {
        char *src = dam_path_join(donor, *f), *dst = dam_path_join(dir, *f);
        if (dam_file_exists(src)) copy_file(src, dst);
        free(src), free(dst);
    }
}

static void finish_output(const DamModel *m, const DamConfig *cfg, const OutputReport *rep, const char *tmp) {
    output_copy_donor_files(cfg->base_model ? cfg->base_model : cfg->models[0].path, tmp);
    char *report = dam_path_join(tmp, "dam_report.json");
    write_report(m, cfg, rep, report);
    free(report);
    if (rep->extra_name) {
        char *extra = dam_path_join(tmp, rep->extra_name);
        dam_write_file_atomic(extra, rep->extra_text, strlen(rep->extra_text));
        free(extra);
    }
    OutputTarget t; /* replace any previous output only now that the new one is complete */
    output_target(&t, cfg);
    outdir_commit(&t.od, tmp);
}

void output_target(OutputTarget *t, const DamConfig *cfg) {
    memset(t, 0, sizeof *t);
    int n = 0;
    t->inputs[n++] = cfg->base_model;
    t->inputs[n++] = cfg->init_file;
    for (int i = 0; i < cfg->n_models; i++)
        t->inputs[n++] = cfg->models[i].path, t->inputs[n++] = cfg->models[i].dataset;
    t->od = (OutDir){.dir = cfg->out_dir,
                     .what = cfg->out_from_cli ? "--out" : "output.dir",
                     .written_by = cfg->command ? cfg->command : "dam_dist train",
                     .marker = "dam_report.json",
                     .inputs = t->inputs,
                     .n_inputs = n,
                     .force = cfg->force};
}

void output_check(const DamConfig *cfg, const char *ckpt_dir) {
    OutputTarget t;
    output_target(&t, cfg);
    outdir_check(&t.od);
    outdir_check_checkpoints(&t.od, ckpt_dir, cfg->command ? "--checkpoint-dir" : "checkpoint.dir");
    outdir_check_path(&t.od, cfg->metrics_file, "output.metrics");
}

void output_write(DamModel *m, const DamConfig *cfg, const OutputReport *rep) {
    output_write_parallel(m, cfg, rep, NULL);
}

void output_write_parallel(DamModel *m, const DamConfig *cfg, const OutputReport *rep,
                           const CommGroup *writers) {
    int root = !writers || writers->rank == 0, n_stages = m->pp ? m->pp->size : 1;
    char *tmp = dam_asprintf("%s.tmp", cfg->out_dir);
    if (root) {
        OutputTarget t;
        output_target(&t, cfg);
        free(outdir_begin(&t.od));
    }
    if (writers) comm_barrier(writers);
    char *stage = dam_asprintf("%s/stage-%03d", tmp, m->pp ? m->pp->rank : 0);
    char *coef = dam_path_join(stage, "coefficients.safetensors");
    if (m->tp_rank == 0) dam_mkdir_p(stage);
    write_stage_tensors(m, stage, cfg->shard_bytes, coef);
    if (writers) comm_barrier(writers);
    if (root) {
        merge_stage_outputs(tmp, n_stages);
        finish_output(m, cfg, rep, tmp);
    }
    if (writers) comm_barrier(writers);
    free(stage), free(coef), free(tmp);
}
