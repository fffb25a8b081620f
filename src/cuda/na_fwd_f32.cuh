/*
 * na_fwd_f32.cuh -- tiled f32 fused forward (out + lse) on the FMA units.
 *
 * Same tiling as na_fwd_tc.cuh (a CTA owns a box of 64 queries of one
 * (batch, head, dilation group) and walks the union of their windows in
 * 64-key tiles, K/V double-buffered through shared memory with cp.async,
 * online softmax in the exp2 domain), but S = Q K^T and O += P V are plain
 * f32 FMAs: IEEE f32 like the reference, no TF32.  The warp-per-row kernel
 * (na_simple.cuh) reads every key once per query (49x for a 7x7 window) and
 * serialises a 5-step shuffle reduction per key; here a key tile in shared
 * memory serves 64 queries and each thread keeps a 4 x 8 block of scores in
 * registers (12 shared loads per 128 FMAs for S).
 *
 * 128 threads: thread t owns query rows 4*(t/8) .. +3 and, for S, keys
 * (t%8) + 8*j (j < 8); for O, channels 4*(t%8) + 32*c.  The 8 threads of a
 * row group are 8 consecutive lanes, so row max/sum are 3 xor-shuffles.  P
 * goes through shared memory (transposed, [key][row]) for the P V product.
 *
 * Scope (cuda.py checks it): f32, head_dim == head_dim_v == HD in {32, 64},
 * out_stride 1, no RPB / extra KV / varlen.  Dynamic shared memory:
 * (64 + 4*64) * (HD + 4) * 4 + 64 * 68 * 4 + 8 * 64 bytes.
 */
#ifndef NATTEN_CUDA_FWD_F32_CUH
#define NATTEN_CUDA_FWD_F32_CUH

#include "na_fwd_tc.cuh"

template <int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2>
NA_DEV void na_fwd_f32_entry(const int *params, const float *q, const float *k, const float *v, float *out,
                             float *lse) {
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2, NT = 128;
    constexpr int LD = HD + 4; /* floats; rows 16-byte aligned, 8 rows x float4 hit 32 distinct banks */
    constexpr int LDP = TQ + 4;
    constexpr int NC = HD / 32; /* float4 channel groups per thread */
    static_assert(TQ == 64 && TK == 64, "64-query, 64-key tiles");
    static_assert(HD % 32 == 0, "head dim multiple of 32");
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    float *sQ = reinterpret_cast<float *>(na_smem_raw);
    float *sK = sQ + TQ * LD; /* [2][TK][LD] */
    float *sV = sK + 2 * TK * LD;
    float *sP = sV + 2 * TK * LD; /* [TK][LDP]: P transposed */
    int *tOff = reinterpret_cast<int *>(sP + TK * LDP);
    int *tU = tOff + TK;

    const na_params P = na_load_params(params);
    const int tid = threadIdx.x;
    const int bh = blockIdx.y, b = bh / P.H, h = bh % P.H;
    const int kvh = h / (P.H / P.Hkv);
    const int TKa[3] = {TK0, TK1, TK2};
    int r[3], n[3], q0[3], kmin[3], kmax[3], nkt[3];
    if (!na_fwd_box<TQ0, TQ1, TQ2, TK0, TK1, TK2>(P, blockIdx.x, r, n, q0, kmin, kmax, nkt)) return;
    const int ntiles = nkt[0] * nkt[1] * nkt[2];

    const int lastq[3] = {n[0] - 1, n[1] - 1, n[2] - 1};
    na_load_box<float, HD, TQ0, TQ1, TQ2, NT>(sQ, LD, q, P.H, h, b, P, r, q0, lastq, tid);
    na_cp_commit();
    na_box_table<TK0, TK1, TK2>(tOff, tU, P, P.Hkv, HD, tid, NT);
    __syncthreads();
    auto load_kv = [&](int tt, int stage) {
        int kt[3], base[3], lim[3];
        na_tile_coords<TK0, TK1, TK2>(tt, nkt, kt);
#pragma unroll
        for (int x = 0; x < 3; ++x) {
            base[x] = kmin[x] + kt[x] * TKa[x];
            lim[x] = kmax[x] - base[x];
        }
        const long long org = na_box_origin(P, b, base, r, P.Hkv, kvh, HD);
        na_box_load<float, HD, TK, NT>(sK + stage * TK * LD, LD, k, org, tOff, tU, lim, tid);
        na_box_load<float, HD, TK, NT>(sV + stage * TK * LD, LD, v, org, tOff, tU, lim, tid);
    };

    const int qg = tid >> 3, kg = tid & 7; /* rows 4*qg + i; keys kg + 8*j; channels 4*kg + 32*c */
    int rlo[4][3], rhi[4][3];
#pragma unroll
    for (int i = 0; i < 4; ++i) na_row_window<TQ1, TQ2>(P, r, n, q0, 4 * qg + i, rlo[i], rhi[i]);

    const float sl2 = P.scale * 1.4426950408889634f;
    float o[4][NC][4], m[4], l[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int c = 0; c < NC; ++c) o[i][c][0] = o[i][c][1] = o[i][c][2] = o[i][c][3] = 0.f;
    }

    load_kv(0, 0);
    na_cp_commit();
    for (int tt = 0; tt < ntiles; ++tt) {
        if (tt + 1 < ntiles) {
            load_kv(tt + 1, (tt + 1) & 1);
            na_cp_commit();
            na_cp_wait<1>();
        } else {
            na_cp_wait<0>();
        }
        __syncthreads();
        const float *cK = sK + (tt & 1) * TK * LD, *cV = sV + (tt & 1) * TK * LD;
        int kt[3], base[3];
        na_tile_coords<TK0, TK1, TK2>(tt, nkt, kt);
#pragma unroll
        for (int x = 0; x < 3; ++x) base[x] = kmin[x] + kt[x] * TKa[x];
        bool full = true, empty = true;
#pragma unroll
        for (int i = 0; i < 4; ++i) na_tile_state(rlo[i], rhi[i], base, TKa, &full, &empty);
        full = __all_sync(0xffffffffu, full);
        empty = __all_sync(0xffffffffu, empty);
        if (!empty) { /* warp-uniform: a warp's rows only meet its own slice of sP */
            float s[4][8];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) s[i][j] = 0.f;
#pragma unroll 2
            for (int d = 0; d < HD; d += 4) {
                float4 qv[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) qv[i] = *reinterpret_cast<const float4 *>(sQ + (4 * qg + i) * LD + d);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float4 kv = *reinterpret_cast<const float4 *>(cK + (kg + 8 * j) * LD + d);
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        s[i][j] = fmaf(qv[i].x, kv.x, s[i][j]);
                        s[i][j] = fmaf(qv[i].y, kv.y, s[i][j]);
                        s[i][j] = fmaf(qv[i].z, kv.z, s[i][j]);
                        s[i][j] = fmaf(qv[i].w, kv.w, s[i][j]);
                    }
                }
            }
            if (!full) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    unsigned long long mk[3];
