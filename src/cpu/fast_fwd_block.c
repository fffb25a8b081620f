/*
 * fast_fwd_block.c -- the blocked fused forward: tiles of consecutive
 * queries of one dilation group of the last axis, queries on vector lanes
 * (cpu/fwd_block.h).
 *
 * Why: the generic path spends ~2500 cycles per query-head on 49x64 work
 * (pointer lists, one horizontal reduction per neighbour, keys strided H*D
 * apart).  Here each task (batch, head, run of lines) keeps, per thread, the
 * key rows it needs packed lane-major ([channel][position], for the QK
 * tiles) and the value rows packed row-major ([position][channel], for the
 * AV sums), converted from the caller's dtype and layout once per row and
 * reused by every line whose window covers it.  Packed rows live in a small
 * direct-mapped cache indexed by the leading positions modulo the window
 * span, so the working set stays in L2 and nothing is staged per call.
 *
 * Tiles: lane l of a tile reads key positions off[l] + k of each leading
 * row, so interior runs (the same window shift), border runs (the same
 * clamped start), causal prefixes (masked slots) and GNA groups share one
 * kernel as long as off[l] + K fits the kernel's span.
 *
 * Declined (generic path): extra KV, out stride on the last axis, a last
 * kernel size over the span, or packs over NATTEN_BLK_MAX_BYTES per thread.
 * Each output row and lse entry is written by exactly one task, and a tile's
 * result does not depend on the thread: thread-count independent bits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/fast_internal.h"
#include "cpu/fwd_block.h"

#define BLK_TASKS_PER_THREAD 8 /* tasks to balance; fewer lines per task re-pack more rows */
#define BLK_SEGQ 256   /* last-axis (group-major) positions per task */
#define BLK_SEGQ_1D 128 /* rank 1: tasks of 128 positions, each packing only the keys
                         * its segment reads: 1-D L1024 K7 H4 on 2 threads packed every
                         * head's whole row once per thread that touched it (~220 vs
                         * ~330 us forward); 64 and 256 measured within noise */
#define NATTEN_BLK_MAX_BYTES ((size_t)64 << 20)

typedef struct blk_ctx {
    const common *c;
    const blk_kernel *bk;
    const natten_tensor *q, *k, *v;
    natten_tensor *out, *lse;
    int64_t XP, vld, NS, S0, S1, nR, nchunk, clines, nseg;
    int64_t segq;        /* group-major positions per task segment (BLK_SEGQ, BLK_SEGQ_1D) */
    int64_t slot_floats; /* pitch of one packed row (keys then values) */
    int stream;          /* output rows may take non-temporal stores (see blk_args) */
    int pfout;           /* large output that is not streamed: tiles prefetch their rows */
    int pair;            /* 2-D, kernels with `pair`: tiles take lines y and y + dil0 together */
    int64_t *goff;    /* dilation groups of the last axis (full extent), d+1 entries */
    int64_t *gpos;    /* pack position of each group's local index 0 (d entries) */
    size_t per_thread; /* bytes */
    char *scratch;
} blk_ctx;

/* Per thread.  Arrays marked x2 hold one part per line of a unit (a line,
 * or two lines that share key rows: see blk_task). */
typedef struct blk_scratch {
    int64_t *tags;
    const float **kr, **vr;
    int32_t *off;
    uint32_t *vmask;
    natten_window *wl;
    float *qt, *sbuf, *orow, *lse, *cvt, *pack;
    float **optr;
    uint16_t **o16;     /* bf16 output rows (kernels with bf16_out) */
    int64_t *lrpb;      /* rpb: table offset of each leading row's part */
    float *bias;        /* rpb: [nrow*K][lanes] of a tile */
    int64_t *pfk, *pfv; /* the next line's rows to pack: source offsets (position 0) */
    int64_t npf, pfq[2]; /* their count; the next unit's lines' query offsets (position 0), or -1 */
    int64_t *kra;       /* per dilation group: local key range [kra[2rr], kra[2rr+1]) the
                         * current segment's queries read (what pack_row packs) */
    int64_t seg;        /* the current segment (part of the pack tags) */
    const char **pfa;   /* a tile's share of those, as cache-line addresses */
    int64_t npfa;
} blk_scratch;

#define BLK_PF_MAX 1024 /* prefetch addresses handed to one tile */

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Carve (or size, when base is NULL) one thread's scratch. */
static size_t blk_layout(const blk_ctx *x, char *base, blk_scratch *s) {
    const geom *g = &x->c->g;
    const int64_t LN = x->bk->lanes, Kl = g->K[g->rank - 1], nrow = g->KK / Kl;
    const int64_t cmax = g->D > g->Dv ? g->D : g->Dv;
    size_t o = 0;
#define CARVE(field, type, count)                                      \
    do {                                                               \
        if (base) s->field = (type *)(base + o);                       \
        o = align64(o + (size_t)(count) * sizeof(type));               \
    } while (0)
    CARVE(tags, int64_t, x->NS);
    CARVE(kr, const float *, 2 * nrow); /* the unit's rows: line 0's, then line 1's others */
    CARVE(vr, const float *, 2 * nrow);
    CARVE(off, int32_t, LN);
    CARVE(vmask, uint32_t, Kl);
    CARVE(wl, natten_window, LN);
    CARVE(optr, float *, 2 * LN);
    CARVE(o16, uint16_t *, 2 * LN);
    CARVE(pfa, const char *, BLK_PF_MAX);
    CARVE(lrpb, int64_t, 2 * nrow); /* line 1's from lrpb + line 0's row count */
    CARVE(bias, float, 2 * nrow * Kl * LN);
    CARVE(pfk, int64_t, 2 * nrow);
    CARVE(pfv, int64_t, 2 * nrow);
    CARVE(kra, int64_t, 2 * g->dil[g->rank - 1]);
    CARVE(qt, float, 2 * g->D * LN);
    CARVE(sbuf, float, 2 * nrow * Kl * LN);
    CARVE(orow, float, 2 * LN * g->Dv);
    CARVE(lse, float, 2 * LN);
    CARVE(cvt, float, 16 * cmax); /* rows_lane_major converts 16 rows at a time */
    CARVE(pack, float, x->NS * x->slot_floats);
#undef CARVE
    return o;
}

