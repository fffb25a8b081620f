/*
 * na_bwd_tc.cuh -- tensor-core fused backward for f16/bf16 (same scope as
 * na_fwd_tc.cuh: HD in {32, 64, 128}, out_stride 1, no RPB / extra KV /
 * varlen).  Probabilities are recomputed from lse; delta = rowsum(dO*O) -
 * dlse comes precomputed (f32).  Two kernels, no atomics:
 *
 *   na_bwd_dq_tc_entry    one CTA per box of TQ queries (like the forward):
 *                         S = Q K^T, P = exp(S - lse), dP = dO V^T,
 *                         dS = P (dP - delta), dQ += dS K   over the union
 *                         of the queries' windows, in key tiles of TK.
 *   na_bwd_dkdv_tc_entry  one CTA per box of TK keys (one kv head), for
 *                         every query head of its GQA group, over the
 *                         queries whose windows hold those keys (a box too:
 *                         the inverse rule is monotone, window.cuh), in
 *                         query tiles of TQ:  S^T = K Q^T, P^T, dV += P^T dO,
 *                         dP^T = V dO^T, dS^T, dK += dS^T Q.
 *
 * mma.sync.m16n8k16 with f32 accumulation; operands through ldmatrix from
 * padded shared memory; tiles double-buffered with cp.async.
 * Dynamic shared memory: dq: (2*TQ + 4*TK) * (HD+8) * 2 + 8*TK;
 *                        dkdv: (2*TK + 4*TQ) * (HD+8) * 2 + 4*TQ*4 + 8*TQ.
 */
#ifndef NATTEN_CUDA_BWD_TC_CUH
#define NATTEN_CUDA_BWD_TC_CUH

#include "na_fwd_tc.cuh"

/* Queries (local indices in group r) whose windows meet keys [k0, k1]: [*lo, *hi]. */
NA_DEV void na_query_range(int L, int K, int d, int s, int causal, int r, int k0, int k1, int *lo, int *hi) {
    const int n = (L - r + d - 1) / d;
    int a = 0, b = n;
    while (a < b) {
        const int mid = (a + b) >> 1;
        if (na_last_valid_local(L, K, d, s, causal, r, mid) >= k0) b = mid; else a = mid + 1;
    }
    *lo = a;
    a = 0;
    b = n;
    while (a < b) {
        const int mid = (a + b) >> 1;
        if (na_first_valid_local(L, K, d, s, causal, r, mid) > k1) b = mid; else a = mid + 1;
    }
    *hi = a - 1;
}

/* Column j*8 + t4*2 + c of a tile whose mask (na_tile_mask, na_fwd_tc.cuh) is
 * mt << (2*t4): a constant-shift bit test per score, where the per-axis masks
 * and column decode cost ~13 integer ops (the integer pipe was the busiest
 * one in the backward on vision-2d-64-k7, ncu on H100). */
NA_DEV bool na_mask_bit(unsigned long long mt, int j, int c) { return (mt >> (8 * j + c)) & 1ull; }

/* cp.async the rows of one box of two tensors at the same offsets (K and V of
 * a key tile, Q and dO of a query tile); the box table as na_box_load's
 * (na_fwd_tc.cuh).  All of a thread's table reads come first: a cp.async
 * writes shared memory, so the compiler kept each row's two dependent table
 * reads (~30 cycles each) after the previous row's copy, a chain of 16 rows
 * a tile per thread (ncu source counters, H100, flux-2d-256-w80: ~20% of the
 * stall samples of each pass). */
template <typename T, int HD, int ROWS, int NT>
NA_DEV void na_box_load2(T *dA, T *dB, int ld, const T *sA, const T *sB, long long origin, const int *toff,
                         const int *tu, const int lim[3], int tid) {
    constexpr int EPC = 16 / (int)sizeof(T), CPR = HD / EPC, N = ROWS * CPR / NT, STEP = NT / CPR;
    static_assert(NT % CPR == 0 && (ROWS * CPR) % NT == 0, "box load shape");
    const int part = tid % CPR, row0 = tid / CPR;
    int off[N], uu[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
        off[i] = toff[row0 + i * STEP];
        uu[i] = tu[row0 + i * STEP];
    }
#pragma unroll
    for (int i = 0; i < N; ++i) {
        const int row = row0 + i * STEP;
        const bool ok = (uu[i] & 1023) <= lim[0] && ((uu[i] >> 10) & 1023) <= lim[1] && (uu[i] >> 20) <= lim[2];
        const long long g = (origin + off[i] + part * EPC) & -(long long)ok; /* a select made a branch a row */
        na_cp_async16(dA + row * ld + part * EPC, sA + g, ok);
        na_cp_async16(dB + row * ld + part * EPC, sB + g, ok);
    }
}

