/* bench_gpu.c — the CUDA backend's rates on this card, through the backend's own calls: the bf16
 * GEMM rate (the MFU denominator), the device-to-device copy bandwidth (the bandwidth passes'
 * denominator), the DAM materialize and coefficient-gradient passes against it, attention forward and
 * backward at a 1B-model shape, and the device memory the context and libraries take (the baseline
 * `plan --device cuda` adds). Each figure on one line "bench NAME VALUE UNIT", also appended to the
 * file named by the first argument. Needs a GPU. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

static FILE *out;
static const Backend *be;
static BackendCtx *ctx;

/* n random values in [-1, 1) (a tile of 2^20 repeated: constant inputs would flatter the tensor cores). */
static void fill_random(DevBuf b, size_t n) {
    enum { TILE = 1 << 20 };
    float *h = malloc(TILE * sizeof(float));
    dam_rng r;
    dam_rng_seed(&r, 99);
    for (size_t i = 0; i < TILE; i++) h[i] = 2 * dam_rng_uniform(&r) - 1;
    for (size_t off = 0; off < n; off += TILE)
        be->upload(ctx, devbuf_slice(b, off, n - off < TILE ? n - off : TILE), h, DAM_F32,
                   n - off < TILE ? n - off : TILE);
    free(h);
}

static void figure(const char *name, double value, const char *unit) {
    printf("bench %-36s %12.3f %s\n", name, value, unit);
    fflush(stdout);
    if (out) fprintf(out, "bench %s %.3f %s\n", name, value, unit), fflush(out);
}

/* Seconds per call of fn(arg), timed with the backend's events over reps calls after warm calls. */
static double timed(void (*fn)(void *), void *arg, int warm, int reps) {
    for (int i = 0; i < warm; i++) fn(arg);
    BackendEvent *a = be->event_new(ctx), *b = be->event_new(ctx);
    be->event_record(ctx, a);
    for (int i = 0; i < reps; i++) fn(arg);
    be->event_record(ctx, b);
    double s = be->event_elapsed(ctx, a, b) / reps;
    be->event_free(ctx, a), be->event_free(ctx, b);
    return s;
}

typedef struct {
    DevBuf x, w, y, src, dst, fc, acc, g, q, k, v, o, lse, dq, dk, dv, dout;
    SrcWeight s[3];
    int n, rows, cols;
    AttnShape as;
} Bench;

static void run_gemm(void *p) {
    Bench *b = p;
    be->matmul_xwt(ctx, b->y, b->x, b->w, b->n, b->n, b->n, 0);
}
static void run_copy(void *p) {
    Bench *b = p;
    be->copy(ctx, b->dst, b->src, b->src.n);
}
static void run_materialize(void *p) {
    Bench *b = p;
    be->dam_materialize(ctx, b->y, b->s, 3, b->fc, (size_t)b->rows, (size_t)b->cols, 0);
}
static void run_coef_grad(void *p) {
    Bench *b = p;
    be->dam_coef_grad(ctx, b->acc, b->s, 3, b->g, (size_t)b->rows, (size_t)b->cols, 0);
}
static void run_attn_fwd(void *p) {
    Bench *b = p;
    be->attention_fwd(ctx, b->o, b->lse, b->q, b->k, b->v, &b->as);
}
static void run_attn_bwd(void *p) {
    Bench *b = p;
    be->attention_bwd(ctx, b->dq, b->dk, b->dv, b->dout, b->o, b->lse, b->q, b->k, b->v, &b->as);
}