/* n channels of one row (element offset off, channel stride cs) as f32. */
static void row_f32(const blk_ctx *x, const natten_tensor *t, int64_t off, int64_t cs, int64_t n, float *dst) {
    load_row(x->c->kern, t->data, off, cs, x->c->p->dtype, dst, n);
}

/* nr rows (offsets off0 + i*rs) of C channels, lane-major into dst[c*ld + i].
 * From 64 rows on, blocks of 16 rows end at 64-byte boundaries of dst (ld is
 * a multiple of 16 wherever dst is aligned): a key pack starts 16 + K/2
 * positions in, and split-line stores made its transposes 40% slower (0.85
 * vs 0.61 cycles a float); shorter rows would pay a whole extra (masked)
 * block for it (3-D 16^3 K3: 16-position rows as 15 + 1). */
static void rows_lane_major(const blk_ctx *x, const natten_tensor *t, int64_t off0, int64_t rs, int64_t nr,
                            int64_t C, float *cvt, float *dst, int64_t ld) {
    const common *c = x->c;
    const int r = c->g.rank;
    const int64_t cs = t->stride[r + 2];
    const int64_t mis = nr >= 64 ? (int64_t)(((uintptr_t)dst / sizeof(float)) % 16) : 0;
    for (int64_t i0 = 0, nb; i0 < nr; i0 += nb) {
        nb = i0 == 0 && mis ? 16 - mis : 16;
        if (nb > nr - i0) nb = nr - i0;
        /* the caller's rows are strided (H*C apart): fetch the next block early */
        if (i0 + nb < nr)
            prefetch_rows(c, t, off0 + (i0 + nb) * rs, rs, nr - i0 - nb < 16 ? nr - i0 - nb : 16, C, NULL, NULL, 0);
        if (c->p->dtype == NATTEN_DTYPE_F32 && cs == 1) {
            c->kern->transpose((const float *)t->data + off0 + i0 * rs, rs, dst + i0, ld, nb, C);
            continue;
        }
        for (int64_t i = 0; i < nb; ++i) row_f32(x, t, off0 + (i0 + i) * rs, cs, C, cvt + i * C);
        c->kern->transpose(cvt, C, dst + i0, ld, nb, C);
    }
}

/* Pack key and value row (b, hk, leading position lead[]) of sample extent e
 * into slot memory: of each dilation group rr the local positions
 * [s->kra[2rr], s->kra[2rr+1]) that the current segment's windows read
 * (every slot of them, masked ones too: a masked weight is 0, and 0 * x must
 * stay 0, so they must hold finite data).  Pads were zeroed once per call
 * (masked slots before a causal start, idle lanes); other positions of the
 * slot may hold another segment's rows, which only idle lanes (zero queries,
 * results dropped) read. */
static void pack_row(const blk_ctx *x, blk_scratch *s, float *kp, int64_t b, int64_t hk, const int64_t lead[2],
                     const int64_t e[3]) {
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t d = g->dil[r - 1], XP = x->XP, vld = x->vld, Dv = g->Dv;
    float *vp = kp + g->D * XP;
    int64_t kb = b * x->k->stride[0] + hk * x->k->stride[r + 1];
    int64_t vb = b * x->v->stride[0] + hk * x->v->stride[r + 1];
    for (int a = 0; a < r - 1; ++a) {
        kb += lead[a] * x->k->stride[a + 1];
        vb += lead[a] * x->v->stride[a + 1];
    }
    const int64_t ksx = x->k->stride[r], vsx = x->v->stride[r], vcs = x->v->stride[r + 2];
    const int vdirect = c->p->dtype == NATTEN_DTYPE_F32 && vcs == 1;
    for (int64_t rr = 0; rr < d; ++rr) {
        const int64_t u0 = x->gpos[rr], nfull = x->goff[rr + 1] - x->goff[rr];
        const int64_t ne = rr < e[r - 1] ? (e[r - 1] - rr - 1) / d + 1 : 0;
        const int64_t pa = s->kra[2 * rr], pb = s->kra[2 * rr + 1];
        const int64_t n = ne < pb ? ne : pb; /* positions [pa, n) are in the sample */
        if (n > pa)
            rows_lane_major(x, x->k, kb + (rr + d * pa) * ksx, d * ksx, n - pa, g->D, s->cvt, kp + u0 + pa, XP);
        for (int64_t p = pa; p < n; ++p) {
            float *dst = vp + (u0 + p) * vld;
            if (p % 8 == 0 && p + 8 < n)
                prefetch_rows(c, x->v, vb + (rr + d * (p + 8)) * vsx, d * vsx, n - p - 8 < 8 ? n - p - 8 : 8, Dv, NULL,
                              NULL, 0);
            if (vdirect) {
                const float *src = (const float *)x->v->data + vb + (rr + d * p) * vsx;
                for (int64_t ch = 0; ch < Dv; ++ch) dst[ch] = src[ch];
            } else {
                row_f32(x, x->v, vb + (rr + d * p) * vsx, vcs, Dv, dst);
            }
        }
        const int64_t z0 = n > pa ? n : pa, z1 = nfull < pb ? nfull : pb;
        if (z1 > z0) { /* varlen: positions past the sample */
            for (int64_t ch = 0; ch < g->D; ++ch)
                for (int64_t p = z0; p < z1; ++p) kp[ch * XP + u0 + p] = 0.f;
            memset(vp + (u0 + z0) * vld, 0, (size_t)((z1 - z0) * vld) * sizeof(float));
        }
    }
}

