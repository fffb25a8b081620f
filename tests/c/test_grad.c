/*
 * test_grad.c -- gradients of every op (fused backward with RPB and extra KV,
 * QK backward, AV backward) in float64 against central finite differences of
 * the oracle's forward.  Where the finite difference is exactly 0 (rows no
 * output reads, keys no query sees, varlen padding) the gradient must be
 * exactly 0 too.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

static const t_case cases[] = {
    {"1d basic", 1, 2, 2, 0, 3, 0, {7}, {3}},
    {"1d causal dilated", 1, 1, 2, 0, 2, 0, {9}, {3}, {2}, .causal = {1}},
    {"1d gna causal even K", 1, 1, 1, 0, 2, 0, {8}, {4}, .gs = {2}, .causal = {1}},
    {"1d both strides", 1, 1, 1, 0, 2, 0, {10}, {4}, .gs = {2}, .os = {3}},
    {"1d MQA Dv != D", 1, 1, 4, 1, 2, 3, {6}, {3}},
    {"1d extra KV GQA", 1, 2, 4, 2, 2, 0, {6}, {3}, .extra = 2},
    {"1d rpb dilated causal", 1, 1, 2, 0, 2, 0, {9}, {3}, {2}, .causal = {1}, .rpb = 1},
    {"1d rpb out_stride", 1, 1, 1, 0, 2, 0, {8}, {3}, .os = {2}, .rpb = 1},
    {"1d varlen extra rpb", 1, 3, 1, 0, 2, 0, {8}, {3}, .rpb = 1, .extra = 2, .varlen = 1},
    {"1d scale 0.6", 1, 1, 1, 0, 2, 0, {6}, {3}, .scale = 0.6},
    {"2d non-square even causal", 2, 1, 1, 0, 2, 0, {5, 6}, {2, 3}, {1, 2}, .causal = {0, 1}},
    {"2d GQA extra rpb", 2, 1, 2, 1, 2, 0, {4, 5}, {3, 3}, .rpb = 1, .extra = 2},
    {"2d strides", 2, 1, 1, 0, 2, 0, {5, 6}, {3, 3}, .gs = {1, 3}, .os = {2, 1}},
    {"2d varlen", 2, 2, 1, 0, 2, 0, {5, 5}, {3, 2}, .varlen = 1},
    {"3d rpb causal", 3, 1, 1, 0, 2, 0, {3, 4, 4}, {2, 3, 3}, .causal = {1, 0, 0}, .rpb = 1},
    {"3d extra varlen", 3, 2, 1, 0, 2, 0, {3, 4, 3}, {2, 2, 3}, .extra = 1, .varlen = 1},
};

static const double FD_H = 1e-5, G_ATOL = 1e-7, G_RTOL = 1e-6;

enum { IN_Q, IN_K, IN_V, IN_RPB, IN_EK, IN_EV, IN_N };

typedef struct inputs {
    double *x[IN_N];
    int64_t n[IN_N];
    int present[IN_N];
} inputs;

/* loss = sum W * oracle output of the chosen op */
enum op { OP_FUSED, OP_QK, OP_AV };

static double loss_of(enum op op, const natten_problem *p, inputs *in, const double *attn, const double *W,
                      double *scratch, int64_t n_out) {
    switch (op) {
    case OP_FUSED:
        oracle_fused(p, in->x[IN_Q], in->x[IN_K], in->x[IN_V], in->present[IN_RPB] ? in->x[IN_RPB] : NULL,
                     in->present[IN_EK] ? in->x[IN_EK] : NULL, in->present[IN_EV] ? in->x[IN_EV] : NULL, scratch,
                     NULL);
        break;
    case OP_QK:
        oracle_qk(p, in->x[IN_Q], in->x[IN_K], in->present[IN_RPB] ? in->x[IN_RPB] : NULL, scratch);
        break;
    case OP_AV: oracle_av(p, attn, in->x[IN_V], scratch); break;
    }
    long double s = 0;
    for (int64_t i = 0; i < n_out; ++i)
        if (isfinite(scratch[i])) s += (long double)W[i] * scratch[i];
    return (double)s;
}

static void fd_grad(enum op op, const natten_problem *p, inputs *in, double *attn, const double *W,
                    double *scratch, int64_t n_out, double *x, int64_t n, double *g) {
    for (int64_t i = 0; i < n; ++i) {
        const double keep = x[i];
        x[i] = keep + FD_H;
        const double lp = loss_of(op, p, in, attn, W, scratch, n_out);
        x[i] = keep - FD_H;
        const double lm = loss_of(op, p, in, attn, W, scratch, n_out);
        x[i] = keep;
        g[i] = (lp - lm) / (2 * FD_H);
    }
}

