/* test_merge_methods.c — the math of `dam_dist merge` (src/engine/merge_methods.c) on small tensors whose
 * results are worked out by hand here (exactly representable values, so most checks are exact):
 *   - linear with and without normalize;
 *   - task arithmetic: base + λ·Σ w_i·δ_i, and divided by Σ w_i with normalize;
 *   - TIES trimming: the top floor(density·n) magnitudes kept, ties at the threshold kept in index
 *     order up to k, at least one entry kept; over a random tensor exactly k survive and no dropped
 *     magnitude exceeds a kept one;
 *   - sign election (a zero sum counts as +, zero entries have no sign) and the disjoint mean, then
 *     a whole TIES merge of three models;
 *   - DARE: every entry either 0 or exactly x/density, the kept fraction over 200000 entries within
 *     0.01 of density (≈ 10 standard deviations), the same mask for the same seed, another for
 *     another seed; in a dare_ties merge the mask depends on the tensor's name and seed only;
 *   - SLERP: t = 0 and t = 1 give the endpoints exactly, t = 0.5 of orthogonal vectors the
 *     half-angle point, (anti)parallel vectors the linear interpolation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "merge_methods.h"
#include "test_util.h"

static void assert_floats(const float *got, const float *want, size_t n, float tol) {
    for (size_t j = 0; j < n; j++) {
        if (fabsf(got[j] - want[j]) > tol) printf("  entry %zu: got %.9g, want %.9g\n", j, got[j], want[j]);
        assert_true(fabsf(got[j] - want[j]) <= tol);
    }
}

static void test_method_names(void **s) {
    (void)s;
    MergeMethod m;
    assert_int_equal(merge_method_parse("dare_ties", &m), 0);
    assert_int_equal(m, MERGE_DARE_TIES);
    assert_string_equal(merge_method_name(MERGE_TASK_ARITHMETIC), "task_arithmetic");
    assert_int_equal(merge_method_parse("dare", &m), -1);
    /* mergekit's defaults of normalize */
    assert_true(merge_default_normalize(MERGE_LINEAR) && merge_default_normalize(MERGE_TIES));
    assert_false(merge_default_normalize(MERGE_TASK_ARITHMETIC) || merge_default_normalize(MERGE_DARE_TIES));
}

static void test_linear(void **s) {
    (void)s;
    const float x0[] = {1, 2, 3}, x1[] = {3, 6, -1}, w[] = {1, 3};
    const float *x[] = {x0, x1};
    float out[3];
    merge_linear(x, w, 2, 3, 0, out); /* 1·x0 + 3·x1 */
    assert_floats(out, (const float[]){10, 20, 0}, 3, 0);
    merge_linear(x, w, 2, 3, 1, out); /* ÷ 4 */
    assert_floats(out, (const float[]){2.5f, 5, 0}, 3, 0);
    /* weights (1, 0) give the first model exactly */
    merge_linear(x, (const float[]){1, 0}, 2, 3, 1, out);
    assert_floats(out, x0, 3, 0);
}

static void test_task_arithmetic(void **s) {
    (void)s;
    const float base[] = {1, 1, 1, 1};
    /* δ0 = (1, -1, 0, 2), δ1 = (-0.5, 2, 0, 0); weights (1, 2): Σ w·δ = (0, 3, 0, 2) */
    float m0[] = {2, 0, 1, 3}, m1[] = {0.5f, 3, 1, 1}, out[4];
    float *models[] = {m0, m1};
    MergeParams p = {
        .method = MERGE_TASK_ARITHMETIC, .n = 2, .weights = (const float[]){1, 2}, .lambda = 0.5f};
    merge_tensor(&p, "t", base, models, 4, out);
    assert_floats(out, (const float[]){1, 2.5f, 1, 2}, 4, 0);
    /* normalize: Σ w·δ / 3, λ = 1 */
    float n0[] = {2, 0, 1, 3}, n1[] = {0.5f, 3, 1, 1};
    float *again[] = {n0, n1};
    p.normalize = 1, p.lambda = 1;
    merge_tensor(&p, "t", base, again, 4, out);
    assert_floats(out, (const float[]){1, 2, 1, 1 + 2.0f / 3}, 4, 1e-6f);
}

