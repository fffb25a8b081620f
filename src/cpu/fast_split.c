/*
 * fast_split.c -- split QK / AV ops and their backward on the fast CPU path.
 * Query passes run over lines of queries (tasks (b, line, SEG segment), head
 * by head), with the neighbour lists of fast_common.c;
 * dk (QK) and dv (AV) run per key over the inverse neighbourhoods of
 * fast_inverse.c, drpb per head -- each output element is one fixed-order sum
 * written by one task (no atomics), so results do not depend on the thread
 * count.  Masked slots: logits -inf, weights ignored, gradients 0; rows
 * outside a varlen sample are fully masked.  f64 declines (the reference runs).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/fast_internal.h"

typedef enum split_op { QK_FORWARD, QK_BACKWARD, AV_FORWARD, AV_BACKWARD } split_op;

typedef struct split_ctx {
    common c; /* first: the shared tasks (bwd_key_task, ...) take a common * */
    split_op op;
} split_ctx;

/* One query of a prepared line: o[0..rank-1) set, line switched to head h. */
static void split_query(const split_ctx *x, qscratch *sc, int64_t b, int64_t h, int64_t o[3], int64_t ol) {
    const common *c = &x->c;
    const geom *g = &c->g;
    const int r = g->rank;
    const natten_dtype dt = c->p->dtype;
    o[r - 1] = ol;
    const int inside = query_list(c, &sc->lp, ol, &sc->nl);
    const int64_t n = inside ? sc->nl.n : 0;
    const int64_t *slot = sc->nl.slot;
    switch (x->op) {
    case QK_FORWARD: { /* logits row: -inf, then scale*q.k + rpb at the valid slots */
        for (int64_t j = 0; j < g->KK; ++j) sc->dp[j] = -INFINITY;
        if (inside) {
            const float *qrow = c->q.data + row_off(c->q.st, r, b, sc->lp.pos, h);
            c->kern->dots(qrow, sc->nl.kp, n, g->D, sc->s);
            if (c->rpb)
                for (int64_t j = 0; j < n; ++j) sc->dp[slot[j]] = sc->s[j] * g->scale + sc->nl.bias[j];
            else
                for (int64_t j = 0; j < n; ++j) sc->dp[slot[j]] = sc->s[j] * g->scale;
        }
        store_row(c->w_t->data, row_off(c->w_t->stride, r, b, o, h), c->w_t->stride[r + 2], dt, sc->dp, g->KK);
        return;
    }
    case AV_FORWARD: {
        const int64_t ooff = row_off(c->out_t->stride, r, b, o, h);
        if (!inside) {
            store_zero_row(c->out_t->data, ooff, c->out_t->stride[r + 2], dt, g->Dv);
            return;
        }
        const float *arow = c->w.data + row_off(c->w.st, r, b, o, h);
        for (int64_t j = 0; j < n; ++j) sc->s[j] = arow[slot[j]];
        const int direct = dt == NATTEN_DTYPE_F32 && c->out_t->stride[r + 2] == 1;
        float *orow = direct ? (float *)c->out_t->data + ooff : sc->row;
        c->kern->wsum(sc->s, sc->nl.vp, n, g->Dv, orow);
        if (!direct) store_row(c->out_t->data, ooff, c->out_t->stride[r + 2], dt, orow, g->Dv);
        return;
    }
    case QK_BACKWARD: { /* dq = scale * sum dlogits k; dlogits kept for the key pass and drpb */
        if (!inside) return; /* dq pre-zeroed where rows are partial */
        const int64_t qlin = (b * g->H + h) * g->Oin + olin_of(g, o);
        float *Srow = c->Sbuf + qlin * g->KKE;
        const float *drow = c->w.data + row_off(c->w.st, r, b, o, h);
        for (int64_t j = 0; j < n; ++j) Srow[slot[j]] = sc->s[j] = drow[slot[j]];
        c->kern->wsum(sc->s, sc->nl.kp, n, g->D, sc->row);
        for (int64_t i = 0; i < g->D; ++i) sc->row[i] *= g->scale;
        store_row(c->dq_t->data, row_off(c->dq_t->stride, r, b, sc->lp.pos, h), c->dq_t->stride[r + 2], dt,
                  sc->row, g->D);
        return;
    }
    case AV_BACKWARD: { /* dattn = dO.v at valid slots, 0 elsewhere; attn kept for the key pass */
        for (int64_t j = 0; j < g->KK; ++j) sc->dp[j] = 0.f;
        if (inside) {
            const int64_t qlin = (b * g->H + h) * g->Oin + olin_of(g, o);
            float *Prow = c->Pbuf + qlin * g->KKE;
            const float *arow = c->w.data + row_off(c->w.st, r, b, o, h);
            const float *dorow = c->dout.data + row_off(c->dout.st, r, b, o, h);
            c->kern->dots(dorow, sc->nl.vp, n, g->Dv, sc->s);
            for (int64_t j = 0; j < n; ++j) {
                sc->dp[slot[j]] = sc->s[j];
                Prow[slot[j]] = arow[slot[j]];
            }
        }
        store_row(c->w_t->data, row_off(c->w_t->stride, r, b, o, h), c->w_t->stride[r + 2], dt, sc->dp, g->KK);
        return;
    }
    }
}

