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
 * na_bwd_dq_f32_entry is the backward's dq pass on the same tiles (S = Q K^T,
 * dP = dO V^T, dS = P (dP - delta), dQ += dS K; it also writes delta =
 * rowsum(dO*O) - dlse for the dk/dv pass, which stays warp-per-row).
 *
 * Scope (cuda.py checks it): f32, head_dim == head_dim_v == HD in {32, 64},
 * out_stride 1, no RPB / extra KV / varlen.  Dynamic shared memory:
 * forward (64 + 4*64) * (HD + 4) * 4 + 64 * 68 * 4 + 8 * 64 bytes, dq pass
 * 64 * (HD + 4) * 4 more (the dO tile).
 */
#ifndef NATTEN_CUDA_FWD_F32_CUH
#define NATTEN_CUDA_FWD_F32_CUH

#include "na_fwd_tc.cuh"

/* s[i][j] += A[4qg+i] . B[kg+8j] over HD channels (rows of LD floats in smem) */
template <int HD, int LD>
NA_DEV void na_f32_dots(const float *sA, const float *sB, int qg, int kg, float (&s)[4][8]) {
#pragma unroll 2
    for (int d = 0; d < HD; d += 4) {
        float4 av[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = *reinterpret_cast<const float4 *>(sA + (4 * qg + i) * LD + d);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float4 bv = *reinterpret_cast<const float4 *>(sB + (kg + 8 * j) * LD + d);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[i][j] = fmaf(av[i].x, bv.x, s[i][j]);
                s[i][j] = fmaf(av[i].y, bv.y, s[i][j]);
                s[i][j] = fmaf(av[i].z, bv.z, s[i][j]);
                s[i][j] = fmaf(av[i].w, bv.w, s[i][j]);
            }
        }
    }
}
/* o[i][c] += sum over the tile's keys of W[key][4qg+i] * B[key][4kg+32c .. +3];
 * W (P or dS, transposed) is first stored from this thread's s[i][j]. */
template <int HD, int LD, int LDP, int TK>
NA_DEV void na_f32_wsum(float *sW, const float (&s)[4][8], const float *sB, int qg, int kg,
                        float (&o)[4][HD / 32][4]) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
        *reinterpret_cast<float4 *>(sW + (kg + 8 * j) * LDP + 4 * qg) = make_float4(s[0][j], s[1][j], s[2][j], s[3][j]);
    __syncwarp(); /* a warp's rows (4 row groups) only meet its own columns of sW */
#pragma unroll 4
    for (int key = 0; key < TK; ++key) {
        const float4 wv = *reinterpret_cast<const float4 *>(sW + key * LDP + 4 * qg);
        const float w[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int c = 0; c < HD / 32; ++c) {
            const float4 bv = *reinterpret_cast<const float4 *>(sB + key * LD + 4 * kg + 32 * c);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                o[i][c][0] = fmaf(w[i], bv.x, o[i][c][0]);
                o[i][c][1] = fmaf(w[i], bv.y, o[i][c][1]);
                o[i][c][2] = fmaf(w[i], bv.z, o[i][c][2]);
                o[i][c][3] = fmaf(w[i], bv.w, o[i][c][3]);
            }
        }
    }
}
/* -inf where key kg+8j of the tile at base is outside row i's window */
template <int TK1, int TK2>
NA_DEV void na_f32_mask(const int (&rlo)[4][3], const int (&rhi)[4][3], const int base[3], int kg, float (&s)[4][8]) {
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
/* max over the 8 threads of a row group (consecutive lanes) */
NA_DEV float na_f32_group_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
}
NA_DEV float na_f32_group_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x + __shfl_xor_sync(0xffffffffu, x, 4);
}

/* Shared memory and CTA setup of both f32 kernels: Q (and dO) tiles, K/V
 * stages, the W tile, the key-box table; query box and key-tile box. */
template <int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, int NQ>
struct na_f32_cta {
    static constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2, NT = 128;
    static constexpr int LD = HD + 4; /* floats; 16-byte rows, 8 rows x float4 hit 32 distinct banks */
    static constexpr int LDP = TQ + 4;
    static_assert(TQ == 64 && TK == 64, "64-query, 64-key tiles");
    static_assert(HD % 32 == 0, "head dim multiple of 32");
    float *sQ, *sK, *sV, *sW; /* sQ: NQ tiles of TQ rows (Q, then dO) */
    int *tOff, *tU;
    na_params P;
    int tid, qg, kg, b, h, kvh, ntiles;
    int r[3], n[3], q0[3], kmin[3], kmax[3], nkt[3], rlo[4][3], rhi[4][3];

