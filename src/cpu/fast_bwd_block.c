/*
 * fast_bwd_block.c -- the blocked fused backward: the blocked forward's
 * tiles (16 consecutive queries of the last axis on vector lanes) for the
 * query side, and 16 consecutive keys on lanes for the key side, both over
 * lane-major packs, with P and dS kept planar in between.
 *
 * Why: the generic backward spends its time in per-query pointer lists,
 * horizontal reductions and, in the key pass, gathers of P and dS from
 * [query][slot] scratch (82% of that pass, perf on 3-D 32^3).  Here
 *   1. q, dO, K and V are packed once per call lane-major per (batch, head,
 *      leading row): [channel][position] (f16/bf16 and any strides converted
 *      here), with delta = dO.O per query beside them;
 *   2. query tiles (as the forward: lane l's slot k of leading row i is key
 *      position off[l] + k, borders / causal prefixes / GNA groups through
 *      off and slot masks) compute S, P, dP, dS and dq, and store P and dS
 *      planar: P[query row][lead slot][last slot][x];
 *   3. key tiles take, per (query head of the group, query row whose window
 *      holds the key row, lead slot) and per last-axis term (slot k, query
 *      shift c, lanes where key x has query x + c at slot k -- the union of
 *      the 16 keys' inverse neighbourhoods, from natten_window_of via the
 *      inverse tables), one P and one dS vector at x0 + c and the q / dO
 *      rows at x0 + c: contiguous loads, no gathers.
 * Declined (generic path): extra KV, rpb, varlen, output strides, dilation
 * on the last axis, a last kernel size over 17, the split ops, NEON/AVX2
 * (no tile), NATTEN_CPU_BWD_BLOCK=0.
 * Each dq row is written by one query tile, each dk/dv row by one key tile,
 * every sum in an order fixed by the problem: identical bits for any thread
 * count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/bwd_block.h"
#include "cpu/fast_internal.h"

#define BB_SEG 64     /* last-axis positions per task (a multiple of 16) */
#define BB_SLACK 64   /* zeroed floats around the row caches: causal starts read up to 16 before a row */
#define BB_PF_MAX 512 /* prefetch addresses handed to one query tile */
#define NATTEN_BB_MAX_BYTES ((size_t)64 << 20) /* per-thread scratch */

/* A per-thread direct-mapped cache of packed rows: leading row R goes to
 * slot (R0 mod S0) * S1 + R1 mod S1 (R0, R1: its leading coordinates), so
 * the rows one tile row needs never collide and, with S1 = the whole axis 1
 * (3-D), moving to the next plane re-packs nothing. */
typedef struct bb_cache {
    int64_t S0, S1, NS, pitch; /* pitch: floats per slot */
    int64_t NT;                /* slots in all: NS per kv head with bb_ctx.hin, else NS */
} bb_cache;

typedef struct bb_ctx {
    common *c;
    const bwd_blk_kernel *bk;
    const natten_tensor *q, *k, *v, *out, *lse, *dout;
    natten_tensor *dq, *dk, *dv;
    int64_t L, XP, CXP, nR, Kl, nlead, nseg; /* XP: P / dS plane pitch; CXP: cached rows' (a segment's range) */
    int64_t rq, rk, rv, rd, rp; /* row pitches (floats) of packed q, K, V, dO rows and of a P plane set */
    float *pw, *sw;             /* P and dS planes [B][H][nR][rp] */
    float *mem[2];
    bb_cache cq, ck;            /* query pass: K, V rows of a kv head; key pass: q, dO rows of a group */
    int64_t qchunk, qlines, kchunk, klines;
    /* last-axis key terms per block of 16 keys: [tstart[j], tstart[j+1]) */
    int64_t *tstart;
    int32_t *tk, *tc;
    uint32_t *tmask;
    uint8_t *tmore; /* the next term of the block has the same shift */
    int64_t *qrange, *krange; /* per segment: last-axis positions its query / key tiles read */
    int64_t maxterm, nleadinv;
    int stream; /* P / dS planes larger than the caches: non-temporal stores */
    int hin;    /* heads inner: a task runs every head of its rows (see bwd_block_run) */
    /* f32: the tiles prefetch the dq / dk / dv lines they store (a store to a
     * line out of cache waits for it): 3-D 32^3 H4 D32 bwd, 1 thread, 24 bytes
     * off, 117-119 -> 111-116 ms, 16^3 13.4 -> 13.1 ms; bf16 16^3 lost 1-2%
     * with it (half the bytes per row, rounded stores), so not there */
    int out_pf;
    size_t per_thread;
    char *scratch, *smem;
} bb_ctx;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Spatial position of leading row R (axes 0..r-2) and last-axis x. */
static void pos_of(const geom *g, int64_t R, int64_t x, int64_t pos[3]) {
    const int r = g->rank;
    pos[0] = pos[1] = pos[2] = 0;
    for (int a = r - 2; a >= 0; --a) {
        pos[a] = R % g->L[a];
        R /= g->L[a];
    }
    pos[r - 1] = x;
}

/* nb rows (offsets off + i*rs) of C channels of tensor t as f32 [nb][C]. */
static void rows_f32(const bb_ctx *x, const natten_tensor *t, int64_t off, int64_t rs, int64_t nb, int64_t C,
                     float *dst) {
    const common *c = x->c;
    for (int64_t i = 0; i < nb; ++i)
        load_row(c->kern, t->data, off + i * rs, t->stride[c->g.rank + 2], c->p->dtype, dst + i * C, C);
}

/* nb <= 16 f32 rows of C channels, rs apart, into dst[c*ld + i]: the tiles' own
 * transpose where the ISA has one. */
