/*
 * na_simple.cuh -- warp-per-row CUDA kernels for every op and feature.
 *
 * One warp owns one row (a query/output row and a head for forward, dq, qk,
 * av; a key and a kv head for dk/dv).  Lanes split the channels; dot products
 * are warp reductions; softmax is online, in f32.  dk/dv (and the split ops'
 * dk, dv) are gathered per key through the inverse window rule
 * (na_queries_of_key), so there are no atomics and results are
 * deterministic.  Only drpb and the extra-KV gradients, sums over every query,
 * use f32 atomics.  These kernels cover ranks 1-3, dilation, per-axis causal,
 * out_stride, gna_stride, GQA, RPB, additional KV and varlen, for f32, f16
 * and bf16; na_fwd_tc.cuh is the tensor-core forward for the common case.
 *
 * Each function is the body of one kernel: `gw` is the global warp index,
 * `lane` the lane.  NPL/NVPL = ceil(D/32), ceil(Dv/32) (channels per lane).
 */
#ifndef NATTEN_CUDA_SIMPLE_CUH
#define NATTEN_CUDA_SIMPLE_CUH

#include "na_common.cuh"

/* Decode a row index over [B, E0, E1, E2, heads]. */
NA_DEV void na_decode_row(long long row, const int E[3], int heads, int *b, int c[3], int *h) {
    *h = (int)(row % heads);
    row /= heads;
    c[2] = (int)(row % E[2]);
    row /= E[2];
    c[1] = (int)(row % E[1]);
    row /= E[1];
    c[0] = (int)(row % E[0]);
    *b = (int)(row / E[0]);
}

/* Query position, sample extent and window of output row o; 0 if the row is
 * outside the sample (varlen). */
NA_DEV int na_row_setup(const na_params &p, const int *varlen, int b, const int o[3], int i[3], int L[3],
                        na_window w[3]) {
    int inside = 1;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        i[x] = o[x] * p.os[x];
        L[x] = na_extent(p, varlen, b, x);
        if (i[x] >= L[x]) inside = 0;
    }
    if (!inside) return 0;
#pragma unroll
    for (int x = 0; x < 3; ++x) w[x] = na_window_of(L[x], p.K[x], p.dil[x], p.gs[x], p.causal[x], i[x]);
    return 1;
}

/* ---------------------------------------------------------------- fused forward */
template <typename T, int NPL, int NVPL>
NA_DEV void na_fwd_simple(const na_params &p, const T *q, const T *k, const T *v, const T *rpb,
                          const T *ek, const T *ev, const int *varlen, T *out, float *lse, long long gw,
                          int lane) {
    const long long rows = (long long)p.B * p.O[0] * p.O[1] * p.O[2] * p.H;
    if (gw >= rows) return;
    int b, o[3], h;
    na_decode_row(gw, p.O, p.H, &b, o, &h);
    int i[3], L[3];
    na_window w[3];
    T *orow = out + gw * p.Dv;
    if (!na_row_setup(p, varlen, b, o, i, L, w)) {
        float z[NVPL];
#pragma unroll
        for (int j = 0; j < NVPL; ++j) z[j] = 0.f;
        na_store_row<NVPL>(orow, z, p.Dv, lane, 1.f);
        if (lane == 0) lse[gw] = -INFINITY;
        return;
    }
    const int G = p.H / p.Hkv, kvh = h / G;
    float qr[NPL];
    na_load_row<NPL>(qr, q + (na_tok(b, i, p.X) * p.H + h) * p.D, p.D, lane, p.scale);
    float m = -INFINITY, l = 0.f, acc[NVPL];
#pragma unroll
    for (int j = 0; j < NVPL; ++j) acc[j] = 0.f;
    const int R = na_rpb_size(p);
    int n[3], kc[3];
    for (n[0] = w[0].valid_begin; n[0] < w[0].valid_end; ++n[0]) {
        kc[0] = w[0].start + n[0] * w[0].step;
        for (n[1] = w[1].valid_begin; n[1] < w[1].valid_end; ++n[1]) {
            kc[1] = w[1].start + n[1] * w[1].step;
            for (n[2] = w[2].valid_begin; n[2] < w[2].valid_end; ++n[2]) {
                kc[2] = w[2].start + n[2] * w[2].step;
                const long long kt = na_tok(b, kc, p.X) * p.Hkv + kvh;
                float s = na_dot_row<NPL>(qr, k + kt * p.D, p.D, lane);
                if (p.has_rpb) s += na_f(rpb[(long long)h * R + na_rpb_flat(p, w, i, n)]);
                const float mn = fmaxf(m, s);
                const float c = expf(m - mn), e = expf(s - mn);
                l = l * c + e;
#pragma unroll
                for (int j = 0; j < NVPL; ++j) acc[j] *= c;
                na_axpy_row<NVPL>(acc, e, v + kt * p.Dv, p.Dv, lane);
                m = mn;
            }
        }
    }
    for (int t = 0; t < p.n_extra; ++t) {
        const long long et = ((long long)b * p.n_extra + t) * p.Hkv + kvh;
        const float s = na_dot_row<NPL>(qr, ek + et * p.D, p.D, lane);
        const float mn = fmaxf(m, s);
        const float c = expf(m - mn), e = expf(s - mn);
        l = l * c + e;
#pragma unroll
        for (int j = 0; j < NVPL; ++j) acc[j] *= c;
        na_axpy_row<NVPL>(acc, e, ev + et * p.Dv, p.Dv, lane);
        m = mn;
    }
    na_store_row<NVPL>(orow, acc, p.Dv, lane, 1.f / l);
    if (lane == 0) lse[gw] = m + logf(l);
}

