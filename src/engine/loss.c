/* loss.c — see loss.h. Row-wise, numerically stable (log-sum-exp), accumulated in double.
 *
 * With a vocabulary-parallel lm_head each rank holds columns [vocab_offset, vocab_offset + V) of the
 * logits; the per-row statistics (maxima, sums of exponentials, partial KL / entropy / MSE sums,
 * the top-K candidates) are combined through LossReduce, and each rank writes dz for its own
 * columns. Without a reducer (one rank) the same code computes the whole thing.
 *
 * The row loops below are written to vectorize: see vmath.h (nothing here reads floating-point
 * exception flags). The pragma comes before every #include: a static inline function of a header
 * compiled under other options (vmath.h's, util.h's) would not be inlined into these loops.
 * Exponentials are single precision (dam_exp_approx, relative error < 2e-7) on arguments computed
 * in double; far below the tolerance of the tests against torch (1e-3) and of the gradient check
 * (2e-2). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "loss.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "vmath.h"

static void reduce_sum(const LossReduce *r, double *buf, int n) {
    if (r) r->sum(r->ctx, buf, n);
}

/* Loops over a row of V logits keep LANES partial sums so that they vectorize without
 * reassociating floating-point additions. */
enum { LANES = 8 };

static double lane_sum(const double *acc) {
    double s = 0;
    for (int k = 0; k < LANES; k++) s += acc[k];
    return s;
}

/* Largest z·s and zt·s of a row (s > 0). */
static void row_max(const float *z, const float *zt, int V, double s, double *ma, double *mb) {
    float a[LANES], b[LANES];
    for (int k = 0; k < LANES; k++) a[k] = b[k] = -INFINITY;
    int v = 0;
    for (; v + LANES <= V; v += LANES)
        for (int k = 0; k < LANES; k++) {
            a[k] = z[v + k] > a[k] ? z[v + k] : a[k];
            if (zt) b[k] = zt[v + k] > b[k] ? zt[v + k] : b[k];
        }
    for (; v < V; v++) {
        a[0] = z[v] > a[0] ? z[v] : a[0];
        if (zt) b[0] = zt[v] > b[0] ? zt[v] : b[0];
    }
    float x = a[0], y = b[0];
    for (int k = 1; k < LANES; k++) x = a[k] > x ? a[k] : x, y = b[k] > y ? b[k] : y;
    *ma = x * s, *mb = zt ? y * s : 0;
}

