/* loss.c — see loss.h. Row-wise, numerically stable (log-sum-exp), accumulated in double.
 *
 * With a vocabulary-parallel lm_head each rank holds columns [vocab_offset, vocab_offset + V) of the
 * logits; the per-row statistics (maxima, sums of exponentials, partial KL / entropy / MSE sums,
 * the top-K candidates) are combined through LossReduce, and each rank writes dz for its own
 * columns. Without a reducer (one rank) the same code computes the whole thing. */
#include "loss.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static void reduce_sum(const LossReduce *r, double *buf, int n) {
    if (r) r->sum(r->ctx, buf, n);
}
static void reduce_max(const LossReduce *r, double *buf, int n) {
    if (r) r->max(r->ctx, buf, n);
}

/* Full-vocabulary terms of C rows: KL(p_teacher ‖ q_merged), MSE, entropy, and their dz. */
static void full_vocab_rows(float *dz, LossSums *sums, const float *z, const float *zt, int C, int V,
                            const LossChunkParams *p) {
    double s = 1.0 / p->tau, tau2 = (double)p->tau * p->tau;
    int need_t = p->kl || p->mse > 0;
    double *st = dam_calloc((size_t)C * 5, sizeof(double), "loss row statistics");
    double *mx = st, *se = st + 2 * C, *part = st; /* mx: [C] merged, [C] teacher; reused below */
    for (int r = 0; r < C; r++) {
        double ma = -INFINITY, mb = -INFINITY;
        for (int v = 0; v < V; v++) {
            ma = fmax(ma, z[(size_t)r * V + v] * s);
            if (need_t) mb = fmax(mb, zt[(size_t)r * V + v] * s);
        }
        mx[r] = ma, mx[C + r] = need_t ? mb : 0;
    }
    reduce_max(p->reduce, mx, 2 * C);
    for (int r = 0; r < C; r++) {
        double sa = 0, sb = 0;
        for (int v = 0; v < V; v++) {
            sa += exp(z[(size_t)r * V + v] * s - mx[r]);
            if (need_t) sb += exp(zt[(size_t)r * V + v] * s - mx[C + r]);
        }
        se[r] = sa, se[C + r] = sb;
    }
    reduce_sum(p->reduce, se, 2 * C);
    double *lse = dam_malloc((size_t)C * 2 * sizeof(double), "lse");
    for (int r = 0; r < C; r++)
        lse[r] = mx[r] + log(se[r]), lse[C + r] = need_t ? mx[C + r] + log(se[C + r]) : 0;
    /* partial sums per row: [0,C) KL, [C,2C) Σ q·a, [2C,3C) Σ (z − zt)² */
    memset(part, 0, (size_t)C * 3 * sizeof(double));
    for (int r = 0; r < C; r++)
        for (int v = 0; v < V; v++) {
            size_t i = (size_t)r * V + v;
            double a = z[i] * s - lse[r], q = exp(a);
            part[C + r] += q * (z[i] * s);
            if (!need_t) continue;
            double b = zt[i] * s - lse[C + r];
            if (p->kl) part[r] += exp(b) * (b - a);
            double d = (double)z[i] - zt[i];
            part[2 * C + r] += d * d;
        }
    reduce_sum(p->reduce, part, 3 * C);
    for (int r = 0; r < C; r++) {
        double abar = part[C + r], H = lse[r] - abar;
        if (p->kl) sums->kl += tau2 * part[r] * p->inv_n;
        if (p->mse > 0) sums->mse += p->mse * part[2 * C + r] / p->V_full * p->inv_n;
        if (p->entropy > 0) sums->entropy += p->entropy * tau2 * H * p->inv_n;
        for (int v = 0; v < V; v++) {
            size_t i = (size_t)r * V + v;
            double a = z[i] * s, q = exp(a - lse[r]), g = 0;
            if (p->kl) g += p->tau * (q - exp(zt[i] * s - lse[C + r]));
            if (p->mse > 0) g += 2.0 * p->mse * ((double)z[i] - zt[i]) / p->V_full;
            if (p->entropy > 0) g += -p->entropy * p->tau * q * (a - abar);
            dz[i] += (float)(g * p->inv_n);
        }
    }
    free(lse);
    free(st);
}

