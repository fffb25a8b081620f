"""Every example of natten-mlx's README (Quick Start, Features, Extras, Compat, Backends), runnable.

The snippets are kept as they appear in natten-mlx 0.3's README; the variables the README leaves
implicit (q2d/k2d/v2d, q3d/k3d/v3d, rpb) are defined just before use.  Each section prints the
shapes it produced.  Runs on Linux with MLX's CPU device (or a GPU if MLX has one).

    python examples/quickstart.py
"""

import os
import sys

try:
    import natten_mlx  # noqa: F401
except ImportError:  # running from a source checkout without an install: use the tree
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import natten_mlx  # noqa: F401


def section(title):
    print(f"\n== {title}")


def show(name, x):
    if isinstance(x, (tuple, list)):
        print(f"  {name}: " + ", ".join(str(tuple(a.shape)) for a in x))
    else:
        print(f"  {name}: {tuple(x.shape)} {x.dtype}")


# ---------------------------------------------------------------------------------------------
section("Functional API")

import mlx.core as mx
from natten_mlx import na1d

B, L, H, D = 2, 64, 4, 32
q = mx.random.normal((B, L, H, D))
k = mx.random.normal((B, L, H, D))
v = mx.random.normal((B, L, H, D))

out = na1d(q, k, v, kernel_size=7)
show("na1d out", out)

# ---------------------------------------------------------------------------------------------
section("Module API")

from natten_mlx import NeighborhoodAttention1D

layer = NeighborhoodAttention1D(embed_dim=128, num_heads=4, kernel_size=7)
x = mx.random.normal((2, 64, 128))
y = layer(x)
show("NeighborhoodAttention1D(x)", y)

# ---------------------------------------------------------------------------------------------
section("Split QK/AV")

from natten_mlx import na1d_qk, na1d_av

logits = na1d_qk(q, k, kernel_size=7, scale=D ** -0.5)  # [B, L, H, K]
attn = mx.softmax(logits, axis=-1)
out = na1d_av(attn, v, kernel_size=7)                     # [B, L, H, D]
show("na1d_qk logits", logits)
show("na1d_av out", out)
mx.eval(out)
print(f"  split path == fused na1d: max |diff| = "
      f"{mx.abs(out - na1d(q, k, v, kernel_size=7)).max().item():.2e}")

# ---------------------------------------------------------------------------------------------
section("2D and 3D")

from natten_mlx import na2d, na3d

q2d = mx.random.normal((2, 16, 16, 4, 32))
k2d = mx.random.normal((2, 16, 16, 4, 32))
v2d = mx.random.normal((2, 16, 16, 4, 32))
q3d = mx.random.normal((1, 8, 8, 8, 4, 32))
k3d = mx.random.normal((1, 8, 8, 8, 4, 32))
v3d = mx.random.normal((1, 8, 8, 8, 4, 32))

# 2D: [B, H, W, heads, head_dim]
out_2d = na2d(q2d, k2d, v2d, kernel_size=7)

# 3D: [B, D, H, W, heads, head_dim]
out_3d = na3d(q3d, k3d, v3d, kernel_size=(3, 3, 3))
show("na2d out", out_2d)
show("na3d out", out_3d)

# ---------------------------------------------------------------------------------------------
section("Variable-length attention")

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
show("na1d_varlen out", out)
show("na2d_varlen out", out2d)
print(f"  sample 2 beyond its length (rows 64..127) is zero: "
      f"{bool((out[2, 64:] == 0).all().item())}")

# ---------------------------------------------------------------------------------------------
section("New features usage")

import mlx.core as mx
from natten_mlx import na1d, merge_attentions

# GQA: 8 query heads, 2 KV heads
q = mx.random.normal((1, 128, 8, 32))
k = mx.random.normal((1, 128, 2, 32))
v = mx.random.normal((1, 128, 2, 32))
out = na1d(q, k, v, kernel_size=7)
show("GQA na1d out", out)

# return_lse for merging
out1, lse1 = na1d(q, k, v, kernel_size=7, return_lse=True)
out2, lse2 = na1d(q, k, v, kernel_size=7, return_lse=True)
merged, merged_lse = merge_attentions([out1, out2], [lse1, lse2])
show("na1d(return_lse=True) out, lse", (out1, lse1))
show("merge_attentions out, lse", (merged, merged_lse))

# Additional global tokens
add_k = mx.random.normal((1, 4, 2, 32))
add_v = mx.random.normal((1, 4, 2, 32))
out = na1d(q, k, v, kernel_size=7, additional_keys=add_k, additional_values=add_v)
show("na1d + 4 additional KV tokens", out)

# GQA via nn module
from natten_mlx import NeighborhoodAttention1D
layer = NeighborhoodAttention1D(embed_dim=256, num_heads=8, kernel_size=7, num_kv_heads=2)
show("GQA NeighborhoodAttention1D(x)", layer(mx.random.normal((1, 128, 256))))

# ---------------------------------------------------------------------------------------------
section("Extras: extras.allin1 (DiNAT fused QK+RPB / AV)")

# DiNAT-like shapes from All-In-One: head dim 12, 2 heads; rpb is [heads, 2K-1].
q = mx.random.normal((1, 216, 2, 12))
k = mx.random.normal((1, 216, 2, 12))
v = mx.random.normal((1, 216, 2, 12))
rpb = mx.random.normal((2, 2 * 5 - 1))

from natten_mlx.extras.allin1 import na1d_qk_rpb, na1d_av_fused

# Fused QK + relative position bias in one Metal kernel dispatch
logits = na1d_qk_rpb(q, k, rpb, kernel_size=5, dilation=2, scale=0.288)
attn = mx.softmax(logits, axis=-1)
out = na1d_av_fused(attn, v, kernel_size=5, dilation=2)
show("na1d_qk_rpb logits", logits)
show("na1d_av_fused out", out)

# ---------------------------------------------------------------------------------------------
section("Compat mode")

import natten_mlx.compat.v014 as natten

layer = natten.NeighborhoodAttention1D(dim=128, kernel_size=7, num_heads=4)
show("compat.v014 NeighborhoodAttention1D(x)", layer(mx.random.normal((2, 64, 128))))

# ---------------------------------------------------------------------------------------------
section("Backends")

import natten_mlx

print(natten_mlx.get_support_matrix())
print(natten_mlx.has_nanobind())  # True if compiled extension is available
print(f"  get_backend() -> {natten_mlx.get_backend()!r}")

print("\nquickstart: all examples ran")