/* Origin of the next tile of a walk over the box of tiles [lo, hi] (shape
 * T0 x T1 x T2, last axis fastest: na_tile_coords' order).  Stepping keeps
 * the run-time divisions of na_ktile_base (~60 integer instructions, twice a
 * tile) out of the loop. */
template <int T0, int T1, int T2>
NA_DEV void na_tile_step(int base[3], const int lo[3], const int hi[3]) {
    base[2] += T2;
    if (base[2] > hi[2]) {
        base[2] = lo[2];
        base[1] += T1;
    }
    if (base[1] > hi[1]) {
        base[1] = lo[1];
        base[0] += T0;
    }
}

/* Per tile of T0 x T1 x T2 at base: this thread's two rows' (g, g+8) masks
 * (na_tile_mask of their ranges [rlo, rhi]: keys of a query in the dq pass,
 * queries of a key in the dk/dv pass), shifted to the thread's columns
 * (na_mask_bit), and whether the tile is inside (full) or outside (empty)
 * every range of the warp's rows. */
template <int T0, int T1, int T2>
NA_DEV void na_row_masks(const int rlo[2][3], const int rhi[2][3], const int base[3], int t4,
                         unsigned long long mk[2], bool *full, bool *empty) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        int lo[3], hi[3];
#pragma unroll
        for (int x = 0; x < 3; ++x) {
            lo[x] = rlo[rr][x] - base[x];
            hi[x] = rhi[rr][x] - base[x];
        }
        mk[rr] = na_tile_mask<T0, T1, T2>(lo, hi);
    }
    *full = __all_sync(0xffffffffu, (mk[0] & mk[1]) == ~0ull);
    *empty = __all_sync(0xffffffffu, (mk[0] | mk[1]) == 0ull);
    mk[0] >>= 2 * t4;
    mk[1] >>= 2 * t4;
}
/* delta = rowsum(dO * O) - dlse of output row orow, by one thread (the
 * fused-delta backward of small problems computes it where it is read, so
 * no delta launch precedes the passes; cuda.py _fused_delta). */
template <typename T, int HD>
NA_DEV float na_row_delta(const T *out, const T *dout, const float *dlse, long long orow) {
    const T *o = out + orow * HD, *g = dout + orow * HD;
    float acc = 0.f;
#pragma unroll 8
    for (int c = 0; c < HD; ++c) acc = fmaf(na_f(o[c]), na_f(g[c]), acc);
    return acc - dlse[orow];
}
/* dq pass: s <- dS = P (dP - delta) of a tile (m16n8 fragments, query rows
 * g, g+8 x 64 key columns; P = exp2(S * scale*log2e - lse*log2e), masked),
 * with the rows' lse * log2e (rl2) and delta (rdl). */
NA_DEV void na_dq_probs(float (&s)[8][4], const float (&dp)[8][4], const float rl2[2], const float rdl[2],
                        const unsigned long long mk[2], bool full, float sl2) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int rr = e >> 1;
            const bool ok = full || na_mask_bit(mk[rr], j, e & 1);
            const float pr = ok ? na_ex2(fmaf(s[j][e], sl2, -rl2[rr])) : 0.f;
            s[j][e] = pr * (dp[j][e] - rdl[rr]);
        }
}
/* dq pass, query row `row` of the box (shape TQ0 x TQ1 x TQ2 at q0): its
 * window (group-local key ranges lo, hi; empty when inactive), position, lse
 * * log2e and delta (0 when inactive).  Returns whether it is active. */
template <int TQ1, int TQ2>
NA_DEV bool na_dq_row(const na_params &P, int b, int h, const int r[3], const int n[3], const int q0[3], int row,
                      const float *lse, const float *delta, int lo[3], int hi[3], int pos[3], float *rl2,
                      float *rdl) {
    const int t[3] = {row / (TQ1 * TQ2), (row / TQ2) % TQ1, row % TQ2};
    bool act = true;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        const int ql = q0[x] + t[x];
        act = act && ql < n[x];
        pos[x] = ql * P.dil[x] + r[x];
        lo[x] = na_first_valid_local(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], min(ql, n[x] - 1));
        hi[x] = na_last_valid_local(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], min(ql, n[x] - 1));
    }
    *rl2 = 0.f;
    *rdl = 0.f;
    if (!act) {
#pragma unroll
        for (int x = 0; x < 3; ++x) { lo[x] = 1 << 30; hi[x] = -(1 << 30); }
    } else {
        const long long orow = na_tok(b, pos, P.X) * P.H + h;
        *rl2 = lse[orow] * 1.4426950408889634f;
        *rdl = delta[orow];
    }
    return act;
}
/* The two query rows of this thread in the dq pass (rows row0 and row0 + 8 of
 * the box, as both dq passes, mma.sync and wgmma, hold them): na_dq_row each. */
