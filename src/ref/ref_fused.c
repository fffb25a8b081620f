/*
 * ref_fused.c -- reference fused attention: forward (out, lse) and backward
 * recomputing the probabilities from lse.  Plain loops, double accumulation;
 * the neighbourhood and the extra KV tokens share one softmax.
 */
#include "ref/ref.h"
#include "ref/ref_nbhd.h"

typedef struct fused_ctx {
    ref_geom g;
    natten_dtype dt;
    int64_t D, Dv, N;
    const natten_tensor *k, *rpb, *ek; /* what row_logits reads */
} fused_ctx;

/*
 * Logits of row (b, r, h) into s[0..kk+N) (-inf at masked slots), with the
 * query channels already in qv[D].  Returns the max over valid entries.
 */
static double row_logits(const fused_ctx *c, int64_t b, const ref_row *r, int64_t h,
                         const double *qv, double *s) {
    const int rank = c->g.rank;
    const int64_t hk = h / c->g.group;
    const int64_t kcs = ref_cstride(c->k, rank);
    double m = -INFINITY;
    for (int64_t n = 0; n < c->g.kk; ++n) {
        int64_t key[NATTEN_MAX_RANK], ridx[NATTEN_MAX_RANK];
        if (!ref_slot(&c->g, r, n, key, ridx)) {
            s[n] = -INFINITY;
            continue;
        }
        const int64_t ko = ref_off(c->k, rank, b, key, hk);
        double dot = 0.0;
        for (int64_t ch = 0; ch < c->D; ++ch) dot += qv[ch] * natten_load(c->k->data, ko + ch * kcs, c->dt);
        double logit = c->g.scale * dot;
        if (c->rpb) logit += natten_load(c->rpb->data, ref_off_rpb(c->rpb, rank, h, ridx), c->dt);
        s[n] = logit;
        if (logit > m) m = logit;
    }
    for (int64_t e = 0; e < c->N; ++e) {
        const int64_t ko = ref_off_extra(c->ek, b, e, hk);
        double dot = 0.0;
        for (int64_t ch = 0; ch < c->D; ++ch)
            dot += qv[ch] * natten_load(c->ek->data, ko + ch * c->ek->stride[3], c->dt);
        s[c->g.kk + e] = c->g.scale * dot;
        if (s[c->g.kk + e] > m) m = s[c->g.kk + e];
    }
    return m;
}

static void fused_init(fused_ctx *c, const natten_problem *p, const natten_tensor *k,
                       const natten_tensor *rpb, const natten_tensor *ek) {
    ref_geom_init(&c->g, p);
    c->dt = p->dtype;
    c->D = p->head_dim;
    c->Dv = p->head_dim_v;
    c->N = p->num_extra_kv;
    c->k = k, c->rpb = rpb, c->ek = ek;
}

