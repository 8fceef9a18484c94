/* dataset.c — HDF5 token files (see dataset.h and docs/formats.md).
 *
 * Every HDF5 call goes through DAM_H5_CHECK (h5util.h), so a failure is one line naming the call
 * and the file. Files are opened with default property lists: each rank reads its own rows
 * serially, which is all the training loop needs. */
#include "dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "h5util.h"
#include "util.h"
#include "xxh64.h"

/* ---------------------------------------------------------------- validation helpers */

/* Dimensions of a dataset; fails unless it has exactly `rank` dimensions. */
static void dataset_dims(hid_t ds, const char *path, const char *name, int rank, hsize_t *dims) {
    hid_t space = DAM_H5_CHECK(H5Dget_space(ds), path);
    int r = DAM_H5_CHECK(H5Sget_simple_extent_ndims(space), path);
    if (r != rank) dam_fail("%s: %s has %d dimensions, expected %d", path, name, r, rank);
    DAM_H5_CHECK(H5Sget_simple_extent_dims(space, dims, NULL), path);
    DAM_H5_CHECK(H5Sclose(space), path);
}

/* Fails unless the stored type is of class `cls` with `size` bytes (and signed, for integers). */
static void check_type(hid_t ds, const char *path, const char *name, H5T_class_t cls, size_t size,
                       const char *expected) {
    hid_t t = DAM_H5_CHECK(H5Dget_type(ds), path);
    H5T_class_t c = H5Tget_class(t);
    size_t s = H5Tget_size(t);
    int ok = c == cls && s == size;
    if (ok && cls == H5T_INTEGER) ok = H5Tget_sign(t) == H5T_SGN_2;
    DAM_H5_CHECK(H5Tclose(t), path);
    if (!ok) dam_fail("%s: %s has the wrong element type (expected %s)", path, name, expected);
}

static int link_exists(hid_t file, const char *name, const char *path) {
    return DAM_H5_CHECK(H5Lexists(file, name, H5P_DEFAULT), path) > 0;
}

/* Floating-point class of /topk_logits: returns its size in bytes (2 or 4). */
static size_t logits_size(hid_t ds, const char *path) {
    hid_t t = DAM_H5_CHECK(H5Dget_type(ds), path);
    H5T_class_t c = H5Tget_class(t);
    size_t s = H5Tget_size(t);
    DAM_H5_CHECK(H5Tclose(t), path);
    if (c != H5T_FLOAT || (s != 2 && s != 4))
        dam_fail("%s: /topk_logits has the wrong element type (expected float16 or float32)", path);
    return s;
}

static int64_t read_int_attr(hid_t file, const char *key, const char *path, int64_t def) {
    if (DAM_H5_CHECK(H5Aexists(file, key), path) <= 0) return def;
    hid_t a = DAM_H5_CHECK(H5Aopen(file, key, H5P_DEFAULT), path);
    hid_t t = DAM_H5_CHECK(H5Aget_type(a), path);
    H5T_class_t c = H5Tget_class(t);
    DAM_H5_CHECK(H5Tclose(t), path);
    int64_t v = def;
    if (c == H5T_INTEGER) DAM_H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v), path);
    DAM_H5_CHECK(H5Aclose(a), path);
    return v;
}

int dataset_attr_string(const DamDataset *d, const char *key, char *out, size_t cap) {
    hid_t f = (hid_t)d->hid;
    if (DAM_H5_CHECK(H5Aexists(f, key), d->path) <= 0) return -1;
    hid_t a = DAM_H5_CHECK(H5Aopen(f, key, H5P_DEFAULT), d->path);
    hid_t t = DAM_H5_CHECK(H5Aget_type(a), d->path);
    int rc = -1;
    if (H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t)) {
        size_t n = H5Tget_size(t);
        char *buf = dam_calloc(n + 1, 1, key);
        DAM_H5_CHECK(H5Aread(a, t, buf), d->path);
        snprintf(out, cap, "%s", buf);
        free(buf);
        rc = 0;
    } else if (H5Tget_class(t) == H5T_STRING) {
        char *v = NULL;
        DAM_H5_CHECK(H5Aread(a, t, &v), d->path);
        snprintf(out, cap, "%s", v ? v : "");
        H5free_memory(v);
        rc = 0;
    }
    H5Tclose(t), H5Aclose(a);
    return rc;
}

/* ---------------------------------------------------------------- open / close */

/* An optional int8 [n, L] dataset beside /input_ids (/attention_mask, /answer_mask): 1 when present
 * with that shape and type, 0 when absent; fails naming it otherwise. */
