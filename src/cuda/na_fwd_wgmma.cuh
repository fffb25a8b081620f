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
 * cp.async into three stages with per-stage full / empty mbarriers (default;
 * SYNC 0: one barrier per tile, see na_fwd_wgmma_entry), fence.proxy.async
 * between the cp.async writes and the tensor cores' (async proxy) reads.
 * MMA descriptors advance by 32-bit adds of warp-uniform values, so ptxas
 * keeps them in uniform registers (67 instead of ~120 instructions per
 * warp to issue a tile's 12 wgmma).
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
 * HD 64; NA_FWD_WGMMA_SMEM_ST(HD, ST) with ST stages; 1-D 128-key tiles,
 * TK0 = 128: NA_FWD_WGMMA128_SMEM(HD), 169056 for HD 128) and 48 bytes of
 * static shared memory (the mbarriers).  NVRTC (-arch=sm_90a) compiles it
 * pasted after window.cuh, na_common.cuh and na_fwd_tc.cuh (INFINITY from
 * the JIT's preamble, as for na_fwd_tc.cuh).
 */
#ifndef NATTEN_CUDA_FWD_WGMMA_CUH
#define NATTEN_CUDA_FWD_WGMMA_CUH

#include "na_fwd_tc.cuh"

/* Q tile, three K and three V stages (swizzled layout, 1024-byte aligned at
 * run time: + 1024), the key-box table, per-row windows, per-warpgroup
 * window bounds. */
#define NA_FWD_WGMMA_SMEM(HD) ((128 + 6 * 64) * (HD) * 2 + 1024 + 8 * 64 + 24 * 128 + 2 * 48)
/* with ST K/V stages (template parameter ST of na_fwd_wgmma_entry) */
#define NA_FWD_WGMMA_SMEM_ST(HD, ST) (NA_FWD_WGMMA_SMEM(HD) + ((ST) - 3) * 2 * 64 * (HD) * 2)
/* with 128-key tiles (1-D boxes, TK0 = 128: na_fwd_wgmma_k128): Q tile, two
 * K and two V stages of 128 keys, 1024 to align, the tables (keys: 128). */
#define NA_FWD_WGMMA128_SMEM(HD) ((128 + 4 * 128) * (HD) * 2 + 1024 + 8 * 128 + 24 * 128 + 2 * 48)

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
/* mbarriers (shared::cta) of the K/V stages: init, arrive, the arrival of
 * this thread's earlier cp.async copies when they land (noinc: counted in
 * the init count), and the wait for the completion of phase `parity`. */
NA_DEV void na_mbar_init(unsigned long long *b, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(na_smem_u32(b)), "r"(count) : "memory");
}
NA_DEV void na_mbar_arrive(unsigned long long *b) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(na_smem_u32(b)) : "memory");
}
NA_DEV void na_cp_mbar_arrive(unsigned long long *b) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(na_smem_u32(b)) : "memory");
}
NA_DEV void na_mbar_wait(unsigned long long *b, int parity) {
    asm volatile("{\n.reg .pred p;\nNA_MBAR_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra NA_MBAR_WAIT;\n}\n" ::"r"(na_smem_u32(b)),
                 "r"(parity)
                 : "memory");
}

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
#define NA_WG_QK128(TT, TY)                                                                        \
    NA_DEV void na_wg_qk(float(&d)[16][4], unsigned long long da, unsigned long long db, int acc, TT) { \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                     \
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " "                     \
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"          \
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]) \
                     : "l"(da), "l"(db), "r"(acc));                                                   \
    }
NA_WG_QK(__nv_bfloat16, "bf16")
NA_WG_QK(__half, "f16")
NA_WG_QK128(__nv_bfloat16, "bf16")
NA_WG_QK128(__half, "f16")
NA_WG_PV64(__nv_bfloat16, "bf16")
NA_WG_PV64(__half, "f16")
NA_WG_PV128(__nv_bfloat16, "bf16")
NA_WG_PV128(__half, "f16")

/* Descriptor d advanced by off16 (bytes >> 4): a k-step or stage moves the
 * start address field (bits 0-13) only and never carries out of it (shared
 * memory < 256 KiB), so a 32-bit add to the low word; with warp-uniform
 * inputs it stays in uniform registers. */
NA_DEV unsigned long long na_wg_desc_add(unsigned long long d, int off16) {
    return ((d >> 32) << 32) | (unsigned)((unsigned)d + (unsigned)off16);
}
/* Issue S = Q K^T for one warpgroup: 64 query rows (descriptor dq, tile of
 * QR rows) x 8*NJ keys (descriptor dk, tile of 8*NJ rows: 64 or 128), HD/16
 * k-steps of 16 channels: +32 bytes inside a 128-byte row, +rows*128 bytes
 * per region. */
template <typename T, int HD, int QR, int NJ>
NA_DEV void na_wg_qk_issue_n(float (&s)[NJ][4], unsigned long long dq, unsigned long long dk) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
        na_wg_qk(s, na_wg_desc_add(dq, ((kk & 3) * 32 + (kk >> 2) * QR * 128) >> 4),
                 na_wg_desc_add(dk, ((kk & 3) * 32 + (kk >> 2) * NJ * 8 * 128) >> 4), kk > 0, T());
}
template <typename T, int HD, int QR>
NA_DEV void na_wg_qk_issue(float (&s)[8][4], unsigned long long dq, unsigned long long dk) {
    na_wg_qk_issue_n<T, HD, QR>(s, dq, dk);
}
/* Issue O += P V for one warpgroup: P (64 x 16*KS keys) as A fragments pa,
 * V (16*KS keys x HD, descriptor dv): KS k-steps of 16 keys (+2048 bytes). */
