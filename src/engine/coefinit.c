/* coefinit.c — see coefinit.h. */
#include "coefinit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void coef_init_random_tensor(DamModel *m, uint64_t seed) {
    float *cc = dam_model_coef_host(m, DAM_COEF_C);
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        dam_rng rng;
        dam_rng_seed(&rng, dam_hash64(x->name, strlen(x->name), seed));
        double e[DAM_MAX_SOURCES], s = 0;
        for (int i = 0; i < m->n_coef_rows; i++) s += (e[i] = exp(dam_rng_uniform(&rng)));
        for (int i = 0; i < m->n_coef_rows; i++)
            for (int j = 0; j < x->dim; j++) cc[x->coef_at + (size_t)i * x->dim + j] = (float)(e[i] / s);
    }
    dam_model_coef_upload(m, DAM_COEF_C, cc);
    free(cc);
}
