/* coefinit.h — merge.init "random_tensor": the public reference's random initialisation
 * (dam/modeling/dam.py:34-35, `softmax(torch.rand(num_models))`): one draw u ~ U[0,1)^N per tensor,
 * c_i[:] = softmax(u)_i on every column of that tensor. The reference's draw is unseeded; here it
 * comes from train.seed and the tensor's name, so that every layout (tp, pp) gets the same values. */
#ifndef DAM_COEFINIT_H
#define DAM_COEFINIT_H

#include <stdint.h>

#include "model.h"

/* Every tensor's coefficients as above (f(c) is not refreshed). */
void coef_init_random_tensor(DamModel *m, uint64_t seed);

#endif
