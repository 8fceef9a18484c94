/* model.h — the DAM model: every source's tensors (mapped, stored dtype), the coefficients that
 * merge them, and the transformer forward/backward of the merged model (and of one source, for the
 * teacher) through the backend interface.
 *
 * Memory per rank (docs/memory.md): the stage's source shards (mapped); the coefficients with their
 * gradient and optimizer state; one workspace (the merged weights of the one decoder layer being
 * computed, its activations, tiled attention that keeps only a log-sum-exp per query row, and on
 * the last stage the lm_head and loss-chunk buffers), shared by every micro-batch in flight; per
 * micro-batch in flight a run state holding only what 1F1B keeps between its forward and backward:
 * the input of each of the stage's layers (the backward recomputes a layer from its input), or
 * also every layer's activations when they fit (keep_acts). The forward and backward of one step
 * run from src/engine/step.c; the model's own files share src/engine/model_internal.h. */
#ifndef DAM_MODEL_H
#define DAM_MODEL_H

#include "arch.h"
#include "backend.h"
#include "hfconfig.h"
#include "safetensors.h"
#include "transport.h"

/* The model's groups (mpi/comm.h); model.h itself does not pull in MPI. */
typedef struct CommGroup CommGroup;

#define DAM_MAX_SOURCES 16

/* One mergeable tensor: its N stored versions and their coefficients [n_coef_rows, dim]. */
typedef struct {
    char name[128]; /* the Hugging Face tensor name, e.g. model.layers.0.mlp.up_proj.weight */
    DamTensorKind kind;
    size_t rows, cols; /* stored shape as 2-D; a norm or bias is rows = 1 */
    int dim;           /* coefficient length: cols, or 1 for a bias (one scalar per source) */
    int trainable;
    SrcWeight src[DAM_MAX_SOURCES]; /* on the device (be->upload_source) */
    /* views (F32, n_coef_rows * dim) into the model's coefficient blocks, which start at element coef_at:
     * the host reads and writes them only through dam_model_coef_download/upload of whole blocks */
    size_t coef_at;
    DevBuf c;              /* raw coefficients */
    DevBuf fc;             /* f(c), refreshed by dam_model_refresh */
    DevBuf grad;           /* accumulated Σ W·dW during a step; dL/dc after dam_model_finish_grad */
    DevBuf adam_m, adam_v; /* optimizer state */
    /* tensor parallel: this rank holds coefficient columns [coef_off, coef_off + dim) of coef_full
     * (row-parallel layers), and grad_partial marks gradients that are partial sums over the tp
     * group (column-parallel layers, vocabulary-parallel embedding and lm_head) */
    int coef_off, coef_full, grad_partial;
    /* full fine-tuning (finetune.c): when set (F32, rows * cols), the backward adds the weight
     * gradient dL/dW (the dW that DAM reduces into the coefficient gradient) here instead */
    DevBuf wgrad;
    /* loss.weighted_overlap: F32 [P, dim] pair weights of a linear tensor (pair_weights.h), else null */
    DevBuf wov;
} DamTensor;

typedef struct {
    DamTensor *attn_norm, *q, *k, *v, *o, *q_bias, *k_bias, *v_bias, *o_bias, *mlp_norm, *gate, *up, *down;
    DamTensor *q_norm, *k_norm; /* Qwen3 (ModelConfig.qk_norm); NULL elsewhere */
} DamLayer;

/* The coefficient blocks: every tensor's array of one kind, tensor after tensor (DamTensor.c etc.
 * are views into them), each one F32 device buffer so that one collective or copy moves it. */
typedef enum {
    DAM_COEF_C,
    DAM_COEF_FC,
    DAM_COEF_GRAD,
    DAM_COEF_ADAM_M,
    DAM_COEF_ADAM_V,
    DAM_COEF_BLOCKS
} DamCoefBlock;
typedef struct {
    DevBuf block[DAM_COEF_BLOCKS];
    size_t n; /* floats in each block */
} CoefBlocks;

