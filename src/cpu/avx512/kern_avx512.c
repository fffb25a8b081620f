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
#include "cpu/avx512/simd_avx512.h"

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

static void bf16_to_f32_avx512(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 mk = tail_mask(n - i);
        _mm512_mask_storeu_ps(dst + i, mk, bf16x16_to_f32(_mm256_maskz_loadu_epi16(mk, src + i)));
    }
}

/* ------------------------------------------------------------------------ */
/* Lane-major tiles                                                          */
/* ------------------------------------------------------------------------ */

static void transpose_avx512(const float *src, int64_t src_ld, float *dst, int64_t dst_ld, int64_t rows,
                             int64_t cols) {
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        const int64_t nr = rows - r0 < 16 ? rows - r0 : 16;
        const __mmask16 rmask = tail_mask(nr);
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            const int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
            const __mmask16 cmask = tail_mask(nc);
            __m512 r[16], o[16];
            if (nr == 16 && nc == 16) { /* full block: plain loads and stores */
                for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (r0 + i) * src_ld + c0);
                transpose16(r, o);
                for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + (c0 + j) * dst_ld + r0, o[j]);
                continue;
            }
            for (int i = 0; i < 16; ++i)
                r[i] = i < nr ? _mm512_maskz_loadu_ps(cmask, src + (r0 + i) * src_ld + c0) : _mm512_setzero_ps();
            transpose16(r, o);
            for (int j = 0; j < nc; ++j) _mm512_mask_storeu_ps(dst + (c0 + j) * dst_ld + r0, rmask, o[j]);
        }
    }
}

/* Whether every row of `group` pairs sits at consecutive lanes. */
static int rows_consecutive(const float *const *p, int64_t n, int64_t group) {
    if (group < 2 || group > 8 || n % group) return 0;
    for (int64_t i = 0; i < n; i += group)
        for (int64_t k = 1; k < group; ++k)
            if (p[i + k] != p[i] + k) return 0;
    return 1;
}

/* out[i] (16 lanes) = sum_c a[c*16 + l] * rows[i][c*ld + l], CNT rows at a time. */
#define TILE_DOT(CNT)                                                                              \
    do {                                                                                           \
        __m512 acc[CNT];                                                                           \
        const float *p[CNT];                                                                       \
        for (int t = 0; t < CNT; ++t) {                                                            \
            acc[t] = _mm512_setzero_ps();                                                          \
            p[t] = rows[i0 + t];                                                                   \
        }                                                                                          \
        for (int64_t c = 0; c < dim; ++c) {                                                        \
            const __m512 av = _mm512_loadu_ps(a + c * 16);                                         \
            for (int t = 0; t < CNT; ++t)                                                          \
                acc[t] = _mm512_fmadd_ps(av, _mm512_loadu_ps(p[t] + c * ld), acc[t]);              \
        }                                                                                          \
        for (int t = 0; t < CNT; ++t) _mm512_storeu_ps(out + (i0 + t) * 16, acc[t]);               \
    } while (0)

/*
 * Row variant: the CNT pairs (slots) of one key row sit at consecutive
 * lanes, rows[i0 + t] == rows[i0] + t.  Rather than CNT unaligned loads
 * (almost all of them split across two cache lines), load lanes [0, 32) of
 * the row once and build each shifted vector with one two-source permute.
 */
#define TILE_DOT_ROW(CNT)                                                                          \
    do {                                                                                           \
        __m512 acc[CNT];                                                                           \
        const float *p0 = rows[i0];                                                                \
        for (int t = 0; t < CNT; ++t) acc[t] = _mm512_setzero_ps();                                \
        for (int64_t c = 0; c < dim; ++c) {                                                        \
            const __m512 av = _mm512_loadu_ps(a + c * 16);                                         \
            const __m512 lo = _mm512_loadu_ps(p0 + c * ld), hi = _mm512_loadu_ps(p0 + c * ld + 16); \
            acc[0] = _mm512_fmadd_ps(av, lo, acc[0]);                                              \
            for (int t = 1; t < CNT; ++t)                                                          \
                acc[t] = _mm512_fmadd_ps(av, _mm512_permutex2var_ps(lo, shl[t], hi), acc[t]);      \
        }                                                                                          \
        for (int t = 0; t < CNT; ++t) _mm512_storeu_ps(out + (i0 + t) * 16, acc[t]);               \
    } while (0)

