/* backend_cuda.cu — the device contract of src/engine/backend.h on one NVIDIA GPU per rank: one stream,
 * a cuBLAS handle, pinned staging for transfers, bf16 activations, fp32 coefficients and optimizer
 * state. The kernels live in the headers beside this file (one concern each); this file holds the
 * context, memory, transfers and events, and the table. The ops trust their arguments (the front,
 * src/engine/backend_api.c, checked them: backend_impl.h); they check only the GPU's own limits. */
#include "common.cuh"

#include "backend_impl.h"

#include "attention.cuh"
#include "dam.cuh"
#include "elementwise.cuh"
#include "gemm.cuh"
#include "loss.cuh"
#include "norm.cuh"
#include "optim.cuh"
#include "rope.cuh"
#include "swiglu.cuh"

/* ---------------------------------------------------------------- context */

enum { CUBLAS_WS = 32 << 20, IDX_INIT = 1 << 16 };

static BackendCtx *cu_ctx_new(int device_index) {
    int count = 0;
    CUDA_CHECK(cudaGetDeviceCount(&count));
    if (count < 1) dam_fail("cuda backend: no CUDA device visible");
    if (device_index < 0) dam_fail("cuda backend: device index %d", device_index);
    BackendCtx *ctx = (BackendCtx *)dam_calloc(1, sizeof(BackendCtx), "cuda context");
    ctx->device = device_index % count;
    g_cuda_device_for_errors = ctx->device;
    CUDA_CHECK(cudaSetDevice(ctx->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&ctx->cublas));
    CUBLAS_CHECK(cublasSetStream(ctx->cublas, ctx->stream));
    CUDA_CHECK(cudaMalloc(&ctx->cublas_ws, CUBLAS_WS));
    CUBLAS_CHECK(cublasSetWorkspace(ctx->cublas, ctx->cublas_ws, CUBLAS_WS));
    CUDA_CHECK(cudaMallocHost((void **)&ctx->stage, 2 * (size_t)STAGE_HALF));
    for (int h = 0; h < 2; h++)
        CUDA_CHECK(cudaEventCreateWithFlags(&ctx->stage_done[h], cudaEventDisableTiming));
    ctx->idx_cap = ctx->idx_dev_cap = IDX_INIT;
    CUDA_CHECK(cudaMallocHost((void **)&ctx->idx_host, ctx->idx_cap * sizeof(int32_t)));
    CUDA_CHECK(cudaMallocAsync((void **)&ctx->idx_dev, ctx->idx_dev_cap * sizeof(int32_t), ctx->stream));
    CUDA_CHECK(cudaEventCreateWithFlags(&ctx->idx_done, cudaEventDisableTiming));
    CUDA_CHECK(cudaMalloc((void **)&ctx->partials, PARTIALS_MAX * sizeof(double)));
    CUDA_CHECK(cudaMallocHost((void **)&ctx->partials_host, PARTIALS_MAX * sizeof(double)));
    CUDA_CHECK(
        cudaDeviceGetAttribute(&ctx->max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx->device));
    CUDA_CHECK(cudaDeviceGetAttribute(&ctx->n_sm, cudaDevAttrMultiProcessorCount, ctx->device));
    return ctx;
}