natten_status natten_ref_na_forward(const natten_problem *p, const natten_tensor *q,
                                    const natten_tensor *k, const natten_tensor *v,
                                    const natten_tensor *rpb, const natten_tensor *extra_k,
                                    const natten_tensor *extra_v, natten_tensor *out,
                                    natten_tensor *lse) {
    fused_ctx c;
    fused_init(&c, p, k, rpb, extra_k);
    const int rank = c.g.rank;
    const natten_dtype lse_dt = natten_kind_dtype(p, NATTEN_TENSOR_LSE);
    double *scratch = (double *)malloc(sizeof(double) * (size_t)(c.g.kk + c.N + c.D + c.Dv));
    if (!scratch) return ref_oom("natten_na_forward");
    double *s = scratch, *qv = s + c.g.kk + c.N, *acc = qv + c.D;
    const int64_t qcs = ref_cstride(q, rank), vcs = ref_cstride(v, rank), ocs = ref_cstride(out, rank);

    for (int64_t b = 0; b < p->batch; ++b)
        for (int64_t of = 0; of < c.g.n_out; ++of) {
            ref_row r;
            ref_row_at(&c.g, b, of, &r);
            for (int64_t h = 0; h < p->heads; ++h) {
                const int64_t oo = ref_off(out, rank, b, r.o, h);
                const int64_t lo = lse ? ref_off(lse, rank, b, r.o, h) : 0;
                if (!r.valid) {
                    for (int64_t ch = 0; ch < c.Dv; ++ch) natten_store(out->data, oo + ch * ocs, c.dt, 0.0);
                    if (lse) natten_store(lse->data, lo, lse_dt, -INFINITY);
                    continue;
                }
                const int64_t hk = h / c.g.group;
                ref_load_vec(qv, q, ref_off(q, rank, b, r.q, h), qcs, c.D, c.dt);
                const double m = row_logits(&c, b, &r, h, qv, s);
                double sum = 0.0;
                for (int64_t n = 0; n < c.g.kk + c.N; ++n) {
                    s[n] = s[n] == -INFINITY ? 0.0 : exp(s[n] - m);
                    sum += s[n];
                }
                for (int64_t ch = 0; ch < c.Dv; ++ch) acc[ch] = 0.0;
                for (int64_t n = 0; n < c.g.kk; ++n) {
                    int64_t key[NATTEN_MAX_RANK];
                    if (!ref_slot(&c.g, &r, n, key, NULL)) continue;
                    const int64_t vo = ref_off(v, rank, b, key, hk);
                    for (int64_t ch = 0; ch < c.Dv; ++ch)
                        acc[ch] += s[n] * natten_load(v->data, vo + ch * vcs, c.dt);
                }
                for (int64_t e = 0; e < c.N; ++e) {
                    const int64_t vo = ref_off_extra(extra_v, b, e, hk);
                    for (int64_t ch = 0; ch < c.Dv; ++ch)
                        acc[ch] += s[c.g.kk + e] * natten_load(extra_v->data, vo + ch * extra_v->stride[3], c.dt);
                }
                for (int64_t ch = 0; ch < c.Dv; ++ch)
                    natten_store(out->data, oo + ch * ocs, c.dt, acc[ch] / sum);
                if (lse) natten_store(lse->data, lo, lse_dt, m + log(sum));
            }
        }
    free(scratch);
    return NATTEN_STATUS_SUCCESS;
}