static inline void make_shl(__m512i shl[8]) {
    for (int t = 0; t < 8; ++t)
        shl[t] = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                  _mm512_set1_epi32(t));
}

static void tile_dots(const float *a, int64_t ld, const float *const *rows, int64_t n, int64_t group,
                      int64_t dim, float *out) {
    if (rows_consecutive(rows, n, group)) {
        __m512i shl[8];
        make_shl(shl);
        for (int64_t i0 = 0; i0 < n; i0 += group) {
            switch (group) {
            case 8: TILE_DOT_ROW(8); break;
            case 7: TILE_DOT_ROW(7); break;
            case 6: TILE_DOT_ROW(6); break;
            case 5: TILE_DOT_ROW(5); break;
            case 4: TILE_DOT_ROW(4); break;
            case 3: TILE_DOT_ROW(3); break;
            default: TILE_DOT_ROW(2); break;
            }
        }
        return;
    }
    const int64_t chunk = group >= 1 && group <= 8 ? group * (8 / group) : 8;
    for (int64_t i0 = 0; i0 < n; i0 += chunk) {
        switch (n - i0 < chunk ? n - i0 : chunk) {
        case 8: TILE_DOT(8); break;
        case 7: TILE_DOT(7); break;
        case 6: TILE_DOT(6); break;
        case 5: TILE_DOT(5); break;
        case 4: TILE_DOT(4); break;
        case 3: TILE_DOT(3); break;
        case 2: TILE_DOT(2); break;
        default: TILE_DOT(1); break;
        }
    }
}

/* out_t[c*16 + l] = mul * sum_i w[i*16 + l] * rows[i][c*ld + l]. */
#define TILE_WSUM(CNT)                                                                             \
    do {                                                                                           \
        __m512 acc[CNT];                                                                           \
        for (int t = 0; t < CNT; ++t) acc[t] = _mm512_setzero_ps();                                \
        for (int64_t i = 0; i < n; ++i) {                                                          \
            const __m512 wv = _mm512_loadu_ps(w + i * 16);                                         \
            const float *v = rows[i] + c0 * ld;                                                    \
            for (int t = 0; t < CNT; ++t) acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(v + t * ld), acc[t]); \
        }                                                                                          \
        for (int t = 0; t < CNT; ++t) _mm512_storeu_ps(out_t + (c0 + t) * 16, _mm512_mul_ps(acc[t], mul)); \
    } while (0)

#define TILE_WSUM_ROW(CNT)                                                                         \
    do {                                                                                           \
        __m512 acc[CNT];                                                                           \
        for (int t = 0; t < CNT; ++t) acc[t] = _mm512_setzero_ps();                                \
        for (int64_t i0 = 0; i0 < n; i0 += group) {                                                \
            const float *v0 = rows[i0] + c0 * ld;                                                  \
            __m512 lo[CNT], hi[CNT];                                                               \
            for (int t = 0; t < CNT; ++t) {                                                        \
                lo[t] = _mm512_loadu_ps(v0 + t * ld);                                              \
                hi[t] = _mm512_loadu_ps(v0 + t * ld + 16);                                         \
            }                                                                                      \
            {                                                                                      \
                const __m512 wv = _mm512_loadu_ps(w + i0 * 16);                                    \
                for (int t = 0; t < CNT; ++t) acc[t] = _mm512_fmadd_ps(wv, lo[t], acc[t]);         \
            }                                                                                      \
            for (int64_t k = 1; k < group; ++k) {                                                  \
                const __m512 wv = _mm512_loadu_ps(w + (i0 + k) * 16);                              \
                const __m512i ix = shl[k];                                                         \
                for (int t = 0; t < CNT; ++t)                                                      \
                    acc[t] = _mm512_fmadd_ps(wv, _mm512_permutex2var_ps(lo[t], ix, hi[t]), acc[t]); \
            }                                                                                      \
        }                                                                                          \
        for (int t = 0; t < CNT; ++t) _mm512_storeu_ps(out_t + (c0 + t) * 16, _mm512_mul_ps(acc[t], mul)); \
    } while (0)

