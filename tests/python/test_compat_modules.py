"""compat modules: upstream constructor signatures, parameter names, checkpoint loading, forward."""

from __future__ import annotations

import inspect

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import oracle
from nautil import assert_close
from natten_mlx.compat import v014, v015, v017, v020
from test_compat_support import npy

# Upstream constructor parameters, in order (upstream-natten.md 6.3 and 2.2).
SIG_014 = ["dim", "num_heads", "kernel_size", "dilation", "bias", "qkv_bias", "qk_scale",
           "attn_drop", "proj_drop"]
SIG_015_3D = ["dim", "num_heads", "kernel_size", "kernel_size_d", "dilation", "dilation_d", "bias",
              "qkv_bias", "qk_scale", "attn_drop", "proj_drop"]
SIG_017 = ["dim", "num_heads", "kernel_size", "dilation", "is_causal", "rel_pos_bias", "qkv_bias",
           "qk_scale", "attn_drop", "proj_drop", "use_experimental_ops"]
SIG_020 = ["embed_dim", "num_heads", "kernel_size", "stride", "dilation", "is_causal", "qkv_bias",
           "qk_scale", "proj_drop"]


def _positional(cls):
    ps = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in ps if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize(
    "cls,sig",
    [
        (v014.NeighborhoodAttention1D, SIG_014),
        (v014.NeighborhoodAttention2D, SIG_014),
        (v015.NeighborhoodAttention1D, SIG_014),
        (v015.NeighborhoodAttention2D, SIG_014),
        (v015.NeighborhoodAttention3D, SIG_015_3D),
        (v017.NeighborhoodAttention1D, SIG_017),
        (v017.NeighborhoodAttention2D, SIG_017),
        (v017.NeighborhoodAttention3D, SIG_017),
        (v020.NeighborhoodAttention1D, SIG_020),
        (v020.NeighborhoodAttention2D, SIG_020),
        (v020.NeighborhoodAttention3D, SIG_020),
    ],
)
def test_constructor_signatures_match_upstream(cls, sig):
    assert _positional(cls) == sig


def _keys(m):
    return {k: tuple(v.shape) for k, v in tree_flatten(m.parameters())}


