/* test_cmaes.c — the CMA-ES of src/engine/cmaes.c against independent facts:
 *   - the eigendecomposition (LAPACK dsyev) of matrices whose eigenpairs are known by hand;
 *   - the default population 4 + floor(3 ln n) and the first generation's recombination: the new
 *     mean is sum_i w_i x_(i:lambda) with w_i proportional to ln((lambda+1)/2) - ln i (computed here);
 *   - ask/tell: asking twice gives the same candidates; the same seed the same samples, another seed
 *     others;
 *   - convergence in n = 10 to 1e-8 within a fixed budget: a shifted sphere, and ellipsoids of
 *     condition 1e4 and 1e6 (f at the optimum is 0, so "best f < 1e-8" is the distance to it);
 *   - a state saved after some generations and loaded into a fresh instance continues byte for
 *     byte as the uninterrupted run (every candidate of every later generation, and the final state). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include "cmaes.h"

#define N 10

static double shift(int i) { return 0.3 * i - 1.1; }

static double sphere(const double *x) {
    double f = 0;
    for (int i = 0; i < N; i++) f += (x[i] - shift(i)) * (x[i] - shift(i));
    return f;
}

static double g_cond; /* the ellipsoid's condition number, set by each test before minimising */
static double ellipsoid(const double *x) {
    double f = 0;
    for (int i = 0; i < N; i++) f += pow(g_cond, i / (N - 1.0)) * (x[i] - shift(i)) * (x[i] - shift(i));
    return f;
}

/* Minimise f from 0 with sigma 0.5 until best f < target or `budget` evaluations; returns best f. */
static double minimise(double (*f)(const double *), uint64_t seed, int budget, double target,
                       int64_t *evals) {
    CmaEs es;
    double x0[N] = {0};
    cmaes_init(&es, N, x0, 0.5, 0, seed);
    double fit[64];
    while (es.evals < budget && es.best_f >= target) {
        const double *X = cmaes_ask(&es);
        for (int c = 0; c < es.lambda; c++) fit[c] = f(X + (size_t)c * N);
        cmaes_tell(&es, fit);
    }
    double best = es.best_f;
    *evals = es.evals;
    printf("  best f %.3g after %lld evaluations (sigma %.3g)\n", best, (long long)es.evals, es.sigma);
    cmaes_free(&es);
    return best;
}

static void test_eigen_known(void **s) {
    (void)s;
    double a[4] = {2, 1, 1, 2}, v[2]; /* eigenvalues 1 and 3, eigenvectors (1,-1)/√2 and (1,1)/√2 */
    assert_int_equal(cmaes_eigen(2, a, v), 0);
    assert_float_equal(v[0], 1.0, 1e-12);
    assert_float_equal(v[1], 3.0, 1e-12);
    assert_float_equal(fabs(a[0]), M_SQRT1_2, 1e-12);
    assert_float_equal(a[0] * a[1], -0.5, 1e-12);
    assert_float_equal(a[2] * a[3], 0.5, 1e-12);
    /* [[2,0,0],[0,3,4],[0,4,9]]: 1 with (0,2,-1)/√5, 2 with (1,0,0), 11 with (0,1,2)/√5 */
    double b[9] = {2, 0, 0, 0, 3, 4, 0, 4, 9}, w[3];
    const double want[3][3] = {{0, 2 / sqrt(5), -1 / sqrt(5)}, {1, 0, 0}, {0, 1 / sqrt(5), 2 / sqrt(5)}};
    assert_int_equal(cmaes_eigen(3, b, w), 0);
    assert_float_equal(w[0], 1.0, 1e-12);
    assert_float_equal(w[1], 2.0, 1e-12);
    assert_float_equal(w[2], 11.0, 1e-12);
    for (int k = 0; k < 3; k++) {
        double dot = 0;
        for (int i = 0; i < 3; i++) dot += b[k * 3 + i] * want[k][i];
        assert_float_equal(fabs(dot), 1.0, 1e-12); /* the same unit vector up to its sign */
    }
}