/* Leading rows of a line (slot order); returns their count, or -1 when the
 * line is outside the sample.  pack: pack the rows not in the cache (and
 * set s->kr, s->vr, s->lrpb from index first); else only list the source rows that will need packing
 * (s->pfk, s->pfv) -- called for the next line before this line's tiles,
 * which prefetch them a tile's positions at a time (prefetch_tile), so the
 * strided reads of the caller's layout overlap the arithmetic instead of
 * stalling the packing (a whole row at once fills the fill buffers and
 * stalls the core just the same). */
static int64_t line_rows(const blk_ctx *x, blk_scratch *s, int64_t b, int64_t hk, const int64_t o[3],
                         const int64_t e[3], int pack, int64_t first) {
    const geom *g = &x->c->g;
    const int r = g->rank;
    natten_window w[2];
    memset(w, 0, sizeof w); /* axes past r - 1 are never read; GCC cannot see that once row_f32 inlines */
    int64_t n0 = 1, n1 = 1, b0 = 0, b1 = 0;
    for (int a = 0; a < r - 1; ++a) {
        const int64_t pos = o[a] * g->os[a];
        if (pos >= e[a]) return -1;
        w[a] = natten_window_of(e[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], pos);
    }
    if (r >= 2) {
        b0 = w[0].valid_begin;
        n0 = w[0].valid_end;
    }
    if (r == 3) {
        b1 = w[1].valid_begin;
        n1 = w[1].valid_end;
    }
    const size_t slot_floats = (size_t)x->slot_floats;
    int64_t n = first;
    for (int64_t k0 = b0; k0 < n0; ++k0)
        for (int64_t k1 = b1; k1 < n1; ++k1) {
            int64_t lead[2] = {0, 0}, slot = 0, R = 0;
            if (r >= 2) lead[0] = w[0].start + k0 * w[0].step;
            if (r == 3) lead[1] = w[1].start + k1 * w[1].step;
            if (r == 2) {
                slot = lead[0] % x->S0;
                R = lead[0];
            } else if (r == 3) {
                slot = (lead[0] % x->S0) * x->S1 + lead[1] % x->S1;
                R = lead[0] * g->L[1] + lead[1];
            }
            const int64_t tag = ((b * g->Hkv + hk) * x->nR + R) * x->nseg + s->seg;
            float *kp = s->pack + (size_t)slot * slot_floats;
            if (!pack) {
                if (s->tags[slot] != tag) {
                    int64_t kb = b * x->k->stride[0] + hk * x->k->stride[r + 1];
                    int64_t vb = b * x->v->stride[0] + hk * x->v->stride[r + 1];
                    for (int a = 0; a < r - 1; ++a) {
                        kb += lead[a] * x->k->stride[a + 1];
                        vb += lead[a] * x->v->stride[a + 1];
                    }
                    int64_t i = 0;
                    while (i < s->npf && s->pfk[i] != kb) ++i; /* both lines of a unit may list it */
                    if (i == s->npf) {
                        s->pfk[s->npf] = kb;
                        s->pfv[s->npf++] = vb;
                    }
                }
                continue;
            }
            if (s->tags[slot] != tag) {
                pack_row(x, s, kp, b, hk, lead, e);
                s->tags[slot] = tag;
            }
            s->kr[n] = kp;
            s->vr[n] = kp + g->D * x->XP;
            if (x->c->rpb) { /* the leading axes' part of the rpb index (row-major table) */
                int64_t dims[3], li = 0;
                rpb_dims(g, dims);
                if (r >= 2) li = natten_rpb_index(&w[0], g->K[0], o[0] * g->os[0], k0);
                if (r == 3) li = li * dims[1] + natten_rpb_index(&w[1], g->K[1], o[1] * g->os[1], k1);
                s->lrpb[n] = li * dims[r - 1];
            }
            ++n;
        }
    return n - first;
}

/* Zero output row and -inf lse of query (b, h, o) (outside the sample). */
static void zero_query(const blk_ctx *x, int64_t b, int64_t h, const int64_t o[3]) {
    const common *c = x->c;
    const int r = c->g.rank;
    store_zero_row(x->out->data, row_off(x->out->stride, r, b, o, h), x->out->stride[r + 2], c->p->dtype, c->g.Dv);
    if (x->lse) ((float *)x->lse->data)[row_off(x->lse->stride, r, b, o, 0) + h * x->lse->stride[r + 1]] = -INFINITY;
}

/* The lines one tile pass computes: one, or two (kernels with `pair`) whose
 * rows are s->kr/vr[0, nrow[0]) and [rb, rb + nrow[1]) of nu. */
typedef struct blk_unit {
    int nq;
    int64_t o[2][3], nrow[2], rb, nu;
} blk_unit;