/* ------------------------------------------------- fused backward: dq (+drpb, delta)
 * Row = query token (full resolution) and head.  Rows no output reads get
 * dq = 0.  delta[o] = sum(dout*out) - dlse[o] is written for the dk/dv pass. */
template <typename T, int NPL, int NVPL>
NA_DEV void na_bwd_dq_simple(const na_params &p, const T *q, const T *k, const T *v, const T *rpb,
                             const T *ek, const T *ev, const int *varlen, const T *out,
                             const float *lse, const T *dout, const float *dlse, T *dq, float *delta,
                             float *drpb, long long gw, int lane) {
    const long long rows = (long long)p.B * p.X[0] * p.X[1] * p.X[2] * p.H;
    if (gw >= rows) return;
    int b, i[3], h;
    na_decode_row(gw, p.X, p.H, &b, i, &h);
    float acc[NPL];
#pragma unroll
    for (int j = 0; j < NPL; ++j) acc[j] = 0.f;
    T *dqrow = dq + gw * p.D;
    int o[3], L[3], read = 1;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        o[x] = i[x] / p.os[x];
        L[x] = na_extent(p, varlen, b, x);
        if (i[x] % p.os[x] != 0 || i[x] >= L[x]) read = 0;
    }
    if (!read) {
        na_store_row<NPL>(dqrow, acc, p.D, lane, 1.f);
        return;
    }
    na_window w[3];