static void test_trim_by_magnitude(void **s) {
    (void)s;
    float d[] = {0.1f, -3, 2, -0.5f, 3, 1}; /* density 0.5: k = 3, the magnitudes 3, 3, 2 */
    merge_trim_magnitude(d, 6, 0.5f);
    assert_floats(d, (const float[]){0, -3, 2, 0, 3, 0}, 6, 0);
    /* k = floor(0.4·5) = 2 and three entries of magnitude 2: the first two in index order are kept */
    float t[] = {1, -2, 2, 2, 0.5f};
    merge_trim_magnitude(t, 5, 0.4f);
    assert_floats(t, (const float[]){0, -2, 2, 0, 0}, 5, 0);
    /* floor(0.2·3) = 0: the largest entry survives */
    float one[] = {0.5f, -4, 1};
    merge_trim_magnitude(one, 3, 0.2f);
    assert_floats(one, (const float[]){0, -4, 0}, 3, 0);
    /* density 1 keeps everything */
    float all[] = {1e-30f, -2, 0};
    merge_trim_magnitude(all, 3, 1);
    assert_floats(all, (const float[]){1e-30f, -2, 0}, 3, 0);
}

/* Over a random tensor: exactly k nonzero survivors, each unchanged, none smaller in magnitude than
 * any dropped entry. */
static void test_trim_random(void **s) {
    (void)s;
    size_t n = 100003;
    float *d = malloc(n * sizeof(float)), *orig = malloc(n * sizeof(float));
    dam_rng r;
    dam_rng_seed(&r, 7);
    for (size_t j = 0; j < n; j++) orig[j] = d[j] = dam_rng_normal(&r) * (j % 3 ? 1.0f : 1e-3f);
    merge_trim_magnitude(d, n, 0.37f);
    size_t k = (size_t)((double)0.37f * (double)n), kept = 0; /* floor(density·n) */
    float min_kept = INFINITY, max_dropped = 0;
    for (size_t j = 0; j < n; j++) {
        if (d[j] != 0) {
            assert_true(d[j] == orig[j]);
            kept++;
            min_kept = fminf(min_kept, fabsf(orig[j]));
        } else {
            max_dropped = fmaxf(max_dropped, fabsf(orig[j]));
        }
    }
    printf("  kept %zu of %zu (k = %zu), smallest kept %.6g >= largest dropped %.6g\n", kept, n, k, min_kept,
           max_dropped);
    assert_int_equal(kept, k);
    assert_true(min_kept >= max_dropped);
    free(d), free(orig);
}

static void test_sign_election(void **s) {
    (void)s;
    const float base[] = {0, 0, 0, 0};
    const float d0[] = {2, -1, 3, 0}, d1[] = {-1, -1, -4, 0}, d2[] = {-0.5f, 2, 1, 0};
    const float *d[] = {d0, d1, d2};
    float out[4];
    /* sums 0.5, 0, 0, 0: all elect +; the positive terms are (2), (2), (3, 1), none */
    merge_task_vectors(base, d, (const float[]){1, 1, 1}, 3, 4, 1, 0, 1, out);
    assert_floats(out, (const float[]){2, 2, 4, 0}, 4, 0);
    /* normalize: ÷ the agreeing weights (1, 1, 2, none -> 1) */
    merge_task_vectors(base, d, (const float[]){1, 1, 1}, 3, 4, 1, 1, 1, out);
    assert_floats(out, (const float[]){2, 2, 2, 0}, 4, 0);
    /* weights (2, 1, 1): entry 0's terms 4, -1, -0.5 elect +: 4 / 2; entry 1's -2, -1, 2 elect -:
     * (-2 - 1) / (2 + 1); entry 2's 6, -4, 1: (6 + 1) / (2 + 1) */
    merge_task_vectors(base, d, (const float[]){2, 1, 1}, 3, 4, 1, 1, 1, out);
    assert_floats(out, (const float[]){2, -1, 7.0f / 3, 0}, 4, 1e-6f);
    /* weights (1, 3, 1): entry 0's terms 2, -3, -0.5 elect -: (-3 - 0.5) / (3 + 1) */
    merge_task_vectors(base, d, (const float[]){1, 3, 1}, 3, 4, 1, 1, 1, out);
    assert_floats(out, (const float[]){-3.5f / 4, -4.0f / 4, -12.0f / 3, 0}, 4, 1e-6f);
}

