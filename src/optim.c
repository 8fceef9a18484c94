/* optim.c — see optim.h. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- regularizers */

static double dot(const float *a, const float *b, int n) {
    double s = 0;
    for (int j = 0; j < n; j++) s += (double)a[j] * b[j];
    return s;
}

/* Gram matrix G[i*n + j] = c_i · c_j over the coefficient columns; a tensor split over the tp
 * group (`shard` non-NULL) adds up every rank's columns. */
static void gram(const float *c, int n, int dim, const CommGroup *shard, double *G) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) G[i * n + j] = dot(c + (size_t)i * dim, c + (size_t)j * dim, dim);
    if (shard) comm_allreduce_sum_f64(shard, G, (size_t)n * n);
}

/* λ·mean_{i<j} cos(c_i, c_j), cos = a·b / max(|a||b|, 1e-8); gradient into g. */
static double similarity(const float *c, float *g, int n, int dim, double lambda, const CommGroup *shard) {
    int pairs = n * (n - 1) / 2;
    if (pairs == 0) return 0;
    double G[DAM_MAX_SOURCES * DAM_MAX_SOURCES];
    gram(c, n, dim, shard, G);
    double total = 0, w = lambda / pairs;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            const float *a = c + (size_t)i * dim, *b = c + (size_t)j * dim;
            double na = sqrt(G[i * n + i]), nb = sqrt(G[j * n + j]), ab = G[i * n + j];
            double den = na * nb > 1e-8 ? na * nb : 1e-8, cs = ab / den;
            total += cs;
            for (int k = 0; k < dim; k++) {
                double ga = b[k] / den, gb = a[k] / den;
                if (na * nb > 1e-8) ga -= cs * a[k] / (na * na), gb -= cs * b[k] / (nb * nb);
                g[(size_t)i * dim + k] += (float)(w * ga);
                g[(size_t)j * dim + k] += (float)(w * gb);
            }
        }
    return w * total;
}

static double l1(const float *c, float *g, size_t n, double lambda) {
    double s = 0;
    for (size_t j = 0; j < n; j++) {
        s += fabs(c[j]);
        g[j] += (float)(lambda * ((c[j] > 0) - (c[j] < 0)));
    }
    return lambda * s;
}

/* λ·Σ_i ‖c_i‖₂ (the norm, not its square). */
static double l2(const float *c, float *g, int n, int dim, double lambda, const CommGroup *shard) {
    double G[DAM_MAX_SOURCES * DAM_MAX_SOURCES], s = 0;
    gram(c, n, dim, shard, G);
    for (int i = 0; i < n; i++) {
        const float *a = c + (size_t)i * dim;
        double nrm = sqrt(G[i * n + i]);
        s += nrm;
        if (nrm > 0)
            for (int k = 0; k < dim; k++) g[(size_t)i * dim + k] += (float)(lambda * a[k] / nrm);
    }
    return lambda * s;
}

/* λ·mean_{a<b} Σ_col min(|c_a|, |c_b|); at a tie each side gets half, as torch.minimum does. */
static double overlap(const float *c, float *g, int n, int dim, double lambda) {
    int pairs = n * (n - 1) / 2;
    if (pairs == 0) return 0;
    double s = 0, w = lambda / pairs;
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++)
            for (int k = 0; k < dim; k++) {
                float x = c[(size_t)a * dim + k], y = c[(size_t)b * dim + k], ax = fabsf(x), ay = fabsf(y);
                s += ax < ay ? ax : ay;
                float sx = (float)((x > 0) - (x < 0)), sy = (float)((y > 0) - (y < 0));
                float share_a = ax < ay ? 1.0f : ax > ay ? 0.0f : 0.5f;
                g[(size_t)a * dim + k] += (float)(w * share_a * sx);
                g[(size_t)b * dim + k] += (float)(w * (1.0f - share_a) * sy);
            }
    return w * s;
}

/* A tensor whose coefficient columns are split over the tp group (else NULL: whole on every rank). */
static const CommGroup *shard_group(const DamModel *m, const DamTensor *x) {
    return m->tp && x->coef_full != x->dim ? m->tp : NULL;
}

