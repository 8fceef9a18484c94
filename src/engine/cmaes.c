/* cmaes.c — see cmaes.h. The formulas and constants are the tutorial's (arXiv:1604.00772, table 1),
 * with positive weights only (the "standard" CMA-ES of figure 6, no active update). */
#include "cmaes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK, through its Fortran symbol (no LAPACKE header needed; OpenBLAS ships it). The two trailing
 * lengths are the hidden string-length arguments gfortran passes for jobz and uplo. */
extern void dsyev_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
                   double *work, const int *lwork, int *info, size_t jobz_len, size_t uplo_len);

int cmaes_eigen(int n, double *a, double *vals) {
    int lwork = -1, info = 0;
    double query = 0;
    dsyev_("V", "U", &n, a, &n, vals, &query, &lwork, &info, 1, 1); /* workspace size query */
    if (info != 0) return info;
    lwork = (int)query;
    double *work = dam_malloc((size_t)lwork * sizeof(double), "dsyev workspace");
    dsyev_("V", "U", &n, a, &n, vals, work, &lwork, &info, 1, 1);
    free(work);
    return info;
}

int cmaes_default_lambda(int n) { return 4 + (int)floor(3.0 * log((double)n)); }

/* A standard normal double from the project's generator: Box-Muller on two 53-bit uniforms. */
static double normal(dam_rng *r) {
    double u1 = ((double)(dam_rng_u64(r) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    double u2 = (double)(dam_rng_u64(r) >> 11) / 9007199254740992.0;         /* [0, 1) */
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* The strategy parameters that follow from n and lambda (table 1). */
static void set_parameters(CmaEs *es) {
    int n = es->n, mu = es->lambda / 2;
    es->mu = mu;
    double sum = 0, sum2 = 0;
    for (int i = 0; i < mu; i++) sum += (es->weights[i] = log((es->lambda + 1) / 2.0) - log(i + 1.0));
    for (int i = 0; i < mu; i++) es->weights[i] /= sum, sum2 += es->weights[i] * es->weights[i];
    double me = es->mueff = 1.0 / sum2;
    es->cc = (4.0 + me / n) / (n + 4.0 + 2.0 * me / n);
    es->cs = (me + 2.0) / (n + me + 5.0);
    es->c1 = 2.0 / ((n + 1.3) * (n + 1.3) + me);
    double cmu = 2.0 * (me - 2.0 + 1.0 / me) / ((n + 2.0) * (n + 2.0) + me);
    es->cmu = cmu < 1.0 - es->c1 ? cmu : 1.0 - es->c1;
    double s = sqrt((me - 1.0) / (n + 1.0)) - 1.0;
    es->damps = 1.0 + 2.0 * (s > 0 ? s : 0) + es->cs;
    es->chi_n = sqrt((double)n) * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n));
}

static void alloc_state(CmaEs *es, int n, int lambda) {
    memset(es, 0, sizeof *es);
    es->n = n, es->lambda = lambda;
    size_t nn = (size_t)n * n, ln = (size_t)lambda * n;
    es->weights = dam_calloc((size_t)lambda, sizeof(double), "CMA-ES weights");
    es->mean = dam_calloc((size_t)n, sizeof(double), "CMA-ES mean");
    es->C = dam_calloc(nn, sizeof(double), "CMA-ES covariance");
    es->B = dam_calloc(nn, sizeof(double), "CMA-ES eigenvectors");
    es->D = dam_calloc((size_t)n, sizeof(double), "CMA-ES eigenvalues");
    es->pc = dam_calloc((size_t)n, sizeof(double), "CMA-ES path");
    es->ps = dam_calloc((size_t)n, sizeof(double), "CMA-ES path");
    es->arz = dam_calloc(ln, sizeof(double), "CMA-ES samples");
    es->arx = dam_calloc(ln, sizeof(double), "CMA-ES candidates");
    es->best_x = dam_calloc((size_t)n, sizeof(double), "CMA-ES best point");
    set_parameters(es);
}

void cmaes_init(CmaEs *es, int n, const double *x0, double sigma0, int lambda, uint64_t seed) {
    if (n < 1) dam_fail("CMA-ES: dimension %d (needs at least 1)", n);
    if (lambda <= 0) lambda = cmaes_default_lambda(n);
    if (lambda < 2) dam_fail("CMA-ES: population %d (needs at least 2)", lambda);
    alloc_state(es, n, lambda);
    memcpy(es->mean, x0, (size_t)n * sizeof(double));
    es->sigma = sigma0;
    for (int i = 0; i < n; i++) es->C[(size_t)i * n + i] = es->B[(size_t)i * n + i] = es->D[i] = 1.0;
    es->best_f = INFINITY;
    memcpy(es->best_x, x0, (size_t)n * sizeof(double));
    dam_rng_seed(&es->rng, seed);
}

void cmaes_free(CmaEs *es) {
    free(es->weights), free(es->mean), free(es->C), free(es->B), free(es->D);
    free(es->pc), free(es->ps), free(es->arz), free(es->arx), free(es->best_x);
    memset(es, 0, sizeof *es);
}

/* y = B (D .* z) */
static void transform(const CmaEs *es, const double *z, double *y) {
    int n = es->n;
    for (int i = 0; i < n; i++) y[i] = 0;
    for (int k = 0; k < n; k++) {
        double dz = es->D[k] * z[k];
        const double *bk = es->B + (size_t)k * n;
        for (int i = 0; i < n; i++) y[i] += bk[i] * dz;
    }
}

const double *cmaes_ask(CmaEs *es) {
    if (es->asked) return es->arx;
    int n = es->n;
    double *y = dam_malloc((size_t)n * sizeof(double), "CMA-ES sample");
    for (int c = 0; c < es->lambda; c++) {
        double *z = es->arz + (size_t)c * n, *x = es->arx + (size_t)c * n;
        for (int i = 0; i < n; i++) z[i] = normal(&es->rng);
        transform(es, z, y);
        for (int i = 0; i < n; i++) x[i] = es->mean[i] + es->sigma * y[i];
    }
    free(y);
    es->asked = 1;
    return es->arx;
}

/* Does candidate i rank after candidate j? Lower fitness first, NaN last, ties by index. */
static int ranks_after(const double *fitness, int i, int j) {
    double fi = fitness[i], fj = fitness[j];
    int ni = isnan(fi), nj = isnan(fj);
    if (ni != nj) return ni;
    if (!ni && fi != fj) return fi > fj;
    return i > j;
}

/* Insertion sort: stable and deterministic (lambda is small). */
static void rank_candidates(const double *fitness, int lambda, int *order) {
    for (int i = 0; i < lambda; i++) order[i] = i;
    for (int i = 1; i < lambda; i++)
        for (int j = i; j > 0 && ranks_after(fitness, order[j - 1], order[j]); j--) {
            int t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
}

/* C = B diag(D^2) B^T again after C changed (C symmetrised first; negative round-off clamped). */
static void decompose(CmaEs *es) {
    int n = es->n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) {
            double v = 0.5 * (es->C[(size_t)i * n + j] + es->C[(size_t)j * n + i]);
            es->C[(size_t)i * n + j] = es->C[(size_t)j * n + i] = v;
        }
    memcpy(es->B, es->C, (size_t)n * n * sizeof(double));
    int info = cmaes_eigen(n, es->B, es->D);
    if (info != 0)
        dam_fail("CMA-ES: LAPACK dsyev failed (info %d) at generation %lld", info, (long long)es->gen);
    double top = es->D[n - 1] > 0 ? es->D[n - 1] : 1.0;
    for (int k = 0; k < n; k++) es->D[k] = sqrt(es->D[k] > 1e-20 * top ? es->D[k] : 1e-20 * top);
}

void cmaes_tell(CmaEs *es, const double *fitness) {
    if (!es->asked) dam_fail("CMA-ES: tell without ask at generation %lld", (long long)es->gen);
    int n = es->n, lambda = es->lambda, mu = es->mu;
    int *order = dam_malloc((size_t)lambda * sizeof(int), "CMA-ES ranking");
    rank_candidates(fitness, lambda, order);
    es->evals += lambda;
    if (fitness[order[0]] < es->best_f) {
        es->best_f = fitness[order[0]];
        memcpy(es->best_x, es->arx + (size_t)order[0] * n, (size_t)n * sizeof(double));
    }
    /* recombination: y_w = (m' - m) / sigma, and z_w with B z_w = C^{-1/2} y_w; old mean kept for
     * the rank-mu steps */
    double *yw = dam_calloc((size_t)n, sizeof(double), "CMA-ES step"),
           *zw = dam_calloc((size_t)n, sizeof(double), "CMA-ES step"),
           *old = dam_malloc((size_t)n * sizeof(double), "CMA-ES mean");
    memcpy(old, es->mean, (size_t)n * sizeof(double));
    for (int r = 0; r < mu; r++) {
        const double *x = es->arx + (size_t)order[r] * n, *z = es->arz + (size_t)order[r] * n;
        for (int i = 0; i < n; i++)
            yw[i] += es->weights[r] * (x[i] - old[i]) / es->sigma, zw[i] += es->weights[r] * z[i];
    }
    for (int i = 0; i < n; i++) es->mean[i] += es->sigma * yw[i];
    /* step-size path: ps = (1 - cs) ps + sqrt(cs (2 - cs) mueff) B z_w */
    double a = sqrt(es->cs * (2.0 - es->cs) * es->mueff), ps2 = 0;
    for (int i = 0; i < n; i++) {
        double bz = 0;
        for (int k = 0; k < n; k++) bz += es->B[(size_t)k * n + i] * zw[k];
        es->ps[i] = (1.0 - es->cs) * es->ps[i] + a * bz;
        ps2 += es->ps[i] * es->ps[i];
    }
    double ps_norm = sqrt(ps2);
    double hsig_den = sqrt(1.0 - pow(1.0 - es->cs, 2.0 * (double)(es->gen + 1))) * es->chi_n;
    int hsig = ps_norm / hsig_den < 1.4 + 2.0 / (n + 1.0);
    /* covariance path and C: rank-one (pc) and rank-mu (the selected steps) */
    double b = sqrt(es->cc * (2.0 - es->cc) * es->mueff);
    for (int i = 0; i < n; i++) es->pc[i] = (1.0 - es->cc) * es->pc[i] + (hsig ? b * yw[i] : 0.0);
    double keep = 1.0 - es->c1 - es->cmu + (hsig ? 0.0 : es->c1 * es->cc * (2.0 - es->cc));
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++) {
            double rank_mu = 0;
            for (int r = 0; r < mu; r++) {
                const double *x = es->arx + (size_t)order[r] * n;
                rank_mu += es->weights[r] * (x[i] - old[i]) * (x[j] - old[j]);
            }
            rank_mu /= es->sigma * es->sigma;
            es->C[(size_t)i * n + j] =
                keep * es->C[(size_t)i * n + j] + es->c1 * es->pc[i] * es->pc[j] + es->cmu * rank_mu;
            es->C[(size_t)j * n + i] = es->C[(size_t)i * n + j];
        }
    es->sigma *= exp((es->cs / es->damps) * (ps_norm / es->chi_n - 1.0));
    decompose(es);
    es->gen++;
    es->asked = 0;
    free(order), free(yw), free(zw), free(old);
}

