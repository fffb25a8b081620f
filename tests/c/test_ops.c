/*
 * test_ops.c -- reference forward ops (fused, QK, AV) against the oracle's
 * dense masked attention, over ranks 1-3, every dtype, strided layouts,
 * dilation with uneven groups, causal axes, even/non-square kernels, both
 * strides, GQA/MQA, extra KV, RPB and varlen; plus K == extent against
 * plain dense attention written out here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

static const t_case cases[] = {
    {"1d basic", 1, 2, 2, 0, 4, 0, {8}, {3}},
    {"1d K=L", 1, 1, 2, 0, 3, 0, {7}, {7}},
    {"1d dilation uneven L=9 d=2", 1, 1, 1, 0, 3, 0, {9}, {3}, {2}},
    {"1d dilation uneven L=13 d=4", 1, 1, 2, 0, 2, 0, {13}, {3}, {4}},
    {"1d even K dilated", 1, 1, 1, 0, 3, 0, {11}, {2}, {3}},
    {"1d even K=4", 1, 2, 1, 0, 3, 0, {8}, {4}},
    {"1d causal", 1, 1, 2, 0, 3, 0, {8}, {3}, .causal = {1}},
    {"1d causal dilated", 1, 1, 1, 0, 3, 0, {9}, {3}, {2}, .causal = {1}},
    {"1d causal even K", 1, 1, 1, 0, 3, 0, {7}, {4}, .causal = {1}},
    {"1d gna s=3", 1, 1, 1, 0, 3, 0, {8}, {3}, .gs = {3}},
    {"1d gna even K s=2", 1, 1, 1, 0, 3, 0, {8}, {4}, .gs = {2}},
    {"1d gna blocked s=K", 1, 1, 1, 0, 3, 0, {8}, {4}, .gs = {4}},
    {"1d gna causal s=2", 1, 1, 1, 0, 3, 0, {8}, {3}, .gs = {2}, .causal = {1}},
    {"1d gna dilated", 1, 1, 1, 0, 3, 0, {11}, {3}, {2}, {2}},
    {"1d out_stride 2", 1, 1, 2, 0, 3, 0, {9}, {3}, .os = {2}},
    {"1d out_stride 3 causal", 1, 1, 1, 0, 3, 0, {10}, {3}, .os = {3}, .causal = {1}},
    {"1d both strides", 1, 1, 1, 0, 3, 0, {10}, {4}, .gs = {2}, .os = {3}},
    {"1d GQA 2", 1, 1, 4, 2, 3, 0, {7}, {3}},
    {"1d GQA 4 (MQA)", 1, 1, 4, 1, 3, 0, {7}, {3}},
    {"1d Dv != D", 1, 1, 2, 0, 3, 5, {7}, {3}},
    {"1d extra KV", 1, 2, 2, 0, 3, 0, {7}, {3}, .extra = 3},
    {"1d extra KV + GQA + causal", 1, 1, 4, 2, 3, 2, {7}, {3}, .causal = {1}, .extra = 2},
    {"1d extra KV + out_stride", 1, 1, 1, 0, 3, 0, {9}, {3}, .os = {2}, .extra = 4},
    {"1d rpb", 1, 1, 2, 0, 3, 0, {9}, {3}, .rpb = 1},
    {"1d rpb dilated causal", 1, 1, 2, 0, 3, 0, {9}, {3}, {2}, .causal = {1}, .rpb = 1},
    {"1d rpb even K out_stride", 1, 1, 1, 0, 3, 0, {9}, {4}, .os = {2}, .rpb = 1},
    {"1d varlen", 1, 3, 2, 0, 3, 0, {9}, {3}, .varlen = 1},
    {"1d varlen causal dilated", 1, 3, 1, 0, 3, 0, {12}, {3}, {2}, .causal = {1}, .varlen = 1},
    {"1d varlen extra rpb", 1, 3, 2, 0, 3, 0, {9}, {3}, .rpb = 1, .extra = 2, .varlen = 1},
    {"1d varlen out_stride", 1, 3, 1, 0, 3, 0, {10}, {3}, .os = {2}, .varlen = 1},
    {"1d explicit scale", 1, 1, 1, 0, 3, 0, {7}, {3}, .scale = 0.7},
    {"1d scale 0", 1, 1, 1, 0, 3, 0, {7}, {3}, .scale = T_SCALE_ZERO},
    {"2d square", 2, 1, 2, 0, 3, 0, {6, 6}, {3, 3}},
    {"2d non-square", 2, 1, 1, 0, 3, 0, {7, 9}, {3, 5}, {2, 1}},
    {"2d even kernels", 2, 1, 1, 0, 3, 0, {6, 7}, {2, 4}},
    {"2d causal axis 0", 2, 1, 1, 0, 3, 0, {6, 5}, {3, 3}, .causal = {1, 0}},
    {"2d causal axis 1", 2, 1, 1, 0, 3, 0, {5, 6}, {3, 3}, .causal = {0, 1}},
    {"2d causal both dilated", 2, 1, 1, 0, 3, 0, {7, 8}, {3, 2}, {2, 3}, .causal = {1, 1}},
    {"2d gna", 2, 1, 1, 0, 3, 0, {8, 7}, {3, 4}, .gs = {2, 3}},
    {"2d out_stride", 2, 1, 2, 0, 3, 0, {7, 8}, {3, 3}, .os = {2, 3}},
    {"2d both strides causal", 2, 1, 1, 0, 3, 0, {8, 7}, {4, 3}, .gs = {2, 1}, .os = {1, 2}, .causal = {0, 1}},
    {"2d GQA extra rpb", 2, 2, 4, 2, 3, 0, {5, 6}, {3, 3}, .rpb = 1, .extra = 2},
    {"2d rpb dilated", 2, 1, 2, 0, 3, 0, {7, 6}, {3, 2}, {2, 3}, .rpb = 1},
    {"2d varlen", 2, 3, 1, 0, 3, 0, {6, 7}, {3, 3}, .varlen = 1},
    {"2d K=X", 2, 1, 1, 0, 3, 0, {4, 5}, {4, 5}},
    {"3d basic", 3, 1, 1, 0, 3, 0, {4, 5, 6}, {2, 3, 3}, {1, 1, 2}},
    {"3d causal time", 3, 1, 2, 0, 2, 0, {4, 4, 5}, {3, 3, 3}, .causal = {1, 0, 0}},
    {"3d strides", 3, 1, 1, 0, 2, 0, {5, 4, 6}, {3, 2, 3}, .gs = {1, 2, 1}, .os = {2, 1, 3}},
    {"3d GQA rpb extra", 3, 1, 2, 1, 2, 3, {3, 4, 4}, {3, 3, 2}, .rpb = 1, .extra = 2},
    {"3d varlen causal", 3, 2, 1, 0, 2, 0, {4, 5, 5}, {2, 3, 3}, .causal = {0, 1, 0}, .varlen = 1},
};

static const natten_dtype dtypes[] = {NATTEN_DTYPE_F32, NATTEN_DTYPE_F16, NATTEN_DTYPE_BF16, NATTEN_DTYPE_F64};

static double *dup_doubles(const tbuf *tb) {
    double *d = (double *)malloc(sizeof(double) * (size_t)(tb->count > 0 ? tb->count : 1));
    tbuf_to_double(tb, d);
    return d;
}

static void run_case(const t_case *c, natten_dtype dt, int layout, t_rng *rng) {
    natten_problem p;
    int32_t vbuf[64];
    char desc[512], what[700];
    t_case_problem(c, dt, NATTEN_IMPL_REFERENCE, rng, vbuf, &p);
    t_problem_str(&p, desc, sizeof desc);
    double atol, rtol, latol, lrtol;
    t_tol(dt, &atol, &rtol);
    t_tol(dt == NATTEN_DTYPE_F64 ? dt : NATTEN_DTYPE_F32, &latol, &lrtol);

    tbuf q, k, v, rpb, ek, ev, out, lse;
    tbuf_init(&q, &p, NATTEN_TENSOR_Q, layout);
    tbuf_init(&k, &p, NATTEN_TENSOR_K, (layout + 1) % T_NUM_LAYOUTS);
    tbuf_init(&v, &p, NATTEN_TENSOR_V, (layout + 2) % T_NUM_LAYOUTS);
    tbuf_init(&rpb, &p, NATTEN_TENSOR_RPB, layout);
    tbuf_init(&ek, &p, NATTEN_TENSOR_EXTRA_K, layout);
    tbuf_init(&ev, &p, NATTEN_TENSOR_EXTRA_V, (layout + 1) % T_NUM_LAYOUTS);
    tbuf_init(&out, &p, NATTEN_TENSOR_OUT, (layout + 1) % T_NUM_LAYOUTS);
    tbuf_init(&lse, &p, NATTEN_TENSOR_LSE, (layout + 2) % T_NUM_LAYOUTS);
    tbuf_fill_random(&q, rng, -1.5, 1.5);
    tbuf_fill_random(&k, rng, -1.5, 1.5);
    tbuf_fill_random(&v, rng, -1.0, 1.0);
    tbuf_fill_random(&rpb, rng, -1.0, 1.0);
    tbuf_fill_random(&ek, rng, -1.5, 1.5);
    tbuf_fill_random(&ev, rng, -1.0, 1.0);
    tbuf_snapshot(&out);
    tbuf_snapshot(&lse);
    double *dq = dup_doubles(&q), *dk = dup_doubles(&k), *dv = dup_doubles(&v);
    double *drpb = dup_doubles(&rpb), *dek = dup_doubles(&ek), *dev = dup_doubles(&ev);
    double *want_out = (double *)malloc(sizeof(double) * (size_t)out.count);
    double *want_lse = (double *)malloc(sizeof(double) * (size_t)lse.count);
    const int extra = p.num_extra_kv > 0;

    /* fused forward */
    oracle_fused(&p, dq, dk, dv, c->rpb ? drpb : NULL, extra ? dek : NULL, extra ? dev : NULL, want_out, want_lse);
    natten_status st = natten_na_forward(&p, &q.t, &k.t, &v.t, c->rpb ? &rpb.t : NULL, extra ? &ek.t : NULL,
                                         extra ? &ev.t : NULL, &out.t, &lse.t);
    t_check(st == NATTEN_STATUS_SUCCESS, "%s [%s]: na_forward status %s: %s", c->name, desc,
            natten_status_string(st), natten_last_error_message());
    snprintf(what, sizeof what, "%s [%s] layout %d: na_forward out", c->name, desc, layout);
    t_compare(what, &out, want_out, atol, rtol);
    snprintf(what, sizeof what, "%s [%s] layout %d: na_forward lse", c->name, desc, layout);
    t_compare(what, &lse, want_lse, latol, lrtol);
    t_check(tbuf_gaps_unchanged(&out) && tbuf_gaps_unchanged(&lse), "%s [%s]: na_forward wrote outside the views",
            c->name, desc);

    /* the same without lse */
    tbuf_fill_sentinel(&out);
    st = natten_na_forward(&p, &q.t, &k.t, &v.t, c->rpb ? &rpb.t : NULL, extra ? &ek.t : NULL,
                           extra ? &ev.t : NULL, &out.t, NULL);
    snprintf(what, sizeof what, "%s [%s]: na_forward out (lse NULL)", c->name, desc);
    t_check(st == NATTEN_STATUS_SUCCESS, "%s: status", what);
    t_compare(what, &out, want_out, atol, rtol);

    if (!extra) {
        /* split QK */
        tbuf logits, attn, aout;
        tbuf_init(&logits, &p, NATTEN_TENSOR_LOGITS, (layout + 2) % T_NUM_LAYOUTS);
        tbuf_init(&attn, &p, NATTEN_TENSOR_LOGITS, (layout + 1) % T_NUM_LAYOUTS);
        tbuf_init(&aout, &p, NATTEN_TENSOR_OUT, layout);
        tbuf_snapshot(&logits);
        tbuf_snapshot(&aout);
        double *want_logits = (double *)malloc(sizeof(double) * (size_t)logits.count);
        oracle_qk(&p, dq, dk, c->rpb ? drpb : NULL, want_logits);
        st = natten_qk_forward(&p, &q.t, &k.t, c->rpb ? &rpb.t : NULL, &logits.t);
        t_check(st == NATTEN_STATUS_SUCCESS, "%s: qk_forward status %s: %s", c->name, natten_status_string(st),
                natten_last_error_message());
        snprintf(what, sizeof what, "%s [%s] layout %d: qk_forward logits", c->name, desc, layout);
        t_compare(what, &logits, want_logits, atol, rtol);
        t_check(tbuf_gaps_unchanged(&logits), "%s: qk_forward wrote outside the view", c->name);

        /* split AV with arbitrary weights (masked slots carry garbage that must be ignored) */
        tbuf_fill_random(&attn, rng, 0.0, 1.0);
        double *da = dup_doubles(&attn);
        double *want_av = (double *)malloc(sizeof(double) * (size_t)aout.count);
        oracle_av(&p, da, dv, want_av);
        st = natten_av_forward(&p, &attn.t, &v.t, &aout.t);
        t_check(st == NATTEN_STATUS_SUCCESS, "%s: av_forward status %s: %s", c->name, natten_status_string(st),
                natten_last_error_message());
        snprintf(what, sizeof what, "%s [%s] layout %d: av_forward out", c->name, desc, layout);
        t_compare(what, &aout, want_av, atol, rtol);
        t_check(tbuf_gaps_unchanged(&aout), "%s: av_forward wrote outside the view", c->name);

        /* softmax(qk) then av equals the fused op (no extra KV) */
        if (dt == NATTEN_DTYPE_F64) {
            const int64_t kk = natten_problem_kernel_volume(&p), rows = logits.count / kk;
            double *pr = (double *)malloc(sizeof(double) * (size_t)logits.count);
            for (int64_t r = 0; r < rows; ++r) {
                double m = -INFINITY, s = 0;
                for (int64_t n = 0; n < kk; ++n) m = fmax(m, tbuf_get(&logits, r * kk + n));
                for (int64_t n = 0; n < kk; ++n) {
                    const double l = tbuf_get(&logits, r * kk + n);
                    pr[r * kk + n] = (m == -INFINITY || l == -INFINITY) ? 0.0 : exp(l - m);
                    s += pr[r * kk + n];
                }
                for (int64_t n = 0; n < kk; ++n) pr[r * kk + n] = s > 0 ? pr[r * kk + n] / s : 0.0;
            }
            tbuf_from_double(&attn, pr);
            natten_av_forward(&p, &attn.t, &v.t, &aout.t);
            snprintf(what, sizeof what, "%s: softmax(qk) . v == fused", c->name);
            t_compare(what, &aout, want_out, 1e-12, 1e-10);
            free(pr);
        }
        free(want_logits), free(da), free(want_av);
        tbuf_free(&logits), tbuf_free(&attn), tbuf_free(&aout);
    }

    /* varlen: rows outside each sample exactly 0 / -inf (the oracle says so too; check exactness) */
    if (p.varlen_extent) {
        int exact = 1;
        for (int64_t i = 0; i < lse.count; ++i)
            if (want_lse[i] == -INFINITY && tbuf_get(&lse, i) != -INFINITY) exact = 0;
        for (int64_t i = 0; i < out.count; ++i)
            if (want_lse[i / p.head_dim_v] == -INFINITY && tbuf_get(&out, i) != 0.0) exact = 0;
        t_check(exact, "%s: varlen masked rows are exactly 0 / -inf", c->name);
    }

    free(dq), free(dk), free(dv), free(drpb), free(dek), free(dev), free(want_out), free(want_lse);
    tbuf_free(&q), tbuf_free(&k), tbuf_free(&v), tbuf_free(&rpb), tbuf_free(&ek), tbuf_free(&ev);
    tbuf_free(&out), tbuf_free(&lse);
}

