/* swiglu.cuh — act = silu(gate) ⊙ up and its backward, element-wise in fp32. */
#pragma once

#include "common.cuh"

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void k_swiglu_fwd(void *act, int adt, const void *gate, int gdt, const void *up, int udt,
                             size_t n) {
    GRID_STRIDE(i, n) {
        float g = ldf(gate, gdt, i);
        stf(act, adt, i, g * sigmoid_f(g) * ldf(up, udt, i));
    }
}

__global__ void k_swiglu_bwd(void *dgate, int dgdt, void *dup, int dudt, const void *dact, int dadt,
                             const void *gate, int gdt, const void *up, int udt, size_t n) {
    GRID_STRIDE(i, n) {
        float g = ldf(gate, gdt, i), u = ldf(up, udt, i), da = ldf(dact, dadt, i);
        float sg = sigmoid_f(g), silu = g * sg;
        stf(dup, dudt, i, da * silu);
        stf(dgate, dgdt, i, da * u * (sg * (1.0f + g * (1.0f - sg))));
    }
}

static void cu_swiglu_fwd(BackendCtx *ctx, DevBuf act, DevBuf gate, DevBuf up, size_t n) {
    if (n == 0) return;
    LAUNCH(k_swiglu_fwd, grid_for(n, 256), 256, 0, ctx->stream)
    (act.ptr, dtcode(act.dtype), gate.ptr, dtcode(gate.dtype), up.ptr, dtcode(up.dtype), n);
    LAUNCH_CHECK("swiglu_fwd");
}

static void cu_swiglu_bwd(BackendCtx *ctx, DevBuf dgate, DevBuf dup, DevBuf dact, DevBuf gate, DevBuf up,
                          size_t n) {
    if (n == 0) return;
    LAUNCH(k_swiglu_bwd, grid_for(n, 256), 256, 0, ctx->stream)
    (dgate.ptr, dtcode(dgate.dtype), dup.ptr, dtcode(dup.dtype), dact.ptr, dtcode(dact.dtype), gate.ptr,
     dtcode(gate.dtype), up.ptr, dtcode(up.dtype), n);
    LAUNCH_CHECK("swiglu_bwd");
}
