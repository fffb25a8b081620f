/*
 * fast_dispatch.c -- fused neighborhood-attention forward and backward on the
 * CPU: threads (cpu_runtime.c) over lines of queries, SIMD microkernels of the
 * active ISA (cpu_internal.h) over channels.
 *
 * Shape of the work.  Every neighbour set comes from natten_window_of (one
 * call per axis per query line / query); the valid slots of a query become a
 * list of key and value row pointers (plus the extra tokens, appended), so
 * dilation, causal masks, both strides, borders and varlen cost nothing
 * special.  Per query: dots (scale*q.k + rpb) -> max -> exp/sum -> weighted
 * sum of value rows; lse = max + log(sum).
 *
 * Backward, without atomics:
 *   A. per query (parallel over query lines): recompute P = exp(s - lse),
 *      dP = dO.v, dS = P*(dP - delta), delta = dO.O; dq = scale*sum dS k.
 *      P and dS are kept per (query, slot) in a scratch buffer.
 *   B. per key (parallel over key lines): its inverse neighbourhood, built
 *      per axis by running natten_window_of over every query of the axis and
 *      recording which (query, slot) pairs land on each key (CSR; no second
 *      window formula); dk = scale*sum dS q, dv = sum P dO, in a fixed order.
 *   C. drpb per head and D. extra-KV grads per token: fixed-order sums of the
 *      same scratch.
 * Each output element is computed by exactly one task in an order that does
 * not depend on the thread count, so results are bitwise identical for any
 * pool size.
 *
 * Storage dtypes: f32 tensors whose channel axis is contiguous are read in
 * place; anything else (f16, bf16, strided channels) is first converted into
 * a contiguous f32 copy.  f64 problems are declined (the reference runs).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/problem.h"
#include "core/window.h"
#include "cpu/cpu_internal.h"
#include "cpu/fast.h"

#define SEG 32 /* queries (or keys) along the last axis per task */

/* ------------------------------------------------------------------------ */
/* Geometry                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct geom {
    int rank;
    int64_t B, H, Hkv, G, D, Dv, KK, NE, KKE;
    int64_t L[3], K[3], dil[3], gs[3], os[3];
    int causal[3];
    int64_t O[3];    /* padded output extents, axes >= rank are 1 */
    int64_t Lx[3];   /* extents, axes >= rank are 1 */
    int64_t Oin;     /* prod O */
    int64_t lines;   /* prod O[0..rank-2] (output lines per (b, h)) */
    int64_t nseg;    /* segments of the last output axis */
    float scale;
    const int32_t *varlen;
} geom;

static void geom_init(geom *g, const natten_problem *p) {
    g->rank = p->rank;
    g->B = p->batch;
    g->H = p->heads;
    g->Hkv = p->kv_heads;
    g->G = p->heads / p->kv_heads;
    g->D = p->head_dim;
    g->Dv = p->head_dim_v;
    g->KK = 1;
    g->Oin = 1;
    for (int a = 0; a < 3; ++a) {
        if (a < p->rank) {
            g->L[a] = g->Lx[a] = p->extent[a];
            g->K[a] = p->kernel[a];
            g->dil[a] = p->dilation[a];
            g->gs[a] = p->gna_stride[a];
            g->os[a] = p->out_stride[a];
            g->causal[a] = p->causal[a] != 0;
            g->O[a] = natten_out_extent(p, a);
        } else {
            g->L[a] = g->Lx[a] = g->K[a] = g->dil[a] = g->gs[a] = g->os[a] = g->O[a] = 1;
            g->causal[a] = 0;
        }
        g->KK *= g->K[a];
        g->Oin *= g->O[a];
    }
    g->NE = p->num_extra_kv;
    g->KKE = g->KK + g->NE;
    g->lines = 1;
    for (int a = 0; a < p->rank - 1; ++a) g->lines *= g->O[a];
    g->nseg = (g->O[p->rank - 1] + SEG - 1) / SEG;
    g->scale = (float)natten_problem_scale(p);
    g->varlen = p->varlen_extent;
}

/* Sample extents (varlen) padded to 3 axes. */
static void sample_extent(const geom *g, int64_t b, int64_t e[3]) {
    for (int a = 0; a < 3; ++a)
        e[a] = a < g->rank ? (g->varlen ? (int64_t)g->varlen[b * g->rank + a] : g->L[a]) : 1;
}

/* ------------------------------------------------------------------------ */
/* f32 views (in place or converted)                                         */
/* ------------------------------------------------------------------------ */

typedef struct fview {
    const float *data;
    int64_t st[NATTEN_MAX_DIMS];
    float *owned;
} fview;

typedef struct pack_ctx {
    const natten_tensor *t;
    natten_dtype dt;
    int ndim;
    int64_t shape[NATTEN_MAX_DIMS];
    int64_t dst_st[NATTEN_MAX_DIMS];
    int64_t rowlen;
    float *dst;
    const natten_cpu_kernels *kern;
} pack_ctx;

static void pack_rows(void *vctx, int64_t begin, int64_t end, int tid) {
    const pack_ctx *c = vctx;
    const int64_t last = c->t->stride[c->ndim - 1];
    const int nlead = c->ndim - 1;
    int64_t ix[NATTEN_MAX_DIMS] = {0}, off = 0, doff = 0;
    int64_t rem = begin;
    for (int i = nlead - 1; i >= 0; --i) { /* odometer start; then increments only */
        ix[i] = rem % c->shape[i];
        rem /= c->shape[i];
        off += ix[i] * c->t->stride[i];
        doff += ix[i] * c->dst_st[i];
    }
    for (int64_t r = begin; r < end; ++r) {
        float *d = c->dst + doff;
        if (c->dt == NATTEN_DTYPE_F32 && last == 1) {
            memcpy(d, (const float *)c->t->data + off, (size_t)c->rowlen * sizeof(float));
        } else if (c->dt == NATTEN_DTYPE_F16 && last == 1) {
            c->kern->f16_to_f32((const uint16_t *)c->t->data + off, d, c->rowlen);
        } else if (c->dt == NATTEN_DTYPE_BF16) {
            const uint16_t *s = (const uint16_t *)c->t->data + off;
            for (int64_t i = 0; i < c->rowlen; ++i) d[i] = natten_bf16_to_f32(s[i * last]);
        } else {
            for (int64_t i = 0; i < c->rowlen; ++i) d[i] = (float)natten_load(c->t->data, off + i * last, c->dt);
        }
        for (int i = nlead - 1; i >= 0; --i) {
            off += c->t->stride[i];
            doff += c->dst_st[i];
            if (++ix[i] < c->shape[i]) break;
            off -= ix[i] * c->t->stride[i];
            doff -= ix[i] * c->dst_st[i];
            ix[i] = 0;
        }
    }
}

/*
 * A view of tensor t (kind) as f32 rows with contiguous channels.  0 on OOM.
 * head_major: always copy, into [B, H, X.., C] order (for [B, X.., H, C]
 * kinds), so one head's rows are contiguous: neighbouring keys then sit next
 * to each other in cache instead of H*C floats apart (a power-of-two stride
 * that maps every key of a head onto a few L1 sets).
 */
static int make_view(const natten_problem *p, natten_tensor_kind kind, const natten_tensor *t,
                     fview *v, int nthreads, int head_major) {
    int64_t shape[NATTEN_MAX_DIMS];
    const int nd = natten_shape_of(p, kind, shape);
    v->owned = NULL;
    if (!head_major && p->dtype == NATTEN_DTYPE_F32 && (t->stride[nd - 1] == 1 || shape[nd - 1] == 1)) {
        v->data = t->data;
        for (int i = 0; i < NATTEN_MAX_DIMS; ++i) v->st[i] = t->stride[i];
        return 1;
    }
    int64_t total = 1;
    for (int i = 0; i < nd; ++i) total *= shape[i];
    for (int i = 0; i < NATTEN_MAX_DIMS; ++i) v->st[i] = 0;
    int64_t s = 1;
    if (head_major) { /* order: 0 (batch), nd-2 (heads), 1..nd-3 (spatial), nd-1 */
        v->st[nd - 1] = s;
        s *= shape[nd - 1];
        for (int i = nd - 3; i >= 1; --i) {
            v->st[i] = s;
            s *= shape[i];
            /* keep spatial pitches off multiples of 1 KiB (L1 set aliasing) */
            if (i > 1 && s % 256 == 0) s += 16;
        }
        v->st[nd - 2] = s;
        s *= shape[nd - 2];
        v->st[0] = s;
        s *= shape[0];
    } else {
        for (int i = nd - 1; i >= 0; --i) {
            v->st[i] = s;
            s *= shape[i];
        }
    }
    float *buf = natten_cpu_ws_get((size_t)(s > 0 ? s : 1) * sizeof(float));
    if (!buf) return 0;
    pack_ctx c = {t, p->dtype, nd, {0}, {0}, shape[nd - 1], buf, natten_cpu_active_kernels()};
    for (int i = 0; i < nd; ++i) {
        c.shape[i] = shape[i];
        c.dst_st[i] = v->st[i];
    }
    natten_parallel_for(nthreads, total / shape[nd - 1], 256, pack_rows, &c);
    v->data = buf;
    v->owned = buf;
    return 1;
}

static void store_row(void *base, int64_t off, int64_t stride, natten_dtype dt, const float *src,
                      int64_t n) {
    switch (dt) {
    case NATTEN_DTYPE_F32: {
        float *d = (float *)base + off;
        for (int64_t i = 0; i < n; ++i) d[i * stride] = src[i];
        return;
    }
    case NATTEN_DTYPE_BF16: {
        uint16_t *d = (uint16_t *)base + off;
        for (int64_t i = 0; i < n; ++i) d[i * stride] = natten_f32_to_bf16(src[i]);
        return;
    }
    case NATTEN_DTYPE_F16: {
        uint16_t *d = (uint16_t *)base + off;
        for (int64_t i = 0; i < n; ++i) d[i * stride] = natten_f32_to_f16(src[i]);
        return;
    }
    case NATTEN_DTYPE_F64: {
        double *d = (double *)base + off;
        for (int64_t i = 0; i < n; ++i) d[i * stride] = src[i];
        return;
    }
    }
}

static void store_zero_row(void *base, int64_t off, int64_t stride, natten_dtype dt, int64_t n) {
    for (int64_t i = 0; i < n; ++i) natten_store(base, off + i * stride, dt, 0.0);
}

/* Offset of spatial position pos[0..rank) with batch b and head h in a
 * [B, X.., H, C] tensor with strides st. */
static inline int64_t row_off(const int64_t *st, int rank, int64_t b, const int64_t *pos, int64_t h) {
    int64_t off = b * st[0] + h * st[rank + 1];
    for (int a = 0; a < rank; ++a) off += pos[a] * st[a + 1];
    return off;
}