/* K == extent on every axis (non-causal): plain softmax attention over all positions. */
static void test_dense(t_rng *rng) {
    const t_case dense[] = {
        {"dense 1d", 1, 2, 2, 1, 3, 0, {6}, {6}},
        {"dense 2d", 2, 1, 2, 0, 3, 2, {3, 4}, {3, 4}},
        {"dense 3d", 3, 1, 1, 0, 2, 0, {2, 3, 3}, {2, 3, 3}},
        {"dense 2d gna", 2, 1, 1, 0, 2, 0, {4, 3}, {4, 3}, .gs = {2, 3}},
    };
    for (size_t ci = 0; ci < sizeof dense / sizeof dense[0]; ++ci) {
        const t_case *c = &dense[ci];
        natten_problem p;
        t_case_problem(c, NATTEN_DTYPE_F64, NATTEN_IMPL_REFERENCE, rng, NULL, &p);
        tbuf q, k, v, out, lse;
        tbuf_init(&q, &p, NATTEN_TENSOR_Q, T_PADDED);
        tbuf_init(&k, &p, NATTEN_TENSOR_K, T_PERMUTED);
        tbuf_init(&v, &p, NATTEN_TENSOR_V, T_CONTIG);
        tbuf_init(&out, &p, NATTEN_TENSOR_OUT, T_CONTIG);
        tbuf_init(&lse, &p, NATTEN_TENSOR_LSE, T_CONTIG);
        tbuf_fill_random(&q, rng, -2, 2);
        tbuf_fill_random(&k, rng, -2, 2);
        tbuf_fill_random(&v, rng, -1, 1);
        natten_status st = natten_na_forward(&p, &q.t, &k.t, &v.t, NULL, NULL, NULL, &out.t, &lse.t);
        t_check(st == NATTEN_STATUS_SUCCESS, "%s: status", c->name);
        const int64_t S = q.count / (p.batch * p.heads * p.head_dim); /* tokens per sample */
        const int64_t H = p.heads, G = p.heads / p.kv_heads, D = p.head_dim, Dv = p.head_dim_v;
        double *want = (double *)malloc(sizeof(double) * (size_t)out.count);
        double *wl = (double *)malloc(sizeof(double) * (size_t)lse.count);
        for (int64_t b = 0; b < p.batch; ++b)
            for (int64_t i = 0; i < S; ++i)
                for (int64_t h = 0; h < H; ++h) {
                    long double m = -INFINITY, s = 0, acc[8] = {0};
                    long double lg[64];
                    for (int64_t j = 0; j < S; ++j) {
                        long double dot = 0;
                        for (int64_t c2 = 0; c2 < D; ++c2)
                            dot += (long double)tbuf_get(&q, ((b * S + i) * H + h) * D + c2) *
                                   tbuf_get(&k, ((b * S + j) * p.kv_heads + h / G) * D + c2);
                        lg[j] = dot / sqrtl((long double)D);
                        if (lg[j] > m) m = lg[j];
                    }
                    for (int64_t j = 0; j < S; ++j) {
                        const long double w = expl(lg[j] - m);
                        s += w;
                        for (int64_t c2 = 0; c2 < Dv; ++c2)
                            acc[c2] += w * tbuf_get(&v, ((b * S + j) * p.kv_heads + h / G) * Dv + c2);
                    }
                    for (int64_t c2 = 0; c2 < Dv; ++c2) want[((b * S + i) * H + h) * Dv + c2] = (double)(acc[c2] / s);
                    wl[(b * S + i) * H + h] = (double)(m + logl(s));
                }
        char what[128];
        snprintf(what, sizeof what, "%s: out == dense attention", c->name);
        t_compare(what, &out, want, 1e-12, 1e-10);
        snprintf(what, sizeof what, "%s: lse == dense logsumexp", c->name);
        t_compare(what, &lse, wl, 1e-12, 1e-10);
        free(want), free(wl);
        tbuf_free(&q), tbuf_free(&k), tbuf_free(&v), tbuf_free(&out), tbuf_free(&lse);
    }
}

int main(void) {
    t_rng rng;
    t_rng_seed(&rng, 20261127);
    int runs = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci)
        for (size_t di = 0; di < sizeof dtypes / sizeof dtypes[0]; ++di, ++runs)
            run_case(&cases[ci], dtypes[di], (int)((ci + di) % T_NUM_LAYOUTS), &rng);
    test_dense(&rng);
    printf("test_ops: %d case x dtype runs\n", runs);
    return t_summary("test_ops");
}
