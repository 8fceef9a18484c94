/* devcomm.c — see devcomm.h. Per call: NCCL when that is the transport; else MPI straight on the
 * buffer's memory when the backend makes it host-addressable (host_begin), else through a host
 * staging buffer (download, MPI, upload). MPI sums always run in fp32: a BF16 buffer is staged as
 * F32 even on host memory, since MPI has no bf16 sum (NCCL sums it in bf16, devcomm.h). */
#include "devcomm.h"

#include <stdlib.h>
#include <string.h>

#ifdef DAM_WITH_NCCL
#include "nccl_comm.h"
#endif

/* MPI counts are int: long buffers go in chunks. */
#define CHUNK ((size_t)1 << 30)

static int active(const DevComm *dc) { return dc->g && dc->g->size > 1; }

static DamTransport transport_from_env(DamTransport t) {
    const char *e = getenv("DAM_TRANSPORT");
    if (!e || !*e) return t;
    if (strcmp(e, "mpi") == 0) return DAM_TRANSPORT_MPI;
    if (strcmp(e, "nccl") == 0) return DAM_TRANSPORT_NCCL;
    if (strcmp(e, "auto") == 0) return DAM_TRANSPORT_AUTO;
    dam_fail("DAM_TRANSPORT=%s: expected auto, mpi or nccl", e);
}

void devcomm_init(DevComm *dc, const CommGroup *g, const Backend *be, BackendCtx *ctx, DamTransport t) {
    memset(dc, 0, sizeof *dc);
    dc->g = g, dc->be = be, dc->ctx = ctx;
    t = transport_from_env(t);
#ifdef DAM_WITH_NCCL
    int nccl_ok = be->device == DAM_DEVICE_CUDA;
#else
    int nccl_ok = 0;
#endif
    if (t == DAM_TRANSPORT_AUTO) t = nccl_ok ? DAM_TRANSPORT_NCCL : DAM_TRANSPORT_MPI;
    if (t == DAM_TRANSPORT_NCCL && !nccl_ok)
        dam_fail("transport nccl on group %s: %s", g ? g->name : "(none)",
                 be->device == DAM_DEVICE_CUDA ? "this dam_dist was built without NCCL"
                                               : "NCCL needs the cuda backend");
    dc->transport = t;
#ifdef DAM_WITH_NCCL
    if (t == DAM_TRANSPORT_NCCL && active(dc)) dc->nccl = nccl_comm_new(g, ctx);
#endif
}

void devcomm_free(DevComm *dc) {
#ifdef DAM_WITH_NCCL
    if (dc->nccl) nccl_comm_free(dc->nccl);
#endif
    free(dc->stage);
    memset(dc, 0, sizeof *dc);
}

/* The communicator's fp32 staging buffer, grown to n. */
static float *stage(DevComm *dc, size_t n) {
    if (dc->stage_n < n) {
        free(dc->stage);
        dc->stage = dam_malloc(n * sizeof(float), "devcomm staging buffer");
        dc->stage_n = n;
    }
    return dc->stage;
}

static void check_buf(const DevComm *dc, DevBuf b, size_t n, const char *op) {
    if (b.n < n) dam_fail("%s on group %s: buffer of %zu elements, %zu to move", op, dc->g->name, b.n, n);
    if (b.dtype != DAM_F32 && b.dtype != DAM_BF16 && b.dtype != DAM_I32)
        dam_fail("%s on group %s: dtype %s", op, dc->g->name, dam_dtype_name(b.dtype));
}

static MPI_Datatype mpi_type(dam_dtype t) {
    return t == DAM_F32 ? MPI_FLOAT : t == DAM_BF16 ? MPI_UINT16_T : MPI_INT32_T;
}

static void allreduce_host(const DevComm *dc, void *p, size_t n, MPI_Datatype t, size_t es) {
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t k = n - off < CHUNK ? n - off : CHUNK;
        DAM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, (char *)p + off * es, (int)k, t, MPI_SUM, dc->g->comm));
    }
}