/* Line j's part of a tile (queries, output rows, rpb bias) into its args. */
static void line_args(const blk_ctx *x, blk_scratch *s, int64_t b, int64_t h, const blk_unit *u, int j,
                      int64_t rr, int64_t p0, int64_t nl, blk_args *a) {
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const int LN = x->bk->lanes;
    const int64_t d = g->dil[r - 1], K = g->K[r - 1], nrow = u->nrow[j], rb = j ? u->rb : 0;
    float *qt = s->qt + j * g->D * LN, **optr = s->optr + j * LN;
    uint16_t **o16 = s->o16 + j * LN;
    int64_t o[3] = {u->o[j][0], u->o[j][1], u->o[j][2]};
    /* queries, lane-major */
    o[r - 1] = rr + d * p0;
    int64_t pos[3]; /* query position (out strides apply to the leading axes) */
    for (int ax = 0; ax < r; ++ax) pos[ax] = o[ax] * g->os[ax];
    const int64_t qoff = row_off(x->q->stride, r, b, pos, h);
    if (nl < LN) memset(qt, 0, (size_t)(g->D * LN) * sizeof(float));
    rows_lane_major(x, x->q, qoff, d * x->q->stride[r], nl, g->D, s->cvt, qt, LN);
    const int direct = c->p->dtype == NATTEN_DTYPE_F32 && x->out->stride[r + 2] == 1;
    const int64_t ooff = row_off(x->out->stride, r, b, o, h), ostep = d * x->out->stride[r];
    for (int64_t l = 0; l < nl; ++l)
        optr[l] = direct ? (float *)x->out->data + ooff + l * ostep : s->orow + (j * LN + l) * g->Dv;
    const int bf16_direct = x->bk->bf16_out && c->p->dtype == NATTEN_DTYPE_BF16 && x->out->stride[r + 2] == 1;
    for (int64_t l = 0; bf16_direct && l < nl; ++l) o16[l] = (uint16_t *)x->out->data + ooff + l * ostep;
    float *bias = s->bias + j * (x->bk->lanes * K * (g->KK / K));
    if (c->rpb) { /* per lane: its window's relative positions (spec 3.9) */
        const float *rpbf = c->rpb_all + h * rpb_table_size(g);
        const int64_t *lrpb = s->lrpb + (j ? u->nrow[0] : 0);
        for (int64_t i = 0; i < nrow; ++i)
            for (int64_t k = 0; k < K; ++k) {
                float *bl = bias + (i * K + k) * LN;
                for (int64_t l = 0; l < LN; ++l)
                    bl[l] = l < nl ? rpbf[lrpb[i] + natten_rpb_index(&s->wl[l], K, rr + d * (p0 + l), k)] : 0.f;
            }
    }
    a->qt = qt;
    a->kr = s->kr + rb;
    a->vr = s->vr + rb;
    a->nrow = nrow;
    a->bias = c->rpb ? bias : NULL;
    a->sbuf = s->sbuf + j * (LN * K * (g->KK / K));
    a->out = optr;
    a->stream = a->stream && direct && ((uintptr_t)optr[0] & 63) == 0;
    a->lse = s->lse + j * LN;
    a->out16 = bf16_direct ? o16 : NULL;
    a->rb = rb;
}

/* After the kernel: line j's rows through store_row where the kernel did not
 * write them, and its lse. */
static void line_store(const blk_ctx *x, blk_scratch *s, int64_t b, int64_t h, const blk_unit *u, int j,
                       int64_t rr, int64_t p0, int64_t nl, const blk_args *a) {
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t d = g->dil[r - 1];
    int64_t o[3] = {u->o[j][0], u->o[j][1], u->o[j][2]};
    o[r - 1] = rr + d * p0;
    const int64_t ooff = row_off(x->out->stride, r, b, o, h), ostep = d * x->out->stride[r];
    if (!(c->p->dtype == NATTEN_DTYPE_F32 && x->out->stride[r + 2] == 1) && !a->out16)
        for (int64_t l = 0; l < nl; ++l)
            store_row(x->out->data, ooff + l * ostep, x->out->stride[r + 2], c->p->dtype, a->out[l], g->Dv);
    if (x->lse) {
        const int64_t loff = row_off(x->lse->stride, r, b, o, 0) + h * x->lse->stride[r + 1];
        for (int64_t l = 0; l < nl; ++l) ((float *)x->lse->data)[loff + l * d * x->lse->stride[r]] = a->lse[l];
    }
}

/* One tile: group rr, local indices p0..p0+nl-1 of the unit's lines, windows in s->wl. */
static void run_tile(const blk_ctx *x, blk_scratch *s, int64_t b, int64_t h, const blk_unit *u, int64_t rr,
                     int64_t p0, int64_t nl) {
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const int LN = x->bk->lanes;
    const int64_t d = g->dil[r - 1], K = g->K[r - 1];
    /* local start of lane 0 (negative: causal prefix) */
    const int64_t base = d == 1 ? s->wl[0].start : (s->wl[0].start - rr) / d;
    int uniform = 1, allvalid = 1;
    for (int64_t l = 0; l < LN; ++l) {
        if (l < nl) s->off[l] = (int32_t)((d == 1 ? s->wl[l].start : (s->wl[l].start - rr) / d) - base);
        else s->off[l] = uniform && l + K <= x->bk->span ? (int32_t)l : s->off[nl - 1];
        uniform &= s->off[l] == l;
    }
    for (int64_t l = 0; l < nl; ++l) allvalid &= s->wl[l].valid_begin == 0 && s->wl[l].valid_end == K;
    for (int64_t k = 0; k < K && !allvalid; ++k) {
        uint32_t m = 0;
        for (int64_t l = 0; l < LN; ++l)
            if (l >= nl || (k >= s->wl[l].valid_begin && k < s->wl[l].valid_end)) m |= 1u << l;
        s->vmask[k] = m;
    }
    const int64_t shift = x->gpos[rr] + base;
    for (int64_t i = 0; i < u->nu; ++i) {
        s->kr[i] += shift;
        s->vr[i] += shift * x->vld;
    }
    /* the longest run of lanes whose offsets step by one (a clamped border's
     * complement, say): the kernel shares value loads across it */
    int32_t rlo = 0, rhi = 0;
    for (int64_t l0 = 0, l1; l0 < nl; l0 = l1) {
        for (l1 = l0 + 1; l1 < nl && s->off[l1] - l1 == s->off[l0] - l0;) ++l1;
        if (l1 - l0 > rhi - rlo) {
            rlo = (int32_t)l0;
            rhi = (int32_t)l1;
        }
    }
    const int32_t rsh = s->off[rlo] - rlo;
    if (shift + rsh < 0 || shift + rsh + LN + K - 1 > x->XP) rhi = rlo; /* outside the pads: no run */
    blk_args a[2];
    memset(a, 0, (size_t)u->nq * sizeof a[0]);
    for (int j = 0; j < u->nq; ++j) {
        a[j].kld = x->XP;
        a[j].vld = x->vld;
        a[j].K = K;
        a[j].D = g->D;
        a[j].Dv = g->Dv;
        a[j].nl = nl;
        a[j].off = s->off;
        a[j].uniform = uniform;
        a[j].run_lo = rlo;
        a[j].run_hi = rhi;
        a[j].run_shift = rsh;
        a[j].vmask = allvalid ? NULL : s->vmask;
        a[j].scale = g->scale;
        a[j].stream = x->stream;
        a[j].pf = s->pfa;
        a[j].npf = s->npfa;
        line_args(x, s, b, h, u, j, rr, p0, nl, &a[j]);
    }
    if (u->nq == 2) a[0].pair = &a[1];
    x->bk->fwd(&a[0]);
    for (int64_t i = 0; i < u->nu; ++i) {
        s->kr[i] -= shift;
        s->vr[i] -= shift * x->vld;
    }
    for (int j = 0; j < u->nq; ++j) line_store(x, s, b, h, u, j, rr, p0, nl, &a[j]);
}

