/* nccl_comm.h — NCCL communicators for device buffers (built only with CUDA=1, -DDAM_WITH_NCCL).
 * Used by mpi/devcomm.c; implemented in mpi/nccl_comm.c. */
#ifndef DAM_NCCL_COMM_H
#define DAM_NCCL_COMM_H

#include "backend.h"
#include "comm.h"

typedef struct NcclComm NcclComm;
/* Collective over g: rank 0 makes the unique id, MPI broadcasts it, every rank joins on the
 * device of ctx. Errors through DAM_NCCL_CHECK (names the call and the rank). */
NcclComm *nccl_comm_new(const CommGroup *g, BackendCtx *ctx);
void nccl_comm_free(NcclComm *c);
/* On the stream of ctx; buf F32 or BF16. */
void nccl_allreduce_sum(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n);
/* Grouped send+recv are the caller's business: these are plain stream-ordered transfers. */
void nccl_send(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n, int peer);
void nccl_recv(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n, int peer);

#endif
