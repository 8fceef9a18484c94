/* layout.c — the dp x pp x tp layout of a run, from its config and its first model. */
#include "layout.h"

#include <stdlib.h>

#include "hfconfig.h"

/* dp x pp x tp from the config (pp = 0: what the world size leaves), checked against the world size
 * and the model before anything is loaded: one error line from rank 0, every rank ends. */
void layout_init(ProcessGrid *g, const DamConfig *c) {
    int world = comm_world_size(), dp = c->dp, tp = c->tp;
    comm_fail_on_root(dp < 1 || tp < 1, "%s: parallel.dp and parallel.tp must be >= 1", c->file);
    comm_fail_on_root(c->pp == 0 && world % (dp * tp) != 0, "%s: %d ranks are not divisible by dp=%d x tp=%d",
                      c->file, world, dp, tp);
    int pp = c->pp > 0 ? c->pp : world / (dp * tp);
    ModelConfig mc;
    char *p = dam_path_join(c->models[0].path, "config.json");
    hfconfig_load(&mc, p);
    free(p);
    const char *names[] = {"num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"};
    int vals[] = {mc.num_attention_heads, mc.num_key_value_heads, mc.intermediate_size, mc.vocab_size};
    for (int i = 0; i < 4; i++)
        comm_fail_on_root(vals[i] % tp != 0, "%s: parallel.tp=%d does not divide %s = %d of %s", c->file, tp,
                          names[i], vals[i], c->models[0].path);
    comm_fail_on_root(pp > mc.num_hidden_layers, "%s: parallel.pp=%d exceeds the %d layers of %s", c->file,
                      pp, mc.num_hidden_layers, c->models[0].path);
    comm_fail_on_root(c->micro_batches % dp != 0,
                      "%s: train.micro_batches=%d is not divisible by parallel.dp=%d", c->file,
                      c->micro_batches, dp);
    grid_init(g, dp, pp, tp);
}
