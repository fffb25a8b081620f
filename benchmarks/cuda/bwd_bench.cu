/*
 * bwd_bench.cu -- times the CUDA tier's backward kernels alone (no MLX) on the
 * issue-5 anchor shapes with cudaEvents: forward (for lse), delta, the dq
 * pass, the dk/dv pass and the fused launch that cuda.py uses; the f32
 * vision case too.  Tile shapes are the ones cuda.py's _choose_tiles picks.
 *
 *   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Iinclude \
 *        benchmarks/cuda/bwd_bench.cu -o /tmp/bwd_bench
 *   /tmp/bwd_bench [case-substring] [once]     (once: one launch each, for ncu)
 *
 * Prints median ms of reps (inputs uniform in [-1, 1], never zeros).
 */
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../src/cuda/na_simple.cuh"
#include "../../src/cuda/na_fwd_tc.cuh"
#include "../../src/cuda/na_fwd_f32.cuh"
#include "../../src/cuda/na_bwd_tc.cuh"
#include "../../src/cuda/na_bwd_f32.cuh"
#ifdef NA_BENCH_WG /* the wgmma dk/dv pass (this tree only: build_bwd.sh's base build lacks it) */
#include "../../src/cuda/na_fwd_wgmma.cuh"
#include "../../src/cuda/na_bwd_wgmma.cuh"
#endif
#include "../../tests/cuda/kernel_wrappers.cuh"


template <typename T, int NVPL>
__global__ void k_delta(const int *pa, const T *o, const T *dout, const float *dlse, float *delta) {
    na_delta_simple<T, NVPL>(na_load_params(pa), o, dout, dlse, delta, GW, LANE);
}
template <int NPL>
__global__ void k_bwd_dkdv_simple(const int *pa, const float *q, const float *k, const float *v, const float *lse,
                                  const float *dout, const float *delta, float *dk, float *dv) {
    na_bwd_dkdv_simple<float, NPL, NPL>(na_load_params(pa), q, k, v, (const float *)nullptr, (const int *)nullptr,
                                        lse, dout, delta, dk, dv, GW, LANE);
}

template <typename T>
__global__ void k_fill(T *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned x = (unsigned)i * 2654435761u ^ seed;
        x ^= x >> 15;
        x *= 2246822519u;
        x ^= x >> 13;
        p[i] = na_cast<T>((float)(x & 0xffffff) / 8388608.f - 1.f);
    }
}

struct Case {
    const char *name;
    int B, X[3], H, Hkv, D, K[3], dil[3];
};

static std::vector<int> make_params(const Case &c) {
    const int gs[3] = {1, 1, 1}, causal[3] = {0, 0, 0};
    return na_param_block(c.B, c.X, c.H, c.Hkv, c.D, c.K, c.dil, gs, causal);
}
static int grid_of(const Case &c, int t0, int t1, int t2) {
    const int t[3] = {t0, t1, t2};
    int g = 1;
    for (int x = 0; x < 3; ++x) g *= c.dil[x] * (((c.X[x] + c.dil[x] - 1) / c.dil[x] + t[x] - 1) / t[x]);
    return g;
}

static bool g_once = false;
static float g_min; /* min ms of the last time_ms */
/* median ms of reps launches of f (each timed alone) */
template <class F>
static float time_ms(F &&f) {
    if (g_once) {
        f();
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        return 0.f;
    }
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    f(); /* warm-up */
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaEventRecord(a));
    f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float first;
    CK(cudaEventElapsedTime(&first, a, b));
    const int reps = std::max(5, std::min(50, (int)(400.f / std::max(first, 1e-3f))));
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(a));
        f();
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    CK(cudaGetLastError());
    std::sort(t.begin(), t.end());
    g_min = t[0];
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return t[t.size() / 2];
}

template <typename T>
static T *alloc_fill(size_t n, unsigned seed) {
    T *p;
    CK(cudaMalloc(&p, n * sizeof(T)));
    k_fill<T><<<1024, 256>>>(p, n, seed);
    CK(cudaGetLastError());
    return p;
}

static double useful_gflop(const Case &c) { /* one S-sized product over the windows */
    return 2.0 * c.B * c.X[0] * c.X[1] * c.X[2] * c.H * (double)c.K[0] * c.K[1] * c.K[2] * c.D / 1e9;
}

/* Inputs filled, outputs and f32 row buffers allocated, the parameter block on
 * the device: what each timed run needs; freed on scope exit. */
