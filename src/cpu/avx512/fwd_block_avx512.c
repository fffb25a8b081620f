/*
 * fwd_block_avx512.c -- AVX-512 blocked-forward tile, 16 queries on lanes
 * (contract in cpu/fwd_block.h).
 *
 * QK: per channel, lane l of slot k needs key position off[l] + k of a
 * lane-major row.  Tiles load the 32 positions [0, 32) once and build each
 * slot's vector with valignd (uniform tiles, off[l] == l) or one two-source
 * permute (borders, causal prefixes, GNA groups).  Several leading rows go in
 * one pass when K is small, so at least ~8 FMA chains are in flight; with a
 * pair (blk_args.pair) each slot vector feeds both lines' queries.  Softmax
 * runs on whole vectors (16 queries per instruction).  AV: runs of lanes with
 * one offset shift share value loads (av_uniform), other lanes two at a time.
 */
#include <immintrin.h>
#include <math.h>

#include "cpu/avx512/simd_avx512.h"
#include "cpu/fwd_block.h"

#define AI static inline __attribute__((always_inline))

/* Output channels [c, c + 16) (mask m) of lane l: f32, streamed or not, or
 * rounded to bf16 (f32x16_to_bf16). */
AI void store_out(const blk_args *a, int64_t l, int64_t c, __mmask16 m, __m512 o) {
    if (a->out16) {
        _mm256_mask_storeu_epi16(a->out16[l] + c, m, _mm512_cvtepi32_epi16(f32x16_to_bf16(o)));
    } else if (a->stream) {
        _mm512_stream_ps(a->out[l] + c, o); /* no read-for-ownership of the line */
    } else {
        _mm512_mask_storeu_ps(a->out[l] + c, m, o);
    }
}

/* Positions [k, k+16) of the 32 in lo:hi (k a compile-time constant after inlining). */
AI __m512 alignr(__m512 hi, __m512 lo, const int k) {
    switch (k) {
    case 1: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 1));
    case 2: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 2));
    case 3: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 3));
    case 4: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 4));
    case 5: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 5));
    case 6: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 6));
    case 7: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 7));
    case 8: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 8));
    case 9: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 9));
    case 10: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 10));
    case 11: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 11));
    case 12: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 12));
    case 13: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 13));
    case 14: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 14));
    default: return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 15));
    }
}

/* prefetcht0 as an asm without memory operands: _mm_prefetch in the channel
 * loop made GCC store every accumulator of qk_rows on each step (7 stores per
 * 7 FMAs, K = 7) */
AI void prefetch_t0(const char *p) { __asm__ volatile("prefetcht0 (%0)" : : "r"(p)); }

/* The caller's prefetches (blk_args pf: the next line's source rows, mostly
 * from DRAM) go out spread over the tile: each holds a fill buffer for a
 * memory latency (~10 of them per core), and one per QK channel step ran out
 * of buffers -- 20% of the vision tile's time stalled behind them at H8
 * (2 KiB-strided rows, no help from the hardware prefetchers), 2.5% at H1.
 * QK issues one per PF_EVERY channel steps, AV up to PF_AV per row pass,
 * the rest go at the end (vision forward, one thread: ~137 -> ~128 ms; 3
 * to 6 steps and 1 to 4 per pass measured within noise of that). */
#define PF_EVERY 4
#define PF_AV 2

/* Raw dots of rows [i0, i0+NR) of the row list, slots [k0, k0+KC), into the
 * sbuf of line 0 (U0: a) and/or line 1 (U1: a->pair, row i is its i - rb).
 * With both, each slot vector (valignd/permute) feeds two FMAs: the shuffles
 * share port 5 with one FMA pipe (6 per 7 FMAs for K = 7 alone, 6 per 14 in
 * pairs).  Every score is one FMA chain over the channels in order, so a
 * line's bits do not depend on whether it was paired. */
