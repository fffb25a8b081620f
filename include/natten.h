/*
 * natten.h -- neighborhood attention (NA) in C11.  The only public header.
 *
 * Quick tour
 * ----------
 *   natten_problem p;
 *   natten_problem_init(&p, 2);                  // rank 2, defaults everywhere
 *   p.batch = 1; p.heads = 4; p.kv_heads = 4; p.head_dim = p.head_dim_v = 32;
 *   p.extent[0] = p.extent[1] = 32;  p.kernel[0] = p.kernel[1] = 7;
 *   natten_tensor q, k, v, o, lse;               // element strides, any layout
 *   natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, qbuf, &q);   ... and so on
 *   if (natten_na_forward(&p, &q, &k, &v, NULL, NULL, NULL, &o, &lse) != NATTEN_STATUS_SUCCESS)
 *       fprintf(stderr, "%s\n", natten_last_error_message());
 *
 * Layout: heads-last everywhere, as in natten-mlx and upstream NATTEN >= 0.20.
 * For a problem of rank r with spatial extent X[0..r-1]:
 *
 *   q, dq             [B, X0..X(r-1), H,    D ]
 *   k, dk             [B, X0..X(r-1), H_kv, D ]
 *   v, dv             [B, X0..X(r-1), H_kv, Dv]
 *   out, dout         [B, O0..O(r-1), H,    Dv]      O_a = ceil(X_a / out_stride_a)
 *   lse               [B, O0..O(r-1), H]             f32 (f64 when dtype is f64)
 *   logits/attn       [B, O0..O(r-1), H,    KK]      KK = prod(kernel), dtype of the problem
 *   extra_k, dextra_k [B, N_extra, H_kv, D ]
 *   extra_v, dextra_v [B, N_extra, H_kv, Dv]
 *   rpb, drpb         [H, 2*K0-1 (, 2*K1-1 (, 2*K2-1))]   dtype of the problem
 *
 * Every tensor is a data pointer plus one element stride per logical axis, so
 * transposed or padded views work without copies.  Query head h reads kv head
 * h / (H / H_kv) (GQA/MQA).
 *
 * Window rule (implemented once, in src/core/window.c; see natten_axis_window):
 * per axis, the neighbour set of a query is
 *   - non-causal: the K members of the query's dilation group centred on the
 *     query (or on its GNA stride-group leader), shifted inward at borders so
 *     it always holds exactly K keys (upstream NATTEN / natten-mlx semantics;
 *     even K takes K/2 on the left and K/2-1 on the right);
 *   - causal: slot k holds key  i - (K-1-k)*d  (slot K-1 is the query itself);
 *     slots before the start of the axis are masked (-inf logit, weight 0).
 * Multi-dimensional neighbourhoods are Cartesian products, flattened
 * row-major over the kernel axes (slot n = (a*K1 + b)*K2 + c).
 *
 * Two kinds of stride:
 *   - out_stride (natten-mlx's `stride`): output row o on an axis is the
 *     full-resolution query o*s; keys are never subsampled.
 *   - gna_stride (upstream NATTEN >= 0.20 "GNA"): queries in a stride group
 *     share the window of the group's leader; the output keeps the query shape.
 *
 * Errors: every function returns a natten_status.  On failure nothing has
 * been written to any output, and natten_last_error_message() (thread-local)
 * names the function, the argument, its value and the rule broken.  The
 * library never aborts or exits on user input.
 */
#ifndef NATTEN_H
#define NATTEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define NATTEN_API __declspec(dllexport)
#else
#define NATTEN_API __attribute__((visibility("default")))
#endif

#define NATTEN_VERSION_MAJOR 0
#define NATTEN_VERSION_MINOR 3
#define NATTEN_VERSION_PATCH 3

#define NATTEN_MAX_RANK 3
/* batch + up to 3 spatial axes + heads + channels */
#define NATTEN_MAX_DIMS (NATTEN_MAX_RANK + 3)

