/*
 * na_bwd_wgmma.cuh -- Hopper (sm_90a) dK/dV pass of the tensor-core backward
 * with warpgroup MMA (wgmma.mma_async), f16/bf16.
 *
 * Same problem, iteration and launch contract as na_bwd_dkdv_tc_entry
 * (na_bwd_tc.cuh), whose setup, masks, probabilities and store it reuses,
 * with a 128-key box: one CTA owns a box of TK = 128 keys of one kv head
 * (grid (key boxes, B*Hkv)) and walks the 64-query tiles of its inverse
 * neighbourhood for every query head of the GQA group.  Two warpgroups, each
 * 64 key rows (one wgmma m64).  Per query tile, with na_fwd_wgmma.cuh's
 * primitives (128-byte-swizzled shared memory, descriptors as there):
 *   S^T  = K Q^T   HD/16 m64n64k16, A = K, B = Q    (both K-major, SS)
 *   dP^T = V dO^T  HD/16 m64n64k16, A = V, B = dO   (SS)
 *   P^T = exp2(S^T * scale*log2e - lse*log2e) masked, dS^T = P^T (dP^T - delta)
 *   dV  += P^T dO  4 m64n{HD}k16, A = P^T from registers, B = dO MN-major (RS)
 *   dK  += dS^T Q  4 m64n{HD}k16, A = dS^T from registers, B = Q MN-major (RS)
 * (the f32 fragment of S^T is mma.sync's C fragment, repacked as the A
 * fragment: na_fwd_pfrag).  A warpgroup waits for its RS MMAs at the end of
 * the tile (in flight across the next tile's SS MMAs they would hold P^T and
 * dS^T, 32 registers, there too: ptxas spilled at 255); the two warpgroups
 * run decoupled, one's exponentials under the other's MMAs.  Q / dO tiles (and
 * lse / delta of their rows) go through ST shared-memory stages with per-stage
 * full / empty mbarriers (as na_fwd_wgmma_mbar, SYNC 1: all 256 threads load
 * one tile ahead, right after issuing the tile's SS MMAs); the loader is
 * na_kv_loader over the query-tile box of head lh (a na_params copy with
 * Hkv = H gives it Q's token stride).  MMAs are never skipped (wgmma under a
 * branch is serialized, C7520): a tile outside every window of a warp gets
 * P = 0; a warp's tile inside all of its rows' windows skips the mask.
 *
 * Scope: f16/bf16, head_dim == head_dim_v == HD in {64, 128}, out_stride 1,
 * no RPB / extra KV / varlen; dilation, per-axis causal, GNA stride, GQA,
 * ranks 1-3.  Needs sm_90a.
 *
 * Launch: 256 threads (__launch_bounds__(256, 1)), grid (key boxes of TK0 x
 * TK1 x TK2 = 128, B*Hkv), dynamic shared memory NA_BWD_DKDV_WGMMA_SMEM(HD,
 * ST) bytes (173056 for HD 128, ST 3: raise the limit with
 * cudaFuncSetAttribute) and 16*ST bytes of static shared memory (mbarriers).
 * Registers (ptxas, HD 128): 254-255, no spills.
 * NVRTC (-arch=sm_90a) compiles it pasted after window.cuh, na_common.cuh,
 * na_fwd_tc.cuh, na_fwd_wgmma.cuh and na_bwd_tc.cuh.
 */
#ifndef NATTEN_CUDA_BWD_WGMMA_CUH
#define NATTEN_CUDA_BWD_WGMMA_CUH

#include "na_fwd_wgmma.cuh"
#include "na_bwd_tc.cuh"

/* K and V boxes (128 rows), ST Q and dO stages (64 rows), swizzled, aligned
 * to 1024 bytes at run time (+ 1024); lse and delta stages (ST * 2 * 64
 * floats); the query-box table (2 * 64 ints); per key row its query range and
 * position (128 x 12 ints: lo[3] hi[3] pos[3] act, padded).  cuda.py mirrors
 * it (_bwd_dkdv_wgmma_smem). */
