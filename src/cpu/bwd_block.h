/*
 * bwd_block.h -- the blocked fused backward's tile contract (driver in
 * src/cpu/fast_bwd_block.c, tiles per ISA).
 *
 * Packs are lane-major over the last axis: channel c of position x of a
 * (batch, head, leading row) row is at row[c*ld + x].  P and dS are kept
 * planar per query row: [lead slot][last slot][position].
 *
 * Query tile (16 consecutive queries of one row on lanes; lane l's slot k of
 * leading row i is key position off[l] + k of kr[i] / vr[i]):
 *   s  = scale * q.k,  P = exp(s - lse)  (0 where bit l of vmask[k] is clear),
 *   dP = dO.v,  dS = P (dP - delta)  (0 where masked),
 *   pp[i*K+k][l] = P, sp[i*K+k][l] = dS  for lanes l < nl,
 *   dq_t[c*16 + l] = scale * sum_{i,k valid} dS k[c]  (masked slots are never multiplied: their
 *                    key positions belong to other queries and may hold inf).
 * Key tile (16 consecutive keys of one row on lanes) over nterm terms, each
 * a shift of whole vectors:
 *   dv_t[c*16 + l] = sum_t (mask_t[l] ? P_t[l] dO_t[c*ld + l] : 0),
 *   dk_t[c*16 + l] = scale * sum_t (mask_t[l] ? dS_t[l] q_t[c*ld + l] : 0),
 * where P_t = pw + poff[t], dS_t = sw + poff[t], dO_t = dr[t], q_t = qr[t].
 * Masked lanes are never loaded (their addresses may lie outside a row).
 * Every lane and term is summed in a fixed order, so a tile's result does
 * not depend on the thread that runs it.
 */
#ifndef NATTEN_CPU_BWD_BLOCK_H
#define NATTEN_CPU_BWD_BLOCK_H

#include <stdint.h>

#include "natten.h"

typedef struct bwdq_args {
    const float *qt, *dot;    /* q and dO of the tile's queries: channel c of lane l at qt[c*16 + l] */
    const float *const *kr;   /* nrow lane-major key rows, shifted so lane l slot k is at off[l] + k */
    const float *const *vr;   /* the same for values */
    int64_t ld, nrow, K, D, Dv, nl;
    const int32_t *off;       /* [16], 0 <= off[l] <= 32 - K */
    int uniform;              /* off[l] == l for every lane */
    const uint32_t *vmask;    /* [K]: bit l set where lane l's slot k is valid (lanes >= nl clear) */
    float scale;
    const float *lse, *delta; /* [16] */
    float *const *pp, *const *sp; /* [nrow*K]: where lane 0's P / dS go */
    float *sbuf;              /* 2*nrow*K*16 scratch, 64-byte aligned */
    float *dq_t;              /* [D][16] */
    int stream;               /* pp/sp are 64-byte aligned, nl == 16 and the planes are too large to
                               * stay cached: stores may bypass the cache (the caller fences) */
    const char *const *pf;    /* npf cache lines the caller needs soon: a tile spreads their */
    int64_t npf;              /* prefetches over its arithmetic */
} bwdq_args;

typedef struct bwdk_args {
    int64_t nterm, ld, D, Dv;
    const float *pw, *sw;     /* P and dS planes */
    const int64_t *poff;      /* [nterm] */
    const float *const *qr, *const *dr; /* [nterm] q / dO lane-major rows at lane 0 */
    const uint32_t *mask;     /* [nterm] */
    const uint8_t *more;      /* [nterm]: term j+1 has the same rows (qr, dr) and disjoint lanes
                               * (a hint: P / dS of such terms may be merged into one vector) */
    float scale;
    float *dk_t, *dv_t;       /* [D][16], [Dv][16] */
    int64_t pf_next;          /* the next tile's P / dS are about pf_next floats further (a prefetch hint) */
    const char *const *pf;    /* npf cache lines the caller needs soon (the tile's dk / dv rows): */
    int64_t npf;              /* a tile spreads their prefetches over its arithmetic */
} bwdk_args;

