/* config.h — the run configuration (one JSON file; README documents every key). */
#ifndef DAM_CONFIG_H
#define DAM_CONFIG_H

#include <stdint.h>

#include <cJSON.h>

#include "model.h"

typedef enum { OPT_ADAMW = 0, OPT_MOFO = 1 } OptimizerKind;
typedef enum { SCHED_CONSTANT = 0, SCHED_LINEAR = 1, SCHED_COSINE = 2 } ScheduleKind;
typedef enum { INIT_UNIFORM = 0, INIT_FILE = 1, INIT_RANDOM = 2 } InitKind;
/* merge.bias_init: bias coefficients as merge.init sets them, or 1 for every source (the reference) */
typedef enum { BIAS_INIT_INIT = 0, BIAS_INIT_ONE = 1 } BiasInit;
/* train.mofo_scope: MoFO's top-alpha selection over a tensor's whole [N, dim] block, or per source
 * vector c_i (the reference: every source's coefficient vector is its own torch Parameter) */
typedef enum { MOFO_SCOPE_TENSOR = 0, MOFO_SCOPE_SOURCE = 1 } MofoScope;
/* train.mofo_k: how many entries a selection keeps, ceil(alpha·n) (at least 1) or floor(alpha·n)
 * (the reference's int(n·alpha); 0 moves nothing) */
typedef enum { MOFO_K_CEIL = 0, MOFO_K_FLOOR = 1 } MofoK;
/* train.mofo_decay: decoupled weight decay on the selected entries only, or on every entry (the
 * reference decays every entry before the masked update) */
typedef enum { MOFO_DECAY_SELECTED = 0, MOFO_DECAY_ALL = 1 } MofoDecay;

typedef struct {
    char *path;    /* model directory */
    char *dataset; /* HDF5 token file (NULL for the base) */
    char *name;    /* short name for logs (directory basename) */
} SourceSpec;

typedef struct {
    char *file;         /* the config file itself, for messages */
    char *base_model;   /* may be NULL */
    const char *preset; /* "arcee" or NULL: the settings applied before the config's own keys */
    int n_models;
    SourceSpec models[DAM_MAX_SOURCES];
    /* merge */
    int embeddings, norms, include_base;
    Nonlinearity nonlinearity;
    InitKind init;
    char *init_file; /* INIT_FILE: a dam_coefficients.safetensors */
    BiasInit bias_init;
    /* loss */
    LossParams loss; /* temperature, kl, mse, entropy, topk, kl_batchmean */
    float similarity, l1, l2, overlap;
    /* train */
    OptimizerKind optimizer;
    float lr, weight_decay, beta1, beta2, adam_eps;
    double mofo_alpha; /* a double, as the reference's Python float: k = floor(n·alpha) exactly */
    MofoScope mofo_scope;
    MofoK mofo_k;
    MofoDecay mofo_decay;
    ScheduleKind schedule;
    int constant_skips_warmup; /* train.warmup_under_constant false: "constant" ignores the warmup (HF) */
    int warmup, steps, epochs, batch_size, micro_batches, seq_len;
    float max_grad_norm;
    uint64_t seed;
    int shuffle; /* train.shuffle: a seeded order per epoch, shared by the datasets (train.c: data_row) */
    /* parallel */
    int dp, pp, tp;
    const char *device;     /* "cpu" (default) or "cuda": the backend (DAM_BACKEND overrides) */
    DamTransport transport; /* device collectives: auto (NCCL on cuda, else MPI), mpi, nccl */
    /* bytes this rank may spend keeping every layer's activations of the merged forward for the
     * backward (no recompute) when they fit; 0: always recompute */
    size_t keep_activations;
    /* parallel.cpu_matmul "bf16": the CPU backend's GEMM inputs rounded to bf16 (fp32 accumulation) */
    int cpu_matmul_bf16;
    /* checkpoint */
    char *ckpt_dir;
    int ckpt_every, ckpt_keep;
    /* output */
    char *out_dir;
    char *metrics_file; /* JSON lines; default <out_dir>.metrics.jsonl */
    size_t shard_bytes;
    int force;       /* command line --force: replace an output.dir that is not a dam_dist output */
    char *effective; /* the settings that shape the coefficients, as compact JSON (config_effective) */
    uint64_t hash;   /* of `effective`, recorded in checkpoints */
} DamConfig;

/* Parse and validate; relative paths are resolved against the config file's directory. */
void config_load(DamConfig *c, const char *path);
void config_free(DamConfig *c);
/* The settings that shape the learned coefficients, with every default filled in and paths made
 * real: base_model, models (path, dataset, name), merge, loss, train. Not parallel, checkpoint or
 * output: a run may resume on another layout or write elsewhere. A fresh cJSON object. */
cJSON *config_effective(const DamConfig *c);
/* The keys (dotted paths) whose values differ between two effective configs in JSON text, as
 * "key (a -> b)" joined by ", " into out; returns how many differ. */
int config_diff(const char *a, const char *b, char *out, size_t cap);
/* Parse a size like "5GB", "500MB", "1024" (bytes). Returns 0 when malformed. */
size_t config_parse_size(const char *s);

/* The run's backend: `device` ("cpu" or "cuda"; DAM_BACKEND in the environment overrides it, e.g.
 * "guard" for the tests) through backend_by_name. */
const Backend *config_backend(const char *device);
/* This process's rank on its node (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, MPI_LOCALRANKID;
 * else 0): the GPU its backend context takes (be->ctx_new). */
int config_local_rank(void);

#endif
