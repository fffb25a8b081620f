/*
 * bwd_block_avx2.c -- AVX2 + FMA blocked-backward tiles, 16 lanes as two
 * __m256 halves (contract in cpu/bwd_block.h); the AVX-512 tiles' algorithm.
 *
 * Query tile: per half, slot k's key vector is an unaligned load of the 8
 * positions from base + k, permuted by off[l] - base in other than uniform
 * tiles (one permute per FMA: two permutes and a blend, the forward tile's
 * way, made the 3-D 16^3 backward 19.4 ms against the generic 15.7);
 * halves whose offsets span more than 8 go to the portable tile.
 * Key tile: per term one weight vector and one row vector per channel and
 * half, 4 channels x 2 halves of accumulators in registers.
 */
#include <immintrin.h>
#include <string.h>

#include "cpu/avx2/simd_avx2.h"
#include "cpu/bwd_block.h"
#include "cpu/fwd_block.h"

#define AI static inline __attribute__((always_inline))
#define LN 8

/* One half's key vectors: slot k of lane l is position base + k + idx[l] of the row. */
typedef struct half_sel {
    int64_t base;
    __m256i idx;
} half_sel;

/* Slot k's vector of one half from kc = row + base. */
AI __m256 slot_vec(const float *kc, const half_sel *s, int64_t k, const int UNI) {
    const __m256 v = _mm256_loadu_ps(kc + k);
    return UNI ? v : _mm256_permutevar8x32_ps(v, s->idx);
}

/* Raw dots of half h, rows [i0, i0+NR), slots [k0, k0+KC) into out[(i*K+k)*16 + 8h]. */
AI void dots_rows(const bwdq_args *a, const float *x, const float *const *rows, int64_t C, float *out, int64_t i0,
                  const int NR, const int KC, int64_t k0, const half_sel *s, int64_t h, const int UNI) {
    __m256 acc[NR * KC];
    const float *p[NR];
    for (int t = 0; t < NR * KC; ++t) acc[t] = _mm256_setzero_ps();
    for (int rr = 0; rr < NR; ++rr) p[rr] = rows[i0 + rr] + s->base;
    const int64_t ld = a->ld;
    for (int64_t c = 0; c < C; ++c) {
        const __m256 xv = _mm256_load_ps(x + c * 16 + 8 * h);
        for (int rr = 0; rr < NR; ++rr) {
            const float *kc = p[rr] + c * ld;
            for (int t = 0; t < KC; ++t)
                acc[rr * KC + t] = _mm256_fmadd_ps(xv, slot_vec(kc, s, k0 + t, UNI), acc[rr * KC + t]);
        }
    }
    for (int rr = 0; rr < NR; ++rr)
        for (int t = 0; t < KC; ++t) _mm256_store_ps(out + ((i0 + rr) * a->K + k0 + t) * 16 + 8 * h, acc[rr * KC + t]);
}

#define QK_SMALL(KC, NRM)                                                                          \
    case KC: {                                                                                     \
        int64_t i = 0;                                                                             \
        for (; i + NRM <= a->nrow; i += NRM) dots_rows(a, x, rows, C, out, i, NRM, KC, 0, s, h, UNI); \
        for (; i < a->nrow; ++i) dots_rows(a, x, rows, C, out, i, 1, KC, 0, s, h, UNI);            \
    } break

#define QK_CHUNK(KC) \
    case KC: dots_rows(a, x, rows, C, out, i, 1, KC, k0, s, h, UNI); break

AI void dots_all(const bwdq_args *a, const float *x, const float *const *rows, int64_t C, float *out,
                 const half_sel *s, int64_t h, const int UNI) {
    BLK_QK_DISPATCH(a->K, a->nrow, 8, 4, 2, 2, 1, 1, 1, 1)
}

#undef QK_SMALL
#undef QK_CHUNK

/* dq channels [c0, c0+NC) of half h: sum over valid (i, k) of dS times the
 * shifted key vectors; masked slots' keys (another query's, maybe inf) are
 * zeroed before the FMA, not multiplied (0 * inf would be NaN). */
