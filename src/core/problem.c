/*
 * problem.c -- descriptor defaults, shapes, the scale and the public window
 * query.  The rules themselves live in validate.c.
 */
#include <math.h>

#include "core/problem.h"
#include "core/status.h"
#include "core/window.h"

natten_status natten_problem_init(natten_problem *p, int rank) {
    if (!p) return natten_set_error(NATTEN_STATUS_NULL_POINTER, "natten_problem_init: p is NULL");
    if (rank < 1 || rank > NATTEN_MAX_RANK)
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT,
                                "natten_problem_init: rank=%d must be 1, 2 or 3", rank);
    p->rank = rank;
    p->batch = p->heads = p->kv_heads = 1;
    p->head_dim = p->head_dim_v = 1;
    for (int a = 0; a < NATTEN_MAX_RANK; ++a) {
        p->extent[a] = p->kernel[a] = p->dilation[a] = 1;
        p->gna_stride[a] = p->out_stride[a] = 1;
        p->causal[a] = 0;
    }
    p->scale = NAN;
    p->dtype = NATTEN_DTYPE_F32;
    p->impl = NATTEN_IMPL_AUTO;
    p->num_extra_kv = 0;
    p->varlen_extent = NULL;
    return NATTEN_STATUS_SUCCESS;
}

natten_status natten_problem_validate(const natten_problem *p) {
    return natten_check_problem("natten_problem_validate", p);
}

double natten_problem_scale(const natten_problem *p) {
    if (!p) return NAN;
    if (isnan(p->scale)) return p->head_dim > 0 ? 1.0 / sqrt((double)p->head_dim) : NAN;
    return p->scale;
}

int64_t natten_problem_kernel_volume(const natten_problem *p) {
    if (!p || p->rank < 1 || p->rank > NATTEN_MAX_RANK) return 0;
    int64_t kk = 1;
    for (int a = 0; a < p->rank; ++a) {
        if (p->kernel[a] < 1) return 0;
        if (__builtin_mul_overflow(kk, p->kernel[a], &kk)) return 0;
    }
    return kk;
}

int natten_shape_of(const natten_problem *p, natten_tensor_kind kind,
                    int64_t shape[NATTEN_MAX_DIMS]) {
    const int r = p->rank;
    int n = 0;
    switch (kind) {
    case NATTEN_TENSOR_Q:
    case NATTEN_TENSOR_K:
    case NATTEN_TENSOR_V:
        shape[n++] = p->batch;
        for (int a = 0; a < r; ++a) shape[n++] = p->extent[a];
        shape[n++] = kind == NATTEN_TENSOR_Q ? p->heads : p->kv_heads;
        shape[n++] = kind == NATTEN_TENSOR_V ? p->head_dim_v : p->head_dim;
        break;
    case NATTEN_TENSOR_OUT:
    case NATTEN_TENSOR_LSE:
    case NATTEN_TENSOR_LOGITS:
        shape[n++] = p->batch;
        for (int a = 0; a < r; ++a) shape[n++] = natten_out_extent(p, a);
        shape[n++] = p->heads;
        if (kind == NATTEN_TENSOR_OUT) shape[n++] = p->head_dim_v;
        if (kind == NATTEN_TENSOR_LOGITS) shape[n++] = natten_problem_kernel_volume(p);
        break;
    case NATTEN_TENSOR_EXTRA_K:
    case NATTEN_TENSOR_EXTRA_V:
        shape[n++] = p->batch;
        shape[n++] = p->num_extra_kv;
        shape[n++] = p->kv_heads;
        shape[n++] = kind == NATTEN_TENSOR_EXTRA_V ? p->head_dim_v : p->head_dim;
        break;
    case NATTEN_TENSOR_RPB:
        shape[n++] = p->heads;
        for (int a = 0; a < r; ++a) shape[n++] = 2 * p->kernel[a] - 1;
        break;
    }
    return n;
}

