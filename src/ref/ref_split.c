/*
 * ref_split.c -- reference split ops: QK (logits over neighbour slots), AV
 * (weighted sum over valid slots) and their backwards.  Masked slots: logits
 * -inf, attention weights ignored, gradients 0.  Rows outside a varlen
 * sample are fully masked.
 */
#include "ref/ref.h"
#include "ref/ref_nbhd.h"

natten_status natten_ref_qk_forward(const natten_problem *p, const natten_tensor *q,
                                    const natten_tensor *k, const natten_tensor *rpb,
                                    natten_tensor *logits) {
    ref_geom g;
    ref_geom_init(&g, p);
    const int rank = g.rank;
    const natten_dtype dt = p->dtype;
    const int64_t D = p->head_dim;
    double *qv = (double *)malloc(sizeof(double) * (size_t)D);
    if (!qv) return ref_oom("natten_qk_forward");
    const int64_t qcs = ref_cstride(q, rank), kcs = ref_cstride(k, rank), lcs = ref_cstride(logits, rank);
    for (int64_t b = 0; b < p->batch; ++b)
        for (int64_t of = 0; of < g.n_out; ++of) {
            ref_row r;
            ref_row_at(&g, b, of, &r);
            for (int64_t h = 0; h < p->heads; ++h) {
                const int64_t lo = ref_off(logits, rank, b, r.o, h);
                const int64_t hk = h / g.group;
                if (r.valid) ref_load_vec(qv, q, ref_off(q, rank, b, r.q, h), qcs, D, dt);
                for (int64_t n = 0; n < g.kk; ++n) {
                    int64_t key[NATTEN_MAX_RANK], ridx[NATTEN_MAX_RANK];
                    double val = -INFINITY;
                    if (r.valid && ref_slot(&g, &r, n, key, ridx)) {
                        const int64_t ko = ref_off(k, rank, b, key, hk);
                        double dot = 0.0;
                        for (int64_t ch = 0; ch < D; ++ch) dot += qv[ch] * natten_load(k->data, ko + ch * kcs, dt);
                        val = g.scale * dot;
                        if (rpb) val += natten_load(rpb->data, ref_off_rpb(rpb, rank, h, ridx), dt);
                    }
                    natten_store(logits->data, lo + n * lcs, dt, val);
                }
            }
        }
    free(qv);
    return NATTEN_STATUS_SUCCESS;
}

natten_status natten_ref_qk_backward(const natten_problem *p, const natten_tensor *q,
                                     const natten_tensor *k, const natten_tensor *dlogits,
                                     natten_tensor *dq, natten_tensor *dk, natten_tensor *drpb) {
    ref_geom g;
    ref_geom_init(&g, p);
    const int rank = g.rank;
    const natten_dtype dt = p->dtype;
    const int64_t D = p->head_dim;
    ref_acc aq = {0}, ak = {0}, ar = {0};
    double *qv = (double *)malloc(sizeof(double) * (size_t)D);
    int ok = qv && ref_acc_alloc(&aq, p, NATTEN_TENSOR_Q) && ref_acc_alloc(&ak, p, NATTEN_TENSOR_K);
    if (ok && drpb) ok = ref_acc_alloc(&ar, p, NATTEN_TENSOR_RPB);
    if (!ok) {
        free(qv), free(aq.data), free(ak.data), free(ar.data);
        return ref_oom("natten_qk_backward");
    }
    const int64_t qcs = ref_cstride(q, rank), kcs = ref_cstride(k, rank), lcs = ref_cstride(dlogits, rank);
    const int64_t aqcs = ref_cstride(&aq.view, rank), akcs = ref_cstride(&ak.view, rank);
    for (int64_t b = 0; b < p->batch; ++b)
        for (int64_t of = 0; of < g.n_out; ++of) {
            ref_row r;
            ref_row_at(&g, b, of, &r);
            if (!r.valid) continue;
            for (int64_t h = 0; h < p->heads; ++h) {
                const int64_t lo = ref_off(dlogits, rank, b, r.o, h);
                const int64_t hk = h / g.group;
                const int64_t aqo = ref_off(&aq.view, rank, b, r.q, h);
                ref_load_vec(qv, q, ref_off(q, rank, b, r.q, h), qcs, D, dt);
                for (int64_t n = 0; n < g.kk; ++n) {
                    int64_t key[NATTEN_MAX_RANK], ridx[NATTEN_MAX_RANK];
                    if (!ref_slot(&g, &r, n, key, ridx)) continue;
                    const double dl = natten_load(dlogits->data, lo + n * lcs, dt);
                    const int64_t ko = ref_off(k, rank, b, key, hk), ako = ref_off(&ak.view, rank, b, key, hk);
                    for (int64_t ch = 0; ch < D; ++ch) {
                        aq.data[aqo + ch * aqcs] += g.scale * dl * natten_load(k->data, ko + ch * kcs, dt);
                        ak.data[ako + ch * akcs] += g.scale * dl * qv[ch];
                    }
                    if (drpb) ar.data[ref_off_rpb(&ar.view, rank, h, ridx)] += dl;
                }
            }
        }
    ref_acc_store(&aq, dq, dt);
    ref_acc_store(&ak, dk, dt);
    if (drpb) ref_acc_store(&ar, drpb, dt);
    free(qv), free(aq.data), free(ak.data), free(ar.data);
    return NATTEN_STATUS_SUCCESS;
}

