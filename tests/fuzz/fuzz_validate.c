/*
 * fuzz_validate.c -- libFuzzer harness over descriptor and tensor
 * validation with arbitrary (often extreme) values.  Invariants:
 *   - every entry point returns a status, never crashes or reads a tensor
 *     when the problem is invalid;
 *   - on failure the message starts with the function's name and no tensor
 *     byte changes;
 *   - natten_tensor_shape/contiguous agree with natten_problem_validate;
 *   - natten_axis_window either rejects its arguments or returns a window
 *     whose valid slots lie inside [0, extent).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_reader.h"
#include "natten.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static unsigned char arena[256];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_reader r = {data, size, 0};
    natten_problem p;
    memset(&p, 0, sizeof p);
    p.rank = (int)(fz_u8(&r) % 6) - 1;
    p.batch = fz_i64(&r);
    p.heads = fz_i64(&r);
    p.kv_heads = fz_i64(&r);
    p.head_dim = fz_i64(&r);
    p.head_dim_v = fz_i64(&r);
    for (int a = 0; a < NATTEN_MAX_RANK; ++a) {
        p.extent[a] = fz_i64(&r);
        p.kernel[a] = fz_i64(&r);
        p.dilation[a] = fz_i64(&r);
        p.gna_stride[a] = fz_i64(&r);
        p.out_stride[a] = fz_i64(&r);
        p.causal[a] = fz_u8(&r) & 1;
    }
    static const double scales[] = {NAN, 0.0, 1.0, INFINITY, -INFINITY, 0.125};
    p.scale = scales[fz_u8(&r) % 6];
    p.dtype = (natten_dtype)((int)(fz_u8(&r) % 6) - 1);
    p.impl = (natten_impl)((int)(fz_u8(&r) % 5) - 1);
    p.num_extra_kv = fz_i64(&r);
    int32_t varlen[4 * 3];
    for (int i = 0; i < 12; ++i) varlen[i] = (int32_t)(fz_u8(&r) % 12) - 1;
    p.varlen_extent = (fz_u8(&r) & 1) && p.batch >= 1 && p.batch <= 4 ? varlen : NULL;

    const natten_status pst = natten_problem_validate(&p);
    if (pst != NATTEN_STATUS_SUCCESS)
        CHECK(starts_with(natten_last_error_message(), "natten_problem_validate: "));

    for (int kind = 0; kind <= NATTEN_TENSOR_RPB; ++kind) {
        int64_t shape[NATTEN_MAX_DIMS];
        int nd = 0;
        natten_tensor t;
        natten_status st = natten_tensor_shape(&p, (natten_tensor_kind)kind, shape, &nd);
        CHECK(st == pst);
        if (st == NATTEN_STATUS_SUCCESS) {
            CHECK(nd >= 2 && nd <= NATTEN_MAX_DIMS);
            for (int i = 0; i < nd; ++i) CHECK(shape[i] >= 0);
        }
        st = natten_tensor_contiguous(&p, (natten_tensor_kind)kind, arena, &t);
        CHECK(st == pst);
    }
    (void)natten_problem_kernel_volume(&p);
    (void)natten_problem_scale(&p);

    /* the public window query on axis 0's values */
    {
        natten_window w;
        const int64_t q = fz_i64(&r);
        natten_status st = natten_axis_window(p.extent[0], p.kernel[0], p.dilation[0], p.gna_stride[0],
                                              p.causal[0], q, &w);
        if (st == NATTEN_STATUS_SUCCESS) {
            CHECK(0 <= w.valid_begin && w.valid_begin < w.valid_end && w.valid_end <= p.kernel[0]);
            CHECK(w.start + w.valid_begin * w.step >= 0);
            CHECK(w.start + (w.valid_end - 1) * w.step < p.extent[0]);
        } else {
            CHECK(starts_with(natten_last_error_message(), "natten_axis_window: "));
        }
    }

    /* Ops: tensors all point into one small arena with fuzzed strides.  With
     * an invalid problem every op must refuse before touching memory; with a
     * valid one, tensors with NULL data must be refused. */
    natten_tensor t[8];
    for (int i = 0; i < 8; ++i) {
        t[i].data = arena + (fz_u8(&r) % 64);
        for (int d = 0; d < NATTEN_MAX_DIMS; ++d) t[i].stride[d] = fz_i64(&r);
    }
    const int valid = pst == NATTEN_STATUS_SUCCESS;
    if (valid)
        for (int i = 0; i < 8; ++i) t[i].data = NULL;
    unsigned char before[sizeof arena];
    memcpy(before, arena, sizeof arena);
    natten_tensor *n = NULL;
    const int use_extra = fz_u8(&r) & 1, use_rpb = fz_u8(&r) & 1;
    natten_tensor *ek = use_extra ? &t[4] : n, *ev = use_extra ? &t[5] : n, *rpb = use_rpb ? &t[6] : n;
    natten_status st[6];
    st[0] = natten_na_forward(&p, &t[0], &t[1], &t[2], rpb, ek, ev, &t[3], &t[7]);
    CHECK(st[0] == NATTEN_STATUS_SUCCESS || starts_with(natten_last_error_message(), "natten_na_forward: "));
    st[1] = natten_na_backward(&p, &t[0], &t[1], &t[2], rpb, ek, ev, &t[3], &t[7], &t[3], &t[0], &t[1], &t[2], rpb,
                               ek, ev);
    CHECK(st[1] == NATTEN_STATUS_SUCCESS || starts_with(natten_last_error_message(), "natten_na_backward: "));
    st[2] = natten_qk_forward(&p, &t[0], &t[1], rpb, &t[3]);
    CHECK(st[2] == NATTEN_STATUS_SUCCESS || starts_with(natten_last_error_message(), "natten_qk_forward: "));
    st[3] = natten_qk_backward(&p, &t[0], &t[1], &t[3], &t[4], &t[5], rpb);
    CHECK(st[3] == NATTEN_STATUS_SUCCESS || starts_with(natten_last_error_message(), "natten_qk_backward: "));
    st[4] = natten_av_forward(&p, &t[0], &t[1], &t[3]);
    CHECK(st[4] == NATTEN_STATUS_SUCCESS || starts_with(natten_last_error_message(), "natten_av_forward: "));
    st[5] = natten_av_backward(&p, &t[0], &t[1], &t[2], &t[3], &t[4]);
    CHECK(st[5] == NATTEN_STATUS_SUCCESS || starts_with(natten_last_error_message(), "natten_av_backward: "));
    for (int i = 0; i < 6; ++i) CHECK(st[i] != NATTEN_STATUS_SUCCESS);
    CHECK(memcmp(before, arena, sizeof arena) == 0);
    return 0;
}
