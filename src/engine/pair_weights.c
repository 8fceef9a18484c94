/* pair_weights.c — see pair_weights.h. */
#include "pair_weights.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void wov_pair_weights(int n, size_t n_out, size_t ncols,
                      void (*tv)(void *ctx, int row, size_t o, double *out), void *ctx, double *w) {
    int P = n * (n - 1) / 2;
    double *sq = dam_calloc((size_t)n * ncols, sizeof(double), "wov norms"),
           *dot = dam_calloc((size_t)P * ncols, sizeof(double), "wov dots"),
           *t = dam_malloc((size_t)n * ncols * sizeof(double), "wov row");
    for (size_t o = 0; o < n_out; o++) {
        for (int i = 0; i < n; i++) tv(ctx, i, o, t + (size_t)i * ncols);
        for (int i = 0, p = 0; i < n; i++) {
            const double *a = t + (size_t)i * ncols;
            for (size_t j = 0; j < ncols; j++) sq[(size_t)i * ncols + j] += a[j] * a[j];
            for (int k = i + 1; k < n; k++, p++) {
                const double *b = t + (size_t)k * ncols;
                for (size_t j = 0; j < ncols; j++) dot[(size_t)p * ncols + j] += a[j] * b[j];
            }
        }
    }
    for (int i = 0, p = 0; i < n; i++)
        for (int k = i + 1; k < n; k++, p++)
            for (size_t j = 0; j < ncols; j++) {
                double na = sqrt(sq[(size_t)i * ncols + j]) + 1e-8,
                       nb = sqrt(sq[(size_t)k * ncols + j]) + 1e-8;
                double cs = fmax(-1.0, fmin(1.0, dot[(size_t)p * ncols + j] / (na * nb))),
                       s = sin(2 * acos(cs));
                w[(size_t)p * ncols + j] = s * s;
            }
    free(sq), free(dot), free(t);
}

/* The stored tensors of one mergeable weight: each row's and the base's, columns [col0, col0+ncols). */
typedef struct {
    const StTensor *w[DAM_MAX_SOURCES], *base;
    size_t cols, col0, ncols;
    float *row, *brow; /* one stored row as fp32 */
} TaskVectors;

static void stored_row(const StTensor *t, size_t cols, size_t o, size_t col0, size_t ncols, float *out) {
    size_t es = dam_dtype_size(t->dtype);
    dam_to_f32(out, (const char *)t->data + (o * cols + col0) * es, t->dtype, ncols);
}

static void task_vector_row(void *ctx, int row, size_t o, double *out) {
    TaskVectors *tv = ctx;
    stored_row(tv->w[row], tv->cols, o, tv->col0, tv->ncols, tv->row);
    stored_row(tv->base, tv->cols, o, tv->col0, tv->ncols, tv->brow);
    for (size_t j = 0; j < tv->ncols; j++) out[j] = (double)tv->row[j] - (double)tv->brow[j];
}

void wov_setup(DamModel *m, const char *base_dir) {
    int n = m->n_coef_rows, P = n * (n - 1) / 2;
    StModel own, *base = &own;
    if (base_dir)
        st_model_open(&own, base_dir);
    else
        base = &m->files[n - 1];
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        if (x->kind != DT_LINEAR || P == 0) continue;
        TaskVectors tv = {.col0 = (size_t)x->coef_off, .ncols = (size_t)x->dim};
        for (int i = 0; i < n; i++) tv.w[i] = st_model_find(&m->files[i], x->name);
        const StTensor *w0 = tv.w[0];
        int64_t shape[2] = {w0->shape[0], w0->shape[1]};
        tv.base = st_model_get(base, x->name, 2, shape);
        tv.cols = (size_t)shape[1];
        tv.row = dam_malloc(tv.ncols * sizeof(float), "wov row"),
        tv.brow = dam_malloc(tv.ncols * sizeof(float), "wov row");
        double *w = dam_malloc((size_t)P * tv.ncols * sizeof(double), "wov weights");
        wov_pair_weights(n, (size_t)shape[0], tv.ncols, task_vector_row, &tv, w);
        float *wf = dam_malloc((size_t)P * tv.ncols * sizeof(float), "wov weights");
        for (size_t j = 0; j < (size_t)P * tv.ncols; j++) wf[j] = (float)w[j];
        x->wov = m->be->alloc(m->ctx, (size_t)P * tv.ncols, DAM_F32, "weighted overlap weights");
        m->be->upload(m->ctx, x->wov, wf, DAM_F32, (size_t)P * tv.ncols);
        for (int i = 0; i < n; i++) st_tensor_release(tv.w[i]);
        st_tensor_release(tv.base);
        free(tv.row), free(tv.brow), free(w), free(wf);
    }
    if (base_dir) st_model_close(&own);
}
