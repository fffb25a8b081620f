/*
 * test_errors.c -- every bad-input class: invalid descriptors, NULL tensors
 * and data, op-specific rules, int64 overflow, outputs aliasing inputs or
 * each other.  Each call must return the expected status with a message
 * that names the function and the offending argument, and leave every
 * tensor byte untouched (sentinel check).  Run under ASan for leaks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

enum { OP_NA_FWD, OP_NA_BWD, OP_QK_FWD, OP_QK_BWD, OP_AV_FWD, OP_AV_BWD, OP_N };
static const char *fn_of(int op) {
    static const char *const names[OP_N] = {"natten_na_forward", "natten_na_backward", "natten_qk_forward",
                                            "natten_qk_backward", "natten_av_forward",  "natten_av_backward"};
    return names[op];
}

enum { T_Q, T_K, T_V, T_RPB, T_EK, T_EV, T_OUT, T_LSE, T_DOUT, T_LOGITS, T_ATTN, T_DLOGITS,
       T_DQ, T_DK, T_DV, T_DRPB, T_DEK, T_DEV, T_DATTN, T_COUNT };
static const natten_tensor_kind kind_of[T_COUNT] = {
    NATTEN_TENSOR_Q, NATTEN_TENSOR_K, NATTEN_TENSOR_V, NATTEN_TENSOR_RPB, NATTEN_TENSOR_EXTRA_K,
    NATTEN_TENSOR_EXTRA_V, NATTEN_TENSOR_OUT, NATTEN_TENSOR_LSE, NATTEN_TENSOR_OUT, NATTEN_TENSOR_LOGITS,
    NATTEN_TENSOR_LOGITS, NATTEN_TENSOR_LOGITS, NATTEN_TENSOR_Q, NATTEN_TENSOR_K, NATTEN_TENSOR_V,
    NATTEN_TENSOR_RPB, NATTEN_TENSOR_EXTRA_K, NATTEN_TENSOR_EXTRA_V, NATTEN_TENSOR_LOGITS};

static tbuf bufs[T_COUNT];
static natten_problem base; /* valid: 2-D, GQA, extra KV tensors sized for N = 2 */

/* Tensor arguments of one call; NULL entries are passed as NULL. */
typedef struct args { natten_tensor *t[T_COUNT]; } args;

static args default_args(int with_extra, int with_rpb) {
    args a;
    for (int i = 0; i < T_COUNT; ++i) a.t[i] = &bufs[i].t;
    if (!with_extra) a.t[T_EK] = a.t[T_EV] = a.t[T_DEK] = a.t[T_DEV] = NULL;
    if (!with_rpb) a.t[T_RPB] = a.t[T_DRPB] = NULL;
    return a;
}

static natten_status call(int op, const natten_problem *p, const args *a) {
    natten_tensor *const *t = a->t;
    switch (op) {
    case OP_NA_FWD: return natten_na_forward(p, t[T_Q], t[T_K], t[T_V], t[T_RPB], t[T_EK], t[T_EV], t[T_OUT], t[T_LSE]);
    case OP_NA_BWD:
        return natten_na_backward(p, t[T_Q], t[T_K], t[T_V], t[T_RPB], t[T_EK], t[T_EV], t[T_OUT], t[T_LSE], t[T_DOUT],
                                  t[T_DQ], t[T_DK], t[T_DV], t[T_DRPB], t[T_DEK], t[T_DEV]);
    case OP_QK_FWD: return natten_qk_forward(p, t[T_Q], t[T_K], t[T_RPB], t[T_LOGITS]);
    case OP_QK_BWD: return natten_qk_backward(p, t[T_Q], t[T_K], t[T_DLOGITS], t[T_DQ], t[T_DK], t[T_DRPB]);
    case OP_AV_FWD: return natten_av_forward(p, t[T_ATTN], t[T_V], t[T_OUT]);
    case OP_AV_BWD: return natten_av_backward(p, t[T_ATTN], t[T_V], t[T_DOUT], t[T_DATTN], t[T_DV]);
    }
    return NATTEN_STATUS_INTERNAL;
}

static int all_unchanged(void) {
    for (int i = 0; i < T_COUNT; ++i)
        if (!tbuf_unchanged(&bufs[i])) return 0;
    return 1;
}

