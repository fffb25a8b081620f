/*
 * fast_inverse.c -- inverse neighbourhoods for the key pass of the backward
 * (fused and split): per axis, natten_window_of is run over every query and
 * the (query, slot) pairs landing on each key are recorded (CSR, queries
 * ascending), so every dk/dv row is a fixed-order sum -- no atomics, no second
 * window formula.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/fast_internal.h"

/* Fill the tables sized by inverse_setup, and c->inv_maxlen.  0 on OOM. */
static int build_inverse(common *c) {
    const geom *g = &c->g;
    const int64_t ns = c->varlen_tables ? g->B : 1;
    for (int a = 0; a < 3; ++a) c->inv_maxlen[a] = 1;
    int64_t Lmax = 1, Omax = 1;
    for (int a = 0; a < 3; ++a) {
        Lmax = g->Lx[a] > Lmax ? g->Lx[a] : Lmax;
        Omax = g->O[a] > Omax ? g->O[a] : Omax;
    }
    int64_t *cur = malloc((size_t)Lmax * sizeof(int64_t));
    natten_window *win = malloc((size_t)Omax * sizeof(natten_window));
    if (!cur || !win) {
        free(cur);
        free(win);
        return 0;
    }
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
            /* the window of every query inside the sample, once (the last axis
             * reuses c->wlast: full extent, set only without varlen) */
            int64_t no = 0;
            for (int64_t o = 0; o < g->O[a]; ++o, ++no) {
                const int64_t i = o * g->os[a];
                if (i >= e[a]) break;
                win[o] = c->wlast && a == g->rank - 1
                             ? c->wlast[i]
                             : natten_window_of(e[a], g->K[a], g->dil[a], g->gs[a], g->causal[a], i);
            }
            /* count */
            for (int64_t o = 0; o < no; ++o) {
                const natten_window w = win[o];
                for (int64_t kk = w.valid_begin; kk < w.valid_end; ++kk) st[w.start + kk * w.step + 1]++;
            }
            for (int64_t x = 0; x < L; ++x) {
                if (st[x + 1] > c->inv_maxlen[a]) c->inv_maxlen[a] = st[x + 1];
                st[x + 1] += st[x];
            }
            /* fill (reuse a cursor in the entry area's order: o ascending) */
            for (int64_t x = 0; x < L; ++x) cur[x] = st[x];
            for (int64_t o = 0; o < no; ++o) {
                const natten_window w = win[o];
                for (int64_t kk = w.valid_begin; kk < w.valid_end; ++kk) {
                    const int64_t at = cur[w.start + kk * w.step]++;
                    en[3 * at] = o * ostride * g->KKE + kk * kstride; /* scratch offset part */
                    en[3 * at + 1] = o * g->os[a] * c->q.st[a + 1];    /* q row offset part */
                    en[3 * at + 2] = o * c->dout.st[a + 1];            /* dout row offset part */
                }
            }
        }
    }
    free(cur);
    free(win);
    return 1;
}

size_t kscratch_bytes(const geom *g, const int64_t maxlen[3]) {
    const int64_t n = kround(g->G * maxlen[0] * maxlen[1] * maxlen[2] + 16);
    const int64_t dmax = (g->D > g->Dv ? g->D : g->Dv) + 16;
    return (size_t)n * (2 * sizeof(float *) + 2 * sizeof(float) + 3 * sizeof(int64_t)) +
           (size_t)dmax * sizeof(float) + 64;
}

kscratch kscratch_at(const common *c, int tid, int64_t n) {
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

/* The (query, slot) pairs of key x as offsets relative to a query head's
 * bases (the same for every head).  Returns their count (0 outside varlen). */
int64_t key_pairs(const common *c, kscratch *sc, const int64_t x[3], const int64_t e[3],
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

/* Decode a key task (b, key line, seg) and the tables of its sample. */
void key_task_setup(const common *c, int64_t task, int64_t kseg, int64_t *b, int64_t *seg, int64_t x[3],
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


int inverse_setup(common *c) {
    const geom *g = &c->g;
    c->varlen_tables = g->varlen != NULL;
    const int64_t ntab = c->varlen_tables ? g->B : 1;
    int64_t Lmax = 1;
    for (int a = 0; a < 3; ++a) Lmax = g->Lx[a] > Lmax ? g->Lx[a] : Lmax;
    int64_t Kmax = 1;
    for (int a = 0; a < 3; ++a) Kmax = g->K[a] * g->O[a] > Kmax ? g->K[a] * g->O[a] : Kmax;
    c->inv_stride_start = Lmax + 1;
    c->inv_stride_ent = 3 * Kmax; /* per (query, slot): scratch, q and dout offset parts */
    c->inv_start = malloc((size_t)(ntab * 3 * c->inv_stride_start) * sizeof(int64_t));
    c->inv_ent = malloc((size_t)(ntab * 3 * c->inv_stride_ent) * sizeof(int64_t));
    if (!c->inv_start || !c->inv_ent) return 0;
    return build_inverse(c);
}
