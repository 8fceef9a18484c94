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
/* Point to point, ordered after the work already on ctx's stream. A send behaves like MPI_Isend: its
 * data is copied into the communicator's own buffer, so buf may be overwritten at once, and nothing
 * on ctx's stream waits for the receiver; a receive holds ctx's stream until its data is there. */
void nccl_send(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n, int peer);
void nccl_recv(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n, int peer);

#endif
