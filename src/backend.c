/* backend.c — what every backend shares: DevBuf views, choosing a backend by name, and the
 * coefficients' nonlinearity on the host (the reference the backends' coef_nonlin ops follow). */
#include "backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

#ifndef DAM_WITH_CUDA
/* Without CUDA (cuda/ defines it in CUDA builds). */
const Backend *backend_cuda(void) { return NULL; }
#endif

const Backend *backend_by_name(const char *name) {
    const char *env = getenv("DAM_BACKEND");
    if (env && *env) name = env; /* the test suite runs whole under "guard" */
    const Backend *cuda = backend_cuda();
    if (name && strcmp(name, "cpu") == 0) return backend_cpu();
    if (name && strcmp(name, "guard") == 0) return backend_guard();
    if (name && strcmp(name, "cuda") == 0 && cuda) return cuda;
    dam_fail("backend \"%s\"%s is not available (available: cpu, guard%s)%s", name ? name : "(none)",
             env && *env ? " (from DAM_BACKEND)" : "", cuda ? ", cuda" : "",
             name && strcmp(name, "cuda") == 0 ? ": this dam_dist was built without CUDA" : "");
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
