/*
 * test_api.c -- the small public functions: status names, thread-local
 * messages, descriptor defaults, scale, shapes and contiguous strides, dtype
 * sizes, CPU runtime getters, and the dispatcher (AUTO agrees with
 * REFERENCE; FAST either runs and agrees, or declines with UNSUPPORTED, a
 * message and nothing written).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

static void test_status_strings(void) {
    static const char *const names[] = {
        "NATTEN_STATUS_SUCCESS",   "NATTEN_STATUS_INVALID_ARGUMENT", "NATTEN_STATUS_NULL_POINTER",
        "NATTEN_STATUS_ALIASING",  "NATTEN_STATUS_OVERFLOW",         "NATTEN_STATUS_UNSUPPORTED",
        "NATTEN_STATUS_OUT_OF_MEMORY", "NATTEN_STATUS_INTERNAL"};
    for (int s = 0; s < 8; ++s)
        t_check(strcmp(natten_status_string((natten_status)s), names[s]) == 0, "status name %d", s);
    t_check(natten_status_string((natten_status)42) != NULL, "unknown status has a name");
}

static void *thread_body(void *arg) {
    const char **seen = (const char **)arg;
    seen[0] = natten_last_error_message()[0] == '\0' ? "empty" : "nonempty";
    natten_problem_init(NULL, 1);
    seen[1] = strstr(natten_last_error_message(), "natten_problem_init") ? "own" : "other";
    return NULL;
}

static void test_messages(void) {
    t_check(natten_last_error_message() != NULL, "message never NULL");
    natten_problem p;
    t_check(natten_problem_init(&p, 7) == NATTEN_STATUS_INVALID_ARGUMENT, "init rank 7");
    t_check(strstr(natten_last_error_message(), "natten_problem_init: rank=7") != NULL, "init message: %s",
            natten_last_error_message());
    const char *seen[2] = {0, 0};
    pthread_t th;
    pthread_create(&th, NULL, thread_body, (void *)seen);
    pthread_join(th, NULL);
    t_check(seen[0] && strcmp(seen[0], "empty") == 0, "a new thread starts with an empty message");
    t_check(seen[1] && strcmp(seen[1], "own") == 0, "a thread sees its own message");
    t_check(strstr(natten_last_error_message(), "rank=7") != NULL, "other threads do not clobber this one's message");
}

static void test_problem_defaults(void) {
    natten_problem p;
    t_check(natten_problem_init(NULL, 1) == NATTEN_STATUS_NULL_POINTER, "init NULL");
    for (int r = 1; r <= 3; ++r) {
        memset(&p, 0x7f, sizeof p);
        t_check(natten_problem_init(&p, r) == NATTEN_STATUS_SUCCESS, "init rank %d", r);
        int ok = p.rank == r && p.batch == 1 && p.heads == 1 && p.kv_heads == 1 && p.head_dim == 1 &&
                 p.head_dim_v == 1 && isnan(p.scale) && p.dtype == NATTEN_DTYPE_F32 && p.impl == NATTEN_IMPL_AUTO &&
                 p.num_extra_kv == 0 && p.varlen_extent == NULL;
        for (int a = 0; a < 3; ++a)
            ok = ok && p.extent[a] == 1 && p.kernel[a] == 1 && p.dilation[a] == 1 && p.gna_stride[a] == 1 &&
                 p.out_stride[a] == 1 && p.causal[a] == 0;
        t_check(ok, "defaults rank %d", r);
        t_check(natten_problem_validate(&p) == NATTEN_STATUS_SUCCESS, "defaults validate");
    }
    natten_problem_init(&p, 2);
    p.head_dim = 16;
    t_check(fabs(natten_problem_scale(&p) - 0.25) < 1e-15, "default scale 16^-0.5");
    p.scale = 0.0;
    t_check(natten_problem_scale(&p) == 0.0, "scale 0 honoured");
    p.scale = 1.5;
    t_check(natten_problem_scale(&p) == 1.5, "explicit scale");
    p.kernel[0] = 3, p.kernel[1] = 5, p.kernel[2] = 7;
    t_check(natten_problem_kernel_volume(&p) == 15, "kernel volume ignores axes >= rank");
    t_check(natten_problem_kernel_volume(NULL) == 0, "kernel volume of NULL");
    t_check(natten_dtype_size(NATTEN_DTYPE_F32) == 4 && natten_dtype_size(NATTEN_DTYPE_F16) == 2 &&
                natten_dtype_size(NATTEN_DTYPE_BF16) == 2 && natten_dtype_size(NATTEN_DTYPE_F64) == 8 &&
                natten_dtype_size((natten_dtype)11) == 0,
            "dtype sizes");
}

static void test_shapes(void) {
    natten_problem p;
    natten_problem_init(&p, 2);
    p.batch = 2, p.heads = 6, p.kv_heads = 3, p.head_dim = 8, p.head_dim_v = 5;
    p.extent[0] = 9, p.extent[1] = 10, p.kernel[0] = 3, p.kernel[1] = 4, p.out_stride[0] = 2, p.out_stride[1] = 3;
    p.num_extra_kv = 7;
    static const struct { natten_tensor_kind kind; int nd; int64_t s[6]; } want[] = {
        {NATTEN_TENSOR_Q, 5, {2, 9, 10, 6, 8}},      {NATTEN_TENSOR_K, 5, {2, 9, 10, 3, 8}},
        {NATTEN_TENSOR_V, 5, {2, 9, 10, 3, 5}},      {NATTEN_TENSOR_OUT, 5, {2, 5, 4, 6, 5}},
        {NATTEN_TENSOR_LSE, 4, {2, 5, 4, 6}},        {NATTEN_TENSOR_LOGITS, 5, {2, 5, 4, 6, 12}},
        {NATTEN_TENSOR_EXTRA_K, 4, {2, 7, 3, 8}},    {NATTEN_TENSOR_EXTRA_V, 4, {2, 7, 3, 5}},
        {NATTEN_TENSOR_RPB, 3, {6, 5, 7}},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; ++i) {
        int64_t s[NATTEN_MAX_DIMS];
        int nd = -1;
        natten_status st = natten_tensor_shape(&p, want[i].kind, s, &nd);
        int ok = st == NATTEN_STATUS_SUCCESS && nd == want[i].nd;
        for (int d = 0; ok && d < nd; ++d) ok = s[d] == want[i].s[d];
        t_check(ok, "shape of kind %d", (int)want[i].kind);
        natten_tensor t;
        st = natten_tensor_contiguous(&p, want[i].kind, (void *)&t, &t);
        int64_t expect = 1;
        ok = st == NATTEN_STATUS_SUCCESS;
        for (int d = nd - 1; ok && d >= 0; --d) {
            ok = t.stride[d] == expect;
            expect *= want[i].s[d];
        }
        t_check(ok, "contiguous strides of kind %d", (int)want[i].kind);
    }
    int64_t s[NATTEN_MAX_DIMS];
    int nd;
    t_check(natten_tensor_shape(&p, (natten_tensor_kind)99, s, &nd) == NATTEN_STATUS_INVALID_ARGUMENT &&
                strstr(natten_last_error_message(), "natten_tensor_shape: kind=99"),
            "unknown kind");
    t_check(natten_tensor_shape(&p, NATTEN_TENSOR_Q, NULL, &nd) == NATTEN_STATUS_NULL_POINTER, "shape NULL");
    t_check(natten_tensor_shape(&p, NATTEN_TENSOR_Q, s, NULL) == NATTEN_STATUS_NULL_POINTER, "ndim NULL");
    t_check(natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, NULL, NULL) == NATTEN_STATUS_NULL_POINTER, "t NULL");
    p.kernel[1] = 11;
    t_check(natten_tensor_shape(&p, NATTEN_TENSOR_Q, s, &nd) == NATTEN_STATUS_INVALID_ARGUMENT &&
                strstr(natten_last_error_message(), "natten_tensor_shape: kernel[1]=11 exceeds extent[1]=10"),
            "shape of an invalid problem: %s", natten_last_error_message());
}

static void test_cpu_runtime(void) {
    for (int i = 0; i < 4; ++i) t_check(natten_cpu_isa_name((natten_cpu_isa)i) != NULL, "isa name %d", i);
    t_check(natten_cpu_isa_name(natten_cpu_isa_get()) != NULL, "current isa has a name");
    t_check(natten_num_threads_get() >= 1, "threads >= 1");
    t_check(natten_num_threads_set(0) == NATTEN_STATUS_INVALID_ARGUMENT, "threads 0 rejected");
    const int n = natten_num_threads_get();
    t_check(natten_num_threads_set(n) == NATTEN_STATUS_SUCCESS, "threads set back");
    t_check(natten_cpu_isa_set(NATTEN_CPU_ISA_SCALAR) == NATTEN_STATUS_SUCCESS, "scalar ISA always available");
}

/* AUTO and FAST against REFERENCE on a few problems. */
static void test_dispatch(void) {
    static const t_case cases[] = {
        {"2d", 2, 1, 4, 2, 16, 0, {9, 8}, {3, 5}, .rpb = 1},
        {"1d causal extra", 1, 2, 2, 0, 8, 0, {12}, {5}, .causal = {1}, .extra = 2},
        {"3d strides", 3, 1, 2, 0, 8, 0, {4, 5, 6}, {3, 3, 3}, .os = {2, 1, 1}, .gs = {1, 3, 1}},
    };
    static const natten_dtype dts[] = {NATTEN_DTYPE_F32, NATTEN_DTYPE_F64, NATTEN_DTYPE_BF16};
    t_rng rng;
    t_rng_seed(&rng, 99);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci)
        for (size_t di = 0; di < sizeof dts / sizeof dts[0]; ++di) {
            const t_case *c = &cases[ci];
            natten_problem p;
            t_case_problem(c, dts[di], NATTEN_IMPL_REFERENCE, &rng, NULL, &p);
            tbuf q, k, v, rpb, ek, ev, ref_out, ref_lse, out, lse;
            tbuf_init(&q, &p, NATTEN_TENSOR_Q, T_CONTIG);
            tbuf_init(&k, &p, NATTEN_TENSOR_K, T_CONTIG);
            tbuf_init(&v, &p, NATTEN_TENSOR_V, T_CONTIG);
            tbuf_init(&rpb, &p, NATTEN_TENSOR_RPB, T_CONTIG);
            tbuf_init(&ek, &p, NATTEN_TENSOR_EXTRA_K, T_CONTIG);
            tbuf_init(&ev, &p, NATTEN_TENSOR_EXTRA_V, T_CONTIG);
            tbuf_init(&ref_out, &p, NATTEN_TENSOR_OUT, T_CONTIG);
            tbuf_init(&ref_lse, &p, NATTEN_TENSOR_LSE, T_CONTIG);
            tbuf_init(&out, &p, NATTEN_TENSOR_OUT, T_CONTIG);
            tbuf_init(&lse, &p, NATTEN_TENSOR_LSE, T_CONTIG);
            tbuf_fill_random(&q, &rng, -1, 1), tbuf_fill_random(&k, &rng, -1, 1), tbuf_fill_random(&v, &rng, -1, 1);
            tbuf_fill_random(&rpb, &rng, -1, 1), tbuf_fill_random(&ek, &rng, -1, 1), tbuf_fill_random(&ev, &rng, -1, 1);
            const natten_tensor *r = c->rpb ? &rpb.t : NULL;
            const natten_tensor *e1 = c->extra ? &ek.t : NULL, *e2 = c->extra ? &ev.t : NULL;
            natten_status st = natten_na_forward(&p, &q.t, &k.t, &v.t, r, e1, e2, &ref_out.t, &ref_lse.t);
            t_check(st == NATTEN_STATUS_SUCCESS, "%s reference", c->name);
            double *want_out = (double *)malloc(sizeof(double) * (size_t)out.count);
            double *want_lse = (double *)malloc(sizeof(double) * (size_t)lse.count);
            tbuf_to_double(&ref_out, want_out);
            tbuf_to_double(&ref_lse, want_lse);
            /* fast kernels may accumulate in f32 and round differently: a loose tolerance */
            const double tol = dts[di] == NATTEN_DTYPE_BF16 ? 2e-2 : 1e-4;
            char what[160];
            p.impl = NATTEN_IMPL_AUTO;
            st = natten_na_forward(&p, &q.t, &k.t, &v.t, r, e1, e2, &out.t, &lse.t);
            t_check(st == NATTEN_STATUS_SUCCESS, "%s %s AUTO status %s", c->name, t_dtype_name(dts[di]),
                    natten_status_string(st));
            snprintf(what, sizeof what, "%s %s AUTO out", c->name, t_dtype_name(dts[di]));
            t_compare(what, &out, want_out, tol, tol);
            snprintf(what, sizeof what, "%s %s AUTO lse", c->name, t_dtype_name(dts[di]));
            t_compare(what, &lse, want_lse, tol, tol);
            p.impl = NATTEN_IMPL_FAST;
            tbuf_fill_sentinel(&out), tbuf_snapshot(&out);
            tbuf_fill_sentinel(&lse), tbuf_snapshot(&lse);
            st = natten_na_forward(&p, &q.t, &k.t, &v.t, r, e1, e2, &out.t, &lse.t);
            if (st == NATTEN_STATUS_SUCCESS) {
                snprintf(what, sizeof what, "%s %s FAST out", c->name, t_dtype_name(dts[di]));
                t_compare(what, &out, want_out, tol, tol);
            } else {
                t_check(st == NATTEN_STATUS_UNSUPPORTED &&
                            strstr(natten_last_error_message(), "natten_na_forward") == natten_last_error_message() &&
                            tbuf_unchanged(&out) && tbuf_unchanged(&lse),
                        "%s %s FAST declines cleanly (%s: %s)", c->name, t_dtype_name(dts[di]),
                        natten_status_string(st), natten_last_error_message());
            }
            free(want_out), free(want_lse);
            tbuf_free(&q), tbuf_free(&k), tbuf_free(&v), tbuf_free(&rpb), tbuf_free(&ek), tbuf_free(&ev);
            tbuf_free(&ref_out), tbuf_free(&ref_lse), tbuf_free(&out), tbuf_free(&lse);
        }
}

