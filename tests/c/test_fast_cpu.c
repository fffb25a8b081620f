/*
 * test_fast_cpu.c -- the fast CPU kernels (impl FAST) against
 *   - the support oracle (dense masked attention in long double) for the
 *     fused forward;
 *   - the reference kernels (impl REFERENCE through the public API) for the
 *     fused forward and backward, whenever the reference runs the problem;
 *   - directional finite differences of the oracle's forward (float64) for
 *     every gradient of the fused backward (f32 problems);
 * at every ISA level this CPU runs (natten_cpu_isa_set), and bitwise equality
 * of every output across thread counts 1, 2, 3, 7.
 *
 * Sizes sit around the kernels' blocking: 16-row (AVX-512) / 8-row (AVX2) dot
 * groups with 4-row tails, 64/32-channel wsum passes with masked tails, and
 * 32-query task segments.
 *
 * Tolerances (|got - want| <= atol + rtol*|want|):
 *   forward vs oracle/reference: t_tol(dtype) from support, with f32 widened
 *     to 2e-5 (f32 accumulation and a degree-6 polynomial exp, vs long double);
 *   lse: 2e-5 abs+rel (f32 always);
 *   backward vs reference: f32 1e-4, f16 4e-3, bf16 3e-2, scaled by the
 *     largest |want| of the tensor (gradients are sums of many terms);
 *   finite differences: 1e-3 relative to the largest of |analytic|, |numeric|
 *     and 1e-3 (the directional derivative sums every element's error).
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/dtype.h"
#include "core/window.h"
#if defined(__x86_64__) && !defined(NATTEN_HAVE_X86)
#define NATTEN_HAVE_X86 1 /* the tile tables' declarations (the library's own build defines it) */
#endif
#include "cpu/bwd_block.h"
#include "support.h"

static int n_ref_compared = 0;
/* forward checks only (the generic-forward mode: the backward it feeds is the
 * blocked mode's code; keeps the suite inside its time limit under ASan) */
static int fwd_only = 0;

typedef t_fcase cfg;

typedef struct tensors {
    tbuf q, k, v, rpb, ek, ev, out, lse;
    tbuf dout, dq, dk, dv, drpb, dek, dev;
    int has_rpb, has_extra;
} tensors;

static void tensors_init(tensors *T, const natten_problem *p, const cfg *c, t_rng *rng) {
    memset(T, 0, sizeof *T);
    const int L = c->layout;
    tbuf_init(&T->q, p, NATTEN_TENSOR_Q, L);
    tbuf_init(&T->k, p, NATTEN_TENSOR_K, L);
    tbuf_init(&T->v, p, NATTEN_TENSOR_V, L);
    tbuf_init(&T->out, p, NATTEN_TENSOR_OUT, L);
    tbuf_init(&T->lse, p, NATTEN_TENSOR_LSE, L);
    tbuf_init(&T->dout, p, NATTEN_TENSOR_OUT, L);
    tbuf_init(&T->dq, p, NATTEN_TENSOR_Q, L);
    tbuf_init(&T->dk, p, NATTEN_TENSOR_K, L);
    tbuf_init(&T->dv, p, NATTEN_TENSOR_V, L);
    tbuf_fill_random(&T->q, rng, -1.5, 1.5);
    tbuf_fill_random(&T->k, rng, -1.5, 1.5);
    tbuf_fill_random(&T->v, rng, -1, 1);
    tbuf_fill_random(&T->dout, rng, -1, 1);
    T->has_rpb = c->rpb;
    T->has_extra = c->NE > 0;
    if (T->has_rpb) {
        tbuf_init(&T->rpb, p, NATTEN_TENSOR_RPB, L);
        tbuf_init(&T->drpb, p, NATTEN_TENSOR_RPB, L);
        tbuf_fill_random(&T->rpb, rng, -1, 1);
    }
    if (T->has_extra) {
        tbuf_init(&T->ek, p, NATTEN_TENSOR_EXTRA_K, L);
        tbuf_init(&T->ev, p, NATTEN_TENSOR_EXTRA_V, L);
        tbuf_init(&T->dek, p, NATTEN_TENSOR_EXTRA_K, L);
        tbuf_init(&T->dev, p, NATTEN_TENSOR_EXTRA_V, L);
        tbuf_fill_random(&T->ek, rng, -1.5, 1.5);
        tbuf_fill_random(&T->ev, rng, -1, 1);
    }
}

static void tensors_free(tensors *T) {
    tbuf *all[] = {&T->q, &T->k, &T->v, &T->rpb, &T->ek, &T->ev, &T->out, &T->lse,
                   &T->dout, &T->dq, &T->dk, &T->dv, &T->drpb, &T->dek, &T->dev};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
        if (all[i]->mem) tbuf_free(all[i]);
}

static natten_status run_forward(natten_problem *p, tensors *T, natten_impl impl) {
    p->impl = impl;
    return natten_na_forward(p, &T->q.t, &T->k.t, &T->v.t, T->has_rpb ? &T->rpb.t : NULL,
                             T->has_extra ? &T->ek.t : NULL, T->has_extra ? &T->ev.t : NULL,
                             &T->out.t, &T->lse.t);
}

static natten_status run_backward(natten_problem *p, tensors *T, natten_impl impl) {
    p->impl = impl;
    return natten_na_backward(p, &T->q.t, &T->k.t, &T->v.t, T->has_rpb ? &T->rpb.t : NULL,
                              T->has_extra ? &T->ek.t : NULL, T->has_extra ? &T->ev.t : NULL,
                              &T->out.t, &T->lse.t, &T->dout.t, &T->dq.t, &T->dk.t, &T->dv.t,
                              T->has_rpb ? &T->drpb.t : NULL, T->has_extra ? &T->dek.t : NULL,
                              T->has_extra ? &T->dev.t : NULL);
}

/* Output tensors of the backward, in a fixed order. */
static int grad_list(tensors *T, tbuf **g) {
    int n = 0;
    g[n++] = &T->dq;
    g[n++] = &T->dk;
    g[n++] = &T->dv;
    if (T->has_rpb) g[n++] = &T->drpb;
    if (T->has_extra) {
        g[n++] = &T->dek;
        g[n++] = &T->dev;
    }
    return n;
}

static unsigned char *snap_copy(const tbuf *tb) {
    unsigned char *m = malloc(tb->bytes);
    memcpy(m, tb->mem, tb->bytes);
    return m;
}

/* sum(dout * out) from the oracle, with input `which` moved by eps*dir. */
static double oracle_loss(const natten_problem *p, double *in[6], const double *dout, int64_t nout) {
    double *out = malloc((size_t)nout * sizeof(double));
    double *lse = malloc((size_t)(nout + 1) * sizeof(double));
    oracle_fused(p, in[0], in[1], in[2], in[3], in[4], in[5], out, lse);
    double s = 0;
    for (int64_t i = 0; i < nout; ++i) s += dout[i] * out[i];
    free(out);
    free(lse);
    return s;
}

