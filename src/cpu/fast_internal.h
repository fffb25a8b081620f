/*
 * fast_internal.h -- private to src/cpu/fast_*.c: the problem geometry, f32
 * views of the caller's tensors, per-query neighbour lists, lane-major tile
 * packs and inverse-neighbourhood (key pass) tables shared by the fused
 * forward, the fused backward and the split ops.  Nothing here is exported
 * (the library builds with hidden visibility); every neighbour set still
 * comes from natten_window_of (src/core/window.h).
 */
#ifndef NATTEN_CPU_FAST_INTERNAL_H
#define NATTEN_CPU_FAST_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/dtype.h"
#include "core/problem.h"
#include "core/window.h"
#include "cpu/cpu_internal.h"
#include "cpu/fast.h"

#define SEG 32 /* queries (or keys) along the last axis per task */
#define TSEG 64 /* positions of the last axis per lane-major tile task */
#define TILE_MIN 6 /* shorter runs go query by query */
#ifndef NATTEN_TILE_MIN_KK
#define NATTEN_TILE_MIN_KK 1 /* neighbours per query from which tiles are used */
#endif

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

void geom_init(geom *g, const natten_problem *p);

/* Sample extents (varlen) padded to 3 axes. */
static inline void sample_extent(const geom *g, int64_t b, int64_t e[3]) {
    for (int a = 0; a < 3; ++a)
        e[a] = a < g->rank ? (g->varlen ? (int64_t)g->varlen[b * g->rank + a] : g->L[a]) : 1;
}

/* ------------------------------------------------------------------------ */
/* f32 views (in place or converted), row stores                            */
/* ------------------------------------------------------------------------ */

typedef struct fview {
    const float *data;
    int64_t st[NATTEN_MAX_DIMS];
    float *owned;
} fview;

/*
 * A view of tensor t (kind) as f32 rows with contiguous channels.  0 on OOM.
 * head_major: always copy, into [B, H, X.., C] order (for [B, X.., H, C]
 * kinds), so one head's rows are contiguous.
 */
int make_view(const natten_problem *p, natten_tensor_kind kind, const natten_tensor *t, fview *v,
              int nthreads, int head_major);
/* Load n values of type dt at base + off (element stride `stride`) as f32. */
void load_row(const natten_cpu_kernels *kern, const void *base, int64_t off, int64_t stride, natten_dtype dt,
              float *dst, int64_t n);
/* Store n f32 values at base + off, element stride `stride`, rounded to dt. */
void store_row(void *base, int64_t off, int64_t stride, natten_dtype dt, const float *src, int64_t n);
void store_zero_row(void *base, int64_t off, int64_t stride, natten_dtype dt, int64_t n);

/* Offset of spatial position pos[0..rank) with batch b and head h in a
 * [B, X.., H, C] tensor with strides st. */
static inline int64_t row_off(const int64_t *st, int rank, int64_t b, const int64_t *pos, int64_t h) {
    int64_t off = b * st[0] + h * st[rank + 1];
    for (int a = 0; a < rank; ++a) off += pos[a] * st[a + 1];
    return off;
}

/* ------------------------------------------------------------------------ */
/* Per-call state and neighbour lists                                        */
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
    fview w;                        /* split ops: attn (AV) or dlogits (QK bwd) */
    natten_tensor *w_t;             /* split ops: logits (QK fwd) or dattn (AV bwd) */
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

/* Axis extents of the rpb table (2K-1 per axis, 1 past the rank); returns
 * their product, the table size per head. */
static inline int64_t rpb_dims(const geom *g, int64_t dims[3]) {
    int64_t n = 1;
    for (int a = 0; a < 3; ++a) {
        dims[a] = a < g->rank ? 2 * g->K[a] - 1 : 1;
        n *= dims[a];
    }
    return n;
}

static inline int64_t rpb_table_size(const geom *g) {
    int64_t dims[3];
    return rpb_dims(g, dims);
}

