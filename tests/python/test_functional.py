"""Public functional API vs the oracle and vs its own documented identities."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import natten_mlx as nm
from natten_mlx import functional as F
from nautil import assert_close, rand, to_np
from oracle import oracle_av, oracle_na, oracle_qk

FUSED = {1: nm.na1d, 2: nm.na2d, 3: nm.na3d}
QK = {1: nm.na1d_qk, 2: nm.na2d_qk, 3: nm.na3d_qk}
AV = {1: nm.na1d_av, 2: nm.na2d_av, 3: nm.na3d_av}
VARLEN = {1: nm.na1d_varlen, 2: nm.na2d_varlen, 3: nm.na3d_varlen}

# (extent, kernel, stride, dilation, causal)
PUBLIC = [
    ((16,), 5, 1, 1, False),
    ((9,), 3, 2, 2, True),
    ((10,), 4, 3, 2, False),
    ((11,), (6,), (2,), (1,), (True,)),
    ((7, 9), (3, 5), (2, 3), (2, 1), (True, False)),
    ((6, 6), 4, 1, 1, (False, True)),
    ((8, 5), (2, 5), (2, 1), (3, 1), False),
    ((4, 5, 6), (3, 2, 3), (2, 1, 3), (1, 2, 2), (True, False, True)),
    ((5, 4, 4), 3, 1, 1, (False, False, True)),
]


def _ids(c):
    return "-".join(str(x).replace(" ", "") for x in c)


@pytest.mark.parametrize("case", PUBLIC, ids=[_ids(c) for c in PUBLIC])
def test_public_ops_vs_oracle(tier, case, rng):
    X, K, s, d, c = case
    r = len(X)
    B, H, Hkv, D = 2, 4, 2, 6
    q, qn = rand(rng, (B,) + X + (H, D))
    k, kn = rand(rng, (B,) + X + (Hkv, D))
    v, vn = rand(rng, (B,) + X + (Hkv, D))
    out, lse = FUSED[r](q, k, v, K, stride=s, dilation=d, is_causal=c, return_lse=True)
    oo, ol = oracle_na(qn, kn, vn, K, d, s, 1, c)
    assert_close(out, oo, what="out")
    assert_close(lse, ol, what="lse")
    assert lse.dtype == mx.float32
    out2 = FUSED[r](q, k, v, K, s, d, c, 0.3)          # positional, explicit scale
    assert_close(out2, oracle_na(qn, kn, vn, K, d, s, 1, c, scale=0.3)[0], what="scale")
    # split ops: default scale applied by qk
    logits = QK[r](q, k, K, d, stride=s, is_causal=c)
    assert_close(logits, oracle_qk(qn, kn, K, d, s, 1, c), what="qk")
    kr = mx.repeat(k, H // Hkv, axis=-2)
    vr = mx.repeat(v, H // Hkv, axis=-2)
    attn = mx.softmax(QK[r](q, kr, K, d, stride=s, is_causal=c), axis=-1)
    split = AV[r](attn, vr, K, d, stride=s, is_causal=c)
    assert_close(split, oo, what="split == fused")
    an = to_np(attn)
    assert_close(AV[r](attn, vr, K, d, stride=s, is_causal=c),
                 oracle_av(an, to_np(vr), K, d, s, 1, c), what="av")


@pytest.mark.parametrize("case", PUBLIC, ids=[_ids(c) for c in PUBLIC])
def test_additional_kv_with_stride(tier, case, rng):
    X, K, s, d, c = case
    r = len(X)
    B, H, Hkv, D, N = 2, 4, 1, 4, 3
    q, qn = rand(rng, (B,) + X + (H, D))
    k, kn = rand(rng, (B,) + X + (Hkv, D))
    v, vn = rand(rng, (B,) + X + (Hkv, D))
    ek, ekn = rand(rng, (B, N, Hkv, D))
    ev, evn = rand(rng, (B, N, Hkv, D))
    out, lse = FUSED[r](q, k, v, K, stride=s, dilation=d, is_causal=c, return_lse=True,
                        additional_keys=ek, additional_values=ev)
    oo, ol = oracle_na(qn, kn, vn, K, d, s, 1, c, extra_k=ekn, extra_v=evn)
    assert_close(out, oo, what="out")
    assert_close(lse, ol, what="lse")
    assert lse.dtype == mx.float32


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_stride_equals_slicing(tier, rank, rng):
    X = {1: (11,), 2: (7, 8), 3: (5, 6, 4)}[rank]
    st = {1: 3, 2: (2, 3), 3: (2, 3, 2)}[rank]
    q, _ = rand(rng, (1,) + X + (2, 4))
    full = FUSED[rank](q, q, q, 3, dilation=1, is_causal=True)
    strided = FUSED[rank](q, q, q, 3, stride=st, is_causal=True)
    sts = st if isinstance(st, tuple) else (st,)
    idx = (slice(None),) + tuple(slice(None, None, x) for x in sts)
    np.testing.assert_allclose(np.array(strided), np.array(full[idx]), atol=1e-6)


def test_stride_output_shapes():
    q = mx.zeros((1, 33, 1, 4))
    assert nm.na1d(q, q, q, 3, stride=2).shape == (1, 17, 1, 4)
    q3 = mx.zeros((1, 9, 8, 7, 1, 4))
    assert nm.na3d(q3, q3, q3, 3, stride=(2, 3, 2)).shape == (1, 5, 3, 4, 1, 4)
    assert nm.na3d_qk(q3, q3, 3, stride=(2, 3, 2)).shape == (1, 5, 3, 4, 1, 27)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fmha_fast_path_equals_sdpa_and_oracle(rank, rng, monkeypatch):
    X = {1: (7,), 2: (3, 4), 3: (2, 3, 2)}[rank]
    q, qn = rand(rng, (2,) + X + (4, 8))
    k, kn = rand(rng, (2,) + X + (2, 8))
    v, vn = rand(rng, (2,) + X + (2, 8))
    ek, ekn = rand(rng, (2, 2, 2, 8))
    ev, evn = rand(rng, (2, 2, 2, 8))
    calls = []
    real = mx.fast.scaled_dot_product_attention

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", spy)
    out, lse = FUSED[rank](q, k, v, X, return_lse=True, additional_keys=ek,
                           additional_values=ev)
    assert calls, "FMHA path not taken"
    oo, ol = oracle_na(qn, kn, vn, X, extra_k=ekn, extra_v=evn)
    assert_close(out, oo, what="out")
    assert_close(lse, ol, what="lse")
    calls.clear()
    FUSED[rank](q, k, v, X, is_causal=True)
    assert not calls, "causal must avoid the FMHA path"


def test_gqa_equals_explicit_repeat(tier, rng):
    q, _ = rand(rng, (2, 12, 8, 4))
    k, _ = rand(rng, (2, 12, 2, 4))
    v, _ = rand(rng, (2, 12, 2, 4))
    a = nm.na1d(q, k, v, 5, dilation=2, is_causal=True)
    b = nm.na1d(q, mx.repeat(k, 4, axis=-2), mx.repeat(v, 4, axis=-2), 5, dilation=2,
                is_causal=True)
    np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)


def test_merge_equals_joint_attention(tier, rng):
    q, qn = rand(rng, (1, 10, 2, 4))
    k, kn = rand(rng, (1, 10, 2, 4))
    v, vn = rand(rng, (1, 10, 2, 4))
    parts = [rand(rng, (1, 3, 2, 4)) for _ in range(4)]
    o1, l1 = nm.na1d(q, k, v, 3, return_lse=True, additional_keys=parts[0][0],
                     additional_values=parts[1][0])
    o2, l2 = nm.na1d(q, k, v, 3, return_lse=True, additional_keys=parts[2][0],
                     additional_values=parts[3][0])
    # attention of q over the second extra set alone, through the FMHA identity
    qf = q.transpose(0, 2, 1, 3)
    ek2 = parts[2][0].transpose(0, 2, 1, 3)
    ev2 = parts[3][0].transpose(0, 2, 1, 3)
    s = (qf @ ek2.transpose(0, 1, 3, 2)) * 0.5
    o_e = (mx.softmax(s, axis=-1) @ ev2).transpose(0, 2, 1, 3)
    l_e = mx.logsumexp(s, axis=-1).transpose(0, 2, 1)
    merged, ml = nm.merge_attentions([o1, o_e], [l1, l_e])
    ek = np.concatenate([parts[0][1], parts[2][1]], axis=1)
    ev = np.concatenate([parts[1][1], parts[3][1]], axis=1)
    oo, ol = oracle_na(qn, kn, vn, 3, extra_k=ek, extra_v=ev)
    assert_close(merged, oo, what="merged")
    assert_close(ml, ol, what="merged lse")
    assert ml.dtype == mx.float32
    # three-way merge: NA part, extra part A, extra part B
    o_na, l_na = nm.na1d(q, k, v, 3, return_lse=True)
    assert l_na.dtype == q.dtype
    ekA = parts[0][0].transpose(0, 2, 1, 3)
    evA = parts[1][0].transpose(0, 2, 1, 3)
    sA = (qf @ ekA.transpose(0, 1, 3, 2)) * 0.5
    o_a = (mx.softmax(sA, axis=-1) @ evA).transpose(0, 2, 1, 3)
    l_a = mx.logsumexp(sA, axis=-1).transpose(0, 2, 1)
    m3, l3 = nm.merge_attentions([o_na, o_a, o_e], [l_na, l_a, l_e])
    assert_close(m3, oo, what="3-way")
    assert_close(l3, ol, what="3-way lse")
    del o2, l2


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_varlen_public(tier, rank, rng):
    X = {1: (12,), 2: (7, 6), 3: (4, 5, 5)}[rank]
    sizes = {1: [12, 7, 5], 2: [[7, 6], [4, 3], [5, 6]], 3: [[4, 5, 5], [3, 3, 4], [4, 4, 3]]}[rank]
    K = {1: 5, 2: (3, 2), 3: 3}[rank]
    d = {1: 1, 2: (1, 1), 3: 1}[rank]
    q, qn = rand(rng, (3,) + X + (2, 4))
    k, kn = rand(rng, (3,) + X + (2, 4))
    v, vn = rand(rng, (3,) + X + (2, 4))
    out = VARLEN[rank](q, k, v, mx.array(sizes), K, d)
    oo, _ = oracle_na(qn, kn, vn, K, d, varlen=np.array(sizes).reshape(3, rank))
    assert_close(out, oo, what="varlen")
    # uniform sizes equal the plain op
    full = [list(X)] * 3 if rank > 1 else [X[0]] * 3
    np.testing.assert_allclose(np.array(VARLEN[rank](q, k, v, mx.array(full), K, d)),
                               np.array(FUSED[rank](q, k, v, K, dilation=d)), atol=1e-6)


def test_varlen_dilation(rng):
    q, qn = rand(rng, (2, 12, 1, 4))
    sizes = [12, 8]
    out = nm.na1d_varlen(q, q, q, mx.array(sizes, dtype=mx.int64), 3, 2, scale=0.7)
    oo, _ = oracle_na(qn, qn, qn, 3, 2, scale=0.7, varlen=np.array(sizes).reshape(2, 1))
    assert_close(out, oo)
    assert (np.array(out[1, 8:]) == 0).all()


def test_strided_views(tier, rng):
    """Transposed / sliced inputs give the same answer as contiguous copies."""
    base, bn = rand(rng, (2, 4, 10, 8))          # [B, H, L, D] -> view as [B, L, H, D]
    q = base.transpose(0, 2, 1, 3)
    kv, kvn = rand(rng, (2, 10, 4, 16))
    k = kv[..., ::2]
    v = kv[..., 1::2]
    out = nm.na1d(q, k, v, 3, dilation=3, is_causal=True)
    oo, _ = oracle_na(bn.transpose(0, 2, 1, 3), kvn[..., ::2], kvn[..., 1::2], 3, 3, 1, 1, True)
    assert_close(out, oo)


def test_compile_forward(tier, rng):
    q, qn = rand(rng, (1, 6, 7, 2, 4))

    @mx.compile
    def f(x):
        return nm.na2d(x, x, x, (3, 2), stride=(2, 1), is_causal=(True, False))

    assert_close(f(q), oracle_na(qn, qn, qn, (3, 2), 1, (2, 1), 1, (True, False))[0])


def test_even_and_non_square_kernels(tier, rng):
    """natten-mlx gets these wrong (spec §14); upstream's rule applies here."""
    q, qn = rand(rng, (1, 8, 1, 3))
    logits = nm.na1d_qk(q, q, 4, scale=1.0)
    want = oracle_qk(qn, qn, 4, scale=1.0)
    assert_close(logits, want)
    # query 7 of L=8, K=4 sees keys 4..7 (upstream: 2 left, 1 right, slid inward)
    qk = (qn[0, 7, 0] * qn[0, 4:8, 0]).sum(-1)
    np.testing.assert_allclose(to_np(logits)[0, 7, 0], qk, atol=1e-5)
    q2, qn2 = rand(rng, (1, 5, 7, 1, 3))
    assert_close(nm.na2d(q2, q2, q2, (3, 5)), oracle_na(qn2, qn2, qn2, (3, 5))[0])


