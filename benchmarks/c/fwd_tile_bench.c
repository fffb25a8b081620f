/*
 * fwd_tile_bench.c -- cycles of one blocked-forward tile (src/cpu/fwd_block.h)
 * on its own: 16 queries, K x K window (default the vision case, K = 7,
 * D = 64), packed rows that stay in L2, no caller around it.
 *   fwd_tile_bench [K] [D]
 * Prints cycles per line-tile (one line of 16 queries) for a lone line and
 * for a pair of lines (blk_args.pair), the core clock measured here with a
 * dependent imul chain (3 cycles each), and the FMA-bound cycles (2 FMA
 * pipes, 16 lanes: QK and AV each K*K*D/2).  Comparing with a whole forward
 * (cpu_bench: ms x GHz / tiles) shows how much of it the tile's arithmetic is.
 * Minimum and median of 101 interleaved batches: on a shared host (another
 * tenant on the core's SMT sibling takes FMA and shuffle ports) single
 * batches move by 1.5x, and the minimum is the tile undisturbed.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cpu/fwd_block.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* GHz: 3e8 dependent imuls (latency 3 cycles on every x86 core we target). */
static double core_ghz(void) {
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
        uint64_t x = 3, n = 99999999; /* a multiple of 3: the loop counts down by 3 */
        const double t0 = now();
#if defined(__x86_64__)
        __asm__ volatile("1: imul %0, %0\n imul %0, %0\n imul %0, %0\n sub $3, %1\n jnz 1b" : "+r"(x), "+r"(n));
#endif
        const double g = 3.0 * 99999999 / (now() - t0) / 1e9;
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv) {
#if !defined(NATTEN_HAVE_X86)
    (void)argc;
    (void)argv;
    puts("fwd_tile_bench: x86 only");
    return 0;
#else
    const int K = argc > 1 ? atoi(argv[1]) : 7, D = argc > 2 ? atoi(argv[2]) : 64;
    if (K < 1 || K > 17 || D < 1 || D > 256) {
        fprintf(stderr, "K in 1..17, D in 1..256\n");
        return 2;
    }
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq")) {
        puts("fwd_tile_bench: this CPU has no AVX-512 (the tile measured here)");
        return 0;
    }
    const blk_kernel *bk = &natten_blk_avx512;
    const int64_t XP = 144, VLD = (D + 15) / 16 * 16, NR = K + 1; /* the driver's pitch for 64 positions */
    const size_t slot = (size_t)(D * XP + XP * VLD);
    float *pack = aligned_alloc(64, sizeof(float) * slot * (size_t)NR);
    float *qt = aligned_alloc(64, sizeof(float) * 2 * (size_t)D * 16);
    float *sbuf = aligned_alloc(64, sizeof(float) * 2 * (size_t)NR * K * 16);
    float *ob = aligned_alloc(64, sizeof(float) * 32 * (size_t)VLD);
    if (!pack || !qt || !sbuf || !ob) return 1;
    for (size_t i = 0; i < slot * (size_t)NR; ++i) pack[i] = (float)((i * 7919) % 1000) / 1000.f - 0.5f;
    for (int i = 0; i < 2 * D * 16; ++i) qt[i] = (float)((i * 31) % 17) / 17.f - 0.5f;
    const float *kr[18], *vr[18];
    for (int i = 0; i < NR; ++i) {
        kr[i] = pack + (size_t)i * slot + 32; /* an interior tile: 16 + K/2 positions in */
        vr[i] = pack + (size_t)i * slot + (size_t)D * XP + 32 * VLD;
    }
    float *out[32], lse[32];
    for (int l = 0; l < 32; ++l) out[l] = ob + l * VLD;
    int32_t off[16];
    for (int l = 0; l < 16; ++l) off[l] = l;
    blk_args a = {.qt = qt, .kr = kr, .vr = vr, .kld = XP, .vld = VLD, .nrow = K, .K = K, .D = D, .Dv = D,
                  .nl = 16, .off = off, .uniform = 1, .run_hi = 16, .scale = 0.125f, .sbuf = sbuf, .out = out,
                  .lse = lse};
    blk_args b = a; /* the paired line: its own queries, scores and outputs, rows one further */
    b.qt = qt + D * 16;
    b.sbuf = sbuf + NR * K * 16;
    b.out = out + 16;
    b.lse = lse + 16;
    b.rb = 1;
    blk_args ap = a;
    ap.pair = &b;
    const double ghz = core_ghz();
    enum { BATCHES = 101, N = 200 };
    double lone[BATCHES], paired[BATCHES];
    for (int r = 0; r < BATCHES; ++r) { /* interleaved: drift hits both alike */
        double t0 = now();
        for (int n = 0; n < N; ++n) bk->fwd(&a);
        double t1 = now();
        for (int n = 0; n < N; ++n) bk->fwd(&ap);
        double t2 = now();
        lone[r] = (t1 - t0) / N * ghz * 1e9;
        paired[r] = (t2 - t1) / N / 2 * ghz * 1e9;
    }
    qsort(lone, BATCHES, sizeof(double), cmp_double);
    qsort(paired, BATCHES, sizeof(double), cmp_double);
    printf("fwd_tile_bench K=%d D=%d ghz=%.2f cycles_per_line_tile min/median lone=%.0f/%.0f paired=%.0f/%.0f "
           "fma_bound=%d (checksum %g)\n",
           K, D, ghz, lone[0], lone[BATCHES / 2], paired[0], paired[BATCHES / 2], K * K * D,
           (double)ob[5] + (double)lse[3]);
    return 0;
#endif
}
