/* pair_weights.h — the pair weights of the weighted overlap loss (loss.weighted_overlap; the public
 * reference's --weighted_overlap, dam/merge.py:41-71 and dam/modeling/dam.py:104-114).
 *
 * For every linear weight W [out, in] (q, k, v, o, gate, up, down, lm_head) and every pair (a, b)
 * of coefficient rows in combinations order ((0,1), (0,2), ..., (1,2), ...), per input column j:
 *   τ_i = W_i − W_base (the task vector of row i; a base row has τ = 0),
 *   cos = clamp(Σ_o τ_a[o,j] τ_b[o,j] / ((‖τ_a[:,j]‖ + 1e-8)(‖τ_b[:,j]‖ + 1e-8)), −1, 1),
 *   w_ab[j] = sin²(2·acos(cos))   (1 at 45° and 135°, 0 for parallel, orthogonal or opposite columns).
 * The loss is λ · Σ_tensors (1/P) Σ_pairs Σ_j min(|c_a[j]|, |c_b[j]|)·w_ab[j] on the raw coefficients,
 * P = C(n_coef_rows, 2); at a tie |c_a| = |c_b| the whole gradient goes to the lower row a, as torch.min
 * over the stacked pair does in the reference. */
#ifndef DAM_PAIR_WEIGHTS_H
#define DAM_PAIR_WEIGHTS_H

#include "model.h"

/* w [P, ncols] (pair-major) from the task vectors of n rows, each given as a function of the stored
 * rows: tv(row, o, out) writes τ_row[o, col0 .. col0 + ncols) for stored row o < n_out. */
void wov_pair_weights(int n, size_t n_out, size_t ncols,
                      void (*tv)(void *ctx, int row, size_t o, double *out), void *ctx, double *w);

/* Every linear tensor's weights for this rank's coefficient columns into x->wov (F32 [P, dim] on
 * the device), with the task vectors against base_dir's tensors (the base row itself when
 * include_base: m's last row). Reads each source tensor and the base once, whole (every tp rank
 * reads all stored rows of its columns), then releases their pages. */
void wov_setup(DamModel *m, const char *base_dir);

#endif
