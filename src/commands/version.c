/* version.c — see version.h. The Makefile passes DAM_VERSION, DAM_GIT_COMMIT, DAM_BUILD_CC,
 * DAM_BUILD_MARCH, DAM_BUILD_BLAS and DAM_BUILD_LAPACK as string macros (a stamp file rebuilds only
 * this file when they change); built without them, each reads "unknown". */
#include "version.h"

#include <hdf5.h>
#include <mpi.h>
#include <string.h>

#include "blas.h"

#ifndef DAM_VERSION
#define DAM_VERSION "unknown"
#endif
#ifndef DAM_GIT_COMMIT
#define DAM_GIT_COMMIT "unknown"
#endif
#ifndef DAM_BUILD_CC
#define DAM_BUILD_CC "unknown"
#endif
#ifndef DAM_BUILD_MARCH
#define DAM_BUILD_MARCH "unknown"
#endif
#ifndef DAM_BUILD_BLAS
#define DAM_BUILD_BLAS "unknown"
#endif
#ifndef DAM_BUILD_LAPACK
#define DAM_BUILD_LAPACK ""
#endif

const char *dam_version(void) { return DAM_VERSION; }

const char *dam_git_commit(void) { return DAM_GIT_COMMIT; }

void dam_print_version(FILE *f) {
    fprintf(f, "dam_dist %s (commit %s)\n", DAM_VERSION, DAM_GIT_COMMIT);
    fprintf(f, "built with: %s, -march=%s", DAM_BUILD_CC, DAM_BUILD_MARCH);
#ifdef __VERSION__
    fprintf(f, ", compiler %s", __VERSION__);
#endif
    fprintf(f, "\n");
    const char *blas = blas_describe();
    if (!strncmp(blas, "BLAS: ", 6)) blas += 6;
    fprintf(f, "BLAS: %s (linked with %s%s%s)\n", blas, DAM_BUILD_BLAS, *DAM_BUILD_LAPACK ? ", LAPACK " : "",
            DAM_BUILD_LAPACK);
    char mpi[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpi, &len); /* one of the calls allowed before MPI_Init */
    for (int i = 0; i < len; i++)
        if (mpi[i] == '\n' || mpi[i] == ',') {
            mpi[i] = 0;
            break;
        }
    fprintf(f, "MPI: %s (MPI %d.%d headers)\n", mpi, MPI_VERSION, MPI_SUBVERSION);
    unsigned maj = 0, min = 0, rel = 0;
    H5get_libversion(&maj, &min, &rel);
#ifdef H5_HAVE_PARALLEL
    const char *par = "parallel";
#else
    const char *par = "serial";
#endif
    fprintf(f, "HDF5: %u.%u.%u (%s; headers %d.%d.%d)\n", maj, min, rel, par, H5_VERS_MAJOR, H5_VERS_MINOR,
            H5_VERS_RELEASE);
#ifdef DAM_WITH_CUDA
    fprintf(f, "CUDA: yes (the CUDA backend is built in)\n");
#else
    fprintf(f, "CUDA: no (CPU backend only; build with make CUDA=1)\n");
#endif
}