/* ------------------------------------------------------------------------ */
/* Neighbour lists                                                           */
/* ------------------------------------------------------------------------ */

/* The neighbour list of one query: row pointers into packed k and v, the
 * flattened slot of each entry and its rpb bias. */
typedef struct nlist {
    const float **kp, **vp;
    int64_t *slot;
    float *bias;
    int64_t n;
} nlist;

typedef struct common {
    const natten_problem *p;
    geom g;
    const natten_cpu_kernels *kern;
    fview q, k, v, ek, ev, out, dout;
    const natten_tensor *rpb;
    natten_tensor *out_t, *lse_t;
    /* backward */
    natten_tensor *dq_t, *dk_t, *dv_t, *drpb_t, *dek_t, *dev_t;
    const natten_tensor *lse_in;
    float *Pbuf, *Sbuf;            /* [B][H][Oin][KKE] */
    int64_t *inv_start, *inv_ent;  /* CSR per (sample, axis) */
    int64_t inv_stride_start, inv_stride_ent; /* per table */
    int64_t inv_maxlen[3];
    int varlen_tables;             /* 1: one table set per sample */
    int64_t scratch_floats;        /* per thread */
    char *scratch;                 /* per-thread scratch, scratch_bytes each */
    size_t scratch_bytes;
    const struct tile_common *tile; /* lane-major packs of the tile forward, or NULL */
    float *rpb_all;                 /* rpb as f32 [H][prod(2K-1)], or NULL */
    natten_window *wlast;           /* natten_window_of for every position of the last axis
                                       at the full extent (no varlen), or NULL */
} common;

/*
 * Neighbour lists are built in two steps.  line_prep: for one line of
 * queries (fixed b, h and leading output indices), the windows of the leading
 * axes (natten_window_of), their valid slot combinations as key/value row
 * offsets, slot bases and rpb bases, and this head's rpb as an f32 table.
 * query_list: per query of the line, the last axis's window expands those.
 */
typedef struct lineprep {
    int inside;
    int64_t e[3], pos[3];
    int64_t nlead;
    int64_t *lk, *lv, *lslot, *lrpb, *lrow; /* lrow: lead spatial row index (lane-major packs) */
    const float *rpbf; /* this head's rpb, f32 (into common.rpb_all) */
    const float *kb, *vb;
    const float **ekp, **evp;
} lineprep;

typedef struct qscratch {
    lineprep lp;
    nlist nl;
    float *s, *dp, *row;
    /* lane-major tiles */
    const float **tpk, **tpv;
    float *tbias, *tsbuf, *tsbuf2, *tout, *tlse, *tq, *tdo;
} qscratch;

static int64_t rpb_table_size(const geom *g) {
    int64_t n = 1;
    for (int a = 0; a < g->rank; ++a) n *= 2 * g->K[a] - 1;
    return n;
}

static size_t qscratch_bytes(const geom *g) {
    const int64_t n = (g->KKE + 31) & ~(int64_t)15; /* keeps every array 64-bit aligned */
    const int64_t dmax = (g->D > g->Dv ? g->D : g->Dv) + 16;
    const int64_t nl = g->KK / g->K[g->rank - 1] + 1;
    return (size_t)n * (2 * sizeof(float *) + sizeof(int64_t) + 3 * sizeof(float)) +
           (size_t)dmax * sizeof(float) + (size_t)nl * 5 * sizeof(int64_t) +
           (size_t)(g->KK + 16) * (2 * sizeof(float *) + sizeof(float)) + (size_t)(g->KK + 16) * 16 * sizeof(float) +
           (size_t)(g->Dv + 16) * 16 * sizeof(float) + 64 * sizeof(float) +
           (size_t)(g->D + 16) * 16 * sizeof(float) +
           (size_t)(g->KK + 16) * 16 * sizeof(float) + (size_t)(g->Dv + g->D + 16) * 16 * sizeof(float) +
           (size_t)rpb_table_size(g) * sizeof(float) + (size_t)(g->NE + 1) * 2 * sizeof(float *) + 256;
}

static qscratch qscratch_at(const common *c, int tid) {
    const geom *g = &c->g;
    const int64_t n = (g->KKE + 31) & ~(int64_t)15; /* keeps every array 64-bit aligned */
    const int64_t nl = g->KK / g->K[g->rank - 1] + 1;
    char *s = c->scratch + (size_t)tid * c->scratch_bytes;
    qscratch q;
    q.nl.kp = (const float **)s;
    s += n * sizeof(float *);
    q.nl.vp = (const float **)s;
    s += n * sizeof(float *);
    q.nl.slot = (int64_t *)s;
    s += n * sizeof(int64_t);
    q.nl.bias = (float *)s;
    s += n * sizeof(float);
    q.s = (float *)s;
    s += n * sizeof(float);
    q.dp = (float *)s;
    s += n * sizeof(float);
    q.lp.lk = (int64_t *)s;
    s += nl * sizeof(int64_t);
    q.lp.lv = (int64_t *)s;
    s += nl * sizeof(int64_t);
    q.lp.lslot = (int64_t *)s;
    s += nl * sizeof(int64_t);
    q.lp.lrpb = (int64_t *)s;
    s += nl * sizeof(int64_t);
    q.lp.lrow = (int64_t *)s;
    s += nl * sizeof(int64_t);
    q.tpk = (const float **)s;
    s += (g->KK + 16) * sizeof(float *);
    q.tpv = (const float **)s;
    s += (g->KK + 16) * sizeof(float *);
    q.tbias = (float *)s;
    s += (g->KK + 16) * sizeof(float);
    s = (char *)(((uintptr_t)s + 63) & ~(uintptr_t)63);
    q.tsbuf = (float *)s;
    s += (g->KK + 16) * 16 * sizeof(float);
    q.tsbuf2 = (float *)s;
    s += (g->KK + 16) * 16 * sizeof(float);
    q.tout = (float *)s;
    s += (g->Dv + g->D + 16) * 16 * sizeof(float);
    q.tdo = (float *)s;
    s += (g->Dv + 16) * 16 * sizeof(float);
    q.tlse = (float *)s;
    s += 64 * sizeof(float);
    q.tq = (float *)s;
    s += (g->D + 16) * 16 * sizeof(float);
    q.lp.ekp = (const float **)s;
    s += (g->NE + 1) * sizeof(float *);
    q.lp.evp = (const float **)s;
    s += (g->NE + 1) * sizeof(float *);
    s += rpb_table_size(g) * sizeof(float);
    s = (char *)(((uintptr_t)s + 63) & ~(uintptr_t)63);
    q.row = (float *)s;
    return q;
}

/* Prepare the line (b, h, o[0..rank-1)); *rpb_h: the head whose rpb table
 * lp->rpbf holds (-1: none), updated. */
static void line_prep(const common *c, int64_t b, int64_t h, const int64_t *o, lineprep *lp,
                      int64_t *rpb_h) {
    const geom *g = &c->g;
    const int r = g->rank;
    sample_extent(g, b, lp->e);
    natten_window w[2];
    lp->inside = 1;
    for (int a = 0; a < r - 1; ++a) {
        lp->pos[a] = o[a] * g->os[a];
        if (lp->pos[a] >= lp->e[a]) {
            lp->inside = 0;
            return;
        }
        w[a] = natten_window_of(lp->e[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], lp->pos[a]);
    }
    const int64_t hk = h / g->G;
    lp->kb = c->k.data + b * c->k.st[0] + hk * c->k.st[r + 1];
    lp->vb = c->v.data + b * c->v.st[0] + hk * c->v.st[r + 1];
    int64_t dims[3] = {1, 1, 1};
    for (int a = 0; a < r; ++a) dims[a] = 2 * g->K[a] - 1;
    lp->rpbf = c->rpb_all ? c->rpb_all + h * rpb_table_size(g) : NULL;
    /* valid combinations of the leading axes (at most 2), in slot order */
    int64_t n = 0;
    if (r == 1) {
        lp->lk[0] = lp->lv[0] = lp->lslot[0] = lp->lrpb[0] = lp->lrow[0] = 0;
        n = 1;
    } else if (r == 2) {
        for (int64_t k0 = w[0].valid_begin; k0 < w[0].valid_end; ++k0) {
            const int64_t x0 = w[0].start + k0 * w[0].step;
            lp->lk[n] = x0 * c->k.st[1];
            lp->lv[n] = x0 * c->v.st[1];
            lp->lslot[n] = k0 * g->K[1];
            lp->lrpb[n] = c->rpb ? natten_rpb_index(&w[0], g->K[0], lp->pos[0], k0) * dims[1] : 0;
            lp->lrow[n] = x0;
            ++n;
        }
    } else {
        for (int64_t k0 = w[0].valid_begin; k0 < w[0].valid_end; ++k0) {
            const int64_t x0 = w[0].start + k0 * w[0].step;
            const int64_t r0 = c->rpb ? natten_rpb_index(&w[0], g->K[0], lp->pos[0], k0) : 0;
            for (int64_t k1 = w[1].valid_begin; k1 < w[1].valid_end; ++k1) {
                const int64_t x1 = w[1].start + k1 * w[1].step;
                lp->lk[n] = x0 * c->k.st[1] + x1 * c->k.st[2];
                lp->lv[n] = x0 * c->v.st[1] + x1 * c->v.st[2];
                lp->lslot[n] = (k0 * g->K[1] + k1) * g->K[2];
                lp->lrpb[n] =
                    c->rpb ? (r0 * dims[1] + natten_rpb_index(&w[1], g->K[1], lp->pos[1], k1)) * dims[2] : 0;
                lp->lrow[n] = x0 * g->L[1] + x1;
                ++n;
            }
        }
    }
    lp->nlead = n;
    for (int64_t t = 0; t < g->NE; ++t) {
        lp->ekp[t] = c->ek.data + b * c->ek.st[0] + t * c->ek.st[1] + hk * c->ek.st[2];
        lp->evp[t] = c->ev.data + b * c->ev.st[0] + t * c->ev.st[1] + hk * c->ev.st[2];
    }
}

/* rpb as an f32 table per head (both passes read it per query). 0 on OOM. */
static int build_rpb_all(common *c) {
    if (!c->rpb) return 1;
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t nb = rpb_table_size(g);
    int64_t dims[3] = {1, 1, 1};
    for (int a = 0; a < r; ++a) dims[a] = 2 * g->K[a] - 1;
    c->rpb_all = malloc((size_t)(g->H * nb) * sizeof(float));
    if (!c->rpb_all) return 0;
    for (int64_t h = 0; h < g->H; ++h)
        for (int64_t i = 0; i < nb; ++i) {
            int64_t rem = i, off = h * c->rpb->stride[0];
            for (int a = r - 1; a >= 0; --a) {
                off += (rem % dims[a]) * c->rpb->stride[a + 1];
                rem /= dims[a];
            }
            c->rpb_all[h * nb + i] = (float)natten_load(c->rpb->data, off, c->p->dtype);
        }
    return 1;
}

