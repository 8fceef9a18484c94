/* checkpoint.c — see checkpoint.h. */
#include "checkpoint.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "h5util.h"

struct CkptFile {
    hid_t file;
    char *path;
    char *config; /* the `config` attribute, when read */
};

char *ckpt_tmp_path(const char *dir, int64_t step) {
    return dam_asprintf("%s/step_%08" PRId64 ".h5.tmp", dir, step);
}

static void attr_i64(hid_t obj, const char *name, const int64_t *v, hsize_t n, const char *what) {
    hid_t sp = DAM_H5_CHECK(H5Screate_simple(1, &n, NULL), what);
    hid_t a = DAM_H5_CHECK(H5Acreate2(obj, name, H5T_NATIVE_INT64, sp, H5P_DEFAULT, H5P_DEFAULT), what);
    DAM_H5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, v), what);
    H5Aclose(a), H5Sclose(sp);
}

static void attr_str(hid_t obj, const char *name, const char *s, const char *what) {
    hid_t t = DAM_H5_CHECK(H5Tcopy(H5T_C_S1), what);
    DAM_H5_CHECK(H5Tset_size(t, strlen(s) + 1), what);
    hid_t sp = DAM_H5_CHECK(H5Screate(H5S_SCALAR), what);
    hid_t a = DAM_H5_CHECK(H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT), what);
    DAM_H5_CHECK(H5Awrite(a, t, s), what);
    H5Aclose(a), H5Sclose(sp), H5Tclose(t);
}

void ckpt_create(const char *tmp, const CkptMeta *meta) {
    dam_h5_quiet();
    hid_t f = DAM_H5_CHECK(H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), tmp);
    int64_t one = CKPT_FORMAT_VERSION;
    attr_i64(f, "format_version", &one, 1, tmp);
    attr_i64(f, "step", &meta->step, 1, tmp);
    attr_i64(f, "total_steps", &meta->total_steps, 1, tmp);
    attr_i64(f, "tokens_seen", &meta->tokens_seen, 1, tmp);
    int64_t nd = meta->n_datasets;
    attr_i64(f, "n_datasets", &nd, 1, tmp);
    attr_i64(f, "data_cursor", meta->cursor, meta->n_datasets > 0 ? (hsize_t)meta->n_datasets : 1, tmp);
    char hash[32];
    snprintf(hash, sizeof hash, "%016" PRIx64, meta->config_hash);
    attr_str(f, "config_hash", hash, tmp);
    attr_str(f, "config", meta->config ? meta->config : "{}", tmp);
    attr_str(f, "sources", meta->sources, tmp);
    const char *groups[] = {"coefficients", "adam_m", "adam_v"};
    for (int i = 0; i < 3; i++)
        H5Gclose(DAM_H5_CHECK(H5Gcreate2(f, groups[i], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), tmp));
    DAM_H5_CHECK(H5Fclose(f), tmp);
}

CkptFile *ckpt_append(const char *tmp) {
    dam_h5_quiet();
    CkptFile *f = dam_calloc(1, sizeof *f, "checkpoint");
    f->path = dam_strdup(tmp);
    f->file = DAM_H5_CHECK(H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT), tmp);
    return f;
}

