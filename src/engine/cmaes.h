/* cmaes.h — Hansen's standard (mu/mu_w, lambda)-CMA-ES (N. Hansen, "The CMA Evolution Strategy: A
 * Tutorial", arXiv:1604.00772, table 1 and figure 6): weighted recombination of the best mu = lambda/2
 * of lambda samples, cumulative step-size adaptation, rank-one and rank-mu updates of the covariance
 * matrix C, whose eigendecomposition C = B diag(D^2) B^T comes from LAPACK's dsyev every generation.
 * Minimises. Deterministic by seed (dam_rng of util.h), so that ranks that run the same arithmetic
 * from the same seed hold the same state; the whole state serialises for checkpoints, and a loaded
 * state continues bit for bit as the saved one would have.
 *
 * Ask/tell: X = cmaes_ask(es) gives lambda candidates (row i = candidate i, n doubles); the caller
 * evaluates them in any order or place and hands the fitnesses back in the same order to cmaes_tell. */
#ifndef DAM_CMAES_H
#define DAM_CMAES_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct {
    int n, lambda, mu;
    double *weights; /* [mu], positive, summing to 1 */
    double mueff, cc, cs, c1, cmu, damps, chi_n;
    double sigma;
    double *mean; /* [n] */
    double *C;    /* [n*n] covariance, symmetric */
    double *B;    /* [n*n] eigenvectors of C: B[k*n + i] is component i of eigenvector k */
    double *D;    /* [n] square roots of C's eigenvalues */
    double *pc, *ps;
    double *arz, *arx; /* [lambda*n] the current generation's standard-normal draws and candidates */
    int asked;         /* arx holds candidates not yet told */
    int64_t gen, evals;
    double best_f; /* the best fitness told so far (+inf before the first) and its point */
    double *best_x;
    dam_rng rng;
} CmaEs;

/* The default population for dimension n: 4 + floor(3 ln n). */
int cmaes_default_lambda(int n);
/* Start at x0 [n] with step size sigma0 and C = I; lambda <= 0: the default. */
void cmaes_init(CmaEs *es, int n, const double *x0, double sigma0, int lambda, uint64_t seed);
void cmaes_free(CmaEs *es);
/* The generation's lambda candidates [lambda*n]; asking again before cmaes_tell gives the same ones. */
const double *cmaes_ask(CmaEs *es);
/* The fitnesses [lambda] of the asked candidates (lower is better; NaN counts as worst): updates the
 * mean, the paths, C, sigma and the eigendecomposition. */
void cmaes_tell(CmaEs *es, const double *fitness);

/* The state as bytes (native byte order, doubles bit for bit): cmaes_state_size, then cmaes_state_save
 * into a buffer of that size; cmaes_state_load builds es (uninitialised before) from such bytes and
 * fails naming `what` (a file) when they are not a saved state. */
size_t cmaes_state_size(const CmaEs *es);
void cmaes_state_save(const CmaEs *es, void *buf);
void cmaes_state_load(CmaEs *es, const void *buf, size_t bytes, const char *what);

/* Eigendecomposition of the symmetric n x n matrix a (LAPACK dsyev): on return vals [n] ascending and
 * a[k*n + i] component i of the unit eigenvector of vals[k]. Returns LAPACK's info (0 on success). */
int cmaes_eigen(int n, double *a, double *vals);

#endif