/* ------------------------------------------------------------------------ */
/* Status                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum natten_status {
    NATTEN_STATUS_SUCCESS = 0,
    NATTEN_STATUS_INVALID_ARGUMENT = 1, /* a value breaks a documented rule   */
    NATTEN_STATUS_NULL_POINTER = 2,     /* a required pointer is NULL         */
    NATTEN_STATUS_ALIASING = 3,         /* an output overlaps another tensor  */
    NATTEN_STATUS_OVERFLOW = 4,         /* element counts overflow int64      */
    NATTEN_STATUS_UNSUPPORTED = 5,      /* valid, but not implemented here    */
    NATTEN_STATUS_OUT_OF_MEMORY = 6,
    NATTEN_STATUS_INTERNAL = 7
} natten_status;

/** Stable name of a status ("NATTEN_STATUS_SUCCESS", ...).  Never NULL. */
NATTEN_API const char *natten_status_string(natten_status status);

/** Message of the last failed call on this thread ("" if none).  Never NULL. */
NATTEN_API const char *natten_last_error_message(void);

/* ------------------------------------------------------------------------ */
/* Problem descriptor                                                        */
/* ------------------------------------------------------------------------ */

typedef enum natten_dtype {
    NATTEN_DTYPE_F32 = 0,
    NATTEN_DTYPE_F16 = 1,  /* IEEE binary16, stored as uint16_t bits */
    NATTEN_DTYPE_BF16 = 2, /* bfloat16, stored as uint16_t bits      */
    NATTEN_DTYPE_F64 = 3
} natten_dtype;

/** Which kernels run.  AUTO picks the fastest one that supports the problem. */
typedef enum natten_impl {
    NATTEN_IMPL_AUTO = 0,
    NATTEN_IMPL_REFERENCE = 1, /* plain loops, double accumulation: the oracle */
    NATTEN_IMPL_FAST = 2       /* SIMD + threads; UNSUPPORTED if it cannot run */
} natten_impl;

typedef struct natten_problem {
    int rank;           /* 1, 2 or 3 spatial axes                              */
    int64_t batch;      /* B >= 1                                              */
    int64_t heads;      /* query heads H >= 1                                  */
    int64_t kv_heads;   /* key/value heads H_kv >= 1, H % H_kv == 0            */
    int64_t head_dim;   /* D: channels of q and k                              */
    int64_t head_dim_v; /* Dv: channels of v and out                           */

    /* Per spatial axis (entries >= rank are ignored). */
    int64_t extent[NATTEN_MAX_RANK];     /* X_a (for varlen: the padded max)   */
    int64_t kernel[NATTEN_MAX_RANK];     /* K_a, 1 <= K_a <= X_a; even allowed  */
    int64_t dilation[NATTEN_MAX_RANK];   /* d_a >= 1, d_a*K_a <= X_a            */
    int64_t gna_stride[NATTEN_MAX_RANK]; /* 1 <= s_a <= K_a (1 = plain NA)      */
    int64_t out_stride[NATTEN_MAX_RANK]; /* 1 <= s_a <= K_a (1 = every query)   */
    int causal[NATTEN_MAX_RANK];         /* nonzero = causal along this axis    */

    /* Logit scale.  NaN means the default head_dim^-0.5; 0.0 is honoured. */
    double scale;
    natten_dtype dtype;
    natten_impl impl;

    /* Additional KV tokens attended by every query, unmasked, inside the same
     * softmax (fused ops only).  0 = none. */
    int64_t num_extra_kv;

    /* Variable length: NULL, or a host array [batch][rank] of per-sample
     * extents (each K_a*d_a <= e <= extent[a]).  Sample b uses only its
     * leading block; rows outside it are fully masked: out = 0, lse = -inf,
     * logits = -inf, and every gradient there is exactly 0. */
    const int32_t *varlen_extent;
} natten_problem;

/**
 * Fill *p with defaults for the given rank: batch = heads = kv_heads = 1,
 * head_dim = head_dim_v = 1, extent = kernel = dilation = strides = 1,
 * not causal, scale = NaN (default), f32, AUTO, no extra KV, no varlen.
 * @retval INVALID_ARGUMENT if rank is not 1, 2 or 3; NULL_POINTER if p is NULL.
 */
NATTEN_API natten_status natten_problem_init(natten_problem *p, int rank);

/** Check every rule on *p (no tensors involved). */
NATTEN_API natten_status natten_problem_validate(const natten_problem *p);

