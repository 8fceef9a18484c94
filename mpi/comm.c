/* comm.c — MPI implementation of comm.h. */
#include "comm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void abort_all_ranks(int status) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    fflush(NULL);
    if (inited && !finalized && comm_world_size() > 1) MPI_Abort(MPI_COMM_WORLD, status);
    _exit(status); /* no exit handlers after an error (see util.c) */
}

/* The end of a failure that every rank saw alike (comm_fail_on_root). */
static DAM_NORETURN void finalize_and_exit(int status) {
    dam_signals_exit_quietly();
    fflush(NULL);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
    _exit(status);
}

void dam_mpi_fail(const char *call, int rc, const char *file, int line) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    dam_fail("%s failed at %s:%d: %s", call, file, line, msg);
}

void comm_init(int *argc, char ***argv) {
    int provided;
    DAM_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    dam_set_abort_hook(abort_all_ranks);
    dam_set_log_rank(comm_world_rank(), comm_world_size());
}

void comm_finalize(void) { MPI_Finalize(); }

int comm_world_rank(void) {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int comm_world_size(void) {
    int s = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}

static void group_split(CommGroup *g, int color, int key, const char *name) {
    DAM_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, color, key, &g->comm));
    MPI_Comm_set_errhandler(g->comm, MPI_ERRORS_RETURN);
    DAM_MPI_CHECK(MPI_Comm_rank(g->comm, &g->rank));
    DAM_MPI_CHECK(MPI_Comm_size(g->comm, &g->size));
    g->name = name;
}

void comm_split(const CommGroup *parent, int color, int key, const char *name, CommGroup *out) {
    memset(out, 0, sizeof *out);
    DAM_MPI_CHECK(MPI_Comm_split(parent->comm, color < 0 ? MPI_UNDEFINED : color, key, &out->comm));
    out->name = name;
    if (out->comm == MPI_COMM_NULL) return; /* size 0: not a member */
    MPI_Comm_set_errhandler(out->comm, MPI_ERRORS_RETURN);
    DAM_MPI_CHECK(MPI_Comm_rank(out->comm, &out->rank));
    DAM_MPI_CHECK(MPI_Comm_size(out->comm, &out->size));
}

void comm_group_free(CommGroup *g) {
    if (g->size > 0 && g->comm != MPI_COMM_NULL && g->comm != MPI_COMM_WORLD) MPI_Comm_free(&g->comm);
    memset(g, 0, sizeof *g);
}

void comm_fail_on_root(int bad, const char *fmt, ...) {
    if (!bad) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Every rank knows: no MPI_Abort (whose banner would bury the line, and which kills ranks
     * mid-write); rank 0 prints, every rank finalizes and exits 1. */
    if (comm_world_rank() == 0) {
        dam_set_abort_hook(finalize_and_exit);
        dam_fail("%s", msg);
    }
    finalize_and_exit(1);
}

void grid_init(ProcessGrid *g, int dp, int pp, int tp) {
    int world = comm_world_size(), rank = comm_world_rank();
    comm_fail_on_root(dp < 1 || pp < 1 || tp < 1 || dp * pp * tp != world,
                      "parallel layout dp=%d x pp=%d x tp=%d = %d ranks does not match the %d ranks started",
                      dp, pp, tp, dp * pp * tp, world);
    g->dp = dp, g->pp = pp, g->tp = tp;
    g->tp_idx = rank % tp;
    g->pp_idx = (rank / tp) % pp;
    g->dp_idx = rank / (tp * pp);
    g->world = (CommGroup){MPI_COMM_WORLD, rank, world, "world"};
    group_split(&g->tp_group, g->dp_idx * pp + g->pp_idx, g->tp_idx, "tp");
    group_split(&g->pp_group, g->dp_idx * tp + g->tp_idx, g->pp_idx, "pp");
    group_split(&g->dp_group, g->pp_idx * tp + g->tp_idx, g->dp_idx, "dp");
    group_split(&g->replica, g->dp_idx, g->pp_idx * tp + g->tp_idx, "replica");
}

void grid_free(ProcessGrid *g) {
    MPI_Comm_free(&g->tp_group.comm);
    MPI_Comm_free(&g->pp_group.comm);
    MPI_Comm_free(&g->dp_group.comm);
    MPI_Comm_free(&g->replica.comm);
}

/* MPI counts are int: split long buffers. */
#define CHUNK ((size_t)1 << 30)

static void allreduce(const CommGroup *g, void *buf, size_t n, size_t elsize, MPI_Datatype t, MPI_Op op) {
    if (g->size == 1) return;
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t k = n - off < CHUNK ? n - off : CHUNK;
        DAM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * elsize, (int)k, t, op, g->comm));
    }
}

void comm_allreduce_sum_f32(const CommGroup *g, float *buf, size_t n) {
    allreduce(g, buf, n, sizeof(float), MPI_FLOAT, MPI_SUM);
}
void comm_allreduce_sum_f64(const CommGroup *g, double *buf, size_t n) {
    allreduce(g, buf, n, sizeof(double), MPI_DOUBLE, MPI_SUM);
}
void comm_allreduce_max_f32(const CommGroup *g, float *buf, size_t n) {
    allreduce(g, buf, n, sizeof(float), MPI_FLOAT, MPI_MAX);
}

void comm_allreduce_sum_i32(const CommGroup *g, int32_t *buf, size_t n) {
    allreduce(g, buf, n, sizeof(int32_t), MPI_INT32_T, MPI_SUM);
}

void comm_allreduce_max_f64(const CommGroup *g, double *buf, size_t n) {
    allreduce(g, buf, n, sizeof(double), MPI_DOUBLE, MPI_MAX);
}

void comm_allgather(const CommGroup *g, const void *in, size_t bytes, void *out) {
    if (g->size == 1) {
        memcpy(out, in, bytes);
        return;
    }
    if (bytes > (size_t)1 << 30)
        dam_fail("comm_allgather on group %s: %zu bytes per rank is too many", g->name, bytes);
    DAM_MPI_CHECK(MPI_Allgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, g->comm));
}

void comm_bcast(const CommGroup *g, void *buf, size_t bytes, int root) {
    if (g->size == 1) return;
    for (size_t off = 0; off < bytes; off += CHUNK) {
        size_t k = bytes - off < CHUNK ? bytes - off : CHUNK;
        DAM_MPI_CHECK(MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, g->comm));
    }
}

void comm_barrier(const CommGroup *g) { DAM_MPI_CHECK(MPI_Barrier(g->comm)); }

int comm_any(const CommGroup *g, int flag) {
    int v = flag != 0;
    if (g->size > 1) DAM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_LOR, g->comm));
    return v;
}

int comm_max_int(const CommGroup *g, int v) {
    if (g->size > 1) DAM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, g->comm));
    return v;
}
