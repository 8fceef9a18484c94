/* checkpoint.c — see checkpoint.h. */
#include "checkpoint.h"

#include <dirent.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "h5util.h"
#include "xxh64.h"

struct CkptFile {
    hid_t file;
    char *path;
    char *config; /* the `config` attribute, when read */
};

static char *step_path(const char *dir, int64_t step) {
    return dam_asprintf("%s/step_%08" PRId64 ".h5", dir, step);
}

char *ckpt_tmp_path(const char *dir, int64_t step) {
    return dam_asprintf("%s/step_%08" PRId64 ".h5.tmp", dir, step);
}

static void attr_i64(hid_t obj, const char *name, const int64_t *v, hsize_t n, const char *what) {
    hid_t sp = DAM_H5_CHECK(H5Screate_simple(1, &n, NULL), what);
    hid_t a = DAM_H5_CHECK(H5Acreate2(obj, name, H5T_NATIVE_INT64, sp, H5P_DEFAULT, H5P_DEFAULT), what);
    DAM_H5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, v), what);
    H5Aclose(a), H5Sclose(sp);
}

static void attr_u64(hid_t obj, const char *name, uint64_t v, const char *what) {
    hid_t sp = DAM_H5_CHECK(H5Screate(H5S_SCALAR), what);
    hid_t a = DAM_H5_CHECK(H5Acreate2(obj, name, H5T_STD_U64LE, sp, H5P_DEFAULT, H5P_DEFAULT), what);
    DAM_H5_CHECK(H5Awrite(a, H5T_NATIVE_UINT64, &v), what);
    H5Aclose(a), H5Sclose(sp);
}

/* The checksum of the attributes a resume reads (step, cursor, settings, sources): format 3's
 * meta_xxh64. */
