/*
 * fast_common.c -- shared machinery of the fast CPU kernels: problem geometry,
 * f32 views of the caller's tensors (read in place when f32 with contiguous
 * channels, else staged), row stores with the reference's rounding, and the
 * per-query neighbour lists (line_prep + query_list) built from
 * natten_window_of only.  Nothing here depends on the thread count.
 */
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/fast_internal.h"

void geom_init(geom *g, const natten_problem *p) {
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

void common_init(common *c, const natten_problem *p) {
    memset(c, 0, sizeof *c);
    c->p = p;
    geom_init(&c->g, p);
    c->kern = natten_cpu_active_kernels();
}

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

void load_row(const natten_cpu_kernels *kern, const void *base, int64_t off, int64_t stride, natten_dtype dt,
              float *dst, int64_t n) {
    if (dt == NATTEN_DTYPE_F32 && stride == 1) {
        memcpy(dst, (const float *)base + off, (size_t)n * sizeof(float));
    } else if (dt == NATTEN_DTYPE_F16 && stride == 1) {
        kern->f16_to_f32((const uint16_t *)base + off, dst, n);
    } else if (dt == NATTEN_DTYPE_BF16 && stride == 1) {
        kern->bf16_to_f32((const uint16_t *)base + off, dst, n);
    } else if (dt == NATTEN_DTYPE_BF16) {
        const uint16_t *s = (const uint16_t *)base + off;
        for (int64_t i = 0; i < n; ++i) dst[i] = natten_bf16_to_f32(s[i * stride]);
    } else {
        for (int64_t i = 0; i < n; ++i) dst[i] = (float)natten_load(base, off + i * stride, dt);
    }
}

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
        load_row(c->kern, c->t->data, off, last, c->dt, c->dst + doff, c->rowlen);
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
int make_view(const natten_problem *p, natten_tensor_kind kind, const natten_tensor *t,
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

void store_row(void *base, int64_t off, int64_t stride, natten_dtype dt, const float *src,
                      int64_t n) {
    switch (dt) {
    case NATTEN_DTYPE_F32: {
        float *d = (float *)base + off;
        for (int64_t i = 0; i < n; ++i) d[i * stride] = src[i];
        return;
    }
    case NATTEN_DTYPE_BF16: {
        uint16_t *d = (uint16_t *)base + off;
        if (stride == 1) /* vectorizable */
            for (int64_t i = 0; i < n; ++i) d[i] = natten_f32_to_bf16(src[i]);
        else
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

/* Prefetch n rows of C contiguous channels at element offsets off + i*rs of
 * t; with list, append their line addresses to list[*nlist < cap] instead (a
 * tile spreads them over its arithmetic; what does not fit is prefetched
 * now).  Channel-strided tensors are not prefetched (the lines between the
 * channels would be fetched too). */
void prefetch_rows(const common *c, const natten_tensor *t, int64_t off, int64_t rs, int64_t n, int64_t C,
                   const char **list, int64_t *nlist, int64_t cap) {
    if (t->stride[c->g.rank + 2] != 1) return;
    const size_t es = natten_dtype_size(c->p->dtype);
    const char *base = (const char *)t->data;
    if (C <= 0) return;
    /* the count in a local: kept in *nlist it was a store-to-load chain per
     * line (~4% of the f32 3-D backward's samples) */
    int64_t np = list ? *nlist : 0;
    for (int64_t i = 0; i < n; ++i) {
        /* every line the row touches: a row off a 64-byte boundary (MLX's
         * buffers start 24 bytes past one) ends in one line more than its
         * length suggests */
        const uintptr_t row = (uintptr_t)(base + (size_t)(off + i * rs) * es);
        const uintptr_t last = (row + (size_t)C * es - 1) & ~(uintptr_t)63;
        for (uintptr_t a = row & ~(uintptr_t)63; a <= last; a += 64) {
            if (list && np < cap) list[np++] = (const char *)a;
            else __builtin_prefetch((const char *)a);
        }
    }
    if (list) *nlist = np;
}

void store_zero_row(void *base, int64_t off, int64_t stride, natten_dtype dt, int64_t n) {
    for (int64_t i = 0; i < n; ++i) natten_store(base, off + i * stride, dt, 0.0);
}

size_t qscratch_bytes(const geom *g) {
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

qscratch qscratch_at(const common *c, int tid) {
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
void line_prep(const common *c, int64_t b, int64_t h, const int64_t *o, lineprep *lp,
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
    int64_t dims[3];
    const int64_t nb = rpb_dims(g, dims);
    lp->rpbf = c->rpb_all ? c->rpb_all + h * nb : NULL;
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
int build_rpb_all(common *c) {
    if (!c->rpb || c->rpb_all) return 1;
    const geom *g = &c->g;
    const int r = g->rank;
    int64_t dims[3];
    const int64_t nb = rpb_dims(g, dims);
    c->rpb_all = malloc((size_t)(g->H * nb) * sizeof(float));
    if (!c->rpb_all) return 0;
    for (int64_t h = 0; h < g->H; ++h)
        for (int64_t i = 0; i < nb; ++i)
            c->rpb_all[h * nb + i] =
                (float)natten_load(c->rpb->data, rpb_elem_off(c->rpb, dims, r, h, i), c->p->dtype);
    return 1;
}

/* Windows of the last axis, once per call (queries of every line share them). */
int build_wlast(common *c) {
    const geom *g = &c->g;
    const int a = g->rank - 1;
    if (g->varlen || c->wlast) return 1; /* varlen: extents differ per sample, computed per query */
    c->wlast = malloc((size_t)g->L[a] * sizeof(natten_window));
    if (!c->wlast) return 0;
    /* natten_window_of spends four 64-bit divisions per position (~70 ns here:
     * 70 us of a 1-D L1024 call); with dilation and GNA stride 1 as constants
     * they fold away (~1 ns) */
    if (g->dil[a] == 1 && g->gs[a] == 1) {
        for (int64_t i = 0; i < g->L[a]; ++i)
            c->wlast[i] = natten_window_of(g->L[a], g->K[a], 1, 1, g->causal[a], i);
    } else {
        for (int64_t i = 0; i < g->L[a]; ++i)
            c->wlast[i] = natten_window_of(g->L[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], i);
    }
    return 1;
}


/* Switch a prepared line to another head (the leading windows do not
 * depend on the head). */
void line_set_head(const common *c, int64_t b, int64_t h, lineprep *lp) {
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
int query_list(const common *c, lineprep *lp, int64_t ol, nlist *nl) {
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

void common_free(common *c) {
    natten_cpu_ws_put(c->q.owned);
    natten_cpu_ws_put(c->k.owned);
    natten_cpu_ws_put(c->v.owned);
    natten_cpu_ws_put(c->ek.owned);
    natten_cpu_ws_put(c->ev.owned);
    natten_cpu_ws_put(c->out.owned);
    natten_cpu_ws_put(c->dout.owned);
    natten_cpu_ws_put(c->w.owned);
    natten_cpu_ws_put(c->Pbuf);
    natten_cpu_ws_put(c->Sbuf);
    free(c->rpb_all);
    free(c->wlast);
    free(c->inv_start);
    free(c->inv_ent);
    free(c->scratch);
}

/* Which problems the fast kernels take. */
int fast_supported(const natten_problem *p) {
    if (p->dtype == NATTEN_DTYPE_F64) return 0;
    return 1;
}

/* Outputs of a few MiB or more in fresh memory (MLX maps a new buffer for any
 * output its 32 MiB buffer cache cannot hold) cost a page fault and a zeroed
 * 4 KiB page per 4 KiB written: 3-D 32^3 H4 D32 f32, dq dk dv 16 MiB each,
 * forward+backward through MLX 94 ms with its cache raised to 4 GiB, 113-120
 * ms without, 107-112 ms with this (2 threads); touching 48 MiB of fresh
 * memory here: 27 ms in 4 KiB pages, 11 ms in 2 MiB ones.
 * With transparent huge pages on request (the usual "madvise" setting), ask
 * for them on the 2 MiB pages that lie wholly inside the tensor: a fault per
 * 2 MiB.  Only a hint (contents never change); a no-op for memory already
 * touched. */
void advise_huge_output(const natten_problem *p, natten_tensor_kind kind, const natten_tensor *t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (!t || !t->data) return;
    int64_t shape[NATTEN_MAX_DIMS];
    const int nd = natten_shape_of(p, kind, shape);
    int64_t last = 0; /* largest element offset */
    for (int i = 0; i < nd; ++i) {
        if (shape[i] <= 0) return;
        if (t->stride[i] < 0) return;
        last += (shape[i] - 1) * t->stride[i];
    }
    const uintptr_t huge = (uintptr_t)2 << 20;
    const uintptr_t lo = (uintptr_t)t->data, hi = lo + (uintptr_t)(last + 1) * natten_dtype_size(natten_kind_dtype(p, kind));
    const uintptr_t a = (lo + huge - 1) & ~(huge - 1), b = hi & ~(huge - 1);
    if (b >= a + 2 * huge) madvise((void *)a, b - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)kind;
    (void)t;
#endif
}