static void expect(const char *label, int op, const natten_problem *p, const args *a, natten_status want,
                   const char *substring) {
    natten_status st = call(op, p, a);
    const char *msg = natten_last_error_message();
    t_check(st == want, "%s / %s: status %s, want %s (message: %s)", label, fn_of(op), natten_status_string(st),
            natten_status_string(want), msg);
    t_check(msg && strstr(msg, fn_of(op)) == msg, "%s / %s: message '%s' does not start with the function", label,
            fn_of(op), msg);
    t_check(!substring || strstr(msg, substring), "%s / %s: message '%s' lacks '%s'", label, fn_of(op), msg,
            substring ? substring : "");
    t_check(all_unchanged(), "%s / %s: a tensor was modified", label, fn_of(op));
}

typedef struct pcase {
    const char *label;
    void (*mutate)(natten_problem *p);
    natten_status status;
    const char *substring;
} pcase;

#define MUT(name, body) static void name(natten_problem *p) { body; }
MUT(m_rank0, p->rank = 0)
MUT(m_rank4, p->rank = 4)
MUT(m_batch0, p->batch = 0)
MUT(m_batchneg, p->batch = -3)
MUT(m_heads0, p->heads = 0)
MUT(m_kvheads0, p->kv_heads = 0)
MUT(m_heads_div, p->kv_heads = 3)
MUT(m_hd0, p->head_dim = 0)
MUT(m_hdv, p->head_dim_v = -1)
MUT(m_ext0, p->extent[0] = 0)
MUT(m_kern0, p->kernel[1] = 0)
MUT(m_kernneg, p->kernel[0] = -2)
MUT(m_kern_big, p->kernel[1] = 9)
MUT(m_dil0, p->dilation[0] = 0)
MUT(m_dil_big, p->dilation[1] = 3)
MUT(m_gs0, p->gna_stride[0] = 0)
MUT(m_gs_big, p->gna_stride[1] = 4)
MUT(m_os0, p->out_stride[0] = 0)
MUT(m_os_big, p->out_stride[0] = 4)
MUT(m_scale_inf, p->scale = INFINITY)
MUT(m_dtype, p->dtype = (natten_dtype)9)
MUT(m_impl, p->impl = (natten_impl)5)
MUT(m_extra_neg, p->num_extra_kv = -1)
static const int32_t varlen_small[] = {6, 7, 2, 7};
static const int32_t varlen_big[] = {6, 7, 6, 8};
MUT(m_varlen_small, p->varlen_extent = varlen_small)
MUT(m_varlen_big, p->varlen_extent = varlen_big)
MUT(m_ovf_batch, p->batch = INT64_MAX / 4)
MUT(m_ovf_dim, p->head_dim = (int64_t)1 << 61)
MUT(m_ovf_extent, p->rank = 3; p->extent[0] = p->extent[1] = p->extent[2] = (int64_t)1 << 22;
    p->kernel[2] = 1; p->dilation[2] = 1; p->gna_stride[2] = 1; p->out_stride[2] = 1)
MUT(m_ovf_extra, p->num_extra_kv = INT64_MAX / 2)