template <typename T>
struct Bufs {
    size_t nq, nk, rows;
    T *q, *k, *v, *dout, *o, *dq, *dk, *dv;
    float *lse, *delta, *dlse;
    int *dp;
    Bufs(const Case &c, int HD) {
        const size_t ntok = (size_t)c.B * c.X[0] * c.X[1] * c.X[2];
        nq = ntok * c.H * HD;
        nk = ntok * c.Hkv * HD;
        rows = ntok * c.H;
        q = alloc_fill<T>(nq, 1), k = alloc_fill<T>(nk, 2), v = alloc_fill<T>(nk, 3), dout = alloc_fill<T>(nq, 4);
        CK(cudaMalloc(&o, nq * sizeof(T)));
        CK(cudaMalloc(&dq, nq * sizeof(T)));
        CK(cudaMalloc(&dk, nk * sizeof(T)));
        CK(cudaMalloc(&dv, nk * sizeof(T)));
        CK(cudaMalloc(&lse, rows * 4));
        CK(cudaMalloc(&delta, rows * 4));
        CK(cudaMalloc(&dlse, rows * 4));
        CK(cudaMemset(dlse, 0, rows * 4));
        const std::vector<int> pa = make_params(c);
        CK(cudaMalloc(&dp, pa.size() * 4));
        CK(cudaMemcpy(dp, pa.data(), pa.size() * 4, cudaMemcpyHostToDevice));
    }
    ~Bufs() {
        cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(dout); cudaFree(o); cudaFree(dq); cudaFree(dk); cudaFree(dv);
        cudaFree(lse); cudaFree(delta); cudaFree(dlse); cudaFree(dp);
    }
};

template <typename T>
using WgRun = void (*)(const Case &, Bufs<T> &);
#ifdef NA_BENCH_WG
/* The wgmma dk/dv pass (run_tc's buffers: lse and delta from its forward and
 * delta kernels): key boxes K0 x K1 x K2 (128: the wgmma forward's query box,
 * as cuda.py plans it), query tiles Q0 x Q1 x Q2 (64), ST stages.  Median and
 * min ms, TFLOP/s of its four products (S^T, dP^T, dV, dK over the windows). */
template <typename T, int HD, int K0, int K1, int K2, int Q0, int Q1, int Q2, int ST = 3>
static void run_wg(const Case &c, Bufs<T> &m) {
    const int kb = grid_of(c, K0, K1, K2);
    auto kw = k_bwd_dkdv_wgmma<T, HD, Q0, Q1, Q2, K0, K1, K2, ST>;
    const int smw = NA_BWD_DKDV_WGMMA_SMEM(HD, ST);
    CK(cudaFuncSetAttribute(kw, cudaFuncAttributeMaxDynamicSharedMemorySize, smw));
    const float tk = time_ms([&] {
        kw<<<dim3(kb, c.B * c.Hkv), 256, smw>>>(m.dp, m.q, m.k, m.v, m.dout, m.lse, m.delta, m.dk, m.dv);
    });
    const float tkmin = g_min;
    auto kq = k_bwd_dq_wgmma<T, HD, K0, K1, K2, Q0, Q1, Q2, ST>; /* query boxes of the K shape, key tiles of Q's */
    const int smq = NA_BWD_DQ_WGMMA_SMEM(HD, ST);
    CK(cudaFuncSetAttribute(kq, cudaFuncAttributeMaxDynamicSharedMemorySize, smq));
    const float tq = time_ms([&] {
        kq<<<dim3(kb, c.B * c.H), 256, smq>>>(m.dp, m.q, m.k, m.v, m.dout, m.lse, m.delta, m.dq);
    });
    const double g = useful_gflop(c);
    printf("%-22s bf16 wgmma ST=%d box %dx%dx%d tile %dx%dx%d: dkdv median %8.3f min %8.3f ms %4.0f TFLOP/s | "
           "dq median %8.3f min %8.3f ms %4.0f TFLOP/s | dq+dkdv %8.3f ms\n",
           c.name, ST, K0, K1, K2, Q0, Q1, Q2, tk, tkmin, 4 * g / tk, tq, g_min, 3 * g / tq, tq + tk);
}
#define WG(...) (run_wg<__VA_ARGS__>)
#else
#define WG(...) nullptr
#endif

