/* cblas_ref.c — naive CBLAS (double accumulation) for the GPU kernel checks; see shim/cblas.h. */
#include <math.h>

#include "cblas.h"

/* element (r, c) of op(X) for a matrix stored in `order` with leading dimension ld */
static inline float at(const float *X, int ld, int r, int c, int trans, int row_major) {
    if (trans) {
        int t = r;
        r = c, c = t;
    }
    return row_major ? X[(long)r * ld + c] : X[(long)c * ld + r];
}

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N,
                 int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C,
                 int ldc) {
    int rm = order == CblasRowMajor, at_ = ta != CblasNoTrans, bt_ = tb != CblasNoTrans;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)at(A, lda, i, k, at_, rm) * at(B, ldb, k, j, bt_, rm);
            float *c = rm ? &C[(long)i * ldc + j] : &C[(long)j * ldc + i];
            *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
}

void cblas_sgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, int M, int N, float alpha, const float *A,
                 int lda, const float *x, int incx, float beta, float *y, int incy) {
    int rm = order == CblasRowMajor, t = ta != CblasNoTrans, rows = t ? N : M, cols = t ? M : N;
    for (int i = 0; i < rows; i++) {
        double s = 0;
        for (int j = 0; j < cols; j++) s += (double)at(A, lda, i, j, t, rm) * x[(long)j * incx];
        float *yi = &y[(long)i * incy];
        *yi = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *yi));
    }
}

float cblas_sdot(int n, const float *x, int incx, const float *y, int incy) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[(long)i * incx] * y[(long)i * incy];
    return (float)s;
}

void cblas_saxpy(int n, float alpha, const float *x, int incx, float *y, int incy) {
    for (int i = 0; i < n; i++) y[(long)i * incy] += alpha * x[(long)i * incx];
}

void cblas_sscal(int n, float alpha, float *x, int incx) {
    for (int i = 0; i < n; i++) x[(long)i * incx] *= alpha;
}

float cblas_snrm2(int n, const float *x, int incx) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[(long)i * incx] * x[(long)i * incx];
    return (float)sqrt(s);
}