/* Task (b, h, chunk of clines lines, segment of BLK_SEGQ group-major positions). */
/* Non-temporal stores are weakly ordered: fence them before the pool's
 * release of this chunk makes the results visible to the caller. */
static void store_fence(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_sfence();
#endif
}

/* The key range of each dilation group that segment [u0, u1) (group-major)
 * reads, into s->kra; one segment: whole groups, as before segments had
 * ranges (so one-segment problems pack exactly what they did). */
static void seg_keys(const blk_ctx *x, blk_scratch *s, int64_t seg, const int64_t u0, int64_t u1,
                     const int64_t e[3]) {
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t d = g->dil[r - 1], K = g->K[r - 1];
    s->seg = seg;
    for (int64_t rr = 0; rr < d; ++rr) {
        const int64_t nfull = x->goff[rr + 1] - x->goff[rr];
        if (x->nseg == 1) {
            s->kra[2 * rr] = 0;
            s->kra[2 * rr + 1] = nfull;
            continue;
        }
        const int64_t ne = rr < e[r - 1] ? (e[r - 1] - rr - 1) / d + 1 : 0;
        const int64_t ga = x->goff[rr] > u0 ? x->goff[rr] : u0, gb = x->goff[rr + 1] < u1 ? x->goff[rr + 1] : u1;
        const int64_t pa = ga - x->goff[rr], pb = gb - x->goff[rr] < ne ? gb - x->goff[rr] : ne;
        int64_t lo = INT64_MAX, hi = 0;
        for (int64_t p = pa; p < pb; ++p) {
            const natten_window w = last_window(c, e[r - 1], rr + d * p);
            const int64_t ls = d == 1 ? w.start : (w.start - rr) / d;
            lo = ls < lo ? ls : lo;
            hi = ls + K > hi ? ls + K : hi;
        }
        s->kra[2 * rr] = lo < 0 ? 0 : lo;
        s->kra[2 * rr + 1] = hi > ne ? ne : hi;
        if (s->kra[2 * rr] >= s->kra[2 * rr + 1]) s->kra[2 * rr] = s->kra[2 * rr + 1] = 0;
    }
}

/* Lines of unit u of a chunk starting at line c0 (ending at l1): line A, and
 * with pairing B = A + d0 (same dilation group of axis 0, so their windows
 * share all but d0-steps' worth of rows) when it is in the chunk, else -1.
 * Without pairing, the lines in order.  Returns A (>= l1: no more units). */
static int64_t unit_lines(const blk_ctx *x, int64_t c0, int64_t l1, int64_t u, int64_t *B) {
    const int64_t d0 = x->c->g.dil[0];
    *B = -1;
    if (!x->pair) return c0 + u;
    const int64_t A = c0 + (u / d0) * 2 * d0 + u % d0;
    if (A + d0 < l1) *B = A + d0;
    return A;
}

/* Pack the rows of unit (A, B) and set up u; returns 0 when the lines are
 * outside the sample (then u->nrow[0] < 0 for a lone line), or when B's rows
 * do not continue A's (then u holds A alone and *B is set to -1: the caller
 * runs B next as a unit of its own). */
static void unit_rows(const blk_ctx *x, blk_scratch *s, int64_t b, int64_t hk, const int64_t e[3], int64_t A,
                      int64_t *B, blk_unit *u) {
    const geom *g = &x->c->g;
    memset(u, 0, sizeof *u);
    line_index(g, A, u->o[0]);
    u->nq = 1;
    u->nrow[0] = line_rows(x, s, b, hk, u->o[0], e, 1, 0);
    u->nu = u->nrow[0];
    if (*B < 0) return;
    line_index(g, *B, u->o[1]);
    const int64_t nA = u->nrow[0];
    /* line B's rows after A's (their slots are distinct: S0 has room for both windows) */
    const int64_t nB = nA >= 0 ? line_rows(x, s, b, hk, u->o[1], e, 1, nA) : -1;
    int64_t t = 0;
    while (nB > 0 && t < nA && s->kr[t] != s->kr[nA]) ++t;
    /* B's first rows must be A's last ones (windows of one group, in order) */
    int ok = nB > 0 && nA > 0 && (t == nA || nA - t <= nB);
    for (int64_t i = 0; ok && t + i < nA; ++i) ok = s->kr[t + i] == s->kr[nA + i];
    if (!ok) {
        *B = -1;
        return;
    }
    for (int64_t i = nA - t; i < nB; ++i) { /* B's own rows follow A's */
        s->kr[t + i] = s->kr[nA + i];
        s->vr[t + i] = s->vr[nA + i];
    }
    u->nq = 2;
    u->nrow[1] = nB;
    u->rb = t;
    u->nu = t + nB > nA ? t + nB : nA;
}

