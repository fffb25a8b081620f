"""Heads-first NATTEN 0.14 / 0.15 / 0.17 ops against the float64 oracle.

The oracle (tests/python/oracle.py) is heads-last and uses the core's causal
slot layout, so non-causal cases compare against it directly (transposed) and
causal 0.17 cases compare against upstream's layout written out in
test_compat_support.upstream_qk/upstream_av.
"""

from __future__ import annotations

import itertools

import mlx.core as mx
import numpy as np
import pytest

import oracle
from nautil import assert_close, rand as _rand
from natten_mlx.compat import v014, v015, v017
from test_compat_support import hf, hl, npy, upstream_av, upstream_qk




# ----------------------------------------------------------------- 1D


@pytest.mark.parametrize(
    "L,K,d", [(11, 3, 1), (11, 3, 2), (12, 5, 2), (9, 3, 3), (13, 3, 4), (7, 7, 1), (16, 5, 3)]
)
def test_v014_natten1dqkrpb_matches_oracle(tier, rng, L, K, d):
    q, qn = _rand(rng, (2, 3, L, 4))
    k, kn = _rand(rng, (2, 3, L, 4))
    rpb, rn = _rand(rng, (3, 2 * K - 1))
    got = v014.natten1dqkrpb(q, k, rpb, K, d)
    want = hf(oracle.oracle_qk(hl(qn), hl(kn), K, dilation=d, scale=1.0, rpb=rn))
    assert got.shape == (2, 3, L, K)
    assert_close(got, want, what="natten1dqkrpb")
    # rpb=None is accepted (0.14.5+) and equals no bias
    got0 = v014.natten1dqkrpb(q, k, None, K, d)
    want0 = hf(oracle.oracle_qk(hl(qn), hl(kn), K, dilation=d, scale=1.0))
    assert_close(got0, want0, what="natten1dqkrpb rpb=None")
    assert_close(v014.natten1dqk(q, k, K, d), want0, what="natten1dqk")


@pytest.mark.parametrize("L,K,d", [(11, 3, 1), (12, 5, 2), (13, 3, 4)])
def test_v014_natten1dav_matches_oracle(tier, rng, L, K, d):
    a, an = _rand(rng, (2, 3, L, K))
    v, vn = _rand(rng, (2, 3, L, 5))
    got = v014.natten1dav(a, v, K, d)
    want = hf(oracle.oracle_av(hl(an), hl(vn), K, dilation=d))
    assert_close(got, want, what="natten1dav")


