/*
 * fast_cases.c -- what the fast-kernel tests (test_fast_cpu.c,
 * test_fast_split.c) share: their problem table rows, the ISA levels they
 * sweep, tensors as logical doubles and the gradient comparison.
 */
#include <math.h>
#include <stdlib.h>

#include "support.h"

const natten_cpu_isa t_cpu_isas[T_NUM_CPU_ISAS] = {NATTEN_CPU_ISA_SCALAR, NATTEN_CPU_ISA_AVX2,
                                                   NATTEN_CPU_ISA_AVX512, NATTEN_CPU_ISA_NEON};

natten_problem t_fcase_problem(const t_fcase *c, int32_t *varlen_buf, t_rng *rng) {
    natten_problem p;
    natten_problem_init(&p, c->rank);
    p.batch = c->B;
    p.heads = c->H;
    p.kv_heads = c->Hkv;
    p.head_dim = c->D;
    p.head_dim_v = c->Dv;
    for (int a = 0; a < c->rank; ++a) {
        p.extent[a] = c->L[a];
        p.kernel[a] = c->K[a];
        p.dilation[a] = c->dil[a] ? c->dil[a] : 1;
        p.gna_stride[a] = c->gs[a] ? c->gs[a] : 1;
        p.out_stride[a] = c->os[a] ? c->os[a] : 1;
        p.causal[a] = c->causal[a];
    }
    p.dtype = c->dt;
    p.num_extra_kv = c->NE;
    if (c->varlen) {
        for (int64_t b = 0; b < c->B; ++b)
            for (int a = 0; a < c->rank; ++a) {
                const int64_t lo = p.kernel[a] * p.dilation[a];
                varlen_buf[b * c->rank + a] = (int32_t)t_rng_int(rng, lo, p.extent[a]);
            }
        varlen_buf[0] = (int32_t)p.extent[0]; /* one sample at full size */
        p.varlen_extent = varlen_buf;
    }
    return p;
}

double *t_to_double(const tbuf *tb) {
    double *d = malloc((size_t)tb->count * sizeof(double));
    tbuf_to_double(tb, d);
    return d;
}

int t_compare_grad(const char *what, const tbuf *got, const double *want, natten_dtype dt) {
    const double tol = dt == NATTEN_DTYPE_F32 ? 1e-4 : dt == NATTEN_DTYPE_F16 ? 4e-3 : 3e-2;
    double mx = 1e-3;
    for (int64_t e = 0; e < got->count; ++e)
        if (isfinite(want[e])) mx = fabs(want[e]) > mx ? fabs(want[e]) : mx;
    return t_compare(what, got, want, tol * mx, tol);
}
