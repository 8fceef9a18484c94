/* blas.h — which BLAS this process runs, and a fix for OpenBLAS running a generic kernel.
 *
 * OpenBLAS built with DYNAMIC_ARCH picks its kernels when the library loads, from the CPU it
 * recognises; on a CPU it does not know (a new model, or a hypervisor that hides the model) it
 * falls back to an old generic one such as Prescott, which runs sgemm 2-3 times slower than
 * Haswell's AVX2/FMA kernel. The choice can only be changed by OPENBLAS_CORETYPE before the library
 * loads, so dam_dist re-executes itself once with OPENBLAS_CORETYPE=Haswell when that happened on a
 * CPU with AVX2 and FMA. The OpenBLAS functions are looked up at run time (dlsym), so that dam_dist
 * links against any CBLAS. */
#ifndef DAM_BLAS_H
#define DAM_BLAS_H

/* Set in the re-executed process, to the kernel OpenBLAS had chosen (guards against loops). */
#define BLAS_REEXEC_ENV "DAM_BLAS_REEXEC"
/* The kernel asked for on an AVX2+FMA CPU. */
#define BLAS_GOOD_CORETYPE "Haswell"

/* The decision, separate for tests: the OPENBLAS_CORETYPE to re-execute with, or NULL to go on.
 * corename: openblas_get_corename() (NULL: not OpenBLAS); config: openblas_get_config() (NULL if
 * absent; a re-exec only helps with DYNAMIC_ARCH); cpu_avx2_fma: the CPU has both; user_coretype:
 * the OPENBLAS_CORETYPE the process started with (a user's own is respected); marker: the value of
 * BLAS_REEXEC_ENV (set: this process already is the re-executed one). */
const char *blas_reexec_coretype(const char *corename, const char *config, int cpu_avx2_fma,
                                 const char *user_coretype, const char *marker);

/* Is corename a kernel for CPUs without AVX2 and FMA (Prescott, Core2, Nehalem, Sandybridge, ...)? */
int blas_core_is_generic(const char *corename);

/* Set in the re-executed process when dam_dist set the idle-thread variables below. */
#define BLAS_ENV_MARKER "DAM_THREAD_ENV"
/* Variables the libraries read once, when they load, that dam_dist sets where the user has not:
 * OpenBLAS's idle threads spin for 2^28 cycles after every call (its default THREAD_TIMEOUT), on the
 * very cores the CPU backend's thread pool works on next (measured: 15 % of a step at the SmolLM2
 * shape, bench/RESULTS.md). 4 is OpenBLAS's smallest timeout: its threads sleep almost at once.
 * OpenMP's wait policy is left alone: under bf16 GEMMs the pool runs on oneDNN's OpenMP team itself
 * (pool_use_openmp), so its threads spinning between ops is what keeps them fast (a PASSIVE policy,
 * which this used to set, cost 25 % of the bf16 step there). */
#define BLAS_THREAD_TIMEOUT_ENV "OPENBLAS_THREAD_TIMEOUT"
#define BLAS_THREAD_TIMEOUT "4"

/* Call first in main, before MPI_Init (and before any thread starts): re-executes /proc/self/exe
 * with the same arguments, OPENBLAS_CORETYPE=Haswell when blas_reexec_coretype says so, and the
 * idle-thread variables above where they are unset, which keeps the process id, so it works under
 * mpirun and srun. Returns when no re-execution is needed, or when it failed (a note on stderr for
 * the kernel; the idle threads then only cost time). */
void blas_fix_kernel(char **argv);

/* One line naming the BLAS and the kernel it runs, e.g. "BLAS: OpenBLAS 0.3.21, kernel Haswell,
 * 2 threads", with a note when dam_dist re-executed itself or the user chose the kernel, or
 * "BLAS: libblas.so.3 (not OpenBLAS: kernel not reported)". Static storage. */
const char *blas_describe(void);

#endif