template <typename T, int HD, int KS>
NA_DEV void na_wg_pv_issue_n(float (&o)[HD / 8][4], const unsigned (&pa)[KS][4], unsigned long long dv) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) na_wg_pv(o, pa[kk], na_wg_desc_add(dv, (kk * 2048) >> 4), 1, T());
}
template <typename T, int HD>
NA_DEV void na_wg_pv_issue(float (&o)[HD / 8][4], const unsigned (&pa)[4][4], unsigned long long dv) {
    na_wg_pv_issue_n<T, HD>(o, pa, dv);
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
template <typename T, int HD, int KS>
NA_DEV void na_wg_pv_wait_n(float (&o)[HD / 8][4], const unsigned (&pa)[KS][4], unsigned long long dv) {
    na_wg_keep<HD / 8>(o);
    na_wg_fence();
    na_wg_pv_issue_n<T, HD>(o, pa, dv);
    na_wg_commit();
    na_wg_wait<0>();
    na_wg_keep<HD / 8>(o);
}
template <typename T, int HD>
NA_DEV void na_wg_pv_wait(float (&o)[HD / 8][4], const unsigned (&pa)[4][4], unsigned long long dv) {
    na_wg_pv_wait_n<T, HD>(o, pa, dv);
}
template <typename T, int HD>
NA_DEV void na_wg_pv_tile(float (&o)[HD / 8][4], const float (&s)[1][8][4], unsigned long long dv) {
    unsigned pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) na_fwd_pfrag<T, 1>(pa[kk], s, 0, kk);
    na_wg_pv_wait<T, HD>(o, pa, dv);
}

/* Scope and shared memory of the wgmma forward (ST K/V stages): Q tile, K and V
 * stages (swizzled, 1024-byte aligned), the key-box table ([TK] offsets and
 * coordinates), per-row windows ([TQ][6]: lo[3], hi[3]), then the
 * per-warpgroup bounds. */
template <typename T, int HD, int TQ, int TK, int ST>
NA_DEV void na_wg_smem(T *&sQ, T *&sK, T *&sV, int *&tOff, int *&tU, int *&sW) {
    static_assert(TQ == 128 && (TK == 64 || TK == 128), "128-query boxes (2 warpgroups x m64), 64- or 128-key tiles");
    static_assert(HD == 64 || HD == 128, "head dim 64 or 128");
    static_assert(sizeof(T) == 2, "f16 / bf16");
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    sQ = reinterpret_cast<T *>(na_smem_align1k(na_smem_raw));
    sK = sQ + TQ * HD;
    sV = sK + ST * TK * HD;
    tOff = reinterpret_cast<int *>(sV + ST * TK * HD);
    tU = tOff + TK;
    sW = tU + TK;
}
/* Per-warpgroup state of the walk: O and S accumulators (f32 fragments),
 * running max and sum of its rows. */
