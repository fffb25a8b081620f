"""The seed README's Python examples, verbatim, must run (issue 3: "the README
quick start runs verbatim").

Each block below is copied character for character from the seed README.
Where a block uses names it does not define (the 2D/3D block's q2d/q3d, the
extras block's q/k/v/rpb), a setup snippet defines them first; the block
itself is not edited.  The natten-mps line (block EXTRAS_MPS) needs PyTorch
MPS and is only checked for the natten_mlx half.
"""

from __future__ import annotations

import importlib

import mlx.core as mx
import numpy as np
import pytest


QUICKSTART_FUNCTIONAL = """\
import mlx.core as mx
from natten_mlx import na1d

B, L, H, D = 2, 64, 4, 32
q = mx.random.normal((B, L, H, D))
k = mx.random.normal((B, L, H, D))
v = mx.random.normal((B, L, H, D))

out = na1d(q, k, v, kernel_size=7)
"""

QUICKSTART_MODULE = """\
from natten_mlx import NeighborhoodAttention1D

layer = NeighborhoodAttention1D(embed_dim=128, num_heads=4, kernel_size=7)
x = mx.random.normal((2, 64, 128))
y = layer(x)
"""

SPLIT_QK_AV = """\
from natten_mlx import na1d_qk, na1d_av

logits = na1d_qk(q, k, kernel_size=7, scale=D ** -0.5)  # [B, L, H, K]
attn = mx.softmax(logits, axis=-1)
out = na1d_av(attn, v, kernel_size=7)                     # [B, L, H, D]
"""

ND = """\
from natten_mlx import na2d, na3d

# 2D: [B, H, W, heads, head_dim]
out_2d = na2d(q2d, k2d, v2d, kernel_size=7)

# 3D: [B, D, H, W, heads, head_dim]
out_3d = na3d(q3d, k3d, v3d, kernel_size=(3, 3, 3))
"""

VARLEN = """\
import mlx.core as mx
from natten_mlx import na1d_varlen, na2d_varlen

# 1D: padded batch with per-sample lengths
q = mx.random.normal((3, 128, 4, 32))   # B=3, L_max=128
k = mx.random.normal((3, 128, 4, 32))
v = mx.random.normal((3, 128, 4, 32))
seq_lens = mx.array([128, 96, 64])
out = na1d_varlen(q, k, v, kernel_size=7, seq_lens=seq_lens)

# 2D: padded batch with per-sample (H, W)
q2d = mx.random.normal((2, 32, 32, 4, 32))  # B=2, H_max=32, W_max=32
k2d = mx.random.normal((2, 32, 32, 4, 32))
v2d = mx.random.normal((2, 32, 32, 4, 32))
spatial_sizes = mx.array([[32, 32], [24, 20]])
out2d = na2d_varlen(q2d, k2d, v2d, kernel_size=7, spatial_sizes=spatial_sizes)
"""

NEW_FEATURES = """\
import mlx.core as mx
from natten_mlx import na1d, merge_attentions

# GQA: 8 query heads, 2 KV heads
q = mx.random.normal((1, 128, 8, 32))
k = mx.random.normal((1, 128, 2, 32))
v = mx.random.normal((1, 128, 2, 32))
out = na1d(q, k, v, kernel_size=7)

# return_lse for merging
out1, lse1 = na1d(q, k, v, kernel_size=7, return_lse=True)
out2, lse2 = na1d(q, k, v, kernel_size=7, return_lse=True)
merged, merged_lse = merge_attentions([out1, out2], [lse1, lse2])

# Additional global tokens
add_k = mx.random.normal((1, 4, 2, 32))
add_v = mx.random.normal((1, 4, 2, 32))
out = na1d(q, k, v, kernel_size=7, additional_keys=add_k, additional_values=add_v)

# GQA via nn module
from natten_mlx import NeighborhoodAttention1D
layer = NeighborhoodAttention1D(embed_dim=256, num_heads=8, kernel_size=7, num_kv_heads=2)
"""

EXTRAS_ALLIN1 = """\
from natten_mlx.extras.allin1 import na1d_qk_rpb, na1d_av_fused

# Fused QK + relative position bias in one Metal kernel dispatch
logits = na1d_qk_rpb(q, k, rpb, kernel_size=5, dilation=2, scale=0.288)
attn = mx.softmax(logits, axis=-1)
out = na1d_av_fused(attn, v, kernel_size=5, dilation=2)
"""