static void check_config(const cfg *c, uint64_t seed) {
    t_rng rng;
    t_rng_seed(&rng, seed);
    int32_t varlen_buf[64];
    natten_problem p = t_fcase_problem(c, varlen_buf, &rng);
    if (natten_problem_validate(&p) != NATTEN_STATUS_SUCCESS) {
        t_check(0, "%s: invalid test problem: %s", c->name, natten_last_error_message());
        return;
    }
    tensors T;
    tensors_init(&T, &p, c, &rng);
    const int64_t nout = T.out.count;

    /* oracle forward on the (storage-rounded) inputs */
    double *qd = t_to_double(&T.q), *kd = t_to_double(&T.k), *vd = t_to_double(&T.v);
    double *rd = T.has_rpb ? t_to_double(&T.rpb) : NULL;
    double *ekd = T.has_extra ? t_to_double(&T.ek) : NULL, *evd = T.has_extra ? t_to_double(&T.ev) : NULL;
    double *want_out = malloc((size_t)nout * sizeof(double));
    double *want_lse = malloc((size_t)T.lse.count * sizeof(double));
    oracle_fused(&p, qd, kd, vd, rd, ekd, evd, want_out, want_lse);
    double atol, rtol;
    t_tol(c->dt, &atol, &rtol);
    if (c->dt == NATTEN_DTYPE_F32) atol = rtol = 2e-5;

    /* reference forward and backward, when the reference runs this problem */
    tensors R;
    int ref_ok = 0;
    {
        t_rng r2;
        t_rng_seed(&r2, seed);
        int32_t vb2[64];
        natten_problem p2 = t_fcase_problem(c, vb2, &r2);
        tensors_init(&R, &p2, c, &r2);
        ref_ok = run_forward(&p2, &R, NATTEN_IMPL_REFERENCE) == NATTEN_STATUS_SUCCESS &&
                 (fwd_only || run_backward(&p2, &R, NATTEN_IMPL_REFERENCE) == NATTEN_STATUS_SUCCESS);
        n_ref_compared += ref_ok;
    }

    const natten_cpu_isa isa0 = natten_cpu_isa_get();
    const int threads[] = {1, 2, 3, 7};
    for (size_t ii = 0; ii < T_NUM_CPU_ISAS; ++ii) {
        if (natten_cpu_isa_set(t_cpu_isas[ii]) != NATTEN_STATUS_SUCCESS) continue;
        const char *iname = natten_cpu_isa_name(t_cpu_isas[ii]);
        unsigned char *base_out = NULL, *base_lse = NULL, *base_g[6] = {0};
        for (size_t ti = 0; ti < 4; ++ti) {
            natten_num_threads_set(threads[ti]);
            tbuf_fill_sentinel(&T.out);
            tbuf_fill_sentinel(&T.lse);
            natten_status st = run_forward(&p, &T, NATTEN_IMPL_FAST);
            t_check(st == NATTEN_STATUS_SUCCESS, "%s [%s, %d thr]: forward status %s: %s", c->name,
                    iname, threads[ti], natten_status_string(st), natten_last_error_message());
            if (st != NATTEN_STATUS_SUCCESS) break;
            /* dout must not depend on the run: backward inputs are the forward's outputs */
            tbuf *g[6];
            const int ng = grad_list(&T, g);
            for (int i = 0; i < ng; ++i) tbuf_fill_sentinel(g[i]);
            if (!fwd_only) {
                st = run_backward(&p, &T, NATTEN_IMPL_FAST);
                t_check(st == NATTEN_STATUS_SUCCESS, "%s [%s, %d thr]: backward status %s: %s", c->name,
                        iname, threads[ti], natten_status_string(st), natten_last_error_message());
            }
            if (ti == 0) {
                char what[256];
                snprintf(what, sizeof what, "%s [%s] out vs oracle", c->name, iname);
                t_check(t_compare(what, &T.out, want_out, atol, rtol), "%s", what);
                snprintf(what, sizeof what, "%s [%s] lse vs oracle", c->name, iname);
                t_check(t_compare(what, &T.lse, want_lse, 2e-5, 2e-5), "%s", what);
                if (ref_ok) {
                    double *ro = t_to_double(&R.out);
                    snprintf(what, sizeof what, "%s [%s] out vs reference", c->name, iname);
                    t_check(t_compare(what, &T.out, ro, atol, rtol), "%s", what);
                    free(ro);
                }
                base_out = snap_copy(&T.out);
                base_lse = snap_copy(&T.lse);
                for (int i = 0; i < ng; ++i) base_g[i] = snap_copy(g[i]);
            } else {
                t_check(memcmp(base_out, T.out.mem, T.out.bytes) == 0,
                        "%s [%s]: out differs between 1 and %d threads", c->name, iname, threads[ti]);
                t_check(memcmp(base_lse, T.lse.mem, T.lse.bytes) == 0,
                        "%s [%s]: lse differs between 1 and %d threads", c->name, iname, threads[ti]);
                for (int i = 0; i < ng; ++i)
                    t_check(memcmp(base_g[i], g[i]->mem, g[i]->bytes) == 0,
                            "%s [%s]: gradient %d differs between 1 and %d threads", c->name, iname,
                            i, threads[ti]);
            }
        }
        /* gradients of the last run (same bits as every thread count) */
        tbuf *g[6];
        const int ng = grad_list(&T, g);
        if (ref_ok && !fwd_only) {
            tbuf *rg[6];
            grad_list(&R, rg);
            for (int i = 0; i < ng; ++i) {
                double *w = t_to_double(rg[i]);
                char what[256];
                snprintf(what, sizeof what, "%s [%s] grad %d vs reference", c->name, iname, i);
                t_check(t_compare_grad(what, g[i], w, c->dt), "%s", what);
                free(w);
            }
        }
        /* directional finite differences through the oracle (f32 problems) */
        if (c->dt == NATTEN_DTYPE_F32 && !fwd_only) {
            double *in[6] = {qd, kd, vd, rd, ekd, evd};
            double *dod = t_to_double(&T.dout);
            for (int i = 0; i < ng; ++i) {
                /* which input does gradient i belong to? */
                int which = i < 3 ? i : (T.has_rpb && i == 3) ? 3 : (i == ng - 2 ? 4 : 5);
                const int64_t cnt = g[i]->count;
                double *dir = malloc((size_t)cnt * sizeof(double));
                double *gd = t_to_double(g[i]);
                double analytic = 0;
                for (int64_t e = 0; e < cnt; ++e) {
                    dir[e] = t_rng_uniform(&rng, -1, 1);
                    analytic += dir[e] * gd[e];
                }
                double *save = malloc((size_t)cnt * sizeof(double));
                memcpy(save, in[which], (size_t)cnt * sizeof(double));
                const double eps = 1e-4;
                for (int64_t e = 0; e < cnt; ++e) in[which][e] = save[e] + eps * dir[e];
                const double lp = oracle_loss(&p, in, dod, nout);
                for (int64_t e = 0; e < cnt; ++e) in[which][e] = save[e] - eps * dir[e];
                const double lm = oracle_loss(&p, in, dod, nout);
                memcpy(in[which], save, (size_t)cnt * sizeof(double));
                const double numeric = (lp - lm) / (2 * eps);
                double scale = fabs(analytic) > fabs(numeric) ? fabs(analytic) : fabs(numeric);
                if (scale < 1e-3) scale = 1e-3;
                t_check(fabs(analytic - numeric) <= 1e-3 * scale,
                        "%s [%s] grad %d: directional derivative %.9g, finite difference %.9g",
                        c->name, iname, i, analytic, numeric);
                free(dir);
                free(gd);
                free(save);
            }
            free(dod);
        }
        free(base_out);
        free(base_lse);
        for (int i = 0; i < 6; ++i) free(base_g[i]);
    }
    natten_cpu_isa_set(isa0);
    free(qd);
    free(kd);
    free(vd);
    free(rd);
    free(ekd);
    free(evd);
    free(want_out);
    free(want_lse);
    tensors_free(&T);
    tensors_free(&R);
}

#define F32 NATTEN_DTYPE_F32
#define F16 NATTEN_DTYPE_F16
#define BF16 NATTEN_DTYPE_BF16

