/*
 * validate.c -- every rule of natten.h in one place: the descriptor, the
 * presence of tensors each op needs, int64 overflow of element counts and
 * byte spans, and aliasing of outputs.  Nothing here writes to a tensor.
 */
#include <math.h>
#include <stdint.h>

#include "core/problem.h"
#include "core/status.h"
#include "core/validate.h"

#define LL(x) ((long long)(x))
#define INVALID NATTEN_STATUS_INVALID_ARGUMENT

static natten_status check_positive(const char *fn, const char *name, int64_t value) {
    if (value < 1)
        return natten_set_error(INVALID, "%s: %s=%lld must be >= 1", fn, name, LL(value));
    return NATTEN_STATUS_SUCCESS;
}

/* Byte size of a kind, or -1 on int64 overflow (of the count or its bytes). */
static int64_t checked_bytes(const natten_problem *p, natten_tensor_kind kind) {
    int64_t shape[NATTEN_MAX_DIMS];
    const int n = natten_shape_of(p, kind, shape);
    int64_t count = 1;
    for (int i = 0; i < n; ++i)
        if (__builtin_mul_overflow(count, shape[i], &count)) return -1;
    int64_t bytes;
    if (__builtin_mul_overflow(count, (int64_t)natten_dtype_size(natten_kind_dtype(p, kind)),
                               &bytes))
        return -1;
    return bytes;
}

static const char *const kind_names[] = {"q",      "k",       "v",       "out", "lse",
                                         "logits", "extra_k", "extra_v", "rpb"};