static void f32_lanes(const bb_ctx *x, const float *src, int64_t rs, float *dst, int64_t ld, int64_t nb, int64_t C) {
    if (x->bk->f32_lanes) x->bk->f32_lanes(src, rs, dst, ld, nb, C);
    else x->c->kern->transpose(src, rs, dst, ld, nb, C);
}

/* nb rows of C channels (row offsets off + i*rs) into dst[c*ld + i]; cvt: 16*C floats. */
static void lane_major(const bb_ctx *x, const natten_tensor *t, int64_t off, int64_t rs, int64_t nb, int64_t C,
                       float *cvt, float *dst, int64_t ld) {
    const common *c = x->c;
    if (c->p->dtype == NATTEN_DTYPE_F32 && t->stride[c->g.rank + 2] == 1) {
        f32_lanes(x, (const float *)t->data + off, rs, dst, ld, nb, C);
        return;
    }
    if (c->p->dtype == NATTEN_DTYPE_BF16 && t->stride[c->g.rank + 2] == 1) {
        x->bk->bf16_lanes((const uint16_t *)t->data + off, rs, dst, ld, nb, C);
        return;
    }
    rows_f32(x, t, off, rs, nb, C, cvt);
    f32_lanes(x, cvt, C, dst, ld, nb, C);
}

/* Pack positions [xr[0], xr[1]) of row (b, head h, leading row R) of t:
 * dst[c*CXP + x - xr[0]], then zeros up to the row pitch (positions past L and the
 * gap after the row are read by masked slots and idle lanes, and 0 * x must
 * stay 0; other positions hold finite stale rows). */
static void pack_row(const bb_ctx *x, const natten_tensor *t, int64_t b, int64_t h, int64_t R, int64_t C,
                     int64_t pitch, const int64_t xr[2], float *cvt, float *dst) {
    const common *c = x->c;
    const int r = c->g.rank;
    int64_t pos[3];
    pos_of(&c->g, R, 0, pos);
    const int64_t off = row_off(t->stride, r, b, pos, h), rs = t->stride[r];
    for (int64_t x0 = xr[0]; x0 < xr[1]; x0 += 16) {
        const int64_t nb = xr[1] - x0 < 16 ? xr[1] - x0 : 16;
        if (x0 + 16 < xr[1]) /* the caller's rows are strided (H*C apart): fetch the next block early */
            prefetch_rows(c, t, off + (x0 + 16) * rs, rs, xr[1] - x0 - 16 < 16 ? xr[1] - x0 - 16 : 16, C, NULL, NULL, 0);
        lane_major(x, t, off + x0 * rs, rs, nb, C, cvt, dst + x0 - xr[0], x->CXP);
    }
    for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t u = xr[1] - xr[0]; u < x->CXP; ++u) dst[ch * x->CXP + u] = 0.f;
    memset(dst + C * x->CXP, 0, (size_t)(pitch - C * x->CXP) * sizeof(float));
}

/* Slot of leading row R of kv head hk. */
static int64_t cache_slot(const bb_ctx *x, const bb_cache *cc, int64_t R, int64_t hk) {
    const geom *g = &x->c->g;
    const int64_t base = x->hin ? hk * cc->NS : 0;
    if (g->rank == 2) return base + R % cc->S0;
    if (g->rank == 3) return base + (R / g->L[1] % cc->S0) * cc->S1 + (R % g->L[1]) % cc->S1;
    return base;
}

/* Per-thread scratch of the tiles. */
typedef struct bb_scratch {
    int64_t *tags;
    float *cache;
    const float **kr, **vr;
    float **pp, **sp;
    int32_t *off;
    uint32_t *vmask;
    float *lse, *delta, *sbuf, *tq, *tdo, *tk, *tv, *cvt, *cvo;
    int64_t *poff;
    const float **qr, **dr;
    uint32_t *mask;
    uint8_t *more;
    const char **pf;
} bb_scratch;

/* Bytes [*o, *o + bytes) of the scratch at base (NULL: sizing only). */
static void *carve(char *base, size_t *o, size_t bytes) {
    void *p = base ? base + *o : NULL;
    *o = align64(*o + bytes);
    return p;
}