EXTRAS_MPS = """\
# Same API, different backend:
from natten_mlx.extras.allin1 import na1d_qk_rpb  # MLX
from natten_mps.extras.allin1 import na1d_qk_rpb   # PyTorch MPS
"""

COMPAT = """\
import natten_mlx.compat.v014 as natten

layer = natten.NeighborhoodAttention1D(dim=128, kernel_size=7, num_heads=4)
"""

BACKENDS = """\
import natten_mlx

print(natten_mlx.get_support_matrix())
print(natten_mlx.has_nanobind())  # True if compiled extension is available
"""

SETUP_ND = """
q2d = mx.random.normal((1, 12, 14, 2, 16))
k2d = mx.random.normal((1, 12, 14, 2, 16))
v2d = mx.random.normal((1, 12, 14, 2, 16))
q3d = mx.random.normal((1, 5, 6, 7, 2, 8))
k3d = mx.random.normal((1, 5, 6, 7, 2, 8))
v3d = mx.random.normal((1, 5, 6, 7, 2, 8))
"""

SETUP_EXTRAS = """
q = mx.random.normal((1, 40, 2, 12))
k = mx.random.normal((1, 40, 2, 12))
v = mx.random.normal((1, 40, 2, 12))
rpb = mx.random.normal((2, 9))
"""


def _run(code, ns):
    exec(compile(code, "<README>", "exec"), ns)
    return ns


def test_quick_start_sequence(tier):
    ns = {}
    _run(QUICKSTART_FUNCTIONAL, ns)
    assert ns["out"].shape == (2, 64, 4, 32)
    _run(QUICKSTART_MODULE, ns)
    assert ns["y"].shape == (2, 64, 128)
    fused = ns["out"]
    _run(SPLIT_QK_AV, ns)
    assert ns["logits"].shape == (2, 64, 4, 7)
    np.testing.assert_allclose(np.array(ns["out"]), np.array(fused), atol=1e-5)
    _run(SETUP_ND, ns)
    _run(ND, ns)
    assert ns["out_2d"].shape == (1, 12, 14, 2, 16)
    assert ns["out_3d"].shape == (1, 5, 6, 7, 2, 8)


def test_varlen_example(tier):
    ns = _run(VARLEN, {})
    assert ns["out"].shape == (3, 128, 4, 32)
    assert (np.array(ns["out"][2, 64:]) == 0).all()
    assert ns["out2d"].shape == (2, 32, 32, 4, 32)
    assert (np.array(ns["out2d"][1, 24:]) == 0).all()
    assert (np.array(ns["out2d"][1, :, 20:]) == 0).all()


def test_new_features_example(tier):
    ns = _run(NEW_FEATURES, {})
    assert ns["merged"].shape == (1, 128, 8, 32)
    assert ns["merged_lse"].shape == (1, 128, 8)
    # merging two identical halves: same output, lse + log 2
    np.testing.assert_allclose(np.array(ns["merged"]), np.array(ns["out1"]), atol=1e-5)
    np.testing.assert_allclose(np.array(ns["merged_lse"]),
                               np.array(ns["lse1"]) + np.log(2.0), atol=1e-4)
    assert ns["layer"].num_kv_heads == 2


def test_extras_example():
    pytest.importorskip("natten_mlx.extras.allin1")
    ns = _run(SETUP_EXTRAS, {"mx": mx})
    _run(EXTRAS_ALLIN1, ns)
    assert ns["out"].shape == (1, 40, 2, 12)
    # the natten_mlx half of the "same API" snippet
    mlx_line = EXTRAS_MPS.splitlines()[1]
    assert mlx_line.startswith("from natten_mlx")
    _run(mlx_line, {})


def test_compat_example():
    pytest.importorskip("natten_mlx.compat.v014")
    ns = _run(COMPAT, {})
    assert ns["layer"](mx.random.normal((1, 16, 128))).shape == (1, 16, 128)


def test_backends_example(capsys):
    _run(BACKENDS, {})
    printed = capsys.readouterr().out
    assert "'pure'" in printed and "nanobind" in printed
    importlib.import_module("natten_mlx")
