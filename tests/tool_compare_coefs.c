/* tool_compare_coefs.c — used by tests/cli_dist.sh: compare two dam_coefficients.safetensors.
 * usage: tool_compare_coefs A B TOL  → prints the max relative difference (relative to max |B|
 * per tensor) and exits 0 when it is <= TOL and both hold the same tensors and shapes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "safetensors.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s A B TOL\n", argv[0]);
        return 2;
    }
    StFile a, b;
    st_open(&a, argv[1]);
    st_open(&b, argv[2]);
    double tol = atof(argv[3]), worst = 0;
    int ok = a.n_tensors == b.n_tensors;
    for (int t = 0; ok && t < b.n_tensors; t++) {
        const StTensor *y = &b.tensors[t], *x = st_find(&a, y->name);
        ok = x && x->numel == y->numel && x->dtype == DAM_F32 && y->dtype == DAM_F32;
        if (!ok) break;
        const float *p = x->data, *q = y->data;
        double scale = 1e-12, diff = 0;
        for (size_t j = 0; j < y->numel; j++)
            scale = fmax(scale, fabs(q[j])), diff = fmax(diff, fabs(p[j] - q[j]));
        worst = fmax(worst, diff / scale);
    }
    printf("%s vs %s: %s, max rel diff %.3e (tol %.1e)\n", argv[1], argv[2],
           ok ? "same tensors" : "tensors differ", worst, tol);
    st_close(&a), st_close(&b);
    return ok && worst <= tol ? 0 : 1;
}
