/* safetensors.c — see safetensors.h.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON, then the data section.
 * Every offset in the header is relative to the data section, so the first byte of tensor data
 * is at 8 + N. The reader never trusts the header: each check below guards a later pointer
 * computation, and each failure names the file and the tensor. */
#include "safetensors.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_util.h"

/* The safetensors library refuses headers above 100 MB; a real 405B model needs well under 1 MB. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

static uint64_t read_u64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void write_u64_le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Every dtype dam_dtype_parse knows is readable (F64 too: fixtures store reference losses in it);
 * the model loader accepts only BF16, F16 and F32 for weights. */
static int parse_stored_dtype(const char *name, dam_dtype *out) { return dam_dtype_parse(name, out); }

/* ---------------------------------------------------------------- header parsing */

/* A JSON number that is a non-negative integer below 2^53 (exactly representable in a double). */
static int json_to_u64(const cJSON *it, uint64_t *out) {
    if (!cJSON_IsNumber(it)) return -1;
    double v = it->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != (double)(uint64_t)v) return -1;
    *out = (uint64_t)v;
    return 0;
}

static void parse_shape(StTensor *t, const cJSON *entry, const char *path) {
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (!cJSON_IsArray(shape)) dam_fail("%s: tensor '%s': 'shape' missing or not an array", path, t->name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > ST_MAX_DIMS)
        dam_fail("%s: tensor '%s': %d dimensions (at most %d)", path, t->name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        uint64_t v;
        if (json_to_u64(d, &v) != 0 || v > INT64_MAX)
            dam_fail("%s: tensor '%s': shape[%d] is not a non-negative integer", path, t->name, i);
        t->shape[i] = (int64_t)v;
        /* overflow guard: numel * v must stay below 2^63 so that numel * dtype size fits too */
        if (v && numel > ((uint64_t)1 << 62) / v) dam_fail("%s: tensor '%s': shape too large", path, t->name);
        numel *= v;
    }
    t->numel = (size_t)numel;
    t->nbytes = t->numel * dam_dtype_size(t->dtype);
}

/* Parse one header entry; begin/end are the validated offsets relative to the data section. */
static void parse_entry(StTensor *t, const cJSON *entry, const char *path, size_t data_size, uint64_t *begin,
                        uint64_t *end) {
    if (!cJSON_IsObject(entry)) dam_fail("%s: tensor '%s': entry is not a JSON object", path, t->name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!cJSON_IsString(dt)) dam_fail("%s: tensor '%s': 'dtype' missing or not a string", path, t->name);
    if (parse_stored_dtype(dt->valuestring, &t->dtype) != 0)
        dam_fail("%s: tensor '%s': unknown dtype '%s' (dam_dist reads F32, F64, BF16, F16, I32, I64, I8, U8)",
                 path, t->name, dt->valuestring);
    parse_shape(t, entry, path);
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_to_u64(off->child, begin) != 0 ||
        json_to_u64(off->child->next, end) != 0)
        dam_fail("%s: tensor '%s': 'data_offsets' must be two non-negative integers [begin, end]", path,
                 t->name);
    if (*end < *begin)
        dam_fail("%s: tensor '%s': data_offsets [%llu, %llu] end before begin", path, t->name,
                 (unsigned long long)*begin, (unsigned long long)*end);
    if (*end - *begin != (uint64_t)t->nbytes)
        dam_fail("%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes; shape and dtype %s need %zu",
                 path, t->name, (unsigned long long)*begin, (unsigned long long)*end,
                 (unsigned long long)(*end - *begin), dam_dtype_name(t->dtype), t->nbytes);
    if (*end > (uint64_t)data_size)
        dam_fail("%s: tensor '%s': data_offsets [%llu, %llu] end past the data section (%zu bytes)", path,
                 t->name, (unsigned long long)*begin, (unsigned long long)*end, data_size);
}