/** The scale actually used: p->scale, or head_dim^-0.5 when p->scale is NaN. */
NATTEN_API double natten_problem_scale(const natten_problem *p);

/** Number of neighbour slots KK = prod(kernel[0..rank-1]). */
NATTEN_API int64_t natten_problem_kernel_volume(const natten_problem *p);

/* ------------------------------------------------------------------------ */
/* Tensors                                                                   */
/* ------------------------------------------------------------------------ */

/** The role of a tensor; it fixes the logical shape (see the table above). */
typedef enum natten_tensor_kind {
    NATTEN_TENSOR_Q = 0,       /* also dq                 */
    NATTEN_TENSOR_K = 1,       /* also dk                 */
    NATTEN_TENSOR_V = 2,       /* also dv                 */
    NATTEN_TENSOR_OUT = 3,     /* also dout               */
    NATTEN_TENSOR_LSE = 4,     /* f32 (f64 for f64)       */
    NATTEN_TENSOR_LOGITS = 5,  /* also attn, dlogits, dattn */
    NATTEN_TENSOR_EXTRA_K = 6, /* also dextra_k           */
    NATTEN_TENSOR_EXTRA_V = 7, /* also dextra_v           */
    NATTEN_TENSOR_RPB = 8      /* also drpb               */
} natten_tensor_kind;

/** A strided view.  stride[i] is in elements, for logical axis i. */
typedef struct natten_tensor {
    void *data;
    int64_t stride[NATTEN_MAX_DIMS];
} natten_tensor;

/**
 * Logical shape of a tensor kind for problem p.
 * @param shape  receives ndim entries.
 * @param ndim   receives the number of axes (<= NATTEN_MAX_DIMS).
 */
NATTEN_API natten_status natten_tensor_shape(const natten_problem *p, natten_tensor_kind kind,
                                             int64_t shape[NATTEN_MAX_DIMS], int *ndim);

/** Describe a row-major contiguous buffer of the given kind. */
NATTEN_API natten_status natten_tensor_contiguous(const natten_problem *p, natten_tensor_kind kind,
                                                  void *data, natten_tensor *t);

/** Bytes per element of a dtype (f32 4, f16 2, bf16 2, f64 8; 0 if unknown). */
NATTEN_API size_t natten_dtype_size(natten_dtype dtype);

/* ------------------------------------------------------------------------ */
/* The window rule, exposed for tests and bindings                          */
/* ------------------------------------------------------------------------ */

/**
 * Neighbours of one query along one axis.  Slot k (0 <= k < kernel) holds key
 * position  start + k*step; it is valid iff  valid_begin <= k < valid_end.
 * Masked slots may have positions outside [0, extent).
 */
typedef struct natten_window {
    int64_t start;
    int64_t step;
    int64_t valid_begin;
    int64_t valid_end;
} natten_window;

/**
 * The window rule for one axis: extent L, kernel K, dilation d, GNA stride s,
 * causal flag, for the full-resolution query position i (0 <= i < L).
 */
NATTEN_API natten_status natten_axis_window(int64_t extent, int64_t kernel, int64_t dilation,
                                            int64_t gna_stride, int causal, int64_t query,
                                            natten_window *w);

/* ------------------------------------------------------------------------ */
/* Operations.  Optional tensors are passed as NULL.                         */
/* ------------------------------------------------------------------------ */

/**
 * Fused forward: out = softmax(scale*q.k + rpb over the neighbourhood and the
 * extra tokens) . v, and its natural-log log-sum-exp.
 * @param q,k,v          [B,X..,H,D] / [B,X..,H_kv,D] / [B,X..,H_kv,Dv]
 * @param rpb            NULL or [H, 2K-1 per axis] (not with gna_stride > 1)
 * @param extra_k,extra_v NULL, or [B,N_extra,H_kv,D|Dv] when num_extra_kv > 0
 * @param out            [B,O..,H,Dv]  written
 * @param lse            NULL or [B,O..,H]  written
 */