AI void qk_rows(const blk_args *a, int64_t i0, const int NR, const int KC, int64_t k0, const __m512i *idx,
                const int UNI, const int U0, const int U1, int64_t *pfi, __m512 *mx) {
    const int NQ = U0 + U1;
    const blk_args *ln[2] = {U0 ? a : a->pair, a->pair};
    /* fixed sizes (NQ * NR * KC <= 16 in every dispatch): a variable-length
     * acc[] stayed a stack array, a load and a store per FMA (+25% QK) */
    __m512 acc[16];
    const float *p[NR];
    for (int t = 0; t < NQ * NR * KC; ++t) acc[t] = _mm512_setzero_ps();
    for (int rr = 0; rr < NR; ++rr) p[rr] = a->kr[i0 + rr];
    const int64_t ld = a->kld;
    /* one prefetch per PF_EVERY channel steps while any are left; the cursor
     * stays in a register (a write through pfi in the loop made GCC keep acc[]
     * in memory: a store per FMA) */
    const int PFE = PF_EVERY / NQ; /* the same prefetches per FMA in pairs */
    const int64_t npq = (a->D + PFE - 1) / PFE;
    const int64_t npf = a->npf - *pfi < npq ? a->npf - *pfi : npq;
    const char *const *pf = a->pf + *pfi;
    *pfi += npf;
    for (int64_t c = 0, j = 0, cd = 0; c < a->D; ++c, --cd) {
        if (cd == 0 && j < npf) {
            prefetch_t0(pf[j++]);
            cd = PFE;
        }
        __m512 qv[2];
        for (int q = 0; q < NQ; ++q) qv[q] = _mm512_load_ps(ln[q]->qt + c * 16);
        for (int rr = 0; rr < NR; ++rr) {
            const float *kc = p[rr] + c * ld;
            const __m512 lo = _mm512_loadu_ps(kc), hi = _mm512_loadu_ps(kc + 16);
            for (int t = 0; t < KC; ++t) {
                const int k = (int)k0 + t;
                __m512 kv;
                if (!UNI) kv = _mm512_permutex2var_ps(lo, idx[k0 + t], hi);
                /* slot k = positions [k, k+16) from the two vectors [0, 32)
                 * with valignd: measured faster than (cache-line split)
                 * unaligned loads for any mix of the two */
                else if (k == 0) kv = lo;
                else if (k == 16) kv = hi;
                else kv = alignr(hi, lo, k);
                for (int q = 0; q < NQ; ++q)
                    acc[(q * NR + rr) * KC + t] = _mm512_fmadd_ps(qv[q], kv, acc[(q * NR + rr) * KC + t]);
            }
        }
    }
    /* scaled scores, and their running max (used when no slot is masked or biased) */
    const __m512 sc = _mm512_set1_ps(a->scale);
    for (int q = 0; q < NQ; ++q) {
        const int L = U0 ? q : 1;
        const int64_t r0 = i0 - (L ? a->pair->rb : 0);
        for (int rr = 0; rr < NR; ++rr)
            for (int t = 0; t < KC; ++t) {
                const __m512 s = _mm512_mul_ps(acc[(q * NR + rr) * KC + t], sc);
                mx[L] = _mm512_max_ps(mx[L], s);
                _mm512_store_ps(ln[q]->sbuf + ((r0 + rr) * a->K + k0 + t) * 16, s);
            }
    }
}

/* Rows [i0, i1) in steps of NRM (halved when both lines use them), then one
 * by one, all K <= 8 slots at once; or row by row in chunks of 8 slots. */
#define QK_SMALL(KC, NRM)                                                                          \
    case KC: {                                                                                     \
        const int NRP = U0 && U1 ? (NRM + 1) / 2 : NRM;                                           \
        int64_t i = i0;                                                                            \
        for (; i + NRP <= i1; i += NRP) qk_rows(a, i, NRP, KC, 0, idx, UNI, U0, U1, pfi, mx);     \
        for (; i < i1; ++i) qk_rows(a, i, 1, KC, 0, idx, UNI, U0, U1, pfi, mx);                    \
    } break

