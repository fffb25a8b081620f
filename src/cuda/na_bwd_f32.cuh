/*
 * na_bwd_f32.cuh -- tiled f32 dk/dv pass of the backward on the FMA units
 * (IEEE f32, no TF32), the counterpart of na_bwd_dq_f32_entry
 * (na_fwd_f32.cuh) with the roles of keys and queries swapped, like the
 * tensor-core dk/dv pass (na_bwd_tc.cuh):
 *
 * one CTA (128 threads) owns a box of 64 keys of one (batch, kv head,
 * dilation group), keeps K and V of the box in shared memory, and walks the
 * box of queries whose windows hold those keys (for every query head of the
 * GQA group) in 64-query tiles, Q / dO / lse / delta double-buffered with
 * cp.async:  S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T,
 * dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q.  Thread t owns key
 * rows 4*(t/8) .. +3 and queries (t%8) + 8*j of a tile, and channels
 * 4*(t%8) + 32*c of dK / dV; P^T and dS^T go through shared memory in turn.
 * The warp-per-row kernel (na_bwd_dkdv_simple) it replaces read each query
 * row once per key (49x for a 7x7 window); vision-2d-64-k7 f32 on H100: 4.9 ms.
 *
 * Scope (cuda.py checks it): as the tiled f32 forward.  Dynamic shared
 * memory: (2*64 + 4*64) * (HD + 4) * 4 + 64 * 68 * 4 + 64 * 4 * 4 + 8 * 64.
 */
#ifndef NATTEN_CUDA_BWD_F32_CUH
#define NATTEN_CUDA_BWD_F32_CUH

#include "na_fwd_f32.cuh"
#include "na_bwd_tc.cuh"

