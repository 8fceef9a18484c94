/* threadpool.c — see threadpool.h. */
#include "threadpool.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "util.h"

typedef struct {
    ThreadPool *pool;
    int thread;
} WorkerArg;

struct ThreadPool {
    int threads;
    pthread_t *workers;
    WorkerArg *args;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    unsigned long generation; /* bumped for every op (and for stopping) */
    int stop, busy;           /* busy: workers still inside the current op */
    PoolFn fn;
    void *arg;
    int n_parts;
    atomic_int next; /* the next part to take */
    int openmp;      /* pool_use_openmp */
};

/* Takes parts until none is left. */
static void run_parts(ThreadPool *p, int thread) {
    for (int part; (part = atomic_fetch_add(&p->next, 1)) < p->n_parts;) p->fn(p->arg, part, thread);
}

static void *worker(void *arg_) {
    WorkerArg *arg = arg_;
    ThreadPool *p = arg->pool;
    int thread = arg->thread;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->generation == seen) pthread_cond_wait(&p->start, &p->mu);
        seen = p->generation;
        if (p->stop) break;
        pthread_mutex_unlock(&p->mu);
        run_parts(p, thread);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

ThreadPool *pool_new(int threads) {
    ThreadPool *p = dam_calloc(1, sizeof *p, "thread pool");
    p->threads = threads > 1 ? threads : 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    p->workers = dam_calloc((size_t)p->threads, sizeof(pthread_t), "thread pool workers");
    p->args = dam_calloc((size_t)p->threads, sizeof(WorkerArg), "thread pool workers");
    for (int i = 1; i < p->threads; i++)
        if (p->args[i] = (WorkerArg){p, i}, pthread_create(&p->workers[i], NULL, worker, &p->args[i]) != 0)
            dam_fail("thread pool: cannot start worker thread %d of %d", i, p->threads - 1);
    return p;
}

void pool_free(ThreadPool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1, p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->threads; i++) pthread_join(p->workers[i], NULL);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p->args);
    free(p);
}

int pool_threads(const ThreadPool *p) { return p ? p->threads : 1; }

int pool_use_openmp(ThreadPool *p) {
#ifdef _OPENMP
    if (p) p->openmp = 1;
    return 1;
#else
    return 0;
#endif
}

void pool_run(ThreadPool *p, int n_parts, PoolFn fn, void *arg) {
    if (!p || p->threads == 1 || n_parts <= 1) {
        for (int part = 0; part < n_parts; part++) fn(arg, part, 0);
        return;
    }
#ifdef _OPENMP
    if (p->openmp) { /* the team's size is at most p->threads: thread numbers stay in range */
        p->fn = fn, p->arg = arg, p->n_parts = n_parts;
        atomic_store(&p->next, 0);
#pragma omp parallel num_threads(p->threads)
        run_parts(p, omp_get_thread_num());
        return;
    }
#endif
    pthread_mutex_lock(&p->mu);
    p->fn = fn, p->arg = arg, p->n_parts = n_parts;
    atomic_store(&p->next, 0);
    p->busy = p->threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    run_parts(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void pool_split(size_t n, int n_parts, int part, size_t *lo, size_t *hi) {
    size_t q = n / (size_t)n_parts, r = n % (size_t)n_parts, k = (size_t)part;
    *lo = k * q + (k < r ? k : r);
    *hi = *lo + q + (k < r);
}

static int env_threads(const char *name) {
    const char *s = getenv(name);
    int n = s ? atoi(s) : 0;
    return n >= 1 ? n : 0;
}

int pool_default_threads(void) {
    int n = env_threads("DAM_CPU_THREADS");
    if (n) return n;
    int (*blas_threads)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
    if (blas_threads && (n = blas_threads()) >= 1) return n;
    if ((n = env_threads("OPENBLAS_NUM_THREADS"))) return n;
    if ((n = env_threads("OMP_NUM_THREADS"))) return n;
    return 1;
}