static uint64_t meta_hash(int64_t step, int64_t total, int64_t tokens, int64_t n_datasets,
                          const int64_t *cursor, const char *config_hash, const char *config,
                          const char *sources) {
    DamXxh64 h;
    dam_xxh64_init(&h, 0);
    int64_t head[4] = {step, total, tokens, n_datasets};
    dam_xxh64_update(&h, head, sizeof head);
    dam_xxh64_update(&h, cursor, (size_t)(n_datasets > 0 ? n_datasets : 1) * sizeof(int64_t));
    const char *strs[3] = {config_hash, config, sources};
    for (int i = 0; i < 3; i++) dam_xxh64_update(&h, strs[i], strlen(strs[i]) + 1);
    return dam_xxh64_digest(&h);
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
    attr_u64(f, "meta_xxh64",
             meta_hash(meta->step, meta->total_steps, meta->tokens_seen, nd, meta->cursor, hash,
                       meta->config ? meta->config : "{}", meta->sources),
             tmp);
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

static void put_one(CkptFile *f, const char *group, const char *name, int n_coef_rows, int dim,
                    const float *data) {
    char *path = dam_asprintf("/%s/%s", group, name);
    hsize_t dims[2] = {(hsize_t)n_coef_rows, (hsize_t)dim};
    hid_t sp = DAM_H5_CHECK(H5Screate_simple(2, dims, NULL), f->path);
    hid_t d = DAM_H5_CHECK(
        H5Dcreate2(f->file, path, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path);
    DAM_H5_CHECK(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path);
    /* the checksum of the stored (little-endian) bytes: ckpt_verify reads them back as such */
    attr_u64(d, "xxh64", dam_xxh64(data, (size_t)n_coef_rows * (size_t)dim * sizeof(float), 0), path);
    H5Dclose(d), H5Sclose(sp);
    free(path);
}

void ckpt_put(CkptFile *f, const char *name, int n_coef_rows, int dim, const float *c, const float *m,
              const float *v) {
    put_one(f, "coefficients", name, n_coef_rows, dim, c);
    put_one(f, "adam_m", name, n_coef_rows, dim, m);
    put_one(f, "adam_v", name, n_coef_rows, dim, v);
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
    int64_t verified = -1; /* the newest checkpoint that verifies stays, whatever `keep` says */
    char why[512];
    for (int i = n - 1; i >= 0 && verified < 0; i--) {
        char *p = step_path(dir, steps[i]);
        if (ckpt_verify(p, why, sizeof why) >= 0)
            verified = steps[i];
        else
            dam_warn("checkpoint %s fails verification: %s; kept out of pruning's count", p, why);
        free(p);
    }
    for (int i = 0; i < n - keep; i++) {
        if (steps[i] == keep_step || steps[i] == verified) continue;
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

/* ---------------------------------------------------------------- verification (format 3) */

/* Every call below may meet a damaged file: none of them fails the run; the first problem is
 * written into why and -1 returned. */
typedef struct {
    char *why;
    size_t cap;
} Why;

static int fail_why(Why *w, const char *fmt, ...) DAM_PRINTF(2, 3);
static int fail_why(Why *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->why, w->cap, fmt, ap);
    va_end(ap);
    return -1;
}

/* A scalar or 1-D integer attribute of at most `cap` elements as int64 (n: elements read). */
static int try_ints(hid_t obj, const char *name, int64_t *v, hsize_t cap, hsize_t *n, Why *w) {
    if (H5Aexists(obj, name) <= 0) return fail_why(w, "attribute '%s' missing", name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t sp = a < 0 ? -1 : H5Aget_space(a), t = a < 0 ? -1 : H5Aget_type(a);
    hssize_t cnt = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    int ok = a >= 0 && sp >= 0 && t >= 0 && H5Tget_class(t) == H5T_INTEGER && cnt >= 1 &&
             (hsize_t)cnt <= cap && H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    if (n) *n = cnt > 0 ? (hsize_t)cnt : 0;
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    return ok ? 0 : fail_why(w, "attribute '%s' unreadable", name);
}

/* A scalar uint64 attribute (read as such: HDF5 would clip a value >= 2^63 read as int64). */
static int try_u64(hid_t obj, const char *name, uint64_t *v, Why *w) {
    if (H5Aexists(obj, name) <= 0) return fail_why(w, "attribute '%s' missing", name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t sp = a < 0 ? -1 : H5Aget_space(a), t = a < 0 ? -1 : H5Aget_type(a);
    int ok = a >= 0 && sp >= 0 && t >= 0 && H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) == 8 &&
             H5Sget_simple_extent_npoints(sp) == 1 && H5Aread(a, H5T_NATIVE_UINT64, v) >= 0;
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    return ok ? 0 : fail_why(w, "attribute '%s' unreadable", name);
}

/* A fixed-length string attribute as a fresh heap string (NULL and why on failure). */
static char *try_str(hid_t obj, const char *name, Why *w) {
    if (H5Aexists(obj, name) <= 0) return fail_why(w, "attribute '%s' missing", name), NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = a < 0 ? -1 : H5Aget_type(a);
    size_t n = t < 0 || H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) ? 0 : H5Tget_size(t);
    char *buf = n && n < ((size_t)1 << 30) ? calloc(n + 1, 1) : NULL;
    if (buf && H5Aread(a, t, buf) < 0) free(buf), buf = NULL;
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    if (!buf) fail_why(w, "attribute '%s' unreadable", name);
    return buf;
}

/* The root attributes against meta_xxh64. */
static int verify_meta(hid_t f, Why *w) {
    int64_t head[4], cur[DAM_MAX_SOURCES + 1] = {0};
    const char *names[4] = {"step", "total_steps", "tokens_seen", "n_datasets"};
    for (int i = 0; i < 4; i++)
        if (try_ints(f, names[i], &head[i], 1, NULL, w)) return -1;
    hsize_t nc = 0;
    if (try_ints(f, "data_cursor", cur, DAM_MAX_SOURCES + 1, &nc, w)) return -1;
    if (head[3] < 0 || head[3] > DAM_MAX_SOURCES || nc != (hsize_t)(head[3] > 0 ? head[3] : 1))
        return fail_why(w, "attributes n_datasets and data_cursor disagree");
    uint64_t want;
    if (try_u64(f, "meta_xxh64", &want, w)) return -1;
    char *s[3] = {try_str(f, "config_hash", w), NULL, NULL};
    if (s[0]) s[1] = try_str(f, "config", w);
    if (s[1]) s[2] = try_str(f, "sources", w);
    int rc = -1;
    if (s[2]) {
        uint64_t have = meta_hash(head[0], head[1], head[2], head[3], cur, s[0], s[1], s[2]);
        rc = have == want
                 ? 0
                 : fail_why(w, "its attributes (step, data cursor, settings, sources) do not match their "
                               "checksum");
    }
    for (int i = 0; i < 3; i++) free(s[i]);
    return rc;
}

/* One stored tensor: float32 [rows, cols], its bytes against its xxh64 attribute. */
static int verify_tensor(hid_t f, const char *path, float **buf, size_t *cap, Why *w) {
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0) return fail_why(w, "tensor '%s' unreadable", path);
    hid_t sp = H5Dget_space(d), t = H5Dget_type(d);
    hsize_t dims[2] = {0, 0};
    int ok = sp >= 0 && t >= 0 && H5Tget_class(t) == H5T_FLOAT && H5Tget_size(t) == 4 &&
             H5Sget_simple_extent_ndims(sp) == 2 && H5Sget_simple_extent_dims(sp, dims, NULL) == 2 &&
             dims[0] > 0 && dims[1] > 0 && dims[0] <= DAM_MAX_SOURCES + 1 && dims[1] < ((hsize_t)1 << 31);
    size_t n = ok ? (size_t)(dims[0] * dims[1]) : 0;
    if (ok && n > *cap) {
        free(*buf);
        *buf = malloc(n * sizeof(float));
        *cap = *buf ? n : 0;
        ok = *buf != NULL;
    }
    uint64_t want = 0;
    ok = ok && H5Dread(d, H5T_IEEE_F32LE, H5S_ALL, H5S_ALL, H5P_DEFAULT, *buf) >= 0;
    int rc = ok ? try_u64(d, "xxh64", &want, w) : fail_why(w, "tensor '%s' unreadable", path);
    if (rc == 0 && dam_xxh64(*buf, n * sizeof(float), 0) != want)
        rc = fail_why(w, "tensor '%s' does not match its checksum", path);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

/* Every tensor of the three groups (the same names in each). */
static int verify_groups(hid_t f, int *n_tensors, Why *w) {
    const char *groups[] = {"coefficients", "adam_m", "adam_v"};
    hsize_t count[3];
    float *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (int g = 0; g < 3 && !rc; g++) {
        hid_t grp = H5Gopen2(f, groups[g], H5P_DEFAULT);
        H5G_info_t info;
        if (grp < 0 || H5Gget_info(grp, &info) < 0) {
            rc = fail_why(w, "group '/%s' unreadable", groups[g]);
        } else {
            count[g] = info.nlinks;
            if (g && count[g] != count[0])
                rc = fail_why(w, "'/%s' holds %llu tensors, '/coefficients' %llu", groups[g],
                              (unsigned long long)count[g], (unsigned long long)count[0]);
            for (hsize_t i = 0; i < info.nlinks && !rc; i++) {
                char name[1024], path[1100];
                ssize_t len = H5Lget_name_by_idx(grp, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                                                 H5P_DEFAULT);
                if (len <= 0 || (size_t)len >= sizeof name) {
                    rc = fail_why(w, "a tensor name in '/%s' is unreadable", groups[g]);
                    break;
                }
                snprintf(path, sizeof path, "/%s/%s", groups[g], name);
                rc = verify_tensor(f, path, &buf, &cap, w);
            }
        }
        if (grp >= 0) H5Gclose(grp);
    }
    free(buf);
    *n_tensors = rc ? 0 : (int)count[0];
    return rc;
}

int ckpt_verify(const char *path, char *why, size_t cap) {
    dam_h5_quiet();
    Why w = {why, cap};
    why[0] = 0;
    if (!dam_file_exists(path)) return fail_why(&w, "no such file");
    htri_t is = H5Fis_hdf5(path);
    hid_t f = is > 0 ? H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT) : -1;
    if (f < 0) return fail_why(&w, "not a readable HDF5 file (truncated or damaged)");
    int64_t ver = 0;
    int rc = try_ints(f, "format_version", &ver, 1, NULL, &w), n = 0;
    if (rc == 0 && (ver < 1 || ver > CKPT_FORMAT_VERSION))
        rc = fail_why(&w, "format_version %lld is not one this dam_dist reads (1 to %d)", (long long)ver,
                      CKPT_FORMAT_VERSION);
    if (rc == 0 && ver < 3) {
        if (H5Aexists(f, "meta_xxh64") > 0)
            rc = fail_why(&w, "format_version %lld, yet it carries checksums (a damaged attribute)",
                          (long long)ver);
        else
            rc = 0, snprintf(why, cap, "format %lld carries no checksums: not verified", (long long)ver);
        H5Fclose(f);
        return rc ? -1 : 0;
    }
    if (rc == 0) rc = verify_meta(f, &w);
    if (rc == 0) rc = verify_groups(f, &n, &w);
    if (rc == 0) snprintf(why, cap, "verified: %d tensors x 3 and the attributes match their xxh64", n);
    H5Fclose(f);
    return rc ? -1 : 1;
}

char *ckpt_find_resumable(const char *dir, int *n_candidates) {
    *n_candidates = 0;
    char *latest_file = dam_path_join(dir, "latest");
    if (!dam_file_exists(latest_file)) {
        free(latest_file);
        return NULL;
    }
    char *name = dam_read_file(latest_file, NULL);
    free(latest_file);
    name[strcspn(name, "\r\n")] = 0;
    int64_t top = step_of_name(name, 0);
    char *first = dam_path_join(dir, name);
    free(name);
    int64_t *steps;
    int n = ckpt_list_steps(dir, &steps);
    char *found = NULL, why[512];
    for (int i = n; i >= 0 && !found; i--) { /* i == n: the file `latest` names */
        if (i < n && top >= 0 && steps[i] >= top) continue;
        char *p = i == n ? dam_strdup(first) : step_path(dir, steps[i]);
        ++*n_candidates;
        int rc = ckpt_verify(p, why, sizeof why);
        if (rc >= 0) {
            if (rc == 0) printf("dam_dist: note: %s: %s\n", p, why);
            if (*n_candidates > 1)
                printf("dam_dist: falling back to %s, the newest earlier checkpoint that verifies\n", p);
            found = p;
        } else {
            dam_warn("checkpoint %s fails verification: %s; it is not used", p, why);
            free(p);
        }
        if (top < 0) break; /* `latest` names no step file: only that one */
    }
    fflush(stdout);
    free(first), free(steps);
    return found;
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

static void get_one(CkptFile *f, const char *group, const char *name, int n_coef_rows, int dim, int col0,
                    int ncols, float *out) {
    char *path = dam_asprintf("/%s/%s", group, name);
    hid_t d = H5Dopen2(f->file, path, H5P_DEFAULT);
    if (d < 0)
        dam_fail("%s: checkpoint has no tensor '%s' (made for other sources or shapes?)", f->path, path);
    hid_t sp = DAM_H5_CHECK(H5Dget_space(d), path);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(sp) != 2 || H5Sget_simple_extent_dims(sp, dims, NULL) != 2 ||
        dims[0] != (hsize_t)n_coef_rows || dims[1] != (hsize_t)dim)
        dam_fail("%s: tensor '%s' is [%llu, %llu] in the checkpoint; this run has [%d, %d]", f->path, path,
                 (unsigned long long)dims[0], (unsigned long long)dims[1], n_coef_rows, dim);
    hsize_t start[2] = {0, (hsize_t)col0}, count[2] = {(hsize_t)n_coef_rows, (hsize_t)ncols};
    DAM_H5_CHECK(H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL), path);
    hid_t mem = DAM_H5_CHECK(H5Screate_simple(2, count, NULL), path);
    DAM_H5_CHECK(H5Dread(d, H5T_NATIVE_FLOAT, mem, sp, H5P_DEFAULT, out), path);
    H5Sclose(mem), H5Sclose(sp), H5Dclose(d);
    free(path);
}

void ckpt_get(CkptFile *f, const char *name, int n_coef_rows, int dim, int col0, int ncols, float *c,
              float *m, float *v) {
    get_one(f, "coefficients", name, n_coef_rows, dim, col0, ncols, c);
    get_one(f, "adam_m", name, n_coef_rows, dim, col0, ncols, m);
    get_one(f, "adam_v", name, n_coef_rows, dim, col0, ncols, v);
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
        ckpt_put(f, x->name, m->n_coef_rows, x->dim, c + x->coef_at, am + x->coef_at, av + x->coef_at);
    }
    free(c), free(am), free(av);
    ckpt_close(f);
    char *final = ckpt_commit(dir, tmp, meta->step, keep);
    free(tmp);
    return final;
}

void ckpt_read_model(CkptFile *f, DamModel *m) {
    char want[1024] = "", *have = read_str(f->file, "sources", f->path);
    for (int i = 0; i < m->n_coef_rows; i++) {
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
        int split = dam_model_split_kind(m, x) == SPLIT_COLS;
        ckpt_get(f, x->name, m->n_coef_rows, split ? x->coef_full : x->dim, split ? x->coef_off : 0, x->dim,
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
