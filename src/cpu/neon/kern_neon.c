/*
 * kern_neon.c -- AArch64 Advanced SIMD microkernels.  Built only on aarch64
 * (CMakeLists.txt adds src/cpu/neon/ there); the guard keeps the file inert
 * anywhere else.  Untested on this project's x86 CI machine.
 */
#if defined(__aarch64__) && defined(NATTEN_HAVE_NEON)
#include <arm_neon.h>
#include <math.h>

#include "core/dtype.h"
#include "cpu/cpu_internal.h"

static void dots_neon(const float *a, const float *const *rows, int64_t n, int64_t dim, float *out) {
    for (int64_t j = 0; j < n; ++j) {
        const float *r = rows[j];
        float32x4_t s0 = vdupq_n_f32(0.f), s1 = s0;
        int64_t c = 0;
        for (; c + 8 <= dim; c += 8) {
            s0 = vfmaq_f32(s0, vld1q_f32(a + c), vld1q_f32(r + c));
            s1 = vfmaq_f32(s1, vld1q_f32(a + c + 4), vld1q_f32(r + c + 4));
        }
        float s = vaddvq_f32(vaddq_f32(s0, s1));
        for (; c < dim; ++c) s += a[c] * r[c];
        out[j] = s;
    }
}

static void wsum_neon(const float *w, const float *const *rows, int64_t n, int64_t dim, float *out) {
    int64_t c = 0;
    for (; c + 16 <= dim; c += 16) {
        float32x4_t a0 = vdupq_n_f32(0.f), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < n; ++j) {
            const float *r = rows[j] + c;
            const float32x4_t wj = vdupq_n_f32(w[j]);
            a0 = vfmaq_f32(a0, wj, vld1q_f32(r));
            a1 = vfmaq_f32(a1, wj, vld1q_f32(r + 4));
            a2 = vfmaq_f32(a2, wj, vld1q_f32(r + 8));
            a3 = vfmaq_f32(a3, wj, vld1q_f32(r + 12));
        }
        vst1q_f32(out + c, a0);
        vst1q_f32(out + c + 4, a1);
        vst1q_f32(out + c + 8, a2);
        vst1q_f32(out + c + 12, a3);
    }
    for (; c < dim; ++c) {
        float s = 0.f;
        for (int64_t j = 0; j < n; ++j) s += w[j] * rows[j][c];
        out[c] = s;
    }
}

static float expsum_neon(float *s, int64_t n, float m) {
    float sum = 0.f;
    for (int64_t j = 0; j < n; ++j) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    return sum;
}

static void f16_to_f32_neon(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = natten_f16_to_f32(src[i]);
}

const natten_cpu_kernels natten_cpu_kernels_neon = {
    NATTEN_CPU_ISA_NEON, dots_neon, wsum_neon, expsum_neon, f16_to_f32_neon,
    natten_cpu_bf16_to_f32_scalar, natten_cpu_transpose_scalar, NULL, 0, NULL, NULL};
#else
typedef int natten_kern_neon_unused; /* ISO C: a translation unit is not empty */
#endif
