/* merge_methods.h — the classic weight-space merges, as mergekit defines them, on one tensor at a
 * time (arrays in, array out; no I/O), for `dam_dist merge` (merge_cmd.c) and its unit tests.
 *
 *   linear           out = Σ w_i·x_i, divided by Σ w_i when normalize (default on)
 *   task_arithmetic  out = base + λ·Σ w_i·δ_i, δ_i = x_i - base (normalize default off: ÷ Σ w_i)
 *   ties             δ_i trimmed to the top `density` fraction by magnitude, then sign election:
 *                    the majority sign of Σ_i w_i·δ_i (≥ 0 counts as +), and only the entries
 *                    w_i·δ_i of that sign are summed (normalize default on: ÷ Σ of their w_i);
 *                    out = base + λ·that
 *   dare_ties        δ_i entries kept with probability `density` and scaled by 1/density (DARE),
 *                    then TIES's sign election (normalize default off)
 *   slerp            spherical interpolation of the whole tensor from the first endpoint (t = 0,
 *                    the base) to the second (t = 1); near-parallel tensors (|cos| > 0.9995) are
 *                    interpolated linearly
 * The accumulations are in double; inputs and output are float. */
#ifndef DAM_MERGE_METHODS_H
#define DAM_MERGE_METHODS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef enum { MERGE_LINEAR, MERGE_TASK_ARITHMETIC, MERGE_TIES, MERGE_DARE_TIES, MERGE_SLERP } MergeMethod;

/* "linear", "task_arithmetic", "ties", "dare_ties", "slerp": 0 on success, -1 when unknown. */
int merge_method_parse(const char *name, MergeMethod *out);
const char *merge_method_name(MergeMethod m);
/* Does the method take task vectors against a base (task_arithmetic, ties, dare_ties)? */
int merge_method_uses_base(MergeMethod m);
/* mergekit's default of `normalize`: on for linear and ties, off for task_arithmetic, dare_ties. */
int merge_default_normalize(MergeMethod m);

/* When |cos| of the two tensors exceeds this, slerp interpolates linearly (mergekit's value). */
#define MERGE_SLERP_DOT_THRESHOLD 0.9995

typedef struct {
    MergeMethod method;
    int n;                /* models merged (the base not counted) */
    const float *weights; /* n weights */
    float density;        /* ties, dare_ties: fraction of each task vector kept, in (0, 1] */
    float lambda;         /* task vector scale */
    float t;              /* slerp: 0 the first endpoint, 1 the second */
    int normalize;        /* divide by the (agreeing) weights' sum */
    uint64_t seed;        /* dare_ties: with the tensor's name, seeds each model's drop mask */
} MergeParams;

/* out[j] = Σ_i w[i]·x[i][j], over Σ_i w[i] when normalize (the caller refuses a zero sum). */
void merge_linear(const float *const *x, const float *w, int n, size_t len, int normalize, float *out);

/* TIES trimming, in place: keeps the k = max(1, floor(density·len)) entries of largest magnitude and
 * zeroes the rest. Entries equal in magnitude to the k-th largest are kept in index order until k
 * are kept (so exactly k survive; mergekit leaves that order to torch's sort). density >= 1 keeps
 * everything. Two counting passes over the float bits (no sort, no copy). */
void merge_trim_magnitude(float *delta, size_t len, float density);

/* DARE, in place: each entry kept with probability density (uniform draw < density), kept ones
 * divided by density, the others set to 0. density >= 1 keeps everything unchanged. */
void merge_dare_drop(float *delta, size_t len, float density, dam_rng *rng);

/* out[j] = base[j] + λ·Σ w_i·delta[i][j] (over Σ w_i when normalize; a sum under 1e-8 counts as 1).
 * With sign_election, only the terms w_i·δ_i[j] whose sign is the sign of their sum (a sum >= 0
 * counts as +; a zero term has no sign and is left out) are summed, and normalize divides by the
 * sum of those terms' w_i (0 counts as 1). */
void merge_task_vectors(const float *base, const float *const *delta, const float *w, int n, size_t len,
                        int sign_election, int normalize, float lambda, float *out);

/* out = slerp(t, a, b) over the whole of the two len-long vectors, mergekit's formula: the angle
 * from the cosine of the vectors (each normalized when its norm exceeds 1e-8), then
 * out = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b; linear (1-t)·a + t·b when |cos| > 0.9995. */
void merge_slerp(const float *a, const float *b, size_t len, float t, float *out);

/* One tensor of the merge: `models` are p->n arrays of len floats (overwritten: they become the
 * task vectors), `base` len floats (NULL for linear; for slerp the t = 0 endpoint, with models[0]
 * the t = 1 one), `name` the tensor's name (seeds dare_ties' masks, so that the result does not
 * depend on which rank merges it). */
void merge_tensor(const MergeParams *p, const char *name, const float *base, float *const *models, size_t len,
                  float *out);

#endif