static const cfg configs[] = {
    /* name, rank, B, H, Hkv, D, Dv, L, K, dil, gs, os, causal, NE, rpb, varlen, dt, layout */
    {"1d basic", 1, 1, 2, 2, 16, 16, {37}, {7}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d D=15 (tail)", 1, 2, 2, 1, 15, 17, {33}, {5}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d D=17 Dv=63", 1, 1, 3, 3, 17, 63, {31}, {9}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_PADDED},
    {"1d D=64 K=16", 1, 1, 1, 1, 64, 64, {65}, {16}, {1}, {1}, {1}, {0}, 0, 1, 0, F32, T_CONTIG},
    {"1d K=17 D=65", 1, 1, 2, 1, 65, 65, {40}, {17}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d dilation 3 uneven", 1, 2, 2, 2, 8, 8, {29}, {3}, {3}, {1}, {1}, {0}, 0, 1, 0, F32, T_CONTIG},
    {"1d causal", 1, 1, 2, 2, 32, 32, {33}, {7}, {2}, {1}, {1}, {1}, 0, 1, 0, F32, T_CONTIG},
    {"1d gna stride 3", 1, 1, 2, 2, 8, 8, {23}, {7}, {1}, {3}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d out stride 2", 1, 1, 2, 2, 8, 8, {23}, {5}, {1}, {1}, {2}, {0}, 0, 0, 0, F32, T_PERMUTED},
    {"1d causal gna 2 out 3", 1, 1, 2, 1, 8, 8, {25}, {5}, {2}, {2}, {3}, {1}, 0, 0, 0, F32, T_CONTIG},
    {"1d extra kv", 1, 2, 4, 2, 16, 16, {19}, {5}, {1}, {1}, {1}, {0}, 3, 0, 0, F32, T_CONTIG},
    {"1d extra kv causal rpb", 1, 1, 2, 2, 16, 16, {19}, {5}, {1}, {1}, {1}, {1}, 17, 1, 0, F32, T_PADDED},
    {"1d varlen", 1, 3, 2, 2, 16, 16, {30}, {5}, {2}, {1}, {1}, {0}, 0, 0, 1, F32, T_CONTIG},
    {"2d basic", 2, 1, 2, 2, 16, 16, {9, 11}, {3, 5}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, 0, 1, 0, F32, T_CONTIG},
    {"2d 7x7 D=32", 2, 1, 2, 1, 32, 32, {15, 17}, {7, 7}, {1, 2}, {1, 1}, {1, 1}, {0, 0}, 0, 0, 0, F32, T_CONTIG},
    {"2d causal axis 0", 2, 1, 2, 2, 8, 8, {10, 9}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 0}, 0, 1, 0, F32, T_CONTIG},
    {"2d causal axis 1", 2, 1, 2, 2, 8, 8, {10, 9}, {3, 4}, {2, 1}, {1, 1}, {1, 1}, {0, 1}, 0, 0, 0, F32, T_PADDED},
    {"2d both strides", 2, 2, 4, 2, 8, 8, {12, 10}, {5, 3}, {1, 1}, {2, 3}, {1, 2}, {0, 0}, 2, 0, 0, F32, T_PERMUTED},
    {"2d varlen extra rpb", 2, 2, 2, 2, 8, 8, {10, 12}, {3, 5}, {1, 2}, {1, 1}, {1, 1}, {0, 0}, 2, 1, 1, F32, T_CONTIG},
    {"3d basic", 3, 1, 2, 2, 8, 8, {5, 6, 7}, {3, 3, 3}, {1, 1, 2}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 0, 1, 0, F32, T_CONTIG},
    {"3d causal mixed GQA 4", 3, 1, 4, 1, 16, 16, {6, 5, 7}, {3, 2, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {1, 0, 1}, 0, 0, 0, F32, T_PADDED},
    {"3d strides varlen", 3, 2, 2, 2, 4, 4, {6, 6, 7}, {3, 3, 3}, {1, 2, 1}, {1, 1, 2}, {2, 1, 1}, {0, 0, 0}, 1, 0, 1, F32, T_CONTIG},
    /* long last axes: runs of >= 6 queries with one window shift take the 16-lane tiles */
    {"2d tiles rpb", 2, 1, 2, 2, 32, 32, {9, 40}, {3, 7}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, 0, 1, 0, F32, T_CONTIG},
    {"2d tiles dil 2 GQA", 2, 1, 4, 2, 17, 15, {8, 51}, {3, 7}, {2, 2}, {1, 1}, {1, 1}, {0, 0}, 0, 0, 0, F32, T_PADDED},
    {"2d tiles causal", 2, 1, 2, 2, 16, 16, {6, 45}, {3, 7}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 0, 1, 0, F32, T_CONTIG},
    {"2d tiles varlen", 2, 3, 2, 2, 16, 16, {7, 44}, {3, 5}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, 0, 0, 1, F32, T_CONTIG},
    {"3d tiles", 3, 1, 2, 1, 8, 8, {4, 4, 37}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 0, 1, 0, F32, T_PERMUTED},
    {"2d tiles bf16", 2, 1, 2, 2, 64, 64, {5, 38}, {3, 7}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, 0, 0, 0, BF16, T_CONTIG},
    {"2d tiles f16 gna", 2, 1, 2, 2, 16, 16, {5, 38}, {3, 7}, {1, 1}, {1, 3}, {1, 1}, {0, 0}, 0, 0, 0, F16, T_CONTIG},
    /* key-pass and tile runs of 5, 6, 16 and 17 around the 16-lane tiles (TILE_MIN 6),
     * extents just above K, GQA, causal and GNA on the last axis */
    {"1d runs K3 L7", 1, 1, 2, 2, 16, 16, {7}, {3}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d runs K3 L8", 1, 1, 2, 1, 16, 16, {8}, {3}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d runs K5 L20", 1, 1, 2, 2, 17, 16, {20}, {5}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_PADDED},
    {"1d runs K5 L21", 1, 2, 3, 1, 16, 33, {21}, {5}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d K=L", 1, 1, 2, 2, 16, 16, {7}, {7}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"2d GQA 3 dil 3", 2, 1, 3, 1, 16, 16, {7, 41}, {3, 5}, {2, 3}, {1, 1}, {1, 1}, {0, 0}, 0, 0, 0, F32, T_PERMUTED},
    {"3d causal last", 3, 1, 2, 2, 8, 8, {4, 3, 29}, {3, 3, 5}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 1}, 0, 0, 0, F32, T_CONTIG},
    {"2d causal gna 2 last", 2, 1, 2, 2, 16, 16, {5, 29}, {3, 5}, {1, 1}, {1, 2}, {1, 1}, {0, 1}, 0, 0, 0, F32, T_CONTIG},
    {"1d bf16", 1, 1, 2, 2, 32, 32, {40}, {7}, {1}, {1}, {1}, {0}, 2, 1, 0, BF16, T_CONTIG},
    {"2d bf16 padded", 2, 1, 2, 1, 24, 24, {9, 10}, {3, 5}, {1, 1}, {1, 1}, {1, 1}, {0, 1}, 0, 0, 0, BF16, T_PADDED},
    {"1d f16", 1, 1, 2, 2, 33, 33, {21}, {5}, {2}, {1}, {1}, {0}, 0, 1, 0, F16, T_CONTIG},
    /* blocked forward (no rpb, no extra KV, out stride 1 on the last axis): 16-lane tiles
     * cut at multiples of 16 local indices, runs of 1..17 queries, border and causal-prefix
     * tiles (per-lane offsets, masks), unequal dilation groups, K up to 17 (18: generic) */
    {"blk 1d runs 16+16+16+1", 1, 1, 2, 2, 16, 16, {49}, {7}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"blk 1d L17 D64", 1, 2, 1, 1, 64, 64, {17}, {7}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"blk 1d K17 L18", 1, 1, 2, 1, 8, 8, {18}, {17}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"blk 1d K17 causal", 1, 1, 1, 1, 8, 9, {40}, {17}, {1}, {1}, {1}, {1}, 0, 0, 0, F32, T_PADDED},
    {"blk 1d K18 generic", 1, 1, 2, 2, 8, 8, {40}, {18}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"blk 1d causal dil 3", 1, 2, 2, 1, 8, 8, {53}, {5}, {3}, {1}, {1}, {1}, 0, 0, 0, F32, T_PADDED},
    {"blk 1d dil 5 short groups", 1, 1, 2, 2, 8, 8, {23}, {4}, {5}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"blk 2d lead out stride causal 0", 2, 1, 2, 2, 8, 8, {9, 35}, {3, 7}, {2, 1}, {1, 1}, {2, 1}, {1, 0}, 0, 0, 0, F32, T_PERMUTED},
    {"blk 2d varlen GQA causal 1", 2, 3, 4, 2, 16, 24, {8, 40}, {3, 5}, {1, 2}, {1, 1}, {1, 1}, {0, 1}, 0, 0, 1, F32, T_CONTIG},
    {"blk 2d gna", 2, 1, 2, 2, 16, 16, {7, 37}, {3, 7}, {1, 1}, {2, 3}, {1, 1}, {0, 0}, 0, 0, 0, F32, T_CONTIG},
    {"blk 3d causal bf16", 3, 1, 2, 2, 32, 32, {4, 5, 20}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 1, 1}, 0, 0, 0, BF16, T_PADDED},
    {"blk 3d gna dil f16", 3, 1, 2, 1, 16, 16, {5, 4, 33}, {3, 3, 5}, {1, 1, 2}, {2, 1, 2}, {1, 1, 1}, {0, 0, 0}, 0, 0, 0, F16, T_PERMUTED},
    {"blk 3d varlen f16", 3, 2, 2, 2, 8, 8, {4, 6, 19}, {3, 3, 3}, {1, 2, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 0, 0, 1, F16, T_CONTIG},
    /* 1-D tasks cover 64 positions and pack only their segment's keys: several
     * segments, a segment boundary inside a tile, causal, dilation, varlen, bf16 */
    {"blk 1d L150 segments GQA", 1, 1, 4, 2, 16, 16, {150}, {7}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"blk 1d L131 causal dil 2", 1, 2, 2, 2, 16, 16, {131}, {5}, {2}, {1}, {1}, {1}, 0, 0, 0, F32, T_PADDED},
    {"blk 1d L140 varlen bf16", 1, 3, 2, 2, 16, 16, {140}, {9}, {1}, {1}, {1}, {0}, 0, 0, 1, BF16, T_CONTIG},
    {"3d f16 permuted", 3, 1, 2, 2, 16, 16, {4, 5, 6}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 1, 0, 0, F16, T_PERMUTED},
    /* blocked backward (no rpb, extra KV, varlen, out strides or last-axis dilation): 64-position
     * task segments (packed ranges), 16-key blocks whose border keys add terms of other shifts,
     * leading-axis caches with dilation, GNA and causal windows, GQA groups, K = L = 17 */
    {"bb 1d L150 segments GQA", 1, 1, 4, 2, 16, 8, {150}, {7}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_PADDED},
    {"bb 1d K=L=17 causal", 1, 2, 1, 1, 8, 8, {17}, {17}, {1}, {1}, {1}, {1}, 0, 0, 0, F32, T_CONTIG},
    {"bb 2d causal both L70", 2, 1, 2, 1, 16, 16, {5, 70}, {3, 9}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 0, 0, 0, F32, T_CONTIG},
    {"bb 3d lead dil uneven", 3, 1, 2, 1, 16, 17, {7, 4, 17}, {3, 3, 3}, {2, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 0, 0, 0, F32, T_PERMUTED},
    {"bb 3d gna causal 1 bf16", 3, 1, 2, 2, 16, 16, {4, 6, 18}, {3, 5, 5}, {1, 1, 1}, {2, 3, 2}, {1, 1, 1}, {0, 1, 0}, 0, 0, 0, BF16, T_CONTIG},
    /* heads inner (every head of a row in turn, row caches per kv head): kv heads and groups */
    {"bb 3d GQA 4/2 causal 0", 3, 1, 4, 2, 8, 16, {4, 3, 19}, {3, 3, 5}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {1, 0, 0}, 0, 0, 0, F32, T_CONTIG},
    {"bb 2d 3 kv heads bf16", 2, 1, 3, 3, 16, 16, {4, 21}, {3, 5}, {1, 1}, {1, 1}, {1, 1}, {0, 1}, 0, 0, 0, BF16, T_PADDED},
};

/*
 * The blocked forward's non-temporal output stores need 64-byte aligned rows,
 * which the tests' malloc'd buffers have only by chance: a 2-D problem on
 * aligned buffers, stores forced on (threshold 0), against the reference
 * and bitwise across 1 and 3 threads.
 */
static void check_stream_stores(void) {
    natten_problem p;
    natten_problem_init(&p, 2);
    p.batch = 2;
    p.heads = p.kv_heads = 2;
    p.head_dim = p.head_dim_v = 32;
    p.extent[0] = 9;
    p.extent[1] = 37;
    p.kernel[0] = 3;
    p.kernel[1] = 7;
    p.dtype = NATTEN_DTYPE_F32;
    const int64_t n = p.batch * p.extent[0] * p.extent[1] * p.heads * p.head_dim;
    const int64_t nl = p.batch * p.extent[0] * p.extent[1] * p.heads;
    float *buf[7]; /* aligned_alloc: sizes a multiple of the alignment */
    for (int i = 0; i < 7; ++i) buf[i] = aligned_alloc(64, (size_t)(n + 15) / 16 * 64);
    t_rng rng;
    t_rng_seed(&rng, 4242);
    for (int i = 0; i < 3; ++i)
        for (int64_t e = 0; e < n; ++e) buf[i][e] = (float)t_rng_uniform(&rng, -1.5, 1.5);
    natten_tensor q, k, v, o[3], lse;
    natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, buf[0], &q);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_K, buf[1], &k);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_V, buf[2], &v);
    float *lsebuf = aligned_alloc(64, (size_t)(nl + 15) / 16 * 64);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_LSE, lsebuf, &lse);
    setenv("NATTEN_CPU_FWD_STREAM_BYTES", "0", 1);
    const int thr[3] = {1, 3, 1};
    for (int r = 0; r < 3; ++r) {
        natten_tensor_contiguous(&p, NATTEN_TENSOR_OUT, buf[3 + r], &o[r]);
        p.impl = r < 2 ? NATTEN_IMPL_FAST : NATTEN_IMPL_REFERENCE;
        natten_num_threads_set(thr[r]);
        const natten_status st = natten_na_forward(&p, &q, &k, &v, NULL, NULL, NULL, &o[r], &lse);
        t_check(st == NATTEN_STATUS_SUCCESS, "stream stores: forward %d: %s", r, natten_status_string(st));
    }
    unsetenv("NATTEN_CPU_FWD_STREAM_BYTES");
    int bad = 0;
    for (int64_t e = 0; e < n; ++e)
        bad += fabsf(buf[3][e] - buf[5][e]) > 2e-5f * (1.0f + fabsf(buf[5][e]));
    t_check(bad == 0, "stream stores: %d outputs off the reference", bad);
    t_check(memcmp(buf[3], buf[4], (size_t)n * sizeof(float)) == 0, "stream stores: 1 vs 3 threads differ");
    for (int i = 0; i < 7; ++i) free(buf[i]);
    free(lsebuf);
}

