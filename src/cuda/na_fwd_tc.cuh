/*
 * na_fwd_tc.cuh -- tensor-core fused forward (out + lse) for f16/bf16.
 *
 * Flash-style: one CTA owns a box of TQ = TQ0*TQ1*TQ2 (64 or 128) queries of
 * one (batch, head) inside one dilation group, and walks the union of their
 * windows (a box of keys, found from the first and last query of the box:
 * window ends are monotone, see window.cuh) in key tiles of TK0*TK1*TK2
 * (= 64) keys.  K and V tiles go through shared memory with cp.async, two
 * stages deep, each thread copying fixed rows whose offsets it keeps for the
 * whole walk; S = Q K^T and O += P V use mma.sync.m16n8k16 (inline PTX, f32
 * accumulation); softmax is online in the exp2 domain and rescales the
 * accumulators only when a row's max grows by more than 2^8.  NW warps; each
 * owns 16*MT queries (MT m-tiles: with MT = 2 a K/V fragment read from shared
 * memory feeds two mma's; with MT = 1 the Q fragments stay in registers).  A
 * key tile inside every window of a warp's queries skips the mask, one
 * outside all of them is skipped (decided from warp-uniform bounds).
 * Profile and timings: benchmarks/results/fwd_tc_h100_20261127.md.
 *
 * Scope (cuda.py checks it): f16/bf16, head_dim == head_dim_v == HD in
 * {32, 64, 128}, out_stride 1, no RPB, no extra KV, no varlen.  Dilation,
 * per-axis causal, GNA stride, GQA and ranks 1-3 are handled here.
 *
 * Dynamic shared memory: NA_FWD_TC_SMEM(TQ, HD) bytes; 32*NW threads.
 */
#ifndef NATTEN_CUDA_FWD_TC_CUH
#define NATTEN_CUDA_FWD_TC_CUH

#include "na_common.cuh"

NA_DEV unsigned na_smem_u32(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

NA_DEV void na_cp_async16(void *smem, const void *gmem, bool valid) {
    const int n = valid ? 16 : 0; /* zero-fill when the key is outside the box */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(na_smem_u32(smem)), "l"(gmem),
                 "r"(n));
}
NA_DEV void na_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> NA_DEV void na_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

NA_DEV void na_ldsm_x4(unsigned (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(na_smem_u32(p)));
}
NA_DEV void na_ldsm_x4_t(unsigned (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(na_smem_u32(p)));
}

NA_DEV void na_mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, __nv_bfloat16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
NA_DEV void na_mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, __half) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
NA_DEV unsigned na_pack2(float a, float b, __nv_bfloat16) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<unsigned *>(&h);
}
NA_DEV unsigned na_pack2(float a, float b, __half) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<unsigned *>(&h);
}

/* bits [lo, hi] of a 64-bit mask (empty when hi < lo) */
NA_DEV unsigned long long na_range_bits(int lo, int hi) {
    lo = lo < 0 ? 0 : lo;
    hi = hi > 63 ? 63 : hi;
    if (hi < lo) return 0ull;
    return (~0ull >> (63 - hi)) & (~0ull << lo);
}