static const pcase pcases[] = {
    {"rank 0", m_rank0, NATTEN_STATUS_INVALID_ARGUMENT, "rank=0"},
    {"rank 4", m_rank4, NATTEN_STATUS_INVALID_ARGUMENT, "rank=4"},
    {"batch 0", m_batch0, NATTEN_STATUS_INVALID_ARGUMENT, "batch=0"},
    {"batch < 0", m_batchneg, NATTEN_STATUS_INVALID_ARGUMENT, "batch=-3"},
    {"heads 0", m_heads0, NATTEN_STATUS_INVALID_ARGUMENT, "heads=0"},
    {"kv_heads 0", m_kvheads0, NATTEN_STATUS_INVALID_ARGUMENT, "kv_heads=0"},
    {"heads % kv_heads", m_heads_div, NATTEN_STATUS_INVALID_ARGUMENT, "heads=4 is not a multiple of kv_heads=3"},
    {"head_dim 0", m_hd0, NATTEN_STATUS_INVALID_ARGUMENT, "head_dim=0"},
    {"head_dim_v < 0", m_hdv, NATTEN_STATUS_INVALID_ARGUMENT, "head_dim_v=-1"},
    {"extent 0", m_ext0, NATTEN_STATUS_INVALID_ARGUMENT, "extent[0]=0"},
    {"kernel 0", m_kern0, NATTEN_STATUS_INVALID_ARGUMENT, "kernel[1]=0"},
    {"kernel < 0", m_kernneg, NATTEN_STATUS_INVALID_ARGUMENT, "kernel[0]=-2"},
    {"kernel > extent", m_kern_big, NATTEN_STATUS_INVALID_ARGUMENT, "kernel[1]=9 exceeds extent[1]=7"},
    {"dilation 0", m_dil0, NATTEN_STATUS_INVALID_ARGUMENT, "dilation[0]=0"},
    {"dilation*kernel > extent", m_dil_big, NATTEN_STATUS_INVALID_ARGUMENT,
     "dilation[1]*kernel[1]=3*3 exceeds extent[1]=7"},
    {"gna_stride 0", m_gs0, NATTEN_STATUS_INVALID_ARGUMENT, "gna_stride[0]=0"},
    {"gna_stride > kernel", m_gs_big, NATTEN_STATUS_INVALID_ARGUMENT, "gna_stride[1]=4"},
    {"out_stride 0", m_os0, NATTEN_STATUS_INVALID_ARGUMENT, "out_stride[0]=0"},
    {"out_stride > kernel", m_os_big, NATTEN_STATUS_INVALID_ARGUMENT, "out_stride[0]=4"},
    {"scale inf", m_scale_inf, NATTEN_STATUS_INVALID_ARGUMENT, "scale=inf"},
    {"dtype unknown", m_dtype, NATTEN_STATUS_INVALID_ARGUMENT, "dtype=9"},
    {"impl unknown", m_impl, NATTEN_STATUS_INVALID_ARGUMENT, "impl=5"},
    {"num_extra_kv < 0", m_extra_neg, NATTEN_STATUS_INVALID_ARGUMENT, "num_extra_kv=-1"},
    {"varlen below K*d", m_varlen_small, NATTEN_STATUS_INVALID_ARGUMENT, "varlen_extent[1][0]=2"},
    {"varlen above extent", m_varlen_big, NATTEN_STATUS_INVALID_ARGUMENT, "varlen_extent[1][1]=8"},
    {"overflow batch", m_ovf_batch, NATTEN_STATUS_OVERFLOW, "overflows int64"},
    {"overflow head_dim", m_ovf_dim, NATTEN_STATUS_OVERFLOW, "overflows int64"},
    {"overflow extents", m_ovf_extent, NATTEN_STATUS_OVERFLOW, "overflows int64"},
    {"overflow extra", m_ovf_extra, NATTEN_STATUS_OVERFLOW, "overflows int64"},
};

static void test_problem_rules(void) {
    for (size_t i = 0; i < sizeof pcases / sizeof pcases[0]; ++i)
        for (int op = 0; op < OP_N; ++op) {
            natten_problem p = base;
            pcases[i].mutate(&p);
            args a = default_args(0, 0);
            expect(pcases[i].label, op, &p, &a, pcases[i].status, pcases[i].substring);
        }
    /* natten_problem_validate reports the same rules under its own name */
    for (size_t i = 0; i < sizeof pcases / sizeof pcases[0]; ++i) {
        natten_problem p = base;
        pcases[i].mutate(&p);
        natten_status st = natten_problem_validate(&p);
        t_check(st == pcases[i].status && strstr(natten_last_error_message(), "natten_problem_validate") &&
                    strstr(natten_last_error_message(), pcases[i].substring),
                "natten_problem_validate %s: %s '%s'", pcases[i].label, natten_status_string(st),
                natten_last_error_message());
    }
    for (int op = 0; op < OP_N; ++op) {
        args a = default_args(0, 0);
        expect("p NULL", op, NULL, &a, NATTEN_STATUS_NULL_POINTER, "p is NULL");
    }
}

