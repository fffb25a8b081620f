/*
 * cpu_fma_peak.c -- measured f32 FMA peak of this CPU: 12 independent FMA
 * chains per thread (enough to hide a 4-cycle latency on two FMA ports), on
 * the widest vectors the compiler targets (-march=native), once on one
 * thread and once on every online core.  Prints one line:
 *   fma_peak width=<lanes> one_core=<GFLOP/s> all_cores=<GFLOP/s> cores=<n>
 * (FLOP = 2 per lane per FMA).  Used by benchmarks/cpu_benchmark.py for "% of peak".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define ITERS 100000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#if defined(__AVX512F__)
typedef __m512 V;
#define W 16
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET1 _mm512_set1_ps
static float first(V x) { return _mm512_cvtss_f32(x); }
#elif defined(__FMA__)
typedef __m256 V;
#define W 8
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET1 _mm256_set1_ps
static float first(V x) { return _mm256_cvtss_f32(x); }
#else
typedef float V;
#define W 1
#define FMA(a, b, c) ((a) * (b) + (c))
#define SET1(x) (x)
static float first(V x) { return x; }
#endif

static void *work(void *out) {
    V a = SET1(0.999999f), b = SET1(1e-7f);
    V c0 = SET1(0), c1 = SET1(1), c2 = SET1(2), c3 = SET1(3), c4 = SET1(4), c5 = SET1(5);
    V c6 = SET1(6), c7 = SET1(7), c8 = SET1(8), c9 = SET1(9), c10 = SET1(10), c11 = SET1(11);
    for (long i = 0; i < ITERS / 12; i++) {
        c0 = FMA(c0, a, b); c1 = FMA(c1, a, b); c2 = FMA(c2, a, b); c3 = FMA(c3, a, b);
        c4 = FMA(c4, a, b); c5 = FMA(c5, a, b); c6 = FMA(c6, a, b); c7 = FMA(c7, a, b);
        c8 = FMA(c8, a, b); c9 = FMA(c9, a, b); c10 = FMA(c10, a, b); c11 = FMA(c11, a, b);
    }
    *(float *)out = first(c0) + first(c1) + first(c2) + first(c3) + first(c4) + first(c5) +
                    first(c6) + first(c7) + first(c8) + first(c9) + first(c10) + first(c11);
    return 0;
}

int main(void) {
    int n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n > 64) n = 64;
    pthread_t th[64];
    float o[64];
    double best1 = 0, bestn = 0;
    for (int rep = 0; rep < 3; ++rep) {
        double t = now();
        work(&o[0]);
        double g1 = 2.0 * W * (ITERS / 12 * 12) / (now() - t) / 1e9;
        t = now();
        for (int i = 0; i < n; i++) pthread_create(&th[i], 0, work, &o[i]);
        for (int i = 0; i < n; i++) pthread_join(th[i], 0);
        double gn = 2.0 * W * (ITERS / 12 * 12) * n / (now() - t) / 1e9;
        if (g1 > best1) best1 = g1;
        if (gn > bestn) bestn = gn;
    }
    printf("fma_peak width=%d one_core=%.1f all_cores=%.1f cores=%d sink=%g\n", W, best1, bestn, n,
           (double)o[0]);
    return 0;
}