NATTEN_API natten_status natten_na_forward(const natten_problem *p, const natten_tensor *q,
                                           const natten_tensor *k, const natten_tensor *v,
                                           const natten_tensor *rpb, const natten_tensor *extra_k,
                                           const natten_tensor *extra_v, natten_tensor *out,
                                           natten_tensor *lse);

/**
 * Fused backward, recomputing probabilities from lse.
 * @param out,lse,dout   forward output, its lse (required) and the incoming gradient
 * @param dq,dk,dv       written (dq is 0 at rows no output reads; dk/dv 0 where no query looks)
 * @param drpb           NULL, or written when rpb is given
 * @param dextra_k,dextra_v written when num_extra_kv > 0 (both required then)
 */
NATTEN_API natten_status natten_na_backward(
    const natten_problem *p, const natten_tensor *q, const natten_tensor *k, const natten_tensor *v,
    const natten_tensor *rpb, const natten_tensor *extra_k, const natten_tensor *extra_v,
    const natten_tensor *out, const natten_tensor *lse, const natten_tensor *dout, natten_tensor *dq,
    natten_tensor *dk, natten_tensor *dv, natten_tensor *drpb, natten_tensor *dextra_k,
    natten_tensor *dextra_v);

/**
 * Split QK: logits[..., n] = scale*q.k_n + rpb_n for neighbour slot n; masked
 * slots are -inf.  num_extra_kv must be 0.
 * @param q,k     [B,X..,H,D] / [B,X..,H_kv,D]
 * @param rpb     NULL or [H, 2K-1 per axis]
 * @param logits  [B,O..,H,KK] written
 */
NATTEN_API natten_status natten_qk_forward(const natten_problem *p, const natten_tensor *q,
                                           const natten_tensor *k, const natten_tensor *rpb,
                                           natten_tensor *logits);

/** Backward of natten_qk_forward: dq, dk written; drpb written if non-NULL. */
NATTEN_API natten_status natten_qk_backward(const natten_problem *p, const natten_tensor *q,
                                            const natten_tensor *k, const natten_tensor *dlogits,
                                            natten_tensor *dq, natten_tensor *dk,
                                            natten_tensor *drpb);

/**
 * Split AV: out[...] = sum over valid slots n of attn[..., n] * v_n.  Weights
 * at masked slots are ignored (never read into the sum, not renormalised).
 * @param attn [B,O..,H,KK]   @param v [B,X..,H_kv,Dv]   @param out [B,O..,H,Dv]
 */
NATTEN_API natten_status natten_av_forward(const natten_problem *p, const natten_tensor *attn,
                                           const natten_tensor *v, natten_tensor *out);

/** Backward of natten_av_forward: dattn (0 at masked slots) and dv written. */
NATTEN_API natten_status natten_av_backward(const natten_problem *p, const natten_tensor *attn,
                                            const natten_tensor *v, const natten_tensor *dout,
                                            natten_tensor *dattn, natten_tensor *dv);

/* ------------------------------------------------------------------------ */
/* CPU runtime configuration                                                 */
/* ------------------------------------------------------------------------ */

typedef enum natten_cpu_isa {
    NATTEN_CPU_ISA_SCALAR = 0,
    NATTEN_CPU_ISA_AVX2 = 1,   /* AVX2 + FMA (+ F16C)  */
    NATTEN_CPU_ISA_AVX512 = 2, /* AVX-512F (+ BF16)    */
    NATTEN_CPU_ISA_NEON = 3
} natten_cpu_isa;

/** ISA the fast kernels use: the best detected, or NATTEN_CPU_ISA=scalar|avx2|avx512|neon. */
NATTEN_API natten_cpu_isa natten_cpu_isa_get(void);
/** Force a level; INVALID_ARGUMENT if this CPU or build cannot run it. */
NATTEN_API natten_status natten_cpu_isa_set(natten_cpu_isa isa);
NATTEN_API const char *natten_cpu_isa_name(natten_cpu_isa isa);

/** Worker threads of the library's pool: NATTEN_NUM_THREADS, else the core count. */
NATTEN_API int natten_num_threads_get(void);
/** Set the pool size (n >= 1).  Results do not depend on it. */
NATTEN_API natten_status natten_num_threads_set(int n);

#ifdef __cplusplus
}
#endif

#endif /* NATTEN_H */
