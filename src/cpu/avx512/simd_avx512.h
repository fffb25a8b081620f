/*
 * simd_avx512.h -- AVX-512 helpers shared by kern_avx512.c and fwd_block_avx512.c.
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

#endif /* NATTEN_CPU_SIMD_AVX512_H */
