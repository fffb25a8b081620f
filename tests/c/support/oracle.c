/*
 * oracle.c -- brute-force neighbourhood attention from first principles.
 *
 * Per axis, following upstream NATTEN's definitions (upstream-natten.md
 * §1.2-1.4) rather than src/core/window.h: a query i belongs to dilation
 * group g = i mod d, at local index j = i div d; the group is enumerated to
 * get its length Lg.  GNA stride groups local indices by j div s.
 *   non-causal: leader = min(t*s + floor(s/2), Lg-1); the window is the
 *     centre-clamped  [c - wl, c + wr],  c = clamp(leader, wl, Lg-1-wr),
 *     wl = floor(K/2), wr = K - 1 - wl; slot = local - (c - wl).
 *   causal: leader = min(t*s + s-1, Lg-1); members are locals in
 *     [max(leader-K+1, 0), j]; slot = K-1 - (leader - local).
 * Attention is then dense over every key position with this mask, in long
 * double, with the extra tokens joined into the softmax.
 */
#include <math.h>
#include <stdlib.h>

#include "support.h"

void oracle_axis_slots(int64_t L, int64_t K, int64_t d, int64_t s, int causal, int64_t *slot) {
    for (int64_t i = 0; i < L; ++i) {
        const int64_t g = i % d, j = i / d;
        int64_t Lg = 0;
        for (int64_t x = 0; x < L; ++x)
            if (x % d == g) ++Lg;
        const int64_t t = j / s;
        for (int64_t x = 0; x < L; ++x) slot[i * L + x] = -1;
        if (!causal) {
            int64_t leader = t * s + s / 2;
            if (leader > Lg - 1) leader = Lg - 1;
            const int64_t wl = K / 2, wr = K - 1 - wl;
            int64_t c = leader;
            if (c < wl) c = wl;
            if (c > Lg - 1 - wr) c = Lg - 1 - wr;
            for (int64_t x = g; x < L; x += d) {
                const int64_t m = x / d;
                if (m >= c - wl && m <= c + wr) slot[i * L + x] = m - (c - wl);
            }
        } else {
            int64_t leader = t * s + s - 1;
            if (leader > Lg - 1) leader = Lg - 1;
            const int64_t lo = leader - K + 1 > 0 ? leader - K + 1 : 0;
            for (int64_t x = g; x < L; x += d) {
                const int64_t m = x / d;
                if (m >= lo && m <= j) slot[i * L + x] = K - 1 - (leader - m);
            }
        }
    }
}

typedef struct geo {
    int rank;
    int64_t X[3], O[3], e[3];
    int64_t n_out, kk, H, Hkv, D, Dv, N;
    int64_t *tab[3];
} geo;

static void geo_init(geo *G, const natten_problem *p) {
    G->rank = p->rank;
    G->n_out = 1;
    G->kk = 1;
    for (int a = 0; a < p->rank; ++a) {
        G->X[a] = p->extent[a];
        G->O[a] = (p->extent[a] + p->out_stride[a] - 1) / p->out_stride[a];
        G->n_out *= G->O[a];
        G->kk *= p->kernel[a];
        G->tab[a] = NULL;
    }
    G->H = p->heads, G->Hkv = p->kv_heads, G->D = p->head_dim, G->Dv = p->head_dim_v;
    G->N = p->num_extra_kv;
}

static void geo_sample(geo *G, const natten_problem *p, int64_t b) {
    for (int a = 0; a < G->rank; ++a) {
        free(G->tab[a]);
        G->e[a] = p->varlen_extent ? p->varlen_extent[b * G->rank + a] : p->extent[a];
        G->tab[a] = (int64_t *)malloc(sizeof(int64_t) * (size_t)(G->e[a] * G->e[a]));
        oracle_axis_slots(G->e[a], p->kernel[a], p->dilation[a], p->gna_stride[a], p->causal[a], G->tab[a]);
    }
}

static void geo_free(geo *G) {
    for (int a = 0; a < G->rank; ++a) free(G->tab[a]), G->tab[a] = NULL;
}

