/* nccl_comm.c — see nccl_comm.h. One group's NCCL communicators, made from unique ids that the
 * group's rank 0 creates and MPI broadcasts over the group's own communicator; collectives and
 * receives run on the stream of the rank's CUDA backend context, so they are ordered with the kernels
 * around them. Compiled to nothing unless the CUDA build defines DAM_WITH_NCCL.
 *
 * Sends behave like MPI_Isend, as devcomm_isend promises (the 1F1B pipeline relies on it: a stage
 * sends its activation on and only later receives a gradient back):
 *  - an NCCL send does not finish before its receiver runs the matching receive, so a send on the
 *    context's stream would hold up every kernel after it; the data is copied (device to device, on
 *    the context's stream) into a send slot of this communicator and sent from there on the
 *    communicator's own send stream; the caller may overwrite its buffer at once;
 *  - NCCL runs the operations of one communicator in the order they were issued, whatever their
 *    streams, so a send up the pipeline queued before a receive from above would wait for that
 *    receive's partner: messages to higher ranks and to lower ranks use two communicators ([UP] and
 *    [DOWN]), each of which carries one direction only, matched in order on both sides.
 * A send slot is reused once its send has finished (cudaEventQuery); while all are busy a new one is
 * allocated, up to SEND_SLOTS per direction (the 1F1B pipeline has at most pp - stage sends in
 * flight), and only then does the host wait for the oldest. Inside ncclGroupStart/End (NCCL launches
 * the send at ncclGroupEnd) a slot's completion event would come too early: synchronise the context
 * before sending again from the same direction (check_nccl's self send does).
 *
 * Nothing here waits for the device as a whole (backend.h): slots are allocated and freed
 * stream-ordered. While the host waits for the device, a watcher checks the communicators for
 * NCCL's asynchronous errors and bounds the wait of an unfinished receive or send
 * (DAM_NCCL_TIMEOUT_S, default 3600 s; 0: no bound): then it aborts the communicators and ends the
 * run with one line naming the peer, instead of hanging on a peer that died or stopped. */
#ifdef DAM_WITH_NCCL

#include "nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cuda/backend_cuda.h"

enum { UP = 0, DOWN = 1, SEND_SLOTS = 16 };

typedef struct {
    void *buf;
    size_t bytes;
    cudaEvent_t sent; /* recorded on the send stream after the slot's last send */
    int used, peer;
} SendSlot;