/* Element offset in an rpb-shaped tensor t of head h, row-major table index i. */
static inline int64_t rpb_elem_off(const natten_tensor *t, const int64_t dims[3], int rank, int64_t h, int64_t i) {
    int64_t off = h * t->stride[0];
    for (int a = rank - 1; a >= 0; --a) {
        off += (i % dims[a]) * t->stride[a + 1];
        i /= dims[a];
    }
    return off;
}

static inline natten_window last_window(const common *c, int64_t e, int64_t i) {
    const geom *g = &c->g;
    const int a = g->rank - 1;
    if (c->wlast) return c->wlast[i];
    return natten_window_of(e, g->K[a], g->dil[a], g->gs[a], g->causal[a], i);
}

static inline int64_t olin_of(const geom *g, const int64_t o[3]) {
    return (o[0] * g->O[1] + o[1]) * g->O[2] + o[2];
}

/* Leading output indices o[0..rank-1) of output line `line` (o[rank-1..] untouched). */
static inline void line_index(const geom *g, int64_t line, int64_t o[3]) {
    for (int a = g->rank - 2; a >= 0; --a) {
        o[a] = line % g->O[a];
        line /= g->O[a];
    }
}

/* Query task (b, line, segment of SEG outputs of the last axis), as the
 * generic passes number them: sets o[0..rank-1) and [*last0, *last1);
 * returns b. */
static inline int64_t seg_task(const geom *g, int64_t task, int64_t o[3], int64_t *last0, int64_t *last1) {
    const int64_t seg = task % g->nseg;
    task /= g->nseg;
    line_index(g, task % g->lines, o);
    *last0 = seg * SEG;
    *last1 = *last0 + SEG < g->O[g->rank - 1] ? *last0 + SEG : g->O[g->rank - 1];
    return task / g->lines;
}

size_t qscratch_bytes(const geom *g);
qscratch qscratch_at(const common *c, int tid);
/* Prepare the line (b, h, o[0..rank-1)); *rpb_h: the head whose rpb table
 * lp->rpbf holds (-1: none), updated. */
void line_prep(const common *c, int64_t b, int64_t h, const int64_t *o, lineprep *lp, int64_t *rpb_h);
/* Switch a prepared line to another head. */
void line_set_head(const common *c, int64_t b, int64_t h, lineprep *lp);
/* The list of the query at last-axis output index ol of a prepared line.
 * Returns 0 if the query is outside the sample (varlen). */
int query_list(const common *c, lineprep *lp, int64_t ol, nlist *nl);
/* rpb as an f32 table per head; windows of the last axis once per call. 0 on OOM. */
int build_rpb_all(common *c);
/* Prefetch (or, with list, queue up to cap line addresses of) n rows of C
 * contiguous channels at element offsets off + i*rs of t. */
void prefetch_rows(const common *c, const natten_tensor *t, int64_t off, int64_t rs, int64_t n, int64_t C,
                   const char **list, int64_t *nlist, int64_t cap);
int build_wlast(common *c);
/* Release the views, staging buffers, tables and scratch of a call (fields
 * never set must be NULL). */
void common_free(common *c);
/* Zero *c, then set its problem, geometry and the active kernels. */
void common_init(common *c, const natten_problem *p);
/* Transparent huge pages for the 2 MiB pages wholly inside a large output (a hint). */
void advise_huge_output(const natten_problem *p, natten_tensor_kind kind, const natten_tensor *t);
/* Which problems the fast kernels take (f64 declines). */
int fast_supported(const natten_problem *p);

/* ------------------------------------------------------------------------ */
/* Lane-major tile packs (fast_lanemajor.c)                                  */
/* ------------------------------------------------------------------------ */

typedef struct lmpack {
    float *data;
    int64_t XP, RP, HP, BP;
} lmpack;

typedef struct tile_common {
    lmpack q, k, v, d; /* q and d (dO): backward key tiles only */
    int64_t *keyshift; /* backward key tiles: shift of each regular key, INT64_MIN otherwise */
    int64_t *goff;  /* dilation groups of the last axis, d+1 entries */
    int64_t *xofu;  /* u -> x */
    int64_t nseg;   /* TSEG segments of u */
} tile_common;

