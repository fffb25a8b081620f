/*
 * test_fast_split.c -- the fast split ops (natten_qk_forward/backward,
 * natten_av_forward/backward with impl FAST) against
 *   - the support oracle (dense masked attention in long double) for both
 *     forwards, and through adjoint identities for the f32 backwards (the ops
 *     are linear: <dq, u> = sum_valid dlogits * QK(u, k), likewise dk, dv,
 *     dattn), with random directions u;
 *   - the reference kernels (impl REFERENCE through the public API) for every
 *     output of all four ops;
 * at every ISA level this CPU runs, with bitwise equality of every output
 * across 1, 2 and 3 threads, and no writes into the gaps of padded or
 * permuted outputs.
 *
 * Tolerances (|got - want| <= atol + rtol*|want|): forwards t_tol(dtype),
 * f32 widened to 2e-5; backwards vs reference f32 1e-4, f16 4e-3, bf16 3e-2
 * scaled by the largest |want| of the tensor; adjoints 1e-4 relative to the
 * larger side (and at least 1e-3).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

typedef t_fcase cfg;

/* Inputs and outputs of the four ops. */
typedef struct tset {
    tbuf q, k, v, rpb, attn, dlogits, dout;        /* inputs */
    tbuf logits, out, dq, dk, drpb, dattn, dv;     /* outputs */
    int has_rpb;
} tset;

static void tset_init(tset *T, const natten_problem *p, const cfg *c, t_rng *rng) {
    memset(T, 0, sizeof *T);
    const int L = c->layout;
    tbuf_init(&T->q, p, NATTEN_TENSOR_Q, L);
    tbuf_init(&T->k, p, NATTEN_TENSOR_K, L);
    tbuf_init(&T->v, p, NATTEN_TENSOR_V, L);
    tbuf_init(&T->attn, p, NATTEN_TENSOR_LOGITS, L);
    tbuf_init(&T->dlogits, p, NATTEN_TENSOR_LOGITS, L);
    tbuf_init(&T->dout, p, NATTEN_TENSOR_OUT, L);
    tbuf_init(&T->logits, p, NATTEN_TENSOR_LOGITS, L);
    tbuf_init(&T->out, p, NATTEN_TENSOR_OUT, L);
    tbuf_init(&T->dq, p, NATTEN_TENSOR_Q, L);
    tbuf_init(&T->dk, p, NATTEN_TENSOR_K, L);
    tbuf_init(&T->dattn, p, NATTEN_TENSOR_LOGITS, L);
    tbuf_init(&T->dv, p, NATTEN_TENSOR_V, L);
    tbuf_fill_random(&T->q, rng, -1.5, 1.5);
    tbuf_fill_random(&T->k, rng, -1.5, 1.5);
    tbuf_fill_random(&T->v, rng, -1, 1);
    tbuf_fill_random(&T->attn, rng, 0, 1);
    tbuf_fill_random(&T->dlogits, rng, -1, 1);
    tbuf_fill_random(&T->dout, rng, -1, 1);
    T->has_rpb = c->rpb;
    if (c->rpb) {
        tbuf_init(&T->rpb, p, NATTEN_TENSOR_RPB, L);
        tbuf_init(&T->drpb, p, NATTEN_TENSOR_RPB, L);
        tbuf_fill_random(&T->rpb, rng, -1, 1);
    }
}

static void tset_free(tset *T) {
    tbuf *all[] = {&T->q, &T->k, &T->v, &T->rpb, &T->attn, &T->dlogits, &T->dout,
                   &T->logits, &T->out, &T->dq, &T->dk, &T->drpb, &T->dattn, &T->dv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
        if (all[i]->mem) tbuf_free(all[i]);
}

/* Outputs in a fixed order; 0..1 forwards, then backwards. */
static int outputs(tset *T, tbuf **o, const char **names) {
    int n = 0;
    names[n] = "logits", o[n++] = &T->logits;
    names[n] = "out", o[n++] = &T->out;
    names[n] = "dq", o[n++] = &T->dq;
    names[n] = "dk", o[n++] = &T->dk;
    names[n] = "dattn", o[n++] = &T->dattn;
    names[n] = "dv", o[n++] = &T->dv;
    if (T->has_rpb) names[n] = "drpb", o[n++] = &T->drpb;
    return n;
}

/* Runs the four ops; returns the first failing status. */
static natten_status run_all(natten_problem *p, tset *T, natten_impl impl) {
    p->impl = impl;
    natten_status st = natten_qk_forward(p, &T->q.t, &T->k.t, T->has_rpb ? &T->rpb.t : NULL, &T->logits.t);
    if (st == NATTEN_STATUS_SUCCESS) st = natten_av_forward(p, &T->attn.t, &T->v.t, &T->out.t);
    if (st == NATTEN_STATUS_SUCCESS)
        st = natten_qk_backward(p, &T->q.t, &T->k.t, &T->dlogits.t, &T->dq.t, &T->dk.t,
                                T->has_rpb ? &T->drpb.t : NULL);
    if (st == NATTEN_STATUS_SUCCESS)
        st = natten_av_backward(p, &T->attn.t, &T->v.t, &T->dout.t, &T->dattn.t, &T->dv.t);
    return st;
}

static double *random_dir(t_rng *rng, int64_t n) {
    double *d = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; ++i) d[i] = t_rng_uniform(rng, -1, 1);
    return d;
}