template <int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, bool FD = false>
NA_DEV void na_bwd_dkdv_f32_entry(const int *params, const float *q, const float *k, const float *v,
                                  const float *lse, const float *dout, const float *delta, float *dk, float *dv,
                                  int tile = -1, int bh = -1, const float *out = nullptr, const float *dlse = nullptr) {
    if (tile < 0) tile = blockIdx.x;
    if (bh < 0) bh = blockIdx.y;
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2, NT = 128;
    constexpr int LD = HD + 4, LDP = TK + 4;
    static_assert(TQ == 64 && TK == 64, "64-query, 64-key tiles");
    static_assert(HD % 32 == 0, "head dim multiple of 32");
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    float *sK = reinterpret_cast<float *>(na_smem_raw);
    float *sV = sK + TK * LD;
    float *sQ = sV + TK * LD;      /* [2][TQ][LD] */
    float *sO = sQ + 2 * TQ * LD;  /* [2][TQ][LD] dO */
    float *sW = sO + 2 * TQ * LD;  /* [TQ][LDP]: P^T or dS^T, transposed */
    float *sL = sW + TQ * LDP;     /* [2][TQ] lse */
    float *sD = sL + 2 * TQ;       /* [2][TQ] delta */
    int *tOff = reinterpret_cast<int *>(sD + 2 * TQ);
    int *tU = tOff + TQ;

    const na_params P = na_load_params(params);
    const int tid = threadIdx.x, kg = tid & 7, qg = tid >> 3; /* key rows 4qg+i; queries kg+8j */
    const int b = bh / P.Hkv, kvh = bh % P.Hkv, G = P.H / P.Hkv;
    int r[3], n[3], k0[3], qmin[3], qmax[3], nqt[3];
    const int2 *tab;
    if (!na_dkdv_setup<float, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, NT>(P, tile, b, kvh, k, v, sK, sV, sQ, LD, tOff,
                                                                     tU, tid, r, n, k0, qmin, qmax, nqt, tab))
        return;
    const int ntq = nqt[0] * nqt[1] * nqt[2], ntiles = ntq * G;
    int rlo[4][3], rhi[4][3], pos[4][3];
    bool act[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
        act[i] = na_key_row_range<TK0, TK1, TK2>(P, r, n, k0, tab, 4 * qg + i, rlo[i], rhi[i], pos[i]);
    auto load_q = [&](int tt, int st) {
        int qb[3];
        na_ktile_base<TQ0, TQ1, TQ2>(tt % ntq, nqt, qmin, qb);
        na_load_qtile<float, HD, TQ, NT, FD>(P, b, r, kvh * G + tt / ntq, qb, qmax, q, dout, lse, delta,
                                             sQ + st * TQ * LD, sO + st * TQ * LD, sL + st * TQ, sD + st * TQ, LD,
                                             tOff, tU, tid, out, dlse);
    };
    const float sl2 = P.scale * 1.4426950408889634f;
    const int TQa[3] = {TQ0, TQ1, TQ2};
    float dka[4][HD / 32][4], dva[4][HD / 32][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < HD / 32; ++c)
#pragma unroll
            for (int e = 0; e < 4; ++e) dka[i][c][e] = dva[i][c][e] = 0.f;
    if (ntiles > 0) {
        load_q(0, 0);
        na_cp_commit();
    }
    for (int tt = 0; tt < ntiles; ++tt) {
        na_pipe_step(tt, ntiles, load_q);
        const int st = tt & 1;
        const float *cQ = sQ + st * TQ * LD, *cO = sO + st * TQ * LD, *cL = sL + st * TQ, *cD = sD + st * TQ;
        int base[3];
        na_ktile_base<TQ0, TQ1, TQ2>(tt % ntq, nqt, qmin, base);
        bool full = true, empty = true;
#pragma unroll
        for (int i = 0; i < 4; ++i) na_tile_state(rlo[i], rhi[i], base, TQa, &full, &empty);
        full = __all_sync(0xffffffffu, full);
        if (__all_sync(0xffffffffu, empty)) continue; /* warp-uniform; no barrier below */
        float s[4][8], dp[4][8];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) s[i][j] = dp[i][j] = 0.f;
        na_f32_dots<HD, LD>(sK, cQ, qg, kg, s);
        na_f32_dots<HD, LD>(sV, cO, qg, kg, dp);
        if (!full) na_f32_mask<TQ1, TQ2>(rlo, rhi, base, kg, s);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) { /* masked: P = ex2(-inf) = 0 */
                s[i][j] = na_ex2(fmaf(s[i][j], sl2, -cL[kg + 8 * j] * 1.4426950408889634f));
                dp[i][j] = s[i][j] * (dp[i][j] - cD[kg + 8 * j]);
            }
        na_f32_wsum<HD, LD, LDP, TQ>(sW, s, cO, qg, kg, dva);
        __syncwarp(); /* every lane is done reading P^T before dS^T overwrites it */
        na_f32_wsum<HD, LD, LDP, TQ>(sW, dp, cQ, qg, kg, dka);
        __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (!act[i]) continue;
        const long long krow = na_tok(b, pos[i], P.X) * P.Hkv + kvh;
        const float sc = P.scale;
#pragma unroll
        for (int c = 0; c < HD / 32; ++c) {
            *reinterpret_cast<float4 *>(dk + krow * HD + 4 * kg + 32 * c) =
                make_float4(dka[i][c][0] * sc, dka[i][c][1] * sc, dka[i][c][2] * sc, dka[i][c][3] * sc);
            *reinterpret_cast<float4 *>(dv + krow * HD + 4 * kg + 32 * c) =
                make_float4(dva[i][c][0], dva[i][c][1], dva[i][c][2], dva[i][c][3]);
        }
    }
}

/* The whole tiled f32 backward in one launch, for small problems (cuda.py
 * _fused_delta): grid.x = 2 x query boxes, dq boxes first (delta of their
 * rows computed as in the dq pass, not written), then the dk/dv pass' key
 * boxes of the same shape (tile roles swapped, as na_bwd_tc_entry) with
 * delta computed per query tile (na_load_qtile FD): no delta round trip
 * through memory and no second launch. */
template <int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2>
NA_DEV void na_bwd_f32_fd_entry(const int *params, const float *q, const float *k, const float *v, const float *out,
                                const float *lse, const float *dout, const float *dlse, float *dq, float *dk,
                                float *dv) {
    const na_params P = na_load_params(params);
    const int nq = na_num_tiles<TQ0, TQ1, TQ2>(P);
    if ((int)blockIdx.x < nq)
        na_bwd_dq_f32_entry<HD, TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, q, k, v, out, lse, dout, dlse, dq, nullptr,
                                                              blockIdx.x, blockIdx.y);
    else if ((int)blockIdx.y < P.B * P.Hkv)
        na_bwd_dkdv_f32_entry<HD, TK0, TK1, TK2, TQ0, TQ1, TQ2, true>(params, q, k, v, lse, dout, nullptr, dk, dv,
                                                                      blockIdx.x - nq, blockIdx.y, out, dlse);
}

#endif /* NATTEN_CUDA_BWD_F32_CUH */
