/* pipeline.h — pipeline parallelism for any stage computation: the 1F1B schedule of a step's
 * micro-batches over the stages of a pp group and the transfers between neighbouring stages
 * (blocking receives, non-blocking sends, so that no stage waits on another's schedule). The model
 * supplies its stage as callbacks and never communicates point to point itself.
 *
 * A micro-batch's forward is a sequence of passes (the teachers', then the merged model's), each
 * received from the previous stage and sent to the next; its backward is one pass the other way.
 * Buffers the callbacks hand out belong to the micro-batch's slot (mb % n_slots) and must stay
 * valid until the next call for the same slot: the pipeline completes a slot's pending forward send
 * before a forward pass for that slot writes again, and its pending backward send before a backward
 * does (a forward never waits on a gradient still on its way back: that would deadlock 1F1B when
 * a stage holds only the pp - s slots it needs). */
#ifndef DAM_PIPELINE_H
#define DAM_PIPELINE_H

#include <stddef.h>

#include "backend.h"

/* (comm.h and devcomm.h define them: `plan` counts slots without the MPI headers) */
typedef struct CommGroup CommGroup;
typedef struct DevComm DevComm;

typedef struct {
    void *ctx;
    /* Forward passes of micro-batch mb (0: nothing to do, and no backward either). Called once per
     * forward, before its passes. */
    int (*n_passes)(void *ctx, int mb);
    /* Where pass `pass`'s activation from the previous stage goes (not called on the first stage);
     * the view's length is what is received. */
    DevBuf (*pass_input)(void *ctx, int mb, int pass);
    /* Run the pass; returns the activation for the next stage (ignored on the last). */
    DevBuf (*pass_run)(void *ctx, int mb, int pass);
    /* Where the next stage's gradient goes (not called on the last stage). */
    DevBuf (*grad_input)(void *ctx, int mb);
    /* Run the backward; returns the gradient for the previous stage (ignored on the first). */
    DevBuf (*backward_run)(void *ctx, int mb);
} PipelineStage;

/* M micro-batches through this rank's stage (pp NULL or its group of size 1: one stage, forward
 * then backward in turn). With backward, the 1F1B schedule: stage s runs min(pp-s-1, M) forwards,
 * then alternates one forward and one backward, then the remaining backwards; n_slots >= min(M, pp).
 * Transfers go through the device communicator of the pp group. */
void pipeline_run(DevComm *pp, int M, int n_slots, int backward, const PipelineStage *st);

/* Micro-batches in flight on stage `stage` of pp under 1F1B with M micro-batches, the run states it
 * needs: min(M, pp - stage) (the last stage runs each backward right after its forward). */
int pipeline_slots(int M, int pp, int stage);

/* bytes of buf from the last stage to every stage (results known only where the losses are). */
void pipeline_share_from_last(const CommGroup *pp, void *buf, size_t bytes);

#endif
