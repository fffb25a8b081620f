/*
 * ref.h -- the reference kernels: plain loops, double accumulation, every
 * feature and dtype.  Called by the dispatcher after validation, so every
 * rule of natten.h holds and outputs alias nothing.  They return SUCCESS, or
 * OUT_OF_MEMORY (with a message, before writing anything).
 */
#ifndef NATTEN_REF_REF_H
#define NATTEN_REF_REF_H

#include "natten.h"

natten_status natten_ref_na_forward(const natten_problem *p, const natten_tensor *q,
                                    const natten_tensor *k, const natten_tensor *v,
                                    const natten_tensor *rpb, const natten_tensor *extra_k,
                                    const natten_tensor *extra_v, natten_tensor *out,
                                    natten_tensor *lse);

natten_status natten_ref_na_backward(
    const natten_problem *p, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
    const natten_tensor *rpb, const natten_tensor *extra_k, const natten_tensor *extra_v,
    const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout, natten_tensor *dq,
    natten_tensor *dk, natten_tensor *dv, natten_tensor *drpb, natten_tensor *dextra_k,
    natten_tensor *dextra_v);

natten_status natten_ref_qk_forward(const natten_problem *p, const natten_tensor *q,
                                    const natten_tensor *k, const natten_tensor *rpb,
                                    natten_tensor *logits);
natten_status natten_ref_qk_backward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *dlogits,
                                     natten_tensor *dq, natten_tensor *dk, natten_tensor *drpb);
natten_status natten_ref_av_forward(const natten_problem *p, const natten_tensor *attn,
                                    const natten_tensor *v, natten_tensor *out);
natten_status natten_ref_av_backward(const natten_problem *p, const natten_tensor *attn,
                                     const natten_tensor *v, const natten_tensor *dout,
                                     natten_tensor *dattn, natten_tensor *dv);

#endif /* NATTEN_REF_REF_H */