static int tensor_cmp(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

static int tensor_cmp_data(const void *a, const void *b) {
    const StTensor *x = a, *y = b;
    if (x->data != y->data) return (const char *)x->data < (const char *)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Sorting by position makes every overlap show up between neighbours (sorting in place needs no
 * allocation that a refusal could leak). Empty tensors own no bytes. */
static void check_overlaps(StFile *f, const uint8_t *data) {
    qsort(f->tensors, (size_t)f->n_tensors, sizeof(StTensor), tensor_cmp_data);
    const StTensor *prev = NULL;
    for (int i = 0; i < f->n_tensors; i++) {
        const StTensor *t = &f->tensors[i];
        if (t->nbytes == 0) continue;
        if (prev && (const uint8_t *)prev->data + prev->nbytes > (const uint8_t *)t->data) {
            size_t pb = (size_t)((const uint8_t *)prev->data - data),
                   tb = (size_t)((const uint8_t *)t->data - data);
            dam_fail("%s: tensor '%s': data_offsets [%zu, %zu] overlap tensor '%s' [%zu, %zu]", f->path,
                     t->name, tb, tb + t->nbytes, prev->name, pb, pb + prev->nbytes);
        }
        prev = t;
    }
}

static void check_unique_names(const StFile *f) {
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            dam_fail("%s: tensor '%s' listed twice in the header", f->path, f->tensors[i].name);
}

/* Fill f->tensors from the header JSON; `data` is the first byte of the data section. */
static void parse_tensors(StFile *f, const cJSON *root, const uint8_t *data, size_t data_size) {
    int n = 0;
    for (const cJSON *e = root->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0) n++;
    f->tensors = dam_calloc((size_t)(n ? n : 1), sizeof(StTensor), f->path);
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) dam_fail("%s: '__metadata__' is not a JSON object", f->path);
            continue;
        }
        StTensor *t = &f->tensors[f->n_tensors];
        t->name = dam_strdup(e->string);
        t->file = f->path;
        f->n_tensors++; /* counted before validation so that st_close frees the name on every path */
        uint64_t b, end;
        parse_entry(t, e, f->path, data_size, &b, &end);
        t->data = data + b;
    }
    check_overlaps(f, data);
    qsort(f->tensors, (size_t)f->n_tensors, sizeof(StTensor), tensor_cmp);
    check_unique_names(f);
}

void st_parse_buffer(StFile *f, const char *path, const void *buf, size_t size) {
    memset(f, 0, sizeof *f);
    f->path = dam_strdup(path);
    f->fd = -1;
    f->map = (void *)buf;
    f->map_size = size;
    if (size < 8)
        dam_fail("%s: file is %zu bytes; a safetensors file starts with an 8-byte header length", path, size);
    uint64_t n = read_u64_le(buf);
    if (n > size - 8)
        dam_fail("%s: header length %llu runs past the end of the file (%zu bytes)", path,
                 (unsigned long long)n, size);
    if (n > ST_MAX_HEADER || n < 2)
        dam_fail("%s: header length %llu is not plausible (2 to %llu bytes)", path, (unsigned long long)n,
                 (unsigned long long)ST_MAX_HEADER);
    const char *json = (const char *)buf + 8;
    const char *err = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)n, &err, 0);
    if (!root)
        dam_fail("%s: header is not well-formed JSON (near byte %zu of %llu)", path,
                 err ? (size_t)(err - json) + 8 : (size_t)8, (unsigned long long)n);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        dam_fail("%s: header is not a JSON object", path);
    }
    parse_tensors(f, root, (const uint8_t *)buf + 8 + n, size - 8 - (size_t)n);
    cJSON_Delete(root);
}

void st_open(StFile *f, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) dam_fail("%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) dam_fail("%s: cannot stat (%s)", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) dam_fail("%s: not a regular file", path);
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) dam_fail("%s: cannot mmap %zu bytes (%s)", path, size, strerror(errno));
    }
    st_parse_buffer(f, path, map, size);
    f->fd = fd;
}

void st_close(StFile *f) {
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->fd >= 0) {
        if (f->map) munmap(f->map, f->map_size);
        close(f->fd);
    }
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

