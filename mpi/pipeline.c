/* pipeline.c — see pipeline.h. */
#include "pipeline.h"

#include <stdlib.h>

#include "devcomm.h"

typedef struct {
    DevComm *pp; /* NULL: one stage */
    int rank, first, last, n_slots;
    const PipelineStage *st;
    DevRequest *fwd_req, *bwd_req; /* per slot: its pending send out of the forward / backward buffer */
    char *skip;                    /* per slot: its micro-batch had nothing to do */
} Pipe;

static void forward(Pipe *p, int mb) {
    int slot = mb % p->n_slots, n_pass = p->st->n_passes(p->st->ctx, mb);
    p->skip[slot] = n_pass == 0;
    for (int pass = 0; pass < n_pass; pass++) {
        devcomm_wait(p->pp,
                     &p->fwd_req[slot]); /* the previous pass's send reads the buffer this one writes */
        if (!p->first) {                 /* (the buffer first: its length is what is received) */
            DevBuf in = p->st->pass_input(p->st->ctx, mb, pass);
            devcomm_recv(p->pp, in, in.n, p->rank - 1);
        }
        DevBuf out = p->st->pass_run(p->st->ctx, mb, pass);
        if (!p->last) devcomm_isend(p->pp, out, out.n, p->rank + 1, &p->fwd_req[slot]);
    }
}

static void backward(Pipe *p, int mb) {
    int slot = mb % p->n_slots;
    if (p->skip[slot]) return;
    devcomm_wait(p->pp, &p->bwd_req[slot]); /* a forward never waits on a gradient still on its way back */
    if (!p->last) {
        DevBuf in = p->st->grad_input(p->st->ctx, mb);
        devcomm_recv(p->pp, in, in.n, p->rank + 1);
    }
    DevBuf out = p->st->backward_run(p->st->ctx, mb);
    if (!p->first) devcomm_isend(p->pp, out, out.n, p->rank - 1, &p->bwd_req[slot]);
}

int pipeline_slots(int M, int pp, int stage) {
    int n = pp - stage < M ? pp - stage : M;
    return n > 1 ? n : 1;
}

void pipeline_run(DevComm *pp, int M, int n_slots, int with_backward, const PipelineStage *st) {
    int multi = pp && pp->g && pp->g->size > 1;
    int size = multi ? pp->g->size : 1, stage = multi ? pp->g->rank : 0,
        need = pipeline_slots(M, size, stage);
    if (n_slots < need) dam_fail("pipeline: 1F1B needs %d run states, got %d", need, n_slots);
    Pipe p = {multi ? pp : NULL, stage, stage == 0, stage == size - 1, n_slots, st, NULL, NULL, NULL};
    p.fwd_req = dam_calloc((size_t)n_slots, sizeof *p.fwd_req, "pipeline requests");
    p.bwd_req = dam_calloc((size_t)n_slots, sizeof *p.bwd_req, "pipeline requests");
    p.skip = dam_calloc((size_t)n_slots, 1, "pipeline slots");
    int warmup = with_backward ? (size - stage - 1 < M ? size - stage - 1 : M) : M, f = 0, b = 0;
    for (; f < warmup; f++) forward(&p, f);
    for (; f < M; f++, b++) { /* steady state: one forward, one backward */
        forward(&p, f);
        backward(&p, b);
    }
    for (; with_backward && b < M; b++) backward(&p, b);
    for (int i = 0; i < n_slots; i++) devcomm_wait(p.pp, &p.fwd_req[i]), devcomm_wait(p.pp, &p.bwd_req[i]);
    free(p.fwd_req), free(p.bwd_req), free(p.skip);
}

void pipeline_share_from_last(const CommGroup *pp, void *buf, size_t bytes) {
    if (pp && pp->size > 1) comm_bcast(pp, buf, bytes, pp->size - 1);
}
