/*
 * test_kernels.cu -- nvcc harness for the CUDA tier's device code (src/cuda).
 *
 * Builds every kernel body for f32/f16/bf16 (so `make cuda-compile` checks the
 * sources compile without a GPU), and, when a GPU is present, checks:
 *   1. na_window_of (window.cuh) == natten_window_of (src/core/window.h) on a
 *      sweep of (L, K, d, s, causal, i): the mirror is exact;
 *   2. na_queries_of_key == brute force over all queries (inverse rule);
 *   3. the simple fused forward (f32), the tiled f32 forward and the
 *      tensor-core forward (bf16) against a double-precision host brute
 *      force built on window.h;
 *   4. the tensor-core backward (bf16, the fused dq + dk/dv launch) and the
 *      tiled f32 backward (dq pass, dk/dv pass) against a double-precision
 *      host backward, over 1-D/2-D/3-D tile shapes, dilation, causal per
 *      axis, GNA stride, GQA and head dims 32/64/128; the wgmma backward
 *      passes (na_bwd_wgmma.cuh, f16/bf16, HD 64/128) likewise, each run
 *      twice (bitwise equal).
 * The Python tests (tests/python/test_cuda*.py) cover every op through MLX.
 * Exit status 0 = pass (or no GPU), 1 = failure.
 */
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../src/cuda/na_simple.cuh"
#include "../../src/cuda/na_fwd_tc.cuh"
#include "../../src/cuda/na_fwd_wgmma.cuh"
#include "../../src/cuda/na_fwd_f32.cuh"
#include "../../src/cuda/na_bwd_tc.cuh"
#include "../../src/cuda/na_bwd_f32.cuh"
#include "../../src/cuda/na_bwd_wgmma.cuh"
#include "../../src/core/window.h"
#include "kernel_wrappers.cuh"


/* ---- one __global__ wrapper per kernel body (instantiated below per dtype) */
template <typename T, int NPL, int NVPL>
__global__ void k_fwd(const int *pa, const T *q, const T *k, const T *v, const T *rpb, const T *ek,
                      const T *ev, const int *vl, T *o, float *lse) {
    na_fwd_simple<T, NPL, NVPL>(na_load_params(pa), q, k, v, rpb, ek, ev, vl, o, lse, GW, LANE);
}
template <typename T, int NPL, int NVPL>
__global__ void k_bwd_dq(const int *pa, const T *q, const T *k, const T *v, const T *rpb, const T *ek,
                         const T *ev, const int *vl, const T *o, const float *lse, const T *dout,
                         const float *dlse, T *dq, float *delta, float *drpb) {
    na_bwd_dq_simple<T, NPL, NVPL>(na_load_params(pa), q, k, v, rpb, ek, ev, vl, o, lse, dout, dlse, dq,
                                   delta, drpb, GW, LANE);
}
template <typename T, int NPL, int NVPL>
__global__ void k_bwd_dkdv(const int *pa, const T *q, const T *k, const T *v, const T *rpb, const int *vl,
                           const float *lse, const T *dout, const float *delta, T *dk, T *dv) {
    na_bwd_dkdv_simple<T, NPL, NVPL>(na_load_params(pa), q, k, v, rpb, vl, lse, dout, delta, dk, dv, GW, LANE);
}
template <typename T, int NPL, int NVPL>
__global__ void k_bwd_extra(const int *pa, const T *q, const T *ek, const T *ev, const int *vl,
                            const float *lse, const T *dout, const float *delta, float *dek, float *dev) {
    na_bwd_extra_simple<T, NPL, NVPL, 64>(na_load_params(pa), q, ek, ev, vl, lse, dout, delta, dek, dev, GW,
                                          LANE);
}
template <typename T, int NVPL>
__global__ void k_delta(const int *pa, const T *o, const T *dout, const float *dlse, float *delta) {
    na_delta_simple<T, NVPL>(na_load_params(pa), o, dout, dlse, delta, GW, LANE);
}
template <typename T, int NPL>
__global__ void k_qk(const int *pa, const T *q, const T *k, const T *rpb, T *lg) {
    na_qk_simple<T, NPL>(na_load_params(pa), q, k, rpb, lg, GW, LANE);
}
template <typename T, int NVPL>
__global__ void k_av(const int *pa, const T *a, const T *v, T *o) {
    na_av_simple<T, NVPL>(na_load_params(pa), a, v, o, GW, LANE);
}
template <typename T, int NPL>
__global__ void k_qk_dq(const int *pa, const T *k, const T *g, T *dq, float *drpb) {
    na_qk_bwd_dq_simple<T, NPL>(na_load_params(pa), k, g, dq, drpb, GW, LANE);
}
template <typename T, int NPL>
__global__ void k_qk_dk(const int *pa, const T *q, const T *g, T *dk) {
    na_qk_bwd_dk_simple<T, NPL>(na_load_params(pa), q, g, dk, GW, LANE);
}
template <typename T, int NVPL>
__global__ void k_av_da(const int *pa, const T *v, const T *g, T *da) {
    na_av_bwd_dattn_simple<T, NVPL>(na_load_params(pa), v, g, da, GW, LANE);
}
template <typename T, int NVPL>
__global__ void k_av_dv(const int *pa, const T *a, const T *g, T *dv) {
    na_av_bwd_dv_simple<T, NVPL>(na_load_params(pa), a, g, dv, GW, LANE);
}
template <typename T, int HD, int A, int B_, int C, int D, int E, int F, int NW>
__global__ void k_fwd_tc_nw(const int *pa, const T *q, const T *k, const T *v, T *o, float *lse) {
    na_fwd_tc_entry<T, HD, A, B_, C, D, E, F, NW>(pa, q, k, v, o, lse);
}
template __global__ void k_bwd_tc<__nv_bfloat16, 128, 8, 8, 1, 8, 8, 1>(const int *, const __nv_bfloat16 *,
                                                                       const __nv_bfloat16 *,
                                                                       const __nv_bfloat16 *,
                                                                       const __nv_bfloat16 *, const float *,
                                                                       const float *, __nv_bfloat16 *,
                                                                       __nv_bfloat16 *, __nv_bfloat16 *);
#define INST_BWD_TC(T, HD, A, B_, C, D, E, F)                                                              \
    template __global__ void k_bwd_dq_tc<T, HD, A, B_, C, D, E, F>(const int *, const T *, const T *,     \
                                                                 const T *, const T *, const float *,     \
                                                                 const float *, T *);                     \
    template __global__ void k_bwd_dkdv_tc<T, HD, A, B_, C, D, E, F>(const int *, const T *, const T *,   \
                                                                   const T *, const T *, const float *,   \
                                                                   const float *, T *, T *);
INST_BWD_TC(__nv_bfloat16, 128, 8, 8, 1, 8, 8, 1)
INST_BWD_TC(__half, 64, 64, 1, 1, 64, 1, 1)
INST_BWD_TC(__nv_bfloat16, 32, 4, 4, 4, 4, 4, 4)

#define INST_SIMPLE(T)                                                    \
    template __global__ void k_fwd<T, 1, 1>(const int *, const T *, const T *, const T *, const T *, \
                                            const T *, const T *, const int *, T *, float *);        \
    template __global__ void k_bwd_dq<T, 1, 1>(const int *, const T *, const T *, const T *, const T *, \
                                               const T *, const T *, const int *, const T *, const float *, \
                                               const T *, const float *, T *, float *, float *);      \
    template __global__ void k_bwd_dkdv<T, 1, 1>(const int *, const T *, const T *, const T *, const T *, \
                                                 const int *, const float *, const T *, const float *, T *, T *); \
    template __global__ void k_bwd_extra<T, 1, 1>(const int *, const T *, const T *, const T *, const int *, \
                                                  const float *, const T *, const float *, float *, float *); \
    template __global__ void k_delta<T, 2>(const int *, const T *, const T *, const float *, float *); \
    template __global__ void k_qk<T, 1>(const int *, const T *, const T *, const T *, T *);        \
    template __global__ void k_av<T, 1>(const int *, const T *, const T *, T *);                     \
    template __global__ void k_qk_dq<T, 1>(const int *, const T *, const T *, T *, float *);        \
    template __global__ void k_qk_dk<T, 1>(const int *, const T *, const T *, T *);                 \
    template __global__ void k_av_da<T, 1>(const int *, const T *, const T *, T *);                 \
    template __global__ void k_av_dv<T, 1>(const int *, const T *, const T *, T *);