#define QK_CHUNK(KC) \
    case KC: qk_rows(a, i0 + i, 1, KC, k0, idx, UNI, U0, U1, pfi, mx); break

AI void qk_range(const blk_args *a, int64_t i0, int64_t i1, const __m512i *idx, const int UNI, const int U0,
                 const int U1, int64_t *pfi, __m512 *mx) {
    BLK_QK_DISPATCH(a->K, i1 - i0, 8, 4, 4, 3, 2, 2, 1, 1)
}

/* Row i of the list is line 0's while i < nrow, line 1's in [rb, rb + its
 * nrow): runs of rows with the same readers. */
AI void qk_all(const blk_args *a, const __m512i *idx, const int UNI, int64_t *pfi, __m512 *mx) {
    if (!a->pair) {
        qk_range(a, 0, a->nrow, idx, UNI, 1, 0, pfi, mx);
        return;
    }
    const int64_t e0 = a->nrow, b1 = a->pair->rb, e1 = b1 + a->pair->nrow, n = e0 > e1 ? e0 : e1;
    for (int64_t i = 0, j; i < n; i = j) {
        const int64_t bd[4] = {e0, b1, e1, n};
        j = n;
        for (int t = 0; t < 4; ++t)
            if (bd[t] > i && bd[t] < j) j = bd[t];
        const int u0 = i < e0, u1 = i >= b1 && i < e1;
        if (u0 && u1) qk_range(a, i, j, idx, UNI, 1, 1, pfi, mx);
        else if (u0) qk_range(a, i, j, idx, UNI, 1, 0, pfi, mx);
        else if (u1) qk_range(a, i, j, idx, UNI, 0, 1, pfi, mx);
    }
}

/* Lanes l and l+1 (TWO) over channels [c0, c0 + 16*NV): weights from sbuf,
 * rows from vr.  Slots alternate between two accumulator sets (A, B) so
 * that >= 8 FMA chains are in flight; named arrays keep them in registers. */
AI void av_pair(const blk_args *a, int64_t l, int64_t l1, const int TWO, int64_t c0, const int NV,
                const float *inv) {
    __m512 A0[NV], B0[NV], A1[NV], B1[NV];
    for (int v = 0; v < NV; ++v) A0[v] = B0[v] = A1[v] = B1[v] = _mm512_setzero_ps();
    const int64_t K = a->K, vld = a->vld;
#define AV_STEP(X0, X1, KK)                                                                        \
    do {                                                                                           \
        const __m512 w0 = _mm512_set1_ps(wi[(KK) * 16 + l]);                                       \
        for (int v = 0; v < NV; ++v) X0[v] = _mm512_fmadd_ps(w0, _mm512_load_ps(r0 + (KK) * vld + 16 * v), X0[v]); \
        if (TWO) {                                                                                 \
            const __m512 w1 = _mm512_set1_ps(wi[(KK) * 16 + l1]);                                  \
            for (int v = 0; v < NV; ++v)                                                           \
                X1[v] = _mm512_fmadd_ps(w1, _mm512_load_ps(r1 + (KK) * vld + 16 * v), X1[v]);      \
        }                                                                                          \
    } while (0)
    for (int64_t i = 0; i < a->nrow; ++i) {
        const float *r0 = a->vr[i] + a->off[l] * vld + c0;
        const float *r1 = a->vr[i] + a->off[l1] * vld + c0;
        const float *wi = a->sbuf + i * K * 16;
        int64_t k = 0;
        for (; k + 2 <= K; k += 2) {
            AV_STEP(A0, A1, k);
            AV_STEP(B0, B1, k + 1);
        }
        if (k < K) AV_STEP(A0, A1, k);
    }
#undef AV_STEP
    for (int u = 0; u < 1 + TWO; ++u) {
        const int64_t lu = u == 0 ? l : l1;
        const __m512 sc = _mm512_set1_ps(inv[lu]);
        for (int v = 0; v < NV; ++v) {
            const __m512 o = u == 0 ? _mm512_add_ps(A0[v], B0[v]) : _mm512_add_ps(A1[v], B1[v]);
            const int64_t rem = a->Dv - c0 - 16 * v;
            const __mmask16 m = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
            store_out(a, lu, c0 + 16 * v, m, _mm512_mul_ps(o, sc));
        }
    }
}