int lm_pack(const common *c, const fview *src, int64_t Hn, int64_t C, const int64_t *goff, lmpack *dst,
            int nt);
/* NATTEN_CPU_TILES=1 */
int tiles_enabled(void);
/* Lane-major packs of K and V plus the group tables, or 0 on OOM. */
int tile_setup(const common *c, tile_common *tc, int nt);
void tile_free(tile_common *tc);

/* Tile task (b, h, line, TSEG segment `nseg` of u): sets o[0..rank-1), *seg
 * and *h; returns b. */
static inline int64_t tile_task(const geom *g, int64_t nseg, int64_t task, int64_t o[3], int64_t *seg,
                                int64_t *h) {
    *seg = task % nseg;
    task /= nseg;
    line_index(g, task % g->lines, o);
    task /= g->lines;
    *h = task % g->H;
    return task / g->H;
}

/* From u (before u1): how many regular queries of one dilation group share
 * the window shift of the query at u, up to 16; *w and *shift: its window and
 * shift.  0 when that query is past the sample (e) or its window is clamped. */
static inline int64_t tile_run(const common *c, const tile_common *tc, int64_t e, int64_t u, int64_t u1,
                               natten_window *w, int64_t *shift) {
    const geom *g = &c->g;
    const int64_t K = g->K[g->rank - 1], d = g->dil[g->rank - 1];
    const int64_t x = tc->xofu[u];
    if (x >= e) return 0;
    *w = last_window(c, e, x);
    if (w->valid_begin != 0 || w->valid_end != K) return 0;
    *shift = (w->start - x) / d;
    const int64_t gend = tc->goff[x % d + 1] < u1 ? tc->goff[x % d + 1] : u1;
    int64_t nl = 1;
    while (nl < 16 && u + nl < gend) {
        const int64_t xl = tc->xofu[u + nl];
        if (xl >= e) break;
        const natten_window wl = last_window(c, e, xl);
        if (wl.valid_begin != 0 || wl.valid_end != K || (wl.start - xl) / d != *shift) break;
        ++nl;
    }
    return nl;
}

/* nl rows of C channels, `stride` apart from src, transposed into 16 lanes at
 * dst; idle lanes (>= nl) are zeroed: stale scratch could be denormal or NaN,
 * and denormals cost microcode assists on every FMA. */
static inline void tile_lanes_in(const natten_cpu_kernels *kern, const float *src, int64_t stride, float *dst,
                                 int64_t nl, int64_t C) {
    if (nl < 16) memset(dst, 0, (size_t)C * 16 * sizeof(float));
    kern->transpose(src, stride, dst, 16, nl, C);
}

/* The tile's neighbour rows in the lane-major packs (sc->tpk, sc->tpv) and,
 * with rpb, their biases (sc->tbias): lanes from u0 with window shift `shift`,
 * w0 the window of the first lane's query x0.  Returns their count. */
static inline int64_t tile_list(const common *c, const tile_common *tc, qscratch *sc, int64_t b, int64_t h,
                                int64_t u0, int64_t shift, const natten_window *w0, int64_t x0) {
    const geom *g = &c->g;
    const int64_t hk = h / g->G, K = g->K[g->rank - 1];
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
    return n;
}

/* A tile pass (the forward, the backward's query side): what to do with one
 * query (last-axis position x) and with a tile of nl regular queries from u0
 * (window shift `shift`, w0 the window of its first query x0). */
typedef struct tile_pass {
    void (*query)(const common *c, qscratch *sc, int64_t b, int64_t h, int64_t o[3], int64_t x);
    void (*tile)(const common *c, const tile_common *tc, qscratch *sc, int64_t b, int64_t h, int64_t o[3],
                 int64_t u0, int64_t nl, int64_t shift, const natten_window *w0, int64_t x0);
} tile_pass;
/* Tasks [begin, end) of a tile pass: (b, h, line, TSEG segment of u), c->tile set. */
void tile_pass_run(const common *c, const tile_pass *tp, int64_t begin, int64_t end, int tid);