/* Query pass: tasks (b, line, seg of SEG queries); per head, the segment's queries. */
static void split_query_task(void *vctx, int64_t begin, int64_t end, int tid) {
    const split_ctx *x = vctx;
    const common *c = &x->c;
    const geom *g = &c->g;
    qscratch sc = qscratch_at(c, tid);
    int64_t rpb_h = -1;
    for (int64_t task = begin; task < end; ++task) {
        int64_t o[3] = {0, 0, 0}, last0, last1;
        const int64_t b = seg_task(g, task, o, &last0, &last1);
        line_prep(c, b, 0, o, &sc.lp, &rpb_h);
        for (int64_t h = 0; h < g->H; ++h) {
            line_set_head(c, b, h, &sc.lp);
            for (int64_t ol = last0; ol < last1; ++ol) split_query(x, &sc, b, h, o, ol);
        }
    }
}

/*
 * Shared driver.  Views: QK reads q, k (k doubles as the value rows of the
 * lists, never read); AV reads v (doubling as key rows), attn and dout.
 * Backward: the query pass stages dlogits (QK) or attn (AV) per (query, slot)
 * into Sbuf / Pbuf, then the key pass reads them through the inverse tables.
 */
static natten_status split_run(split_ctx *x, const natten_tensor *q, const natten_tensor *k,
                               const natten_tensor *v, const natten_tensor *w, const natten_tensor *dout) {
    common *c = &x->c;
    const natten_problem *p = c->p;
    if (!fast_supported(p)) return NATTEN_STATUS_UNSUPPORTED;
    geom_init(&c->g, p);
    const geom *g = &c->g;
    c->kern = natten_cpu_active_kernels();
    const int nt = natten_parallel_threads();
    const int bwd = x->op == QK_BACKWARD || x->op == AV_BACKWARD;
    int ok = 1;
    if (q) ok = ok && make_view(p, NATTEN_TENSOR_Q, q, &c->q, nt, 0);
    if (k) ok = ok && make_view(p, NATTEN_TENSOR_K, k, &c->k, nt, 0);
    if (v) ok = ok && make_view(p, NATTEN_TENSOR_V, v, &c->v, nt, 0);
    if (w) ok = ok && make_view(p, NATTEN_TENSOR_LOGITS, w, &c->w, nt, 0);
    if (dout) ok = ok && make_view(p, NATTEN_TENSOR_OUT, dout, &c->dout, nt, 0);
    if (ok && !v) { /* the lists want value rows: point them at the keys (not owned twice) */
        c->v = c->k;
        c->v.owned = NULL;
    }
    if (ok && !k) {
        c->k = c->v;
        c->k.owned = NULL;
    }
    if (ok && bwd) {
        const size_t pbytes = (size_t)(g->B * g->H * g->Oin * g->KKE) * sizeof(float);
        float **buf = x->op == QK_BACKWARD ? &c->Sbuf : &c->Pbuf;
        ok = (*buf = natten_cpu_ws_get(pbytes)) != NULL;
    }
    if (ok) ok = build_rpb_all(c) && build_wlast(c);
    if (ok && bwd) ok = inverse_setup(c); /* after build_wlast: reuses its windows */
    if (ok) {
        size_t sb = qscratch_bytes(g);
        if (bwd) {
            const size_t kb = kscratch_bytes(g, c->inv_maxlen);
            if (kb > sb) sb = kb;
        }
        if (c->drpb_t) {
            const size_t rb = (size_t)rpb_table_size(g) * sizeof(double);
            if (rb > sb) sb = rb;
        }
        c->scratch_bytes = (sb + 63) & ~(size_t)63;
        ok = (c->scratch = malloc(c->scratch_bytes * (size_t)nt)) != NULL;
    }
    if (!ok) { /* out of memory while staging: decline, nothing written */
        common_free(&x->c);
        return NATTEN_STATUS_UNSUPPORTED;
    }
    if (x->op == QK_BACKWARD) {
        int partial = g->varlen != NULL;
        for (int a = 0; a < g->rank; ++a) partial |= g->os[a] > 1;
        if (partial) natten_parallel_for(nt, g->B * g->Lx[0] * g->Lx[1] * g->Lx[2] * g->H, 1024, zero_dq_task, c);
    }
    natten_parallel_for(nt, g->B * g->lines * g->nseg, 1, split_query_task, x);
    if (bwd) {
        int64_t klines = 1;
        for (int a = 0; a < g->rank - 1; ++a) klines *= g->L[a];
        const int64_t kseg = (g->L[g->rank - 1] + SEG - 1) / SEG;
        natten_parallel_for(nt, g->B * klines * kseg, 1, bwd_key_task, c);
    }
    if (c->drpb_t) natten_parallel_for(nt, g->H, 1, bwd_rpb_task, c);
    common_free(&x->c);
    return NATTEN_STATUS_SUCCESS;
}