NA_DEV float na_ex2(float x) { /* 2^x, MUFU.EX2; ex2(-inf) = +0 */
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/*
 * Boxes of rows are loaded many times per CTA (one key box per tile), so the
 * per-row address arithmetic is done once: a shared table holds, for every
 * row (u0,u1,u2) of the box shape, its element offset from the box origin
 * and u packed in 10-bit fields.  A load then costs a table read, three
 * compares and the cp.async.
 */
template <int S0, int S1, int S2>
NA_DEV void na_box_table(int *toff, int *tu, const na_params &P, int heads, int hd, int tid, int nt) {
    for (int row = tid; row < S0 * S1 * S2; row += nt) {
        const int u0 = row / (S1 * S2), u1 = (row / S2) % S1, u2 = row % S2;
        const long long tokd = ((long long)u0 * P.dil[0] * P.X[1] + (long long)u1 * P.dil[1]) * P.X[2] +
                               (long long)u2 * P.dil[2];
        toff[row] = (int)(tokd * heads * hd);
        tu[row] = u0 | (u1 << 10) | (u2 << 20);
    }
}
template <typename T, int HD, int ROWS, int NT>
NA_DEV void na_box_load(T *dst, int ld, const T *src, long long origin, const int *toff, const int *tu,
                        const int lim[3], int tid) {
    constexpr int EPC = 16 / (int)sizeof(T), CPR = HD / EPC; /* 16-byte chunks per row */
    static_assert(NT % CPR == 0 && (ROWS * CPR) % NT == 0, "box load shape");
    const int part = tid % CPR;
#pragma unroll
    for (int i = 0; i < ROWS * CPR / NT; ++i) {
        const int row = tid / CPR + i * (NT / CPR);
        const int uu = tu[row];
        const bool ok = (uu & 1023) <= lim[0] && ((uu >> 10) & 1023) <= lim[1] && (uu >> 20) <= lim[2];
        na_cp_async16(dst + row * ld + part * EPC, src + (ok ? origin + toff[row] + part * EPC : 0), ok);
    }
}
/* element offset of box origin (local coords base, group r) for one head */
NA_DEV long long na_box_origin(const na_params &P, int b, const int base[3], const int r[3], int heads, int head,
                               int hd) {
    int pos[3];
#pragma unroll
    for (int x = 0; x < 3; ++x) pos[x] = base[x] * P.dil[x] + r[x];
    return (na_tok(b, pos, P.X) * heads + head) * (long long)hd;
}

/* Box tile geometry of one CTA along 3 axes: dilation group r, group size n,
 * first local index b0, last active local index blast.  Returns 0 when the
 * box holds nothing (a dilation group shorter than the others). */
template <int T0, int T1, int T2>
NA_DEV int na_box_of(const na_params &P, int tile, int r[3], int n[3], int b0[3], int blast[3]) {
    const int Ta[3] = {T0, T1, T2};
    int c[3];
    for (int x = 2; x >= 0; --x) {
        const int d = P.dil[x];
        const int ntl = ((P.X[x] + d - 1) / d + Ta[x] - 1) / Ta[x];
        c[x] = tile % (d * ntl);
        tile /= d * ntl;
    }
    for (int x = 0; x < 3; ++x) {
        const int d = P.dil[x];
        r[x] = c[x] % d;
        n[x] = (P.X[x] - r[x] + d - 1) / d;
        b0[x] = (c[x] / d) * Ta[x];
        if (b0[x] >= n[x]) return 0;
        blast[x] = min(b0[x] + Ta[x] - 1, n[x] - 1);
    }
    return 1;
}

template <int T0, int T1, int T2>
NA_DEV void na_tile_coords(int tt, const int nt[3], int kt[3]) {
    kt[2] = tt % nt[2];
    kt[1] = (tt / nt[2]) % nt[1];
    kt[0] = tt / (nt[2] * nt[1]);
}

/* Shared-memory element offset of 16-byte chunk `part` of row `row` in a
 * tile of rows of HD channels (2-byte T): padded rows of ld elements, or
 * (BLK) wgmma's 128-byte-swizzle layout for a tile of ld rows -- HD/64
 * column regions of ld rows x 128 bytes, and in a row chunk c (of 8) at
 * position c ^ (row & 7): the XOR of address bits 4-6 with bits 7-9 that the
 * tensor cores apply (regions 1024-byte aligned). */
template <typename T, int HD, bool BLK>
NA_DEV int na_tile_off(int row, int part, int ld) {
    constexpr int EPC = 16 / (int)sizeof(T);
    return BLK ? (part >> 3) * ld * 8 * EPC + row * 8 * EPC + ((part & 7) ^ (row & 7)) * EPC : row * ld + part * EPC;
}

/* cp.async a box of 64 (or TQ) rows of HD channels: rows at local coords
 * base + u (u decomposed over the box shape), valid iff <= lim. */
template <typename T, int HD, int S0, int S1, int S2, int NT, bool BLK = false>
NA_DEV void na_load_box(T *dst, int LD, const T *src, long long heads, int head, int b, const na_params &P,
                        const int r[3], const int base[3], const int lim[3], int tid) {
    constexpr int EPC = 16 / (int)sizeof(T), CPR = HD / EPC, ROWS = S0 * S1 * S2;
    for (int c = tid; c < ROWS * CPR; c += NT) {
        const int row = c / CPR, part = c % CPR;
        const int u[3] = {row / (S1 * S2), (row / S2) % S1, row % S2};
        int pos[3], ok = 1;
#pragma unroll
        for (int x = 0; x < 3; ++x) {
            const int l = base[x] + u[x];
            ok &= l <= lim[x];
            pos[x] = ok ? l * P.dil[x] + r[x] : 0;
        }
        const long long g = ok ? (na_tok(b, pos, P.X) * heads + head) * (long long)HD + part * EPC : 0;
        na_cp_async16(dst + na_tile_off<T, HD, BLK>(row, part, LD), src + g, ok);
    }
}

/* Window bounds (group-local key coordinates) of query row `row` of a query
 * box (shape TQ0 x TQ1 x TQ2 at q0, group r, group sizes n); an inactive row
 * (outside the group) gets an empty window.  Returns whether it is active. */
template <int TQ1, int TQ2>
NA_DEV bool na_row_window(const na_params &P, const int r[3], const int n[3], const int q0[3], int row, int lo[3],
                          int hi[3]) {
    const int t[3] = {row / (TQ1 * TQ2), (row / TQ2) % TQ1, row % TQ2};
    bool act = true;
#pragma unroll
    for (int x = 0; x < 3; ++x) act = act && q0[x] + t[x] < n[x];
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        const int ql = q0[x] + t[x];
        lo[x] = act ? na_first_valid_local(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], ql) : 1 << 30;
        hi[x] = act ? na_last_valid_local(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], ql) : -(1 << 30);
    }
    return act;
}
/* Token row (b, position, head) of query row `row` of the box, or -1 when inactive. */
template <int TQ1, int TQ2>
NA_DEV long long na_row_token(const na_params &P, int b, int h, const int r[3], const int n[3], const int q0[3],
                              int row) {
    const int t[3] = {row / (TQ1 * TQ2), (row / TQ2) % TQ1, row % TQ2};
    int pos[3];
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        if (q0[x] + t[x] >= n[x]) return -1;
        pos[x] = (q0[x] + t[x]) * P.dil[x] + r[x];
    }
    return na_tok(b, pos, P.X) * P.H + h;
}
/* Does the key tile at base (shape TKa) lie inside the window [lo, hi] (full)
 * or outside it (empty)?  Accumulated (&&) into *full and *empty. */