/* Runs of lanes with off[l] == l + shift: value position m (+ shift) of a
 * row is slot m - l of lane l, so each 16-channel chunk of a value row is
 * loaded once and FMA'd into every lane that uses it.  Keeps the value rows'
 * reads at one per ~K FMAs instead of one per FMA (they do not fit in L1
 * with their keys).  A block is LB lanes times NC chunks, LB * NC = 16
 * accumulators: per position step NC value loads, and per (lane, slot) one
 * broadcast weight for NC FMAs.  D = 64 takes 4 lanes x 4 chunks (0.61 loads
 * per FMA; 8 x 2, 0.75, took ~10% longer: ~2250 against ~2050 cycles for the
 * AV of a K = 7x7 tile with L1-resident rows, 1568 for its FMAs alone);
 * D = 32 8 x 2 (4 x 2 would load more); one chunk, 16 lanes. */
AI void av_uniform(const blk_args *a, const int K, int64_t l0, int64_t c0, const int NC, const int LB,
                   const float *inv, int64_t *pfi) {
    const int64_t lo = a->run_lo, hi = a->run_hi < a->nl ? a->run_hi : a->nl;
    __m512 acc[16];
    for (int t = 0; t < LB * NC; ++t) acc[t] = _mm512_setzero_ps();
    const int64_t vld = a->vld;
    int64_t pj = *pfi;
    for (int64_t i = 0; i < a->nrow; ++i) {
        for (int j = 0; j < PF_AV && pj < a->npf; ++j) prefetch_t0(a->pf[pj++]);
        const float *vp = a->vr[i] + (a->run_shift + l0) * vld + c0;
        const float *w = a->sbuf + i * K * 16 + l0;
#pragma GCC unroll 32
        for (int m = 0; m < LB - 1 + K; ++m) {
            __m512 vv[4];
            for (int u = 0; u < NC; ++u) vv[u] = _mm512_load_ps(vp + 16 * u);
            vp += vld; /* one pointer: unrolled m * vld offsets would spill */
#pragma GCC unroll 17
            for (int k = 0; k < K; ++k) {
                const int l = m - k;
                if (l >= 0 && l < LB) {
                    const __m512 wb = _mm512_set1_ps(w[k * 16 + l]);
                    for (int u = 0; u < NC; ++u) acc[l * NC + u] = _mm512_fmadd_ps(wb, vv[u], acc[l * NC + u]);
                }
            }
        }
    }
    for (int l = 0; l < LB; ++l)
        if (l0 + l >= lo && l0 + l < hi)
            for (int u = 0; u < NC; ++u) {
                const int64_t rem = a->Dv - c0 - 16 * u;
                const __mmask16 mk = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
                store_out(a, l0 + l, c0 + 16 * u, mk, _mm512_mul_ps(acc[l * NC + u], _mm512_set1_ps(inv[l0 + l])));
            }
    *pfi = pj;
}

/* Blocks of LB lanes with a lane in the run, times groups of NC chunks. */
#define AV_BLOCKS(KC, NC, LB)                                                    \
    for (int64_t l0 = 0; l0 < 16; l0 += LB) {                                    \
        if (l0 + LB <= a->run_lo || l0 >= a->run_hi || l0 >= a->nl) continue;   \
        av_uniform(a, KC, l0, c0, NC, LB, inv, &pfi);                            \
    }

#define AV_UNI(KC)                                                    \
    case KC:                                                          \
        for (int64_t c0 = 0; c0 < a->Dv; c0 += 64) {                  \
            switch ((a->Dv - c0 + 15) / 16) {                         \
            case 1: AV_BLOCKS(KC, 1, 16) break;                       \
            case 2: AV_BLOCKS(KC, 2, 8) break;                        \
            case 3: AV_BLOCKS(KC, 3, 4) break;                        \
            default: AV_BLOCKS(KC, 4, 4) break;                       \
            }                                                         \
        }                                                             \
        break