static void cu_ctx_free(BackendCtx *ctx) {
    if (!ctx) return;
    ctx_sync(ctx);
    CUBLAS_CHECK(cublasDestroy(ctx->cublas));
    CUDA_CHECK(cudaFree(ctx->cublas_ws));
    CUDA_CHECK(cudaFreeHost(ctx->stage));
    for (int h = 0; h < 2; h++) CUDA_CHECK(cudaEventDestroy(ctx->stage_done[h]));
    CUDA_CHECK(cudaFreeHost(ctx->idx_host));
    CUDA_CHECK(cudaFreeAsync(ctx->idx_dev, ctx->stream));
    CUDA_CHECK(cudaEventDestroy(ctx->idx_done));
    CUDA_CHECK(cudaFree(ctx->partials));
    CUDA_CHECK(cudaFreeHost(ctx->partials_host));
    if (ctx->scratch) CUDA_CHECK(cudaFreeAsync(ctx->scratch, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    CUDA_CHECK(cudaStreamDestroy(ctx->stream));
    free(ctx);
}

extern "C" void *dam_cuda_stream(BackendCtx *ctx) { return (void *)ctx->stream; }
extern "C" int dam_cuda_device(BackendCtx *ctx) { return ctx->device; }

extern "C" void dam_cuda_watch_add(BackendCtx *ctx, DamCudaWatch fn, void *arg) {
    if (ctx->n_watch == (int)(sizeof ctx->watch / sizeof ctx->watch[0]))
        dam_fail("cuda backend: more than %d watchers", ctx->n_watch);
    ctx->watch[ctx->n_watch].fn = fn, ctx->watch[ctx->n_watch].arg = arg;
    ctx->n_watch++;
}

extern "C" void dam_cuda_watch_remove(BackendCtx *ctx, void *arg) {
    for (int i = 0; i < ctx->n_watch; i++)
        if (ctx->watch[i].arg == arg) {
            ctx->watch[i] = ctx->watch[--ctx->n_watch];
            return;
        }
}

extern "C" void dam_cuda_wait_event(BackendCtx *ctx, void *event) { ctx_wait_event(ctx, (cudaEvent_t)event); }
extern "C" void dam_cuda_wait_stream(BackendCtx *ctx, void *stream) {
    ctx_wait_stream(ctx, (cudaStream_t)stream);
}

/* ---------------------------------------------------------------- memory */

static DevBuf cu_alloc(BackendCtx *ctx, size_t n, dam_dtype dtype, const char *what) {
    size_t bytes = n * dam_dtype_size(dtype);
    DevBuf b = {NULL, n, dtype, DAM_DEVICE_CUDA};
    /* stream-ordered, as every allocation after the context's: no wait for the device (backend.h) */
    cudaError_t rc = cudaMallocAsync(&b.ptr, bytes ? bytes : 256, ctx->stream);
    if (rc != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        dam_fail("out of device memory on CUDA device %d: %zu bytes for %s (%zu MiB free of %zu MiB): %s",
                 ctx->device, bytes, what, fr >> 20, tot >> 20, cudaGetErrorString(rc));
    }
    if (bytes) CUDA_CHECK(cudaMemsetAsync(b.ptr, 0, bytes, ctx->stream));
    return b;
}

/* Stream-ordered: freed once the work queued before has run (every use of a buffer is on the
 * context's stream, NCCL's included), without waiting for the device (backend.h). */
static void cu_free(BackendCtx *ctx, DevBuf *b) {
    if (b->ptr) CUDA_CHECK(cudaFreeAsync(b->ptr, ctx->stream));
    b->ptr = NULL, b->n = 0; /* as the CPU backend leaves a freed buffer */
}

/* ---------------------------------------------------------------- transfers through pinned staging */

/* n host elements of hdt as n elements of ddt (F32, BF16, F16 in; F32, BF16 out; or the same dtype). */
static void convert_host(void *dst, dam_dtype ddt, const void *src, dam_dtype hdt, size_t n) {
    if (ddt == hdt) {
        memcpy(dst, src, n * dam_dtype_size(ddt));
    } else if (ddt == DAM_F32 && (hdt == DAM_BF16 || hdt == DAM_F16)) {
        dam_to_f32((float *)dst, src, hdt, n);
    } else if (ddt == DAM_BF16 && hdt == DAM_F32) {
        const float *s = (const float *)src;
        uint16_t *d = (uint16_t *)dst;
        for (size_t i = 0; i < n; i++) d[i] = dam_f32_to_bf16(s[i]);
    } else {
        dam_fail("cuda transfer: no conversion from %s to %s", dam_dtype_name(hdt), dam_dtype_name(ddt));
    }
}

/* rows x cols elements, host row r at host + r·ld (hdt), into the device as contiguous rows (ddt);
 * staged in chunks of whole rows through the two pinned halves, one filling while the other copies. */
static void stage_h2d(BackendCtx *ctx, void *dst, dam_dtype ddt, const void *host, dam_dtype hdt, size_t rows,
                      size_t cols, size_t ld) {
    if (ld == cols) cols *= rows, ld = cols, rows = 1; /* contiguous: chunk freely */
    size_t hes = dam_dtype_size(hdt), des = dam_dtype_size(ddt), es = hes > des ? hes : des;
    size_t per_half = STAGE_HALF / es;
    int half = 0;
    for (size_t r = 0; r < rows;) {
        size_t nr = rows == 1 ? 1 : per_half / cols;
        if (nr == 0) dam_fail("cuda upload: a row of %zu elements exceeds the staging buffer", cols);
        if (nr > rows - r) nr = rows - r;
        for (size_t c0 = 0; c0 < (rows == 1 ? cols : 1); c0 += per_half) { /* contiguous: column chunks */
            size_t nc = rows == 1 ? (cols - c0 < per_half ? cols - c0 : per_half) : cols;
            unsigned char *st = ctx->stage + (size_t)half * STAGE_HALF;
            ctx_wait_event(ctx, ctx->stage_done[half]);
            for (size_t k = 0; k < nr; k++)
                convert_host(st + k * nc * des, ddt, (const unsigned char *)host + ((r + k) * ld + c0) * hes,
                             hdt, nc);
            unsigned char *d = (unsigned char *)dst + (r * cols + c0) * des;
            CUDA_CHECK(cudaMemcpyAsync(d, st, nr * nc * des, cudaMemcpyHostToDevice, ctx->stream));
            CUDA_CHECK(cudaEventRecord(ctx->stage_done[half], ctx->stream));
            half ^= 1;
        }
        r += nr;
    }
}

static void cu_upload(BackendCtx *ctx, DevBuf dst, const void *host, dam_dtype host_dtype, size_t n) {
    if (n == 0) return;
    stage_h2d(ctx, dst.ptr, dst.dtype, host, host_dtype, 1, n, n);
}

static void cu_download(BackendCtx *ctx, void *host, dam_dtype host_dtype, DevBuf src, size_t n) {
    if (n == 0) return;
    size_t ses = dam_dtype_size(src.dtype), hes = dam_dtype_size(host_dtype);
    size_t per = STAGE_HALF / (ses > hes ? ses : hes);
    ctx_wait_event(ctx, ctx->stage_done[0]);
    for (size_t off = 0; off < n; off += per) {
        size_t cnt = n - off < per ? n - off : per;
        CUDA_CHECK(cudaMemcpyAsync(ctx->stage, (const unsigned char *)src.ptr + off * ses, cnt * ses,
                                   cudaMemcpyDeviceToHost, ctx->stream));
        ctx_sync(ctx);
        convert_host((unsigned char *)host + off * hes, host_dtype, ctx->stage, src.dtype, cnt);
    }
}

/* Sources keep their stored dtype on the device (BF16 or F32; F16 is widened to F32, exactly), as
 * contiguous rows: a tensor-parallel slice (ld > cols) takes only its own columns. */
static SrcWeight cu_upload_source(BackendCtx *ctx, const void *host, dam_dtype dtype, size_t rows,
                                  size_t cols, size_t ld, const char *what) {
    if (!ld) ld = cols;
    dam_dtype ddt = dtype == DAM_F16 ? DAM_F32 : dtype;
    SrcWeight s;
    s.w = cu_alloc(ctx, rows * cols, ddt, what);
    s.ld = cols;
    if (rows > 0 && cols > 0) stage_h2d(ctx, s.w.ptr, ddt, host, dtype, rows, cols, ld);
    return s;
}

static void cu_free_source(BackendCtx *ctx, SrcWeight *s) { cu_free(ctx, &s->w); }

static void cu_release_source(BackendCtx *ctx, const SrcWeight *s, size_t rows, size_t cols) {
    (void)ctx, (void)s, (void)rows, (void)cols; /* device copies stay resident for the run */
}

static void cu_synchronize(BackendCtx *ctx) { ctx_sync(ctx); }

static void *cu_host_begin(BackendCtx *ctx, DevBuf b) {
    (void)ctx, (void)b;
    return NULL; /* device memory: devcomm uses NCCL or host staging */
}

static void cu_host_end(BackendCtx *ctx, DevBuf b) { (void)ctx, (void)b; }

/* ---------------------------------------------------------------- events */

static BackendEvent *cu_event_new(BackendCtx *ctx) {
    (void)ctx;
    BackendEvent *e = (BackendEvent *)dam_calloc(1, sizeof *e, "cuda event");
    CUDA_CHECK(cudaEventCreate(&e->e));
    return e;
}

static void cu_event_free(BackendCtx *ctx, BackendEvent *e) {
    (void)ctx;
    if (!e) return;
    CUDA_CHECK(cudaEventDestroy(e->e));
    free(e);
}

static void cu_event_record(BackendCtx *ctx, BackendEvent *e) {
    CUDA_CHECK(cudaEventRecord(e->e, ctx->stream));
}

static double cu_event_elapsed(BackendCtx *ctx, BackendEvent *start, BackendEvent *end) {
    float ms = 0;
    ctx_wait_event(ctx, end->e);
    CUDA_CHECK(cudaEventElapsedTime(&ms, start->e, end->e));
    return ms / 1000.0;
}

/* ---------------------------------------------------------------- the table */

static const Backend cuda_backend = {
    .name = "cuda",
    .device = DAM_DEVICE_CUDA,
    .act_dtype = DAM_BF16,
    .ctx_new = cu_ctx_new,
    .ctx_free = cu_ctx_free,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload_source = cu_upload_source,
    .free_source = cu_free_source,
    .release_source = cu_release_source,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .fill = cu_fill,
    .synchronize = cu_synchronize,
    .event_new = cu_event_new,
    .event_free = cu_event_free,
    .event_record = cu_event_record,
    .event_elapsed = cu_event_elapsed,
    .host_begin = cu_host_begin,
    .host_end = cu_host_end,
    .matmul_xwt = cu_matmul_xwt,
    .matmul_dyw = cu_matmul_dyw,
    .matmul_dytx = cu_matmul_dytx,
    .set_gemm_inputs = NULL, /* optional: one precision, bf16 inputs, fp32 accumulation (gemm.cuh) */
    .weight_dtype = NULL,    /* optional: weights in the activation dtype, bf16 */
    .dam_materialize = cu_dam_materialize,
    .dam_coef_grad = cu_dam_coef_grad,
    .dam_embed_gather = cu_dam_embed_gather,
    .dam_embed_coef_grad = cu_dam_embed_coef_grad,
    .embed_grad = cu_embed_grad,
    .rmsnorm_fwd = cu_rmsnorm_fwd,
    .rmsnorm_bwd = cu_rmsnorm_bwd,
    .rope = cu_rope,
    .attention_fwd = cu_attention_fwd,
    .attention_bwd = cu_attention_bwd,
    .swiglu_fwd = cu_swiglu_fwd,
    .swiglu_bwd = cu_swiglu_bwd,
    .add_bias = cu_add_bias,
    .add = cu_add,
    .scale = cu_scale,
    .colsum = cu_colsum,
    .gather_rows = cu_gather_rows,
    .scatter_rows = cu_scatter_rows,
    .loss_rows = cu_loss_rows,
    .loss_topk = cu_loss_topk,
    .coef_nonlin = cu_coef_nonlin,
    .coef_nonlin_grad = cu_coef_nonlin_grad,
    .sumsq = cu_sumsq,
    .coef_gram = cu_coef_gram,
    .coef_mix_grad = cu_coef_mix_grad,
    .coef_l1 = cu_coef_l1,
    .coef_overlap = cu_coef_overlap,
    .coef_weighted_overlap = cu_coef_weighted_overlap,
    .mofo_threshold = cu_mofo_threshold,
    .adamw = cu_adamw,
};

extern "C" const Backend *backend_cuda_impl(void) { return &cuda_backend; }
