/* threadpool.h — a small fixed pool of worker threads for the CPU backend's non-GEMM ops.
 *
 * The BLAS already runs its GEMMs on every core; everything else the step does (materializing the
 * merged weights, the coefficient gradients, norms, SwiGLU, attention's softmax, the losses) ran on
 * one. pool_run splits an op into parts that write disjoint outputs; which thread runs a part never
 * changes a result, so an op that splits its work into a fixed number of parts (independent of the
 * thread count) and reduces the parts' partial results in part order gives bit-identical results on
 * 1 and N threads. Workers block on a condition variable between ops (they do not spin: on a
 * machine whose cores also run the BLAS's threads, spinning would take cores from the GEMMs). */
#ifndef DAM_THREADPOOL_H
#define DAM_THREADPOOL_H

#include <stddef.h>

typedef struct ThreadPool ThreadPool;

/* A pool of `threads` threads in all, the caller's included (threads - 1 workers are started);
 * threads <= 1 starts none and pool_run runs every part on the caller. */
ThreadPool *pool_new(int threads);
void pool_free(ThreadPool *p);
int pool_threads(const ThreadPool *p); /* 1 for NULL */

/* fn(arg, part, thread) for every part in [0, n_parts), spread over the pool's threads (the caller
 * is thread 0 and takes parts too; thread < pool_threads(p) names per-thread scratch); returns when
 * every part is done. Not reentrant: fn must not call pool_run on the same pool. p NULL: runs them
 * on the caller. */
typedef void (*PoolFn)(void *arg, int part, int thread);
void pool_run(ThreadPool *p, int n_parts, PoolFn fn, void *arg);
/* From now on run the parts on the OpenMP runtime's threads (the team oneDNN's bf16 GEMMs use)
 * instead of the pool's own: one set of threads for every op, not two sets taking turns on the
 * same cores and waking each other through the kernel. Returns 0 (and changes nothing) when built
 * without OpenMP. */
int pool_use_openmp(ThreadPool *p);

/* Part `part` of n_parts of the range [0, n): [*lo, *hi), even sizes (the first n % n_parts one
 * longer). */
void pool_split(size_t n, int n_parts, int part, size_t *lo, size_t *hi);

/* The number of threads the CPU backend uses: DAM_CPU_THREADS when set (>= 1), else the BLAS's own
 * thread count (openblas_get_num_threads, so OPENBLAS_NUM_THREADS decides), else
 * OPENBLAS_NUM_THREADS or OMP_NUM_THREADS, else 1. */
int pool_default_threads(void);

#endif