NA_DEV void na_tile_state(const int lo[3], const int hi[3], const int base[3], const int TKa[3], bool *full,
                          bool *empty) {
    bool rowfull = true, rowempty = false;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        rowfull = rowfull && lo[x] <= base[x] && base[x] + TKa[x] - 1 <= hi[x];
        rowempty = rowempty || hi[x] < base[x] || lo[x] > base[x] + TKa[x] - 1;
    }
    *full = *full && rowfull;
    *empty = *empty && rowempty;
}
/* Key column `col` of a TK0 x TK1 x TK2 tile against per-axis window bit masks. */
template <int TK1, int TK2>
NA_DEV bool na_col_ok(const unsigned long long mk[3], int col) {
    const int u0 = col / (TK1 * TK2), u1 = (col / TK2) % TK1, u2 = col % TK2;
    return ((mk[0] >> u0) & (mk[1] >> u1) & (mk[2] >> u2) & 1ull) != 0ull;
}
/* Per-CTA setup shared by the forward kernels: query box of this tile and the
 * box of key tiles covering the union of its windows.  False: no query here. */
template <int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2>
NA_DEV bool na_fwd_box(const na_params &P, int tile, int r[3], int n[3], int q0[3], int kmin[3], int kmax[3],
                       int nkt[3]) {
    const int TKa[3] = {TK0, TK1, TK2};
    int qlast[3];
    if (!na_box_of<TQ0, TQ1, TQ2>(P, tile, r, n, q0, qlast)) return false;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        kmin[x] = na_first_valid_local(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], q0[x]);
        kmax[x] = na_last_valid_local(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], r[x], qlast[x]);
        nkt[x] = (kmax[x] - kmin[x] + TKa[x]) / TKa[x];
    }
    return true;
}

/* Load key tile tt (of the nkt box of tiles from kmin, clipped at kmax) of K
 * and V of kv head kvh into sK / sV (rows of LD elements) with cp.async. */
template <typename T, int HD, int TK0, int TK1, int TK2, int NT>
NA_DEV void na_load_kv_tile(const na_params &P, int b, const int r[3], int kvh, const int kmin[3],
                            const int kmax[3], const int nkt[3], int tt, const T *k, const T *v, T *sK, T *sV,
                            int LD, const int *tOff, const int *tU, int tid) {
    const int TKa[3] = {TK0, TK1, TK2};
    int kt[3], base[3], lim[3];
    na_tile_coords<TK0, TK1, TK2>(tt, nkt, kt);
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        base[x] = kmin[x] + kt[x] * TKa[x];
        lim[x] = kmax[x] - base[x];
    }
    const long long org = na_box_origin(P, b, base, r, P.Hkv, kvh, HD);
    na_box_load<T, HD, TK0 * TK1 * TK2, NT>(sK, LD, k, org, tOff, tU, lim, tid);
    na_box_load<T, HD, TK0 * TK1 * TK2, NT>(sV, LD, v, org, tOff, tU, lim, tid);
}
/* Two-stage pipeline step at tile tt (one barrier per tile): wait for tile
 * tt (issued one step earlier), barrier (its copies are visible to all, and
 * every warp is done with tile tt-1, whose stage tile tt+1 reuses), then
 * issue tile tt+1 (load(tt+1, stage)) to overlap with the work on tile tt. */
template <class F>
NA_DEV void na_pipe_step(int tt, int ntiles, F &&load) {
    na_cp_wait<0>();
    __syncthreads();
    if (tt + 1 < ntiles) {
        load(tt + 1, (tt + 1) & 1);
        na_cp_commit();
    }
}
/* Origin (group-local key coordinates) of key tile tt. */
template <int TK0, int TK1, int TK2>
NA_DEV void na_ktile_base(int tt, const int nkt[3], const int kmin[3], int base[3]) {
    const int TKa[3] = {TK0, TK1, TK2};
    int kt[3];
    na_tile_coords<TK0, TK1, TK2>(tt, nkt, kt);
#pragma unroll
    for (int x = 0; x < 3; ++x) base[x] = kmin[x] + kt[x] * TKa[x];
}

/* Dynamic shared memory of na_fwd_tc_entry in bytes (2-byte T, 64-key
 * tiles): Q tile, two K and two V stages (rows of HD + 8), the key-box
 * table, per-row windows, per-warp window bounds (up to 8 warps).
 * natten_mlx/_core/cuda.py mirrors it. */
#define NA_FWD_TC_SMEM(TQ, HD) (((TQ) + 4 * 64) * ((HD) + 8) * 2 + 8 * 64 + 24 * (TQ) + 8 * 48)

