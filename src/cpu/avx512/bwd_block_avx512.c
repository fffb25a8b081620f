/*
 * bwd_block_avx512.c -- AVX-512 blocked-backward tiles, 16 lanes (contract
 * in cpu/bwd_block.h).
 *
 * Query tile: like the blocked forward's QK, per channel one vector of 16
 * queries (q, or dO) meets one key (value) vector per slot, built from the
 * 32 positions [0, 32) of a lane-major row with one two-source permute
 * (lane l, slot k: position off[l] + k); several leading rows per pass so
 * ~12 FMA chains are in flight.  dq runs the same shifted vectors against
 * dS, 8 channels at a time.  Key tile: per term one P (dS) vector and one
 * row vector per channel, 16 channels' accumulators in registers; no
 * gathers, no horizontal sums.
 */
#include <immintrin.h>
#include <math.h>

#include "cpu/avx512/simd_avx512.h"
#include "cpu/bwd_block.h"
#include "cpu/fwd_block.h"

#define AI static inline __attribute__((always_inline))
#define KEY_PF 6 /* terms ahead */
#define PF_EVERY 2 /* channel steps per caller prefetch in the query tile's dots */

/* prefetcht0 without a memory operand: with _mm_prefetch in a loop GCC kept
 * the accumulator arrays in memory (as in the blocked forward) */
AI void pf_line(const char *p) { __asm__ volatile("prefetcht0 (%0)" : : "r"(p)); }

/* Raw dots of rows [i0, i0+NR), slots [k0, k0+KC): x (lane-major, C
 * channels) against rows[i] shifted per lane by idx, into out[(i*K+k)*16].
 * The caller's prefetches go out one per PF_EVERY channel steps from *pfi
 * (the query tile's 144-192 lines in its softmax loop alone stalled on the
 * fill buffers: a fifth of the tile's own samples on one prefetcht0). */
AI void dots_rows(const bwdq_args *a, const float *x, const float *const *rows, int64_t C, float *out, int64_t i0,
                  const int NR, const int KC, int64_t k0, const __m512i *idx, int64_t *pfi) {
    __m512 acc[NR * KC];
    const float *p[NR];
    for (int t = 0; t < NR * KC; ++t) acc[t] = _mm512_setzero_ps();
    for (int rr = 0; rr < NR; ++rr) p[rr] = rows[i0 + rr];
    const int64_t ld = a->ld;
    const int64_t npq = (C + PF_EVERY - 1) / PF_EVERY, npf = a->npf - *pfi < npq ? a->npf - *pfi : npq;
    const char *const *pf = a->pf + *pfi; /* a local cursor: a write through pfi in the loop spilled acc[] */
    *pfi += npf;
    for (int64_t c = 0, j = 0; c < C; ++c) {
        if (c % PF_EVERY == 0 && j < npf) pf_line(pf[j++]);
        const __m512 xv = _mm512_load_ps(x + c * 16);
        for (int rr = 0; rr < NR; ++rr) {
            const float *kc = p[rr] + c * ld;
            const __m512 lo = _mm512_loadu_ps(kc), hi = _mm512_loadu_ps(kc + 16);
            for (int t = 0; t < KC; ++t)
                acc[rr * KC + t] = _mm512_fmadd_ps(xv, _mm512_permutex2var_ps(lo, idx[k0 + t], hi), acc[rr * KC + t]);
        }
    }
    for (int rr = 0; rr < NR; ++rr)
        for (int t = 0; t < KC; ++t) _mm512_store_ps(out + ((i0 + rr) * a->K + k0 + t) * 16, acc[rr * KC + t]);
}

#define QK_SMALL(KC, NRM)                                                                 \
    case KC: {                                                                            \
        int64_t i = 0;                                                                    \
        for (; i + NRM <= a->nrow; i += NRM) dots_rows(a, x, rows, C, out, i, NRM, KC, 0, idx, pfi); \
        for (; i < a->nrow; ++i) dots_rows(a, x, rows, C, out, i, 1, KC, 0, idx, pfi);         \
    } break

#define QK_CHUNK(KC) \
    case KC: dots_rows(a, x, rows, C, out, i, 1, KC, k0, idx, pfi); break

static void dots_all(const bwdq_args *a, const float *x, const float *const *rows, int64_t C, float *out,
                     const __m512i *idx, int64_t *pfi) {
    BLK_QK_DISPATCH(a->K, a->nrow, 12, 6, 4, 3, 2, 2, 1, 1)
}

#undef QK_SMALL
#undef QK_CHUNK