#pragma unroll
    for (int x = 0; x < 3; ++x) w[x] = na_window_of(L[x], p.K[x], p.dil[x], p.gs[x], p.causal[x], i[x]);
    const long long orow = na_tok(b, o, p.O) * p.H + h;
    float dor[NVPL];
    na_load_row<NVPL>(dor, dout + orow * p.Dv, p.Dv, lane, 1.f);
    const float dl = na_dot_row<NVPL>(dor, out + orow * p.Dv, p.Dv, lane) - dlse[orow];
    if (lane == 0) delta[orow] = dl;
    const float lrow = lse[orow];
    const int G = p.H / p.Hkv, kvh = h / G;
    float qr[NPL];
    na_load_row<NPL>(qr, q + gw * p.D, p.D, lane, p.scale);
    const int R = na_rpb_size(p);
    int n[3], kc[3];
    for (n[0] = w[0].valid_begin; n[0] < w[0].valid_end; ++n[0]) {
        kc[0] = w[0].start + n[0] * w[0].step;
        for (n[1] = w[1].valid_begin; n[1] < w[1].valid_end; ++n[1]) {
            kc[1] = w[1].start + n[1] * w[1].step;
            for (n[2] = w[2].valid_begin; n[2] < w[2].valid_end; ++n[2]) {
                kc[2] = w[2].start + n[2] * w[2].step;
                const long long kt = na_tok(b, kc, p.X) * p.Hkv + kvh;
                float s = na_dot_row<NPL>(qr, k + kt * p.D, p.D, lane);
                int ridx = 0;
                if (p.has_rpb) {
                    ridx = h * R + na_rpb_flat(p, w, i, n);
                    s += na_f(rpb[ridx]);
                }
                const float pr = expf(s - lrow);
                const float dp = na_dot_row<NVPL>(dor, v + kt * p.Dv, p.Dv, lane);
                const float ds = pr * (dp - dl);
                na_axpy_row<NPL>(acc, ds, k + kt * p.D, p.D, lane);
                if (p.has_rpb && drpb && lane == 0) atomicAdd(drpb + ridx, ds);
            }
        }
    }
    for (int t = 0; t < p.n_extra; ++t) {
        const long long et = ((long long)b * p.n_extra + t) * p.Hkv + kvh;
        const float s = na_dot_row<NPL>(qr, ek + et * p.D, p.D, lane);
        const float pr = expf(s - lrow);
        const float dp = na_dot_row<NVPL>(dor, ev + et * p.Dv, p.Dv, lane);
        na_axpy_row<NPL>(acc, pr * (dp - dl), ek + et * p.D, p.D, lane);
    }
    na_store_row<NPL>(dqrow, acc, p.D, lane, p.scale);
}

/* Visit every (output row, slot) that reads key j (full-res coordinates) of
 * sample b: f(o[3], i[3], w[3], n[3]).  Uses the inverse window rule. */
template <class F>
NA_DEV void na_for_each_reader(const na_params &p, const int L[3], const int j[3], F &&f) {
    int lo[3], hi[3], r[3];
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        if (!na_queries_of_key(L[x], p.K[x], p.dil[x], p.gs[x], p.causal[x], j[x], &lo[x], &hi[x])) return;
        r[x] = j[x] % p.dil[x];
    }
    int pl[3], i[3], o[3], n[3];
    na_window w[3];
    for (pl[0] = lo[0]; pl[0] <= hi[0]; ++pl[0]) {
        i[0] = pl[0] * p.dil[0] + r[0];
        if (i[0] % p.os[0]) continue;
        o[0] = i[0] / p.os[0];
        w[0] = na_window_of(L[0], p.K[0], p.dil[0], p.gs[0], p.causal[0], i[0]);
        n[0] = (j[0] - w[0].start) / p.dil[0];
        for (pl[1] = lo[1]; pl[1] <= hi[1]; ++pl[1]) {
            i[1] = pl[1] * p.dil[1] + r[1];
            if (i[1] % p.os[1]) continue;
            o[1] = i[1] / p.os[1];
            w[1] = na_window_of(L[1], p.K[1], p.dil[1], p.gs[1], p.causal[1], i[1]);
            n[1] = (j[1] - w[1].start) / p.dil[1];
            for (pl[2] = lo[2]; pl[2] <= hi[2]; ++pl[2]) {
                i[2] = pl[2] * p.dil[2] + r[2];
                if (i[2] % p.os[2]) continue;
                o[2] = i[2] / p.os[2];
                w[2] = na_window_of(L[2], p.K[2], p.dil[2], p.gs[2], p.causal[2], i[2]);
                n[2] = (j[2] - w[2].start) / p.dil[2];
                f(o, i, w, n);
            }
        }
    }
}

/* ------------------------------------------------- delta for the tensor-core backward
 * delta[o] = sum(dout*out) - dlse[o], one warp per output row: one launch
 * instead of MLX's astype / multiply / sum / subtract chain (which writes two
 * f32 copies of O and dO, ~10% of a vision-size backward). */
template <typename T, int NVPL>
NA_DEV void na_delta_simple(const na_params &p, const T *out, const T *dout, const float *dlse, float *delta,
                            long long gw, int lane) {
    const long long rows = (long long)p.B * p.O[0] * p.O[1] * p.O[2] * p.H;
    if (gw >= rows) return;
    float dor[NVPL];
    na_load_row<NVPL>(dor, dout + gw * p.Dv, p.Dv, lane, 1.f);
    const float d = na_dot_row<NVPL>(dor, out + gw * p.Dv, p.Dv, lane);
    if (lane == 0) delta[gw] = d - dlse[gw];
}