char *st_metadata(const StFile *f, const char *key) {
    uint64_t n = read_u64_le(f->map); /* st_parse_buffer checked the header's length and JSON */
    cJSON *root = cJSON_ParseWithLength((const char *)f->map + 8, (size_t)n);
    const cJSON *v =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "__metadata__"), key);
    char *out = cJSON_IsString(v) ? dam_strdup(v->valuestring) : NULL;
    cJSON_Delete(root);
    return out;
}

const StTensor *st_find(const StFile *f, const char *name) {
    int lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->tensors[mid].name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

void st_tensor_release(const StTensor *t) {
    if (!t || !t->data || t->nbytes == 0) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)t->data & ~(page - 1);
    uintptr_t hi = ((uintptr_t)t->data + t->nbytes + page - 1) & ~(page - 1);
    /* Pages shared with a neighbouring tensor are dropped too; they are file-backed and read-only,
     * so a later access simply faults them back in from the page cache. */
    madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* ---------------------------------------------------------------- model directories */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int is_pickle_name(const char *name) {
    return (strncmp(name, "pytorch_model", 13) == 0 && ends_with(name, ".bin")) || ends_with(name, ".pt") ||
           ends_with(name, ".pth");
}

/* Called when the directory has neither model.safetensors nor an index: say what is there instead. */
static DAM_NORETURN void fail_no_weights(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) dam_fail("%s: cannot open directory (%s)", dir, strerror(errno));
    char pickle[256] = "";
    int entries = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        entries++;
        if (!pickle[0] && is_pickle_name(e->d_name)) snprintf(pickle, sizeof pickle, "%s", e->d_name);
    }
    closedir(d);
    if (pickle[0])
        dam_fail(
            "%s: only pickle checkpoints (%s); dam_dist reads safetensors only — convert with: python3 -c "
            "\"from transformers import AutoModelForCausalLM as M; "
            "M.from_pretrained('%s').save_pretrained('%s-st')\"",
            dir, pickle, dir, dir);
    if (entries == 0)
        dam_fail("%s: empty directory; expected config.json and model.safetensors (or shards listed in "
                 "model.safetensors.index.json)",
                 dir);
    dam_fail("%s: no model weights (neither model.safetensors nor model.safetensors.index.json)", dir);
}

static int name_cmp_ptr(const void *a, const void *b) {
    return strcmp((*(const StTensor *const *)a)->name, (*(const StTensor *const *)b)->name);
}

/* One name table over all shards, so a lookup is one binary search and duplicates are caught. */
static void build_name_table(StModel *m) {
    int n = 0;
    for (int i = 0; i < m->n_files; i++) n += m->files[i].n_tensors;
    m->by_name = dam_malloc((size_t)(n ? n : 1) * sizeof(StTensor *), "model tensor table");
    m->n_tensors = 0;
    for (int i = 0; i < m->n_files; i++)
        for (int j = 0; j < m->files[i].n_tensors; j++) m->by_name[m->n_tensors++] = &m->files[i].tensors[j];
    qsort(m->by_name, (size_t)m->n_tensors, sizeof *m->by_name, name_cmp_ptr);
    for (int i = 1; i < m->n_tensors; i++)
        if (strcmp(m->by_name[i - 1]->name, m->by_name[i]->name) == 0)
            dam_fail("%s: tensor '%s' is stored in both %s and %s", m->dir, m->by_name[i]->name,
                     m->by_name[i - 1]->file, m->by_name[i]->file);
}

/* A shard name from the index must stay inside the model directory. */
static void check_shard_name(const char *index_path, const char *tensor, const char *file) {
    if (!file[0] || file[0] == '/' || strstr(file, ".."))
        dam_fail("%s: tensor '%s' is mapped to '%s', which is not a file name inside the model directory",
                 index_path, tensor, file);
}

static int find_shard(const StModel *m, const char *path) {
    for (int i = 0; i < m->n_files; i++)
        if (strcmp(m->files[i].path, path) == 0) return i;
    return -1;
}