#define NA_BWD_DKDV_WGMMA_SMEM(HD, ST) ((2 * 128 + 2 * (ST) * 64) * (HD) * 2 + 1024 + (ST) * 512 + 512 + 6144)

/* d (m64n64, f32) = A B^T, A and B K-major from shared memory: na_wg_qk with
 * acc 0 as an asm whose accumulators are outputs only ("=f"): the first
 * k-step of a product, so the compiler holds no register for d's old value
 * (with "+f" the dead S^T and dP^T of the last tile stayed live across the
 * RS MMAs: 320 bytes of spills at 255 registers). */
#define NA_WG_QK0(TT, TY)                                                                          \
    NA_DEV void na_wg_qk0(float(&d)[8][4], unsigned long long da, unsigned long long db, TT) {           \
        asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " "                      \
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, 0, 1, 1, 0, 0;\n"                                          \
                     : "=f"(d[0][0]), "=f"(d[0][1]), "=f"(d[0][2]), "=f"(d[0][3]), "=f"(d[1][0]), "=f"(d[1][1]), "=f"(d[1][2]), "=f"(d[1][3]), "=f"(d[2][0]), "=f"(d[2][1]), "=f"(d[2][2]), "=f"(d[2][3]), "=f"(d[3][0]), "=f"(d[3][1]), "=f"(d[3][2]), "=f"(d[3][3]), "=f"(d[4][0]), "=f"(d[4][1]), "=f"(d[4][2]), "=f"(d[4][3]), "=f"(d[5][0]), "=f"(d[5][1]), "=f"(d[5][2]), "=f"(d[5][3]), "=f"(d[6][0]), "=f"(d[6][1]), "=f"(d[6][2]), "=f"(d[6][3]), "=f"(d[7][0]), "=f"(d[7][1]), "=f"(d[7][2]), "=f"(d[7][3]) \
                     : "l"(da), "l"(db));                                                             \
    }
NA_WG_QK0(__nv_bfloat16, "bf16")
NA_WG_QK0(__half, "f16")
/* Issue S = A B^T (na_wg_qk_issue's k-steps) with the first k-step by na_wg_qk0. */
template <typename T, int HD, int QR>
NA_DEV void na_wg_qk_issue0(float (&s)[8][4], unsigned long long dq, unsigned long long dk) {
    na_wg_qk0(s, dq, dk, T());
#pragma unroll
    for (int kk = 1; kk < HD / 16; ++kk)
        na_wg_qk(s, na_wg_desc_add(dq, ((kk & 3) * 32 + (kk >> 2) * QR * 128) >> 4),
                 na_wg_desc_add(dk, ((kk & 3) * 32 + (kk >> 2) * 64 * 128) >> 4), 1, T());
}

/* Query ranges of key rows row0 and row0 + 8 from sR (two 16-byte reads each). */
NA_DEV void na_wg_rows(const int *sR, int row0, int (&lo)[2][3], int (&hi)[2][3]) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int4 a = *reinterpret_cast<const int4 *>(sR + (row0 + rr * 8) * 12);
        const int4 c = *reinterpret_cast<const int4 *>(sR + (row0 + rr * 8) * 12 + 4);
        lo[rr][0] = a.x, lo[rr][1] = a.y, lo[rr][2] = a.z;
        hi[rr][0] = a.w, hi[rr][1] = c.x, hi[rr][2] = c.y;
    }
}

