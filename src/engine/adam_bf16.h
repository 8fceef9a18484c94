/* adam_bf16.h — one entry of AdamW / MoFO-AdamW on bfloat16 coefficients (AdamBf16 in backend.h),
 * shared by the CPU and CUDA backends. Each line is one torch op on bf16 tensors: computed in float
 * from bf16 inputs, rounded once to bf16 (round to nearest even). torch's CPU kernels fuse a
 * multiply with the add that follows (fmaf here), which tests/fixtures/make_bf16_optim_fixture.py's
 * sequence confirms bit for bit. */
#ifndef DAM_ADAM_BF16_H
#define DAM_ADAM_BF16_H

#include <math.h>

#include "backend.h"
#include "util.h"

#ifdef __CUDACC__
#define ADAM_BF16_FN __host__ __device__ static inline
ADAM_BF16_FN float adam_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
#else
#define ADAM_BF16_FN static inline
static inline float adam_bf16(float x) { return dam_bf16_to_f32(dam_f32_to_bf16(x)); }
#endif

/* The moments after gradient g (all three read as bf16). */
ADAM_BF16_FN void adam_bf16_moments(const AdamBf16 *s, float g, float *m, float *v) {
    float mj = adam_bf16(*m), vj = adam_bf16(*v);
    g = adam_bf16(g);
    if (s->mode == ADAM_BF16_MOFO) /* exp_avg.mul_(β1).add_(g, alpha=1 − β1) */
        mj = adam_bf16(fmaf(s->w1, g, adam_bf16(mj * s->b1)));
    else if (s->w1 < 0.5f) /* exp_avg.lerp_(g, 1 − β1): m + w·(g − m), or g − (g − m)·(1 − w) */
        mj = adam_bf16(fmaf(s->w1, g - mj, mj));
    else
        mj = adam_bf16(fmaf(-(g - mj), 1.0f - s->w1, g));
    *m = mj; /* exp_avg_sq.mul_(β2).addcmul_(g, g, value=1 − β2) */
    *v = adam_bf16(fmaf(s->w2 * g, g, adam_bf16(vj * s->b2)));
}

/* The coefficient c (a bf16 value) of an entry that moves: decayed, then stepped. */
ADAM_BF16_FN float adam_bf16_update(const AdamBf16 *s, float c, float m, float v) {
    c = adam_bf16(c * s->decay);                                                /* p.mul_(1 − lr·wd) */
    float d = adam_bf16(adam_bf16(adam_bf16(sqrtf(v)) / s->sqrt_bc2) + s->eps); /* (√v / √bc2).add_(eps) */
    if (s->mode == ADAM_BF16_MOFO)
        return adam_bf16(fmaf(s->step, adam_bf16(m / d), c)); /* p.add_(m/d, alpha) */
    return adam_bf16(fmaf(s->step, m / d, c));                /* p.addcdiv_(m, d, value) */
}

#endif