AI void dq_chunk(const bwdq_args *a, const float *ds, int64_t c0, const int NC, const half_sel *s, int64_t h,
                 const __m256 *valid, __m256 sc, const int UNI) {
    __m256 acc[NC];
    for (int t = 0; t < NC; ++t) acc[t] = _mm256_setzero_ps();
    const int64_t ld = a->ld, K = a->K;
    for (int64_t i = 0; i < a->nrow; ++i) {
        const float *kc = a->kr[i] + c0 * ld + s->base;
        for (int64_t k = 0; k < K; ++k) {
            const __m256 w = _mm256_load_ps(ds + (i * K + k) * 16 + 8 * h);
            for (int t = 0; t < NC; ++t) {
                const __m256 kv = slot_vec(kc + t * ld, s, k, UNI);
                acc[t] = _mm256_fmadd_ps(w, _mm256_and_ps(kv, valid[k]), acc[t]);
            }
        }
    }
    for (int t = 0; t < NC; ++t) _mm256_store_ps(a->dq_t + (c0 + t) * 16 + 8 * h, _mm256_mul_ps(acc[t], sc));
}

#define DQ_NC(NC) \
    case NC: dq_chunk(a, ds, c0, NC, &s[h], h, vh, sc, UNI); break

AI void query_dots(const bwdq_args *a, const half_sel *s, const int UNI) {
    const int64_t n = a->nrow * a->K;
    for (int64_t h = 0; h < 2; ++h) {
        dots_all(a, a->qt, a->kr, a->D, a->sbuf, &s[h], h, UNI);
        dots_all(a, a->dot, a->vr, a->Dv, a->sbuf + n * 16, &s[h], h, UNI);
    }
}

AI void query_dq(const bwdq_args *a, const half_sel *s, __m256 (*valid)[32], const int UNI) {
    const __m256 sc = _mm256_set1_ps(a->scale);
    const float *ds = a->sbuf;
    for (int64_t h = 0; h < 2; ++h) {
        const __m256 *vh = valid[h];
        for (int64_t c0 = 0; c0 < a->D; c0 += 4) {
            switch (a->D - c0 < 4 ? a->D - c0 : 4) {
                BWD_NC_CASES4(DQ_NC);
            }
        }
    }
}

/* P and dS of both halves in one pass: a half's 32-byte streaming store
 * alone leaves the line partial in the write-combining buffer (the 2-D
 * B8 64x64 D64 backward spent ~30% of its samples there when halves went
 * one after the other). */
static void query_softmax(const bwdq_args *a, __m256 (*valid)[32]) {
    const int64_t K = a->K, n = a->nrow * K;
    const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128), iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t k = 0; k < K; ++k)
        for (int h = 0; h < 2; ++h)
            valid[h][k] = _mm256_castsi256_ps(
                _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)(a->vmask[k] >> (8 * h))), lanes), lanes));
    __m256i store[2];
    for (int h = 0; h < 2; ++h) {
        const int64_t nlh = a->nl - 8 * h;
        store[h] = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(nlh < 0 ? 0 : nlh > 8 ? 8 : nlh)), iota);
    }
    const __m256 sc = _mm256_set1_ps(a->scale);
    const __m256 lse[2] = {_mm256_loadu_ps(a->lse), _mm256_loadu_ps(a->lse + 8)};
    const __m256 delta[2] = {_mm256_loadu_ps(a->delta), _mm256_loadu_ps(a->delta + 8)};
    float *sb = a->sbuf, *db = a->sbuf + n * 16;
    for (int64_t i = 0, j = 0; i < a->nrow; ++i)
        for (int64_t k = 0; k < K; ++k, ++j)
            for (int h = 0; h < 2; ++h) {
                const __m256 m = valid[h][k];
                const __m256 p =
                    _mm256_and_ps(m, exp256(_mm256_fmsub_ps(_mm256_load_ps(sb + j * 16 + 8 * h), sc, lse[h])));
                const __m256 ds =
                    _mm256_and_ps(m, _mm256_mul_ps(p, _mm256_sub_ps(_mm256_load_ps(db + j * 16 + 8 * h), delta[h])));
                if (a->stream) { /* no read-for-ownership of lines the key pass reads much later */
                    _mm256_stream_ps(a->pp[j] + 8 * h, p);
                    _mm256_stream_ps(a->sp[j] + 8 * h, ds);
                } else if (a->nl > 8 * h) {
                    _mm256_maskstore_ps(a->pp[j] + 8 * h, store[h], p);
                    _mm256_maskstore_ps(a->sp[j] + 8 * h, store[h], ds);
                }
                _mm256_store_ps(sb + j * 16 + 8 * h, ds);
            }
}

