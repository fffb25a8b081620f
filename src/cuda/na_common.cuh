/*
 * na_common.cuh -- shared pieces of the CUDA tier's device code: the problem
 * as the kernels see it (na_params, read from a small int32 array so one
 * compiled kernel serves every shape), dtype conversions, warp reductions.
 *
 * These files are plain CUDA C headers.  natten_mlx/_core/cuda.py pastes them
 * (local #includes stripped) into the `header` of mx.fast.cuda_kernel, which
 * compiles with NVRTC; tests/cuda/*.cu include them and build with nvcc.
 */
#ifndef NATTEN_CUDA_COMMON_CUH
#define NATTEN_CUDA_COMMON_CUH

#ifndef __CUDACC_RTC__
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
#endif

#ifndef NA_DEV
#define NA_DEV __device__ __forceinline__
#endif

#include "window.cuh"

/* Layout of the int32 parameter array (natten_mlx/_core/cuda.py builds it). */
#define NA_P_RANK 0
#define NA_P_B 1
#define NA_P_H 2
#define NA_P_HKV 3
#define NA_P_D 4
#define NA_P_DV 5
#define NA_P_X 6        /* 3 entries: spatial extent (padded max under varlen) */
#define NA_P_K 9        /* 3: kernel size                                      */
#define NA_P_DIL 12     /* 3: dilation                                         */
#define NA_P_GS 15      /* 3: GNA stride                                       */
#define NA_P_OS 18      /* 3: output stride                                    */
#define NA_P_CAUSAL 21  /* 3                                                   */
#define NA_P_O 24       /* 3: output extent ceil(X/os)                         */
#define NA_P_SCALE 27   /* float bits                                          */
#define NA_P_NEXTRA 28
#define NA_P_HAS_RPB 29
#define NA_P_HAS_VARLEN 30
#define NA_P_KK 31
#define NA_P_COUNT 32
/* Axes beyond the rank are filled with extent 1, kernel 1, dilation 1,
 * strides 1, not causal, so every kernel loops over three axes. */

struct na_params {
    int rank, B, H, Hkv, D, Dv;
    int X[3], K[3], dil[3], gs[3], os[3], causal[3], O[3];
    float scale;
    int n_extra, has_rpb, has_varlen, KK;
};

NA_DEV na_params na_load_params(const int *a) {
    na_params p;
    p.rank = a[NA_P_RANK];
    p.B = a[NA_P_B];
    p.H = a[NA_P_H];
    p.Hkv = a[NA_P_HKV];
    p.D = a[NA_P_D];
    p.Dv = a[NA_P_DV];
#pragma unroll
    for (int x = 0; x < 3; ++x) {
        p.X[x] = a[NA_P_X + x];
        p.K[x] = a[NA_P_K + x];
        p.dil[x] = a[NA_P_DIL + x];
        p.gs[x] = a[NA_P_GS + x];
        p.os[x] = a[NA_P_OS + x];
        p.causal[x] = a[NA_P_CAUSAL + x];
        p.O[x] = a[NA_P_O + x];
    }
    p.scale = __int_as_float(a[NA_P_SCALE]);
    p.n_extra = a[NA_P_NEXTRA];
    p.has_rpb = a[NA_P_HAS_RPB];
    p.has_varlen = a[NA_P_HAS_VARLEN];
    p.KK = a[NA_P_KK];
    return p;
}

/* Extent of axis x for sample b (varlen: the sample's own extent). */
NA_DEV int na_extent(const na_params &p, const int *varlen, int b, int x) {
    return (p.has_varlen && x < p.rank) ? varlen[b * p.rank + x] : p.X[x];
}

NA_DEV long long na_tok(int b, const int c[3], const int E[3]) {
    return (((long long)b * E[0] + c[0]) * E[1] + c[1]) * E[2] + c[2];
}

/* Flattened RPB index of slot (n0,n1,n2) for query i: spec 3.9, per axis via na_rpb_index. */
NA_DEV int na_rpb_flat(const na_params &p, const na_window w[3], const int i[3], const int n[3]) {
    int idx = 0;
#pragma unroll
    for (int x = 0; x < 3; ++x) idx = idx * (2 * p.K[x] - 1) + na_rpb_index(w[x], p.K[x], i[x], n[x]);
    return idx;
}
NA_DEV int na_rpb_size(const na_params &p) {
    return (2 * p.K[0] - 1) * (2 * p.K[1] - 1) * (2 * p.K[2] - 1);
}

/* dtype conversions (accumulation is always f32) */
NA_DEV float na_f(float x) { return x; }
NA_DEV float na_f(__half x) { return __half2float(x); }
NA_DEV float na_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> NA_DEV T na_cast(float x);
template <> NA_DEV float na_cast<float>(float x) { return x; }
template <> NA_DEV __half na_cast<__half>(float x) { return __float2half_rn(x); }
template <> NA_DEV __nv_bfloat16 na_cast<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

NA_DEV float na_warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* One row of n channels spread over a warp: lane holds channels lane + 32*j. */
template <int NPL, typename T>
NA_DEV void na_load_row(float (&r)[NPL], const T *src, int n, int lane, float mul) {
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
        const int c = lane + 32 * j;
        r[j] = c < n ? na_f(src[c]) * mul : 0.f;
    }
}
template <int NPL, typename T>
NA_DEV float na_dot_row(const float (&r)[NPL], const T *src, int n, int lane) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
        const int c = lane + 32 * j;
        if (c < n) s += r[j] * na_f(src[c]);
    }
    return na_warp_sum(s);
}
template <int NPL, typename T>
NA_DEV void na_axpy_row(float (&acc)[NPL], float a, const T *src, int n, int lane) {
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
        const int c = lane + 32 * j;
        if (c < n) acc[j] += a * na_f(src[c]);
    }
}
template <int NPL, typename T>
NA_DEV void na_store_row(T *dst, const float (&r)[NPL], int n, int lane, float mul) {
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
        const int c = lane + 32 * j;
        if (c < n) dst[c] = na_cast<T>(r[j] * mul);
    }
}

#endif /* NATTEN_CUDA_COMMON_CUH */
