/*
 * fwd_block_avx2.c -- AVX2 blocked-forward tile, 8 queries on lanes
 * (contract in cpu/fwd_block.h); the AVX-512 tile's algorithm with 8 lanes.
 *
 * QK: uniform tiles load slot k's vector (positions k..k+7) unaligned;
 * other tiles build it from the 16 positions [0, 16) with two in-lane-set
 * permutes and a blend (AVX2 has no two-source cross-lane permute).
 * AV: the run of lanes with a common offset shares value loads (all 8
 * lanes' accumulators in registers), other lanes go one at a time.
 */
#include <immintrin.h>
#include <math.h>

#include "cpu/avx2/simd_avx2.h"
#include "cpu/fwd_block.h"

#define AI static inline __attribute__((always_inline))
#define LN 8

/* Raw dots of rows [i0, i0+NR), slots [k0, k0+KC) into sbuf. */
AI void qk_rows(const blk_args *a, int64_t i0, const int NR, const int KC, int64_t k0, const __m256i *idx,
                const __m256i *hi_sel, const int UNI) {
    __m256 acc[NR * KC];
    const float *p[NR];
    for (int t = 0; t < NR * KC; ++t) acc[t] = _mm256_setzero_ps();
    for (int rr = 0; rr < NR; ++rr) p[rr] = a->kr[i0 + rr];
    const int64_t ld = a->kld;
    for (int64_t c = 0; c < a->D; ++c) {
        const __m256 qv = _mm256_load_ps(a->qt + c * LN);
        for (int rr = 0; rr < NR; ++rr) {
            const float *kc = p[rr] + c * ld;
            if (UNI) {
                for (int t = 0; t < KC; ++t)
                    acc[rr * KC + t] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kc + k0 + t), acc[rr * KC + t]);
            } else {
                const __m256 lo = _mm256_loadu_ps(kc), hi = _mm256_loadu_ps(kc + 8);
                for (int t = 0; t < KC; ++t) {
                    const __m256 kv = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx[k0 + t]),
                                                       _mm256_permutevar8x32_ps(hi, idx[k0 + t]),
                                                       _mm256_castsi256_ps(hi_sel[k0 + t]));
                    acc[rr * KC + t] = _mm256_fmadd_ps(qv, kv, acc[rr * KC + t]);
                }
            }
        }
    }
    for (int rr = 0; rr < NR; ++rr)
        for (int t = 0; t < KC; ++t) _mm256_store_ps(a->sbuf + ((i0 + rr) * a->K + k0 + t) * LN, acc[rr * KC + t]);
}

#define QK_SMALL(KC, NRM)                                                                          \
    case KC: {                                                                                     \
        int64_t i = 0;                                                                             \
        for (; i + NRM <= a->nrow; i += NRM) qk_rows(a, i, NRM, KC, 0, idx, hs, UNI);              \
        for (; i < a->nrow; ++i) qk_rows(a, i, 1, KC, 0, idx, hs, UNI);                            \
    } break

#define QK_CHUNK(KC) \
    case KC: qk_rows(a, i, 1, KC, k0, idx, hs, UNI); break

AI void qk_all(const blk_args *a, const __m256i *idx, const __m256i *hs, const int UNI) {
    BLK_QK_DISPATCH(a->K, a->nrow, 8, 4, 2, 2, 1, 1, 1, 1)
}

/* Lane l alone over channels [c0, c0 + 8*NV): two accumulator sets (slot parity). */
AI void av_lane(const blk_args *a, int64_t l, int64_t c0, const int NV, const float *inv) {
    __m256 A[NV], B[NV];
    for (int v = 0; v < NV; ++v) A[v] = B[v] = _mm256_setzero_ps();
    const int64_t K = a->K, vld = a->vld;
    for (int64_t i = 0; i < a->nrow; ++i) {
        const float *r = a->vr[i] + a->off[l] * vld + c0;
        const float *wi = a->sbuf + i * K * LN + l;
        int64_t k = 0;
        for (; k + 2 <= K; k += 2) {
            const __m256 w0 = _mm256_broadcast_ss(wi + k * LN), w1 = _mm256_broadcast_ss(wi + (k + 1) * LN);
            for (int v = 0; v < NV; ++v) {
                A[v] = _mm256_fmadd_ps(w0, _mm256_load_ps(r + k * vld + 8 * v), A[v]);
                B[v] = _mm256_fmadd_ps(w1, _mm256_load_ps(r + (k + 1) * vld + 8 * v), B[v]);
            }
        }
        if (k < K) {
            const __m256 w0 = _mm256_broadcast_ss(wi + k * LN);
            for (int v = 0; v < NV; ++v) A[v] = _mm256_fmadd_ps(w0, _mm256_load_ps(r + k * vld + 8 * v), A[v]);
        }
    }
    const __m256 sc = _mm256_set1_ps(inv[l]);
    for (int v = 0; v < NV; ++v) {
        float tmp[8];
        _mm256_storeu_ps(tmp, _mm256_mul_ps(_mm256_add_ps(A[v], B[v]), sc));
        const int64_t rem = a->Dv - c0 - 8 * v;
        for (int64_t ch = 0; ch < (rem < 8 ? rem : 8); ++ch) a->out[l][c0 + 8 * v + ch] = tmp[ch];
    }
}