/* dq channels [c0, c0+NC): sum over (i, k) of dS[i,k] times the shifted key vectors. */
AI void dq_chunk(const bwdq_args *a, const float *ds, int64_t c0, const int NC, const __m512i *idx, __m512 sc) {
    __m512 acc[NC];
    for (int t = 0; t < NC; ++t) acc[t] = _mm512_setzero_ps();
    const int64_t ld = a->ld, K = a->K;
    for (int64_t i = 0; i < a->nrow; ++i) {
        __m512 lo[NC], hi[NC];
        const float *kc = a->kr[i] + c0 * ld;
        for (int t = 0; t < NC; ++t) {
            lo[t] = _mm512_loadu_ps(kc + t * ld);
            hi[t] = _mm512_loadu_ps(kc + t * ld + 16);
        }
        for (int64_t k = 0; k < K; ++k) {
            /* masked lanes skip the FMA: their key position is another
             * query's key, which may be inf (0 * inf would be NaN) */
            const __mmask16 m = (__mmask16)a->vmask[k];
            const __m512 w = _mm512_load_ps(ds + (i * K + k) * 16);
            for (int t = 0; t < NC; ++t)
                acc[t] = _mm512_mask3_fmadd_ps(w, _mm512_permutex2var_ps(lo[t], idx[k], hi[t]), acc[t], m);
        }
    }
    for (int t = 0; t < NC; ++t) _mm512_store_ps(a->dq_t + (c0 + t) * 16, _mm512_mul_ps(acc[t], sc));
}

#define DQ_NC(NC) \
    case NC: dq_chunk(a, ds, c0, NC, idx, sc); break

static void bwd_query_avx512(const bwdq_args *a) {
    const int64_t K = a->K, n = a->nrow * K;
    __m512i idx[32];
    const __m512i off = _mm512_loadu_si512(a->off);
    for (int64_t k = 0; k < K; ++k) idx[k] = _mm512_add_epi32(off, _mm512_set1_epi32((int)k));
    float *sb = a->sbuf, *db = a->sbuf + n * 16;
    int64_t pfi = 0;
    dots_all(a, a->qt, a->kr, a->D, sb, idx, &pfi);
    dots_all(a, a->dot, a->vr, a->Dv, db, idx, &pfi);
    /* what is left of the caller's prefetches spread over the softmax loop
     * (in one burst they stall on the fill buffers) */
    const int64_t pfstep = (a->npf - pfi + n - 1) / n;
    const __m512 sc = _mm512_set1_ps(a->scale), lse = _mm512_loadu_ps(a->lse), delta = _mm512_loadu_ps(a->delta);
    const __mmask16 store = (__mmask16)((1u << a->nl) - 1u);
    for (int64_t j = 0; j < n; ++j) {
        for (int64_t t = 0; t < pfstep && pfi < a->npf; ++t) pf_line(a->pf[pfi++]);
        const __mmask16 m = (__mmask16)a->vmask[j % K];
        const __m512 p = _mm512_maskz_mov_ps(m, exp512(_mm512_fmsub_ps(_mm512_load_ps(sb + j * 16), sc, lse)));
        const __m512 ds = _mm512_maskz_mov_ps(m, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_load_ps(db + j * 16), delta)));
        if (a->stream) { /* no read-for-ownership of lines the key pass reads much later */
            _mm512_stream_ps(a->pp[j], p);
            _mm512_stream_ps(a->sp[j], ds);
        } else {
            _mm512_mask_storeu_ps(a->pp[j], store, p);
            _mm512_mask_storeu_ps(a->sp[j], store, ds);
        }
        _mm512_store_ps(sb + j * 16, ds);
    }
    const float *ds = sb;
    for (int64_t c0 = 0; c0 < a->D; c0 += 8) {
        switch (a->D - c0 < 8 ? a->D - c0 : 8) {
            BWD_NC_CASES8(DQ_NC);
        }
    }
}

/* out channels [c0, c0+NC) of a key tile: sum over terms of w * rows.
 * Named accumulators: with an array GCC kept them in memory (one load and
 * store per FMA). */
AI void key_chunk(const bwdk_args *a, const float *w, const float *const *rows, int64_t c0, const int NC,
                  float *out, __m512 mul, const float *pf) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const int64_t ld = a->ld;
    __m512 wv = _mm512_setzero_ps();
    __mmask16 m = 0;
    for (int64_t j = 0; j < a->nterm; ++j) {
        bwdk_prefetch(a, w, pf, j, KEY_PF);
        /* terms of one shift: their lanes merged into one weight vector */
        const __mmask16 mj = (__mmask16)a->mask[j];
        wv = m ? _mm512_mask_loadu_ps(wv, mj, w + a->poff[j]) : _mm512_maskz_loadu_ps(mj, w + a->poff[j]);
        m |= mj;
        if (!a->more[j]) { /* masked lanes' addresses may lie outside the row */
            const float *r = rows[j] + c0 * ld;
#define KEY_FMA(T, A) \
    if (NC > T) A = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, r + T * ld), A)
            KEY_FMA(0, a0);
            KEY_FMA(1, a1);
            KEY_FMA(2, a2);
            KEY_FMA(3, a3);
            KEY_FMA(4, a4);
            KEY_FMA(5, a5);
            KEY_FMA(6, a6);
            KEY_FMA(7, a7);
#undef KEY_FMA
            m = 0;
        }
    }
    const __m512 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int t = 0; t < NC; ++t) _mm512_store_ps(out + (c0 + t) * 16, _mm512_mul_ps(acc[t], mul));
}

#define KEY_NC(NC) \
    case NC: key_chunk(a, w, rows, c0, NC, out, mul, c0 == 0 ? pf : NULL); break