natten_status natten_check_problem(const char *fn, const natten_problem *p) {
    natten_status st;
    if (!p) return natten_set_error(NATTEN_STATUS_NULL_POINTER, "%s: p is NULL", fn);
    if (p->rank < 1 || p->rank > NATTEN_MAX_RANK)
        return natten_set_error(INVALID, "%s: rank=%d must be 1, 2 or 3", fn, p->rank);
    if ((st = check_positive(fn, "batch", p->batch))) return st;
    if ((st = check_positive(fn, "heads", p->heads))) return st;
    if ((st = check_positive(fn, "kv_heads", p->kv_heads))) return st;
    if ((st = check_positive(fn, "head_dim", p->head_dim))) return st;
    if ((st = check_positive(fn, "head_dim_v", p->head_dim_v))) return st;
    if (p->heads % p->kv_heads != 0)
        return natten_set_error(INVALID, "%s: heads=%lld is not a multiple of kv_heads=%lld", fn,
                                LL(p->heads), LL(p->kv_heads));
    for (int a = 0; a < p->rank; ++a) {
        const int64_t L = p->extent[a], K = p->kernel[a], d = p->dilation[a];
        if (L < 1)
            return natten_set_error(INVALID, "%s: extent[%d]=%lld must be >= 1", fn, a, LL(L));
        if (K < 1)
            return natten_set_error(INVALID, "%s: kernel[%d]=%lld must be >= 1", fn, a, LL(K));
        if (K > L)
            return natten_set_error(INVALID, "%s: kernel[%d]=%lld exceeds extent[%d]=%lld", fn, a,
                                    LL(K), a, LL(L));
        if (d < 1)
            return natten_set_error(INVALID, "%s: dilation[%d]=%lld must be >= 1", fn, a, LL(d));
        if (d > L / K)
            return natten_set_error(INVALID,
                                    "%s: dilation[%d]*kernel[%d]=%lld*%lld exceeds extent[%d]=%lld",
                                    fn, a, a, LL(d), LL(K), a, LL(L));
        if (p->gna_stride[a] < 1 || p->gna_stride[a] > K)
            return natten_set_error(INVALID, "%s: gna_stride[%d]=%lld must be in [1, kernel[%d]=%lld]",
                                    fn, a, LL(p->gna_stride[a]), a, LL(K));
        if (p->out_stride[a] < 1 || p->out_stride[a] > K)
            return natten_set_error(INVALID, "%s: out_stride[%d]=%lld must be in [1, kernel[%d]=%lld]",
                                    fn, a, LL(p->out_stride[a]), a, LL(K));
    }
    if (isinf(p->scale))
        return natten_set_error(INVALID, "%s: scale=%g must be finite (or NaN for the default)", fn,
                                p->scale);
    if (natten_dtype_size(p->dtype) == 0)
        return natten_set_error(INVALID, "%s: dtype=%d is not a natten_dtype", fn, (int)p->dtype);
    if ((int)p->impl < (int)NATTEN_IMPL_AUTO || (int)p->impl > (int)NATTEN_IMPL_FAST)
        return natten_set_error(INVALID, "%s: impl=%d is not a natten_impl", fn, (int)p->impl);
    if (p->num_extra_kv < 0)
        return natten_set_error(INVALID, "%s: num_extra_kv=%lld must be >= 0", fn,
                                LL(p->num_extra_kv));
    if (natten_problem_kernel_volume(p) == 0) /* 0 only on overflow: rank and kernel hold */
        return natten_set_error(NATTEN_STATUS_OVERFLOW,
                                "%s: kernel volume prod(kernel) overflows int64", fn);
    for (int kind = NATTEN_TENSOR_Q; kind <= NATTEN_TENSOR_RPB; ++kind)
        if (checked_bytes(p, (natten_tensor_kind)kind) < 0)
            return natten_set_error(NATTEN_STATUS_OVERFLOW,
                                    "%s: the byte size of %s overflows int64 (batch=%lld, "
                                    "heads=%lld, head_dim=%lld, head_dim_v=%lld, num_extra_kv=%lld)",
                                    fn, kind_names[kind], LL(p->batch), LL(p->heads),
                                    LL(p->head_dim), LL(p->head_dim_v), LL(p->num_extra_kv));
    if (p->varlen_extent) {
        for (int64_t b = 0; b < p->batch; ++b)
            for (int a = 0; a < p->rank; ++a) {
                const int64_t e = p->varlen_extent[b * p->rank + a];
                const int64_t lo = p->kernel[a] * p->dilation[a];
                if (e < lo || e > p->extent[a])
                    return natten_set_error(
                        INVALID,
                        "%s: varlen_extent[%lld][%d]=%lld must be in [kernel[%d]*dilation[%d]=%lld, "
                        "extent[%d]=%lld]",
                        fn, LL(b), a, LL(e), a, a, LL(lo), a, LL(p->extent[a]));
            }
    }
    return NATTEN_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* Tensors                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct targ {
    const char *name;
    natten_tensor_kind kind;
    const natten_tensor *t; /* NULL = absent (allowed only when !required) */
    int output;
    int required;
    /* filled by the span check */
    int empty;
    uintptr_t lo, hi; /* byte span [lo, hi) */
} targ;

static natten_status tensor_span(const char *fn, const natten_problem *p, targ *a) {
    const natten_tensor *t = a->t;
    int64_t shape[NATTEN_MAX_DIMS];
    const int n = natten_shape_of(p, a->kind, shape);
    const int64_t esz = (int64_t)natten_dtype_size(natten_kind_dtype(p, a->kind));
    a->empty = 0;
    for (int i = 0; i < n; ++i)
        if (shape[i] == 0) a->empty = 1;
    if (a->empty) return NATTEN_STATUS_SUCCESS;
    if (!t->data)
        return natten_set_error(NATTEN_STATUS_NULL_POINTER, "%s: %s->data is NULL", fn, a->name);
    int64_t lo = 0, hi = 0;
    for (int i = 0; i < n; ++i) {
        int64_t off;
        if (__builtin_mul_overflow(shape[i] - 1, t->stride[i], &off) ||
            __builtin_add_overflow(off < 0 ? lo : hi, off, off < 0 ? &lo : &hi))
            return natten_set_error(NATTEN_STATUS_OVERFLOW,
                                    "%s: %s stride[%d]=%lld over %lld elements overflows int64", fn,
                                    a->name, i, LL(t->stride[i]), LL(shape[i]));
    }
    int64_t lo_b, hi_b;
    if (__builtin_mul_overflow(lo, esz, &lo_b) || __builtin_add_overflow(hi, 1, &hi) ||
        __builtin_mul_overflow(hi, esz, &hi_b))
        return natten_set_error(NATTEN_STATUS_OVERFLOW, "%s: the byte span of %s overflows int64",
                                fn, a->name);
    const uintptr_t base = (uintptr_t)t->data;
    if ((lo_b < 0 && base < (uintptr_t)(-(lo_b + 1)) + 1u) ||
        (hi_b > 0 && UINTPTR_MAX - base < (uintptr_t)hi_b))
        return natten_set_error(NATTEN_STATUS_OVERFLOW,
                                "%s: %s's strides reach outside the address space", fn, a->name);
    a->lo = lo_b < 0 ? base - (uintptr_t)(-(lo_b + 1)) - 1u : base + (uintptr_t)lo_b;
    a->hi = base + (uintptr_t)hi_b;

    if (a->output) {
        /* Distinct elements must land on distinct addresses: sort the axes of
         * extent > 1 by |stride| and require each stride to exceed the reach
         * of the smaller ones (the usual sufficient condition). */
        int64_t st[NATTEN_MAX_DIMS], ex[NATTEN_MAX_DIMS];
        int idx[NATTEN_MAX_DIMS], m = 0;
        for (int i = 0; i < n; ++i)
            if (shape[i] > 1) {
                st[m] = t->stride[i] < 0 ? -t->stride[i] : t->stride[i];
                ex[m] = shape[i];
                idx[m] = i;
                ++m;
            }
        for (int i = 1; i < m; ++i)
            for (int j = i; j > 0 && st[j - 1] > st[j]; --j) {
                int64_t ts = st[j], te = ex[j];
                int ti = idx[j];
                st[j] = st[j - 1], ex[j] = ex[j - 1], idx[j] = idx[j - 1];
                st[j - 1] = ts, ex[j - 1] = te, idx[j - 1] = ti;
            }
        int64_t reach = 0; /* largest offset spanned by the smaller axes (saturating) */
        for (int i = 0; i < m; ++i) {
            if (st[i] <= reach)
                return natten_set_error(NATTEN_STATUS_ALIASING,
                                        "%s: output %s stride[%d]=%lld makes distinct elements "
                                        "share memory",
                                        fn, a->name, idx[i], LL(t->stride[idx[i]]));
            if (__builtin_add_overflow(reach, (ex[i] - 1) * st[i], &reach)) reach = INT64_MAX;
        }
    }
    return NATTEN_STATUS_SUCCESS;
}

static natten_status check_tensors(const char *fn, const natten_problem *p, targ *args, int n) {
    natten_status st;
    for (int i = 0; i < n; ++i)
        if (args[i].t && (st = tensor_span(fn, p, &args[i]))) return st;
    for (int i = 0; i < n; ++i) {
        if (!args[i].t || !args[i].output || args[i].empty) continue;
        for (int j = 0; j < n; ++j) {
            if (j == i || !args[j].t || args[j].empty) continue;
            if (args[j].output && j < i) continue; /* pair already reported from j's side */
            if (args[i].lo < args[j].hi && args[j].lo < args[i].hi)
                return natten_set_error(NATTEN_STATUS_ALIASING,
                                        "%s: output %s (bytes %p..%p) overlaps %s %s (bytes %p..%p)",
                                        fn, args[i].name, (void *)args[i].lo, (void *)args[i].hi,
                                        args[j].output ? "output" : "input", args[j].name,
                                        (void *)args[j].lo, (void *)args[j].hi);
        }
    }
    return NATTEN_STATUS_SUCCESS;
}

/* NULL checks run in table order, before any other tensor rule. */
static natten_status check_required(const char *fn, const targ *args, int n) {
    for (int i = 0; i < n; ++i)
        if (args[i].required && !args[i].t)
            return natten_set_error(NATTEN_STATUS_NULL_POINTER, "%s: %s is NULL", fn,
                                    args[i].name);
    return NATTEN_STATUS_SUCCESS;
}

static natten_status check_rpb_allowed(const char *fn, const natten_problem *p, const char *name) {
    for (int a = 0; a < p->rank; ++a)
        if (p->gna_stride[a] != 1)
            return natten_set_error(INVALID, "%s: %s given with gna_stride[%d]=%lld; RPB needs "
                                    "gna_stride 1 on every axis",
                                    fn, name, a, LL(p->gna_stride[a]));
    return NATTEN_STATUS_SUCCESS;
}

/* Extra-KV rows of the table: all required when num_extra_kv > 0, all absent when 0. */
static natten_status check_extra(const char *fn, const natten_problem *p, const targ *args, int n) {
    for (int i = 0; i < n; ++i) {
        const natten_tensor_kind kind = args[i].kind;
        if (kind != NATTEN_TENSOR_EXTRA_K && kind != NATTEN_TENSOR_EXTRA_V) continue;
        if (p->num_extra_kv > 0 && !args[i].t)
            return natten_set_error(NATTEN_STATUS_NULL_POINTER,
                                    "%s: %s is NULL but num_extra_kv=%lld", fn, args[i].name,
                                    LL(p->num_extra_kv));
        if (p->num_extra_kv == 0 && args[i].t)
            return natten_set_error(INVALID, "%s: %s given but num_extra_kv=0", fn, args[i].name);
    }
    return NATTEN_STATUS_SUCCESS;
}

static natten_status check_no_extra(const char *fn, const natten_problem *p) {
    if (p->num_extra_kv != 0)
        return natten_set_error(INVALID,
                                "%s: num_extra_kv=%lld must be 0 (extra KV is for the fused ops)",
                                fn, LL(p->num_extra_kv));
    return NATTEN_STATUS_SUCCESS;
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        natten_status st_ = (x);                                                                   \
        if (st_ != NATTEN_STATUS_SUCCESS) return st_;                                              \
    } while (0)

/* Table rows for check_required / check_tensors; the message name is the
 * parameter's own name, so a row cannot name the wrong tensor. */
#define INPUT(t, kind) {#t, kind, t, 0, 1, 0, 0, 0}
#define OUTPUT(t, kind) {#t, kind, t, 1, 1, 0, 0, 0}
#define OPTIONAL_INPUT(t, kind) {#t, kind, t, 0, 0, 0, 0, 0}
#define OPTIONAL_OUTPUT(t, kind) {#t, kind, t, 1, 0, 0, 0, 0}
#define COUNT(args) ((int)(sizeof(args) / sizeof((args)[0])))

natten_status natten_check_na_forward(const char *fn, const natten_problem *p,
                                      const natten_tensor *q, const natten_tensor *k,
                                      const natten_tensor *v, const natten_tensor *rpb,
                                      const natten_tensor *extra_k, const natten_tensor *extra_v,
                                      const natten_tensor *out, const natten_tensor *lse) {
    TRY(natten_check_problem(fn, p));
    targ args[] = {
        INPUT(q, NATTEN_TENSOR_Q),
        INPUT(k, NATTEN_TENSOR_K),
        INPUT(v, NATTEN_TENSOR_V),
        OPTIONAL_INPUT(rpb, NATTEN_TENSOR_RPB),
        OPTIONAL_INPUT(extra_k, NATTEN_TENSOR_EXTRA_K),
        OPTIONAL_INPUT(extra_v, NATTEN_TENSOR_EXTRA_V),
        OUTPUT(out, NATTEN_TENSOR_OUT),
        OPTIONAL_OUTPUT(lse, NATTEN_TENSOR_LSE),
    };
    TRY(check_required(fn, args, COUNT(args)));
    if (rpb) TRY(check_rpb_allowed(fn, p, "rpb"));
    TRY(check_extra(fn, p, args, COUNT(args)));
    return check_tensors(fn, p, args, COUNT(args));
}

natten_status natten_check_na_backward(
    const char *fn, const natten_problem *p, const natten_tensor *q, const natten_tensor *k,
    const natten_tensor *v, const natten_tensor *rpb, const natten_tensor *extra_k,
    const natten_tensor *extra_v, const natten_tensor *out, const natten_tensor *lse,
    const natten_tensor *dout, const natten_tensor *dq, const natten_tensor *dk,
    const natten_tensor *dv, const natten_tensor *drpb, const natten_tensor *dextra_k,
    const natten_tensor *dextra_v) {
    TRY(natten_check_problem(fn, p));
    targ args[] = {
        INPUT(q, NATTEN_TENSOR_Q),
        INPUT(k, NATTEN_TENSOR_K),
        INPUT(v, NATTEN_TENSOR_V),
        OPTIONAL_INPUT(rpb, NATTEN_TENSOR_RPB),
        OPTIONAL_INPUT(extra_k, NATTEN_TENSOR_EXTRA_K),
        OPTIONAL_INPUT(extra_v, NATTEN_TENSOR_EXTRA_V),
        INPUT(out, NATTEN_TENSOR_OUT),
        INPUT(lse, NATTEN_TENSOR_LSE),
        INPUT(dout, NATTEN_TENSOR_OUT),
        OUTPUT(dq, NATTEN_TENSOR_Q),
        OUTPUT(dk, NATTEN_TENSOR_K),
        OUTPUT(dv, NATTEN_TENSOR_V),
        OPTIONAL_OUTPUT(drpb, NATTEN_TENSOR_RPB),
        OPTIONAL_OUTPUT(dextra_k, NATTEN_TENSOR_EXTRA_K),
        OPTIONAL_OUTPUT(dextra_v, NATTEN_TENSOR_EXTRA_V),
    };
    TRY(check_required(fn, args, COUNT(args)));
    if (rpb) TRY(check_rpb_allowed(fn, p, "rpb"));
    if (drpb && !rpb) return natten_set_error(INVALID, "%s: drpb given but rpb is NULL", fn);
    TRY(check_extra(fn, p, args, COUNT(args)));
    return check_tensors(fn, p, args, COUNT(args));
}

natten_status natten_check_qk_forward(const char *fn, const natten_problem *p,
                                      const natten_tensor *q, const natten_tensor *k,
                                      const natten_tensor *rpb, const natten_tensor *logits) {
    TRY(natten_check_problem(fn, p));
    TRY(check_no_extra(fn, p));
    targ args[] = {
        INPUT(q, NATTEN_TENSOR_Q),
        INPUT(k, NATTEN_TENSOR_K),
        OPTIONAL_INPUT(rpb, NATTEN_TENSOR_RPB),
        OUTPUT(logits, NATTEN_TENSOR_LOGITS),
    };
    TRY(check_required(fn, args, COUNT(args)));
    if (rpb) TRY(check_rpb_allowed(fn, p, "rpb"));
    return check_tensors(fn, p, args, COUNT(args));
}

natten_status natten_check_qk_backward(const char *fn, const natten_problem *p,
                                       const natten_tensor *q, const natten_tensor *k,
                                       const natten_tensor *dlogits, const natten_tensor *dq,
                                       const natten_tensor *dk, const natten_tensor *drpb) {
    TRY(natten_check_problem(fn, p));
    TRY(check_no_extra(fn, p));
    targ args[] = {
        INPUT(q, NATTEN_TENSOR_Q),
        INPUT(k, NATTEN_TENSOR_K),
        INPUT(dlogits, NATTEN_TENSOR_LOGITS),
        OUTPUT(dq, NATTEN_TENSOR_Q),
        OUTPUT(dk, NATTEN_TENSOR_K),
        OPTIONAL_OUTPUT(drpb, NATTEN_TENSOR_RPB),
    };
    TRY(check_required(fn, args, COUNT(args)));
    if (drpb) TRY(check_rpb_allowed(fn, p, "drpb"));
    return check_tensors(fn, p, args, COUNT(args));
}

natten_status natten_check_av_forward(const char *fn, const natten_problem *p,
                                      const natten_tensor *attn, const natten_tensor *v,
                                      const natten_tensor *out) {
    TRY(natten_check_problem(fn, p));
    TRY(check_no_extra(fn, p));
    targ args[] = {
        INPUT(attn, NATTEN_TENSOR_LOGITS),
        INPUT(v, NATTEN_TENSOR_V),
        OUTPUT(out, NATTEN_TENSOR_OUT),
    };
    TRY(check_required(fn, args, COUNT(args)));
    return check_tensors(fn, p, args, COUNT(args));
}

natten_status natten_check_av_backward(const char *fn, const natten_problem *p,
                                       const natten_tensor *attn, const natten_tensor *v,
                                       const natten_tensor *dout, const natten_tensor *dattn,
                                       const natten_tensor *dv) {
    TRY(natten_check_problem(fn, p));
    TRY(check_no_extra(fn, p));
    targ args[] = {
        INPUT(attn, NATTEN_TENSOR_LOGITS),
        INPUT(v, NATTEN_TENSOR_V),
        INPUT(dout, NATTEN_TENSOR_OUT),
        OUTPUT(dattn, NATTEN_TENSOR_LOGITS),
        OUTPUT(dv, NATTEN_TENSOR_V),
    };
    TRY(check_required(fn, args, COUNT(args)));
    return check_tensors(fn, p, args, COUNT(args));
}
