/* model_internal.h — what the model's own files share, and nothing for its users (model.h):
 * the layouts of the workspace and of a run state, and the functions one step calls across the
 * model's files, grouped by the file that defines them:
 *   model_buffers.c  buffer specs, run states, the views of a run state's layers;
 *   model_layers.c   materialize, the layer forward and backward, the stage's forward and backward;
 *   model_loss.c     the last stage's losses and their backward, shared over the stages;
 *   model_eval_math.c  the tp reductions of the host-side loss math. */
#ifndef DAM_MODEL_INTERNAL_H
#define DAM_MODEL_INTERNAL_H

#include "comm.h"
#include "devcomm.h"
#include "model.h"

/* The device communicators of the model's groups, all made at open (dp's by dam_model_attach_dp);
 * a NULL or single-rank group makes no-ops. */
struct ModelComms {
    DamTransport transport;
    CommGroup tied_group; /* the first and the last stage, for a tied embedding over stages (else size 0) */
    DevComm tp, pp, tied, dp;
};

/* Merged (or one source's) weights of the decoder layer being computed, in the activation dtype. */
typedef struct {
    DevBuf attn_norm, q, k, v, o, qb, kb, vb, ob, mlp_norm, gate, up, down, q_norm, k_norm;
} LayerW;

/* One decoder layer's activations: what its backward reads (rstd1, rstd2, lse, rstd_q and rstd_k are
 * F32, the others in the activation dtype). The workspace holds one set; a run state that keeps
 * activations (DamModel.keep_acts) holds one per layer of the stage, so that the backward skips the
 * recompute. With qk_norm (Qwen3), q and k hold the normed and rotated heads and q_raw, k_raw the
 * projections before the norm with its rstd per token and head; without, those four are empty. */
enum { N_ACT = 17 };
typedef union {
    struct {
        DevBuf xn, rstd1, q, k, v, lse, ao, h1, xn2, rstd2, gate, up, act, q_raw, k_raw, rstd_q, rstd_k;
    };
    DevBuf b[N_ACT];
} LayerAct;

/* Once per rank (owned by the DamModel), shared by every run state: the buffers that one forward
 * or one backward call works in. Nothing in it is needed after the call by another micro-batch,
 * so 1F1B with any number of micro-batches in flight needs one. Sized for the largest run state. */
struct Workspace {
    size_t BT; /* capacity in rows (sequences x tokens) */
    int T;
    LayerW w;
    LayerAct a;
    DevBuf dx, dh1, dxn, dxn2, dq, dk, dv, dao, dgate, dup, dact, dnorm, colsum;
    DevBuf dq_raw, dk_raw; /* qk_norm: the gradient before the q / k norm (else empty) */
    DevBuf dW, final_norm_w, rope_cos, rope_sin;
    DevBuf hid, hid_t;          /* last stage: final-normed hidden of the merged model, of the teachers */
    DevBuf lm_w, lm_t, lm_dW;   /* last stage: [V, d] merged lm_head, teacher lm_head, gradient GEMM */
    DevBuf hc, htc, dhc;        /* last stage: a loss chunk's hidden rows [C, d] */
    DevBuf z, zt, dz;           /* last stage: [C, V] F32 logits and dL/dz */
    DevBuf topk_idx, topk_val;  /* last stage: [C, K] the teacher's top-K (I32, F32) */
    int32_t *ids_local, *valid; /* host: token ids of this rank's vocabulary slice, valid positions */
    int32_t *h_topk_idx;        /* host: a chunk's rows of a precomputed top-K cache, uploaded */
    float *h_topk_val;
    size_t h_topk_cap;
};

/* Per micro-batch in flight: what 1F1B keeps between a micro-batch's forward and its backward. */
struct RunState {
    DamModel *m;
    int B, T;        /* capacity */
    int keep;        /* kept: each layer's activations of the merged forward (no recompute) */
    DevBuf layer_in; /* [(L+1), BT, d] input of each of this stage's layers; [L] = the last output */
    DevBuf grad_out; /* [BT, d] the gradient flowing back; also the backward's send buffer */
    DevBuf dhid;     /* last stage: dL/d(final hidden), from the losses */
    DevBuf rstd_f;   /* last stage: the final norm's rstd of the merged forward (F32) */
    LayerAct kept;   /* keep: [L] of each activation, layer after layer */
    int n_valid[DAM_MAX_SOURCES], skip; /* per segment; skip: an all-padding micro-batch */
};

enum { LOSS_CHUNK = 64 };

/* The DamStep of src/engine/step.h: the loss callbacks read it as the step built it. */
typedef struct DamStep DamStep;

/* ---- model_buffers.c */
/* Layer i's input (i = the stage's layer count: its output) for BT rows: the view the layer reads,
 * and what the pipeline receives or sends. */
DevBuf layer_view(const DamModel *m, const RunState *rs, int i, size_t BT);
/* The activations of layer i of a forward over BT rows: the run state's own for the merged model
 * when it keeps them, else the workspace's (recomputed by the backward). */
LayerAct layer_acts(const DamModel *m, const RunState *rs, int i, size_t BT, int merged);
void workspace_free(DamModel *m);

/* ---- model_layers.c */
/* Materialize t (NULL: nothing) merged (src -1) or as source src stores it into out. */
void materialize_w(DamModel *m, const DamTensor *t, int src, DevBuf out);
/* Every weight of decoder layer l into the workspace's LayerW. */
void materialize_layer(DamModel *m, int l, int src);
/* One decoder layer on the weights in the workspace: x_out = layer(x_in), activations into A. */
void layer_forward(DamModel *m, const LayerAct *A, const DamLayer *L, DevBuf x_in, DevBuf x_out, int B,
                   int T);
/* First stage: the embedding of ids [B, T] into layer view 0 (src: as in materialize_w). */
void embed_forward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T, int src);
/* Last stage: the final norm of the last layer's output into the workspace's hid. */
void final_norm_forward(DamModel *m, RunState *rs, size_t BT, int src);
/* Backward of the merged model through this stage, from rs->dhid (last stage) or the next stage's
 * gradient in rs->grad_out, to rs->grad_out (the previous stage's) or the embedding coefficients. */
void merged_backward(DamModel *m, RunState *rs, const int32_t *ids, int B, int T);
/* Accumulate the coefficient gradient of t (or its fine-tuning weight gradient) from dW = dL/dW. */
void coef_grad(DamModel *m, DamTensor *t, DevBuf dW);
/* Sum a partial result over the tp group (row-parallel outputs, column-parallel input gradients). */
void tp_sum(DamModel *m, DevBuf buf, size_t n);
const DamTensor *lm_tensor(const DamModel *m);
/* The pipeline's device communicator (NULL: one stage). */
DevComm *pp_comm(DamModel *m);

/* ---- model_loss.c */
/* Does micro-batch mb of s need the teachers' forward (their logits)? Not for a KL from a top-K
 * cache alone. */
int step_needs_teacher(const DamStep *s, int mb);
/* The last stage, after the merged forward of micro-batch mb: each segment's losses against its
 * teacher into s->terms; with s->backward also dL/dhid and the lm_head coefficient gradient. */
void micro_batch_losses(const DamStep *s, int mb);
/* The last stage's loss terms (n of them) to every stage. */
void share_losses(const DamModel *m, int n, LossTerms *terms);

/* ---- model_eval_math.c */
/* The loss math's reductions over the tp group (host collectives); use it only with m->tp set. */
LossReduce tp_loss_reduce(const DamModel *m);

#endif
