/* backend_impl.h — the backend implementer's side of backend.h: each backend's own table, which
 * trusts its arguments. Only src/engine/backend_api.c (the checked front tables that backend_cpu(),
 * backend_guard(), backend_cuda() and backend_by_name hand out) and the backends themselves use
 * these; everything else goes through the front, so that a bad argument fails there, once, with
 * the same words on every backend.
 *
 * What the front guarantees before an op of these tables runs (an implementation need not check):
 *  - every DevBuf argument that the op reads or writes holds the elements the op's sizes need, is
 *    of a dtype the contract allows there, is on the backend's device and is not null when it
 *    holds anything; an optional DevBuf (rmsnorm_bwd's dw, loss_rows' zt) is null or checked so;
 *  - host index lists (ids, rows) are in range of the buffers or sources they index, host pointers
 *    that carry data are not NULL, shapes (AttnShape, K of the top-K, MoFO's alpha) are valid,
 *    conversions are of the same dtype or F32 <-> BF16 (and a conversion's ranges do not overlap);
 *  - sources span rows x cols at their row stride and are F32, BF16 or F16.
 * Left to a backend: its own limits (CUDA: sources per launch, grid sizes, shared memory).
 *
 * Optional entries: set_gemm_inputs and weight_dtype may be NULL; the front then ignores the GEMM
 * input precision asked for (a backend with one precision) and reports act_dtype as weight_dtype. */
#ifndef DAM_BACKEND_IMPL_H
#define DAM_BACKEND_IMPL_H

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

const Backend *backend_cpu_impl(void);
const Backend *backend_guard_impl(void); /* its ops call backend_cpu_impl()'s */
#ifdef DAM_WITH_CUDA
const Backend *backend_cuda_impl(void);
#endif

#ifdef __cplusplus
}
#endif

#endif