static double dot(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

/* sum over finite entries of w * lin (lin = -inf at masked slots). */
static double dot_valid(const double *w, const double *lin, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i)
        if (isfinite(lin[i])) s += w[i] * lin[i];
    return s;
}

static void check_adjoint(const char *what, double analytic, double numeric) {
    double scale = fabs(analytic) > fabs(numeric) ? fabs(analytic) : fabs(numeric);
    if (scale < 1e-3) scale = 1e-3;
    t_check(fabs(analytic - numeric) <= 1e-4 * scale, "%s: <grad, u> %.9g, oracle %.9g", what, analytic, numeric);
}

/* The f32 backwards against the oracle's forwards (linear ops). */
static void adjoints(const natten_problem *p, tset *T, t_rng *rng, const char *name, const char *iname) {
    const int64_t nq = T->q.count, nk = T->k.count, nv = T->v.count, nl = T->logits.count, no = T->out.count;
    double *qd = t_to_double(&T->q), *kd = t_to_double(&T->k), *vd = t_to_double(&T->v);
    double *ad = t_to_double(&T->attn), *dld = t_to_double(&T->dlogits), *dod = t_to_double(&T->dout);
    double *lin = malloc((size_t)nl * sizeof(double)), *o = malloc((size_t)no * sizeof(double));
    char what[256];
    double *u = random_dir(rng, nq), *g = t_to_double(&T->dq);
    oracle_qk(p, u, kd, NULL, lin);
    snprintf(what, sizeof what, "%s [%s] dq adjoint", name, iname);
    check_adjoint(what, dot(g, u, nq), dot_valid(dld, lin, nl));
    free(u), free(g);
    u = random_dir(rng, nk), g = t_to_double(&T->dk);
    oracle_qk(p, qd, u, NULL, lin);
    snprintf(what, sizeof what, "%s [%s] dk adjoint", name, iname);
    check_adjoint(what, dot(g, u, nk), dot_valid(dld, lin, nl));
    free(u), free(g);
    u = random_dir(rng, nv), g = t_to_double(&T->dv);
    oracle_av(p, ad, u, o);
    snprintf(what, sizeof what, "%s [%s] dv adjoint", name, iname);
    check_adjoint(what, dot(g, u, nv), dot(dod, o, no));
    free(u), free(g);
    u = random_dir(rng, nl), g = t_to_double(&T->dattn);
    oracle_av(p, u, vd, o);
    snprintf(what, sizeof what, "%s [%s] dattn adjoint", name, iname);
    check_adjoint(what, dot(g, u, nl), dot(dod, o, no));
    free(u), free(g);
    free(qd), free(kd), free(vd), free(ad), free(dld), free(dod), free(lin), free(o);
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
    tset T, R;
    tset_init(&T, &p, c, &rng);
    {
        t_rng r2;
        t_rng_seed(&r2, seed);
        int32_t vb2[64];
        natten_problem p2 = t_fcase_problem(c, vb2, &r2);
        tset_init(&R, &p2, c, &r2);
        const natten_status st = run_all(&p2, &R, NATTEN_IMPL_REFERENCE);
        t_check(st == NATTEN_STATUS_SUCCESS, "%s: reference status %s", c->name, natten_status_string(st));
    }
    /* oracle forwards on the storage-rounded inputs */
    double *qd = t_to_double(&T.q), *kd = t_to_double(&T.k), *vd = t_to_double(&T.v), *ad = t_to_double(&T.attn);
    double *rd = T.has_rpb ? t_to_double(&T.rpb) : NULL;
    double *want_logits = malloc((size_t)T.logits.count * sizeof(double));
    double *want_out = malloc((size_t)T.out.count * sizeof(double));
    oracle_qk(&p, qd, kd, rd, want_logits);
    oracle_av(&p, ad, vd, want_out);
    double atol, rtol;
    t_tol(c->dt, &atol, &rtol);
    if (c->dt == NATTEN_DTYPE_F32) atol = rtol = 2e-5;

    const natten_cpu_isa isa0 = natten_cpu_isa_get();
    const int threads[] = {1, 2, 3};
    tbuf *o[8], *ro[8];
    const char *names[8];
    const int n = outputs(&T, o, names);
    outputs(&R, ro, names);
    for (size_t ii = 0; ii < T_NUM_CPU_ISAS; ++ii) {
        if (natten_cpu_isa_set(t_cpu_isas[ii]) != NATTEN_STATUS_SUCCESS) continue;
        const char *iname = natten_cpu_isa_name(t_cpu_isas[ii]);
        unsigned char *base[8] = {0};
        for (size_t ti = 0; ti < 3; ++ti) {
            natten_num_threads_set(threads[ti]);
            for (int i = 0; i < n; ++i) {
                tbuf_fill_sentinel(o[i]);
                tbuf_snapshot(o[i]);
            }
            const natten_status st = run_all(&p, &T, NATTEN_IMPL_FAST);
            t_check(st == NATTEN_STATUS_SUCCESS, "%s [%s, %d thr]: status %s: %s", c->name, iname,
                    threads[ti], natten_status_string(st), natten_last_error_message());
            if (st != NATTEN_STATUS_SUCCESS) break;
            for (int i = 0; i < n; ++i)
                t_check(tbuf_gaps_unchanged(o[i]), "%s [%s]: %s wrote outside its view", c->name, iname, names[i]);
            if (ti == 0) {
                char what[256];
                snprintf(what, sizeof what, "%s [%s] logits vs oracle", c->name, iname);
                t_check(t_compare(what, &T.logits, want_logits, atol, rtol), "%s", what);
                snprintf(what, sizeof what, "%s [%s] av out vs oracle", c->name, iname);
                t_check(t_compare(what, &T.out, want_out, atol, rtol), "%s", what);
                for (int i = 0; i < n; ++i) {
                    double *w = t_to_double(ro[i]);
                    snprintf(what, sizeof what, "%s [%s] %s vs reference", c->name, iname, names[i]);
                    /* gradients (i >= 2): relative to the tensor's largest magnitude */
                    t_check(i >= 2 ? t_compare_grad(what, o[i], w, c->dt) : t_compare(what, o[i], w, atol, rtol),
                            "%s", what);
                    free(w);
                    base[i] = malloc(o[i]->bytes);
                    memcpy(base[i], o[i]->mem, o[i]->bytes);
                }
                if (c->dt == NATTEN_DTYPE_F32) adjoints(&p, &T, &rng, c->name, iname);
            } else {
                for (int i = 0; i < n; ++i)
                    t_check(memcmp(base[i], o[i]->mem, o[i]->bytes) == 0, "%s [%s]: %s differs between 1 and %d threads",
                            c->name, iname, names[i], threads[ti]);
            }
        }
        for (int i = 0; i < n; ++i) free(base[i]);
    }
    natten_cpu_isa_set(isa0);
    free(qd), free(kd), free(vd), free(ad), free(rd), free(want_logits), free(want_out);
    tset_free(&T);
    tset_free(&R);
}

