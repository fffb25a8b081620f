/*
 * fwd_bench.cu -- standalone timing of the tensor-core forward
 * (src/cuda/na_fwd_tc.cuh) on the anchor shapes, without MLX: cudaEvent
 * timing (median of reps) of each launch variant, outputs compared with the
 * first variant of the case (max |diff| of out and lse) so a fast variant
 * that computes something else shows.  Profile one launch with
 *   ncu --clock-control none -k regex:k_bench --launch-skip 2 --launch-count 1 fwd_bench CASE VARIANT 3
 *
 * Build (any machine with nvcc 13; the binary runs on an H100/H200):
 *   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xptxas -v \
 *        benchmarks/cuda/fwd_bench.cu -o fwd_bench
 * With -DNA_BENCH_BASE=<header> an older entry function, renamed
 * na_fwd_tc_entry_base (benchmarks/cuda/base_entry.sh REV writes it from
 * git), is built beside it as variant "base64" for A/B runs in one process.
 *
 * Usage: fwd_bench [case|all] [variant|all] [reps]
 */
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../src/cuda/na_fwd_tc.cuh"
#include "../../src/cuda/na_fwd_wgmma.cuh"
#ifdef NA_BENCH_BASE
#include NA_BENCH_BASE /* defines na_fwd_tc_entry_base */
#endif

static void ck(cudaError_t e, int line) {
    if (e == cudaSuccess) return;
    fprintf(stderr, "fwd_bench.cu:%d %s\n", line, cudaGetErrorString(e));
    exit(1);
}
#define CK(x) ck((x), __LINE__)

typedef __nv_bfloat16 B16;

template <int HD, int A, int B_, int C, int D, int E, int F, int NW>
__global__ void k_bench_new(const int *pa, const B16 *q, const B16 *k, const B16 *v, B16 *o, float *lse) {
    na_fwd_tc_entry<B16, HD, A, B_, C, D, E, F, NW>(pa, q, k, v, o, lse);
}
/* the wgmma forward: 256 threads, one CTA per SM */
template <int HD, int A, int B_, int C, int D, int E, int F, int NW, bool PIPE, int SYNC = 0, int ST = 3>
__global__ void __launch_bounds__(256, 1)
    k_bench_wg(const int *pa, const B16 *q, const B16 *k, const B16 *v, B16 *o, float *lse) {
    na_fwd_wgmma_entry<B16, HD, A, B_, C, D, E, F, PIPE, SYNC, ST>(pa, q, k, v, o, lse);
}
#ifdef NA_BENCH_BASE
template <int HD, int A, int B_, int C, int D, int E, int F, int NW>
__global__ void k_bench_base(const int *pa, const B16 *q, const B16 *k, const B16 *v, B16 *o, float *lse) {
    na_fwd_tc_entry_base<B16, HD, A, B_, C, D, E, F, NW>(pa, q, k, v, o, lse);
}
#endif

typedef void (*kfn)(const int *, const B16 *, const B16 *, const B16 *, B16 *, float *);

struct Case {
    const char *name;
    int rank, B, H, D, X[3], K[3];
};
static const Case CASES[] = {
    {"flux", 2, 1, 24, 128, {256, 256, 1}, {80, 80, 1}},
    {"1d", 1, 1, 1, 128, {32768, 1, 1}, {2048, 1, 1}},
    {"hun", 3, 1, 24, 128, {30, 48, 80}, {18, 24, 24}},
    {"vis", 2, 8, 8, 64, {64, 64, 1}, {7, 7, 1}},
};

struct Variant {
    const char *cs, *name;
    kfn fn;
    int tq[3], nw, hd, is_new; /* is_new: 1 NA_FWD_TC_SMEM layout, 2 NA_FWD_WGMMA_SMEM, 3 NA_FWD_WGMMA128_SMEM,
                                  0 the pre-0937 base entry's */
    int st;                    /* wgmma: K/V stages (0: 3) */
};

#define V_NEW(CS, NAME, HD, A, B_, C, D, E, F, NW) \
    {CS, NAME, k_bench_new<HD, A, B_, C, D, E, F, NW>, {A, B_, C}, NW, HD, 1}
#define V_WG(CS, NAME, HD, A, B_, C, D, E, F, PIPE) \
    {CS, NAME, k_bench_wg<HD, A, B_, C, D, E, F, 8, PIPE>, {A, B_, C}, 8, HD, 2}
/* the wgmma forward with synchronization SYNC (na_fwd_wgmma_entry) and ST stages */
#define V_WGS(CS, NAME, HD, A, B_, C, D, E, F, SYNC, ST) \
    {CS, NAME, k_bench_wg<HD, A, B_, C, D, E, F, 8, true, SYNC, ST>, {A, B_, C}, 8, HD, 2, ST}