/* n random values in [-2, 2] as bf16 bits h and their exact f32 widening f
 * (the bf16 checks feed both dtypes the same numbers). */
static void fill_bf16_pair(t_rng *rng, uint16_t *h, float *f, int64_t n) {
    for (int64_t e = 0; e < n; ++e) {
        h[e] = natten_f32_to_bf16((float)t_rng_uniform(rng, -2.0, 2.0));
        f[e] = natten_bf16_to_f32(h[e]);
    }
}

/* A bf16 forward rounds, bit for bit, what the f32 forward computes from the
 * same (widened) inputs: the blocked kernels widen bf16 rows and round their
 * outputs themselves (AVX-512), so this pins both conversions to
 * natten_bf16_to_f32 / natten_f32_to_bf16 exactly (a tolerance would not see a
 * wrong rounding).  A NaN in v makes NaN outputs (quiet-NaN rounding). */
static void check_bf16_rounding(void) {
    natten_problem p;
    natten_problem_init(&p, 1);
    p.batch = 1;
    p.heads = p.kv_heads = 2;
    p.head_dim = p.head_dim_v = 40; /* a 16-channel tail */
    p.extent[0] = 83;
    p.kernel[0] = 7;
    p.impl = NATTEN_IMPL_FAST;
    const int64_t n = 83 * 2 * 40, nl = 83 * 2;
    uint16_t *h[4];
    float *f[4], *lse[2];
    for (int i = 0; i < 4; ++i) {
        h[i] = malloc((size_t)n * sizeof(uint16_t));
        f[i] = malloc((size_t)n * sizeof(float));
    }
    lse[0] = malloc((size_t)nl * sizeof(float));
    lse[1] = malloc((size_t)nl * sizeof(float));
    t_rng rng;
    t_rng_seed(&rng, 77);
    for (int i = 0; i < 3; ++i) fill_bf16_pair(&rng, h[i], f[i], n);
    h[2][5 * 80 + 3] = 0x7fc1; /* NaN in v at position 5, head 0 */
    f[2][5 * 80 + 3] = natten_bf16_to_f32(0x7fc1);
    const natten_cpu_isa isa0 = natten_cpu_isa_get();
    for (int ii = 0; ii < T_NUM_CPU_ISAS; ++ii) {
        if (natten_cpu_isa_set(t_cpu_isas[ii]) != NATTEN_STATUS_SUCCESS) continue;
        natten_tensor t[8];
        for (int dt = 0; dt < 2; ++dt) {
            p.dtype = dt ? NATTEN_DTYPE_BF16 : NATTEN_DTYPE_F32;
            natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, dt ? (void *)h[0] : (void *)f[0], &t[0]);
            natten_tensor_contiguous(&p, NATTEN_TENSOR_K, dt ? (void *)h[1] : (void *)f[1], &t[1]);
            natten_tensor_contiguous(&p, NATTEN_TENSOR_V, dt ? (void *)h[2] : (void *)f[2], &t[2]);
            natten_tensor_contiguous(&p, NATTEN_TENSOR_OUT, dt ? (void *)h[3] : (void *)f[3], &t[3]);
            natten_tensor_contiguous(&p, NATTEN_TENSOR_LSE, lse[dt], &t[4]);
            const natten_status st = natten_na_forward(&p, &t[0], &t[1], &t[2], NULL, NULL, NULL, &t[3], &t[4]);
            t_check(st == NATTEN_STATUS_SUCCESS, "bf16 rounding [%s]: forward: %s",
                    natten_cpu_isa_name(t_cpu_isas[ii]), natten_status_string(st));
        }
        int bad = 0, nan = 0;
        for (int64_t e = 0; e < n; ++e) {
            bad += h[3][e] != natten_f32_to_bf16(f[3][e]);
            nan += f[3][e] != f[3][e];
        }
        t_check(bad == 0 && nan > 0, "bf16 rounding [%s]: %d of %lld outputs differ from the rounded f32 forward "
                "(%d NaN outputs)", natten_cpu_isa_name(t_cpu_isas[ii]), bad, (long long)n, nan);
        t_check(memcmp(lse[0], lse[1], (size_t)nl * sizeof(float)) == 0, "bf16 rounding [%s]: lse differs",
                natten_cpu_isa_name(t_cpu_isas[ii]));
    }
    natten_cpu_isa_set(isa0);
    for (int i = 0; i < 4; ++i) {
        free(h[i]);
        free(f[i]);
    }
    free(lse[0]);
    free(lse[1]);
}