static void open_indexed(StModel *m, const char *index_path) {
    cJSON *root = json_parse_file(index_path);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) dam_fail("%s: field 'weight_map': expected an object", index_path);
    int n = cJSON_GetArraySize(map);
    if (n == 0) dam_fail("%s: field 'weight_map' is empty", index_path);
    m->files = dam_calloc((size_t)n, sizeof(StFile), index_path); /* at most one shard per entry */
    for (const cJSON *e = map->child; e; e = e->next) {
        if (!cJSON_IsString(e))
            dam_fail("%s: field 'weight_map.%s': expected a string", index_path, e->string);
        check_shard_name(index_path, e->string, e->valuestring);
        char *path = dam_path_join(m->dir, e->valuestring);
        int k = find_shard(m, path);
        if (k < 0) {
            if (!dam_file_exists(path))
                dam_fail("%s: tensor '%s' is mapped to %s, which does not exist", index_path, e->string,
                         path);
            k = m->n_files;
            st_open(&m->files[k], path);
            m->n_files++;
        }
        free(path);
        if (!st_find(&m->files[k], e->string))
            dam_fail("%s: tensor '%s' is mapped to %s, which lacks it", index_path, e->string,
                     m->files[k].path);
    }
    cJSON_Delete(root);
}

void st_model_open(StModel *m, const char *dir) {
    memset(m, 0, sizeof *m);
    if (!dam_is_dir(dir)) {
        struct stat st;
        if (stat(dir, &st) == 0)
            dam_fail("%s: not a directory (expected a Hugging Face model directory)", dir);
        dam_fail("%s: model directory does not exist", dir);
    }
    m->dir = dam_strdup(dir);
    char *index = dam_path_join(dir, "model.safetensors.index.json");
    char *single = dam_path_join(dir, "model.safetensors");
    if (dam_file_exists(index)) {
        open_indexed(m, index);
    } else if (dam_file_exists(single)) {
        m->files = dam_calloc(1, sizeof(StFile), dir);
        st_open(&m->files[0], single);
        m->n_files = 1;
    } else {
        fail_no_weights(dir);
    }
    free(index);
    free(single);
    build_name_table(m);
}

void st_model_close(StModel *m) {
    for (int i = 0; i < m->n_files; i++) st_close(&m->files[i]);
    free(m->files);
    free(m->by_name);
    free(m->dir);
    memset(m, 0, sizeof *m);
}

const StTensor *st_model_find(const StModel *m, const char *name) {
    int lo = 0, hi = m->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->by_name[mid]->name);
        if (c == 0) return m->by_name[mid];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

const StTensor *st_model_get(const StModel *m, const char *name, int ndim, const int64_t *shape) {
    const StTensor *t = st_model_find(m, name);
    if (!t) dam_fail("%s: tensor '%s' is missing", m->dir, name);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[160], want[160];
        dam_fail("%s: tensor '%s' has shape %s; config.json implies %s", t->file, name,
                 st_shape_str(got, sizeof got, t->ndim, t->shape),
                 st_shape_str(want, sizeof want, ndim, shape));
    }
    return t;
}

size_t st_model_bytes(const StModel *m) {
    size_t total = 0;
    for (int i = 0; i < m->n_tensors; i++) total += m->by_name[i]->nbytes;
    return total;
}

/* ---------------------------------------------------------------- writing */

typedef struct {
    char *name;
    dam_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    void *data;
} WEntry;

/* The header JSON for n entries laid out back to back, padded with spaces so that the data
 * section starts 8-byte aligned (what the safetensors library itself writes). */
/* __metadata__: {"format": format} and the n_meta key, value pairs of meta (strings, as the format
 * wants). */