/* Store the tile result sc->tout ([C][16]) as nl rows of t from offset off,
 * `lstride` elements apart; direct: t is f32 with contiguous channels. */
static inline void tile_rows_out(const common *c, qscratch *sc, natten_tensor *t, int64_t off, int64_t lstride,
                                 int64_t C, int64_t nl, int direct) {
    if (direct) {
        c->kern->transpose(sc->tout, 16, (float *)t->data + off, lstride, C, nl);
    } else {
        const int r = c->g.rank;
        for (int64_t l = 0; l < nl; ++l) {
            for (int64_t ch = 0; ch < C; ++ch) sc->row[ch] = sc->tout[ch * 16 + l];
            store_row(t->data, off + l * lstride, t->stride[r + 2], c->p->dtype, sc->row, C);
        }
    }
}

/* The blocked forward (fast_fwd_block.c) on the caller's tensors: SUCCESS, or
 * UNSUPPORTED (nothing written) for problems it leaves to the generic path. */
natten_status fwd_block_run(common *c, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
                            natten_tensor *out, natten_tensor *lse, int nt);

/* ------------------------------------------------------------------------ */
/* Inverse neighbourhoods and the key pass (fast_inverse.c)                  */
/* ------------------------------------------------------------------------ */

/* Inverse neighbourhood tables: for sample table s and axis a, key x holds
 * entries inv_ent[...] of (o * K + slot) pairs, o ascending. */
static inline int64_t *inv_start_of(const common *c, int64_t s, int a) {
    return c->inv_start + (s * 3 + a) * c->inv_stride_start;
}
static inline int64_t *inv_ent_of(const common *c, int64_t s, int a) {
    return c->inv_ent + (s * 3 + a) * c->inv_stride_ent;
}

typedef struct kscratch {
    const float **qp, **dop;
    float *wk, *wv;
    int64_t *ra, *rq, *rd; /* one key position's pairs, relative to the head's bases */
    float *row;
} kscratch;

static inline int64_t kround(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* Allocate c->inv_start / c->inv_ent (one set, or one per sample with
 * varlen) and build them, with c->inv_maxlen; needs the q and dout views'
 * strides, and reads c->wlast when built (build_wlast first).  0 on OOM. */
int inverse_setup(common *c);
size_t kscratch_bytes(const geom *g, const int64_t maxlen[3]);
kscratch kscratch_at(const common *c, int tid, int64_t n);
/* The (query, slot) pairs of key x as offsets relative to a query head's
 * bases (the same for every head).  Returns their count (0 outside varlen). */
int64_t key_pairs(const common *c, kscratch *sc, const int64_t x[3], const int64_t e[3],
                  const int64_t *const st[3], const int64_t *const en[3]);
/* Decode a key task (b, key line, seg) and the tables of its sample. */
void key_task_setup(const common *c, int64_t task, int64_t kseg, int64_t *b, int64_t *seg, int64_t x[3],
                    int64_t e[3], const int64_t *st[3], const int64_t *en[3]);

/* ------------------------------------------------------------------------ */
/* Backward passes shared with the split ops (fast_backward.c)               */
/* ------------------------------------------------------------------------ */

/* Key pass, generic lists: tasks (b, key line, SEG segment).  dk (from
 * c->Sbuf and q) only when c->dk_t, dv (from c->Pbuf and dout) only when c->dv_t. */
void bwd_key_task(void *vctx, int64_t begin, int64_t end, int tid);
/* Zero every dq row (tasks over B*X*H rows). */
void zero_dq_task(void *vctx, int64_t begin, int64_t end, int tid);
/* drpb from c->Sbuf, one task per head. */
void bwd_rpb_task(void *vctx, int64_t begin, int64_t end, int tid);

#endif /* NATTEN_CPU_FAST_INTERNAL_H */
