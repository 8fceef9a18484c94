/* mpi.h (test shim) — just enough MPI for one process, so that mpi/nccl_comm.c runs on a GPU machine
 * that has no MPI (tests/cuda/check_nccl): a group of one rank, where the unique id's broadcast is a
 * no-op. Never used by dam_dist. */
#ifndef DAM_TEST_MPI_SHIM_H
#define DAM_TEST_MPI_SHIM_H

typedef int MPI_Comm;
typedef int MPI_Request;
typedef int MPI_Datatype;
#define MPI_SUCCESS 0
#define MPI_BYTE 1
#define MPI_COMM_NULL 0
#define MPI_REQUEST_NULL 0

static inline int MPI_Bcast(void *buf, int count, MPI_Datatype t, int root, MPI_Comm comm) {
    (void)buf, (void)count, (void)t, (void)root, (void)comm;
    return MPI_SUCCESS; /* one rank: the root already holds the data */
}

#endif