typedef struct {
    ModelConfig cfg;      /* this rank's share: heads, KV heads, FFN width, vocabulary / tp */
    ModelConfig full_cfg; /* the model as its config.json describes it */
    int tp_rank, tp_size;
    const CommGroup *tp; /* NULL without tensor parallelism */
    int vocab_offset;    /* first vocabulary row of this rank's slice */
    const CommGroup *pp; /* NULL without pipeline stages */
    const CommGroup *dp; /* NULL with one replica (dam_model_attach_dp) */
    int layer0, layer1;  /* decoder layers of this pipeline stage */
    int first, last;     /* this stage holds the embedding / the final norm and lm_head */
    int n_coef_rows;     /* coefficient rows: sources (+ base when include_base); backend.h: n_src */
    char *row_names[DAM_MAX_SOURCES];
    StModel files[DAM_MAX_SOURCES];
    int n_tensors;
    DamTensor *tensors;
    CoefBlocks coef;
    DamLayer *layers;
    DamTensor *embed, *final_norm, *lm_head; /* lm_head NULL when tied */
    Nonlinearity nonlin;
    /* merge.coef_dtype bfloat16: c, f(c) and the gradient after dam_model_finish_grad are bf16
     * values (rounded to nearest even) held in the F32 blocks; bf16_scratch: the rounding's buffer */
    int coef_bf16;
    DevBuf bf16_scratch;
    const Backend *be;
    BackendCtx *ctx;          /* the caller's (be->ctx_new with the local rank); not freed by the model */
    struct ModelComms *comms; /* the groups' device communicators (model_internal.h) */
    DevBuf ones;              /* F32 ones: a teacher's coefficients (one source, weight 1) */
    /* run states made while set keep every layer's activations of the merged forward for its
     * backward, which then does not recompute the layer (dam_model_keep_fits decides) */
    int keep_acts;
    struct Workspace *work; /* buffers of one forward or backward call, once per rank (model.c) */
} DamModel;

/* Pipeline stages: contiguous ranges of decoder layers that minimise the largest stage's cost, the
 * last stage's lm_head and losses counted (dam_head_cost, in the units of dam_layer_cost: flops
 * per token of a step). Stage `stage` of pp holds layers [*layer0, *layer1). Used by the model and
 * by `plan`, so that both split alike. */
void dam_stage_layers(const ModelConfig *c, int pp, int stage, int *layer0, int *layer1);
double dam_layer_cost(const ModelConfig *c);
double dam_head_cost(const ModelConfig *c);

/* Open the sources (dirs[i], i < n), upload them to the device of ctx (be->upload_source: on the CPU
 * a view of the mapping) and build the tensor table. All sources must share the architecture
 * (checked with names in messages). Coefficients start at 1/n. ctx is the caller's
 * (be->ctx_new(local rank)); it must outlive the model. */
void dam_model_open(DamModel *m, int n, const char *const *dirs, const char *const *names, const Backend *be,
                    BackendCtx *ctx);
/* The same, holding this rank's tensor-parallel share over tp and its pipeline stage's layers over pp
 * (NULL or size 1: whole). Activations cross stages by send/recv inside the step functions; the
 * losses are computed on the last stage and broadcast over pp. */
void dam_model_open_parallel(DamModel *m, int n, const char *const *dirs, const char *const *names,
                             const Backend *be, BackendCtx *ctx, const CommGroup *tp, const CommGroup *pp,
                             DamTransport transport);
/* The same, holding this rank's tensor-parallel share over the group tp (NULL or size 1: whole). */
void dam_model_open_tp(DamModel *m, int n, const char *const *dirs, const char *const *names,
                       const Backend *be, BackendCtx *ctx, const CommGroup *tp);
void dam_model_close(DamModel *m);
DamTensor *dam_model_find(DamModel *m, const char *name);
/* fc = f(c) for every tensor (after any change of c). */
void dam_model_refresh(DamModel *m);
/* Every coefficient of the tensors of one kind set to value (merge.bias_init "one": DT_BIAS, 1);
 * f(c) is not refreshed. */
void dam_model_fill_kind(DamModel *m, DamTensorKind kind, float value);
/* Zero the gradient accumulators. */
void dam_model_zero_grad(DamModel *m);
/* The data-parallel group dp (NULL or size 1: one replica) whose replicas' gradients
 * dam_model_reduce_grad sums: builds its device communicator, collective over dp; call it right
 * after opening, on every rank, as the trainer does. */
void dam_model_attach_dp(DamModel *m, const CommGroup *dp);
/* Every gradient reduction of a step, in one place: the whole gradient block summed over the
 * attached data-parallel group (one collective), the tied embedding's two halves over the first
 * and last stage, and the partial sums of column- and vocabulary-parallel tensors over tp. */
void dam_model_reduce_grad(DamModel *m);
/* grad *= f'(c) (turns the reduced Σ W·dW into dL/dc); untrainable tensors get 0. */
void dam_model_finish_grad(DamModel *m);
size_t dam_model_num_coefs(const DamModel *m, int trainable_only);
/* A whole coefficient block (m->coef.n floats) to or from the host; tensor x's entries start at
 * x->coef_at. Uploading DAM_COEF_C does not refresh f(c) (call dam_model_refresh). */
void dam_model_coef_download(const DamModel *m, DamCoefBlock which, float *host);
void dam_model_coef_upload(DamModel *m, DamCoefBlock which, const float *host);
/* A heap copy of a whole block (dam_model_coef_download into a new array; free it). */
float *dam_model_coef_host(const DamModel *m, DamCoefBlock which);

