/* rope.cuh — rotary embedding in place (HF rotate_half layout); cos/sin [T, hd/2] F32 already hold
 * the llama3 frequency scaling (computed on the host); inverse applies the transpose. */
#pragma once

#include "common.cuh"

__global__ void k_rope(void *x, int dt, const float *cosv, const float *sinv, int BT, int T, int heads,
                       int hd, float sgn) {
    int half = hd / 2;
    size_t n = (size_t)BT * heads * half;
    GRID_STRIDE(e, n) {
        int k = (int)(e % half);
        size_t bh = e / half; /* bt * heads + h */
        int bt = (int)(bh / heads);
        size_t base = bh * hd, cs = (size_t)(bt % T) * half + k;
        float c = cosv[cs], s = sgn * sinv[cs];
        float a = ldf(x, dt, base + k), b = ldf(x, dt, base + k + half);
        stf(x, dt, base + k, a * c - b * s);
        stf(x, dt, base + k + half, b * c + a * s);
    }
}

static void cu_rope(BackendCtx *ctx, DevBuf x, DevBuf cosb, DevBuf sinb, int BT, int T, int heads, int hd,
                    int inverse) {
    size_t n = (size_t)BT * heads * (hd / 2);
    if (n == 0) return;
    LAUNCH(k_rope, grid_for(n, 256), 256, 0, ctx->stream)
    (x.ptr, dtcode(x.dtype), (const float *)cosb.ptr, (const float *)sinb.ptr, BT, T, heads, hd,
     inverse ? -1.0f : 1.0f);
    LAUNCH_CHECK("rope");
}