static void split_init(split_ctx *x, const natten_problem *p, split_op op) {
    memset(x, 0, sizeof *x);
    x->c.p = p;
    x->op = op;
}

natten_status natten_fast_qk_forward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *rpb,
                                     natten_tensor *logits) {
    split_ctx x;
    split_init(&x, p, QK_FORWARD);
    x.c.rpb = rpb;
    x.c.w_t = logits;
    return split_run(&x, q, k, NULL, NULL, NULL);
}

natten_status natten_fast_qk_backward(const natten_problem *p, const natten_tensor *q,
                                      const natten_tensor *k, const natten_tensor *dlogits,
                                      natten_tensor *dq, natten_tensor *dk, natten_tensor *drpb) {
    split_ctx x;
    split_init(&x, p, QK_BACKWARD);
    x.c.dq_t = dq;
    x.c.dk_t = dk;
    x.c.drpb_t = drpb;
    return split_run(&x, q, k, NULL, dlogits, NULL);
}

natten_status natten_fast_av_forward(const natten_problem *p, const natten_tensor *attn,
                                     const natten_tensor *v, natten_tensor *out) {
    split_ctx x;
    split_init(&x, p, AV_FORWARD);
    x.c.out_t = out;
    return split_run(&x, NULL, NULL, v, attn, NULL);
}

natten_status natten_fast_av_backward(const natten_problem *p, const natten_tensor *attn,
                                      const natten_tensor *v, const natten_tensor *dout,
                                      natten_tensor *dattn, natten_tensor *dv) {
    split_ctx x;
    split_init(&x, p, AV_BACKWARD);
    x.c.w_t = dattn;
    x.c.dv_t = dv;
    return split_run(&x, NULL, NULL, v, attn, dout);
}