    /* false: no query in this CTA (query box `tile` of head row `bh`; < 0: the block's) */
    NA_DEV bool setup(const int *params, unsigned char *smem, const float *const *qsrc, int tile = -1, int bh = -1) {
        if (tile < 0) tile = blockIdx.x;
        if (bh < 0) bh = blockIdx.y;
        sQ = reinterpret_cast<float *>(smem);
        sK = sQ + NQ * TQ * LD; /* [2][TK][LD] */
        sV = sK + 2 * TK * LD;
        sW = sV + 2 * TK * LD; /* [TK][LDP]: P or dS, transposed */
        tOff = reinterpret_cast<int *>(sW + TK * LDP);
        tU = tOff + TK;
        P = na_load_params(params);
        tid = threadIdx.x;
        qg = tid >> 3; /* rows 4*qg + i; keys kg + 8*j; channels 4*kg + 32*c */
        kg = tid & 7;
        b = bh / P.H;
        h = bh % P.H;
        kvh = h / (P.H / P.Hkv);
        if (!na_fwd_box<TQ0, TQ1, TQ2, TK0, TK1, TK2>(P, tile, r, n, q0, kmin, kmax, nkt)) return false;
        ntiles = nkt[0] * nkt[1] * nkt[2];
        const int lastq[3] = {n[0] - 1, n[1] - 1, n[2] - 1};
        for (int t = 0; t < NQ; ++t)
            na_load_box<float, HD, TQ0, TQ1, TQ2, NT>(sQ + t * TQ * LD, LD, qsrc[t], P.H, h, b, P, r, q0, lastq, tid);
        na_cp_commit();
        na_box_table<TK0, TK1, TK2>(tOff, tU, P, P.Hkv, HD, tid, NT);
#pragma unroll
        for (int i = 0; i < 4; ++i) na_row_window<TQ1, TQ2>(P, r, n, q0, 4 * qg + i, rlo[i], rhi[i]);
        __syncthreads();
        return true;
    }
    NA_DEV void load_kv(const float *k, const float *v, int tt, int stage) {
        na_load_kv_tile<float, HD, TK0, TK1, TK2, NT>(P, b, r, kvh, kmin, kmax, nkt, tt, k, v, sK + stage * TK * LD,
                                                      sV + stage * TK * LD, LD, tOff, tU, tid);
    }
    /* pipeline step at tile tt; base of its keys; whether it is full / empty for the warp */
    NA_DEV void step(const float *k, const float *v, int tt, int base[3], bool *full, bool *empty) {
        na_pipe_step(tt, ntiles, [&](int t, int st) { load_kv(k, v, t, st); });
        na_ktile_base<TK0, TK1, TK2>(tt, nkt, kmin, base);
        const int TKa[3] = {TK0, TK1, TK2};
        bool f = true, e = true;
#pragma unroll
        for (int i = 0; i < 4; ++i) na_tile_state(rlo[i], rhi[i], base, TKa, &f, &e);
        *full = __all_sync(0xffffffffu, f);
        *empty = __all_sync(0xffffffffu, e); /* warp-uniform skip */
    }
    /* f(cK, cV, base, full) on every key tile that meets a window of the warp's rows */
    template <class F>
    NA_DEV void walk(const float *k, const float *v, F &&f) {
        for (int tt = 0; tt < ntiles; ++tt) {
            int base[3];
            bool full, empty;
            step(k, v, tt, base, &full, &empty);
            if (!empty) f(sK + (tt & 1) * TK * LD, sV + (tt & 1) * TK * LD, base, full);
        }
    }
    NA_DEV long long row_token(int i) const { return na_row_token<TQ1, TQ2>(P, b, h, r, n, q0, 4 * qg + i); }
};

template <int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2>
NA_DEV void na_fwd_f32_entry(const int *params, const float *q, const float *k, const float *v, float *out,
                             float *lse) {
    typedef na_f32_cta<HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, 1> C;
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    C c;
    const float *qs[1] = {q};
    if (!c.setup(params, na_smem_raw, qs)) return;
    const float sl2 = c.P.scale * 1.4426950408889634f;
    float o[4][HD / 32][4], m[4], l[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int cc = 0; cc < HD / 32; ++cc) o[i][cc][0] = o[i][cc][1] = o[i][cc][2] = o[i][cc][3] = 0.f;
    }
    c.load_kv(k, v, 0, 0);
    na_cp_commit();
    c.walk(k, v, [&](const float *cK, const float *cV, const int *base, bool full) {
            float s[4][8];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) s[i][j] = 0.f;
            na_f32_dots<HD, C::LD>(c.sQ, cK, c.qg, c.kg, s);
            if (!full) na_f32_mask<TK1, TK2>(c.rlo, c.rhi, base, c.kg, s);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float mx = s[i][0];
#pragma unroll
                for (int j = 1; j < 8; ++j) mx = fmaxf(mx, s[i][j]);
                const float mn = fmaxf(m[i], na_f32_group_max(mx) * sl2); /* scaled log2 domain, as na_fwd_tc */
                const float ref = mn == -INFINITY ? 0.f : mn;
                const float corr = na_ex2(m[i] - ref);
                float ls = 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    s[i][j] = na_ex2(fmaf(s[i][j], sl2, -ref));
                    ls += s[i][j];
                }
                l[i] = l[i] * corr + ls; /* partial over my 8 keys; reduced at the end */
                m[i] = mn;