/* Row-major index of (b, pos, h) in an array with spatial extents ext and H heads. */
static int64_t row_index(const geo *G, const int64_t *ext, int64_t b, const int64_t *pos, int64_t heads,
                         int64_t h) {
    int64_t r = b;
    for (int a = 0; a < G->rank; ++a) r = r * ext[a] + pos[a];
    return r * heads + h;
}

/* Key position kf (flat over the sample extents e) of query qpos: slot n or -1, with rpb index. */
static int64_t key_slot(const geo *G, const natten_problem *p, const int64_t *qpos, int64_t kf,
                        int64_t *kpos, int64_t *ridx) {
    for (int a = G->rank - 1; a >= 0; --a) {
        kpos[a] = kf % G->e[a];
        kf /= G->e[a];
    }
    int64_t n = 0;
    for (int a = 0; a < G->rank; ++a) {
        const int64_t sl = G->tab[a][qpos[a] * G->e[a] + kpos[a]];
        if (sl < 0) return -1;
        n = n * p->kernel[a] + sl;
        ridx[a] = (kpos[a] - qpos[a]) / p->dilation[a] + p->kernel[a] - 1;
    }
    return n;
}

/* One routine for all three ops; any output may be NULL. */
static void oracle_all(const natten_problem *p, const double *q, const double *k, const double *v,
                       const double *rpb, const double *ek, const double *ev, double *out, double *lse,
                       double *logits, const double *attn, double *av_out) {
    geo G;
    geo_init(&G, p);
    const long double scale = isnan(p->scale) ? 1.0L / sqrtl((long double)p->head_dim) : p->scale;
    int64_t rpb_stride[3] = {1, 1, 1};
    int64_t rpb_per_head = 1;
    for (int a = p->rank - 1; a >= 0; --a) {
        rpb_stride[a] = rpb_per_head;
        rpb_per_head *= 2 * p->kernel[a] - 1;
    }
    int64_t n_keys_max = 1;
    for (int a = 0; a < p->rank; ++a) n_keys_max *= p->extent[a];
    long double *lg = (long double *)malloc(sizeof(long double) * (size_t)(n_keys_max + G.N + 1));
    int64_t *slot_of = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n_keys_max + 1));
    long double *acc = (long double *)malloc(sizeof(long double) * (size_t)(G.Dv + 1));

    for (int64_t b = 0; b < p->batch; ++b) {
        geo_sample(&G, p, b);
        int64_t n_keys = 1;
        for (int a = 0; a < G.rank; ++a) n_keys *= G.e[a];
        for (int64_t of = 0; of < G.n_out; ++of) {
            int64_t opos[3], qpos[3], f = of;
            for (int a = G.rank - 1; a >= 0; --a) opos[a] = f % G.O[a], f /= G.O[a];
            int valid = 1;
            for (int a = 0; a < G.rank; ++a) {
                qpos[a] = opos[a] * p->out_stride[a];
                if (qpos[a] >= G.e[a]) valid = 0;
            }
            for (int64_t h = 0; h < G.H; ++h) {
                const int64_t hk = h / (G.H / G.Hkv);
                const int64_t orow = row_index(&G, G.O, b, opos, G.H, h);
                if (logits)
                    for (int64_t n = 0; n < G.kk; ++n) logits[orow * G.kk + n] = -INFINITY;
                if (!valid) {
                    if (out) for (int64_t c = 0; c < G.Dv; ++c) out[orow * G.Dv + c] = 0.0;
                    if (lse) lse[orow] = -INFINITY;
                    if (av_out) for (int64_t c = 0; c < G.Dv; ++c) av_out[orow * G.Dv + c] = 0.0;
                    continue;
                }
                const int64_t qrow = row_index(&G, G.X, b, qpos, G.H, h);
                long double m = -INFINITY;
                for (int64_t kf = 0; kf < n_keys; ++kf) {
                    int64_t kpos[3], ridx[3];
                    slot_of[kf] = key_slot(&G, p, qpos, kf, kpos, ridx);
                    if (slot_of[kf] < 0 || !q) continue;
                    const int64_t krow = row_index(&G, G.X, b, kpos, G.Hkv, hk);
                    long double dot = 0;
                    for (int64_t c = 0; c < G.D; ++c)
                        dot += (long double)q[qrow * G.D + c] * k[krow * G.D + c];
                    long double l = scale * dot;
                    if (rpb) {
                        int64_t ri = h * rpb_per_head;
                        for (int a = 0; a < G.rank; ++a) ri += ridx[a] * rpb_stride[a];
                        l += rpb[ri];
                    }
                    lg[kf] = l;
                    if (l > m) m = l;
                    if (logits) logits[orow * G.kk + slot_of[kf]] = (double)l;
                }
                if (attn && av_out) {
                    for (int64_t c = 0; c < G.Dv; ++c) acc[c] = 0;
                    for (int64_t kf = 0; kf < n_keys; ++kf) {
                        if (slot_of[kf] < 0) continue;
                        int64_t kpos[3], ridx[3];
                        key_slot(&G, p, qpos, kf, kpos, ridx);
                        const int64_t vrow = row_index(&G, G.X, b, kpos, G.Hkv, hk);
                        const long double w = attn[orow * G.kk + slot_of[kf]];
                        for (int64_t c = 0; c < G.Dv; ++c) acc[c] += w * v[vrow * G.Dv + c];
                    }
                    for (int64_t c = 0; c < G.Dv; ++c) av_out[orow * G.Dv + c] = (double)acc[c];
                }
                if (!(out || lse) || !q) continue;
                for (int64_t e = 0; e < G.N; ++e) {
                    long double dot = 0;
                    const int64_t erow = (b * G.N + e) * G.Hkv + hk;
                    for (int64_t c = 0; c < G.D; ++c) dot += (long double)q[qrow * G.D + c] * ek[erow * G.D + c];
                    lg[n_keys + e] = scale * dot;
                    if (lg[n_keys + e] > m) m = lg[n_keys + e];
                }
                long double sum = 0;
                for (int64_t c = 0; c < G.Dv; ++c) acc[c] = 0;
                for (int64_t kf = 0; kf < n_keys; ++kf) {
                    if (slot_of[kf] < 0) continue;
                    int64_t kpos[3], ridx[3];
                    key_slot(&G, p, qpos, kf, kpos, ridx);
                    const int64_t vrow = row_index(&G, G.X, b, kpos, G.Hkv, hk);
                    const long double w = expl(lg[kf] - m);
                    sum += w;
                    for (int64_t c = 0; c < G.Dv; ++c) acc[c] += w * v[vrow * G.Dv + c];
                }
                for (int64_t e = 0; e < G.N; ++e) {
                    const long double w = expl(lg[n_keys + e] - m);
                    const int64_t erow = (b * G.N + e) * G.Hkv + hk;
                    sum += w;
                    for (int64_t c = 0; c < G.Dv; ++c) acc[c] += w * ev[erow * G.Dv + c];
                }
                if (out) for (int64_t c = 0; c < G.Dv; ++c) out[orow * G.Dv + c] = (double)(acc[c] / sum);
                if (lse) lse[orow] = (double)(m + logl(sum));
            }
        }
    }
    geo_free(&G);
    free(lg);
    free(slot_of);
    free(acc);
}

void oracle_fused(const natten_problem *p, const double *q, const double *k, const double *v,
                  const double *rpb, const double *ek, const double *ev, double *out, double *lse) {
    oracle_all(p, q, k, v, rpb, ek, ev, out, lse, NULL, NULL, NULL);
}

void oracle_qk(const natten_problem *p, const double *q, const double *k, const double *rpb,
               double *logits) {
    oracle_all(p, q, k, NULL, rpb, NULL, NULL, NULL, NULL, logits, NULL, NULL);
}

void oracle_av(const natten_problem *p, const double *attn, const double *v, double *out) {
    oracle_all(p, NULL, NULL, v, NULL, NULL, NULL, NULL, NULL, NULL, attn, out);
}
