/* bench_gemm.c — OpenBLAS sgemm GFLOP/s for the shapes of a DAM step: the CPU's "peak" that the
 * DAM step's achieved GFLOP/s is compared with (bench/run_bench.sh).
 * usage: bench_gemm M N K [repeats] [nt|nn|tn]
 *   nt (default): C[M,N] = A[M,K]·B[N,K]ᵀ, as x·Wᵀ (forward);  nn: C[M,N] = A[M,K]·B[K,N], as dy·W (input
 *   gradient);  tn: C[M,N] = A[K,M]ᵀ·B[K,N], as dyᵀ·x (weight gradient, K = tokens). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_gemm M N K [repeats] [nt|nn|tn]\n");
        return 2;
    }
    int M = atoi(argv[1]), N = atoi(argv[2]), K = atoi(argv[3]), reps = argc > 4 ? atoi(argv[4]) : 20;
    const char *layout = argc > 5 ? argv[5] : "nt";
    int ta = !strcmp(layout, "tn"), tb = !strcmp(layout, "nt");
    if (!ta && !tb && strcmp(layout, "nn")) {
        fprintf(stderr, "bench_gemm: layout '%s': expected nt, nn or tn\n", layout);
        return 2;
    }
    /* leading dimensions of row-major A (M x K, or K x M transposed) and B (N x K transposed, or K x N) */
    int lda = ta ? M : K, ldb = tb ? K : N;
    CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    float *a = dam_malloc((size_t)M * K * sizeof(float), "A"),
          *b = dam_malloc((size_t)N * K * sizeof(float), "B");
    float *c = dam_malloc((size_t)M * N * sizeof(float), "C");
    dam_rng r;
    dam_rng_seed(&r, 1);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = dam_rng_uniform(&r) - 0.5f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = dam_rng_uniform(&r) - 0.5f;
    cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, 1, a, lda, b, ldb, 0, c, N); /* warm up */
    double best = 1e30;
    for (int i = 0; i < reps; i++) {
        double t = dam_now();
        cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, 1, a, lda, b, ldb, 0, c, N);
        t = dam_now() - t;
        best = t < best ? t : best;
    }
    printf("%.3f\n", 2.0 * M * N * K / best / 1e9);
    free(a), free(b), free(c);
    return 0;
}