template <int TQ1, int TQ2>
NA_DEV void na_dq_rows(const na_params &P, int b, int h, const int r[3], const int n[3], const int q0[3], int row0,
                       const float *lse, const float *delta, int rlo[2][3], int rhi[2][3], int rowpos[2][3],
                       bool ract[2], float rl2[2], float rdl[2]) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr)
        ract[rr] = na_dq_row<TQ1, TQ2>(P, b, h, r, n, q0, row0 + rr * 8, lse, delta, rlo[rr], rhi[rr], rowpos[rr],
                                      &rl2[rr], &rdl[rr]);
}
/* dQ (times the scale) of this thread's two query rows. */
template <typename T, int HD>
NA_DEV void na_dq_store(const float (&acc)[HD / 8][4], const bool ract[2], const int rowpos[2][3],
                        const na_params &P, int b, int h, int t4, T *dq) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        if (!ract[rr]) continue;
        T *dst = dq + (na_tok(b, rowpos[rr], P.X) * P.H + h) * (long long)HD;
#pragma unroll
        for (int j = 0; j < HD / 8; ++j)
            *reinterpret_cast<unsigned *>(dst + j * 8 + t4 * 2) =
                na_pack2(acc[j][2 * rr] * P.scale, acc[j][2 * rr + 1] * P.scale, T());
    }
}

/* ------------------------------------------------------------------ dQ */
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, bool FD = false>
__device__ __noinline__ void na_bwd_dq_tc_entry(const int *params, const T *q, const T *k, const T *v,
                                                const T *dout, const float *lse, const float *delta, T *dq,
                                                int tile = -1, int bh = -1, const T *out = nullptr,
                                                const float *dlse = nullptr) { /* not inlined: na_bwd_tc_entry */
    if (tile < 0) tile = blockIdx.x;
    if (bh < 0) bh = blockIdx.y;
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2;
    constexpr int NW = TQ / 16, NT = NW * 32, LD = HD + 8;
    static_assert(TK == 64, "key tile must hold 64 keys");
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    T *sQ = reinterpret_cast<T *>(na_smem_raw);
    T *sO = sQ + TQ * LD;
    T *sK = sO + TQ * LD; /* [2][TK][LD] */
    T *sV = sK + 2 * TK * LD;
    int *tOff = reinterpret_cast<int *>(sV + 2 * TK * LD); /* [TK] key-box table */
    int *tU = tOff + TK;

    const na_params P = na_load_params(params);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = bh / P.H, h = bh % P.H;
    const int kvh = h / (P.H / P.Hkv);
    const int TKa[3] = {TK0, TK1, TK2};
    int r[3], n[3], q0[3], qlast[3], kmin[3], kmax[3], nkt[3];
    if (!na_box_of<TQ0, TQ1, TQ2>(P, tile, r, n, q0, qlast)) return;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        kmin[x] = na_first_valid_local(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], q0[x]);
        kmax[x] = na_last_valid_local(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], qlast[x]);
        nkt[x] = (kmax[x] - kmin[x] + TKa[x]) / TKa[x];
    }
    const int ntiles = nkt[0] * nkt[1] * nkt[2];
    const int lastq[3] = {n[0] - 1, n[1] - 1, n[2] - 1};
    na_load_box<T, HD, TQ0, TQ1, TQ2, NT>(sQ, LD, q, P.H, h, b, P, r, q0, lastq, tid);
    na_load_box<T, HD, TQ0, TQ1, TQ2, NT>(sO, LD, dout, P.H, h, b, P, r, q0, lastq, tid);
    na_cp_commit();

    const int g4 = lane >> 2, t4 = lane & 3;
    int rlo[2][3], rhi[2][3], rowpos[2][3];
    bool ract[2];
    float rl2[2], rdl[2];
    const float sl2 = P.scale * 1.4426950408889634f;
    na_dq_rows<TQ1, TQ2>(P, b, h, r, n, q0, warp * 16 + g4, lse, FD ? lse : delta, rlo, rhi, rowpos, ract, rl2, rdl);
    if (FD) /* fused delta (na_load_qtile): computed here, not read */