/* ---------------------------------------------------------------- state */

static const char state_magic[8] = {'D', 'A', 'M', 'C', 'M', 'A', '0', '1'};

/* The state's fields in one order, for saving and loading alike. */
typedef struct {
    void *p;
    size_t bytes;
} Field;

static int state_fields(CmaEs *es, Field *f) {
    size_t n = (size_t)es->n, ln = (size_t)es->lambda * n;
    int k = 0;
    f[k++] = (Field){&es->sigma, sizeof es->sigma};
    f[k++] = (Field){&es->gen, sizeof es->gen};
    f[k++] = (Field){&es->evals, sizeof es->evals};
    f[k++] = (Field){&es->asked, sizeof es->asked};
    f[k++] = (Field){&es->best_f, sizeof es->best_f};
    f[k++] = (Field){&es->rng.s, sizeof es->rng.s};
    f[k++] = (Field){es->mean, n * sizeof(double)};
    f[k++] = (Field){es->C, n * n * sizeof(double)};
    f[k++] = (Field){es->B, n * n * sizeof(double)};
    f[k++] = (Field){es->D, n * sizeof(double)};
    f[k++] = (Field){es->pc, n * sizeof(double)};
    f[k++] = (Field){es->ps, n * sizeof(double)};
    f[k++] = (Field){es->arz, ln * sizeof(double)};
    f[k++] = (Field){es->arx, ln * sizeof(double)};
    f[k++] = (Field){es->best_x, n * sizeof(double)};
    return k;
}

