/* emu_nccl.c — mpi/nccl_comm.c on 2 ranks with the CUDA backend, under the CPU emulation of CUDA and
 * NCCL (make cuda-emu-test; a lent GPU machine has one GPU, and NCCL refuses two ranks on one
 * device, so this multi-rank path can only be run here). Run under mpirun -n 2:
 *
 *   emu_nccl            all-reduce (F32, BF16) and send/receive both ways against the exact sums and
 *                       data; then the pattern of the 1F1B pipeline that deadlocked when the backend
 *                       synchronised the whole device mid-step: each rank sends to the other, then
 *                       runs an op whose scratch (or index list) must grow, then receives — a
 *                       device-wide wait in the growth (cudaFree, cudaMallocHost) holds the send until
 *                       the peer receives, and the peer is in the same wait;
 *   emu_nccl no-recv    rank 1 never receives rank 0's send: rank 0 must end, within
 *                       DAM_NCCL_TIMEOUT_S, with one line naming the peer (not hang);
 *   emu_nccl no-send    rank 0 waits for a receive that rank 1 never sends: likewise.
 * Prints OK / NOT OK per check and "emu_nccl: N passed, N failed" on rank 0. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "comm.h"
#include "nccl_comm.h"

static int n_ok, n_bad, rank;

static void report(const char *what, int ok) {
    if (rank == 0) printf("%-6s %s\n", ok ? "OK" : "NOT OK", what);
    fflush(stdout);
    ok ? n_ok++ : n_bad++;
}

static float value(int r, size_t i) { return (float)((int)(i % 251) - 125) * 0.25f + (float)r; }

static DevBuf filled(const Backend *be, BackendCtx *ctx, dam_dtype t, size_t n, int r) {
    float *h = dam_malloc(n * sizeof(float), "host");
    for (size_t i = 0; i < n; i++) h[i] = value(r, i);
    DevBuf b = be->alloc(ctx, n, t, "buffer");
    be->upload(ctx, b, h, DAM_F32, n);
    free(h);
    return b;
}

/* 1 when b holds value(r, i) (sum: value(0, i) + value(1, i)) everywhere. */
static int holds(const Backend *be, BackendCtx *ctx, DevBuf b, size_t n, int r, int sum) {
    float *h = dam_malloc(n * sizeof(float), "host");
    be->download(ctx, h, DAM_F32, b, n);
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) ok = h[i] == (sum ? value(0, i) + value(1, i) : value(r, i));
    free(h);
    return ok;
}

/* An op whose device scratch grows with n: the MoFO threshold of n entries. */
static void scratch_op(const Backend *be, BackendCtx *ctx, size_t n) {
    DevBuf m = filled(be, ctx, DAM_F32, n, 0);
    (void)be->mofo_threshold(ctx, m, n, 0.5f);
    be->free(ctx, &m);
}

/* An op whose index list grows with n: a gather of n rows. */
static void index_op(const Backend *be, BackendCtx *ctx, size_t n) {
    DevBuf src = filled(be, ctx, DAM_F32, 4, 0), dst = be->alloc(ctx, n, DAM_F32, "gathered");
    int32_t *rows = dam_malloc(n * sizeof(int32_t), "rows");
    for (size_t i = 0; i < n; i++) rows[i] = (int32_t)(i % 4);
    be->gather_rows(ctx, dst, src, rows, (int)n, 1);
    be->synchronize(ctx);
    free(rows);
    be->free(ctx, &src), be->free(ctx, &dst);
}

/* Send to the peer, grow something mid-"step", then receive the peer's message. */
static void exchange_across_growth(const Backend *be, BackendCtx *ctx, NcclComm *c, int use_index,
                                   const char *what) {
    size_t n = 3000;
    int peer = 1 - rank;
    if (use_index)
        index_op(be, ctx, 16);
    else
        scratch_op(be, ctx, 64);
    DevBuf out = filled(be, ctx, DAM_BF16, n, rank), in = be->alloc(ctx, n, DAM_BF16, "received");
    nccl_send(c, ctx, out, n, peer);
    if (use_index)
        index_op(be, ctx, 200000); /* past the pinned index buffer's first size (65536) */
    else
        scratch_op(be, ctx, 100000);
    nccl_recv(c, ctx, in, n, peer);
    report(what, holds(be, ctx, in, n, peer, 0));
    be->free(ctx, &out), be->free(ctx, &in);
}

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    rank = comm_world_rank();
    const char *mode = argc > 1 ? argv[1] : "all";
    if (comm_world_size() != 2) dam_fail("emu_nccl runs on 2 ranks (mpirun -n 2)");
    const Backend *be = backend_cuda();
    if (!be) dam_fail("emu_nccl: this build has no CUDA backend");
    BackendCtx *ctx = be->ctx_new(0);
    CommGroup g = {MPI_COMM_WORLD, rank, 2, "world"};
    NcclComm *c = nccl_comm_new(&g, ctx);
    size_t n = 5003;
    if (!strcmp(mode, "no-recv")) {
        DevBuf b = filled(be, ctx, DAM_F32, n, rank);
        if (rank == 0) nccl_send(c, ctx, b, n, 1);
        nccl_comm_free(c); /* rank 0 waits here for a send nobody receives */
        comm_barrier(&g);
        dam_fail("emu_nccl no-recv: the unmatched send completed");
    }
    if (!strcmp(mode, "no-send")) {
        DevBuf b = be->alloc(ctx, n, DAM_F32, "received");
        if (rank == 0) nccl_recv(c, ctx, b, n, 1);
        be->synchronize(ctx); /* rank 0 waits here for a message nobody sends */
        comm_barrier(&g);
        dam_fail("emu_nccl no-send: the unmatched receive completed");
    }
    dam_dtype dts[2] = {DAM_F32, DAM_BF16};
    for (int d = 0; d < 2; d++) {
        DevBuf b = filled(be, ctx, dts[d], n, rank);
        nccl_allreduce_sum(c, ctx, b, n);
        report(d ? "allreduce_sum bf16 over 2 ranks: the exact sums"
                 : "allreduce_sum f32 over 2 ranks: the exact sums",
               holds(be, ctx, b, n, 0, 1));
        DevBuf s = filled(be, ctx, dts[d], n, rank), r = be->alloc(ctx, n, dts[d], "received");
        for (int from = 0; from < 2; from++) { /* 0 -> 1, then 1 -> 0 */
            if (rank == from) nccl_send(c, ctx, s, n, 1 - from);
            if (rank != from) nccl_recv(c, ctx, r, n, from);
        }
        report(d ? "send/recv bf16 both ways" : "send/recv f32 both ways", holds(be, ctx, r, n, 1 - rank, 0));
        be->free(ctx, &b), be->free(ctx, &s), be->free(ctx, &r);
    }
    exchange_across_growth(be, ctx, c, 0, "sends in flight across a scratch growth (no device-wide wait)");
    exchange_across_growth(be, ctx, c, 1,
                           "sends in flight across an index-list growth (no device-wide wait)");
    nccl_comm_free(c);
    be->ctx_free(ctx);
    if (rank == 0) printf("emu_nccl: %d passed, %d failed\n", n_ok, n_bad);
    comm_finalize();
    return n_bad ? 1 : 0;
}