/* ------------------------------------------------- fused backward: dk, dv
 * Row = key token and kv head.  Gathers over every (query, head in the GQA
 * group) whose window holds the key. */
template <typename T, int NPL, int NVPL>
NA_DEV void na_bwd_dkdv_simple(const na_params &p, const T *q, const T *k, const T *v, const T *rpb,
                               const int *varlen, const float *lse, const T *dout,
                               const float *delta, T *dk, T *dv, long long gw, int lane) {
    const long long rows = (long long)p.B * p.X[0] * p.X[1] * p.X[2] * p.Hkv;
    if (gw >= rows) return;
    int b, j[3], kvh;
    na_decode_row(gw, p.X, p.Hkv, &b, j, &kvh);
    float dka[NPL], dva[NVPL];
#pragma unroll
    for (int c = 0; c < NPL; ++c) dka[c] = 0.f;
#pragma unroll
    for (int c = 0; c < NVPL; ++c) dva[c] = 0.f;
    int L[3], inside = 1;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        L[x] = na_extent(p, varlen, b, x);
        if (j[x] >= L[x]) inside = 0;
    }
    if (inside) {
        float kr[NPL], vr[NVPL];
        na_load_row<NPL>(kr, k + gw * p.D, p.D, lane, p.scale);
        na_load_row<NVPL>(vr, v + gw * p.Dv, p.Dv, lane, 1.f);
        const int G = p.H / p.Hkv, R = na_rpb_size(p);
        na_for_each_reader(p, L, j, [&](const int o[3], const int i[3], const na_window w[3], const int n[3]) {
            const long long qt = na_tok(b, i, p.X), ot = na_tok(b, o, p.O);
            for (int g = 0; g < G; ++g) {
                const int h = kvh * G + g;
                const T *qrow = q + (qt * p.H + h) * p.D;
                const long long orow = ot * p.H + h;
                float s = na_dot_row<NPL>(kr, qrow, p.D, lane);
                if (p.has_rpb) s += na_f(rpb[(long long)h * R + na_rpb_flat(p, w, i, n)]);
                const float pr = expf(s - lse[orow]);
                const T *dorow = dout + orow * p.Dv;
                const float dp = na_dot_row<NVPL>(vr, dorow, p.Dv, lane);
                const float ds = pr * (dp - delta[orow]);
                na_axpy_row<NVPL>(dva, pr, dorow, p.Dv, lane);
                na_axpy_row<NPL>(dka, ds, qrow, p.D, lane);
            }
        });
    }
    na_store_row<NPL>(dk + gw * p.D, dka, p.D, lane, p.scale);
    na_store_row<NVPL>(dv + gw * p.Dv, dva, p.Dv, lane, 1.f);
}

/* ------------------------------------------------- fused backward: extra KV
 * Row = (b, extra token t, kv head, chunk of CH output tokens).  Sums over
 * the chunk's rows and the group's heads, then one f32 atomicAdd per channel
 * into dek/dev (zero-initialised). */
