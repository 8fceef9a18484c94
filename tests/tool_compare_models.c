/* tool_compare_models.c — used by tests/cli_merge.sh: compare two Hugging Face model directories
 * tensor by tensor.
 * usage: tool_compare_models A B TOL  → prints the largest absolute difference of any element (both
 * read as float) and exits 0 when both hold the same tensor names and shapes and it is <= TOL (TOL 0:
 * every element equal). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s A B TOL\n", argv[0]);
        return 2;
    }
    StModel a, b;
    st_model_open(&a, argv[1]);
    st_model_open(&b, argv[2]);
    double tol = atof(argv[3]), worst = 0;
    const char *worst_name = "";
    int ok = a.n_tensors == b.n_tensors;
    for (int t = 0; ok && t < b.n_tensors; t++) {
        const StTensor *y = b.by_name[t], *x = st_model_find(&a, y->name);
        ok = x && x->ndim == y->ndim && !memcmp(x->shape, y->shape, (size_t)y->ndim * sizeof(int64_t));
        if (!ok) {
            printf("%s: tensor '%s' missing or of another shape in %s\n", argv[2], y->name, argv[1]);
            break;
        }
        float *p = malloc(y->numel * sizeof(float)), *q = malloc(y->numel * sizeof(float));
        dam_to_f32(p, x->data, x->dtype, x->numel);
        dam_to_f32(q, y->data, y->dtype, y->numel);
        for (size_t j = 0; j < y->numel; j++) {
            double d = fabs((double)p[j] - q[j]);
            if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d, worst_name = y->name;
        }
        free(p), free(q);
    }
    printf("%s vs %s: %s, %d tensors, max abs diff %.3e%s%s (tol %.1e)\n", argv[1], argv[2],
           ok ? "same tensors" : "DIFFERENT tensors", b.n_tensors, worst, *worst_name ? " in " : "",
           worst_name, tol);
    st_model_close(&a);
    st_model_close(&b);
    return ok && worst <= tol ? 0 : 1;
}