/* 64-bit mask of the columns ((u0*TK1 + u1)*TK2 + u2) of a TK0 x TK1 x TK2
 * key tile inside the box [lo, hi] (tile-relative coordinates).  Along each
 * axis the inside is one run of u, i.e. one run of bits of period
 * TKx * stride, repeated over the tile by a carry-free multiply: about 40
 * integer ops per row instead of three variable 64-bit shifts per column. */
template <int TK0, int TK1, int TK2>
NA_DEV unsigned long long na_tile_mask(const int lo[3], const int hi[3]) {
    const int TKa[3] = {TK0, TK1, TK2}, S[3] = {TK1 * TK2, TK2, 1};
    unsigned long long m = ~0ull;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        const int a = min(max(lo[x], 0), TKa[x]), e = max(min(hi[x], TKa[x] - 1), -1);
        const int per = TKa[x] * S[x]; /* a power of 2 dividing 64 */
        const unsigned long long rep = per == 64 ? 1ull : ~0ull / ((1ull << (per & 63)) - 1ull);
        m &= na_range_bits(a * S[x], e * S[x] + S[x] - 1) * rep;
    }
    return m;
}

/* K/V tile loader of the forward kernels.  Thread tid copies 16-byte chunk
 * `part` of rows r0 + RSTEP*i of every key tile.  Row offsets in a box of
 * power-of-2 sides are additive in the bits of the row index, so the byte
 * offsets of my rows are fixed for the whole walk (roff); a tile then costs
 * one 64-bit add per row and tensor, and only tiles that cross the key box's
 * end (lim) test each row.  Padded rows (BLK false): consecutive threads take
 * consecutive chunks of a row.  Swizzled layout (BLK, see na_tile_off): 8
 * consecutive threads take one chunk of 8 consecutive rows, which the
 * swizzle spreads over all banks. */
template <typename T, int HD, int TK0, int TK1, int TK2, int NT, bool BLK>
struct na_kv_loader {
    static constexpr int TK = TK0 * TK1 * TK2, EPC = 16 / (int)sizeof(T), CPR = HD / EPC, RSTEP = NT / CPR,
                         RPT = TK / RSTEP;
    static_assert(NT % CPR == 0 && TK % RSTEP == 0 && (!BLK || RSTEP % 8 == 0), "K/V tile load shape");
    int r0, soff, istep;
    int roff[RPT];
    int ktl[3]; /* coordinates of the next tile to load (no divisions) */
    NA_DEV void init(const int *tOff, int tid, int LD) { /* LD: row length, unused with BLK */
        const int part = BLK ? (tid >> 3) % CPR : tid % CPR, ld = BLK ? TK : LD;
        r0 = BLK ? (tid & 7) + 8 * (tid / (8 * CPR)) : tid / CPR;
        soff = na_tile_off<T, HD, BLK>(r0, part, ld); /* rows r0 + RSTEP*i: + RSTEP*i rows (RSTEP % 8 == 0) */
        istep = na_tile_off<T, HD, BLK>(RSTEP, 0, ld);
#pragma unroll
        for (int i = 0; i < RPT; ++i) roff[i] = (tOff[r0 + RSTEP * i] + part * EPC) * (int)sizeof(T);
        ktl[0] = ktl[1] = ktl[2] = 0;
    }
    /* issue the next key tile into dK / dV (tile bases) */
    NA_DEV void load(const na_params &P, int b, const int r[3], int kvh, const int kmin[3], const int kmax[3],
                     const int nkt[3], const T *k, const T *v, const int *tU, T *dK, T *dV) {
        const int TKa[3] = {TK0, TK1, TK2};
        int base[3], lim[3];
        bool inb = true;
#pragma unroll
        for (int x = 0; x < 3; ++x) {
            base[x] = kmin[x] + ktl[x] * TKa[x];
            lim[x] = kmax[x] - base[x];
            inb = inb && lim[x] >= TKa[x] - 1;
        }
        const long long org = na_box_origin(P, b, base, r, P.Hkv, kvh, HD);
        const char *kb = reinterpret_cast<const char *>(k + org), *vb = reinterpret_cast<const char *>(v + org);
        dK += soff;
        dV += soff;
        if (inb) {
#pragma unroll
            for (int i = 0; i < RPT; ++i) {
                na_cp_async16(dK + istep * i, kb + roff[i], true);
                na_cp_async16(dV + istep * i, vb + roff[i], true);
            }
        } else {
#pragma unroll
            for (int i = 0; i < RPT; ++i) {
                const int uu = tU[r0 + RSTEP * i];
                const bool ok = (uu & 1023) <= lim[0] && ((uu >> 10) & 1023) <= lim[1] && (uu >> 20) <= lim[2];
                na_cp_async16(dK + istep * i, ok ? kb + roff[i] : (const char *)k, ok); /* zero-fill */
                na_cp_async16(dV + istep * i, ok ? vb + roff[i] : (const char *)v, ok);
            }
        }
        if (++ktl[2] == nkt[2]) {
            ktl[2] = 0;
            if (++ktl[1] == nkt[1]) {
                ktl[1] = 0;
                ++ktl[0];
            }
        }
    }
    /* 1-D key tiles, one tensor: issue key tile j of src (K or V) into dst
     * (tile base), independently of the walk of load (ktl untouched).  A
     * row's box coordinate is its index, so the tile's end needs no table. */
    NA_DEV void load_1d(const na_params &P, int b, const int r[3], int kvh, const int kmin[3], const int kmax[3],
                        int j, const T *src, T *dst) const {
        static_assert(TK1 == 1 && TK2 == 1, "1-D key tiles");
        const int base[3] = {kmin[0] + j * TK0, kmin[1], kmin[2]};
        const int lim = kmax[0] - base[0];
        const char *sb = reinterpret_cast<const char *>(src + na_box_origin(P, b, base, r, P.Hkv, kvh, HD));
        dst += soff;
        if (lim >= TK0 - 1) {
#pragma unroll
            for (int i = 0; i < RPT; ++i) na_cp_async16(dst + istep * i, sb + roff[i], true);
        } else {
#pragma unroll
            for (int i = 0; i < RPT; ++i) {
                const bool ok = r0 + RSTEP * i <= lim;
                na_cp_async16(dst + istep * i, ok ? sb + roff[i] : (const char *)src, ok); /* zero-fill */
            }
        }
    }
};