/* The blocked forward's pack slots are reused across calls, and a task packs
 * only the keys its segment reads; nothing else of a slot may reach a valid
 * output.  A forward on all-NaN inputs leaves NaN in every packed position,
 * then a finite forward of the same shape must still match the reference:
 * causal windows over dilation groups (masked slots read the zero gaps
 * between groups), several segments, 1 and 3 threads. */
static void check_stale_packs(void) {
    static const struct {
        int rank;
        int64_t B, H, Hkv, D, L[2], K[2], dil[2];
        int causal[2];
    } cs[] = {
        {1, 2, 2, 1, 8, {53}, {5}, {3}, {1}},
        {1, 1, 2, 2, 16, {150}, {7}, {1}, {1}},
        {1, 1, 2, 2, 16, {64}, {5}, {4}, {1}}, /* groups of 16: no alignment pad between them */
        {2, 1, 2, 2, 16, {5, 45}, {3, 5}, {1, 2}, {0, 1}},
    };
    const char *segq[2] = {"5", NULL};
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ++ci) {
        natten_problem p;
        natten_problem_init(&p, cs[ci].rank);
        p.batch = cs[ci].B;
        p.heads = cs[ci].H;
        p.kv_heads = cs[ci].Hkv;
        p.head_dim = p.head_dim_v = cs[ci].D;
        for (int a = 0; a < cs[ci].rank; ++a) {
            p.extent[a] = cs[ci].L[a];
            p.kernel[a] = cs[ci].K[a];
            p.dilation[a] = cs[ci].dil[a];
            p.causal[a] = cs[ci].causal[a];
        }
        p.dtype = NATTEN_DTYPE_F32;
        static const natten_tensor_kind kinds[5] = {NATTEN_TENSOR_Q, NATTEN_TENSOR_K, NATTEN_TENSOR_V,
                                                    NATTEN_TENSOR_OUT, NATTEN_TENSOR_LSE};
        natten_tensor t[6];
        float *m[6];
        int64_t n[6];
        for (int i = 0; i < 6; ++i) {
            int64_t shape[NATTEN_MAX_DIMS];
            int nd;
            natten_tensor_shape(&p, kinds[i < 5 ? i : 3], shape, &nd);
            n[i] = 1;
            for (int j = 0; j < nd; ++j) n[i] *= shape[j];
            m[i] = malloc((size_t)n[i] * sizeof(float));
            natten_tensor_contiguous(&p, kinds[i < 5 ? i : 3], m[i], &t[i]);
        }
        t_rng rng;
        t_rng_seed(&rng, 900 + ci);
        for (int s = 0; s < 2; ++s)
            for (int th = 1; th <= 3; th += 2) {
                if (segq[s]) setenv("NATTEN_CPU_FWD_SEGQ", segq[s], 1);
                else unsetenv("NATTEN_CPU_FWD_SEGQ");
                natten_num_threads_set(th);
                p.impl = NATTEN_IMPL_FAST;
                for (int i = 0; i < 3; ++i)
                    for (int64_t e = 0; e < n[i]; ++e) m[i][e] = NAN;
                natten_status st = natten_na_forward(&p, &t[0], &t[1], &t[2], NULL, NULL, NULL, &t[3], &t[4]);
                for (int i = 0; i < 3; ++i)
                    for (int64_t e = 0; e < n[i]; ++e) m[i][e] = (float)t_rng_uniform(&rng, -1.5, 1.5);
                if (st == NATTEN_STATUS_SUCCESS)
                    st = natten_na_forward(&p, &t[0], &t[1], &t[2], NULL, NULL, NULL, &t[3], &t[4]);
                p.impl = NATTEN_IMPL_REFERENCE;
                if (st == NATTEN_STATUS_SUCCESS)
                    st = natten_na_forward(&p, &t[0], &t[1], &t[2], NULL, NULL, NULL, &t[5], &t[4]);
                t_check(st == NATTEN_STATUS_SUCCESS, "stale packs %zu: %s", ci, natten_status_string(st));
                int bad = 0;
                for (int64_t e = 0; e < n[3]; ++e)
                    bad += !(fabsf(m[3][e] - m[5][e]) <= 2e-5f * (1.0f + fabsf(m[5][e])));
                t_check(bad == 0, "stale packs %zu (segq %s, %d threads): %d of %lld outputs off the reference",
                        ci, segq[s] ? segq[s] : "default", th, bad, (long long)n[3]);
            }
        unsetenv("NATTEN_CPU_FWD_SEGQ");
        for (int i = 0; i < 6; ++i) free(m[i]);
    }
}

/*
 * The blocked forward's line pairs (2-D, AVX-512: lines y and y + dil0 share
 * their key rows' slot vectors): against the reference, and bit for bit
 * against unpaired lines (NATTEN_CPU_FWD_PAIR=0) and across thread counts
 * (the chunking decides which lines pair).  Odd line counts, dilation on
 * axis 0 (pairs of a group, groups of unequal length), K0 = 1 (disjoint
 * rows), K0 even, causal axis 0, rpb, varlen (lines past a sample), GNA
 * stride on axis 0 (windows jump: not paired).
 */