template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, int ST = 3>
NA_DEV void na_bwd_dkdv_wgmma_entry(const int *params, const T *q, const T *k, const T *v, const T *dout,
                                    const float *lse, const float *delta, T *dk, T *dv) {
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2, NT = 256, DIST = ST - 2;
    static_assert(TQ == 64 && TK == 128, "128-key boxes (2 warpgroups x m64), 64-query tiles");
    static_assert(HD == 64 || HD == 128, "head dim 64 or 128");
    static_assert(sizeof(T) == 2 && ST >= 3, "f16 / bf16, 3+ stages");
    __shared__ unsigned long long na_wg_bar[2 * ST]; /* full[ST], empty[ST] */
    unsigned long long *bfull = na_wg_bar, *bempty = na_wg_bar + ST;
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    T *sK = reinterpret_cast<T *>(na_smem_align1k(na_smem_raw));
    T *sV = sK + TK * HD;
    T *sQ = sV + TK * HD;     /* [ST][TQ][HD] */
    T *sO = sQ + ST * TQ * HD; /* [ST][TQ][HD] */
    float *sL = reinterpret_cast<float *>(sO + ST * TQ * HD); /* [ST][TQ] lse */
    float *sD = sL + ST * TQ;                                 /* [ST][TQ] delta */
    int *tOff = reinterpret_cast<int *>(sD + ST * TQ);        /* [TQ] query-box table */
    int *tU = tOff + TQ;
    int *sR = tU + TQ; /* [TK][12]: key row's query range lo[3], hi[3], position pos[3], active */

    const na_params P = na_load_params(params);
    /* warp through a shuffle: known warp-uniform, so the descriptors live in
     * uniform registers (as na_fwd_wgmma_mbar) */
    const int tid = threadIdx.x, lane = tid & 31, warp = __shfl_sync(0xffffffffu, tid >> 5, 0), wg = warp >> 2;
    const int b = blockIdx.y / P.Hkv, kvh = blockIdx.y % P.Hkv, G = P.H / P.Hkv;
    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < ST; ++i) {
            na_mbar_init(bfull + i, NT);
            na_mbar_init(bempty + i, 8);
        }
    }
    /* K, V (one cp.async group), tables; the setup's barrier publishes the
     * mbarrier inits.  The query-range table lies in Q stage 1 (TQ * TK
     * elements in: HD 128) or 2 (HD 64), read before the first load. */
    int r[3], n[3], k0[3], qmin[3], qmax[3], nqt[3];
    const int2 *tab;
    if (!na_dkdv_setup<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, NT, true>(P, blockIdx.x, b, kvh, k, v, sK, sV, sQ, TK,
                                                                       tOff, tU, tid, r, n, k0, qmin, qmax, nqt, tab))
        return;
    const int ntiles = __shfl_sync(0xffffffffu, nqt[0] * nqt[1] * nqt[2] * G, 0);
    const int g4 = lane >> 2, t4 = lane & 3;
    /* per key row, in shared memory (read per tile and at the end: in
     * registers, 18 a thread, they pushed the kernel into spills) */
    if (tid < TK) {
        int *w = sR + tid * 12;
        w[9] = na_key_row_range<TK0, TK1, TK2>(P, r, n, k0, tab, tid, w, w + 3, w + 6);
    }
    __syncthreads(); /* the table is read: stages free */

    /* the Q / dO tile loader: query tiles of the box, head by head */
    na_params Pq = P;
    Pq.Hkv = P.H; /* na_kv_loader addresses rows of "kv head" lh among Hkv heads */
    na_kv_loader<T, HD, TQ0, TQ1, TQ2, NT, true> ld;
    ld.init(tOff, tid, 0);
    int lh = kvh * G;
    const auto load_tile = [&](int j) {
        const int sj = j % ST;
        if (j >= ST) na_mbar_wait(bempty + sj, (j / ST - 1) & 1);
        if (tid < TQ) { /* lse and delta of the tile's rows (inactive: 0, masked) */
            int base[3];
            bool ok = true;
#pragma unroll
            for (int x = 0; x < 3; ++x) base[x] = qmin[x] + ld.ktl[x] * (x == 0 ? TQ0 : x == 1 ? TQ1 : TQ2);
            const int uu = tU[tid];
            ok = (uu & 1023) <= qmax[0] - base[0] && ((uu >> 10) & 1023) <= qmax[1] - base[1] &&
                 (uu >> 20) <= qmax[2] - base[2];
            const long long orow = ok ? (na_box_origin(P, b, base, r, P.H, lh, HD) + tOff[tid]) / HD : 0;
            na_cp_async4(sL + sj * TQ + tid, lse + orow, ok);
            na_cp_async4(sD + sj * TQ + tid, delta + orow, ok);
        }
        ld.load(Pq, b, r, lh, qmin, qmax, nqt, q, dout, tU, sQ + sj * TQ * HD, sO + sj * TQ * HD);
        na_cp_mbar_arrive(bfull + sj);
        if (ld.ktl[0] == nqt[0]) { /* past the box: next head */
            ld.ktl[0] = 0;
            ++lh;
        }
    };
    for (int j = 0; j < DIST && j < ntiles; ++j) load_tile(j);
    /* K and V landed, visible to the tensor cores */
    na_cp_wait<0>(); /* the Q / dO copies are in no group */
    na_fence_proxy_async();
    __syncthreads();

    const float sl2 = P.scale * 1.4426950408889634f;
    float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[j][e] = dva[j][e] = 0.f;
    /* rows 64*wg of the key boxes; stage 0 of Q / dO, K-major and MN-major */
    const unsigned long long dKd = na_wg_desc_kmajor(sK + wg * 64 * 64), dVd = na_wg_desc_kmajor(sV + wg * 64 * 64);
    const unsigned long long dQk = na_wg_desc_kmajor(sQ), dOk = na_wg_desc_kmajor(sO);
    const unsigned long long dQm = na_wg_desc_mnmajor(sQ, TQ), dOm = na_wg_desc_mnmajor(sO, TQ);
    constexpr int STAGE16 = TQ * HD * 2 >> 4; /* descriptor address step of one stage */

    int base[3] = {qmin[0], qmin[1], qmin[2]}; /* origin of this tile (the mask needs no head) */
    for (int tt = 0; tt < ntiles; ++tt) {
        const int st = tt % ST;
        na_mbar_wait(bfull + st, (tt / ST) & 1);
        na_fence_proxy_async(); /* the copies (generic proxy) before the tensor cores' reads */
        float s[1][8][4], dp[1][8][4];
        na_wg_fence();
        na_wg_qk_issue0<T, HD, TK>(s[0], dKd, na_wg_desc_add(dQk, st * STAGE16));
        na_wg_qk_issue0<T, HD, TK>(dp[0], dVd, na_wg_desc_add(dOk, st * STAGE16));
        na_wg_commit();
        /* under the MMAs: the load DIST tiles ahead (into the stage of tile
         * tt+DIST-ST, released at its end), the tile's masks */
        if (tt + DIST < ntiles) load_tile(tt + DIST);
        if (tt > 0) {
            na_tile_step<TQ0, TQ1, TQ2>(base, qmin, qmax);
            if (base[0] > qmax[0]) base[0] = qmin[0];
        }
        unsigned long long mk[2];
        bool full, empty;
        (void)empty;
        {
            int rlo[2][3], rhi[2][3];
            na_wg_rows(sR, warp * 16 + g4, rlo, rhi);
            na_row_masks<TQ0, TQ1, TQ2>(rlo, rhi, base, t4, mk, &full, &empty);
        }
        na_wg_wait<0>(); /* S^T, dP^T */
        na_wg_keep<8>(s[0]);
        na_wg_keep<8>(dp[0]);
        /* a tile outside all of the warp's windows (empty) has every mask
         * bit clear: P^T = dS^T = 0 (a branch zeroing them cost spills) */
        na_dkdv_probs(s[0], dp[0], sL + st * TQ, sD + st * TQ, mk, full, sl2, t4);
        unsigned pa[4][4], da[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            na_fwd_pfrag<T, 1>(pa[kk], s, 0, kk);
            na_fwd_pfrag<T, 1>(da[kk], dp, 0, kk);
        }
        /* RS MMAs waited for here: in flight across the next tile's SS MMAs
         * they would hold P^T and dS^T (32 registers) there too */
        na_wg_keep<HD / 8>(dka);
        na_wg_keep<HD / 8>(dva);
        na_wg_fence();
        na_wg_pv_issue<T, HD>(dva, pa, na_wg_desc_add(dOm, st * STAGE16));
        na_wg_pv_issue<T, HD>(dka, da, na_wg_desc_add(dQm, st * STAGE16));
        na_wg_commit();
        na_wg_wait<0>();
        na_wg_keep<HD / 8>(dka);
        na_wg_keep<HD / 8>(dva);
        __syncwarp(); /* this warp is done with stage st */
        if (lane == 0) na_mbar_arrive(bempty + st);
    }
    bool ract[2];
    int rowpos[2][3];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int *w = sR + (warp * 16 + g4 + rr * 8) * 12;
        ract[rr] = w[9];