/* Per-row windows of the query box into sW ([TQ][6]: lo[3], hi[3]). */
template <int TQ, int TQ1, int TQ2>
NA_DEV void na_fwd_row_windows(const na_params &P, const int r[3], const int n[3], const int q0[3], int *sW,
                               int tid, int nt) {
    for (int row = tid; row < TQ; row += nt) {
        int lo[3], hi[3];
        na_row_window<TQ1, TQ2>(P, r, n, q0, row, lo, hi);
#pragma unroll
        for (int x = 0; x < 3; ++x) {
            sW[row * 6 + x] = lo[x];
            sW[row * 6 + 3 + x] = hi[x];
        }
    }
}
/* Window bounds over the active rows [row0, row0 + nrows) of sW, for the
 * tile decisions of the group of warps owning them: intersection [flo, fhi]
 * and union [ulo, uhi] per axis into sB (flo[3] fhi[3] ulo[3] uhi[3]),
 * written by lanes 0-2 of the caller.  No active row: an empty union, so
 * every tile is skipped. */
NA_DEV void na_fwd_bounds(const int *sW, int row0, int nrows, int *sB, int lane) {
    if (lane < 3) {
        int flo = -(1 << 30), fhi = 1 << 30, ulo = 1 << 30, uhi = -(1 << 30);
        for (int i = 0; i < nrows; ++i) {
            const int *w = sW + (row0 + i) * 6;
            if (w[0] > w[3]) continue; /* inactive row (outside the group): empty window */
            flo = max(flo, w[lane]);
            fhi = min(fhi, w[3 + lane]);
            ulo = min(ulo, w[lane]);
            uhi = max(uhi, w[3 + lane]);
        }
        sB[lane] = flo;
        sB[3 + lane] = fhi;
        sB[6 + lane] = ulo;
        sB[9 + lane] = uhi;
    }
}
/* Decide key tile at base (group-local key coordinates) from the bounds sB:
 * full (inside every window: no mask) or empty (outside all: skip). */
template <int TK0, int TK1, int TK2>
NA_DEV void na_fwd_tile_decide(const int *sB, const int base[3], bool *full, bool *empty) {
    int wb[12];
    *reinterpret_cast<int4 *>(wb) = reinterpret_cast<const int4 *>(sB)[0];
    *reinterpret_cast<int4 *>(wb + 4) = reinterpret_cast<const int4 *>(sB)[1];
    *reinterpret_cast<int4 *>(wb + 8) = reinterpret_cast<const int4 *>(sB)[2];
    bool f = true, e = false;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        const int TKx = x == 0 ? TK0 : x == 1 ? TK1 : TK2;
        f = f && wb[x] <= base[x] && base[x] + TKx - 1 <= wb[3 + x];
        e = e || wb[9 + x] < base[x] || wb[6 + x] > base[x] + TKx - 1;
    }
    *full = f;
    *empty = e;
}
/* Step tile coordinates kt over the nkt box (last axis fastest). */
NA_DEV void na_tile_next(int kt[3], const int nkt[3]) {
    if (++kt[2] == nkt[2]) {
        kt[2] = 0;
        if (++kt[1] == nkt[1]) {
            kt[1] = 0;
            ++kt[0];
        }
    }
}
/* Mask S (m16n8 accumulator fragments of MT m-tiles x 8*NJ key columns) of
 * a partial tile: rows of the warp start at query row wrow0 of sW.  NJ 8: a
 * 64-key tile; NJ 16: a 1-D tile of 128 keys (the wgmma forward's), masked
 * as two 64-key halves. */