/* Windows of the last axis, once per call (queries of every line share them). */
static int build_wlast(common *c) {
    const geom *g = &c->g;
    const int a = g->rank - 1;
    if (g->varlen) return 1; /* extents differ per sample: computed per query */
    c->wlast = malloc((size_t)g->L[a] * sizeof(natten_window));
    if (!c->wlast) return 0;
    for (int64_t i = 0; i < g->L[a]; ++i)
        c->wlast[i] = natten_window_of(g->L[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], i);
    return 1;
}

static inline natten_window last_window(const common *c, int64_t e, int64_t i) {
    const geom *g = &c->g;
    const int a = g->rank - 1;
    if (c->wlast) return c->wlast[i];
    return natten_window_of(e, g->K[a], g->dil[a], g->gs[a], g->causal[a], i);
}

/* Switch a prepared line to another head (the leading windows do not
 * depend on the head). */
static void line_set_head(const common *c, int64_t b, int64_t h, lineprep *lp) {
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t hk = h / g->G;
    lp->kb = c->k.data + b * c->k.st[0] + hk * c->k.st[r + 1];
    lp->vb = c->v.data + b * c->v.st[0] + hk * c->v.st[r + 1];
    lp->rpbf = c->rpb_all ? c->rpb_all + h * rpb_table_size(g) : NULL;
    for (int64_t t = 0; t < g->NE; ++t) {
        lp->ekp[t] = c->ek.data + b * c->ek.st[0] + t * c->ek.st[1] + hk * c->ek.st[2];
        lp->evp[t] = c->ev.data + b * c->ev.st[0] + t * c->ev.st[1] + hk * c->ev.st[2];
    }
}

/* The list of the query at last-axis output index ol of a prepared line.
 * Returns 0 if the query is outside the sample (varlen). */
static int query_list(const common *c, lineprep *lp, int64_t ol, nlist *nl) {
    const geom *g = &c->g;
    const int a = g->rank - 1;
    const int64_t i = ol * g->os[a];
    if (!lp->inside || i >= lp->e[a]) return 0;
    lp->pos[a] = i;
    const natten_window w = last_window(c, lp->e[a], i);
    const int64_t ks = c->k.st[a + 1], vs = c->v.st[a + 1];
    const int64_t kb = w.valid_begin, ke = w.valid_end;
    int64_t n = 0;
    for (int64_t l = 0; l < lp->nlead; ++l) {
        const float *kr = lp->kb + lp->lk[l], *vr = lp->vb + lp->lv[l];
        for (int64_t k = kb; k < ke; ++k) {
            const int64_t x = w.start + k * w.step;
            nl->kp[n] = kr + x * ks;
            nl->vp[n] = vr + x * vs;
            nl->slot[n] = lp->lslot[l] + k;
            ++n;
        }
    }
    if (c->rpb) {
        n = 0;
        for (int64_t l = 0; l < lp->nlead; ++l)
            for (int64_t k = kb; k < ke; ++k)
                nl->bias[n++] = lp->rpbf[lp->lrpb[l] + natten_rpb_index(&w, g->K[a], i, k)];
    }
    for (int64_t t = 0; t < g->NE; ++t) {
        nl->kp[n] = lp->ekp[t];
        nl->vp[n] = lp->evp[t];
        nl->slot[n] = g->KK + t;
        if (c->rpb) nl->bias[n] = 0.f;
        ++n;
    }
    nl->n = n;
    return 1;
}

static inline int64_t olin_of(const geom *g, const int64_t o[3]) {
    return (o[0] * g->O[1] + o[1]) * g->O[2] + o[2];
}

/* ------------------------------------------------------------------------ */
/* Forward                                                                   */
/* ------------------------------------------------------------------------ */

static void free_views(common *c) {
    natten_cpu_ws_put(c->q.owned);
    natten_cpu_ws_put(c->k.owned);
    natten_cpu_ws_put(c->v.owned);
    natten_cpu_ws_put(c->ek.owned);
    natten_cpu_ws_put(c->ev.owned);
    natten_cpu_ws_put(c->out.owned);
    natten_cpu_ws_put(c->dout.owned);
}

/* Which problems the fast kernels take. */
static int fast_supported(const natten_problem *p) {
    if (p->dtype == NATTEN_DTYPE_F64) return 0;
    return 1;
}

/* One query by the generic list path: o[0..rank-1) set; writes out and lse. */
static void fwd_query(const common *c, qscratch *sc, int64_t b, int64_t h, int64_t o[3], int64_t ol,
                      int out_direct) {
    const geom *g = &c->g;
    const int r = g->rank;
    const natten_dtype dt = c->p->dtype;
    o[r - 1] = ol;
    const int64_t ooff = row_off(c->out_t->stride, r, b, o, h);
    int64_t loff = 0;
    if (c->lse_t) loff = row_off(c->lse_t->stride, r, b, o, 0) + h * c->lse_t->stride[r + 1];
    if (!query_list(c, &sc->lp, ol, &sc->nl)) {
        store_zero_row(c->out_t->data, ooff, c->out_t->stride[r + 2], dt, g->Dv);
        if (c->lse_t) ((float *)c->lse_t->data)[loff] = -INFINITY;
        return;
    }
    const float *qrow = c->q.data + row_off(c->q.st, r, b, sc->lp.pos, h);
    const int64_t n = sc->nl.n;
    c->kern->dots(qrow, sc->nl.kp, n, g->D, sc->s);
    float m = -INFINITY;
    if (c->rpb)
        for (int64_t j = 0; j < n; ++j) sc->s[j] = sc->s[j] * g->scale + sc->nl.bias[j];
    else
        for (int64_t j = 0; j < n; ++j) sc->s[j] *= g->scale;
    for (int64_t j = 0; j < n; ++j) m = sc->s[j] > m ? sc->s[j] : m;
    const float sum = c->kern->expsum(sc->s, n, m);
    const float inv = 1.0f / sum;
    float *orow = out_direct ? (float *)c->out_t->data + ooff : sc->row;
    c->kern->wsum(sc->s, sc->nl.vp, n, g->Dv, orow);
    for (int64_t i = 0; i < g->Dv; ++i) orow[i] *= inv;
    if (!out_direct) store_row(c->out_t->data, ooff, c->out_t->stride[r + 2], dt, orow, g->Dv);
    if (c->lse_t) ((float *)c->lse_t->data)[loff] = m + logf(sum);
}

/* Generic forward: tasks (b, line, segment of SEG outputs), every head of a
 * query position in turn: the heads of one position share cache lines in the
 * [.., H, D] layout, so nothing is repacked. */
static void fwd_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const geom *g = &c->g;
    const int r = g->rank;
    qscratch sc = qscratch_at(c, tid);
    const int out_direct = c->p->dtype == NATTEN_DTYPE_F32 && c->out_t->stride[r + 2] == 1;
    int64_t rpb_h = -1;
    for (int64_t task = begin; task < end; ++task) {
        int64_t h, o[3] = {0, 0, 0}, t = task;
        const int64_t seg = t % g->nseg;
        t /= g->nseg;
        int64_t line = t % g->lines;
        const int64_t b = t / g->lines;
        for (int a = r - 2; a >= 0; --a) {
            o[a] = line % g->O[a];
            line /= g->O[a];
        }
        const int64_t last0 = seg * SEG;
        const int64_t last1 = last0 + SEG < g->O[r - 1] ? last0 + SEG : g->O[r - 1];
        line_prep(c, b, 0, o, &sc.lp, &rpb_h);
        for (int64_t ol = last0; ol < last1; ++ol)
            for (h = 0; h < g->H; ++h) {
                line_set_head(c, b, h, &sc.lp);
                fwd_query(c, &sc, b, h, o, ol, out_direct);
            }
    }
}

/* ------------------------------------------------------------------------ */
/* Lane-major tiles (forward, when the ISA has tile_fwd)                     */
/* ------------------------------------------------------------------------ */
/*
 * Along the last axis (out_stride 1), positions are reordered group-major:
 * x = r + d*p (dilation group r, local index p) goes to u = goff[r] + p.  A
 * pack holds, per (batch, head, leading row), channel-major rows of u:
 * pack[c*XP + u].  Consecutive queries of one group whose windows are the
 * same shift of their own position (checked per query with natten_window_of:
 * full window, start - x equal across the run) then read their keys at
 * consecutive u, so a tile of 16 such queries is a small GEMM on aligned
 * lanes: no horizontal sums, no per-query lists.  Everything else (borders
 * of shifted windows, causal heads, GNA groups, varlen tails) takes the
 * generic path, query by query.
 */
#define TSEG 64
#define TILE_MIN 6 /* shorter runs go query by query */
#ifndef NATTEN_TILE_MIN_KK
#define NATTEN_TILE_MIN_KK 1 /* neighbours per query from which tiles are used */
#endif

typedef struct lmpack {
    float *data;
    int64_t XP, RP, HP, BP;
} lmpack;

typedef struct lm_ctx {
    const common *c;
    const fview *src;
    lmpack *dst;
    int64_t C, Hn, nR;
    const int64_t *goff;
} lm_ctx;

static void lm_pack_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const lm_ctx *x = vctx;
    const geom *g = &x->c->g;
    const int r = g->rank;
    const int64_t d = g->dil[r - 1], L = g->L[r - 1];
    for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t R = idx % x->nR, h = (idx / x->nR) % x->Hn, b = idx / (x->nR * x->Hn);
        int64_t soff = b * x->src->st[0] + h * x->src->st[r + 1];
        if (r == 2) soff += R * x->src->st[1];
        if (r == 3) soff += (R / g->L[1]) * x->src->st[1] + (R % g->L[1]) * x->src->st[2];
        const int64_t sx = x->src->st[r];
        const float *src = x->src->data + soff;
        float *dst = x->dst->data + b * x->dst->BP + h * x->dst->HP + R * x->dst->RP;
        for (int64_t rr = 0; rr < d && rr < L; ++rr) {
            const int64_t nr = x->goff[rr + 1] - x->goff[rr];
            for (int64_t p0 = 0; p0 < nr; p0 += 16) {
                const int64_t nb = nr - p0 < 16 ? nr - p0 : 16;
                x->c->kern->transpose(src + (rr + d * p0) * sx, d * sx, dst + x->goff[rr] + p0, x->dst->XP, nb,
                                      x->C);
            }
        }
        for (int64_t ch = 0; ch < x->C; ++ch)
            for (int64_t u = L; u < x->dst->XP; ++u) dst[ch * x->dst->XP + u] = 0.f;
    }
}

