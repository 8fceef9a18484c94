/* devcomm.h — collectives and point-to-point transfers on device buffers (DevBuf), each naming its
 * group. Three transports, one interface:
 *   - host-addressable buffers (CPU and guard backends): MPI straight on the memory (be->host_begin);
 *   - "mpi" (host staging): the buffer is downloaded to a host buffer (fp32), moved with MPI, and
 *     uploaded back; works everywhere, including several ranks on one GPU;
 *   - "nccl" (CUDA builds, the default there): NCCL on the device memory, one communicator per
 *     group made from an MPI-broadcast unique id (mpi/nccl_comm.c).
 * Small host results (loss statistics, Gram matrices, norms) keep using comm.h. */
#ifndef DAM_DEVCOMM_H
#define DAM_DEVCOMM_H

#include "backend.h"
#include "comm.h"
#include "transport.h"

/* One group's device communicator. */
typedef struct DevComm {
    const CommGroup *g; /* NULL or size <= 1: every call is a no-op (or a local copy) */
    const Backend *be;
    BackendCtx *ctx;
    DamTransport transport; /* resolved: MPI (on the host memory or staged) or NCCL */
    struct NcclComm *nccl;  /* NCCL transport only */
    float *stage;           /* host staging buffer (MPI transport on a non-host-addressable device) */
    size_t stage_n;
} DevComm;

/* Collective over g. AUTO: NCCL when built and the backend is CUDA, else MPI. DAM_TRANSPORT in the
 * environment ("mpi" or "nccl") overrides. */
void devcomm_init(DevComm *dc, const CommGroup *g, const Backend *be, BackendCtx *ctx, DamTransport t);
void devcomm_free(DevComm *dc);
/* In place over the group: buf[0..n) summed (F32 or BF16 buffers; MPI and host staging sum in fp32,
 * NCCL sums a BF16 buffer in bf16, as tensor-parallel all-reduces of activations usually are). */
void devcomm_allreduce_sum(DevComm *dc, DevBuf buf, size_t n);
/* Point to point inside the group (pipeline activations and gradients): a blocking receive, and a
 * send that returns at once; devcomm_wait completes the send (req 0: none pending). */
typedef struct {
    int active;
    MPI_Request mpi;
    DevBuf held; /* host-addressable buffer held (host_begin) until the send completes */
    void *stage; /* else the host copy the send reads, freed by devcomm_wait */
} DevRequest;
void devcomm_recv(DevComm *dc, DevBuf buf, size_t n, int src);
void devcomm_isend(DevComm *dc, DevBuf buf, size_t n, int dest, DevRequest *req);
void devcomm_wait(DevComm *dc, DevRequest *req);

#endif