template <int MT, int TK0, int TK1, int TK2, int NJ>
NA_DEV void na_fwd_mask(float (&s)[MT][NJ][4], const int *sW, int wrow0, const int base[3], int g4, int t4) {
    static_assert(NJ == 8 || (NJ == 16 && TK0 == 128 && TK1 == 1 && TK2 == 1), "64-key tiles or 1-D 128-key tiles");
    constexpr int H0 = NJ == 8 ? TK0 : 64; /* first axis of a 64-key half */
#pragma unroll
    for (int ri = 0; ri < 2 * MT; ++ri) {
        const int *w = sW + (wrow0 + (ri >> 1) * 16 + g4 + (ri & 1) * 8) * 6;
#pragma unroll
        for (int hh = 0; hh < NJ / 8; ++hh) {
            int lo[3], hi[3];
#pragma unroll
            for (int x = 0; x < 3; ++x) {
                lo[x] = w[x] - base[x] - (x == 0 ? 64 * hh : 0);
                hi[x] = w[3 + x] - base[x] - (x == 0 ? 64 * hh : 0);
            }
            const unsigned long long mk = na_tile_mask<H0, TK1, TK2>(lo, hi) >> (2 * t4);
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int c = 0; c < 2; ++c)
                    if (!((mk >> (j * 8 + c)) & 1ull)) s[ri >> 1][hh * 8 + j][(ri & 1) * 2 + c] = -INFINITY;
        }
    }
}
/* Online softmax of one key tile in the exp2 domain, rows g (e=0,1) and g+8
 * (e=2,3) of each m-tile: S -> P in place, running max m and sum l, O
 * rescaled.  m (max * scale * log2 e) is the reference of the exponents; it
 * moves only when a row's max passes it by more than 8 (so p <= 2^8,
 * harmless in f32 and bf16) and the warp then rescales its accumulators:
 * after the first tiles that is rare, which saves HD/2 multiplies per row
 * and tile.  In three steps (the wgmma kernel rescales O later, once the
 * tensor cores are done with it): na_fwd_rowmax moves m, scales l and
 * returns whether O needs na_fwd_rescale_o with corr; na_fwd_exp makes P. */
template <int MT, int NJ>
NA_DEV bool na_fwd_rowmax(const float (&s)[MT][NJ][4], float (&m)[2 * MT], float (&l)[2 * MT],
                          float (&corr)[2 * MT], float sl2) {
    float mxs[2 * MT];
    bool grow = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < NJ; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * rr], s[mt][j][2 * rr + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mxs[mt * 2 + rr] = mx * sl2;
            grow = grow || mx * sl2 > m[mt * 2 + rr] + 8.f;
        }
    if (!__any_sync(0xffffffffu, grow)) return false;
#pragma unroll
    for (int ri = 0; ri < 2 * MT; ++ri) {
        const float mn = fmaxf(m[ri], mxs[ri]);
        corr[ri] = mn == -INFINITY ? 1.f : na_ex2(m[ri] - mn);
        m[ri] = mn;
        l[ri] *= corr[ri];
    }
    return true;
}
template <int MT, int HD>
NA_DEV void na_fwd_rescale_o(float (&o)[MT][HD / 8][4], const float (&corr)[2 * MT]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr)
#pragma unroll
            for (int j = 0; j < HD / 8; ++j) {
                o[mt][j][2 * rr] *= corr[mt * 2 + rr];
                o[mt][j][2 * rr + 1] *= corr[mt * 2 + rr];
            }
}
template <int MT, int NJ>
NA_DEV void na_fwd_exp(float (&s)[MT][NJ][4], const float (&m)[2 * MT], float (&l)[2 * MT], float sl2) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int ri = mt * 2 + rr;
            const float ref = m[ri] == -INFINITY ? 0.f : m[ri];
            float ls = 0.f;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                s[mt][j][2 * rr] = na_ex2(fmaf(s[mt][j][2 * rr], sl2, -ref));
                s[mt][j][2 * rr + 1] = na_ex2(fmaf(s[mt][j][2 * rr + 1], sl2, -ref));
                ls += s[mt][j][2 * rr] + s[mt][j][2 * rr + 1];
            }
            l[ri] += ls;
        }
}
template <int MT, int HD>
NA_DEV void na_fwd_softmax(float (&s)[MT][8][4], float (&o)[MT][HD / 8][4], float (&m)[2 * MT],
                           float (&l)[2 * MT], float sl2) {
    float corr[2 * MT];
    if (na_fwd_rowmax<MT>(s, m, l, corr, sl2)) na_fwd_rescale_o<MT, HD>(o, corr);
    na_fwd_exp<MT>(s, m, l, sl2);
}
/* A fragment (m16k16) of P for keys 16*kk..16*kk+15 of m-tile mt. */
template <typename T, int MT, int NJ>
NA_DEV void na_fwd_pfrag(unsigned (&pa)[4], const float (&s)[MT][NJ][4], int mt, int kk) {
    pa[0] = na_pack2(s[mt][2 * kk][0], s[mt][2 * kk][1], T());
    pa[1] = na_pack2(s[mt][2 * kk][2], s[mt][2 * kk][3], T());
    pa[2] = na_pack2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1], T());
    pa[3] = na_pack2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3], T());
}
/* Epilogue: out = O / l and lse of the warp's rows (query rows wrow0 + ...). */
template <typename T, int HD, int MT, int TQ1, int TQ2>
NA_DEV void na_fwd_store(const float (&o)[MT][HD / 8][4], const float (&m)[2 * MT], const float (&l)[2 * MT],
                         const na_params &P, int b, int h, const int r[3], const int n[3], const int q0[3],
                         int wrow0, int g4, int t4, T *out, float *lse) {
    const long long HDl = HD;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int ri = mt * 2 + rr;
            float lt = l[ri];
            lt += __shfl_xor_sync(0xffffffffu, lt, 1);
            lt += __shfl_xor_sync(0xffffffffu, lt, 2);
            const long long orow = na_row_token<TQ1, TQ2>(P, b, h, r, n, q0, wrow0 + mt * 16 + g4 + rr * 8);
            if (orow < 0) continue;
            const float inv = 1.f / lt;
            T *dst = out + orow * HDl;
#pragma unroll
            for (int j = 0; j < HD / 8; ++j) {
                const unsigned pk = na_pack2(o[mt][j][2 * rr] * inv, o[mt][j][2 * rr + 1] * inv, T());
                *reinterpret_cast<unsigned *>(dst + j * 8 + t4 * 2) = pk;
            }
            if (t4 == 0) lse[orow] = (m[ri] + log2f(lt)) * 0.6931471805599453f;
        }
}