#pragma unroll
                    for (int x = 0; x < 3; ++x) mk[x] = na_range_bits(rlo[i][x] - base[x], rhi[i][x] - base[x]);
#pragma unroll
                    for (int j = 0; j < 8; ++j)
                        if (!na_col_ok<TK1, TK2>(mk, kg + 8 * j)) s[i][j] = -INFINITY;
                }
            }
            float corr[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float mx = s[i][0];
#pragma unroll
                for (int j = 1; j < 8; ++j) mx = fmaxf(mx, s[i][j]);
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
                const float mn = fmaxf(m[i], mx * sl2); /* scaled log2 domain, as in na_fwd_tc */
                const float ref = mn == -INFINITY ? 0.f : mn;
                corr[i] = na_ex2(m[i] - ref);
                float ls = 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    s[i][j] = na_ex2(fmaf(s[i][j], sl2, -ref));
                    ls += s[i][j];
                }
                l[i] = l[i] * corr[i] + ls; /* partial over my 8 keys; reduced at the end */
                m[i] = mn;
            }
#pragma unroll
            for (int j = 0; j < 8; ++j)
                *reinterpret_cast<float4 *>(sP + (kg + 8 * j) * LDP + 4 * qg) =
                    make_float4(s[0][j], s[1][j], s[2][j], s[3][j]);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    o[i][c][0] *= corr[i];
                    o[i][c][1] *= corr[i];
                    o[i][c][2] *= corr[i];
                    o[i][c][3] *= corr[i];
                }
            __syncwarp();
#pragma unroll 4
            for (int key = 0; key < TK; ++key) {
                const float4 pv = *reinterpret_cast<const float4 *>(sP + key * LDP + 4 * qg);
                const float pr[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    const float4 vv = *reinterpret_cast<const float4 *>(cV + key * LD + 4 * kg + 32 * c);
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        o[i][c][0] = fmaf(pr[i], vv.x, o[i][c][0]);
                        o[i][c][1] = fmaf(pr[i], vv.y, o[i][c][1]);
                        o[i][c][2] = fmaf(pr[i], vv.z, o[i][c][2]);
                        o[i][c][3] = fmaf(pr[i], vv.w, o[i][c][3]);
                    }
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float lt = l[i];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        lt += __shfl_xor_sync(0xffffffffu, lt, 4);
        const long long orow = na_row_token<TQ1, TQ2>(P, b, h, r, n, q0, 4 * qg + i);
        if (orow < 0) continue;
        const float inv = 1.f / lt;
        float *dst = out + orow * (long long)HD;
#pragma unroll
        for (int c = 0; c < NC; ++c)
            *reinterpret_cast<float4 *>(dst + 4 * kg + 32 * c) =
                make_float4(o[i][c][0] * inv, o[i][c][1] * inv, o[i][c][2] * inv, o[i][c][3] * inv);
        if (kg == 0) lse[orow] = (m[i] + log2f(lt)) * 0.6931471805599453f;
    }
}

#endif /* NATTEN_CUDA_FWD_F32_CUH */
