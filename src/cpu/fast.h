/*
 * fast.h -- entry points of the fast CPU kernels, called by the dispatcher in
 * src/core after the problem and tensors have been validated (so kernels may
 * assume every rule in natten.h holds and outputs alias nothing).
 *
 * Each returns NATTEN_STATUS_SUCCESS, or NATTEN_STATUS_UNSUPPORTED *without
 * touching any output and without setting an error message* when it declines
 * a problem; the dispatcher then runs the reference kernel (impl AUTO) or
 * reports the refusal (impl FAST).  Other statuses are real errors (set the
 * message with natten_set_error from src/core/status.h).
 */
#ifndef NATTEN_CPU_FAST_H
#define NATTEN_CPU_FAST_H

#include "natten.h"

natten_status natten_fast_na_forward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *v,
                                     const natten_tensor *rpb, const natten_tensor *extra_k,
                                     const natten_tensor *extra_v, natten_tensor *out,
                                     natten_tensor *lse);

natten_status natten_fast_na_backward(
    const natten_problem *p, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
    const natten_tensor *rpb, const natten_tensor *extra_k, const natten_tensor *extra_v,
    const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout, natten_tensor *dq,
    natten_tensor *dk, natten_tensor *dv, natten_tensor *drpb, natten_tensor *dextra_k,
    natten_tensor *dextra_v);

natten_status natten_fast_qk_forward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *rpb,
                                     natten_tensor *logits);
natten_status natten_fast_qk_backward(const natten_problem *p, const natten_tensor *q,
                                      const natten_tensor *k, const natten_tensor *dlogits,
                                      natten_tensor *dq, natten_tensor *dk, natten_tensor *drpb);
natten_status natten_fast_av_forward(const natten_problem *p, const natten_tensor *attn,
                                     const natten_tensor *v, natten_tensor *out);
natten_status natten_fast_av_backward(const natten_problem *p, const natten_tensor *attn,
                                      const natten_tensor *v, const natten_tensor *dout,
                                      natten_tensor *dattn, natten_tensor *dv);

#endif /* NATTEN_CPU_FAST_H */