template <int HD, int NJ>
NA_DEV void na_wg_acc_init(float (&o)[1][HD / 8][4], float (&s)[1][NJ][4], float (&m)[2], float (&l)[2]) {
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) o[0][j][0] = o[0][j][1] = o[0][j][2] = o[0][j][3] = 0.f;
#pragma unroll
    for (int j = 0; j < NJ; ++j) s[0][j][0] = s[0][j][1] = s[0][j][2] = s[0][j][3] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
}
/* PIPE, one tile in three steps: issue S(tt) = Q K(tt)^T and O += P(tt-1)
 * V(tt-1) together (two commit groups) ... */
template <typename T, int HD, int QR, int NJ>
NA_DEV void na_wg_pipe_issue_n(float (&s)[1][NJ][4], float (&o)[1][HD / 8][4], const unsigned (&pa)[NJ / 2][4],
                               unsigned long long dq, unsigned long long dk, unsigned long long dv) {
    na_wg_keep<NJ>(s[0]);
    na_wg_keep<HD / 8>(o[0]);
    na_wg_fence();
    na_wg_qk_issue_n<T, HD, QR>(s[0], dq, dk);
    na_wg_commit();
    na_wg_pv_issue_n<T, HD>(o[0], pa, dv);
    na_wg_commit();
}
template <typename T, int HD, int QR>
NA_DEV void na_wg_pipe_issue(float (&s)[1][8][4], float (&o)[1][HD / 8][4], const unsigned (&pa)[4][4],
                             unsigned long long dq, unsigned long long dk, unsigned long long dv) {
    na_wg_pipe_issue_n<T, HD, QR>(s, o, pa, dq, dk, dv);
}
/* ... wait for S(tt) only; mask (partial tile), running max and P = exp of S
 * while the tensor cores do P V; wait for that (returns whether O needs
 * rescaling by corr) ... */
template <int HD, int TK0, int TK1, int TK2, int NJ>
NA_DEV bool na_wg_pipe_softmax(float (&s)[1][NJ][4], float (&o)[1][HD / 8][4], float (&m)[2], float (&l)[2],
                               float (&corr)[2], float sl2, bool full, const int *sW, int wrow0,
                               const int base[3], int g4, int t4) {
    na_wg_wait<1>(); /* S(tt) done, P V may run on */
    na_wg_keep<NJ>(s[0]);
    if (!full) na_fwd_mask<1, TK0, TK1, TK2>(s, sW, wrow0, base, g4, t4);
    const bool resc = na_fwd_rowmax<1>(s, m, l, corr, sl2);
    na_fwd_exp<1>(s, m, l, sl2);
    na_wg_wait<0>();
    na_wg_keep<HD / 8>(o[0]);
    return resc;
}
/* ... then P(tt) as A fragments for the next tile, O rescaled. */
template <typename T, int HD, int NJ>
NA_DEV void na_wg_pipe_next(unsigned (&pa)[NJ / 2][4], const float (&s)[1][NJ][4], float (&o)[1][HD / 8][4],
                            const float (&corr)[2], bool resc) {
#pragma unroll
    for (int kk = 0; kk < NJ / 2; ++kk) na_fwd_pfrag<T, 1>(pa[kk], s, 0, kk);
    if (resc) na_fwd_rescale_o<1, HD>(o, corr);
}