INST_SIMPLE(float)
INST_SIMPLE(__half)
INST_SIMPLE(__nv_bfloat16)
template __global__ void k_fwd_tc<__nv_bfloat16, 128, 8, 16, 1, 8, 8, 1>(const int *, const __nv_bfloat16 *,
                                                                        const __nv_bfloat16 *,
                                                                        const __nv_bfloat16 *, __nv_bfloat16 *,
                                                                        float *);
template __global__ void k_fwd_tc<__half, 64, 8, 8, 1, 8, 8, 1>(const int *, const __half *, const __half *,
                                                                const __half *, __half *, float *);
template __global__ void k_fwd_tc<__nv_bfloat16, 32, 64, 1, 1, 64, 1, 1>(const int *, const __nv_bfloat16 *,
                                                                         const __nv_bfloat16 *,
                                                                         const __nv_bfloat16 *, __nv_bfloat16 *,
                                                                         float *);
template __global__ void k_fwd_tc<__nv_bfloat16, 128, 4, 4, 4, 4, 4, 4>(const int *, const __nv_bfloat16 *,
                                                                        const __nv_bfloat16 *,
                                                                        const __nv_bfloat16 *, __nv_bfloat16 *,
                                                                        float *);

template __global__ void k_fwd_f32<32, 8, 8, 1, 8, 8, 1>(const int *, const float *, const float *, const float *,
                                                        float *, float *);
template __global__ void k_fwd_f32<64, 4, 4, 4, 4, 4, 4>(const int *, const float *, const float *, const float *,
                                                        float *, float *);
template __global__ void k_bwd_dq_f32<32, 8, 8, 1, 8, 8, 1>(const int *, const float *, const float *,
                                                           const float *, const float *, const float *,
                                                           const float *, const float *, float *, float *);
template __global__ void k_bwd_dq_f32<64, 64, 1, 1, 64, 1, 1>(const int *, const float *, const float *,
                                                             const float *, const float *, const float *,
                                                             const float *, const float *, float *, float *);
template __global__ void k_fwd_tc_nw<__nv_bfloat16, 128, 8, 16, 1, 8, 8, 1, 8>(const int *, const __nv_bfloat16 *,
                                                                              const __nv_bfloat16 *,
                                                                              const __nv_bfloat16 *,
                                                                              __nv_bfloat16 *, float *);

/* ---- 1 + 2: window mirror and inverse rule */
__global__ void k_windows(const int *cases, int n, int *res) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const int *c = cases + 6 * t;
    const na_window w = na_window_of(c[0], c[1], c[2], c[3], c[4], c[5]);
    int lo = 0, hi = -1;
    na_queries_of_key(c[0], c[1], c[2], c[3], c[4], c[5], &lo, &hi);
    res[6 * t + 0] = w.start;
    res[6 * t + 1] = w.step;
    res[6 * t + 2] = w.valid_begin;
    res[6 * t + 3] = w.valid_end;
    res[6 * t + 4] = lo;
    res[6 * t + 5] = hi;
}

static int test_windows() {
    std::vector<int> cases;
    for (int L = 1; L <= 23; ++L)
        for (int K = 1; K <= L; ++K)
            for (int d = 1; d * K <= L; ++d)
                for (int s = 1; s <= K; ++s)
                    for (int c = 0; c < 2; ++c)
                        for (int i = 0; i < L; ++i) cases.insert(cases.end(), {L, K, d, s, c, i});
    const int n = (int)cases.size() / 6;
    int *dc, *dr;
    CK(cudaMalloc(&dc, cases.size() * 4));
    CK(cudaMalloc(&dr, cases.size() * 4));
    CK(cudaMemcpy(dc, cases.data(), cases.size() * 4, cudaMemcpyHostToDevice));
    k_windows<<<(n + 127) / 128, 128>>>(dc, n, dr);
    std::vector<int> res(cases.size());
    CK(cudaMemcpy(res.data(), dr, res.size() * 4, cudaMemcpyDeviceToHost));
    cudaFree(dc);
    cudaFree(dr);
    int bad = 0;
    for (int t = 0; t < n && bad < 10; ++t) {
        const int *c = &cases[6 * t];
        const natten_window w = natten_window_of(c[0], c[1], c[2], c[3], c[4], c[5]);
        const int *r = &res[6 * t];
        if (w.start != r[0] || w.step != r[1] || w.valid_begin != r[2] || w.valid_end != r[3]) {
            printf("window mismatch L=%d K=%d d=%d s=%d c=%d i=%d\n", c[0], c[1], c[2], c[3], c[4], c[5]);
            ++bad;
        }
        /* brute-force inverse: queries in key j's group whose window holds j */
        const int L = c[0], K = c[1], d = c[2], s = c[3], cz = c[4], j = c[5];
        int lo = 1 << 30, hi = -1, cnt = 0;
        for (int i = j % d; i < L; i += d) {
            const natten_window wi = natten_window_of(L, K, d, s, cz, i);
            int in = 0;
            for (int kk = (int)wi.valid_begin; kk < wi.valid_end; ++kk) in |= (wi.start + kk * wi.step == j);
            if (in) {
                const int p = i / d;
                lo = p < lo ? p : lo;
                hi = p > hi ? p : hi;
                ++cnt;
            }
        }
        if (cnt == 0) { lo = r[4]; hi = lo - 1; }
        if ((cnt && (lo != r[4] || hi != r[5])) || (!cnt && r[5] >= r[4]) || (cnt && cnt != hi - lo + 1)) {
            printf("inverse mismatch L=%d K=%d d=%d s=%d c=%d j=%d: got [%d,%d] want [%d,%d] (%d)\n", L, K, d, s,
                   cz, j, r[4], r[5], lo, hi, cnt);
            ++bad;
        }
    }
    printf("windows: %d cases, %s\n", n, bad ? "FAIL" : "ok");
    return bad != 0;
}

/* ---- 3: forward vs host brute force (rank 2, B=2, H=4, Hkv=2) */
static float bf16r(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

struct Prob {
    int X[3], K[3], dil[3], gs[3], causal[3];
    int H, Hkv, D, B;
};

static void host_fwd(const Prob &P, const std::vector<float> &q, const std::vector<float> &k,
                     const std::vector<float> &v, std::vector<double> &out, std::vector<double> &lse) {
    const int ntok = P.X[0] * P.X[1] * P.X[2];
    const double scale = 1.0 / std::sqrt((double)P.D);
    out.assign((size_t)P.B * ntok * P.H * P.D, 0.0);
    lse.assign((size_t)P.B * ntok * P.H, 0.0);
    /* OpenMP where built with -Xcompiler -fopenmp (gpu_suite.sh, make): the double
     * references dominated the run (> 470 s of one core on H100's host) */
#pragma omp parallel for collapse(2) schedule(dynamic, 16)
    for (int b = 0; b < P.B; ++b)
        for (int t = 0; t < ntok; ++t)
            for (int h = 0; h < P.H; ++h) {
                const int i[3] = {t / (P.X[1] * P.X[2]), (t / P.X[2]) % P.X[1], t % P.X[2]};
                natten_window w[3];
                for (int x = 0; x < 3; ++x) w[x] = natten_window_of(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], i[x]);
                std::vector<double> s;
                std::vector<int> keys;
                for (int a = (int)w[0].valid_begin; a < w[0].valid_end; ++a)
                    for (int c = (int)w[1].valid_begin; c < w[1].valid_end; ++c)
                        for (int e = (int)w[2].valid_begin; e < w[2].valid_end; ++e) {
                            const int kp[3] = {(int)(w[0].start + a * w[0].step), (int)(w[1].start + c * w[1].step),
                                               (int)(w[2].start + e * w[2].step)};
                            const int kt = (kp[0] * P.X[1] + kp[1]) * P.X[2] + kp[2];
                            const size_t ko = (((size_t)b * ntok + kt) * P.Hkv + h / (P.H / P.Hkv)) * P.D;
                            const size_t qo = (((size_t)b * ntok + t) * P.H + h) * P.D;
                            double dot = 0;
                            for (int dd = 0; dd < P.D; ++dd) dot += (double)q[qo + dd] * k[ko + dd];
                            s.push_back(dot * scale);
                            keys.push_back((int)ko);
                        }
                double mx = -1e300, sum = 0;
                for (double x : s) mx = x > mx ? x : mx;
                for (double x : s) sum += std::exp(x - mx);
                const size_t oo = (((size_t)b * ntok + t) * P.H + h);
                lse[oo] = mx + std::log(sum);
                for (size_t n = 0; n < s.size(); ++n) {
                    const double pr = std::exp(s[n] - lse[oo]);
                    for (int dd = 0; dd < P.D; ++dd) out[oo * P.D + dd] += pr * v[keys[n] + dd];
                }
            }
}

