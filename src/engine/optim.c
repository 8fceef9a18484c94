/* optim.c — see optim.h. */
#include "comm.h"
#include "optim.h"

#include "adam_bf16.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- regularizers */

/* Every regularizer works on the device (backend coefficient ops); what comes back to the host is
 * small: Gram matrices (n_src x n_src) and sums. */

/* Gram matrix G[i*n + j] = c_i · c_j over the coefficient columns; a tensor split over the tp
 * group (`shard` non-NULL) adds up every rank's columns. */
static void gram(const DamModel *m, DevBuf c, int n, int dim, const CommGroup *shard, double *G) {
    m->be->coef_gram(m->ctx, G, c, n, dim);
    if (shard) comm_allreduce_sum_f64(shard, G, (size_t)n * n);
}

/* λ·mean_{i<j} cos(c_i, c_j), cos = a·b / max(|a||b|, 1e-8); gradient into g as g_i += Σ_j A_ij c_j:
 * d cos/d a = b/den − cos·a/|a|² (the second term only when |a||b| > 1e-8). */
static double similarity(const DamModel *m, DevBuf c, DevBuf g, int n, int dim, double lambda,
                         const CommGroup *shard) {
    int pairs = n * (n - 1) / 2;
    if (pairs == 0) return 0;
    double G[DAM_MAX_SOURCES * DAM_MAX_SOURCES], A[DAM_MAX_SOURCES * DAM_MAX_SOURCES] = {0};
    gram(m, c, n, dim, shard, G);
    double total = 0, w = lambda / pairs;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            double na = sqrt(G[i * n + i]), nb = sqrt(G[j * n + j]), ab = G[i * n + j];
            double den = na * nb > 1e-8 ? na * nb : 1e-8, cs = ab / den;
            total += cs;
            A[i * n + j] += w / den, A[j * n + i] += w / den;
            if (na * nb > 1e-8) A[i * n + i] -= w * cs / (na * na), A[j * n + j] -= w * cs / (nb * nb);
        }
    m->be->coef_mix_grad(m->ctx, g, c, A, n, dim);
    return w * total;
}

/* λ·Σ_i ‖c_i‖₂ (the norm, not its square); gradient λ·c_i/‖c_i‖. */
static double l2(const DamModel *m, DevBuf c, DevBuf g, int n, int dim, double lambda,
                 const CommGroup *shard) {
    double G[DAM_MAX_SOURCES * DAM_MAX_SOURCES], A[DAM_MAX_SOURCES * DAM_MAX_SOURCES] = {0}, s = 0;
    gram(m, c, n, dim, shard, G);
    for (int i = 0; i < n; i++) {
        double nrm = sqrt(G[i * n + i]);
        s += nrm;
        if (nrm > 0) A[i * n + i] = lambda / nrm;
    }
    m->be->coef_mix_grad(m->ctx, g, c, A, n, dim);
    return lambda * s;
}

/* λ·mean_{a<b} Σ_col min(|c_a|, |c_b|); at a tie each side gets half, as torch.minimum does. */
static double overlap(const DamModel *m, DevBuf c, DevBuf g, int n, int dim, double lambda) {
    int pairs = n * (n - 1) / 2;
    if (pairs == 0) return 0;
    return m->be->coef_overlap(m->ctx, g, c, n, dim, lambda / pairs);
}

/* λ·mean_{a<b} Σ_col min(|c_a|, |c_b|)·w_ab (pair_weights.h); at a tie the lower row gets the gradient. */
static double weighted_overlap(const DamModel *m, const DamTensor *x, int n, double lambda) {
    int pairs = n * (n - 1) / 2;
    if (pairs == 0 || devbuf_null(x->wov)) return 0;
    return m->be->coef_weighted_overlap(m->ctx, x->grad, x->c, x->wov, n, x->dim, lambda / pairs);
}

/* A tensor whose coefficient columns are split over the tp group (else NULL: whole on every rank). */
static const CommGroup *shard_group(const DamModel *m, const DamTensor *x) {
    return m->tp && x->coef_full != x->dim ? m->tp : NULL;
}

