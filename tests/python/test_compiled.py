"""The compiled tier (natten_mlx._core.compiled over the _natten_ext primitives).

Feature coverage across every op and rank is in the tier-parametrised suites;
this file checks what is specific to the extension: laziness, zero-copy
strided inputs, errors from C as Python exceptions, gradients (including the
lse's) against finite differences of the independent numpy oracle, and use
inside mx.compile'd training steps.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

import oracle
from natten_mlx._core import compiled as C
from natten_mlx._core.params import NAParams

if not C.is_available():
    if os.environ.get("NATTEN_REQUIRE_NANOBIND_EXT") == "1":
        raise RuntimeError(f"compiled extension required but unavailable: {C.load_error()}")
    pytest.skip(f"compiled extension unavailable: {C.load_error()}", allow_module_level=True)

ext = C.extension()


def P(rank, kernel, dilation=1, out_stride=1, gna_stride=1, causal=False, scale=0.5):
    t = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x,) * rank  # noqa: E731
    return NAParams(rank=rank, kernel=t(kernel), dilation=t(dilation), out_stride=t(out_stride),
                    gna_stride=t(gna_stride), causal=tuple(bool(c) for c in t(causal)),
                    scale=float(scale))


def rand(rng, shape, dtype=mx.float64):
    return mx.array(rng.standard_normal(shape), dtype=dtype)


def oracle_kw(p):
    return dict(kernel=p.kernel, dilation=p.dilation, out_stride=p.out_stride,
                gna_stride=p.gna_stride, causal=p.causal, scale=p.scale)


# --------------------------------------------------------------------------
# Laziness and graph shape
# --------------------------------------------------------------------------


def test_building_the_graph_does_not_evaluate(rng):
    p = P(1, 3)
    q, k, v = (rand(rng, (2, 8, 2, 4), mx.float32) for _ in range(3))
    # A varlen extent below kernel*dilation is only visible in the data: if
    # the call evaluated, it would raise here rather than at mx.eval.
    bad = mx.array([[8], [2]], dtype=mx.int32)
    out, lse = C.na_fused(q, k, v, p, varlen=bad)
    assert out.shape == (2, 8, 2, 4) and lse.shape == (2, 8, 2)
    # MLX stores the exception thrown in the task and rethrows it from eval
    # (as RuntimeError in mlx 0.32)
    with pytest.raises((RuntimeError, ValueError), match=r"natten_na_forward"):
        mx.eval(out)


def _graph_labels(*arrays):
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"natten_graph_{os.getpid()}.dot")
    mx.export_to_dot(path, *arrays)
    try:
        with open(path) as f:
            text = f.read()
    finally:
        os.remove(path)
    return re.findall(r'label ="([^"]+)"', text)


def test_strided_views_are_read_in_place(rng):
    p = P(2, (3, 2), dilation=(1, 2), causal=(False, True))
    base_q = rand(rng, (1, 3, 6, 5, 4), mx.float32)  # [B, H, X0, X1, D]
    base_k = rand(rng, (1, 9, 5, 3, 4), mx.float32)  # [B, X0', X1, H, D]
    base_v = rand(rng, (1, 5, 6, 3, 8), mx.float32)  # [B, X1, X0, H, D']
    mx.eval(base_q, base_k, base_v)
    q = base_q.transpose(0, 2, 3, 1, 4)              # transposed view
    k = base_k[:, 2:8]                               # offset slice
    v = base_v.transpose(0, 2, 1, 3, 4)[..., 1::2]   # transposed + strided channels
    out, lse = C.na_fused(q, k, v, p)
    labels = _graph_labels(out, lse)
    assert "NattenNaForward" in labels
    assert not any(lab in ("Copy", "Contiguous") for lab in labels), labels
    ref_o, ref_l = oracle.oracle_na(np.array(q), np.array(k), np.array(v), **oracle_kw(p))
    np.testing.assert_allclose(np.array(out), ref_o, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(lse), ref_l, rtol=1e-5, atol=1e-5)


def test_broadcast_inputs(rng):
    # stride-0 batch axis (mx.broadcast_to) is a legal strided input
    p = P(1, 3)
    q = rand(rng, (3, 7, 2, 4), mx.float32)
    k1 = rand(rng, (1, 7, 2, 4), mx.float32)
    k = mx.broadcast_to(k1, (3, 7, 2, 4))
    out, _ = C.na_fused(q, k, k, p)
    ref, _ = oracle.oracle_na(np.array(q), np.array(k), np.array(k), **oracle_kw(p))
    np.testing.assert_allclose(np.array(out), ref, rtol=1e-5, atol=1e-5)


def test_split_ops_on_views(rng):
    p = P(1, 4, dilation=2, out_stride=2)
    q = rand(rng, (2, 4, 11, 3), mx.float32).transpose(0, 2, 1, 3)
    k = rand(rng, (2, 11, 2, 6), mx.float32)[..., ::2]
    logits = C.na_qk(q, k, p)
    np.testing.assert_allclose(np.array(logits),
                               oracle.oracle_qk(np.array(q), np.array(k), **oracle_kw(p)),
                               rtol=1e-5, atol=1e-5)
    attn = mx.softmax(logits, axis=-1)
    v = rand(rng, (2, 2, 11, 5), mx.float32).transpose(0, 2, 1, 3)
    out = C.na_av(attn, v, p)
    kw = oracle_kw(p)
    kw.pop("scale")
    np.testing.assert_allclose(np.array(out), oracle.oracle_av(np.array(attn), np.array(v), **kw),
                               rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def _still_works(rng):
    p = P(1, 3)
    q = rand(rng, (1, 5, 1, 2), mx.float32)
    out, _ = C.na_fused(q, q, q, p)
    mx.eval(out)
    assert np.isfinite(np.array(out)).all()


KW1 = dict(rank=1, kernel=[3], dilation=[1], out_stride=[1], gna_stride=[1], causal=[False],
           scale=0.5)


@pytest.mark.parametrize("case", [
    "dtype_mismatch", "int_dtype", "kernel_gt_extent", "bad_heads", "zero_batch",
    "zero_dim", "wrong_rank", "bad_lse", "bad_params", "gpu_stream", "varlen_shape",
])
def test_build_time_errors_are_value_errors(case, rng):
    f32 = mx.float32
    q = rand(rng, (1, 6, 2, 4), f32)
    if case == "dtype_mismatch":
        call = lambda: ext.na_forward(q, q.astype(mx.float16), q, **KW1)  # noqa: E731
        pat = "dtype"
    elif case == "int_dtype":
        qi = mx.zeros((1, 6, 2, 4), dtype=mx.int32)
        call = lambda: ext.na_forward(qi, qi, qi, **KW1)  # noqa: E731
        pat = "dtype"
    elif case == "kernel_gt_extent":
        call = lambda: ext.na_forward(q, q, q, **{**KW1, "kernel": [7]})  # noqa: E731
        pat = "kernel"
    elif case == "bad_heads":
        k = rand(rng, (1, 6, 3, 4), f32)
        call = lambda: ext.na_forward(q, k, k, **KW1)  # noqa: E731
        pat = "heads"
    elif case == "zero_batch":
        z = mx.zeros((0, 6, 2, 4), dtype=f32)
        call = lambda: ext.na_forward(z, z, z, **KW1)  # noqa: E731
        pat = "batch"
    elif case == "zero_dim":
        z = mx.zeros((1, 6, 2, 0), dtype=f32)
        call = lambda: ext.na_forward(z, z, z, **KW1)  # noqa: E731
        pat = "head_dim|natten"
    elif case == "wrong_rank":
        call = lambda: ext.na_forward(q, q, q, **{**KW1, "rank": 2, "kernel": [3, 3],  # noqa: E731
                                                    "dilation": [1, 1], "out_stride": [1, 1],
                                                    "gna_stride": [1, 1], "causal": [False, False]})
        pat = "dimensions"
    elif case == "bad_lse":
        out = mx.zeros_like(q)
        lse = mx.zeros((1, 6, 2), dtype=mx.float16)
        call = lambda: ext.na_backward(q, q, q, out, lse, out, **KW1)  # noqa: E731
        pat = "lse"
    elif case == "bad_params":
        call = lambda: ext.na_forward(q, q, q, **{**KW1, "dilation": [1, 2]})  # noqa: E731
        pat = "dilation"
    elif case == "gpu_stream":
        call = lambda: ext.na_forward(q, q, q, **KW1, stream=mx.Device(mx.gpu))  # noqa: E731
        pat = "CPU|gpu"
    elif case == "varlen_shape":
        call = lambda: ext.na_forward(q, q, q, varlen=mx.array([6, 6]), **KW1)  # noqa: E731
        pat = "varlen"
    with pytest.raises(ValueError, match=pat):
        call()
    _still_works(rng)


def test_eval_time_error_carries_the_c_message(rng):
    p = P(1, 3, dilation=2)
    q = rand(rng, (2, 9, 1, 2), mx.float32)
    out, _ = C.na_fused(q, q, q, p, varlen=mx.array([[9], [5]], dtype=mx.int32))
    with pytest.raises((RuntimeError, ValueError)) as ei:
        mx.eval(out)
    msg = str(ei.value)
    assert "natten_na_forward" in msg and "NATTEN_STATUS_INVALID_ARGUMENT" in msg
    assert "varlen" in msg  # the C library names the argument
    _still_works(rng)


def test_impl_switch_is_validated():
    with pytest.raises(ValueError):
        C.set_impl("nope")
    prev = C.set_impl("reference")
    try:
        assert C.get_impl() == "reference"
    finally:
        C.set_impl(prev)


# --------------------------------------------------------------------------
# Values and gradients against the numpy oracle (float64, finite differences)
# --------------------------------------------------------------------------


def _fd_grad(f, arrays, eps=1e-6):
    """Central differences of scalar f(list of numpy arrays) w.r.t. every array."""
    grads = []
    for i, a in enumerate(arrays):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            g[idx] = (f(plus) - f(minus)) / (2 * eps)
        grads.append(g)
    return grads


FUSED_CASES = [
    # rank, shape of q (B, X.., H, D), H_kv, Dv, params, features
    (1, (1, 7, 2, 2), 1, 3, P(1, 3, dilation=2, causal=True), dict(rpb=True)),
    (1, (1, 6, 2, 2), 2, 2, P(1, 4, out_stride=2), dict(extra=2)),
    (2, (1, 4, 3, 2, 2), 1, 2, P(2, (3, 2), gna_stride=(2, 1), causal=(False, True)),
     dict(varlen=[[4, 3]])),
    (2, (2, 4, 3, 1, 2), 1, 2, P(2, (2, 3), out_stride=(2, 1)),
     dict(rpb=True, extra=1, varlen=[[4, 3], [3, 3]])),
]


@pytest.mark.parametrize("case", range(len(FUSED_CASES)))
def test_fused_grads_match_oracle_fd(case):
    rank, qshape, hkv, dv, p, feats = FUSED_CASES[case]
    rng = np.random.default_rng(100 + case)
    B, H, D = qshape[0], qshape[-2], qshape[-1]
    X = qshape[1:1 + rank]
    arrays = {
        "q": rng.standard_normal(qshape),
        "k": rng.standard_normal((B,) + X + (hkv, D)),
        "v": rng.standard_normal((B,) + X + (hkv, dv)),
    }
    if feats.get("rpb"):
        arrays["rpb"] = rng.standard_normal((H,) + tuple(2 * k - 1 for k in p.kernel))
    if feats.get("extra"):
        arrays["extra_k"] = rng.standard_normal((B, feats["extra"], hkv, D))
        arrays["extra_v"] = rng.standard_normal((B, feats["extra"], hkv, dv))
    varlen = feats.get("varlen")
    names = list(arrays)
    O = tuple(-(-x // s) for x, s in zip(X, p.out_stride))
    w_out = rng.standard_normal((B,) + O + (H, dv))
    w_lse = rng.standard_normal((B,) + O + (H,))

    def oracle_loss(vals):
        kw = dict(zip(names, vals))
        o, l = oracle.oracle_na(kw["q"], kw["k"], kw["v"], rpb=kw.get("rpb"),
                                extra_k=kw.get("extra_k"), extra_v=kw.get("extra_v"),
                                varlen=varlen, **oracle_kw(p))
        l = np.where(np.isfinite(l), l, 0.0)
        return float((o * w_out).sum() + (l * w_lse).sum())

    def mlx_loss(*vals):
        kw = dict(zip(names, vals))
        vl = None if varlen is None else mx.array(varlen, dtype=mx.int32)
        o, l = C.na_fused(kw["q"], kw["k"], kw["v"], p, rpb=kw.get("rpb"),
                          extra_k=kw.get("extra_k"), extra_v=kw.get("extra_v"), varlen=vl)
        assert l.dtype == mx.float32 and o.dtype == mx.float64
        l = mx.where(mx.isinf(l), mx.zeros_like(l), l)
        return ((o * mx.array(w_out, dtype=mx.float64)).sum()
                + (l.astype(mx.float64) * mx.array(w_lse, dtype=mx.float64)).sum())

    vals = [arrays[n] for n in names]
    mvals = [mx.array(a, dtype=mx.float64) for a in vals]
    loss, grads = mx.value_and_grad(mlx_loss, argnums=tuple(range(len(names))))(*mvals)
    assert abs(loss.item() - oracle_loss(vals)) < 1e-5
    fd = _fd_grad(oracle_loss, vals)
    for n, g, r in zip(names, grads, fd):
        # the lse reaches the loss in float32: ~1e-7 relative
        np.testing.assert_allclose(np.array(g), r, rtol=1e-5, atol=2e-6, err_msg=n)


@pytest.mark.parametrize("rank,qshape,p,with_rpb", [
    (1, (1, 6, 2, 2), P(1, 3, dilation=2), True),
    (2, (1, 4, 4, 2, 2), P(2, (2, 3), out_stride=(1, 2), causal=(True, False)), False),
])
def test_split_grads_match_oracle_fd(rank, qshape, p, with_rpb):
    rng = np.random.default_rng(7)
    H = qshape[-2]
    q = rng.standard_normal(qshape)
    k = rng.standard_normal(qshape[:-2] + (1, qshape[-1]))
    rpb = rng.standard_normal((H,) + tuple(2 * kk - 1 for kk in p.kernel)) if with_rpb else None
    ref = oracle.oracle_qk(q, k, rpb=rpb, **oracle_kw(p))
    w = np.where(np.isfinite(ref), rng.standard_normal(ref.shape), 0.0)

    def o_loss(vals):
        r = oracle.oracle_qk(vals[0], vals[1], rpb=vals[2] if with_rpb else None, **oracle_kw(p))
        return float(np.where(np.isfinite(r), r, 0.0).__mul__(w).sum())

    def m_loss(*vals):
        lg = C.na_qk(vals[0], vals[1], p, rpb=vals[2] if with_rpb else None)
        return mx.where(mx.isinf(lg), mx.zeros_like(lg), lg * mx.array(w, dtype=mx.float64)).sum()

    vals = [q, k] + ([rpb] if with_rpb else [])
    grads = mx.grad(m_loss, argnums=tuple(range(len(vals))))(
        *[mx.array(a, dtype=mx.float64) for a in vals])
    for g, r in zip(grads, _fd_grad(o_loss, vals)):
        np.testing.assert_allclose(np.array(g), r, rtol=1e-6, atol=1e-7)

    # AV on the oracle's own probabilities
    kw = oracle_kw(p)
    kw.pop("scale")
    attn = np.where(np.isfinite(ref), np.exp(ref - ref.max(-1, keepdims=True)), 0.0)
    v = rng.standard_normal(k.shape[:-1] + (3,))
    wo = rng.standard_normal(oracle.oracle_av(attn, v, **kw).shape)

    def o_loss2(vals):
        return float((oracle.oracle_av(vals[0], vals[1], **kw) * wo).sum())

    def m_loss2(a, vv):
        return (C.na_av(a, vv, p) * mx.array(wo, dtype=mx.float64)).sum()

    ga, gv = mx.grad(m_loss2, argnums=(0, 1))(mx.array(attn, dtype=mx.float64),
                                             mx.array(v, dtype=mx.float64))
    fa, fv = _fd_grad(o_loss2, [attn, v])
    valid = np.isfinite(ref)
    np.testing.assert_allclose(np.array(ga)[valid], fa[valid], rtol=1e-6, atol=1e-7)
    assert (np.array(ga)[~valid] == 0).all()  # masked weights are ignored
    np.testing.assert_allclose(np.array(gv), fv, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype,tol", [(mx.float32, 1e-5), (mx.float16, 2e-2),
                                       (mx.bfloat16, 8e-2)])
def test_low_precision_forward(dtype, tol, rng):
    p = P(2, 3, dilation=(1, 2))
    q, k, v = (rand(rng, (1, 6, 7, 2, 8), dtype) for _ in range(3))
    out, lse = C.na_fused(q, k, v, p)
    assert out.dtype == dtype and lse.dtype == mx.float32
    ro, rl = oracle.oracle_na(*(np.array(x.astype(mx.float32)) for x in (q, k, v)),
                              **oracle_kw(p))
    np.testing.assert_allclose(np.array(out.astype(mx.float32)), ro, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.array(lse), rl, rtol=tol, atol=tol)


# --------------------------------------------------------------------------
# Transformations: compile, value_and_grad, training
# --------------------------------------------------------------------------


def test_compile_matches_eager(rng):
    p = P(1, 5, dilation=2, out_stride=1)
    q, k, v = (rand(rng, (2, 12, 2, 4), mx.float32) for _ in range(3))

    def loss(q, k, v):
        o, l = C.na_fused(q, k, v, p)
        return (o * o).sum() + l.sum()

    vg = mx.value_and_grad(loss, argnums=(0, 1, 2))
    eager = vg(q, k, v)
    comp = mx.compile(vg)
    for _ in range(2):  # second call reuses the traced graph
        got = comp(q, k, v)
        np.testing.assert_allclose(got[0].item(), eager[0].item(), rtol=1e-6)
        for a, b in zip(got[1], eager[1]):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


class _TinyNA(nn.Module):
    def __init__(self, dim, heads, p):
        super().__init__()
        self.p = p
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, 1)

    def __call__(self, x):
        B, L, Cc = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.heads, Cc // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        o, _ = C.na_fused(q, k, v, self.p)
        return self.proj(o.reshape(B, L, Cc)).squeeze(-1)


def test_compiled_train_step_decreases_loss():
    mx.random.seed(3)
    p = P(1, 3, scale=0.5)
    model = _TinyNA(8, 2, p)
    opt = optim.Adam(learning_rate=3e-2)
    x = mx.random.normal((4, 10, 8))
    y = mx.sin(mx.cumsum(x[..., 0], axis=1))  # depends on neighbours

    def loss_fn(m, x, y):
        return ((m(x) - y) ** 2).mean()

    lvg = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    # the whole step (forward, C backward, optimizer) is one compiled graph
    # with the model/optimizer state as implicit inputs and outputs
    step = mx.compile(lambda x, y: _step(model, opt, lvg, x, y), inputs=state, outputs=state)
    losses = []
    for _ in range(30):
        losses.append(step(x, y).item())
        mx.eval(state)
    assert losses[-1] < 0.5 * losses[0], losses


def _step(model, opt, lvg, x, y):
    loss, grads = lvg(model, x, y)
    opt.update(model, grads)
    return loss


def test_two_cpu_streams_at_once(rng):
    # Each MLX CPU stream has its own worker thread; both call into the C
    # library (and its thread pool) concurrently.
    p = P(2, 3, dilation=(2, 1))
    qs = [rand(rng, (1, 8, 7, 2, 4), mx.float32) for _ in range(6)]
    ref = [oracle.oracle_na(np.array(q), np.array(q), np.array(q), **oracle_kw(p))[0]
           for q in qs]
    streams = [mx.new_stream(mx.cpu), mx.new_stream(mx.cpu)]
    outs = []
    for i, q in enumerate(qs):
        with mx.stream(streams[i % 2]):
            outs.append(C.na_fused(q, q, q, p)[0] * 1.0)
    mx.eval(*outs)
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(np.array(o), r, rtol=1e-5, atol=1e-5)


def test_reference_and_auto_kernels_agree(rng):
    p = P(2, (3, 5), dilation=(1, 2), causal=(True, False))
    q, k, v = (rand(rng, (2, 9, 11, 2, 8), mx.float32) for _ in range(3))

    def run():
        o, l = C.na_fused(q, k, v, p)
        g = mx.grad(lambda a, b, c: (C.na_fused(a, b, c, p)[0] ** 2).sum(),
                    argnums=(0, 1, 2))(q, k, v)
        return [o, l, *g]

    auto = run()
    prev = C.set_impl("reference")
    try:
        ref = run()
    finally:
        C.set_impl(prev)
    for a, b in zip(auto, ref):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=2e-4, atol=2e-4)


def test_vmap_forward_and_grad(rng):
    # mx.vmap over a leading axis (mapped q/k/v, shared rpb): each instance
    # must equal the unmapped call; vmap of grad too.
    p = P(1, 3, dilation=2, out_stride=1)
    V = 3
    q, k, v = (rand(rng, (V, 2, 9, 2, 4), mx.float32) for _ in range(3))
    rpb = rand(rng, (2, 5), mx.float32)

    def f(q, k, v, rpb):
        return C.na_fused(q, k, v, p, rpb=rpb)[0]

    out = mx.vmap(f, in_axes=(0, 0, 0, None))(q, k, v, rpb)
    for i in range(V):
        ref, _ = oracle.oracle_na(np.array(q[i]), np.array(k[i]), np.array(v[i]),
                                  rpb=np.array(rpb), **oracle_kw(p))
        np.testing.assert_allclose(np.array(out[i]), ref, rtol=1e-5, atol=1e-5)

    def loss(q, k, v):
        o, l = C.na_fused(q, k, v, p, rpb=rpb)
        return (o * o).sum() + l.sum()

    g = mx.grad(loss, argnums=(0, 1, 2))
    gv = mx.vmap(g, in_axes=(1, 0, 0))(q.swapaxes(0, 1), k, v)  # mapped axis not leading
    for i in range(V):
        gi = g(q[i], k[i], v[i])
        for a, b in zip(gv, gi):
            np.testing.assert_allclose(np.array(a[i]), np.array(b), rtol=1e-5, atol=1e-6)

    # split ops under vmap
    logits = mx.vmap(lambda a, b: C.na_qk(a, b, p))(q, k)
    o2 = mx.vmap(lambda a, b: C.na_av(mx.softmax(a, axis=-1), b, p))(logits, v)
    np.testing.assert_allclose(np.array(o2[1]),
                               np.array(C.na_av(mx.softmax(C.na_qk(q[1], k[1], p), axis=-1),
                                                v[1], p)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# The primitives' own VJPs (no Python runs during autodiff)
# --------------------------------------------------------------------------


def test_primitive_vjp_any_argnums(rng):
    p = P(1, 3, dilation=2, causal=True)
    q, k, v = (rand(rng, (2, 9, 2, 4), mx.float32) for _ in range(3))
    rpb = rand(rng, (2, 5), mx.float32)
    g = rand(rng, (2, 9, 2, 4), mx.float32)

    def loss(q, k, v, rpb):
        return (C.na_fused(q, k, v, p, rpb=rpb)[0] * g).sum()

    full = mx.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, rpb)
    for argnums in [(2,), (1,), (3,), (0, 3), (1, 2)]:
        got = mx.grad(loss, argnums=argnums)(q, k, v, rpb)
        got = got if isinstance(got, (tuple, list)) else (got,)
        for a, gg in zip(argnums, got):
            np.testing.assert_array_equal(np.array(gg), np.array(full[a]))


def test_primitive_vjp_casts_the_cotangent(rng):
    # a float32 cotangent for a float16 problem reaches the C backward as float16
    p = P(1, 3)
    q, k, v = (rand(rng, (1, 8, 1, 4), mx.float16) for _ in range(3))
    kw = C._kw(p)
    ct = rand(rng, (1, 8, 1, 4), mx.float32)
    _, (dq, dk, dv) = mx.vjp(lambda a, b, c: [ext.na_forward(a, b, c, **kw)[0]], [q, k, v], [ct])
    _, ref = mx.vjp(lambda a, b, c: [ext.na_forward(a, b, c, **kw)[0]], [q, k, v],
                    [ct.astype(mx.float16)])
    for a, b in zip((dq, dk, dv), ref):
        assert a.dtype == mx.float16
        np.testing.assert_array_equal(np.array(a), np.array(b))
    _, (dl,) = mx.vjp(lambda a: [ext.qk_forward(a, k, **kw)], [q],
                      [mx.ones((1, 8, 1, 3), dtype=mx.float32)])
    assert dl.dtype == mx.float16


def test_backward_primitives_are_not_differentiable(rng):
    p = P(1, 3)
    kw = C._kw(p)
    q, k, v = (rand(rng, (1, 8, 1, 4), mx.float32) for _ in range(3))
    attn = rand(rng, (1, 8, 1, 3), mx.float32)
    with pytest.raises(ValueError, match="NattenAvBackward: the backward ops are not differentiable"):
        mx.grad(lambda a: ext.av_backward(a, v, q, **kw)[1].sum())(attn)


def test_need_lse_false_skips_the_lse(rng):
    p = P(2, 3, out_stride=2)
    q = rand(rng, (1, 6, 5, 2, 4), mx.float32)
    out, lse = C.na_fused(q, q, q, p, need_lse=False)
    assert lse is None
    np.testing.assert_array_equal(np.array(out), np.array(C.na_fused(q, q, q, p)[0]))
    np.testing.assert_array_equal(np.array(C.na_out(q, q, q, p)), np.array(out))


def test_params_entry_points_equal_keyword_ones(rng):
    p = P(2, (3, 2), dilation=(1, 2), out_stride=(2, 1), causal=(True, False), scale=0.3)
    kw = C._kw(p)
    prm = ext.Params(**kw)
    q, k, v = (rand(rng, (1, 6, 5, 2, 4), mx.float32) for _ in range(3))
    rpb = rand(rng, (2, 5, 3), mx.float32)
    for a, b in zip(ext.na_forward_p(prm, q, k, v, rpb, None, None, None),
                    ext.na_forward(q, k, v, rpb, **kw)):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    lg = ext.qk_forward_p(prm, q, k, None, None)
    np.testing.assert_array_equal(np.array(lg), np.array(ext.qk_forward(q, k, **kw)))
    np.testing.assert_array_equal(np.array(ext.av_forward_p(prm, mx.softmax(lg, -1), v, None)),
                                  np.array(ext.av_forward(mx.softmax(lg, -1), v, **kw)))
    with pytest.raises(ValueError, match="kernel needs 2 entries"):
        ext.Params(**dict(kw, kernel=[3]))
    with pytest.raises(ValueError, match="natten: q must have 5 dimensions"):
        ext.na_forward_p(prm, q[0], k, v, None, None, None, None)


def test_set_impl_reaches_cached_primitives(rng):
    # float64 is declined by the fast kernels: "fast" must fail at eval, and
    # "auto" must work again afterwards (no primitive bound to a stale impl)
    p = P(1, 3)
    q = rand(rng, (1, 8, 1, 4))
    mx.eval(C.na_fused(q, q, q, p)[0])
    prev = C.set_impl("fast")
    try:
        with pytest.raises(RuntimeError, match="UNSUPPORTED"):
            mx.eval(C.na_fused(q, q, q, p)[0])
    finally:
        C.set_impl(prev)
    mx.eval(C.na_fused(q, q, q, p)[0])


# --------------------------------------------------------------------------
# Reuse of large output buffers (natten_mlx/_core/ext/output_pool.h)
# --------------------------------------------------------------------------

POOL_SHAPE = (2, 64, 64, 8, 64)  # f32 out: 16 MiB, above the pool's 8 MiB floor; lse (2 MiB) below it


@pytest.fixture
def pool():
    limit0 = ext.output_pool_stats()[3]
    ext.output_pool_set_limit(512 << 20)  # the default, whatever NATTEN_CPU_OUTPUT_POOL_MB says
    yield lambda: ext.output_pool_stats()[:2]
    ext.output_pool_set_limit(limit0)


def _pool_fwd(seed):
    r = np.random.default_rng(seed)
    q, k, v = (mx.array(r.standard_normal(POOL_SHAPE), dtype=mx.float32) for _ in range(3))
    p = P(2, 5, scale=0.125)
    return (q, k, v, p), C.na_fused(q, k, v, p)[0]


def test_output_pool_reuses_a_freed_buffer_and_overwrites_it(pool):
    """A large output whose array died is handed to the next output of its size
    (one pool hit), and every element is written anew: a second problem with other
    inputs gives the pure tier's values, not the first problem's."""
    from natten_mlx._core import pure

    (_, out1) = _pool_fwd(1)
    mx.eval(out1)
    first = np.array(out1)
    hits, misses = pool()
    del out1
    (q, k, v, p), out2 = _pool_fwd(2)
    mx.eval(out2)
    assert pool() == (hits + 1, misses)
    want = np.array(pure.na_fused(q, k, v, p)[0])
    np.testing.assert_allclose(np.array(out2), want, rtol=2e-5, atol=2e-5)
    assert not np.allclose(np.array(out2), first)


def test_output_pool_leaves_live_buffers_alone(pool):
    """A buffer still referenced -- by its array, or by an array MLX moved it to --
    is never handed out: the live arrays keep their values across later calls."""
    (_, out1) = _pool_fwd(3)
    mx.eval(out1)
    keep = out1 + 0  # may take out1's buffer once out1 is gone (MLX buffer donation)
    del out1
    mx.eval(keep)
    before = np.array(keep)
    hits, _ = pool()
    for seed in (4, 5):
        (_, o) = _pool_fwd(seed)
        mx.eval(o)
        del o
    np.testing.assert_array_equal(np.array(keep), before)
    assert pool()[0] >= hits  # the two calls may share one pooled buffer between them


def test_output_pool_limit_zero_keeps_nothing(pool):
    """output_pool_set_limit(0) lets go of every held buffer and pools nothing more;
    the same call then still gives the same values."""
    (args, out1) = _pool_fwd(6)
    mx.eval(out1)
    first = np.array(out1)
    del out1
    ext.output_pool_set_limit(0)
    assert ext.output_pool_stats()[2] == 0
    hits, _ = pool()
    (_, out2) = _pool_fwd(6)
    mx.eval(out2)
    del out2
    assert ext.output_pool_stats()[2] == 0 and pool()[0] == hits
    (_, out3) = _pool_fwd(6)
    np.testing.assert_array_equal(np.array(out3), first)


def _data_address(a):
    return np.frombuffer(memoryview(a), dtype=np.uint8).ctypes.data  # no copy: MLX's own buffer


def test_large_outputs_start_on_64_byte_boundaries(pool):
    """Large outputs sit 64-byte aligned inside their buffer (an array byte offset),
    and everything downstream reads them right: values, slices, elementwise ops
    (which may take the buffer over), and a second call that takes the output as
    its query."""
    from natten_mlx._core import pure

    if os.environ.get("NATTEN_CPU_OUTPUT_ALIGN", "1") == "0":
        pytest.skip("NATTEN_CPU_OUTPUT_ALIGN=0 keeps MLX's own placement")
    (q, k, v, p), out = _pool_fwd(8)
    mx.eval(out)
    assert _data_address(out) % 64 == 0
    want = np.array(pure.na_fused(q, k, v, p)[0])
    np.testing.assert_allclose(np.array(out), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.array(out[1, 3:9, ::2]), want[1, 3:9, ::2], rtol=2e-5, atol=2e-5)
    twice = C.na_fused(out, k, v, p)[0]
    plus = out * 2 + 1
    mx.eval(twice, plus)
    np.testing.assert_allclose(np.array(plus), want * 2 + 1, rtol=2e-5, atol=4e-5)
    want2 = np.array(pure.na_fused(mx.array(want), k, v, p)[0])
    np.testing.assert_allclose(np.array(twice), want2, rtol=2e-4, atol=2e-4)


def test_output_pool_serves_the_backward(pool):
    """dq, dk and dv (16 MiB each here) come from the pool on a repeated backward."""
    r = np.random.default_rng(7)
    q, k, v, g = (mx.array(r.standard_normal(POOL_SHAPE), dtype=mx.float32) for _ in range(4))
    p = P(2, 3, scale=0.125)

    def grads():
        return mx.vjp(lambda a, b, c: C.na_fused(a, b, c, p)[0], [q, k, v], [g])[1]

    first = grads()
    mx.eval(first)
    ref = [np.array(x) for x in first]
    del first
    hits, _ = pool()
    again = grads()
    mx.eval(again)
    assert pool()[0] >= hits + 3
    for a, b in zip(again, ref):
        np.testing.assert_array_equal(np.array(a), b)