/* SYNC 0 (and PIPE off): one __syncthreads per tile. */
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, bool PIPE, int ST_>
NA_DEV void na_fwd_wgmma_body(const int *params, const T *q, const T *k, const T *v, T *out, float *lse) {
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2, NT = 256, ST = PIPE ? ST_ : 2;
    T *sQ, *sK, *sV;
    int *tOff, *tU, *sW;
    na_wg_smem<T, HD, TQ, TK, ST>(sQ, sK, sV, tOff, tU, sW);

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
    float o[1][HD / 8][4], s[1][8][4], m[2], l[2];
    na_wg_acc_init<HD>(o, s, m, l);
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
        na_wg_pipe_issue<T, HD, TQ>(s, o, pa, dq, dk0 + st * STAGE16, dv0 + pst16);
        float corr[2];
        const bool resc =
            na_wg_pipe_softmax<HD, TK0, TK1, TK2>(s, o, m, l, corr, sl2, full, sW, warp * 16, base, g4, t4);
        na_wg_pipe_next<T, HD>(pa, s, o, corr, resc);
        pst16 = st * STAGE16;
    }
    if (PIPE) na_wg_pv_wait<T, HD>(o[0], pa, dv0 + pst16);
    na_fwd_store<T, HD, 1, TQ1, TQ2>(o, m, l, P, b, h, r, n, q0, warp * 16, g4, t4, out, lse);
}

/* The PIPE walk with mbarrier-synchronized K/V stages (SYNC 1-3, see
 * na_fwd_wgmma_entry). */
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, int SYNC, int ST>
NA_DEV void na_fwd_wgmma_mbar(const int *params, const T *q, const T *k, const T *v, T *out, float *lse) {
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2, NT = 256;
    constexpr int LT = SYNC == 1 ? 256 : 128;        /* loader threads: all, or warpgroup 1 */
    constexpr int DIST = SYNC == 2 ? ST - 1 : ST - 2; /* tiles loaded ahead */
    static_assert(ST >= 3 && ST <= 4, "3 or 4 stages");
    __shared__ unsigned long long na_wg_bar[2 * ST]; /* full[ST], empty[ST] */
    unsigned long long *bfull = na_wg_bar, *bempty = na_wg_bar + ST;
    T *sQ, *sK, *sV;
    int *tOff, *tU, *sW;
    na_wg_smem<T, HD, TQ, TK, ST>(sQ, sK, sV, tOff, tU, sW);

    na_params P;
    int b, h, kvh, r[3], n[3], q0[3], kmin[3], kmax[3], nkt[3], ntiles;
    if (!na_fwd_cta<TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, P, b, h, kvh, r, n, q0, kmin, kmax, nkt, ntiles)) return;
    /* warp and warpgroup through a shuffle from lane 0: known warp-uniform, so
     * the descriptors below live in uniform registers */
    const int tid = threadIdx.x, lane = tid & 31, warp = __shfl_sync(0xffffffffu, tid >> 5, 0), wg = warp >> 2;
    const bool loader = LT == 256 || wg == 1;
    ntiles = __shfl_sync(0xffffffffu, ntiles, 0); /* uniform too: so is the tile loop's stage */
    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < ST; ++i) {
            na_mbar_init(bfull + i, LT);
            na_mbar_init(bempty + i, 8);
        }
    }
    /* ---- Q tile -> smem (one cp.async group), tables; its barrier also
     * publishes the mbarrier inits */
    na_fwd_prologue<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, NT, true>(P, b, h, r, n, q0, q, sQ, TQ, tOff, tU, sW, tid);
    na_kv_loader<T, HD, TK0, TK1, TK2, LT, true> ld;
    if (loader) {
        ld.init(tOff, LT == 256 ? tid : tid - 128, 0);
        for (int j = 0; j < DIST && j < ntiles; ++j) {
            ld.load(P, b, r, kvh, kmin, kmax, nkt, k, v, tU, sK + j * TK * HD, sV + j * TK * HD);
            na_cp_mbar_arrive(bfull + j);
        }
    }
    int *sB = sW + TQ * 6 + wg * 12;
    if ((warp & 3) == 0) na_fwd_bounds(sW, wg * 64, 64, sB, lane);
    /* Q landed (the K/V copies may not have), visible to the tensor cores */
    na_cp_wait<0>(); /* the K/V copies are in no group */
    na_fence_proxy_async();
    __syncthreads();

    const int g4 = lane >> 2, t4 = lane & 3;
    const float sl2 = P.scale * 1.4426950408889634f;
    float o[1][HD / 8][4], s[1][8][4], m[2], l[2];
    na_wg_acc_init<HD>(o, s, m, l);
    const unsigned long long dq = na_wg_desc_kmajor(sQ + wg * 64 * 64); /* row 64*wg of each region */
    const unsigned long long dk0 = na_wg_desc_kmajor(sK), dv0 = na_wg_desc_mnmajor(sV, TK);
    constexpr int STAGE16 = TK * HD * 2 >> 4; /* descriptor address step of one stage */
    unsigned pa[4][4] = {};                   /* P of the previous tile (none: 0), its V stage */
    int pst16 = 0;

    int kt[3] = {0, 0, 0}; /* coordinates of the current tile */
    for (int tt = 0; tt < ntiles; ++tt) {
        const int st = tt % ST;
        /* the loader's tile tt+DIST into the stage of tile tt+DIST-ST once
         * both warpgroups have released it */
        const auto load_ahead = [&]() {
            if (loader && tt + DIST < ntiles) {
                const int j = tt + DIST, sj = j % ST;
                if (j >= ST) na_mbar_wait(bempty + sj, (j / ST - 1) & 1);
                ld.load(P, b, r, kvh, kmin, kmax, nkt, k, v, tU, sK + sj * TK * HD, sV + sj * TK * HD);
                na_cp_mbar_arrive(bfull + sj);
            }
        };
        na_mbar_wait(bfull + st, (tt / ST) & 1);
        na_fence_proxy_async(); /* the copies (generic proxy) before the tensor cores' reads */
        /* S(tt) and P(tt-1) V(tt-1) issued together (see na_fwd_wgmma_body) */
        na_wg_pipe_issue<T, HD, TQ>(s, o, pa, dq, na_wg_desc_add(dk0, st * STAGE16), na_wg_desc_add(dv0, pst16));
        /* under the MMAs: the loads (1 ahead: the stage of tile tt-2,
         * released in tile tt-1), the tile's mask decision */
        if (SYNC != 2) load_ahead();
        int base[3];
        bool full, empty;
        na_fwd_tile_step<TK0, TK1, TK2>(kt, nkt, kmin, sB, base, &full, &empty);
        float corr[2];
        const bool resc =
            na_wg_pipe_softmax<HD, TK0, TK1, TK2>(s, o, m, l, corr, sl2, full, sW, warp * 16, base, g4, t4);
        if (tt > 0) { /* this warp is done with tile tt-1 */
            __syncwarp();
            if (lane == 0) na_mbar_arrive(bempty + (tt - 1) % ST);
        }
        if (SYNC == 2) load_ahead(); /* 2 ahead: the stage of tile tt-1, just released */
        na_wg_pipe_next<T, HD>(pa, s, o, corr, resc);
        pst16 = st * STAGE16;
    }
    na_wg_pv_wait<T, HD>(o[0], pa, dv0 + pst16);
    na_fwd_store<T, HD, 1, TQ1, TQ2>(o, m, l, P, b, h, r, n, q0, warp * 16, g4, t4, out, lse);
}