#pragma unroll
        for (int rr = 0; rr < 2; ++rr)
            rdl[rr] = ract[rr] ? na_row_delta<T, HD>(out, dout, dlse, na_tok(b, rowpos[rr], P.X) * P.H + h) : 0.f;
    na_box_table<TK0, TK1, TK2>(tOff, tU, P, P.Hkv, HD, tid, NT);
    __syncthreads();
    int lbase[3] = {kmin[0], kmin[1], kmin[2]}, base[3] = {kmin[0], kmin[1], kmin[2]}; /* next load, this tile */
    auto load_kv = [&](int, int stage) { /* tiles are loaded in order: lbase walks them */
        int lim[3];
#pragma unroll
        for (int x = 0; x < 3; ++x) lim[x] = kmax[x] - lbase[x];
        na_box_load2<T, HD, TK, NT>(sK + stage * TK * LD, sV + stage * TK * LD, LD, k, v,
                                    na_box_origin(P, b, lbase, r, P.Hkv, kvh, HD), tOff, tU, lim, tid);
        na_tile_step<TK0, TK1, TK2>(lbase, kmin, kmax);
    };

    unsigned qf[HD / 16][4]; /* dO fragments are re-read from shared memory (register budget) */
    float acc[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

    load_kv(0, 0);
    na_cp_commit();
    for (int tt = 0; tt < ntiles; ++tt) {
        na_pipe_step(tt, ntiles, load_kv);
        if (tt == 0) {
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                na_ldsm_x4(qf[kk], sQ + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
            }
        }
        const T *cK = sK + (tt & 1) * TK * LD, *cV = sV + (tt & 1) * TK * LD;
        if (tt > 0) na_tile_step<TK0, TK1, TK2>(base, kmin, kmax);
        unsigned long long mk[2];
        bool full, empty;
        na_row_masks<TK0, TK1, TK2>(rlo, rhi, base, t4, mk, &full, &empty);
        if (!empty) {
            float s[8][4], dp[8][4];
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                unsigned of[4];
                na_ldsm_x4(of, sO + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int jp = 0; jp < 4; ++jp) {
                    unsigned bk[4], bv[4];
                    const int off = (jp * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
                    na_ldsm_x4(bk, cK + off);
                    na_ldsm_x4(bv, cV + off);
                    na_mma(s[2 * jp], qf[kk], bk[0], bk[1], T());
                    na_mma(s[2 * jp + 1], qf[kk], bk[2], bk[3], T());
                    na_mma(dp[2 * jp], of, bv[0], bv[1], T());
                    na_mma(dp[2 * jp + 1], of, bv[2], bv[3], T());
                }
            }
            na_dq_probs(s, dp, rl2, rdl, mk, full, sl2);
            /* dQ += dS K */
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                unsigned pa[4];
                pa[0] = na_pack2(s[2 * kk][0], s[2 * kk][1], T());
                pa[1] = na_pack2(s[2 * kk][2], s[2 * kk][3], T());
                pa[2] = na_pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T());
                pa[3] = na_pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T());
#pragma unroll
                for (int jp = 0; jp < HD / 16; ++jp) {
                    unsigned bk[4];
                    na_ldsm_x4_t(bk, cK + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + jp * 16 + (lane >> 4) * 8);
                    na_mma(acc[2 * jp], pa, bk[0], bk[1], T());
                    na_mma(acc[2 * jp + 1], pa, bk[2], bk[3], T());
                }
            }
        }
    }
    na_dq_store<T, HD>(acc, ract, rowpos, P, b, h, t4, dq);
}

/* Query ranges of the dk/dv pass, computed once per CTA: for each axis x and
 * each coordinate u of the key box along it, the group-local queries whose
 * windows hold key k0[x] + u (empty past the group), at tab[off(x) + u],
 * off = 0, TK0, TK0 + TK1; parallel over threads.  Each range is two binary
 * searches (na_query_range); done per row and axis by every thread they
 * cost ~2000 instructions a thread, as much as a few tiles of vision-2d-64-k7. */
