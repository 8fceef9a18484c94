/* safetensors.h — memory-mapped reading and atomic, sharded writing of safetensors files and
 * Hugging Face model directories.
 *
 * Reading never copies tensor data: a tensor's `data` points into the read-only mapping of its
 * file, in its stored dtype. Every header is validated before use (header length within the
 * file, JSON well-formed, known dtype, end - begin == numel * dtype size, offsets inside the data
 * section, no two tensors overlapping); a violation fails with one line naming the file and the
 * tensor. */
#ifndef DAM_SAFETENSORS_H
#define DAM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    dam_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data; /* into the mapping */
    const char *file; /* path of the file holding it (owned by the StFile) */
} StTensor;

typedef struct {
    char *path;
    int fd;
    void *map; /* whole file, PROT_READ, MAP_SHARED */
    size_t map_size;
    int n_tensors;
    StTensor *tensors; /* sorted by name */
} StFile;

/* Open and validate one file. */
void st_open(StFile *f, const char *path);
/* Validate and index a safetensors image already in memory (used by st_open after mmap, and by the
 * fuzz harness). `buf` is borrowed: st_close does not free or unmap it. */
void st_parse_buffer(StFile *f, const char *path, const void *buf, size_t size);
void st_close(StFile *f);
const StTensor *st_find(const StFile *f, const char *name); /* NULL when absent */
/* The string value of `key` in the file's __metadata__, newly allocated; NULL when absent. */
char *st_metadata(const StFile *f, const char *key);

/* A Hugging Face model directory: model.safetensors, or the shards listed in
 * model.safetensors.index.json. A directory holding only pickle checkpoints
 * (pytorch_model*.bin, *.pt, *.pth) is refused with a message saying to convert it. */
typedef struct {
    char *dir;
    int n_files;
    StFile *files;
    int n_tensors;            /* over all files */
    const StTensor **by_name; /* every tensor of every file, sorted by name (st_model_find) */
} StModel;

void st_model_open(StModel *m, const char *dir);
void st_model_close(StModel *m);
const StTensor *st_model_find(const StModel *m, const char *name); /* NULL when absent */
/* Like st_model_find but fails naming the directory and tensor when absent, and when the shape
 * differs from the expected one (ndim entries of shape). */
const StTensor *st_model_get(const StModel *m, const char *name, int ndim, const int64_t *shape);
/* "[a, b, c]" into buf (for messages). */
const char *st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);
/* Total bytes of tensor data in the directory. */
size_t st_model_bytes(const StModel *m);
/* Advise the kernel that the mapped pages of this tensor will not be needed soon (MADV_DONTNEED
 * keeps RSS to what a rank is actually working on). */
void st_tensor_release(const StTensor *t);

/* Writing. A writer collects tensors and writes them in shards of at most shard_bytes each, named
 * model-00001-of-0000N.safetensors (or model.safetensors when one shard suffices, and no index is
 * written then), plus model.safetensors.index.json. Each file is written to "<name>.tmp" and renamed
 * when complete. Tensors are written in the order they are added. The data is copied in, so the
 * caller may free its buffer after st_writer_add returns. */
typedef struct StWriter StWriter;

StWriter *st_writer_new(const char *dir, size_t shard_bytes);
void st_writer_add(StWriter *w, const char *name, dam_dtype dtype, int ndim, const int64_t *shape,
                   const void *data);
/* Convert fp32 data to `dtype` (F32, BF16 or F16) while adding. */
void st_writer_add_f32(StWriter *w, const char *name, dam_dtype dtype, int ndim, const int64_t *shape,
                       const float *data);
/* Write everything (shards, then index.json when more than one shard) and free the writer.
 * `metadata_format` goes into __metadata__ {"format": ...} ("pt" for transformers). */
void st_writer_finish(StWriter *w, const char *metadata_format);

/* Write a single safetensors file atomically (tmp + rename) from n tensors given as arrays. */
void st_write_file(const char *path, int n, const char *const *names, const dam_dtype *dtypes,
                   const int *ndims, const int64_t *const *shapes, const void *const *datas);
/* dam_coefficients.safetensors' __metadata__ entry naming its rows: a JSON array of the sources' names
 * (the base last when merge.include_base), as dam_report.json's "coefficient_rows". */
#define ST_COEF_ROWS_KEY "coefficient_rows"
/* The same with n_meta more __metadata__ entries: meta holds key, value, key, value, ... */
void st_write_file_meta(const char *path, int n, const char *const *names, const dam_dtype *dtypes,
                        const int *ndims, const int64_t *const *shapes, const void *const *datas, int n_meta,
                        const char *const *meta);

#endif