static void test_first_generation(void **s) {
    (void)s;
    assert_int_equal(cmaes_default_lambda(10), 10); /* 4 + floor(3 ln 10 = 6.9) */
    assert_int_equal(cmaes_default_lambda(2), 6);   /* 4 + floor(2.08) */
    assert_int_equal(cmaes_default_lambda(100), 17);
    CmaEs es;
    double x0[N];
    for (int i = 0; i < N; i++) x0[i] = 0.1 * i;
    cmaes_init(&es, N, x0, 0.3, 0, 7);
    int lambda = es.lambda, mu = lambda / 2;
    assert_int_equal(lambda, 10);
    const double *X = cmaes_ask(&es);
    double *copy = malloc(sizeof(double) * lambda * N);
    memcpy(copy, X, sizeof(double) * lambda * N);
    assert_memory_equal(cmaes_ask(&es), copy, sizeof(double) * lambda * N); /* asking again: the same */
    double fit[10], want[N] = {0}, wsum = 0;
    for (int c = 0; c < lambda; c++) fit[c] = (double)((c * 7) % lambda); /* candidate 0 best, then 3, 6... */
    for (int r = 0; r < mu; r++) wsum += log((lambda + 1) / 2.0) - log(r + 1.0);
    for (int r = 0; r < mu; r++) {
        int c = 0;
        while ((c * 7) % lambda != r) c++;
        double w = (log((lambda + 1) / 2.0) - log(r + 1.0)) / wsum;
        for (int i = 0; i < N; i++) want[i] += w * copy[c * N + i];
    }
    cmaes_tell(&es, fit);
    for (int i = 0; i < N; i++) assert_float_equal(es.mean[i], want[i], 1e-12);
    assert_int_equal(es.evals, lambda);
    assert_float_equal(es.best_f, 0.0, 0);
    assert_memory_equal(es.best_x, copy, sizeof(double) * N);
    /* the same seed draws the same candidates; another seed others */
    CmaEs a, b;
    cmaes_init(&a, N, x0, 0.3, 0, 7);
    cmaes_init(&b, N, x0, 0.3, 0, 8);
    assert_memory_equal(cmaes_ask(&a), copy, sizeof(double) * lambda * N);
    assert_memory_not_equal(cmaes_ask(&b), copy, sizeof(double) * lambda * N);
    cmaes_free(&a), cmaes_free(&b), cmaes_free(&es);
    free(copy);
}

static void test_sphere(void **s) {
    (void)s;
    int64_t evals;
    assert_true(minimise(sphere, 1, 3000, 1e-8, &evals) < 1e-8);
    assert_true(evals <= 3000);
}

static void test_ellipsoid_1e4(void **s) {
    (void)s;
    int64_t evals;
    g_cond = 1e4;
    assert_true(minimise(ellipsoid, 2, 10000, 1e-8, &evals) < 1e-8);
}

static void test_ellipsoid_1e6(void **s) {
    (void)s;
    int64_t evals;
    g_cond = 1e6;
    assert_true(minimise(ellipsoid, 3, 15000, 1e-8, &evals) < 1e-8);
}

/* Run `gens` generations of the 1e4 ellipsoid, appending every candidate to trace. */
static void run_gens(CmaEs *es, int gens, double *trace, size_t *at) {
    double fit[64];
    for (int g = 0; g < gens; g++) {
        const double *X = cmaes_ask(es);
        memcpy(trace + *at, X, sizeof(double) * es->lambda * N), *at += (size_t)es->lambda * N;
        for (int c = 0; c < es->lambda; c++) fit[c] = ellipsoid(X + (size_t)c * N);
        cmaes_tell(es, fit);
    }
}

static void test_resume_identical(void **s) {
    (void)s;
    g_cond = 1e4;
    double x0[N] = {0};
    int G = 60, G0 = 25;
    size_t per = 10 * N, n_a = 0, n_b = 0;
    double *ta = malloc(sizeof(double) * per * G), *tb = malloc(sizeof(double) * per * G);
    CmaEs a, b;
    cmaes_init(&a, N, x0, 0.5, 0, 11);
    run_gens(&a, G, ta, &n_a); /* uninterrupted */
    cmaes_init(&b, N, x0, 0.5, 0, 11);
    run_gens(&b, G0, tb, &n_b);
    size_t bytes = cmaes_state_size(&b);
    void *buf = malloc(bytes);
    cmaes_state_save(&b, buf);
    cmaes_free(&b);
    CmaEs c;
    cmaes_state_load(&c, buf, bytes, "test state");
    run_gens(&c, G - G0, tb, &n_b);
    assert_int_equal(n_a, n_b);
    assert_memory_equal(ta, tb, sizeof(double) * n_a); /* every candidate, bit for bit */
    void *sa = malloc(bytes), *sc = malloc(bytes);
    cmaes_state_save(&a, sa), cmaes_state_save(&c, sc);
    assert_memory_equal(sa, sc, bytes);
    assert_true(a.best_f < 1e-2 * ellipsoid(x0)); /* it made progress: the trajectory is not trivial */
    cmaes_free(&a), cmaes_free(&c);
    free(ta), free(tb), free(buf), free(sa), free(sc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eigen_known),   cmocka_unit_test(test_first_generation),
        cmocka_unit_test(test_sphere),        cmocka_unit_test(test_ellipsoid_1e4),
        cmocka_unit_test(test_ellipsoid_1e6), cmocka_unit_test(test_resume_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