template <typename T, int HD, int Q0, int Q1, int Q2, int K0, int K1, int K2>
static void run_tc(const Case &c, WgRun<T> wg = nullptr) {
    Bufs<T> m(c, HD);
    T *q = m.q, *k = m.k, *v = m.v, *dout = m.dout, *o = m.o, *dq = m.dq, *dk = m.dk, *dv = m.dv;
    float *lse = m.lse, *delta = m.delta, *dlse = m.dlse;
    const int *dp = m.dp;
    const size_t rows = m.rows;
    const int qt = grid_of(c, Q0, Q1, Q2), BH = c.B * c.H, BHkv = c.B * c.Hkv;
    const int smf = NA_FWD_TC_SMEM(64, HD);
    const int smq = 6 * 64 * (HD + 8) * 2 + 8 * 64, smk = smq + 4 * 64 * 4;
    auto kf = k_fwd_tc<T, HD, Q0, Q1, Q2, K0, K1, K2>;
    auto kq = k_bwd_dq_tc<T, HD, Q0, Q1, Q2, K0, K1, K2>;
    auto kk = k_bwd_dkdv_tc<T, HD, K0, K1, K2, Q0, Q1, Q2>; /* roles swapped, as na_bwd_tc_entry */
    auto kb = k_bwd_tc<T, HD, Q0, Q1, Q2, K0, K1, K2>;
    CK(cudaFuncSetAttribute(kf, cudaFuncAttributeMaxDynamicSharedMemorySize, smf));
    CK(cudaFuncSetAttribute(kq, cudaFuncAttributeMaxDynamicSharedMemorySize, smq));
    CK(cudaFuncSetAttribute(kk, cudaFuncAttributeMaxDynamicSharedMemorySize, smk));
    CK(cudaFuncSetAttribute(kb, cudaFuncAttributeMaxDynamicSharedMemorySize, smk));
    const float tf = time_ms([&] { kf<<<dim3(qt, BH), 128, smf>>>(dp, q, k, v, o, lse); });
    const float td = time_ms([&] {
        k_delta<T, HD / 32><<<(unsigned)((rows * 32 + 127) / 128), 128>>>(dp, o, dout, dlse, delta);
    });
    const float tq = time_ms([&] { kq<<<dim3(qt, BH), 128, smq>>>(dp, q, k, v, dout, lse, delta, dq); });
    const float tqmin = g_min;
    const float tk = time_ms([&] { kk<<<dim3(qt, BHkv), 128, smk>>>(dp, q, k, v, dout, lse, delta, dk, dv); });
    const float tkmin = g_min;
    const float tb = time_ms([&] { kb<<<dim3(2 * qt, BH), 128, smk>>>(dp, q, k, v, dout, lse, delta, dq, dk, dv); });
    const double g = useful_gflop(c);
    printf("%-22s bf16 fwd %8.3f  delta %7.3f  dq %8.3f (min %8.3f, %4.0f TFLOP/s)  dkdv %8.3f (min %8.3f, %4.0f "
           "TFLOP/s)  fused %8.3f (min %8.3f)  (bwd=delta+fused %8.3f ms; useful 5-product TFLOP/s %.0f; fwd %.0f)\n",
           c.name, tf, td, tq, tqmin, 3 * g / tq, tk, tkmin, 4 * g / tk, tb, g_min, td + tb, 5 * g / (td + tb),
           2 * g / tf);
    if (wg) wg(c, m);
}