#undef DQ_NC

/* A half's slots as one permute of the 8 positions from base + k: base is
 * the half's smallest offset, lowered so base + K + 7 <= 32 (the loads stay
 * in the row's 32 positions); 0 where the offsets span more than 8. */
static int half_sel_of(const bwdq_args *a, int64_t h, half_sel *s) {
    if (a->uniform) {
        s->base = 8 * h;
        return 1;
    }
    int32_t lo = a->off[8 * h], hi = lo;
    for (int l = 1; l < LN; ++l) {
        const int32_t o = a->off[8 * h + l];
        lo = o < lo ? o : lo;
        hi = o > hi ? o : hi;
    }
    s->base = lo + a->K + 7 <= 32 ? lo : 25 - a->K;
    if (s->base < 0 || hi - s->base > 7) return 0;
    s->idx = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(a->off + 8 * h)), _mm256_set1_epi32((int)s->base));
    return 1;
}

static void bwd_query_avx2(const bwdq_args *a) {
    half_sel s[2];
    if (!half_sel_of(a, 0, &s[0]) || !half_sel_of(a, 1, &s[1])) {
        natten_bwd_blk_scalar.query(a); /* offsets over more than 8 positions in a half */
        return;
    }
    for (int64_t i = 0; i < a->npf; ++i) _mm_prefetch(a->pf[i], _MM_HINT_T0);
    __m256 valid[2][32];
    if (a->uniform) query_dots(a, s, 1);
    else query_dots(a, s, 0);
    query_softmax(a, valid);
    if (a->uniform) query_dq(a, s, valid, 1);
    else query_dq(a, s, valid, 0);
}

#define KEY_PF 6  /* terms ahead */
#define KEY_BATCH 64 /* groups whose merged weights and masks are built once for all channel passes */

/* A batch of term groups (terms of one shift merged): weights w[g*16 + l],
 * row masks, rows, and whether all 16 lanes are valid (plain loads). */
typedef struct key_batch {
    float w[KEY_BATCH * 16] __attribute__((aligned(32)));
    int32_t m[KEY_BATCH * 16] __attribute__((aligned(32)));
    const float *r[KEY_BATCH];
    uint8_t full[KEY_BATCH];
    int64_t ng;
} key_batch;

/* Terms from j on into b until KEY_BATCH groups; returns the next term. */
static int64_t key_batch_fill(const bwdk_args *a, const float *w, const float *const *rows, const float *pf,
                              int64_t j, key_batch *b) {
    const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 w0 = _mm256_setzero_ps(), w1 = w0;
    uint32_t m = 0;
    b->ng = 0;
    for (; j < a->nterm && b->ng < KEY_BATCH; ++j) {
        bwdk_prefetch(a, w, pf, j, KEY_PF);
        /* terms of one shift: disjoint lanes merged into one weight vector (masked lanes load 0) */
        const uint32_t mj = a->mask[j];
        const __m256i k0 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)mj), lanes), lanes),
                      k1 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)(mj >> 8)), lanes), lanes);
        w0 = _mm256_or_ps(w0, _mm256_maskload_ps(w + a->poff[j], k0));
        w1 = _mm256_or_ps(w1, _mm256_maskload_ps(w + a->poff[j] + 8, k1));
        m |= mj;
        if (!a->more[j]) {
            const int64_t g = b->ng++;
            _mm256_store_ps(b->w + g * 16, w0);
            _mm256_store_ps(b->w + g * 16 + 8, w1);
            _mm256_store_si256((__m256i *)(b->m + g * 16),
                               _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), lanes), lanes));
            _mm256_store_si256((__m256i *)(b->m + g * 16 + 8),
                               _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)(m >> 8)), lanes), lanes));
            b->r[g] = rows[j];
            b->full[g] = (m & 0xffffu) == 0xffffu;
            w0 = w1 = _mm256_setzero_ps();
            m = 0;
        }
    }
    return j;
}