#pragma unroll
                for (int cc = 0; cc < HD / 32; ++cc) {
                    o[i][cc][0] *= corr;
                    o[i][cc][1] *= corr;
                    o[i][cc][2] *= corr;
                    o[i][cc][3] *= corr;
                }
            }
            na_f32_wsum<HD, C::LD, C::LDP, C::TK>(c.sW, s, cV, c.qg, c.kg, o);
    });
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float lt = na_f32_group_sum(l[i]);
        const long long orow = c.row_token(i);
        if (orow < 0) continue;
        const float inv = 1.f / lt;
        float *dst = out + orow * (long long)HD;
#pragma unroll
        for (int cc = 0; cc < HD / 32; ++cc)
            *reinterpret_cast<float4 *>(dst + 4 * c.kg + 32 * cc) =
                make_float4(o[i][cc][0] * inv, o[i][cc][1] * inv, o[i][cc][2] * inv, o[i][cc][3] * inv);
        if (c.kg == 0) lse[orow] = (m[i] + log2f(lt)) * 0.6931471805599453f;
    }
}

template <int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2>
NA_DEV void na_bwd_dq_f32_entry(const int *params, const float *q, const float *k, const float *v, const float *out,
                                const float *lse, const float *dout, const float *dlse, float *dq, float *delta,
                                int tile = -1, int bh = -1) { /* delta null: not written (na_bwd_f32_fd_entry) */
    typedef na_f32_cta<HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, 2> C;
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    C c;
    const float *qs[2] = {q, dout};
    if (!c.setup(params, na_smem_raw, qs, tile, bh)) return;
    const float *sO = c.sQ + C::TQ * C::LD; /* dO tile */
    const float sl2 = c.P.scale * 1.4426950408889634f;
    c.load_kv(k, v, 0, 0);
    na_cp_commit();
    na_cp_wait<1>(); /* the Q / dO tiles (key tile 0 may still be in flight) */
    __syncthreads();
    /* delta = rowsum(dO * O) - dlse and lse (log2 domain) of my rows */
    float dl[4], l2[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const long long orow = c.row_token(i);
        float part = 0.f;
        if (orow >= 0) {
#pragma unroll
            for (int cc = 0; cc < HD / 32; ++cc) {
                const float4 ov = *reinterpret_cast<const float4 *>(out + orow * (long long)HD + 4 * c.kg + 32 * cc);
                const float4 dv = *reinterpret_cast<const float4 *>(sO + (4 * c.qg + i) * C::LD + 4 * c.kg + 32 * cc);
                part += ov.x * dv.x + ov.y * dv.y + ov.z * dv.z + ov.w * dv.w;
            }
        }
        part = na_f32_group_sum(part);
        dl[i] = orow >= 0 ? part - dlse[orow] : 0.f;
        l2[i] = orow >= 0 ? lse[orow] * 1.4426950408889634f : 0.f;
        if (orow >= 0 && c.kg == 0 && delta) delta[orow] = dl[i];
    }
    float acc[4][HD / 32][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int cc = 0; cc < HD / 32; ++cc) acc[i][cc][0] = acc[i][cc][1] = acc[i][cc][2] = acc[i][cc][3] = 0.f;
    c.walk(k, v, [&](const float *cK, const float *cV, const int *base, bool full) {
            float s[4][8], dp[4][8];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) s[i][j] = dp[i][j] = 0.f;
            na_f32_dots<HD, C::LD>(c.sQ, cK, c.qg, c.kg, s);
            na_f32_dots<HD, C::LD>(sO, cV, c.qg, c.kg, dp);
            if (!full) na_f32_mask<TK1, TK2>(c.rlo, c.rhi, base, c.kg, s);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) /* dS = P (dP - delta); masked: P = ex2(-inf) = 0 */
                    s[i][j] = na_ex2(fmaf(s[i][j], sl2, -l2[i])) * (dp[i][j] - dl[i]);
            na_f32_wsum<HD, C::LD, C::LDP, C::TK>(c.sW, s, cK, c.qg, c.kg, acc);
    });
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const long long orow = c.row_token(i);
        if (orow < 0) continue;
        const float sc = c.P.scale;
        float *dst = dq + orow * (long long)HD;
#pragma unroll
        for (int cc = 0; cc < HD / 32; ++cc)
            *reinterpret_cast<float4 *>(dst + 4 * c.kg + 32 * cc) =
                make_float4(acc[i][cc][0] * sc, acc[i][cc][1] * sc, acc[i][cc][2] * sc, acc[i][cc][3] * sc);
    }
}

#endif /* NATTEN_CUDA_FWD_F32_CUH */