static size_t bb_layout(const bb_ctx *x, char *base, bb_scratch *out) {
    bb_scratch s;
    const geom *g = &x->c->g;
    const int64_t nj = x->nlead * x->Kl, Cm = g->D > g->Dv ? g->D : g->Dv;
    const int64_t nterm = g->G * x->nleadinv * x->maxterm;
    const int64_t NS = x->cq.NT > x->ck.NT ? x->cq.NT : x->ck.NT;
    const int64_t cfl = x->cq.NT * x->cq.pitch > x->ck.NT * x->ck.pitch ? x->cq.NT * x->cq.pitch
                                                                         : x->ck.NT * x->ck.pitch;
    size_t o = 0;
    s.tags = carve(base, &o, (size_t)(NS) * sizeof(*s.tags));
    /* slack: causal starts read up to 16 before a row */
    s.cache = carve(base, &o, (size_t)(cfl + 2 * BB_SLACK) * sizeof(*s.cache));
    s.kr = carve(base, &o, (size_t)(x->nlead) * sizeof(*s.kr));
    s.vr = carve(base, &o, (size_t)(x->nlead) * sizeof(*s.vr));
    s.pp = carve(base, &o, (size_t)(nj) * sizeof(*s.pp));
    s.sp = carve(base, &o, (size_t)(nj) * sizeof(*s.sp));
    s.off = carve(base, &o, (size_t)(16) * sizeof(*s.off));
    s.vmask = carve(base, &o, (size_t)(x->Kl) * sizeof(*s.vmask));
    s.lse = carve(base, &o, (size_t)(16) * sizeof(*s.lse));
    s.delta = carve(base, &o, (size_t)(16) * sizeof(*s.delta));
    s.sbuf = carve(base, &o, (size_t)(2 * nj * 16) * sizeof(*s.sbuf));
    s.tq = carve(base, &o, (size_t)(g->D * 16) * sizeof(*s.tq));
    s.tdo = carve(base, &o, (size_t)(g->Dv * 16) * sizeof(*s.tdo));
    s.tk = carve(base, &o, (size_t)(g->D * 16) * sizeof(*s.tk));
    s.tv = carve(base, &o, (size_t)(g->Dv * 16) * sizeof(*s.tv));
    s.cvt = carve(base, &o, (size_t)(16 * Cm) * sizeof(*s.cvt));
    s.cvo = carve(base, &o, (size_t)(16 * Cm) * sizeof(*s.cvo));
    s.poff = carve(base, &o, (size_t)(nterm) * sizeof(*s.poff));
    s.qr = carve(base, &o, (size_t)(nterm) * sizeof(*s.qr));
    s.dr = carve(base, &o, (size_t)(nterm) * sizeof(*s.dr));
    s.mask = carve(base, &o, (size_t)(nterm) * sizeof(*s.mask));
    s.more = carve(base, &o, (size_t)(nterm) * sizeof(*s.more));
    s.pf = carve(base, &o, (size_t)(BB_PF_MAX) * sizeof(*s.pf));
    if (base) s.cache += BB_SLACK;
    if (out) *out = s;
    return o;
}

/* Store a [C][16] tile result as nl rows of t from position (b, pos, h) along
 * the last axis; cvt: 16*C floats. */
static void tile_store(const bb_ctx *x, const float *tt, natten_tensor *t, int64_t b, const int64_t pos[3],
                       int64_t h, int64_t C, int64_t nl, float *cvt) {
    const common *c = x->c;
    const int r = c->g.rank;
    const int64_t off = row_off(t->stride, r, b, pos, h), ls = t->stride[r], cs = t->stride[r + 2];
    const natten_dtype dt = c->p->dtype;
    if (dt == NATTEN_DTYPE_F32 && cs == 1) {
        if (x->bk->f32_rows) x->bk->f32_rows(tt, (float *)t->data + off, ls, C, nl);
        else c->kern->transpose(tt, 16, (float *)t->data + off, ls, C, nl);
        return;
    }
    if (dt == NATTEN_DTYPE_BF16 && cs == 1) {
        x->bk->bf16_rows(tt, (uint16_t *)t->data + off, ls, C, nl);
        return;
    }
    c->kern->transpose(tt, 16, cvt, C, C, nl); /* rows, then rounded like the reference */
    for (int64_t l = 0; l < nl; ++l) store_row(t->data, off + l * ls, cs, dt, cvt + l * C, C);
}

/* Non-temporal stores are weakly ordered: fence them before the pool's
 * release of the task makes them visible to the key pass. */
static void store_fence(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_sfence();
#endif
}

/* The tile's queries (last-axis p.. of leading row pos) lane-major into
 * s->tq, s->tdo (idle lanes 0), delta = dO.O and lse per lane. */
static void query_lanes(const bb_ctx *x, bb_scratch *s, int64_t b, int64_t h, int64_t pos[3], int64_t p,
                        int64_t nl) {
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    pos[r - 1] = p;
    if (nl < 16) {
        memset(s->tq, 0, (size_t)(g->D * 16) * sizeof(float));
        memset(s->tdo, 0, (size_t)(g->Dv * 16) * sizeof(float));
    }
    lane_major(x, x->q, row_off(x->q->stride, r, b, pos, h), x->q->stride[r], nl, g->D, s->cvt, s->tq, 16);
    const int64_t doff = row_off(x->dout->stride, r, b, pos, h), ooff = row_off(x->out->stride, r, b, pos, h);
    const float *drows = (const float *)x->dout->data + doff, *orows = (const float *)x->out->data + ooff;
    int64_t dls = x->dout->stride[r], ols = x->out->stride[r];
    if (c->p->dtype != NATTEN_DTYPE_F32 || x->dout->stride[r + 2] != 1 || x->out->stride[r + 2] != 1) {
        rows_f32(x, x->dout, doff, dls, nl, g->Dv, s->cvt);
        rows_f32(x, x->out, ooff, ols, nl, g->Dv, s->cvo);
        drows = s->cvt;
        orows = s->cvo;
        dls = ols = g->Dv;
    }
    f32_lanes(x, drows, dls, s->tdo, 16, nl, g->Dv);
    const float *lse = (const float *)x->lse->data + row_off(x->lse->stride, r, b, pos, 0) + h * x->lse->stride[r + 1];
    for (int64_t l = 0; l < 16; ++l) {
        float d = 0.f;
        if (l < nl) {
            const float *orow = orows + l * ols;
            c->kern->dots(drows + l * dls, &orow, 1, g->Dv, &d);
        }
        s->delta[l] = d;
        s->lse[l] = l < nl ? lse[l * x->lse->stride[r]] : 0.f;
    }
    pos[r - 1] = 0;
}

/* One task of either pass: segment of BB_SEG positions (innermost), chunk of
 * `lines` leading rows, head (all nh heads in one task with bb_ctx.hin), batch. */
typedef struct bb_task {
    int64_t seg, b, h0, h1, R0, R1;
} bb_task;

static int64_t task_count(const bb_ctx *x, int64_t nchunk, int64_t nh) {
    return x->c->g.B * (x->hin ? 1 : nh) * nchunk * x->nseg;
}

