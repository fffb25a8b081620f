/*
 * test_dtypes.c -- every backward op in f32, f16 and bf16 against the same
 * op in f64 on identical (already rounded) inputs.  The f64 ops are checked
 * against the oracle and finite differences in test_ops / test_grad; here
 * the reduced-precision paths must agree within their rounding.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "support.h"

static const t_case cases[] = {
    {"1d rpb extra GQA", 1, 2, 4, 2, 4, 0, {9}, {3}, .rpb = 1, .extra = 2},
    {"1d causal dilated both strides", 1, 1, 2, 0, 3, 0, {11}, {4}, {2}, {2}, {3}, .causal = {1}},
    {"2d varlen rpb", 2, 3, 2, 0, 3, 2, {6, 7}, {3, 2}, .rpb = 1, .varlen = 1},
    {"3d causal extra", 3, 1, 2, 1, 2, 0, {3, 4, 5}, {2, 3, 3}, .causal = {0, 0, 1}, .extra = 1},
};

enum { Q, K, V, RPB, EK, EV, DOUT, ATTN, N_IN };
enum { OUT, LSE, DQ, DK, DV, DRPB, DEK, DEV, LOGITS, AOUT, DATTN, SDQ, SDK, SDRPB, SDV, N_OUT };

typedef struct run {
    natten_problem p;
    tbuf in[N_IN], out[N_OUT];
} run;

static const natten_tensor_kind in_kind[N_IN] = {NATTEN_TENSOR_Q,       NATTEN_TENSOR_K,       NATTEN_TENSOR_V,
                                                 NATTEN_TENSOR_RPB,     NATTEN_TENSOR_EXTRA_K, NATTEN_TENSOR_EXTRA_V,
                                                 NATTEN_TENSOR_OUT,     NATTEN_TENSOR_LOGITS};
static const natten_tensor_kind out_kind[N_OUT] = {
    NATTEN_TENSOR_OUT,    NATTEN_TENSOR_LSE, NATTEN_TENSOR_Q,      NATTEN_TENSOR_K,      NATTEN_TENSOR_V,
    NATTEN_TENSOR_RPB,    NATTEN_TENSOR_EXTRA_K, NATTEN_TENSOR_EXTRA_V, NATTEN_TENSOR_LOGITS, NATTEN_TENSOR_OUT,
    NATTEN_TENSOR_LOGITS, NATTEN_TENSOR_Q,   NATTEN_TENSOR_K,      NATTEN_TENSOR_RPB,    NATTEN_TENSOR_V};
static const char *const out_name[N_OUT] = {"out", "lse", "dq", "dk", "dv", "drpb", "dextra_k", "dextra_v",
                                            "logits", "av out", "dattn", "qk dq", "qk dk", "qk drpb", "av dv"};

static void run_all(run *r, const t_case *c) {
    natten_problem *p = &r->p;
    const int extra = p->num_extra_kv > 0;
    natten_tensor *i[N_IN], *o[N_OUT];
    for (int j = 0; j < N_IN; ++j) i[j] = &r->in[j].t;
    for (int j = 0; j < N_OUT; ++j) o[j] = &r->out[j].t;
    natten_tensor *rpb = c->rpb ? i[RPB] : NULL, *ek = extra ? i[EK] : NULL, *ev = extra ? i[EV] : NULL;
    natten_status st = natten_na_forward(p, i[Q], i[K], i[V], rpb, ek, ev, o[OUT], o[LSE]);
    st = st ? st
            : natten_na_backward(p, i[Q], i[K], i[V], rpb, ek, ev, o[OUT], o[LSE], i[DOUT], o[DQ], o[DK], o[DV],
                                 c->rpb ? o[DRPB] : NULL, extra ? o[DEK] : NULL, extra ? o[DEV] : NULL);
    t_check(st == NATTEN_STATUS_SUCCESS, "%s %s fused: %s", c->name, t_dtype_name(p->dtype), natten_last_error_message());
    if (extra) return;
    st = natten_qk_forward(p, i[Q], i[K], rpb, o[LOGITS]);
    st = st ? st : natten_qk_backward(p, i[Q], i[K], i[ATTN], o[SDQ], o[SDK], c->rpb ? o[SDRPB] : NULL);
    st = st ? st : natten_av_forward(p, i[ATTN], i[V], o[AOUT]);
    st = st ? st : natten_av_backward(p, i[ATTN], i[V], i[DOUT], o[DATTN], o[SDV]);
    t_check(st == NATTEN_STATUS_SUCCESS, "%s %s split: %s", c->name, t_dtype_name(p->dtype), natten_last_error_message());
}

int main(void) {
    static const natten_dtype dts[] = {NATTEN_DTYPE_F32, NATTEN_DTYPE_F16, NATTEN_DTYPE_BF16};
    t_rng rng;
    t_rng_seed(&rng, 4242);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci)
        for (size_t di = 0; di < sizeof dts / sizeof dts[0]; ++di) {
            const t_case *c = &cases[ci];
            int32_t vbuf[16];
            run lo, hi;
            t_case_problem(c, dts[di], NATTEN_IMPL_REFERENCE, &rng, vbuf, &lo.p);
            hi.p = lo.p;
            hi.p.dtype = NATTEN_DTYPE_F64;
            for (int j = 0; j < N_IN; ++j) {
                tbuf_init(&lo.in[j], &lo.p, in_kind[j], (int)(j + ci) % T_NUM_LAYOUTS);
                tbuf_init(&hi.in[j], &hi.p, in_kind[j], T_CONTIG);
                tbuf_fill_random(&lo.in[j], &rng, j == ATTN ? 0.0 : -1.5, 1.5);
                double *x = (double *)malloc(sizeof(double) * (size_t)lo.in[j].count);
                tbuf_to_double(&lo.in[j], x);
                tbuf_from_double(&hi.in[j], x);
                free(x);
            }
            for (int j = 0; j < N_OUT; ++j) {
                tbuf_init(&lo.out[j], &lo.p, out_kind[j], (int)(j + di) % T_NUM_LAYOUTS);
                tbuf_init(&hi.out[j], &hi.p, out_kind[j], T_CONTIG);
            }
            run_all(&hi, c);
            run_all(&lo, c);
            const double tol = dts[di] == NATTEN_DTYPE_F32 ? 1e-5 : dts[di] == NATTEN_DTYPE_F16 ? 1e-2 : 6e-2;
            for (int j = 0; j < N_OUT; ++j) {
                const int extra = lo.p.num_extra_kv > 0;
                if ((j == DRPB || j == SDRPB) && !c->rpb) continue;
                if ((j == DEK || j == DEV) && !extra) continue;
                if (j >= LOGITS && extra) continue;
                double *want = (double *)malloc(sizeof(double) * (size_t)hi.out[j].count);
                tbuf_to_double(&hi.out[j], want);
                char what[200];
                snprintf(what, sizeof what, "%s %s: %s vs f64", c->name, t_dtype_name(dts[di]), out_name[j]);
                /* relative to the largest magnitude of the quantity (sums of many terms) */
                double scale = 0;
                for (int64_t e = 0; e < hi.out[j].count; ++e)
                    if (isfinite(want[e]) && fabs(want[e]) > scale) scale = fabs(want[e]);
                t_compare(what, &lo.out[j], want, tol * (1 + scale), tol);
                free(want);
            }
            for (int j = 0; j < N_IN; ++j) tbuf_free(&lo.in[j]), tbuf_free(&hi.in[j]);
            for (int j = 0; j < N_OUT; ++j) tbuf_free(&lo.out[j]), tbuf_free(&hi.out[j]);
        }
    return t_summary("test_dtypes");
}