static char *build_header(const WEntry *e, int n, const char *format, int n_meta, const char *const *meta,
                          size_t *len_out) {
    cJSON *root = cJSON_CreateObject();
    if (format || n_meta) {
        cJSON *md = cJSON_AddObjectToObject(root, "__metadata__");
        if (format) cJSON_AddStringToObject(md, "format", format);
        for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(md, meta[2 * i], meta[2 * i + 1]);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *t = cJSON_AddObjectToObject(root, e[i].name);
        cJSON_AddStringToObject(t, "dtype", dam_dtype_name(e[i].dtype));
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e[i].ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e[i].shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + e[i].nbytes)));
        off += e[i].nbytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) dam_fail("out of memory printing a safetensors header");
    size_t len = strlen(json), padded = (len + 7) & ~(size_t)7;
    char *out = dam_malloc(padded + 1, "safetensors header");
    memcpy(out, json, len);
    memset(out + len, ' ', padded - len);
    out[padded] = 0;
    free(json);
    *len_out = padded;
    return out;
}

/* Copy the rest of `from` (rewound) to `to` in bounded chunks. */
static int copy_stream(FILE *to, FILE *from) {
    enum { CHUNK = 1 << 22 };
    char *buf = dam_malloc(CHUNK, "copy buffer");
    rewind(from);
    size_t got;
    int ok = 1;
    while (ok && (got = fread(buf, 1, CHUNK, from)) > 0) ok = fwrite(buf, 1, got, to) == got;
    ok = ok && !ferror(from);
    free(buf);
    return ok;
}

/* Write one safetensors file to exactly `path` (the caller handles tmp + rename): the data comes
 * from each entry's buffer, or, when `spill` is given, from that file (all entries in order). */
static void write_entries(const char *path, const WEntry *e, int n, const char *format, int n_meta,
                          const char *const *meta, FILE *spill) {
    size_t hlen;
    char *header = build_header(e, n, format, n_meta, meta, &hlen);
    FILE *f = fopen(path, "wb");
    if (!f) dam_fail("%s: cannot create (%s)", path, strerror(errno));
    uint8_t len8[8];
    write_u64_le(len8, (uint64_t)hlen);
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(header, 1, hlen, f) == hlen;
    if (spill) ok = ok && copy_stream(f, spill);
    for (int i = 0; ok && !spill && i < n; i++)
        ok = e[i].nbytes == 0 || fwrite(e[i].data, 1, e[i].nbytes, f) == e[i].nbytes;
    ok = (fclose(f) == 0) && ok;
    free(header);
    if (!ok) {
        unlink(path);
        dam_fail("%s: write failed (%s)", path, strerror(errno));
    }
}

static void rename_into_place(const char *tmp, const char *path) {
    if (rename(tmp, path) != 0) dam_fail("%s: cannot rename into place (%s)", path, strerror(errno));
}

static void check_entry(const char *where, const char *name, dam_dtype dtype, int ndim,
                        const int64_t *shape) {
    dam_dtype probe;
    if (!name || !name[0] || strcmp(name, "__metadata__") == 0)
        dam_fail("%s: invalid tensor name '%s'", where, name ? name : "(null)");
    if (parse_stored_dtype(dam_dtype_name(dtype), &probe) != 0)
        dam_fail("%s: tensor '%s': dtype %s cannot be stored", where, name, dam_dtype_name(dtype));
    if (ndim < 0 || ndim > ST_MAX_DIMS) dam_fail("%s: tensor '%s': %d dimensions", where, name, ndim);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0) dam_fail("%s: tensor '%s': negative shape[%d]", where, name, d);
}

static WEntry make_entry(const char *name, dam_dtype dtype, int ndim, const int64_t *shape) {
    WEntry e = {.name = dam_strdup(name), .dtype = dtype, .ndim = ndim};
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= (size_t)(e.shape[d] = shape[d]);
    e.nbytes = numel * dam_dtype_size(dtype);
    return e;
}

void st_write_file(const char *path, int n, const char *const *names, const dam_dtype *dtypes,
                   const int *ndims, const int64_t *const *shapes, const void *const *datas) {
    st_write_file_meta(path, n, names, dtypes, ndims, shapes, datas, 0, NULL);
}