void reg_apply(DamModel *m, const DamConfig *c, RegTerms *out) {
    memset(out, 0, sizeof *out);
    double split_sums[3] = {0, 0,
                            0}; /* l1, overlap, weighted overlap of split tensors: this rank's columns */
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        if (!x->trainable) continue;
        int n = m->n_coef_rows, dim = x->dim;
        const CommGroup *shard = shard_group(m, x);
        double vs = c->similarity > 0 && x->coef_full > 1
                        ? similarity(m, x->c, x->grad, n, dim, c->similarity, shard)
                        : 0;
        int norms = !c->reg_skip_biases || x->kind != DT_BIAS; /* loss.reg_biases false: the reference */
        double v2 = norms && c->l2 > 0 ? l2(m, x->c, x->grad, n, dim, c->l2, shard) : 0;
        double v1 = norms && c->l1 > 0 ? m->be->coef_l1(m->ctx, x->grad, x->c, (size_t)n * dim, c->l1) : 0;
        double vo = norms && c->overlap > 0 ? overlap(m, x->c, x->grad, n, dim, c->overlap) : 0;
        double vw = c->weighted_overlap > 0 ? weighted_overlap(m, x, n, c->weighted_overlap) : 0;
        if (!dam_model_owns(m, x)) continue; /* gradient applied, value counted on the first stage */
        out->similarity += vs, out->l2 += v2;
        if (shard)
            split_sums[0] += v1, split_sums[1] += vo, split_sums[2] += vw;
        else
            out->l1 += v1, out->overlap += vo, out->weighted_overlap += vw;
    }
    if (m->tp) comm_allreduce_sum_f64(m->tp, split_sums, 3);
    out->l1 += split_sums[0], out->overlap += split_sums[1], out->weighted_overlap += split_sums[2];
    if (m->pp) comm_allreduce_sum_f64(m->pp, (double *)out, 5); /* each stage's own tensors */
}

/* ---------------------------------------------------------------- clipping and schedule */

double optim_clip_grad_norm(DamModel *m, float max_norm) {
    double whole = 0, split = 0; /* split tensors: each rank's columns, summed over tp; whole ones once */
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        if (!x->trainable) continue;
        double v = dam_model_owns(m, x) ? m->be->sumsq(m->ctx, x->grad, (size_t)m->n_coef_rows * x->dim) : 0;
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
            m->be->scale(m->ctx, x->grad, scale, (size_t)m->n_coef_rows * x->dim);
        }
    }
    return norm;
}

int optim_warmup_steps(const DamConfig *c, int total) {
    return c->warmup > 0 ? c->warmup : (int)ceil(total * c->warmup_ratio);
}

float optim_lr(const DamConfig *c, int step, int total) {
    /* Hugging Face's "constant" ignores the warmup (only constant_with_warmup warms up) */
    if (c->schedule == SCHED_CONSTANT && c->constant_skips_warmup) return c->lr;
    int w = optim_warmup_steps(c, total);
    if (step < w) return c->lr * (float)step / (float)(w > 1 ? w : 1);
    double span = total - w > 1 ? total - w : 1, progress = (step - w) / span;
    /* a zeroed DamConfig (tests, tools) gets transformers' defaults, as config.c gives them */
    double cycles = c->num_cycles > 0 ? c->num_cycles : c->schedule == SCHED_COSINE_WITH_RESTARTS ? 1 : 0.5;
    double power = c->power > 0 ? c->power : 1;
    switch (c->schedule) {
    case SCHED_CONSTANT:
    case SCHED_CONSTANT_WITH_WARMUP: return c->lr;
    case SCHED_LINEAR: return (float)(c->lr * fmax(0.0, 1.0 - progress));
    case SCHED_COSINE: return (float)fmax(0.0, c->lr * 0.5 * (1.0 + cos(M_PI * 2.0 * cycles * progress)));
    case SCHED_COSINE_WITH_RESTARTS:
        if (progress >= 1.0) return 0;
        return (float)(c->lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * fmod(cycles * progress, 1.0)))));
    case SCHED_POLYNOMIAL: { /* lr_end + (lr − lr_end)·(1 − (step − w)/(total − w))^power */
        if (step > total) return (float)c->lr_end;
        double remaining = 1.0 - (double)(step - w) / (double)(total - w);
        return (float)((c->lr - c->lr_end) * pow(remaining, power) + c->lr_end);
    }
    case SCHED_INVERSE_SQRT: { /* 1/sqrt((step + timescale − w)/timescale) */
        double ts = c->timescale > 0 ? c->timescale : w > 0 ? w : 10000;
        return (float)(c->lr / sqrt((step + ts - w) / ts));
    }
    }
    return c->lr;
}

/* ---------------------------------------------------------------- AdamW / MoFO */

/* How many entries MoFO moves in a selection unit of n entries: ceil(alpha·n) (at least 1), or the
 * reference's int(n·alpha) with alpha a double (dam/optimizer.py:80), which may be 0. */
int64_t optim_mofo_keep(const DamConfig *c, size_t n) {
    double k = c->mofo_alpha * (double)n;
    if (c->mofo_k == MOFO_K_FLOOR) return (int64_t)floor(k);
    int64_t keep = (int64_t)ceil(k);
    return keep < 1 ? 1 : keep > (int64_t)n ? (int64_t)n : keep;
}

