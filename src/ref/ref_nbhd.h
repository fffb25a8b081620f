/*
 * ref_nbhd.h -- the neighbourhood iterator shared by the reference kernels,
 * plus strided-offset and scratch helpers.  Neighbour sets come only from
 * natten_window_of (core/window.h); this file just walks them.
 *
 * An output row (b, o[0..r-1], h) reads the full-resolution query
 * q[a] = o[a]*out_stride[a].  Under varlen the windows use sample b's extent
 * e[a], and a row with q[a] >= e[a] on any axis is "invalid" (fully masked).
 * Slot n of a row is decomposed row-major over the kernel axes.
 */
#ifndef NATTEN_REF_NBHD_H
#define NATTEN_REF_NBHD_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/dtype.h"
#include "core/problem.h"
#include "core/status.h"
#include "core/window.h"
#include "natten.h"

typedef struct ref_geom {
    const natten_problem *p;
    int rank;
    int64_t kk;      /* kernel volume */
    int64_t n_out;   /* prod of output extents */
    int64_t out_ext[NATTEN_MAX_RANK];
    int64_t group;   /* heads per kv head */
    double scale;
} ref_geom;

typedef struct ref_row {
    int valid;
    int64_t o[NATTEN_MAX_RANK]; /* output coordinates */
    int64_t q[NATTEN_MAX_RANK]; /* full-resolution query coordinates */
    natten_window w[NATTEN_MAX_RANK];
} ref_row;

static inline void ref_geom_init(ref_geom *g, const natten_problem *p) {
    g->p = p;
    g->rank = p->rank;
    g->kk = natten_problem_kernel_volume(p);
    g->n_out = 1;
    for (int a = 0; a < p->rank; ++a) {
        g->out_ext[a] = natten_out_extent(p, a);
        g->n_out *= g->out_ext[a];
    }
    g->group = p->heads / p->kv_heads;
    g->scale = natten_problem_scale(p);
}

/* Row for sample b and flat output index of (row-major over output extents). */
static inline void ref_row_at(const ref_geom *g, int64_t b, int64_t of, ref_row *r) {
    const natten_problem *p = g->p;
    for (int a = g->rank - 1; a >= 0; --a) {
        r->o[a] = of % g->out_ext[a];
        of /= g->out_ext[a];
    }
    r->valid = 1;
    for (int a = 0; a < g->rank; ++a) {
        const int64_t L = p->varlen_extent ? p->varlen_extent[b * g->rank + a] : p->extent[a];
        r->q[a] = r->o[a] * p->out_stride[a];
        if (r->q[a] >= L) {
            r->valid = 0;
            continue;
        }
        r->w[a] = natten_window_of(L, p->kernel[a], p->dilation[a], p->gna_stride[a],
                                   p->causal[a], r->q[a]);
    }
}

/* Key coordinates (and RPB indices, if ridx) of slot n; 0 if the slot is masked. */
static inline int ref_slot(const ref_geom *g, const ref_row *r, int64_t n,
                           int64_t key[NATTEN_MAX_RANK], int64_t *ridx) {
    int64_t k[NATTEN_MAX_RANK];
    for (int a = g->rank - 1; a >= 0; --a) {
        k[a] = n % g->p->kernel[a];
        n /= g->p->kernel[a];
    }
    for (int a = 0; a < g->rank; ++a) {
        const natten_window *w = &r->w[a];
        if (k[a] < w->valid_begin || k[a] >= w->valid_end) return 0;
        key[a] = w->start + k[a] * w->step;
        if (ridx) ridx[a] = natten_rpb_index(w, g->p->kernel[a], r->q[a], k[a]);
    }
    return 1;
}

/* Offsets (elements) in [B, X.., H, C] tensors: row part and channel stride. */
static inline int64_t ref_off(const natten_tensor *t, int rank, int64_t b, const int64_t *pos,
                              int64_t h) {
    int64_t o = b * t->stride[0];
    for (int a = 0; a < rank; ++a) o += pos[a] * t->stride[1 + a];
    return o + h * t->stride[1 + rank];
}
static inline int64_t ref_cstride(const natten_tensor *t, int rank) { return t->stride[2 + rank]; }

/* [B, N, H_kv, C] extra tensors. */
static inline int64_t ref_off_extra(const natten_tensor *t, int64_t b, int64_t n, int64_t h) {
    return b * t->stride[0] + n * t->stride[1] + h * t->stride[2];
}

/* [H, 2K-1 ..] bias tensors. */
static inline int64_t ref_off_rpb(const natten_tensor *t, int rank, int64_t h, const int64_t *idx) {
    int64_t o = h * t->stride[0];
    for (int a = 0; a < rank; ++a) o += idx[a] * t->stride[1 + a];
    return o;
}

/* Load n channels (stride cs) starting at element off into dst. */
static inline void ref_load_vec(double *dst, const natten_tensor *t, int64_t off, int64_t cs,
                                int64_t n, natten_dtype dt) {
    for (int64_t c = 0; c < n; ++c) dst[c] = natten_load(t->data, off + c * cs, dt);
}

/* A zeroed double buffer shaped like a tensor kind (row-major), for accumulation. */
typedef struct ref_acc {
    double *data;
    natten_tensor view; /* contiguous strides; data = the doubles */
    int64_t count;
    int ndim;
    int64_t shape[NATTEN_MAX_DIMS];
} ref_acc;

static inline int ref_acc_alloc(ref_acc *acc, const natten_problem *p, natten_tensor_kind kind) {
    acc->ndim = natten_shape_of(p, kind, acc->shape);
    acc->count = natten_contiguous_strides(acc->shape, acc->ndim, acc->view.stride);
    acc->data = (double *)calloc((size_t)(acc->count > 0 ? acc->count : 1), sizeof(double));
    acc->view.data = acc->data;
    return acc->data != NULL;
}

/* Store every element of acc into t (any strides), rounding to dt. */
static inline void ref_acc_store(const ref_acc *acc, natten_tensor *t, natten_dtype dt) {
    int64_t idx[NATTEN_MAX_DIMS] = {0};
    for (int64_t i = 0; i < acc->count; ++i) {
        int64_t off = 0;
        for (int d = 0; d < acc->ndim; ++d) off += idx[d] * t->stride[d];
        natten_store(t->data, off, dt, acc->data[i]);
        for (int d = acc->ndim - 1; d >= 0; --d) {
            if (++idx[d] < acc->shape[d]) break;
            idx[d] = 0;
        }
    }
}

static inline natten_status ref_oom(const char *fn) {
    return natten_set_error(NATTEN_STATUS_OUT_OF_MEMORY, "%s: reference kernel scratch allocation failed",
                            fn);
}

#endif /* NATTEN_REF_NBHD_H */
