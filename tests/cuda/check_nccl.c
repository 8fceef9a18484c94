/* check_nccl.c — mpi/nccl_comm.c on one GPU: a one-rank NCCL communicator made the way dam_dist makes
 * every group's (unique id from rank 0, broadcast, ncclCommInitRank on the context's device; the
 * broadcast is tests/cuda/shim_mpi's no-op), then an all-reduce of F32 and BF16 device buffers on the
 * backend's stream (a sum over one rank: the data must come back unchanged) and a grouped send and
 * receive to itself. The multi-rank logic is proven on the CPU with MPI; this proves the NCCL calls,
 * types and streams. Prints OK / NOT OK per check and one summary line. */
#include <math.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "nccl_comm.h"

void dam_mpi_fail(const char *call, int rc, const char *file, int line) {
    dam_fail("%s failed (%d) at %s:%d", call, rc, file, line);
}

static int n_ok, n_bad;

static void report(const char *what, int ok) {
    printf("%-44s %s\n", what, ok ? "OK" : "NOT OK");
    if (ok)
        n_ok++;
    else
        n_bad++;
}

static int same(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i])) return 0;
    return 1;
}

int main(void) {
    const Backend *be = backend_cuda();
    if (!be) {
        printf("check_nccl: this build has no CUDA backend\n");
        return 2;
    }
    BackendCtx *ctx = be->ctx_new(0);
    CommGroup g = {0, 0, 1, "one"};
    NcclComm *c = nccl_comm_new(&g, ctx);
    report("nccl_comm_new (one rank)", c != NULL);
    size_t n = 1 << 20;
    float *h = dam_malloc(n * sizeof(float), "h"), *back = dam_malloc(n * sizeof(float), "back");
    dam_rng rng;
    dam_rng_seed(&rng, 7);
    for (size_t i = 0; i < n; i++) h[i] = dam_bf16_to_f32(dam_f32_to_bf16(dam_rng_normal(&rng)));
    dam_dtype dts[2] = {DAM_F32, DAM_BF16};
    for (int d = 0; d < 2; d++) {
        DevBuf b = be->alloc(ctx, n, dts[d], "nccl buffer"), r = be->alloc(ctx, n, dts[d], "nccl recv");
        be->upload(ctx, b, h, DAM_F32, n);
        nccl_allreduce_sum(c, ctx, devbuf_slice(b, 1, n - 1), n - 1); /* a view: an odd offset */
        be->download(ctx, back, DAM_F32, b, n);
        report(dts[d] == DAM_F32 ? "allreduce_sum f32 (one rank: unchanged)"
                                 : "allreduce_sum bf16 (one rank: unchanged)",
               same(h, back, n));
        ncclGroupStart();
        nccl_send(c, ctx, b, n, 0);
        nccl_recv(c, ctx, r, n, 0);
        ncclGroupEnd(); /* a self send and its receive: one group (then synchronised by the download) */
        be->download(ctx, back, DAM_F32, r, n);
        report(dts[d] == DAM_F32 ? "send/recv to itself f32" : "send/recv to itself bf16", same(h, back, n));
        be->free(ctx, &b), be->free(ctx, &r);
    }
    nccl_comm_free(c);
    be->ctx_free(ctx);
    free(h), free(back);
    printf("check_nccl: %d passed, %d failed\n", n_ok, n_bad);
    return n_bad ? 1 : 0;
}