/* Required tensors missing (pointer NULL, or data NULL). */
static void test_null_tensors(void) {
    static const struct { int op, slot; const char *name; } req[] = {
        {OP_NA_FWD, T_Q, "q"},        {OP_NA_FWD, T_K, "k"},        {OP_NA_FWD, T_V, "v"},
        {OP_NA_FWD, T_OUT, "out"},    {OP_NA_BWD, T_Q, "q"},        {OP_NA_BWD, T_K, "k"},
        {OP_NA_BWD, T_V, "v"},        {OP_NA_BWD, T_OUT, "out"},    {OP_NA_BWD, T_LSE, "lse"},
        {OP_NA_BWD, T_DOUT, "dout"},  {OP_NA_BWD, T_DQ, "dq"},      {OP_NA_BWD, T_DK, "dk"},
        {OP_NA_BWD, T_DV, "dv"},      {OP_QK_FWD, T_Q, "q"},        {OP_QK_FWD, T_K, "k"},
        {OP_QK_FWD, T_LOGITS, "logits"}, {OP_QK_BWD, T_Q, "q"},     {OP_QK_BWD, T_K, "k"},
        {OP_QK_BWD, T_DLOGITS, "dlogits"}, {OP_QK_BWD, T_DQ, "dq"}, {OP_QK_BWD, T_DK, "dk"},
        {OP_AV_FWD, T_ATTN, "attn"},  {OP_AV_FWD, T_V, "v"},        {OP_AV_FWD, T_OUT, "out"},
        {OP_AV_BWD, T_ATTN, "attn"},  {OP_AV_BWD, T_V, "v"},        {OP_AV_BWD, T_DOUT, "dout"},
        {OP_AV_BWD, T_DATTN, "dattn"}, {OP_AV_BWD, T_DV, "dv"},
    };
    char want[64];
    for (size_t i = 0; i < sizeof req / sizeof req[0]; ++i) {
        args a = default_args(0, 0);
        a.t[req[i].slot] = NULL;
        snprintf(want, sizeof want, "%s is NULL", req[i].name);
        expect("NULL tensor", req[i].op, &base, &a, NATTEN_STATUS_NULL_POINTER, want);
        natten_tensor copy = bufs[req[i].slot].t;
        copy.data = NULL;
        a = default_args(0, 0);
        a.t[req[i].slot] = &copy;
        snprintf(want, sizeof want, "%s->data is NULL", req[i].name);
        expect("NULL data", req[i].op, &base, &a, NATTEN_STATUS_NULL_POINTER, want);
    }
}

static void test_op_rules(void) {
    natten_problem p = base;
    args a;
    /* RPB with GNA stride */
    p.gna_stride[0] = 2;
    a = default_args(0, 1);
    expect("rpb with gna_stride", OP_NA_FWD, &p, &a, NATTEN_STATUS_INVALID_ARGUMENT, "gna_stride[0]=2");
    expect("rpb with gna_stride", OP_NA_BWD, &p, &a, NATTEN_STATUS_INVALID_ARGUMENT, "gna_stride[0]=2");
    expect("rpb with gna_stride", OP_QK_FWD, &p, &a, NATTEN_STATUS_INVALID_ARGUMENT, "gna_stride[0]=2");
    expect("drpb with gna_stride", OP_QK_BWD, &p, &a, NATTEN_STATUS_INVALID_ARGUMENT, "gna_stride[0]=2");
    /* drpb without rpb */
    a = default_args(0, 1);
    a.t[T_RPB] = NULL;
    expect("drpb without rpb", OP_NA_BWD, &base, &a, NATTEN_STATUS_INVALID_ARGUMENT, "drpb given but rpb is NULL");
    /* extra tensors vs num_extra_kv */
    a = default_args(1, 0);
    expect("extra given, N=0", OP_NA_FWD, &base, &a, NATTEN_STATUS_INVALID_ARGUMENT, "extra_k given but num_extra_kv=0");
    expect("extra given, N=0", OP_NA_BWD, &base, &a, NATTEN_STATUS_INVALID_ARGUMENT, "extra_k given but num_extra_kv=0");
    p = base;
    p.num_extra_kv = 2;
    a = default_args(1, 0);
    a.t[T_EV] = NULL;
    expect("extra_v missing", OP_NA_FWD, &p, &a, NATTEN_STATUS_NULL_POINTER, "extra_v is NULL");
    a = default_args(1, 0);
    a.t[T_DEK] = NULL;
    expect("dextra_k missing", OP_NA_BWD, &p, &a, NATTEN_STATUS_NULL_POINTER, "dextra_k is NULL");
    a = default_args(1, 0);
    for (int op = OP_QK_FWD; op < OP_N; ++op)
        expect("extra KV with split ops", op, &p, &a, NATTEN_STATUS_INVALID_ARGUMENT, "num_extra_kv=2 must be 0");
}