void reg_apply(DamModel *m, const DamConfig *c, RegTerms *out) {
    memset(out, 0, sizeof *out);
    double split_sums[2] = {0, 0}; /* l1 and overlap of split tensors: this rank's columns only */
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        if (!x->trainable) continue;
        int n = m->n_rows, dim = x->dim;
        const CommGroup *shard = shard_group(m, x);
        double vs = c->similarity > 0 && x->coef_full > 1
                        ? similarity(x->c, x->grad, n, dim, c->similarity, shard)
                        : 0;
        double v2 = c->l2 > 0 ? l2(x->c, x->grad, n, dim, c->l2, shard) : 0;
        double v1 = c->l1 > 0 ? l1(x->c, x->grad, (size_t)n * dim, c->l1) : 0;
        double vo = c->overlap > 0 ? overlap(x->c, x->grad, n, dim, c->overlap) : 0;
        if (!dam_model_owns(m, x)) continue; /* gradient applied, value counted on the first stage */
        out->similarity += vs, out->l2 += v2;
        if (shard)
            split_sums[0] += v1, split_sums[1] += vo;
        else
            out->l1 += v1, out->overlap += vo;
    }
    if (m->tp) comm_allreduce_sum_f64(m->tp, split_sums, 2);
    out->l1 += split_sums[0], out->overlap += split_sums[1];
    if (m->pp) comm_allreduce_sum_f64(m->pp, (double *)out, 4); /* each stage's own tensors */
}

/* ---------------------------------------------------------------- clipping and schedule */

double optim_clip_grad_norm(DamModel *m, float max_norm) {
    double whole = 0, split = 0; /* split tensors: each rank's columns, summed over tp; whole ones once */
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        if (!x->trainable) continue;
        double v = dam_model_owns(m, x) ? dot(x->grad, x->grad, m->n_rows * x->dim) : 0;
        if (shard_group(m, x))
            split += v;
        else
            whole += v;
    }
    if (m->tp) comm_allreduce_sum_f64(m->tp, &split, 1);
    double total = whole + split;
    if (m->pp) comm_allreduce_sum_f64(m->pp, &total, 1);
    double norm = sqrt(total);
    if (max_norm > 0 && norm > max_norm) {
        float scale = (float)(max_norm / (norm + 1e-6)); /* as torch.nn.utils.clip_grad_norm_ */
        for (int t = 0; t < m->n_tensors; t++) {
            DamTensor *x = &m->tensors[t];
            if (!x->trainable) continue;
            for (size_t j = 0; j < (size_t)m->n_rows * x->dim; j++) x->grad[j] *= scale;
        }
    }
    return norm;
}

float optim_lr(const DamConfig *c, int step, int total) {
    if (step < c->warmup) return c->lr * (float)step / (float)(c->warmup > 1 ? c->warmup : 1);
    if (c->schedule == SCHED_CONSTANT) return c->lr;
    double span = total - c->warmup > 1 ? total - c->warmup : 1, progress = (step - c->warmup) / span;
    if (c->schedule == SCHED_LINEAR) return (float)(c->lr * fmax(0.0, 1.0 - progress));
    return (float)(c->lr * 0.5 * (1.0 + cos(M_PI * fmin(progress, 1.0))));
}

/* ---------------------------------------------------------------- AdamW / MoFO */

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* |m| threshold above which MoFO updates an entry: the top alpha fraction of this tensor. */
static float mofo_threshold(const float *mom, size_t n, float alpha, float *scratch) {
    for (size_t j = 0; j < n; j++) scratch[j] = fabsf(mom[j]);
    qsort(scratch, n, sizeof(float), cmp_desc);
    size_t keep = (size_t)ceil(alpha * (double)n);
    if (keep < 1) keep = 1;
    return scratch[keep - 1];
}

void optim_step(DamModel *m, const DamConfig *c, float lr, int t) {
    double bc1 = 1.0 - pow(c->beta1, t), bc2 = 1.0 - pow(c->beta2, t);
    for (int k = 0; k < m->n_tensors; k++) {
        DamTensor *x = &m->tensors[k];
        if (!x->trainable) continue;
        size_t n = (size_t)m->n_rows * x->dim;
        for (size_t j = 0; j < n; j++) {
            x->adam_m[j] = c->beta1 * x->adam_m[j] + (1 - c->beta1) * x->grad[j];
            x->adam_v[j] = c->beta2 * x->adam_v[j] + (1 - c->beta2) * x->grad[j] * x->grad[j];
        }
        float thr = -1.0f;
        if (c->optimizer == OPT_MOFO) {
            float *scratch = dam_malloc(n * sizeof(float), "mofo");
            thr = mofo_threshold(x->adam_m, n, c->mofo_alpha, scratch);
            free(scratch);
        }
        for (size_t j = 0; j < n; j++) {
            if (thr >= 0 && fabsf(x->adam_m[j]) < thr) continue; /* MoFO: only the largest momenta move */
            double mh = x->adam_m[j] / bc1, vh = x->adam_v[j] / bc2;
            x->c[j] -= (float)(lr * (mh / (sqrt(vh) + c->adam_eps) + c->weight_decay * x->c[j]));
        }
    }
    dam_model_refresh(m);
}
