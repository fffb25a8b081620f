/*
 * api.c -- the public operations: validate (validate.c), then run the fast
 * CPU kernels unless impl is REFERENCE.  A fast kernel that declines
 * (UNSUPPORTED, nothing written) hands the problem to the reference kernels
 * under AUTO and is reported as an error under FAST.
 */
#include "core/status.h"
#include "core/validate.h"
#include "cpu/fast.h"
#include "ref/ref.h"

static natten_status declined(const char *fn) {
    return natten_set_error(NATTEN_STATUS_UNSUPPORTED,
                            "%s: impl=NATTEN_IMPL_FAST, but the fast CPU kernels do not support "
                            "this problem (use NATTEN_IMPL_AUTO to fall back to the reference)",
                            fn);
}

/* Runs FAST_CALL unless impl is REFERENCE; falls to REF_CALL as described above. */
#define DISPATCH(fn, p, FAST_CALL, REF_CALL)                                                       \
    do {                                                                                           \
        if ((p)->impl != NATTEN_IMPL_REFERENCE) {                                                  \
            natten_status st_ = (FAST_CALL);                                                       \
            if (st_ != NATTEN_STATUS_UNSUPPORTED) return st_;                                      \
            if ((p)->impl == NATTEN_IMPL_FAST) return declined(fn);                                \
        }                                                                                          \
        return (REF_CALL);                                                                         \
    } while (0)

natten_status natten_na_forward(const natten_problem *p, const natten_tensor *q,
                                const natten_tensor *k, const natten_tensor *v,
                                const natten_tensor *rpb, const natten_tensor *extra_k,
                                const natten_tensor *extra_v, natten_tensor *out,
                                natten_tensor *lse) {
    static const char fn[] = "natten_na_forward";
    natten_status st = natten_check_na_forward(fn, p, q, k, v, rpb, extra_k, extra_v, out, lse);
    if (st != NATTEN_STATUS_SUCCESS) return st;
    DISPATCH(fn, p, natten_fast_na_forward(p, q, k, v, rpb, extra_k, extra_v, out, lse),
             natten_ref_na_forward(p, q, k, v, rpb, extra_k, extra_v, out, lse));
}

natten_status natten_na_backward(
    const natten_problem *p, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
    const natten_tensor *rpb, const natten_tensor *extra_k, const natten_tensor *extra_v,
    const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout, natten_tensor *dq,
    natten_tensor *dk, natten_tensor *dv, natten_tensor *drpb, natten_tensor *dextra_k,
    natten_tensor *dextra_v) {
    static const char fn[] = "natten_na_backward";
    natten_status st = natten_check_na_backward(fn, p, q, k, v, rpb, extra_k, extra_v, out, lse,
                                                dout, dq, dk, dv, drpb, dextra_k, dextra_v);
    if (st != NATTEN_STATUS_SUCCESS) return st;
    DISPATCH(fn, p,
             natten_fast_na_backward(p, q, k, v, rpb, extra_k, extra_v, out, lse, dout, dq, dk, dv,
                                     drpb, dextra_k, dextra_v),
             natten_ref_na_backward(p, q, k, v, rpb, extra_k, extra_v, out, lse, dout, dq, dk, dv,
                                    drpb, dextra_k, dextra_v));
}

natten_status natten_qk_forward(const natten_problem *p, const natten_tensor *q,
                                const natten_tensor *k, const natten_tensor *rpb,
                                natten_tensor *logits) {
    static const char fn[] = "natten_qk_forward";
    natten_status st = natten_check_qk_forward(fn, p, q, k, rpb, logits);
    if (st != NATTEN_STATUS_SUCCESS) return st;
    DISPATCH(fn, p, natten_fast_qk_forward(p, q, k, rpb, logits),
             natten_ref_qk_forward(p, q, k, rpb, logits));
}

natten_status natten_qk_backward(const natten_problem *p, const natten_tensor *q,
                                 const natten_tensor *k, const natten_tensor *dlogits,
                                 natten_tensor *dq, natten_tensor *dk, natten_tensor *drpb) {
    static const char fn[] = "natten_qk_backward";
    natten_status st = natten_check_qk_backward(fn, p, q, k, dlogits, dq, dk, drpb);
    if (st != NATTEN_STATUS_SUCCESS) return st;
    DISPATCH(fn, p, natten_fast_qk_backward(p, q, k, dlogits, dq, dk, drpb),
             natten_ref_qk_backward(p, q, k, dlogits, dq, dk, drpb));
}

natten_status natten_av_forward(const natten_problem *p, const natten_tensor *attn,
                                const natten_tensor *v, natten_tensor *out) {
    static const char fn[] = "natten_av_forward";
    natten_status st = natten_check_av_forward(fn, p, attn, v, out);
    if (st != NATTEN_STATUS_SUCCESS) return st;
    DISPATCH(fn, p, natten_fast_av_forward(p, attn, v, out), natten_ref_av_forward(p, attn, v, out));
}

natten_status natten_av_backward(const natten_problem *p, const natten_tensor *attn,
                                 const natten_tensor *v, const natten_tensor *dout,
                                 natten_tensor *dattn, natten_tensor *dv) {
    static const char fn[] = "natten_av_backward";
    natten_status st = natten_check_av_backward(fn, p, attn, v, dout, dattn, dv);
    if (st != NATTEN_STATUS_SUCCESS) return st;
    DISPATCH(fn, p, natten_fast_av_backward(p, attn, v, dout, dattn, dv),
             natten_ref_av_backward(p, attn, v, dout, dattn, dv));
}
