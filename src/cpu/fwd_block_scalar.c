/*
 * fwd_block_scalar.c -- portable blocked-forward tile (contract in
 * cpu/fwd_block.h); the reference the SIMD tiles follow, and the tile of the
 * scalar ISA level.
 */
#include <math.h>

#include "cpu/fwd_block.h"

#define LANES 16

static void blk_fwd_scalar(const blk_args *a) {
    const int64_t K = a->K, n = a->nrow * K;
    for (int64_t i = 0; i < a->npf; ++i) __builtin_prefetch(a->pf[i]);
    float *s = a->sbuf;
    float mx[LANES], sum[LANES];
    for (int l = 0; l < LANES; ++l) mx[l] = -INFINITY;
    for (int64_t i = 0; i < a->nrow; ++i)
        for (int64_t k = 0; k < K; ++k) {
            float *sr = s + (i * K + k) * LANES;
            for (int l = 0; l < LANES; ++l) sr[l] = 0.f;
            const float *kp = a->kr[i] + k;
            for (int64_t c = 0; c < a->D; ++c)
                for (int l = 0; l < LANES; ++l) sr[l] += a->qt[c * LANES + l] * kp[c * a->kld + a->off[l]];
            for (int l = 0; l < LANES; ++l) {
                const int valid = !a->vmask || ((a->vmask[k] >> l) & 1u);
                const float bias = a->bias ? a->bias[(i * K + k) * LANES + l] : 0.f;
                sr[l] = valid ? sr[l] * a->scale + bias : -INFINITY;
                mx[l] = sr[l] > mx[l] ? sr[l] : mx[l];
            }
        }
    for (int l = 0; l < LANES; ++l) sum[l] = 0.f;
    for (int64_t j = 0; j < n; ++j)
        for (int l = 0; l < LANES; ++l) {
            const float e = s[j * LANES + l] == -INFINITY ? 0.f : expf(s[j * LANES + l] - mx[l]);
            s[j * LANES + l] = e;
            sum[l] += e;
        }
    for (int64_t l = 0; l < a->nl; ++l) {
        float *o = a->out[l];
        for (int64_t c = 0; c < a->Dv; ++c) o[c] = 0.f;
        for (int64_t i = 0; i < a->nrow; ++i)
            for (int64_t k = 0; k < K; ++k) {
                const float w = s[(i * K + k) * LANES + l];
                const float *v = a->vr[i] + (a->off[l] + k) * a->vld;
                for (int64_t c = 0; c < a->Dv; ++c) o[c] += w * v[c];
            }
        const float inv = 1.0f / sum[l];
        for (int64_t c = 0; c < a->Dv; ++c) o[c] *= inv;
        a->lse[l] = mx[l] + logf(sum[l]);
    }
}

const blk_kernel natten_blk_scalar = {blk_fwd_scalar, LANES, 2 * LANES, 0, 0};
