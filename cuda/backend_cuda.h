/* backend_cuda.h — what CUDA-only C code (mpi/nccl_comm.c) needs of the CUDA backend's context
 * beyond the device contract of src/backend.h: its device and its stream. Declared here rather than
 * in backend.h so that the contract stays free of CUDA types; only builds with CUDA=1 include it. */
#ifndef DAM_BACKEND_CUDA_H
#define DAM_BACKEND_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

struct BackendCtx;
/* The cudaStream_t (as void *) every call of this context is ordered on. */
void *dam_cuda_stream(struct BackendCtx *ctx);
/* The CUDA device index of this context (cudaSetDevice'd by ctx_new). */
int dam_cuda_device(struct BackendCtx *ctx);

#ifdef __cplusplus
}
#endif

#endif
