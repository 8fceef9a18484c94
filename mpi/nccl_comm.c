/* nccl_comm.c — see nccl_comm.h. One NCCL communicator per group, made from a unique id that the
 * group's rank 0 creates and MPI broadcasts over the group's own communicator; every call runs on
 * the stream of the rank's CUDA backend context, so it is ordered with the kernels around it.
 * Compiled to nothing unless the CUDA build defines DAM_WITH_NCCL. */
#ifdef DAM_WITH_NCCL

#include "nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>

#include "../cuda/backend_cuda.h"

struct NcclComm {
    ncclComm_t comm;
    const CommGroup *g;
};

/* Check an NCCL call; on failure name the call, the group, the rank and NCCL's message. */
#define DAM_NCCL_CHECK(c, call)                                                                              \
    do {                                                                                                     \
        ncclResult_t dam_nccl_rc_ = (call);                                                                  \
        if (dam_nccl_rc_ != ncclSuccess)                                                                     \
            dam_fail("%s failed in group %s (rank %d of %d): %s (%s:%d)", #call, (c)->g->name, (c)->g->rank, \
                     (c)->g->size, ncclGetErrorString(dam_nccl_rc_), __FILE__, __LINE__);                    \
    } while (0)

#define DAM_NCCL_CUDA_CHECK(call)                                                                            \
    do {                                                                                                     \
        cudaError_t dam_cu_rc_ = (call);                                                                     \
        if (dam_cu_rc_ != cudaSuccess)                                                                       \
            dam_fail("%s failed: %s (%s:%d)", #call, cudaGetErrorString(dam_cu_rc_), __FILE__, __LINE__);    \
    } while (0)

static ncclDataType_t nccl_type(DevBuf b, const char *op) {
    if (b.dtype == DAM_F32) return ncclFloat32;
    if (b.dtype == DAM_BF16) return ncclBfloat16;
    dam_fail("nccl %s: buffer of dtype %s (F32 or BF16 expected)", op, dam_dtype_name(b.dtype));
}

static void need_elems(DevBuf b, size_t n, const char *op) {
    if (b.n < n) dam_fail("nccl %s: buffer of %zu elements, %zu asked", op, b.n, n);
    if (b.device != DAM_DEVICE_CUDA) dam_fail("nccl %s: the buffer is not CUDA device memory", op);
}

NcclComm *nccl_comm_new(const CommGroup *g, BackendCtx *ctx) {
    NcclComm *c = dam_calloc(1, sizeof *c, "nccl communicator");
    c->g = g;
    ncclUniqueId id;
    if (g->rank == 0) DAM_NCCL_CHECK(c, ncclGetUniqueId(&id));
    DAM_MPI_CHECK(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, g->comm));
    DAM_NCCL_CUDA_CHECK(cudaSetDevice(dam_cuda_device(ctx)));
    DAM_NCCL_CHECK(c, ncclCommInitRank(&c->comm, g->size, id, g->rank));
    return c;
}

void nccl_comm_free(NcclComm *c) {
    if (!c) return;
    DAM_NCCL_CHECK(c, ncclCommDestroy(c->comm));
    free(c);
}

void nccl_allreduce_sum(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n) {
    need_elems(buf, n, "allreduce");
    if (n == 0) return;
    DAM_NCCL_CHECK(c, ncclAllReduce(buf.ptr, buf.ptr, n, nccl_type(buf, "allreduce"), ncclSum, c->comm,
                                    (cudaStream_t)dam_cuda_stream(ctx)));
}

void nccl_send(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n, int peer) {
    need_elems(buf, n, "send");
    if (n == 0) return;
    DAM_NCCL_CHECK(
        c, ncclSend(buf.ptr, n, nccl_type(buf, "send"), peer, c->comm, (cudaStream_t)dam_cuda_stream(ctx)));
}

void nccl_recv(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n, int peer) {
    need_elems(buf, n, "recv");
    if (n == 0) return;
    DAM_NCCL_CHECK(
        c, ncclRecv(buf.ptr, n, nccl_type(buf, "recv"), peer, c->comm, (cudaStream_t)dam_cuda_stream(ctx)));
}

#else
typedef int dam_nccl_comm_not_built; /* ISO C wants a declaration in every translation unit */
#endif