#pragma unroll
        for (int x = 0; x < 3; ++x) rowpos[rr][x] = w[6 + x];
    }
    na_dkdv_store<T, HD>(dka, dva, ract, rowpos, P, b, kvh, t4, dk, dv);
}

/*
 * dQ pass (na_bwd_dq_wgmma_entry): same problem, iteration and launch
 * contract as na_bwd_dq_tc_entry with a 128-query box (2 warpgroups x m64
 * query rows; the wgmma forward's box, prologue, K/V tile loader and
 * mbarrier pipeline: na_fwd_wgmma_mbar), per 64-key tile:
 *   S  = Q K^T   HD/16 m64n64k16, A = Q, B = K     (K-major, SS)
 *   dP = dO V^T  HD/16 m64n64k16, A = dO, B = V    (SS)
 *   dS = P (dP - delta), P = exp2(S * scale*log2e - lse*log2e) masked
 *   dQ += dS K   4 m64n{HD}k16, A = dS from registers, B = K MN-major (RS)
 * Grid (query boxes of 128, B*H), 256 threads, dynamic shared memory
 * NA_BWD_DQ_WGMMA_SMEM(HD, ST) (K/V stages as the forward's).
 */
#define NA_BWD_DQ_WGMMA_SMEM(HD, ST) ((2 * 128 + 2 * (ST) * 64) * (HD) * 2 + 1024 + 8 * 64 + 24 * 128 + 2 * 48)