static std::vector<int> make_params(const Prob &P) {
    return na_param_block(P.B, P.X, P.H, P.Hkv, P.D, P.K, P.dil, P.gs, P.causal);
}

template <typename T> static T *upload(const std::vector<float> &h) {
    std::vector<T> t(h.size());
    for (size_t i = 0; i < h.size(); ++i) t[i] = (T)h[i];
    T *d;
    CK(cudaMalloc(&d, t.size() * sizeof(T)));
    CK(cudaMemcpy(d, t.data(), t.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

enum { SIMPLE_F32, TC_BF16, TILE_F32 };
static int test_fwd(const Prob &P, int mode) {
    const bool tc = mode == TC_BF16;
    const int ntok = P.X[0] * P.X[1] * P.X[2];
    const size_t nq = (size_t)P.B * ntok * P.H * P.D, nk = (size_t)P.B * ntok * P.Hkv * P.D;
    std::vector<float> q(nq), k(nk), v(nk);
    srand(7);
    for (auto &x : q) x = bf16r((float)rand() / RAND_MAX * 2.f - 1.f);
    for (auto &x : k) x = bf16r((float)rand() / RAND_MAX * 2.f - 1.f);
    for (auto &x : v) x = bf16r((float)rand() / RAND_MAX * 2.f - 1.f);
    std::vector<double> ro, rl;
    host_fwd(P, q, k, v, ro, rl);
    std::vector<int> pa = make_params(P);
    int *dp;
    CK(cudaMalloc(&dp, pa.size() * 4));
    CK(cudaMemcpy(dp, pa.data(), pa.size() * 4, cudaMemcpyHostToDevice));
    float *dl;
    CK(cudaMalloc(&dl, rl.size() * 4));
    std::vector<float> go(nq), gl(rl.size());
    const long long rows = (long long)P.B * ntok * P.H;
    if (!tc) {
        float *dq = upload<float>(q), *dk = upload<float>(k), *dv = upload<float>(v), *dout;
        CK(cudaMalloc(&dout, nq * 4));
        if (mode == SIMPLE_F32) {
            k_fwd<float, 1, 1><<<(unsigned)((rows * 32 + 127) / 128), 128>>>(dp, dq, dk, dv, dq, dq, dq, dp, dout, dl);
        } else { /* 8x8 query and key boxes over axes 0, 1 */
            auto kern = k_fwd_f32<32, 8, 8, 1, 8, 8, 1>;
            int tiles = 1;
            for (int x = 0; x < 3; ++x) {
                const int tq = x < 2 ? 8 : 1;
                tiles *= P.dil[x] * (((P.X[x] + P.dil[x] - 1) / P.dil[x] + tq - 1) / tq);
            }
            const int smem = (64 + 4 * 64) * (32 + 4) * 4 + 64 * 68 * 4 + 8 * 64;
            CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            kern<<<dim3(tiles, P.B * P.H), 128, smem>>>(dp, dq, dk, dv, dout, dl);
        }
        CK(cudaGetLastError());
        CK(cudaMemcpy(go.data(), dout, nq * 4, cudaMemcpyDeviceToHost));
        cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout);
    } else {
        typedef __nv_bfloat16 B16;
        B16 *dq = upload<B16>(q), *dk = upload<B16>(k), *dv = upload<B16>(v), *dout;
        CK(cudaMalloc(&dout, nq * 2));
        auto kern = k_fwd_tc<B16, 32, 64, 1, 1, 64, 1, 1>;
        int tiles = 1;
        for (int x = 0; x < 3; ++x) {
            const int tq = x == 0 ? 64 : 1;
            tiles *= P.dil[x] * (((P.X[x] + P.dil[x] - 1) / P.dil[x] + tq - 1) / tq);
        }
        const int smem = NA_FWD_TC_SMEM(64, 32);
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        kern<<<dim3(tiles, P.B * P.H), 128, smem>>>(dp, dq, dk, dv, dout, dl);
        CK(cudaGetLastError());
        std::vector<B16> h(nq);
        CK(cudaMemcpy(h.data(), dout, nq * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < nq; ++i) go[i] = __bfloat162float(h[i]);
        cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout);
    }
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(gl.data(), dl, gl.size() * 4, cudaMemcpyDeviceToHost));
    cudaFree(dp);
    cudaFree(dl);
    double eo = 0, el = 0;
    for (size_t i = 0; i < nq; ++i) eo = fmax(eo, fabs(go[i] - ro[i]));
    for (size_t i = 0; i < gl.size(); ++i) el = fmax(el, fabs(gl[i] - rl[i]));
    const double tol = tc ? 2e-2 : 1e-5;
    const int bad = !(eo <= tol && el <= tol);
    printf("fwd %s X=%dx%dx%d K=%dx%dx%d dil=%dx%dx%d causal=%d%d%d: max|dout|=%.2e max|dlse|=%.2e %s\n",
           tc ? "tc-bf16" : mode == TILE_F32 ? "tile-f32" : "simple-f32", P.X[0], P.X[1], P.X[2], P.K[0], P.K[1], P.K[2], P.dil[0], P.dil[1],
           P.dil[2], P.causal[0], P.causal[1], P.causal[2], eo, el, bad ? "FAIL" : "ok");
    return bad;
}

/* One tensor-core forward instantiation (query box A x B_ x C, key box
 * D x E x F, NW warps, so 16 or 32 query rows per warp) against the host brute
 * force: output poisoned first (every element must be written), errors as
 * max |diff| on O(1) data. */
template <typename T, int HD, int A, int B_, int C, int D, int E, int F, int NW, int WG = 0>
static int test_fwd_tc(const Prob &P) {
    const int ntok = P.X[0] * P.X[1] * P.X[2];
    const size_t nq = (size_t)P.B * ntok * P.H * HD, nk = (size_t)P.B * ntok * P.Hkv * HD;
    std::vector<float> q(nq), k(nk), v(nk);
    srand(11 + P.X[0] + P.K[1]);
    for (auto &x : q) x = bf16r((float)rand() / RAND_MAX * 2.f - 1.f);
    for (auto &x : k) x = bf16r((float)rand() / RAND_MAX * 2.f - 1.f);
    for (auto &x : v) x = bf16r((float)rand() / RAND_MAX * 2.f - 1.f);
    std::vector<double> ro, rl;
    host_fwd(P, q, k, v, ro, rl);
    std::vector<int> pa = make_params(P);
    int *dp;
    float *dl;
    CK(cudaMalloc(&dp, pa.size() * 4));
    CK(cudaMemcpy(dp, pa.data(), pa.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&dl, rl.size() * 4));
    CK(cudaMemset(dl, 0xff, rl.size() * 4));
    T *dq = upload<T>(q), *dk = upload<T>(k), *dv = upload<T>(v), *dout;
    CK(cudaMalloc(&dout, nq * 2));
    CK(cudaMemset(dout, 0xff, nq * 2)); /* NaN in f16 and bf16 */
    /* WG 1 / 2: the wgmma forward (na_fwd_wgmma.cuh; 256 threads, NW unused), PIPE on / off */
    void (*kern)(const int *, const T *, const T *, const T *, T *, float *);
    int smem, nthr;
    if constexpr (WG >= 10) { /* WG 10 + 10*(ST-3) + SYNC: the wgmma forward with synchronization SYNC, ST stages */
        kern = k_fwd_wgmma<T, HD, A, B_, C, D, E, F, true, WG % 10, 3 + (WG - 10) / 10>;
        smem = NA_FWD_WGMMA_SMEM_ST(HD, 3 + (WG - 10) / 10);
        nthr = 256;
    } else if constexpr (WG != 0) {
        kern = k_fwd_wgmma<T, HD, A, B_, C, D, E, F, WG == 1>;
        smem = D * E * F == 128 ? NA_FWD_WGMMA128_SMEM(HD) : NA_FWD_WGMMA_SMEM(HD); /* 1-D 128-key tiles */
        nthr = 256;
    } else {
        kern = k_fwd_tc_nw<T, HD, A, B_, C, D, E, F, NW>;
        smem = NA_FWD_TC_SMEM(A * B_ * C, HD);
        nthr = 32 * NW;
    }
    const int tq[3] = {A, B_, C};
    int tiles = 1;
    for (int x = 0; x < 3; ++x) tiles *= P.dil[x] * (((P.X[x] + P.dil[x] - 1) / P.dil[x] + tq[x] - 1) / tq[x]);
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(tiles, P.B * P.H), nthr, smem>>>(dp, dq, dk, dv, dout, dl);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<T> h(nq);
    std::vector<float> gl(rl.size());
    CK(cudaMemcpy(h.data(), dout, nq * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(gl.data(), dl, gl.size() * 4, cudaMemcpyDeviceToHost));
    double eo = 0, el = 0;
    size_t unwritten = 0;
    for (size_t i = 0; i < nq; ++i) {
        const double g = (double)(float)h[i];
        if (!std::isfinite(g)) ++unwritten; else eo = fmax(eo, fabs(g - ro[i]));
    }
    for (size_t i = 0; i < gl.size(); ++i) {
        if (!std::isfinite(gl[i])) ++unwritten; else el = fmax(el, fabs(gl[i] - rl[i]));
    }
    cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout); cudaFree(dp); cudaFree(dl);
    const int bad = !(eo <= 2e-2 && el <= 2e-2 && unwritten == 0);
    printf("fwd %s %s HD=%d tiles %dx%dx%d/%dx%dx%d NW=%d X=%dx%dx%d K=%dx%dx%d dil=%dx%dx%d gs=%dx%dx%d "
           "causal=%d%d%d H=%d/%d B=%d: max|dout|=%.2e max|dlse|=%.2e unwritten=%zu %s\n",
           WG == 1 && D * E * F == 128 ? "wgmma-k128" : WG == 1 ? "wgmma" : WG == 2 ? "wgmma-np" : WG == 11 ? "wgmma-mb1" : WG == 12 ? "wgmma-mb2" : WG == 13 ? "wgmma-mb3" : WG > 20 ? "wgmma-mb-st4" : "tc", sizeof(T) == 2 && (float)(T)1.00390625f != 1.f ? "f16" : "bf16", HD, A, B_, C, D, E,
           F, NW, P.X[0],
           P.X[1], P.X[2], P.K[0], P.K[1], P.K[2], P.dil[0], P.dil[1], P.dil[2], P.gs[0], P.gs[1], P.gs[2],
           P.causal[0], P.causal[1], P.causal[2], P.H, P.Hkv, P.B, eo, el, unwritten, bad ? "FAIL" : "ok");
    return bad;
}

/* ---- wgmma layout unit test: one warpgroup, S = Q K^T (HD/16 m64n64k16,
 * A and B K-major from shared memory) and O = P V (4 m64n{HD}k16, P from
 * registers, V MN-major), with the kernel's own helpers (na_tile_off swizzled
 * layout, descriptors, k-step advance, accumulator fragment mapping), on small integers:
 * exact in f32, so any layout error shows as a mismatch. */
template <typename T, int HD>
__global__ void k_wg_layout(const float *qh, const float *kh, const float *vh, float *so, float *oo) {
    extern __shared__ __align__(16) unsigned char na_smem_raw[];
    T *sQ = reinterpret_cast<T *>(na_smem_align1k(na_smem_raw)), *sK = sQ + 64 * HD, *sV = sK + 64 * HD;
    for (int i = threadIdx.x; i < 64 * HD; i += 128) {
        const int row = i / HD, c = i % HD, off = na_tile_off<T, HD, true>(row, c / 8, 64) + c % 8;
        sQ[off] = (T)qh[i];
        sK[off] = (T)kh[i];
        sV[off] = (T)vh[i];
    }
    na_fence_proxy_async();
    __syncthreads();
    float s[1][8][4], o[HD / 8][4];
    for (int j = 0; j < 8; ++j)
        for (int e = 0; e < 4; ++e) s[0][j][e] = 1e6f; /* overwritten: the first k-step does not accumulate */
    for (int j = 0; j < HD / 8; ++j)
        for (int e = 0; e < 4; ++e) o[j][e] = 0.f;
    na_wg_qk_tile<T, HD, 64>(s[0], na_wg_desc_kmajor(sQ), na_wg_desc_kmajor(sK));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, t4 = lane & 3;
    for (int j = 0; j < 8; ++j)
        for (int e = 0; e < 4; ++e) {
            const int row = warp * 16 + g4 + (e >> 1) * 8, col = j * 8 + 2 * t4 + (e & 1);
            so[row * 64 + col] = s[0][j][e];
            s[0][j][e] = (float)((row * 3 + col * 5) % 7 - 3); /* P */
        }
    na_wg_pv_tile<T, HD>(o, s, na_wg_desc_mnmajor(sV, 64));
    for (int j = 0; j < HD / 8; ++j)
        for (int e = 0; e < 4; ++e) oo[(warp * 16 + g4 + (e >> 1) * 8) * HD + j * 8 + 2 * t4 + (e & 1)] = o[j][e];
}
template <typename T, int HD>
static int test_wg_layout() {
    std::vector<float> q(64 * HD), k(64 * HD), v(64 * HD);
    srand(5 + HD);
    for (auto *vec : {&q, &k, &v})
        for (auto &x : *vec) x = (float)(rand() % 7 - 3);
    float *dq = upload<float>(q), *dk = upload<float>(k), *dv = upload<float>(v), *ds, *dO;
    CK(cudaMalloc(&ds, 64 * 64 * 4));
    CK(cudaMalloc(&dO, 64 * HD * 4));
    const int smem = 3 * 64 * HD * 2 + 1024;
    CK(cudaFuncSetAttribute(k_wg_layout<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    k_wg_layout<T, HD><<<1, 128, smem>>>(dq, dk, dv, ds, dO);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<float> gs(64 * 64), go(64 * HD);
    CK(cudaMemcpy(gs.data(), ds, gs.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(go.data(), dO, go.size() * 4, cudaMemcpyDeviceToHost));
    int bad_s = 0, bad_o = 0;
    for (int i = 0; i < 64; ++i)
        for (int j = 0; j < 64; ++j) {
            double ref = 0;
            for (int c = 0; c < HD; ++c) ref += (double)q[i * HD + c] * k[j * HD + c];
            bad_s += gs[i * 64 + j] != (float)ref;
        }
    for (int i = 0; i < 64; ++i)
        for (int c = 0; c < HD; ++c) {
            double ref = 0;
            for (int j = 0; j < 64; ++j) ref += (double)((i * 3 + j * 5) % 7 - 3) * v[j * HD + c];
            bad_o += go[i * HD + c] != (float)ref;
        }
    cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(ds); cudaFree(dO);
    const int bad = bad_s || bad_o;
    printf("wgmma layout %s HD=%d: S=QK^T (m64n64k16 SS) %d/%d wrong, O=PV (m64n%dk16 RS, B transposed) %d/%d "
           "wrong %s\n",
           sizeof(T) == 2 && (float)(T)1.00390625f != 1.f ? "f16" : "bf16", HD, bad_s, 64 * 64, HD, bad_o, 64 * HD,
           bad ? "FAIL" : "ok");
    return bad;
}

/* ---- 4: backward vs a double-precision host backward */
template <class F>
static void host_for_window(const Prob &P, int t, F &&f) { /* f(key token) over query token t's window */
    const int i[3] = {t / (P.X[1] * P.X[2]), (t / P.X[2]) % P.X[1], t % P.X[2]};
    natten_window w[3];
    for (int x = 0; x < 3; ++x) w[x] = natten_window_of(P.X[x], P.K[x], P.dil[x], P.gs[x], P.causal[x], i[x]);
    for (int a = (int)w[0].valid_begin; a < w[0].valid_end; ++a)
        for (int c = (int)w[1].valid_begin; c < w[1].valid_end; ++c)
            for (int e = (int)w[2].valid_begin; e < w[2].valid_end; ++e)
                f(((int)(w[0].start + a * w[0].step) * P.X[1] + (int)(w[1].start + c * w[1].step)) * P.X[2] +
                  (int)(w[2].start + e * w[2].step));
}
static void host_bwd(const Prob &P, const std::vector<float> &q, const std::vector<float> &k,
                     const std::vector<float> &v, const std::vector<float> &dout, const std::vector<double> &out,
                     const std::vector<double> &lse, std::vector<double> &dq, std::vector<double> &dk,
                     std::vector<double> &dv) {
    const int ntok = P.X[0] * P.X[1] * P.X[2], D = P.D;
    const double scale = 1.0 / std::sqrt((double)D);
    dq.assign(q.size(), 0.0);
    dk.assign(k.size(), 0.0);
    dv.assign(v.size(), 0.0);
#pragma omp parallel for collapse(2) schedule(dynamic, 16)
    for (int b = 0; b < P.B; ++b)
        for (int t = 0; t < ntok; ++t)
            for (int h = 0; h < P.H; ++h) {
                const size_t qo = ((size_t)b * ntok + t) * P.H + h;
                double delta = 0;
                for (int d = 0; d < D; ++d) delta += (double)dout[qo * D + d] * out[qo * D + d];
                host_for_window(P, t, [&](int kt) {
                    const size_t ko = ((size_t)b * ntok + kt) * P.Hkv + h / (P.H / P.Hkv);
                    double s = 0, dp = 0;
                    for (int d = 0; d < D; ++d) {
                        s += (double)q[qo * D + d] * k[ko * D + d];
                        dp += (double)dout[qo * D + d] * v[ko * D + d];
                    }
                    const double pr = std::exp(s * scale - lse[qo]), ds = pr * (dp - delta) * scale;
                    for (int d = 0; d < D; ++d) {
                        dq[qo * D + d] += ds * k[ko * D + d]; /* this thread's query row */
#pragma omp atomic
                        dk[ko * D + d] += ds * q[qo * D + d]; /* keys are shared between threads */
#pragma omp atomic
                        dv[ko * D + d] += pr * dout[qo * D + d];
                    }
                });
            }
}
static int grid_of(const Prob &P, const int t[3]) {
    int g = 1;
    for (int x = 0; x < 3; ++x) g *= P.dil[x] * (((P.X[x] + P.dil[x] - 1) / P.dil[x] + t[x] - 1) / t[x]);
    return g;
}
template <typename T> static std::vector<float> download(const T *d, size_t n) {
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<float> r(n);
    for (size_t i = 0; i < n; ++i) r[i] = (float)h[i];
    return r;
}
/* max |got - ref| / max |ref| */
static double rel_err(const std::vector<float> &got, const std::vector<double> &ref) {
    double e = 0, m = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (!(fabs(got[i] - ref[i]) <= e)) e = fabs(got[i] - ref[i]); /* NaN sticks */
        m = fmax(m, fabs(ref[i]));
    }
    return e / (m > 0 ? m : 1);
}
/* Random inputs (bf16-exact, seeded), the double-precision reference
 * backward, and the kernels' f32 lse and delta on the device. */
struct BwdCase {
    size_t nq, nk, rows;
    std::vector<float> q, k, v, dout, outf;
    std::vector<double> rdq, rdk, rdv;
    int *dp;
    float *dl, *dd;
    BwdCase(const Prob &P, int HD, unsigned seed) {
        const int ntok = P.X[0] * P.X[1] * P.X[2];
        nq = (size_t)P.B * ntok * P.H * HD, nk = (size_t)P.B * ntok * P.Hkv * HD, rows = (size_t)P.B * ntok * P.H;
        q.resize(nq), k.resize(nk), v.resize(nk), dout.resize(nq);
        srand(seed);
        for (auto *vec : {&q, &k, &v, &dout})
            for (auto &x : *vec) x = bf16r((float)rand() / RAND_MAX * 2.f - 1.f);
        std::vector<double> ro, rl;
        host_fwd(P, q, k, v, ro, rl);
        host_bwd(P, q, k, v, dout, ro, rl, rdq, rdk, rdv);
        std::vector<float> lse(rows), delta(rows, 0.f);
        outf.resize(nq);
        for (size_t i = 0; i < rows; ++i) {
            lse[i] = (float)rl[i];
            double d = 0;
            for (int c = 0; c < HD; ++c) d += (double)dout[i * HD + c] * ro[i * HD + c];
            delta[i] = (float)d;
        }
        for (size_t i = 0; i < nq; ++i) outf[i] = (float)ro[i];
        std::vector<int> pa = make_params(P);
        CK(cudaMalloc(&dp, pa.size() * 4));
        CK(cudaMemcpy(dp, pa.data(), pa.size() * 4, cudaMemcpyHostToDevice));
        dl = upload<float>(lse), dd = upload<float>(delta);
    }
    ~BwdCase() {
        cudaFree(dp);
        cudaFree(dl);
        cudaFree(dd);
    }
};
/* TC: bf16 fused backward (na_bwd_tc_entry); else the tiled f32 passes.  FD:
 * the one-launch form that computes delta from out and dlse (small problems).
 * Poisoned outputs. */
template <int HD, int Q0, int Q1, int Q2, int K0, int K1, int K2>
static int test_bwd(const Prob &P, bool tc, bool fd = false) {
    typedef __nv_bfloat16 B16;
    BwdCase C(P, HD, 11 + HD + Q0 * 3 + K2);
    const size_t nq = C.nq, nk = C.nk, rows = C.rows;
    const std::vector<float> &q = C.q, &k = C.k, &v = C.v, &dout = C.dout, &outf = C.outf;
    const std::vector<double> &rdq = C.rdq, &rdk = C.rdk, &rdv = C.rdv;
    int *dp = C.dp;
    float *dl = C.dl, *dd = C.dd;
    const int tq[3] = {Q0, Q1, Q2};
    const int nqt = grid_of(P, tq);
    std::vector<float> gq, gk, gv;
    if (tc) {
        B16 *d_q = upload<B16>(q), *d_k = upload<B16>(k), *d_v = upload<B16>(v), *d_do = upload<B16>(dout);
        B16 *o_q, *o_k, *o_v;
        CK(cudaMalloc(&o_q, nq * 2));
        CK(cudaMalloc(&o_k, nk * 2));
        CK(cudaMalloc(&o_v, nk * 2));
        CK(cudaMemset(o_q, 0xff, nq * 2)); /* NaN poison */
        CK(cudaMemset(o_k, 0xff, nk * 2));
        CK(cudaMemset(o_v, 0xff, nk * 2));
        const int smem = 6 * 64 * (HD + 8) * 2 + 8 * 64 + 4 * 64 * 4;
        B16 *d_o = upload<B16>(outf);
        float *d_z = upload<float>(std::vector<float>(rows, 0.f));
        if (fd) {
            auto kern = k_bwd_tc_fd<B16, HD, Q0, Q1, Q2, K0, K1, K2>;
            CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            kern<<<dim3(2 * nqt, P.B * P.H), 128, smem>>>(dp, d_q, d_k, d_v, d_do, dl, d_o, d_z, o_q, o_k, o_v);
        } else {
            auto kern = k_bwd_tc<B16, HD, Q0, Q1, Q2, K0, K1, K2>;
            CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            kern<<<dim3(2 * nqt, P.B * P.H), 128, smem>>>(dp, d_q, d_k, d_v, d_do, dl, dd, o_q, o_k, o_v);
        }
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        gq = download(o_q, nq);
        gk = download(o_k, nk);
        gv = download(o_v, nk);
        for (B16 *x : {d_q, d_k, d_v, d_do, d_o, o_q, o_k, o_v}) cudaFree(x);
        cudaFree(d_z);
    } else {
        std::vector<float> zero(rows, 0.f);
        float *d_q = upload<float>(q), *d_k = upload<float>(k), *d_v = upload<float>(v), *d_do = upload<float>(dout);
        float *d_o = upload<float>(outf), *d_z = upload<float>(zero), *d_dl, *o_q, *o_k, *o_v;
        CK(cudaMalloc(&d_dl, rows * 4));
        CK(cudaMalloc(&o_q, nq * 4));
        CK(cudaMalloc(&o_k, nk * 4));
        CK(cudaMalloc(&o_v, nk * 4));
        CK(cudaMemset(o_q, 0xff, nq * 4));
        CK(cudaMemset(o_k, 0xff, nk * 4));
        CK(cudaMemset(o_v, 0xff, nk * 4));
        auto kq = k_bwd_dq_f32<HD, Q0, Q1, Q2, K0, K1, K2>;
        auto kk = k_bwd_dkdv_f32<HD, K0, K1, K2, Q0, Q1, Q2>; /* roles swapped, as cuda.py */
        const int smq = (2 * 64 + 4 * 64) * (HD + 4) * 4 + 64 * 68 * 4 + 8 * 64, smk = smq + 4 * 64 * 4;
        if (fd) {
            auto kf = k_bwd_f32_fd<HD, Q0, Q1, Q2, K0, K1, K2>;
            CK(cudaFuncSetAttribute(kf, cudaFuncAttributeMaxDynamicSharedMemorySize, smk));
            kf<<<dim3(2 * nqt, P.B * P.H), 128, smk>>>(dp, d_q, d_k, d_v, d_o, dl, d_do, d_z, o_q, o_k, o_v);
        } else {
            CK(cudaFuncSetAttribute(kq, cudaFuncAttributeMaxDynamicSharedMemorySize, smq));
            CK(cudaFuncSetAttribute(kk, cudaFuncAttributeMaxDynamicSharedMemorySize, smk));
            kq<<<dim3(nqt, P.B * P.H), 128, smq>>>(dp, d_q, d_k, d_v, d_o, dl, d_do, d_z, o_q, d_dl);
            CK(cudaGetLastError());
            kk<<<dim3(nqt, P.B * P.Hkv), 128, smk>>>(dp, d_q, d_k, d_v, dl, d_do, d_dl, o_k, o_v);
        }
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        gq = download(o_q, nq);
        gk = download(o_k, nk);
        gv = download(o_v, nk);
        for (float *x : {d_q, d_k, d_v, d_do, d_o, d_z, d_dl, o_q, o_k, o_v}) cudaFree(x);
    }
    const double eq = rel_err(gq, rdq), ek = rel_err(gk, rdk), ev = rel_err(gv, rdv);
    const double tol = tc ? 2e-2 : 2e-5;
    const int bad = !(eq <= tol && ek <= tol && ev <= tol);
    printf("bwd %s HD=%d tiles %dx%dx%d/%dx%dx%d X=%dx%dx%d K=%dx%dx%d dil=%dx%dx%d gs=%dx%dx%d causal=%d%d%d "
           "H=%d/%d: rel err dq %.1e dk %.1e dv %.1e %s\n",
           tc ? (fd ? "tc-bf16-fd" : "tc-bf16") : (fd ? "tile-f32-fd" : "tile-f32"), HD, Q0, Q1, Q2, K0, K1, K2, P.X[0], P.X[1], P.X[2], P.K[0], P.K[1], P.K[2],
           P.dil[0], P.dil[1], P.dil[2], P.gs[0], P.gs[1], P.gs[2], P.causal[0], P.causal[1], P.causal[2], P.H,
           P.Hkv, eq, ek, ev, bad ? "FAIL" : "ok");
    return bad;
}

#ifdef NATTEN_CUDA_BWD_WGMMA_CUH
/* The wgmma backward passes (ST stages) on the plan cuda.py makes: dk/dv
 * (na_bwd_dkdv_wgmma_entry) over key boxes of KB0 x KB1 x KB2 = 128 and query
 * tiles of Q0 x Q1 x Q2 = 64, dq (na_bwd_dq_wgmma_entry) over query boxes of
 * the KB shape and key tiles of the Q shape; against the host backward.
 * Poisoned outputs (NaN: an unwritten row fails).  Run twice on the same
 * inputs: the results must be bitwise equal (a race would move them). */
template <typename T, int HD, int Q0, int Q1, int Q2, int KB0, int KB1, int KB2, int ST = 3>
static int test_bwd_wg(const Prob &P) {
    BwdCase C(P, HD, 23 + HD + Q0 * 5 + KB2);
    const int kb[3] = {KB0, KB1, KB2};
    const int nkb = grid_of(P, kb);
    T *d_q = upload<T>(C.q), *d_k = upload<T>(C.k), *d_v = upload<T>(C.v), *d_do = upload<T>(C.dout);
    T *o_q, *o_k, *o_v;
    CK(cudaMalloc(&o_q, C.nq * sizeof(T)));
    CK(cudaMalloc(&o_k, C.nk * sizeof(T)));
    CK(cudaMalloc(&o_v, C.nk * sizeof(T)));
    auto kern = k_bwd_dkdv_wgmma<T, HD, Q0, Q1, Q2, KB0, KB1, KB2, ST>;
    auto kq = k_bwd_dq_wgmma<T, HD, KB0, KB1, KB2, Q0, Q1, Q2, ST>;
    const int smem = NA_BWD_DKDV_WGMMA_SMEM(HD, ST), smq = NA_BWD_DQ_WGMMA_SMEM(HD, ST);
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    CK(cudaFuncSetAttribute(kq, cudaFuncAttributeMaxDynamicSharedMemorySize, smq));
    std::vector<float> gq[2], gk[2], gv[2];
    for (int rep = 0; rep < 2; ++rep) {
        CK(cudaMemset(o_q, 0xff, C.nq * sizeof(T))); /* NaN poison */
        CK(cudaMemset(o_k, 0xff, C.nk * sizeof(T)));
        CK(cudaMemset(o_v, 0xff, C.nk * sizeof(T)));
        kern<<<dim3(nkb, P.B * P.Hkv), 256, smem>>>(C.dp, d_q, d_k, d_v, d_do, C.dl, C.dd, o_k, o_v);
        CK(cudaGetLastError());
        kq<<<dim3(nkb, P.B * P.H), 256, smq>>>(C.dp, d_q, d_k, d_v, d_do, C.dl, C.dd, o_q);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        gq[rep] = download(o_q, C.nq);
        gk[rep] = download(o_k, C.nk);
        gv[rep] = download(o_v, C.nk);
    }
    for (T *x : {d_q, d_k, d_v, d_do, o_q, o_k, o_v}) cudaFree(x);
    const double eq = rel_err(gq[0], C.rdq), ek = rel_err(gk[0], C.rdk), ev = rel_err(gv[0], C.rdv);
    const bool same = gq[0] == gq[1] && gk[0] == gk[1] && gv[0] == gv[1];
    const int bad = !(eq <= 2e-2 && ek <= 2e-2 && ev <= 2e-2 && same);
    printf("bwd wgmma %s HD=%d ST=%d tiles %dx%dx%d/%dx%dx%d X=%dx%dx%d K=%dx%dx%d dil=%dx%dx%d gs=%dx%dx%d "
           "causal=%d%d%d H=%d/%d B=%d: rel err dq %.1e dk %.1e dv %.1e%s %s\n",
           sizeof(T) == 2 && (float)(T)1.00390625f != 1.f ? "f16" : "bf16", HD, ST, Q0, Q1, Q2, KB0, KB1, KB2,
           P.X[0], P.X[1], P.X[2], P.K[0], P.K[1], P.K[2], P.dil[0], P.dil[1], P.dil[2], P.gs[0], P.gs[1], P.gs[2],
           P.causal[0], P.causal[1], P.causal[2], P.H, P.Hkv, P.B, eq, ek, ev, same ? "" : " (runs differ)",
           bad ? "FAIL" : "ok");
    return bad;
}
#endif

int main() {
    /* line-buffered: a run cut off by a time limit then shows every finished
     * check (block buffering left 8192 bytes, mid-line, on H100 2026-11-27) */
    setvbuf(stdout, NULL, _IOLBF, 0);
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("no CUDA device: compile-only check passed\n");
        return 0;
    }
    int fails = test_windows();
    Prob a = {{9, 11, 1}, {3, 5, 1}, {2, 1, 1}, {1, 2, 1}, {1, 0, 0}, 4, 2, 32, 2};
    fails += test_fwd(a, SIMPLE_F32);
    fails += test_fwd(a, TILE_F32);
    Prob a2 = {{20, 23, 1}, {7, 9, 1}, {1, 2, 1}, {1, 1, 1}, {0, 1, 0}, 4, 2, 32, 2};
    fails += test_fwd(a2, TILE_F32);
    Prob c = {{150, 1, 1}, {13, 1, 1}, {2, 1, 1}, {1, 1, 1}, {0, 0, 0}, 4, 2, 32, 2};
    fails += test_fwd(c, TC_BF16);
    Prob c2 = {{150, 1, 1}, {7, 1, 1}, {1, 1, 1}, {3, 1, 1}, {1, 0, 0}, 2, 1, 32, 1};
    fails += test_fwd(c2, TC_BF16);
    /* tensor-core forward per instantiation: windows wider than a key tile
     * (full, partial and skipped tiles), sizes off the tile edges, dilation
     * with uneven groups, causal, GNA stride, GQA; 16 and 32 rows per warp */
    typedef __nv_bfloat16 B16;
    const Prob t1 = {{700, 1, 1}, {200, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 1, 32, 1};
    const Prob t2 = {{500, 1, 1}, {150, 1, 1}, {3, 1, 1}, {4, 1, 1}, {1, 0, 0}, 4, 2, 32, 2};
    fails += test_fwd_tc<B16, 32, 64, 1, 1, 64, 1, 1, 4>(t1);
    fails += test_fwd_tc<B16, 32, 64, 1, 1, 64, 1, 1, 4>(t2);
    const Prob t3 = {{40, 45, 1}, {21, 17, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 1, 128, 1};
    const Prob t4 = {{19, 37, 1}, {7, 9, 1}, {2, 1, 1}, {1, 2, 1}, {0, 1, 0}, 4, 2, 128, 1};
    fails += test_fwd_tc<B16, 128, 8, 8, 1, 8, 8, 1, 4>(t3);
    fails += test_fwd_tc<B16, 128, 8, 8, 1, 8, 8, 1, 4>(t4);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 4>(t3);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 4>(t4);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 8>(t3);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 2, 32, 1, 4>(t3);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 2, 32, 1, 4>(t4);
    const Prob t5 = {{20, 23, 1}, {7, 9, 1}, {1, 2, 1}, {3, 1, 1}, {1, 0, 0}, 2, 2, 64, 2};
    fails += test_fwd_tc<__half, 64, 8, 8, 1, 8, 8, 1, 4>(t5);
    const Prob t3h = {{40, 45, 1}, {21, 17, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 1, 64, 1};
    fails += test_fwd_tc<__half, 64, 8, 8, 1, 8, 8, 1, 4>(t3h);
    /* two m-tiles per warp (NATTEN_CUDA_TQ=128) with head dims 64 / 32 and f16: a variant that
     * indexed its PV for head_dim 128 only failed exactly these (fwd_pipe_h100_20261127_1420) */
    fails += test_fwd_tc<__half, 64, 8, 16, 1, 8, 8, 1, 4>(t3h);
    fails += test_fwd_tc<__half, 64, 8, 16, 1, 8, 8, 1, 4>(t5);
    fails += test_fwd_tc<B16, 32, 128, 1, 1, 64, 1, 1, 4>(t2);
    const Prob t6 = {{9, 10, 11}, {5, 3, 7}, {1, 2, 1}, {2, 1, 1}, {0, 0, 1}, 2, 1, 128, 1};
    const Prob t7 = {{7, 20, 40}, {5, 9, 33}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 1, 1, 128, 1};
    fails += test_fwd_tc<B16, 128, 4, 4, 4, 4, 4, 4, 4>(t6);
    fails += test_fwd_tc<B16, 128, 2, 4, 8, 1, 2, 32, 4>(t6);
    fails += test_fwd_tc<B16, 128, 2, 4, 8, 1, 2, 32, 4>(t7);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 1, 2, 32, 4>(t7);
    const Prob t8 = {{1000, 1, 1}, {300, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 1, 1, 128, 1};
    fails += test_fwd_tc<B16, 128, 64, 1, 1, 64, 1, 1, 4>(t8);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 4>(t8);
    const Prob t2w = {{500, 1, 1}, {150, 1, 1}, {3, 1, 1}, {4, 1, 1}, {1, 0, 0}, 4, 2, 128, 2};
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8>(t2w);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 4>(t2w);
    const Prob c2w = {{300, 1, 1}, {77, 1, 1}, {2, 1, 1}, {3, 1, 1}, {1, 0, 0}, 2, 1, 64, 2}; /* causal, GNA, dil, GQA */
    /* wgmma forward (sm_90a): the layout unit test first, then the tc problem
     * list with 128-query boxes (2 warpgroups), bf16 and f16, HD 128 and 64.
     * t8 / t2w (1-D, window 300 / 150 of 1000 / 500 keys): a box's 64-query
     * warpgroup halves have different key unions, so the CTA's key box holds
     * tiles one warpgroup skips entirely and partial (masked) tiles. */
    fails += test_wg_layout<B16, 128>();
    fails += test_wg_layout<__half, 64>();
    fails += test_wg_layout<__half, 128>();
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 8, 1>(t3);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 8, 1>(t4);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 2, 32, 1, 8, 1>(t3);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 2, 32, 1, 8, 1>(t4);
    fails += test_fwd_tc<__half, 128, 8, 16, 1, 2, 32, 1, 8, 1>(t4);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 1>(t8);
    fails += test_fwd_tc<__half, 128, 128, 1, 1, 64, 1, 1, 8, 1>(t8);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 1>(t2w);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 1, 2, 32, 8, 1>(t6);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 1, 2, 32, 8, 1>(t7);
    fails += test_fwd_tc<__half, 128, 2, 8, 8, 4, 4, 4, 8, 1>(t6);
    fails += test_fwd_tc<__half, 64, 8, 16, 1, 8, 8, 1, 8, 1>(t5);
    fails += test_fwd_tc<__half, 64, 8, 16, 1, 8, 8, 1, 8, 1>(t3h);
    fails += test_fwd_tc<B16, 64, 128, 1, 1, 64, 1, 1, 8, 1>(c2w);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 2, 32, 1, 8, 2>(t4); /* without the MMA / softmax overlap */
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 2>(t8);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 1, 2, 32, 8, 2>(t6);
    fails += test_fwd_tc<__half, 64, 8, 16, 1, 8, 8, 1, 8, 2>(t5);
    /* mbarrier-synchronized variants (WG 10 + SYNC, 20 + SYNC: 4 stages; see
     * na_fwd_wgmma_entry; WG 1 above runs the default: 2 for 1-D boxes, else
     * 1): decoupled warpgroups.  t1k: 1-D, 4096 tokens, window 1023, 2 heads:
     * 17+ key tiles per box, each stage reused 5+ times. */
    const Prob t1k = {{4096, 1, 1}, {1023, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 2, 128, 1};
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 1>(t1k);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 8, 11>(t3);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 8, 11>(t4);
    fails += test_fwd_tc<__half, 128, 8, 16, 1, 2, 32, 1, 8, 11>(t4);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 11>(t8);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 11>(t2w);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 11>(t1k);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 1, 2, 32, 8, 11>(t6);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 1, 2, 32, 8, 11>(t7);
    fails += test_fwd_tc<__half, 64, 8, 16, 1, 8, 8, 1, 8, 11>(t5);
    fails += test_fwd_tc<__half, 64, 8, 16, 1, 8, 8, 1, 8, 11>(t3h);
    fails += test_fwd_tc<B16, 64, 128, 1, 1, 64, 1, 1, 8, 11>(c2w);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 8, 12>(t4);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 1, 2, 32, 8, 12>(t6);
    fails += test_fwd_tc<__half, 128, 2, 8, 8, 4, 4, 4, 8, 12>(t6);
    fails += test_fwd_tc<B16, 128, 8, 16, 1, 8, 8, 1, 8, 13>(t4);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 13>(t8);
    fails += test_fwd_tc<__half, 128, 128, 1, 1, 64, 1, 1, 8, 13>(t2w);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 13>(t1k);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 1, 2, 32, 8, 13>(t6);
    fails += test_fwd_tc<B16, 64, 128, 1, 1, 64, 1, 1, 8, 13>(c2w);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 64, 1, 1, 8, 23>(t1k);
    fails += test_fwd_tc<B16, 128, 2, 8, 8, 4, 4, 4, 8, 21>(t6);
    /* 1-D 128-key tiles (na_fwd_wgmma_k128, key box 128): windows of 2048
     * class (t2k: 17+ tiles, partial tiles at both ends of every box,
     * warpgroup halves with different key unions; t2kc: dilation 2, causal,
     * GNA stride, GQA, uneven groups), t1k / t8 / t2w / c2w as
     * above, and boxes of one (t1t) or two (t2t) key tiles. */
    const Prob t2k = {{4500, 1, 1}, {2048, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 1, 1, 128, 1};
    const Prob t2kc = {{4001, 1, 1}, {1201, 1, 1}, {2, 1, 1}, {3, 1, 1}, {1, 0, 0}, 2, 1, 128, 1};
    const Prob t1k64 = {{4096, 1, 1}, {1023, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 2, 64, 1};
    const Prob t1t = {{100, 1, 1}, {9, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 1, 128, 2};
    const Prob t2t = {{333, 1, 1}, {7, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 2, 128, 1};
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 128, 1, 1, 8, 1>(t2k);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 128, 1, 1, 8, 1>(t2kc);
    fails += test_fwd_tc<__half, 128, 128, 1, 1, 128, 1, 1, 8, 1>(t2kc);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 128, 1, 1, 8, 1>(t1k);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 128, 1, 1, 8, 1>(t8);
    fails += test_fwd_tc<__half, 128, 128, 1, 1, 128, 1, 1, 8, 1>(t2w);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 128, 1, 1, 8, 1>(t1t);
    fails += test_fwd_tc<B16, 128, 128, 1, 1, 128, 1, 1, 8, 1>(t2t);
    fails += test_fwd_tc<B16, 64, 128, 1, 1, 128, 1, 1, 8, 1>(c2w);
    fails += test_fwd_tc<__half, 64, 128, 1, 1, 128, 1, 1, 8, 1>(t1k64);
    /* backward: tile shapes of the 2-D (asymmetric: the dk/dv pass swaps them), 1-D and 3-D plans */
    Prob b2 = {{20, 23, 1}, {7, 9, 1}, {1, 2, 1}, {1, 1, 1}, {0, 1, 0}, 4, 2, 32, 2};
    fails += test_bwd<32, 8, 8, 1, 4, 16, 1>(b2, true);
    fails += test_bwd<32, 8, 8, 1, 4, 16, 1>(b2, false);
    Prob b2s = {{17, 30, 1}, {5, 7, 1}, {2, 1, 1}, {2, 3, 1}, {1, 0, 0}, 2, 2, 64, 1};
    fails += test_bwd<64, 8, 8, 1, 4, 16, 1>(b2s, true);
    fails += test_bwd<64, 8, 8, 1, 4, 16, 1>(b2s, false);
    Prob b1 = {{150, 1, 1}, {13, 1, 1}, {2, 1, 1}, {1, 1, 1}, {0, 0, 0}, 4, 2, 64, 2};
    fails += test_bwd<64, 64, 1, 1, 64, 1, 1>(b1, true);
    fails += test_bwd<64, 64, 1, 1, 64, 1, 1>(b1, false);
    Prob b1c = {{200, 1, 1}, {33, 1, 1}, {1, 1, 1}, {4, 1, 1}, {1, 0, 0}, 2, 1, 128, 1};
    fails += test_bwd<128, 64, 1, 1, 64, 1, 1>(b1c, true);
    Prob b3 = {{6, 7, 20}, {3, 3, 5}, {1, 2, 1}, {1, 1, 2}, {1, 0, 0}, 4, 2, 32, 1};
    fails += test_bwd<32, 2, 2, 16, 4, 4, 4>(b3, true);
    fails += test_bwd<32, 2, 2, 16, 4, 4, 4>(b3, false);
    Prob b2h = {{19, 21, 1}, {9, 11, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 1, 128, 1};
    fails += test_bwd<128, 8, 8, 1, 8, 8, 1>(b2h, true);
    /* the same problems through the one-launch backward (delta computed in the passes) */
    fails += test_bwd<32, 8, 8, 1, 4, 16, 1>(b2, true, true);
    fails += test_bwd<32, 8, 8, 1, 4, 16, 1>(b2, false, true);
    fails += test_bwd<64, 8, 8, 1, 4, 16, 1>(b2s, true, true);
    fails += test_bwd<64, 8, 8, 1, 4, 16, 1>(b2s, false, true);
    fails += test_bwd<64, 64, 1, 1, 64, 1, 1>(b1, true, true);
    fails += test_bwd<64, 64, 1, 1, 64, 1, 1>(b1, false, true);
    fails += test_bwd<128, 64, 1, 1, 64, 1, 1>(b1c, true, true);
    fails += test_bwd<32, 2, 2, 16, 4, 4, 4>(b3, true, true);
    fails += test_bwd<32, 2, 2, 16, 4, 4, 4>(b3, false, true);
#ifdef NATTEN_CUDA_BWD_WGMMA_CUH
    /* wgmma backward: 128-key boxes (the forward's 128-query box shapes) and
     * 64-query tiles for dk/dv, the same shapes swapped for dq.  1-D: windows wider than a tile (full, partial and, for
     * one warpgroup, empty tiles), extents off 64/128, dilation with uneven
     * groups, causal, GNA stride, GQA (2 query heads a kv head); t1k: 17+
     * tiles a box (and head), each stage reused 5+ times.  2-D / 3-D:
     * boxes that cut windows, sizes off the box edges.  The forward's and
     * the mma.sync backward's problems above, and one more. */
    {
        const Prob w1b = {{1000, 1, 1}, {300, 1, 1}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 1, 128, 1};
        fails += test_bwd_wg<B16, 128, 64, 1, 1, 128, 1, 1>(b1c);
        fails += test_bwd_wg<B16, 128, 64, 1, 1, 128, 1, 1>(w1b);
        fails += test_bwd_wg<__half, 128, 64, 1, 1, 128, 1, 1>(w1b);
        fails += test_bwd_wg<B16, 128, 64, 1, 1, 128, 1, 1>(t2w);
        fails += test_bwd_wg<B16, 128, 64, 1, 1, 128, 1, 1>(t1k);
        fails += test_bwd_wg<B16, 128, 64, 1, 1, 128, 1, 1, 4>(t1k);
        fails += test_bwd_wg<B16, 128, 8, 8, 1, 8, 16, 1>(b2h);
        fails += test_bwd_wg<B16, 128, 8, 8, 1, 8, 16, 1>(t4);
        fails += test_bwd_wg<__half, 128, 8, 8, 1, 8, 16, 1>(t4);
        fails += test_bwd_wg<B16, 128, 8, 8, 1, 8, 16, 1>(t3);
        fails += test_bwd_wg<B16, 128, 2, 32, 1, 8, 16, 1>(t3);
        fails += test_bwd_wg<B16, 128, 4, 4, 4, 2, 8, 8>(t6);
        fails += test_bwd_wg<B16, 128, 1, 2, 32, 2, 8, 8>(t6);
        fails += test_bwd_wg<B16, 128, 1, 2, 32, 2, 4, 16>(t7);
        fails += test_bwd_wg<__half, 64, 8, 8, 1, 8, 16, 1>(t5);
    }
#endif
    printf("%s\n", fails ? "FAILED" : "ALL OK");
    return fails ? 1 : 0;
}