static int lm_pack(const common *c, const fview *src, int64_t Hn, int64_t C, const int64_t *goff,
                   lmpack *dst, int nt) {
    const geom *g = &c->g;
    const int r = g->rank;
    int64_t XP = ((g->L[r - 1] + 16 + 15) / 16) * 16;
    if (XP % 256 == 0) XP += 16;
    dst->XP = XP;
    dst->RP = C * XP;
    int64_t nR = 1;
    for (int a = 0; a < r - 1; ++a) nR *= g->L[a];
    dst->HP = nR * dst->RP;
    dst->BP = Hn * dst->HP;
    dst->data = natten_cpu_ws_get((size_t)(g->B * dst->BP) * sizeof(float) + 64 * sizeof(float));
    if (!dst->data) return 0;
    lm_ctx x = {c, src, dst, C, Hn, nR, goff};
    natten_parallel_for(nt, g->B * Hn * nR, 4, lm_pack_task, &x);
    return 1;
}

typedef struct tile_common {
    lmpack q, k, v, d; /* q and d (dO): backward key tiles only */
    int64_t *keyshift; /* backward key tiles: shift of each regular key, INT64_MIN otherwise */
    int64_t *goff;  /* dilation groups of the last axis, d+1 entries */
    int64_t *xofu;  /* u -> x */
    int64_t nseg;   /* TSEG segments of u */
} tile_common;

static const tile_common *tile_of(const common *c);

/* Run one tile: lanes u0..u0+nl-1 (one group) with common shift `shift`. */
static void fwd_tile(const common *c, const tile_common *tc, qscratch *sc, int64_t b, int64_t h,
                     int64_t o[3], int64_t u0, int64_t nl, int64_t shift, const natten_window *w0,
                     int64_t x0, int out_direct) {
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t hk = h / g->G, K = g->K[r - 1], d = g->dil[r - 1];
    /* the tile's queries, transposed here (each is read by this tile only) */
    sc->lp.pos[r - 1] = x0;
    const float *q0 = c->q.data + row_off(c->q.st, r, b, sc->lp.pos, h);
    /* idle lanes (>= nl) must hold ordinary numbers: stale scratch could be
     * denormal or NaN, and denormals cost microcode assists on every FMA */
    if (nl < 16) memset(sc->tq, 0, (size_t)g->D * 16 * sizeof(float));
    c->kern->transpose(q0, d * c->q.st[r], sc->tq, 16, nl, g->D);
    const float *qt = sc->tq;
    const float *kb = tc->k.data + b * tc->k.BP + hk * tc->k.HP + u0 + shift;
    const float *vb = tc->v.data + b * tc->v.BP + hk * tc->v.HP + u0 + shift;
    int64_t n = 0;
    for (int64_t l = 0; l < sc->lp.nlead; ++l)
        for (int64_t k = 0; k < K; ++k) {
            sc->tpk[n] = kb + sc->lp.lrow[l] * tc->k.RP + k;
            sc->tpv[n] = vb + sc->lp.lrow[l] * tc->v.RP + k;
            if (c->rpb) sc->tbias[n] = sc->lp.rpbf[sc->lp.lrpb[l] + natten_rpb_index(w0, K, x0, k)];
            ++n;
        }
    c->kern->tile_fwd(qt, tc->k.XP, sc->tpk, sc->tpv, c->rpb ? sc->tbias : NULL, n, K, g->D, g->Dv,
                      g->scale, sc->tsbuf, sc->tout, sc->tlse);
    const natten_dtype dt = c->p->dtype;
    o[r - 1] = x0;
    const int64_t ooff = row_off(c->out_t->stride, r, b, o, h);
    const int64_t ost = c->out_t->stride[r]; /* out_stride is 1 on this axis: o == x */
    if (out_direct) {
        c->kern->transpose(sc->tout, 16, (float *)c->out_t->data + ooff, d * ost, g->Dv, nl);
    } else {
        for (int64_t l = 0; l < nl; ++l) {
            for (int64_t ch = 0; ch < g->Dv; ++ch) sc->row[ch] = sc->tout[ch * 16 + l];
            store_row(c->out_t->data, ooff + l * d * ost, c->out_t->stride[r + 2], dt, sc->row, g->Dv);
        }
    }
    if (c->lse_t) {
        const int64_t loff = row_off(c->lse_t->stride, r, b, o, 0) + h * c->lse_t->stride[r + 1];
        for (int64_t l = 0; l < nl; ++l) ((float *)c->lse_t->data)[loff + l * d * c->lse_t->stride[r]] = sc->tlse[l];
    }
}

/* Tile forward: tasks (b, h, line, TSEG segment of u). */
static void fwd_tile_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const tile_common *tc = tile_of(c);
    const geom *g = &c->g;
    const int r = g->rank;
    qscratch sc = qscratch_at(c, tid);
    const int out_direct = c->p->dtype == NATTEN_DTYPE_F32 && c->out_t->stride[r + 2] == 1;
    const int64_t K = g->K[r - 1], d = g->dil[r - 1], L = g->L[r - 1];
    int64_t rpb_h = -1;
    for (int64_t task = begin; task < end; ++task) {
        int64_t t = task;
        const int64_t seg = t % tc->nseg;
        t /= tc->nseg;
        int64_t line = t % g->lines;
        t /= g->lines;
        const int64_t h = t % g->H, b = t / g->H;
        int64_t o[3] = {0, 0, 0};
        for (int a = r - 2; a >= 0; --a) {
            o[a] = line % g->O[a];
            line /= g->O[a];
        }
        line_prep(c, b, h, o, &sc.lp, &rpb_h);
        const int64_t u1 = (seg + 1) * TSEG < L ? (seg + 1) * TSEG : L;
        int64_t u = seg * TSEG;
        if (!sc.lp.inside) {
            for (; u < u1; ++u) fwd_query(c, &sc, b, h, o, tc->xofu[u], out_direct);
            continue;
        }
        const int64_t e = sc.lp.e[r - 1];
        while (u < u1) {
            /* a run of regular queries within one group, up to 16 lanes */
            const int64_t x = tc->xofu[u];
            const int64_t grp = x % d;
            const int64_t gend = tc->goff[grp + 1] < u1 ? tc->goff[grp + 1] : u1;
            natten_window w;
            int64_t shift = 0;
            int regular = x < e;
            if (regular) {
                w = last_window(c, e, x);
                regular = w.valid_begin == 0 && w.valid_end == K;
                shift = (w.start - x) / d;
            }
            if (!regular) {
                fwd_query(c, &sc, b, h, o, x, out_direct);
                ++u;
                continue;
            }
            int64_t nl = 1;
            while (nl < 16 && u + nl < gend) {
                const int64_t xl = tc->xofu[u + nl];
                if (xl >= e) break;
                const natten_window wl = last_window(c, e, xl);
                if (wl.valid_begin != 0 || wl.valid_end != K || (wl.start - xl) / d != shift) break;
                ++nl;
            }
            if (nl < TILE_MIN) { /* a clamped border window: shift changes every query */
                fwd_query(c, &sc, b, h, o, x, out_direct);
                ++u;
                continue;
            }
            fwd_tile(c, tc, &sc, b, h, o, u, nl, shift, &w, x, out_direct);
            u += nl;
        }
    }
}

/*
 * Tiles are opt-in (NATTEN_CPU_TILES=1).  Measured on the 2-core AVX-512
 * machine (benchmarks/c/cpu_bench, A/B in one session): the generic path,
 * which reads the caller's layout with all heads of a position together, is
 * faster on every benchmark case -- the tiles' repacking passes (K, V; q, dO
 * in the backward) and transposes cost more than the GEMM-like inner loop
 * saves at these neighbourhood sizes.  The code stays tested (both settings
 * in tests/c/test_fast_cpu.c) for machines and shapes where that flips.
 */
static int tiles_enabled(void) {
    const char *e = getenv("NATTEN_CPU_TILES");
    return e != NULL && e[0] == '1';
}

/* Lane-major packs of K and V plus the group tables, or 0 on OOM. */
static int tile_setup(const common *c, tile_common *tc, int nt) {
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t d = g->dil[r - 1], L = g->L[r - 1];
    if (!(tc->goff = malloc((size_t)(d + 1) * sizeof(int64_t)))) return 0;
    if (!(tc->xofu = malloc((size_t)L * sizeof(int64_t)))) return 0;
    tc->goff[0] = 0;
    for (int64_t rr = 0; rr < d; ++rr) {
        const int64_t n_r = rr < L ? (L - rr + d - 1) / d : 0;
        for (int64_t pp = 0; pp < n_r; ++pp) tc->xofu[tc->goff[rr] + pp] = rr + d * pp;
        tc->goff[rr + 1] = tc->goff[rr] + n_r;
    }
    tc->nseg = (L + TSEG - 1) / TSEG;
    return lm_pack(c, &c->k, g->Hkv, g->D, tc->goff, &tc->k, nt) &&
           lm_pack(c, &c->v, g->Hkv, g->Dv, tc->goff, &tc->v, nt);
}

static void tile_free(tile_common *tc) {
    free(tc->keyshift);
    natten_cpu_ws_put(tc->d.data);
    free(tc->goff);
    free(tc->xofu);
    natten_cpu_ws_put(tc->q.data);
    natten_cpu_ws_put(tc->k.data);
    natten_cpu_ws_put(tc->v.data);
}

static tile_common g_tile_unused;
static const tile_common *tile_of(const common *c) { return c->tile ? c->tile : &g_tile_unused; }

natten_status natten_fast_na_forward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *v,
                                     const natten_tensor *rpb, const natten_tensor *extra_k,
                                     const natten_tensor *extra_v, natten_tensor *out,
                                     natten_tensor *lse) {
    if (!fast_supported(p)) return NATTEN_STATUS_UNSUPPORTED;
    common c;
    memset(&c, 0, sizeof c);
    c.p = p;
    geom_init(&c.g, p);
    const geom *g = &c.g;
    c.kern = natten_cpu_active_kernels();
    c.rpb = rpb;
    c.out_t = out;
    c.lse_t = lse;
    const int nt = natten_parallel_threads();
    const int r = g->rank;
    /* tiles pay for repacking Q, K and V; worth it from ~16 neighbours up */
    const int use_tile = c.kern->tile_fwd != NULL && g->os[r - 1] == 1 && g->NE == 0 && g->KK >= NATTEN_TILE_MIN_KK &&
                         tiles_enabled();
    tile_common tc;
    memset(&tc, 0, sizeof tc);
    int ok = make_view(p, NATTEN_TENSOR_Q, q, &c.q, nt, 0) &&
             make_view(p, NATTEN_TENSOR_K, k, &c.k, nt, 0) &&
             make_view(p, NATTEN_TENSOR_V, v, &c.v, nt, 0);
    if (ok && g->NE > 0)
        ok = make_view(p, NATTEN_TENSOR_EXTRA_K, extra_k, &c.ek, nt, 0) &&
             make_view(p, NATTEN_TENSOR_EXTRA_V, extra_v, &c.ev, nt, 0);
    if (ok && use_tile) {
        ok = tile_setup(&c, &tc, nt);
        c.tile = &tc;
    }
    c.scratch_bytes = (qscratch_bytes(g) + 63) & ~(size_t)63;
    if (ok) ok = (c.scratch = malloc(c.scratch_bytes * (size_t)nt)) != NULL;
    if (ok) ok = build_rpb_all(&c) && build_wlast(&c);
    if (ok) {
        if (use_tile)
            natten_parallel_for(nt, g->B * g->H * g->lines * tc.nseg, 1, fwd_tile_task, &c);
        else
            natten_parallel_for(nt, g->B * g->lines * g->nseg, 1, fwd_task, &c);
    }
    free_views(&c);
    free(c.scratch);
    free(c.rpb_all);
    free(c.wlast);
    tile_free(&tc);
    /* staging failed (out of memory): decline, so the reference runs */
    return ok ? NATTEN_STATUS_SUCCESS : NATTEN_STATUS_UNSUPPORTED;
}