/* Σ e^(x·s − m) over a row. */
static double row_sumexp(const float *x, int V, double s, double m) {
    double acc[LANES] = {0};
    int v = 0;
    for (; v + LANES <= V; v += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += dam_exp_approx((float)(x[v + k] * s - m));
    for (; v < V; v++) acc[0] += dam_exp_approx((float)(x[v] * s - m));
    return lane_sum(acc);
}

/* Partial sums of a row, each only when its term is on: KL Σ pt·(b − a), Σ q·(z·s) (entropy),
 * Σ (z − zt)² (MSE), with a = z·s − la, b = zt·s − lb. */
static void row_partials(const float *z, const float *zt, int V, double s, double la, double lb,
                         const LossChunkParams *p, double out[3]) {
    double k_[LANES] = {0}, q_[LANES] = {0}, d_[LANES] = {0};
    int v = 0, full = V - V % LANES;
    if (p->entropy > 0) {
        for (; v < full; v += LANES)
            for (int k = 0; k < LANES; k++) {
                double zs = z[v + k] * s;
                q_[k] += dam_exp_approx((float)(zs - la)) * zs;
            }
        for (; v < V; v++) q_[0] += dam_exp_approx((float)(z[v] * s - la)) * (z[v] * s);
    }
    if (p->kl) {
        for (v = 0; v < full; v += LANES)
            for (int k = 0; k < LANES; k++) {
                double a = z[v + k] * s - la, b = zt[v + k] * s - lb;
                k_[k] += dam_exp_approx((float)b) * (b - a);
            }
        for (; v < V; v++) {
            double a = z[v] * s - la, b = zt[v] * s - lb;
            k_[0] += dam_exp_approx((float)b) * (b - a);
        }
    }
    if (p->mse > 0) {
        for (v = 0; v < full; v += LANES)
            for (int k = 0; k < LANES; k++) {
                double d = (double)z[v + k] - zt[v + k];
                d_[k] += d * d;
            }
        for (; v < V; v++) {
            double d = (double)z[v] - zt[v];
            d_[0] += d * d;
        }
    }
    out[0] = lane_sum(k_), out[1] = lane_sum(q_), out[2] = lane_sum(d_);
}

/* dz of a row (accumulated): KL τ(q − pt), MSE 2·mse·(z − zt)/V_full, entropy −ent·τ·q·(a − ā),
 * all times inv_n; one simple loop per term, so that each vectorizes. */
static void row_grad(float *dz, const float *z, const float *zt, int V, double s, double la, double lb,
                     double abar, const LossChunkParams *p) {
    double inv_n = p->inv_n;
    if (p->kl) {
        double c = p->tau * loss_kl_inv_n(p);
        for (int v = 0; v < V; v++)
            dz[v] += (float)(c * ((double)dam_exp_approx((float)(z[v] * s - la)) -
                                  (double)dam_exp_approx((float)(zt[v] * s - lb))));
    }
    if (p->mse > 0) {
        double c = 2.0 * p->mse / p->V_full * inv_n;
        for (int v = 0; v < V; v++) dz[v] += (float)(c * ((double)z[v] - zt[v]));
    }
    if (p->entropy > 0) {
        double c = -p->entropy * p->tau * inv_n;
        for (int v = 0; v < V; v++) {
            double a = z[v] * s;
            dz[v] += (float)(c * dam_exp_approx((float)(a - la)) * (a - abar));
        }
    }
}

/* Full-vocabulary terms of C rows: KL(p_teacher ‖ q_merged), MSE, entropy, and their dz. Without a
 * reducer each row is done start to finish while it is in cache; with one, each statistic is
 * computed for every row, combined over the group, then the next. */
static void full_vocab_rows(float *dz, LossSums *sums, const float *z, const float *zt, int C, int V,
                            const LossChunkParams *p) {
    double s = 1.0 / p->tau, tau2 = (double)p->tau * p->tau;
    int need_t = p->kl || p->mse > 0;
    const LossReduce *red = p->reduce && p->reduce->group_size > 1 ? p->reduce : NULL;
    int rows_per_pass = red ? C : 1;
    /* per row: [0] max z·s, [1] max zt·s, [2] Σe^(z·s), [3] Σe^(zt·s), [4..6] partials */
    double *st = dam_calloc((size_t)rows_per_pass * 7, sizeof(double), "loss row statistics");
    for (int r0 = 0; r0 < C; r0 += rows_per_pass) {
        int n = rows_per_pass;
        double *mx = st, *se = st + 2 * n, *part = st + 4 * n; /* [n] merged, [n] teacher each */
#define ZROW(r) (z + (size_t)(r0 + (r)) * V)
#define TROW(r) (need_t ? zt + (size_t)(r0 + (r)) * V : NULL)
        for (int r = 0; r < n; r++) row_max(ZROW(r), TROW(r), V, s, &mx[r], &mx[n + r]);
        if (red) red->max(red->ctx, mx, 2 * n);
        for (int r = 0; r < n; r++) {
            se[r] = row_sumexp(ZROW(r), V, s, mx[r]);
            se[n + r] = need_t ? row_sumexp(TROW(r), V, s, mx[n + r]) : 0;
        }
        if (red) red->sum(red->ctx, se, 2 * n);
        for (int r = 0; r < n; r++) { /* log-sum-exps, kept in mx */
            mx[r] += log(se[r]);
            mx[n + r] = need_t ? mx[n + r] + log(se[n + r]) : 0;
        }
        /* partial sums per row: [0,n) KL, [n,2n) Σ q·a, [2n,3n) Σ (z − zt)² */
        double tmp[3];
        for (int r = 0; r < n; r++) {
            row_partials(ZROW(r), TROW(r), V, s, mx[r], mx[n + r], p, tmp);
            part[r] = tmp[0], part[n + r] = tmp[1], part[2 * n + r] = tmp[2];
        }
        if (red) red->sum(red->ctx, part, 3 * n);
        for (int r = 0; r < n; r++) {
            double lse = mx[r], abar = part[n + r], H = lse - abar;
            if (p->kl) sums->kl += tau2 * part[r] * loss_kl_inv_n(p);
            if (p->mse > 0) sums->mse += p->mse * part[2 * n + r] / p->V_full * p->inv_n;
            if (p->entropy > 0) sums->entropy += p->entropy * tau2 * H * p->inv_n;
            row_grad(dz + (size_t)(r0 + r) * V, ZROW(r), TROW(r), V, s, lse, mx[n + r], abar, p);
        }
#undef ZROW
#undef TROW
    }
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
            if (v >= 0 && v < V) dz[(size_t)r * V + v] += (float)(p->tau * (q - pt) * loss_kl_inv_n(p));
        }
        sums->kl += tau2 * kl * loss_kl_inv_n(p);
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
