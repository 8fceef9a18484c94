/* dataset.h — HDF5 token files, one per source model (docs/formats.md).
 *
 *   /input_ids       int32 [n, L]
 *   /attention_mask  int8  [n, L]        optional; all ones when absent
 *   /answer_mask     int8  [n, L]        optional; 1 marks ids[r][t] as an answer token, predicted
 *                                        from position t-1 (t = 0 never is one): `eval`'s exact match
 *   /topk_indices    int32 [n, L, K]     optional teacher cache
 *   /topk_logits     float16|float32 [n, L, K]
 *   attributes on the root group (optional, informative): tokenizer_hash (string, 16 hex digits),
 *   tokenizer_hash_kind (string: "canonical-v1" = tokenizer_canonical_hash of tokenizer.h; absent
 *   in older files, whose tokenizer_hash is FNV-1a of the raw tokenizer.json bytes), vocab_size
 *   (int64), source_file (string), n_examples, n_tokens, n_truncated (int64), ...
 *   checksums: every dataset carries attribute xxh64 (uint64: XXH64, xxh64.h, of its stored
 *   little-endian bytes), and files written by dataset_write the root attribute checksums = "xxh64"
 *   (informative). dataset_open checks every dataset against its
 *   checksum (reading the whole file once; DAM_SKIP_DATA_CHECKSUMS=1 in the environment skips it)
 *   and fails naming the dataset on a mismatch; datasets without a checksum (files written before
 *   checksums, or datasets added by other tools) are read with a note.
 *
 * Files are opened read-only; writers write "<path>.tmp" and rename it into place. */
#ifndef DAM_DATASET_H
#define DAM_DATASET_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *path;
    int64_t hid;     /* hid_t of the open file (kept as int64 so this header needs no hdf5.h) */
    int64_t n_rows;  /* n */
    int64_t seq_len; /* L */
    int has_mask;
    int has_answer;     /* /answer_mask present */
    int topk;           /* K, 0 when no teacher cache */
    int topk_f16;       /* 1 when /topk_logits is float16 */
    int64_t vocab_size; /* from the attribute, -1 when absent */
} DamDataset;

/* Open and validate shapes and types; fails naming the file and dataset. An empty file
 * (n == 0 or L == 0) is an error. */
void dataset_open(DamDataset *d, const char *path);
void dataset_close(DamDataset *d);
/* Read rows [row0, row0 + nrows): ids [nrows*L]; mask [nrows*L] (ones when absent). */
void dataset_read_rows(const DamDataset *d, int64_t row0, int64_t nrows, int32_t *ids, int8_t *mask);
/* Read /answer_mask of rows [row0, row0 + nrows) into answer [nrows*L] (zeros when absent): 1 marks
 * a token predicted from the previous position's logits as part of an answer. */
void dataset_read_answer(const DamDataset *d, int64_t row0, int64_t nrows, int8_t *answer);
/* Read the teacher cache of rows [row0, row0 + nrows): idx and logits [nrows*L*K] (logits as fp32). */
void dataset_read_topk(const DamDataset *d, int64_t row0, int64_t nrows, int32_t *idx, float *logits);
/* A string attribute of the file into out; -1 when it is absent or not a string. */
int dataset_attr_string(const DamDataset *d, const char *key, char *out, size_t cap);
/* Check every id of the file in [0, vocab); fails naming file, row and column of the first bad one. */
void dataset_check_ids(const DamDataset *d, int64_t vocab);

typedef struct {
    const char *key;
    const char *str; /* string attribute when non-NULL */
    int64_t num;     /* else an int64 attribute */
} DatasetAttr;

/* Write a complete token file atomically. mask may be NULL (no /attention_mask written). */
void dataset_write(const char *path, int64_t n_rows, int64_t seq_len, const int32_t *ids, const int8_t *mask,
                   int n_attrs, const DatasetAttr *attrs);
/* Add (or replace) the teacher cache of a whole file: copies the file to "<path>.tmp", writes
 * /topk_indices and /topk_logits (float32) there, and renames it into place. */
void dataset_write_topk(const char *path, int k, const int32_t *idx, const float *logits);
/* Add (or replace) /answer_mask int8 [n, L] (answer[n*L]) of a whole file, the same way. */
void dataset_write_answer(const char *path, const int8_t *answer);

#endif