#define AV_NV(NVC)                                              \
    case NVC:                                                   \
        if (two) av_pair(a, rest[j], rest[j + 1], 1, c0, NVC, inv); \
        else av_pair(a, rest[j], rest[j], 0, c0, NVC, inv);         \
        break

/* Softmax and AV of one line, from the raw scores in its sbuf (mx: their max). */
static void finish(const blk_args *a, __m512 mx, int64_t *pfip) {
    const int64_t K = a->K, n = a->nrow * K;
    int64_t pfi = *pfip;
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    float *const sb = a->sbuf;
    const float *const bias = a->bias;
    const uint32_t *const vmask = a->vmask;
    if (bias || vmask) {
        mx = ninf;
        for (int64_t j = 0; j < n; ++j) {
            __m512 s = _mm512_load_ps(sb + j * 16);
            if (bias) s = _mm512_add_ps(s, _mm512_load_ps(bias + j * 16));
            if (vmask) s = _mm512_mask_mov_ps(ninf, (__mmask16)vmask[j % K], s);
            _mm512_store_ps(sb + j * 16, s);
            mx = _mm512_max_ps(mx, s);
        }
    }
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_load_ps(sb + j * 16), mx));
        if (vmask) e = _mm512_maskz_mov_ps((__mmask16)vmask[j % K], e);
        _mm512_store_ps(sb + j * 16, e);
        sum = _mm512_add_ps(sum, e);
    }
    float inv[16];
    _mm512_storeu_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), sum));
    _mm512_storeu_ps(a->lse, _mm512_add_ps(mx, log512(sum)));
    if (a->run_hi > a->run_lo && K <= 17) {
        switch (K) {
            AV_UNI(1);
            AV_UNI(2);
            AV_UNI(3);
            AV_UNI(4);
            AV_UNI(5);
            AV_UNI(6);
            AV_UNI(7);
            AV_UNI(8);
            AV_UNI(9);
            AV_UNI(10);
            AV_UNI(11);
            AV_UNI(12);
            AV_UNI(13);
            AV_UNI(14);
            AV_UNI(15);
            AV_UNI(16);
            AV_UNI(17);
        }
    }
    /* lanes outside the run: two at a time */
    int64_t rest[16], nrest = 0;
    for (int64_t l = 0; l < a->nl; ++l)
        if (l < a->run_lo || l >= a->run_hi || K > 17) rest[nrest++] = l;
    for (int64_t j = 0; j < nrest; j += 2) {
        const int two = j + 1 < nrest;
        for (int64_t c0 = 0; c0 < a->Dv; c0 += 64) {
            const int64_t nv = (a->Dv - c0 + 15) / 16;
            switch (nv > 4 ? 4 : nv) {
                AV_NV(1);
                AV_NV(2);
                AV_NV(3);
                AV_NV(4);
            }
        }
    }
    *pfip = pfi;
}

static void blk_fwd_avx512(const blk_args *a) {
    __m512i idx[32];
    const __m512i off = _mm512_loadu_si512(a->off);
    for (int64_t k = 0; k < a->K; ++k) idx[k] = _mm512_add_epi32(off, _mm512_set1_epi32((int)k));
    int64_t pfi = 0;
    __m512 mx[2] = {_mm512_set1_ps(-INFINITY), _mm512_set1_ps(-INFINITY)};
    if (a->uniform) qk_all(a, idx, 1, &pfi, mx);
    else qk_all(a, idx, 0, &pfi, mx);
    finish(a, mx[0], &pfi);
    if (a->pair) finish(a->pair, mx[1], &pfi);
    for (; pfi < a->npf; ++pfi) prefetch_t0(a->pf[pfi]);
}

const blk_kernel natten_blk_avx512 = {blk_fwd_avx512, 16, 32, 1, 1};
