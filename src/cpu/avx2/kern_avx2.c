/*
 * kern_avx2.c -- AVX2 + FMA + F16C microkernels (compiled with -mavx2 -mfma
 * -mf16c; see CMakeLists.txt).  Same structure as the AVX-512 kernels with
 * 8-lane vectors: dots reduce 8 row accumulators with an hadd tree, wsum keeps
 * up to 32 output channels in registers with two accumulator sets.
 */
#include <immintrin.h>

#include "cpu/cpu_internal.h"
#include "cpu/avx2/simd_avx2.h"

static inline __m256i tail_mask8(int64_t len) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(len > 8 ? 8 : len)), iota);
}

static inline __m256 reduce8(const __m256 v[8]) {
    const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

static inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
    const __m256 u = _mm256_hadd_ps(t0, t1); /* low: [r0 r1 r2 r3] lanes 0-3 partial, high: rest */
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

static void dots_avx2(const float *a, const float *const *rows, int64_t n, int64_t dim, float *out) {
    int64_t j = 0;
    const int64_t full = dim & ~(int64_t)7;
    const __m256i tm = tail_mask8(dim - full);
    for (; j + 8 <= n; j += 8) {
        const float *const *r = rows + j;
        __m256 acc[8];
        for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
        for (int64_t c = 0; c < full; c += 8) {
            const __m256 av = _mm256_loadu_ps(a + c);
            for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(av, _mm256_loadu_ps(r[t] + c), acc[t]);
        }
        if (full < dim) {
            const __m256 av = _mm256_maskload_ps(a + full, tm);
            for (int t = 0; t < 8; ++t)
                acc[t] = _mm256_fmadd_ps(av, _mm256_maskload_ps(r[t] + full, tm), acc[t]);
        }
        _mm256_storeu_ps(out + j, reduce8(acc));
    }
    for (; j < n; j += 4) {
        const int64_t cnt = n - j < 4 ? n - j : 4;
        const float *r[4];
        for (int t = 0; t < 4; ++t) r[t] = rows[j + (t < cnt ? t : cnt - 1)];
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t c = 0; c < full; c += 8) {
            const __m256 av = _mm256_loadu_ps(a + c);
            a0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(r[0] + c), a0);
            a1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(r[1] + c), a1);
            a2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(r[2] + c), a2);
            a3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(r[3] + c), a3);
        }
        if (full < dim) {
            const __m256 av = _mm256_maskload_ps(a + full, tm);
            a0 = _mm256_fmadd_ps(av, _mm256_maskload_ps(r[0] + full, tm), a0);
            a1 = _mm256_fmadd_ps(av, _mm256_maskload_ps(r[1] + full, tm), a1);
            a2 = _mm256_fmadd_ps(av, _mm256_maskload_ps(r[2] + full, tm), a2);
            a3 = _mm256_fmadd_ps(av, _mm256_maskload_ps(r[3] + full, tm), a3);
        }
        float tmp[4];
        _mm_storeu_ps(tmp, reduce4(a0, a1, a2, a3));
        for (int t = 0; t < cnt; ++t) out[j + t] = tmp[t];
    }
}

#define WSUM_BODY(NV)                                                                              \
    do {                                                                                           \
        __m256 A[NV], B[NV];                                                                       \
        for (int v = 0; v < NV; ++v) A[v] = B[v] = _mm256_setzero_ps();                            \
        int64_t j = 0;                                                                             \
        for (; j + 2 <= n; j += 2) {                                                               \
            const __m256 w0 = _mm256_broadcast_ss(w + j), w1 = _mm256_broadcast_ss(w + j + 1);    \
            const float *r0 = rows[j] + off, *r1 = rows[j + 1] + off;                              \
            for (int v = 0; v < NV; ++v) {                                                         \
                A[v] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(r0 + 8 * v, mk[v]), A[v]);           \
                B[v] = _mm256_fmadd_ps(w1, _mm256_maskload_ps(r1 + 8 * v, mk[v]), B[v]);           \
            }                                                                                      \
        }                                                                                          \
        if (j < n) {                                                                               \
            const __m256 w0 = _mm256_broadcast_ss(w + j);                                          \
            const float *r0 = rows[j] + off;                                                       \
            for (int v = 0; v < NV; ++v)                                                           \
                A[v] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(r0 + 8 * v, mk[v]), A[v]);           \
        }                                                                                          \
        for (int v = 0; v < NV; ++v)                                                               \
            _mm256_maskstore_ps(out + off + 8 * v, mk[v], _mm256_add_ps(A[v], B[v]));              \
    } while (0)

static void wsum_avx2(const float *w, const float *const *rows, int64_t n, int64_t dim, float *out) {
    for (int64_t off = 0; off < dim; off += 32) {
        const int64_t len = dim - off < 32 ? dim - off : 32;
        __m256i mk[4];
        for (int v = 0; v < 4; ++v) mk[v] = tail_mask8(len > 8 * v ? len - 8 * v : 0);
        switch ((len + 7) / 8) {
        case 1: WSUM_BODY(1); break;
        case 2: WSUM_BODY(2); break;
        case 3: WSUM_BODY(3); break;
        default: WSUM_BODY(4); break;
        }
    }
}

static float expsum_avx2(float *s, int64_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; j += 8) {
        const __m256i mk = tail_mask8(n - j);
        const __m256 e = exp256(_mm256_sub_ps(_mm256_maskload_ps(s + j, mk), mv));
        _mm256_maskstore_ps(s + j, mk, e);
        acc = _mm256_add_ps(acc, _mm256_and_ps(e, _mm256_castsi256_ps(mk)));
    }
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    t = _mm_hadd_ps(t, t);
    t = _mm_hadd_ps(t, t);
    return _mm_cvtss_f32(t);
}

static void f16_to_f32_avx2(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    if (i < n) {
        uint16_t h[8] = {0};
        for (int64_t t = 0; t < n - i; ++t) h[t] = src[i + t];
        float f[8];
        _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
        for (int64_t t = 0; t < n - i; ++t) dst[i + t] = f[t];
    }
}

const natten_cpu_kernels natten_cpu_kernels_avx2 = {
    NATTEN_CPU_ISA_AVX2, dots_avx2, wsum_avx2, expsum_avx2, f16_to_f32_avx2,
    natten_cpu_bf16_to_f32_scalar, natten_cpu_transpose_scalar, NULL, 0, NULL, NULL};
