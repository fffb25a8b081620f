/*
 * na_fwd_wgmma.cuh -- Hopper (sm_90a) tensor-core fused forward (out + lse)
 * for f16/bf16 with warpgroup MMA (wgmma.mma_async).
 *
 * Same problem, parameters, scope and grid as na_fwd_tc_entry (na_fwd_tc.cuh)
 * with a 128-query box, whose box logic, K/V tile loader, masks, online
 * softmax (exp2 domain) and epilogue it reuses: one CTA owns a box of 128
 * queries of one (batch, head) inside one dilation group and walks the box of
 * 64-key tiles covering their windows.  Two warpgroups, each 64 query rows
 * (one wgmma m64): per key tile S = Q K^T is HD/16 wgmma m64n64k16 with A = Q
 * and B = K from shared memory (both "K-major": HD contiguous), then
 * O += P V is 4 wgmma m64n{HD}k16 with A = P from registers (the f32
 * accumulator fragment of S, per warp, is mma.sync's m16n8 C fragment, which
 * is also the register A fragment: packed in place) and B = V from shared
 * memory, MN-major (keys x HD, HD contiguous: transposed B).  Q, K and V sit
 * in shared memory in the 128-byte-swizzle layout (na_tile_off with BLK):
 * HD/64 column regions of R rows x 128 bytes (8-row atoms of 1024 bytes),
 * chunk c of row r at c ^ (r & 7).  Descriptors (PTX ISA, canonical layouts,
 * 128B swizzle): K-major ((8,m),(T,2k)):((8T,SBO),(1,T)) -> SBO = 1024 (next
 * 8 rows), LBO unused; a k-step of 16 channels advances the start address by
 * 32 bytes inside a region, regions R*128 bytes apart.  MN-major
 * ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)) -> LBO = 64*128 bytes (next 64
 * channels: next region), SBO = 1024 (next 8 keys); a k-step of 16 keys
 * advances by 2048 bytes.  (The no-swizzle core-matrix layout, also right,
 * ran at 187 TFLOP/s on 1d-32k-w2k: its operand reads conflict.)  K/V tiles:
 * cp.async, one barrier per tile; fence.proxy.async before the barrier makes
 * the cp.async writes visible to the tensor cores' (async proxy) reads.
 * PIPE (default): three K/V stages, and per tile the warpgroup issues
 * S(t) = Q K(t)^T and O += P(t-1) V(t-1) together, waits for S(t) only, and
 * does the softmax of tile t while the tensor cores run P(t-1) V(t-1)
 * (O is rescaled after that MMA completes).  Tried and dropped: warpgroup 1
 * running half a tile behind (its softmax against warpgroup 0's MMAs, FA3's
 * ping-pong without named barriers): H100 1d-32k-w2k 0.1189-0.1208 vs
 * 0.1183-0.1199 ms, hunyuan 81.7 vs 75.4 ms.  Skip / no-mask decisions are
 * per warpgroup (wgmma is warpgroup-collective), masks per row.
 *
 * Scope: f16/bf16, head_dim == head_dim_v == HD in {64, 128}, out_stride 1,
 * no RPB, no extra KV, no varlen; dilation, per-axis causal, GNA stride, GQA,
 * ranks 1-3.  Needs sm_90a (nvcc -gencode=arch=compute_90a,code=sm_90a,
 * NVRTC -arch=sm_90a).
 *
 * Launch: 256 threads (__launch_bounds__(256, 1) on the wrapper: 2 warpgroups,
 * up to 255 registers), grid (query boxes, B*H) exactly as na_fwd_tc_entry's
 * with TQ0*TQ1*TQ2 = 128, dynamic shared memory NA_FWD_WGMMA_SMEM(HD) bytes
 * (raise the limit with cudaFuncSetAttribute: 135776 for HD 128, 70240 for
 * HD 64).  NVRTC (-arch=sm_90a) compiles it pasted after window.cuh,
 * na_common.cuh and na_fwd_tc.cuh (INFINITY from the JIT's preamble, as for
 * na_fwd_tc.cuh).
 */