static void check_grad(const char *what, const tbuf *got, const double *fd) {
    t_compare(what, got, fd, G_ATOL, G_RTOL);
    int64_t bad = 0;
    for (int64_t i = 0; i < got->count; ++i)
        if (fd[i] == 0.0 && tbuf_get(got, i) != 0.0) ++bad;
    t_check(bad == 0, "%s: %lld elements nonzero where the gradient is exactly 0", what, (long long)bad);
    t_check(tbuf_gaps_unchanged(got), "%s: wrote outside the view", what);
}

static double *alloc_d(int64_t n) { return (double *)calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }

static void grad_case(const t_case *c, int layout, t_rng *rng) {
    natten_problem p;
    int32_t vbuf[64];
    char desc[512], what[700];
    t_case_problem(c, NATTEN_DTYPE_F64, NATTEN_IMPL_REFERENCE, rng, vbuf, &p);
    t_problem_str(&p, desc, sizeof desc);
    const natten_tensor_kind kinds[IN_N] = {NATTEN_TENSOR_Q,   NATTEN_TENSOR_K,       NATTEN_TENSOR_V,
                                            NATTEN_TENSOR_RPB, NATTEN_TENSOR_EXTRA_K, NATTEN_TENSOR_EXTRA_V};
    const char *names[IN_N] = {"dq", "dk", "dv", "drpb", "dextra_k", "dextra_v"};
    tbuf t[IN_N], gt[IN_N];
    inputs in;
    for (int j = 0; j < IN_N; ++j) {
        tbuf_init(&t[j], &p, kinds[j], (layout + j) % T_NUM_LAYOUTS);
        tbuf_init(&gt[j], &p, kinds[j], (layout + j + 1) % T_NUM_LAYOUTS);
        tbuf_fill_random(&t[j], rng, j == IN_V || j == IN_EV ? -1.0 : -1.5, j == IN_V || j == IN_EV ? 1.0 : 1.5);
        tbuf_snapshot(&gt[j]);
        in.n[j] = t[j].count;
        in.x[j] = alloc_d(t[j].count);
        tbuf_to_double(&t[j], in.x[j]);
        in.present[j] = (j == IN_RPB) ? c->rpb : (j >= IN_EK ? p.num_extra_kv > 0 : 1);
    }
    const int extra = p.num_extra_kv > 0;
    tbuf out, lse, dout;
    tbuf_init(&out, &p, NATTEN_TENSOR_OUT, layout);
    tbuf_init(&lse, &p, NATTEN_TENSOR_LSE, (layout + 1) % T_NUM_LAYOUTS);
    tbuf_init(&dout, &p, NATTEN_TENSOR_OUT, (layout + 2) % T_NUM_LAYOUTS);
    tbuf_fill_random(&dout, rng, -1, 1);
    double *W = alloc_d(dout.count);
    tbuf_to_double(&dout, W);
    const int64_t kk = natten_problem_kernel_volume(&p);
    const int64_t n_rows = lse.count, n_logits = n_rows * kk;
    double *scratch = alloc_d(n_logits > out.count ? n_logits : out.count);
    double *fd = alloc_d(64 * 1024);

    /* ---- fused ---- */
    natten_status st = natten_na_forward(&p, &t[IN_Q].t, &t[IN_K].t, &t[IN_V].t, c->rpb ? &t[IN_RPB].t : NULL,
                                         extra ? &t[IN_EK].t : NULL, extra ? &t[IN_EV].t : NULL, &out.t, &lse.t);
    st = st ? st
            : natten_na_backward(&p, &t[IN_Q].t, &t[IN_K].t, &t[IN_V].t, c->rpb ? &t[IN_RPB].t : NULL,
                                 extra ? &t[IN_EK].t : NULL, extra ? &t[IN_EV].t : NULL, &out.t, &lse.t, &dout.t,
                                 &gt[IN_Q].t, &gt[IN_K].t, &gt[IN_V].t, c->rpb ? &gt[IN_RPB].t : NULL,
                                 extra ? &gt[IN_EK].t : NULL, extra ? &gt[IN_EV].t : NULL);
    t_check(st == NATTEN_STATUS_SUCCESS, "%s: fused fwd/bwd status %s: %s", c->name, natten_status_string(st),
            natten_last_error_message());
    for (int j = 0; j < IN_N; ++j) {
        if (!in.present[j]) continue;
        fd_grad(OP_FUSED, &p, &in, NULL, W, scratch, out.count, in.x[j], in.n[j], fd);
        snprintf(what, sizeof what, "%s [%s] layout %d: na_backward %s", c->name, desc, layout, names[j]);
        check_grad(what, &gt[j], fd);
    }

    if (!extra) {
        natten_problem ps = p;
        /* ---- QK: loss = sum over valid slots of W * logits; masked slots of dlogits hold junk ---- */
        tbuf dl;
        tbuf_init(&dl, &p, NATTEN_TENSOR_LOGITS, layout);
        double *wl = alloc_d(n_logits), *logits = alloc_d(n_logits);
        oracle_qk(&ps, in.x[IN_Q], in.x[IN_K], c->rpb ? in.x[IN_RPB] : NULL, logits);
        for (int64_t i = 0; i < n_logits; ++i) wl[i] = isfinite(logits[i]) ? t_rng_uniform(rng, -1, 1) : 1e3;
        tbuf_from_double(&dl, wl);
        for (int j = 0; j < IN_N; ++j) tbuf_fill_sentinel(&gt[j]), tbuf_snapshot(&gt[j]);
        st = natten_qk_backward(&ps, &t[IN_Q].t, &t[IN_K].t, &dl.t, &gt[IN_Q].t, &gt[IN_K].t,
                                c->rpb ? &gt[IN_RPB].t : NULL);
        t_check(st == NATTEN_STATUS_SUCCESS, "%s: qk_backward status %s: %s", c->name, natten_status_string(st),
                natten_last_error_message());
        for (int j = IN_Q; j <= IN_RPB; ++j) {
            if (j == IN_V || !in.present[j]) continue;
            fd_grad(OP_QK, &ps, &in, NULL, wl, scratch, n_logits, in.x[j], in.n[j], fd);
            snprintf(what, sizeof what, "%s [%s] layout %d: qk_backward %s", c->name, desc, layout, names[j]);
            check_grad(what, &gt[j], fd);
        }

        /* ---- AV: loss = sum W * out over attn (junk at masked slots) and v ---- */
        tbuf attn, dattn;
        tbuf_init(&attn, &p, NATTEN_TENSOR_LOGITS, (layout + 1) % T_NUM_LAYOUTS);
        tbuf_init(&dattn, &p, NATTEN_TENSOR_LOGITS, (layout + 2) % T_NUM_LAYOUTS);
        tbuf_fill_random(&attn, rng, 0, 1);
        tbuf_snapshot(&dattn);
        double *da = alloc_d(n_logits);
        tbuf_to_double(&attn, da);
        tbuf_fill_sentinel(&gt[IN_V]), tbuf_snapshot(&gt[IN_V]);
        st = natten_av_backward(&ps, &attn.t, &t[IN_V].t, &dout.t, &dattn.t, &gt[IN_V].t);
        t_check(st == NATTEN_STATUS_SUCCESS, "%s: av_backward status %s: %s", c->name, natten_status_string(st),
                natten_last_error_message());
        fd_grad(OP_AV, &ps, &in, da, W, scratch, out.count, da, n_logits, fd);
        snprintf(what, sizeof what, "%s [%s] layout %d: av_backward dattn", c->name, desc, layout);
        check_grad(what, &dattn, fd);
        fd_grad(OP_AV, &ps, &in, da, W, scratch, out.count, in.x[IN_V], in.n[IN_V], fd);
        snprintf(what, sizeof what, "%s [%s] layout %d: av_backward dv", c->name, desc, layout);
        check_grad(what, &gt[IN_V], fd);
        free(da), free(wl), free(logits);
        tbuf_free(&attn), tbuf_free(&dattn), tbuf_free(&dl);
    }

    for (int j = 0; j < IN_N; ++j) tbuf_free(&t[j]), tbuf_free(&gt[j]), free(in.x[j]);
    tbuf_free(&out), tbuf_free(&lse), tbuf_free(&dout);
    free(W), free(scratch), free(fd);
}

int main(void) {
    t_rng rng;
    t_rng_seed(&rng, 7);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci) grad_case(&cases[ci], (int)(ci % T_NUM_LAYOUTS), &rng);
    return t_summary("test_grad");
}
