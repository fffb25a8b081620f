"""nn modules: shapes, parameter names/packing, paths (fused / split+dropout /
varlen), GQA with attn_drop, gradients and an mx.compile'd training loop."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

import natten_mlx as nm
from nautil import assert_close, rand, to_np
from oracle import oracle_na

MODS = {1: nm.NeighborhoodAttention1D, 2: nm.NeighborhoodAttention2D,
        3: nm.NeighborhoodAttention3D}
SHAPES = {1: (11,), 2: (6, 7), 3: (3, 4, 5)}


def _close(got, want, what=""):
    """The layer's nn.Linear projections run MLX's own GEMMs, which use TF32 on
    CUDA GPUs; the attention itself is held to the float32 tolerance elsewhere."""
    if mx.default_device() == mx.gpu:
        g, w = to_np(got), np.asarray(want)
        np.testing.assert_allclose(g, w, atol=3e-3, rtol=3e-3, err_msg=what)
    else:
        assert_close(got, want, what=what)


def _ref_forward(layer, x_np, rank, kv_heads=None):
    """The module's math, by hand from its weights, with the oracle for attention."""
    E, H = layer.embed_dim, layer.num_heads
    hd = E // H
    params = dict(tree_flatten(layer.parameters()))
    lead = x_np.shape[:-1]

    def lin(name, x):
        w = to_np(params[f"{name}.weight"])
        y = x @ w.T
        if f"{name}.bias" in params:
            y = y + to_np(params[f"{name}.bias"])
        return y

    if kv_heads is None or kv_heads == H:
        qkv = lin("qkv", x_np).reshape(lead + (3, H, hd))
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    else:
        q = lin("q_proj", x_np).reshape(lead + (H, hd))
        kv = lin("kv_proj", x_np).reshape(lead + (2, kv_heads, hd))
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]
    o, _ = oracle_na(q, k, v, layer.kernel_size, layer.dilation, layer.stride, 1,
                     layer.is_causal, layer.scale)
    o = o.reshape(o.shape[:-2] + (E,))
    return lin("proj", o)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("kv", [None, 2, 1])
def test_module_matches_reference(tier, rank, kv, rng):
    layer = MODS[rank](16, 4, 3, stride=2, dilation=1, is_causal=True, num_kv_heads=kv,
                       qk_scale=0.3)
    x, xn = rand(rng, (2,) + SHAPES[rank] + (16,))
    y = layer(x)
    assert y.shape == (2,) + tuple(-(-s // 2) for s in SHAPES[rank]) + (16,)
    _close(y, _ref_forward(layer, xn, rank, kv), what="module")
    keys = set(dict(tree_flatten(layer.parameters())))
    if kv in (None, 4):
        assert {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"} <= keys
    else:
        assert {"q_proj.weight", "kv_proj.weight", "proj.weight"} <= keys
        assert layer.kv_proj.weight.shape == (2 * kv * 4, 16)


def test_module_attributes():
    layer = nm.NeighborhoodAttention2D(32, 4, (3, 5), stride=(1, 2), dilation=(2, 1),
                                       is_causal=(True, False), num_kv_heads=2, qkv_bias=False,
                                       attn_drop=0.1, proj_drop=0.2)
    assert layer.embed_dim == 32 and layer.num_heads == 4 and layer.head_dim == 8
    assert layer.num_kv_heads == 2
    assert layer.kernel_size == (3, 5) and layer.stride == (1, 2)
    assert layer.dilation == (2, 1) and layer.is_causal == (True, False)
    assert layer.scale == 8 ** -0.5
    assert isinstance(layer.attn_drop, nn.Dropout) and isinstance(layer.proj_drop, nn.Dropout)
    assert layer.attn_drop_rate == 0.1 and layer.proj_drop_rate == 0.2
    assert "bias" not in layer.q_proj
    plain = nm.NeighborhoodAttention1D(8, 2, 3)
    assert plain.attn_drop is None and plain.proj_drop is None and plain.num_kv_heads == 2
    assert nm.NeighborhoodAttention1D(8, 2, 3, qk_scale=0.0).scale == 0.0


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("kv", [None, 2])
def test_attn_drop_path_with_gqa(tier, rank, kv, rng):
    """natten-mlx breaks on GQA + attn_drop (spec §14); here it works and in eval
    mode (dropout off) it equals the fused path."""
    layer = MODS[rank](16, 4, 3, stride=(2,) * rank, is_causal=True, num_kv_heads=kv,
                       attn_drop=0.5)
    x, xn = rand(rng, (1,) + SHAPES[rank] + (16,))
    layer.train()
    y = layer(x)
    assert not np.isnan(to_np(y)).any()
    layer.eval()
    _close(layer(x), _ref_forward(layer, xn, rank, kv), what="eval")


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_varlen_path(tier, rank, rng):
    layer = MODS[rank](8, 2, 3, stride=2, is_causal=True, num_kv_heads=1)   # ignored on varlen
    x, xn = rand(rng, (2,) + SHAPES[rank] + (8,))
    sizes = {1: [11, 6], 2: [[6, 7], [4, 3]], 3: [[3, 4, 5], [3, 3, 3]]}[rank]
    y = layer(x, mx.array(sizes))
    assert y.shape == x.shape
    # sample 0 covers the whole extent: equals stride-1, non-causal attention
    ref = MODS[rank](8, 2, 3, num_kv_heads=1)
    ref.update(layer.parameters())
    _close(y[:1], ref(x[:1]), what="varlen full sample")


def test_module_grads(tier, rng):
    layer = nm.NeighborhoodAttention2D(16, 4, 3, dilation=(1, 2), num_kv_heads=2)
    x, _ = rand(rng, (1, 6, 7, 16))

    def loss(model, x):
        return (model(x) ** 2).mean()

    val, grads = nn.value_and_grad(layer, loss)(layer, x)
    flat = dict(tree_flatten(grads))
    assert {"q_proj.weight", "kv_proj.weight", "proj.weight"} <= set(flat)
    for g in flat.values():
        assert np.isfinite(to_np(g)).all() and np.abs(to_np(g)).sum() > 0
    gx = mx.grad(lambda x: loss(layer, x))(x)
    assert gx.shape == x.shape and np.abs(to_np(gx)).sum() > 0


@pytest.mark.parametrize("rank", [1, 2])
def test_compiled_training_loop_loss_decreases(tier, rank, rng):
    """A small mx.compile'd training step (forward + backward + update) learns."""
    mx.random.seed(3)
    X = {1: (16,), 2: (6, 6)}[rank]
    model = nn.Sequential(MODS[rank](16, 4, 3, num_kv_heads=2, is_causal=True))
    x = mx.random.normal((4,) + X + (16,))
    target = mx.random.normal((4,) + X + (16,)) * 0.5
    opt = optim.Adam(learning_rate=1e-2)

    def loss_fn(model, x, y):
        return ((model(x) - y) ** 2).mean()

    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        opt.update(model, grads)
        return loss

    losses = []
    for _ in range(25):
        loss = step(x, target)
        mx.eval(state)
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
