/*
 * support.h -- shared helpers for the C tests (tests/c/test_*.c):
 *   - pass/fail counting and the "N passed, N failed" summary;
 *   - a deterministic RNG;
 *   - strided host tensors (contiguous, padded, permuted) of any dtype;
 *   - an independent brute-force oracle: per-axis neighbour tables written
 *     from the upstream definitions (centre clamp over an enumerated dilation
 *     group), dense masked attention in long double;
 *   - comparison with tolerances and error reporting.
 * Nothing here includes src/core/window.h.
 */
#ifndef NATTEN_TEST_SUPPORT_H
#define NATTEN_TEST_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#include "natten.h"

/* ---- reporting --------------------------------------------------------- */
extern int t_passed, t_failed;
void t_check(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "<name>: N passed, N failed" and returns the process exit code. */
int t_summary(const char *name);

/* ---- RNG ---------------------------------------------------------------- */
typedef struct t_rng { uint64_t s; } t_rng;
void t_rng_seed(t_rng *r, uint64_t seed);
uint64_t t_rng_u64(t_rng *r);
double t_rng_uniform(t_rng *r, double lo, double hi);
int64_t t_rng_int(t_rng *r, int64_t lo, int64_t hi); /* inclusive */

/* ---- strided host tensors ---------------------------------------------- */
enum t_layout {
    T_CONTIG = 0,   /* row-major, as natten_tensor_contiguous */
    T_PADDED = 1,   /* row-major with gaps after every axis */
    T_PERMUTED = 2, /* reversed axis order in memory (column-major), with gaps */
    T_NUM_LAYOUTS = 3
};

typedef struct tbuf {
    natten_tensor t;
    natten_dtype dt;
    int ndim;
    int64_t shape[NATTEN_MAX_DIMS];
    int64_t count;      /* logical elements */
    unsigned char *mem; /* whole allocation (gaps included) */
    size_t bytes;
    unsigned char *snap; /* snapshot for tbuf_unchanged */
} tbuf;

/* Allocate a tensor of the given kind for p, every byte set to a sentinel. */
void tbuf_init(tbuf *tb, const natten_problem *p, natten_tensor_kind kind, int layout);
void tbuf_free(tbuf *tb);
int64_t tbuf_offset(const tbuf *tb, int64_t flat); /* element offset of logical index */
double tbuf_get(const tbuf *tb, int64_t flat);
void tbuf_set(tbuf *tb, int64_t flat, double v);
void tbuf_fill_random(tbuf *tb, t_rng *r, double lo, double hi);
void tbuf_to_double(const tbuf *tb, double *dst); /* logical row-major */
void tbuf_from_double(tbuf *tb, const double *src);
void tbuf_fill_sentinel(tbuf *tb); /* 0xA5 bytes everywhere */
void tbuf_snapshot(tbuf *tb);
int tbuf_unchanged(const tbuf *tb); /* 1 if memory equals the snapshot */

/* ---- oracle -------------------------------------------------------------- */
/*
 * Neighbour table of one axis: slot[i*L + x] = slot of key x for query i,
 * or -1 when x is not a neighbour (built from the upstream definitions).
 */
void oracle_axis_slots(int64_t L, int64_t K, int64_t d, int64_t s, int causal, int64_t *slot);

/*
 * Dense masked attention over logical row-major double arrays (shapes as in
 * natten.h).  Any output pointer may be NULL.  rpb/extra may be NULL.
 *   fused:  out, lse          (lse -inf / out 0 on masked varlen rows)
 *   qk:     logits            (-inf at masked slots)
 *   av:     av_out from attn  (masked slots ignored)
 */
void oracle_fused(const natten_problem *p, const double *q, const double *k, const double *v,
                  const double *rpb, const double *ek, const double *ev, double *out, double *lse);
void oracle_qk(const natten_problem *p, const double *q, const double *k, const double *rpb,
               double *logits);
void oracle_av(const natten_problem *p, const double *attn, const double *v, double *out);

/* Element count of a kind's logical shape. */
int64_t t_count(const natten_problem *p, natten_tensor_kind kind);

/* ---- comparison ---------------------------------------------------------- */
/* Tolerances suited to output rounding in dtype dt. */
void t_tol(natten_dtype dt, double *atol, double *rtol);
/*
 * Compare got (tensor) against want (logical doubles): equal infinities
 * required, |g-w| <= atol + rtol*|w| otherwise.  Reports the worst element.
 * Returns 1 on success.
 */
int t_compare(const char *what, const tbuf *got, const double *want, double atol, double rtol);
int t_compare_arrays(const char *what, const double *got, const double *want, int64_t n, double atol,
                     double rtol);

const char *t_dtype_name(natten_dtype dt);


/* ---- test cases ---------------------------------------------------------- */
/* A compact problem description; zero fields get defaults (1, or not set). */
typedef struct t_case {
    const char *name;
    int rank;
    int64_t B, H, Hkv, D, Dv;
    int64_t X[3], K[3], d[3], gs[3], os[3];
    int causal[3];
    int rpb;        /* use a relative position bias */
    int64_t extra;  /* num_extra_kv */
    int varlen;     /* random per-sample extents */
    double scale;   /* 0 = default (NaN); use T_SCALE_ZERO for an explicit 0.0 */
} t_case;
#define T_SCALE_ZERO (-12345.0)

/*
 * Fill *p from c with dtype dt and impl.  If c->varlen, per-sample extents
 * are drawn from r into varlen_buf (capacity >= B*rank) and p points at it.
 */
void t_case_problem(const t_case *c, natten_dtype dt, natten_impl impl, t_rng *r, int32_t *varlen_buf,
                    natten_problem *p);
/* One-line description of a problem, for failure messages. */
const char *t_problem_str(const natten_problem *p, char *buf, size_t cap);
/* 1 if, apart from the logical elements, the allocation equals the snapshot
 * (no write landed in a gap or outside the view). */
int tbuf_gaps_unchanged(const tbuf *tb);

/* ---- fast-kernel test problems (fast_cases.c) ----------------------------- */
/* A row of the fast-kernel tests' problem tables; dil, gs and os 0 mean 1. */
typedef struct t_fcase {
    const char *name;
    int rank;
    int64_t B, H, Hkv, D, Dv;
    int64_t L[3], K[3], dil[3], gs[3], os[3];
    int causal[3];
    int64_t NE; /* num_extra_kv */
    int rpb;
    int varlen; /* per-sample extents drawn from the rng, sample 0 at full size */
    natten_dtype dt;
    int layout;
} t_fcase;

/* The problem of row c; varlen extents go into varlen_buf (>= B*rank). */
natten_problem t_fcase_problem(const t_fcase *c, int32_t *varlen_buf, t_rng *rng);

/* Every ISA level; natten_cpu_isa_set refuses those this CPU lacks. */
#define T_NUM_CPU_ISAS 4
extern const natten_cpu_isa t_cpu_isas[T_NUM_CPU_ISAS];

/* A tensor's logical elements as a malloc'd row-major double array. */
double *t_to_double(const tbuf *tb);
/* t_compare for a gradient against the reference's (want): tolerance f32
 * 1e-4, f16 4e-3, bf16 3e-2 (dtype dt), relative, and times the largest
 * finite |want| (at least 1e-3) for the absolute part. */
int t_compare_grad(const char *what, const tbuf *got, const double *want, natten_dtype dt);

#endif /* NATTEN_TEST_SUPPORT_H */
