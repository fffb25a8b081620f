/*
 * window.cuh -- the neighbourhood window rule for CUDA device code.
 *
 * This is a line-by-line mirror of natten_window_of / natten_rpb_index in
 * src/core/window.h (THE window rule; read that file's comment for the
 * derivation).  Same formulas, same variable names; only the integer type
 * differs (int: every extent handed to the CUDA tier is < 2^31, checked in
 * natten_mlx/_core/cuda.py).  If window.h changes, change this file with it;
 * tests/python/test_cuda.py checks both against the same worked examples.
 *
 * Invariants the caller guarantees: 1 <= K, d >= 1, K*d <= L, 1 <= s <= K,
 * 0 <= i < L.
 */
#ifndef NATTEN_CUDA_WINDOW_CUH
#define NATTEN_CUDA_WINDOW_CUH

#ifndef NA_DEV
#define NA_DEV __device__ __forceinline__
#endif

struct na_window {
    int start;       /* key of slot 0 (may be < 0 for causal)  */
    int step;        /* dilation                               */
    int valid_begin; /* first valid slot                       */
    int valid_end;   /* one past the last valid slot           */
};

NA_DEV int na_imin(int a, int b) { return a < b ? a : b; }
NA_DEV int na_imax(int a, int b) { return a > b ? a : b; }

/* natten_window_of (src/core/window.h), verbatim. */
NA_DEV na_window na_window_of(int L, int K, int d, int s, int causal, int i) {
    const int r = i % d;
    const int p = i / d;
    const int n = (L - r + d - 1) / d;
    const int t = p / s;
    na_window w;
    w.step = d;
    if (causal) {
        const int leader = na_imin(t * s + s - 1, n - 1);
        const int local_start = leader - K + 1;
        w.start = local_start * d + r;
        w.valid_begin = na_imax(0, -local_start);
        w.valid_end = na_imin(K, p - local_start + 1);
    } else {
        const int leader = na_imin(t * s + s / 2, n - 1);
        const int local_start = na_imax(0, na_imin(leader - K / 2, n - K));
        w.start = local_start * d + r;
        w.valid_begin = 0;
        w.valid_end = K;
    }
    return w;
}

/* natten_rpb_index (src/core/window.h), verbatim: (key - i)/d + K - 1. */
NA_DEV int na_rpb_index(const na_window &w, int K, int i, int k) {
    return (w.start + k * w.step - i) / w.step + K - 1;
}

/*
 * Inverse of the rule along one axis (used by the gather-style backward
 * kernels, which own one key each and need every query that reads it).
 * In a dilation group the first and last valid keys of a query's window,
 * local_start + valid_begin and local_start + valid_end - 1, never decrease
 * with the query's local index p (the leader and the clamped start are
 * monotone in p).  So the queries whose window holds key j form one
 * contiguous run [*p_lo, *p_hi] of local indices in j's group; both ends are
 * found by binary search.  Returns 0 when the run is empty.
 */
NA_DEV int na_first_valid_local(int L, int K, int d, int s, int causal, int r, int p) {
    const na_window w = na_window_of(L, K, d, s, causal, p * d + r);
    return (w.start - r) / d + w.valid_begin; /* exact: start - r is a multiple of d */
}
NA_DEV int na_last_valid_local(int L, int K, int d, int s, int causal, int r, int p) {
    const na_window w = na_window_of(L, K, d, s, causal, p * d + r);
    /* start - r may be negative (causal); add a multiple of d before dividing */
    return (w.start - r + K * d) / d - K + w.valid_end - 1;
}
NA_DEV int na_queries_of_key(int L, int K, int d, int s, int causal, int j, int *p_lo, int *p_hi) {
    const int r = j % d;
    const int jl = j / d;
    const int n = (L - r + d - 1) / d;
    /* first p with last_valid(p) >= jl */
    int lo = 0, hi = n; /* answer in [lo, hi], hi = n means none */
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (na_last_valid_local(L, K, d, s, causal, r, mid) >= jl) hi = mid; else lo = mid + 1;
    }
    const int first = lo;
    /* last p with first_valid(p) <= jl: one before the first p with first_valid(p) > jl */
    lo = 0; hi = n;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (na_first_valid_local(L, K, d, s, causal, r, mid) > jl) hi = mid; else lo = mid + 1;
    }
    const int last = lo - 1;
    *p_lo = first;
    *p_hi = last;
    return first <= last;
}

#endif /* NATTEN_CUDA_WINDOW_CUH */
