/*
 * kernel_wrappers.cuh -- one __global__ wrapper per tiled kernel entry of
 * src/cuda (tensor-core and tiled f32, forward and backward), shared by the
 * nvcc harness (test_kernels.cu) and benchmarks/cuda/bwd_bench.cu.  Include
 * after the kernel headers.  Also the CUDA-call check (CK) and the
 * warp-per-row indices (GW, LANE) and the parameter block (na_param_block)
 * both use.
 */
#ifndef NATTEN_CUDA_KERNEL_WRAPPERS_CUH
#define NATTEN_CUDA_KERNEL_WRAPPERS_CUH

#define CK(x)                                                                      \
    do {                                                                           \
        cudaError_t e_ = (x);                                                      \
        if (e_ != cudaSuccess) {                                                   \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

#define GW (((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5)
#define LANE (threadIdx.x & 31)

/* The kernels' int parameter block for a rank-3 problem (unit out stride,
 * outputs the size of the inputs, scale 1/sqrt(D)): the harness's problems and
 * the benchmarks' cases. */
static std::vector<int> na_param_block(int B, const int X[3], int H, int Hkv, int D, const int K[3],
                                       const int dil[3], const int gs[3], const int causal[3]) {
    std::vector<int> a(NA_P_COUNT, 0);
    a[NA_P_RANK] = 3;
    a[NA_P_B] = B;
    a[NA_P_H] = H;
    a[NA_P_HKV] = Hkv;
    a[NA_P_D] = a[NA_P_DV] = D;
    for (int x = 0; x < 3; ++x) {
        a[NA_P_X + x] = X[x];
        a[NA_P_K + x] = K[x];
        a[NA_P_DIL + x] = dil[x];
        a[NA_P_GS + x] = gs[x];
        a[NA_P_OS + x] = 1;
        a[NA_P_CAUSAL + x] = causal[x];
        a[NA_P_O + x] = X[x];
    }
    float sc = 1.f / std::sqrt((float)D);
    memcpy(&a[NA_P_SCALE], &sc, 4);
    a[NA_P_KK] = K[0] * K[1] * K[2];
    return a;
}

template <typename T, int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_fwd_tc(const int *pa, const T *q, const T *k, const T *v, T *o, float *lse) {
    na_fwd_tc_entry<T, HD, A, B_, C, D, E, F>(pa, q, k, v, o, lse);
}

#ifdef NATTEN_CUDA_FWD_WGMMA_CUH
/* 256 threads, one CTA per SM (~180 registers: O and S accumulators) */
template <typename T, int HD, int A, int B_, int C, int D, int E, int F, bool PIPE = true,
          int SYNC = NA_WG_SYNC_DEFAULT(B_, C, E, F), int ST = 3>
__global__ void __launch_bounds__(256, 1) k_fwd_wgmma(const int *pa, const T *q, const T *k, const T *v, T *o,
                                                      float *lse) {
    na_fwd_wgmma_entry<T, HD, A, B_, C, D, E, F, PIPE, SYNC, ST>(pa, q, k, v, o, lse);
}
#endif

template <int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_fwd_f32(const int *pa, const float *q, const float *k, const float *v, float *o, float *lse) {
    na_fwd_f32_entry<HD, A, B_, C, D, E, F>(pa, q, k, v, o, lse);
}
template <int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_bwd_dq_f32(const int *pa, const float *q, const float *k, const float *v, const float *o,
                             const float *lse, const float *dout, const float *dlse, float *dq, float *delta) {
    na_bwd_dq_f32_entry<HD, A, B_, C, D, E, F>(pa, q, k, v, o, lse, dout, dlse, dq, delta);
}
template <int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_bwd_dkdv_f32(const int *pa, const float *q, const float *k, const float *v, const float *lse,
                               const float *dout, const float *delta, float *dk, float *dv) {
    na_bwd_dkdv_f32_entry<HD, A, B_, C, D, E, F>(pa, q, k, v, lse, dout, delta, dk, dv);
}
template <typename T, int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_bwd_dq_tc(const int *pa, const T *q, const T *k, const T *v, const T *dout, const float *lse,
                            const float *delta, T *dq) {
    na_bwd_dq_tc_entry<T, HD, A, B_, C, D, E, F>(pa, q, k, v, dout, lse, delta, dq);
}
template <typename T, int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_bwd_dkdv_tc(const int *pa, const T *q, const T *k, const T *v, const T *dout,
                              const float *lse, const float *delta, T *dk, T *dv) {
    na_bwd_dkdv_tc_entry<T, HD, A, B_, C, D, E, F>(pa, q, k, v, dout, lse, delta, dk, dv);
}
template <typename T, int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_bwd_tc(const int *pa, const T *q, const T *k, const T *v, const T *dout, const float *lse,
                         const float *delta, T *dq, T *dk, T *dv) {
    na_bwd_tc_entry<T, HD, A, B_, C, D, E, F>(pa, q, k, v, dout, lse, delta, dq, dk, dv);
}
/* the one-launch backward of small problems: delta from out and dlse */
template <typename T, int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_bwd_tc_fd(const int *pa, const T *q, const T *k, const T *v, const T *dout, const float *lse,
                            const T *o, const float *dlse, T *dq, T *dk, T *dv) {
    na_bwd_tc_entry<T, HD, A, B_, C, D, E, F, true>(pa, q, k, v, dout, lse, nullptr, dq, dk, dv, o, dlse);
}
template <int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_bwd_f32_fd(const int *pa, const float *q, const float *k, const float *v, const float *o,
                             const float *lse, const float *dout, const float *dlse, float *dq, float *dk, float *dv) {
    na_bwd_f32_fd_entry<HD, A, B_, C, D, E, F>(pa, q, k, v, o, lse, dout, dlse, dq, dk, dv);
}

#ifdef NATTEN_CUDA_BWD_WGMMA_CUH
/* 256 threads, one CTA per SM (dK and dV accumulators: 128 f32 a thread) */
template <typename T, int HD, int A, int B_, int C, int D, int E, int F, int ST = 3>
__global__ void __launch_bounds__(256, 1) k_bwd_dkdv_wgmma(const int *pa, const T *q, const T *k, const T *v,
                                                           const T *dout, const float *lse, const float *delta,
                                                           T *dk, T *dv) {
    na_bwd_dkdv_wgmma_entry<T, HD, A, B_, C, D, E, F, ST>(pa, q, k, v, dout, lse, delta, dk, dv);
}
template <typename T, int HD, int A, int B_, int C, int D, int E, int F, int ST = 3>
__global__ void __launch_bounds__(256, 1) k_bwd_dq_wgmma(const int *pa, const T *q, const T *k, const T *v,
                                                         const T *dout, const float *lse, const float *delta,
                                                         T *dq) {
    na_bwd_dq_wgmma_entry<T, HD, A, B_, C, D, E, F, ST>(pa, q, k, v, dout, lse, delta, dq);
}
#endif

#endif /* NATTEN_CUDA_KERNEL_WRAPPERS_CUH */