#ifndef NATTEN_CUDA_FWD_WGMMA_CUH
#define NATTEN_CUDA_FWD_WGMMA_CUH

#include "na_fwd_tc.cuh"

/* Q tile, three K and three V stages (swizzled layout, 1024-byte aligned at
 * run time: + 1024), the key-box table, per-row windows, per-warpgroup
 * window bounds. */
#define NA_FWD_WGMMA_SMEM(HD) ((128 + 6 * 64) * (HD) * 2 + 1024 + 8 * 64 + 24 * 128 + 2 * 48)

/* Shared-memory matrix descriptor, 128-byte swizzle (bits 62-63 = 1): start
 * address, leading and stride byte offsets, each >> 4. */
NA_DEV unsigned long long na_wg_desc(const void *p, int lbo, int sbo) {
    return (unsigned long long)((na_smem_u32(p) & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
/* K-major operand (rows x HD, HD contiguous: Q, K) / MN-major one (keys x HD
 * used as K x N: V, a tile of `rows` keys) in na_tile_off's swizzled layout. */
NA_DEV unsigned long long na_wg_desc_kmajor(const void *p) { return na_wg_desc(p, 16, 1024); }
NA_DEV unsigned long long na_wg_desc_mnmajor(const void *p, int rows) { return na_wg_desc(p, rows * 128, 1024); }
/* 1024-byte aligned start of the dynamic shared memory (swizzle atoms) */
NA_DEV unsigned char *na_smem_align1k(unsigned char *p) { return p + ((1024 - (na_smem_u32(p) & 1023)) & 1023); }

NA_DEV void na_wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
NA_DEV void na_wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> NA_DEV void na_wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
NA_DEV void na_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
/* Keep the compiler from moving accesses of accumulator registers across
 * the asynchronous MMA's issue and wait. */
template <int N> NA_DEV void na_wg_keep(float (&d)[N][4]) {
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}

/* d (m64n64, f32) (+)= A B^T, A and B K-major from shared memory (descriptors);
 * acc 0 overwrites d.  d (m64nN) += A B, A from registers, B from shared memory
 * MN-major (transposed). */
#define NA_WG_QK(TT, TY)                                                                          \
    NA_DEV void na_wg_qk(float(&d)[8][4], unsigned long long da, unsigned long long db, int acc, TT) { \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                     \
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " "                      \
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                          \
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]) \
                     : "l"(da), "l"(db), "r"(acc));                                                   \
    }
