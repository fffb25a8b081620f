"""extras.allin1 (All-In-One's DiNAT ops) against the float64 oracle, on every tier."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import oracle
from nautil import assert_close, rand as _rand
import natten_mlx
from natten_mlx.extras import allin1
from natten_mlx.extras.allin1 import functional, functional_metal
from test_compat_support import fd_check, npy




# All-In-One's shapes: head dim 12, 2 heads, K=5, dilations 1..32 over L=216 (1D), 8x108 grid (2D)
@pytest.mark.parametrize("d", [1, 2, 4, 8, 16, 32])
def test_allin1_1d_shapes_vs_oracle(tier, rng, d):
    L, H, D, K = 216, 2, 12, 5
    q, qn = _rand(rng, (1, L, H, D))
    k, kn = _rand(rng, (1, L, H, D))
    rpb, rn = _rand(rng, (H, 2 * K - 1))
    s = D**-0.5
    logits = allin1.na1d_qk_rpb(q, k, rpb, K, d, scale=s)
    assert logits.shape == (1, L, H, K) and logits.dtype == mx.float32
    assert_close(logits, oracle.oracle_qk(qn, kn, K, dilation=d, scale=s, rpb=rn), what="qk_rpb")
    attn = mx.softmax(logits, axis=-1)
    v, vn = _rand(rng, (1, L, H, D))
    out = allin1.na1d_av_fused(attn, v, K, d)
    assert out.shape == (1, L, H, D) and out.dtype == mx.float32
    assert_close(out, oracle.oracle_av(npy(attn), vn, K, dilation=d), what="av")


def test_allin1_2d_shapes_vs_oracle(tier, rng):
    X, Y, H, D, K = 8, 108, 2, 12, 5
    q, qn = _rand(rng, (1, X, Y, H, D))
    k, kn = _rand(rng, (1, X, Y, H, D))
    rpb, rn = _rand(rng, (H, 2 * K - 1, 2 * K - 1))
    logits = allin1.na2d_qk_rpb(q, k, rpb, K, 1)  # scale=None: unscaled (q pre-scaled)
    assert logits.shape == (1, X, Y, H, K * K)
    assert_close(logits, oracle.oracle_qk(qn, kn, K, scale=1.0, rpb=rn), what="2d qk_rpb")
    a, an = _rand(rng, (1, X, Y, H, K * K))
    v, vn = _rand(rng, (1, X, Y, H, D))
    assert_close(allin1.na2d_av_fused(a, v, K, 1), oracle.oracle_av(an, vn, K), what="2d av")


@pytest.mark.parametrize("K,d", [(3, 3), (7, 2), (9, 1), (11, 1), (4, 2)])
def test_allin1_any_kernel_size(tier, rng, K, d):
    L, H, D = 25, 2, 6
    q, qn = _rand(rng, (2, L, H, D))
    k, kn = _rand(rng, (2, L, H, D))
    rpb, rn = _rand(rng, (H, 2 * K - 1))
    assert_close(allin1.na1d_qk_rpb(q, k, rpb, K, d, scale=0.5),
                 oracle.oracle_qk(qn, kn, K, dilation=d, scale=0.5, rpb=rn), what=f"K={K}")
    X, Y = (K * d + 1, K * d + 3)
    q2, q2n = _rand(rng, (1, X, Y, H, D))
    r2, r2n = _rand(rng, (H, 2 * K - 1, 2 * K - 1))
    assert_close(allin1.na2d_qk_rpb(q2, q2, r2, K, d),
                 oracle.oracle_qk(q2n, q2n, K, dilation=d, scale=1.0, rpb=r2n), what=f"2d K={K}")


def test_rpb_none_equals_core_split_op(tier, rng):
    q, _ = _rand(rng, (1, 30, 2, 12))
    k, _ = _rand(rng, (1, 30, 2, 12))
    got = allin1.na1d_qk_rpb(q, k, None, 5, 4, scale=0.25)
    want = natten_mlx.na1d_qk(q, k, 5, 4, scale=0.25)
    assert_close(got, npy(want), what="rpb=None vs na1d_qk")
    q2, _ = _rand(rng, (1, 8, 20, 2, 12))
    got = allin1.na2d_qk_rpb(q2, q2, None, 5, 1, scale=0.25)
    assert_close(got, npy(natten_mlx.na2d_qk(q2, q2, 5, 1, scale=0.25)), what="2d rpb=None")


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_output_is_float32(tier, rng, dtype):
    q, qn = _rand(rng, (1, 20, 2, 8), dtype)
    rpb, rn = _rand(rng, (2, 9), dtype)
    out = allin1.na1d_qk_rpb(q, q, rpb, 5, 2)
    assert out.dtype == mx.float32
    assert_close(out, oracle.oracle_qk(qn, qn, 5, dilation=2, scale=1.0, rpb=rn), what="f32 out")
    a, an = _rand(rng, (1, 20, 2, 5), dtype)
    out = allin1.na1d_av_fused(a, q, 5, 2)
    assert out.dtype == mx.float32
    assert_close(out, oracle.oracle_av(an, qn, 5, dilation=2), what="f32 av")


def test_heads_first_helpers(tier, rng):
    q, qn = _rand(rng, (1, 2, 40, 12))
    rpb, rn = _rand(rng, (2, 9))
    want = oracle.oracle_qk(np.moveaxis(qn, 1, 2), np.moveaxis(qn, 1, 2), 5, dilation=8, scale=1.0, rpb=rn)
    for mod in (functional, functional_metal):
        assert_close(mod.natten1dqkrpb(q, q, rpb, 5, 8), np.moveaxis(want, 2, 1), what="natten1dqkrpb")
    a, an = _rand(rng, (1, 2, 40, 5))
    wav = oracle.oracle_av(np.moveaxis(an, 1, 2), np.moveaxis(qn, 1, 2), 5, dilation=8)
    # natten-mlx's functional_metal.natten1dav ran the 2-D kernel; here both are the 1-D op
    for mod in (functional, functional_metal):
        assert_close(mod.natten1dav(a, q, 5, 8), np.moveaxis(wav, 2, 1), what="natten1dav")
    q2, q2n = _rand(rng, (1, 2, 8, 12, 6))
    r2, r2n = _rand(rng, (2, 5, 5))
    w2 = oracle.oracle_qk(np.moveaxis(q2n, 1, 3), np.moveaxis(q2n, 1, 3), 3, dilation=2, scale=1.0, rpb=r2n)
    assert_close(functional.natten2dqkrpb(q2, q2, r2, 3, 2), np.moveaxis(w2, 3, 1), what="natten2dqkrpb")
    a2, a2n = _rand(rng, (1, 2, 8, 12, 9))
    w2a = oracle.oracle_av(np.moveaxis(a2n, 1, 3), np.moveaxis(q2n, 1, 3), 3, dilation=2)
    assert_close(functional.natten2dav(a2, q2, 3, 2), np.moveaxis(w2a, 3, 1), what="natten2dav")


def test_gradients_finite_differences(tier, rng):
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    fd_check(lambda q, k, b: allin1.na1d_qk_rpb(q, k, b, 5, 2, scale=0.7),
             [r(1, 11, 2, 3), r(1, 11, 2, 3), r(2, 9)], rng)
    fd_check(lambda a, v: allin1.na1d_av_fused(a, v, 3, 3), [r(1, 10, 2, 3), r(1, 10, 2, 4)], rng)
    fd_check(lambda q, k, b: allin1.na2d_qk_rpb(q, k, b, 3, 2),
             [r(1, 6, 7, 2, 3), r(1, 6, 7, 2, 3), r(2, 5, 5)], rng)
    fd_check(lambda a, v: allin1.na2d_av_fused(a, v, 3, 1), [r(1, 4, 5, 1, 9), r(1, 4, 5, 1, 2)], rng)


def test_dinat_layer_pipeline_grad(tier, rng):
    # All-In-One's DinatLayer: q pre-scaled, qk+rpb, softmax, av; gradient reaches rpb
    q, _ = _rand(rng, (1, 24, 2, 12))
    k, _ = _rand(rng, (1, 24, 2, 12))
    v, _ = _rand(rng, (1, 24, 2, 12))
    rpb = mx.zeros((2, 9))

    def loss(rpb, q):
        a = mx.softmax(allin1.na1d_qk_rpb(q * 12**-0.5, k, rpb, 5, 4), axis=-1)
        return mx.sum(allin1.na1d_av_fused(a, v, 5, 4) ** 2)

    g_rpb, g_q = mx.grad(loss, argnums=(0, 1))(rpb, q)
    assert g_rpb.shape == (2, 9) and float(mx.abs(g_rpb).sum()) > 0
    assert g_q.shape == q.shape


def test_errors():
    x4 = mx.zeros((1, 10, 2, 4))
    x5 = mx.zeros((1, 6, 6, 2, 4))
    with pytest.raises(ValueError, match="query must be 4D"):
        allin1.na1d_qk_rpb(x5, x5, None, 3)
    with pytest.raises(ValueError, match="query must be 5D"):
        allin1.na2d_qk_rpb(x4, x4, None, 3)
    with pytest.raises(ValueError, match="attn and value must be 4D for na1d_av_fused"):
        allin1.na1d_av_fused(x5, x5, 3)
    with pytest.raises(ValueError, match="attn and value must be 5D for na2d_av_fused"):
        allin1.na2d_av_fused(x4, x4, 3)
    with pytest.raises(ValueError, match="exceeds input size"):
        allin1.na1d_qk_rpb(x4, x4, None, 5, 3)  # K*d = 15 > 10
    with pytest.raises(ValueError, match="exceeds input size"):
        allin1.na2d_av_fused(mx.zeros((1, 6, 6, 2, 9)), x5, 3, 3)
    with pytest.raises(ValueError, match="rpb must have shape"):
        allin1.na1d_qk_rpb(x4, x4, mx.zeros((2, 4)), 3)
    with pytest.raises(ValueError, match="Unsupported kernel size"):
        allin1.na1d_qk_rpb(x4, x4, None, 0)
    with pytest.raises(ValueError, match="Unsupported kernel size"):
        allin1.na1d_qk_rpb(x4, x4, None, (3,))
    with pytest.raises(ValueError, match="neighbour slots"):
        allin1.na1d_av_fused(mx.zeros((1, 10, 2, 4)), x4, 3)


def test_semi_public_backward_helpers_and_qkv_fused(tier, rng):
    # natten-mlx's functional_metal surface: *_backward helpers and natten2d_qkv_fused
    q, qn = _rand(rng, (1, 2, 7, 9, 4))
    k, kn = _rand(rng, (1, 2, 7, 9, 4))
    v, vn = _rand(rng, (1, 2, 7, 9, 4))
    rpb, rn = _rand(rng, (2, 5, 5))
    hl = lambda x: np.moveaxis(x, 1, 3)  # noqa: E731
    want, _ = oracle.oracle_na(hl(qn), hl(kn), hl(vn), 3, dilation=2, scale=1.0, rpb=rn)
    out = functional_metal.natten2d_qkv_fused(q, k, v, rpb, (3, 3), 2)
    assert out.dtype == mx.float32
    assert_close(out, np.moveaxis(want, 3, 1), what="natten2d_qkv_fused")
    assert functional_metal.get_d3rm_fused_status()["available"] is False
    # backward helpers == autodiff of the forward ops
    g, _ = _rand(rng, (1, 2, 7, 9, 9))
    dq, dk, dr = functional_metal.natten2dqkrpb_backward(g, q, k, rpb, 3, 2)
    _, ref = mx.vjp(lambda a, b, c: functional.natten2dqkrpb(a, b, c, 3, 2), [q, k, rpb], [g])
    for got, want_g in zip((dq, dk, dr), ref):
        np.testing.assert_allclose(np.array(got), np.array(want_g), rtol=1e-6, atol=1e-6)
    assert functional_metal.natten2dqkrpb_backward(g, q, k, None, 3, 2)[2] is None
    a, _ = _rand(rng, (1, 2, 7, 9, 9))
    da, dv = functional_metal.natten2dav_backward(q, a, v, 3, 2)
    assert da.shape == a.shape and dv.shape == v.shape
    q1, _ = _rand(rng, (1, 2, 20, 4))
    g1, _ = _rand(rng, (1, 2, 20, 5))
    dq1, dk1, dr1 = functional_metal.natten1dqkrpb_backward(g1, q1, q1, mx.zeros((2, 9)), 5, 3)
    assert dq1.shape == q1.shape and dr1.shape == (2, 9)
    # d rpb of a sum over all slots: each bias entry counts the (query, slot) pairs using it
    ones = mx.ones((1, 2, 20, 5))
    _, _, cnt = functional.natten1dqkrpb_backward(ones, q1, q1, mx.zeros((2, 9)), 5, 3)
    assert float(cnt.sum()) == 2 * 20 * 5
    da1, dv1 = functional_metal.natten1dav_backward(q1, g1, q1, 5, 3)
    assert da1.shape == g1.shape and dv1.shape == q1.shape
    with pytest.raises(ValueError, match="Only square kernels"):
        functional.natten2dqkrpb(q, k, None, (3, 5), 1)