template <typename T, int NPL, int NVPL, int CH>
NA_DEV void na_bwd_extra_simple(const na_params &p, const T *q, const T *ek, const T *ev,
                                const int *varlen, const float *lse, const T *dout, const float *delta,
                                float *dek, float *dev, long long gw, int lane) {
    const long long otoks = (long long)p.O[0] * p.O[1] * p.O[2];
    const long long nch = (otoks + CH - 1) / CH;
    const long long rows = (long long)p.B * p.n_extra * p.Hkv * nch;
    if (gw >= rows) return;
    const long long ch = gw % nch;
    long long r = gw / nch;
    const int kvh = (int)(r % p.Hkv);
    r /= p.Hkv;
    const int t = (int)(r % p.n_extra);
    const int b = (int)(r / p.n_extra);
    const long long et = ((long long)b * p.n_extra + t) * p.Hkv + kvh;
    float kr[NPL], vr[NVPL], dka[NPL], dva[NVPL];
    na_load_row<NPL>(kr, ek + et * p.D, p.D, lane, p.scale);
    na_load_row<NVPL>(vr, ev + et * p.Dv, p.Dv, lane, 1.f);
#pragma unroll
    for (int c = 0; c < NPL; ++c) dka[c] = 0.f;
#pragma unroll
    for (int c = 0; c < NVPL; ++c) dva[c] = 0.f;
    const int G = p.H / p.Hkv;
    const long long end = otoks < (ch + 1) * CH ? otoks : (ch + 1) * CH;
    for (long long ot = ch * CH; ot < end; ++ot) {
        int o[3], i[3], inside = 1;
        long long rem = ot;
        o[2] = (int)(rem % p.O[2]);
        rem /= p.O[2];
        o[1] = (int)(rem % p.O[1]);
        o[0] = (int)(rem / p.O[1]);
#pragma unroll
        for (int x = 0; x < 3; ++x) {
            i[x] = o[x] * p.os[x];
            if (i[x] >= na_extent(p, varlen, b, x)) inside = 0;
        }
        if (!inside) continue;
        const long long qt = na_tok(b, i, p.X), orow0 = ((long long)b * otoks + ot) * p.H;
        for (int g = 0; g < G; ++g) {
            const int h = kvh * G + g;
            const T *qrow = q + (qt * p.H + h) * p.D;
            const long long orow = orow0 + h;
            const float s = na_dot_row<NPL>(kr, qrow, p.D, lane);
            const float pr = expf(s - lse[orow]);
            const T *dorow = dout + orow * p.Dv;
            const float dp = na_dot_row<NVPL>(vr, dorow, p.Dv, lane);
            na_axpy_row<NVPL>(dva, pr, dorow, p.Dv, lane);
            na_axpy_row<NPL>(dka, pr * (dp - delta[orow]), qrow, p.D, lane);
        }
    }
#pragma unroll
    for (int c = 0; c < NPL; ++c)
        if (lane + 32 * c < p.D) atomicAdd(dek + et * p.D + lane + 32 * c, dka[c] * p.scale);
#pragma unroll
    for (int c = 0; c < NVPL; ++c)
        if (lane + 32 * c < p.Dv) atomicAdd(dev + et * p.Dv + lane + 32 * c, dva[c]);
}

/* ---------------------------------------------------------------- split QK */
template <typename T, int NPL>
NA_DEV void na_qk_simple(const na_params &p, const T *q, const T *k, const T *rpb, T *logits,
                         long long gw, int lane) {
    const long long rows = (long long)p.B * p.O[0] * p.O[1] * p.O[2] * p.H;
    if (gw >= rows) return;
    int b, o[3], h, i[3], L[3];
    na_window w[3];
    na_decode_row(gw, p.O, p.H, &b, o, &h);
    na_row_setup(p, nullptr, b, o, i, L, w);
    const int kvh = h / (p.H / p.Hkv), R = na_rpb_size(p);
    float qr[NPL];
    na_load_row<NPL>(qr, q + (na_tok(b, i, p.X) * p.H + h) * p.D, p.D, lane, p.scale);
    T *lrow = logits + gw * p.KK;
    int n[3], kc[3], slot = 0;
    for (n[0] = 0; n[0] < p.K[0]; ++n[0])
        for (n[1] = 0; n[1] < p.K[1]; ++n[1])
            for (n[2] = 0; n[2] < p.K[2]; ++n[2], ++slot) {
                int valid = 1;
#pragma unroll
                for (int x = 0; x < 3; ++x) {
                    kc[x] = w[x].start + n[x] * w[x].step;
                    if (n[x] < w[x].valid_begin || n[x] >= w[x].valid_end) valid = 0;
                }
                float s = -INFINITY;
                if (valid) {
                    s = na_dot_row<NPL>(qr, k + (na_tok(b, kc, p.X) * p.Hkv + kvh) * p.D, p.D, lane);
                    if (p.has_rpb) s += na_f(rpb[(long long)h * R + na_rpb_flat(p, w, i, n)]);
                }
                if (lane == 0) lrow[slot] = na_cast<T>(s);
            }
}

