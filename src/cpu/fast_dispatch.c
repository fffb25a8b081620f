/*
 * fast_dispatch.c -- placeholder: every fast entry point declines, so the
 * dispatcher runs the reference kernels.  Replaced by the fast CPU kernels.
 */
#include "cpu/fast.h"

natten_status natten_fast_na_forward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *v,
                                     const natten_tensor *rpb, const natten_tensor *extra_k,
                                     const natten_tensor *extra_v, natten_tensor *out,
                                     natten_tensor *lse) {
    return NATTEN_STATUS_UNSUPPORTED;
}

natten_status natten_fast_na_backward(
    const natten_problem *p, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
    const natten_tensor *rpb, const natten_tensor *extra_k, const natten_tensor *extra_v,
    const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout, natten_tensor *dq,
    natten_tensor *dk, natten_tensor *dv, natten_tensor *drpb, natten_tensor *dextra_k,
    natten_tensor *dextra_v) {
    return NATTEN_STATUS_UNSUPPORTED;
}

natten_status natten_fast_qk_forward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *rpb,
                                     natten_tensor *logits) {
    return NATTEN_STATUS_UNSUPPORTED;
}

natten_status natten_fast_qk_backward(const natten_problem *p, const natten_tensor *q,
                                      const natten_tensor *k, const natten_tensor *dlogits,
                                      natten_tensor *dq, natten_tensor *dk, natten_tensor *drpb) {
    return NATTEN_STATUS_UNSUPPORTED;
}

natten_status natten_fast_av_forward(const natten_problem *p, const natten_tensor *attn,
                                     const natten_tensor *v, natten_tensor *out) {
    return NATTEN_STATUS_UNSUPPORTED;
}

natten_status natten_fast_av_backward(const natten_problem *p, const natten_tensor *attn,
                                      const natten_tensor *v, const natten_tensor *dout,
                                      natten_tensor *dattn, natten_tensor *dv) {
    return NATTEN_STATUS_UNSUPPORTED;
}
