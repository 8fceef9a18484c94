/* config.h — the run configuration (one JSON file; README documents every key). */
#ifndef DAM_CONFIG_H
#define DAM_CONFIG_H

#include <stdint.h>

#include <cJSON.h>

#include "dataset.h"
#include "model.h"

typedef enum { OPT_ADAMW = 0, OPT_MOFO = 1 } OptimizerKind;
/* train.schedule: the Hugging Face schedule set (transformers' get_scheduler) */
typedef enum {
    SCHED_CONSTANT = 0,
    SCHED_LINEAR = 1,
    SCHED_COSINE = 2,
    SCHED_CONSTANT_WITH_WARMUP = 3,
    SCHED_COSINE_WITH_RESTARTS = 4,
    SCHED_POLYNOMIAL = 5,
    SCHED_INVERSE_SQRT = 6
} ScheduleKind;
/* merge.init: 1/N, a coefficients file, seeded random per column, or the reference's random init (one
 * softmax of U(0,1) draws per tensor, coefinit.h) */
typedef enum { INIT_UNIFORM = 0, INIT_FILE = 1, INIT_RANDOM = 2, INIT_RANDOM_TENSOR = 3 } InitKind;
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
    char *base_dataset; /* may be NULL: a dataset the base teaches (needs include_base), the last one */
    /* model_config: the sources' family config.json (e.g. configs/models/llama-3-70b.json), which
     * `plan` reads for a source whose own config.json is not there yet; the run ignores it */
    char *model_config;
    const char *preset; /* "arcee" or NULL: the settings applied before the config's own keys */
    int n_models;
    SourceSpec models[DAM_MAX_SOURCES];
    /* merge */
    int embeddings, norms, include_base;
    Nonlinearity nonlinearity;
    InitKind init;
    char *init_file; /* INIT_FILE: a dam_coefficients.safetensors */
    BiasInit bias_init;
    dam_dtype coef_dtype; /* merge.coef_dtype: DAM_F32, or DAM_BF16 (values rounded as the reference's) */
    /* loss */
    LossParams loss; /* temperature, kl, mse, entropy, topk, kl_batchmean */
    float similarity, l1, l2, overlap;
    float weighted_overlap; /* λ of the reference's weighted overlap (pair_weights.h); needs base_model */
    /* loss.reg_biases false: L1, L2 and overlap leave bias coefficients alone (the reference); 0, the
     * default, keeps them in, so that a zeroed DamConfig (tests, tools) has today's behaviour */
    int reg_skip_biases;
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
    double warmup_ratio; /* warmup = ceil(total steps · ratio) when warmup is 0 (Hugging Face's rule) */
    /* train.schedule_args: num_cycles (cosine 0.5, cosine_with_restarts 1), lr_end (1e-7) and power (1)
     * of polynomial, timescale of inverse_sqrt (0: the warmup steps, or 10000 without warmup) */
    double num_cycles, lr_end, power;
    int timescale;
    float max_grad_norm;
    uint64_t seed;
    int shuffle; /* train.shuffle: a seeded order per epoch, shared by the datasets (train.c: data_row) */
    /* parallel */
    int dp, pp, tp;         /* > 0 as given; 0 (the default): chosen for the rank count (layout.h) */
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
    int force;           /* command line --force: replace an output.dir that is not a dam_dist output */
    int out_from_cli;    /* out_dir came from --out (refusals name the flag, not output.dir) */
    const char *command; /* who writes out_dir: "dam_dist train" (NULL), "dam_dist evolve" ... */
    char *effective;     /* the settings that shape the coefficients, as compact JSON (config_effective) */
    uint64_t hash;       /* of `effective`, recorded in checkpoints */
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
/* A float setting as the shortest decimal that reads back as the same float ("0.9", not
 * 0.899999976), as a double: the value the config's text gave. */
double config_decimal(float f);
/* Parse a size like "5GB", "500MB", "1024" (bytes). Returns 0 when malformed. */
size_t config_parse_size(const char *s);

/* Open the n token files paths[k] into data[k] (the sources' models[k].dataset, and a run's
 * base_dataset after them) and check them as a run reads them: ids in the vocabulary of mc, one row
 * length L for all, top-K teacher caches alike and holding at least loss.topk (*topk_cache: the K of
 * the caches read, 0 when the teachers run). Returns the tokens per row used: train.seq_len (0: L),
 * at most L and max_position_embeddings. */
int config_open_datasets(const DamConfig *c, const ModelConfig *mc, int n, const char *const *paths,
                         DamDataset *data, int *topk_cache);

/* The run's backend: `device` ("cpu" or "cuda"; DAM_BACKEND in the environment overrides it, e.g.
 * "guard" for the tests) through backend_by_name. */
const Backend *config_backend(const char *device);
/* The model's coefficient rows: every source's directory and name, then the base ("base") with
 * include_base; returns how many (dirs and names hold DAM_MAX_SOURCES). */
int config_coef_rows(const DamConfig *c, const char **dirs, const char **names);
/* This process's rank on its node (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, MPI_LOCALRANKID;
 * else 0): the GPU its backend context takes (be->ctx_new). */
int config_local_rank(void);
/* be's context on this rank's GPU (config_local_rank), its GEMMs as parallel.cpu_matmul says: every
 * command that runs the model (train, precompute, eval, evolve) makes it here. */
BackendCtx *config_backend_ctx(const DamConfig *c, const Backend *be);

#endif