#define NA_WG_PV64(TT, TY)                                                                        \
    NA_DEV void na_wg_pv(float(&d)[8][4], const unsigned(&a)[4], unsigned long long db, int acc, TT) { \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                     \
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " "                      \
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"                             \
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]) \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));                \
    }
#define NA_WG_PV128(TT, TY)                                                                        \
    NA_DEV void na_wg_pv(float(&d)[16][4], const unsigned(&a)[4], unsigned long long db, int acc, TT) { \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                     \
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " "                      \
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"                             \
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]) \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));                \
    }
NA_WG_QK(__nv_bfloat16, "bf16")
NA_WG_QK(__half, "f16")
NA_WG_PV64(__nv_bfloat16, "bf16")
NA_WG_PV64(__half, "f16")
NA_WG_PV128(__nv_bfloat16, "bf16")
NA_WG_PV128(__half, "f16")

/* Issue S = Q K^T for one warpgroup: 64 query rows (descriptor dq, tile of
 * QR rows) x 64 keys (descriptor dk, tile of 64 rows), HD/16 k-steps of 16
 * channels: +32 bytes inside a 128-byte row, +rows*128 bytes per region. */
template <typename T, int HD, int QR>
NA_DEV void na_wg_qk_issue(float (&s)[8][4], unsigned long long dq, unsigned long long dk) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
        na_wg_qk(s, dq + (((kk & 3) * 32 + (kk >> 2) * QR * 128) >> 4), dk + (((kk & 3) * 32 + (kk >> 2) * 64 * 128) >> 4),
                 kk > 0, T());
}
/* Issue O += P V for one warpgroup: P (64 x 64 keys) as A fragments pa,
 * V (64 keys x HD, descriptor dv): 4 k-steps of 16 keys (+2048 bytes). */
template <typename T, int HD>
NA_DEV void na_wg_pv_issue(float (&o)[HD / 8][4], const unsigned (&pa)[4][4], unsigned long long dv) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) na_wg_pv(o, pa[kk], dv + ((kk * 2048) >> 4), 1, T());
}
/* The two MMAs of a tile, each issued and waited for on its own. */
template <typename T, int HD, int QR>
NA_DEV void na_wg_qk_tile(float (&s)[8][4], unsigned long long dq, unsigned long long dk) {
    na_wg_keep<8>(s);
    na_wg_fence();
    na_wg_qk_issue<T, HD, QR>(s, dq, dk);
    na_wg_commit();
    na_wg_wait<0>();
    na_wg_keep<8>(s);
}
template <typename T, int HD>
NA_DEV void na_wg_pv_tile(float (&o)[HD / 8][4], const float (&s)[1][8][4], unsigned long long dv) {
    unsigned pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) na_fwd_pfrag<T, 1>(pa[kk], s, 0, kk);
    na_wg_keep<HD / 8>(o);
    na_wg_fence();
    na_wg_pv_issue<T, HD>(o, pa, dv);
    na_wg_commit();
    na_wg_wait<0>();
    na_wg_keep<HD / 8>(o);
}