void devcomm_allreduce_sum(DevComm *dc, DevBuf buf, size_t n) {
    if (!active(dc) || n == 0) return;
    check_buf(dc, buf, n, "devcomm_allreduce_sum");
    if (buf.dtype == DAM_I32) dam_fail("devcomm_allreduce_sum on group %s: I32 buffer", dc->g->name);
#ifdef DAM_WITH_NCCL
    if (dc->transport == DAM_TRANSPORT_NCCL) {
        nccl_allreduce_sum(dc->nccl, dc->ctx, buf, n);
        return;
    }
#endif
    void *host = buf.dtype == DAM_F32 ? dc->be->host_begin(dc->ctx, buf) : NULL;
    if (host) {
        allreduce_host(dc, host, n, MPI_FLOAT, sizeof(float));
        dc->be->host_end(dc->ctx, buf);
        return;
    }
    float *s = stage(dc, n);
    dc->be->download(dc->ctx, s, DAM_F32, buf, n);
    allreduce_host(dc, s, n, MPI_FLOAT, sizeof(float));
    dc->be->upload(dc->ctx, buf, s, DAM_F32, n);
}

/* Point to point: the buffer's own dtype on the wire (exact, and half the bytes for BF16). */
void devcomm_recv(DevComm *dc, DevBuf buf, size_t n, int src) {
    if (!active(dc) || n == 0) return;
    check_buf(dc, buf, n, "devcomm_recv");
#ifdef DAM_WITH_NCCL
    if (dc->transport == DAM_TRANSPORT_NCCL) {
        nccl_recv(dc->nccl, dc->ctx, buf, n, src);
        return;
    }
#endif
    size_t es = dam_dtype_size(buf.dtype);
    void *host = dc->be->host_begin(dc->ctx, buf), *p = host ? host : dam_malloc(n * es, "devcomm receive");
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t k = n - off < CHUNK ? n - off : CHUNK;
        DAM_MPI_CHECK(MPI_Recv((char *)p + off * es, (int)k, mpi_type(buf.dtype), src, 0, dc->g->comm,
                               MPI_STATUS_IGNORE));
    }
    if (host) {
        dc->be->host_end(dc->ctx, buf);
    } else {
        dc->be->upload(dc->ctx, buf, p, buf.dtype, n);
        free(p);
    }
}

/* The send returns at once on every path: on host memory the buffer stays held (host_begin) until
 * devcomm_wait; staged, the data is first copied into the request's own host buffer. */
void devcomm_isend(DevComm *dc, DevBuf buf, size_t n, int dest, DevRequest *req) {
    memset(req, 0, sizeof *req);
    req->mpi = MPI_REQUEST_NULL;
    if (!active(dc) || n == 0) return;
    check_buf(dc, buf, n, "devcomm_isend");
#ifdef DAM_WITH_NCCL
    if (dc->transport == DAM_TRANSPORT_NCCL) { /* stream-ordered: nothing left to wait for */
        nccl_send(dc->nccl, dc->ctx, buf, n, dest);
        return;
    }
#endif
    if (n > CHUNK)
        dam_fail("devcomm_isend on group %s: %zu elements in one message is too many", dc->g->name, n);
    void *host = dc->be->host_begin(dc->ctx, buf);
    if (host) {
        req->held = buf;
    } else {
        host = req->stage = dam_malloc(n * dam_dtype_size(buf.dtype), "devcomm send staging");
        dc->be->download(dc->ctx, host, buf.dtype, buf, n);
    }
    DAM_MPI_CHECK(MPI_Isend(host, (int)n, mpi_type(buf.dtype), dest, 0, dc->g->comm, &req->mpi));
    req->active = 1;
}

void devcomm_wait(DevComm *dc, DevRequest *req) {
    if (!req->active) return;
    DAM_MPI_CHECK(MPI_Wait(&req->mpi, MPI_STATUS_IGNORE));
    if (req->held.ptr) dc->be->host_end(dc->ctx, req->held);
    free(req->stage);
    memset(req, 0, sizeof *req);
    req->mpi = MPI_REQUEST_NULL;
}
