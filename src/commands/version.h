/* version.h — what `dam_dist --version` prints: the version, the git commit and the build's
 * choices (set by the Makefile when it compiles version.c), and the libraries found at run time. */
#ifndef DAM_VERSION_H
#define DAM_VERSION_H

#include <stdio.h>

/* "0.1.0" */
const char *dam_version(void);
/* `git describe --always --dirty` of the tree at build time, "unknown" outside git. */
const char *dam_git_commit(void);
/* Prints the version, the commit and what was built in (compiler, -march, BLAS, MPI, HDF5, CUDA),
 * one item a line. Needs no MPI_Init. */
void dam_print_version(FILE *f);

#endif
