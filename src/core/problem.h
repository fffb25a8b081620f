/*
 * problem.h -- internal helpers on a natten_problem shared by validation,
 * dispatch and the kernels.  None of them validates; callers run the checks
 * of validate.c first.
 */
#ifndef NATTEN_CORE_PROBLEM_H
#define NATTEN_CORE_PROBLEM_H

#include <stdint.h>

#include "natten.h"

/* Output rows along axis a: ceil(extent / out_stride). */
static inline int64_t natten_out_extent(const natten_problem *p, int a) {
    return (p->extent[a] - 1) / p->out_stride[a] + 1; /* ceil, without overflow (extent >= 1) */
}

/* Element type of a tensor kind (lse is f32, or f64 for f64 problems). */
static inline natten_dtype natten_kind_dtype(const natten_problem *p, natten_tensor_kind kind) {
    if (kind == NATTEN_TENSOR_LSE)
        return p->dtype == NATTEN_DTYPE_F64 ? NATTEN_DTYPE_F64 : NATTEN_DTYPE_F32;
    return p->dtype;
}

/* Shape without any check (rank must be 1..3; kind must be known).  Returns ndim. */
int natten_shape_of(const natten_problem *p, natten_tensor_kind kind,
                    int64_t shape[NATTEN_MAX_DIMS]);

/* Row-major strides of shape[0..n) into stride (a 0 extent counts as 1, so
 * strides stay distinct; entries from n on are 0).  Returns prod(shape). */
int64_t natten_contiguous_strides(const int64_t *shape, int n, int64_t stride[NATTEN_MAX_DIMS]);

/* Rules on the descriptor alone; messages start with fn. */
natten_status natten_check_problem(const char *fn, const natten_problem *p);

#endif /* NATTEN_CORE_PROBLEM_H */