#define F32 NATTEN_DTYPE_F32
#define F16 NATTEN_DTYPE_F16
#define BF16 NATTEN_DTYPE_BF16

static const cfg configs[] = {
    /* name, rank, B, H, Hkv, D, Dv, L, K, dil, gs, os, causal, NE (none), rpb, varlen, dt, layout */
    {"1d basic", 1, 1, 2, 2, 16, 16, {37}, {7}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d D=15 Dv=17 GQA", 1, 2, 2, 1, 15, 17, {33}, {5}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d allin1-like dil 8 rpb", 1, 1, 2, 2, 12, 12, {43}, {5}, {8}, {1}, {1}, {0}, 0, 1, 0, F32, T_CONTIG},
    {"1d D=64 K=16 rpb", 1, 1, 1, 1, 64, 64, {65}, {16}, {1}, {1}, {1}, {0}, 0, 1, 0, F32, T_PADDED},
    {"1d K=17 D=65 Dv=33", 1, 1, 2, 1, 65, 33, {40}, {17}, {1}, {1}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d causal dil 2 rpb", 1, 1, 2, 2, 32, 32, {33}, {7}, {2}, {1}, {1}, {1}, 0, 1, 0, F32, T_CONTIG},
    {"1d gna stride 3", 1, 1, 2, 2, 8, 8, {23}, {7}, {1}, {3}, {1}, {0}, 0, 0, 0, F32, T_CONTIG},
    {"1d out stride 2", 1, 1, 2, 2, 8, 8, {23}, {5}, {1}, {1}, {2}, {0}, 0, 0, 0, F32, T_PERMUTED},
    {"1d causal gna 2 out 3 GQA", 1, 1, 2, 1, 8, 8, {25}, {5}, {2}, {2}, {3}, {1}, 0, 0, 0, F32, T_CONTIG},
    {"1d varlen rpb", 1, 3, 2, 2, 16, 16, {30}, {5}, {2}, {1}, {1}, {0}, 0, 1, 1, F32, T_CONTIG},
    {"2d basic rpb", 2, 1, 2, 2, 16, 16, {9, 11}, {3, 5}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, 0, 1, 0, F32, T_CONTIG},
    {"2d 7x7 D=32 GQA", 2, 1, 2, 1, 32, 32, {15, 17}, {7, 7}, {1, 2}, {1, 1}, {1, 1}, {0, 0}, 0, 0, 0, F32, T_CONTIG},
    {"2d causal axis 0 rpb", 2, 1, 2, 2, 8, 8, {10, 9}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 0}, 0, 1, 0, F32, T_PADDED},
    {"2d causal axis 1 even K", 2, 1, 2, 2, 8, 8, {10, 9}, {3, 4}, {2, 1}, {1, 1}, {1, 1}, {0, 1}, 0, 0, 0, F32, T_CONTIG},
    {"2d both strides GQA 4/2", 2, 2, 4, 2, 8, 8, {12, 10}, {5, 3}, {1, 1}, {2, 3}, {1, 2}, {0, 0}, 0, 0, 0, F32, T_PERMUTED},
    {"2d varlen rpb", 2, 2, 2, 2, 8, 8, {10, 12}, {3, 5}, {1, 2}, {1, 1}, {1, 1}, {0, 0}, 0, 1, 1, F32, T_CONTIG},
    {"3d basic rpb", 3, 1, 2, 2, 8, 8, {5, 6, 7}, {3, 3, 3}, {1, 1, 2}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 0, 1, 0, F32, T_CONTIG},
    {"3d causal mixed GQA 4", 3, 1, 4, 1, 16, 16, {6, 5, 7}, {3, 2, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {1, 0, 1}, 0, 0, 0, F32, T_PADDED},
    {"3d strides varlen", 3, 2, 2, 2, 4, 4, {6, 6, 7}, {3, 3, 3}, {1, 2, 1}, {1, 1, 2}, {2, 1, 1}, {0, 0, 0}, 0, 0, 1, F32, T_CONTIG},
    {"1d bf16 rpb", 1, 1, 2, 2, 32, 32, {40}, {7}, {1}, {1}, {1}, {0}, 0, 1, 0, BF16, T_CONTIG},
    {"2d bf16 padded", 2, 1, 2, 1, 24, 24, {9, 10}, {3, 5}, {1, 1}, {1, 1}, {1, 1}, {0, 1}, 0, 0, 0, BF16, T_PADDED},
    {"1d f16 rpb", 1, 1, 2, 2, 33, 33, {21}, {5}, {2}, {1}, {1}, {0}, 0, 1, 0, F16, T_CONTIG},
    {"3d f16 permuted", 3, 1, 2, 2, 16, 16, {4, 5, 6}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 0, 0, 0, F16, T_PERMUTED},
};

int main(void) {
    printf("test_fast_split: best ISA %s\n", natten_cpu_isa_name(natten_cpu_isa_get()));
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; ++i) check_config(&configs[i], 2000 + i);

    /* f64 is declined by the fast path: impl FAST reports UNSUPPORTED and writes nothing */
    {
        natten_problem p;
        natten_problem_init(&p, 1);
        p.extent[0] = 8;
        p.kernel[0] = 3;
        p.head_dim = p.head_dim_v = 4;
        p.dtype = NATTEN_DTYPE_F64;
        p.impl = NATTEN_IMPL_FAST;
        tbuf q, k, l;
        tbuf_init(&q, &p, NATTEN_TENSOR_Q, T_CONTIG);
        tbuf_init(&k, &p, NATTEN_TENSOR_K, T_CONTIG);
        tbuf_init(&l, &p, NATTEN_TENSOR_LOGITS, T_CONTIG);
        tbuf_snapshot(&l);
        const natten_status st = natten_qk_forward(&p, &q.t, &k.t, NULL, &l.t);
        t_check(st == NATTEN_STATUS_UNSUPPORTED && tbuf_unchanged(&l), "f64 FAST qk_forward declines without writes");
        tbuf_free(&q);
        tbuf_free(&k);
        tbuf_free(&l);
    }
    return t_summary("test_fast_split");
}
