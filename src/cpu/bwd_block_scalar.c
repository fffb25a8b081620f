/*
 * bwd_block_scalar.c -- portable blocked-backward tiles (contract in
 * cpu/bwd_block.h); the reference the SIMD tiles follow, and the tiles of
 * the scalar ISA level.
 */
#include <math.h>

#include "core/dtype.h"
#include "cpu/bwd_block.h"

#define LANES 16

static void bwd_query_scalar(const bwdq_args *a) {
    const int64_t K = a->K, n = a->nrow * K, ld = a->ld;
    float *ds = a->sbuf;
    for (int64_t i = 0; i < a->npf; ++i) __builtin_prefetch(a->pf[i]);
    for (int64_t i = 0; i < a->nrow; ++i)
        for (int64_t k = 0; k < K; ++k) {
            const int64_t j = i * K + k;
            float s[LANES], dp[LANES];
            for (int l = 0; l < LANES; ++l) s[l] = dp[l] = 0.f;
            for (int64_t c = 0; c < a->D; ++c)
                for (int l = 0; l < LANES; ++l) s[l] += a->qt[c * LANES + l] * a->kr[i][c * ld + a->off[l] + k];
            for (int64_t c = 0; c < a->Dv; ++c)
                for (int l = 0; l < LANES; ++l) dp[l] += a->dot[c * LANES + l] * a->vr[i][c * ld + a->off[l] + k];
            for (int l = 0; l < LANES; ++l) {
                const int valid = (a->vmask[k] >> l) & 1u;
                const float p = valid ? expf(s[l] * a->scale - a->lse[l]) : 0.f;
                ds[j * LANES + l] = valid ? p * (dp[l] - a->delta[l]) : 0.f;
                if (l < a->nl) {
                    a->pp[j][l] = p;
                    a->sp[j][l] = ds[j * LANES + l];
                }
            }
        }
    for (int64_t c = 0; c < a->D; ++c)
        for (int l = 0; l < LANES; ++l) {
            float acc = 0.f;
            for (int64_t j = 0; j < n; ++j) /* masked slots: another query's key, maybe inf */
                if ((a->vmask[j % K] >> l) & 1u) acc += ds[j * LANES + l] * a->kr[j / K][c * ld + a->off[l] + j % K];
            a->dq_t[c * LANES + l] = acc * a->scale;
        }
}

static void bwd_key_scalar(const bwdk_args *a) {
    for (int64_t i = 0; i < a->npf; ++i) __builtin_prefetch(a->pf[i]);
    for (int64_t c = 0; c < a->Dv; ++c)
        for (int l = 0; l < LANES; ++l) {
            float acc = 0.f;
            for (int64_t t = 0; t < a->nterm; ++t)
                if ((a->mask[t] >> l) & 1u) acc += a->pw[a->poff[t] + l] * a->dr[t][c * a->ld + l];
            a->dv_t[c * LANES + l] = acc;
        }
    for (int64_t c = 0; c < a->D; ++c)
        for (int l = 0; l < LANES; ++l) {
            float acc = 0.f;
            for (int64_t t = 0; t < a->nterm; ++t)
                if ((a->mask[t] >> l) & 1u) acc += a->sw[a->poff[t] + l] * a->qr[t][c * a->ld + l];
            a->dk_t[c * LANES + l] = acc * a->scale;
        }
}

static void bf16_rows_scalar(const float *tt, uint16_t *dst, int64_t ls, int64_t C, int64_t nl) {
    for (int64_t l = 0; l < nl; ++l)
        for (int64_t c = 0; c < C; ++c) dst[l * ls + c] = natten_f32_to_bf16(tt[c * LANES + l]);
}

static void bf16_lanes_scalar(const uint16_t *src, int64_t rs, float *dst, int64_t ld, int64_t nb, int64_t C) {
    for (int64_t i = 0; i < nb; ++i)
        for (int64_t c = 0; c < C; ++c) dst[c * ld + i] = natten_bf16_to_f32(src[i * rs + c]);
}

const bwd_blk_kernel natten_bwd_blk_scalar = {bwd_query_scalar, bwd_key_scalar, bf16_rows_scalar, bf16_lanes_scalar,
                                              NULL, NULL}; /* f32: the scalar transpose */