/* A whole TIES merge: trim each task vector to 2 of 4 entries, elect, average the agreeing ones. */
static void test_ties_merge(void **s) {
    (void)s;
    const float base[] = {1, 1, 1, 1};
    /* δ0 = (4, -1, 0.5, 2) -> (4, 0, 0, 2); δ1 = (-3, -2, 1, 0.25) -> (-3, -2, 0, 0);
     * δ2 = (2, -4, 0, -1) -> (2, -4, 0, 0). Signs: +, -, (none: +), +.
     * Means of the agreeing: (4 + 2) / 2, (-2 - 4) / 2, 0, 2. */
    float m0[] = {5, 0, 1.5f, 3}, m1[] = {-2, -1, 2, 1.25f}, m2[] = {3, -3, 1, 0}, out[4];
    float *models[] = {m0, m1, m2};
    MergeParams p = {.method = MERGE_TIES,
                     .n = 3,
                     .weights = (const float[]){1, 1, 1},
                     .density = 0.5f,
                     .lambda = 1,
                     .normalize = 1};
    merge_tensor(&p, "t", base, models, 4, out);
    assert_floats(out, (const float[]){1 + 3, 1 - 3, 1, 1 + 2}, 4, 0);
}

static void test_dare_drop(void **s) {
    (void)s;
    size_t n = 200000;
    float density = 0.3f;
    float *d = malloc(n * sizeof(float)), *e = malloc(n * sizeof(float)), *f = malloc(n * sizeof(float));
    for (size_t j = 0; j < n; j++) d[j] = e[j] = f[j] = (float)(j % 7) + 1; /* never 0 */
    dam_rng r1, r2, r3;
    dam_rng_seed(&r1, 42), dam_rng_seed(&r2, 42), dam_rng_seed(&r3, 43);
    merge_dare_drop(d, n, density, &r1);
    merge_dare_drop(e, n, density, &r2);
    merge_dare_drop(f, n, density, &r3);
    size_t kept = 0, same_other = 0;
    for (size_t j = 0; j < n; j++) {
        float x = (float)(j % 7) + 1;
        assert_true(d[j] == 0 || d[j] == x / density); /* dropped, or rescaled exactly */
        assert_true(d[j] == e[j]);                     /* the same seed, the same mask */
        kept += d[j] != 0;
        same_other += (d[j] != 0) == (f[j] != 0);
    }
    double frac = (double)kept / (double)n;
    printf("  kept fraction %.4f (density %.2f); seed 43 agrees on %.3f of the entries\n", frac, density,
           (double)same_other / (double)n);
    assert_true(fabs(frac - density) < 0.01);
    assert_true(same_other < n * 0.7); /* another seed: another mask (agreement ≈ 0.3² + 0.7² = 0.58) */
    /* density 1: unchanged */
    float g[] = {1, -2, 3};
    merge_dare_drop(g, 3, 1, &r1);
    assert_floats(g, (const float[]){1, -2, 3}, 3, 0);
    free(d), free(e), free(f);
}

/* dare_ties through merge_tensor: the result is a function of (seed, name) — the same twice, and a
 * single model with normalize off gives base + δ·mask/density. */