static int open_row_mask(const DamDataset *d, const char *name) {
    hid_t f = (hid_t)d->hid;
    if (!link_exists(f, name, d->path)) return 0;
    char shown[64];
    snprintf(shown, sizeof shown, "/%s", name);
    hsize_t dims[3];
    hid_t m = DAM_H5_CHECK(H5Dopen2(f, name, H5P_DEFAULT), d->path);
    dataset_dims(m, d->path, shown, 2, dims);
    check_type(m, d->path, shown, H5T_INTEGER, 1, "int8");
    DAM_H5_CHECK(H5Dclose(m), d->path);
    if ((int64_t)dims[0] != d->n_rows || (int64_t)dims[1] != d->seq_len)
        dam_fail("%s: %s is [%llu, %llu] but /input_ids is [%lld, %lld]", d->path, shown,
                 (unsigned long long)dims[0], (unsigned long long)dims[1], (long long)d->n_rows,
                 (long long)d->seq_len);
    return 1;
}

/* ---------------------------------------------------------------- checksums */

static int data_checks_skipped(void) {
    const char *e = getenv("DAM_SKIP_DATA_CHECKSUMS");
    return e && *e && strcmp(e, "0");
}

/* The stored bytes of dataset `name` (its rows in blocks of about 4 MiB, read in the file's own
 * type: no conversion) against its xxh64 attribute. Returns 0 when it has none. */
static int verify_one(const DamDataset *d, const char *name) {
    hid_t f = (hid_t)d->hid;
    if (!link_exists(f, name, d->path)) return 1;
    hid_t ds = DAM_H5_CHECK(H5Dopen2(f, name, H5P_DEFAULT), d->path);
    if (DAM_H5_CHECK(H5Aexists(ds, "xxh64"), d->path) <= 0) {
        H5Dclose(ds);
        return 0;
    }
    uint64_t want = 0;
    hid_t a = DAM_H5_CHECK(H5Aopen(ds, "xxh64", H5P_DEFAULT), d->path);
    DAM_H5_CHECK(H5Aread(a, H5T_NATIVE_UINT64, &want), d->path);
    H5Aclose(a);
    hid_t ft = DAM_H5_CHECK(H5Dget_type(ds), d->path), space = DAM_H5_CHECK(H5Dget_space(ds), d->path);
    hsize_t dims[3] = {0, 1, 1};
    int rank = DAM_H5_CHECK(H5Sget_simple_extent_dims(space, dims, NULL), d->path);
    size_t row = H5Tget_size(ft);
    for (int i = 1; i < rank; i++) row *= dims[i];
    hsize_t block = 1 + ((hsize_t)4 << 20) / (row ? row : 1);
    void *buf = dam_malloc(block * row, "dataset checksum");
    DamXxh64 h;
    dam_xxh64_init(&h, 0);
    for (hsize_t r0 = 0; r0 < dims[0]; r0 += block) {
        hsize_t start[3] = {r0, 0, 0},
                count[3] = {dims[0] - r0 < block ? dims[0] - r0 : block, dims[1], dims[2]};
        DAM_H5_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL), d->path);
        hid_t mem = DAM_H5_CHECK(H5Screate_simple(rank, count, NULL), d->path);
        DAM_H5_CHECK(H5Dread(ds, ft, mem, space, H5P_DEFAULT, buf), d->path);
        H5Sclose(mem);
        dam_xxh64_update(&h, buf, count[0] * row);
    }
    free(buf);
    H5Tclose(ft), H5Sclose(space), H5Dclose(ds);
    if (dam_xxh64_digest(&h) != want)
        dam_fail("%s: /%s does not match its checksum: the file is damaged (prepare it again, or copy it "
                 "anew)",
                 d->path, name);
    return 1;
}

/* Every dataset of an open token file against its checksum (dataset.h). */
static void verify_checksums(const DamDataset *d) {
    if (data_checks_skipped()) return;
    static const char *const names[] = {"input_ids", "attention_mask", "answer_mask", "topk_indices",
                                        "topk_logits"};
    char missing[128] = "";
    for (int i = 0; i < 5; i++)
        if (!verify_one(d, names[i])) {
            size_t n = strlen(missing);
            snprintf(missing + n, sizeof missing - n, "%s/%s", n ? ", " : "", names[i]);
        }
    /* on stderr: stdout is the command's own output, which eval --json and inspect --json keep parseable */
    if (missing[0] && dam_log_root()) {
        fprintf(stderr,
                "dam_dist: note: %s: %s carr%s no checksum (written before checksums, or by another tool); "
                "read unverified\n",
                d->path, missing, strchr(missing, ',') ? "y" : "ies");
        fflush(stderr);
    }
}