natten_status natten_ref_na_backward(
    const natten_problem *p, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
    const natten_tensor *rpb, const natten_tensor *extra_k, const natten_tensor *extra_v,
    const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout, natten_tensor *dq,
    natten_tensor *dk, natten_tensor *dv, natten_tensor *drpb, natten_tensor *dextra_k,
    natten_tensor *dextra_v) {
    fused_ctx c;
    fused_init(&c, p, k, rpb, extra_k);
    const int rank = c.g.rank;
    const natten_dtype lse_dt = natten_kind_dtype(p, NATTEN_TENSOR_LSE);
    const int want_drpb = rpb && drpb;

    ref_acc aq = {0}, ak = {0}, av = {0}, ar = {0}, aek = {0}, aev = {0};
    double *scratch = (double *)malloc(sizeof(double) * (size_t)(c.g.kk + c.N + c.D + c.Dv));
    int ok = scratch && ref_acc_alloc(&aq, p, NATTEN_TENSOR_Q) && ref_acc_alloc(&ak, p, NATTEN_TENSOR_K) &&
             ref_acc_alloc(&av, p, NATTEN_TENSOR_V);
    if (ok && want_drpb) ok = ref_acc_alloc(&ar, p, NATTEN_TENSOR_RPB);
    if (ok && c.N > 0)
        ok = ref_acc_alloc(&aek, p, NATTEN_TENSOR_EXTRA_K) && ref_acc_alloc(&aev, p, NATTEN_TENSOR_EXTRA_V);
    if (!ok) {
        free(scratch), free(aq.data), free(ak.data), free(av.data), free(ar.data), free(aek.data), free(aev.data);
        return ref_oom("natten_na_backward");
    }
    double *s = scratch, *qv = s + c.g.kk + c.N, *go = qv + c.D;
    const int64_t qcs = ref_cstride(q, rank), kcs = ref_cstride(k, rank), vcs = ref_cstride(v, rank);
    const int64_t ocs = ref_cstride(out, rank), docs = ref_cstride(dout, rank);
    const int64_t aqcs = ref_cstride(&aq.view, rank), akcs = ref_cstride(&ak.view, rank);
    const int64_t avcs = ref_cstride(&av.view, rank);
    const double scale = c.g.scale;

    for (int64_t b = 0; b < p->batch; ++b)
        for (int64_t of = 0; of < c.g.n_out; ++of) {
            ref_row r;
            ref_row_at(&c.g, b, of, &r);
            if (!r.valid) continue;
            for (int64_t h = 0; h < p->heads; ++h) {
                const double l = natten_load(lse->data, ref_off(lse, rank, b, r.o, h), lse_dt);
                if (l == -INFINITY) continue;
                const int64_t hk = h / c.g.group;
                ref_load_vec(qv, q, ref_off(q, rank, b, r.q, h), qcs, c.D, c.dt);
                ref_load_vec(go, dout, ref_off(dout, rank, b, r.o, h), docs, c.Dv, c.dt);
                const int64_t oo = ref_off(out, rank, b, r.o, h);
                double delta = 0.0;
                for (int64_t ch = 0; ch < c.Dv; ++ch) delta += go[ch] * natten_load(out->data, oo + ch * ocs, c.dt);
                row_logits(&c, b, &r, h, qv, s);
                const int64_t dqo = ref_off(&aq.view, rank, b, r.q, h);
                for (int64_t n = 0; n < c.g.kk; ++n) {
                    int64_t key[NATTEN_MAX_RANK], ridx[NATTEN_MAX_RANK];
                    if (!ref_slot(&c.g, &r, n, key, ridx)) continue;
                    const double prob = exp(s[n] - l);
                    const int64_t ko = ref_off(k, rank, b, key, hk), vo = ref_off(v, rank, b, key, hk);
                    double dp = 0.0;
                    for (int64_t ch = 0; ch < c.Dv; ++ch) dp += go[ch] * natten_load(v->data, vo + ch * vcs, c.dt);
                    const double ds = prob * (dp - delta);
                    const int64_t ako = ref_off(&ak.view, rank, b, key, hk);
                    for (int64_t ch = 0; ch < c.D; ++ch) {
                        aq.data[dqo + ch * aqcs] += scale * ds * natten_load(k->data, ko + ch * kcs, c.dt);
                        ak.data[ako + ch * akcs] += scale * ds * qv[ch];
                    }
                    const int64_t avo = ref_off(&av.view, rank, b, key, hk);
                    for (int64_t ch = 0; ch < c.Dv; ++ch) av.data[avo + ch * avcs] += prob * go[ch];
                    if (want_drpb) ar.data[ref_off_rpb(&ar.view, rank, h, ridx)] += ds;
                }
                for (int64_t e = 0; e < c.N; ++e) {
                    const double prob = exp(s[c.g.kk + e] - l);
                    const int64_t ko = ref_off_extra(extra_k, b, e, hk), vo = ref_off_extra(extra_v, b, e, hk);
                    double dp = 0.0;
                    for (int64_t ch = 0; ch < c.Dv; ++ch)
                        dp += go[ch] * natten_load(extra_v->data, vo + ch * extra_v->stride[3], c.dt);
                    const double ds = prob * (dp - delta);
                    const int64_t ako = ref_off_extra(&aek.view, b, e, hk), avo = ref_off_extra(&aev.view, b, e, hk);
                    for (int64_t ch = 0; ch < c.D; ++ch) {
                        aq.data[dqo + ch * aqcs] += scale * ds * natten_load(extra_k->data, ko + ch * extra_k->stride[3], c.dt);
                        aek.data[ako + ch * aek.view.stride[3]] += scale * ds * qv[ch];
                    }
                    for (int64_t ch = 0; ch < c.Dv; ++ch) aev.data[avo + ch * aev.view.stride[3]] += prob * go[ch];
                }
            }
        }
    ref_acc_store(&aq, dq, c.dt);
    ref_acc_store(&ak, dk, c.dt);
    ref_acc_store(&av, dv, c.dt);
    if (want_drpb) ref_acc_store(&ar, drpb, c.dt);
    if (c.N > 0) {
        ref_acc_store(&aek, dextra_k, c.dt);
        ref_acc_store(&aev, dextra_v, c.dt);
    }
    free(scratch), free(aq.data), free(ak.data), free(av.data), free(ar.data), free(aek.data), free(aev.data);
    return NATTEN_STATUS_SUCCESS;
}