/* The run of lanes with off[l] == l + run_shift: position m of a row is slot
 * m - l of lane l, each 8-channel chunk of a value row is loaded once for
 * every lane that uses it (8 accumulators). */
AI void av_run(const blk_args *a, const int K, int64_t c0, const float *inv) {
    const int64_t lo = a->run_lo, hi = a->run_hi < a->nl ? a->run_hi : a->nl;
    __m256 acc[LN];
    for (int l = 0; l < LN; ++l) acc[l] = _mm256_setzero_ps();
    const int64_t vld = a->vld;
    for (int64_t i = 0; i < a->nrow; ++i) {
        const float *vp = a->vr[i] + a->run_shift * vld + c0;
        const float *w = a->sbuf + i * K * LN;
#pragma GCC unroll 32
        for (int m = 0; m < LN - 1 + K; ++m) {
            const __m256 v = _mm256_load_ps(vp);
            vp += vld;
#pragma GCC unroll 17
            for (int k = 0; k < K; ++k) {
                const int l = m - k;
                if (l >= 0 && l < LN) acc[l] = _mm256_fmadd_ps(_mm256_broadcast_ss(w + k * LN + l), v, acc[l]);
            }
        }
    }
    const int64_t rem = a->Dv - c0;
    for (int l = 0; l < LN; ++l) {
        if (l < lo || l >= hi) continue;
        float tmp[8];
        _mm256_storeu_ps(tmp, _mm256_mul_ps(acc[l], _mm256_set1_ps(inv[l])));
        for (int64_t ch = 0; ch < (rem < 8 ? rem : 8); ++ch) a->out[l][c0 + ch] = tmp[ch];
    }
}

#define AV_RUN(KC)                                                       \
    case KC:                                                             \
        for (int64_t c0 = 0; c0 < a->Dv; c0 += 8) av_run(a, KC, c0, inv); \
        break

#define AV_NV(NVC) \
    case NVC: av_lane(a, l, c0, NVC, inv); break

static void blk_fwd_avx2(const blk_args *a) {
    const int64_t K = a->K, n = a->nrow * K;
    __m256i idx[16], hs[16];
    const __m256i off = _mm256_loadu_si256((const __m256i *)a->off), seven = _mm256_set1_epi32(7);
    for (int64_t k = 0; k < K; ++k) {
        const __m256i p = _mm256_add_epi32(off, _mm256_set1_epi32((int)k));
        idx[k] = _mm256_and_si256(p, seven);
        hs[k] = _mm256_cmpgt_epi32(p, seven);
    }
    for (int64_t i = 0; i < a->npf; ++i) _mm_prefetch(a->pf[i], _MM_HINT_T0);
    if (a->uniform) qk_all(a, idx, hs, 1);
    else qk_all(a, idx, hs, 0);
    const __m256 sc = _mm256_set1_ps(a->scale), ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 valid[16];
    if (a->vmask)
        for (int64_t k = 0; k < K; ++k)
            valid[k] = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                _mm256_and_si256(_mm256_set1_epi32((int)a->vmask[k]), lanes), lanes));
    __m256 mx = ninf;
    for (int64_t j = 0; j < n; ++j) {
        __m256 s = _mm256_mul_ps(_mm256_load_ps(a->sbuf + j * LN), sc);
        if (a->bias) s = _mm256_add_ps(s, _mm256_load_ps(a->bias + j * LN));
        if (a->vmask) s = _mm256_blendv_ps(ninf, s, valid[j % K]);
        _mm256_store_ps(a->sbuf + j * LN, s);
        mx = _mm256_max_ps(mx, s);
    }
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_load_ps(a->sbuf + j * LN), mx));
        if (a->vmask) e = _mm256_and_ps(e, valid[j % K]);
        _mm256_store_ps(a->sbuf + j * LN, e);
        sum = _mm256_add_ps(sum, e);
    }
    float inv[LN], m[LN], su[LN];
    _mm256_storeu_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.0f), sum));
    _mm256_storeu_ps(m, mx);
    _mm256_storeu_ps(su, sum);
    for (int l = 0; l < LN; ++l) a->lse[l] = m[l] + logf(su[l]);
    if (a->run_hi > a->run_lo && K <= 9) {
        switch (K) {
            AV_RUN(1);
            AV_RUN(2);
            AV_RUN(3);
            AV_RUN(4);
            AV_RUN(5);
            AV_RUN(6);
            AV_RUN(7);
            AV_RUN(8);
            AV_RUN(9);
        }
    }
    for (int64_t l = 0; l < a->nl; ++l) {
        if (l >= a->run_lo && l < a->run_hi && K <= 9) continue;
        for (int64_t c0 = 0; c0 < a->Dv; c0 += 32) {
            const int64_t nv = (a->Dv - c0 + 7) / 8;
            switch (nv > 4 ? 4 : nv) {
                AV_NV(1);
                AV_NV(2);
                AV_NV(3);
                AV_NV(4);
            }
        }
    }
}

const blk_kernel natten_blk_avx2 = {blk_fwd_avx2, LN, 2 * LN, 0, 0};