template <int TK0, int TK1, int TK2, int NT = 128>
NA_DEV void na_key_ranges(const na_params &P, const int r[3], const int n[3], const int k0[3], int2 *tab, int tid) {
    static_assert(TK0 + TK1 + TK2 <= NT, "one entry per thread of an NT-thread CTA");
#pragma unroll
    for (int x = 0; x < 3; ++x) { /* unrolled: no run-time index into P (it would go to local memory) */
        const int off = x == 0 ? 0 : x == 1 ? TK0 : TK0 + TK1, cnt = x == 0 ? TK0 : x == 1 ? TK1 : TK2;
        const int kl = k0[x] + tid - off;
        if (tid >= off && tid < off + cnt) {
            int lo = 1 << 30, hi = -(1 << 30);
            if (kl < n[x]) na_query_range(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], kl, kl, &lo, &hi);
            tab[tid] = make_int2(lo, hi);
        }
    }
}
/* The box of query tiles (shape TQ) whose windows meet the key box [k0, klast]:
 * local query range [qmin, qmax] (monotone windows: from the box' first and
 * last keys) and tile counts nqt per axis. */
template <int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2>
NA_DEV void na_dkdv_qbox(const int2 *tab, const int k0[3], const int klast[3], int qmin[3], int qmax[3], int nqt[3]) {
    const int TQa[3] = {TQ0, TQ1, TQ2}, off[3] = {0, TK0, TK0 + TK1};
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        qmin[x] = tab[off[x]].x;
        qmax[x] = tab[off[x] + klast[x] - k0[x]].y;
        nqt[x] = qmax[x] >= qmin[x] ? (qmax[x] - qmin[x] + TQa[x]) / TQa[x] : 0;
    }
}
/* The queries (group-local, per axis) whose windows hold key row `row` of
 * the key box, and its position; an inactive row (outside the group) gets an
 * empty range.  Returns whether it is active. */
template <int TK0, int TK1, int TK2>
NA_DEV bool na_key_row_range(const na_params &P, const int r[3], const int n[3], const int k0[3], const int2 *tab,
                             int row, int lo[3], int hi[3], int pos[3]) {
    const int u[3] = {row / (TK1 * TK2), (row / TK2) % TK1, row % TK2}, off[3] = {0, TK0, TK0 + TK1};
    bool act = true;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        act = act && k0[x] + u[x] < n[x];
        pos[x] = (k0[x] + u[x]) * P.dil[x] + r[x];
    }
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        const int2 e = tab[off[x] + u[x]];
        lo[x] = act ? e.x : 1 << 30;
        hi[x] = act ? e.y : -(1 << 30);
    }
    return act;
}
/* Per-CTA setup of the dk/dv passes (tensor-core, wgmma and tiled f32): key
 * box of this tile, its K and V rows (cp.async, committed), the query-box
 * table, the query-range table in pipeline stage 1 of sQ (free until the
 * first step; at sQ + TQ*LD) and the box of query tiles.  BLK (wgmma): K and
 * V in the 128-byte-swizzled layout of na_tile_off, LD = rows of the key box.
 * False: no key here (the whole CTA returns). */
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, int NT, bool BLK = false>
NA_DEV bool na_dkdv_setup(const na_params &P, int tile, int b, int kvh, const T *k, const T *v, T *sK, T *sV, T *sQ,
                          int LD, int *tOff, int *tU, int tid, int r[3], int n[3], int k0[3], int qmin[3],
                          int qmax[3], int nqt[3], const int2 *&tab) {
    int klast[3];
    if (!na_box_of<TK0, TK1, TK2>(P, tile, r, n, k0, klast)) return false;
    const int lastk[3] = {n[0] - 1, n[1] - 1, n[2] - 1};
    na_load_box<T, HD, TK0, TK1, TK2, NT, BLK>(sK, LD, k, P.Hkv, kvh, b, P, r, k0, lastk, tid);
    na_load_box<T, HD, TK0, TK1, TK2, NT, BLK>(sV, LD, v, P.Hkv, kvh, b, P, r, k0, lastk, tid);
    na_cp_commit();
    int2 *t = reinterpret_cast<int2 *>(sQ + TQ0 * TQ1 * TQ2 * LD);
    na_key_ranges<TK0, TK1, TK2, NT>(P, r, n, k0, t, tid);
    na_box_table<TQ0, TQ1, TQ2>(tOff, tU, P, P.H, HD, tid, NT);
    __syncthreads();
    na_dkdv_qbox<TQ0, TQ1, TQ2, TK0, TK1, TK2>(t, k0, klast, qmin, qmax, nqt);
    tab = t;
    return true;
}
NA_DEV void na_cp_async4(void *smem, const void *gmem, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(na_smem_u32(smem)), "l"(gmem),
                 "r"(valid ? 4 : 0));
}
/* cp.async the query tile at base (clipped at qmax) of Q and dO of head h into one pipeline stage, with lse and delta of its rows
 * (inactive rows 0).  All by cp.async: plain loads of lse / delta here
 * stalled the loading warps for a global-memory latency on every tile.
 * FD (small problems only): delta computed from out and dlse instead, by
 * plain loads (that stall is what one launch less per call buys). */