#define STATE_HEADER (sizeof state_magic + 2 * sizeof(int32_t))

size_t cmaes_state_size(const CmaEs *es) {
    Field f[16];
    int k = state_fields((CmaEs *)es, f);
    size_t bytes = STATE_HEADER;
    for (int i = 0; i < k; i++) bytes += f[i].bytes;
    return bytes;
}

void cmaes_state_save(const CmaEs *es, void *buf) {
    unsigned char *p = buf;
    int32_t dims[2] = {es->n, es->lambda};
    memcpy(p, state_magic, sizeof state_magic), p += sizeof state_magic;
    memcpy(p, dims, sizeof dims), p += sizeof dims;
    Field f[16];
    int k = state_fields((CmaEs *)es, f);
    for (int i = 0; i < k; i++) memcpy(p, f[i].p, f[i].bytes), p += f[i].bytes;
}

void cmaes_state_load(CmaEs *es, const void *buf, size_t bytes, const char *what) {
    const unsigned char *p = buf;
    int32_t dims[2];
    if (bytes < STATE_HEADER || memcmp(p, state_magic, sizeof state_magic))
        dam_fail("%s: not a saved CMA-ES state (no DAMCMA01 header)", what);
    memcpy(dims, p + sizeof state_magic, sizeof dims);
    if (dims[0] < 1 || dims[1] < 2 || dims[0] > (1 << 20) || dims[1] > (1 << 20))
        dam_fail("%s: CMA-ES state of dimension %d, population %d: corrupt", what, dims[0], dims[1]);
    alloc_state(es, dims[0], dims[1]);
    if (cmaes_state_size(es) != bytes)
        dam_fail("%s: CMA-ES state of %zu bytes; dimension %d, population %d need %zu", what, bytes, dims[0],
                 dims[1], cmaes_state_size(es));
    p += STATE_HEADER;
    Field f[16];
    int k = state_fields(es, f);
    for (int i = 0; i < k; i++) memcpy(f[i].p, p, f[i].bytes), p += f[i].bytes;
}
