/* cblas.h (test shim) — the few CBLAS calls the CPU backend makes, declared for the GPU kernel checks
 * so that tests/cuda/check_kernels builds where no BLAS is installed (the GPU machine): implemented
 * naively, in double, by tests/cuda/cblas_ref.c. Same enum values as the reference CBLAS. */
#ifndef DAM_TEST_CBLAS_SHIM_H
#define DAM_TEST_CBLAS_SHIM_H

typedef enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 } CBLAS_ORDER;
typedef enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 } CBLAS_TRANSPOSE;
typedef CBLAS_ORDER CBLAS_LAYOUT;

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N,
                 int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C,
                 int ldc);
void cblas_sgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, int M, int N, float alpha, const float *A,
                 int lda, const float *x, int incx, float beta, float *y, int incy);
float cblas_sdot(int n, const float *x, int incx, const float *y, int incy);
void cblas_saxpy(int n, float alpha, const float *x, int incx, float *y, int incy);
void cblas_sscal(int n, float alpha, float *x, int incx);
float cblas_snrm2(int n, const float *x, int incx);

#endif