template <int HD, int Q0, int Q1, int Q2, int K0, int K1, int K2>
static void run_f32(const Case &c) {
    Bufs<float> m(c, HD);
    float *q = m.q, *k = m.k, *v = m.v, *dout = m.dout, *o = m.o, *dq = m.dq, *dk = m.dk, *dv = m.dv;
    float *lse = m.lse, *delta = m.delta, *dlse = m.dlse;
    const int *dp = m.dp;
    const size_t ntok = m.rows / c.H;
    const int qt = grid_of(c, Q0, Q1, Q2), BH = c.B * c.H;
    const int smf = (64 + 4 * 64) * (HD + 4) * 4 + 64 * 68 * 4 + 8 * 64, smq = smf + 64 * (HD + 4) * 4;
    auto kf = k_fwd_f32<HD, Q0, Q1, Q2, K0, K1, K2>;
    auto kq = k_bwd_dq_f32<HD, Q0, Q1, Q2, K0, K1, K2>;
    CK(cudaFuncSetAttribute(kf, cudaFuncAttributeMaxDynamicSharedMemorySize, smf));
    CK(cudaFuncSetAttribute(kq, cudaFuncAttributeMaxDynamicSharedMemorySize, smq));
    const float tf = time_ms([&] { kf<<<dim3(qt, BH), 128, smf>>>(dp, q, k, v, o, lse); });
    const float tq = time_ms([&] { kq<<<dim3(qt, BH), 128, smq>>>(dp, q, k, v, o, lse, dout, dlse, dq, delta); });
    const size_t krows = ntok * c.Hkv;
    const float tk = time_ms([&] {
        k_bwd_dkdv_simple<HD / 32><<<(unsigned)((krows * 32 + 127) / 128), 128>>>(dp, q, k, v, lse, dout, delta, dk, dv);
    });
    auto kk = k_bwd_dkdv_f32<HD, K0, K1, K2, Q0, Q1, Q2>; /* roles swapped, as cuda.py */
    CK(cudaFuncSetAttribute(kk, cudaFuncAttributeMaxDynamicSharedMemorySize, smq + 1024));
    const float tk2 = time_ms([&] {
        kk<<<dim3(qt, c.B * c.Hkv), 128, smq + 1024>>>(dp, q, k, v, lse, dout, delta, dk, dv);
    });
    printf("%-22s f32  fwd %8.3f  dq+delta %7.3f  dkdv(simple) %8.3f  dkdv(tiled) %8.3f  (bwd %8.3f -> %8.3f ms)\n",
           c.name, tf, tq, tk, tk2, tq + tk, tq + tk2);
}

int main(int argc, char **argv) {
    const char *sel = argc > 1 ? argv[1] : "";
    g_once = argc > 2 && !strcmp(argv[2], "once");
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    const Case flux = {"flux-2d-256-w80", 1, {256, 256, 1}, 24, 24, 128, {80, 80, 1}, {1, 1, 1}};
    const Case flux4 = {"flux-h4", 1, {256, 256, 1}, 4, 4, 128, {80, 80, 1}, {1, 1, 1}};
    const Case vis = {"vision-2d-64-k7", 8, {64, 64, 1}, 8, 8, 64, {7, 7, 1}, {1, 1, 1}};
    const Case l1d = {"1d-32k-w2k", 1, {32768, 1, 1}, 1, 1, 128, {2048, 1, 1}, {1, 1, 1}};
    const Case d3 = {"3d-32-k3", 1, {32, 32, 32}, 4, 4, 32, {3, 3, 3}, {1, 1, 1}};
    const Case hun = {"hunyuan-3d-w18x24x24", 1, {30, 48, 80}, 24, 24, 128, {18, 24, 24}, {1, 1, 1}};
    typedef __nv_bfloat16 B16;
    /* wgmma dk/dv: the key box and query tile of cuda.py's plan (_choose_tiles
     * with 128-query boxes, compact key tiles; head_dim 64 is not routed to
     * it: vision's line is for comparison) */
    const bool st4 = getenv("NA_BENCH_ST4") != nullptr; /* 4 Q / dO stages */
    if (strstr(flux.name, sel) && strcmp(sel, "flux-h4"))
        run_tc<B16, 128, 8, 8, 1, 8, 8, 1>(flux, st4 ? WG(B16, 128, 8, 16, 1, 8, 8, 1, 4) : WG(B16, 128, 8, 16, 1, 8, 8, 1));
    if (!strcmp(sel, "flux-h4")) run_tc<B16, 128, 8, 8, 1, 8, 8, 1>(flux4);
    if (strstr(vis.name, sel)) run_tc<B16, 64, 8, 8, 1, 4, 16, 1>(vis, WG(B16, 64, 8, 16, 1, 8, 8, 1));
    if (strstr(l1d.name, sel))
        run_tc<B16, 128, 64, 1, 1, 64, 1, 1>(l1d, st4 ? WG(B16, 128, 128, 1, 1, 64, 1, 1, 4) : WG(B16, 128, 128, 1, 1, 64, 1, 1));
    if (strstr(d3.name, sel)) run_tc<B16, 32, 2, 2, 16, 4, 4, 4>(d3);
    if (strstr(hun.name, sel) && *sel) /* by name only */
        run_tc<B16, 128, 2, 4, 8, 1, 2, 32>(hun, st4 ? WG(B16, 128, 2, 8, 8, 1, 8, 8, 4) : WG(B16, 128, 2, 8, 8, 1, 8, 8));
    if (strstr(vis.name, sel) || !strcmp(sel, "f32")) run_f32<64, 8, 8, 1, 4, 16, 1>(vis);
    return 0;
}