static void test_dare_ties_merge(void **s) {
    (void)s;
    size_t n = 4096;
    float *base = calloc(n, sizeof(float)), *m = malloc(n * sizeof(float)), *out1 = malloc(n * sizeof(float));
    float *out2 = malloc(n * sizeof(float)), *out3 = malloc(n * sizeof(float));
    MergeParams p = {.method = MERGE_DARE_TIES,
                     .n = 1,
                     .weights = (const float[]){1},
                     .density = 0.5f,
                     .lambda = 1,
                     .seed = 9};
    float *models[] = {m};
    for (size_t j = 0; j < n; j++) m[j] = 2;
    merge_tensor(&p, "model.layers.0.mlp.up_proj.weight", base, models, n, out1);
    for (size_t j = 0; j < n; j++) m[j] = 2;
    merge_tensor(&p, "model.layers.0.mlp.up_proj.weight", base, models, n, out2);
    for (size_t j = 0; j < n; j++) m[j] = 2;
    merge_tensor(&p, "model.layers.1.mlp.up_proj.weight", base, models, n, out3);
    size_t kept = 0, differ = 0;
    for (size_t j = 0; j < n; j++) {
        assert_true(out1[j] == 0 || out1[j] == 4);
        assert_true(out1[j] == out2[j]);
        kept += out1[j] != 0;
        differ += out1[j] != out3[j];
    }
    printf("  kept %zu of %zu; another tensor's mask differs on %zu entries\n", kept, n, differ);
    assert_true(differ > n / 4);
    free(base), free(m), free(out1), free(out2), free(out3);
}

static void test_slerp(void **s) {
    (void)s;
    const float a[] = {1, 0}, b[] = {0, 1};
    float out[3];
    merge_slerp(a, b, 2, 0, out);
    assert_floats(out, a, 2, 0);
    merge_slerp(a, b, 2, 1, out);
    assert_floats(out, b, 2, 0);
    merge_slerp(a, b, 2, 0.5f, out); /* θ = π/2: sin(π/4)/sin(π/2) each */
    assert_floats(out, (const float[]){0.70710678f, 0.70710678f}, 2, 1e-7f);
    /* lengths are kept in the endpoints' weights, not renormalized */
    merge_slerp((const float[]){2, 0}, (const float[]){0, 3}, 2, 0.5f, out);
    assert_floats(out, (const float[]){2 * 0.70710678f, 3 * 0.70710678f}, 2, 1e-6f);
    /* θ = π/3 (cos 0.5), t = 0.5: sin(π/6)/sin(π/3) = 1/√3 each */
    merge_slerp((const float[]){1, 0}, (const float[]){0.5f, 0.8660254f}, 2, 0.5f, out);
    assert_floats(out, (const float[]){1.5f / sqrtf(3), 0.8660254f / sqrtf(3)}, 2, 1e-6f);
    /* general endpoints, t = 0 and 1: exact */
    const float c[] = {1, 2, 3}, d[] = {-1, 0.5f, 2};
    merge_slerp(c, d, 3, 0, out);
    assert_floats(out, c, 3, 0);
    merge_slerp(c, d, 3, 1, out);
    assert_floats(out, d, 3, 0);
    /* parallel and antiparallel: linear interpolation */
    merge_slerp(c, (const float[]){2, 4, 6}, 3, 0.25f, out);
    assert_floats(out, (const float[]){1.25f, 2.5f, 3.75f}, 3, 0);
    merge_slerp(c, (const float[]){-1, -2, -3}, 3, 0.5f, out);
    assert_floats(out, (const float[]){0, 0, 0}, 3, 0);
    /* through merge_tensor: base is the t = 0 end */
    float m[] = {0, 1}, *models[] = {m};
    MergeParams p = {.method = MERGE_SLERP, .n = 1, .t = 0};
    merge_tensor(&p, "t", a, models, 2, out);
    assert_floats(out, a, 2, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_method_names),    cmocka_unit_test(test_linear),
        cmocka_unit_test(test_task_arithmetic), cmocka_unit_test(test_trim_by_magnitude),
        cmocka_unit_test(test_trim_random),     cmocka_unit_test(test_sign_election),
        cmocka_unit_test(test_ties_merge),      cmocka_unit_test(test_dare_drop),
        cmocka_unit_test(test_dare_ties_merge), cmocka_unit_test(test_slerp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
