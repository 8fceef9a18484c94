/* backend.h — the device contract: everything the model, the losses and the optimizer compute goes
 * through these calls, so that one driver runs on the CPU (backend_cpu.c, the reference and CI path),
 * under the guard backend (backend_guard.c: the CPU backend with every buffer inaccessible outside a
 * call, proving that no host code touches a device buffer) and on CUDA (cuda/backend_cuda.cu).
 *
 * Rules of the contract
 *  - Every call takes the rank's BackendCtx first (on the GPU: the device, one stream, the cuBLAS
 *    handle, scratch). Calls are ordered on that stream; results a call returns to the host (sums,
 *    norms, a threshold) are complete when it returns (the backend synchronises for them).
 *  - A DevBuf is device memory of one dtype (DAM_F32, DAM_BF16 or DAM_I32) on one device. Host code
 *    never dereferences DevBuf.ptr: it makes views (devbuf_at, devbuf_slice) and passes them.
 *    Activations and the workspace are in be->act_dtype (CPU: F32; CUDA: BF16); coefficients, f(c),
 *    their gradients and the optimizer state are always F32; logits and dL/dz are F32.
 *  - Host arrays appear only as small index lists (token ids, valid positions: the backend copies
 *    them in) and small host results (LossSums, Gram matrices, norms).
 *  - Source weights are uploaded once per run (upload_source); on the CPU that is a view of the
 *    mmapped file, on the GPU a device copy in the stored dtype (bf16).
 *  - Between a step's first and last call a backend never waits for its device as a whole: no
 *    cudaFree, cudaMallocHost, cudaFreeHost or cudaDeviceSynchronize (each waits for every stream of
 *    the device). The pipeline's sends are in flight on other streams, and NCCL's send completes
 *    only once the peer receives; a device-wide wait turns it into a blocking send, and two stages
 *    waiting so for each other deadlock. Buffers and scratch are allocated and freed stream-ordered
 *    (cudaMallocAsync / cudaFreeAsync), pinned buffers never grow mid-run; waits for the stream poll
 *    the transport's watchers (an NCCL error or time-out ends the run with a line). The CUDA
 *    emulation (cuda/emu) makes a device-wide wait with a send in flight a deadlock that it names.
 *  - Arguments are checked once, by the table backend_by_name (and backend_cpu, backend_guard,
 *    backend_cuda) hands out: a front (src/engine/backend_api.c) whose every entry validates sizes,
 *    dtypes, devices, index lists and shapes, failing with one line that names the op and the
 *    argument, the same on every backend, before it calls the backend's own table
 *    (src/engine/backend_impl.h: what an implementation may rely on). Every entry of that table is set.
 *  - Optional for an implementer (NULL in its own table; the front supplies the default):
 *    set_gemm_inputs (default: one GEMM precision, the request is ignored) and weight_dtype
 *    (default: act_dtype). Every other entry is required.
 * Shapes follow PyTorch: a linear weight is W[out, in], activations x[T, in] row-major. */
#ifndef DAM_BACKEND_H
#define DAM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "loss.h"
#include "util.h"

typedef enum { DAM_DEVICE_CPU = 0, DAM_DEVICE_CUDA = 1 } DamDevice;

/* Device memory: n elements of dtype at ptr (a view may start inside an allocation). */
typedef struct {
    void *ptr;
    size_t n;
    dam_dtype dtype;
    DamDevice device;
} DevBuf;

/* Elements [off, off + n) of b (bounds checked: fails naming the buffer sizes). */
DevBuf devbuf_slice(DevBuf b, size_t off, size_t n);
/* Elements [off, end) of b. */
DevBuf devbuf_at(DevBuf b, size_t off);
static inline int devbuf_null(DevBuf b) { return b.ptr == NULL; }

/* One source's stored tensor (or a tensor-parallel slice of it) on the device: row r starts at
 * element r*ld of w (ld = cols when rows are contiguous). w.dtype is the stored dtype. */
typedef struct {
    DevBuf w;
    size_t ld;
} SrcWeight;

typedef enum { NONLIN_NONE = 0, NONLIN_TANH = 1, NONLIN_SIGMOID = 2, NONLIN_RELU = 3 } Nonlinearity;