void dataset_open(DamDataset *d, const char *path) {
    memset(d, 0, sizeof *d);
    dam_h5_quiet();
    if (!dam_file_exists(path)) dam_fail("%s: dataset file not found", path);
    if (H5Fis_hdf5(path) <= 0) dam_fail("%s: not an HDF5 file", path);
    d->path = dam_strdup(path);
    hid_t f = DAM_H5_CHECK(H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), path);
    d->hid = f;
    if (!link_exists(f, "input_ids", path)) dam_fail("%s: no /input_ids dataset", path);

    hid_t ids = DAM_H5_CHECK(H5Dopen2(f, "input_ids", H5P_DEFAULT), path);
    hsize_t dims[3];
    dataset_dims(ids, path, "/input_ids", 2, dims);
    check_type(ids, path, "/input_ids", H5T_INTEGER, 4, "int32");
    DAM_H5_CHECK(H5Dclose(ids), path);
    d->n_rows = (int64_t)dims[0];
    d->seq_len = (int64_t)dims[1];
    if (d->n_rows <= 0 || d->seq_len <= 0)
        dam_fail("%s: empty dataset (/input_ids is [%lld, %lld])", path, (long long)d->n_rows,
                 (long long)d->seq_len);

    d->has_mask = open_row_mask(d, "attention_mask");
    d->has_answer = open_row_mask(d, "answer_mask");

    int has_idx = link_exists(f, "topk_indices", path), has_val = link_exists(f, "topk_logits", path);
    if (has_idx != has_val) dam_fail("%s: /topk_indices and /topk_logits must come together", path);
    if (has_idx) {
        hsize_t di[3], dv[3];
        hid_t a = DAM_H5_CHECK(H5Dopen2(f, "topk_indices", H5P_DEFAULT), path);
        dataset_dims(a, path, "/topk_indices", 3, di);
        check_type(a, path, "/topk_indices", H5T_INTEGER, 4, "int32");
        DAM_H5_CHECK(H5Dclose(a), path);
        hid_t b = DAM_H5_CHECK(H5Dopen2(f, "topk_logits", H5P_DEFAULT), path);
        dataset_dims(b, path, "/topk_logits", 3, dv);
        d->topk_f16 = logits_size(b, path) == 2;
        DAM_H5_CHECK(H5Dclose(b), path);
        if ((int64_t)di[0] != d->n_rows || (int64_t)di[1] != d->seq_len || di[2] == 0 ||
            memcmp(di, dv, sizeof di) != 0)
            dam_fail("%s: teacher cache shapes [%llu, %llu, %llu] / [%llu, %llu, %llu] do not match "
                     "/input_ids [%lld, %lld]",
                     path, (unsigned long long)di[0], (unsigned long long)di[1], (unsigned long long)di[2],
                     (unsigned long long)dv[0], (unsigned long long)dv[1], (unsigned long long)dv[2],
                     (long long)d->n_rows, (long long)d->seq_len);
        d->topk = (int)di[2];
    }
    d->vocab_size = read_int_attr(f, "vocab_size", path, -1);
    verify_checksums(d);
}

void dataset_close(DamDataset *d) {
    if (d->path && d->hid > 0) DAM_H5_CHECK(H5Fclose((hid_t)d->hid), d->path);
    free(d->path);
    memset(d, 0, sizeof *d);
}

/* ---------------------------------------------------------------- reading */

/* Read rows [row0, row0+nrows) of a 2-D or 3-D dataset into buf as mem_type. */
static void read_slab(const DamDataset *d, const char *name, int rank, int64_t row0, int64_t nrows,
                      hid_t mem_type, void *buf) {
    if (row0 < 0 || nrows < 0 || row0 + nrows > d->n_rows)
        dam_fail("%s: rows [%lld, %lld) out of range (the file has %lld rows)", d->path, (long long)row0,
                 (long long)(row0 + nrows), (long long)d->n_rows);
    if (nrows == 0) return;
    hid_t ds = DAM_H5_CHECK(H5Dopen2((hid_t)d->hid, name, H5P_DEFAULT), d->path);
    hid_t space = DAM_H5_CHECK(H5Dget_space(ds), d->path);
    hsize_t start[3] = {(hsize_t)row0, 0, 0};
    hsize_t count[3] = {(hsize_t)nrows, (hsize_t)d->seq_len, (hsize_t)d->topk};
    DAM_H5_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL), d->path);
    hid_t mem = DAM_H5_CHECK(H5Screate_simple(rank, count, NULL), d->path);
    DAM_H5_CHECK(H5Dread(ds, mem_type, mem, space, H5P_DEFAULT, buf), d->path);
    DAM_H5_CHECK(H5Sclose(mem), d->path);
    DAM_H5_CHECK(H5Sclose(space), d->path);
    DAM_H5_CHECK(H5Dclose(ds), d->path);
}

