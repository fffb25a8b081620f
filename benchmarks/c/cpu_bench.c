/*
 * cpu_bench.c -- timings of the fused forward and backward of the fast CPU
 * kernels through the public C API, on the cases of issue 4.
 *   cpu_bench [case-substring] [reps]      (NATTEN_NUM_THREADS / NATTEN_CPU_ISA apply;
 *   BENCH_FWD_ONLY=1 times the forward alone, also as process CPU time)
 * Cases marked diagnostic run only when a filter names them exactly ("=name").
 * Prints min-of-reps milliseconds, GFLOP/s (forward 4*B*H*N*KK*D, backward
 * 2.5x that) and the backward/forward ratio.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "natten.h"

typedef struct bcase {
    const char *name;
    int rank;
    int64_t B, H, D, L[3], K[3], dil[3];
    int causal[3];
    natten_dtype dt;
    int diagnostic; /* only with an exact "=name" filter */
} bcase;

#define F32 NATTEN_DTYPE_F32
#define BF16 NATTEN_DTYPE_BF16
static const bcase cases[] = {
    {"1d L256 K7", 1, 1, 4, 32, {256}, {7}, {1}, {0}, F32, 0},
    {"1d L1024 K7", 1, 1, 4, 32, {1024}, {7}, {1}, {0}, F32, 0},
    {"1d L1024 K7 causal", 1, 1, 4, 32, {1024}, {7}, {1}, {1}, F32, 0},
    {"2d 32x32 K7", 2, 1, 4, 32, {32, 32}, {7, 7}, {1, 1}, {0, 0}, F32, 0},
    {"2d 64x64 K7", 2, 1, 4, 32, {64, 64}, {7, 7}, {1, 1}, {0, 0}, F32, 0},
    {"2d 64x64 K7 causal", 2, 1, 4, 32, {64, 64}, {7, 7}, {1, 1}, {1, 1}, F32, 0},
    {"3d 16^3 K3", 3, 1, 4, 32, {16, 16, 16}, {3, 3, 3}, {1, 1, 1}, {0, 0, 0}, F32, 0},
    {"3d 16^3 K3 causal", 3, 1, 4, 32, {16, 16, 16}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, F32, 0},
    {"bf16 3d 16^3 K3", 3, 1, 4, 32, {16, 16, 16}, {3, 3, 3}, {1, 1, 1}, {0, 0, 0}, BF16, 0},
    {"bf16 3d 16^3 K3 causal", 3, 1, 4, 32, {16, 16, 16}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, BF16, 0},
    {"vision 2d B8 64x64 H8 D64 K7", 2, 8, 8, 64, {64, 64}, {7, 7}, {1, 1}, {0, 0}, F32, 0},
    {"vision 2d B8 64x64 H8 D64 K7 dil4", 2, 8, 8, 64, {64, 64}, {7, 7}, {4, 4}, {0, 0}, F32, 0},
    /* diagnostic: the vision forward's tensors with 1/49 of its arithmetic (a 1x1 window; the per-element
     * cost that does not depend on the window), and the same bytes with rows contiguous (H1: no 2 KiB head
     * stride between a head's rows) */
    {"vision 2d B8 64x64 H8 D64 K1", 2, 8, 8, 64, {64, 64}, {1, 1}, {1, 1}, {0, 0}, F32, 1},
    {"vision 2d B64 64x64 H1 D64 K1", 2, 64, 1, 64, {64, 64}, {1, 1}, {1, 1}, {0, 0}, F32, 1},
    {"vision 2d B64 64x64 H1 D64 K7", 2, 64, 1, 64, {64, 64}, {7, 7}, {1, 1}, {0, 0}, F32, 1},
    /* diagnostic: the vision tile's arithmetic on tensors that stay in L2/L3 (1-4 MB; 32 MB at B1 H8),
     * and B1 with a 1x1 window: how much of the vision forward is its memory traffic */
    {"cached 2d B1 64x64 H1 D64 K7", 2, 1, 1, 64, {64, 64}, {7, 7}, {1, 1}, {0, 0}, F32, 1},
    {"cached 2d B1 32x64 H1 D64 K7", 2, 1, 1, 64, {32, 64}, {7, 7}, {1, 1}, {0, 0}, F32, 1},
    {"cached 2d B1 16x64 H1 D64 K7", 2, 1, 1, 64, {16, 64}, {7, 7}, {1, 1}, {0, 0}, F32, 1},
    {"vision 2d B1 64x64 H8 D64 K7", 2, 1, 8, 64, {64, 64}, {7, 7}, {1, 1}, {0, 0}, F32, 1},
    {"vision 2d B1 64x64 H8 D64 K1", 2, 1, 8, 64, {64, 64}, {1, 1}, {1, 1}, {0, 0}, F32, 1},
    {"vision 3d 32^3 K3 H4 D32", 3, 1, 4, 32, {32, 32, 32}, {3, 3, 3}, {1, 1, 1}, {0, 0, 0}, F32, 0},
    {"bf16 vision 2d B8 64x64 H8 D64 K7", 2, 8, 8, 64, {64, 64}, {7, 7}, {1, 1}, {0, 0}, BF16, 0},
    {"bf16 vision 3d 32^3 K3 H4 D32", 3, 1, 4, 32, {32, 32, 32}, {3, 3, 3}, {1, 1, 1}, {0, 0, 0}, BF16, 0},
};

