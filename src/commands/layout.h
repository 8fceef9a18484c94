/* layout.h — building the process grid of a run (main job, precompute, eval, evolve and plan alike). */
#ifndef DAM_LAYOUT_H
#define DAM_LAYOUT_H

#include "comm.h"
#include "config.h"
#include "hfconfig.h"

typedef struct {
    int dp, pp, tp;
    int automatic; /* some of parallel.dp/pp/tp were 0 (auto) and were chosen here */
} DamLayout;

/* dp x pp x tp for `world` ranks from the config's parallel section and the model (mc, read from
 * model_path), without MPI. A value > 0 is kept; 0 is chosen: of the layouts that fit the fixed
 * values, the one with the most pipeline stages (pp <= layers), then the widest tensor parallel
 * (tp dividing heads, KV heads, intermediate size and vocabulary; 1 under train.mofo_scope
 * "source"), then data parallel (dp dividing train.micro_batches). Errors, in this order: a rank
 * count that no layout of these fixed values can use, named with the rank counts that would work;
 * then the fixed values the model or the batch cannot take (tp not dividing, pp > layers,
 * micro_batches % dp). Returns NULL, or the one-line message (malloc'd). */
char *layout_resolve(const DamConfig *c, const ModelConfig *mc, const char *model_path, int world,
                     DamLayout *out);

/* "dp=D x pp=P x tp=T = N ranks" and, when chosen, how (into buf). */
const char *layout_describe(const DamConfig *c, const DamLayout *L, char *buf, size_t cap);

/* layout_resolve for the world of this MPI job, against the first model's config.json, before
 * anything is loaded: one error line from rank 0, every rank ends. A chosen layout is printed by rank
 * 0 when there is more than one rank. */
void layout_init(ProcessGrid *g, const DamConfig *c);

#endif
