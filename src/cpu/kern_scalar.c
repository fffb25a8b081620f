/*
 * kern_scalar.c -- portable microkernels (no intrinsics; the compiler may
 * still vectorise them for the baseline ISA).  Also the reference for the
 * SIMD kernels' contracts in cpu_internal.h.
 */
#include <math.h>

#include "core/dtype.h"
#include "cpu/cpu_internal.h"

static void dots_scalar(const float *a, const float *const *rows, int64_t n, int64_t dim,
                        float *out) {
    for (int64_t j = 0; j < n; ++j) {
        const float *r = rows[j];
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        int64_t c = 0;
        for (; c + 4 <= dim; c += 4) {
            s0 += a[c] * r[c];
            s1 += a[c + 1] * r[c + 1];
            s2 += a[c + 2] * r[c + 2];
            s3 += a[c + 3] * r[c + 3];
        }
        for (; c < dim; ++c) s0 += a[c] * r[c];
        out[j] = (s0 + s1) + (s2 + s3);
    }
}

static void wsum_scalar(const float *w, const float *const *rows, int64_t n, int64_t dim,
                        float *out) {
    for (int64_t c = 0; c < dim; ++c) out[c] = 0.f;
    for (int64_t j = 0; j < n; ++j) {
        const float wj = w[j];
        const float *r = rows[j];
        for (int64_t c = 0; c < dim; ++c) out[c] += wj * r[c];
    }
}

static float expsum_scalar(float *s, int64_t n, float m) {
    float sum = 0.f;
    for (int64_t j = 0; j < n; ++j) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    return sum;
}

static void f16_to_f32_scalar(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = natten_f16_to_f32(src[i]);
}

void natten_cpu_bf16_to_f32_scalar(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = natten_bf16_to_f32(src[i]);
}

void natten_cpu_transpose_scalar(const float *src, int64_t src_ld, float *dst, int64_t dst_ld,
                                 int64_t rows, int64_t cols) {
    for (int64_t r0 = 0; r0 < rows; r0 += 16)
        for (int64_t c0 = 0; c0 < cols; c0 += 16)
            for (int64_t r = r0; r < rows && r < r0 + 16; ++r)
                for (int64_t c = c0; c < cols && c < c0 + 16; ++c) dst[c * dst_ld + r] = src[r * src_ld + c];
}

const natten_cpu_kernels natten_cpu_kernels_scalar = {
    NATTEN_CPU_ISA_SCALAR, dots_scalar, wsum_scalar, expsum_scalar, f16_to_f32_scalar,
    natten_cpu_bf16_to_f32_scalar, natten_cpu_transpose_scalar, NULL, 0, NULL, NULL};
