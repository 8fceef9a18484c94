/* checkpoint.h — restartable state in HDF5 (docs/formats.md), keyed by tensor name so that a
 * run may resume on another (dp, pp, tp) layout.
 *
 *   <dir>/step_00000120.h5   one file per save, written as .tmp and renamed when complete
 *   <dir>/latest             the name of the newest complete file (replaced atomically after it)
 *
 *   attributes: format_version, step, total_steps, tokens_seen, n_datasets, data_cursor (int64
 *               [n_datasets]), config_hash (hex string), config (the effective settings that shape
 *               the coefficients, JSON: compared key by key on --resume), sources (";"-joined)
 *   No RNG state: nothing random evolves during training (a random init derives from train.seed,
 *   which is in `config`). Format 1 files (with a raw-file config_hash) are still read.
 *   /coefficients/<tensor name>  float32 [n_coef_rows, dim]
 *   /adam_m/<tensor name>, /adam_v/<tensor name>  likewise
 *   Format 3 adds checksums (XXH64, xxh64.h): every tensor dataset carries attribute xxh64 (uint64)
 *   of its stored little-endian bytes, the root attribute meta_xxh64 covers step, total_steps,
 *   tokens_seen, n_datasets, data_cursor, config_hash, config and sources. Formats 1 and 2 carry
 *   none and are read with a note. */
#ifndef DAM_CHECKPOINT_H
#define DAM_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define CKPT_FORMAT_VERSION 3

typedef struct {
    int64_t step, total_steps, tokens_seen, format_version;
    int n_datasets;
    int64_t cursor[DAM_MAX_SOURCES];
    uint64_t config_hash;
    const char *config; /* writing: the caller's; reading: owned by the CkptFile (NULL in format 1) */
    char sources[1024]; /* coefficient row names joined by ';' */
} CkptMeta;

/* Writing, in pieces so that pipeline stages can add their own tensors in turn (serial HDF5 on a
 * shared file system, no gather of the coefficients in one place):
 *   ckpt_create(tmp, meta)            rank 0: the file, its attributes and groups
 *   w = ckpt_append(tmp); ckpt_put(w, ...)...; ckpt_close(w)   each owner of tensors, in turn
 *   ckpt_commit(dir, tmp, step, keep) rank 0: rename into place, update latest, prune old ones */
typedef struct CkptFile CkptFile;

char *ckpt_tmp_path(const char *dir, int64_t step); /* heap string */
void ckpt_create(const char *tmp_path, const CkptMeta *meta);
CkptFile *ckpt_append(const char *tmp_path);
void ckpt_put(CkptFile *f, const char *name, int n_coef_rows, int dim, const float *c, const float *m,
              const float *v);
void ckpt_close(CkptFile *f);
char *ckpt_commit(const char *dir, const char *tmp_path, int64_t step, int keep); /* final path */

/* The steps of the complete checkpoints in dir (files step_<digits>.h5), ascending by number, in a
 * fresh array (*steps; NULL when none); returns their count. */
int ckpt_list_steps(const char *dir, int64_t **steps);
/* Remove all but the `keep` newest complete checkpoints (never the one `latest` names, never the
 * newest one that verifies) and the .tmp files of saves that never completed. keep <= 0 keeps
 * everything. */
void ckpt_prune(const char *dir, int keep);

/* Reading: any rank, any layout. ckpt_get reads columns [col0, col0 + ncols) of the stored
 * [n_coef_rows, dim] arrays (a tensor-parallel shard, or all of them) and fails naming the file and
 * tensor when it is missing or shaped otherwise. */
char *ckpt_latest(const char *dir); /* NULL when there is none */

/* Check a checkpoint file against its checksums, reading every tensor whole; never fails the run.
 * Returns 1 when it verifies, 0 when it is format 1 or 2 (no checksums: readable, not verified),
 * -1 when it is damaged (truncated, unreadable, a tensor or attribute not matching its checksum);
 * why (cap bytes) says which in a few words. */
int ckpt_verify(const char *path, char *why, size_t cap);
/* The checkpoint to resume from: the one `latest` names if it verifies, else the newest earlier one
 * that does (each refused one named in a warning line, the fallback in a line on stdout). NULL
 * when none verifies; *n_candidates: how many were tried (0: no `latest`, nothing to resume). */
char *ckpt_find_resumable(const char *dir, int *n_candidates);
CkptFile *ckpt_open_read(const char *path, CkptMeta *meta);
void ckpt_get(CkptFile *f, const char *name, int n_coef_rows, int dim, int col0, int ncols, float *c,
              float *m, float *v);

/* Every tensor this rank holds (its columns of tensor-parallel splits), from any layout's file; the
 * checkpoint's source names must equal m's row names. */
void ckpt_read_model(CkptFile *f, DamModel *m);

/* The whole model of one process (single-rank runs and tests). */
char *ckpt_save(const char *dir, const DamModel *m, const CkptMeta *meta, int keep);
/* ckpt_open_read + ckpt_read_model + ckpt_close (meta->config is not kept). */
void ckpt_load(const char *path, DamModel *m, CkptMeta *meta);

#endif