/* Concurrent calls from several threads (the reference is re-entrant; AUTO
 * must be too, whatever the fast kernels do with their pool). */
typedef struct worker {
    natten_problem p;
    tbuf *q, *k, *v;
    const double *want;
    int ok;
} worker;

static void *worker_body(void *arg) {
    worker *w = (worker *)arg;
    tbuf out;
    tbuf_init(&out, &w->p, NATTEN_TENSOR_OUT, T_CONTIG);
    w->ok = 1;
    for (int it = 0; it < 8; ++it) {
        if (natten_na_forward(&w->p, &w->q->t, &w->k->t, &w->v->t, NULL, NULL, NULL, &out.t, NULL) !=
            NATTEN_STATUS_SUCCESS)
            w->ok = 0;
        for (int64_t i = 0; i < out.count; ++i)
            if (fabs(tbuf_get(&out, i) - w->want[i]) > 1e-4) w->ok = 0;
    }
    tbuf_free(&out);
    return NULL;
}

static void test_concurrency(void) {
    const t_case c = {"threads", 2, 2, 4, 2, 16, 0, {12, 10}, {5, 3}, .causal = {1, 0}};
    t_rng rng;
    t_rng_seed(&rng, 5);
    natten_problem p;
    t_case_problem(&c, NATTEN_DTYPE_F32, NATTEN_IMPL_REFERENCE, &rng, NULL, &p);
    tbuf q, k, v, out;
    tbuf_init(&q, &p, NATTEN_TENSOR_Q, T_CONTIG);
    tbuf_init(&k, &p, NATTEN_TENSOR_K, T_CONTIG);
    tbuf_init(&v, &p, NATTEN_TENSOR_V, T_CONTIG);
    tbuf_init(&out, &p, NATTEN_TENSOR_OUT, T_CONTIG);
    tbuf_fill_random(&q, &rng, -1, 1), tbuf_fill_random(&k, &rng, -1, 1), tbuf_fill_random(&v, &rng, -1, 1);
    natten_na_forward(&p, &q.t, &k.t, &v.t, NULL, NULL, NULL, &out.t, NULL);
    double *want = (double *)malloc(sizeof(double) * (size_t)out.count);
    tbuf_to_double(&out, want);
    enum { NW = 4 };
    worker w[NW];
    pthread_t th[NW];
    for (int i = 0; i < NW; ++i) {
        w[i].p = p;
        w[i].p.impl = (i % 2) ? NATTEN_IMPL_AUTO : NATTEN_IMPL_REFERENCE;
        w[i].q = &q, w[i].k = &k, w[i].v = &v, w[i].want = want;
        pthread_create(&th[i], NULL, worker_body, &w[i]);
    }
    for (int i = 0; i < NW; ++i) {
        pthread_join(th[i], NULL);
        t_check(w[i].ok, "concurrent thread %d (%s) agrees with the reference", i,
                (i % 2) ? "AUTO" : "REFERENCE");
    }
    free(want);
    tbuf_free(&q), tbuf_free(&k), tbuf_free(&v), tbuf_free(&out);
}

int main(void) {
    test_status_strings();
    test_messages();
    test_problem_defaults();
    test_shapes();
    test_cpu_runtime();
    test_dispatch();
    test_concurrency();
    return t_summary("test_api");
}
