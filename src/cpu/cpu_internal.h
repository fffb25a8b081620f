/*
 * cpu_internal.h -- the fast CPU framework shared by the fused kernels
 * (src/cpu/fast_*.c) and the per-ISA microkernels (kern_scalar.c,
 * avx2/kern_avx2.c, avx512/kern_avx512.c, neon/kern_neon.c).
 *
 * Microkernels work on f32 vectors whose channels are contiguous, addressed
 * through pointer lists: every neighbour set the window rule produces
 * (dilation, causal masks, both strides, borders, varlen, extra tokens) turns
 * into a list of row pointers, so one pair of kernels serves every feature.
 * Each kernel fixes its own summation order, independent of the thread that
 * runs it, which is what makes results identical for any thread count.
 */
#ifndef NATTEN_CPU_INTERNAL_H
#define NATTEN_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "natten.h"

typedef struct natten_cpu_kernels {
    natten_cpu_isa isa;
    /* out[j] = sum_c a[c] * rows[j][c], j < n, c < dim. */
    void (*dots)(const float *a, const float *const *rows, int64_t n, int64_t dim, float *out);
    /* out[c] = sum_j w[j] * rows[j][c] (overwrites out), c < dim. */
    void (*wsum)(const float *w, const float *const *rows, int64_t n, int64_t dim, float *out);
    /* s[j] = exp(s[j] - m) for j < n; returns the sum of the new s[j]. */
    float (*expsum)(float *s, int64_t n, float m);
    /* f16 bits -> f32 for n elements. */
    void (*f16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    /* bf16 bits -> f32 for n elements (a 16-bit shift, exact). */
    void (*bf16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    /* dst[c*dst_ld + r] = src[r*src_ld + c] for r < rows, c < cols. */
    void (*transpose)(const float *src, int64_t src_ld, float *dst, int64_t dst_ld, int64_t rows,
                      int64_t cols);
    /*
     * Optional (NULL: not available).  Lane-major forward tile: TILE_LANES
     * queries whose neighbour pairs i < n sit at the same offsets:
     *   q of lane l, channel c:         qt[c*16 + l]
     *   key of pair i, lane l, channel c: pk[i][c*ld + l]   (value: pv[i][c*ld + l])
     * s_i = scale*q.k + bias[i]; out_t[c*16 + l] = sum_i softmax_i * v (normalised),
     * lse[l] = log-sum-exp.  sbuf: n*16 floats.  group: pairs per key row
     * (consecutive pairs that share cache lines), a blocking hint.  Lanes >= nlanes are computed
     * on whatever the padding holds and never stored by the caller.
     */
    void (*tile_fwd)(const float *qt, int64_t ld, const float *const *pk, const float *const *pv,
                     const float *bias, int64_t n, int64_t group, int64_t D, int64_t Dv, float scale,
                     float *sbuf, float *out_t, float *lse);
    int tile_lanes; /* 16 for AVX-512, 0 when tile_fwd is NULL */
    /*
     * Optional.  Query side of the backward for such a tile: with dO of lane l
     * at dot[c*16 + l] and lse / delta (= dO.O) per lane,
     *   pbuf[i*16 + l] = P = exp(scale*q.k_i + bias[i] - lse),
     *   sbuf[i*16 + l] = dS = P*(dO.v_i - delta),
     *   dq_t[c*16 + l] = scale * sum_i dS_i k_i[c].
     */
    void (*tile_bwd)(const float *qt, const float *dot, int64_t ld, const float *const *pk,
                     const float *const *pv, const float *bias, int64_t n, int64_t group, int64_t D,
                     int64_t Dv, float scale, const float *lse, const float *delta, float *pbuf,
                     float *sbuf, float *dq_t);
    /* Optional.  out_t[c*16 + l] = mul * sum_i w[i*16 + l] * rows[i][c*ld + l]. */
    void (*tile_wsum)(const float *w, const float *const *rows, int64_t ld, int64_t n, int64_t dim,
                      float mul, float *out_t);
} natten_cpu_kernels;

extern const natten_cpu_kernels natten_cpu_kernels_scalar;
#if defined(NATTEN_HAVE_X86)
extern const natten_cpu_kernels natten_cpu_kernels_avx2;
extern const natten_cpu_kernels natten_cpu_kernels_avx512;
#endif
#if defined(NATTEN_HAVE_NEON)
extern const natten_cpu_kernels natten_cpu_kernels_neon;
#endif

/* Kernels of the active ISA level (detected once, or forced). */
const natten_cpu_kernels *natten_cpu_active_kernels(void);

/* Whether this CPU and build can run an ISA level. */
int natten_cpu_isa_supported(natten_cpu_isa isa);

/*
 * Thread pool.  fn(ctx, begin, end, tid) is called on disjoint chunks of
 * [0, n) of at most `grain` items, handed out dynamically; tid < the value of
 * nthreads (see below).  Which thread runs an item
 * must not change its result (kernels never share accumulators).  Nested or
 * concurrent calls run serially in the caller (tid 0).  At most nthreads
 * threads take part (pass the value of natten_parallel_threads() that sized
 * any per-thread scratch).
 */
typedef void (*natten_parallel_fn)(void *ctx, int64_t begin, int64_t end, int tid);
int natten_parallel_threads(void);
void natten_parallel_for(int nthreads, int64_t n, int64_t grain, natten_parallel_fn fn, void *ctx);

/* Reusable large buffers (cached across calls); put(NULL) is a no-op. */
void *natten_cpu_ws_get(size_t bytes);
void natten_cpu_ws_put(void *ptr);

/* Portable bf16 widening (the scalar, AVX2 and NEON tables' entry; compilers vectorize the shift). */
void natten_cpu_bf16_to_f32_scalar(const uint16_t *src, float *dst, int64_t n);

/* Portable blocked transpose (the scalar table's entry). */
void natten_cpu_transpose_scalar(const float *src, int64_t src_ld, float *dst, int64_t dst_ld,
                                 int64_t rows, int64_t cols);

#endif /* NATTEN_CPU_INTERNAL_H */