/* What one micro-batch in flight keeps between its forward and backward (the input of each of
 * this stage's layers, its gradient buffer), for batches of up to B sequences of up to T tokens.
 * The model's workspace (the buffers of one forward or backward call, once per rank) grows to the
 * largest run state made. Free run states before the model. */
typedef struct RunState RunState;
RunState *runstate_new(DamModel *m, int B, int T);
void runstate_free(RunState *rs);
/* Whether n_slots run states of B x T that keep their layers' activations (the bytes that adds)
 * fit `budget` bytes; sets m->keep_acts accordingly (budget 0: never). */
int dam_model_keep_fits(DamModel *m, int n_slots, int B, int T, size_t budget);
/* Bytes of the workspace and of one run state, from the config alone: c is this rank's share
 * (heads, FFN width, vocabulary / tp), n_layers its stage's layers, last whether it holds the
 * lm_head and the losses; batches of B sequences (all datasets of a step) of T tokens; act the
 * backend's activation dtype (F32 on the CPU, BF16 on CUDA; the F32 buffers stay F32), wdt that of
 * the materialized GEMM weights (the backend's weight_dtype: act, or BF16 under bf16 CPU GEMMs).
 * With `keep` the run state also holds every layer's activations of the merged forward (see
 * DamModel.keep_acts and dam_model_keep_fits), so that the backward does not recompute them. */
void dam_model_activation_bytes(const ModelConfig *c, int n_layers, int last, int B, int T, dam_dtype act,
                                dam_dtype wdt, int keep, size_t *workspace, size_t *run_state);

/* Loss settings per dataset term. */
typedef struct {
    float temperature;
    int kl;             /* KL term on */
    float mse, entropy; /* λ_mse, λ_ent (0 = off) */
    int topk;           /* 0: full vocabulary KL; K: KL over the teacher's top-K entries */
    int kl_batchmean;   /* loss.kl_reduction "batchmean": KL also divided by the micro-batch's B rows */
} LossParams;

typedef struct {
    double kl, mse, entropy; /* this micro-batch's terms (already divided by n_valid) */
    int64_t n_valid;
} LossTerms;

/* Logits of the merged model (src = -1) or of source `src` on ids [B,T]: logits [B*T, V] on the host
 * (downloaded in chunks of rows; on the last pipeline stage only). */
void dam_model_logits(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src, float *logits);

/* Drop the resident pages of t's source tensors (they are mapped read-only from the files, so
 * the kernel reads them again if needed): keeps RSS to what is being worked on. Weights under
 * fine-tuning (t->wgrad set) are kept. */
void dam_model_release(const DamModel *m, const DamTensor *t);

/* Materialize one merged tensor (rows*cols, in out's dtype) into the device buffer out; src >= 0:
 * that source's tensor as stored (weight 1). */
void dam_model_materialize(DamModel *m, const DamTensor *t, int src, DevBuf out);

/* The K largest logits of each of `rows` rows (global vocabulary ids), from this rank's vocabulary
 * slice of them (as dam_model_logits returns it on the last stage), chosen over the tp group. */
void dam_model_topk(const DamModel *m, const float *logits, int rows, int K, int32_t *idx, float *val);

/* The training loss's KL term summed over `rows` rows of logits as dam_model_logits returns them
 * on the last stage (this rank's vocabulary slice; the tp group combines them): Σ τ²·KL(teacher ‖
 * model) at loss->temperature, over the whole vocabulary, or with loss->topk = K over the teacher's
 * top-K entries (idx/val [rows*K], global ids; NULL: chosen from zt as the training step does).
 * Not divided by anything: the step's KL is this over its valid positions / n_valid (loss.c). */
double dam_model_kl_sum(const DamModel *m, const float *z, const float *zt, const int32_t *idx,
                        const float *val, int rows, const LossParams *loss);
/* log softmax(z[r])[target[r]] (natural log, temperature 1) of each of `rows` rows of logits as
 * dam_model_logits returns them, combined over the tp group; target[r] < 0: 0. */
void dam_model_log_prob(const DamModel *m, const float *z, int rows, const int32_t *target, double *logp);

/* How x is split over tp (SPLIT_NONE without tp): SPLIT_ROWS also for a bias's only axis; SPLIT_COLS
 * splits the coefficients with the weight. */
TensorSplit dam_model_split_kind(const DamModel *m, const DamTensor *x);
/* The whole of a split array from every tp rank's rows x cols piece (heap; a copy without tp). */
float *dam_model_gather_split(const DamModel *m, const float *local, size_t rows, size_t cols,
                              int cols_split);
/* Whether this rank's stage is the owner of x for output and checkpoints (a tied embedding is held
 * by the first and the last stage and owned by the first). */
int dam_model_owns(const DamModel *m, const DamTensor *x);

#endif