static bb_task task_of(const bb_ctx *x, int64_t task, int64_t nchunk, int64_t lines, int64_t nh) {
    const int64_t chunk = (task / x->nseg) % nchunk, hs = x->hin ? 1 : nh, ht = (task / (x->nseg * nchunk)) % hs;
    const int64_t R1 = (chunk + 1) * lines < x->nR ? (chunk + 1) * lines : x->nR;
    return (bb_task){task % x->nseg, task / (x->nseg * nchunk * hs), x->hin ? 0 : ht, x->hin ? nh : ht + 1,
                     chunk * lines, R1};
}

/* Query tasks (b, h, chunk of qlines leading rows, BB_SEG positions). */
static void query_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const bb_ctx *x = vctx;
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t K = x->Kl;
    bb_scratch s = {0};
    bb_layout(x, x->scratch + (size_t)tid * x->per_thread, &s);
    for (int64_t task = begin; task < end; ++task) {
        const bb_task t = task_of(x, task, x->qchunk, x->qlines, g->H);
        const int64_t seg = t.seg, b = t.b, h0 = t.h0, h1 = t.h1, R1 = t.R1;
        for (int64_t R = t.R0; R < R1; ++R) {
            int64_t pos[3];
            pos_of(g, R, 0, pos);
            /* leading rows of the window (valid slots) */
            natten_window w[2];
            int64_t kb[2] = {0, 0}, ke[2] = {1, 1};
            for (int a = 0; a < r - 1; ++a) {
                w[a] = natten_window_of(g->L[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], pos[a]);
                kb[a] = w[a].valid_begin;
                ke[a] = w[a].valid_end;
            }
            const int64_t K1 = r == 3 ? g->K[1] : 1;
            for (int64_t h = h0; h < h1; ++h) {
                const int64_t hk = h / g->G;
                float *prow = x->pw + ((b * g->H + h) * x->nR + R) * x->rp, *srow = x->sw + (prow - x->pw);
                int64_t nrow = 0;
                for (int64_t k0 = kb[0]; k0 < ke[0]; ++k0)
                    for (int64_t k1 = kb[1]; k1 < ke[1]; ++k1) {
                        int64_t Rk = 0;
                        if (r >= 2) Rk = w[0].start + k0 * w[0].step;
                        if (r == 3) Rk = Rk * g->L[1] + w[1].start + k1 * w[1].step;
                        const int64_t slot = cache_slot(x, &x->cq, Rk, hk);
                        const int64_t tag = ((b * g->Hkv + hk) * x->nR + Rk) * x->nseg + seg;
                        float *kp = s.cache + slot * x->cq.pitch;
                        if (s.tags[slot] != tag) {
                            pack_row(x, x->k, b, hk, Rk, g->D, x->rk, x->qrange + 2 * seg, s.cvt, kp);
                            pack_row(x, x->v, b, hk, Rk, g->Dv, x->rv, x->qrange + 2 * seg, s.cvt, kp + x->rk);
                            s.tags[slot] = tag;
                        }
                        s.kr[nrow] = kp;
                        s.vr[nrow] = kp + x->rk;
                        const int64_t li = k0 * K1 + k1; /* lead slot */
                        for (int64_t k = 0; k < K; ++k) {
                            s.pp[nrow * K + k] = prow + (li * K + k) * x->XP;
                            s.sp[nrow * K + k] = srow + (li * K + k) * x->XP;
                        }
                        ++nrow;
                    }
                const int64_t u1 = (seg + 1) * BB_SEG < x->L ? (seg + 1) * BB_SEG : x->L;
                for (int64_t p = seg * BB_SEG; p < u1;) {
                    const natten_window w0 = c->wlast[p];
                    const int64_t pcut = (p / 16 + 1) * 16 < u1 ? (p / 16 + 1) * 16 : u1;
                    natten_window wl[16];
                    wl[0] = w0;
                    s.off[0] = 0;
                    int64_t nl = 1;
                    while (nl < 16 && p + nl < pcut) {
                        const natten_window wn = c->wlast[p + nl];
                        const int64_t of = wn.start - w0.start;
                        if (of < 0 || of + K > 32) break;
                        s.off[nl] = (int32_t)of;
                        wl[nl++] = wn;
                    }
                    int uniform = 1;
                    for (int64_t l = 0; l < 16; ++l) {
                        if (l >= nl) s.off[l] = uniform && l + K <= 32 ? (int32_t)l : s.off[nl - 1];
                        uniform &= s.off[l] == l;
                    }
                    for (int64_t k = 0; k < K; ++k) {
                        uint32_t m = 0;
                        for (int64_t l = 0; l < nl; ++l)
                            if (k >= wl[l].valid_begin && k < wl[l].valid_end) m |= 1u << l;
                        s.vmask[k] = m;
                    }
                    query_lanes(x, &s, b, h, pos, p, nl);
                    int64_t npf = 0; /* the next tile's query rows (this row, or the next row's first) */
                    {
                        int64_t pn[3];
                        int64_t Rn = R, xn = p + nl, hn = h; /* heads inner: the next head of this row */
                        if (xn >= u1) {
                            xn = seg * BB_SEG;
                            if (++hn == h1) {
                                hn = h0;
                                Rn = R + 1;
                            }
                        }
                        if (Rn < R1) {
                            pos_of(g, Rn, xn, pn);
                            const int64_t nn = u1 - xn < 16 ? u1 - xn : 16;
                            const natten_tensor *ts[3] = {x->q, x->dout, x->out};
                            for (int i = 0; i < 3; ++i)
                                prefetch_rows(c, ts[i], row_off(ts[i]->stride, r, b, pn, hn), ts[i]->stride[r], nn,
                                              i ? g->Dv : g->D, s.pf, &npf, BB_PF_MAX);
                        }
                    }
                    /* this tile's dq lines: in cache when its store comes (see out_prefetch) */
                    pos[r - 1] = p;
                    if (x->out_pf)
                        prefetch_rows(c, x->dq, row_off(x->dq->stride, r, b, pos, h), x->dq->stride[r], nl, g->D, s.pf,
                                      &npf, BB_PF_MAX);
                    pos[r - 1] = 0;
                    const int64_t sh = w0.start - x->qrange[2 * seg]; /* cached rows start at the segment's range */
                    for (int64_t i = 0; i < nrow; ++i) {
                        s.kr[i] += sh;
                        s.vr[i] += sh;
                        for (int64_t k = 0; k < K; ++k) {
                            s.pp[i * K + k] += p;
                            s.sp[i * K + k] += p;
                        }
                    }
                    bwdq_args a = {s.tq, s.tdo, s.kr, s.vr, x->CXP, nrow, K, g->D, g->Dv, nl, s.off, uniform,
                                   s.vmask, g->scale, s.lse, s.delta, s.pp, s.sp, s.sbuf, s.tk,
                                   x->stream && nl == 16 && p % 16 == 0, s.pf, npf};
                    x->bk->query(&a);
                    for (int64_t i = 0; i < nrow; ++i) {
                        s.kr[i] -= sh;
                        s.vr[i] -= sh;
                        for (int64_t k = 0; k < K; ++k) {
                            s.pp[i * K + k] -= p;
                            s.sp[i * K + k] -= p;
                        }
                    }
                    pos[r - 1] = p;
                    tile_store(x, s.tk, x->dq, b, pos, h, g->D, nl, s.cvt);
                    pos[r - 1] = 0;
                    p += nl;
                }
            }
        }
    }
    if (x->stream) store_fence();
}

