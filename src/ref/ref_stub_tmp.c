/* Temporary: reference kernels not written yet. */
#include "core/status.h"
#include "ref/ref.h"

#define NOT_YET(fn) natten_set_error(NATTEN_STATUS_UNSUPPORTED, "%s: reference kernel not implemented yet", fn)

natten_status natten_ref_na_forward(const natten_problem *p, const natten_tensor *q,
                                    const natten_tensor *k, const natten_tensor *v,
                                    const natten_tensor *rpb, const natten_tensor *extra_k,
                                    const natten_tensor *extra_v, natten_tensor *out,
                                    natten_tensor *lse) { return NOT_YET("natten_na_forward"); }
natten_status natten_ref_na_backward(
    const natten_problem *p, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
    const natten_tensor *rpb, const natten_tensor *extra_k, const natten_tensor *extra_v,
    const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout, natten_tensor *dq,
    natten_tensor *dk, natten_tensor *dv, natten_tensor *drpb, natten_tensor *dextra_k,
    natten_tensor *dextra_v) { return NOT_YET("natten_na_backward"); }
natten_status natten_ref_qk_forward(const natten_problem *p, const natten_tensor *q,
                                    const natten_tensor *k, const natten_tensor *rpb,
                                    natten_tensor *logits) { return NOT_YET("natten_qk_forward"); }
natten_status natten_ref_qk_backward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *dlogits,
                                     natten_tensor *dq, natten_tensor *dk, natten_tensor *drpb) { return NOT_YET("natten_qk_backward"); }
natten_status natten_ref_av_forward(const natten_problem *p, const natten_tensor *attn,
                                    const natten_tensor *v, natten_tensor *out) { return NOT_YET("natten_av_forward"); }
natten_status natten_ref_av_backward(const natten_problem *p, const natten_tensor *attn,
                                     const natten_tensor *v, const natten_tensor *dout,
                                     natten_tensor *dattn, natten_tensor *dv) { return NOT_YET("natten_av_backward"); }