void dataset_read_rows(const DamDataset *d, int64_t row0, int64_t nrows, int32_t *ids, int8_t *mask) {
    read_slab(d, "input_ids", 2, row0, nrows, H5T_NATIVE_INT32, ids);
    if (!mask) return;
    if (d->has_mask)
        read_slab(d, "attention_mask", 2, row0, nrows, H5T_NATIVE_INT8, mask);
    else
        memset(mask, 1, (size_t)(nrows * d->seq_len));
}

void dataset_read_answer(const DamDataset *d, int64_t row0, int64_t nrows, int8_t *answer) {
    if (d->has_answer)
        read_slab(d, "answer_mask", 2, row0, nrows, H5T_NATIVE_INT8, answer);
    else
        memset(answer, 0, (size_t)(nrows * d->seq_len));
}

void dataset_read_topk(const DamDataset *d, int64_t row0, int64_t nrows, int32_t *idx, float *logits) {
    if (d->topk <= 0) dam_fail("%s: no teacher cache (/topk_indices) in this file", d->path);
    read_slab(d, "topk_indices", 3, row0, nrows, H5T_NATIVE_INT32, idx);
    /* HDF5 converts float16 to float32 on read */
    read_slab(d, "topk_logits", 3, row0, nrows, H5T_NATIVE_FLOAT, logits);
}

void dataset_check_ids(const DamDataset *d, int64_t vocab) {
    int64_t L = d->seq_len, block = 1 + (1 << 20) / L; /* about 4 MiB of ids at a time */
    int32_t *ids = dam_malloc((size_t)(block * L) * sizeof *ids, "dataset id check");
    for (int64_t r0 = 0; r0 < d->n_rows; r0 += block) {
        int64_t nr = d->n_rows - r0 < block ? d->n_rows - r0 : block;
        dataset_read_rows(d, r0, nr, ids, NULL);
        for (int64_t i = 0; i < nr * L; i++)
            if (ids[i] < 0 || ids[i] >= vocab)
                dam_fail("%s: token id %d at row %lld, column %lld is outside the vocabulary [0, %lld)",
                         d->path, ids[i], (long long)(r0 + i / L), (long long)(i % L), (long long)vocab);
    }
    free(ids);
}

/* ---------------------------------------------------------------- writing */

static void write_array(hid_t f, const char *name, int rank, const hsize_t *dims, hid_t file_type,
                        hid_t mem_type, const void *data, const char *path) {
    hid_t space = DAM_H5_CHECK(H5Screate_simple(rank, dims, NULL), path);
    hid_t ds =
        DAM_H5_CHECK(H5Dcreate2(f, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path);
    DAM_H5_CHECK(H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path);
    /* the checksum of the stored (little-endian) bytes, which equal the native ones here */
    size_t bytes = H5Tget_size(mem_type);
    for (int i = 0; i < rank; i++) bytes *= dims[i];
    uint64_t h = dam_xxh64(data, bytes, 0);
    hid_t sp1 = DAM_H5_CHECK(H5Screate(H5S_SCALAR), path);
    hid_t at = DAM_H5_CHECK(H5Acreate2(ds, "xxh64", H5T_STD_U64LE, sp1, H5P_DEFAULT, H5P_DEFAULT), path);
    DAM_H5_CHECK(H5Awrite(at, H5T_NATIVE_UINT64, &h), path);
    H5Aclose(at), H5Sclose(sp1);
    DAM_H5_CHECK(H5Dclose(ds), path);
    DAM_H5_CHECK(H5Sclose(space), path);
}

static void write_attr(hid_t f, const DatasetAttr *a, const char *path) {
    if (DAM_H5_CHECK(H5Aexists(f, a->key), path) > 0) DAM_H5_CHECK(H5Adelete(f, a->key), path);
    hid_t space = DAM_H5_CHECK(H5Screate(H5S_SCALAR), path);
    hid_t type;
    const void *value;
    if (a->str) {
        /* fixed-length, NUL-terminated: h5dump and h5py read it without surprises */
        type = DAM_H5_CHECK(H5Tcopy(H5T_C_S1), path);
        DAM_H5_CHECK(H5Tset_size(type, strlen(a->str) + 1), path);
        DAM_H5_CHECK(H5Tset_strpad(type, H5T_STR_NULLTERM), path);
        value = a->str;
    } else {
        type = DAM_H5_CHECK(H5Tcopy(H5T_STD_I64LE), path);
        value = &a->num;
    }
    hid_t at = DAM_H5_CHECK(H5Acreate2(f, a->key, type, space, H5P_DEFAULT, H5P_DEFAULT), path);
    hid_t mem = a->str ? type : H5T_NATIVE_INT64;
    DAM_H5_CHECK(H5Awrite(at, mem, value), path);
    DAM_H5_CHECK(H5Aclose(at), path);
    DAM_H5_CHECK(H5Tclose(type), path);
    DAM_H5_CHECK(H5Sclose(space), path);
}

static void rename_into_place(const char *tmp, const char *path) {
    if (rename(tmp, path) != 0) {
        remove(tmp);
        dam_fail("%s: cannot rename %s into place", path, tmp);
    }
}

void dataset_write(const char *path, int64_t n_rows, int64_t seq_len, const int32_t *ids, const int8_t *mask,
                   int n_attrs, const DatasetAttr *attrs) {
    if (n_rows <= 0 || seq_len <= 0)
        dam_fail("%s: refusing to write an empty dataset (%lld rows of %lld tokens)", path, (long long)n_rows,
                 (long long)seq_len);
    dam_h5_quiet();
    char *tmp = dam_asprintf("%s.tmp", path);
    hid_t f = DAM_H5_CHECK(H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), tmp);
    hsize_t dims[2] = {(hsize_t)n_rows, (hsize_t)seq_len};
    write_array(f, "input_ids", 2, dims, H5T_STD_I32LE, H5T_NATIVE_INT32, ids, tmp);
    if (mask) write_array(f, "attention_mask", 2, dims, H5T_STD_I8LE, H5T_NATIVE_INT8, mask, tmp);
    for (int i = 0; i < n_attrs; i++) write_attr(f, &attrs[i], tmp);
    DatasetAttr marker = {"checksums", "xxh64", 0};
    write_attr(f, &marker, tmp);
    DAM_H5_CHECK(H5Fclose(f), tmp);
    rename_into_place(tmp, path);
    free(tmp);
}