/* Key tasks (b, kv head, chunk of klines leading rows, BB_SEG positions). */
static void key_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const bb_ctx *x = vctx;
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const int64_t K = x->Kl, KK = g->KK, Ol = g->O[r - 1];
    bb_scratch s = {0};
    bb_layout(x, x->scratch + (size_t)tid * x->per_thread, &s);
    const int64_t *st0 = inv_start_of(c, 0, 0), *en0 = inv_ent_of(c, 0, 0);
    const int64_t *st1 = inv_start_of(c, 0, 1), *en1 = inv_ent_of(c, 0, 1);
    const int64_t hq = x->rq + x->rd; /* one head's q and dO rows in a cache slot */
    for (int64_t task = begin; task < end; ++task) {
        const bb_task t = task_of(x, task, x->kchunk, x->klines, g->Hkv);
        const int64_t seg = t.seg, b = t.b, hk0 = t.h0, hk1 = t.h1;
        for (int64_t R = t.R0; R < t.R1; ++R) {
            int64_t pos[3];
            pos_of(g, R, 0, pos);
            const int64_t xa = r > 1 ? pos[0] : 0, xb = r > 2 ? pos[1] : 0;
            const int64_t n0 = r > 1 ? st0[xa + 1] - st0[xa] : 1, n1 = r > 2 ? st1[xb + 1] - st1[xb] : 1;
            /* the query rows whose windows hold this key row: row, lead slot */
            int64_t nq = 0, rows_q[64], lis[64];
            for (int64_t i0 = 0; i0 < n0; ++i0)
                for (int64_t i1 = 0; i1 < n1; ++i1, ++nq) {
                    /* inverse entries carry o*ostride*KK + slot*kstride per leading axis */
                    int64_t aoff = 0;
                    if (r > 1) aoff += en0[3 * (st0[xa] + i0)];
                    if (r > 2) aoff += en1[3 * (st1[xb] + i1)];
                    rows_q[nq] = aoff / (Ol * KK);
                    lis[nq] = (aoff % (Ol * KK)) / K;
                }
            for (int64_t hk = hk0; hk < hk1; ++hk) {
                const float *slots[64]; /* their cached q / dO rows */
                for (int64_t i = 0; i < nq; ++i) {
                    const int64_t Rq = rows_q[i];
                    const int64_t slot = cache_slot(x, &x->ck, Rq, hk);
                    const int64_t tag = ((b * g->Hkv + hk) * x->nR + Rq) * x->nseg + seg;
                    float *qp = s.cache + slot * x->ck.pitch;
                    if (s.tags[slot] != tag) {
                        const int64_t *xr = x->krange + 2 * seg;
                        for (int64_t gg = 0; gg < g->G; ++gg) {
                            pack_row(x, x->q, b, hk * g->G + gg, Rq, g->D, x->rq, xr, s.cvt, qp + gg * hq);
                            pack_row(x, x->dout, b, hk * g->G + gg, Rq, g->Dv, x->rd, xr, s.cvt, qp + gg * hq + x->rq);
                        }
                        s.tags[slot] = tag;
                    }
                    slots[i] = qp;
                }
                const int64_t u1 = (seg + 1) * BB_SEG < x->L ? (seg + 1) * BB_SEG : x->L;
                for (int64_t x0 = seg * BB_SEG; x0 < u1; x0 += 16) {
                    const int64_t nl = u1 - x0 < 16 ? u1 - x0 : 16, blk = x0 / 16;
                    int64_t n = 0;
                    for (int64_t gg = 0; gg < g->G; ++gg) {
                        const int64_t h = hk * g->G + gg;
                        for (int64_t i = 0; i < nq; ++i) {
                            const int64_t pb = ((b * g->H + h) * x->nR + rows_q[i]) * x->rp + lis[i] * K * x->XP + x0;
                            const float *qb = slots[i] + gg * hq + x0 - x->krange[2 * seg], *db = qb + x->rq;
                            for (int64_t t = x->tstart[blk]; t < x->tstart[blk + 1]; ++t, ++n) {
                                s.poff[n] = pb + x->tk[t] * x->XP + x->tc[t];
                                s.qr[n] = qb + x->tc[t];
                                s.dr[n] = db + x->tc[t];
                                s.mask[n] = x->tmask[t];
                                s.more[n] = x->tmore[t];
                            }
                        }
                    }
                    /* next tile: 16 positions on, or (x0 back to the segment) the next kv
                     * head's planes, or the next row, whose query rows are one further at
                     * the same slots in the interior (a prefetch hint) */
                    const int64_t hplanes = g->G * x->nR * x->rp, x00 = seg * BB_SEG;
                    const int64_t pf_next = x0 + 16 < u1 ? 16
                                            : hk + 1 < hk1 ? hplanes - (x0 - x00)
                                                           : x->rp - (hk1 - 1 - hk0) * hplanes - (x0 - x00);
                    /* the dk / dv lines this tile stores, fetched over its arithmetic */
                    int64_t npf = 0;
                    pos[r - 1] = x0;
                    if (x->out_pf) {
                        prefetch_rows(c, x->dk, row_off(x->dk->stride, r, b, pos, hk), x->dk->stride[r], nl, g->D, s.pf,
                                      &npf, BB_PF_MAX);
                        prefetch_rows(c, x->dv, row_off(x->dv->stride, r, b, pos, hk), x->dv->stride[r], nl, g->Dv, s.pf,
                                      &npf, BB_PF_MAX);
                    }
                    bwdk_args a = {n, x->CXP, g->D, g->Dv, x->pw, x->sw, s.poff, s.qr, s.dr, s.mask, s.more,
                                   g->scale, s.tk, s.tv, pf_next, s.pf, npf};
                    x->bk->key(&a);
                    tile_store(x, s.tk, x->dk, b, pos, hk, g->D, nl, s.cvt);
                    tile_store(x, s.tv, x->dv, b, pos, hk, g->Dv, nl, s.cvt);
                    pos[r - 1] = 0;
                }
            }
        }
    }
}

