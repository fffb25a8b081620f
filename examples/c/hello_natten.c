/*
 * hello_natten.c -- 1-D neighborhood attention from C.
 *
 *   cc hello_natten.c $(pkg-config --cflags --libs natten) -o hello_natten
 *
 * Eight tokens, one head, two channels; every query attends to its 3
 * nearest tokens.  Prints each output row and its log-sum-exp.
 */
#include <stdio.h>

#include <natten.h>

int main(void) {
    enum { L = 8, D = 2 };
    float q[L * D], k[L * D], v[L * D], out[L * D], lse[L];
    for (int i = 0; i < L; ++i)
        for (int c = 0; c < D; ++c) {
            q[i * D + c] = (float)(i % 3) - 1.0f + 0.5f * (float)c;
            k[i * D + c] = (float)((i + c) % 4) * 0.5f - 0.75f;
            v[i * D + c] = (float)(i * D + c);
        }

    natten_problem p;
    natten_problem_init(&p, 1); /* rank 1: tensors are [B, L, H, D] */
    p.head_dim = p.head_dim_v = D;
    p.extent[0] = L;
    p.kernel[0] = 3;

    natten_tensor tq, tk, tv, tout, tlse;
    natten_tensor_contiguous(&p, NATTEN_TENSOR_Q, q, &tq);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_K, k, &tk);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_V, v, &tv);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_OUT, out, &tout);
    natten_tensor_contiguous(&p, NATTEN_TENSOR_LSE, lse, &tlse);

    natten_status st = natten_na_forward(&p, &tq, &tk, &tv, NULL, NULL, NULL, &tout, &tlse);
    if (st != NATTEN_STATUS_SUCCESS) {
        fprintf(stderr, "%s: %s\n", natten_status_string(st), natten_last_error_message());
        return 1;
    }
    for (int i = 0; i < L; ++i) {
        natten_window w;
        natten_axis_window(L, 3, 1, 1, 0, i, &w);
        printf("query %d (keys %lld..%lld): out = [%7.4f, %7.4f]  lse = %.4f\n", i, (long long)w.start,
               (long long)(w.start + 2 * w.step), out[i * D], out[i * D + 1], lse[i]);
    }

    /* Bad input is reported, never fatal: */
    p.kernel[0] = 9;
    st = natten_na_forward(&p, &tq, &tk, &tv, NULL, NULL, NULL, &tout, &tlse);
    printf("kernel 9 on 8 tokens -> %s: %s\n", natten_status_string(st), natten_last_error_message());
    return 0;
}