typedef struct bwd_blk_kernel {
    void (*query)(const bwdq_args *a);
    void (*key)(const bwdk_args *a);
    /* a [C][16] tile result's lanes l < nl as bf16 rows dst[l*ls + c], rounding as
     * natten_f32_to_bf16 (nearest even, NaN kept) */
    void (*bf16_rows)(const float *tt, uint16_t *dst, int64_t ls, int64_t C, int64_t nl);
    /* nb <= 16 bf16 rows of C contiguous channels, rs elements apart, as f32
     * lane-major: dst[c*ld + i] (i < nb; other lanes untouched) -- the packs'
     * conversion inside the transpose, no f32 row copy in between */
    void (*bf16_lanes)(const uint16_t *src, int64_t rs, float *dst, int64_t ld, int64_t nb, int64_t C);
    /* the same for f32 rows (NULL: the ISA's generic transpose) */
    void (*f32_rows)(const float *tt, float *dst, int64_t ls, int64_t C, int64_t nl);
    void (*f32_lanes)(const float *src, int64_t rs, float *dst, int64_t ld, int64_t nb, int64_t C);
} bwd_blk_kernel;

extern const bwd_blk_kernel natten_bwd_blk_scalar;
#if defined(NATTEN_HAVE_X86)
extern const bwd_blk_kernel natten_bwd_blk_avx512;
extern const bwd_blk_kernel natten_bwd_blk_avx2;
#endif

/* A key tile's prefetches at term j of plane w: its term `ahead` terms on;
 * pf (the other plane, read by the next pass): this term's, and both
 * planes' for the next tile into L2 (P / dS were written a whole pass ago
 * and their terms hop between planes). */
static inline __attribute__((always_inline)) void bwdk_prefetch(const bwdk_args *a, const float *w, const float *pf,
                                                                int64_t j, int64_t ahead) {
    if (j + ahead < a->nterm) {
        __builtin_prefetch(w + a->poff[j + ahead], 0, 3);
        __builtin_prefetch(w + a->poff[j + ahead] + 15, 0, 3);
    }
    if (pf) {
        __builtin_prefetch(pf + a->poff[j], 0, 3);
        __builtin_prefetch(pf + a->poff[j] + 15, 0, 3);
        __builtin_prefetch(w + a->poff[j] + a->pf_next, 0, 2);
        __builtin_prefetch(pf + a->poff[j] + a->pf_next, 0, 2);
    }
}

/* Case lists of the tiles' channel-chunk switches: X(NC) expands to
 * "case NC: ...; break" with the chunk's channel count a compile-time
 * constant, so each chunk's accumulators stay in registers. */
#define BWD_NC_CASES4(X) X(1); X(2); X(3); X(4)
#define BWD_NC_CASES6(X) BWD_NC_CASES4(X); X(5); X(6)
#define BWD_NC_CASES8(X) BWD_NC_CASES6(X); X(7); X(8)

/* An ISA's tile table `name` from its query and key tiles and its
 * to_rows(tt, dst, lsb, C, nl, BF16) / to_lanes(src, rsb, dst, ld, nb, C, BF16)
 * transposes (byte pitches; BF16: widen on the way in, round on the way out). */
#define BWD_BLK_KERNEL(name, query, key)                                                                      \
    static void name##_bf16_rows(const float *tt, uint16_t *dst, int64_t ls, int64_t C, int64_t nl) {         \
        to_rows(tt, (char *)dst, ls * 2, C, nl, 1);                                                           \
    }                                                                                                         \
    static void name##_bf16_lanes(const uint16_t *src, int64_t rs, float *dst, int64_t ld, int64_t nb,        \
                                  int64_t C) {                                                                \
        to_lanes((const char *)src, rs * 2, dst, ld, nb, C, 1);                                               \
    }                                                                                                         \
    static void name##_f32_rows(const float *tt, float *dst, int64_t ls, int64_t C, int64_t nl) {             \
        to_rows(tt, (char *)dst, ls * 4, C, nl, 0);                                                           \
    }                                                                                                         \
    static void name##_f32_lanes(const float *src, int64_t rs, float *dst, int64_t ld, int64_t nb, int64_t C) { \
        to_lanes((const char *)src, rs * 4, dst, ld, nb, C, 0);                                               \
    }                                                                                                         \
    const bwd_blk_kernel name = {query, key, name##_bf16_rows, name##_bf16_lanes, name##_f32_rows, name##_f32_lanes}

/* The blocked backward on the caller's tensors (fast_bwd_block.c): SUCCESS,
 * or UNSUPPORTED (nothing written) for problems it leaves to the generic
 * path.  c: common_init'ed, no views made. */
struct common;
natten_status bwd_block_run(struct common *c, const natten_tensor *q, const natten_tensor *k,
                            const natten_tensor *v, const natten_tensor *out, const natten_tensor *lse,
                            const natten_tensor *dout, natten_tensor *dq, natten_tensor *dk, natten_tensor *dv);

#endif /* NATTEN_CPU_BWD_BLOCK_H */
