/*
 * fast_lanemajor.c -- lane-major packs for the opt-in tile paths
 * (NATTEN_CPU_TILES=1): K, V (and q, dO for the backward key tiles) repacked
 * per (batch, head, leading row) as channel-major rows over the last axis,
 * dilation groups made contiguous.  Packs are read-only once built.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/fast_internal.h"

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

int lm_pack(const common *c, const fview *src, int64_t Hn, int64_t C, const int64_t *goff,
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


/*
 * Tiles are opt-in (NATTEN_CPU_TILES=1).  Measured on the 2-core AVX-512
 * machine (benchmarks/c/cpu_bench, A/B in one session): the generic path,
 * which reads the caller's layout with all heads of a position together, is
 * faster on every benchmark case -- the tiles' repacking passes (K, V; q, dO
 * in the backward) and transposes cost more than the GEMM-like inner loop
 * saves at these neighbourhood sizes.  The code stays tested (both settings
 * in tests/c/test_fast_cpu.c) for machines and shapes where that flips.
 */
int tiles_enabled(void) {
    const char *e = getenv("NATTEN_CPU_TILES");
    return e != NULL && e[0] == '1';
}

/* Lane-major packs of K and V plus the group tables, or 0 on OOM. */
int tile_setup(const common *c, tile_common *tc, int nt) {
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

void tile_free(tile_common *tc) {
    free(tc->keyshift);
    natten_cpu_ws_put(tc->d.data);
    free(tc->goff);
    free(tc->xofu);
    natten_cpu_ws_put(tc->q.data);
    natten_cpu_ws_put(tc->k.data);
    natten_cpu_ws_put(tc->v.data);
}

/* The tile passes' task body: runs of regular queries to tp->tile, the rest
 * (outside the sample, clamped windows, short runs at borders where the
 * shift changes every query) query by query to tp->query. */
void tile_pass_run(const common *c, const tile_pass *tp, int64_t begin, int64_t end, int tid) {
    const tile_common *tc = c->tile;
    const geom *g = &c->g;
    const int r = g->rank;
    qscratch sc = qscratch_at(c, tid);
    const int64_t L = g->L[r - 1];
    int64_t rpb_h = -1;
    for (int64_t task = begin; task < end; ++task) {
        int64_t o[3] = {0, 0, 0}, seg, h;
        const int64_t b = tile_task(g, tc->nseg, task, o, &seg, &h);
        line_prep(c, b, h, o, &sc.lp, &rpb_h);
        const int64_t u1 = (seg + 1) * TSEG < L ? (seg + 1) * TSEG : L;
        int64_t u = seg * TSEG;
        if (!sc.lp.inside) {
            for (; u < u1; ++u) tp->query(c, &sc, b, h, o, tc->xofu[u]);
            continue;
        }
        const int64_t e = sc.lp.e[r - 1];
        while (u < u1) {
            /* a run of regular queries within one group, up to 16 lanes */
            const int64_t x = tc->xofu[u];
            natten_window w;
            int64_t shift = 0;
            const int64_t nl = tile_run(c, tc, e, u, u1, &w, &shift);
            if (nl < TILE_MIN) {
                tp->query(c, &sc, b, h, o, x);
                ++u;
                continue;
            }
            tp->tile(c, tc, &sc, b, h, o, u, nl, shift, &w, x);
            u += nl;
        }
    }
}