def test_scale_zero_honoured(rng):
    q, qn = rand(rng, (1, 6, 1, 4))
    v, vn = rand(rng, (1, 6, 1, 4))
    out = nm.na1d(q, q, v, 3, scale=0.0)
    assert_close(out, oracle_na(qn, qn, vn, 3, scale=0.0)[0])
    assert (np.array(nm.na1d_qk(q, q, 3, scale=0.0)) == 0).all()


def test_functional_module_exports():
    for name in F.__all__:
        assert callable(getattr(F, name))
    assert len(F.__all__) == 12


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_split_grads_equal_fused_grads(tier, rank, rng):
    X = {1: (12,), 2: (6, 7), 3: (4, 5, 4)}[rank]
    K, s, c = 3, 2, True
    q, _ = rand(rng, (1,) + X + (2, 4))
    k, _ = rand(rng, (1,) + X + (2, 4))
    v, _ = rand(rng, (1,) + X + (2, 4))
    W = rand(rng, FUSED[rank](q, k, v, K, s, 1, c).shape)[0]

    def fused(q, k, v):
        return (FUSED[rank](q, k, v, K, s, 1, c) * W).sum()

    def split(q, k, v):
        a = mx.softmax(QK[rank](q, k, K, 1, stride=s, is_causal=c), axis=-1)
        return (AV[rank](a, v, K, 1, stride=s, is_causal=c) * W).sum()

    gf = mx.grad(fused, argnums=(0, 1, 2))(q, k, v)
    gs = mx.grad(split, argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(gf, gs):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-4, rtol=1e-4)