void st_write_file_meta(const char *path, int n, const char *const *names, const dam_dtype *dtypes,
                        const int *ndims, const int64_t *const *shapes, const void *const *datas, int n_meta,
                        const char *const *meta) {
    WEntry *e = dam_calloc((size_t)(n ? n : 1), sizeof(WEntry), path);
    for (int i = 0; i < n; i++) {
        check_entry(path, names[i], dtypes[i], ndims[i], shapes[i]);
        e[i] = make_entry(names[i], dtypes[i], ndims[i], shapes[i]);
        e[i].data = (void *)datas[i]; /* borrowed: written straight from the caller's buffer */
    }
    char *tmp = dam_asprintf("%s.tmp", path);
    write_entries(tmp, e, n, "pt", n_meta, meta, NULL);
    rename_into_place(tmp, path);
    free(tmp);
    for (int i = 0; i < n; i++) free(e[i].name);
    free(e);
}

/* The writer keeps no tensor data in memory: the data of the shard being filled goes to an
 * unlinked spill file in the output directory; it is copied once more when the shard is closed,
 * header first. A full shard is written at once to a
 * numbered temporary file, and the final names (which need the shard count) are given in
 * st_writer_finish by renaming. Memory stays at a few MB even for a 70B model. */
typedef struct {
    char *name;
    size_t nbytes;
    int shard;
} WIndex;

struct StWriter {
    char *dir;
    size_t shard_bytes;
    WEntry *cur; /* tensors of the shard being filled */
    int n_cur, cap_cur;
    size_t cur_bytes;
    int n_shards;  /* shards already written to temporary files */
    WIndex *index; /* every tensor added, for the weight map */
    int n_index, cap_index;
    const char *format;
    FILE *spill; /* data of the shard being filled */
};

StWriter *st_writer_new(const char *dir, size_t shard_bytes) {
    StWriter *w = dam_calloc(1, sizeof *w, "safetensors writer");
    w->dir = dam_strdup(dir);
    w->shard_bytes = shard_bytes ? shard_bytes : 1;
    w->format = "pt";
    dam_mkdir_p(dir);
    return w;
}

/* An unlinked scratch file beside the output (same file system, so no /tmp size limit). */
static FILE *open_spill(const char *dir) {
    char *tmpl = dam_path_join(dir, ".spill-XXXXXX");
    int fd = mkstemp(tmpl);
    if (fd < 0) dam_fail("%s: cannot create a scratch file (%s)", dir, strerror(errno));
    unlink(tmpl);
    free(tmpl);
    FILE *f = fdopen(fd, "w+b");
    if (!f) dam_fail("%s: cannot open a scratch file (%s)", dir, strerror(errno));
    return f;
}

static char *shard_tmp_path(const StWriter *w, int shard) {
    char name[64];
    snprintf(name, sizeof name, "model-%05d.safetensors.tmp", shard + 1);
    return dam_path_join(w->dir, name);
}

static void flush_shard(StWriter *w) {
    if (w->n_cur == 0) return;
    char *tmp = shard_tmp_path(w, w->n_shards);
    write_entries(tmp, w->cur, w->n_cur, w->format, 0, NULL, w->spill);
    free(tmp);
    fclose(w->spill);
    w->spill = NULL;
    for (int i = 0; i < w->n_cur; i++) free(w->cur[i].name);
    w->n_cur = 0;
    w->cur_bytes = 0;
    w->n_shards++;
}