static void test_aliasing(void) {
    args a;
    natten_tensor shifted;
    a = default_args(0, 0);
    a.t[T_OUT] = a.t[T_Q];
    expect("out is q", OP_NA_FWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    a = default_args(0, 0);
    shifted = bufs[T_LSE].t;
    shifted.data = bufs[T_OUT].t.data;
    a.t[T_LSE] = &shifted;
    expect("lse inside out", OP_NA_FWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    a = default_args(0, 0);
    shifted = bufs[T_DK].t;
    shifted.data = (char *)bufs[T_DQ].t.data + 8;
    a.t[T_DK] = &shifted;
    expect("dk overlaps dq", OP_NA_BWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    expect("dk overlaps dq", OP_QK_BWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    a = default_args(0, 0);
    a.t[T_DV] = a.t[T_V];
    expect("dv is v", OP_NA_BWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    expect("dv is v", OP_AV_BWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    a = default_args(0, 0);
    a.t[T_DATTN] = a.t[T_ATTN];
    expect("dattn is attn", OP_AV_BWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    a = default_args(0, 0);
    shifted = bufs[T_LOGITS].t;
    shifted.data = (char *)bufs[T_K].t.data + 4 * 5;
    a.t[T_LOGITS] = &shifted;
    expect("logits inside k", OP_QK_FWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    a = default_args(0, 0);
    a.t[T_OUT] = a.t[T_ATTN];
    expect("av out is attn", OP_AV_FWD, &base, &a, NATTEN_STATUS_ALIASING, "overlaps");
    /* an output whose strides make two elements share an address */
    a = default_args(0, 0);
    shifted = bufs[T_OUT].t;
    shifted.stride[1] = 0;
    a.t[T_OUT] = &shifted;
    expect("out stride 0", OP_NA_FWD, &base, &a, NATTEN_STATUS_ALIASING, "share memory");
    a = default_args(0, 0);
    shifted = bufs[T_DQ].t;
    shifted.stride[3] = shifted.stride[4]; /* heads step = channel step */
    a.t[T_DQ] = &shifted;
    expect("dq heads/channels collide", OP_QK_BWD, &base, &a, NATTEN_STATUS_ALIASING, "share memory");
}

static void test_stride_overflow(void) {
    args a = default_args(0, 0);
    natten_tensor big = bufs[T_Q].t;
    big.stride[1] = INT64_MAX / 2;
    a.t[T_Q] = &big;
    for (int op = OP_NA_FWD; op <= OP_QK_BWD; ++op)
        expect("q stride overflow", op, &base, &a, NATTEN_STATUS_OVERFLOW, "overflows int64");
    a = default_args(0, 0);
    natten_tensor low = bufs[T_V].t;
    low.data = (void *)(uintptr_t)64;
    low.stride[0] = -((int64_t)1 << 40);
    a.t[T_V] = &low;
    expect("v reaches below address 0", OP_AV_FWD, &base, &a, NATTEN_STATUS_OVERFLOW, "address space");
}

int main(void) {
    natten_problem_init(&base, 2);
    base.batch = 2;
    base.heads = 4;
    base.kv_heads = 2;
    base.head_dim = 3;
    base.head_dim_v = 3;
    base.extent[0] = 6, base.extent[1] = 7;
    base.kernel[0] = 3, base.kernel[1] = 3;
    base.impl = NATTEN_IMPL_REFERENCE;
    natten_problem sized = base;
    sized.num_extra_kv = 2;
    for (int i = 0; i < T_COUNT; ++i) {
        tbuf_init(&bufs[i], &sized, kind_of[i], i % T_NUM_LAYOUTS);
        tbuf_snapshot(&bufs[i]);
    }
    /* sanity: the baseline itself is accepted by every op */
    for (int op = 0; op < OP_N; ++op) {
        args a = default_args(0, 1);
        if (op == OP_AV_FWD || op == OP_AV_BWD) a.t[T_RPB] = NULL;
        natten_status st = call(op, &base, &a);
        t_check(st == NATTEN_STATUS_SUCCESS, "baseline %s: %s %s", fn_of(op), natten_status_string(st),
                natten_last_error_message());
    }
    for (int i = 0; i < T_COUNT; ++i) tbuf_fill_sentinel(&bufs[i]), tbuf_snapshot(&bufs[i]);
    test_problem_rules();
    test_null_tensors();
    test_op_rules();
    test_aliasing();
    test_stride_overflow();
    for (int i = 0; i < T_COUNT; ++i) tbuf_free(&bufs[i]);
    return t_summary("test_errors");
}