def test_parameter_names_match_upstream_state_dicts():
    C, H = 16, 4
    # 0.14 / 0.15: bias=True (RPB on) by default
    assert _keys(v014.NeighborhoodAttention1D(C, H, 5)) == {
        "qkv.weight": (3 * C, C), "qkv.bias": (3 * C,), "rpb": (H, 9),
        "proj.weight": (C, C), "proj.bias": (C,),
    }
    assert _keys(v014.NeighborhoodAttention2D(C, H, 3))["rpb"] == (H, 5, 5)
    k = _keys(v014.NeighborhoodAttention2D(C, H, 3, bias=False, qkv_bias=False))
    assert set(k) == {"qkv.weight", "proj.weight", "proj.bias"}
    assert _keys(v015.NeighborhoodAttention3D(C, H, 3, kernel_size_d=5))["rpb"] == (H, 9, 5, 5)
    assert v014.NeighborhoodAttention is v014.NeighborhoodAttention2D
    # 0.17: rel_pos_bias=False by default, per-axis kernels
    assert set(_keys(v017.NeighborhoodAttention2D(C, H, (3, 5)))) == {
        "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    assert _keys(v017.NeighborhoodAttention2D(C, H, (3, 5), rel_pos_bias=True))["rpb"] == (H, 5, 9)
    assert _keys(v017.NeighborhoodAttention3D(C, H, (3, 5, 3), rel_pos_bias=True))["rpb"] == (H, 5, 9, 5)
    # 0.20: no RPB; natten-mlx's GQA projections kept
    assert set(_keys(v020.NeighborhoodAttention1D(C, H, 3))) == {
        "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    assert set(_keys(v020.NeighborhoodAttention1D(C, H, 3, num_kv_heads=2))) == {
        "q_proj.weight", "q_proj.bias", "kv_proj.weight", "kv_proj.bias", "proj.weight", "proj.bias"}
    assert v020.NeighborhoodAttention2D(dim=C, num_heads=H, kernel_size=3).embed_dim == C


def _fake_checkpoint(rng, C, H, rpb_shape, qkv_bias=True):
    """An upstream-style state_dict (torch Linear layout: weight [out, in])."""
    ck = {
        "qkv.weight": rng.standard_normal((3 * C, C)) * 0.3,
        "proj.weight": rng.standard_normal((C, C)) * 0.3,
        "proj.bias": rng.standard_normal((C,)) * 0.1,
    }
    if qkv_bias:
        ck["qkv.bias"] = rng.standard_normal((3 * C,)) * 0.1
    if rpb_shape is not None:
        ck["rpb"] = rng.standard_normal(rpb_shape) * 0.5
    return {k: v.astype(np.float32) for k, v in ck.items()}


def _reference_forward(x, ck, H, kernel, dilation, causal=False, scale=None, gna_stride=1, pad=False):
    """numpy: qkv linear -> NA (oracle, rpb) -> proj, with upstream 0.14's end padding."""
    x = npy(x)
    B, *ext, C = x.shape
    ext = tuple(ext)
    rank = len(ext)
    kern = (kernel,) * rank if isinstance(kernel, int) else tuple(kernel)
    dil = (dilation,) * rank if isinstance(dilation, int) else tuple(dilation)
    if pad:
        pads = [max(0, k * d - n) for k, d, n in zip(kern, dil, ext)]
        x = np.pad(x, [(0, 0)] + [(0, p) for p in pads] + [(0, 0)])
    xs = x.shape[1:-1]
    qkv = x @ ck["qkv.weight"].astype(np.float64).T
    if "qkv.bias" in ck:
        qkv = qkv + ck["qkv.bias"]
    qkv = qkv.reshape((B,) + xs + (3, H, C // H))
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    hd = C // H
    s = hd**-0.5 if scale is None else scale
    o, _ = oracle.oracle_na(q, k, v, kern, dilation=dil, causal=causal, gna_stride=gna_stride,
                            scale=s, rpb=ck.get("rpb"))
    o = o.reshape((B,) + xs + (C,))
    o = o[(slice(None),) + tuple(slice(0, n) for n in ext)]
    return o @ ck["proj.weight"].astype(np.float64).T + ck["proj.bias"]


def _load(m, ck):
    m.load_weights([(k, mx.array(v)) for k, v in ck.items()], strict=True)
    m.eval()
    return m


@pytest.mark.parametrize("rank,ext,K,d", [(1, (13,), 5, 2), (2, (7, 9), 3, 2), (2, (6, 6), 5, 1)])
def test_v014_checkpoint_loads_by_name_and_matches_reference(tier, rng, rank, ext, K, d):
    C, H = 12, 3
    cls = v014.NeighborhoodAttention1D if rank == 1 else v014.NeighborhoodAttention2D
    ck = _fake_checkpoint(rng, C, H, (H,) + (2 * K - 1,) * rank)
    m = _load(cls(C, H, K, d), ck)
    x = mx.array(rng.standard_normal((2,) + ext + (C,)).astype(np.float32))
    assert_close(m(x), _reference_forward(x, ck, H, K, d), what="v014 module")


def test_v014_pads_inputs_smaller_than_window(tier, rng):
    C, H, K, d = 8, 2, 3, 2
    ck = _fake_checkpoint(rng, C, H, (H, 5, 5))
    m = _load(v014.NeighborhoodAttention2D(C, H, K, d), ck)
    x = mx.array(rng.standard_normal((1, 4, 7, C)).astype(np.float32))  # 4 < K*d = 6
    out = m(x)
    assert out.shape == (1, 4, 7, C)
    assert_close(out, _reference_forward(x, ck, H, K, d, pad=True), what="padded")
    m1 = _load(v014.NeighborhoodAttention1D(C, H, 5), _fake_checkpoint(rng, C, H, (H, 9)))
    assert m1(mx.zeros((1, 3, C))).shape == (1, 3, C)


def test_v015_3d_module(tier, rng):
    C, H = 8, 2
    ck = _fake_checkpoint(rng, C, H, (H, 5, 5, 5))
    m = _load(v015.NeighborhoodAttention3D(C, H, 3, kernel_size_d=3, dilation=1, dilation_d=2), ck)
    x = mx.array(rng.standard_normal((1, 6, 5, 4, C)).astype(np.float32))
    want = _reference_forward(x, ck, H, (3, 3, 3), (2, 1, 1))
    assert_close(m(x), want, what="v015 3D")
    assert (m.kernel_size, m.kernel_size_d, m.dilation, m.dilation_d) == (3, 3, 1, 2)


@pytest.mark.parametrize(
    "rank,ext,K,d,causal,rpb",
    [
        (1, (11,), 4, 2, True, False),
        (1, (11,), 5, 2, False, True),
        (2, (7, 8), (3, 5), (2, 1), False, True),
        (2, (7, 8), 3, 1, (True, False), False),
        (3, (5, 6, 4), (3, 3, 2), (1, 2, 1), (True, False, False), False),
    ],
)
def test_v017_modules(tier, rng, rank, ext, K, d, causal, rpb):
    C, H = 8, 2
    cls = getattr(v017, f"NeighborhoodAttention{rank}D")
    kern = (K,) * rank if isinstance(K, int) else K
    ck = _fake_checkpoint(rng, C, H, (H,) + tuple(2 * k - 1 for k in kern) if rpb else None)
    m = _load(cls(C, H, K, d, is_causal=causal, rel_pos_bias=rpb, qk_scale=0.4), ck)
    x = mx.array(rng.standard_normal((2,) + ext + (C,)).astype(np.float32))
    want = _reference_forward(x, ck, H, K, d, causal=causal, scale=0.4)
    assert_close(m(x), want, what="v017 module (fused path)")
    # attention-dropout path (split qk / softmax / dropout / av): p tiny, so no element drops
    m2 = _load(cls(C, H, K, d, is_causal=causal, rel_pos_bias=rpb, qk_scale=0.4, attn_drop=1e-12), ck)
    m2.train()
    assert_close(m2(x), want, what="v017 module (split path)")


def test_v017_module_errors():
    with pytest.raises(NotImplementedError, match="positional biases"):
        v017.NeighborhoodAttention1D(8, 2, 3, is_causal=True, rel_pos_bias=True)
    m = v017.NeighborhoodAttention1D(8, 2, 5, dilation=2)
    with pytest.raises(ValueError, match="exceeds input size"):
        m(mx.zeros((1, 9, 8)))  # no padding in 0.17: 9 < K*d = 10
    with pytest.raises(ValueError, match="rank-3"):
        m(mx.zeros((1, 9, 9, 8)))
    with pytest.raises(ValueError, match="Expected dim=8, got channels=6"):
        m(mx.zeros((1, 12, 6)))


def test_v014_module_errors():
    with pytest.raises(ValueError, match="odd number greater than 1"):
        v014.NeighborhoodAttention1D(8, 2, 4)
    with pytest.raises(ValueError, match="odd number greater than 1"):
        v014.NeighborhoodAttention2D(8, 2, 1)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        v014.NeighborhoodAttention1D(10, 3, 3)
    with pytest.raises(TypeError, match="kernel_size"):
        v014.NeighborhoodAttention1D(8, 2)
    with pytest.raises(ValueError):
        _load(v014.NeighborhoodAttention1D(8, 2, 3), {"qkv.weight": np.zeros((24, 8), np.float32)})


@pytest.mark.parametrize(
    "rank,ext,K,s,d,causal,kvh",
    [
        (1, (13,), 5, 2, 2, False, 2),
        (1, (12,), 3, 3, 1, True, 1),
        (2, (8, 9), (3, 4), (3, 2), (1, 2), (False, True), 2),
        (3, (5, 6, 4), 3, (1, 2, 3), 1, False, 2),
    ],
)
def test_v020_modules_gna(tier, rng, rank, ext, K, s, d, causal, kvh):
    C, H = 16, 4
    cls = getattr(v020, f"NeighborhoodAttention{rank}D")
    m = cls(C, H, K, stride=s, dilation=d, is_causal=causal, num_kv_heads=kvh)
    m.eval()
    x = mx.array(rng.standard_normal((2,) + ext + (C,)).astype(np.float32))
    out = m(x)
    assert out.shape == x.shape  # GNA: output keeps the input's spatial shape
    # reference through the module's own weights
    p = {k: np.array(v).astype(np.float64) for k, v in tree_flatten(m.parameters())}
    xn = npy(x)
    hd = C // H
    if kvh == H:
        qkv = (xn @ p["qkv.weight"].T + p["qkv.bias"]).reshape((2,) + ext + (3, H, hd))
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    else:
        q = (xn @ p["q_proj.weight"].T + p["q_proj.bias"]).reshape((2,) + ext + (H, hd))
        kv = (xn @ p["kv_proj.weight"].T + p["kv_proj.bias"]).reshape((2,) + ext + (2, kvh, hd))
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]
    o, _ = oracle.oracle_na(q, k, v, K, dilation=d, gna_stride=s, causal=causal)
    want = o.reshape((2,) + ext + (C,)) @ p["proj.weight"].T + p["proj.bias"]
    assert_close(out, want, what="v020 module")
    # split path with attention dropout (GQA heads repeated for the split ops)
    m2 = cls(C, H, K, stride=s, dilation=d, is_causal=causal, num_kv_heads=kvh, attn_drop=1e-12)
    m2.update(m.parameters())
    m2.train()
    assert_close(m2(x), want, what="v020 module split path")


def test_v020_module_errors():
    with pytest.raises(ValueError, match="embed_dim must be positive"):
        v020.NeighborhoodAttention1D(0, 2, 3)
    with pytest.raises(ValueError, match="divisible by num_kv_heads"):
        v020.NeighborhoodAttention1D(8, 4, 3, num_kv_heads=3)
    with pytest.raises(ValueError, match="kernel_size"):
        v020.NeighborhoodAttention1D(8, 2, 1)
    m = v020.NeighborhoodAttention2D(8, 2, 3, stride=2)
    with pytest.raises(ValueError, match="Input channel dim"):
        m(mx.zeros((1, 6, 6, 4)))
    with pytest.raises(ValueError, match="Expected input shape"):
        m(mx.zeros((1, 6, 8)))


@pytest.mark.parametrize("cls_name", ["v014.NeighborhoodAttention2D", "v017.NeighborhoodAttention1D",
                                      "v020.NeighborhoodAttention1D"])
def test_compiled_training_step_decreases_loss(tier, rng, cls_name):
    import mlx.optimizers as optim
    from functools import partial

    mod, name = cls_name.split(".")
    cls = getattr({"v014": v014, "v017": v017, "v020": v020}[mod], name)
    kwargs = {"rel_pos_bias": True} if mod == "v017" else ({"stride": 2} if mod == "v020" else {})
    m = cls(8, 2, 3, **kwargs)
    shape = (2, 6, 7, 8) if "2D" in name else (2, 12, 8)
    x = mx.array(rng.standard_normal(shape).astype(np.float32))
    y = mx.array(rng.standard_normal(shape).astype(np.float32))
    opt = optim.Adam(learning_rate=3e-2)
    state = [m.state, opt.state]

    def loss_fn(x, y):
        return mx.mean((m(x) - y) ** 2)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = nn.value_and_grad(m, loss_fn)(x, y)
        opt.update(m, grads)
        return loss

    first = step(x, y).item()
    for _ in range(15):
        last = step(x, y).item()
    assert last < first
    if mod != "v020":
        assert "rpb" in dict(tree_flatten(m.trainable_parameters()))


def test_module_attributes_like_upstream():
    m = v014.NeighborhoodAttention2D(16, 2, 5, dilation=2)
    assert (m.kernel_size, m.dilation, m.num_heads, m.head_dim) == (5, 2, 2, 8)
    assert m.scale == 8**-0.5 and m.window_size == (10, 10)
    assert v014.NeighborhoodAttention1D(16, 2, 3, qk_scale=0).scale == 8**-0.5  # `or` default
    m17 = v017.NeighborhoodAttention2D(16, 2, (3, 5), dilation=(1, 2), is_causal=(True, False))
    assert (m17.kernel_size, m17.dilation, m17.is_causal) == ((3, 5), (1, 2), (True, False))
    m20 = v020.NeighborhoodAttention2D(16, 2, 3, stride=(1, 3))
    assert (m20.kernel_size, m20.stride, m20.num_kv_heads) == ((3, 3), (1, 3), 2)
    assert "stride=(1, 3)" in repr(m20)
