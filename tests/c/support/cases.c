/*
 * cases.c -- building natten_problem descriptors from compact test cases.
 */
#include <math.h>
#include <stdio.h>

#include "support.h"

static int64_t or1(int64_t v) { return v ? v : 1; }

void t_case_problem(const t_case *c, natten_dtype dt, natten_impl impl, t_rng *r, int32_t *varlen_buf,
                    natten_problem *p) {
    natten_problem_init(p, c->rank);
    p->batch = or1(c->B);
    p->heads = or1(c->H);
    p->kv_heads = c->Hkv ? c->Hkv : p->heads;
    p->head_dim = or1(c->D);
    p->head_dim_v = c->Dv ? c->Dv : p->head_dim;
    for (int a = 0; a < c->rank; ++a) {
        p->extent[a] = or1(c->X[a]);
        p->kernel[a] = or1(c->K[a]);
        p->dilation[a] = or1(c->d[a]);
        p->gna_stride[a] = or1(c->gs[a]);
        p->out_stride[a] = or1(c->os[a]);
        p->causal[a] = c->causal[a];
    }
    p->scale = c->scale == 0.0 ? NAN : (c->scale == T_SCALE_ZERO ? 0.0 : c->scale);
    p->dtype = dt;
    p->impl = impl;
    p->num_extra_kv = c->extra;
    p->varlen_extent = NULL;
    if (c->varlen) {
        for (int64_t b = 0; b < p->batch; ++b)
            for (int a = 0; a < c->rank; ++a) {
                const int64_t lo = p->kernel[a] * p->dilation[a];
                /* first sample full size, the others random in [K*d, X] */
                varlen_buf[b * c->rank + a] = (int32_t)(b == 0 ? p->extent[a] : t_rng_int(r, lo, p->extent[a]));
            }
        p->varlen_extent = varlen_buf;
    }
}

const char *t_problem_str(const natten_problem *p, char *buf, size_t cap) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "rank=%d B=%lld H=%lld Hkv=%lld D=%lld Dv=%lld %s X=(", p->rank,
                          (long long)p->batch, (long long)p->heads, (long long)p->kv_heads,
                          (long long)p->head_dim, (long long)p->head_dim_v, t_dtype_name(p->dtype));
#define AXES(label, field)                                                                         \
    do {                                                                                           \
        if (n < cap) n += (size_t)snprintf(buf + n, cap - n, "%s", label);                        \
        for (int a = 0; a < p->rank && n < cap; ++a)                                               \
            n += (size_t)snprintf(buf + n, cap - n, "%s%lld", a ? "," : "", (long long)(p->field[a])); \
    } while (0)
    AXES("", extent);
    AXES(") K=(", kernel);
    AXES(") d=(", dilation);
    AXES(") gs=(", gna_stride);
    AXES(") os=(", out_stride);
    AXES(") causal=(", causal);
#undef AXES
    if (n < cap)
        snprintf(buf + n, cap - n, ") extra=%lld varlen=%s", (long long)p->num_extra_kv,
                 p->varlen_extent ? "yes" : "no");
    return buf;
}