static void put_one(CkptFile *f, const char *group, const char *name, int n_rows, int dim,
                    const float *data) {
    char *path = dam_asprintf("/%s/%s", group, name);
    hsize_t dims[2] = {(hsize_t)n_rows, (hsize_t)dim};
    hid_t sp = DAM_H5_CHECK(H5Screate_simple(2, dims, NULL), f->path);
    hid_t d = DAM_H5_CHECK(
        H5Dcreate2(f->file, path, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path);
    DAM_H5_CHECK(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path);
    H5Dclose(d), H5Sclose(sp);
    free(path);
}

void ckpt_put(CkptFile *f, const char *name, int n_rows, int dim, const float *c, const float *m,
              const float *v) {
    put_one(f, "coefficients", name, n_rows, dim, c);
    put_one(f, "adam_m", name, n_rows, dim, m);
    put_one(f, "adam_v", name, n_rows, dim, v);
}

void ckpt_close(CkptFile *f) {
    if (!f) return;
    DAM_H5_CHECK(H5Fclose(f->file), f->path);
    free(f->path), free(f->config);
    free(f);
}

/* step_<digits>.h5 (or, with tmp, step_<digits>.h5.tmp): its step, else -1. */
static int64_t step_of_name(const char *name, int tmp) {
    const char *ext = tmp ? ".h5.tmp" : ".h5";
    size_t len = strlen(name), el = strlen(ext);
    if (strncmp(name, "step_", 5) || len <= 5 + el || strcmp(name + len - el, ext)) return -1;
    int64_t v = 0;
    for (const char *p = name + 5; p < name + len - el; p++) {
        if (*p < '0' || *p > '9' || v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int ckpt_list_steps(const char *dir, int64_t **steps) {
    *steps = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s = step_of_name(e->d_name, 0);
        if (s < 0) continue;
        *steps = dam_realloc(*steps, (size_t)(n + 1) * sizeof **steps, "checkpoint steps");
        (*steps)[n++] = s;
    }
    closedir(d);
    if (n > 1) qsort(*steps, (size_t)n, sizeof **steps, cmp_i64); /* by number, not by name */
    return n;
}

static void unlink_in(const char *dir, const char *name) {
    char *p = dam_path_join(dir, name);
    unlink(p);
    free(p);
}

void ckpt_prune(const char *dir, int keep) {
    if (keep <= 0) return;
    char *latest = ckpt_latest(dir);
    int64_t *steps, keep_step = -1;
    if (latest) keep_step = step_of_name(strrchr(latest, '/') + 1, 0);
    free(latest);
    int n = ckpt_list_steps(dir, &steps);
    for (int i = 0; i < n - keep; i++) {
        if (steps[i] == keep_step) continue;
        char name[64];
        snprintf(name, sizeof name, "step_%08" PRId64 ".h5", steps[i]);
        unlink_in(dir, name);
    }
    free(steps);
    DIR *d = opendir(dir); /* saves that never completed */
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (step_of_name(e->d_name, 1) >= 0) unlink_in(dir, e->d_name);
    if (d) closedir(d);
}

char *ckpt_commit(const char *dir, const char *tmp, int64_t step, int keep) {
    char *final = dam_asprintf("%s/step_%08" PRId64 ".h5", dir, step);
    if (rename(tmp, final) != 0) dam_fail("%s: cannot rename checkpoint into place", final);
    char *latest = dam_path_join(dir, "latest");
    char line[64];
    int n = snprintf(line, sizeof line, "step_%08" PRId64 ".h5\n", step);
    dam_write_file_atomic(latest, line, (size_t)n);
    free(latest);
    ckpt_prune(dir, keep);
    return final;
}

char *ckpt_latest(const char *dir) {
    char *latest = dam_path_join(dir, "latest");
    if (!dam_file_exists(latest)) {
        free(latest);
        return NULL;
    }
    char *name = dam_read_file(latest, NULL);
    free(latest);
    name[strcspn(name, "\r\n")] = 0;
    char *path = dam_path_join(dir, name);
    free(name);
    if (!dam_file_exists(path)) dam_fail("%s/latest names %s, which does not exist", dir, path);
    return path;
}

static int64_t read_i64(hid_t f, const char *name, const char *path) {
    int64_t v = 0;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) dam_fail("%s: not a dam_dist checkpoint (attribute '%s' missing)", path, name);
    DAM_H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v), path);
    H5Aclose(a);
    return v;
}

/* A string attribute as a fresh heap string. */
static char *read_str(hid_t f, const char *name, const char *path) {
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) dam_fail("%s: not a dam_dist checkpoint (attribute '%s' missing)", path, name);
    hid_t t = DAM_H5_CHECK(H5Aget_type(a), path);
    size_t n = H5Tget_size(t);
    char *buf = dam_calloc(n + 1, 1, "attribute");
    DAM_H5_CHECK(H5Aread(a, t, buf), path);
    H5Tclose(t), H5Aclose(a);
    return buf;
}

CkptFile *ckpt_open_read(const char *path, CkptMeta *meta) {
    dam_h5_quiet();
    CkptFile *f = dam_calloc(1, sizeof *f, "checkpoint");
    f->path = dam_strdup(path);
    f->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f->file < 0) dam_fail("%s: cannot open as HDF5", path);
    int64_t ver = read_i64(f->file, "format_version", path);
    if (ver < 1 || ver > CKPT_FORMAT_VERSION)
        dam_fail("%s: checkpoint format_version %lld; this dam_dist reads 1 to %d", path, (long long)ver,
                 CKPT_FORMAT_VERSION);
    memset(meta, 0, sizeof *meta);
    meta->format_version = ver;
    meta->step = read_i64(f->file, "step", path);
    meta->total_steps = read_i64(f->file, "total_steps", path);
    meta->tokens_seen = read_i64(f->file, "tokens_seen", path);
    meta->n_datasets = (int)read_i64(f->file, "n_datasets", path);
    if (meta->n_datasets < 0 || meta->n_datasets > DAM_MAX_SOURCES) dam_fail("%s: bad n_datasets", path);
    hid_t a = DAM_H5_CHECK(H5Aopen(f->file, "data_cursor", H5P_DEFAULT), path);
    int64_t cur[DAM_MAX_SOURCES + 1];
    DAM_H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, cur), path);
    H5Aclose(a);
    memcpy(meta->cursor, cur, (size_t)meta->n_datasets * sizeof(int64_t));
    char *hash = read_str(f->file, "config_hash", path);
    meta->config_hash = strtoull(hash, NULL, 16);
    free(hash);
    if (ver >= 2) meta->config = f->config = read_str(f->file, "config", path);
    char *sources = read_str(f->file, "sources", path);
    snprintf(meta->sources, sizeof meta->sources, "%s", sources);
    free(sources);
    return f;
}