static void check_fwd_pairs(void) {
    static const struct {
        int64_t B, L[2], K[2], dil[2], gs0;
        int causal0, rpb, varlen;
    } cs[] = {
        {1, {13, 37}, {5, 7}, {1, 1}, 1, 0, 0, 0}, {1, {11, 20}, {3, 5}, {3, 1}, 1, 0, 1, 0},
        {2, {9, 33}, {1, 3}, {1, 2}, 1, 0, 0, 0},  {1, {10, 19}, {4, 5}, {2, 1}, 1, 1, 0, 0},
        {1, {12, 17}, {7, 3}, {1, 1}, 1, 1, 1, 0}, {3, {9, 21}, {3, 7}, {1, 1}, 1, 0, 0, 1},
        {1, {14, 18}, {5, 3}, {1, 1}, 3, 0, 0, 0}, {1, {13, 18}, {3, 3}, {2, 1}, 2, 1, 0, 0}, /* GNA axis 0: unpaired */
    };
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ++ci) {
        natten_problem p;
        natten_problem_init(&p, 2);
        p.batch = cs[ci].B;
        p.heads = p.kv_heads = 2;
        p.head_dim = p.head_dim_v = 16;
        for (int a = 0; a < 2; ++a) {
            p.extent[a] = cs[ci].L[a];
            p.kernel[a] = cs[ci].K[a];
            p.dilation[a] = cs[ci].dil[a];
        }
        p.gna_stride[0] = cs[ci].gs0;
        p.causal[0] = cs[ci].causal0;
        p.dtype = NATTEN_DTYPE_F32;
        const int64_t nq = p.batch * p.extent[0] * p.extent[1] * p.heads * p.head_dim;
        int64_t nrpb = 1;
        for (int a = 0; a < 2; ++a) nrpb *= 2 * p.kernel[a] - 1;
        float *m[5];
        for (int i = 0; i < 5; ++i) m[i] = malloc((size_t)nq * sizeof(float));
        float *rpb = malloc((size_t)(p.heads * nrpb) * sizeof(float));
        static const int32_t ext[6] = {9, 21, 5, 12, 4, 7}; /* per batch (varlen case) */
        t_rng rng;
        t_rng_seed(&rng, 77 + ci);
        for (int i = 0; i < 3; ++i)
            for (int64_t e = 0; e < nq; ++e) m[i][e] = (float)t_rng_uniform(&rng, -1.5, 1.5);
        for (int64_t e = 0; e < p.heads * nrpb; ++e) rpb[e] = (float)t_rng_uniform(&rng, -1, 1);
        natten_tensor q, k, v, o, r;
        natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, m[0], &q);
        natten_tensor_contiguous(&p, NATTEN_TENSOR_K, m[1], &k);
        natten_tensor_contiguous(&p, NATTEN_TENSOR_V, m[2], &v);
        natten_tensor_contiguous(&p, NATTEN_TENSOR_RPB, rpb, &r);
        if (cs[ci].varlen) p.varlen_extent = ext;
        /* runs: reference; unpaired 1 thread; paired 1, 2, 3 threads */
        const int thr[5] = {1, 1, 1, 2, 3};
        const char *pair[5] = {"1", "0", "1", "1", "1"};
        unsigned char *first = NULL;
        for (int run = 0; run < 5; ++run) {
            float *out = m[run == 0 ? 3 : 4];
            natten_tensor_contiguous(&p, NATTEN_TENSOR_OUT, out, &o);
            setenv("NATTEN_CPU_FWD_PAIR", pair[run], 1);
            natten_num_threads_set(thr[run]);
            p.impl = run == 0 ? NATTEN_IMPL_REFERENCE : NATTEN_IMPL_FAST;
            const natten_status st =
                natten_na_forward(&p, &q, &k, &v, cs[ci].rpb ? &r : NULL, NULL, NULL, &o, NULL);
            t_check(st == NATTEN_STATUS_SUCCESS, "fwd pairs %zu run %d: %s", ci, run, natten_status_string(st));
            if (run == 0) continue;
            if (run == 1) {
                first = malloc((size_t)nq * sizeof(float));
                memcpy(first, out, (size_t)nq * sizeof(float));
                int bad = 0;
                for (int64_t e = 0; e < nq; ++e) bad += !(fabsf(out[e] - m[3][e]) <= 2e-5f * (1.0f + fabsf(m[3][e])));
                t_check(bad == 0, "fwd pairs %zu: %d of %lld outputs off the reference", ci, bad, (long long)nq);
            } else {
                t_check(memcmp(first, out, (size_t)nq * sizeof(float)) == 0,
                        "fwd pairs %zu: paired, %d threads, differs from unpaired", ci, thr[run]);
            }
        }
        unsetenv("NATTEN_CPU_FWD_PAIR");
        free(first);
        for (int i = 0; i < 5; ++i) free(m[i]);
        free(rpb);
    }
}

/*
 * An inf in one key: queries that do not see it must get the reference's
 * finite dq.  Causal GNA windows mask slots past the query whose positions
 * are real keys (here key 13 for query 12): the blocked backward's tiles
 * read them and must not multiply them (0 * inf is NaN).  Every ISA level.
 */
static void check_inf_key(void) {
    natten_problem p;
    natten_problem_init(&p, 1);
    p.batch = 1;
    p.heads = p.kv_heads = 1;
    p.head_dim = p.head_dim_v = 16;
    p.extent[0] = 40;
    p.kernel[0] = 5;
    p.gna_stride[0] = 3;
    p.causal[0] = 1;
    p.dtype = NATTEN_DTYPE_F32;
    const int64_t L = 40, D = 16, n = L * D, xinf = 13;
    float *buf[9];
    for (int i = 0; i < 9; ++i) buf[i] = calloc((size_t)n, sizeof(float));
    float *lsebuf = calloc((size_t)L, sizeof(float));
    t_rng rng;
    t_rng_seed(&rng, 777);
    for (int i = 0; i < 3; ++i)
        for (int64_t e = 0; e < n; ++e) buf[i][e] = (float)t_rng_uniform(&rng, -1.0, 1.0);
    for (int64_t e = 0; e < n; ++e) buf[4][e] = (float)t_rng_uniform(&rng, -1.0, 1.0);
    buf[1][xinf * D] = INFINITY;
    natten_tensor q, k, v, o, lse, dout, dq[2], dk, dv;
    natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, buf[0], &q);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_K, buf[1], &k);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_V, buf[2], &v);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_OUT, buf[3], &o);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_OUT, buf[4], &dout);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, buf[5], &dq[0]);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, buf[6], &dq[1]);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_K, buf[7], &dk);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_V, buf[8], &dv);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_LSE, lsebuf, &lse);
    p.impl = NATTEN_IMPL_REFERENCE;
    natten_status st = natten_na_forward(&p, &q, &k, &v, NULL, NULL, NULL, &o, &lse);
    t_check(st == NATTEN_STATUS_SUCCESS, "inf key: forward: %s", natten_status_string(st));
    st = natten_na_backward(&p, &q, &k, &v, NULL, NULL, NULL, &o, &lse, &dout, &dq[1], &dk, &dv, NULL, NULL, NULL);
    t_check(st == NATTEN_STATUS_SUCCESS, "inf key: reference backward: %s", natten_status_string(st));
    const natten_cpu_isa isa0 = natten_cpu_isa_get();
    p.impl = NATTEN_IMPL_FAST;
    for (int isa = NATTEN_CPU_ISA_SCALAR; isa <= NATTEN_CPU_ISA_NEON; ++isa) {
        if (natten_cpu_isa_set((natten_cpu_isa)isa) != NATTEN_STATUS_SUCCESS) continue;
        st = natten_na_backward(&p, &q, &k, &v, NULL, NULL, NULL, &o, &lse, &dout, &dq[0], &dk, &dv, NULL, NULL,
                                NULL);
        t_check(st == NATTEN_STATUS_SUCCESS, "inf key [%s]: backward: %s", natten_cpu_isa_name(natten_cpu_isa_get()),
                natten_status_string(st));
        int bad = 0, finite = 0;
        for (int64_t x = 0; x < L; ++x) {
            const natten_window w = natten_window_of(L, 5, 1, 3, 1, x);
            if (xinf >= w.start + w.valid_begin && xinf < w.start + w.valid_end) continue; /* sees the inf */
            for (int64_t c = 0; c < D; ++c) {
                const float got = buf[5][x * D + c], want = buf[6][x * D + c];
                finite += isfinite(want) != 0;
                bad += !(fabsf(got - want) <= 1e-4f * (1.0f + fabsf(want)));
            }
        }
        t_check(bad == 0 && finite > 0, "inf key [%s]: %d dq elements of queries not seeing it off the reference",
                natten_cpu_isa_name(natten_cpu_isa_get()), bad);
    }
    natten_cpu_isa_set(isa0);
    for (int i = 0; i < 9; ++i) free(buf[i]);
    free(lsebuf);
}

/*
 * The blocked backward's query tile, called directly at every ISA level the
 * machine runs: a key (and value) position holding inf that sits only in
 * masked slots must leave P, dS and dq finite and equal to the portable
 * tile's.  check_inf_key reaches such slots through the whole backward, but
 * only in tiles whose lanes the AVX2 tile hands to the portable one (offsets
 * spanning more than 8 positions in a half); here both halves stay on the
 * vector path (offsets 0 0 3 3 3 6 6 6 | 9 9 9 12 12 12 15 15).
 */
