"""``mlx.nn`` neighborhood-attention layers (natten-mlx 0.3 modules).

Parameter names match natten-mlx (``qkv`` for MHA, ``q_proj`` + ``kv_proj``
for GQA/MQA, ``proj``) so checkpoints load unchanged.  With ``attn_drop > 0``
the layer runs split QK -> softmax -> dropout -> AV; with GQA the key/value
heads are repeated for that path (natten-mlx breaks there, spec §14).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from natten_mlx import functional as F
from natten_mlx.utils.params import normalize_kernel_size, normalize_tuple_param

_SHAPES = {1: "[B, L, C]", 2: "[B, H, W, C]", 3: "[B, D, H, W, C]"}


class _NeighborhoodAttention(nn.Module):
    _rank = 1

    def __init__(self, embed_dim, num_heads, kernel_size, stride=1, dilation=1, is_causal=False,
                 num_kv_heads=None, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        rank = self._rank
        if embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        if num_heads <= 0:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if embed_dim % num_heads != 0:
            raise ValueError("embed_dim must be divisible by num_heads")
        kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % kv_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must be divisible by num_kv_heads ({kv_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = kv_heads
        self.head_dim = embed_dim // num_heads
        self.kernel_size = normalize_kernel_size(kernel_size, rank)
        self.stride = normalize_tuple_param(stride, rank, "stride")
        self.dilation = normalize_tuple_param(dilation, rank, "dilation")
        self.is_causal = tuple(bool(c) for c in normalize_tuple_param(is_causal, rank,
                                                                       "is_causal"))
        self.scale = float(qk_scale) if qk_scale is not None else self.head_dim ** -0.5
        if kv_heads == num_heads:
            self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(embed_dim, num_heads * self.head_dim, bias=qkv_bias)
            self.kv_proj = nn.Linear(embed_dim, 2 * kv_heads * self.head_dim, bias=qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.attn_drop_rate = float(attn_drop)
        self.proj_drop_rate = float(proj_drop)
        self.attn_drop = nn.Dropout(attn_drop) if attn_drop > 0 else None
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else None

    def _fns(self):
        r = self._rank
        return {1: (F.na1d, F.na1d_qk, F.na1d_av, F.na1d_varlen),
                2: (F.na2d, F.na2d_qk, F.na2d_av, F.na2d_varlen),
                3: (F.na3d, F.na3d_qk, F.na3d_av, F.na3d_varlen)}[r]

    def _project(self, x):
        lead = tuple(x.shape[:-1])
        hd = self.head_dim
        if self.num_kv_heads == self.num_heads:
            qkv = self.qkv(x).reshape(lead + (3, self.num_heads, hd))
            q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        else:
            q = self.q_proj(x).reshape(lead + (self.num_heads, hd))
            kv = self.kv_proj(x).reshape(lead + (2, self.num_kv_heads, hd))
            k, v = kv[..., 0, :, :], kv[..., 1, :, :]
        return q, k, v

    def _attend(self, x, sizes):
        rank = self._rank
        if x.ndim != rank + 2:
            raise ValueError(f"Expected input shape {_SHAPES[rank]}, got {tuple(x.shape)}")
        if x.shape[-1] != self.embed_dim:
            raise ValueError(
                f"Input channel dim ({x.shape[-1]}) must match embed_dim ({self.embed_dim})")
        fused, qk, av, varlen = self._fns()
        q, k, v = self._project(x)
        # the varlen and split paths take equal heads: repeat the key/value heads
        needs_equal_heads = sizes is not None or self.attn_drop is not None
        if needs_equal_heads and self.num_kv_heads != self.num_heads:
            g = self.num_heads // self.num_kv_heads
            k = mx.repeat(k, g, axis=-2)
            v = mx.repeat(v, g, axis=-2)
        if sizes is not None:
            out = varlen(q, k, v, sizes, self.kernel_size, self.dilation, self.scale)
        elif self.attn_drop is not None:
            logits = qk(q, k, self.kernel_size, self.dilation, stride=self.stride,
                        is_causal=self.is_causal, scale=self.scale)
            attn = mx.softmax(logits.astype(mx.float32), axis=-1).astype(v.dtype)
            attn = self.attn_drop(attn)
            out = av(attn, v, self.kernel_size, self.dilation, stride=self.stride,
                     is_causal=self.is_causal)
        else:
            out = fused(q, k, v, self.kernel_size, stride=self.stride, dilation=self.dilation,
                        is_causal=self.is_causal, scale=self.scale)
        out = out.reshape(tuple(out.shape[:-2]) + (self.embed_dim,))
        out = self.proj(out)
        if self.proj_drop is not None:
            out = self.proj_drop(out)
        return out


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1D NA layer: ``[B, L, C]`` -> ``[B, ceil(L/stride), C]``."""

    _rank = 1

    def __call__(self, x, seq_lens=None):
        return self._attend(x, seq_lens)


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2D NA layer: ``[B, H, W, C]`` -> ``[B, ceil(H/sh), ceil(W/sw), C]``."""

    _rank = 2

    def __call__(self, x, spatial_sizes=None):
        return self._attend(x, spatial_sizes)


class NeighborhoodAttention3D(_NeighborhoodAttention):
    """3D NA layer: ``[B, D, H, W, C]`` -> strided ``[B, ·, ·, ·, C]``."""

    _rank = 3

    def __call__(self, x, spatial_sizes=None):
        return self._attend(x, spatial_sizes)


__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D"]
