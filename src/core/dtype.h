/*
 * dtype.h -- scalar conversions between storage dtypes and f32/f64.
 * f16 and bf16 are carried as uint16_t bits; conversions round to nearest
 * even and keep NaN/Inf, so reference and fast kernels round identically.
 */
#ifndef NATTEN_CORE_DTYPE_H
#define NATTEN_CORE_DTYPE_H

#include <stdint.h>
#include <string.h>

#include "natten.h"

static inline float natten_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t natten_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float natten_bf16_to_f32(uint16_t h) { return natten_bits_to_f32((uint32_t)h << 16); }

static inline uint16_t natten_f32_to_bf16(float f) {
    uint32_t u = natten_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                            /* RNE */
    return (uint16_t)(u >> 16);
}

static inline float natten_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) return natten_bits_to_f32(sign | 0x7f800000u | (man << 13)); /* inf/nan */
    if (exp == 0) {
        if (man == 0) return natten_bits_to_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return natten_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t natten_f32_to_f16(float f) {
    uint32_t u = natten_f32_to_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   /* NaN */
    if (u >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* rounds to >= 65520: inf */
    if (u < 0x38800000u) {                                    /* below 2^-14: subnormal or 0 */
        /* scale so that the f16 subnormal unit (2^-24) becomes 1, then round to nearest even */
        float a = natten_bits_to_f32(u) * 16777216.0f;
        float r = a + 12582912.0f; /* 1.5*2^23 trick: RNE to integer */
        uint32_t m = natten_f32_to_bits(r) - 0x4b400000u;
        return (uint16_t)(sign | m);
    }
    uint32_t exp = (u >> 23) - 112u;
    uint32_t man = u & 0x7fffffu;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1u; /* RNE, may carry into exp */
    return (uint16_t)(sign | h);
}

/* Load element i of a typed buffer as double / store a double with rounding. */
static inline double natten_load(const void *base, int64_t i, natten_dtype dt) {
    switch (dt) {
    case NATTEN_DTYPE_F32: return ((const float *)base)[i];
    case NATTEN_DTYPE_F16: return natten_f16_to_f32(((const uint16_t *)base)[i]);
    case NATTEN_DTYPE_BF16: return natten_bf16_to_f32(((const uint16_t *)base)[i]);
    case NATTEN_DTYPE_F64: return ((const double *)base)[i];
    }
    return 0.0;
}

static inline void natten_store(void *base, int64_t i, natten_dtype dt, double v) {
    switch (dt) {
    case NATTEN_DTYPE_F32: ((float *)base)[i] = (float)v; return;
    case NATTEN_DTYPE_F16: ((uint16_t *)base)[i] = natten_f32_to_f16((float)v); return;
    case NATTEN_DTYPE_BF16: ((uint16_t *)base)[i] = natten_f32_to_bf16((float)v); return;
    case NATTEN_DTYPE_F64: ((double *)base)[i] = v; return;
    }
}

#endif /* NATTEN_CORE_DTYPE_H */