static void check_bwd_tile_masked_inf(void) {
    enum { K = 5, D = 8, LD = 32, N = 16 };
    static const int32_t off[N] = {0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9, 12, 12, 12, 15, 15};
    const int64_t xinf = 4; /* slot 4 of lanes 0-1, slot 1 of lanes 2-4: all masked below */
    float *qt = aligned_alloc(64, D * N * sizeof(float)), *dot = aligned_alloc(64, D * N * sizeof(float));
    float *row = aligned_alloc(64, 2 * D * LD * sizeof(float)), *lse = aligned_alloc(64, N * sizeof(float));
    float *delta = aligned_alloc(64, N * sizeof(float));
    t_rng rng;
    t_rng_seed(&rng, 4242);
    for (int i = 0; i < D * N; ++i) qt[i] = (float)t_rng_uniform(&rng, -1, 1), dot[i] = (float)t_rng_uniform(&rng, -1, 1);
    for (int i = 0; i < 2 * D * LD; ++i) row[i] = (float)t_rng_uniform(&rng, -1, 1);
    for (int i = 0; i < N; ++i) lse[i] = (float)t_rng_uniform(&rng, 0.5, 1.5), delta[i] = (float)t_rng_uniform(&rng, -0.2, 0.2);
    row[0 * LD + xinf] = INFINITY;      /* key channel 0 */
    row[D * LD + 0 * LD + xinf] = INFINITY; /* value channel 0 */
    uint32_t vmask[K];
    for (int k = 0; k < K; ++k) {
        vmask[k] = 0;
        for (int l = 0; l < N; ++l)
            if (off[l] + k != xinf) vmask[k] |= 1u << l;
    }
    const float *kr[1] = {row}, *vr[1] = {row + D * LD};
    float *res[2][3]; /* [portable, ISA][P, dS, dq] */
    for (int t = 0; t < 2; ++t)
        for (int j = 0; j < 3; ++j) res[t][j] = aligned_alloc(64, (j < 2 ? K : D) * N * sizeof(float));
    float *sbuf = aligned_alloc(64, 2 * K * N * sizeof(float));
    const natten_cpu_isa isa0 = natten_cpu_isa_get();
    const struct {
        natten_cpu_isa isa;
        const bwd_blk_kernel *bk;
    } tiles[] = {
#if defined(__x86_64__)
        {NATTEN_CPU_ISA_AVX2, &natten_bwd_blk_avx2},
        {NATTEN_CPU_ISA_AVX512, &natten_bwd_blk_avx512},
#endif
        {NATTEN_CPU_ISA_SCALAR, &natten_bwd_blk_scalar},
    };
    for (size_t ti = 0; ti < sizeof tiles / sizeof tiles[0]; ++ti) {
        if (natten_cpu_isa_set(tiles[ti].isa) != NATTEN_STATUS_SUCCESS) continue; /* not on this machine */
        for (int t = 0; t < 2; ++t) {
            float *pp[K], *sp[K];
            for (int k = 0; k < K; ++k) pp[k] = res[t][0] + k * N, sp[k] = res[t][1] + k * N;
            const bwdq_args a = {.qt = qt, .dot = dot, .kr = kr, .vr = vr, .ld = LD, .nrow = 1, .K = K, .D = D,
                                 .Dv = D, .nl = N, .off = off, .uniform = 0, .vmask = vmask, .scale = 0.35f,
                                 .lse = lse, .delta = delta, .pp = pp, .sp = sp, .sbuf = sbuf, .dq_t = res[t][2]};
            (t ? tiles[ti].bk : &natten_bwd_blk_scalar)->query(&a);
        }
        int bad = 0;
        for (int j = 0; j < 3; ++j)
            for (int i = 0; i < (j < 2 ? K : D) * N; ++i) {
                const float want = res[0][j][i], got = res[1][j][i];
                bad += !isfinite(want) || !(fabsf(got - want) <= 1e-5f * (1.0f + fabsf(want)));
            }
        t_check(bad == 0, "query tile [%s]: an inf in masked slots only: %d P/dS/dq values non-finite or off the "
                "portable tile's", natten_cpu_isa_name(tiles[ti].isa), bad);
    }
    natten_cpu_isa_set(isa0);
    for (int t = 0; t < 2; ++t)
        for (int j = 0; j < 3; ++j) free(res[t][j]);
    free(qt), free(dot), free(row), free(lse), free(delta), free(sbuf);
}

/*
 * The backward in bf16 is the f32 backward of the widened tensors, rounded:
 * dq, dk, dv bit for bit at every ISA (the blocked backward's vector bf16
 * conversions against natten_f32_to_bf16; a NaN in dO reaches some outputs).
 */
static void check_bf16_bwd_rounding(void) {
    natten_problem p;
    natten_problem_init(&p, 2);
    p.batch = 1;
    p.heads = p.kv_heads = 2;
    p.head_dim = p.head_dim_v = 40; /* a partial 16-channel block */
    p.extent[0] = 5;
    p.extent[1] = 37;
    p.kernel[0] = 3;
    p.kernel[1] = 5;
    p.causal[1] = 1;
    p.impl = NATTEN_IMPL_FAST;
    const int64_t n = 5 * 37 * 2 * 40, nl = 5 * 37 * 2;
    uint16_t *h[8];
    float *f[8], *lse = malloc((size_t)nl * sizeof(float));
    for (int i = 0; i < 8; ++i) {
        h[i] = malloc((size_t)n * sizeof(uint16_t));
        f[i] = malloc((size_t)n * sizeof(float));
    }
    t_rng rng;
    t_rng_seed(&rng, 78);
    for (int i = 0; i < 5; ++i) fill_bf16_pair(&rng, h[i], f[i], n); /* q, k, v, out (set below), dO */
    h[4][(9 * 2 + 1) * 40 + 7] = 0x7fc1; /* NaN in dO at row 9, head 1 */
    f[4][(9 * 2 + 1) * 40 + 7] = natten_bf16_to_f32(0x7fc1);
    natten_tensor t[10];
    p.dtype = NATTEN_DTYPE_F32;
    natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, f[0], &t[0]);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_K, f[1], &t[1]);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_V, f[2], &t[2]);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_OUT, f[3], &t[3]);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_LSE, lse, &t[4]);
    natten_status st = natten_na_forward(&p, &t[0], &t[1], &t[2], NULL, NULL, NULL, &t[3], &t[4]);
    t_check(st == NATTEN_STATUS_SUCCESS, "bf16 bwd rounding: forward: %s", natten_status_string(st));
    for (int64_t e = 0; e < n; ++e) { /* one out for both: the bf16 one, widened */
        h[3][e] = natten_f32_to_bf16(f[3][e]);
        f[3][e] = natten_bf16_to_f32(h[3][e]);
    }
    const natten_cpu_isa isa0 = natten_cpu_isa_get();
    for (int ii = 0; ii < T_NUM_CPU_ISAS; ++ii) {
        if (natten_cpu_isa_set(t_cpu_isas[ii]) != NATTEN_STATUS_SUCCESS) continue;
        for (int dt = 0; dt < 2; ++dt) {
            p.dtype = dt ? NATTEN_DTYPE_BF16 : NATTEN_DTYPE_F32;
            const natten_tensor_kind kinds[8] = {NATTEN_TENSOR_Q, NATTEN_TENSOR_K, NATTEN_TENSOR_V, NATTEN_TENSOR_OUT,
                                                 NATTEN_TENSOR_OUT, NATTEN_TENSOR_Q, NATTEN_TENSOR_K, NATTEN_TENSOR_V};
            natten_tensor u[8];
            for (int i = 0; i < 8; ++i)
                natten_tensor_contiguous(&p, kinds[i], dt ? (void *)h[i] : (void *)f[i], &u[i]);
            st = natten_na_backward(&p, &u[0], &u[1], &u[2], NULL, NULL, NULL, &u[3], &t[4], &u[4], &u[5], &u[6],
                                    &u[7], NULL, NULL, NULL);
            t_check(st == NATTEN_STATUS_SUCCESS, "bf16 bwd rounding [%s]: backward: %s",
                    natten_cpu_isa_name(t_cpu_isas[ii]), natten_status_string(st));
        }
        int bad = 0, nan = 0;
        for (int i = 5; i < 8; ++i)
            for (int64_t e = 0; e < n; ++e) {
                bad += h[i][e] != natten_f32_to_bf16(f[i][e]);
                nan += f[i][e] != f[i][e];
            }
        t_check(bad == 0 && nan > 0, "bf16 bwd rounding [%s]: %d gradient elements differ from the rounded f32 "
                "backward (%d NaN)", natten_cpu_isa_name(t_cpu_isas[ii]), bad, nan);
    }
    natten_cpu_isa_set(isa0);
    for (int i = 0; i < 8; ++i) {
        free(h[i]);
        free(f[i]);
    }
    free(lse);
}

