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
 * not depend on which thread runs the tile.
 */
#ifndef NATTEN_CPU_FWD_BLOCK_H
#define NATTEN_CPU_FWD_BLOCK_H

#include <stdint.h>

#include "natten.h"

typedef struct blk_args {
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
} blk_args;

typedef struct blk_kernel {
    void (*fwd)(const blk_args *a);
    int lanes; /* queries per tile */
    int span;  /* positions a lane's offset plus K may reach */
} blk_kernel;

extern const blk_kernel natten_blk_scalar;
#if defined(NATTEN_HAVE_X86)
extern const blk_kernel natten_blk_avx2;
extern const blk_kernel natten_blk_avx512;
#endif

#endif /* NATTEN_CPU_FWD_BLOCK_H */
