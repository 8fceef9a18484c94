/* comm.h — the communication interface the driver uses: process grid (dp x pp x tp) and
 * collectives on host buffers that always name their group, over MPI. Device buffers (activations and
 * their gradients, coefficient gradients) move through mpi/devcomm.h instead: devcomm_* calls with
 * their own transports (MPI on host memory or staged, NCCL in CUDA builds), built on these groups. */
#ifndef DAM_COMM_H
#define DAM_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Check an MPI call; on failure print the call, the rank and MPI's message, then abort all ranks. */
#define DAM_MPI_CHECK(call)                                                                                  \
    do {                                                                                                     \
        int dam_mpi_rc_ = (call);                                                                            \
        if (dam_mpi_rc_ != MPI_SUCCESS) dam_mpi_fail(#call, dam_mpi_rc_, __FILE__, __LINE__);                \
    } while (0)
DAM_NORETURN void dam_mpi_fail(const char *call, int rc, const char *file, int line);

/* Initialise MPI (also in a single process), install the abort hook that stops every rank and the
 * rank prefix for messages. */
void comm_init(int *argc, char ***argv);
void comm_finalize(void);
int comm_world_rank(void);
int comm_world_size(void);

/* One group of ranks: a communicator plus this rank's place in it. */
typedef struct CommGroup {
    MPI_Comm comm;
    int rank, size;
    const char *name; /* "world", "dp", "pp", "tp": named in error messages */
} CommGroup;

/* The dp x pp x tp grid, built once. rank = ((dp_idx * pp) + pp_idx) * tp + tp_idx. */
typedef struct {
    int dp, pp, tp;
    int dp_idx, pp_idx, tp_idx;
    CommGroup world, dp_group, pp_group, tp_group;
    CommGroup replica; /* the pp x tp ranks of this data-parallel replica (writers of outputs) */
} ProcessGrid;

/* A sub-group of parent: ranks with the same color, ordered by key; color < 0 leaves this rank out
 * (out->comm = MPI_COMM_NULL, size 0). Collective over parent. */
void comm_split(const CommGroup *parent, int color, int key, const char *name, CommGroup *out);
void comm_group_free(CommGroup *g); /* a no-op for a zeroed group or a non-member's */

/* Build the grid; fails (one line from rank 0, all ranks exit) when world != dp*pp*tp. */
void grid_init(ProcessGrid *g, int dp, int pp, int tp);
void grid_free(ProcessGrid *g);

/* Collectives on host buffers. */
void comm_allreduce_sum_f32(const CommGroup *g, float *buf, size_t n);
void comm_allreduce_sum_f64(const CommGroup *g, double *buf, size_t n);
void comm_allreduce_max_f32(const CommGroup *g, float *buf, size_t n);
void comm_allreduce_sum_i32(const CommGroup *g, int32_t *buf, size_t n);
void comm_allreduce_max_f64(const CommGroup *g, double *buf, size_t n);
/* Every rank's `bytes` bytes, concatenated in rank order into out (size * bytes). */
void comm_allgather(const CommGroup *g, const void *in, size_t bytes, void *out);
void comm_bcast(const CommGroup *g, void *buf, size_t bytes, int root);
void comm_barrier(const CommGroup *g);
/* Fail with one line printed by world rank 0 only, when `bad` (which every rank computes alike):
 * every rank then calls MPI_Finalize and exits with status 1 (no MPI_Abort, so no abort banner;
 * Open MPI's mpirun still notes the nonzero exit unless run with -q, srun does not). */
void comm_fail_on_root(int bad, const char *fmt, ...) DAM_PRINTF(2, 3);
/* Logical OR of a flag over the group (errors). */
int comm_any(const CommGroup *g, int flag);
/* The largest of the ranks' values (stop requests: the signal number one of them received). */
int comm_max_int(const CommGroup *g, int v);

#endif