static void get_one(CkptFile *f, const char *group, const char *name, int n_rows, int dim, int col0,
                    int ncols, float *out) {
    char *path = dam_asprintf("/%s/%s", group, name);
    hid_t d = H5Dopen2(f->file, path, H5P_DEFAULT);
    if (d < 0)
        dam_fail("%s: checkpoint has no tensor '%s' (made for other sources or shapes?)", f->path, path);
    hid_t sp = DAM_H5_CHECK(H5Dget_space(d), path);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(sp) != 2 || H5Sget_simple_extent_dims(sp, dims, NULL) != 2 ||
        dims[0] != (hsize_t)n_rows || dims[1] != (hsize_t)dim)
        dam_fail("%s: tensor '%s' is [%llu, %llu] in the checkpoint; this run has [%d, %d]", f->path, path,
                 (unsigned long long)dims[0], (unsigned long long)dims[1], n_rows, dim);
    hsize_t start[2] = {0, (hsize_t)col0}, count[2] = {(hsize_t)n_rows, (hsize_t)ncols};
    DAM_H5_CHECK(H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL), path);
    hid_t mem = DAM_H5_CHECK(H5Screate_simple(2, count, NULL), path);
    DAM_H5_CHECK(H5Dread(d, H5T_NATIVE_FLOAT, mem, sp, H5P_DEFAULT, out), path);
    H5Sclose(mem), H5Sclose(sp), H5Dclose(d);
    free(path);
}

void ckpt_get(CkptFile *f, const char *name, int n_rows, int dim, int col0, int ncols, float *c, float *m,
              float *v) {
    get_one(f, "coefficients", name, n_rows, dim, col0, ncols, c);
    get_one(f, "adam_m", name, n_rows, dim, col0, ncols, m);
    get_one(f, "adam_v", name, n_rows, dim, col0, ncols, v);
}

char *ckpt_save(const char *dir, const DamModel *m, const CkptMeta *meta, int keep) {
    dam_mkdir_p(dir);
    char *tmp = ckpt_tmp_path(dir, meta->step);
    ckpt_create(tmp, meta);
    CkptFile *f = ckpt_append(tmp);
    float *c = dam_model_coef_host(m, DAM_COEF_C), *am = dam_model_coef_host(m, DAM_COEF_ADAM_M),
          *av = dam_model_coef_host(m, DAM_COEF_ADAM_V);
    for (int t = 0; t < m->n_tensors; t++) {
        const DamTensor *x = &m->tensors[t];
        ckpt_put(f, x->name, m->n_rows, x->dim, c + x->coef_at, am + x->coef_at, av + x->coef_at);
    }
    free(c), free(am), free(av);
    ckpt_close(f);
    char *final = ckpt_commit(dir, tmp, meta->step, keep);
    free(tmp);
    return final;
}

void ckpt_read_model(CkptFile *f, DamModel *m) {
    char want[1024] = "", *have = read_str(f->file, "sources", f->path);
    for (int i = 0; i < m->n_rows; i++) {
        if (i) strncat(want, ";", sizeof want - strlen(want) - 1);
        strncat(want, m->row_names[i], sizeof want - strlen(want) - 1);
    }
    if (strcmp(want, have))
        dam_fail("%s: checkpoint was made for sources '%s'; this run has '%s'", f->path, have, want);
    free(have);
    /* every tensor is read: the host blocks are filled whole, then uploaded */
    float *c = dam_malloc((m->coef.n ? m->coef.n : 1) * 3 * sizeof(float), "checkpoint coefficients");
    float *am = c + m->coef.n, *av = am + m->coef.n;
    for (int t = 0; t < m->n_tensors; t++) { /* this rank's columns of tensor-parallel splits */
        DamTensor *x = &m->tensors[t];
        int split = dam_model_split_kind(m, x) == 2;
        ckpt_get(f, x->name, m->n_rows, split ? x->coef_full : x->dim, split ? x->coef_off : 0, x->dim,
                 c + x->coef_at, am + x->coef_at, av + x->coef_at);
    }
    dam_model_coef_upload(m, DAM_COEF_C, c);
    dam_model_coef_upload(m, DAM_COEF_ADAM_M, am);
    dam_model_coef_upload(m, DAM_COEF_ADAM_V, av);
    free(c);
    dam_model_refresh(m);
}

void ckpt_load(const char *path, DamModel *m, CkptMeta *meta) {
    CkptFile *f = ckpt_open_read(path, meta);
    ckpt_read_model(f, m);
    meta->config = NULL; /* owned by f */
    ckpt_close(f);
}