/* ------------------------------------------------------------------------ */
/* Backward                                                                  */
/* ------------------------------------------------------------------------ */

/* Phase A for one query (generic lists): o[0..rank-1) set, line prepared for h. */
static void bwd_query(const common *c, qscratch *sc, int64_t b, int64_t h, int64_t o[3], int64_t ol) {
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t *pos = sc->lp.pos;
    o[r - 1] = ol;
    const int64_t qlin = (b * g->H + h) * g->Oin + olin_of(g, o);
    float *Prow = c->Pbuf + qlin * g->KKE, *Srow = c->Sbuf + qlin * g->KKE;
    for (int64_t j = 0; j < g->KKE; ++j) Prow[j] = Srow[j] = 0.f;
    if (!query_list(c, &sc->lp, ol, &sc->nl)) return; /* dq pre-zeroed */
    const int64_t n = sc->nl.n;
    const float *qrow = c->q.data + row_off(c->q.st, r, b, pos, h);
    const float *dorow = c->dout.data + row_off(c->dout.st, r, b, o, h);
    const float *orow = c->out.data + row_off(c->out.st, r, b, o, h);
    const float lse =
        ((const float *)c->lse_in->data)[row_off(c->lse_in->stride, r, b, o, 0) + h * c->lse_in->stride[r + 1]];
    c->kern->dots(qrow, sc->nl.kp, n, g->D, sc->s);
    if (c->rpb)
        for (int64_t j = 0; j < n; ++j) sc->s[j] = sc->s[j] * g->scale + sc->nl.bias[j];
    else
        for (int64_t j = 0; j < n; ++j) sc->s[j] *= g->scale;
    c->kern->expsum(sc->s, n, lse); /* s = P */
    float delta;
    c->kern->dots(dorow, &orow, 1, g->Dv, &delta);
    c->kern->dots(dorow, sc->nl.vp, n, g->Dv, sc->dp);
    for (int64_t j = 0; j < n; ++j) {
        const float ds = sc->s[j] * (sc->dp[j] - delta);
        sc->dp[j] = ds;
        Prow[sc->nl.slot[j]] = sc->s[j];
        Srow[sc->nl.slot[j]] = ds;
    }
    c->kern->wsum(sc->dp, sc->nl.kp, n, g->D, sc->row);
    for (int64_t i = 0; i < g->D; ++i) sc->row[i] *= g->scale;
    store_row(c->dq_t->data, row_off(c->dq_t->stride, r, b, pos, h), c->dq_t->stride[r + 2], c->p->dtype,
              sc->row, g->D);
}

/* Phase A, generic: tasks (b, line, seg); heads innermost. */
static void bwd_query_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const geom *g = &c->g;
    const int r = g->rank;
    qscratch sc = qscratch_at(c, tid);
    int64_t rpb_h = -1;
    for (int64_t task = begin; task < end; ++task) {
        int64_t o[3] = {0, 0, 0}, t = task;
        const int64_t seg = t % g->nseg;
        t /= g->nseg;
        int64_t line = t % g->lines;
        const int64_t b = t / g->lines;
        for (int a = r - 2; a >= 0; --a) {
            o[a] = line % g->O[a];
            line /= g->O[a];
        }
        const int64_t last0 = seg * SEG;
        const int64_t last1 = last0 + SEG < g->O[r - 1] ? last0 + SEG : g->O[r - 1];
        line_prep(c, b, 0, o, &sc.lp, &rpb_h);
        for (int64_t ol = last0; ol < last1; ++ol)
            for (int64_t h = 0; h < g->H; ++h) {
                line_set_head(c, b, h, &sc.lp);
                bwd_query(c, &sc, b, h, o, ol);
            }
    }
}

/* Phase A for a tile of nl queries (see fwd_tile). */
static void bwd_tile(const common *c, const tile_common *tc, qscratch *sc, int64_t b, int64_t h, int64_t o[3],
                     int64_t u0, int64_t nl, int64_t shift, const natten_window *w0, int64_t x0) {
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t hk = h / g->G, K = g->K[r - 1], d = g->dil[r - 1];
    sc->lp.pos[r - 1] = x0;
    o[r - 1] = x0;
    const float *q0 = c->q.data + row_off(c->q.st, r, b, sc->lp.pos, h);
    /* idle lanes (>= nl) must hold ordinary numbers: stale scratch could be
     * denormal or NaN, and denormals cost microcode assists on every FMA */
    if (nl < 16) memset(sc->tq, 0, (size_t)g->D * 16 * sizeof(float));
    c->kern->transpose(q0, d * c->q.st[r], sc->tq, 16, nl, g->D);
    const float *do0 = c->dout.data + row_off(c->dout.st, r, b, o, h);
    if (nl < 16) memset(sc->tdo, 0, (size_t)g->Dv * 16 * sizeof(float));
    c->kern->transpose(do0, d * c->dout.st[r], sc->tdo, 16, nl, g->Dv);
    const float *o0 = c->out.data + row_off(c->out.st, r, b, o, h);
    const int64_t lse0 = row_off(c->lse_in->stride, r, b, o, 0) + h * c->lse_in->stride[r + 1];
    float lse16[16], delta16[16];
    for (int64_t l = 0; l < 16; ++l) {
        const int64_t ll = l < nl ? l : nl - 1; /* idle lanes repeat the last query */
        lse16[l] = ((const float *)c->lse_in->data)[lse0 + ll * d * c->lse_in->stride[r]];
        const float *orow = o0 + ll * d * c->out.st[r];
        c->kern->dots(do0 + ll * d * c->dout.st[r], &orow, 1, g->Dv, &delta16[l]);
    }
    const float *kb = tc->k.data + b * tc->k.BP + hk * tc->k.HP + u0 + shift;
    const float *vb = tc->v.data + b * tc->v.BP + hk * tc->v.HP + u0 + shift;
    int64_t n = 0;
    for (int64_t l = 0; l < sc->lp.nlead; ++l)
        for (int64_t k = 0; k < K; ++k) {
            sc->tpk[n] = kb + sc->lp.lrow[l] * tc->k.RP + k;
            sc->tpv[n] = vb + sc->lp.lrow[l] * tc->v.RP + k;
            if (c->rpb) sc->tbias[n] = sc->lp.rpbf[sc->lp.lrpb[l] + natten_rpb_index(w0, K, x0, k)];
            ++n;
        }
    c->kern->tile_bwd(sc->tq, sc->tdo, tc->k.XP, sc->tpk, sc->tpv, c->rpb ? sc->tbias : NULL, n, K, g->D, g->Dv,
                      g->scale, lse16, delta16, sc->tsbuf, sc->tsbuf2, sc->tout);
    const int64_t qlin0 = (b * g->H + h) * g->Oin + olin_of(g, o);
    for (int64_t l = 0; l < nl; ++l) { /* o == x on this axis: consecutive lanes are d apart */
        float *Prow = c->Pbuf + (qlin0 + l * d) * g->KKE, *Srow = c->Sbuf + (qlin0 + l * d) * g->KKE;
        if (n != g->KKE) /* masked slots stay 0 */
            for (int64_t j = 0; j < g->KKE; ++j) Prow[j] = Srow[j] = 0.f;
        const float *ps = sc->tsbuf + l, *ss = sc->tsbuf2 + l;
        for (int64_t ld = 0; ld < sc->lp.nlead; ++ld) {
            float *pr = Prow + sc->lp.lslot[ld], *sr = Srow + sc->lp.lslot[ld];
            for (int64_t k = 0; k < K; ++k, ps += 16, ss += 16) {
                pr[k] = *ps;
                sr[k] = *ss;
            }
        }
    }
    const int64_t qoff = row_off(c->dq_t->stride, r, b, sc->lp.pos, h);
    if (c->p->dtype == NATTEN_DTYPE_F32 && c->dq_t->stride[r + 2] == 1) {
        c->kern->transpose(sc->tout, 16, (float *)c->dq_t->data + qoff, d * c->dq_t->stride[r], g->D, nl);
    } else {
        for (int64_t l = 0; l < nl; ++l) {
            for (int64_t ch = 0; ch < g->D; ++ch) sc->row[ch] = sc->tout[ch * 16 + l];
            store_row(c->dq_t->data, qoff + l * d * c->dq_t->stride[r], c->dq_t->stride[r + 2], c->p->dtype,
                      sc->row, g->D);
        }
    }
}

/* Phase A with tiles: tasks (b, h, line, TSEG segment of u), as the forward. */
static void bwd_tile_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const tile_common *tc = c->tile;
    const geom *g = &c->g;
    const int r = g->rank;
    qscratch sc = qscratch_at(c, tid);
    const int64_t K = g->K[r - 1], d = g->dil[r - 1], L = g->L[r - 1];
    int64_t rpb_h = -1;
    for (int64_t task = begin; task < end; ++task) {
        int64_t t = task;
        const int64_t seg = t % tc->nseg;
        t /= tc->nseg;
        int64_t line = t % g->lines;
        t /= g->lines;
        const int64_t h = t % g->H, b = t / g->H;
        int64_t o[3] = {0, 0, 0};
        for (int a = r - 2; a >= 0; --a) {
            o[a] = line % g->O[a];
            line /= g->O[a];
        }
        line_prep(c, b, h, o, &sc.lp, &rpb_h);
        const int64_t u1 = (seg + 1) * TSEG < L ? (seg + 1) * TSEG : L;
        int64_t u = seg * TSEG;
        if (!sc.lp.inside) {
            for (; u < u1; ++u) bwd_query(c, &sc, b, h, o, tc->xofu[u]);
            continue;
        }
        const int64_t e = sc.lp.e[r - 1];
        while (u < u1) {
            const int64_t x = tc->xofu[u];
            const int64_t gend = tc->goff[x % d + 1] < u1 ? tc->goff[x % d + 1] : u1;
            natten_window w;
            int64_t shift = 0, nl = 0;
            if (x < e) {
                w = last_window(c, e, x);
                if (w.valid_begin == 0 && w.valid_end == K) {
                    shift = (w.start - x) / d;
                    nl = 1;
                    while (nl < 16 && u + nl < gend) {
                        const int64_t xl = tc->xofu[u + nl];
                        if (xl >= e) break;
                        const natten_window wl = last_window(c, e, xl);
                        if (wl.valid_begin != 0 || wl.valid_end != K || (wl.start - xl) / d != shift) break;
                        ++nl;
                    }
                }
            }
            if (nl < TILE_MIN) {
                bwd_query(c, &sc, b, h, o, x);
                ++u;
                continue;
            }
            bwd_tile(c, tc, &sc, b, h, o, u, nl, shift, &w, x);
            u += nl;
        }
    }
}

