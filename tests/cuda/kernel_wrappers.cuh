/*
 * kernel_wrappers.cuh -- one __global__ wrapper per tiled kernel entry of
 * src/cuda (tensor-core and tiled f32, forward and backward), shared by the
 * nvcc harness (test_kernels.cu) and benchmarks/cuda/bwd_bench.cu.  Include
 * after the kernel headers.  Also the CUDA-call check (CK) and the
 * warp-per-row indices (GW, LANE) both use.
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

template <typename T, int HD, int A, int B_, int C, int D, int E, int F>
__global__ void k_fwd_tc(const int *pa, const T *q, const T *k, const T *v, T *o, float *lse) {
    na_fwd_tc_entry<T, HD, A, B_, C, D, E, F>(pa, q, k, v, o, lse);
}

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

#endif /* NATTEN_CUDA_KERNEL_WRAPPERS_CUH */
