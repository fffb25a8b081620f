"""Gradients of every tier against pure-tier autodiff, in float32 on the
default device (the CUDA tier on a GPU, the compiled tier on the CPU).  The
float64 finite-difference checks live in test_gradients.py."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from natten_mlx._core import ops
from natten_mlx._core.params import NAParams
from nautil import rand

CASES = [
    NAParams(1, (5,), (2,), (2,), (1,), (True,), 0.4),
    NAParams(1, (4,), (1,), (1,), (3,), (False,), 0.4),
    NAParams(2, (3, 4), (1, 2), (1, 2), (1, 1), (False, True), 0.4),
    NAParams(3, (3, 2, 3), (1, 1, 2), (2, 1, 1), (1, 2, 1), (True, False, False), 0.4),
]
EXTENT = {1: (13,), 2: (7, 9), 3: (4, 5, 7)}


def _grads(fn, args, tier_name):
    ops.set_backend(tier_name)
    try:
        g = mx.grad(fn, argnums=tuple(range(len(args))))(*args)
        if isinstance(g, mx.array):
            g = (g,)
        mx.eval(g)
        return [np.array(x) for x in g]
    finally:
        ops.set_backend("auto")


@pytest.mark.parametrize("p", CASES, ids=lambda p: f"r{p.rank}K{p.kernel}g{p.gna_stride}")
def test_tier_grads_match_pure(tier, p, rng):
    X = EXTENT[p.rank]
    q, _ = rand(rng, (2,) + X + (4, 8))
    k, _ = rand(rng, (2,) + X + (2, 8))
    v, _ = rand(rng, (2,) + X + (2, 8))
    ek, _ = rand(rng, (2, 3, 2, 8))
    ev, _ = rand(rng, (2, 3, 2, 8))
    rpb = None
    if all(s == 1 for s in p.gna_stride):
        rpb, _ = rand(rng, (4,) + tuple(2 * kk - 1 for kk in p.kernel))
    o, l = ops.na_fused(q, k, v, p, rpb=rpb, extra_k=ek, extra_v=ev)
    W, w = rand(rng, o.shape)[0], rand(rng, l.shape)[0]

    def fused(q, k, v, ek, ev, *r):
        o, l = ops.na_fused(q, k, v, p, rpb=r[0] if r else None, extra_k=ek, extra_v=ev)
        return (o * W).sum() + (l * w).sum()

    args = [q, k, v, ek, ev] + ([rpb] if rpb is not None else [])
    got = _grads(fused, args, tier)
    want = _grads(fused, args, "pure")
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=f"fused arg {i}")

    lg = ops.na_qk(q, k, p)
    Wl = rand(rng, lg.shape)[0]

    def split(q, k, v):
        lg = ops.na_qk(q, k, p)
        kr = mx.repeat(v, 2, axis=-2)
        a = mx.softmax(lg, axis=-1)
        return (ops.na_av(a, kr, p) * W).sum() + mx.where(mx.isinf(lg), 0, lg * Wl).sum()

    got = _grads(split, [q, k, v], tier)
    want = _grads(split, [q, k, v], "pure")
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=f"split arg {i}")


def test_varlen_grads_match_pure(tier, rng):
    p = NAParams(2, (3, 3), (1, 2), (1, 1), (1, 1), (False, False), 0.5)
    q, _ = rand(rng, (2, 7, 9, 2, 4))
    vl = mx.array([[7, 9], [5, 6]], dtype=mx.int32)
    W = rand(rng, q.shape)[0]

    def f(q):
        return (ops.na_fused(q, q, q, p, varlen=vl)[0] * W).sum()

    got, = _grads(f, [q], tier)
    want, = _grads(f, [q], "pure")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (got[1, 5:] == 0).all() and (got[1, :, 6:] == 0).all()
