"""Backend selection, NATTEN_BACKEND, per-op fallback, support matrix, package surface."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types

import mlx.core as mx
import numpy as np
import pytest

import natten_mlx as nm
from natten_mlx._core import ops
from natten_mlx._core.params import NAParams
from nautil import assert_close, rand
from oracle import oracle_na

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SPEC_ALL = {
    "__version__", "na1d", "na2d", "na3d", "na1d_varlen", "na2d_varlen", "na3d_varlen",
    "na1d_qk", "na2d_qk", "na3d_qk", "na1d_av", "na2d_av", "na3d_av", "merge_attentions",
    "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
    "has_metal", "has_nanobind", "get_backend", "set_backend", "get_support_matrix",
}


def test_package_surface():
    assert set(nm.__all__) == SPEC_ALL
    assert len(nm.__all__) == len(SPEC_ALL)
    for name in nm.__all__:
        assert hasattr(nm, name), name
    assert isinstance(nm.__version__, str) and nm.__version__.startswith("0.3")
    assert nm.ops is ops
    for mod in ("natten_mlx.functional", "natten_mlx.merge", "natten_mlx.nn",
                "natten_mlx.support_matrix", "natten_mlx.utils", "natten_mlx.utils.params",
                "natten_mlx.utils.window", "natten_mlx.autograd", "natten_mlx._core.ops"):
        importlib.import_module(mod)
    from natten_mlx import autograd
    for r in (1, 2, 3):
        for suffix in ("", "_varlen", "_qk", "_av"):
            assert callable(getattr(autograd, f"na{r}d{suffix}_with_grad"))


def test_autograd_entry_points(rng):
    from natten_mlx import autograd
    q, qn = rand(rng, (1, 9, 2, 4))
    out = autograd.na1d_with_grad(q, q, q, (3,), (2,), (2,), (True,), None)
    assert_close(out, oracle_na(qn, qn, qn, 3, 2, 2, 1, True)[0])
    lg = autograd.na1d_qk_with_grad(q, q, (3,), (1,), (1,), (False,), 0.5)
    o2 = autograd.na1d_av_with_grad(mx.softmax(lg, axis=-1), q, (3,), (1,), (1,), (False,))
    assert_close(o2, oracle_na(qn, qn, qn, 3, scale=0.5)[0])
    o3 = autograd.na1d_varlen_with_grad(q, q, q, mx.array([9]), (3,), (1,))
    assert_close(o3, oracle_na(qn, qn, qn, 3)[0])


def test_has_flags_truthful():
    assert nm.has_metal() is False
    try:
        importlib.import_module("natten_mlx._core._natten_ext")
        importable = True
    except Exception:
        importable = False
    assert nm.has_nanobind() == importable


def test_set_get_backend_roundtrip():
    for name in ("pure", "fast_metal", "nanobind"):
        nm.set_backend(name)
        assert nm.get_backend() == name      # no availability check (natten-mlx behaviour)
    nm.set_backend("auto")
    want = "nanobind" if nm.has_nanobind() else (
        "fast_metal" if ops.tier_available("fast_metal") else "pure")
    assert nm.get_backend() == want
    with pytest.raises(ValueError, match="Unknown backend 'gpu'"):
        nm.set_backend("gpu")


@pytest.mark.parametrize("value,expect", [("pure", "pure"), ("bogus", "auto"), ("", "auto"),
                                          ("nanobind", "nanobind"), ("fast_metal", "fast_metal")])
def test_env_var_read_once(value, expect):
    code = (
        "import os, natten_mlx as nm; from natten_mlx._core import ops;"
        "a = ops.selected_backend(); os.environ['NATTEN_BACKEND'] = 'pure';"
        "importlib = __import__('importlib'); print(a, ops.selected_backend())"
    )
    env = dict(os.environ, NATTEN_BACKEND=value, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.split()
    assert first == expect and second == expect


def test_unavailable_backend_falls_back(rng):
    """fast_metal on the CPU (or without CUDA) runs pure; results stay correct."""
    nm.set_backend("fast_metal")
    p = NAParams(1, (3,), (1,), (1,), (1,), (True,), 0.5)
    if not ops.tier_available("fast_metal") or mx.default_device() == mx.cpu:
        assert ops.select_tier("fused", p, mx.float32) == "pure"
    q, qn = rand(rng, (1, 8, 1, 4))
    assert_close(nm.na1d(q, q, q, 3, is_causal=True, scale=0.5),
                 oracle_na(qn, qn, qn, 3, causal=True, scale=0.5)[0])
    nm.set_backend("pure")
    assert ops.select_tier("fused", p, mx.float32) == "pure"


def _fake_tier(answer, calls):
    pure = ops.tier_module("pure")

    def wrap(name):
        def fn(*a, **kw):
            calls.append(name)
            return getattr(pure, name)(*a, **kw)
        return fn

    mod = types.SimpleNamespace(
        is_available=lambda: True,
        supports=lambda op, p, dtype, device=None, **f: answer(op, p, dtype, f),
        na_fused=wrap("na_fused"), na_qk=wrap("na_qk"), na_av=wrap("na_av"))
    return mod


def test_per_op_fallback(monkeypatch, rng):
    calls = []
    fake = _fake_tier(lambda op, p, dtype, f: op == "qk" and not f["rpb"], calls)
    monkeypatch.setitem(ops._tier_cache, "nanobind", fake)
    nm.set_backend("nanobind")
    q, qn = rand(rng, (1, 7, 2, 4))
    p = NAParams(1, (3,), (1,), (1,), (1,), (False,), 1.0)
    assert ops.select_tier("qk", p, mx.float32) == "nanobind"
    assert ops.select_tier("qk", p, mx.float32, rpb=True) in ("fast_metal", "pure")
    assert ops.select_tier("fused", p, mx.float32) in ("fast_metal", "pure")
    nm.na1d_qk(q, q, 3)
    assert calls == ["na_qk"]
    out = nm.na1d(q, q, q, 3)
    assert calls == ["na_qk"]                   # fused went to the next tier
    assert_close(out, oracle_na(qn, qn, qn, 3)[0])
    nm.set_backend("pure")
    nm.na1d_qk(q, q, 3)
    assert calls == ["na_qk"]                   # pure chain never consults nanobind


def test_tier_that_raises_in_supports_is_skipped(monkeypatch, rng):
    def boom(op, p, dtype, f):
        raise RuntimeError("broken tier")
    monkeypatch.setitem(ops._tier_cache, "nanobind", _fake_tier(boom, []))
    nm.set_backend("auto")
    q, qn = rand(rng, (1, 6, 1, 2))
    assert_close(nm.na1d(q, q, q, 3), oracle_na(qn, qn, qn, 3)[0])


def test_support_matrix_structure():
    sm = nm.get_support_matrix()
    assert set(sm) == {"pure", "fast_metal", "nanobind"}
    for name, entry in sm.items():
        assert set(entry) == {"available", "forward", "backward", "varlen", "fusion",
                              "constraints"}
        assert isinstance(entry["available"], bool)
        assert set(entry["forward"]) == {"na1d", "na2d", "na3d", "split_qk_av"}
        assert set(entry["backward"]) == {"na1d", "na2d", "na3d", "split_qk_av"}
        assert set(entry["varlen"]) == {"na1d", "na2d", "na3d"}
        assert set(entry["fusion"]) == {"na1d", "na2d", "na3d"}
        for group in ("forward", "backward", "varlen", "fusion"):
            assert all(isinstance(x, bool) for x in entry[group].values())
        assert isinstance(entry["constraints"], list)
    assert sm["pure"]["available"] is True and sm["pure"]["constraints"] == []
    assert all(sm["fast_metal"]["fusion"].values()) and all(sm["nanobind"]["fusion"].values())
    assert sm["nanobind"]["available"] == nm.has_nanobind()
    assert sm["fast_metal"]["available"] == ops.tier_available("fast_metal")


def test_tiers_agree(rng):
    """Every available tier gives the oracle's answer for the spec's backend-matrix configs."""
    configs = [
        ((1, 24, 2, 8), 9, 2, 2, True),
        ((1, 10, 12, 2, 8), 9, (2, 3), (1, 1), (True, False)),
        ((1, 9, 8, 7, 1, 4), 3, (2, 3, 2), (2, 1, 1), (True, False, True)),
    ]
    from conftest import TIERS
    for shape, K, s, d, c in configs:
        rank = len(shape) - 3
        fn = {1: nm.na1d, 2: nm.na2d, 3: nm.na3d}[rank]
        q, qn = rand(rng, shape)
        want = oracle_na(qn, qn, qn, K, d, s, 1, c)[0]
        for t in TIERS:
            nm.set_backend(t)
            assert_close(fn(q, q, q, K, s, d, c), want, what=t)
    np.testing.assert_equal(True, True)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_ops_rank_entry_points(tier, rank, rng):
    """natten-mlx's ops.na{r}d_{forward,backward,qk_*,av_*} (called directly by
    its tests) agree with the public API and with autodiff of it."""
    X = {1: (9,), 2: (5, 6), 3: (3, 4, 4)}[rank]
    ks, st, dil, caus = (3,) * rank, (2,) * rank, (1,) * rank, (True,) * rank
    fused = {1: nm.na1d, 2: nm.na2d, 3: nm.na3d}[rank]
    q, qn = rand(rng, (1,) + X + (2, 4))
    k, _ = rand(rng, (1,) + X + (2, 4))
    v, _ = rand(rng, (1,) + X + (2, 4))
    out = getattr(ops, f"na{rank}d_forward")(q, k, v, ks, st, dil, caus, None)
    ref = fused(q, k, v, 3, 2, 1, True)
    np.testing.assert_allclose(np.array(out), np.array(ref), atol=1e-6)
    g = mx.ones(out.shape)
    dq, dk, dv = getattr(ops, f"na{rank}d_backward")(q, k, v, g, ks, st, dil, caus, None)
    rq, rk, rv = mx.grad(lambda a, b, c: fused(a, b, c, 3, 2, 1, True).sum(),
                         argnums=(0, 1, 2))(q, k, v)
    for a, b in ((dq, rq), (dk, rk), (dv, rv)):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)
    lg = getattr(ops, f"na{rank}d_qk_forward")(q, k, ks, st, dil, caus, 0.5)
    attn = mx.softmax(lg, axis=-1)
    o2 = getattr(ops, f"na{rank}d_av_forward")(attn, v, ks, st, dil, caus)
    np.testing.assert_allclose(np.array(o2), np.array(fused(q, k, v, 3, 2, 1, True, 0.5)),
                               atol=1e-5)
    dq2, dk2 = getattr(ops, f"na{rank}d_qk_backward")(q, k, mx.where(mx.isinf(lg), 0, 1.0), ks,
                                                      st, dil, caus, 0.5)
    assert dq2.shape == q.shape and dk2.shape == k.shape
    da, dv2 = getattr(ops, f"na{rank}d_av_backward")(attn, v, mx.ones(o2.shape), ks, st, dil,
                                                     caus)
    assert da.shape == attn.shape and dv2.shape == v.shape
    assert (np.array(da)[np.isinf(np.array(lg))] == 0).all()


def test_backend_module_objects():
    assert nm.nanobind.is_available() == nm.has_nanobind()
    assert nm.fast_metal.is_available() == ops.tier_available("fast_metal")


def test_without_extension_everything_runs_on_pure():
    """With the extension unavailable (override module that does not exist),
    has_nanobind() is False, auto resolves to pure and the API still works."""
    code = (
        "import mlx.core as mx, natten_mlx as nm;"
        "q = mx.random.normal((1, 9, 2, 4));"
        "o = nm.na1d(q, q, q, 3, stride=2, is_causal=True);"
        "g = mx.grad(lambda q: nm.na2d(q, q, q, 3).sum())(mx.random.normal((1, 4, 5, 1, 2)));"
        "mx.eval(o, g);"
        "print(nm.has_nanobind(), nm.get_backend(), nm.get_support_matrix()['nanobind']['available'])"
    )
    env = dict(os.environ, NATTEN_MLX_NANOBIND_MODULE="natten_mlx_no_such_module",
               PYTHONPATH=ROOT)
    env.pop("NATTEN_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    want_backend = "fast_metal" if ops.tier_available("fast_metal") else "pure"
    assert res.stdout.split() == ["False", want_backend, "False"]


def test_rpb_with_gna_stride_is_a_clear_error(rng):
    p = NAParams(1, (3,), (1,), (1,), (2,), (False,), 1.0)
    q, _ = rand(rng, (1, 8, 1, 2))
    r, _ = rand(rng, (1, 5))
    for name in ("auto", "pure", "nanobind"):
        nm.set_backend(name)
        with pytest.raises(ValueError, match="gna_stride > 1"):
            ops.na_fused(q, q, q, p, rpb=r)
        with pytest.raises(ValueError, match="gna_stride > 1"):
            ops.na_qk(q, q, p, rpb=r)
    # without rpb, GNA stride runs
    ops.na_fused(q, q, q, p)