/* Last-axis terms per block of 16 keys: the union over its keys of (slot k,
 * query shift c = o - x), with the lanes that have each.  0 on OOM. */
static int build_terms(bb_ctx *x) {
    const common *c = x->c;
    const geom *g = &c->g;
    const int a = g->rank - 1;
    const int64_t *st = inv_start_of(c, 0, a), *en = inv_ent_of(c, 0, a);
    const int64_t nb = (x->L + 15) / 16, cap = st[x->L] + 1;
    x->tstart = malloc((size_t)(nb + 1) * sizeof(int64_t));
    x->tk = malloc((size_t)cap * sizeof(int32_t));
    x->tc = malloc((size_t)cap * sizeof(int32_t));
    x->tmask = malloc((size_t)cap * sizeof(uint32_t));
    x->tmore = malloc((size_t)cap);
    if (!x->tstart || !x->tk || !x->tc || !x->tmask || !x->tmore) return 0;
    int64_t n = 0;
    x->maxterm = 1;
    for (int64_t j = 0; j < nb; ++j) {
        x->tstart[j] = n;
        for (int64_t xl = j * 16; xl < x->L && xl < j * 16 + 16; ++xl)
            for (int64_t i = st[xl]; i < st[xl + 1]; ++i) {
                const int64_t o = en[3 * i] / g->KKE, k = en[3 * i] % g->KKE; /* last axis: o*KKE + slot */
                const int32_t cc = (int32_t)(o - xl);
                int64_t t = x->tstart[j];
                while (t < n && !(x->tk[t] == k && x->tc[t] == cc)) ++t;
                if (t == n) {
                    x->tk[n] = (int32_t)k;
                    x->tc[n] = cc;
                    x->tmask[n++] = 0;
                }
                x->tmask[t] |= 1u << (xl - j * 16);
            }
        /* shifts ascending, then slots: terms of one shift (a border key meets
         * its queries at other slots than its neighbours) share the row loads
         * in the tile (bwdk_args.more) */
        for (int64_t t = x->tstart[j] + 1; t < n; ++t)
            for (int64_t u = t; u > x->tstart[j] && (x->tc[u - 1] > x->tc[u] ||
                                                     (x->tc[u - 1] == x->tc[u] && x->tk[u - 1] > x->tk[u]));
                 --u) {
                const int32_t k0 = x->tk[u], c0 = x->tc[u];
                const uint32_t m0 = x->tmask[u];
                x->tk[u] = x->tk[u - 1];
                x->tc[u] = x->tc[u - 1];
                x->tmask[u] = x->tmask[u - 1];
                x->tk[u - 1] = k0;
                x->tc[u - 1] = c0;
                x->tmask[u - 1] = m0;
            }
        for (int64_t t = x->tstart[j]; t < n; ++t) x->tmore[t] = t + 1 < n && x->tc[t + 1] == x->tc[t];
        if (n - x->tstart[j] > x->maxterm) x->maxterm = n - x->tstart[j];
    }
    x->tstart[nb] = n;
    /* rows are packed per segment, only the positions its tiles read */
    x->qrange = malloc((size_t)(4 * x->nseg) * sizeof(int64_t));
    if (!x->qrange) return 0;
    x->krange = x->qrange + 2 * x->nseg;
    for (int64_t sg = 0; sg < x->nseg; ++sg) {
        const int64_t p0 = sg * BB_SEG, p1 = p0 + BB_SEG < x->L ? p0 + BB_SEG : x->L;
        int64_t lo = x->L, hi = 0;
        for (int64_t p = p0; p < p1; ++p) {
            const natten_window w = c->wlast[p];
            lo = w.start < lo ? w.start : lo;
            hi = w.start + x->Kl > hi ? w.start + x->Kl : hi;
        }
        x->qrange[2 * sg] = lo > 0 ? lo : 0;
        x->qrange[2 * sg + 1] = hi < x->L ? hi : x->L;
        lo = x->L;
        hi = 0;
        for (int64_t t = x->tstart[p0 / 16]; t < x->tstart[(p1 + 15) / 16]; ++t) {
            lo = p0 + x->tc[t] < lo ? p0 + x->tc[t] : lo;
            hi = p1 + x->tc[t] > hi ? p1 + x->tc[t] : hi;
        }
        x->krange[2 * sg] = lo > 0 ? lo : 0;
        x->krange[2 * sg + 1] = hi < x->L ? hi : x->L;
    }
    return 1;
}

