/* fuzz_reader.h -- pulling typed values out of a libFuzzer input. */
#ifndef NATTEN_FUZZ_READER_H
#define NATTEN_FUZZ_READER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct fz_reader {
    const uint8_t *data;
    size_t size, pos;
} fz_reader;

static inline uint8_t fz_u8(fz_reader *r) { return r->pos < r->size ? r->data[r->pos++] : 0; }

static inline uint64_t fz_u64(fz_reader *r) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | fz_u8(r);
    return v;
}

/* Mostly small values, sometimes the edges of int64. */
static inline int64_t fz_i64(fz_reader *r) {
    const uint8_t sel = fz_u8(r);
    const int64_t small = (int64_t)(fz_u8(r) % 16);
    switch (sel % 10) {
    case 0: return small - 4;
    case 1: return INT64_MAX - small;
    case 2: return INT64_MIN + small;
    case 3: return (int64_t)((uint64_t)1 << (small * 4 % 63));
    case 4: return -(int64_t)((uint64_t)1 << (small * 4 % 63));
    case 5: return (int64_t)fz_u64(r);
    default: return small;
    }
}

#endif