static void tile_wsum(const float *w, const float *const *rows, int64_t ld, int64_t n, int64_t group,
                      int64_t dim, __m512 mul, float *out_t) {
    int64_t c0 = 0;
    if (rows_consecutive(rows, n, group)) {
        __m512i shl[8];
        make_shl(shl);
        for (; c0 + 8 <= dim; c0 += 8) TILE_WSUM_ROW(8);
        switch (dim - c0) {
        case 7: TILE_WSUM_ROW(7); break;
        case 6: TILE_WSUM_ROW(6); break;
        case 5: TILE_WSUM_ROW(5); break;
        case 4: TILE_WSUM_ROW(4); break;
        case 3: TILE_WSUM_ROW(3); break;
        case 2: TILE_WSUM_ROW(2); break;
        case 1: TILE_WSUM_ROW(1); break;
        default: break;
        }
        return;
    }
    for (; c0 + 8 <= dim; c0 += 8) TILE_WSUM(8);
    switch (dim - c0) {
    case 7: TILE_WSUM(7); break;
    case 6: TILE_WSUM(6); break;
    case 5: TILE_WSUM(5); break;
    case 4: TILE_WSUM(4); break;
    case 3: TILE_WSUM(3); break;
    case 2: TILE_WSUM(2); break;
    case 1: TILE_WSUM(1); break;
    default: break;
    }
}

static void tile_fwd_avx512(const float *qt, int64_t ld, const float *const *pk, const float *const *pv,
                            const float *bias, int64_t n, int64_t group, int64_t D, int64_t Dv, float scale,
                            float *sbuf, float *out_t, float *lse) {
    /* the scores as the backward computes them: tile_dots, then scale and bias */
    tile_dots(qt, ld, pk, n, group, D, sbuf);
    const __m512 sc = _mm512_set1_ps(scale);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; ++i) {
        __m512 s = _mm512_mul_ps(_mm512_loadu_ps(sbuf + i * 16), sc);
        if (bias) s = _mm512_add_ps(s, _mm512_set1_ps(bias[i]));
        mx = _mm512_max_ps(mx, s);
        _mm512_storeu_ps(sbuf + i * 16, s);
    }
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sbuf + i * 16), mx));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(sbuf + i * 16, e);
    }
    const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
    tile_wsum(sbuf, pv, ld, n, group, Dv, inv, out_t);
    float m[16], s[16];
    _mm512_storeu_ps(m, mx);
    _mm512_storeu_ps(s, sum);
    for (int l = 0; l < 16; ++l) lse[l] = m[l] + logf(s[l]);
}

/* Backward query side of a lane-major tile (see cpu_internal.h). */
static void tile_bwd_avx512(const float *qt, const float *dot, int64_t ld, const float *const *pk,
                            const float *const *pv, const float *bias, int64_t n, int64_t group, int64_t D,
                            int64_t Dv, float scale, const float *lse, const float *delta, float *pbuf,
                            float *sbuf, float *dq_t) {
    tile_dots(qt, ld, pk, n, group, D, pbuf);
    const __m512 sc = _mm512_set1_ps(scale), lv = _mm512_loadu_ps(lse);
    for (int64_t i = 0; i < n; ++i) {
        __m512 s = _mm512_mul_ps(_mm512_loadu_ps(pbuf + i * 16), sc);
        if (bias) s = _mm512_add_ps(s, _mm512_set1_ps(bias[i]));
        _mm512_storeu_ps(pbuf + i * 16, exp512(_mm512_sub_ps(s, lv)));
    }
    tile_dots(dot, ld, pv, n, group, Dv, sbuf);
    const __m512 dl = _mm512_loadu_ps(delta);
    for (int64_t i = 0; i < n; ++i)
        _mm512_storeu_ps(sbuf + i * 16, _mm512_mul_ps(_mm512_loadu_ps(pbuf + i * 16),
                                                      _mm512_sub_ps(_mm512_loadu_ps(sbuf + i * 16), dl)));
    tile_wsum(sbuf, pk, ld, n, group, D, sc, dq_t);
}

static void tile_wsum_avx512(const float *w, const float *const *rows, int64_t ld, int64_t n, int64_t dim,
                             float mul, float *out_t) {
    tile_wsum(w, rows, ld, n, 0, dim, _mm512_set1_ps(mul), out_t);
}

const natten_cpu_kernels natten_cpu_kernels_avx512 = {
    NATTEN_CPU_ISA_AVX512, dots_avx512, wsum_avx512, expsum_avx512, f16_to_f32_avx512,
    bf16_to_f32_avx512, transpose_avx512, tile_fwd_avx512, 16, tile_bwd_avx512, tile_wsum_avx512};