static void blk_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const blk_ctx *x = vctx;
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const int LN = x->bk->lanes;
    const int64_t d = g->dil[r - 1], K = g->K[r - 1], span = x->bk->span;
    blk_scratch s;
    blk_layout(x, x->scratch + (size_t)tid * x->per_thread, &s);
    for (int64_t task = begin; task < end; ++task) {
        const int64_t seg = task % x->nseg, chunk = (task / x->nseg) % x->nchunk;
        const int64_t h = (task / (x->nseg * x->nchunk)) % g->H, b = task / (x->nseg * x->nchunk * g->H);
        const int64_t hk = h / g->G;
        int64_t e[3];
        sample_extent(g, b, e);
        const int64_t u0 = seg * x->segq, u1 = u0 + x->segq < g->L[r - 1] ? u0 + x->segq : g->L[r - 1];
        seg_keys(x, &s, seg, u0, u1, e);
        const int64_t c0 = chunk * x->clines, l1 = c0 + x->clines < g->lines ? c0 + x->clines : g->lines;
        int64_t redo = -1; /* a B line that could not pair: its own unit next */
        for (int64_t ui = 0;;) {
            int64_t B, A;
            if (redo >= 0) {
                A = redo;
                B = -1;
                redo = -1;
            } else {
                A = unit_lines(x, c0, l1, ui++, &B);
                if (A >= l1) break;
            }
            blk_unit un;
            const int64_t Bw = B;
            unit_rows(x, &s, b, hk, e, A, &B, &un);
            if (Bw >= 0 && B < 0) redo = Bw;
            const int64_t nrow = un.nrow[0];
            /* the next unit's rows that need packing and its queries, prefetched over this unit's tiles */
            s.npf = 0;
            s.pfq[0] = s.pfq[1] = -1;
            {
                int64_t Bn = -1;
                const int64_t An = redo >= 0 ? redo : unit_lines(x, c0, l1, ui, &Bn);
                for (int j = 0; j < 2 && An < l1; ++j) {
                    const int64_t ln = j ? Bn : An;
                    if (ln < 0) break;
                    int64_t on[3] = {0, 0, 0};
                    line_index(g, ln, on);
                    if (line_rows(x, &s, b, hk, on, e, 0, 0) >= 0) {
                        for (int a = 0; a < r - 1; ++a) on[a] *= g->os[a];
                        s.pfq[j] = row_off(x->q->stride, r, b, on, h);
                    }
                }
            }
            for (int64_t rr = 0; rr < d; ++rr) {
                const int64_t ga = x->goff[rr] > u0 ? x->goff[rr] : u0;
                const int64_t gb = x->goff[rr + 1] < u1 ? x->goff[rr + 1] : u1;
                /* local indices [pa, pb) of group rr in this segment; queries past the sample extent: zero */
                const int64_t pa = ga - x->goff[rr], pb = gb - x->goff[rr];
                const int64_t pe = nrow < 0 ? pa : rr < e[r - 1] ? (e[r - 1] - rr - 1) / d + 1 : 0;
                for (int64_t p = pa; p < pb;) {
                    if (p >= pe) {
                        for (int j = 0; j < un.nq; ++j) {
                            int64_t o[3] = {un.o[j][0], un.o[j][1], un.o[j][2]};
                            o[r - 1] = rr + d * p;
                            zero_query(x, b, h, o);
                        }
                        ++p;
                        continue;
                    }
                    const int64_t pmax = pb < pe ? pb : pe;
                    s.wl[0] = last_window(c, e[r - 1], rr + d * p);
                    const int64_t st0 = d == 1 ? s.wl[0].start : (s.wl[0].start - rr) / d;
                    /* tiles end at multiples of 16 local indices: interior tiles then
                     * start at aligned pack positions (see gpos) */
                    const int64_t pcut = (p / 16 + 1) * 16 < pmax ? (p / 16 + 1) * 16 : pmax;
                    int64_t nl = 1;
                    while (nl < LN && p + nl < pcut) {
                        const natten_window w = last_window(c, e[r - 1], rr + d * (p + nl));
                        const int64_t of = (d == 1 ? w.start : (w.start - rr) / d) - st0;
                        if (of < 0 || of + K > span) break;
                        s.wl[nl++] = w;
                    }
                    if (p + nl < pmax && s.pfq[0] < 0) /* the next tile's queries (last unit of a task) */
                        for (int j = 0; j < un.nq; ++j) {
                            int64_t pos[3];
                            for (int a = 0; a < r - 1; ++a) pos[a] = un.o[j][a] * g->os[a];
                            pos[r - 1] = rr + d * (p + nl);
                            prefetch_rows(c, x->q, row_off(x->q->stride, r, b, pos, h), d * x->q->stride[r],
                                          pmax - p - nl < LN ? pmax - p - nl : LN, g->D, NULL, NULL, 0);
                        }
                    { /* this tile's positions of the next unit's new rows and queries */
                        const int64_t x0 = rr + d * p;
                        s.npfa = 0;
                        for (int j = 0; x->pfout && j < un.nq; ++j) {
                            /* first: its own output rows, stored at the end of the tile */
                            int64_t pos[3];
                            for (int a = 0; a < r - 1; ++a) pos[a] = un.o[j][a];
                            pos[r - 1] = x0;
                            prefetch_rows(c, x->out, row_off(x->out->stride, r, b, pos, h), d * x->out->stride[r], nl,
                                          g->Dv, s.pfa, &s.npfa, BLK_PF_MAX);
                        }
                        for (int64_t i = 0; i < s.npf; ++i) {
                            prefetch_rows(c, x->k, s.pfk[i] + x0 * x->k->stride[r], d * x->k->stride[r], nl,
                                          g->D, s.pfa, &s.npfa, BLK_PF_MAX);
                            prefetch_rows(c, x->v, s.pfv[i] + x0 * x->v->stride[r], d * x->v->stride[r], nl,
                                          g->Dv, s.pfa, &s.npfa, BLK_PF_MAX);
                        }
                        for (int j = 0; j < 2; ++j)
                            if (s.pfq[j] >= 0)
                                prefetch_rows(c, x->q, s.pfq[j] + x0 * x->q->stride[r], d * x->q->stride[r], nl,
                                              g->D, s.pfa, &s.npfa, BLK_PF_MAX);
                    }
                    run_tile(x, &s, b, h, &un, rr, p, nl);
                    p += nl;
                }
            }
        }
    }
    if (x->stream) store_fence();
}