template <typename T, int HD, int TQ, int NT, bool FD = false>
NA_DEV void na_load_qtile(const na_params &P, int b, const int r[3], int h, const int base[3], const int qmax[3],
                          const T *q, const T *dout, const float *lse, const float *delta, T *sQ, T *sO, float *sL,
                          float *sD, int LD, const int *tOff, const int *tU, int tid, const T *out = nullptr,
                          const float *dlse = nullptr) {
    int lim[3];
#pragma unroll
    for (int x = 0; x < 3; ++x) lim[x] = qmax[x] - base[x];
    static_assert(TQ <= NT, "one lse / delta row per thread");
    const long long org = na_box_origin(P, b, base, r, P.H, h, HD);
    const int uu = tid < TQ ? tU[tid] : 0, off = tid < TQ ? tOff[tid] : 0; /* read before any copy, as in na_box_load2 */
    na_box_load2<T, HD, TQ, NT>(sQ, sO, LD, q, dout, org, tOff, tU, lim, tid);
    if (tid < TQ) {
        const bool ok = (uu & 1023) <= lim[0] && ((uu >> 10) & 1023) <= lim[1] && (uu >> 20) <= lim[2];
        const long long orow = ok ? (org + off) / HD : 0; /* token*H + h */
        na_cp_async4(sL + tid, lse + orow, ok);
        if (FD)
            sD[tid] = ok ? na_row_delta<T, HD>(out, dout, dlse, orow) : 0.f;
        else
            na_cp_async4(sD + tid, delta + orow, ok);
    }
}

/* s <- P^T, dp <- dS^T of a tile (m16n8 accumulator fragments, key rows x 64
 * query columns); lse and delta of this thread's two columns j*8 + t4*2 + c
 * by one 8-byte read each (per-score reads were 32 predicated 4-byte ones a
 * tile; H100, bwd_bench: the mma.sync pass on 3d-32-k3 0.180 -> 0.134 ms,
 * 1d-32k-w2k 0.333 -> 0.317, flux unchanged alone, 71.3 -> 70.1 ms in the
 * fused launch) */
NA_DEV void na_dkdv_probs(float (&s)[8][4], float (&dp)[8][4], const float *cL, const float *cD,
                          const unsigned long long mk[2], bool full, float sl2, int t4) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float2 l2 = *reinterpret_cast<const float2 *>(cL + j * 8 + t4 * 2);
        const float2 d2 = *reinterpret_cast<const float2 *>(cD + j * 8 + t4 * 2);
        const float nl[2] = {-l2.x * 1.4426950408889634f, -l2.y * 1.4426950408889634f};
        const float dl[2] = {d2.x, d2.y};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int rr = e >> 1, c = e & 1;
            const bool ok = full || na_mask_bit(mk[rr], j, c);
            const float pr = ok ? na_ex2(fmaf(s[j][e], sl2, nl[c])) : 0.f;
            s[j][e] = pr;
            dp[j][e] = pr * (dp[j][e] - dl[c]);
        }
    }
}
/* dK (times the scale) and dV of this thread's two key rows. */
template <typename T, int HD>
NA_DEV void na_dkdv_store(const float (&dka)[HD / 8][4], const float (&dva)[HD / 8][4], const bool ract[2],
                          const int rowpos[2][3], const na_params &P, int b, int kvh, int t4, T *dk, T *dv) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        if (!ract[rr]) continue;
        const long long krow = na_tok(b, rowpos[rr], P.X) * P.Hkv + kvh;
        T *dK = dk + krow * HD, *dV = dv + krow * HD;
#pragma unroll
        for (int j = 0; j < HD / 8; ++j) {
            *reinterpret_cast<unsigned *>(dK + j * 8 + t4 * 2) =
                na_pack2(dka[j][2 * rr] * P.scale, dka[j][2 * rr + 1] * P.scale, T());
            *reinterpret_cast<unsigned *>(dV + j * 8 + t4 * 2) = na_pack2(dva[j][2 * rr], dva[j][2 * rr + 1], T());
        }
    }
}

