/* output.c — see output.h. */
#include "output.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json_util.h"
#include "safetensors.h"

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

void output_write_coefficients(const DamModel *m, const char *path) {
    int n = m->n_tensors;
    const char **names = dam_malloc(n * sizeof(char *), "names");
    dam_dtype *dt = dam_malloc(n * sizeof(dam_dtype), "dtypes");
    int *nd = dam_malloc(n * sizeof(int), "ndims");
    int64_t *shp = dam_malloc(2 * n * sizeof(int64_t), "shapes");
    const int64_t **shapes = dam_malloc(n * sizeof(int64_t *), "shapes");
    const void **data = dam_malloc(n * sizeof(void *), "data");
    for (int t = 0; t < n; t++) {
        names[t] = m->tensors[t].name, dt[t] = DAM_F32, nd[t] = 2;
        shp[2 * t] = m->n_rows, shp[2 * t + 1] = m->tensors[t].dim;
        shapes[t] = &shp[2 * t], data[t] = m->tensors[t].c;
    }
    st_write_file(path, n, names, dt, nd, shapes, data);
    free(names), free(dt), free(nd), free(shp), free(shapes), free(data);
}

void output_load_coefficients(DamModel *m, const char *path) {
    StFile f;
    st_open(&f, path);
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        const StTensor *s = st_find(&f, x->name);
        if (!s) dam_fail("%s: no coefficients for tensor '%s'", path, x->name);
        int full = x->coef_full ? x->coef_full : x->dim;
        if (s->dtype != DAM_F32 || s->ndim != 2 || s->shape[0] != m->n_rows || s->shape[1] != full)
            dam_fail("%s: tensor '%s': expected F32 [%d, %d]", path, x->name, m->n_rows, full);
        for (int i = 0; i < m->n_rows; i++) /* this rank's columns of a tensor-parallel split */
            memcpy(x->c + (size_t)i * x->dim, (const float *)s->data + (size_t)i * full + x->coef_off,
                   (size_t)x->dim * sizeof(float));
    }
    st_close(&f);
    dam_model_refresh(m);
}

static void write_report(const DamModel *m, const OutputReport *rep, const char *path) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "steps", rep->steps);
    cJSON_AddNumberToObject(r, "total_steps", rep->total_steps);
    cJSON_AddNumberToObject(r, "wall_time_s", rep->wall_s);
    cJSON_AddNumberToObject(r, "final_loss", rep->loss);
    cJSON *kl = cJSON_AddObjectToObject(r, "final_kl");
    for (int k = 0; k < rep->n_data; k++) cJSON_AddNumberToObject(kl, rep->names[k], rep->kl[k]);
    cJSON *rows = cJSON_AddArrayToObject(r, "coefficient_rows");
    for (int i = 0; i < m->n_rows; i++) cJSON_AddItemToArray(rows, cJSON_CreateString(m->row_names[i]));
    cJSON_AddStringToObject(r, "architecture", m->cfg.architecture);
    char *text = cJSON_Print(r);
    dam_write_file_atomic(path, text, strlen(text));
    free(text);
    cJSON_Delete(r);
}

void output_write(DamModel *m, const DamConfig *cfg, const OutputReport *rep) {
    char *tmp = dam_asprintf("%s.tmp", cfg->out_dir);
    dam_rm_rf(tmp);
    dam_mkdir_p(tmp);
    StWriter *w = st_writer_new(tmp, cfg->shard_bytes);
    size_t maxn = 0;
    for (int t = 0; t < m->n_tensors; t++)
        if (m->tensors[t].rows * m->tensors[t].cols > maxn) maxn = m->tensors[t].rows * m->tensors[t].cols;
    float *buf = dam_malloc(maxn * sizeof(float), "merged tensor");
    for (int t = 0; t < m->n_tensors; t++) { /* each merged tensor materialized once */
        const DamTensor *x = &m->tensors[t];
        dam_model_materialize(m, x, -1, buf);
        dam_model_release(m, x);
        int64_t shape[2] = {(int64_t)x->rows, (int64_t)x->cols};
        int one_d = x->kind == DT_NORM || x->kind == DT_BIAS;
        st_writer_add_f32(w, x->name, DAM_BF16, one_d ? 1 : 2, one_d ? &shape[1] : shape, buf);
    }
    free(buf);
    st_writer_finish(w, "pt");
    const char *donor = cfg->base_model ? cfg->base_model : cfg->models[0].path;
    write_config(donor, tmp);
    for (const char *const *f = copied_files; *f; f++) {
        char *src = dam_path_join(donor, *f), *dst = dam_path_join(tmp, *f);
        if (dam_file_exists(src)) copy_file(src, dst);
        free(src), free(dst);
    }
    char *coef = dam_path_join(tmp, "dam_coefficients.safetensors"),
         *report = dam_path_join(tmp, "dam_report.json");
    output_write_coefficients(m, coef);
    write_report(m, rep, report);
    free(coef), free(report);
    /* replace any previous output only now that the new one is complete */
    char *old = dam_asprintf("%s.old", cfg->out_dir);
    dam_rm_rf(old);
    if (dam_is_dir(cfg->out_dir) && rename(cfg->out_dir, old) != 0)
        dam_fail("%s: cannot move aside", cfg->out_dir);
    if (rename(tmp, cfg->out_dir) != 0) dam_fail("%s: cannot rename %s into place", cfg->out_dir, tmp);
    dam_rm_rf(old);
    free(old), free(tmp);
}