/* 128-key tiles for 1-D boxes (TQ0 = TK0 = 128; entry with TK0 = 128): per
 * tile and warpgroup S = Q K^T is HD/16 wgmma m64n128k16 and O += P V 8
 * m64n{HD}k16, so the per-tile costs (barrier waits, the MMA waits and the
 * gaps after them, row max reductions, the loader's tile setup) come once
 * per 128 keys instead of per 64.  S takes 64 f32 registers, P 32.  Shared
 * memory (NA_FWD_WGMMA128_SMEM: 169056 bytes for HD 128) holds two K and two
 * V stages of 128 keys, run as a PIPE walk with mbarriers like SYNC 2:
 * warpgroup 1 loads, at the end of its tile tt, group tt+2 = K(tt+2) and
 * V(tt+1) (the PV of tile tt+1 is issued in tile tt+2) into the stages of
 * K(tt) and V(tt-1), which all 8 warps release at the end of tile tt
 * (empty[tt & 1]); full[g & 1] completes when group g has landed (group 0:
 * K(0) and V(0), group 1: K(1)).  So each copy has a whole tile to land. */
template <typename T, int HD, int TQ0, int TK0>
NA_DEV void na_fwd_wgmma_k128(const int *params, const T *q, const T *k, const T *v, T *out, float *lse) {
    constexpr int TQ = TQ0, TK = TK0, NT = 256, LT = 128, NJ = TK / 8, STG = TK * HD;
    static_assert(TQ == 128 && TK == 128, "1-D: 128-query boxes, 128-key tiles");
    __shared__ unsigned long long na_wg_bar[4]; /* full[2], empty[2] */
    unsigned long long *bfull = na_wg_bar, *bempty = na_wg_bar + 2;
    T *sQ, *sK, *sV;
    int *tOff, *tU, *sW;
    na_wg_smem<T, HD, TQ, TK, 2>(sQ, sK, sV, tOff, tU, sW);

    na_params P;
    int b, h, kvh, r[3], n[3], q0[3], kmin[3], kmax[3], nkt[3], ntiles;
    if (!na_fwd_cta<TQ0, 1, 1, TK0, 1, 1>(params, P, b, h, kvh, r, n, q0, kmin, kmax, nkt, ntiles)) return;
    const int tid = threadIdx.x, lane = tid & 31, warp = __shfl_sync(0xffffffffu, tid >> 5, 0), wg = warp >> 2;
    const bool loader = wg == 1;
    ntiles = __shfl_sync(0xffffffffu, ntiles, 0);
    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            na_mbar_init(bfull + i, LT);
            na_mbar_init(bempty + i, 8);
        }
    }
    na_fwd_prologue<T, HD, TQ0, 1, 1, TK0, 1, 1, NT, true>(P, b, h, r, n, q0, q, sQ, TQ, tOff, tU, sW, tid);
    na_kv_loader<T, HD, TK0, 1, 1, LT, true> ld;
    if (loader) { /* groups 0 and 1 */
        ld.init(tOff, tid - 128, 0);
        ld.load_1d(P, b, r, kvh, kmin, kmax, 0, k, sK);
        ld.load_1d(P, b, r, kvh, kmin, kmax, 0, v, sV);
        na_cp_mbar_arrive(bfull);
        if (ntiles > 1) {
            ld.load_1d(P, b, r, kvh, kmin, kmax, 1, k, sK + STG);
            na_cp_mbar_arrive(bfull + 1);
        }
    }
    int *sB = sW + TQ * 6 + wg * 12;
    if ((warp & 3) == 0) na_fwd_bounds(sW, wg * 64, 64, sB, lane);
    na_cp_wait<0>(); /* Q (the K/V copies are in no group) */
    na_fence_proxy_async();
    __syncthreads();

    const int g4 = lane >> 2, t4 = lane & 3;
    const float sl2 = P.scale * 1.4426950408889634f;
    float o[1][HD / 8][4], s[1][NJ][4], m[2], l[2];
    na_wg_acc_init<HD>(o, s, m, l);
    const unsigned long long dq = na_wg_desc_kmajor(sQ + wg * 64 * 64);
    const unsigned long long dk0 = na_wg_desc_kmajor(sK), dv0 = na_wg_desc_mnmajor(sV, TK);
    constexpr int STAGE16 = STG * 2 >> 4;
    unsigned pa[NJ / 2][4] = {}; /* P of the previous tile (none: 0) */

    int kt[3] = {0, 0, 0};
    for (int tt = 0; tt < ntiles; ++tt) {
        const int st = tt & 1, pv = tt > 0 ? (tt - 1) & 1 : 0; /* stages of K(tt), V(tt-1) (tile 0: V(0), P 0) */
        na_mbar_wait(bfull + st, (tt >> 1) & 1);
        na_fence_proxy_async();
        na_wg_pipe_issue_n<T, HD, TQ>(s, o, pa, dq, na_wg_desc_add(dk0, st * STAGE16),
                                      na_wg_desc_add(dv0, pv * STAGE16));
        int base[3];
        bool full, empty;
        na_fwd_tile_step<TK0, 1, 1>(kt, nkt, kmin, sB, base, &full, &empty);
        float corr[2];
        const bool resc =
            na_wg_pipe_softmax<HD, TK0, 1, 1>(s, o, m, l, corr, sl2, full, sW, warp * 16, base, g4, t4);
        __syncwarp(); /* this warp is done with K(tt) and V(tt-1) */
        if (lane == 0) na_mbar_arrive(bempty + st);
        if (loader && tt + 1 < ntiles) { /* group tt+2 */
            na_mbar_wait(bempty + st, (tt >> 1) & 1);
            if (tt + 2 < ntiles) ld.load_1d(P, b, r, kvh, kmin, kmax, tt + 2, k, sK + st * STG);
            ld.load_1d(P, b, r, kvh, kmin, kmax, tt + 1, v, sV + (st ^ 1) * STG);
            na_cp_mbar_arrive(bfull + st);
        }
        na_wg_pipe_next<T, HD>(pa, s, o, corr, resc);
    }
    const int lt = ntiles - 1; /* V(lt): group ntiles (ntiles >= 2), else group 0 */
    if (lt > 0) na_mbar_wait(bfull + (ntiles & 1), (ntiles >> 1) & 1);
    na_fence_proxy_async();
    na_wg_pv_wait_n<T, HD>(o[0], pa, na_wg_desc_add(dv0, (lt & 1) * STAGE16));
    na_fwd_store<T, HD, 1, 1, 1>(o, m, l, P, b, h, r, n, q0, warp * 16, g4, t4, out, lse);
}