/* The tiles of the active ISA (AVX-512, AVX2, or the portable ones for the
 * scalar level; NEON keeps the generic path), or NULL; NATTEN_CPU_BWD_BLOCK=0
 * forces the generic path (the tests run both). */
static const bwd_blk_kernel *bb_kernel_of(const natten_cpu_kernels *kern) {
    const char *e = getenv("NATTEN_CPU_BWD_BLOCK");
    if (e && e[0] == '0') return NULL;
#if defined(NATTEN_HAVE_X86)
    if (kern->isa == NATTEN_CPU_ISA_AVX512) return &natten_bwd_blk_avx512;
    if (kern->isa == NATTEN_CPU_ISA_AVX2) return &natten_bwd_blk_avx2;
#endif
    return kern->isa == NATTEN_CPU_ISA_SCALAR ? &natten_bwd_blk_scalar : NULL;
}

/* Largest spread of leading coordinates one row of a pass needs on axis a:
 * keys of a query's window (query pass), or queries whose windows hold a key
 * (key pass, from the inverse table). */
static int64_t axis_span(const common *c, int a, int keys) {
    const geom *g = &c->g;
    if (!keys) return (g->K[a] - 1) * g->dil[a] + 1;
    const int64_t *st = inv_start_of(c, 0, a), *en = inv_ent_of(c, 0, a);
    int64_t ostride = 1;
    for (int a2 = a + 1; a2 < 3; ++a2) ostride *= g->O[a2];
    int64_t span = 1;
    for (int64_t xk = 0; xk < g->L[a]; ++xk) {
        if (st[xk + 1] == st[xk]) continue;
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        for (int64_t i = st[xk]; i < st[xk + 1]; ++i) {
            const int64_t o = en[3 * i] / (ostride * g->KKE);
            lo = o < lo ? o : lo;
            hi = o > hi ? o : hi;
        }
        span = hi - lo + 1 > span ? hi - lo + 1 : span;
    }
    return span;
}

static void cache_geom(const bb_ctx *x, bb_cache *cc, int keys, int64_t pitch) {
    const common *c = x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    cc->pitch = pitch;
    cc->S0 = r >= 2 ? axis_span(c, 0, keys) : 1;
    cc->S1 = r == 3 ? axis_span(c, 1, keys) : 1;
    if (cc->S0 > (r >= 2 ? g->L[0] : 1)) cc->S0 = g->L[0];
    /* 3-D: a whole plane of axis 1 when it fits in ~1/4 of NATTEN_BB_MAX_BYTES */
    if (r == 3 && cc->S0 * g->L[1] * pitch * (int64_t)sizeof(float) <= (int64_t)NATTEN_BB_MAX_BYTES / 4)
        cc->S1 = g->L[1];
    if (r == 3 && cc->S1 > g->L[1]) cc->S1 = g->L[1];
    cc->NS = cc->S0 * cc->S1;
    cc->NT = x->hin ? cc->NS * g->Hkv : cc->NS;
}

/* Tasks per pass: as few row chunks as 8 tasks per thread allow (a chunk
 * re-packs the rows its first rows reach back to). */
static void chunks(const bb_ctx *x, int64_t heads, int nt, int64_t *nchunk, int64_t *lines) {
    const int64_t want = 8 * (int64_t)nt, have = x->c->g.B * heads * x->nseg;
    int64_t n = have >= want ? 1 : (want + have - 1) / have;
    if (n > x->nR) n = x->nR;
    *lines = (x->nR + n - 1) / n;
    *nchunk = (x->nR + *lines - 1) / *lines;
}

