"""compat.v020: upstream NATTEN >= 0.20 semantics (GNA stride keeps the query shape)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import oracle
from nautil import assert_close
from natten_mlx.compat import v020
from test_compat_support import npy

# upstream-natten.md 1.6, verbatim: (L, K, s, d, causal) -> neighbour set of every query
WORKED = [
    ((8, 3, 1, 1, False), [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7], [5, 6, 7]]),
    ((8, 3, 1, 2, False), [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7], [2, 4, 6], [3, 5, 7]]),
    ((9, 3, 1, 2, False), [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7], [4, 6, 8], [3, 5, 7], [4, 6, 8]]),
    ((8, 4, 1, 1, False), [[0, 1, 2, 3]] * 3 + [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [4, 5, 6, 7]]),
    ((8, 3, 1, 1, True), [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7]]),
    ((8, 3, 3, 1, False), [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3 + [[5, 6, 7]] * 2),
    ((8, 4, 2, 1, False), [[0, 1, 2, 3]] * 2 + [[1, 2, 3, 4]] * 2 + [[3, 4, 5, 6]] * 2 + [[4, 5, 6, 7]] * 2),
    ((8, 4, 4, 1, False), [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7]] * 4),
    ((8, 3, 2, 1, True), [[0], [0, 1], [1, 2], [1, 2, 3], [3, 4], [3, 4, 5], [5, 6], [5, 6, 7]]),
    ((8, 3, 3, 1, True), [[0], [0, 1], [0, 1, 2], [3], [3, 4], [3, 4, 5], [5, 6], [5, 6, 7]]),
    ((8, 8, 1, 1, False), [list(range(8))] * 8),
]


@pytest.mark.parametrize("case,sets", WORKED, ids=[str(c[0]) for c in WORKED])
def test_worked_examples_fused(tier, case, sets):
    """With q = 0 the attention is uniform over the neighbour set; v = one-hot(key)."""
    L, K, s, d, causal = case
    q = mx.zeros((1, L, 1, L))
    v = mx.broadcast_to(mx.eye(L)[None, :, None, :], (1, L, 1, L))
    out = v020.na1d(q, q, v, K, stride=s, dilation=d, is_causal=causal)
    assert out.shape == (1, L, 1, L)  # GNA keeps the query shape
    w = np.array(out)[0, :, 0, :]
    for i in range(L):
        support = sorted(np.nonzero(w[i] > 1e-6)[0].tolist())
        assert support == sets[i], f"query {i}: {support} vs {sets[i]}"
        np.testing.assert_allclose(w[i][sets[i]], 1.0 / len(sets[i]), rtol=1e-5)


@pytest.mark.parametrize("case,sets", WORKED, ids=[str(c[0]) for c in WORKED])
def test_worked_examples_split(tier, case, sets):
    """logits of slot n = key position (q = arange, k = one-hot): the valid slots name the keys."""
    L, K, s, d, causal = case
    q = mx.broadcast_to(mx.arange(L, dtype=mx.float32)[None, None, None, :], (1, L, 1, L))
    k = mx.broadcast_to(mx.eye(L)[None, :, None, :], (1, L, 1, L))
    logits = np.array(v020.na1d_qk(q, k, K, d, stride=s, is_causal=causal, scale=1.0))[0, :, 0]
    assert logits.shape == (L, K)
    for i in range(L):
        got = sorted(int(x) for x in logits[i] if np.isfinite(x))
        assert got == sets[i]


def test_2d_worked_example(tier):
    # 6x6, K=(3,3): query (0,5) sees {0,1,2} x {3,4,5}
    q = mx.zeros((1, 6, 6, 1, 36))
    v = mx.eye(36).reshape(1, 6, 6, 1, 36)
    w = np.array(v020.na2d(q, q, v, 3))[0, 0, 5, 0].reshape(6, 6)
    want = np.zeros((6, 6))
    want[0:3, 3:6] = 1 / 9
    np.testing.assert_allclose(w, want, atol=1e-6)


CASES = [
    # ext, K, s, d, causal
    ((13,), 5, 2, 1, False),
    ((14,), 4, 3, 2, False),
    ((12,), 3, 3, 1, True),
    ((17,), 5, 4, 3, True),
    ((8, 9), (3, 4), (2, 3), (2, 1), (False, True)),
    ((10, 7), 3, 3, 1, False),
    ((6, 5, 7), (3, 2, 3), (2, 1, 3), (1, 2, 1), (True, False, False)),
]


@pytest.mark.parametrize("ext,K,s,d,causal", CASES)
def test_fused_matches_oracle_gna(tier, rng, ext, K, s, d, causal):
    rank = len(ext)
    B, H, Hkv, D = 2, 4, 2, 8
    q = mx.array(rng.standard_normal((B,) + ext + (H, D)).astype(np.float32))
    k = mx.array(rng.standard_normal((B,) + ext + (Hkv, D)).astype(np.float32))
    v = mx.array(rng.standard_normal((B,) + ext + (Hkv, D)).astype(np.float32))
    fn = getattr(v020, f"na{rank}d")
    out, lse = fn(q, k, v, K, stride=s, dilation=d, is_causal=causal, return_lse=True)
    want, wlse = oracle.oracle_na(npy(q), npy(k), npy(v), K, dilation=d, gna_stride=s, causal=causal)
    assert out.shape == q.shape and lse.shape == q.shape[:-1] and lse.dtype == mx.float32
    assert_close(out, want, what="out")
    assert_close(lse, wlse, what="lse")
    # split ops with the same stride (equal heads)
    kr, vr = mx.repeat(k, H // Hkv, axis=-2), mx.repeat(v, H // Hkv, axis=-2)
    qk = getattr(v020, f"na{rank}d_qk")
    av = getattr(v020, f"na{rank}d_av")
    logits = qk(q, kr, K, d, stride=s, is_causal=causal)
    assert_close(logits, oracle.oracle_qk(npy(q), npy(kr), K, dilation=d, gna_stride=s, causal=causal),
                 what="qk")
    o2 = av(mx.softmax(logits, axis=-1), vr, K, d, stride=s, is_causal=causal)
    assert_close(o2, want, what="qk->softmax->av")


def test_additional_kv_with_stride(tier, rng):
    q = mx.array(rng.standard_normal((2, 11, 2, 4)).astype(np.float32))
    k = mx.array(rng.standard_normal((2, 11, 2, 4)).astype(np.float32))
    v = mx.array(rng.standard_normal((2, 11, 2, 4)).astype(np.float32))
    ak = mx.array(rng.standard_normal((2, 3, 2, 4)).astype(np.float32))
    av = mx.array(rng.standard_normal((2, 3, 2, 4)).astype(np.float32))
    out = v020.na1d(q, k, v, 5, stride=2, dilation=2, additional_keys=ak, additional_values=av,
                    scale=0.7, backend="cutlass-fna", q_tile_shape=(64,))
    want, _ = oracle.oracle_na(npy(q), npy(k), npy(v), 5, dilation=2, gna_stride=2, scale=0.7,
                               extra_k=npy(ak), extra_v=npy(av))
    assert_close(out, want, what="extra kv + stride")


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_low_precision(tier, rng, dtype):
    q = mx.array(rng.standard_normal((1, 10, 9, 2, 8))).astype(dtype)
    k = mx.array(rng.standard_normal((1, 10, 9, 2, 8))).astype(dtype)
    v = mx.array(rng.standard_normal((1, 10, 9, 2, 8))).astype(dtype)
    out = v020.na2d(q, k, v, 3, stride=2, dilation=(1, 2))
    assert out.dtype == dtype
    want, _ = oracle.oracle_na(npy(q), npy(k), npy(v), 3, dilation=(1, 2), gna_stride=2)
    assert_close(out, want, dtype=dtype, what="low precision")


def test_attention_and_merge(tier, rng):
    q = mx.array(rng.standard_normal((2, 5, 4, 8)).astype(np.float32))
    k = mx.array(rng.standard_normal((2, 7, 2, 8)).astype(np.float32))
    v = mx.array(rng.standard_normal((2, 7, 2, 8)).astype(np.float32))
    qn, kn, vn = npy(q), np.repeat(npy(k), 2, axis=2), np.repeat(npy(v), 2, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", qn, kn) * 8**-0.5
    for causal in (False, True):
        sc = np.where(np.arange(7)[None, :] <= np.arange(5)[:, None], s, -np.inf) if causal else s
        m = sc.max(-1, keepdims=True)
        lse = np.log(np.exp(sc - m).sum(-1)) + m[..., 0]
        want = np.einsum("bhqk,bkhd->bqhd", np.exp(sc - lse[..., None]), vn)
        out, l = v020.attention(q, k, v, is_causal=causal, return_lse=True)
        assert_close(out, want, what="attention")
        assert_close(l, np.moveaxis(lse, 1, 2), what="attention lse")
    # merge two halves of the keys == attention over all keys
    o1, l1 = v020.attention(q, k[:, :3], v[:, :3], return_lse=True)
    o2, l2 = v020.attention(q, k[:, 3:], v[:, 3:], return_lse=True)
    mo, ml = v020.merge_attentions([o1, o2], [l1, l2])
    fo, fl = v020.attention(q, k, v, return_lse=True)
    assert_close(mo, npy(fo), what="merge out")
    assert_close(ml, npy(fl), what="merge lse")
    with pytest.raises(ValueError, match="at least two"):
        v020.merge_attentions([o1], [l1])
    with pytest.raises(NotImplementedError):
        v020.attention(q, k, v, seqlens_Q=mx.array([5, 5]))


def test_validation_follows_upstream_020():
    x = mx.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        v020.na1d(x, x, x, 1)  # kernel size 1 is rejected since 0.20
    with pytest.raises(ValueError, match="stride must not exceed kernel_size"):
        v020.na1d(x, x, x, 3, stride=4)
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        v020.na1d(x, x, x, 3, dilation=3)
    with pytest.raises(ValueError, match="stride"):
        v020.na1d(x, x, x, 3, stride=0)
    with pytest.raises(ValueError, match="is_causal"):
        v020.na2d(mx.zeros((1, 6, 6, 1, 4)), mx.zeros((1, 6, 6, 1, 4)), mx.zeros((1, 6, 6, 1, 4)), 3,
                  is_causal=(True,))
    with pytest.raises(ValueError, match="na1d expects"):
        v020.na1d(mx.zeros((8, 2, 4)), x, x, 3)
    with pytest.raises(ValueError, match="divisible"):
        v020.na1d(mx.zeros((1, 8, 3, 4)), x, x, 3)
    with pytest.raises(ValueError, match="both be provided"):
        v020.na1d(x, x, x, 3, additional_keys=mx.zeros((1, 2, 2, 4)))
    with pytest.raises(ValueError, match="kernel volume"):
        v020.na1d_av(mx.zeros((1, 8, 2, 4)), x, 3)


def test_feature_flags():
    assert v020.has_mlx() is True
    assert v020.has_cuda() is False and v020.has_mps() is False and v020.has_fna() is False


def test_value_head_dim_may_differ(tier, rng):
    # upstream 0.20.1+ (MLA-style): D_v != D_qk, also for the extra tokens
    q = mx.array(rng.standard_normal((1, 10, 2, 4)).astype(np.float32))
    k = mx.array(rng.standard_normal((1, 10, 2, 4)).astype(np.float32))
    v = mx.array(rng.standard_normal((1, 10, 2, 6)).astype(np.float32))
    ak = mx.array(rng.standard_normal((1, 2, 2, 4)).astype(np.float32))
    av = mx.array(rng.standard_normal((1, 2, 2, 6)).astype(np.float32))
    out = v020.na1d(q, k, v, 3, stride=2, additional_keys=ak, additional_values=av)
    assert out.shape == (1, 10, 2, 6)
    want, _ = oracle.oracle_na(npy(q), npy(k), npy(v), 3, gna_stride=2, extra_k=npy(ak), extra_v=npy(av))
    assert_close(out, want, what="D_v != D")


def test_compiled_step(tier, rng):
    # the shims trace under mx.compile (static gather tables, no host syncs)
    from natten_mlx.compat import v017

    q = mx.array(rng.standard_normal((1, 2, 9, 4)).astype(np.float32))

    def f(q):
        a = mx.softmax(v017.na1d_qk(q, q, 3, 2, is_causal=True), axis=-1)
        return v017.na1d_av(a, q, 3, 2, is_causal=True).sum() + v020.na1d(
            mx.moveaxis(q, 1, 2), mx.moveaxis(q, 1, 2), mx.moveaxis(q, 1, 2), 3, stride=3).sum()

    g = mx.compile(mx.grad(f))
    np.testing.assert_allclose(np.array(g(q)), np.array(mx.grad(f)(q)), rtol=1e-5, atol=1e-6)