/* Per-CTA setup of the forward kernels: parameters, (batch, head) of
 * blockIdx.y and its kv head, the query box of blockIdx.x and the box of
 * key tiles covering its windows.  False: no query here. */
template <int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2>
NA_DEV bool na_fwd_cta(const int *params, na_params &P, int &b, int &h, int &kvh, int r[3], int n[3], int q0[3],
                       int kmin[3], int kmax[3], int nkt[3], int &ntiles) {
    P = na_load_params(params);
    const int bh = blockIdx.y;
    b = bh / P.H;
    h = bh % P.H;
    kvh = h / (P.H / P.Hkv);
    if (!na_fwd_box<TQ0, TQ1, TQ2, TK0, TK1, TK2>(P, blockIdx.x, r, n, q0, kmin, kmax, nkt)) return false;
    ntiles = nkt[0] * nkt[1] * nkt[2];
    return true;
}
/* Q tile -> smem (inactive queries zero; one cp.async group), the key-box
 * table and the per-row windows, then a barrier. */
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, int NT, bool BLK>
NA_DEV void na_fwd_prologue(const na_params &P, int b, int h, const int r[3], const int n[3], const int q0[3],
                            const T *q, T *sQ, int ld, int *tOff, int *tU, int *sW, int tid) {
    const int lastq[3] = {n[0] - 1, n[1] - 1, n[2] - 1};
    na_load_box<T, HD, TQ0, TQ1, TQ2, NT, BLK>(sQ, ld, q, P.H, h, b, P, r, q0, lastq, tid);
    na_cp_commit();
    na_box_table<TK0, TK1, TK2>(tOff, tU, P, P.Hkv, HD, tid, NT);
    na_fwd_row_windows<TQ0 * TQ1 * TQ2, TQ1, TQ2>(P, r, n, q0, sW, tid, NT);
    __syncthreads();
}
/* Origin (group-local) of key tile kt, its state against the bounds sB (full:
 * no mask, empty: skip), and kt stepped to the next tile. */
template <int TK0, int TK1, int TK2>
NA_DEV void na_fwd_tile_step(int kt[3], const int nkt[3], const int kmin[3], const int *sB, int base[3], bool *full,
                             bool *empty) {
#pragma unroll
    for (int x = 0; x < 3; ++x) base[x] = kmin[x] + kt[x] * (x == 0 ? TK0 : x == 1 ? TK1 : TK2);
    na_fwd_tile_decide<TK0, TK1, TK2>(sB, base, full, empty);
    na_tile_next(kt, nkt);
}

/* NW warps; each owns 16*MT query rows (MT = TQ / (16*NW) m-tiles).
 *
 * Per key tile a warp first decides from warp-uniform bounds whether the
 * tile is inside every window of its active rows (full: no mask) or outside
 * all of them (skip).  The rows of a warp are a sub-box of the query box, so
 * with W_x(q) the window of query coordinate q on axis x, "full" is exactly
 * tile_x inside [max lo_x, min hi_x] on every axis and "empty" exactly tile_x
 * outside [min lo_x, max hi_x] on some axis (windows of neighbouring queries
 * overlap, K >= gna stride).  Only partial tiles read the per-row windows,
 * kept in shared memory (registers go to the accumulators). */