int main(int argc, char **argv) {
    out = argc > 1 ? fopen(argv[1], "a") : NULL;
    be = backend_cuda();
    if (!be) return 2;
    size_t free0 = 0, total = 0, free1 = 0;
    cudaSetDevice(0);
    cudaFree(0); /* the CUDA context alone */
    cudaMemGetInfo(&free0, &total);
    ctx = be->ctx_new(0);
    be->synchronize(ctx);
    cudaMemGetInfo(&free1, &total);
    figure("device_memory_total", total / 1048576.0, "MiB");
    figure("backend_context_and_libraries", (free0 - free1) / 1048576.0, "MiB (above the bare CUDA context)");

    Bench b;
    memset(&b, 0, sizeof b);
    b.n = 8192;
    size_t nn = (size_t)b.n * b.n;
    b.x = be->alloc(ctx, nn, DAM_BF16, "x"), b.w = be->alloc(ctx, nn, DAM_BF16, "w"),
    b.y = be->alloc(ctx, nn, DAM_BF16, "y");
    fill_random(b.x, nn), fill_random(b.w, nn);
    double t = timed(run_gemm, &b, 3, 10);
    double gemm = 2.0 * b.n * (double)b.n * b.n / t / 1e12;
    figure("gemm_bf16_8192", gemm, "TFLOP/s");

    b.src = be->alloc(ctx, (size_t)1 << 29, DAM_BF16, "copy src"),
    b.dst = be->alloc(ctx, (size_t)1 << 29, DAM_BF16, "copy dst");
    t = timed(run_copy, &b, 2, 10);
    double copy = 2.0 * (double)b.src.n * 2 / t / 1e9; /* bytes read + written */
    figure("copy_d2d_1GiB", copy, "GB/s (read+write)");
    be->free(ctx, &b.src), be->free(ctx, &b.dst);

    b.rows = b.cols = b.n;
    for (int i = 0; i < 3; i++) {
        b.s[i].w = be->alloc(ctx, nn, DAM_BF16, "source"), b.s[i].ld = (size_t)b.cols;
        be->fill(ctx, b.s[i].w, 0.1f * (i + 1), nn);
    }
    b.fc = be->alloc(ctx, (size_t)3 * b.cols, DAM_F32, "fc"), be->fill(ctx, b.fc, 0.3f, (size_t)3 * b.cols);
    t = timed(run_materialize, &b, 2, 10);
    double mat = 4.0 * nn * 2 / t / 1e9; /* 3 sources read, 1 written */
    figure("dam_materialize_3src_8192", mat, "GB/s");
    figure("dam_materialize_vs_copy", 100 * mat / copy, "% of copy bandwidth");
    b.g = b.x, b.acc = be->alloc(ctx, (size_t)3 * b.cols, DAM_F32, "acc");
    t = timed(run_coef_grad, &b, 2, 10);
    double cg = 4.0 * nn * 2 / t / 1e9; /* 3 sources and G read */
    figure("dam_coef_grad_3src_8192", cg, "GB/s");
    figure("dam_coef_grad_vs_copy", 100 * cg / copy, "% of copy bandwidth");
    for (int i = 0; i < 3; i++) be->free(ctx, &b.s[i].w);
    be->free(ctx, &b.x), be->free(ctx, &b.w), be->free(ctx, &b.y), be->free(ctx, &b.fc),
        be->free(ctx, &b.acc);

    AttnShape as = {1, 2048, 32, 8, 64, 0, 0.125f}; /* a Llama-1B layer's attention */
    b.as = as;
    size_t nq = (size_t)as.B * as.T * as.H * as.hd, nk = (size_t)as.B * as.T * as.KV * as.hd;
    b.q = be->alloc(ctx, nq, DAM_BF16, "q"), b.k = be->alloc(ctx, nk, DAM_BF16, "k"),
    b.v = be->alloc(ctx, nk, DAM_BF16, "v");
    b.o = be->alloc(ctx, nq, DAM_BF16, "o"), b.dout = be->alloc(ctx, nq, DAM_BF16, "dout"),
    b.dq = be->alloc(ctx, nq, DAM_BF16, "dq");
    b.dk = be->alloc(ctx, nk, DAM_BF16, "dk"), b.dv = be->alloc(ctx, nk, DAM_BF16, "dv");
    b.lse = be->alloc(ctx, (size_t)as.B * as.H * as.T, DAM_F32, "lse");
    be->fill(ctx, b.q, 0.1f, nq), be->fill(ctx, b.k, 0.1f, nk), be->fill(ctx, b.v, 0.1f, nk),
        be->fill(ctx, b.dout, 0.1f, nq);
    double aflops = 2.0 * 2.0 * as.B * as.H * (double)as.T * as.T / 2 * as.hd; /* causal: half the square */
    t = timed(run_attn_fwd, &b, 1, 3);
    figure("attention_fwd_T2048_H32_KV8_hd64_ms", t * 1e3, "ms");
    figure("attention_fwd_rate", aflops / t / 1e12, "TFLOP/s");
    t = timed(run_attn_bwd, &b, 1, 3);
    figure("attention_bwd_T2048_H32_KV8_hd64_ms", t * 1e3, "ms");
    figure("attention_bwd_rate", 2.5 * aflops / t / 1e12, "TFLOP/s");
    be->ctx_free(ctx);
    if (out) fclose(out);
    return 0;
}