def _rpb_expected_1d(L, K, d, rpb):
    """Spec 3.9 written out: bias of slot n of query i is rpb[h, (key-i)/d + K-1]."""
    out = np.zeros((rpb.shape[0], L, K))
    for i, slots in enumerate(oracle.axis_slots(L, K, d)):
        for n, (pos, ok) in enumerate(slots):
            assert ok and (pos - i) % d == 0
            out[:, i, n] = rpb[:, (pos - i) // d + K - 1]
    return out


@pytest.mark.parametrize("L,K,d", [(10, 3, 1), (10, 3, 2), (13, 3, 4), (20, 5, 3), (32, 3, 1)])
def test_v014_rpb_index_rule_1d(tier, rng, L, K, d):
    # zero queries: the logits are exactly the gathered bias
    q = mx.zeros((1, 2, L, 4))
    rpb = mx.array(np.arange(2 * (2 * K - 1), dtype=np.float32).reshape(2, 2 * K - 1))
    got = np.array(v014.natten1dqkrpb(q, q, rpb, K, d))[0]
    np.testing.assert_array_equal(got, _rpb_expected_1d(L, K, d, np.array(rpb)))
    # spec example: L=32, K=3, right border query 31 -> window starts at 29, pb index 0 first
    if (L, K, d) == (32, 3, 1):
        assert list(got[0, 31]) == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("X,Y,K,d", [(7, 8, 3, 2), (9, 6, 3, (3, 1)), (8, 8, (3, 5), 1), (10, 11, 5, 2)])
def test_v014_rpb_index_rule_2d(tier, rng, X, Y, K, d):
    Kx, Ky = (K, K) if isinstance(K, int) else K
    dx, dy = (d, d) if isinstance(d, int) else d
    q = mx.zeros((1, 2, X, Y, 4))
    rpb_np = rng.standard_normal((2, 2 * Kx - 1, 2 * Ky - 1)).astype(np.float32)
    got = np.array(v014.natten2dqkrpb(q, q, mx.array(rpb_np), K, d))[0]
    tx, ty = oracle.axis_slots(X, Kx, dx), oracle.axis_slots(Y, Ky, dy)
    for i, j in itertools.product(range(X), range(Y)):
        for a, b in itertools.product(range(Kx), range(Ky)):
            ki, kj = tx[i][a][0], ty[j][b][0]
            want = rpb_np[:, (ki - i) // dx + Kx - 1, (kj - j) // dy + Ky - 1]
            np.testing.assert_array_equal(got[:, i, j, a * Ky + b], want)


# ----------------------------------------------------------------- 2D


@pytest.mark.parametrize("X,Y,K,d", [(7, 8, 3, 2), (6, 7, 3, 1), (9, 10, (3, 5), (2, 1)), (8, 12, 5, (1, 2))])
def test_v014_2d_qkrpb_and_av_match_oracle(tier, rng, X, Y, K, d):
    Kx, Ky = (K, K) if isinstance(K, int) else K
    q, qn = _rand(rng, (1, 3, X, Y, 6))
    k, kn = _rand(rng, (1, 3, X, Y, 6))
    rpb, rn = _rand(rng, (3, 2 * Kx - 1, 2 * Ky - 1))
    got = v014.natten2dqkrpb(q, k, rpb, K, d)
    assert got.shape == (1, 3, X, Y, Kx * Ky)
    assert_close(got, hf(oracle.oracle_qk(hl(qn), hl(kn), (Kx, Ky), dilation=d, scale=1.0, rpb=rn)),
                 what="natten2dqkrpb")
    a, an = _rand(rng, (1, 3, X, Y, Kx * Ky))
    v, vn = _rand(rng, (1, 3, X, Y, 5))
    assert_close(v014.natten2dav(a, v, K, d), hf(oracle.oracle_av(hl(an), hl(vn), (Kx, Ky), dilation=d)),
                 what="natten2dav")


def test_v014_softmax_pipeline_equals_fused_oracle(tier, rng):
    # the module-style pipeline (pre-scaled q, qkrpb, softmax, av) == oracle NA with rpb
    q, qn = _rand(rng, (2, 2, 9, 8, 4))
    k, kn = _rand(rng, (2, 2, 9, 8, 4))
    v, vn = _rand(rng, (2, 2, 9, 8, 4))
    rpb, rn = _rand(rng, (2, 5, 5))
    s = 4**-0.5
    attn = mx.softmax(v014.natten2dqkrpb(q * s, k, rpb, 3, 2), axis=-1)
    got = v014.natten2dav(attn, v, 3, 2)
    want, _ = oracle.oracle_na(hl(qn), hl(kn), hl(vn), 3, dilation=2, scale=s, rpb=rn)
    assert_close(got, hf(want), what="qkrpb->softmax->av")


# ----------------------------------------------------------------- 0.15: new names, 3D, extra KV


@pytest.mark.parametrize("kd,k,dd,d", [(3, 3, 1, 1), (3, 3, 2, 1), (5, 3, 1, 2)])
def test_v015_3d_ops_match_oracle(tier, rng, kd, k, dd, d):
    Z, X, Y = 10, 7, 6
    q, qn = _rand(rng, (1, 2, Z, X, Y, 4))
    kk, kn = _rand(rng, (1, 2, Z, X, Y, 4))
    rpb, rn = _rand(rng, (2, 2 * kd - 1, 2 * k - 1, 2 * k - 1))
    K3, D3 = (kd, k, k), (dd, d, d)
    want = hf(oracle.oracle_qk(hl(qn), hl(kn), K3, dilation=D3, scale=1.0, rpb=rn))
    assert_close(v015.natten3dqkrpb(q, kk, rpb, kd, k, dd, d), want, what="natten3dqkrpb")
    assert_close(v015.na3d_qk_with_bias(q, kk, rpb, kd, k, dd, d), want, what="na3d_qk_with_bias")
    want0 = hf(oracle.oracle_qk(hl(qn), hl(kn), K3, dilation=D3, scale=1.0))
    assert_close(v015.na3d_qk(q, kk, kd, k, dd, d), want0, what="na3d_qk")
    assert_close(v015.natten3dqk(q, kk, kd, k, dd, d), want0, what="natten3dqk")
    a, an = _rand(rng, (1, 2, Z, X, Y, kd * k * k))
    v, vn = _rand(rng, (1, 2, Z, X, Y, 3))
    wav = hf(oracle.oracle_av(hl(an), hl(vn), K3, dilation=D3))
    assert_close(v015.na3d_av(a, v, kd, k, dd, d), wav, what="na3d_av")
    assert_close(v015.natten3dav(a, v, kd, k, dd, d), wav, what="natten3dav")


def test_v015_names_are_heads_first_and_match_v014(tier, rng):
    q, _ = _rand(rng, (2, 3, 11, 4))
    k, _ = _rand(rng, (2, 3, 11, 4))
    rpb, _ = _rand(rng, (3, 5))
    ref = np.array(v014.natten1dqkrpb(q, k, rpb, 3, 2))
    np.testing.assert_array_equal(np.array(v015.na1d_qk_with_bias(q, k, rpb, 3, 2)), ref)
    np.testing.assert_array_equal(np.array(v015.natten1dqkrpb(q, k, rpb, 3, 2)), ref)
    q2, _ = _rand(rng, (1, 2, 6, 7, 4))
    np.testing.assert_array_equal(
        np.array(v015.na2d_qk(q2, q2, 3, 1)), np.array(v014.natten2dqk(q2, q2, 3, 1))
    )


@pytest.mark.parametrize("rank", [1, 2])
def test_v015_additional_kv_heads_first(tier, rng, rank):
    ext = (9,) if rank == 1 else (6, 7)
    B, H, D, N = 2, 2, 4, 3
    K = 3
    q, qn = _rand(rng, (B, H) + ext + (D,))
    k, kn = _rand(rng, (B, H) + ext + (D,))
    v, vn = _rand(rng, (B, H) + ext + (D,))
    ak, akn = _rand(rng, (B, H, N, D))
    av, avn = _rand(rng, (B, H, N, D))
    qk = v015.na1d_qk if rank == 1 else v015.na2d_qk
    avf = v015.na1d_av if rank == 1 else v015.na2d_av
    logits = qk(q, k, K, 1, additional_keys=ak)
    KK = K**rank
    assert logits.shape == (B, H) + ext + (KK + N,)
    want_na = hf(oracle.oracle_qk(hl(qn), hl(kn), K, scale=1.0))
    want_x = np.einsum("bh...d,bhnd->bh...n", qn, akn)
    assert_close(logits, np.concatenate([want_na, want_x], axis=-1), what="qk + extra")
    attn = mx.softmax(logits * (D**-0.5), axis=-1)
    out = avf(attn, v, K, 1, additional_values=av)
    # heads-first extra tokens [B, H, N, D] -> oracle's [B, N, H, D]
    want, _ = oracle.oracle_na(hl(qn), hl(kn), hl(vn), K, extra_k=np.moveaxis(akn, 1, 2),
                               extra_v=np.moveaxis(avn, 1, 2))
    assert_close(out, hf(want), what="av + extra")


# ----------------------------------------------------------------- 0.17: per-axis, causal layout, rpb kwarg


@pytest.mark.parametrize(
    "ext,K,d,causal",
    [
        ((9,), (3,), (1,), (True,)),
        ((11,), (4,), (2,), (True,)),
        ((12,), (5,), (2,), (False,)),
        ((7, 8), (3, 3), (2, 1), (True, False)),
        ((8, 6), (3, 5), (1, 1), (False, True)),
        ((6, 7), (3, 3), (1, 2), (True, True)),
        ((5, 6, 5), (3, 3, 2), (1, 2, 1), (True, False, True)),
    ],
)
def test_v017_unfused_causal_layout_is_upstreams(tier, rng, ext, K, d, causal):
    rank = len(ext)
    q, qn = _rand(rng, (2, 2) + ext + (4,))
    k, kn = _rand(rng, (2, 2) + ext + (4,))
    qk = getattr(v017, f"na{rank}d_qk")
    avf = getattr(v017, f"na{rank}d_av")
    logits = qk(q, k, K, d, is_causal=causal)
    want = upstream_qk(qn, kn, K, d, causal)
    assert_close(logits, want, what="v017 qk")
    if any(causal):
        # upstream: valid slots first; every row's first slot is valid
        assert np.isfinite(np.array(logits)[..., 0]).all()
    attn = mx.softmax(logits, axis=-1)
    v, vn = _rand(rng, (2, 2) + ext + (3,))
    out = avf(attn, v, K, d, is_causal=causal)
    assert_close(out, upstream_av(npy(attn), vn, K, d, causal), what="v017 av")
    # and the whole pipeline is causal NA (core layout-independent): compare with oracle_na
    want_na, _ = oracle.oracle_na(hl(qn), hl(kn), hl(vn), K, dilation=d, causal=causal, scale=1.0)
    assert_close(out, hf(want_na), what="v017 qk->softmax->av")


def test_v017_rpb_kwarg_and_deprecated_names(tier, rng):
    q, qn = _rand(rng, (1, 2, 7, 8, 4))
    k, kn = _rand(rng, (1, 2, 7, 8, 4))
    # even kernel without bias is fine (per-axis tuple)
    got = v017.na2d_qk(q, k, (3, 4), (2, 1))
    assert got.shape == (1, 2, 7, 8, 12)
    assert_close(got, hf(oracle.oracle_qk(hl(qn), hl(kn), (3, 4), dilation=(2, 1), scale=1.0)),
                 what="na2d_qk even K")
    # non-square (odd) kernel with bias, rpb as keyword: rpb [H, 2*3-1, 2*5-1]
    rpb, rn = _rand(rng, (2, 5, 9))
    got = v017.na2d_qk(q, k, (3, 5), (2, 1), rpb=rpb)
    want = hf(oracle.oracle_qk(hl(qn), hl(kn), (3, 5), dilation=(2, 1), scale=1.0, rpb=rn))
    assert_close(got, want, what="na2d_qk rpb")
    # deprecated square-kernel names
    rpb3, rn3 = _rand(rng, (2, 5, 5))
    want3 = hf(oracle.oracle_qk(hl(qn), hl(kn), 3, dilation=2, scale=1.0, rpb=rn3))
    assert_close(v017.natten2dqkrpb(q, k, rpb3, 3, 2), want3, what="natten2dqkrpb")
    a, an = _rand(rng, (1, 2, 7, 8, 9))
    v, vn = _rand(rng, (1, 2, 7, 8, 3))
    assert_close(v017.natten2dav(a, v, 3, 2), hf(oracle.oracle_av(hl(an), hl(vn), 3, dilation=2)),
                 what="natten2dav")


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_v017_fused_ops_match_oracle(tier, rng, rank):
    ext = {1: (13,), 2: (7, 9), 3: (5, 6, 7)}[rank]
    K = {1: 5, 2: (3, 5), 3: 3}[rank]
    d = {1: 2, 2: (2, 1), 3: (1, 2, 1)}[rank]
    B, H, D = 2, 2, 8
    q, qn = _rand(rng, (B,) + ext + (H, D))
    k, kn = _rand(rng, (B,) + ext + (H, D))
    v, vn = _rand(rng, (B,) + ext + (H, D))
    Kt = (K,) * rank if isinstance(K, int) else K
    rpb, rn = _rand(rng, (H,) + tuple(2 * x - 1 for x in Kt))
    fn = getattr(v017, f"na{rank}d")
    got = fn(q, k, v, K, d, rpb=rpb, scale=0.3)
    want, _ = oracle.oracle_na(qn, kn, vn, K, dilation=d, scale=0.3, rpb=rn)
    assert_close(got, want, what="v017 fused rpb")
    # scale=None and scale=0 both mean D**-0.5 (upstream's `scale or default`)
    want_d, _ = oracle.oracle_na(qn, kn, vn, K, dilation=d)
    assert_close(fn(q, k, v, K, d), want_d, what="default scale")
    assert_close(fn(q, k, v, K, d, scale=0.0), want_d, what="scale=0")


def test_v017_fused_causal_and_extra_kv(tier, rng):
    q, qn = _rand(rng, (2, 12, 2, 4))
    k, kn = _rand(rng, (2, 12, 2, 4))
    v, vn = _rand(rng, (2, 12, 2, 4))
    ak, akn = _rand(rng, (2, 3, 2, 4))
    av, avn = _rand(rng, (2, 3, 2, 4))
    got = v017.na1d(q, k, v, 5, 2, is_causal=True, additional_keys=ak, additional_values=av)
    want, _ = oracle.oracle_na(qn, kn, vn, 5, dilation=2, causal=True, extra_k=akn, extra_v=avn)
    assert_close(got, want, what="causal + extra kv")


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_heads_first_low_precision(tier, rng, dtype):
    q, qn = _rand(rng, (1, 2, 10, 8), dtype)
    k, kn = _rand(rng, (1, 2, 10, 8), dtype)
    rpb, rn = _rand(rng, (2, 5), dtype)
    got = v014.natten1dqkrpb(q, k, rpb, 3, 2)
    assert got.dtype == dtype
    assert_close(got, hf(oracle.oracle_qk(hl(qn), hl(kn), 3, dilation=2, scale=1.0, rpb=rn)),
                 dtype=dtype, what="low precision qkrpb")


# ----------------------------------------------------------------- errors


def test_heads_first_errors():
    q = mx.zeros((1, 2, 8, 4))
    with pytest.raises(ValueError, match=r"\[B, H, L, D\]"):
        v014.natten1dqkrpb(mx.zeros((2, 8, 4)), mx.zeros((2, 8, 4)), None, 3, 1)
    with pytest.raises(ValueError, match="rpb must be"):
        v014.natten1dqkrpb(q, q, mx.zeros((2, 4)), 3, 1)
    with pytest.raises(ValueError, match="rpb must be"):
        v014.natten2dqkrpb(mx.zeros((1, 2, 6, 6, 4)), mx.zeros((1, 2, 6, 6, 4)), mx.zeros((2, 5, 3)), 3, 1)
    with pytest.raises(ValueError, match="must be <= input spatial size"):
        v014.natten1dqk(q, q, 9, 1)
    with pytest.raises(ValueError, match="exceeds input size"):
        v014.natten1dqk(q, q, 3, 3)
    with pytest.raises(ValueError, match="same shape"):
        v014.natten1dqk(q, mx.zeros((1, 2, 9, 4)), 3, 1)
    with pytest.raises(ValueError, match="neighbour slots"):
        v014.natten1dav(mx.zeros((1, 2, 8, 5)), q, 3, 1)
    with pytest.raises(ValueError, match="odd kernel"):
        v014.natten1dqkrpb(q, q, mx.zeros((2, 7)), 4, 1)
    with pytest.raises(NotImplementedError, match="positional biases"):
        v017.na1d_qk(q, q, 3, 1, is_causal=True, rpb=mx.zeros((2, 5)))
    with pytest.raises(ValueError, match="kernel_size\\[0\\] must be positive"):
        v017.na1d_qk(q, q, 0)
    with pytest.raises(ValueError, match="additional_keys"):
        v015.na1d_qk(q, q, 3, 1, additional_keys=mx.zeros((1, 3, 2, 4)))


def test_v014_1_forms_without_kernel_size(tier, rng):
    # 0.14.1: natten1dqkrpb(q, k, rpb, dilation), natten1dav(attn, v, dilation)
    q, qn = _rand(rng, (1, 2, 13, 4))
    rpb, rn = _rand(rng, (2, 5))
    got = v014.natten1dqkrpb(q, q, rpb, 3)  # dilation 3, K=3 from rpb
    assert_close(got, hf(oracle.oracle_qk(hl(qn), hl(qn), 3, dilation=3, scale=1.0, rpb=rn)))
    a, an = _rand(rng, (1, 2, 13, 3))
    assert_close(v014.natten1dav(a, q, 3), hf(oracle.oracle_av(hl(an), hl(qn), 3, dilation=3)))
    q2, q2n = _rand(rng, (1, 2, 9, 8, 4))
    r2, r2n = _rand(rng, (2, 5, 5))
    assert_close(v014.natten2dqkrpb(q2, q2, r2, 2),
                 hf(oracle.oracle_qk(hl(q2n), hl(q2n), 3, dilation=2, scale=1.0, rpb=r2n)))
    a2, a2n = _rand(rng, (1, 2, 9, 8, 9))
    assert_close(v014.natten2dav(a2, q2, 2), hf(oracle.oracle_av(hl(a2n), hl(q2n), 3, dilation=2)))
    with pytest.raises(TypeError, match="dilation"):
        v014.natten1dqkrpb(q, q, None, 3)


@pytest.mark.parametrize("L,K,d", [(12, 3, 2), (17, 5, 3), (9, 7, 1)])
def test_rpb_index_equals_pb_start(tier, L, K, d):
    # natten-mlx's own check: bias index of slot k == get_pb_start(i) + k (NATTEN 0.14's formula)
    from natten_mlx.utils.window import compute_pb_start

    q = mx.zeros((1, 1, L, 2))
    rpb = mx.arange(2 * K - 1, dtype=mx.float32).reshape(1, -1)
    got = np.array(v014.natten1dqkrpb(q, q, rpb, K, d))[0, 0]
    pb = np.asarray(compute_pb_start(np.arange(L), L, K, d))
    np.testing.assert_array_equal(got, pb[:, None] + np.arange(K)[None, :])