/* A copy of the token file `path` as "<path>.tmp" (heap name in *tmp), opened for writing, without
 * the datasets `names` (about to be written again); n and L of the file (validated by dataset_open)
 * in dims[0], dims[1]. */
static hid_t open_copy(const char *path, const char *const *names, int n_names, hsize_t *dims, char **tmp) {
    DamDataset d;
    dataset_open(&d, path);
    dims[0] = (hsize_t)d.n_rows, dims[1] = (hsize_t)d.seq_len;
    dataset_close(&d);
    size_t bytes;
    char *data = dam_read_file(path, &bytes);
    *tmp = dam_asprintf("%s.tmp", path);
    FILE *out = fopen(*tmp, "wb");
    if (!out || fwrite(data, 1, bytes, out) != bytes || fclose(out) != 0) {
        remove(*tmp);
        dam_fail("%s: cannot write %s", path, *tmp);
    }
    free(data);
    hid_t f = DAM_H5_CHECK(H5Fopen(*tmp, H5F_ACC_RDWR, H5P_DEFAULT), *tmp);
    for (int i = 0; i < n_names; i++)
        if (link_exists(f, names[i], *tmp)) DAM_H5_CHECK(H5Ldelete(f, names[i], H5P_DEFAULT), *tmp);
    return f;
}

void dataset_write_topk(const char *path, int k, const int32_t *idx, const float *logits) {
    if (k <= 0) dam_fail("%s: teacher cache needs k > 0 (got %d)", path, k);
    const char *names[] = {"topk_indices", "topk_logits"};
    hsize_t dims[3];
    char *tmp;
    hid_t f = open_copy(path, names, 2, dims, &tmp);
    dims[2] = (hsize_t)k;
    write_array(f, "topk_indices", 3, dims, H5T_STD_I32LE, H5T_NATIVE_INT32, idx, tmp);
    write_array(f, "topk_logits", 3, dims, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, logits, tmp);
    DAM_H5_CHECK(H5Fclose(f), tmp);
    rename_into_place(tmp, path);
    free(tmp);
}

void dataset_write_answer(const char *path, const int8_t *answer) {
    const char *names[] = {"answer_mask"};
    hsize_t dims[3];
    char *tmp;
    hid_t f = open_copy(path, names, 1, dims, &tmp);
    write_array(f, "answer_mask", 2, dims, H5T_STD_I8LE, H5T_NATIVE_INT8, answer, tmp);
    DAM_H5_CHECK(H5Fclose(f), tmp);
    rename_into_place(tmp, path);
    free(tmp);
}
