/*
 * fast_backward.c -- fused backward (natten_fast_na_backward), without atomics:
 *   A. per query: P = exp(s - lse), dS = P (dO.v - dO.O), dq = scale sum dS k;
 *      P and dS kept per (query, slot) in scratch;
 *   B. per key (inverse neighbourhoods, fast_inverse.c): dk = scale sum dS q,
 *      dv = sum P dO;  C. drpb per head;  D. extra-KV grads per token.
 * Every output element is one fixed-order sum computed by one task.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/bwd_block.h"
#include "cpu/fast_internal.h"

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
    qscratch sc = qscratch_at(c, tid);
    int64_t rpb_h = -1;
    for (int64_t task = begin; task < end; ++task) {
        int64_t o[3] = {0, 0, 0}, last0, last1;
        const int64_t b = seg_task(g, task, o, &last0, &last1);
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
    const int64_t K = g->K[r - 1], d = g->dil[r - 1];
    sc->lp.pos[r - 1] = x0;
    o[r - 1] = x0;
    const float *q0 = c->q.data + row_off(c->q.st, r, b, sc->lp.pos, h);
    tile_lanes_in(c->kern, q0, d * c->q.st[r], sc->tq, nl, g->D);
    const float *do0 = c->dout.data + row_off(c->dout.st, r, b, o, h);
    tile_lanes_in(c->kern, do0, d * c->dout.st[r], sc->tdo, nl, g->Dv);
    const float *o0 = c->out.data + row_off(c->out.st, r, b, o, h);
    const int64_t lse0 = row_off(c->lse_in->stride, r, b, o, 0) + h * c->lse_in->stride[r + 1];
    float lse16[16], delta16[16];
    for (int64_t l = 0; l < 16; ++l) {
        const int64_t ll = l < nl ? l : nl - 1; /* idle lanes repeat the last query */
        lse16[l] = ((const float *)c->lse_in->data)[lse0 + ll * d * c->lse_in->stride[r]];
        const float *orow = o0 + ll * d * c->out.st[r];
        c->kern->dots(do0 + ll * d * c->dout.st[r], &orow, 1, g->Dv, &delta16[l]);
    }
    const int64_t n = tile_list(c, tc, sc, b, h, u0, shift, w0, x0);
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
    tile_rows_out(c, sc, c->dq_t, qoff, d * c->dq_t->stride[r], g->D, nl,
                  c->p->dtype == NATTEN_DTYPE_F32 && c->dq_t->stride[r + 2] == 1);
}

/* Phase A with tiles: tasks (b, h, line, TSEG segment of u), as the forward. */
static void bwd_tile_task(void *vctx, int64_t begin, int64_t end, int tid) {
    static const tile_pass pass = {bwd_query, bwd_tile};
    tile_pass_run(vctx, &pass, begin, end, tid);
}

/* dk, dv of key x (all axes set) and kv head hk from its pairs (key_pairs). */
static void bwd_key_heads(const common *c, kscratch *sc, int64_t b, int64_t hk, const int64_t x[3], int64_t np) {
    const geom *g = &c->g;
    const int r = g->rank;
    const natten_dtype dt = c->p->dtype;
    int64_t n = 0;
    /* the split ops need only one of dk (QK) and dv (AV); the fused op both */
    const int want_dk = c->dk_t != NULL, want_dv = c->dv_t != NULL;
    for (int64_t gg = 0; gg < g->G; ++gg) {
        const int64_t h = hk * g->G + gg;
        const int64_t hoff = (b * g->H + h) * g->Oin * g->KKE;
        if (want_dk) {
            const float *S = c->Sbuf + hoff;
            const float *qh = c->q.data + b * c->q.st[0] + h * c->q.st[r + 1];
            for (int64_t j = 0; j < np; ++j) {
                sc->wk[n + j] = S[sc->ra[j]];
                sc->qp[n + j] = qh + sc->rq[j];
            }
        }
        if (want_dv) {
            const float *P = c->Pbuf + hoff;
            const float *dh = c->dout.data + b * c->dout.st[0] + h * c->dout.st[r + 1];
            for (int64_t j = 0; j < np; ++j) {
                sc->wv[n + j] = P[sc->ra[j]];
                sc->dop[n + j] = dh + sc->rd[j];
            }
        }
        n += np;
    }
    if (want_dk) {
        const int64_t koff = row_off(c->dk_t->stride, r, b, x, hk);
        c->kern->wsum(sc->wk, sc->qp, n, g->D, sc->row);
        for (int64_t i = 0; i < g->D; ++i) sc->row[i] *= g->scale;
        store_row(c->dk_t->data, koff, c->dk_t->stride[r + 2], dt, sc->row, g->D);
    }
    if (want_dv) {
        const int64_t voff = row_off(c->dv_t->stride, r, b, x, hk);
        c->kern->wsum(sc->wv, sc->dop, n, g->Dv, sc->row);
        store_row(c->dv_t->data, voff, c->dv_t->stride[r + 2], dt, sc->row, g->Dv);
    }
}

/* dk, dv of key x for every kv head, generic lists. */
static void bwd_key(const common *c, kscratch *sc, int64_t b, const int64_t x[3], const int64_t e[3],
                    const int64_t *const st[3], const int64_t *const en[3]) {
    const int64_t np = key_pairs(c, sc, x, e, st, en);
    for (int64_t hk = 0; hk < c->g.Hkv; ++hk) bwd_key_heads(c, sc, b, hk, x, np);
}

/* Phase B, generic: tasks (b, key line, seg); kv heads innermost. */
void bwd_key_task(void *vctx, int64_t begin, int64_t end, int tid) {
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
void zero_dq_task(void *vctx, int64_t begin, int64_t end, int tid) {
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
void bwd_rpb_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const common *c = vctx;
    const geom *g = &c->g;
    const int r = g->rank;
    int64_t dims[3];
    const int64_t nb = rpb_dims(g, dims);
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
        for (int64_t i = 0; i < nb; ++i)
            natten_store(c->drpb_t->data, rpb_elem_off(c->drpb_t, dims, r, h, i), c->p->dtype, acc[i]);
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
    common_init(&c, p);
    const geom *g = &c.g;
    c.rpb = rpb;
    c.lse_in = lse;
    c.dq_t = dq;
    c.dk_t = dk;
    c.dv_t = dv;
    c.drpb_t = rpb ? drpb : NULL;
    c.dek_t = dextra_k;
    c.dev_t = dextra_v;
    advise_huge_output(p, NATTEN_TENSOR_Q, dq);
    advise_huge_output(p, NATTEN_TENSOR_K, dk);
    advise_huge_output(p, NATTEN_TENSOR_V, dv);
    if (bwd_block_run(&c, q, k, v, out, lse, dout, dq, dk, dv) == NATTEN_STATUS_SUCCESS) {
        common_free(&c);
        return NATTEN_STATUS_SUCCESS;
    }
    /* the blocked path may have built the last-axis windows and inverse tables (no views then) */
    free(c.inv_start);
    free(c.inv_ent);
    c.inv_start = c.inv_ent = NULL;
    const int nt = natten_parallel_threads();
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
    if (ok) ok = build_rpb_all(&c) && build_wlast(&c);
    if (ok) ok = inverse_setup(&c);
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
            const int64_t nb = rpb_table_size(g);
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
        common_free(&c);
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
    common_free(&c);
    tile_free(&tc);
    return NATTEN_STATUS_SUCCESS;
}
