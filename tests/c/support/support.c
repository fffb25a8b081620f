/*
 * support.c -- reporting, RNG, strided host tensors and comparisons for the
 * C tests.  See support.h.
 */
#include "support.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"

int t_passed = 0, t_failed = 0;

void t_check(int cond, const char *fmt, ...) {
    if (cond) {
        ++t_passed;
        return;
    }
    ++t_failed;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

int t_summary(const char *name) {
    printf("%s: %d passed, %d failed\n", name, t_passed, t_failed);
    return t_failed == 0 && t_passed > 0 ? 0 : 1;
}

void t_rng_seed(t_rng *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull; }

uint64_t t_rng_u64(t_rng *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double t_rng_uniform(t_rng *r, double lo, double hi) {
    return lo + (hi - lo) * ((double)(t_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0));
}

int64_t t_rng_int(t_rng *r, int64_t lo, int64_t hi) {
    return lo + (int64_t)(t_rng_u64(r) % (uint64_t)(hi - lo + 1));
}

int64_t t_count(const natten_problem *p, natten_tensor_kind kind) {
    int64_t shape[NATTEN_MAX_DIMS];
    int nd = 0;
    if (natten_tensor_shape(p, kind, shape, &nd) != NATTEN_STATUS_SUCCESS) return -1;
    int64_t c = 1;
    for (int i = 0; i < nd; ++i) c *= shape[i];
    return c;
}

static natten_dtype kind_dtype(const natten_problem *p, natten_tensor_kind kind) {
    if (kind == NATTEN_TENSOR_LSE) return p->dtype == NATTEN_DTYPE_F64 ? NATTEN_DTYPE_F64 : NATTEN_DTYPE_F32;
    return p->dtype;
}

#define T_PREFIX 3 /* elements before the data pointer */
#define T_SUFFIX 2

void tbuf_init(tbuf *tb, const natten_problem *p, natten_tensor_kind kind, int layout) {
    memset(tb, 0, sizeof *tb);
    tb->dt = kind_dtype(p, kind);
    if (natten_tensor_shape(p, kind, tb->shape, &tb->ndim) != NATTEN_STATUS_SUCCESS) {
        fprintf(stderr, "tbuf_init: invalid problem: %s\n", natten_last_error_message());
        abort();
    }
    const size_t esz = natten_dtype_size(tb->dt);
    tb->count = 1;
    for (int i = 0; i < tb->ndim; ++i) tb->count *= tb->shape[i];
    int64_t span = 1;
    if (layout == T_CONTIG) {
        for (int i = tb->ndim - 1; i >= 0; --i) {
            tb->t.stride[i] = span;
            span *= tb->shape[i] > 0 ? tb->shape[i] : 1;
        }
    } else if (layout == T_PADDED) {
        for (int i = tb->ndim - 1; i >= 0; --i) {
            tb->t.stride[i] = span;
            span *= (tb->shape[i] > 0 ? tb->shape[i] : 1) + 1;
        }
    } else {
        for (int i = 0; i < tb->ndim; ++i) {
            tb->t.stride[i] = span;
            span *= (tb->shape[i] > 0 ? tb->shape[i] : 1) + (i % 2);
        }
    }
    tb->bytes = (size_t)(span + T_PREFIX + T_SUFFIX) * esz;
    tb->mem = (unsigned char *)malloc(tb->bytes);
    tb->snap = (unsigned char *)malloc(tb->bytes);
    if (!tb->mem || !tb->snap) abort();
    tb->t.data = tb->mem + T_PREFIX * esz;
    tbuf_fill_sentinel(tb);
}

void tbuf_free(tbuf *tb) {
    free(tb->mem);
    free(tb->snap);
    tb->mem = tb->snap = NULL;
}

int64_t tbuf_offset(const tbuf *tb, int64_t flat) {
    int64_t off = 0;
    for (int i = tb->ndim - 1; i >= 0; --i) {
        off += (flat % tb->shape[i]) * tb->t.stride[i];
        flat /= tb->shape[i];
    }
    return off;
}

double tbuf_get(const tbuf *tb, int64_t flat) { return natten_load(tb->t.data, tbuf_offset(tb, flat), tb->dt); }

void tbuf_set(tbuf *tb, int64_t flat, double v) { natten_store(tb->t.data, tbuf_offset(tb, flat), tb->dt, v); }

void tbuf_fill_random(tbuf *tb, t_rng *r, double lo, double hi) {
    for (int64_t i = 0; i < tb->count; ++i) tbuf_set(tb, i, t_rng_uniform(r, lo, hi));
}

void tbuf_to_double(const tbuf *tb, double *dst) {
    for (int64_t i = 0; i < tb->count; ++i) dst[i] = tbuf_get(tb, i);
}

void tbuf_from_double(tbuf *tb, const double *src) {
    for (int64_t i = 0; i < tb->count; ++i) tbuf_set(tb, i, src[i]);
}

void tbuf_fill_sentinel(tbuf *tb) { memset(tb->mem, 0xA5, tb->bytes); }

void tbuf_snapshot(tbuf *tb) { memcpy(tb->snap, tb->mem, tb->bytes); }

int tbuf_unchanged(const tbuf *tb) { return memcmp(tb->snap, tb->mem, tb->bytes) == 0; }

void t_tol(natten_dtype dt, double *atol, double *rtol) {
    switch (dt) {
    case NATTEN_DTYPE_F64: *atol = 1e-12, *rtol = 1e-10; return;
    case NATTEN_DTYPE_F32: *atol = 2e-6, *rtol = 2e-6; return;
    case NATTEN_DTYPE_F16: *atol = 2e-3, *rtol = 2e-3; return;
    case NATTEN_DTYPE_BF16: *atol = 1.6e-2, *rtol = 1.6e-2; return;
    }
    *atol = *rtol = 0;
}

static int compare_core(const char *what, const tbuf *got, const double *gotv, const double *want,
                        int64_t n, double atol, double rtol) {
    int64_t worst = -1, bad = 0;
    double worst_excess = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double g = got ? tbuf_get(got, i) : gotv[i], w = want[i];
        double excess;
        if (isinf(w) || isinf(g)) excess = (g == w) ? 0.0 : INFINITY;
        else if (isnan(g) || isnan(w)) excess = INFINITY;
        else excess = fabs(g - w) - (atol + rtol * fabs(w));
        if (excess > 0) {
            ++bad;
            if (worst < 0 || excess > worst_excess) worst = i, worst_excess = excess;
        }
    }
    if (bad) {
        const double g = got ? tbuf_get(got, worst) : gotv[worst];
        t_check(0, "%s: %lld of %lld elements off; worst [%lld] got %.9g want %.9g (atol %g rtol %g)",
                what, (long long)bad, (long long)n, (long long)worst, g, want[worst], atol, rtol);
        return 0;
    }
    t_check(1, "%s", what);
    return 1;
}

int t_compare(const char *what, const tbuf *got, const double *want, double atol, double rtol) {
    return compare_core(what, got, NULL, want, got->count, atol, rtol);
}

int t_compare_arrays(const char *what, const double *got, const double *want, int64_t n, double atol,
                     double rtol) {
    return compare_core(what, NULL, got, want, n, atol, rtol);
}

const char *t_dtype_name(natten_dtype dt) {
    switch (dt) {
    case NATTEN_DTYPE_F32: return "f32";
    case NATTEN_DTYPE_F16: return "f16";
    case NATTEN_DTYPE_BF16: return "bf16";
    case NATTEN_DTYPE_F64: return "f64";
    }
    return "?";
}

int tbuf_gaps_unchanged(const tbuf *tb) {
    unsigned char *copy = (unsigned char *)malloc(tb->bytes);
    if (!copy) abort();
    memcpy(copy, tb->mem, tb->bytes);
    const size_t esz = natten_dtype_size(tb->dt);
    const size_t base = (size_t)((unsigned char *)tb->t.data - tb->mem);
    for (int64_t i = 0; i < tb->count; ++i)
        memcpy(copy + base + (size_t)tbuf_offset(tb, i) * esz, tb->snap + base + (size_t)tbuf_offset(tb, i) * esz, esz);
    const int same = memcmp(copy, tb->snap, tb->bytes) == 0;
    free(copy);
    return same;
}
