/* layout.h — building the process grid of a run (main job and precompute alike). */
#ifndef DAM_LAYOUT_H
#define DAM_LAYOUT_H

#include "comm.h"
#include "config.h"

/* dp x pp x tp from the config's parallel section (pp = 0: what the world size leaves), checked
 * against the world size and the first model before anything is loaded: one error line from
 * rank 0, every rank ends. */
void layout_init(ProcessGrid *g, const DamConfig *c);

#endif
