/*
 * fwd_block.h -- the blocked forward's microkernel contract (driver in
 * src/cpu/fast_fwd_block.c, kernels per ISA).
 *
 * One call computes one tile: up to `lanes` consecutive queries of one
 * dilation group of the last axis (queries on vector lanes), over `nrow`
 * leading rows of keys.  Keys are lane-major (kr[i][c*kld + j]: channel c
 * of position j of row i), values row-major (vr[i][j*vld + c]).  Lane l's
 * slot k of every row is position off[l] + k, 0 <= off[l] <= span - K.
 *   s[i*K+k][l] = scale * q_l . k + (bias ? bias[(i*K+k)*lanes + l] : 0), masked to -inf
 *                 where bit l of vmask[k] is clear (vmask NULL: all valid);
 *   out[l][c]   = sum softmax(s)[.][l] * v          (lanes l < nl only)
 *   lse[l]      = log-sum-exp of lane l's scores.
 * Every lane is computed on its own, in a fixed order, so the result does
 * not depend on which thread runs the tile.  Kernels with `pair` take a
 * second line of queries over the same positions (blk_args.pair), with the
 * same result for each line as two calls.
 */
#ifndef NATTEN_CPU_FWD_BLOCK_H
#define NATTEN_CPU_FWD_BLOCK_H

#include <stdint.h>

#include "natten.h"

typedef struct blk_args blk_args;
struct blk_args {
    const float *qt;          /* [D][lanes]: lane l's query at qt[c*lanes + l]; idle lanes 0 */
    const float *const *kr;   /* nrow lane-major key rows (see above) */
    const float *const *vr;   /* nrow row-major value rows */
    int64_t kld, vld, nrow, K, D, Dv, nl;
    const int32_t *off;       /* [lanes] */
    int uniform;              /* off[l] == l for every lane: slot k of lane l is position l + k */
    int32_t run_lo, run_hi;   /* lanes [run_lo, run_hi) (may be empty) have off[l] == l + run_shift, */
    int32_t run_shift;        /* and value positions run_shift + [0, lanes + K - 1) may be read */
    const uint32_t *vmask;    /* [K] or NULL */
    const float *bias;        /* [nrow*K][lanes] (rpb of lane l's slot) or NULL */
    float scale;
    float *sbuf;              /* nrow*K*lanes scratch */
    float *const *out;        /* nl rows of Dv f32 */
    int stream;               /* out rows are 64-byte aligned, Dv a multiple of 16 floats, and
                               * the output is too large to stay cached: stores may bypass the
                               * cache (the caller fences) */
    float *lse;               /* [lanes] */
    const char *const *pf;    /* npf cache lines the caller needs soon: a tile spreads their */
    int64_t npf;              /* prefetches over its arithmetic (a burst would stall on the fill buffers) */
    uint16_t *const *out16;   /* or NULL: nl bf16 rows (contiguous channels) the tile rounds its outputs
                               * into, as natten_f32_to_bf16 does (only kernels with bf16_out) */
    const struct blk_args *pair; /* or NULL (only kernels with `pair`): a second line of queries over the
                               * same last-axis positions (off, uniform, run, vmask, nl, pf as here), its
                               * own qt, sbuf, bias, out, out16, lse; its kr/vr are this line's shifted by
                               * pair->rb rows (shared rows are the same pointers), so its rows and these
                               * form one list of max(nrow, rb + pair->nrow) rows */
    int64_t rb;
};

/*
 * The QK dispatch shared by the SIMD tiles: all slots of a row in one pass
 * when K <= 8, N1..N8 rows at a time for K = 1..8 (so ~8-12 FMA chains are
 * in flight), else chunks of 8 slots row by row.  The includer defines
 * QK_SMALL(KC, NRM) and QK_CHUNK(KC) (cases of a switch; QK_CHUNK sees the
 * row i and first slot k0).
 */
#define BLK_QK_DISPATCH(K, nrow, N1, N2, N3, N4, N5, N6, N7, N8)          \
    switch (K) {                                                         \
        QK_SMALL(1, N1);                                                 \
        QK_SMALL(2, N2);                                                 \
        QK_SMALL(3, N3);                                                 \
        QK_SMALL(4, N4);                                                 \
        QK_SMALL(5, N5);                                                 \
        QK_SMALL(6, N6);                                                 \
        QK_SMALL(7, N7);                                                 \
        QK_SMALL(8, N8);                                                 \
    default:                                                             \
        for (int64_t i = 0; i < (nrow); ++i)                             \
            for (int64_t k0 = 0; k0 < (K); k0 += 8) {                    \
                switch ((K) - k0 < 8 ? (K) - k0 : 8) {                   \
                    QK_CHUNK(1);                                         \
                    QK_CHUNK(2);                                         \
                    QK_CHUNK(3);                                         \
                    QK_CHUNK(4);                                         \
                    QK_CHUNK(5);                                         \
                    QK_CHUNK(6);                                         \
                    QK_CHUNK(7);                                         \
                    QK_CHUNK(8);                                         \
                }                                                        \
            }                                                            \
    }

typedef struct blk_kernel {
    void (*fwd)(const blk_args *a);
    int lanes; /* queries per tile */
    int span;  /* positions a lane's offset plus K may reach */
    int bf16_out; /* takes out16 (a store_row per output row cost 20% of a bf16 1-D forward) */
    int pair;     /* takes pair: each key row's slot vectors feed both lines' queries */
} blk_kernel;

extern const blk_kernel natten_blk_scalar;
#if defined(NATTEN_HAVE_X86)
extern const blk_kernel natten_blk_avx2;
extern const blk_kernel natten_blk_avx512;
#endif

#endif /* NATTEN_CPU_FWD_BLOCK_H */
