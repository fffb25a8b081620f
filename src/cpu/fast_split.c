/*
 * fast_split.c -- split QK / AV ops and their backward.  Not implemented in
 * the fast path yet: they decline (UNSUPPORTED, nothing written) and the
 * dispatcher runs the reference kernels.
 */
#include "cpu/fast_internal.h"

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
