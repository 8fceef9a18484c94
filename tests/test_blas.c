/* test_blas.c — the decision to re-execute with OPENBLAS_CORETYPE=Haswell (src/engine/blas.c), fed kernel
 * names and CPU flags, since the fallback itself cannot be produced on the test machine:
 *   - a generic/old kernel (Prescott, Core2, Nehalem, Sandybridge, ...) on an AVX2+FMA CPU: Haswell;
 *   - a suitable kernel (Haswell, Zen, SkylakeX, Cooperlake, an unknown newer name): no;
 *   - the user's own OPENBLAS_CORETYPE: no; the loop marker already set: no;
 *   - a CPU without AVX2 or FMA, a library that is not OpenBLAS or has one kernel built in: no;
 * and the one-line description of the BLAS this test binary runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <string.h>

#include "blas.h"

static const char *dyn = "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Prescott MAX_THREADS=64";

static void test_generic_kernel_on_avx2_fma_reexecs(void **s) {
    (void)s;
    const char *generic[] = {"Prescott", "Core2",       "Atom",      "Nehalem",       "Katmai",
                             "Penryn",   "Sandybridge", "Barcelona", "Opteron(SSE3)", "Piledriver",
                             "Unknown",  "prescott",    "NEHALEM"};
    for (size_t i = 0; i < sizeof generic / sizeof *generic; i++) {
        const char *c = blas_reexec_coretype(generic[i], dyn, 1, NULL, NULL);
        assert_non_null(c);
        assert_string_equal(c, "Haswell");
        assert_non_null(blas_reexec_coretype(generic[i], dyn, 1, "", "")); /* empty = unset */
    }
}

static void test_suitable_kernel_stays(void **s) {
    (void)s;
    const char *good[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", "Excavator", "Zen5"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        assert_null(blas_reexec_coretype(good[i], dyn, 1, NULL, NULL));
        assert_false(blas_core_is_generic(good[i]));
    }
}

static void test_user_coretype_respected(void **s) {
    (void)s;
    assert_null(blas_reexec_coretype("Prescott", dyn, 1, "Prescott", NULL));
    assert_null(blas_reexec_coretype("Prescott", dyn, 1, "Core2", NULL));
}

static void test_marker_stops_loop(void **s) {
    (void)s;
    /* the re-executed process: OPENBLAS_CORETYPE is ours, the marker names the first choice */
    assert_null(blas_reexec_coretype("Prescott", dyn, 1, "Haswell", "Prescott"));
    assert_null(blas_reexec_coretype("Prescott", dyn, 1, NULL, "Prescott")); /* even if ours were lost */
}

static void test_no_reexec_when_it_cannot_help(void **s) {
    (void)s;
    assert_null(blas_reexec_coretype("Prescott", dyn, 0, NULL, NULL));  /* no AVX2+FMA: Prescott is right */
    assert_null(blas_reexec_coretype(NULL, NULL, 1, NULL, NULL));       /* not OpenBLAS */
    assert_null(blas_reexec_coretype("Prescott", NULL, 1, NULL, NULL)); /* no config to tell */
    assert_null(blas_reexec_coretype("PRESCOTT", "OpenBLAS 0.3.21 NO_LAPACKE PRESCOTT MAX_THREADS=64", 1,
                                     NULL, NULL)); /* built for one CPU: OPENBLAS_CORETYPE is ignored */
}

static void test_describe(void **s) {
    (void)s;
    const char *line = blas_describe();
    assert_non_null(line);
    assert_int_equal(strncmp(line, "BLAS: ", 6), 0);
    assert_null(strchr(line, '\n'));
    if (strstr(line, "(not OpenBLAS")) return; /* built with another BLAS_LIBS */
    assert_non_null(strstr(line, "BLAS: OpenBLAS "));
    assert_non_null(strstr(line, ", kernel "));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generic_kernel_on_avx2_fma_reexecs),
        cmocka_unit_test(test_suitable_kernel_stays),
        cmocka_unit_test(test_user_coretype_respected),
        cmocka_unit_test(test_marker_stops_loop),
        cmocka_unit_test(test_no_reexec_when_it_cannot_help),
        cmocka_unit_test(test_describe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