/* Zero the positions of a pack slot that no row is packed into (the front
 * pad, the pads after each dilation group) and the value rows' channels past
 * Dv: masked slots and idle lanes read them (see pack_row).  Zeroing the whole
 * slot instead was a serial ~170 KiB memset per call for 1-D L256 on two
 * threads (~550 KiB at L1024), 5-10% of those forwards. */
static void zero_pads(const blk_ctx *x, float *kp) {
    const geom *g = &x->c->g;
    const int64_t d = g->dil[g->rank - 1], XP = x->XP, vld = x->vld;
    float *vp = kp + g->D * XP;
    for (int64_t rr = -1; rr < d; ++rr) {
        const int64_t a = rr < 0 ? 0 : x->gpos[rr] + (x->goff[rr + 1] - x->goff[rr]);
        const int64_t b = rr + 1 < d ? x->gpos[rr + 1] : XP;
        if (b <= a) continue;
        for (int64_t ch = 0; ch < g->D; ++ch) memset(kp + ch * XP + a, 0, (size_t)(b - a) * sizeof(float));
        memset(vp + a * vld, 0, (size_t)((b - a) * vld) * sizeof(float));
    }
    if (vld > g->Dv)
        for (int64_t u = 0; u < XP; ++u) memset(vp + u * vld + g->Dv, 0, (size_t)(vld - g->Dv) * sizeof(float));
}

/* The blocked kernel for the active ISA, or NULL. */
static const blk_kernel *blk_kernel_of(const natten_cpu_kernels *kern) {
    switch (kern->isa) {
#if defined(NATTEN_HAVE_X86)
    case NATTEN_CPU_ISA_AVX512: return &natten_blk_avx512;
    case NATTEN_CPU_ISA_AVX2: return &natten_blk_avx2;
#endif
    case NATTEN_CPU_ISA_SCALAR: return &natten_blk_scalar;
    default: return NULL;
    }
}

/* NATTEN_CPU_FWD_BLOCK=0 forces the generic path (tests compare both). */
static int block_enabled(void) {
    const char *e = getenv("NATTEN_CPU_FWD_BLOCK");
    return e == NULL || e[0] != '0';
}