/* Inverse neighbourhood tables: for sample table s and axis a, key x holds
 * entries inv_ent[...] of (o * K + slot) pairs, o ascending. */
static int64_t *inv_start_of(const common *c, int64_t s, int a) {
    return c->inv_start + (s * 3 + a) * c->inv_stride_start;
}
static int64_t *inv_ent_of(const common *c, int64_t s, int a) {
    return c->inv_ent + (s * 3 + a) * c->inv_stride_ent;
}

static void build_inverse(common *c) {
    const geom *g = &c->g;
    const int64_t ns = c->varlen_tables ? g->B : 1;
    for (int a = 0; a < 3; ++a) c->inv_maxlen[a] = 1;
    for (int64_t s = 0; s < ns; ++s) {
        int64_t e[3];
        sample_extent(g, s, e);
        for (int a = 0; a < 3; ++a) {
            int64_t *st = inv_start_of(c, s, a), *en = inv_ent_of(c, s, a);
            const int64_t L = g->Lx[a];
            for (int64_t x = 0; x <= L; ++x) st[x] = 0;
            if (a >= g->rank) { /* one key, one query, slot 0 */
                st[0] = 0;
                st[1] = 1;
                en[0] = en[1] = en[2] = 0;
                continue;
            }
            int64_t ostride = 1, kstride = 1; /* of this axis in the flattened output / slot index */
            for (int a2 = a + 1; a2 < 3; ++a2) {
                ostride *= g->O[a2];
                kstride *= g->K[a2];
            }
            /* count */
            for (int64_t o = 0; o < g->O[a]; ++o) {
                const int64_t i = o * g->os[a];
                if (i >= e[a]) break;
                natten_window w = natten_window_of(e[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], i);
                for (int64_t kk = w.valid_begin; kk < w.valid_end; ++kk) st[w.start + kk * w.step + 1]++;
            }
            for (int64_t x = 0; x < L; ++x) {
                if (st[x + 1] > c->inv_maxlen[a]) c->inv_maxlen[a] = st[x + 1];
                st[x + 1] += st[x];
            }
            /* fill (reuse a cursor in the entry area's order: o ascending) */
            int64_t *cur = malloc((size_t)L * sizeof(int64_t));
            if (!cur) continue; /* unreachable in practice; checked by caller sizing */
            for (int64_t x = 0; x < L; ++x) cur[x] = st[x];
            for (int64_t o = 0; o < g->O[a]; ++o) {
                const int64_t i = o * g->os[a];
                if (i >= e[a]) break;
                natten_window w = natten_window_of(e[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], i);
                for (int64_t kk = w.valid_begin; kk < w.valid_end; ++kk) {
                    const int64_t at = cur[w.start + kk * w.step]++;
                    en[3 * at] = o * ostride * g->KKE + kk * kstride; /* scratch offset part */
                    en[3 * at + 1] = o * g->os[a] * c->q.st[a + 1];    /* q row offset part */
                    en[3 * at + 2] = o * c->dout.st[a + 1];            /* dout row offset part */
                }
            }
            free(cur);
        }
    }
}

typedef struct kscratch {
    const float **qp, **dop;
    float *wk, *wv;
    int64_t *ra, *rq, *rd; /* one key position's pairs, relative to the head's bases */
    float *row;
} kscratch;

static int64_t kround(int64_t n) { return (n + 15) & ~(int64_t)15; }

static size_t kscratch_bytes(const geom *g, const int64_t maxlen[3]) {
    const int64_t n = kround(g->G * maxlen[0] * maxlen[1] * maxlen[2] + 16);
    const int64_t dmax = (g->D > g->Dv ? g->D : g->Dv) + 16;
    return (size_t)n * (2 * sizeof(float *) + 2 * sizeof(float) + 3 * sizeof(int64_t)) +
           (size_t)dmax * sizeof(float) + 64;
}

static kscratch kscratch_at(const common *c, int tid, int64_t n) {
    char *s = c->scratch + (size_t)tid * c->scratch_bytes;
    n = kround(n);
    kscratch k;
    k.qp = (const float **)s;
    s += n * sizeof(float *);
    k.dop = (const float **)s;
    s += n * sizeof(float *);
    k.wk = (float *)s;
    s += n * sizeof(float);
    k.wv = (float *)s;
    s += n * sizeof(float);
    k.ra = (int64_t *)s;
    s += n * sizeof(int64_t);
    k.rq = (int64_t *)s;
    s += n * sizeof(int64_t);
    k.rd = (int64_t *)s;
    s += n * sizeof(int64_t);
    k.row = (float *)s;
    return k;
}

/* Phase B: per key line segment: tasks over (b, hkv, key line, seg). */
/* The (query, slot) pairs of key x as offsets relative to a query head's
 * bases (the same for every head).  Returns their count (0 outside varlen). */
static int64_t key_pairs(const common *c, kscratch *sc, const int64_t x[3], const int64_t e[3],
                         const int64_t *const st[3], const int64_t *const en[3]) {
    const geom *g = &c->g;
    const int r = g->rank;
    for (int a = 0; a < r; ++a)
        if (x[a] >= e[a]) return 0;
    const int64_t x0 = x[0], x1 = r > 1 ? x[1] : 0, x2 = r > 2 ? x[2] : 0;
    int64_t n = 0;
    for (int64_t i0 = st[0][x0]; i0 < st[0][x0 + 1]; ++i0) {
        const int64_t *e0 = en[0] + 3 * i0;
        for (int64_t i1 = st[1][x1]; i1 < st[1][x1 + 1]; ++i1) {
            const int64_t *e1 = en[1] + 3 * i1;
            const int64_t a01 = e0[0] + e1[0], q01 = e0[1] + e1[1], d01 = e0[2] + e1[2];
            const int64_t *e2 = en[2] + 3 * st[2][x2];
            for (int64_t i2 = st[2][x2]; i2 < st[2][x2 + 1]; ++i2, e2 += 3, ++n) {
                sc->ra[n] = a01 + e2[0];
                sc->rq[n] = q01 + e2[1];
                sc->rd[n] = d01 + e2[2];
            }
        }
    }
    return n;
}

/* dk, dv of key x (all axes set) and kv head hk from its pairs (key_pairs). */
static void bwd_key_heads(const common *c, kscratch *sc, int64_t b, int64_t hk, const int64_t x[3], int64_t np) {
    const geom *g = &c->g;
    const int r = g->rank;
    const natten_dtype dt = c->p->dtype;
    int64_t n = 0;
    for (int64_t gg = 0; gg < g->G; ++gg) {
        const int64_t h = hk * g->G + gg;
        const float *S = c->Sbuf + (b * g->H + h) * g->Oin * g->KKE;
        const float *P = c->Pbuf + (b * g->H + h) * g->Oin * g->KKE;
        const float *qh = c->q.data + b * c->q.st[0] + h * c->q.st[r + 1];
        const float *dh = c->dout.data + b * c->dout.st[0] + h * c->dout.st[r + 1];
        for (int64_t j = 0; j < np; ++j, ++n) {
            sc->wk[n] = S[sc->ra[j]];
            sc->wv[n] = P[sc->ra[j]];
            sc->qp[n] = qh + sc->rq[j];
            sc->dop[n] = dh + sc->rd[j];
        }
    }
    const int64_t koff = row_off(c->dk_t->stride, r, b, x, hk);
    const int64_t voff = row_off(c->dv_t->stride, r, b, x, hk);
    c->kern->wsum(sc->wk, sc->qp, n, g->D, sc->row);
    for (int64_t i = 0; i < g->D; ++i) sc->row[i] *= g->scale;
    store_row(c->dk_t->data, koff, c->dk_t->stride[r + 2], dt, sc->row, g->D);
    c->kern->wsum(sc->wv, sc->dop, n, g->Dv, sc->row);
    store_row(c->dv_t->data, voff, c->dv_t->stride[r + 2], dt, sc->row, g->Dv);
}

/* dk, dv of key x for every kv head, generic lists. */
static void bwd_key(const common *c, kscratch *sc, int64_t b, const int64_t x[3], const int64_t e[3],
                    const int64_t *const st[3], const int64_t *const en[3]) {
    const int64_t np = key_pairs(c, sc, x, e, st, en);
    for (int64_t hk = 0; hk < c->g.Hkv; ++hk) bwd_key_heads(c, sc, b, hk, x, np);
}

/* Decode a key task (b, key line, seg) and the tables of its sample. */
static void key_task_setup(const common *c, int64_t task, int64_t kseg, int64_t *b, int64_t *seg, int64_t x[3],
                           int64_t e[3], const int64_t *st[3], const int64_t *en[3]) {
    const geom *g = &c->g;
    const int r = g->rank;
    int64_t klines = 1;
    for (int a = 0; a < r - 1; ++a) klines *= g->L[a];
    int64_t t = task;
    *seg = t % kseg;
    t /= kseg;
    int64_t line = t % klines;
    *b = t / klines;
    x[0] = x[1] = x[2] = 0;
    for (int a = r - 2; a >= 0; --a) {
        x[a] = line % g->L[a];
        line /= g->L[a];
    }
    const int64_t tab = c->varlen_tables ? *b : 0;
    sample_extent(g, *b, e);
    for (int a = 0; a < 3; ++a) {
        st[a] = inv_start_of(c, tab, a);
        en[a] = inv_ent_of(c, tab, a);
    }
}

/* Phase B, generic: tasks (b, key line, seg); kv heads innermost. */
static void bwd_key_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t cap = g->G * c->inv_maxlen[0] * c->inv_maxlen[1] * c->inv_maxlen[2] + 16;
    kscratch sc = kscratch_at(c, tid, cap);
    const int64_t kseg = (g->L[r - 1] + SEG - 1) / SEG;
    for (int64_t task = begin; task < end; ++task) {
        int64_t b, seg, x[3], e[3];
        const int64_t *st[3], *en[3];
        key_task_setup(c, task, kseg, &b, &seg, x, e, st, en);
        const int64_t l0 = seg * SEG, l1 = l0 + SEG < g->L[r - 1] ? l0 + SEG : g->L[r - 1];
        for (int64_t xl = l0; xl < l1; ++xl) {
            x[r - 1] = xl;
            bwd_key(c, &sc, b, x, e, st, en);
        }
    }
}