/* One selection unit (a tensor's whole block or one source's vector) through the backend's adamw.
 * The backend selects the ceil(alpha'·n) largest |m|; keep k >= 1 is asked for as
 * alpha' = (k − 1/2)/n, whose ceil is exactly k for any n below 2^23 (the float's rounding error of
 * alpha'·n stays far under 1/2). k = 0: the moments are updated and nothing moves (the reference
 * raises IndexError there). Decay "all": every entry is decayed first, c·(1 − lr·wd), as the
 * reference does before its masked update (dam/optimizer.py:39). */
/* merge.coef_dtype bfloat16: the scalars of torch's ops (backend.h AdamBf16) formed as Python forms
 * them, in double from the config's decimal values, then cast as each op casts its scalar. lr_t is
 * the scheduled rate as a float's shortest decimal: under "constant" (the reference's) the config's
 * lr exactly. */
static AdamBf16 bf16_scalars(const DamConfig *c, float lr_t, int t) {
    int mofo = c->optimizer == OPT_MOFO;
    double lr = config_decimal(lr_t), b1 = config_decimal(c->beta1), b2 = config_decimal(c->beta2);
    double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    return (AdamBf16){.mode = mofo ? ADAM_BF16_MOFO : ADAM_BF16_ADAMW,
                      .decay = (float)(1.0 - lr * config_decimal(c->weight_decay)),
                      .b1 = (float)b1,
                      .w1 = mofo ? adam_bf16((float)(1.0 - b1)) : (float)(1.0 - b1),
                      .b2 = (float)b2,
                      .w2 = (float)(1.0 - b2),
                      .sqrt_bc2 = (float)(mofo ? sqrt(bc2) : pow(bc2, 0.5)), /* math.sqrt; AdamW's ** 0.5 */
                      .eps = (float)config_decimal(c->adam_eps),
                      .step = mofo ? adam_bf16((float)(-lr / bc1)) : (float)(-lr / bc1)};
}

static void mofo_unit(DamModel *m, const DamConfig *c, DevBuf cc, DevBuf g, DevBuf am, DevBuf av, size_t n,
                      const AdamParams *base) {
    AdamParams p = *base;
    int64_t k = optim_mofo_keep(c, n);
    if (c->mofo_decay == MOFO_DECAY_ALL) {
        if (p.weight_decay > 0) /* bf16: p.mul_(1 − lr·wd), rounded where adamw reads c */
            m->be->scale(m->ctx, cc, p.bf16.mode ? p.bf16.decay : 1.0f - p.lr * p.weight_decay, n);
        p.weight_decay = 0, p.bf16.decay = 1;
    }
    if (k <= 0) {
        p.mofo_alpha = 0, p.mofo_threshold = INFINITY;
    } else if (c->mofo_k == MOFO_K_FLOOR) {
        p.mofo_alpha = (float)(((double)k - 0.5) / (double)n);
    }
    m->be->adamw(m->ctx, cc, g, am, av, n, &p);
}

void optim_step(DamModel *m, const DamConfig *c, float lr, int t) {
    for (int k = 0; k < m->n_tensors; k++) {
        DamTensor *x = &m->tensors[k];
        if (!x->trainable) continue;
        /* MoFO: the backend takes the |m| threshold (the top mofo_alpha of this tensor) over the
         * moments after this step's update, then moves only those entries */
        AdamParams p = {.lr = lr,
                        .beta1 = c->beta1,
                        .beta2 = c->beta2,
                        .eps = c->adam_eps,
                        .weight_decay = c->weight_decay,
                        .t = t,
                        .mofo_threshold = -1.0f,
                        .mofo_alpha = c->optimizer == OPT_MOFO ? (float)c->mofo_alpha : 0.0f};
        if (c->coef_dtype == DAM_BF16) p.bf16 = bf16_scalars(c, lr, t);
        size_t n = (size_t)m->n_coef_rows * x->dim;
        if (c->optimizer != OPT_MOFO || (c->mofo_scope == MOFO_SCOPE_TENSOR && c->mofo_k == MOFO_K_CEIL &&
                                         c->mofo_decay == MOFO_DECAY_SELECTED)) {
            m->be->adamw(m->ctx, x->c, x->grad, x->adam_m, x->adam_v, n, &p);
            continue;
        }
        int units = c->mofo_scope == MOFO_SCOPE_SOURCE ? m->n_coef_rows : 1;
        size_t len = n / (size_t)units;
        for (int u = 0; u < units; u++) {
            size_t off = (size_t)u * len;
            mofo_unit(m, c, devbuf_slice(x->c, off, len), devbuf_slice(x->grad, off, len),
                      devbuf_slice(x->adam_m, off, len), devbuf_slice(x->adam_v, off, len), len, &p);
        }
    }
    dam_model_refresh(m);
}