natten_status fwd_block_run(common *c, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
                            natten_tensor *out, natten_tensor *lse, int nt) {
    const geom *g = &c->g;
    const int r = g->rank;
    const blk_kernel *bk = blk_kernel_of(c->kern);
    if (!bk || !block_enabled() || g->NE > 0 || g->os[r - 1] != 1 || g->K[r - 1] > bk->span - bk->lanes + 1)
        return NATTEN_STATUS_UNSUPPORTED;
    blk_ctx x;
    memset(&x, 0, sizeof x);
    x.c = c;
    x.bk = bk;
    x.q = q;
    x.k = k;
    x.v = v;
    x.out = out;
    x.lse = lse;
    const int64_t L = g->L[r - 1], d = g->dil[r - 1];
    if (!(x.goff = malloc((size_t)(2 * d + 1) * sizeof(int64_t)))) return NATTEN_STATUS_UNSUPPORTED;
    x.gpos = x.goff + d + 1;
    x.goff[0] = 0;
    for (int64_t rr = 0; rr < d; ++rr) x.goff[rr + 1] = x.goff[rr] + (rr < L ? (L - rr + d - 1) / d : 0);
    /* Pack positions: a front pad so that an interior tile (16 lanes from a
     * multiple of 16, window shift -K/2, or -(K-1) causal) starts on a
     * 64-byte boundary: its two key vectors are then aligned loads.  The pad
     * (>= 16 >= K-1) also holds causal prefixes' masked positions, and so do
     * gaps of K-1 after each group when causal with dilation (else a later group's masked
     * slots read the end of the group before it, which a segment may not
     * have packed: zero_pads zeroes pads only).  Groups are padded to
     * multiples of 16 unless that costs over half the extent. */
    const int64_t Kl = g->K[r - 1], sh = g->causal[r - 1] ? Kl - 1 : Kl / 2;
    const int64_t FP = 16 + sh % 16, gap = g->causal[r - 1] && d > 1 ? Kl - 1 : 0;
    int64_t padded = 0;
    for (int64_t rr = 0; rr < d; ++rr) padded += (x.goff[rr + 1] - x.goff[rr] + gap + 15) / 16 * 16;
    const int pad_groups = padded <= L + L / 2;
    int64_t pos = FP;
    for (int64_t rr = 0; rr < d; ++rr) {
        x.gpos[rr] = pos;
        const int64_t n = x.goff[rr + 1] - x.goff[rr] + gap;
        pos += pad_groups ? (n + 15) / 16 * 16 : n;
    }
    x.XP = (pos + bk->span + 15) / 16 * 16;
    /* L1 sets (64 B lines, 4 KiB per way): an odd number of lines per channel
     * row spreads a tile's 2 lines x D channels over all sets (a 512-byte
     * pitch put them on 16 sets); rows of different slots are 9 lines apart
     * mod 4 KiB, so a tile's value windows of the leading rows do not pile
     * onto the same sets either. */
    if ((x.XP / 16) % 2 == 0) x.XP += 16;
    x.vld = (g->Dv + 15) / 16 * 16;
    x.slot_floats = (g->D * x.XP + x.XP * x.vld + 1023) / 1024 * 1024 + 9 * 16;
    /* pairs of lines (unit_lines): each key row's slot vectors feed both
     * lines' queries (QK was at ~80% of the shuffle port's limit alone).
     * Rank 2 only (in 3-D a unit's rows would not be one run of slots), no
     * output stride on axis 0 (windows of y and y + dil0 then span one
     * window plus dil0 positions: S0 grows by dil0), no GNA stride on axis 0
     * (a window may then move by gs0 * dil0: line B's rows would evict A's).
     * NATTEN_CPU_FWD_PAIR=0 turns it off (tests compare). */
    {
        const char *env = getenv("NATTEN_CPU_FWD_PAIR");
        x.pair = bk->pair && r == 2 && g->os[0] == 1 && g->gs[0] == 1 && !(env && env[0] == '0');
    }
    x.S0 = r >= 2 ? (g->K[0] - 1) * g->dil[0] + 1 + (x.pair ? g->dil[0] : 0) : 1;
    /* 3-D: a slot per row of a whole plane along axis 1, so moving to the next
     * plane re-packs nothing that the previous planes' lines already packed
     * (with a window's worth of slots each row was packed K0 times); the
     * window's worth where that would not fit */
    x.S1 = r == 3 ? (g->K[1] - 1) * g->dil[1] + 1 : 1;
    x.NS = x.S0 * x.S1;
    if (r == 3) {
        const int64_t row_bytes = (g->D * x.XP + x.XP * x.vld) * (int64_t)sizeof(float);
        if (x.S0 * g->L[1] * row_bytes <= (int64_t)NATTEN_BLK_MAX_BYTES / 4) x.S1 = g->L[1];
        x.NS = x.S0 * x.S1;
    }
    x.nR = r == 1 ? 1 : r == 2 ? g->L[0] : g->L[0] * g->L[1];
    x.segq = r == 1 ? BLK_SEGQ_1D : BLK_SEGQ;
    { /* NATTEN_CPU_FWD_SEGQ: segment length (tests: several segments on small problems) */
        const char *env = getenv("NATTEN_CPU_FWD_SEGQ");
        if (env && atoll(env) > 0) x.segq = atoll(env);
    }
    x.nseg = (L + x.segq - 1) / x.segq;
    /* as few chunks of lines as balance allows: a chunk re-packs the rows its
     * first lines' windows reach back to (16-line chunks with K=7 read every
     * key and value row 1.4 times from memory).  Tiles do not depend on the
     * chunking, so neither do the results. */
    const int64_t want = BLK_TASKS_PER_THREAD * (int64_t)nt, have = g->B * g->H * x.nseg;
    x.nchunk = have >= want ? 1 : (want + have - 1) / have;
    if (x.nchunk > g->lines) x.nchunk = g->lines;
    x.clines = (g->lines + x.nchunk - 1) / x.nchunk;
    x.nchunk = (g->lines + x.clines - 1) / x.clines;
    /* outputs larger than the last-level cache share (~32 MB) gain nothing from
     * being cached on store: skip the read-for-ownership (a third of the
     * vision case's memory traffic) when every row is 64-byte aligned */
    {
        int64_t shape[NATTEN_MAX_DIMS];
        const int nd = natten_shape_of(c->p, NATTEN_TENSOR_OUT, shape);
        int64_t total = 1;
        int aligned = ((uintptr_t)out->data & 63) == 0 && g->Dv % 16 == 0 && out->stride[nd - 1] == 1;
        for (int i = 0; i < nd; ++i) {
            total *= shape[i];
            if (i < nd - 1 && out->stride[i] % 16 != 0) aligned = 0;
        }
        const char *env = getenv("NATTEN_CPU_FWD_STREAM_BYTES"); /* tests set 0 */
        const int64_t min_bytes = env ? atoll(env) : (int64_t)32 << 20;
        x.stream = aligned && c->p->dtype == NATTEN_DTYPE_F32 && total * 4 > min_bytes;
        /* else each tile reads its output lines in early (prefetcht0: exclusive,
         * no other cache holds them), so its stores do not wait on a
         * read-for-ownership from DRAM at the end of the tile */
        x.pfout = !x.stream && total * (int64_t)natten_dtype_size(c->p->dtype) > min_bytes;
    }
    x.per_thread = blk_layout(&x, NULL, NULL);
    if (x.per_thread > NATTEN_BLK_MAX_BYTES) {
        free(x.goff);
        return NATTEN_STATUS_UNSUPPORTED;
    }
    natten_status st = NATTEN_STATUS_UNSUPPORTED;
    char *mem = natten_cpu_ws_get(x.per_thread * (size_t)nt + 64);
    x.scratch = mem ? (char *)(((uintptr_t)mem + 63) & ~(uintptr_t)63) : NULL; /* aligned vector loads */
    if (mem && build_wlast(c) && build_rpb_all(c)) {
        for (int t = 0; t < nt; ++t) {
            blk_scratch s;
            blk_layout(&x, x.scratch + (size_t)t * x.per_thread, &s);
            for (int64_t i = 0; i < x.NS; ++i) {
                s.tags[i] = -1;
                zero_pads(&x, s.pack + (size_t)i * (size_t)x.slot_floats);
            }
        }
        natten_parallel_for(nt, g->B * g->H * x.nchunk * x.nseg, 1, blk_task, &x);
        st = NATTEN_STATUS_SUCCESS;
    }
    natten_cpu_ws_put(mem);
    free(x.goff);
    return st;
}