/* out channels [c0, c0+NC), both halves, += the batch's groups in order;
 * masked lanes' addresses may lie outside the row (masked loads). */
AI void key_chunk(const bwdk_args *a, const key_batch *b, int64_t c0, const int NC, float *out) {
    __m256 acc[2 * NC];
    for (int t = 0; t < NC; ++t) {
        acc[2 * t] = _mm256_load_ps(out + (c0 + t) * 16);
        acc[2 * t + 1] = _mm256_load_ps(out + (c0 + t) * 16 + 8);
    }
    const int64_t ld = a->ld;
    for (int64_t g = 0; g < b->ng; ++g) {
        const __m256 w0 = _mm256_load_ps(b->w + g * 16), w1 = _mm256_load_ps(b->w + g * 16 + 8);
        const float *r = b->r[g] + c0 * ld;
        if (b->full[g]) {
            for (int t = 0; t < NC; ++t) {
                acc[2 * t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(r + t * ld), acc[2 * t]);
                acc[2 * t + 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(r + t * ld + 8), acc[2 * t + 1]);
            }
        } else {
            const __m256i m0 = _mm256_load_si256((const __m256i *)(b->m + g * 16)),
                          m1 = _mm256_load_si256((const __m256i *)(b->m + g * 16 + 8));
            for (int t = 0; t < NC; ++t) {
                acc[2 * t] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(r + t * ld, m0), acc[2 * t]);
                acc[2 * t + 1] = _mm256_fmadd_ps(w1, _mm256_maskload_ps(r + t * ld + 8, m1), acc[2 * t + 1]);
            }
        }
    }
    for (int t = 0; t < NC; ++t) {
        _mm256_store_ps(out + (c0 + t) * 16, acc[2 * t]);
        _mm256_store_ps(out + (c0 + t) * 16 + 8, acc[2 * t + 1]);
    }
}

#define KEY_NC(NC) \
    case NC: key_chunk(a, b, c0, NC, out); break

/* 6 channels x 2 halves: 12 accumulators and 2 weights in the 16 registers,
 * 14 loads per 12 FMAs on full groups. */
static void key_side(const bwdk_args *a, const float *w, const float *const *rows, const float *pf, int64_t C,
                     float *out, float mul, key_batch *b, int64_t *pfi, int64_t share) {
    for (int64_t i = 0; i < C * 16; ++i) out[i] = 0.f;
    for (int64_t j = 0; j < a->nterm;) {
        j = key_batch_fill(a, w, rows, pf, j, b);
        for (int64_t c0 = 0; c0 < C; c0 += 6) {
            switch (C - c0 < 6 ? C - c0 : 6) {
                BWD_NC_CASES6(KEY_NC);
            }
            /* the caller's lines `share` a pass (in one burst they stall on the fill buffers) */
            for (const int64_t e = *pfi + share; *pfi < a->npf && *pfi < e; ++*pfi) _mm_prefetch(a->pf[*pfi], _MM_HINT_T0);
        }
    }
    if (mul != 1.0f)
        for (int64_t i = 0; i < C * 16; ++i) out[i] *= mul;
}

#undef KEY_NC

static void bwd_key_avx2(const bwdk_args *a) {
    key_batch b;
    const int64_t passes = ((a->Dv + 5) / 6 + (a->D + 5) / 6) * ((a->nterm + KEY_BATCH - 1) / KEY_BATCH);
    const int64_t share = passes ? (a->npf + passes - 1) / passes : 0;
    int64_t pfi = 0;
    key_side(a, a->pw, a->dr, a->sw, a->Dv, a->dv_t, 1.0f, &b, &pfi, share);
    key_side(a, a->sw, a->qr, NULL, a->D, a->dk_t, a->scale, &b, &pfi, share);
    for (; pfi < a->npf; ++pfi) _mm_prefetch(a->pf[pfi], _MM_HINT_T0);
}