int64_t natten_contiguous_strides(const int64_t *shape, int n, int64_t stride[NATTEN_MAX_DIMS]) {
    for (int i = n; i < NATTEN_MAX_DIMS; ++i) stride[i] = 0;
    int64_t s = 1, count = 1; /* no overflow: natten_check_problem bounds every element count */
    for (int i = n - 1; i >= 0; --i) {
        stride[i] = s;
        s *= shape[i] > 0 ? shape[i] : 1;
        count *= shape[i];
    }
    return count;
}

/* The kind, then the descriptor: what natten_tensor_shape and
 * natten_tensor_contiguous check after their own pointers. */
static natten_status check_kind_and_problem(const char *fn, const natten_problem *p,
                                            natten_tensor_kind kind) {
    if ((int)kind < (int)NATTEN_TENSOR_Q || (int)kind > (int)NATTEN_TENSOR_RPB)
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT,
                                "%s: kind=%d is not a natten_tensor_kind", fn, (int)kind);
    return natten_check_problem(fn, p);
}

natten_status natten_tensor_shape(const natten_problem *p, natten_tensor_kind kind,
                                  int64_t shape[NATTEN_MAX_DIMS], int *ndim) {
    static const char fn[] = "natten_tensor_shape";
    if (!shape) return natten_set_error(NATTEN_STATUS_NULL_POINTER, "%s: shape is NULL", fn);
    if (!ndim) return natten_set_error(NATTEN_STATUS_NULL_POINTER, "%s: ndim is NULL", fn);
    natten_status st = check_kind_and_problem(fn, p, kind);
    if (st != NATTEN_STATUS_SUCCESS) return st;
    *ndim = natten_shape_of(p, kind, shape);
    return NATTEN_STATUS_SUCCESS;
}

natten_status natten_tensor_contiguous(const natten_problem *p, natten_tensor_kind kind,
                                       void *data, natten_tensor *t) {
    static const char fn[] = "natten_tensor_contiguous";
    if (!t) return natten_set_error(NATTEN_STATUS_NULL_POINTER, "%s: t is NULL", fn);
    natten_status st = check_kind_and_problem(fn, p, kind);
    if (st != NATTEN_STATUS_SUCCESS) return st;
    int64_t shape[NATTEN_MAX_DIMS];
    const int n = natten_shape_of(p, kind, shape);
    natten_tensor out;
    out.data = data;
    natten_contiguous_strides(shape, n, out.stride);
    *t = out;
    return NATTEN_STATUS_SUCCESS;
}

size_t natten_dtype_size(natten_dtype dtype) {
    switch (dtype) {
    case NATTEN_DTYPE_F32: return 4;
    case NATTEN_DTYPE_F16: return 2;
    case NATTEN_DTYPE_BF16: return 2;
    case NATTEN_DTYPE_F64: return 8;
    }
    return 0;
}

natten_status natten_axis_window(int64_t extent, int64_t kernel, int64_t dilation,
                                 int64_t gna_stride, int causal, int64_t query, natten_window *w) {
    static const char fn[] = "natten_axis_window";
    if (!w) return natten_set_error(NATTEN_STATUS_NULL_POINTER, "%s: w is NULL", fn);
    if (extent < 1)
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT, "%s: extent=%lld must be >= 1",
                                fn, (long long)extent);
    if (kernel < 1 || kernel > extent)
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT,
                                "%s: kernel=%lld must be in [1, extent=%lld]", fn,
                                (long long)kernel, (long long)extent);
    if (dilation < 1 || dilation > extent / kernel)
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT,
                                "%s: dilation=%lld must be >= 1 with dilation*kernel <= extent=%lld "
                                "(kernel=%lld)",
                                fn, (long long)dilation, (long long)extent, (long long)kernel);
    if (gna_stride < 1 || gna_stride > kernel)
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT,
                                "%s: gna_stride=%lld must be in [1, kernel=%lld]", fn,
                                (long long)gna_stride, (long long)kernel);
    if (query < 0 || query >= extent)
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT,
                                "%s: query=%lld must be in [0, extent=%lld)", fn,
                                (long long)query, (long long)extent);
    *w = natten_window_of(extent, kernel, dilation, gna_stride, causal, query);
    return NATTEN_STATUS_SUCCESS;
}
