/* backend_cuda.h — what CUDA-only C code (mpi/nccl_comm.c) needs of the CUDA backend's context
 * beyond the device contract of src/engine/backend.h: its device and its stream. Declared here rather than
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

/* A watcher, called with the seconds waited so far while the host waits for the device; it may end
 * the run (dam_fail) when what it watches has failed or takes too long (mpi/nccl_comm.c: an NCCL
 * error, or a peer that does not answer within DAM_NCCL_TIMEOUT_S). With watchers registered, every
 * wait of the context polls instead of blocking. */
typedef void (*DamCudaWatch)(void *arg, double waited_s);
void dam_cuda_watch_add(struct BackendCtx *ctx, DamCudaWatch fn, void *arg);
void dam_cuda_watch_remove(struct BackendCtx *ctx, void *arg);
/* Wait for a cudaEvent_t / cudaStream_t (as void *), watched as the context's own waits are. */
void dam_cuda_wait_event(struct BackendCtx *ctx, void *event);
void dam_cuda_wait_stream(struct BackendCtx *ctx, void *stream);

#ifdef __cplusplus
}
#endif

#endif
