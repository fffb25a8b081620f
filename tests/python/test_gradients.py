"""Gradients: analytic (MLX autodiff / tier VJPs, float64 on the CPU) against
central finite differences of the float64 numpy oracle, plus structural checks
(zero gradients where nothing reads, no NaN at masked slots).

The finite differences are taken on the oracle, not on the MLX forward: MLX's
CPU ``exp`` is only accurate to ~1e-8 relative even in float64, which would
swamp a finite difference of the MLX graph itself.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import natten_mlx as nm
from natten_mlx._core import ops
from natten_mlx._core.params import NAParams
from oracle import oracle_av, oracle_na, oracle_qk

F64 = mx.float64


@pytest.fixture(autouse=True)
def _cpu():
    prev = mx.default_device()
    mx.set_default_device(mx.cpu)      # float64 exists on the CPU only
    yield
    mx.set_default_device(prev)


def _r(rng, shape):
    return mx.array(rng.standard_normal(shape), dtype=F64)


def _fd_check(fn, ref, args, rng, eps=1e-5, tol=2e-6, max_elems=10):
    """fn(*mx_args) -> mx scalar; ref(*np_args) -> float (same function, oracle).
    Compares mx.grad(fn) against central differences of ref on up to
    ``max_elems`` random entries of every argument."""
    grads = mx.grad(fn, argnums=tuple(range(len(args))))(*args)
    nargs = [np.array(a) for a in args]
    for ai, g in enumerate(grads):
        gn = np.array(g)
        assert not np.isnan(gn).any(), f"NaN in grad of arg {ai}"
        flat = nargs[ai].reshape(-1)
        picks = rng.choice(flat.size, size=min(max_elems, flat.size), replace=False)
        for j in picks:
            vals = []
            for sgn in (1, -1):
                pert = flat.copy()
                pert[j] += sgn * eps
                a2 = list(nargs)
                a2[ai] = pert.reshape(nargs[ai].shape)
                vals.append(ref(*a2))
            num = (vals[0] - vals[1]) / (2 * eps)
            ana = gn.reshape(-1)[j]
            assert abs(num - ana) <= tol * (1 + abs(num)), \
                f"arg {ai} elem {j}: numeric {num} vs analytic {ana}"


FUSED_CASES = [
    (1, (9,), 3, 2, 2, True),
    (1, (8,), 4, 1, 1, False),
    (2, (5, 6), (3, 2), (2, 1), (1, 2), (True, False)),
    (3, (3, 4, 3), (2, 3, 3), (1, 2, 1), 1, (False, True, False)),
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: f"r{c[0]}-{c[1]}")
def test_fused_fd(tier, case, rng):
    rank, X, K, s, d, c = case
    fn = {1: nm.na1d, 2: nm.na2d, 3: nm.na3d}[rank]
    q = _r(rng, (1,) + X + (2, 3))
    k = _r(rng, (1,) + X + (1, 3))
    v = _r(rng, (1,) + X + (1, 3))
    ek = _r(rng, (1, 2, 1, 3))
    ev = _r(rng, (1, 2, 1, 3))
    out0, lse0 = fn(q, k, v, K, s, d, c, return_lse=True, additional_keys=ek,
                    additional_values=ev)
    W = rng.standard_normal(out0.shape)
    w = rng.standard_normal(lse0.shape)
    Wm, wm = mx.array(W, dtype=F64), mx.array(w, dtype=F64)

    def loss(q, k, v, ek, ev):
        o, l = fn(q, k, v, K, s, d, c, return_lse=True, additional_keys=ek,
                  additional_values=ev)
        return (o * Wm).sum() + (l * wm).sum()

    def ref(q, k, v, ek, ev):
        o, l = oracle_na(q, k, v, K, d, s, 1, c, extra_k=ek, extra_v=ev)
        return float((o * W).sum() + (l * w).sum())

    _fd_check(loss, ref, [q, k, v, ek, ev], rng)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_split_fd(tier, rank, rng):
    X = {1: (7,), 2: (4, 5), 3: (3, 3, 4)}[rank]
    K = {1: 3, 2: (2, 3), 3: (3, 2, 2)}[rank]
    qk = {1: nm.na1d_qk, 2: nm.na2d_qk, 3: nm.na3d_qk}[rank]
    av = {1: nm.na1d_av, 2: nm.na2d_av, 3: nm.na3d_av}[rank]
    c = True
    q = _r(rng, (1,) + X + (2, 3))
    k = _r(rng, (1,) + X + (2, 3))
    v = _r(rng, (1,) + X + (2, 3))
    lg = qk(q, k, K, is_causal=c)
    masked = np.isinf(np.array(lg))
    assert masked.any()
    W = rng.standard_normal(lg.shape)
    Wm = mx.array(W, dtype=F64)

    def loss_qk(q, k):
        lg = qk(q, k, K, is_causal=c)
        return mx.where(mx.isinf(lg), 0.0, lg * Wm).sum()

    def ref_qk(q, k):
        lg = oracle_qk(q, k, K, causal=c)
        return float(np.where(np.isinf(lg), 0.0, lg * W).sum())

    _fd_check(loss_qk, ref_qk, [q, k], rng)
    attn = _r(rng, lg.shape)
    Wo = rng.standard_normal(q.shape)
    Wom = mx.array(Wo, dtype=F64)

    def loss_av(a, v):
        return (av(a, v, K, is_causal=c) * Wom).sum()

    def ref_av(a, v):
        return float((oracle_av(a, v, K, causal=c) * Wo).sum())

    _fd_check(loss_av, ref_av, [attn, v], rng)
    # masked slots: dattn exactly 0; softmax(qk) -> av has no NaN gradients
    ga = mx.grad(loss_av)(attn, v)
    assert (np.array(ga)[masked] == 0).all()
    gs = mx.grad(lambda q, k, v: (av(mx.softmax(qk(q, k, K, is_causal=c), axis=-1), v, K,
                                     is_causal=c) * Wom).sum(), argnums=(0, 1, 2))(q, k, v)
    for g in gs:
        assert not np.isnan(np.array(g)).any()


def test_rpb_and_gna_fd(tier, rng):
    p = NAParams(2, (3, 2), (1, 2), (2, 1), (1, 1), (True, False), 0.7)
    q = _r(rng, (1, 5, 6, 2, 3))
    k = _r(rng, (1, 5, 6, 1, 3))
    v = _r(rng, (1, 5, 6, 1, 3))
    rpb = _r(rng, (2, 5, 3))
    o, l = ops.na_fused(q, k, v, p, rpb=rpb)
    W, w = rng.standard_normal(o.shape), rng.standard_normal(l.shape)
    Wm, wm = mx.array(W, dtype=F64), mx.array(w, dtype=F64)

    def loss(q, k, v, rpb):
        o, l = ops.na_fused(q, k, v, p, rpb=rpb)
        return (o * Wm).sum() + (l * wm).sum()

    def ref(q, k, v, rpb):
        o, l = oracle_na(q, k, v, (3, 2), (1, 2), (2, 1), 1, (True, False), 0.7, rpb=rpb)
        return float((o * W).sum() + (l * w).sum())

    _fd_check(loss, ref, [q, k, v, rpb], rng)

    def loss_qk(q, k, rpb):
        lg = ops.na_qk(q, k, p, rpb=rpb)
        return mx.where(mx.isinf(lg), 0.0, lg).sum()

    def ref_qk(q, k, rpb):
        lg = oracle_qk(q, k, (3, 2), (1, 2), (2, 1), 1, (True, False), 0.7, rpb)
        return float(np.where(np.isinf(lg), 0.0, lg).sum())

    _fd_check(loss_qk, ref_qk, [q, k, rpb], rng)
    pg = NAParams(1, (4,), (1,), (1,), (3,), (True,), 0.7)
    q1 = _r(rng, (1, 10, 2, 3))
    W1 = rng.standard_normal((1, 10, 2, 3))

    def loss_g(q):
        return (ops.na_fused(q, q, q, pg)[0] * mx.array(W1, dtype=F64)).sum()

    def ref_g(q):
        return float((oracle_na(q, q, q, 4, 1, 1, 3, True, 0.7)[0] * W1).sum())

    _fd_check(loss_g, ref_g, [q1], rng)


@pytest.mark.parametrize("rank", [1, 2])
def test_varlen_fd_and_zero_outside(tier, rank, rng):
    X = {1: (9,), 2: (5, 6)}[rank]
    sizes_l = {1: [[9], [6]], 2: [[5, 6], [3, 4]]}[rank]
    sizes = mx.array(np.array(sizes_l).reshape(-1) if rank == 1 else sizes_l)
    fn = {1: nm.na1d_varlen, 2: nm.na2d_varlen}[rank]
    q = _r(rng, (2,) + X + (1, 3))
    k = _r(rng, (2,) + X + (1, 3))
    v = _r(rng, (2,) + X + (1, 3))
    W = rng.standard_normal(q.shape)
    Wm = mx.array(W, dtype=F64)

    def loss(q, k, v):
        return (fn(q, k, v, sizes, 3) * Wm).sum()

    def ref(q, k, v):
        return float((oracle_na(q, k, v, 3, varlen=sizes_l)[0] * W).sum())

    _fd_check(loss, ref, [q, k, v], rng)
    gq, gk, gv = mx.grad(loss, argnums=(0, 1, 2))(q, k, v)
    outside = (1, slice(6, None)) if rank == 1 else (1, slice(3, None))
    for g in (gq, gk, gv):
        assert (np.array(g[outside]) == 0).all()
        if rank == 2:
            assert (np.array(g[1, :, 4:]) == 0).all()


def test_merge_fd(rng):
    o = [_r(rng, (1, 4, 2, 3)) for _ in range(3)]
    l = [_r(rng, (1, 4, 2)) for _ in range(3)]
    W = rng.standard_normal((1, 4, 2, 3))
    w = rng.standard_normal((1, 4, 2))

    def loss(o0, o1, o2, l0, l1, l2):
        m, ml = nm.merge_attentions([o0, o1, o2], [l0, l1, l2])
        return (m * mx.array(W, dtype=F64)).sum() + (ml * mx.array(w, dtype=F64)).sum()

    def ref(o0, o1, o2, l0, l1, l2):
        L = np.stack([l0, l1, l2])
        m = L.max(0)
        tot = np.log(np.exp(L - m).sum(0)) + m
        out = sum(np.exp(li - tot)[..., None] * oi for li, oi in zip((l0, l1, l2), (o0, o1, o2)))
        return float((out * W).sum() + (tot * w).sum())

    _fd_check(loss, ref, o + l, rng)


def test_stride_dq_zero_off_rows(tier, rng):
    q = _r(rng, (1, 9, 1, 3))
    ones = mx.ones((1, 9, 1, 3), dtype=F64)
    g = mx.grad(lambda q: nm.na1d(q, ones, ones * 2, 3, stride=3).sum())(q)
    g = np.array(g)[0, :, 0]
    assert (g[[1, 2, 4, 5, 7, 8]] == 0).all()