/* the wgmma forward with 1-D 128-key tiles (na_fwd_wgmma_k128) */
#define V_WGK(CS, NAME, HD) {CS, NAME, k_bench_wg<HD, 128, 1, 1, 128, 1, 1, 8, true>, {128, 1, 1}, 8, HD, 3}
#ifndef NA_BENCH_BASE_LAYOUT /* 1: the base entry uses NA_FWD_TC_SMEM's layout (since 0937) */
#define NA_BENCH_BASE_LAYOUT 1
#endif
#define V_BASE(CS, NAME, HD, A, B_, C, D, E, F, NW) \
    {CS, NAME, k_bench_base<HD, A, B_, C, D, E, F, NW>, {A, B_, C}, NW, HD, NA_BENCH_BASE_LAYOUT}

static const Variant VARS[] = {
#ifdef NA_BENCH_BASE
    V_BASE("flux", "base64", 128, 8, 8, 1, 8, 8, 1, 4),
    V_BASE("flux", "base128", 128, 8, 16, 1, 2, 32, 1, 4),
    V_BASE("1d", "base64", 128, 64, 1, 1, 64, 1, 1, 4),
    V_BASE("1d", "base128", 128, 128, 1, 1, 64, 1, 1, 4),
    V_BASE("hun", "base64", 128, 2, 4, 8, 1, 2, 32, 4),
    V_BASE("hun", "base128", 128, 2, 8, 8, 1, 2, 32, 4),
    V_BASE("vis", "base64", 64, 8, 8, 1, 4, 16, 1, 4),
#endif
    V_NEW("flux", "new64", 128, 8, 8, 1, 8, 8, 1, 4),
    V_NEW("flux", "new128", 128, 8, 16, 1, 2, 32, 1, 4),
    V_NEW("flux", "new128w", 128, 8, 16, 1, 2, 32, 1, 8),
    V_NEW("1d", "new64", 128, 64, 1, 1, 64, 1, 1, 4),
    V_NEW("1d", "new128", 128, 128, 1, 1, 64, 1, 1, 4),
    V_NEW("1d", "new128w", 128, 128, 1, 1, 64, 1, 1, 8),
    V_NEW("hun", "new64", 128, 2, 4, 8, 1, 2, 32, 4),
    V_NEW("hun", "new128", 128, 2, 8, 8, 1, 2, 32, 4),
    V_NEW("vis", "new64", 64, 8, 8, 1, 4, 16, 1, 4),
    V_NEW("vis", "new128", 64, 8, 16, 1, 8, 8, 1, 4),
    V_WG("flux", "wg", 128, 8, 16, 1, 2, 32, 1, true),
    V_WG("flux", "wgnp", 128, 8, 16, 1, 2, 32, 1, false),
    V_WG("flux", "wg88", 128, 8, 16, 1, 8, 8, 1, true),
    V_WGS("flux", "mb1_88", 128, 8, 16, 1, 8, 8, 1, 1, 3),
    V_WGS("flux", "mb2_88", 128, 8, 16, 1, 8, 8, 1, 2, 3),
    V_WGS("flux", "mb3_88", 128, 8, 16, 1, 8, 8, 1, 3, 3),
    V_WG("1d", "wg", 128, 128, 1, 1, 64, 1, 1, true),
    V_WG("1d", "wgnp", 128, 128, 1, 1, 64, 1, 1, false),
    V_WGS("1d", "mb1", 128, 128, 1, 1, 64, 1, 1, 1, 3),
    V_WGS("1d", "mb2", 128, 128, 1, 1, 64, 1, 1, 2, 3),
    V_WGS("1d", "mb3", 128, 128, 1, 1, 64, 1, 1, 3, 3),
    V_WGS("1d", "mb3_4", 128, 128, 1, 1, 64, 1, 1, 3, 4),
    V_WGK("1d", "k128", 128),
    V_WG("hun", "wg", 128, 2, 8, 8, 1, 2, 32, true),
    V_WG("hun", "wgnp", 128, 2, 8, 8, 1, 2, 32, false),
    V_WG("hun", "wg444", 128, 2, 8, 8, 4, 4, 4, true),
    V_WGS("hun", "mb1_444", 128, 2, 8, 8, 4, 4, 4, 1, 3),
    V_WGS("hun", "mb2_444", 128, 2, 8, 8, 4, 4, 4, 2, 3),
    V_WGS("hun", "mb3_444", 128, 2, 8, 8, 4, 4, 4, 3, 3),
    V_WG("vis", "wg", 64, 8, 16, 1, 8, 8, 1, true),
    V_WG("vis", "wgnp", 64, 8, 16, 1, 8, 8, 1, false),
    V_WG("vis", "wg432", 64, 8, 16, 1, 4, 16, 1, true),
};

static float frand(unsigned long long &s) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((s >> 40) & 0xffffff) / 16777216.f * 2.f - 1.f;
}

