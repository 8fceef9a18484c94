/* layout.c — the dp x pp x tp layout of a run, from its config, its first model and the rank count. */
#include "layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Does tp divide every dimension tensor parallel splits? */
static int tp_divides(const ModelConfig *mc, int tp) {
    return mc->num_attention_heads % tp == 0 && mc->num_key_value_heads % tp == 0 &&
           mc->intermediate_size % tp == 0 && mc->vocab_size % tp == 0;
}

/* The best layout of exactly `world` ranks that keeps the config's fixed values, the model's limits
 * (pp <= layers, tp dividing) and, when dp is chosen, dp dividing micro_batches; `strict` also holds
 * a fixed dp to micro_batches. Most stages first, then the widest tp. 0 when none. */
static int best_layout(const DamConfig *c, const ModelConfig *mc, int world, int strict, DamLayout *out) {
    int found = 0;
    for (int pp = mc->num_hidden_layers < world ? mc->num_hidden_layers : world; pp >= 1 && !found; pp--) {
        if (world % pp || (c->pp > 0 && pp != c->pp)) continue;
        for (int tp = world / pp; tp >= 1 && !found; tp--) {
            int dp = world / pp / tp;
            if ((world / pp) % tp || (c->tp > 0 && tp != c->tp) || (c->dp > 0 && dp != c->dp)) continue;
            if (!tp_divides(mc, tp) ||
                (tp > 1 && c->optimizer == OPT_MOFO && c->mofo_scope == MOFO_SCOPE_SOURCE))
                continue;
            if ((c->dp == 0 || strict) && c->micro_batches % dp) continue;
            *out = (DamLayout){dp, pp, tp, c->dp == 0 || c->pp == 0 || c->tp == 0};
            found = 1;
        }
    }
    return found;
}

/* The rank counts from 1 to `upto` that some layout can use, as "1-4, 6, 8" (the first ten runs,
 * then "..., LAST"); returns how many. */
static int working_counts(const DamConfig *c, const ModelConfig *mc, int upto, char *buf, size_t cap) {
    int n = 0, runs = 0, run0 = 0, prev = 0, last = 0;
    size_t len = 0;
    buf[0] = 0;
    for (int w = 1; w <= upto + 1; w++) {
        DamLayout L;
        if (w <= upto && best_layout(c, mc, w, 0, &L)) {
            n++, last = w;
            if (!run0) run0 = w;
            prev = w;
            continue;
        }
        if (!run0) continue;
        if (++runs <= 10 && len < cap)
            len += (size_t)snprintf(buf + len, cap - len,
                                    prev == run0       ? "%s%d"
                                    : prev == run0 + 1 ? "%s%d, %d"
                                                       : "%s%d-%d",
                                    len ? ", " : "", run0, prev);
        run0 = 0;
    }
    if (runs > 10 && len < cap) snprintf(buf + len, cap - len, ", ..., %d", last);
    return n;
}

char *layout_resolve(const DamConfig *c, const ModelConfig *mc, const char *model_path, int world,
                     DamLayout *out) {
    const char *f = c->file;
    if (c->dp < 0 || c->pp < 0 || c->tp < 0)
        return dam_asprintf("%s: parallel.dp, parallel.pp and parallel.tp must be >= 1, or 0 to choose", f);
    if (best_layout(c, mc, world, 1, out)) return NULL;
    /* the rank count first: which counts would some layout of these fixed values use? (a fixed dp is
     * held to micro_batches below, after the count) */
    int upto = 8 * mc->num_hidden_layers;
    if (upto < 2 * world) upto = 2 * world;
    if (upto > 4096) upto = world > 4096 ? world : 4096;
    char counts[512];
    DamLayout L;
    if (!best_layout(c, mc, world, 0, &L) && working_counts(c, mc, upto, counts, sizeof counts) > 0) {
        char fixed[96] = "";
        size_t n = 0;
        const char *names[] = {"dp", "pp", "tp"};
        int vals[] = {c->dp, c->pp, c->tp};
        for (int i = 0; i < 3; i++)
            if (vals[i] > 0)
                n += (size_t)snprintf(fixed + n, sizeof fixed - n, "%sparallel.%s=%d", n ? ", " : "",
                                      names[i], vals[i]);
        return dam_asprintf(
            "%s: %d ranks: no dp x pp x tp layout%s%s runs %s (%d layers, %d heads, %d KV heads, "
            "micro_batches %d); rank counts that work: %s",
            f, world, n ? " with " : "", fixed, model_path, mc->num_hidden_layers, mc->num_attention_heads,
            mc->num_key_value_heads, c->micro_batches, counts);
    }
    /* no rank count would do, or only the fixed dp's batch is wrong: the fixed values themselves */
    if (c->tp > 0) {
        const char *names[] = {"num_attention_heads", "num_key_value_heads", "intermediate_size",
                               "vocab_size"};
        int vals[] = {mc->num_attention_heads, mc->num_key_value_heads, mc->intermediate_size,
                      mc->vocab_size};
        for (int i = 0; i < 4; i++)
            if (vals[i] % c->tp)
                return dam_asprintf("%s: parallel.tp=%d does not divide %s = %d of %s", f, c->tp, names[i],
                                    vals[i], model_path);
        if (c->tp > 1 && c->optimizer == OPT_MOFO && c->mofo_scope == MOFO_SCOPE_SOURCE)
            return dam_asprintf("%s: train.mofo_scope \"source\" needs parallel.tp 1", f);
    }
    if (c->pp > mc->num_hidden_layers)
        return dam_asprintf("%s: parallel.pp=%d exceeds the %d layers of %s", f, c->pp, mc->num_hidden_layers,
                            model_path);
    if (c->dp > 0 && c->micro_batches % c->dp)
        return dam_asprintf("%s: train.micro_batches=%d is not divisible by parallel.dp=%d", f,
                            c->micro_batches, c->dp);
    return dam_asprintf("%s: no dp x pp x tp layout of %d ranks runs %s", f, world, model_path);
}

const char *layout_describe(const DamConfig *c, const DamLayout *L, char *buf, size_t cap) {
    int n =
        snprintf(buf, cap, "dp=%d x pp=%d x tp=%d = %d ranks", L->dp, L->pp, L->tp, L->dp * L->pp * L->tp);
    if (L->automatic && n > 0 && (size_t)n < cap) {
        char chosen[64] = "";
        size_t k = 0;
        const char *names[] = {"dp", "pp", "tp"};
        int vals[] = {c->dp, c->pp, c->tp};
        for (int i = 0; i < 3; i++)
            if (vals[i] == 0)
                k += (size_t)snprintf(chosen + k, sizeof chosen - k, "%s%s", k ? ", " : "", names[i]);
        snprintf(buf + n, cap - (size_t)n,
                 " (%s chosen: the most pipeline stages up to the layers, then tensor parallel, then data "
                 "parallel)",
                 chosen);
    }
    return buf;
}

void layout_init(ProcessGrid *g, const DamConfig *c) {
    int world = comm_world_size();
    ModelConfig mc;
    char *p = dam_path_join(c->models[0].path, "config.json");
    hfconfig_load(&mc, p);
    free(p);
    DamLayout L;
    char *err = layout_resolve(c, &mc, c->models[0].path, world, &L);
    comm_fail_on_root(err != NULL, "%s", err ? err : "");
    if (L.automatic && world > 1 && comm_world_rank() == 0) {
        char d[256];
        printf("dam_dist: layout %s\n", layout_describe(c, &L, d, sizeof d));
        fflush(stdout);
    }
    grid_init(g, L.dp, L.pp, L.tp);
}
