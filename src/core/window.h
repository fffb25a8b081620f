/*
 * window.h -- THE neighbourhood window rule.  Every kernel (reference, fast
 * CPU, and the CUDA sources, which mirror this file line by line in
 * src/cuda/window.cuh) gets its neighbour sets from here and nowhere else.
 *
 * Invariants the caller guarantees (natten_problem_validate checks them):
 * 1 <= K, d >= 1, K*d <= L, 1 <= s <= K, 0 <= i < L.
 */
#ifndef NATTEN_CORE_WINDOW_H
#define NATTEN_CORE_WINDOW_H

#include <stdint.h>

#include "natten.h"

static inline int64_t nw_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t nw_max(int64_t a, int64_t b) { return a > b ? a : b; }

/*
 * Query i on an axis of extent L sits in dilation group r = i mod d at local
 * index p = i div d; the group has n = ceil((L - r)/d) members.  GNA stride s
 * groups local indices by p div s; the group's leader decides the window:
 *   non-causal: leader = min(t*s + s/2, n-1)      (centre of the group)
 *               local start = clamp(leader - K/2, 0, n - K): exactly K keys,
 *               shifted inward at the borders (even K: K/2 left, K/2-1 right)
 *   causal:     leader = min(t*s + s-1, n-1)      (last of the group)
 *               local start = leader - K + 1; slot k is valid iff its local
 *               index is in [0, p]  (masked slots lead for s == 1: slot K-1
 *               is the query itself, natten-mlx's layout)
 * Key of slot k = (local_start + k)*d + r.
 */
static inline natten_window natten_window_of(int64_t L, int64_t K, int64_t d, int64_t s,
                                             int causal, int64_t i) {
    const int64_t r = i % d;
    const int64_t p = i / d;
    const int64_t n = (L - r - 1) / d + 1; /* ceil((L-r)/d) without overflow; r < L */
    const int64_t t = p / s;
    natten_window w;
    w.step = d;
    if (causal) {
        const int64_t leader = t * s + nw_min(s - 1, n - 1 - t * s); /* t*s <= p <= n-1 */
        const int64_t local_start = leader - K + 1;
        w.start = local_start * d + r;
        w.valid_begin = nw_max(0, -local_start);
        w.valid_end = nw_min(K, p - local_start + 1);
    } else {
        const int64_t leader = t * s + nw_min(s / 2, n - 1 - t * s);
        const int64_t local_start = nw_max(0, nw_min(leader - K / 2, n - K));
        w.start = local_start * d + r;
        w.valid_begin = 0;
        w.valid_end = K;
    }
    return w;
}

/*
 * Relative-position-bias index of slot k (spec 3.9): (key - i)/d + K - 1,
 * in [0, 2K-2] whenever gna_stride == 1 (RPB is rejected otherwise).
 */
static inline int64_t natten_rpb_index(const natten_window *w, int64_t K, int64_t i, int64_t k) {
    return (w->start + k * w->step - i) / w->step + K - 1;
}

#endif /* NATTEN_CORE_WINDOW_H */
