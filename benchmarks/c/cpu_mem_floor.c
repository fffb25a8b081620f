/*
 * cpu_mem_floor.c -- the least time this machine needs to stream a forward's
 * memory traffic: read three arrays (q, k, v) and write one (out) of BYTES
 * bytes each, split over one thread per online core, with the widest vector
 * loads and non-temporal stores (no read-for-ownership of the output).
 * No attention kernel can finish faster than this, whatever its FLOP rate:
 * benchmarks/cpu_benchmark.py prints it beside the vision rows to show how
 * much of the FMA peak memory alone leaves reachable.
 * Usage: cpu_mem_floor [BYTES]   (default 67108864 = B8 64x64 H8 D64 f32)
 * Prints: mem_floor bytes=<each array> ms=<best of 7> gbps=<bytes moved / s> cores=<n>
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef struct {
    const float *q, *k, *v;
    float *out;
    size_t n; /* floats in this thread's slice */
    float sink;
} slice_t;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *stream(void *arg) {
    slice_t *s = arg;
    size_t i = 0;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= s->n; i += 16) {
        __m512 x = _mm512_add_ps(_mm512_load_ps(s->q + i), _mm512_load_ps(s->k + i));
        x = _mm512_add_ps(x, _mm512_load_ps(s->v + i));
        acc = _mm512_add_ps(acc, x);
        _mm512_stream_ps(s->out + i, x);
    }
    _mm_sfence();
    float part = _mm512_reduce_add_ps(acc);
#elif defined(__AVX__)
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= s->n; i += 8) {
        __m256 x = _mm256_add_ps(_mm256_load_ps(s->q + i), _mm256_load_ps(s->k + i));
        x = _mm256_add_ps(x, _mm256_load_ps(s->v + i));
        acc = _mm256_add_ps(acc, x);
        _mm256_stream_ps(s->out + i, x);
    }
    _mm_sfence();
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    float part = 0;
    for (int l = 0; l < 8; l++) part += lanes[l];
#else
    float part = 0;
#endif
    for (; i < s->n; i++) {
        float x = s->q[i] + s->k[i] + s->v[i];
        part += x;
        s->out[i] = x;
    }
    s->sink = part;
    return 0;
}

int main(int argc, char **argv) {
    size_t bytes = argc > 1 ? strtoull(argv[1], 0, 10) : 67108864u;
    size_t n = bytes / sizeof(float) / 64 * 64;
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (cores > 64) cores = 64;
    float *buf[4];
    for (int b = 0; b < 4; b++) {
        buf[b] = aligned_alloc(64, n * sizeof(float));
        if (!buf[b]) {
            fprintf(stderr, "cpu_mem_floor: cannot allocate %zu bytes\n", n * sizeof(float));
            return 1;
        }
        memset(buf[b], b == 3 ? 0 : 1, n * sizeof(float)); /* touch every page before timing */
    }
    slice_t sl[64];
    pthread_t th[64];
    size_t per = (n / cores) / 16 * 16;
    double best = 1e30;
    for (int rep = 0; rep < 7; rep++) {
        double t = now();
        for (int c = 0; c < cores; c++) {
            size_t lo = per * (size_t)c, len = c == cores - 1 ? n - lo : per;
            sl[c] = (slice_t){buf[0] + lo, buf[1] + lo, buf[2] + lo, buf[3] + lo, len, 0};
            pthread_create(&th[c], 0, stream, &sl[c]);
        }
        for (int c = 0; c < cores; c++) pthread_join(th[c], 0);
        double dt = now() - t;
        if (dt < best) best = dt;
    }
    double moved = 4.0 * n * sizeof(float);
    printf("mem_floor bytes=%zu ms=%.2f gbps=%.2f cores=%d sink=%g\n", n * sizeof(float), best * 1e3,
           moved / best / 1e9, cores, (double)sl[0].sink);
    for (int b = 0; b < 4; b++) free(buf[b]);
    return 0;
}