natten_status natten_ref_av_forward(const natten_problem *p, const natten_tensor *attn,
                                    const natten_tensor *v, natten_tensor *out) {
    ref_geom g;
    ref_geom_init(&g, p);
    const int rank = g.rank;
    const natten_dtype dt = p->dtype;
    const int64_t Dv = p->head_dim_v;
    double *acc = (double *)malloc(sizeof(double) * (size_t)Dv);
    if (!acc) return ref_oom("natten_av_forward");
    const int64_t acs = ref_cstride(attn, rank), vcs = ref_cstride(v, rank), ocs = ref_cstride(out, rank);
    for (int64_t b = 0; b < p->batch; ++b)
        for (int64_t of = 0; of < g.n_out; ++of) {
            ref_row r;
            ref_row_at(&g, b, of, &r);
            for (int64_t h = 0; h < p->heads; ++h) {
                const int64_t hk = h / g.group;
                const int64_t ao = ref_off(attn, rank, b, r.o, h);
                for (int64_t ch = 0; ch < Dv; ++ch) acc[ch] = 0.0;
                for (int64_t n = 0; r.valid && n < g.kk; ++n) {
                    int64_t key[NATTEN_MAX_RANK];
                    if (!ref_slot(&g, &r, n, key, NULL)) continue;
                    const double w = natten_load(attn->data, ao + n * acs, dt);
                    const int64_t vo = ref_off(v, rank, b, key, hk);
                    for (int64_t ch = 0; ch < Dv; ++ch) acc[ch] += w * natten_load(v->data, vo + ch * vcs, dt);
                }
                const int64_t oo = ref_off(out, rank, b, r.o, h);
                for (int64_t ch = 0; ch < Dv; ++ch) natten_store(out->data, oo + ch * ocs, dt, acc[ch]);
            }
        }
    free(acc);
    return NATTEN_STATUS_SUCCESS;
}

natten_status natten_ref_av_backward(const natten_problem *p, const natten_tensor *attn,
                                     const natten_tensor *v, const natten_tensor *dout,
                                     natten_tensor *dattn, natten_tensor *dv) {
    ref_geom g;
    ref_geom_init(&g, p);
    const int rank = g.rank;
    const natten_dtype dt = p->dtype;
    const int64_t Dv = p->head_dim_v;
    ref_acc av = {0};
    double *go = (double *)malloc(sizeof(double) * (size_t)Dv);
    if (!go || !ref_acc_alloc(&av, p, NATTEN_TENSOR_V)) {
        free(go), free(av.data);
        return ref_oom("natten_av_backward");
    }
    const int64_t acs = ref_cstride(attn, rank), vcs = ref_cstride(v, rank);
    const int64_t docs = ref_cstride(dout, rank), dacs = ref_cstride(dattn, rank);
    const int64_t avcs = ref_cstride(&av.view, rank);
    for (int64_t b = 0; b < p->batch; ++b)
        for (int64_t of = 0; of < g.n_out; ++of) {
            ref_row r;
            ref_row_at(&g, b, of, &r);
            for (int64_t h = 0; h < p->heads; ++h) {
                const int64_t hk = h / g.group;
                const int64_t ao = ref_off(attn, rank, b, r.o, h), dao = ref_off(dattn, rank, b, r.o, h);
                if (r.valid) ref_load_vec(go, dout, ref_off(dout, rank, b, r.o, h), docs, Dv, dt);
                for (int64_t n = 0; n < g.kk; ++n) {
                    int64_t key[NATTEN_MAX_RANK];
                    double da = 0.0;
                    if (r.valid && ref_slot(&g, &r, n, key, NULL)) {
                        const double w = natten_load(attn->data, ao + n * acs, dt);
                        const int64_t vo = ref_off(v, rank, b, key, hk), avo = ref_off(&av.view, rank, b, key, hk);
                        for (int64_t ch = 0; ch < Dv; ++ch) {
                            da += go[ch] * natten_load(v->data, vo + ch * vcs, dt);
                            av.data[avo + ch * avcs] += w * go[ch];
                        }
                    }
                    natten_store(dattn->data, dao + n * dacs, dt, da);
                }
            }
        }
    ref_acc_store(&av, dv, dt);
    free(go), free(av.data);
    return NATTEN_STATUS_SUCCESS;
}