/* TK0*TK1*TK2 == 128 (1-D): na_fwd_wgmma_k128 (SYNC, ST unused).
 * SYNC 0: one __syncthreads per tile (cp.async wait + proxy fence by each
 * writer before it), the next tile loaded at the top of the tile.  SYNC
 * 1-3 (PIPE only): per-stage full / empty mbarriers instead, so the two
 * warpgroups run decoupled (one's softmax under the other's MMAs): full[s]
 * completes when the loader threads' copies of the tile in stage s have
 * landed (cp.async.mbarrier.arrive.noinc; the consumers fence the proxies),
 * empty[s] when all 8 warps have waited for the last MMA reading it (the
 * P V of the next tile).  1: all 256 threads load one tile ahead, issued
 * right after the tile's MMAs; 2: warpgroup 1 loads two tiles ahead at the
 * end of its tile; 3: warpgroup 1 loads one ahead after its MMAs.  H100,
 * fwd_bench, bf16, one call (benchmarks/results/fwd_wgmma_sync_h100_20261127.md),
 * SYNC 0 / 1 / 2 / 3: 1d-32k-w2k 0.123-0.124 / 0.109-0.110 / 0.107-0.109 /
 * 0.108-0.110 ms (FlexAttention 0.108), flux-2d-256-w80 (8x8 key tiles)
 * 17.6 / 15.2 / 15.8 / 16.2 ms, hunyuan (4x4x4) 70.3 / 62.0 / 63.9 / 63.9.
 * Default: 2 for 1-D boxes, 1 otherwise.  Tried: FA3's ping-pong (named
 * barriers, the warpgroups' MMAs in turns) on top of 2: 1d 0.107-0.110,
 * flux 15.9, hunyuan 65.5, dropped; no proxy fence: no faster; 3 with four
 * stages (NA_FWD_WGMMA_SMEM_ST(HD, 4), 168544 bytes): 1d 0.106-0.107. */
#define NA_WG_SYNC_DEFAULT(TQ1, TQ2, TK1, TK2) ((TQ1) == 1 && (TQ2) == 1 && (TK1) == 1 && (TK2) == 1 ? 2 : 1)
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, bool PIPE = true,
          int SYNC = NA_WG_SYNC_DEFAULT(TQ1, TQ2, TK1, TK2), int ST = 3>
NA_DEV void na_fwd_wgmma_entry(const int *params, const T *q, const T *k, const T *v, T *out, float *lse) {
    if constexpr (TK0 * TK1 * TK2 == 128)
        na_fwd_wgmma_k128<T, HD, TQ0, TK0>(params, q, k, v, out, lse);
    else if constexpr (SYNC == 0 || !PIPE)
        na_fwd_wgmma_body<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, PIPE, ST>(params, q, k, v, out, lse);
    else
        na_fwd_wgmma_mbar<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, SYNC, ST>(params, q, k, v, out, lse);
}

#endif /* NATTEN_CUDA_FWD_WGMMA_CUH */
