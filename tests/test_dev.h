/* test_dev.h — a backend with its context, and host arrays onto it, for the tests that drive backend
 * ops directly (test_backend, test_cpu_threads). */
#ifndef DAM_TEST_DEV_H
#define DAM_TEST_DEV_H

#include <stdlib.h>

#include "backend.h"
#include "util.h"

typedef struct {
    const Backend *be;
    BackendCtx *ctx;
} Dev;

/* n normal draws times scale (a heap array; n = 0 gives a valid pointer). */
static inline float *randv(dam_rng *r, size_t n, float scale) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = scale * dam_rng_normal(r);
    return x;
}

/* An F32 device copy of h[0..n). */
static inline DevBuf up(Dev *d, const float *h, size_t n) {
    DevBuf b = d->be->alloc(d->ctx, n, DAM_F32, "test");
    d->be->upload(d->ctx, b, h, DAM_F32, n);
    return b;
}

#endif