/*
 * Phase B with tiles (last axis: dilation 1, every out_stride 1, no varlen).
 * Key x is regular with shift f when exactly K queries see it, q = x - f - k
 * at slot k, each of them a regular query of forward shift f (keyshift, from
 * the inverse tables and the last-axis windows).  16 consecutive such keys
 * with one f read their queries' q and dO rows at consecutive lanes of the
 * lane-major packs, shifted by -(f + k): dk and dv are lane-major weighted
 * sums, the weights (dS, P) gathered from the scratch per lane.
 */
static void bwd_key_tile(const common *c, const tile_common *tc, kscratch *sc, float *tw, float *tw2,
                         const float **rq, const float **rd, float *tout, int64_t b, int64_t hk, int64_t x[3],
                         const int64_t *const st[3], const int64_t *const en[3], int64_t nl, int64_t f) {
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t K = g->K[r - 1], x0 = x[r - 1];
    const int64_t Ol = g->O[r - 1];
    int64_t n = 0;
    const int64_t xa = r > 1 ? x[0] : 0, xb = r > 2 ? x[1] : 0;
    for (int64_t gg = 0; gg < g->G; ++gg) {
        const int64_t h = hk * g->G + gg;
        /* leading inverse combinations: (query line, lead slot base) */
        const int64_t n0 = r > 1 ? st[0][xa + 1] - st[0][xa] : 1;
        const int64_t n1 = r > 2 ? st[1][xb + 1] - st[1][xb] : 1;
        for (int64_t i0 = 0; i0 < n0; ++i0)
            for (int64_t i1 = 0; i1 < n1; ++i1) {
                /* entries of the leading axes carry the scratch offset part
                 * o*ostride*KKE + slot*kstride; split it back */
                int64_t aoff = 0;
                if (r > 1) aoff += en[0][3 * (st[0][xa] + i0)];
                if (r > 2) aoff += en[1][3 * (st[1][xb] + i1)];
                const int64_t lineq = aoff / (Ol * g->KKE); /* query line (leading output index) */
                const int64_t sl = (aoff % (Ol * g->KKE)); /* lead slot base (< KKE) */
                const int64_t qbase = ((b * g->H + h) * g->Oin + lineq * Ol) * g->KKE + sl;
                const float *qrow = tc->q.data + b * tc->q.BP + h * tc->q.HP + lineq * tc->q.RP;
                const float *drow = tc->d.data + b * tc->d.BP + h * tc->d.HP + lineq * tc->d.RP;
                for (int64_t k = 0; k < K; ++k, ++n) {
                    const int64_t q0 = x0 - f - k; /* query of lane 0 */
                    for (int64_t l = 0; l < 16; ++l) {
                        const int64_t at = qbase + (q0 + l) * g->KKE + k;
                        tw[n * 16 + l] = l < nl ? c->Sbuf[at] : 0.f;
                        tw2[n * 16 + l] = l < nl ? c->Pbuf[at] : 0.f;
                    }
                    rq[n] = qrow + q0;
                    rd[n] = drow + q0;
                }
            }
    }
    const int64_t ko = row_off(c->dk_t->stride, r, b, x, hk), vo = row_off(c->dv_t->stride, r, b, x, hk);
    c->kern->tile_wsum(tw, rq, tc->q.XP, n, g->D, g->scale, tout);
    if (c->p->dtype == NATTEN_DTYPE_F32 && c->dk_t->stride[r + 2] == 1) {
        c->kern->transpose(tout, 16, (float *)c->dk_t->data + ko, c->dk_t->stride[r], g->D, nl);
    } else {
        for (int64_t l = 0; l < nl; ++l) {
            for (int64_t ch = 0; ch < g->D; ++ch) sc->row[ch] = tout[ch * 16 + l];
            store_row(c->dk_t->data, ko + l * c->dk_t->stride[r], c->dk_t->stride[r + 2], c->p->dtype, sc->row, g->D);
        }
    }
    c->kern->tile_wsum(tw2, rd, tc->d.XP, n, g->Dv, 1.0f, tout);
    if (c->p->dtype == NATTEN_DTYPE_F32 && c->dv_t->stride[r + 2] == 1) {
        c->kern->transpose(tout, 16, (float *)c->dv_t->data + vo, c->dv_t->stride[r], g->Dv, nl);
    } else {
        for (int64_t l = 0; l < nl; ++l) {
            for (int64_t ch = 0; ch < g->Dv; ++ch) sc->row[ch] = tout[ch * 16 + l];
            store_row(c->dv_t->data, vo + l * c->dv_t->stride[r], c->dv_t->stride[r + 2], c->p->dtype, sc->row, g->Dv);
        }
    }
}

/* Upper bound on the pairs of one key tile: G * (leading inverse lists) * K. */
static int64_t key_tile_pairs(const common *c) {
    const geom *g = &c->g;
    const int r = g->rank;
    int64_t n = g->G * g->K[r - 1] + 16;
    for (int a = 0; a < r - 1; ++a) n *= c->inv_maxlen[a];
    return n;
}

static void bwd_key_tile_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const tile_common *tc = c->tile;
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t cap = g->G * c->inv_maxlen[0] * c->inv_maxlen[1] * c->inv_maxlen[2] + 16;
    kscratch sc = kscratch_at(c, tid, cap);
    /* tile scratch after the key scratch */
    char *ts = (char *)sc.row + ((g->D > g->Dv ? g->D : g->Dv) + 16) * sizeof(float);
    ts = (char *)(((uintptr_t)ts + 63) & ~(uintptr_t)63);
    const int64_t np = key_tile_pairs(c);
    float *tw = (float *)ts;
    float *tw2 = tw + np * 16;
    float *tout = tw2 + np * 16;
    const float **rq = (const float **)(tout + (g->D + g->Dv + 16) * 16);
    const float **rd = rq + np;
    const int64_t kseg = (g->L[r - 1] + TSEG - 1) / TSEG;
    for (int64_t task = begin; task < end; ++task) {
        int64_t b, seg, x[3], e[3];
        const int64_t *st[3], *en[3];
        key_task_setup(c, task, kseg, &b, &seg, x, e, st, en);
        const int64_t l1 = (seg + 1) * TSEG < g->L[r - 1] ? (seg + 1) * TSEG : g->L[r - 1];
        int64_t xl = seg * TSEG;
        while (xl < l1) {
            const int64_t f = tc->keyshift[xl];
            int64_t nl = 0;
            if (f != INT64_MIN)
                while (nl < 16 && xl + nl < l1 && tc->keyshift[xl + nl] == f) ++nl;
            if (nl < TILE_MIN) {
                x[r - 1] = xl;
                bwd_key(c, &sc, b, x, e, st, en);
                ++xl;
                continue;
            }
            x[r - 1] = xl;
            for (int64_t hk = 0; hk < g->Hkv; ++hk)
                bwd_key_tile(c, tc, &sc, tw, tw2, rq, rd, tout, b, hk, x, st, en, nl, f);
            xl += nl;
        }
    }
}

/* Zero dq rows (used when some rows are read by no output). */
static void zero_dq_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const geom *g = &c->g;
    const int r = g->rank;
    for (int64_t row = begin; row < end; ++row) {
        int64_t t = row, pos[3] = {0, 0, 0};
        const int64_t h = t % g->H;
        t /= g->H;
        for (int a = r - 1; a >= 0; --a) {
            pos[a] = t % g->L[a];
            t /= g->L[a];
        }
        store_zero_row(c->dq_t->data, row_off(c->dq_t->stride, r, t, pos, h), c->dq_t->stride[r + 2],
                       c->p->dtype, g->D);
    }
}

/* Phase C: drpb, one task per head, fixed order over (b, queries, slots). */
static void bwd_rpb_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const geom *g = &c->g;
    const int r = g->rank;
    int64_t nb = 1, dims[3] = {1, 1, 1};
    for (int a = 0; a < r; ++a) {
        dims[a] = 2 * g->K[a] - 1;
        nb *= dims[a];
    }
    double *acc = (double *)(c->scratch + (size_t)tid * c->scratch_bytes);
    for (int64_t h = begin; h < end; ++h) {
        for (int64_t i = 0; i < nb; ++i) acc[i] = 0.0;
        for (int64_t b = 0; b < g->B; ++b) {
            int64_t e[3];
            sample_extent(g, b, e);
            for (int64_t ol = 0; ol < g->Oin; ++ol) {
                int64_t o[3] = {ol / (g->O[1] * g->O[2]), (ol / g->O[2]) % g->O[1], ol % g->O[2]};
                natten_window w[3];
                int64_t pos[3];
                int inside = 1;
                for (int a = 0; a < r; ++a) {
                    pos[a] = o[a] * g->os[a];
                    inside &= pos[a] < e[a];
                }
                if (!inside) continue;
                for (int a = 0; a < r; ++a)
                    w[a] = natten_window_of(e[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], pos[a]);
                const float *Srow = c->Sbuf + ((b * g->H + h) * g->Oin + ol) * g->KKE;
                for (int64_t s = 0; s < g->KK; ++s) {
                    const int64_t ks[3] = {s / (g->K[1] * g->K[2]), (s / g->K[2]) % g->K[1], s % g->K[2]};
                    int valid = 1;
                    int64_t idx = 0;
                    for (int a = 0; a < r; ++a) {
                        valid &= ks[a] >= w[a].valid_begin && ks[a] < w[a].valid_end;
                        idx = idx * dims[a] + (valid ? natten_rpb_index(&w[a], g->K[a], pos[a], ks[a]) : 0);
                    }
                    if (valid) acc[idx] += Srow[s];
                }
            }
        }
        for (int64_t i = 0; i < nb; ++i) {
            int64_t rem = i, off = h * c->drpb_t->stride[0];
            for (int a = r - 1; a >= 0; --a) {
                off += (rem % dims[a]) * c->drpb_t->stride[a + 1];
                rem /= dims[a];
            }
            natten_store(c->drpb_t->data, off, c->p->dtype, acc[i]);
        }
    }
}