/* filter: comma-separated substrings ("=name": exactly that case); empty: every case but the diagnostic ones */
static int match(const char *name, int diagnostic, const char *filter) {
    if (!*filter) return !diagnostic;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", filter);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
        if (tok[0] == '=' ? strcmp(name, tok + 1) == 0 : !diagnostic && strstr(name, tok) != NULL) return 1;
    return 0;
}

/* BENCH_CLOCK=cpu: process CPU time instead of wall time -- on a shared
 * machine it leaves out time slices lost to other processes (with one thread;
 * with several it sums them). */
static double now(void) {
    static int cpu = -1;
    if (cpu < 0) cpu = getenv("BENCH_CLOCK") && strcmp(getenv("BENCH_CLOCK"), "cpu") == 0;
    struct timespec t;
    clock_gettime(cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* CPU time of the process: on a shared machine, time spent descheduled
 * inflates wall time but not this (all threads summed). */
static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *alloc_kind(const natten_problem *p, natten_tensor_kind kind, natten_tensor *t, int fill) {
    int64_t shape[NATTEN_MAX_DIMS];
    int nd;
    natten_tensor_shape(p, kind, shape, &nd);
    int64_t n = 1;
    for (int i = 0; i < nd; ++i) n *= shape[i];
    const size_t es = kind == NATTEN_TENSOR_LSE ? 4 : natten_dtype_size(p->dtype);
    /* BENCH_MISALIGN=<bytes>: offset every tensor from a 4 KiB boundary (alignment sensitivity) */
    static size_t mis = (size_t)-1;
    if (mis == (size_t)-1) mis = getenv("BENCH_MISALIGN") ? (size_t)atoi(getenv("BENCH_MISALIGN")) : 0;
    unsigned char *base = aligned_alloc(4096, ((size_t)n * es + mis + 4095) / 4096 * 4096);
    unsigned char *m = base + mis;
    if (fill) {
        for (int64_t i = 0; i < n; ++i) {
            float f = (float)((int)((i * 2654435761u) % 2001u) - 1000) / 1000.0f;
            if (es == 4) memcpy(m + i * 4, &f, 4);
            else {
                uint32_t u;
                memcpy(&u, &f, 4);
                uint16_t h = (uint16_t)(u >> 16);
                memcpy(m + i * 2, &h, 2);
            }
        }
    } else {
        memset(m, 0, (size_t)n * es);
    }
    natten_tensor_contiguous(p, kind, m, t);
    return base;
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : "";
    const int reps = argc > 2 ? atoi(argv[2]) : 5;
    printf("isa=%s threads=%d reps=%d (min)\n", natten_cpu_isa_name(natten_cpu_isa_get()),
           natten_num_threads_get(), reps);
    printf("%-38s %10s %9s %10s %9s %8s\n", "case", "fwd ms", "GFLOP/s", "bwd ms", "GFLOP/s", "bwd/fwd");
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci) {
        const bcase *c = &cases[ci];
        if (!match(c->name, c->diagnostic, filter)) continue;
        natten_problem p;
        natten_problem_init(&p, c->rank);
        p.batch = c->B;
        p.heads = p.kv_heads = c->H;
        p.head_dim = p.head_dim_v = c->D;
        int64_t N = 1, KK = 1;
        for (int a = 0; a < c->rank; ++a) {
            p.extent[a] = c->L[a];
            p.kernel[a] = c->K[a];
            p.dilation[a] = c->dil[a];
            p.causal[a] = c->causal[a];
            N *= c->L[a];
            KK *= c->K[a];
        }
        p.dtype = c->dt;
        p.impl = NATTEN_IMPL_FAST;
        natten_tensor q, k, v, o, lse, dout, dq, dk, dv;
        void *m[9];
        m[0] = alloc_kind(&p, NATTEN_TENSOR_Q, &q, 1);
        m[1] = alloc_kind(&p, NATTEN_TENSOR_K, &k, 1);
        m[2] = alloc_kind(&p, NATTEN_TENSOR_V, &v, 1);
        m[3] = alloc_kind(&p, NATTEN_TENSOR_OUT, &o, 0);
        m[4] = alloc_kind(&p, NATTEN_TENSOR_LSE, &lse, 0);
        m[5] = alloc_kind(&p, NATTEN_TENSOR_OUT, &dout, 1);
        m[6] = alloc_kind(&p, NATTEN_TENSOR_Q, &dq, 0);
        m[7] = alloc_kind(&p, NATTEN_TENSOR_K, &dk, 0);
        m[8] = alloc_kind(&p, NATTEN_TENSOR_V, &dv, 0);
        double tf = 1e30, tb = 1e30, cf = 1e30;
        for (int r = 0; r < reps + 1; ++r) {
            double t0 = now(), c0 = cpu_now();
            natten_status st = natten_na_forward(&p, &q, &k, &v, NULL, NULL, NULL, &o, &lse);
            double t1 = now(), c1 = cpu_now();
            if (st != NATTEN_STATUS_SUCCESS) {
                printf("%s: %s\n", c->name, natten_last_error_message());
                break;
            }
            if (r > 0) cf = fmin(cf, c1 - c0);
            if (getenv("BENCH_FWD_ONLY")) { if (r > 0) tf = fmin(tf, t1 - t0); continue; }
            st = natten_na_backward(&p, &q, &k, &v, NULL, NULL, NULL, &o, &lse, &dout, &dq, &dk, &dv,
                                    NULL, NULL, NULL);
            double t2 = now();
            if (st != NATTEN_STATUS_SUCCESS) {
                printf("%s: %s\n", c->name, natten_last_error_message());
                break;
            }
            if (r > 0) { /* first run warms caches and the pool */
                tf = fmin(tf, t1 - t0);
                tb = fmin(tb, t2 - t1);
            }
        }
        const double flops = 4.0 * c->B * c->H * N * KK * c->D;
        if (getenv("BENCH_FWD_ONLY"))
            printf("%-38s %10.3f %9.1f  (cpu %.3f ms)\n", c->name, tf * 1e3, flops / tf / 1e9, cf * 1e3);
        else
            printf("%-38s %10.3f %9.1f %10.3f %9.1f %8.2f\n", c->name, tf * 1e3, flops / tf / 1e9, tb * 1e3,
                   2.5 * flops / tb / 1e9, tb / tf);
        for (int i = 0; i < 9; ++i) free(m[i]);
    }
    return 0;
}
