"""float32 / float16 / bfloat16 everywhere, float64 on the CPU: outputs vs the
float64 oracle with per-dtype tolerances; dtype rules of spec §3.14/§3.17."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import natten_mlx as nm
from nautil import TOL, assert_close, rand, to_np
from oracle import oracle_av, oracle_na, oracle_qk

DTYPES = [mx.float32, mx.float16, mx.bfloat16, mx.float64]


@pytest.fixture(autouse=True)
def _cpu_for_f64(request):
    """float64 exists on the CPU only; other dtypes run on the default device."""
    dtype = request.node.callspec.params.get("dtype") if hasattr(request.node, "callspec") \
        else None
    prev = mx.default_device()
    if isinstance(dtype, mx.Dtype) and dtype == mx.float64:
        mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(prev)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_dtypes_vs_oracle(tier, dtype, rank, rng):
    X = {1: (10,), 2: (5, 6), 3: (3, 4, 4)}[rank]
    K = {1: 3, 2: (3, 2), 3: (2, 3, 3)}[rank]
    c = {1: True, 2: (False, True), 3: (True, False, False)}[rank]
    s = {1: 2, 2: (1, 2), 3: 1}[rank]
    fused = {1: nm.na1d, 2: nm.na2d, 3: nm.na3d}[rank]
    qk = {1: nm.na1d_qk, 2: nm.na2d_qk, 3: nm.na3d_qk}[rank]
    av = {1: nm.na1d_av, 2: nm.na2d_av, 3: nm.na3d_av}[rank]
    q, qn = rand(rng, (2,) + X + (2, 8), dtype)
    k, kn = rand(rng, (2,) + X + (2, 8), dtype)
    v, vn = rand(rng, (2,) + X + (2, 8), dtype)
    out, lse = fused(q, k, v, K, stride=s, is_causal=c, return_lse=True)
    oo, ol = oracle_na(qn, kn, vn, K, 1, s, 1, c)
    assert out.dtype == dtype
    assert lse.dtype == dtype          # natten-mlx: lse in the logits (query) dtype
    assert_close(out, oo, dtype, "out")
    assert_close(lse, ol, dtype, "lse")
    lg = qk(q, k, K, stride=s, is_causal=c)
    assert lg.dtype == dtype
    assert_close(lg, oracle_qk(qn, kn, K, 1, s, 1, c), dtype, "qk")   # -inf pattern too
    attn = mx.softmax(lg.astype(mx.float32), axis=-1).astype(dtype)
    o2 = av(attn, v, K, stride=s, is_causal=c)
    assert o2.dtype == dtype
    assert_close(o2, oracle_av(to_np(attn), vn, K, 1, s, 1, c), dtype, "av")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extra_kv_lse_float32(tier, dtype, rng):
    q, qn = rand(rng, (1, 9, 2, 4), dtype)
    ek, ekn = rand(rng, (1, 2, 2, 4), dtype)
    out, lse = nm.na1d(q, q, q, 3, return_lse=True, additional_keys=ek, additional_values=ek)
    assert out.dtype == dtype
    assert lse.dtype == (mx.float64 if dtype == mx.float64 else mx.float32)
    oo, ol = oracle_na(qn, qn, qn, 3, extra_k=ekn, extra_v=ekn)
    assert_close(out, oo, dtype)
    assert_close(lse, ol, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_varlen_and_modules_dtypes(tier, dtype, rng):
    q, qn = rand(rng, (2, 8, 2, 4), dtype)
    out = nm.na1d_varlen(q, q, q, mx.array([8, 5]), 3)
    assert out.dtype == dtype
    assert_close(out, oracle_na(qn, qn, qn, 3, varlen=[[8], [5]])[0], dtype)
    layer = nm.NeighborhoodAttention1D(16, 2, 3)
    layer.set_dtype(dtype)
    y = layer(mx.random.normal((1, 7, 16)).astype(dtype))
    assert y.dtype == dtype
    assert not np.isnan(to_np(y)).any()


def test_tolerance_table_covers_dtypes():
    assert set(TOL) == set(DTYPES)


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=str)
def test_low_precision_grads_finite(tier, dtype, rng):
    q, _ = rand(rng, (1, 8, 2, 8), dtype)
    g = mx.grad(lambda q: nm.na1d(q, q, q, 3, is_causal=True).astype(mx.float32).sum())(q)
    assert g.dtype == dtype
    assert np.isfinite(to_np(g)).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fmha_path_dtypes(dtype, rng):
    q, qn = rand(rng, (1, 3, 4, 4, 8), dtype)
    k, kn = rand(rng, (1, 3, 4, 2, 8), dtype)
    out, lse = nm.na2d(q, k, k, (3, 4), return_lse=True)
    assert out.dtype == dtype and lse.dtype == dtype
    oo, ol = oracle_na(qn, kn, kn, (3, 4))
    assert_close(out, oo, dtype, "fmha out")
    assert_close(lse, ol, dtype, "fmha lse")