/* ---------------------------------------------------------------- split AV */
template <typename T, int NVPL>
NA_DEV void na_av_simple(const na_params &p, const T *attn, const T *v, T *out, long long gw, int lane) {
    const long long rows = (long long)p.B * p.O[0] * p.O[1] * p.O[2] * p.H;
    if (gw >= rows) return;
    int b, o[3], h, i[3], L[3];
    na_window w[3];
    na_decode_row(gw, p.O, p.H, &b, o, &h);
    na_row_setup(p, nullptr, b, o, i, L, w);
    const int kvh = h / (p.H / p.Hkv);
    const T *arow = attn + gw * p.KK;
    float acc[NVPL];
#pragma unroll
    for (int c = 0; c < NVPL; ++c) acc[c] = 0.f;
    int n[3], kc[3];
    for (n[0] = w[0].valid_begin; n[0] < w[0].valid_end; ++n[0]) {
        kc[0] = w[0].start + n[0] * w[0].step;
        for (n[1] = w[1].valid_begin; n[1] < w[1].valid_end; ++n[1]) {
            kc[1] = w[1].start + n[1] * w[1].step;
            for (n[2] = w[2].valid_begin; n[2] < w[2].valid_end; ++n[2]) {
                kc[2] = w[2].start + n[2] * w[2].step;
                const float a = na_f(arow[(n[0] * p.K[1] + n[1]) * p.K[2] + n[2]]);
                na_axpy_row<NVPL>(acc, a, v + (na_tok(b, kc, p.X) * p.Hkv + kvh) * p.Dv, p.Dv, lane);
            }
        }
    }
    na_store_row<NVPL>(out + gw * p.Dv, acc, p.Dv, lane, 1.f);
}

/* ------------------------------------------- split QK backward: dq (+drpb)
 * Row = query token (full res) and head; dq = scale * sum_n dlogits_n k_n. */
template <typename T, int NPL>
NA_DEV void na_qk_bwd_dq_simple(const na_params &p, const T *k, const T *dlogits, T *dq, float *drpb,
                                long long gw, int lane) {
    const long long rows = (long long)p.B * p.X[0] * p.X[1] * p.X[2] * p.H;
    if (gw >= rows) return;
    int b, i[3], h, o[3], read = 1;
    na_decode_row(gw, p.X, p.H, &b, i, &h);
    float acc[NPL];
#pragma unroll
    for (int c = 0; c < NPL; ++c) acc[c] = 0.f;
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        o[x] = i[x] / p.os[x];
        if (i[x] % p.os[x]) read = 0;
    }
    if (read) {
        na_window w[3];
#pragma unroll
        for (int x = 0; x < 3; ++x) w[x] = na_window_of(p.X[x], p.K[x], p.dil[x], p.gs[x], p.causal[x], i[x]);
        const int kvh = h / (p.H / p.Hkv), R = na_rpb_size(p);
        const T *grow = dlogits + (na_tok(b, o, p.O) * p.H + h) * p.KK;
        int n[3], kc[3];
        for (n[0] = w[0].valid_begin; n[0] < w[0].valid_end; ++n[0]) {
            kc[0] = w[0].start + n[0] * w[0].step;
            for (n[1] = w[1].valid_begin; n[1] < w[1].valid_end; ++n[1]) {
                kc[1] = w[1].start + n[1] * w[1].step;
                for (n[2] = w[2].valid_begin; n[2] < w[2].valid_end; ++n[2]) {
                    kc[2] = w[2].start + n[2] * w[2].step;
                    const float g = na_f(grow[(n[0] * p.K[1] + n[1]) * p.K[2] + n[2]]);
                    na_axpy_row<NPL>(acc, g, k + (na_tok(b, kc, p.X) * p.Hkv + kvh) * p.D, p.D, lane);
                    if (drpb && lane == 0) atomicAdd(drpb + (long long)h * R + na_rpb_flat(p, w, i, n), g);
                }
            }
        }
    }
    na_store_row<NPL>(dq + gw * p.D, acc, p.D, lane, p.scale);
}