/* Attention shape of one call: B sequences of T tokens, H query heads, KV key/value heads. */
typedef struct {
    int B, T, H, KV, hd;
    int window;  /* sliding window (keys j with i - j < window), 0 = full causal */
    float scale; /* 1/sqrt(hd) */
} AttnShape;

/* AdamW / MoFO-AdamW update of n entries (one tensor's coefficients): t is the 1-based step;
 * mofo_threshold < 0 updates every entry, else only entries with |m| >= mofo_threshold (after the
 * moment update; the backend's mofo_threshold call computes it). mofo_alpha > 0 (MoFO as the
 * trainer runs it): the backend computes that threshold itself from the updated moments,
 * mofo_threshold(m, n, mofo_alpha), and mofo_threshold is ignored. */
/* merge.coef_dtype bfloat16: the update as torch runs it on bf16 tensors (the reference loads its
 * models in bf16, so its coefficients, grads and Adam moments are bf16): c, g, m, v are bf16 values
 * held in F32 (each read rounded to nearest even, so an F32 value from a scale or a regularizer
 * enters as torch's bf16 tensor would hold it) and every elementwise op's result is rounded, in the
 * order of torch.optim.AdamW's single-tensor path (mode ADAM_BF16_ADAMW: decay, lerp_, mul_ and
 * addcmul_, sqrt / div / add eps, addcdiv_) or of the reference's MoFOAdamW, dam/optimizer.py
 * (ADAM_BF16_MOFO: decay, mul_ and add_ with alpha, ..., div, add_ with alpha); src/engine/adam_bf16.h.
 * The scalars are formed on the host as Python forms them, from the config's decimal values. */
typedef enum { ADAM_F32 = 0, ADAM_BF16_ADAMW = 1, ADAM_BF16_MOFO = 2 } AdamRounding;
typedef struct {
    AdamRounding mode;
    float decay; /* (float)(1 − lr·wd) on every entry that moves (1: none, or decayed before) */
    float b1, w1; /* (float)β1; ADAMW: lerp_'s weight (float)(1 − β1); MOFO: add_'s alpha bf16(1 − β1) */
    float b2, w2;   /* (float)β2, addcmul_'s value (float)(1 − β2) */
    float sqrt_bc2; /* (float)sqrt(1 − β2^t) */
    float eps;      /* (float)eps */
    float step;     /* −lr/(1 − β1^t): ADAMW (float) (addcdiv_'s value); MOFO bf16 (add_'s alpha) */
} AdamBf16;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    int t;
    float mofo_threshold;
    float mofo_alpha;
    AdamBf16 bf16; /* mode ADAM_F32 (zero): the fp32 update from the fields above */
} AdamParams;

typedef struct BackendCtx BackendCtx;
typedef struct BackendEvent BackendEvent;

