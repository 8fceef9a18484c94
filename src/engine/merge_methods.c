/* merge_methods.c — see merge_methods.h. */
#include "merge_methods.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const method_names[] = {"linear", "task_arithmetic", "ties", "dare_ties", "slerp"};

int merge_method_parse(const char *name, MergeMethod *out) {
    for (int m = 0; m < (int)(sizeof method_names / sizeof *method_names); m++)
        if (!strcmp(name, method_names[m])) {
            *out = (MergeMethod)m;
            return 0;
        }
    return -1;
}

const char *merge_method_name(MergeMethod m) { return method_names[m]; }

int merge_method_uses_base(MergeMethod m) {
    return m == MERGE_TASK_ARITHMETIC || m == MERGE_TIES || m == MERGE_DARE_TIES;
}

int merge_default_normalize(MergeMethod m) { return m == MERGE_LINEAR || m == MERGE_TIES; }

void merge_linear(const float *const *x, const float *w, int n, size_t len, int normalize, float *out) {
    double wsum = 0;
    for (int i = 0; i < n; i++) wsum += w[i];
    for (size_t j = 0; j < len; j++) {
        double acc = 0;
        for (int i = 0; i < n; i++) acc += (double)w[i] * x[i][j];
        out[j] = (float)(normalize ? acc / wsum : acc);
    }
}

/* The magnitude of a float as an integer that orders like it (IEEE bits without the sign). */
static uint32_t magnitude_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
}

/* In hist (65536 bins, from the top), the bin where the k-th largest count falls; *above gets the
 * count of the bins above it. */
static uint32_t bin_of_kth(const size_t *hist, size_t k, size_t *above) {
    size_t cum = 0;
    for (uint32_t b = 65535;; b--) {
        if (cum + hist[b] >= k || b == 0) {
            *above = cum;
            return b;
        }
        cum += hist[b];
    }
}

void merge_trim_magnitude(float *delta, size_t len, float density) {
    if (density >= 1 || len == 0) return;
    size_t k = (size_t)((double)density * (double)len);
    if (k == 0) k = 1; /* mergekit refuses a tensor trimmed to nothing; one entry survives here */
    /* the k-th largest magnitude τ: its high 16 bits, then its low 16 bits among those */
    size_t *hist = dam_calloc(65536, sizeof(size_t), "trim histogram"), above_hi, above_lo;
    for (size_t j = 0; j < len; j++) hist[magnitude_bits(delta[j]) >> 16]++;
    uint32_t hi = bin_of_kth(hist, k, &above_hi);
    memset(hist, 0, 65536 * sizeof(size_t));
    for (size_t j = 0; j < len; j++) {
        uint32_t u = magnitude_bits(delta[j]);
        if (u >> 16 == hi) hist[u & 0xffffu]++;
    }
    uint32_t lo = bin_of_kth(hist, k - above_hi, &above_lo);
    free(hist);
    uint32_t tau = hi << 16 | lo;
    size_t ties_kept = k - above_hi - above_lo; /* entries equal to τ that still fit, in index order */
    for (size_t j = 0; j < len; j++) {
        uint32_t u = magnitude_bits(delta[j]);
        if (u > tau) continue;
        if (u == tau && ties_kept > 0)
            ties_kept--;
        else
            delta[j] = 0;
    }
}

void merge_dare_drop(float *delta, size_t len, float density, dam_rng *rng) {
    if (density >= 1) return;
    for (size_t j = 0; j < len; j++) delta[j] = dam_rng_uniform(rng) < density ? delta[j] / density : 0.0f;
}

void merge_task_vectors(const float *base, const float *const *delta, const float *w, int n, size_t len,
                        int sign_election, int normalize, float lambda, float *out) {
    double wsum = 0;
    for (int i = 0; i < n; i++) wsum += w[i];
    if (fabs(wsum) < 1e-8) wsum = 1;
    for (size_t j = 0; j < len; j++) {
        double sum = 0, mixed = 0, div = wsum;
        for (int i = 0; i < n; i++) sum += (double)w[i] * delta[i][j];
        if (sign_election) {
            int majority = sum >= 0 ? 1 : -1;
            div = 0;
            for (int i = 0; i < n; i++) {
                double term = (double)w[i] * delta[i][j];
                if ((term > 0 && majority > 0) || (term < 0 && majority < 0)) mixed += term, div += w[i];
            }
            if (div == 0) div = 1;
        } else {
            mixed = sum;
        }
        if (normalize) mixed /= div;
        out[j] = (float)(base[j] + (double)lambda * mixed);
    }
}

void merge_slerp(const float *a, const float *b, size_t len, float t, float *out) {
    double aa = 0, bb = 0, ab = 0;
    for (size_t j = 0; j < len; j++)
        aa += (double)a[j] * a[j], bb += (double)b[j] * b[j], ab += (double)a[j] * b[j];
    double na = sqrt(aa), nb = sqrt(bb);
    double cos = ab / ((na > 1e-8 ? na : 1) * (nb > 1e-8 ? nb : 1));
    double s0 = 1.0 - t, s1 = t; /* near-parallel: linear */
    if (fabs(cos) <= MERGE_SLERP_DOT_THRESHOLD) {
        double theta = acos(cos), sin_theta = sin(theta);
        s0 = sin(theta - theta * t) / sin_theta;
        s1 = sin(theta * t) / sin_theta;
    }
    for (size_t j = 0; j < len; j++) out[j] = (float)(s0 * a[j] + s1 * b[j]);
}

void merge_tensor(const MergeParams *p, const char *name, const float *base, float *const *models, size_t len,
                  float *out) {
    if (p->method == MERGE_LINEAR) {
        merge_linear((const float *const *)models, p->weights, p->n, len, p->normalize, out);
        return;
    }
    if (p->method == MERGE_SLERP) {
        merge_slerp(base, models[0], len, p->t, out);
        return;
    }
    for (int i = 0; i < p->n; i++) {
        float *d = models[i];
        for (size_t j = 0; j < len; j++) d[j] -= base[j];
        if (p->method == MERGE_TIES) merge_trim_magnitude(d, len, p->density);
        if (p->method == MERGE_DARE_TIES) { /* one stream per (seed, tensor, model) */
            dam_rng rng;
            dam_rng_seed(&rng,
                         dam_hash64(name, strlen(name), p->seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)));
            merge_dare_drop(d, len, p->density, &rng);
        }
    }
    merge_task_vectors(base, (const float *const *)models, p->weights, p->n, len,
                       p->method != MERGE_TASK_ARITHMETIC, p->normalize, p->lambda, out);
}