int main(int argc, char **argv) {
    const std::string want_case = argc > 1 ? argv[1] : "all", want_var = argc > 2 ? argv[2] : "all";
    const int reps_arg = argc > 3 ? atoi(argv[3]) : 0;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    printf("%-5s %-8s %9s %8s %10s %10s\n", "case", "variant", "ms", "TFLOP/s", "max|dout|", "max|dlse|");
    for (const Case &c : CASES) {
        if (want_case != "all" && want_case != c.name) continue;
        const int ntok = c.X[0] * c.X[1] * c.X[2];
        const size_t n = (size_t)c.B * ntok * c.H * c.D, nl = (size_t)c.B * ntok * c.H;
        std::vector<B16> h(3 * n);
        unsigned long long seed = 12345;
        for (auto &x : h) x = __float2bfloat16(frand(seed));
        B16 *dqkv, *dout;
        float *dlse;
        CK(cudaMalloc(&dqkv, 3 * n * 2));
        CK(cudaMalloc(&dout, n * 2));
        CK(cudaMalloc(&dlse, nl * 4));
        CK(cudaMemcpy(dqkv, h.data(), 3 * n * 2, cudaMemcpyHostToDevice));
        std::vector<int> pa(NA_P_COUNT, 0);
        pa[NA_P_RANK] = c.rank;
        pa[NA_P_B] = c.B;
        pa[NA_P_H] = pa[NA_P_HKV] = c.H;
        pa[NA_P_D] = pa[NA_P_DV] = c.D;
        for (int x = 0; x < 3; ++x) {
            pa[NA_P_X + x] = pa[NA_P_O + x] = c.X[x];
            pa[NA_P_K + x] = c.K[x];
            pa[NA_P_DIL + x] = pa[NA_P_GS + x] = pa[NA_P_OS + x] = 1;
        }
        const float sc = 1.f / sqrtf((float)c.D);
        memcpy(&pa[NA_P_SCALE], &sc, 4);
        pa[NA_P_KK] = c.K[0] * c.K[1] * c.K[2];
        int *dp;
        CK(cudaMalloc(&dp, NA_P_COUNT * 4));
        CK(cudaMemcpy(dp, pa.data(), NA_P_COUNT * 4, cudaMemcpyHostToDevice));
        const double flop = 4.0 * c.B * c.H * ntok * (double)pa[NA_P_KK] * c.D;
        std::vector<B16> ref_o;
        std::vector<float> ref_l;
        for (const Variant &v : VARS) {
            if (strcmp(v.cs, c.name) != 0) continue;
            if (want_var != "all" && want_var != v.name) continue;
            int tiles = 1;
            for (int x = 0; x < 3; ++x) tiles *= (c.X[x] + v.tq[x] - 1) / v.tq[x];
            const int TQ = v.tq[0] * v.tq[1] * v.tq[2];
            const int smem = v.is_new == 3   ? NA_FWD_WGMMA128_SMEM(v.hd)
                             : v.is_new == 2 ? NA_FWD_WGMMA_SMEM_ST(v.hd, v.st ? v.st : 3)
                             : v.is_new ? NA_FWD_TC_SMEM(TQ, v.hd)
                                        : (TQ + 4 * 64) * (v.hd + 8) * 2 + 8 * 64;
            CK(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            cudaFuncAttributes fa;
            CK(cudaFuncGetAttributes(&fa, v.fn));
            int occ = 0;
            CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, v.fn, 32 * v.nw, smem));
            auto launch = [&]() {
                v.fn<<<dim3(tiles, c.B * c.H), 32 * v.nw, smem>>>(dp, dqkv, dqkv + n, dqkv + 2 * n, dout, dlse);
            };
            CK(cudaMemset(dout, 0xff, n * 2)); /* poison: NaN in bf16 */
            launch();
            CK(cudaGetLastError());
            CK(cudaDeviceSynchronize());
            std::vector<B16> go(n);
            std::vector<float> gl(nl);
            CK(cudaMemcpy(go.data(), dout, n * 2, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(gl.data(), dlse, nl * 4, cudaMemcpyDeviceToHost));
            double eo = 0, el = 0;
            bool nan = false;
            for (size_t i = 0; i < n; ++i) nan |= !std::isfinite(__bfloat162float(go[i]));
            if (ref_o.empty()) {
                ref_o = go;
                ref_l = gl;
            } else {
                for (size_t i = 0; i < n; ++i)
                    eo = std::max(eo, (double)fabsf(__bfloat162float(go[i]) - __bfloat162float(ref_o[i])));
                for (size_t i = 0; i < nl; ++i) el = std::max(el, (double)fabsf(gl[i] - ref_l[i]));
            }
            const int reps = reps_arg > 0 ? reps_arg : (flop > 1e12 ? 10 : flop > 2e11 ? 20 : 200);
            launch(); /* warm-up */
            std::vector<float> ts;
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            for (int i = 0; i < reps; ++i) {
                CK(cudaEventRecord(e0));
                launch();
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                ts.push_back(ms);
            }
            CK(cudaGetLastError());
            std::sort(ts.begin(), ts.end());
            const float med = ts[ts.size() / 2];
            printf("%-5s %-8s %9.4f %8.1f %10.2e %10.2e%s  [regs %d, local %zu B, smem %d, %d CTA/SM, %d CTAs, min %.4f]\n",
                   c.name, v.name, med, flop / (med * 1e-3) / 1e12, eo, el, nan ? " NAN!" : "", fa.numRegs,
                   fa.localSizeBytes, smem, occ, tiles * c.B * c.H, ts[0]);
            fflush(stdout);
        }
        cudaFree(dqkv);
        cudaFree(dout);
        cudaFree(dlse);
        cudaFree(dp);
    }
    return 0;
}