typedef struct Backend {
    const char *name; /* "cpu", "guard", "cuda" */
    DamDevice device;
    dam_dtype act_dtype; /* activations and workspace */

    /* ---- context, memory, transfers, events */
    /* device_index: the GPU of this rank (local rank modulo the visible devices); ignored on the CPU */
    BackendCtx *(*ctx_new)(int device_index);
    void (*ctx_free)(BackendCtx *ctx);
    DevBuf (*alloc)(BackendCtx *ctx, size_t n, dam_dtype dtype, const char *what); /* zeroed */
    void (*free)(BackendCtx *ctx, DevBuf *b);                                      /* sets b->ptr NULL */
    /* A source tensor as stored (rows x cols, row r at host + r*ld elements) onto the device, once
     * per run; CPU: a view of the mapping, no copy. */
    SrcWeight (*upload_source)(BackendCtx *ctx, const void *host, dam_dtype dtype, size_t rows, size_t cols,
                               size_t ld, const char *what);
    void (*free_source)(BackendCtx *ctx, SrcWeight *s);
    /* Drop what is resident of a source that was just used (CPU: madvise the mapping's pages; else a no-op).
     */
    void (*release_source)(BackendCtx *ctx, const SrcWeight *s, size_t rows, size_t cols);
    /* host[n] (host_dtype: F32, BF16 or I32) into dst, converting to dst.dtype; and back. */
    void (*upload)(BackendCtx *ctx, DevBuf dst, const void *host, dam_dtype host_dtype, size_t n);
    void (*download)(BackendCtx *ctx, void *host, dam_dtype host_dtype, DevBuf src, size_t n);
    /* same dtype (the ranges may overlap: memmove's semantics), or F32<->BF16 (they may not) */
    void (*copy)(BackendCtx *ctx, DevBuf dst, DevBuf src, size_t n);
    void (*fill)(BackendCtx *ctx, DevBuf dst, float value, size_t n); /* fill 0 = memset */
    void (*synchronize)(BackendCtx *ctx);
    BackendEvent *(*event_new)(BackendCtx *ctx);
    void (*event_free)(BackendCtx *ctx, BackendEvent *e);
    void (*event_record)(BackendCtx *ctx, BackendEvent *e);
    double (*event_elapsed)(BackendCtx *ctx, BackendEvent *start,
                            BackendEvent *end); /* seconds, synchronises */
    /* Communication on device buffers (mpi/devcomm.c): a host pointer to b's memory for MPI while
     * the caller holds it (CPU, guard: the memory itself, made accessible until host_end), or NULL
     * when the memory is not host-addressable (CUDA: NCCL or host staging is used instead). */
    void *(*host_begin)(BackendCtx *ctx, DevBuf b);
    void (*host_end)(BackendCtx *ctx, DevBuf b);

    /* ---- GEMMs: fp32 accumulation; inputs and outputs in their buffers' dtypes */
    /* y[T,out] = x[T,in] · W[out,in]ᵀ (+ y when accumulate) */
    void (*matmul_xwt)(BackendCtx *ctx, DevBuf y, DevBuf x, DevBuf w, int T, int in, int out, int accumulate);
    /* dx[T,in] = dy[T,out] · W[out,in] (+ dx when accumulate) */
    void (*matmul_dyw)(BackendCtx *ctx, DevBuf dx, DevBuf dy, DevBuf w, int T, int in, int out,
                       int accumulate);
    /* G[out,in] = dy[T,out]ᵀ · x[T,in] (+ G when accumulate): the weight-gradient GEMM */
    void (*matmul_dytx)(BackendCtx *ctx, DevBuf g, DevBuf dy, DevBuf x, int T, int in, int out,
                        int accumulate);
    /* The three GEMMs' input precision (parallel.cpu_matmul): DAM_F32 (the default), or DAM_BF16:
     * inputs rounded to bf16, products accumulated in fp32 (CPU: oneDNN on AVX512-BF16/AMX; fails
     * when built without it). Optional: a backend with one precision (CUDA: bf16 always) leaves it
     * NULL, and the front ignores the request. */
    void (*set_gemm_inputs)(BackendCtx *ctx, dam_dtype dtype);
    /* The dtype the driver materializes GEMM weights in (the merged and teacher linear weights and
     * lm_head): BF16 when the GEMMs round their inputs to bf16 anyway (the merge then writes the
     * operand once, in half the bytes), else F32. Optional: NULL gives act_dtype (the front). */
    dam_dtype (*weight_dtype)(BackendCtx *ctx);

    /* ---- DAM */
    /* merged[r, j] = Σ_i fc[i*cols + j] · W_i[r, j] for r < rows (a norm is rows = 1); with
     * scalar_coef (biases, and a teacher's single source with fc = ones) fc[i] for the whole tensor. */
    void (*dam_materialize)(BackendCtx *ctx, DevBuf merged, const SrcWeight *src, int n_src, DevBuf fc,
                            size_t rows, size_t cols, int scalar_coef);
    /* acc[i*cols + j] += Σ_r W_i[r, j] · G[r, j]  (scalar_coef: acc[i] += Σ_{r,j} W_i[r,j]·G[r,j]). */
    void (*dam_coef_grad)(BackendCtx *ctx, DevBuf acc, const SrcWeight *src, int n_src, DevBuf g, size_t rows,
                          size_t cols, int scalar_coef);
    /* out[t, j] = Σ_i fc[i, j] · E_i[ids[t], j]; ids is a host array of T ids, a negative id (another
     * tensor-parallel rank's vocabulary) gives a zero row. */
    void (*dam_embed_gather)(BackendCtx *ctx, DevBuf out, const SrcWeight *src, int n_src, DevBuf fc,
                             const int32_t *ids, int T, int d);
    /* acc[i, j] += Σ_t E_i[ids[t], j] · dh[t, j] (negative ids skipped) */
    void (*dam_embed_coef_grad)(BackendCtx *ctx, DevBuf acc, const SrcWeight *src, int n_src, DevBuf dh,
                                const int32_t *ids, int T, int d);
    /* Full fine-tuning (`finetune`): the embedding's weight gradient, acc[ids[t], j] += dh[t, j] for
     * t < T, j < d (acc F32 [rows, d]; ids a host array, negative ids skipped). */
    void (*embed_grad)(BackendCtx *ctx, DevBuf acc, DevBuf dh, const int32_t *ids, int T, int d);

    /* ---- transformer */
    /* out = x̂ ⊙ w with x̂ = x·rstd, rstd[t] = 1/sqrt(mean(x[t]²) + eps) (rstd F32, saved). */
    void (*rmsnorm_fwd)(BackendCtx *ctx, DevBuf out, DevBuf rstd, DevBuf x, DevBuf w, int T, int d,
                        float eps);
    /* dx (+)= rstd·(dx̂ − x̂·mean(dx̂ ⊙ x̂)), dx̂ = dout ⊙ w; dw[j] += Σ_t dout[t,j]·x̂[t,j] (dw F32). */
    void (*rmsnorm_bwd)(BackendCtx *ctx, DevBuf dx, DevBuf dw, DevBuf dout, DevBuf x, DevBuf rstd, DevBuf w,
                        int T, int d, int accumulate_dx);
    /* Rotate heads in place (HF rotate_half layout) for positions t mod T; cos/sin [T, hd/2] F32;
     * inverse applies the transpose (the backward). */
    void (*rope)(BackendCtx *ctx, DevBuf x, DevBuf cos, DevBuf sin, int BT, int T, int heads, int hd,
                 int inverse);
    /* Causal (optionally sliding-window) attention, tiled (flash-style): only the log-sum-exp of each
     * query row, lse [B,H,T] F32, is kept for the backward; memory linear in T (scratch is the
     * backend's own). */
    void (*attention_fwd)(BackendCtx *ctx, DevBuf out, DevBuf lse, DevBuf q, DevBuf k, DevBuf v,
                          const AttnShape *s);
    /* dq, dk, dv overwritten; probabilities recomputed from q, k and lse; out gives Σ dout·out. */
    void (*attention_bwd)(BackendCtx *ctx, DevBuf dq, DevBuf dk, DevBuf dv, DevBuf dout, DevBuf out,
                          DevBuf lse, DevBuf q, DevBuf k, DevBuf v, const AttnShape *s);
    void (*swiglu_fwd)(BackendCtx *ctx, DevBuf act, DevBuf gate, DevBuf up, size_t n); /* silu(gate)⊙up */
    void (*swiglu_bwd)(BackendCtx *ctx, DevBuf dgate, DevBuf dup, DevBuf dact, DevBuf gate, DevBuf up,
                       size_t n);
    void (*add_bias)(BackendCtx *ctx, DevBuf y, DevBuf b, int T, int out); /* y[t, o] += b[o] */
    void (*add)(BackendCtx *ctx, DevBuf y, DevBuf x, size_t n);            /* y += x (residuals) */
    void (*scale)(BackendCtx *ctx, DevBuf y, float s, size_t n);           /* y *= s */
    /* out[o] = Σ_t dy[t, o] (out F32): a bias's gradient */
    void (*colsum)(BackendCtx *ctx, DevBuf out, DevBuf dy, int T, int cols);
    /* dst[r, :] = src[rows[r], :] for r < n (rows: host array), d columns; and the scatter back
     * (dst[rows[r], :] = src[r, :]). dtypes may differ (F32 <-> act_dtype). */
    void (*gather_rows)(BackendCtx *ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d);
    void (*scatter_rows)(BackendCtx *ctx, DevBuf dst, DevBuf src, const int32_t *rows, int n, int d);

    /* ---- losses (src/engine/loss.h semantics): z, zt [C,V] F32 logits; idx [C,K] I32 and val [C,K] F32
     * the teacher's top-K; dz [C,V] F32 overwritten with dz_scale · dL/dz; the chunk's sums added to
     * *sums (host). A vocabulary-parallel group reduces through p->reduce (host doubles per row). */
    void (*loss_rows)(BackendCtx *ctx, DevBuf dz, LossSums *sums, DevBuf z, DevBuf zt, DevBuf idx, DevBuf val,
                      int C, int V, const LossChunkParams *p, float dz_scale);
    /* The K largest entries of each row of zt (global vocabulary ids, descending, ties by lower id),
     * over the group when p->reduce is set. */
    void (*loss_topk)(BackendCtx *ctx, DevBuf idx, DevBuf val, DevBuf zt, int C, int V, int K,
                      int vocab_offset, const LossReduce *reduce);

    /* ---- coefficients and optimizer (F32 buffers) */
    void (*coef_nonlin)(BackendCtx *ctx, DevBuf fc, DevBuf c, size_t n, Nonlinearity f);     /* fc = f(c) */
    void (*coef_nonlin_grad)(BackendCtx *ctx, DevBuf g, DevBuf c, size_t n, Nonlinearity f); /* g *= f'(c) */
    double (*sumsq)(BackendCtx *ctx, DevBuf x, size_t n);                                    /* Σ x² */
    /* gram[i*n_src + j] = c_i · c_j for the n_src rows of dim entries (host result) */
    void (*coef_gram)(BackendCtx *ctx, double *gram, DevBuf c, int n_src, int dim);
    /* g_i += Σ_j A[i*n_src + j] · c_j (similarity and L2 gradients, A on the host) */
    void (*coef_mix_grad)(BackendCtx *ctx, DevBuf g, DevBuf c, const double *A, int n_src, int dim);
    /* λ·Σ|c| returned; g += λ·sign(c) */
    double (*coef_l1)(BackendCtx *ctx, DevBuf g, DevBuf c, size_t n, double lambda);
    /* w·Σ_{a<b} Σ_k min(|c_a|,|c_b|) returned, its gradient into g (half each at a tie) */
    double (*coef_overlap)(BackendCtx *ctx, DevBuf g, DevBuf c, int n_src, int dim, double w);
    /* w·Σ_{a<b} Σ_col min(|c_a|, |c_b|)·wts[pair, col] (wts F32 [P, dim], pairs in combinations
     * order); gradient w·wts·sign into g of the smaller side, of a at a tie (loss.weighted_overlap) */
    double (*coef_weighted_overlap)(BackendCtx *ctx, DevBuf g, DevBuf c, DevBuf wts, int n_src, int dim,
                                    double w);
    /* The |m| threshold of MoFO: the ceil(alpha·n)-th largest |m| (alpha in (0,1]). */
    float (*mofo_threshold)(BackendCtx *ctx, DevBuf m, size_t n, float alpha);
    /* m, v moments updated from g, then c updated (only where |m| >= p->mofo_threshold if >= 0) */
    void (*adamw)(BackendCtx *ctx, DevBuf c, DevBuf g, DevBuf m, DevBuf v, size_t n, const AdamParams *p);
} Backend;

/* The CPU backend (always available), the guard backend (the CPU's with every DevBuf made
 * inaccessible by mprotect outside backend calls), and the CUDA backend when built (NULL else):
 * each its checked front table (src/engine/backend_api.c). */
const Backend *backend_cpu(void);
const Backend *backend_guard(void);
const Backend *backend_cuda(void);
/* The CPU backend's attention tile (queries and keys per block), for tests that must cross it. */
int cpu_attention_tile(void);
/* By name ("cpu", "guard", "cuda"); fails listing the available ones. DAM_BACKEND in the
 * environment overrides the name given (so that the test suite runs under "guard"). */
const Backend *backend_by_name(const char *name);

/* Element-wise nonlinearity of the coefficients and its derivative (host, for reference and tests;
 * src/engine/backend.c, below the backends, with the DevBuf views). */
float dam_nonlin(Nonlinearity f, float c);
float dam_nonlin_grad(Nonlinearity f, float c);

#endif
