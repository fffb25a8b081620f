/*
 * fuzz_tiny.c -- libFuzzer harness over tiny complete problems: every
 * feature combination (rank 1-3, dilation, both strides, causal, GQA,
 * extra KV, RPB, varlen, any dtype, strided layouts) drawn from the input.
 * Invariants (trap on violation):
 *   - a problem that passes natten_problem_validate runs every op with
 *     SUCCESS under REFERENCE, and under AUTO unless an error is reported;
 *   - for f64 the reference forward, QK and AV match the brute-force oracle
 *     of tests/c/support, and AUTO matches REFERENCE;
 *   - a rejected problem leaves every tensor byte untouched.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_reader.h"
#include "support.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_reader r = {data, size, 0};
    natten_problem p;
    natten_problem_init(&p, 1 + fz_u8(&r) % 3);
    p.batch = 1 + fz_u8(&r) % 2;
    p.kv_heads = 1 + fz_u8(&r) % 2;
    p.heads = p.kv_heads * (1 + fz_u8(&r) % 2);
    p.head_dim = 1 + fz_u8(&r) % 3;
    p.head_dim_v = 1 + fz_u8(&r) % 3;
    const int mostly_valid = fz_u8(&r) % 8 != 0;
    for (int a = 0; a < p.rank; ++a) {
        p.extent[a] = 1 + fz_u8(&r) % (p.rank == 3 ? 4 : 7);
        if (mostly_valid) {
            p.kernel[a] = 1 + fz_u8(&r) % p.extent[a];
            p.dilation[a] = 1 + fz_u8(&r) % (p.extent[a] / p.kernel[a]);
            p.gna_stride[a] = 1 + fz_u8(&r) % p.kernel[a];
            p.out_stride[a] = 1 + fz_u8(&r) % p.kernel[a];
        } else {
            p.kernel[a] = fz_u8(&r) % 9 - 1;
            p.dilation[a] = fz_u8(&r) % 4;
            p.gna_stride[a] = fz_u8(&r) % 4;
            p.out_stride[a] = fz_u8(&r) % 4;
        }
        p.causal[a] = fz_u8(&r) & 1;
    }
    const uint8_t flags = fz_u8(&r);
    p.dtype = (natten_dtype)(fz_u8(&r) % 4);
    p.num_extra_kv = (flags & 1) ? 1 + fz_u8(&r) % 2 : 0;
    int use_rpb = (flags >> 1) & 1;
    for (int a = 0; a < p.rank; ++a)
        if (p.gna_stride[a] != 1) use_rpb = 0;
    if ((flags >> 2) & 1) p.scale = (fz_u8(&r) % 5) * 0.25;
    int32_t varlen[2 * 3];
    if ((flags >> 3) & 1) {
        for (int b = 0; b < p.batch; ++b)
            for (int a = 0; a < p.rank; ++a) {
                const int64_t lo = p.kernel[a] * p.dilation[a] > 0 ? p.kernel[a] * p.dilation[a] : 1;
                const int64_t span = p.extent[a] - lo + 1 > 0 ? p.extent[a] - lo + 1 : 1;
                varlen[b * p.rank + a] = (int32_t)(lo + fz_u8(&r) % span);
            }
        p.varlen_extent = varlen;
    }
    const int layout = fz_u8(&r) % T_NUM_LAYOUTS;
    t_rng rng;
    t_rng_seed(&rng, fz_u64(&r));

    const natten_status pst = natten_problem_validate(&p);
    if (pst != NATTEN_STATUS_SUCCESS) {
        /* build tensors for a valid neighbour of the problem and check nothing is written */
        natten_problem ok;
        natten_problem_init(&ok, p.rank);
        ok.batch = p.batch, ok.heads = p.heads, ok.kv_heads = p.kv_heads, ok.head_dim = p.head_dim;
        ok.head_dim_v = p.head_dim_v, ok.dtype = p.dtype;
        for (int a = 0; a < p.rank; ++a) ok.extent[a] = p.extent[a];
        tbuf q, k, v, out;
        tbuf_init(&q, &ok, NATTEN_TENSOR_Q, layout);
        tbuf_init(&k, &ok, NATTEN_TENSOR_K, layout);
        tbuf_init(&v, &ok, NATTEN_TENSOR_V, layout);
        tbuf_init(&out, &ok, NATTEN_TENSOR_OUT, layout);
        tbuf_snapshot(&out);
        p.num_extra_kv = 0;
        CHECK(natten_na_forward(&p, &q.t, &k.t, &v.t, NULL, NULL, NULL, &out.t, NULL) != NATTEN_STATUS_SUCCESS);
        CHECK(natten_av_forward(&p, &q.t, &v.t, &out.t) != NATTEN_STATUS_SUCCESS);
        CHECK(tbuf_unchanged(&out));
        tbuf_free(&q), tbuf_free(&k), tbuf_free(&v), tbuf_free(&out);
        return 0;
    }

    const int extra = p.num_extra_kv > 0;
    tbuf q, k, v, rpb, ek, ev, out, lse, dout, dq, dk, dv, drpb, dek, dev, logits, attn, aout, dattn;
    tbuf_init(&q, &p, NATTEN_TENSOR_Q, layout);
    tbuf_init(&k, &p, NATTEN_TENSOR_K, (layout + 1) % 3);
    tbuf_init(&v, &p, NATTEN_TENSOR_V, (layout + 2) % 3);
    tbuf_init(&rpb, &p, NATTEN_TENSOR_RPB, layout);
    tbuf_init(&ek, &p, NATTEN_TENSOR_EXTRA_K, layout);
    tbuf_init(&ev, &p, NATTEN_TENSOR_EXTRA_V, layout);
    tbuf_init(&out, &p, NATTEN_TENSOR_OUT, (layout + 1) % 3);
    tbuf_init(&lse, &p, NATTEN_TENSOR_LSE, layout);
    tbuf_init(&dout, &p, NATTEN_TENSOR_OUT, layout);
    tbuf_init(&dq, &p, NATTEN_TENSOR_Q, (layout + 2) % 3);
    tbuf_init(&dk, &p, NATTEN_TENSOR_K, layout);
    tbuf_init(&dv, &p, NATTEN_TENSOR_V, layout);
    tbuf_init(&drpb, &p, NATTEN_TENSOR_RPB, layout);
    tbuf_init(&dek, &p, NATTEN_TENSOR_EXTRA_K, layout);
    tbuf_init(&dev, &p, NATTEN_TENSOR_EXTRA_V, layout);
    tbuf_init(&logits, &p, NATTEN_TENSOR_LOGITS, layout);
    tbuf_init(&attn, &p, NATTEN_TENSOR_LOGITS, (layout + 1) % 3);
    tbuf_init(&aout, &p, NATTEN_TENSOR_OUT, layout);
    tbuf_init(&dattn, &p, NATTEN_TENSOR_LOGITS, layout);
    tbuf *ins[] = {&q, &k, &v, &rpb, &ek, &ev, &dout, &attn};
    for (size_t i = 0; i < sizeof ins / sizeof ins[0]; ++i) tbuf_fill_random(ins[i], &rng, -1.5, 1.5);
    const natten_tensor *R = use_rpb ? &rpb.t : NULL, *EK = extra ? &ek.t : NULL, *EV = extra ? &ev.t : NULL;

    p.impl = NATTEN_IMPL_REFERENCE;
    CHECK(natten_na_forward(&p, &q.t, &k.t, &v.t, R, EK, EV, &out.t, &lse.t) == NATTEN_STATUS_SUCCESS);
    CHECK(natten_na_backward(&p, &q.t, &k.t, &v.t, R, EK, EV, &out.t, &lse.t, &dout.t, &dq.t, &dk.t, &dv.t,
                             use_rpb ? &drpb.t : NULL, extra ? &dek.t : NULL, extra ? &dev.t : NULL) ==
          NATTEN_STATUS_SUCCESS);
    if (!extra) {
        CHECK(natten_qk_forward(&p, &q.t, &k.t, R, &logits.t) == NATTEN_STATUS_SUCCESS);
        CHECK(natten_qk_backward(&p, &q.t, &k.t, &logits.t, &dq.t, &dk.t, use_rpb ? &drpb.t : NULL) ==
              NATTEN_STATUS_SUCCESS);
        CHECK(natten_av_forward(&p, &attn.t, &v.t, &aout.t) == NATTEN_STATUS_SUCCESS);
        CHECK(natten_av_backward(&p, &attn.t, &v.t, &dout.t, &dattn.t, &dv.t) == NATTEN_STATUS_SUCCESS);
    }

    if (p.dtype == NATTEN_DTYPE_F64) {
        double *x[8], *want = (double *)malloc(sizeof(double) * (size_t)(logits.count + out.count + 1));
        double *wl = (double *)malloc(sizeof(double) * (size_t)(lse.count + 1));
        for (int i = 0; i < 8; ++i) {
            x[i] = (double *)malloc(sizeof(double) * (size_t)(ins[i]->count + 1));
            tbuf_to_double(ins[i], x[i]);
        }
        oracle_fused(&p, x[0], x[1], x[2], use_rpb ? x[3] : NULL, x[4], x[5], want, wl);
        CHECK(t_compare("oracle out", &out, want, 1e-9, 1e-9) && t_compare("oracle lse", &lse, wl, 1e-9, 1e-9));
        if (!extra) {
            oracle_qk(&p, x[0], x[1], use_rpb ? x[3] : NULL, want);
            CHECK(t_compare("oracle logits", &logits, want, 1e-9, 1e-9));
            oracle_av(&p, x[7], x[2], want);
            CHECK(t_compare("oracle av", &aout, want, 1e-9, 1e-9));
        }
        /* AUTO (fast kernels when they accept) against the reference */
        double *ref_out = (double *)malloc(sizeof(double) * (size_t)out.count);
        tbuf_to_double(&out, ref_out);
        p.impl = NATTEN_IMPL_AUTO;
        CHECK(natten_na_forward(&p, &q.t, &k.t, &v.t, R, EK, EV, &out.t, &lse.t) == NATTEN_STATUS_SUCCESS);
        CHECK(t_compare("auto out", &out, ref_out, 1e-6, 1e-6));
        free(ref_out);
        for (int i = 0; i < 8; ++i) free(x[i]);
        free(want), free(wl);
    } else {
        p.impl = NATTEN_IMPL_AUTO;
        CHECK(natten_na_forward(&p, &q.t, &k.t, &v.t, R, EK, EV, &out.t, &lse.t) == NATTEN_STATUS_SUCCESS);
    }

    tbuf *all[] = {&q, &k, &v, &rpb, &ek, &ev, &out, &lse, &dout, &dq, &dk, &dv, &drpb, &dek, &dev,
                   &logits, &attn, &aout, &dattn};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) tbuf_free(all[i]);
    return 0;
}