struct NcclComm {
    ncclComm_t comm[2]; /* [UP]: messages to higher ranks (and collectives); [DOWN]: to lower ranks */
    cudaStream_t send_stream[2];
    cudaEvent_t ready[2]; /* recorded on the context's stream once a send's data is in its slot */
    SendSlot slot[2][SEND_SLOTS];
    int n_slots[2], next[2];
    cudaEvent_t received; /* recorded on the context's stream after the last receive */
    int recv_peer, recv_issued;
    double timeout_s;
    BackendCtx *ctx;
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

#define DAM_NCCL_CUDA_CHECK(c, call)                                                                         \
    do {                                                                                                     \
        cudaError_t dam_cu_rc_ = (call);                                                                     \
        if (dam_cu_rc_ != cudaSuccess)                                                                       \
            dam_fail("%s failed in group %s (rank %d of %d): %s (%s:%d)", #call, (c)->g->name, (c)->g->rank, \
                     (c)->g->size, cudaGetErrorString(dam_cu_rc_), __FILE__, __LINE__);                      \
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

static cudaStream_t ctx_stream(BackendCtx *ctx) { return (cudaStream_t)dam_cuda_stream(ctx); }

/* The communicator carrying a message between this rank and peer (to itself: UP, both ends). */
static int direction(const NcclComm *c, int peer) { return peer < c->g->rank ? DOWN : UP; }

/* ---------------------------------------------------------------- watching the waits */

static int not_done(cudaEvent_t e) {
    cudaError_t rc = cudaEventQuery(e);
    (void)cudaGetLastError();
    return rc == cudaErrorNotReady;
}

/* The unfinished operation of c, if any: its kind and peer. */
static const char *pending_op(const NcclComm *c, int *peer) {
    if (c->recv_issued && not_done(c->received)) return *peer = c->recv_peer, "a receive from";
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < c->n_slots[d]; i++)
            if (c->slot[d][i].used && not_done(c->slot[d][i].sent))
                return *peer = c->slot[d][i].peer, "a send to";
    return NULL;
}

static void abort_and_fail(NcclComm *c, const char *why, double waited) {
    int peer = -1;
    const char *op = pending_op(c, &peer);
    for (int d = 0; d < 2; d++) ncclCommAbort(c->comm[d]);
    if (op)
        dam_fail(
            "NCCL on group %s (rank %d of %d): %s rank %d, waited for %.0f s: %s; the communicators were "
            "aborted",
            c->g->name, c->g->rank, c->g->size, op, peer, waited, why);
    dam_fail("NCCL on group %s (rank %d of %d), waited for %.0f s: %s; the communicators were aborted",
             c->g->name, c->g->rank, c->g->size, waited, why);
}

/* Called while the host waits for the device (backend_cuda.h). */
static void nccl_watch(void *arg, double waited) {
    NcclComm *c = arg;
    for (int d = 0; d < 2; d++) {
        ncclResult_t e = ncclSuccess;
        ncclCommGetAsyncError(c->comm[d], &e);
        if (e != ncclSuccess && e != ncclInProgress) {
            char why[160];
            snprintf(why, sizeof why, "NCCL reports '%s' (a peer died or the network failed)",
                     ncclGetErrorString(e));
            abort_and_fail(c, why, waited);
        }
    }
    int peer;
    if (c->timeout_s > 0 && waited >= c->timeout_s && pending_op(c, &peer))
        abort_and_fail(c, "not completed within DAM_NCCL_TIMEOUT_S (the peer stopped or is stuck)", waited);
}

/* ---------------------------------------------------------------- communicators */

NcclComm *nccl_comm_new(const CommGroup *g, BackendCtx *ctx) {
    NcclComm *c = dam_calloc(1, sizeof *c, "nccl communicator");
    c->g = g;
    c->ctx = ctx;
    const char *t = getenv("DAM_NCCL_TIMEOUT_S");
    c->timeout_s = t && *t ? (double)dam_parse_int(t, 0, 1000000000, "DAM_NCCL_TIMEOUT_S") : 3600;
    ncclUniqueId id[2];
    if (g->rank == 0) {
        DAM_NCCL_CHECK(c, ncclGetUniqueId(&id[UP]));
        DAM_NCCL_CHECK(c, ncclGetUniqueId(&id[DOWN]));
    }
    DAM_MPI_CHECK(MPI_Bcast(id, (int)sizeof id, MPI_BYTE, 0, g->comm));
    DAM_NCCL_CUDA_CHECK(c, cudaSetDevice(dam_cuda_device(ctx)));
    /* One after the other, [UP] then [DOWN] on every rank: each init blocks until the group has joined,
     * so the same order everywhere cannot deadlock. (Grouped inits are meant for one thread driving
     * several devices; two communicators of one device in one group is a case NCCL's documentation
     * does not describe.) */
    for (int d = 0; d < 2; d++) DAM_NCCL_CHECK(c, ncclCommInitRank(&c->comm[d], g->size, id[d], g->rank));
    for (int d = 0; d < 2; d++) {
        DAM_NCCL_CUDA_CHECK(c, cudaStreamCreateWithFlags(&c->send_stream[d], cudaStreamNonBlocking));
        DAM_NCCL_CUDA_CHECK(c, cudaEventCreateWithFlags(&c->ready[d], cudaEventDisableTiming));
    }
    DAM_NCCL_CUDA_CHECK(c, cudaEventCreateWithFlags(&c->received, cudaEventDisableTiming));
    dam_cuda_watch_add(ctx, nccl_watch, c);
    return c;
}

void nccl_comm_free(NcclComm *c) {
    if (!c) return;
    for (int d = 0; d < 2; d++) { /* the sends in flight finish first (watched: a peer that never receives) */
        dam_cuda_wait_stream(c->ctx, c->send_stream[d]);
        for (int i = 0; i < c->n_slots[d]; i++) {
            DAM_NCCL_CUDA_CHECK(c, cudaFreeAsync(c->slot[d][i].buf, c->send_stream[d]));
            DAM_NCCL_CUDA_CHECK(c, cudaEventDestroy(c->slot[d][i].sent));
        }
        DAM_NCCL_CUDA_CHECK(c, cudaStreamSynchronize(c->send_stream[d]));
    }
    dam_cuda_wait_stream(c->ctx, dam_cuda_stream(c->ctx)); /* the receives too */
    dam_cuda_watch_remove(c->ctx, c);
    for (int d = 0; d < 2; d++) {
        DAM_NCCL_CHECK(c, ncclCommDestroy(c->comm[d]));
        DAM_NCCL_CUDA_CHECK(c, cudaStreamDestroy(c->send_stream[d]));
        DAM_NCCL_CUDA_CHECK(c, cudaEventDestroy(c->ready[d]));
    }
    DAM_NCCL_CUDA_CHECK(c, cudaEventDestroy(c->received));
    free(c);
}

void nccl_allreduce_sum(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n) {
    need_elems(buf, n, "allreduce");
    if (n == 0) return;
    DAM_NCCL_CHECK(c, ncclAllReduce(buf.ptr, buf.ptr, n, nccl_type(buf, "allreduce"), ncclSum, c->comm[UP],
                                    ctx_stream(ctx)));
}

/* Whether slot s's last send has finished. cudaErrorNotReady is "not yet" (and is cleared from the
 * runtime's last-error state, so that the backend's next launch check does not report it); any
 * other error is a failure of the send (or of earlier work) and is reported here. */
static int slot_idle(NcclComm *c, SendSlot *s) {
    if (!s->used) return 1;
    cudaError_t rc = cudaEventQuery(s->sent);
    if (rc == cudaSuccess) return 1;
    if (rc == cudaErrorNotReady) {
        (void)cudaGetLastError();
        return 0;
    }
    DAM_NCCL_CUDA_CHECK(c, rc);
    return 0;
}

/* A slot of at least `bytes` whose previous send has finished: a free one, else a new one, else the
 * oldest after the host waits (watched) for its send. New and regrown slots are allocated on the
 * context's stream (its copy into the slot comes next there; the send stream waits for that copy),
 * a replaced buffer freed on the send stream after its last send: no device-wide wait. */
static SendSlot *send_slot(NcclComm *c, BackendCtx *ctx, int d, size_t bytes) {
    for (int i = 0; i < c->n_slots[d]; i++) {
        SendSlot *s = &c->slot[d][i];
        if (s->bytes >= bytes && slot_idle(c, s)) return s;
    }
    SendSlot *s;
    if (c->n_slots[d] < SEND_SLOTS) {
        s = &c->slot[d][c->n_slots[d]++];
        DAM_NCCL_CUDA_CHECK(c, cudaEventCreateWithFlags(&s->sent, cudaEventDisableTiming));
    } else {
        s = &c->slot[d][c->next[d]];
        c->next[d] = (c->next[d] + 1) % SEND_SLOTS;
        dam_cuda_wait_event(ctx, s->sent); /* every slot busy: the oldest first */
        if (s->bytes >= bytes) return s;
        DAM_NCCL_CUDA_CHECK(c, cudaFreeAsync(s->buf, c->send_stream[d]));
        s->buf = NULL, s->bytes = 0;
    }
    DAM_NCCL_CUDA_CHECK(c, cudaMallocAsync(&s->buf, bytes, ctx_stream(ctx)));
    s->bytes = bytes;
    return s;
}

void nccl_send(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n, int peer) {
    need_elems(buf, n, "send");
    if (n == 0) return;
    int d = direction(c, peer);
    size_t bytes = n * dam_dtype_size(buf.dtype);
    SendSlot *s = send_slot(c, ctx, d, bytes);
    cudaStream_t cs = ctx_stream(ctx);
    DAM_NCCL_CUDA_CHECK(c, cudaMemcpyAsync(s->buf, buf.ptr, bytes, cudaMemcpyDeviceToDevice, cs));
    DAM_NCCL_CUDA_CHECK(c, cudaEventRecord(c->ready[d], cs));
    DAM_NCCL_CUDA_CHECK(c, cudaStreamWaitEvent(c->send_stream[d], c->ready[d], 0));
    DAM_NCCL_CHECK(c, ncclSend(s->buf, n, nccl_type(buf, "send"), peer, c->comm[d], c->send_stream[d]));
    DAM_NCCL_CUDA_CHECK(c, cudaEventRecord(s->sent, c->send_stream[d]));
    s->used = 1, s->peer = peer;
}

void nccl_recv(NcclComm *c, BackendCtx *ctx, DevBuf buf, size_t n, int peer) {
    need_elems(buf, n, "recv");
    if (n == 0) return;
    /* the sender above sends DOWN, the one below UP: the receiver uses the sender's direction */
    int d = peer > c->g->rank ? DOWN : UP;
    DAM_NCCL_CHECK(c, ncclRecv(buf.ptr, n, nccl_type(buf, "recv"), peer, c->comm[d], ctx_stream(ctx)));
    DAM_NCCL_CUDA_CHECK(c, cudaEventRecord(c->received, ctx_stream(ctx)));
    c->recv_peer = peer, c->recv_issued = 1;
}

#else
typedef int dam_nccl_comm_not_built; /* ISO C wants a declaration in every translation unit */
#endif