natten_status bwd_block_run(common *c, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
                            const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout,
                            natten_tensor *dq, natten_tensor *dk, natten_tensor *dv) {
    const geom *g = &c->g;
    const int r = g->rank;
    const bwd_blk_kernel *bk = bb_kernel_of(c->kern);
    int ok = bk != NULL && g->NE == 0 && !c->rpb && !g->varlen && g->dil[r - 1] == 1 &&
             g->K[r - 1] <= 17 && dq && dk && dv;
    for (int a = 0; a < r; ++a) ok &= g->os[a] == 1;
    if (!ok) return NATTEN_STATUS_UNSUPPORTED;
    bb_ctx x = {.c = c, .bk = bk, .q = q, .k = k, .v = v, .out = out, .lse = lse, .dout = dout,
                .dq = dq, .dk = dk, .dv = dv, .L = g->L[r - 1], .Kl = g->K[r - 1],
                .out_pf = c->p->dtype == NATTEN_DTYPE_F32};
    x.nlead = g->KK / x.Kl;
    x.nR = 1;
    for (int a = 0; a < r - 1; ++a) x.nR *= g->L[a];
    x.nseg = (x.L + BB_SEG - 1) / BB_SEG;
    x.XP = (x.L + 15) / 16 * 16;
    x.rp = x.nlead * x.Kl * x.XP + 16;
    const int nt = natten_parallel_threads();
    const int64_t planes = g->B * g->H * x.nR * x.rp;
    int okm = build_wlast(c) && inverse_setup(c);
    for (int i = 0; i < 2 && okm; ++i) {
        x.mem[i] = natten_cpu_ws_get((size_t)(planes + 2 * BB_SLACK) * sizeof(float) + 64);
        okm = x.mem[i] != NULL;
    }
    if (okm) okm = build_terms(&x);
    if (okm) {
        int64_t span = 16;
        for (int64_t sg = 0; sg < 2 * x.nseg; ++sg) {
            const int64_t n = x.qrange[2 * sg + 1] - x.qrange[2 * sg]; /* krange follows qrange */
            span = n > span ? n : span;
        }
        x.CXP = (span + 15) / 16 * 16;
        /* channel rows 1 KiB-multiples apart put a tile's 16-32 rows on 1-4 L1
         * sets (4 KiB per way): one line more (1-D L1024 before the
         * per-segment rows: 2.1 -> 1.8 ms) */
        if (x.CXP % 256 == 0) x.CXP += 16;
        /* cached rows one cache line past a multiple of 4 KiB apart: a tile's
         * leading rows would otherwise share L1 sets */
        x.rq = x.rk = g->D * x.CXP + 16;
        x.rv = x.rd = g->Dv * x.CXP + 16;
    }
    natten_status st = NATTEN_STATUS_UNSUPPORTED;
    if (okm) {
        float **dst[2] = {&x.pw, &x.sw};
        for (int i = 0; i < 2; ++i)
            *dst[i] = (float *)(((uintptr_t)x.mem[i] + 63) & ~(uintptr_t)63) + BB_SLACK;
        int64_t m0 = 1, m1 = 1;
        if (r > 1) m0 = c->inv_maxlen[0];
        if (r > 2) m1 = c->inv_maxlen[1];
        x.nleadinv = m0 * m1;
        /* Heads inner: a task runs every head of each of its rows in turn.  The
         * caller's rows of one position hold all heads side by side (H*C
         * floats); head-major tasks read (write) one head's C floats of it per
         * pass over the volume, and a row off a 64-byte boundary (MLX's buffers
         * start 24 bytes past one) touches a line of each neighbouring head
         * too, fetched again a whole pass later: 3-D 32^3 H4 D32 f32 backward
         * 133 -> 153 ms one thread with every tensor 24 bytes off (cpu_bench
         * BENCH_MISALIGN=24), 108 -> 110 ms with B4 H1.  The row caches then
         * hold every kv head (NT slots); head-major when they would pass half
         * the per-thread limit or 256 MiB over all threads (many cores). */
        const char *he = getenv("NATTEN_CPU_BWD_HEADS_INNER"); /* 0: head-major (the tests run both) */
        for (x.hin = !(he && he[0] == '0');; x.hin = 0) {
            cache_geom(&x, &x.cq, 0, x.rk + x.rv);
            cache_geom(&x, &x.ck, 1, g->G * (x.rq + x.rd));
            x.per_thread = align64(bb_layout(&x, NULL, NULL));
            if (!x.hin || g->Hkv == 1 ||
                (x.per_thread <= NATTEN_BB_MAX_BYTES / 2 && x.per_thread * (size_t)nt <= 4 * NATTEN_BB_MAX_BYTES))
                break;
        }
        chunks(&x, g->H, nt, &x.qchunk, &x.qlines);
        chunks(&x, g->Hkv, nt, &x.kchunk, &x.klines);
        const char *env = getenv("NATTEN_CPU_BWD_STREAM_BYTES"); /* tests set 0 */
        const int64_t min_bytes = env ? atoll(env) : (int64_t)8 << 20;
        x.stream = planes * 4 > min_bytes;
        x.per_thread = align64(bb_layout(&x, NULL, NULL));
        if (x.nleadinv <= 64 && x.per_thread <= NATTEN_BB_MAX_BYTES)
            x.smem = natten_cpu_ws_get(x.per_thread * (size_t)nt + 64);
    }
    if (x.smem) {
        x.scratch = (char *)(((uintptr_t)x.smem + 63) & ~(uintptr_t)63);
        for (int pass = 0; pass < 2; ++pass) {
            const bb_cache *cc = pass == 0 ? &x.cq : &x.ck;
            for (int t = 0; t < nt; ++t) { /* empty caches; finite contents (see pack_row) */
                bb_scratch s = {0};
                bb_layout(&x, x.scratch + (size_t)t * x.per_thread, &s);
                for (int64_t i = 0; i < cc->NT; ++i) s.tags[i] = -1;
                memset(s.cache - BB_SLACK, 0, (size_t)(cc->NT * cc->pitch + 2 * BB_SLACK) * sizeof(float));
            }
            if (pass == 0)
                natten_parallel_for(nt, task_count(&x, x.qchunk, g->H), 1, query_task, &x);
            else
                natten_parallel_for(nt, task_count(&x, x.kchunk, g->Hkv), 1, key_task, &x);
        }
        st = NATTEN_STATUS_SUCCESS;
    }
    free(x.tstart);
    free(x.tk);
    free(x.tc);
    free(x.tmask);
    free(x.tmore);
    free(x.qrange);
    for (int i = 0; i < 2; ++i) natten_cpu_ws_put(x.mem[i]);
    natten_cpu_ws_put(x.smem);
    return st;
}
