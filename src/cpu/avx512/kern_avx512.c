/*
 * kern_avx512.c -- AVX-512F microkernels (compiled with -mavx512f/bw/vl/dq,
 * -mfma, -mf16c; see CMakeLists.txt).  Contracts in cpu/cpu_internal.h.
 *
 * dots: 16 rows at a time, one 16-lane accumulator per row over the channel
 * chunks, then a transpose-and-add tree that turns the 16 accumulators into
 * one vector of 16 dot products (no scalar horizontal sums).  wsum: the output
 * row lives in registers (up to 64 channels per pass), two rows per step into
 * two accumulator sets so 8 FMA chains hide the FMA latency.
 */
#include <immintrin.h>
#include <math.h>

#include "cpu/cpu_internal.h"

static inline __mmask16 tail_mask(int64_t len) {
    return len >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << len) - 1u);
}

/* v[0..15] -> out[j] = horizontal sum of v[j]. */
static inline __m512 reduce16(const __m512 v[16]) {
    __m512 w[8], x[4];
    for (int i = 0; i < 8; ++i)
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int j = 0; j < 4; ++j)
        x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * j], w[2 * j + 1], 0x88),
                             _mm512_shuffle_f32x4(w[2 * j], w[2 * j + 1], 0xDD));
    /* x[m], 128-bit lane L: 4 partials of row 4m+L */
    __m512 y01 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
    __m512 y23 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
    __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y01, y23, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(y01, y23, _MM_SHUFFLE(3, 2, 3, 2)));
    /* z element 4L+m = row 4m+L */
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, z);
}

/* 4 rows -> [sum v0, sum v1, sum v2, sum v3]. */
static inline __m128 reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xEE));
    const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xEE));
    const __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xDD));
    const __m128 h1 = _mm_hadd_ps(_mm512_castps512_ps128(x), _mm512_extractf32x4_ps(x, 1));
    const __m128 h2 = _mm_hadd_ps(_mm512_extractf32x4_ps(x, 2), _mm512_extractf32x4_ps(x, 3));
    return _mm_hadd_ps(h1, h2);
}

static void dots_avx512(const float *a, const float *const *rows, int64_t n, int64_t dim,
                        float *out) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const float *const *r = rows + j;
        __m512 acc[16];
        for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 16 <= dim; c += 16) {
            const __m512 av = _mm512_loadu_ps(a + c);
            for (int t = 0; t < 16; ++t) acc[t] = _mm512_fmadd_ps(av, _mm512_loadu_ps(r[t] + c), acc[t]);
        }
        if (c < dim) {
            const __mmask16 m = tail_mask(dim - c);
            const __m512 av = _mm512_maskz_loadu_ps(m, a + c);
            for (int t = 0; t < 16; ++t)
                acc[t] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, r[t] + c), acc[t]);
        }
        _mm512_storeu_ps(out + j, reduce16(acc));
    }
    for (; j < n; j += 4) {
        const int64_t cnt = n - j < 4 ? n - j : 4;
        const float *r[4];
        for (int t = 0; t < 4; ++t) r[t] = rows[j + (t < cnt ? t : cnt - 1)];
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t c = 0;
        for (; c + 16 <= dim; c += 16) {
            const __m512 av = _mm512_loadu_ps(a + c);
            a0 = _mm512_fmadd_ps(av, _mm512_loadu_ps(r[0] + c), a0);
            a1 = _mm512_fmadd_ps(av, _mm512_loadu_ps(r[1] + c), a1);
            a2 = _mm512_fmadd_ps(av, _mm512_loadu_ps(r[2] + c), a2);
            a3 = _mm512_fmadd_ps(av, _mm512_loadu_ps(r[3] + c), a3);
        }
        if (c < dim) {
            const __mmask16 m = tail_mask(dim - c);
            const __m512 av = _mm512_maskz_loadu_ps(m, a + c);
            a0 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, r[0] + c), a0);
            a1 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, r[1] + c), a1);
            a2 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, r[2] + c), a2);
            a3 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, r[3] + c), a3);
        }
        _mm_mask_storeu_ps(out + j, (__mmask8)((1u << cnt) - 1u), reduce4(a0, a1, a2, a3));
    }
}

#define WSUM_BODY(NV)                                                                              \
    do {                                                                                           \
        __m512 A[NV], B[NV];                                                                       \
        for (int v = 0; v < NV; ++v) A[v] = B[v] = _mm512_setzero_ps();                            \
        int64_t j = 0;                                                                             \
        for (; j + 2 <= n; j += 2) {                                                               \
            const __m512 w0 = _mm512_set1_ps(w[j]), w1 = _mm512_set1_ps(w[j + 1]);                 \
            const float *r0 = rows[j] + off, *r1 = rows[j + 1] + off;                              \
            for (int v = 0; v < NV; ++v) {                                                         \
                A[v] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk[v], r0 + 16 * v), A[v]);       \
                B[v] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(mk[v], r1 + 16 * v), B[v]);       \
            }                                                                                      \
        }                                                                                          \
        if (j < n) {                                                                               \
            const __m512 w0 = _mm512_set1_ps(w[j]);                                                \
            const float *r0 = rows[j] + off;                                                       \
            for (int v = 0; v < NV; ++v)                                                           \
                A[v] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk[v], r0 + 16 * v), A[v]);       \
        }                                                                                          \
        for (int v = 0; v < NV; ++v)                                                               \
            _mm512_mask_storeu_ps(out + off + 16 * v, mk[v], _mm512_add_ps(A[v], B[v]));           \
    } while (0)

static void wsum_avx512(const float *w, const float *const *rows, int64_t n, int64_t dim,
                        float *out) {
    for (int64_t off = 0; off < dim; off += 64) {
        const int64_t len = dim - off < 64 ? dim - off : 64;
        __mmask16 mk[4];
        for (int v = 0; v < 4; ++v) mk[v] = len > 16 * v ? tail_mask(len - 16 * v) : 0;
        switch ((len + 15) / 16) {
        case 1: WSUM_BODY(1); break;
        case 2: WSUM_BODY(2); break;
        case 3: WSUM_BODY(3); break;
        default: WSUM_BODY(4); break;
        }
    }
}

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

static float expsum_avx512(float *s, int64_t n, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mk = tail_mask(n - j);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), mv));
        _mm512_mask_storeu_ps(s + j, mk, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(mk, e));
    }
    return _mm512_reduce_add_ps(acc);
}

static void f16_to_f32_avx512(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    if (i < n) {
        const __mmask16 mk = tail_mask(n - i);
        const __m256i h = _mm256_maskz_loadu_epi16(mk, src + i);
        _mm512_mask_storeu_ps(dst + i, mk, _mm512_cvtph_ps(h));
    }
}

const natten_cpu_kernels natten_cpu_kernels_avx512 = {
    NATTEN_CPU_ISA_AVX512, dots_avx512, wsum_avx512, expsum_avx512, f16_to_f32_avx512};
