/*
 * validate.h -- every rule of natten.h, checked in one place (validate.c).
 * Each op check validates the descriptor, the presence of required tensors,
 * the op-specific rules, byte spans (int64 overflow) and aliasing of outputs.
 * On failure the thread-local message names fn, the argument, its value and
 * the rule; nothing is written to any tensor.
 */
#ifndef NATTEN_CORE_VALIDATE_H
#define NATTEN_CORE_VALIDATE_H

#include "natten.h"

natten_status natten_check_na_forward(const char *fn, const natten_problem *p,
                                      const natten_tensor *q, const natten_tensor *k,
                                      const natten_tensor *v, const natten_tensor *rpb,
                                      const natten_tensor *extra_k, const natten_tensor *extra_v,
                                      const natten_tensor *out, const natten_tensor *lse);

natten_status natten_check_na_backward(
    const char *fn, const natten_problem *p, const natten_tensor *q, const natten_tensor *k,
    const natten_tensor *v, const natten_tensor *rpb, const natten_tensor *extra_k,
    const natten_tensor *extra_v, const natten_tensor *out, const natten_tensor *lse,
    const natten_tensor *dout, const natten_tensor *dq, const natten_tensor *dk,
    const natten_tensor *dv, const natten_tensor *drpb, const natten_tensor *dextra_k,
    const natten_tensor *dextra_v);

natten_status natten_check_qk_forward(const char *fn, const natten_problem *p,
                                      const natten_tensor *q, const natten_tensor *k,
                                      const natten_tensor *rpb, const natten_tensor *logits);

natten_status natten_check_qk_backward(const char *fn, const natten_problem *p,
                                       const natten_tensor *q, const natten_tensor *k,
                                       const natten_tensor *dlogits, const natten_tensor *dq,
                                       const natten_tensor *dk, const natten_tensor *drpb);

natten_status natten_check_av_forward(const char *fn, const natten_problem *p,
                                      const natten_tensor *attn, const natten_tensor *v,
                                      const natten_tensor *out);

natten_status natten_check_av_backward(const char *fn, const natten_problem *p,
                                       const natten_tensor *attn, const natten_tensor *v,
                                       const natten_tensor *dout, const natten_tensor *dattn,
                                       const natten_tensor *dv);

#endif /* NATTEN_CORE_VALIDATE_H */
