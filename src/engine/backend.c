/* backend.c — what every backend shares, below them all: DevBuf views and the coefficients'
 * nonlinearity on the host (the reference the backends' coef_nonlin ops follow). It knows no
 * backend: choosing one by name and the checked front tables are in backend_api.c, above them. */
#include "backend.h"

#include <math.h>

DevBuf devbuf_slice(DevBuf b, size_t off, size_t n) {
    if (off > b.n || n > b.n - off)
        dam_fail("devbuf_slice: elements [%zu, %zu) outside a %s buffer of %zu", off, off + n,
                 dam_dtype_name(b.dtype), b.n);
    DevBuf v = b;
    if (b.ptr) v.ptr = (char *)b.ptr + off * dam_dtype_size(b.dtype);
    v.n = n;
    return v;
}

DevBuf devbuf_at(DevBuf b, size_t off) {
    if (off > b.n)
        dam_fail("devbuf_at: element %zu outside a %s buffer of %zu", off, dam_dtype_name(b.dtype), b.n);
    return devbuf_slice(b, off, b.n - off);
}

static float sigmoid(float c) { return 1.0f / (1.0f + expf(-c)); }

float dam_nonlin(Nonlinearity f, float c) {
    switch (f) {
    case NONLIN_TANH: return tanhf(c);
    case NONLIN_SIGMOID: return sigmoid(c);
    case NONLIN_RELU: return c > 0 ? c : 0;
    default: return c;
    }
}

float dam_nonlin_grad(Nonlinearity f, float c) {
    switch (f) {
    case NONLIN_TANH: {
        float t = tanhf(c);
        return 1.0f - t * t;
    }
    case NONLIN_SIGMOID: {
        float s = sigmoid(c);
        return s * (1.0f - s);
    }
    case NONLIN_RELU: return c > 0 ? 1.0f : 0.0f;
    default: return 1.0f;
    }
}
