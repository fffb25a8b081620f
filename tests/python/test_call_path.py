"""The per-call path around the kernels: the functional layer's checked-call
cache, ops.na_out, the extension's own VJPs and mx.compile tracing.

Every cache here must behave exactly like no cache: a call whose arguments
differ in any way that matters gets its own checks and parameters, and a call
that fails is never remembered.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import natten_mlx as nm
from natten_mlx import functional as F
from natten_mlx._core import ops
from nautil import assert_close, rand, to_np
from oracle import oracle_na, oracle_qk


@pytest.fixture
def count_checks(monkeypatch):
    """Counts the calls of functional._validate_qkv (the first check of a call)."""
    calls = []
    real = F._validate_qkv

    def spy(*a):
        calls.append(a[0])
        return real(*a)

    monkeypatch.setattr(F, "_validate_qkv", spy)
    return calls


# (kernel_size, stride, dilation, is_causal, scale): each differs from the
# first in one argument, all valid for L=12
VARIANTS = [
    (3, 1, 1, False, None),
    (5, 1, 1, False, None),
    (3, 2, 1, False, None),
    (3, 1, 2, False, None),
    (3, 1, 1, True, None),
    (3, 1, 1, False, 0.25),
    ((3,), (1,), (1,), (False,), None),
    ([5], [2], [2], [True], 0.5),
    (3, 1, 1, False, 1),
]


def test_cache_keeps_every_variant_apart(tier, rng):
    q, qn = rand(rng, (2, 12, 2, 8))
    k, kn = rand(rng, (2, 12, 2, 8))
    v, vn = rand(rng, (2, 12, 2, 8))
    for _ in range(2):  # the second round is served from the cache
        for ks, st, dil, caus, sc in VARIANTS:
            out = nm.na1d(q, k, v, ks, stride=st, dilation=dil, is_causal=caus, scale=sc)
            t = lambda x: x[0] if isinstance(x, (tuple, list)) else x  # noqa: E731
            want = oracle_na(qn, kn, vn, t(ks), dilation=t(dil), out_stride=t(st),
                             causal=bool(t(caus)), scale=8 ** -0.5 if sc is None else sc)[0]
            assert_close(out, want, what=str((ks, st, dil, caus, sc)))


def test_cache_keys_on_shapes_and_keeps_dtypes(tier, rng):
    # same kwargs, other head dim (default scale) / length / dtype
    for shape, dt in [((1, 10, 1, 4), mx.float32), ((1, 10, 1, 16), mx.float32),
                      ((1, 14, 1, 4), mx.float32), ((1, 10, 1, 4), mx.float16),
                      ((1, 10, 1, 4), mx.float32)]:
        q, qn = rand(rng, shape, dt)
        out, lse = nm.na1d(q, q, q, 3, return_lse=True)
        assert out.dtype == dt and out.shape == shape
        o_ref, l_ref = oracle_na(qn, qn, qn, 3, scale=shape[-1] ** -0.5)
        assert_close(out, o_ref, dt)
        assert_close(lse, l_ref, dt)


def test_cache_is_used_and_failures_are_not_cached(count_checks, rng):
    q, _ = rand(rng, (1, 9, 1, 4))
    nm.na1d(q, q, q, 3)
    nm.na1d(q, q, q, 3)
    assert len(count_checks) == 1  # the second call skipped the checks
    nm.na1d(q, q, q, 3, dilation=2)
    assert len(count_checks) == 2
    # 3.0 == 3 and hash(3.0) == hash(3), but 3.0 is not a valid kernel size
    for bad in (3.0, (3.0,), [3.0]):
        with pytest.raises(ValueError, match="kernel_size values must be int"):
            nm.na1d(q, q, q, bad)
    with pytest.raises(ValueError, match="stride\\[0\\] must be int"):
        nm.na1d(q, q, q, 3, stride=1.0)
    with pytest.raises(ValueError, match="must be <= input spatial size"):
        nm.na1d(q, q, q, 11)
    n = len(count_checks)
    with pytest.raises(ValueError, match="must be <= input spatial size"):
        nm.na1d(q, q, q, 11)  # still checked: failures are never stored
    assert len(count_checks) == n + 1
    # arguments that are not plain ints/bools (an int subclass here) are
    # checked on every call
    class Int(int):
        pass

    n = len(count_checks)
    nm.na1d(q, q, q, Int(3))
    nm.na1d(q, q, q, (Int(3),))
    nm.na1d(q, q, q, 3, scale=np.float64(0.5))
    nm.na1d(q, q, q, 3, scale=np.float64(0.5))
    assert len(count_checks) == n + 4
    # the same valid call after all that is still a hit
    n = len(count_checks)
    nm.na1d(q, q, q, 3)
    assert len(count_checks) == n


def test_shape_mismatch_after_a_cached_call_still_raises(rng):
    q, _ = rand(rng, (1, 9, 1, 4))
    nm.na1d(q, q, q, 3)
    k, _ = rand(rng, (1, 8, 1, 4))
    with pytest.raises(ValueError, match="Spatial dimensions must match"):
        nm.na1d(q, k, k, 3)
    with pytest.raises(ValueError, match="Spatial dimensions must match"):
        nm.na1d_qk(q, k, 3)


def test_cache_is_bounded(monkeypatch, rng):
    monkeypatch.setattr(F, "_CHECKED_MAX", 4)
    F._CHECKED.clear()
    q, _ = rand(rng, (1, 12, 1, 4))
    for K in range(1, 11):
        nm.na1d(q, q, q, K)
        assert len(F._CHECKED) <= 4
    F._CHECKED.clear()


def test_qk_cache_keeps_variants_apart(tier, rng):
    q, qn = rand(rng, (1, 11, 2, 4))
    k, kn = rand(rng, (1, 11, 2, 4))
    for _ in range(2):
        for K, d, c in [(3, 1, False), (5, 1, False), (3, 2, False), (3, 1, True)]:
            got = nm.na1d_qk(q, k, K, d, is_causal=c)
            assert_close(got, oracle_qk(qn, kn, K, dilation=d, causal=c, scale=0.5))


def test_na_out_equals_na_fused(tier, rng):
    q, _ = rand(rng, (2, 10, 2, 4))
    p = F._params(1, (3,), (2,), (2,), (True,), 0.7)
    np.testing.assert_array_equal(np.array(ops.na_out(q, q, q, p)),
                                  np.array(ops.na_fused(q, q, q, p)[0]))


def test_na_out_falls_back_to_na_fused_for_tiers_without_it(monkeypatch, rng):
    calls = []
    pure = ops.tier_module("pure")

    class Fake:
        is_available = staticmethod(lambda: True)
        supports = staticmethod(lambda *a, **k: True)

        @staticmethod
        def na_fused(*a, **kw):
            calls.append("na_fused")
            return pure.na_fused(*a, **kw)

    monkeypatch.setitem(ops._tier_cache, "nanobind", Fake)
    prev = ops.selected_backend()
    nm.set_backend("nanobind")
    try:
        q, qn = rand(rng, (1, 7, 1, 4))
        out = nm.na1d(q, q, q, 3)
    finally:
        nm.set_backend(prev)
    assert calls == ["na_fused"]
    assert_close(out, oracle_na(qn, qn, qn, 3, scale=0.5)[0])


def test_compiled_callers_trace_once(tier, rng):
    q, _ = rand(rng, (1, 12, 2, 8))
    g, _ = rand(rng, (1, 12, 2, 8))
    # inputs made by an MLX op: with arrays built by mx.array(numpy), MLX 0.32.4's
    # compile traces even a plain `a * b + c` a second time on the second call
    # (then never again), on the CPU and the GPU alike
    q, g = q * 1, g * 1
    mx.eval(q, g)
    traces = []

    def f(a, b, c):
        traces.append(1)
        return nm.na1d(a, b, c, 5)

    cf = mx.compile(f)
    for _ in range(3):
        mx.eval(cf(q, q, q))
    assert len(traces) == 1
    traces.clear()
    gf = mx.compile(mx.grad(lambda a, b, c: (f(a, b, c) * g).sum(), argnums=(0, 1, 2)))
    ref = mx.grad(lambda a, b, c: (nm.na1d(a, b, c, 5) * g).sum(), argnums=(0, 1, 2))(q, q, q)
    for _ in range(3):
        got = gf(q, q, q)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(to_np(a), to_np(b), rtol=1e-5, atol=1e-6)
    assert len(traces) == 1