/* Forward strategies this executable runs (modes below); test_fast_cpu_tiles.c
 * includes this file for the tiles (2) and the short segments (3), so each
 * executable stays inside ctest's time limit under the sanitizers (this one
 * took 110 s of its 120 with mode 3 on a loaded machine). */
#ifndef FAST_CPU_MODE_LIST
#define FAST_CPU_MODE_LIST 0, 1
#define FAST_CPU_EXTRAS 1
#endif

int main(void) {
    const natten_cpu_isa isa0 = natten_cpu_isa_get();
    printf("test_fast_cpu: best ISA %s\n", natten_cpu_isa_name(isa0));
    /* every forward strategy: blocked (default), generic lists (NATTEN_CPU_FWD_BLOCK=0;
     * forward checks only) and lane-major tiles (NATTEN_CPU_TILES=1; the backward's generic
     * and tile paths with the first and the last) */
    /* the blocked forward's non-temporal output stores start at 32 MiB; the first mode
     * takes them for every aligned f32 output (the T_CONTIG ones with Dv % 16 == 0) */
    /* the backward: the blocked one (default, its P / dS non-temporal stores forced on) with the
     * first mode, the generic lists and key tiles (NATTEN_CPU_BWD_BLOCK=0) with the last.
     * Mode 3: the blocked forward with 5-position task segments (NATTEN_CPU_FWD_SEGQ),
     * so every configuration, of every rank, packs per-segment key ranges whose
     * boundaries cut tiles and dilation groups (forward checks only) */
    static const char *const modes[4][5] = {{"0", "1", "0", "1", ""},
                                            {"0", "0", "0", "1", ""},
                                            {"1", "1", "0", "0", ""},
                                            {"0", "1", "0", "1", "5"}};
    static const int mode_list[] = {FAST_CPU_MODE_LIST};
    for (size_t mi = 0; mi < sizeof mode_list / sizeof mode_list[0]; ++mi) {
        const int m = mode_list[mi];
        setenv("NATTEN_CPU_TILES", modes[m][0], 1);
        setenv("NATTEN_CPU_FWD_BLOCK", modes[m][1], 1);
        setenv("NATTEN_CPU_FWD_STREAM_BYTES", modes[m][2], 1);
        setenv("NATTEN_CPU_BWD_STREAM_BYTES", modes[m][2], 1);
        setenv("NATTEN_CPU_BWD_BLOCK", modes[m][3], 1);
        if (modes[m][4][0]) setenv("NATTEN_CPU_FWD_SEGQ", modes[m][4], 1);
        else unsetenv("NATTEN_CPU_FWD_SEGQ");
        fwd_only = m == 1 || m == 3;
        printf("test_fast_cpu: NATTEN_CPU_TILES=%s NATTEN_CPU_FWD_BLOCK=%s NATTEN_CPU_FWD_STREAM_BYTES=%s "
               "NATTEN_CPU_BWD_BLOCK=%s NATTEN_CPU_FWD_SEGQ=%s\n",
               modes[m][0], modes[m][1], modes[m][2], modes[m][3], modes[m][4]);
        for (size_t i = 0; i < sizeof configs / sizeof configs[0]; ++i) check_config(&configs[i], 1000 + i);
    }
    unsetenv("NATTEN_CPU_TILES");
    unsetenv("NATTEN_CPU_FWD_BLOCK");
    unsetenv("NATTEN_CPU_FWD_STREAM_BYTES");
    unsetenv("NATTEN_CPU_BWD_STREAM_BYTES");
    unsetenv("NATTEN_CPU_BWD_BLOCK");
    unsetenv("NATTEN_CPU_FWD_SEGQ");
    fwd_only = 0;
    if (!FAST_CPU_EXTRAS) return t_summary("test_fast_cpu (tiles)");
    check_stream_stores();
    check_inf_key();
    check_bwd_tile_masked_inf();
    check_bf16_bwd_rounding();
    check_bf16_rounding();
    check_stale_packs();
    check_fwd_pairs();
    /* the blocked backward's head-major order (its fallback when per-kv-head row caches
     * do not fit): the configurations with several kv heads */
    setenv("NATTEN_CPU_BWD_HEADS_INNER", "0", 1);
    setenv("NATTEN_CPU_BWD_STREAM_BYTES", "0", 1);
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; ++i)
        if (strncmp(configs[i].name, "bb ", 3) == 0 && configs[i].Hkv > 1) check_config(&configs[i], 1000 + i);
    unsetenv("NATTEN_CPU_BWD_HEADS_INNER");
    unsetenv("NATTEN_CPU_BWD_STREAM_BYTES");

    /* API of the runtime */
    t_check(natten_num_threads_set(0) == NATTEN_STATUS_INVALID_ARGUMENT, "num_threads_set(0) must fail");
    t_check(natten_num_threads_set(3) == NATTEN_STATUS_SUCCESS && natten_num_threads_get() == 3,
            "num_threads_set(3) then get");
    t_check(natten_cpu_isa_set(NATTEN_CPU_ISA_SCALAR) == NATTEN_STATUS_SUCCESS &&
                natten_cpu_isa_get() == NATTEN_CPU_ISA_SCALAR,
            "isa_set(scalar) then get");
    t_check(natten_cpu_isa_set((natten_cpu_isa)42) == NATTEN_STATUS_INVALID_ARGUMENT &&
                natten_last_error_message()[0] != '\0',
            "isa_set(42) must fail with a message");
    t_check(strcmp(natten_cpu_isa_name(NATTEN_CPU_ISA_AVX512), "avx512") == 0, "isa name");
    natten_cpu_isa_set(isa0);

    /* the pool survives fork(): a child (Python multiprocessing, say) runs
     * parallel calls instead of waiting for the parent's workers */
    {
        natten_num_threads_set(2);
        check_config(&configs[0], 7);
        fflush(stdout);
        fflush(stderr);
        const pid_t pid = fork();
        if (pid == 0) {
            alarm(60); /* a hang becomes a failure */
            t_passed = t_failed = 0;
            check_config(&configs[13], 8);
            _exit(t_failed == 0 && t_passed > 0 ? 0 : 1);
        }
        int status = -1;
        t_check(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                "fast kernels in a forked child (status %d)", status);
    }

    /* f64 is declined by the fast path (no writes), so impl FAST reports UNSUPPORTED */
    {
        natten_problem p;
        natten_problem_init(&p, 1);
        p.extent[0] = 8;
        p.kernel[0] = 3;
        p.head_dim = p.head_dim_v = 4;
        p.dtype = NATTEN_DTYPE_F64;
        p.impl = NATTEN_IMPL_FAST;
        tbuf q, k, v, o;
        tbuf_init(&q, &p, NATTEN_TENSOR_Q, T_CONTIG);
        tbuf_init(&k, &p, NATTEN_TENSOR_K, T_CONTIG);
        tbuf_init(&v, &p, NATTEN_TENSOR_V, T_CONTIG);
        tbuf_init(&o, &p, NATTEN_TENSOR_OUT, T_CONTIG);
        tbuf_snapshot(&o);
        natten_status st = natten_na_forward(&p, &q.t, &k.t, &v.t, NULL, NULL, NULL, &o.t, NULL);
        t_check(st == NATTEN_STATUS_UNSUPPORTED && tbuf_unchanged(&o), "f64 FAST declines without writes");
        tbuf_free(&q);
        tbuf_free(&k);
        tbuf_free(&v);
        tbuf_free(&o);
    }
    printf("test_fast_cpu: %d of %d configuration runs also compared with the reference kernels\n",
           n_ref_compared, 3 * (int)(sizeof configs / sizeof configs[0]));
    return t_summary("test_fast_cpu");
}