/* ------------------------------------------------------------------ dK, dV */
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, bool FD = false>
__device__ __noinline__ void na_bwd_dkdv_tc_entry(const int *params, const T *q, const T *k, const T *v,
                                                  const T *dout, const float *lse, const float *delta, T *dk,
                                                  T *dv, int tile = -1, int bh = -1, const T *out = nullptr,
                                                  const float *dlse = nullptr) { /* not inlined: na_bwd_tc_entry */
    if (tile < 0) tile = blockIdx.x;
    if (bh < 0) bh = blockIdx.y;
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2;
    constexpr int NW = TK / 16, NT = NW * 32, LD = HD + 8;
    static_assert(TQ == 64, "query tile must hold 64 queries");
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    T *sK = reinterpret_cast<T *>(na_smem_raw);
    T *sV = sK + TK * LD;
    T *sQ = sV + TK * LD;  /* [2][TQ][LD] */
    T *sO = sQ + 2 * TQ * LD; /* [2][TQ][LD] */
    float *sL = reinterpret_cast<float *>(sO + 2 * TQ * LD); /* [2][TQ] lse */
    float *sD = sL + 2 * TQ;                                   /* [2][TQ] delta   */
    int *tOff = reinterpret_cast<int *>(sD + 2 * TQ);          /* [TQ] query-box table */
    int *tU = tOff + TQ;

    const na_params P = na_load_params(params);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = bh / P.Hkv, kvh = bh % P.Hkv;
    const int G = P.H / P.Hkv;
    int r[3], n[3], k0[3], qmin[3], qmax[3], nqt[3];
    const int2 *tab;
    if (!na_dkdv_setup<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, NT>(P, tile, b, kvh, k, v, sK, sV, sQ, LD, tOff, tU, tid,
                                                                 r, n, k0, qmin, qmax, nqt, tab))
        return;
    const int ntq = nqt[0] * nqt[1] * nqt[2];
    const int ntiles = ntq * G;

    /* per key row (g, g+8 of this warp): the queries that read it, per axis */
    const int g4 = lane >> 2, t4 = lane & 3;
    int rlo[2][3], rhi[2][3], rowpos[2][3];
    bool ract[2];
    for (int rr = 0; rr < 2; ++rr)
        ract[rr] = na_key_row_range<TK0, TK1, TK2>(P, r, n, k0, tab, warp * 16 + g4 + rr * 8, rlo[rr], rhi[rr],
                                                   rowpos[rr]);
    const float sl2 = P.scale * 1.4426950408889634f;
    /* tiles in order (query heads of the group outermost): the load walk's
     * tile and head, and this tile's origin (the mask needs no head) */
    int lbase[3] = {qmin[0], qmin[1], qmin[2]}, lh = kvh * G, base[3] = {qmin[0], qmin[1], qmin[2]};
    auto load_q = [&](int, int stage) {
        na_load_qtile<T, HD, TQ, NT, FD>(P, b, r, lh, lbase, qmax, q, dout, lse, delta, sQ + stage * TQ * LD,
                                         sO + stage * TQ * LD, sL + stage * TQ, sD + stage * TQ, LD, tOff, tU, tid,
                                         out, dlse);
        na_tile_step<TQ0, TQ1, TQ2>(lbase, qmin, qmax);
        if (lbase[0] > qmax[0]) { /* past the box: next head */
            lbase[0] = qmin[0];
            ++lh;
        }
    };

    float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[j][e] = dva[j][e] = 0.f;

    if (ntiles > 0) {
        load_q(0, 0);
        na_cp_commit();
    }
    for (int tt = 0; tt < ntiles; ++tt) {
        na_pipe_step(tt, ntiles, load_q);
        const int st = tt & 1;
        const T *cQ = sQ + st * TQ * LD, *cO = sO + st * TQ * LD;
        const float *cL = sL + st * TQ, *cD = sD + st * TQ;
        if (tt > 0) {
            na_tile_step<TQ0, TQ1, TQ2>(base, qmin, qmax);
            if (base[0] > qmax[0]) base[0] = qmin[0];
        }
        unsigned long long mk[2];
        bool full, empty;
        na_row_masks<TQ0, TQ1, TQ2>(rlo, rhi, base, t4, mk, &full, &empty);
        if (!empty) {
            float s[8][4], dp[8][4];
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                unsigned ka[4], va[4];
                na_ldsm_x4(ka, sK + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
                na_ldsm_x4(va, sV + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int jp = 0; jp < 4; ++jp) {
                    unsigned bq[4], bo[4];
                    const int off = (jp * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
                    na_ldsm_x4(bq, cQ + off);
                    na_ldsm_x4(bo, cO + off);
                    na_mma(s[2 * jp], ka, bq[0], bq[1], T());
                    na_mma(s[2 * jp + 1], ka, bq[2], bq[3], T());
                    na_mma(dp[2 * jp], va, bo[0], bo[1], T());
                    na_mma(dp[2 * jp + 1], va, bo[2], bo[3], T());
                }
            }
            na_dkdv_probs(s, dp, cL, cD, mk, full, sl2, t4);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                unsigned pa[4], da[4];
                pa[0] = na_pack2(s[2 * kk][0], s[2 * kk][1], T());
                pa[1] = na_pack2(s[2 * kk][2], s[2 * kk][3], T());
                pa[2] = na_pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T());
                pa[3] = na_pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T());
                da[0] = na_pack2(dp[2 * kk][0], dp[2 * kk][1], T());
                da[1] = na_pack2(dp[2 * kk][2], dp[2 * kk][3], T());
                da[2] = na_pack2(dp[2 * kk + 1][0], dp[2 * kk + 1][1], T());
                da[3] = na_pack2(dp[2 * kk + 1][2], dp[2 * kk + 1][3], T());
#pragma unroll
                for (int jp = 0; jp < HD / 16; ++jp) {
                    unsigned bo[4], bq[4];
                    const int off = (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + jp * 16 + (lane >> 4) * 8;
                    na_ldsm_x4_t(bo, cO + off);
                    na_ldsm_x4_t(bq, cQ + off);
                    na_mma(dva[2 * jp], pa, bo[0], bo[1], T());
                    na_mma(dva[2 * jp + 1], pa, bo[2], bo[3], T());
                    na_mma(dka[2 * jp], da, bq[0], bq[1], T());
                    na_mma(dka[2 * jp + 1], da, bq[2], bq[3], T());
                }
            }
        }
    }
    na_dkdv_store<T, HD>(dka, dva, ract, rowpos, P, b, kvh, t4, dk, dv);
}