/* ------------------------------------------- split QK backward: dk (gather) */
template <typename T, int NPL>
NA_DEV void na_qk_bwd_dk_simple(const na_params &p, const T *q, const T *dlogits, T *dk, long long gw,
                                int lane) {
    const long long rows = (long long)p.B * p.X[0] * p.X[1] * p.X[2] * p.Hkv;
    if (gw >= rows) return;
    int b, j[3], kvh;
    na_decode_row(gw, p.X, p.Hkv, &b, j, &kvh);
    float acc[NPL];
#pragma unroll
    for (int c = 0; c < NPL; ++c) acc[c] = 0.f;
    const int G = p.H / p.Hkv;
    na_for_each_reader(p, p.X, j, [&](const int o[3], const int i[3], const na_window w[3], const int n[3]) {
        const long long qt = na_tok(b, i, p.X), ot = na_tok(b, o, p.O);
        const int slot = (n[0] * p.K[1] + n[1]) * p.K[2] + n[2];
        for (int g = 0; g < G; ++g) {
            const int h = kvh * G + g;
            const float gr = na_f(dlogits[(ot * p.H + h) * p.KK + slot]);
            na_axpy_row<NPL>(acc, gr, q + (qt * p.H + h) * p.D, p.D, lane);
        }
    });
    na_store_row<NPL>(dk + gw * p.D, acc, p.D, lane, p.scale);
}

/* ------------------------------------------- split AV backward: dattn */
template <typename T, int NVPL>
NA_DEV void na_av_bwd_dattn_simple(const na_params &p, const T *v, const T *dout, T *dattn, long long gw,
                                   int lane) {
    const long long rows = (long long)p.B * p.O[0] * p.O[1] * p.O[2] * p.H;
    if (gw >= rows) return;
    int b, o[3], h, i[3], L[3];
    na_window w[3];
    na_decode_row(gw, p.O, p.H, &b, o, &h);
    na_row_setup(p, nullptr, b, o, i, L, w);
    const int kvh = h / (p.H / p.Hkv);
    float dor[NVPL];
    na_load_row<NVPL>(dor, dout + gw * p.Dv, p.Dv, lane, 1.f);
    T *grow = dattn + gw * p.KK;
    int n[3], kc[3], slot = 0;
    for (n[0] = 0; n[0] < p.K[0]; ++n[0])
        for (n[1] = 0; n[1] < p.K[1]; ++n[1])
            for (n[2] = 0; n[2] < p.K[2]; ++n[2], ++slot) {
                int valid = 1;
#pragma unroll
                for (int x = 0; x < 3; ++x) {
                    kc[x] = w[x].start + n[x] * w[x].step;
                    if (n[x] < w[x].valid_begin || n[x] >= w[x].valid_end) valid = 0;
                }
                float s = 0.f;
                if (valid) s = na_dot_row<NVPL>(dor, v + (na_tok(b, kc, p.X) * p.Hkv + kvh) * p.Dv, p.Dv, lane);
                if (lane == 0) grow[slot] = na_cast<T>(s);
            }
}

/* ------------------------------------------- split AV backward: dv (gather) */
template <typename T, int NVPL>
NA_DEV void na_av_bwd_dv_simple(const na_params &p, const T *attn, const T *dout, T *dv, long long gw,
                                int lane) {
    const long long rows = (long long)p.B * p.X[0] * p.X[1] * p.X[2] * p.Hkv;
    if (gw >= rows) return;
    int b, j[3], kvh;
    na_decode_row(gw, p.X, p.Hkv, &b, j, &kvh);
    float acc[NVPL];
#pragma unroll
    for (int c = 0; c < NVPL; ++c) acc[c] = 0.f;
    const int G = p.H / p.Hkv;
    na_for_each_reader(p, p.X, j, [&](const int o[3], const int i[3], const na_window w[3], const int n[3]) {
        const long long ot = na_tok(b, o, p.O);
        const int slot = (n[0] * p.K[1] + n[1]) * p.K[2] + n[2];
        for (int g = 0; g < G; ++g) {
            const long long orow = ot * p.H + kvh * G + g;
            na_axpy_row<NVPL>(acc, na_f(attn[orow * p.KK + slot]), dout + orow * p.Dv, p.Dv, lane);
        }
    });
    na_store_row<NVPL>(dv + gw * p.Dv, acc, p.Dv, lane, 1.f);
}

#endif /* NATTEN_CUDA_SIMPLE_CUH */