/* Phase D: extra-KV grads, one task per (b, token, hkv). */
static void bwd_extra_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const geom *g = &c->g;
    const int r = g->rank;
    kscratch sc = kscratch_at(c, tid, g->G * g->Oin + 16);
    for (int64_t task = begin; task < end; ++task) {
        const int64_t hk = task % g->Hkv, t = (task / g->Hkv) % g->NE, b = task / (g->Hkv * g->NE);
        int64_t e[3];
        sample_extent(g, b, e);
        int64_t n = 0;
        for (int64_t gg = 0; gg < g->G; ++gg) {
            const int64_t h = hk * g->G + gg;
            for (int64_t ol = 0; ol < g->Oin; ++ol) {
                const int64_t o[3] = {ol / (g->O[1] * g->O[2]), (ol / g->O[2]) % g->O[1], ol % g->O[2]};
                int64_t pos[3] = {0, 0, 0};
                int inside = 1;
                for (int a = 0; a < r; ++a) {
                    pos[a] = o[a] * g->os[a];
                    inside &= pos[a] < e[a];
                }
                if (!inside) continue;
                const int64_t qlin = (b * g->H + h) * g->Oin + ol;
                sc.qp[n] = c->q.data + row_off(c->q.st, r, b, pos, h);
                sc.dop[n] = c->dout.data + row_off(c->dout.st, r, b, o, h);
                sc.wk[n] = c->Sbuf[qlin * g->KKE + g->KK + t];
                sc.wv[n] = c->Pbuf[qlin * g->KKE + g->KK + t];
                ++n;
            }
        }
        c->kern->wsum(sc.wk, sc.qp, n, g->D, sc.row);
        for (int64_t i = 0; i < g->D; ++i) sc.row[i] *= g->scale;
        const natten_tensor *dk = c->dek_t, *dv = c->dev_t;
        store_row(dk->data, b * dk->stride[0] + t * dk->stride[1] + hk * dk->stride[2], dk->stride[3],
                  c->p->dtype, sc.row, g->D);
        c->kern->wsum(sc.wv, sc.dop, n, g->Dv, sc.row);
        store_row(dv->data, b * dv->stride[0] + t * dv->stride[1] + hk * dv->stride[2], dv->stride[3],
                  c->p->dtype, sc.row, g->Dv);
    }
}

natten_status natten_fast_na_backward(
    const natten_problem *p, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
    const natten_tensor *rpb, const natten_tensor *extra_k, const natten_tensor *extra_v,
    const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout, natten_tensor *dq,
    natten_tensor *dk, natten_tensor *dv, natten_tensor *drpb, natten_tensor *dextra_k,
    natten_tensor *dextra_v) {
    if (!fast_supported(p)) return NATTEN_STATUS_UNSUPPORTED;
    common c;
    memset(&c, 0, sizeof c);
    c.p = p;
    geom_init(&c.g, p);
    const geom *g = &c.g;
    c.kern = natten_cpu_active_kernels();
    c.rpb = rpb;
    c.lse_in = lse;
    c.dq_t = dq;
    c.dk_t = dk;
    c.dv_t = dv;
    c.drpb_t = rpb ? drpb : NULL;
    c.dek_t = dextra_k;
    c.dev_t = dextra_v;
    const int nt = natten_parallel_threads();
    c.varlen_tables = g->varlen != NULL;
    const int64_t ntab = c.varlen_tables ? g->B : 1;
    int64_t Lmax = 1;
    for (int a = 0; a < 3; ++a) Lmax = g->Lx[a] > Lmax ? g->Lx[a] : Lmax;
    int64_t Kmax = 1;
    for (int a = 0; a < 3; ++a) Kmax = g->K[a] * g->O[a] > Kmax ? g->K[a] * g->O[a] : Kmax;
    c.inv_stride_start = Lmax + 1;
    c.inv_stride_ent = 3 * Kmax; /* per (query, slot): scratch, q and dout offset parts */
    const size_t pbytes = (size_t)(g->B * g->H * g->Oin * g->KKE) * sizeof(float);
    int ok = make_view(p, NATTEN_TENSOR_Q, q, &c.q, nt, 0) &&
             make_view(p, NATTEN_TENSOR_K, k, &c.k, nt, 0) && make_view(p, NATTEN_TENSOR_V, v, &c.v, nt, 0) &&
             make_view(p, NATTEN_TENSOR_OUT, out, &c.out, nt, 0) &&
             make_view(p, NATTEN_TENSOR_OUT, dout, &c.dout, nt, 0);
    if (ok && g->NE > 0)
        ok = make_view(p, NATTEN_TENSOR_EXTRA_K, extra_k, &c.ek, nt, 0) &&
             make_view(p, NATTEN_TENSOR_EXTRA_V, extra_v, &c.ev, nt, 0);
    if (ok) ok = (c.Pbuf = natten_cpu_ws_get(pbytes)) != NULL;
    if (ok) ok = (c.Sbuf = natten_cpu_ws_get(pbytes)) != NULL;
    if (ok) ok = (c.inv_start = malloc((size_t)(ntab * 3 * c.inv_stride_start) * sizeof(int64_t))) != NULL;
    if (ok) ok = (c.inv_ent = malloc((size_t)(ntab * 3 * c.inv_stride_ent) * sizeof(int64_t))) != NULL;
    if (ok) ok = build_rpb_all(&c) && build_wlast(&c);
    if (ok) build_inverse(&c);
    const int use_tile = c.kern->tile_bwd != NULL && g->os[g->rank - 1] == 1 && g->NE == 0 &&
                         tiles_enabled();
    tile_common tc;
    memset(&tc, 0, sizeof tc);
    if (ok && use_tile) {
        ok = tile_setup(&c, &tc, nt);
        c.tile = &tc;
    }
    int key_tiles = use_tile && c.kern->tile_wsum != NULL && g->dil[g->rank - 1] == 1 && !g->varlen;
    for (int a = 0; a < g->rank; ++a) key_tiles &= g->os[a] == 1;
    if (ok && key_tiles) {
        const int a = g->rank - 1;
        const int64_t L = g->L[a], K = g->K[a];
        ok = (tc.keyshift = malloc((size_t)L * sizeof(int64_t))) != NULL &&
             lm_pack(&c, &c.q, g->H, g->D, tc.goff, &tc.q, nt) &&
             lm_pack(&c, &c.dout, g->H, g->Dv, tc.goff, &tc.d, nt);
        if (ok) {
            const int64_t *stl = inv_start_of(&c, 0, a), *enl = inv_ent_of(&c, 0, a);
            for (int64_t x = 0; x < L; ++x) {
                int64_t f = INT64_MIN;
                int regular = stl[x + 1] - stl[x] == K;
                for (int64_t i = stl[x]; regular && i < stl[x + 1]; ++i) {
                    const int64_t o = enl[3 * i] / g->KKE, k = enl[3 * i] % g->KKE; /* o*KKE + slot here */
                    const natten_window w = c.wlast[o];
                    const int64_t fq = w.start - o;
                    regular = w.valid_begin == 0 && w.valid_end == K && x == o + fq + k && (f == INT64_MIN || f == fq);
                    f = fq;
                }
                tc.keyshift[x] = regular ? f : INT64_MIN;
            }
        }
    }
    size_t sb = 0;
    if (ok) {
        sb = qscratch_bytes(g);
        const size_t kb = kscratch_bytes(g, c.inv_maxlen);
        if (kb > sb) sb = kb;
        if (g->NE > 0) {
            const int64_t one[3] = {g->Oin, 1, 1};
            const size_t eb = kscratch_bytes(g, one);
            if (eb > sb) sb = eb;
        }
        if (c.drpb_t) {
            int64_t nb = 1;
            for (int a = 0; a < g->rank; ++a) nb *= 2 * g->K[a] - 1;
            if ((size_t)nb * sizeof(double) > sb) sb = (size_t)nb * sizeof(double);
        }
        if (key_tiles) {
            const int64_t np = key_tile_pairs(&c);
            const size_t kt = kscratch_bytes(g, c.inv_maxlen) + 128 + (size_t)np * 16 * 2 * sizeof(float) +
                              (size_t)(g->D + g->Dv + 16) * 16 * sizeof(float) + (size_t)np * 2 * sizeof(float *);
            if (kt > sb) sb = kt;
        }
        c.scratch_bytes = (sb + 63) & ~(size_t)63;
        ok = (c.scratch = malloc(c.scratch_bytes * (size_t)nt)) != NULL;
    }
    if (!ok) {
        free_views(&c);
        natten_cpu_ws_put(c.Pbuf);
        natten_cpu_ws_put(c.Sbuf);
        free(c.rpb_all);
        free(c.wlast);
        free(c.inv_start);
        free(c.inv_ent);
        free(c.scratch);
        tile_free(&tc);
        return NATTEN_STATUS_UNSUPPORTED;
    }
    int partial = g->varlen != NULL;
    for (int a = 0; a < g->rank; ++a) partial |= g->os[a] > 1;
    if (partial) natten_parallel_for(nt, g->B * g->Lx[0] * g->Lx[1] * g->Lx[2] * g->H, 1024, zero_dq_task, &c);
    if (use_tile)
        natten_parallel_for(nt, g->B * g->H * g->lines * tc.nseg, 1, bwd_tile_task, &c);
    else
        natten_parallel_for(nt, g->B * g->lines * g->nseg, 1, bwd_query_task, &c);
    int64_t klines = 1;
    for (int a = 0; a < g->rank - 1; ++a) klines *= g->L[a];
    if (key_tiles) {
        const int64_t ksegt = (g->L[g->rank - 1] + TSEG - 1) / TSEG;
        natten_parallel_for(nt, g->B * klines * ksegt, 1, bwd_key_tile_task, &c);
    } else {
        const int64_t kseg = (g->L[g->rank - 1] + SEG - 1) / SEG;
        natten_parallel_for(nt, g->B * klines * kseg, 1, bwd_key_task, &c);
    }
    if (c.drpb_t) natten_parallel_for(nt, g->H, 1, bwd_rpb_task, &c);
    if (g->NE > 0) natten_parallel_for(nt, g->B * g->NE * g->Hkv, 1, bwd_extra_task, &c);
    free_views(&c);
    natten_cpu_ws_put(c.Pbuf);
    natten_cpu_ws_put(c.Sbuf);
    free(c.rpb_all);
    free(c.wlast);
    free(c.inv_start);
    free(c.inv_ent);
    free(c.scratch);
    tile_free(&tc);
    return NATTEN_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* Split ops: not implemented in the fast path; the reference runs.          */
/* ------------------------------------------------------------------------ */

natten_status natten_fast_qk_forward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *rpb,
                                     natten_tensor *logits) {
    return NATTEN_STATUS_UNSUPPORTED;
}

natten_status natten_fast_qk_backward(const natten_problem *p, const natten_tensor *q,
                                      const natten_tensor *k, const natten_tensor *dlogits,
                                      natten_tensor *dq, natten_tensor *dk, natten_tensor *drpb) {
    return NATTEN_STATUS_UNSUPPORTED;
}

natten_status natten_fast_av_forward(const natten_problem *p, const natten_tensor *attn,
                                     const natten_tensor *v, natten_tensor *out) {
    return NATTEN_STATUS_UNSUPPORTED;
}

natten_status natten_fast_av_backward(const natten_problem *p, const natten_tensor *attn,
                                      const natten_tensor *v, const natten_tensor *dout,
                                      natten_tensor *dattn, natten_tensor *dv) {
    return NATTEN_STATUS_UNSUPPORTED;
}
