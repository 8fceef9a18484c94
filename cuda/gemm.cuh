/* gemm.cuh — the three GEMMs of the contract on cuBLAS (cublasGemmEx), fp32 accumulation.
 *
 * Row-major X[r, c] is column-major Xᵀ with leading dimension c, so each row-major product is
 * computed as its transpose in column-major (Cᵀ = Bᵀ·Aᵀ). dtypes:
 *  - every operand F32: an exact fp32 GEMM (CUBLAS_COMPUTE_32F, no TF32), the reference path;
 *  - any operand BF16 (an input or the output): the F32 inputs are rounded to BF16 in scratch (e.g.
 *    dL/dz of the lm_head) and the product runs on the tensor cores in bf16 with fp32 accumulation;
 *    the output keeps its own dtype (BF16 or F32). cublasGemmEx offers no F32 x F32 -> BF16. */
#pragma once

#include "common.cuh"

__global__ void k_f32_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
    GRID_STRIDE(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

static cudaDataType_t cuda_type(dam_dtype t) { return t == DAM_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* The operand as the GEMM will read it: itself, or a BF16 copy in scratch when the GEMM is bf16. */
static const void *gemm_operand(BackendCtx *ctx, DevBuf b, size_t n, int bf16) {
    if (!bf16 || b.dtype == DAM_BF16) return b.ptr;
    __nv_bfloat16 *t = (__nv_bfloat16 *)scratch_take(ctx, n * sizeof(__nv_bfloat16));
    LAUNCH(k_f32_to_bf16, grid_for(n, 256), 256, 0, ctx->stream)(t, (const float *)b.ptr, n);
    LAUNCH_CHECK("f32_to_bf16");
    return t;
}

/* Column-major C[m, n] = op(A)[m, k] · op(B)[k, n] (+ C when accumulate). */
static void gemm_cm(BackendCtx *ctx, const char *op, DevBuf c, DevBuf a, size_t a_n, DevBuf b, size_t b_n,
                    cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb,
                    int ldc, int accumulate) {
    /* cublasGemmEx has no F32 x F32 -> BF16 combination (CUBLAS_STATUS_NOT_SUPPORTED): a BF16 output
     * makes the product a bf16 one too (F32 inputs rounded in scratch), as a BF16 input does. */
    int bf16 = a.dtype == DAM_BF16 || b.dtype == DAM_BF16 || c.dtype == DAM_BF16;
    /* scratch only for the F32 inputs a bf16 product rounds (both inputs BF16, the usual case, need
     * none: reserving for them cost the size of both operands, 2.6 GB for a 70B lm_head shard) */
    size_t conv = (bf16 && a.dtype != DAM_BF16 ? align256(a_n * 2) : 0) +
                  (bf16 && b.dtype != DAM_BF16 ? align256(b_n * 2) : 0);
    scratch_reserve(ctx, conv ? conv + 512 : 0);
    const void *pa = gemm_operand(ctx, a, a_n, bf16), *pb = gemm_operand(ctx, b, b_n, bf16);
    cudaDataType_t ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (m == 0 || n == 0) return;
    if (k == 0) { /* an empty sum: C = beta·C */
        if (!accumulate)
            CUDA_CHECK(cudaMemsetAsync(c.ptr, 0, (size_t)m * n * dam_dtype_size(c.dtype), ctx->stream));
        return;
    }
    CUBLAS_CHECK(cublasGemmEx(ctx->cublas, ta, tb, m, n, k, &alpha, pa, ab, lda, pb, ab, ldb, &beta, c.ptr,
                              cuda_type(c.dtype), ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* y[T,out] = x[T,in] · W[out,in]ᵀ:  column-major yᵀ(out×T) = W(out×in) · xᵀ(in×T) */
static void cu_matmul_xwt(BackendCtx *ctx, DevBuf y, DevBuf x, DevBuf w, int T, int in, int out, int acc) {
    gemm_cm(ctx, "matmul_xwt", y, w, (size_t)out * in, x, (size_t)T * in, CUBLAS_OP_T, CUBLAS_OP_N, out, T,
            in, in, in, out, acc);
}

/* dx[T,in] = dy[T,out] · W[out,in]:  dxᵀ(in×T) = Wᵀ(in×out) · dyᵀ(out×T) */
static void cu_matmul_dyw(BackendCtx *ctx, DevBuf dx, DevBuf dy, DevBuf w, int T, int in, int out, int acc) {
    gemm_cm(ctx, "matmul_dyw", dx, w, (size_t)out * in, dy, (size_t)T * out, CUBLAS_OP_N, CUBLAS_OP_N, in, T,
            out, in, out, in, acc);
}

/* G[out,in] = dy[T,out]ᵀ · x[T,in]:  Gᵀ(in×out) = xᵀ(in×T) · dy(T×out) */
static void cu_matmul_dytx(BackendCtx *ctx, DevBuf g, DevBuf dy, DevBuf x, int T, int in, int out, int acc) {
    gemm_cm(ctx, "matmul_dytx", g, x, (size_t)T * in, dy, (size_t)T * out, CUBLAS_OP_N, CUBLAS_OP_T, in, out,
            T, in, out, in, acc);
}