void st_writer_add(StWriter *w, const char *name, dam_dtype dtype, int ndim, const int64_t *shape,
                   const void *data) {
    check_entry(w->dir, name, dtype, ndim, shape);
    WEntry e = make_entry(name, dtype, ndim, shape);
    /* a tensor that does not fit closes the shard; one larger than shard_bytes gets a shard alone */
    if (w->n_cur > 0 && w->cur_bytes + e.nbytes > w->shard_bytes) flush_shard(w);
    if (!w->spill) w->spill = open_spill(w->dir);
    if (e.nbytes && fwrite(data, 1, e.nbytes, w->spill) != e.nbytes)
        dam_fail("%s: writing tensor '%s' failed (%s)", w->dir, name, strerror(errno));
    if (w->n_cur == w->cap_cur) {
        w->cap_cur = w->cap_cur ? 2 * w->cap_cur : 64;
        w->cur = dam_realloc(w->cur, (size_t)w->cap_cur * sizeof(WEntry), "writer shard");
    }
    w->cur[w->n_cur++] = e;
    w->cur_bytes += e.nbytes;
    if (w->n_index == w->cap_index) {
        w->cap_index = w->cap_index ? 2 * w->cap_index : 256;
        w->index = dam_realloc(w->index, (size_t)w->cap_index * sizeof(WIndex), "writer index");
    }
    w->index[w->n_index++] = (WIndex){dam_strdup(name), e.nbytes, w->n_shards};
}

void st_writer_add_f32(StWriter *w, const char *name, dam_dtype dtype, int ndim, const int64_t *shape,
                       const float *data) {
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= (size_t)(shape[d] > 0 ? shape[d] : 0);
    if (dtype == DAM_F32) {
        st_writer_add(w, name, dtype, ndim, shape, data);
        return;
    }
    if (dtype != DAM_BF16 && dtype != DAM_F16)
        dam_fail("%s: tensor '%s': cannot convert float32 to %s", w->dir, name, dam_dtype_name(dtype));
    uint16_t *half = dam_malloc(numel * sizeof(uint16_t), name);
    for (size_t i = 0; i < numel; i++)
        half[i] = dtype == DAM_BF16 ? dam_f32_to_bf16(data[i]) : dam_f32_to_f16(data[i]);
    st_writer_add(w, name, dtype, ndim, shape, half);
    free(half);
}

static void write_index(const StWriter *w, char **final_names) {
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "metadata");
    uint64_t total = 0;
    for (int i = 0; i < w->n_index; i++) total += w->index[i].nbytes;
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    for (int i = 0; i < w->n_index; i++)
        cJSON_AddStringToObject(map, w->index[i].name, final_names[w->index[i].shard]);
    char *json = cJSON_Print(root);
    cJSON_Delete(root);
    char *path = dam_path_join(w->dir, "model.safetensors.index.json");
    dam_write_file_atomic(path, json, strlen(json));
    free(path);
    free(json);
}

/* A stale index next to a fresh single file (or the reverse) would make readers pick the wrong one. */
static void remove_stale(const char *dir, const char *name) {
    char *p = dam_path_join(dir, name);
    if (dam_file_exists(p)) unlink(p);
    free(p);
}

void st_writer_finish(StWriter *w, const char *metadata_format) {
    /* Shards flushed while adding already carry the default "pt" (the only format transformers
     * writes or needs); the argument applies to the shard still in memory. */
    w->format = metadata_format;
    if (w->n_index == 0) dam_fail("%s: no tensors to write", w->dir);
    flush_shard(w);
    int n = w->n_shards;
    char **final_names = dam_calloc((size_t)n, sizeof(char *), "shard names");
    for (int s = 0; s < n; s++) {
        final_names[s] = n == 1 ? dam_strdup("model.safetensors")
                                : dam_asprintf("model-%05d-of-%05d.safetensors", s + 1, n);
        char *tmp = shard_tmp_path(w, s), *path = dam_path_join(w->dir, final_names[s]);
        rename_into_place(tmp, path);
        free(tmp);
        free(path);
    }
    if (n == 1)
        remove_stale(w->dir, "model.safetensors.index.json");
    else {
        remove_stale(w->dir, "model.safetensors");
        write_index(w, final_names);
    }
    for (int s = 0; s < n; s++) free(final_names[s]);
    free(final_names);
    for (int i = 0; i < w->n_index; i++) free(w->index[i].name);
    free(w->index);
    free(w->cur);
    free(w->dir);
    free(w);
}