template <typename T, int HD, int TQ0, int TQ1, int TQ2, int TK0, int TK1, int TK2, int NW = 4>
NA_DEV void na_fwd_tc_entry(const int *params, const T *q, const T *k, const T *v, T *out, float *lse) {
    constexpr int TQ = TQ0 * TQ1 * TQ2, TK = TK0 * TK1 * TK2;
    constexpr int NT = NW * 32;
    constexpr int MT = TQ / (16 * NW); /* 16-row m-tiles per warp */
    constexpr int LD = HD + 8;         /* padded smem row (halves): ldmatrix rows hit distinct banks */
    constexpr bool QREG = MT == 1;     /* Q fragments live in registers (HD/4 of them) */
    static_assert(TK == 64, "key tile must hold 64 keys");
    static_assert(MT >= 1 && MT * 16 * NW == TQ && NW <= 8, "query tile must be 16*NW*MT queries, <= 8 warps");
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    T *sQ = reinterpret_cast<T *>(na_smem_raw);
    T *sK = sQ + TQ * LD; /* [2][TK][LD] */
    T *sV = sK + 2 * TK * LD;
    int *tOff = reinterpret_cast<int *>(sV + 2 * TK * LD); /* [TK] key-box table */
    int *tU = tOff + TK;
    int *sW = tU + TK; /* [TQ][6]: window lo[3], hi[3] of each query row */

    na_params P;
    int b, h, kvh, r[3], n[3], q0[3], kmin[3], kmax[3], nkt[3], ntiles;
    if (!na_fwd_cta<TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, P, b, h, kvh, r, n, q0, kmin, kmax, nkt, ntiles)) return;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    /* ---- Q tile -> smem (inactive queries zero), then key tile 0 */
    na_fwd_prologue<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, NT, false>(P, b, h, r, n, q0, q, sQ, LD, tOff, tU, sW, tid);
    na_kv_loader<T, HD, TK0, TK1, TK2, NT, false> ld;
    ld.init(tOff, tid, LD);
    ld.load(P, b, r, kvh, kmin, kmax, nkt, k, v, tU, sK, sV);
    na_cp_commit();

    /* warp-uniform window bounds over the warp's active rows, kept in shared
     * memory (read per tile; registers go to the accumulators) */
    int *sB = sW + TQ * 6 + warp * 12;
    na_fwd_bounds(sW, warp * 16 * MT, 16 * MT, sB, lane);
    __syncwarp();
    const int g4 = lane >> 2, t4 = lane & 3;
    const float sl2 = P.scale * 1.4426950408889634f;
    float o[MT][HD / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < HD / 8; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
    float m[2 * MT], l[2 * MT];
#pragma unroll
    for (int ri = 0; ri < 2 * MT; ++ri) {
        m[ri] = -INFINITY;
        l[ri] = 0.f;
    }
    unsigned qf[QREG ? HD / 16 : 1][4];

    int kt[3] = {0, 0, 0}; /* coordinates of the current tile */
    for (int tt = 0; tt < ntiles; ++tt) {
        /* two stages, one barrier per tile: tile tt has landed and every warp
         * is done with tile tt-1, whose stage tile tt+1 now reuses */
        na_cp_wait<0>();
        __syncthreads();
        if (tt + 1 < ntiles) {
            const int st = (tt + 1) & 1;
            ld.load(P, b, r, kvh, kmin, kmax, nkt, k, v, tU, sK + st * TK * LD, sV + st * TK * LD);
            na_cp_commit();
        }
        if (QREG && tt == 0) {
#pragma unroll
            for (int kk = 0; kk < (QREG ? HD / 16 : 1); ++kk)
                na_ldsm_x4(qf[kk], sQ + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
        }
        const T *cK = sK + (tt & 1) * TK * LD, *cV = sV + (tt & 1) * TK * LD;
        int base[3];
        bool full, empty;
        na_fwd_tile_step<TK0, TK1, TK2>(kt, nkt, kmin, sB, base, &full, &empty);
        if (empty) continue;
        float s[MT][8][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            unsigned qa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if (QREG) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) qa[mt][e] = qf[QREG ? kk : 0][e];
                } else {
                    na_ldsm_x4(qa[mt], sQ + (warp * 16 * MT + mt * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
                }
            }
#pragma unroll
            for (int jp = 0; jp < 4; ++jp) {
                unsigned bk[4];
                na_ldsm_x4(bk, cK + (jp * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    na_mma(s[mt][2 * jp], qa[mt], bk[0], bk[1], T());
                    na_mma(s[mt][2 * jp + 1], qa[mt], bk[2], bk[3], T());
                }
            }
        }
        if (!full) na_fwd_mask<MT, TK0, TK1, TK2>(s, sW, warp * 16 * MT, base, g4, t4);
        na_fwd_softmax<MT, HD>(s, o, m, l, sl2);
        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            unsigned pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) na_fwd_pfrag<T, MT>(pa[mt], s, mt, kk);
#pragma unroll
            for (int jp = 0; jp < HD / 16; ++jp) {
                unsigned bv[4];
                na_ldsm_x4_t(bv, cV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + jp * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    na_mma(o[mt][2 * jp], pa[mt], bv[0], bv[1], T());
                    na_mma(o[mt][2 * jp + 1], pa[mt], bv[2], bv[3], T());
                }
            }
        }
    }
    na_fwd_store<T, HD, MT, TQ1, TQ2>(o, m, l, P, b, h, r, n, q0, warp * 16 * MT, g4, t4, out, lse);
}

#endif /* NATTEN_CUDA_FWD_TC_CUH */