template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, bool PIPE = true>
NA_DEV void na_fwd_wgmma_entry(const int *params, const T *q, const T *k, const T *v, T *out, float *lse) {
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2, NT = 256, ST = PIPE ? 3 : 2;
    static_assert(TQ == 128 && TK == 64, "128-query boxes (2 warpgroups x m64), 64-key tiles");
    static_assert(HD == 64 || HD == 128, "head dim 64 or 128");
    static_assert(sizeof(T) == 2, "f16 / bf16");
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    T *sQ = reinterpret_cast<T *>(na_smem_align1k(na_smem_raw)); /* [TQ * HD], swizzled */
    T *sK = sQ + TQ * HD;                                        /* [ST][TK * HD] */
    T *sV = sK + ST * TK * HD;
    int *tOff = reinterpret_cast<int *>(sV + ST * TK * HD); /* [TK] key-box table */
    int *tU = tOff + TK;
    int *sW = tU + TK; /* [TQ][6]: window lo[3], hi[3] of each query row */

    na_params P;
    int b, h, kvh, r[3], n[3], q0[3], kmin[3], kmax[3], nkt[3], ntiles;
    if (!na_fwd_cta<TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, P, b, h, kvh, r, n, q0, kmin, kmax, nkt, ntiles)) return;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;

    /* ---- Q tile -> smem (inactive queries zero), then key tile 0 */
    na_fwd_prologue<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, NT, true>(P, b, h, r, n, q0, q, sQ, TQ, tOff, tU, sW, tid);
    na_kv_loader<T, HD, TK0, TK1, TK2, NT, true> ld;
    ld.init(tOff, tid, 0);
    ld.load(P, b, r, kvh, kmin, kmax, nkt, k, v, tU, sK, sV);
    na_cp_commit();
    /* warpgroup-uniform window bounds (read after the loop's first barrier) */
    int *sB = sW + TQ * 6 + wg * 12;
    if ((warp & 3) == 0) na_fwd_bounds(sW, wg * 64, 64, sB, lane);

    const int g4 = lane >> 2, t4 = lane & 3;
    const float sl2 = P.scale * 1.4426950408889634f;
    float o[1][HD / 8][4], s[1][8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) o[0][j][0] = o[0][j][1] = o[0][j][2] = o[0][j][3] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) s[0][j][0] = s[0][j][1] = s[0][j][2] = s[0][j][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const unsigned long long dq = na_wg_desc_kmajor(sQ + wg * 64 * 64); /* row 64*wg of each region */
    const unsigned long long dk0 = na_wg_desc_kmajor(sK), dv0 = na_wg_desc_mnmajor(sV, TK);
    constexpr int STAGE16 = TK * HD * 2 >> 4; /* descriptor address step of one stage */
    unsigned pa[4][4] = {};                   /* PIPE: P of the previous tile (none: 0), its V stage */
    int pst16 = 0;

    int kt[3] = {0, 0, 0}; /* coordinates of the current tile */
    for (int tt = 0; tt < ntiles; ++tt) {
        /* one barrier per tile: tile tt has landed and both warpgroups are
         * done with the stage tile tt+1 now reuses (tile tt-1 with two
         * stages, tt-2 with three: its P V was waited for in tile tt-1) */
        na_cp_wait<0>();
        na_fence_proxy_async();
        __syncthreads();
        const int st = tt % ST;
        if (tt + 1 < ntiles) {
            const int sn = st + 1 == ST ? 0 : st + 1;
            ld.load(P, b, r, kvh, kmin, kmax, nkt, k, v, tU, sK + sn * TK * HD, sV + sn * TK * HD);
            na_cp_commit();
        }
        int base[3];
        bool full, empty;
        na_fwd_tile_step<TK0, TK1, TK2>(kt, nkt, kmin, sB, base, &full, &empty);
        if (!PIPE) {
            if (empty) continue; /* warpgroup-uniform */
            na_wg_qk_tile<T, HD, TQ>(s[0], dq, dk0 + st * STAGE16);
            if (!full) na_fwd_mask<1, TK0, TK1, TK2>(s, sW, warp * 16, base, g4, t4);
            na_fwd_softmax<1, HD>(s, o, m, l, sl2);
            na_wg_pv_tile<T, HD>(o[0], s, dv0 + st * STAGE16);
            continue;
        }
        /* PIPE: S(tt) and P(tt-1) V(tt-1) issued together; the softmax of
         * tile tt runs while the tensor cores do P V; O is rescaled after.
         * No branch around the MMAs or waits (ptxas serializes wgmma issued
         * or waited for under a branch, C7520): a tile outside every window
         * of the warpgroup is computed and masked to P = 0, and tile 0's
         * P V runs with P = 0 (on V of tile 0, finite). */
        na_wg_keep<8>(s[0]);
        na_wg_keep<HD / 8>(o[0]);
        na_wg_fence();
        na_wg_qk_issue<T, HD, TQ>(s[0], dq, dk0 + st * STAGE16);
        na_wg_commit();
        na_wg_pv_issue<T, HD>(o[0], pa, dv0 + pst16);
        na_wg_commit();
        na_wg_wait<1>(); /* S(tt) done, P V may run on */
        na_wg_keep<8>(s[0]);
        if (!full) na_fwd_mask<1, TK0, TK1, TK2>(s, sW, warp * 16, base, g4, t4);
        float corr[2];
        const bool resc = na_fwd_rowmax<1>(s, m, l, corr, sl2);
        na_fwd_exp<1>(s, m, l, sl2);
        na_wg_wait<0>();
        na_wg_keep<HD / 8>(o[0]);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) na_fwd_pfrag<T, 1>(pa[kk], s, 0, kk);
        if (resc) na_fwd_rescale_o<1, HD>(o, corr);
        pst16 = st * STAGE16;
    }
    if (PIPE) {
        na_wg_keep<HD / 8>(o[0]);
        na_wg_fence();
        na_wg_pv_issue<T, HD>(o[0], pa, dv0 + pst16);
        na_wg_commit();
        na_wg_wait<0>();
        na_wg_keep<HD / 8>(o[0]);
    }
    na_fwd_store<T, HD, 1, TQ1, TQ2>(o, m, l, P, b, h, r, n, q0, warp * 16, g4, t4, out, lse);
}

#endif /* NATTEN_CUDA_FWD_WGMMA_CUH */