template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, int ST = 3>
NA_DEV void na_bwd_dq_wgmma_entry(const int *params, const T *q, const T *k, const T *v, const T *dout,
                                  const float *lse, const float *delta, T *dq) {
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2, NT = 256, DIST = ST - 2;
    static_assert(ST >= 3, "3+ stages");
    __shared__ unsigned long long na_wg_bar[2 * ST]; /* full[ST], empty[ST] */
    unsigned long long *bfull = na_wg_bar, *bempty = na_wg_bar + ST;
    static_assert(TQ == 128 && TK == 64, "128-query boxes (2 warpgroups x m64), 64-key tiles");
    /* the forward's layout (na_wg_smem: Q box, K / V stages, tables) after the dO box */
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    T *sO = reinterpret_cast<T *>(na_smem_align1k(na_smem_raw));
    T *sQ = sO + TQ * HD, *sK = sQ + TQ * HD, *sV = sK + ST * TK * HD;
    int *tOff = reinterpret_cast<int *>(sV + ST * TK * HD), *tU = tOff + TK, *sW = tU + TK;

    na_params P;
    int b, h, kvh, r[3], n[3], q0[3], kmin[3], kmax[3], nkt[3], ntiles;
    if (!na_fwd_cta<TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, P, b, h, kvh, r, n, q0, kmin, kmax, nkt, ntiles)) return;
    const int tid = threadIdx.x, lane = tid & 31, warp = __shfl_sync(0xffffffffu, tid >> 5, 0), wg = warp >> 2;
    ntiles = __shfl_sync(0xffffffffu, ntiles, 0);
    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < ST; ++i) {
            na_mbar_init(bfull + i, NT);
            na_mbar_init(bempty + i, 8);
        }
    }
    /* dO and Q boxes (one cp.async group), tables, per-row windows; the
     * prologue's barrier publishes the mbarrier inits */
    const int lastq[3] = {n[0] - 1, n[1] - 1, n[2] - 1};
    na_load_box<T, HD, TQ0, TQ1, TQ2, NT, true>(sO, TQ, dout, P.H, h, b, P, r, q0, lastq, tid);
    na_fwd_prologue<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, NT, true>(P, b, h, r, n, q0, q, sQ, TQ, tOff, tU, sW, tid);
    na_kv_loader<T, HD, TK0, TK1, TK2, NT, true> ld;
    ld.init(tOff, tid, 0);
    const auto load_tile = [&](int j) {
        const int sj = j % ST;
        if (j >= ST) na_mbar_wait(bempty + sj, (j / ST - 1) & 1);
        ld.load(P, b, r, kvh, kmin, kmax, nkt, k, v, tU, sK + sj * TK * HD, sV + sj * TK * HD);
        na_cp_mbar_arrive(bfull + sj);
    };
    for (int j = 0; j < DIST && j < ntiles; ++j) load_tile(j);

    const int g4 = lane >> 2, t4 = lane & 3;
    int rlo[2][3], rhi[2][3], rowpos[2][3];
    bool ract[2];
    float rl2[2], rdl[2];
    const float sl2 = P.scale * 1.4426950408889634f;
    na_dq_rows<TQ1, TQ2>(P, b, h, r, n, q0, warp * 16 + g4, lse, delta, rlo, rhi, rowpos, ract, rl2, rdl);
    /* Q and dO landed, visible to the tensor cores */
    na_cp_wait<0>(); /* the K / V copies are in no group */
    na_fence_proxy_async();
    __syncthreads();

    float acc[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    /* rows 64*wg of the query boxes; stage 0 of K (K-major, MN-major) and V */
    const unsigned long long dQd = na_wg_desc_kmajor(sQ + wg * 64 * 64), dOd = na_wg_desc_kmajor(sO + wg * 64 * 64);
    const unsigned long long dKk = na_wg_desc_kmajor(sK), dVk = na_wg_desc_kmajor(sV);
    const unsigned long long dKm = na_wg_desc_mnmajor(sK, TK);
    constexpr int STAGE16 = TK * HD * 2 >> 4;

    int base[3] = {kmin[0], kmin[1], kmin[2]}; /* origin of this key tile */
    for (int tt = 0; tt < ntiles; ++tt) {
        const int st = tt % ST;
        na_mbar_wait(bfull + st, (tt / ST) & 1);
        na_fence_proxy_async();
        float s[1][8][4], dp[8][4];
        na_wg_fence();
        na_wg_qk_issue0<T, HD, TQ>(s[0], dQd, na_wg_desc_add(dKk, st * STAGE16));
        na_wg_qk_issue0<T, HD, TQ>(dp, dOd, na_wg_desc_add(dVk, st * STAGE16));
        na_wg_commit();
        if (tt + DIST < ntiles) load_tile(tt + DIST);
        if (tt > 0) na_tile_step<TK0, TK1, TK2>(base, kmin, kmax);
        unsigned long long mk[2];
        bool full, empty;
        na_row_masks<TK0, TK1, TK2>(rlo, rhi, base, t4, mk, &full, &empty);
        (void)empty; /* an empty tile has every mask bit clear: dS = 0 */
        na_wg_wait<0>();
        na_wg_keep<8>(s[0]);
        na_wg_keep<8>(dp);
        na_dq_probs(s[0], dp, rl2, rdl, mk, full, sl2);
        unsigned da[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) na_fwd_pfrag<T, 1>(da[kk], s, 0, kk);
        na_wg_keep<HD / 8>(acc);
        na_wg_fence();
        na_wg_pv_issue<T, HD>(acc, da, na_wg_desc_add(dKm, st * STAGE16));
        na_wg_commit();
        na_wg_wait<0>();
        na_wg_keep<HD / 8>(acc);
        __syncwarp(); /* this warp is done with stage st */
        if (lane == 0) na_mbar_arrive(bempty + st);
    }
    na_dq_store<T, HD>(acc, ract, rowpos, P, b, h, t4, dq);
}

#endif /* NATTEN_CUDA_BWD_WGMMA_CUH */
