/*
 * test_window.c -- the window rule: every worked neighbour-set example of
 * spec §3.1/§3.3 and upstream §1.6 through natten_axis_window, exactly; and
 * natten_axis_window against the oracle's independent tables for every
 * small configuration.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

/* "k0,k1,...|..." : valid keys of each query in slot order. */
static void keys_string(int64_t L, int64_t K, int64_t d, int64_t s, int causal, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (int64_t i = 0; i < L; ++i) {
        natten_window w;
        if (natten_axis_window(L, K, d, s, causal, i, &w) != NATTEN_STATUS_SUCCESS) {
            snprintf(buf, cap, "error: %s", natten_last_error_message());
            return;
        }
        for (int64_t k = w.valid_begin; k < w.valid_end; ++k)
            n += (size_t)snprintf(buf + n, cap - n, "%s%lld", k == w.valid_begin ? "" : ",",
                                  (long long)(w.start + k * w.step));
        if (i + 1 < L) n += (size_t)snprintf(buf + n, cap - n, "|");
    }
}

typedef struct example {
    const char *source;
    int64_t L, K, s, d;
    int causal;
    const char *want;
} example;

static const example examples[] = {
    /* spec §3.1 */
    {"spec 3.1", 8, 3, 1, 1, 0, "0,1,2|0,1,2|1,2,3|2,3,4|3,4,5|4,5,6|5,6,7|5,6,7"},
    {"spec 3.1", 10, 5, 1, 1, 0,
     "0,1,2,3,4|0,1,2,3,4|0,1,2,3,4|1,2,3,4,5|2,3,4,5,6|3,4,5,6,7|4,5,6,7,8|5,6,7,8,9|5,6,7,8,9|"
     "5,6,7,8,9"},
    {"spec 3.1", 7, 3, 1, 2, 0, "0,2,4|1,3,5|0,2,4|1,3,5|2,4,6|1,3,5|2,4,6"},
    {"spec 3.1", 13, 3, 1, 4, 0,
     "0,4,8|1,5,9|2,6,10|3,7,11|0,4,8|1,5,9|2,6,10|3,7,11|4,8,12|1,5,9|2,6,10|3,7,11|4,8,12"},
    /* spec §3.3 */
    {"spec 3.3", 5, 3, 1, 1, 1, "0|0,1|0,1,2|1,2,3|2,3,4"},
    /* upstream §1.6 (columns L, K, s, d, causal) */
    {"upstream 1.6", 8, 3, 1, 1, 0, "0,1,2|0,1,2|1,2,3|2,3,4|3,4,5|4,5,6|5,6,7|5,6,7"},
    {"upstream 1.6", 8, 3, 1, 2, 0, "0,2,4|1,3,5|0,2,4|1,3,5|2,4,6|3,5,7|2,4,6|3,5,7"},
    {"upstream 1.6", 9, 3, 1, 2, 0, "0,2,4|1,3,5|0,2,4|1,3,5|2,4,6|3,5,7|4,6,8|3,5,7|4,6,8"},
    {"upstream 1.6", 8, 4, 1, 1, 0,
     "0,1,2,3|0,1,2,3|0,1,2,3|1,2,3,4|2,3,4,5|3,4,5,6|4,5,6,7|4,5,6,7"},
    {"upstream 1.6", 8, 3, 1, 1, 1, "0|0,1|0,1,2|1,2,3|2,3,4|3,4,5|4,5,6|5,6,7"},
    {"upstream 1.6", 8, 3, 3, 1, 0, "0,1,2|0,1,2|0,1,2|3,4,5|3,4,5|3,4,5|5,6,7|5,6,7"},
    {"upstream 1.6", 8, 4, 2, 1, 0,
     "0,1,2,3|0,1,2,3|1,2,3,4|1,2,3,4|3,4,5,6|3,4,5,6|4,5,6,7|4,5,6,7"},
    {"upstream 1.6", 8, 4, 4, 1, 0,
     "0,1,2,3|0,1,2,3|0,1,2,3|0,1,2,3|4,5,6,7|4,5,6,7|4,5,6,7|4,5,6,7"},
    {"upstream 1.6", 8, 3, 2, 1, 1, "0|0,1|1,2|1,2,3|3,4|3,4,5|5,6|5,6,7"},
    {"upstream 1.6", 8, 3, 3, 1, 1, "0|0,1|0,1,2|3|3,4|3,4,5|5,6|5,6,7"},
    {"upstream 1.6", 8, 8, 1, 1, 0,
     "0,1,2,3,4,5,6,7|0,1,2,3,4,5,6,7|0,1,2,3,4,5,6,7|0,1,2,3,4,5,6,7|0,1,2,3,4,5,6,7|"
     "0,1,2,3,4,5,6,7|0,1,2,3,4,5,6,7|0,1,2,3,4,5,6,7"},
    /* upstream §1.4 text: L=8, K=3, s=3 windows {0,1,2} {3,4,5} {5,6,7} */
    {"upstream 1.4", 8, 3, 3, 1, 0, "0,1,2|0,1,2|0,1,2|3,4,5|3,4,5|3,4,5|5,6,7|5,6,7"},
    /* even K, upstream rule (K/2 left, K/2-1 right): L=4, K=2, i=3 -> {2,3}.
     * natten-mlx's pure backend gives [1,2] there (spec §3.1, §14); natten.h
     * follows upstream, where the query stays inside its window. */
    {"even K (natten.h)", 4, 2, 1, 1, 0, "0,1|0,1|1,2|2,3"},
};

