/*
 * simd_avx512.h -- AVX-512 helpers shared by kern_avx512.c and the blocked forward and backward tiles.
 */
#ifndef NATTEN_CPU_SIMD_AVX512_H
#define NATTEN_CPU_SIMD_AVX512_H

#include <immintrin.h>

/* exp(x) for x <= ~88: 2^n * p(r), r = x - n ln2, degree-6 Taylor on |r| <= ln2/2. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.3888889e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3333333e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1666667e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666667e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* log(x) for finite x > 0: x = m * 2^e with m in [sqrt(1/2), sqrt(2)),
 * log(m) = 2 atanh(t), t = (m-1)/(m+1), |t| <= 0.172, five odd terms
 * (truncation 4e-9 relative). */
static inline __m512 log512(__m512 x) {
    __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    __m512 e = _mm512_getexp_ps(x);
    const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
    e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.0f));
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 t = _mm512_div_ps(_mm512_sub_ps(m, one), _mm512_add_ps(m, one));
    const __m512 t2 = _mm512_mul_ps(t, t);
    __m512 p = _mm512_set1_ps(1.0f / 9.0f);
    p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(1.0f / 7.0f));
    p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(1.0f / 5.0f));
    p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(1.0f / 3.0f));
    p = _mm512_fmadd_ps(p, t2, one);
    const __m512 lm = _mm512_mul_ps(_mm512_add_ps(t, t), p);
    return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693147181f), lm);
}

/* 16 bf16 (16-bit lanes) -> f32: a 16-bit shift, exact. */
static inline __m512 bf16x16_to_f32(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* f32 -> bf16 bits in the low half of each 32-bit lane, as natten_f32_to_bf16:
 * NaN -> (bits | 0x400000) >> 16 (quiet), else round to nearest even
 * (bits + 0x7fff + bit 16) >> 16. */
static inline __m512i f32x16_to_bf16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __mmask16 nan =
        _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    return _mm512_srli_epi32(r, 16);
}

static inline __m512 unlo_pd(__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
static inline __m512 unhi_pd(__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

/* In-register 16x16 transpose: r[i] lane j -> o[j] lane i. */
static inline void transpose16(const __m512 r[16], __m512 o[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int j = 0; j < 4; ++j) {
        u[4 * j] = unlo_pd(t[4 * j], t[4 * j + 2]);
        u[4 * j + 1] = unhi_pd(t[4 * j], t[4 * j + 2]);
        u[4 * j + 2] = unlo_pd(t[4 * j + 1], t[4 * j + 3]);
        u[4 * j + 3] = unhi_pd(t[4 * j + 1], t[4 * j + 3]);
    }
    for (int m = 0; m < 4; ++m) {
        const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88);
        const __m512 v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);
        const __m512 v2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
        const __m512 v3 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
        o[m] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        o[8 + m] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        o[4 + m] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        o[12 + m] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
}

#endif /* NATTEN_CPU_SIMD_AVX512_H */
