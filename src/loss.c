/* loss.c — see loss.h. Row-wise, numerically stable (log-sum-exp), accumulated in double. */
#include "loss.h"

#include <math.h>
#include <string.h>

/* log Σ exp(x[j]·s) over n entries, with x scaled by s = 1/τ. */
static double logsumexp_scaled(const float *x, int n, float s) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = x[j] * s > mx ? x[j] * s : mx;
    double sum = 0;
    for (int j = 0; j < n; j++) sum += exp((double)(x[j] * s - mx));
    /* sum >= 1: the maximum's own term is exp(0) */
    return mx + log(sum); // cppcheck-suppress invalidFunctionArg
}

/* Full-vocabulary KL(p_teacher ‖ q_merged) at temperature τ for one row; adds τ·(q − p)·inv_n to dz. */
static double kl_full_row(float *dz, const float *z, const float *zt, int V, float tau, float inv_n) {
    float s = 1.0f / tau;
    double lse_a = logsumexp_scaled(z, V, s), lse_b = logsumexp_scaled(zt, V, s), kl = 0;
    for (int v = 0; v < V; v++) {
        double a = (double)(z[v] * s) - lse_a, b = (double)(zt[v] * s) - lse_b;
        double p = exp(b), q = exp(a);
        kl += p * (b - a);
        dz[v] += (float)(tau * (q - p) * inv_n);
    }
    return kl;
}

/* KL over the K given entries only: both distributions renormalised over them. */
static double kl_topk_row(float *dz, const float *z, const int32_t *idx, const float *val, int K, float tau,
                          float inv_n) {
    float s = 1.0f / tau;
    double mz = -INFINITY, mt = -INFINITY;
    for (int k = 0; k < K; k++) {
        mz = fmax(mz, (double)(z[idx[k]] * s));
        mt = fmax(mt, (double)(val[k] * s));
    }
    double sz = 0, st = 0;
    for (int k = 0; k < K; k++) {
        sz += exp((double)(z[idx[k]] * s) - mz);
        st += exp((double)(val[k] * s) - mt);
    }
    /* sz, st >= 1 (K >= 1: each maximum contributes exp(0)) */
    double lse_a = mz + log(sz), lse_b = mt + log(st), kl = 0; // cppcheck-suppress invalidFunctionArg
    for (int k = 0; k < K; k++) {
        double a = (double)(z[idx[k]] * s) - lse_a, b = (double)(val[k] * s) - lse_b;
        double p = exp(b), q = exp(a);
        kl += p * (b - a);
        dz[idx[k]] += (float)(tau * (q - p) * inv_n);
    }
    return kl;
}

/* mean_v (z − zt)²; adds λ·2(z − zt)/V·inv_n to dz. */
static double mse_row(float *dz, const float *z, const float *zt, int V, float lambda, float inv_n) {
    double sum = 0, g = 2.0 * lambda * inv_n / V;
    for (int v = 0; v < V; v++) {
        double d = (double)z[v] - zt[v];
        sum += d * d;
        dz[v] += (float)(g * d);
    }
    return sum / V;
}

/* H(softmax(z/τ)); adds λ·τ²·dH/dz·inv_n = −λ·τ·q·(a − ā)·inv_n to dz. */
static double entropy_row(float *dz, const float *z, int V, float tau, float lambda, float inv_n) {
    float s = 1.0f / tau;
    double lse = logsumexp_scaled(z, V, s), abar = 0;
    for (int v = 0; v < V; v++) abar += exp((double)(z[v] * s) - lse) * (z[v] * s);
    double H = lse - abar;
    for (int v = 0; v < V; v++) {
        double a = (double)(z[v] * s), q = exp(a - lse);
        dz[v] += (float)(-lambda * tau * q * (a - abar) * inv_n);
    }
    return H;
}

void loss_rows(float *dz, LossSums *sums, const float *z, const float *zt, const int32_t *idx,
               const float *val, int C, int V, const LossChunkParams *p) {
    memset(dz, 0, (size_t)C * V * sizeof(float));
    double tau2 = (double)p->tau * p->tau;
    for (int r = 0; r < C; r++) {
        const float *zr = z + (size_t)r * V;
        float *dzr = dz + (size_t)r * V;
        if (p->kl) {
            double kl = p->K > 0 ? kl_topk_row(dzr, zr, idx + (size_t)r * p->K, val + (size_t)r * p->K, p->K,
                                               p->tau, p->inv_n)
                                 : kl_full_row(dzr, zr, zt + (size_t)r * V, V, p->tau, p->inv_n);
            sums->kl += tau2 * kl * p->inv_n;
        }
        if (p->mse > 0)
            sums->mse += p->mse * mse_row(dzr, zr, zt + (size_t)r * V, V, p->mse, p->inv_n) * p->inv_n;
        if (p->entropy > 0)
            sums->entropy +=
                p->entropy * tau2 * entropy_row(dzr, zr, V, p->tau, p->entropy, p->inv_n) * p->inv_n;
    }
}

void loss_topk(int32_t *idx, float *val, const float *zt, int C, int V, int K) {
    for (int r = 0; r < C; r++) {
        const float *row = zt + (size_t)r * V;
        int32_t *ir = idx + (size_t)r * K;
        float *vr = val + (size_t)r * K;
        int n = 0; /* insertion into a sorted list of the K best so far */
        for (int v = 0; v < V; v++) {
            float x = row[v];
            if (n == K && !(x > vr[K - 1])) continue;
            int pos = n < K ? n++ : K - 1;
            while (pos > 0 && x > vr[pos - 1]) {
                vr[pos] = vr[pos - 1];
                ir[pos] = ir[pos - 1];
                pos--;
            }
            vr[pos] = x;
            ir[pos] = v;
        }
    }
}
