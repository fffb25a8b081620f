/*
 * fast_forward.c -- fused forward (natten_fast_na_forward): tasks over lines
 * of queries, every head of a query position together on the generic list
 * path, or 16-query lane-major tiles (opt-in).  Each output row and lse entry
 * is written by exactly one task, so results do not depend on the thread count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/fast_internal.h"

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
        int64_t h, o[3] = {0, 0, 0}, last0, last1;
        const int64_t b = seg_task(g, task, o, &last0, &last1);
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

/* Run one tile: lanes u0..u0+nl-1 (one group) with common shift `shift`. */
static void fwd_tile(const common *c, const tile_common *tc, qscratch *sc, int64_t b, int64_t h,
                     int64_t o[3], int64_t u0, int64_t nl, int64_t shift, const natten_window *w0,
                     int64_t x0) {
    const geom *g = &c->g;
    const int r = g->rank;
    const int out_direct = c->p->dtype == NATTEN_DTYPE_F32 && c->out_t->stride[r + 2] == 1;
    const int64_t K = g->K[r - 1], d = g->dil[r - 1];
    /* the tile's queries, transposed here (each is read by this tile only) */
    sc->lp.pos[r - 1] = x0;
    const float *q0 = c->q.data + row_off(c->q.st, r, b, sc->lp.pos, h);
    tile_lanes_in(c->kern, q0, d * c->q.st[r], sc->tq, nl, g->D);
    const int64_t n = tile_list(c, tc, sc, b, h, u0, shift, w0, x0);
    c->kern->tile_fwd(sc->tq, tc->k.XP, sc->tpk, sc->tpv, c->rpb ? sc->tbias : NULL, n, K, g->D, g->Dv,
                      g->scale, sc->tsbuf, sc->tout, sc->tlse);
    o[r - 1] = x0;
    const int64_t ooff = row_off(c->out_t->stride, r, b, o, h);
    /* out_stride is 1 on this axis: o == x */
    tile_rows_out(c, sc, c->out_t, ooff, d * c->out_t->stride[r], g->Dv, nl, out_direct);
    if (c->lse_t) {
        const int64_t loff = row_off(c->lse_t->stride, r, b, o, 0) + h * c->lse_t->stride[r + 1];
        for (int64_t l = 0; l < nl; ++l) ((float *)c->lse_t->data)[loff + l * d * c->lse_t->stride[r]] = sc->tlse[l];
    }
}

/* One query of the tile pass (fwd_query with the output written in place
 * where it can be). */
static void fwd_tile_query(const common *c, qscratch *sc, int64_t b, int64_t h, int64_t o[3], int64_t x) {
    const int r = c->g.rank;
    fwd_query(c, sc, b, h, o, x, c->p->dtype == NATTEN_DTYPE_F32 && c->out_t->stride[r + 2] == 1);
}

/* Tile forward: tasks (b, h, line, TSEG segment of u). */
static void fwd_tile_task(void *vctx, int64_t begin, int64_t end, int tid) {
    static const tile_pass pass = {fwd_tile_query, fwd_tile};
    tile_pass_run(vctx, &pass, begin, end, tid);
}

natten_status natten_fast_na_forward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *v,
                                     const natten_tensor *rpb, const natten_tensor *extra_k,
                                     const natten_tensor *extra_v, natten_tensor *out,
                                     natten_tensor *lse) {
    if (!fast_supported(p)) return NATTEN_STATUS_UNSUPPORTED;
    common c;
    common_init(&c, p);
    const geom *g = &c.g;
    c.rpb = rpb;
    c.out_t = out;
    c.lse_t = lse;
    /* MLX maps a fresh buffer for an output over its buffer cache (the vision
     * case's 67 MB): one fault and one zeroed page per 4 KiB written */
    advise_huge_output(p, NATTEN_TENSOR_OUT, out);
    const int nt = natten_parallel_threads();
    const int r = g->rank;
    /* tiles pay for repacking Q, K and V; worth it from ~16 neighbours up */
    const int use_tile = c.kern->tile_fwd != NULL && g->os[r - 1] == 1 && g->NE == 0 && g->KK >= NATTEN_TILE_MIN_KK &&
                         tiles_enabled();
    if (!use_tile) {
        const natten_status st = fwd_block_run(&c, q, k, v, out, lse, nt);
        if (st == NATTEN_STATUS_SUCCESS) {
            common_free(&c);
            return st;
        }
    }
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
    common_free(&c);
    tile_free(&tc);
    /* staging failed (out of memory): decline, so the reference runs */
    return ok ? NATTEN_STATUS_SUCCESS : NATTEN_STATUS_UNSUPPORTED;
}