/* KL over the K given entries (global vocabulary ids) only: both distributions renormalised over them. */
static void topk_rows(float *dz, LossSums *sums, const float *z, const int32_t *idx, const float *val, int C,
                      int V, const LossChunkParams *p) {
    int K = p->K;
    double s = 1.0 / p->tau, tau2 = (double)p->tau * p->tau;
    double *zk = dam_calloc((size_t)C * K, sizeof(double), "top-k logits");
    for (int r = 0; r < C; r++) /* the merged logits at the K ids, from whichever rank holds them */
        for (int k = 0; k < K; k++) {
            int v = idx[(size_t)r * K + k] - p->vocab_offset;
            if (v >= 0 && v < V) zk[(size_t)r * K + k] = z[(size_t)r * V + v];
        }
    reduce_sum(p->reduce, zk, C * K);
    for (int r = 0; r < C; r++) {
        const double *a_ = zk + (size_t)r * K;
        const float *b_ = val + (size_t)r * K;
        double mz = -INFINITY, mt = -INFINITY, sz = 0, st = 0;
        for (int k = 0; k < K; k++) mz = fmax(mz, a_[k] * s), mt = fmax(mt, b_[k] * s);
        for (int k = 0; k < K; k++) sz += exp(a_[k] * s - mz), st += exp(b_[k] * s - mt);
        /* sz, st >= 1 (K >= 1: each maximum contributes exp(0)) */
        double lse_a = mz + log(sz), lse_b = mt + log(st), kl = 0; // cppcheck-suppress invalidFunctionArg
        for (int k = 0; k < K; k++) {
            double a = a_[k] * s - lse_a, b = b_[k] * s - lse_b, pt = exp(b), q = exp(a);
            kl += pt * (b - a);
            int v = idx[(size_t)r * K + k] - p->vocab_offset;
            if (v >= 0 && v < V) dz[(size_t)r * V + v] += (float)(p->tau * (q - pt) * p->inv_n);
        }
        sums->kl += tau2 * kl * p->inv_n;
    }
    free(zk);
}

void loss_rows(float *dz, LossSums *sums, const float *z, const float *zt, const int32_t *idx,
               const float *val, int C, int V, const LossChunkParams *p) {
    memset(dz, 0, (size_t)C * V * sizeof(float));
    LossChunkParams full = *p;
    if (p->K > 0) {
        if (p->kl) topk_rows(dz, sums, z, idx, val, C, V, p);
        full.kl = 0;
    }
    if (full.kl || full.mse > 0 || full.entropy > 0) full_vocab_rows(dz, sums, z, zt, C, V, &full);
}

/* Insert (x, id) into the descending list vr/ir of n <= K entries; ties keep the lower id first. */
static int topk_insert(int32_t *ir, float *vr, int n, int K, float x, int32_t id) {
    if (n == K && !(x > vr[K - 1] || (x == vr[K - 1] && id < ir[K - 1]))) return n;
    int pos = n < K ? n++ : K - 1;
    while (pos > 0 && (x > vr[pos - 1] || (x == vr[pos - 1] && id < ir[pos - 1]))) {
        vr[pos] = vr[pos - 1];
        ir[pos] = ir[pos - 1];
        pos--;
    }
    vr[pos] = x;
    ir[pos] = id;
    return n;
}

void loss_topk(int32_t *idx, float *val, const float *zt, int C, int V, int K) {
    loss_topk_sharded(idx, val, zt, C, V, K, 0, NULL);
}

void loss_topk_sharded(int32_t *idx, float *val, const float *zt, int C, int V, int K, int vocab_offset,
                       const LossReduce *r) {
    for (int row = 0; row < C; row++) {
        int n = 0;
        for (int v = 0; v < V; v++)
            n = topk_insert(idx + (size_t)row * K, val + (size_t)row * K, n, K, zt[(size_t)row * V + v],
                            vocab_offset + v);
    }
    if (!r || r->group_size == 1) return;
    /* every rank's K candidates per row, then the global K best */
    int G = r->group_size;
    int32_t *all_i = dam_malloc((size_t)C * K * G * sizeof(int32_t), "top-k candidates");
    float *all_v = dam_malloc((size_t)C * K * G * sizeof(float), "top-k candidates");
    r->gather(r->ctx, idx, val, C * K, all_i, all_v);
    for (int row = 0; row < C; row++) {
        int n = 0;
        for (int g = 0; g < G; g++)
            for (int k = 0; k < K; k++) {
                size_t j = ((size_t)g * C + row) * K + k;
                n = topk_insert(idx + (size_t)row * K, val + (size_t)row * K, n, K, all_v[j], all_i[j]);
            }
    }
    free(all_i), free(all_v);
}