/* 8 channels per pass: with 16, GCC kept the accumulators in memory and
 * the 16 row addresses in vector registers (spills in the inner loop).  The
 * caller's lines (a->pf) go out `share` after each pass: a loop over them in
 * the term loop, even when empty, slowed the bf16 3-D 16^3 backward 3%. */
AI void key_side(const bwdk_args *a, const float *w, const float *const *rows, int64_t C, float *out, __m512 mul,
                const float *pf, int64_t *pfi, int64_t share, const int PFL) {
    if (C > 0)
        for (int64_t j = 0; j < KEY_PF && j < a->nterm; ++j) {
            _mm_prefetch((const char *)(w + a->poff[j]), _MM_HINT_T0);
            _mm_prefetch((const char *)(w + a->poff[j] + 15), _MM_HINT_T0);
        }
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
        switch (C - c0 < 8 ? C - c0 : 8) {
            BWD_NC_CASES8(KEY_NC);
        }
        if (PFL)
            for (const int64_t e = *pfi + share; *pfi < a->npf && *pfi < e;) pf_line(a->pf[(*pfi)++]);
    }
}

AI void key_sides(const bwdk_args *a, const int PFL) {
    const int64_t passes = (a->Dv + 7) / 8 + (a->D + 7) / 8, share = (a->npf + passes - 1) / passes;
    int64_t pfi = 0;
    key_side(a, a->pw, a->dr, a->Dv, a->dv_t, _mm512_set1_ps(1.0f), a->sw, &pfi, share, PFL);
    key_side(a, a->sw, a->qr, a->D, a->dk_t, _mm512_set1_ps(a->scale), NULL, &pfi, share, PFL);
}

static void bwd_key_avx512(const bwdk_args *a) {
    if (a->npf) key_sides(a, 1);
    else key_sides(a, 0);
}

/* The backward's transposes between the caller's rows and [channel][lane]
 * packs, f32 or bf16 (BF16: widened on the way in, rounded on the way out,
 * no f32 row copy in scratch -- the bf16 backward spent ~8% of its samples
 * on such copies).  Row addresses advance by a byte pitch one row at a time:
 * the shared transpose keeps 16 source and 16 destination pointers, more than
 * the registers, and reloaded them from the stack in its full-block loop. */
AI __m512 lanes_load(const char *p, __mmask16 m, const int BF16) {
    return BF16 ? bf16x16_to_f32(_mm256_maskz_loadu_epi16(m, p)) : _mm512_maskz_loadu_ps(m, p);
}

AI void rows_store(char *p, __mmask16 m, __m512 v, const int BF16) {
    if (BF16) _mm512_mask_cvtepi32_storeu_epi16(p, m, f32x16_to_bf16(v));
    else _mm512_mask_storeu_ps(p, m, v);
}

/* tt[c*16 + l] (l < nl) -> row l of dst (rows lsb bytes apart), channel c. */
AI void to_rows(const float *tt, char *dst, int64_t lsb, int64_t C, int64_t nl, const int BF16) {
    const int es = BF16 ? 2 : 4;
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const int64_t nc = C - c0 < 16 ? C - c0 : 16;
        const __mmask16 cmask = nc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nc) - 1u);
        __m512 r[16], o[16];
        for (int j = 0; j < 16; ++j) r[j] = j < nc ? _mm512_load_ps(tt + (c0 + j) * 16) : _mm512_setzero_ps();
        transpose16(r, o);
        char *q = dst + c0 * es;
        if (nl == 16)
            for (int l = 0; l < 16; ++l, q += lsb) rows_store(q, cmask, o[l], BF16);
        else
            for (int64_t l = 0; l < nl; ++l, q += lsb) rows_store(q, cmask, o[l], BF16);
    }
}

/* nb <= 16 rows (rsb bytes apart) of C channels -> dst[c*ld + i]. */
AI void to_lanes(const char *src, int64_t rsb, float *dst, int64_t ld, int64_t nb, int64_t C, const int BF16) {
    const int es = BF16 ? 2 : 4;
    const __mmask16 rmask = nb >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nb) - 1u);
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const int64_t nc = C - c0 < 16 ? C - c0 : 16;
        const __mmask16 cmask = nc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nc) - 1u);
        __m512 r[16], o[16];
        const char *p = src + c0 * es;
        if (nb == 16)
            for (int i = 0; i < 16; ++i, p += rsb) r[i] = lanes_load(p, cmask, BF16);
        else
            for (int i = 0; i < 16; ++i, p += rsb) r[i] = i < nb ? lanes_load(p, cmask, BF16) : _mm512_setzero_ps();
        transpose16(r, o);
        float *q = dst + c0 * ld;
        if (nc == 16)
            for (int j = 0; j < 16; ++j, q += ld) _mm512_mask_storeu_ps(q, rmask, o[j]);
        else
            for (int64_t j = 0; j < nc; ++j, q += ld) _mm512_mask_storeu_ps(q, rmask, o[j]);
    }
}

BWD_BLK_KERNEL(natten_bwd_blk_avx512, bwd_query_avx512, bwd_key_avx512);