/* Number of box tiles over the (dilation-grouped) extent, as cuda.py computes it. */
template <int T0, int T1, int T2>
NA_DEV int na_num_tiles(const na_params &P) {
    const int Ta[3] = {T0, T1, T2};
    int t = 1;
    for (int x = 0; x < 3; ++x) t *= P.dil[x] * (((P.X[x] + P.dil[x] - 1) / P.dil[x] + Ta[x] - 1) / Ta[x]);
    return t;
}

/* Both backward passes in one launch (grid.x = 2 * query-box tiles, grid.y =
 * B*H): problems with few tiles per pass (long 1-D sequences, one head) fill
 * the GPU with the two passes side by side.  The dk/dv pass uses the roles
 * swapped: key boxes of the dq pass' query-box shape, query tiles of its
 * key-tile shape.  The windows' union around a box has the same extent both
 * ways, so both passes walk the fewest tiles _choose_tiles found (with the
 * dq pass' shapes, vision-2d-64-k7's 4x16 key boxes read 6 query tiles of
 * 8x8; 8x8 key boxes read 4 of 4x16).  The two passes are __noinline__
 * functions, so ptxas allocates each one's registers alone (inlined into one
 * body, both spilled more than as separate kernels: hunyuan-3d fused 289 ms
 * against 104 + 171 for the passes alone; with the calls 274, flux 70.1 ->
 * 69.4; H100, bwd_bench, benchmarks/results/bwd_bench_h100_20261127_1439.txt).
 * FD: delta computed by the passes from out and dlse (delta unused), so
 * this is the whole backward in one launch (small problems). */
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, bool FD = false>
NA_DEV void na_bwd_tc_entry(const int *params, const T *q, const T *k, const T *v, const T *dout,
                            const float *lse, const float *delta, T *dq, T *dk, T *dv, const T *out = nullptr,
                            const float *dlse = nullptr) {
    const na_params P = na_load_params(params);
    const int nq = na_num_tiles<TQ0, TQ1, TQ2>(P);
    if ((int)blockIdx.x < nq) {
        na_bwd_dq_tc_entry<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, FD>(params, q, k, v, dout, lse, delta, dq,
                                                                   blockIdx.x, blockIdx.y, out, dlse);
    } else if ((int)blockIdx.y < P.B * P.Hkv) {
        na_bwd_dkdv_tc_entry<T, HD, TK0, TK1, TK2, TQ0, TQ1, TQ2, FD>(params, q, k, v, dout, lse, delta, dk, dv,
                                                                     blockIdx.x - nq, blockIdx.y, out, dlse);
    }
}

#endif /* NATTEN_CUDA_BWD_TC_CUH */