/* In-register 8x8 transpose: r[i] lane j -> o[j] lane i. */
AI void transpose8(const __m256 r[8], __m256 o[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; ++i) {
        o[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        o[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

static inline __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* 8 floats -> 8 bf16 as natten_f32_to_bf16 (nearest even, NaN quieted). */
static inline __m128i f32x8_to_bf16(__m256 x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                           _mm256_set1_epi32(0x7f800000));
    const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                          _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
    const __m256i rne = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
    const __m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i r = _mm256_blendv_epi8(rne, qn, nan);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

/* nc <= 8 values (f32 or bf16) at p as 8 floats, the rest 0; nothing past nc is read. */
AI __m256 lanes_load(const char *p, int64_t nc, const int BF16) {
    if (!BF16) return _mm256_maskload_ps((const float *)p, tail_mask(nc));
    __m128i h;
    if (nc == 8) h = _mm_loadu_si128((const __m128i *)p);
    else {
        uint16_t t[8] = {0};
        memcpy(t, p, (size_t)nc * 2);
        h = _mm_loadu_si128((const __m128i *)t);
    }
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI void rows_store(char *p, int64_t nc, __m256 v, const int BF16) {
    if (!BF16) {
        _mm256_maskstore_ps((float *)p, tail_mask(nc), v);
        return;
    }
    const __m128i h = f32x8_to_bf16(v);
    if (nc == 8) _mm_storeu_si128((__m128i *)p, h);
    else {
        uint16_t t[8];
        _mm_storeu_si128((__m128i *)t, h);
        memcpy(p, t, (size_t)nc * 2);
    }
}

/* tt[c*16 + l] (l < nl) -> row l of dst (rows lsb bytes apart), channel c. */
AI void to_rows(const float *tt, char *dst, int64_t lsb, int64_t C, int64_t nl, const int BF16) {
    const int es = BF16 ? 2 : 4;
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
        const int64_t nc = C - c0 < 8 ? C - c0 : 8;
        for (int64_t h = 0; h < 2 && 8 * h < nl; ++h) {
            __m256 r[8], o[8];
            for (int j = 0; j < 8; ++j) r[j] = j < nc ? _mm256_load_ps(tt + (c0 + j) * 16 + 8 * h) : _mm256_setzero_ps();
            transpose8(r, o);
            char *q = dst + c0 * es + 8 * h * lsb;
            const int64_t nlh = nl - 8 * h < 8 ? nl - 8 * h : 8;
            for (int64_t l = 0; l < nlh; ++l, q += lsb) rows_store(q, nc, o[l], BF16);
        }
    }
}

/* nb <= 16 rows (rsb bytes apart) of C channels -> dst[c*ld + i]. */
AI void to_lanes(const char *src, int64_t rsb, float *dst, int64_t ld, int64_t nb, int64_t C, const int BF16) {
    const int es = BF16 ? 2 : 4;
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
        const int64_t nc = C - c0 < 8 ? C - c0 : 8;
        for (int64_t h = 0; h < 2 && 8 * h < nb; ++h) {
            const int64_t nbh = nb - 8 * h < 8 ? nb - 8 * h : 8;
            const __m256i rmask = tail_mask(nbh);
            __m256 r[8], o[8];
            const char *p = src + c0 * es + 8 * h * rsb;
            for (int i = 0; i < 8; ++i, p += rsb) r[i] = i < nbh ? lanes_load(p, nc, BF16) : _mm256_setzero_ps();
            transpose8(r, o);
            float *q = dst + c0 * ld + 8 * h;
            for (int64_t j = 0; j < nc; ++j, q += ld) _mm256_maskstore_ps(q, rmask, o[j]);
        }
    }
}

BWD_BLK_KERNEL(natten_bwd_blk_avx2, bwd_query_avx2, bwd_key_avx2);