static void test_examples(void) {
    char got[4096];
    for (size_t e = 0; e < sizeof examples / sizeof examples[0]; ++e) {
        const example *x = &examples[e];
        keys_string(x->L, x->K, x->d, x->s, x->causal, got, sizeof got);
        t_check(strcmp(got, x->want) == 0, "%s L=%lld K=%lld s=%lld d=%lld causal=%d: got %s want %s",
                x->source, (long long)x->L, (long long)x->K, (long long)x->s, (long long)x->d,
                x->causal, got, x->want);
    }
}

/* Causal slot layout (spec §3.3): L=5, K=3: i=0 -> [-inf,-inf,k0], i=1 -> [-inf,k0,k1]. */
static void test_causal_slots(void) {
    natten_window w;
    natten_axis_window(5, 3, 1, 1, 1, 0, &w);
    t_check(w.valid_begin == 2 && w.valid_end == 3 && w.start + 2 * w.step == 0, "causal i=0 slots");
    natten_axis_window(5, 3, 1, 1, 1, 1, &w);
    t_check(w.valid_begin == 1 && w.valid_end == 3 && w.start + 1 * w.step == 0, "causal i=1 slots");
    natten_axis_window(5, 3, 1, 1, 1, 4, &w);
    t_check(w.valid_begin == 0 && w.valid_end == 3 && w.start == 2, "causal i=4 slots");
    /* with dilation: key of slot k is i - (K-1-k)*d */
    natten_axis_window(9, 3, 2, 1, 1, 7, &w);
    t_check(w.valid_begin == 0 && w.start == 3 && w.step == 2, "causal dilated i=7 -> 3,5,7");
    natten_axis_window(9, 3, 2, 1, 1, 3, &w);
    t_check(w.valid_begin == 1 && w.start + w.step == 1, "causal dilated i=3 -> -,1,3");
}

/* 2-D example (upstream §1.6): 6x6, K=(3,3), query (0,5) -> {0,1,2} x {3,4,5}. */
static void test_2d_example(void) {
    natten_window w0, w1;
    natten_axis_window(6, 3, 1, 1, 0, 0, &w0);
    natten_axis_window(6, 3, 1, 1, 0, 5, &w1);
    t_check(w0.start == 0 && w0.step == 1 && w0.valid_begin == 0 && w0.valid_end == 3, "2d axis 0");
    t_check(w1.start == 3 && w1.step == 1 && w1.valid_begin == 0 && w1.valid_end == 3, "2d axis 1");
}

/* natten_axis_window vs the oracle tables, every configuration with L <= 24. */
static void test_exhaustive(void) {
    int64_t *tab = (int64_t *)malloc(sizeof(int64_t) * 24 * 24);
    long configs = 0, bad_configs = 0;
    for (int64_t L = 1; L <= 24; ++L)
        for (int64_t K = 1; K <= L; ++K)
            for (int64_t d = 1; d * K <= L; ++d)
                for (int64_t s = 1; s <= K; ++s)
                    for (int causal = 0; causal <= 1; ++causal) {
                        oracle_axis_slots(L, K, d, s, causal, tab);
                        int ok = 1;
                        for (int64_t i = 0; i < L && ok; ++i) {
                            natten_window w;
                            if (natten_axis_window(L, K, d, s, causal, i, &w) != NATTEN_STATUS_SUCCESS) {
                                ok = 0;
                                break;
                            }
                            int64_t seen = 0;
                            for (int64_t k = 0; k < K; ++k) {
                                const int valid = k >= w.valid_begin && k < w.valid_end;
                                if (!valid) continue;
                                const int64_t x = w.start + k * w.step;
                                if (x < 0 || x >= L || tab[i * L + x] != k) ok = 0;
                                ++seen;
                            }
                            int64_t members = 0;
                            for (int64_t x = 0; x < L; ++x) members += tab[i * L + x] >= 0;
                            if (members != seen) ok = 0;
                            /* non-causal windows always hold K keys and include the query
                             * when s == 1; causal windows always include the query */
                            if (!causal && seen != K) ok = 0;
                            if ((causal || s == 1) && tab[i * L + i] < 0) ok = 0;
                            if (!ok)
                                fprintf(stderr, "mismatch L=%lld K=%lld d=%lld s=%lld causal=%d i=%lld\n",
                                        (long long)L, (long long)K, (long long)d, (long long)s, causal,
                                        (long long)i);
                        }
                        ++configs;
                        bad_configs += !ok;
                    }
    t_check(bad_configs == 0, "exhaustive window vs oracle: %ld of %ld configurations differ", bad_configs,
            configs);
    printf("exhaustive: %ld configurations (L <= 24) compared\n", configs);
    free(tab);
}

static void test_bad_window_args(void) {
    natten_window w;
    const struct { int64_t L, K, d, s, i; } bad[] = {
        {0, 1, 1, 1, 0}, {5, 0, 1, 1, 0}, {5, 6, 1, 1, 0}, {5, 3, 2, 1, 0},
        {5, 3, 1, 4, 0}, {5, 3, 1, 0, 0}, {5, 3, 1, 1, 5}, {5, 3, 1, 1, -1},
    };
    for (size_t j = 0; j < sizeof bad / sizeof bad[0]; ++j) {
        natten_status st = natten_axis_window(bad[j].L, bad[j].K, bad[j].d, bad[j].s, 0, bad[j].i, &w);
        t_check(st == NATTEN_STATUS_INVALID_ARGUMENT &&
                    strstr(natten_last_error_message(), "natten_axis_window") != NULL,
                "natten_axis_window bad case %zu: status %s, message '%s'", j, natten_status_string(st),
                natten_last_error_message());
    }
    t_check(natten_axis_window(5, 3, 1, 1, 0, 0, NULL) == NATTEN_STATUS_NULL_POINTER, "w NULL");
}

int main(void) {
    test_examples();
    test_causal_slots();
    test_2d_example();
    test_exhaustive();
    test_bad_window_args();
    return t_summary("test_window");
}
