"""NATTEN >= 0.20 compatibility (heads-last, upstream semantics).

    na{1,2,3}d(query, key, value, kernel_size, stride=1, dilation=1,
               is_causal=False, scale=None, additional_keys=None,
               additional_values=None, attention_kwargs=None, backend=None,
               <tile / schedule knobs>, torch_compile=False, return_lse=False)

`stride` is upstream's GNA stride: queries in a stride group share the window
of the group's leader and the output keeps the query's shape
([B, *X, H, D]).  This is *not* natten-mlx's subsampling stride (the top-level
natten_mlx.na*d keep that meaning).  Validation follows upstream 0.20:
kernel_size >= 2, stride >= 1, dilation >= 1, kernel*dilation <= input and
stride <= kernel along every axis.  GQA/MQA (H % H_kv == 0) is native.
Performance knobs (backend, tile shapes, schedules, torch_compile, ...) are
accepted and ignored: natten_mlx picks its own tier.

Also: attention() (plain attention with LSE), merge_attentions(), split ops
na{1,2,3}d_qk / na{1,2,3}d_av with the same GNA stride (a natten_mlx addition;
upstream dropped unfused ops in 0.20) and NeighborhoodAttention{1,2,3}D
(embed_dim, num_heads, kernel_size, stride=1, dilation=1, is_causal=False,
qkv_bias=True, qk_scale=None, proj_drop=0.0; keyword-only extras num_kv_heads,
attn_drop, and `dim` for the 0.20.0 spelling).
"""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn

from ..functional import _resolve_scale
from . import _common as C
from .v015 import has_cuda, has_fna, has_mlx, has_mps  # noqa: F401  (same answers as 0.15)

__all__ = [
    "na1d", "na2d", "na3d",
    "na1d_qk", "na2d_qk", "na3d_qk", "na1d_av", "na2d_av", "na3d_av",
    "attention", "merge_attentions",
    "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
    "has_cuda", "has_mps", "has_mlx", "has_fna",
]


# ---------------------------------------------------------------- argument checks (upstream 0.20)


def _int_args(value, rank, name, minimum):
    if isinstance(value, (tuple, list)):
        vals = tuple(value)
        ok = len(vals) == rank
    else:
        vals = (value,) * rank
        ok = True
    ok = ok and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum for v in vals
    )
    if not ok:
        raise ValueError(
            f"Invalid value for `{name}`: expected an int or a tuple of {rank} ints, "
            f"each >= {minimum}; got {value!r}"
        )
    return tuple(int(v) for v in vals)


def normalize_args(rank, kernel_size, stride, dilation, is_causal):
    kernel = _int_args(kernel_size, rank, "kernel_size", 2)
    stride = _int_args(1 if stride is None else stride, rank, "stride", 1)
    dil = _int_args(1 if dilation is None else dilation, rank, "dilation", 1)
    if is_causal is None:
        is_causal = False
    if isinstance(is_causal, (tuple, list)):
        if len(is_causal) != rank:
            raise ValueError(
                f"Invalid value for `is_causal`: expected a bool or a tuple of {rank} bools; "
                f"got {is_causal!r}"
            )
        causal = tuple(bool(c) for c in is_causal)
    else:
        causal = (bool(is_causal),) * rank
    return kernel, stride, dil, causal


def check_against_input(extent, kernel, stride, dil):
    if any(k * d > x for x, k, d in zip(extent, kernel, dil)):
        raise ValueError(
            f"kernel_size * dilation must not exceed the token layout on any axis; got "
            f"input={tuple(extent)}, kernel_size={kernel}, dilation={dil}."
        )
    if any(s > k for k, s in zip(kernel, stride)):
        raise ValueError(
            f"stride must not exceed kernel_size on any axis; got kernel_size={kernel}, "
            f"stride={stride}."
        )


# ---------------------------------------------------------------- fused NA


def _na(rank, name, query, key, value, kernel_size, stride, dilation, is_causal, scale,
        additional_keys, additional_values, return_lse):
    C.check_qkv_heads_last(name, rank, query, key, value, allow_dv=True)
    C.check_extra_kv(query, key, additional_keys, additional_values, value=value)
    kernel, st, dil, causal = normalize_args(rank, kernel_size, stride, dilation, is_causal)
    check_against_input(tuple(query.shape[1 : 1 + rank]), kernel, st, dil)
    p = C.make_params(rank, kernel, dil, causal, _resolve_scale(scale, query.shape[-1]),
                      gna_stride=st)
    out, lse = C.fused(query, key, value, p, None, additional_keys, additional_values)
    return (out, lse) if return_lse else out


_DOC = """{n}-D neighborhood attention, upstream NATTEN >= 0.20 semantics.

query [B, {axes}, H, D], key [B, {axes}, H_kv, D], value [B, {axes}, H_kv, D_v] (D_v may
differ from D, as upstream 0.20.1+); returns [B, {axes}, H, D_v]
(and the float32 natural-log LSE [B, {axes}, H] when return_lse=True).
"""


def na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, attention_kwargs=None, backend=None,
         q_tile_shape=None, kv_tile_shape=None, backward_q_tile_shape=None,
         backward_kv_tile_shape=None, backward_kv_splits=None, backward_use_pt_reduction=False,
         run_persistent_kernel=True, kernel_schedule=None, torch_compile=False,
         try_fuse_additional_kv=False, return_lse=False):
    return _na(1, "na1d", query, key, value, kernel_size, stride, dilation, is_causal, scale,
               additional_keys, additional_values, return_lse)


def na2d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, attention_kwargs=None, backend=None,
         q_tile_shape=None, kv_tile_shape=None, backward_q_tile_shape=None,
         backward_kv_tile_shape=None, backward_kv_splits=None, backward_use_pt_reduction=False,
         run_persistent_kernel=True, kernel_schedule=None, torch_compile=False,
         try_fuse_additional_kv=False, return_lse=False):
    return _na(2, "na2d", query, key, value, kernel_size, stride, dilation, is_causal, scale,
               additional_keys, additional_values, return_lse)


def na3d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, attention_kwargs=None, backend=None,
         q_tile_shape=None, kv_tile_shape=None, backward_q_tile_shape=None,
         backward_kv_tile_shape=None, backward_kv_splits=None, backward_use_pt_reduction=False,
         run_persistent_kernel=True, kernel_schedule=None, torch_compile=False,
         try_fuse_additional_kv=False, return_lse=False):
    return _na(3, "na3d", query, key, value, kernel_size, stride, dilation, is_causal, scale,
               additional_keys, additional_values, return_lse)


na1d.__doc__ = _DOC.format(n=1, axes="L")
na2d.__doc__ = _DOC.format(n=2, axes="X, Y")
na3d.__doc__ = _DOC.format(n=3, axes="Z, X, Y")


# ---------------------------------------------------------------- split ops (GNA stride)


def _qk(rank, name, query, key, kernel_size, dilation, stride, is_causal, scale):
    C.check_qkv_heads_last(name, rank, query, key, key)
    if query.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"{name}: query and key must have the same number of heads, got "
            f"{query.shape[-2]} and {key.shape[-2]}."
        )
    kernel, st, dil, causal = normalize_args(rank, kernel_size, stride, dilation, is_causal)
    check_against_input(tuple(query.shape[1 : 1 + rank]), kernel, st, dil)
    p = C.make_params(rank, kernel, dil, causal, _resolve_scale(scale, query.shape[-1]),
                      gna_stride=st)
    return C._ops().na_qk(query, key, p)


def _av(rank, name, attn, value, kernel_size, dilation, stride, is_causal):
    nd = rank + 3
    if not isinstance(attn, mx.array) or not isinstance(value, mx.array) or \
            attn.ndim != nd or value.ndim != nd:
        raise ValueError(f"attn and value must be {nd}D for {name}")
    if attn.shape[0] != value.shape[0] or attn.shape[-2] != value.shape[-2]:
        raise ValueError(
            "attn and value must match batch and heads dimensions; got "
            f"{tuple(attn.shape)} and {tuple(value.shape)}"
        )
    kernel, st, dil, causal = normalize_args(rank, kernel_size, stride, dilation, is_causal)
    extent = tuple(value.shape[1 : 1 + rank])
    check_against_input(extent, kernel, st, dil)
    if tuple(attn.shape[1 : 1 + rank]) != extent:
        raise ValueError(
            f"attn spatial dimensions must match value's; got {tuple(attn.shape[1:1 + rank])} "
            f"vs {extent}"
        )
    if attn.shape[-1] != math.prod(kernel):
        raise ValueError(
            f"attn neighborhood dimension must equal the kernel volume; got {attn.shape[-1]} "
            f"vs {math.prod(kernel)}"
        )
    p = C.make_params(rank, kernel, dil, causal, 1.0, gna_stride=st)
    return C._ops().na_av(attn, value, p)


def na1d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None):
    """Scaled logits [B, L, H, K] (default scale D**-0.5), GNA stride; masked slots -inf."""
    return _qk(1, "na1d_qk", query, key, kernel_size, dilation, stride, is_causal, scale)


def na2d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None):
    return _qk(2, "na2d_qk", query, key, kernel_size, dilation, stride, is_causal, scale)


def na3d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None):
    return _qk(3, "na3d_qk", query, key, kernel_size, dilation, stride, is_causal, scale)


def na1d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False):
    return _av(1, "na1d_av", attn, value, kernel_size, dilation, stride, is_causal)


def na2d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False):
    return _av(2, "na2d_av", attn, value, kernel_size, dilation, stride, is_causal)


def na3d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False):
    return _av(3, "na3d_av", attn, value, kernel_size, dilation, stride, is_causal)


# ---------------------------------------------------------------- attention / merge


def attention(query, key, value, is_causal=False, scale=None, seqlens_Q=None, seqlens_KV=None,
              cumulative_seqlen_Q=None, cumulative_seqlen_KV=None, max_seqlen_Q=None,
              max_seqlen_KV=None, backend=None, q_tile_size=None, kv_tile_size=None,
              backward_q_tile_size=None, backward_kv_tile_size=None, backward_kv_splits=None,
              backward_use_pt_reduction=False, run_persistent_kernel=True,
              kernel_schedule=None, torch_compile=False, return_lse=False):
    """Plain attention, q [B, S_q, H, D], k/v [B, S_kv, H_kv, D]; causal is top-left."""
    if any(x is not None for x in (seqlens_Q, seqlens_KV, cumulative_seqlen_Q,
                                   cumulative_seqlen_KV)) or max_seqlen_Q or max_seqlen_KV:
        raise NotImplementedError(
            "natten_mlx.compat.v020.attention: variable-length attention is not supported; "
            "use natten_mlx.na1d_varlen for neighborhood attention over padded batches."
        )
    for t in (query, key, value):
        if not isinstance(t, mx.array) or t.ndim != 4:
            raise ValueError("attention expects query/key/value with shape [B, S, H, D].")
    if query.shape[0] != key.shape[0] or key.shape[:3] != value.shape[:3]:
        raise ValueError(
            f"attention: batch, sequence and heads of key/value must agree; got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}."
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"Head dim must match: Q has {query.shape[-1]}, K has {key.shape[-1]}."
        )
    hq, hk = query.shape[2], key.shape[2]
    if hq % hk != 0:
        raise ValueError(f"heads_q ({hq}) must be divisible by heads_kv ({hk}) for GQA.")
    if hq != hk:
        key = mx.repeat(key, hq // hk, axis=2)
        value = mx.repeat(value, hq // hk, axis=2)
    s = _resolve_scale(scale, query.shape[-1])
    qf = query.astype(mx.float32)
    logits = mx.einsum("bqhd,bkhd->bhqk", qf, key.astype(mx.float32)) * s
    if is_causal:
        sq, sk = query.shape[1], key.shape[1]
        keep = mx.arange(sk)[None, :] <= mx.arange(sq)[:, None]
        logits = mx.where(keep, logits, -mx.inf)
    lse = mx.logsumexp(logits, axis=-1)  # [B, H, S_q]
    probs = mx.exp(logits - lse[..., None])
    out = mx.einsum("bhqk,bkhd->bqhd", probs, value.astype(mx.float32)).astype(query.dtype)
    lse = mx.moveaxis(lse, 1, 2)
    return (out, lse) if return_lse else out


def merge_attentions(outputs: Sequence[mx.array], lse_tensors: Sequence[mx.array],
                     torch_compile: bool = True, use_autograd_fix: bool = True):
    """Merge partial attentions over disjoint key sets: returns (output, lse).

    outputs [B, *X, H, D], lse_tensors [B, *X, H] (natural log).  Gradients flow
    to every input through MLX autodiff (use_autograd_fix is accepted, unused).
    """
    outputs: List[mx.array] = list(outputs)
    lses: List[mx.array] = list(lse_tensors)
    if len(outputs) < 2:
        raise ValueError("merge_attentions expects at least two outputs.")
    if len(outputs) != len(lses):
        raise ValueError("Number of outputs and LSE tensors must match.")
    for i, (o, l) in enumerate(zip(outputs, lses)):
        if tuple(o.shape) != tuple(outputs[0].shape):
            raise ValueError(
                f"Output {i} shape {tuple(o.shape)} does not match output 0 shape "
                f"{tuple(outputs[0].shape)}."
            )
        if tuple(l.shape) != tuple(outputs[0].shape[:-1]):
            raise ValueError(
                f"LSE {i} shape {tuple(l.shape)} does not match expected "
                f"{tuple(outputs[0].shape[:-1])}."
            )
    L = mx.stack([l.astype(mx.float32) for l in lses], axis=0)
    lse = mx.logsumexp(L, axis=0)
    w = mx.exp(L - lse[None])[..., None]
    O = mx.stack([o.astype(mx.float32) for o in outputs], axis=0)
    out = mx.sum(w * O, axis=0).astype(outputs[0].dtype)
    return out, lse


# ---------------------------------------------------------------- modules


class _NAModule(nn.Module):
    _rank = 1

    def __init__(self, embed_dim=None, num_heads=None, kernel_size=None, stride=1, dilation=1,
                 is_causal=False, qkv_bias=True, qk_scale=None, proj_drop=0.0, *,
                 num_kv_heads=None, attn_drop=0.0, dim=None):
        super().__init__()
        name = type(self).__name__
        if embed_dim is None:
            embed_dim = dim
        elif dim is not None and dim != embed_dim:
            raise ValueError(f"{name}: got both embed_dim={embed_dim} and dim={dim}")
        if embed_dim is None or num_heads is None or kernel_size is None:
            raise TypeError(f"{name}() needs embed_dim, num_heads and kernel_size")
        if embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        if num_heads <= 0:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if embed_dim % num_heads != 0:
            raise ValueError("embed_dim must be divisible by num_heads")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})"
            )
        rank = self._rank
        k, s, d, c = normalize_args(rank, kernel_size, stride, dilation, is_causal)
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.num_kv_heads = int(num_kv_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.kernel_size, self.stride, self.dilation, self.is_causal = k, s, d, c
        self.scale = float(qk_scale) if qk_scale is not None else self.head_dim**-0.5
        self.attn_drop_rate = float(attn_drop)
        self.proj_drop_rate = float(proj_drop)
        if self.num_kv_heads == self.num_heads:
            self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=qkv_bias)
            self.kv_proj = nn.Linear(
                self.embed_dim, 2 * self.num_kv_heads * self.head_dim, bias=qkv_bias
            )
        self.attn_drop = nn.Dropout(self.attn_drop_rate) if self.attn_drop_rate > 0 else None
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.proj_drop = nn.Dropout(self.proj_drop_rate) if self.proj_drop_rate > 0 else None

    def __call__(self, x):
        rank = self._rank
        axes = {1: "L", 2: "H, W", 3: "D, H, W"}[rank]
        if not isinstance(x, mx.array) or x.ndim != rank + 2:
            got = tuple(x.shape) if isinstance(x, mx.array) else type(x).__name__
            raise ValueError(f"Expected input shape [B, {axes}, C], got {got}")
        if x.shape[-1] != self.embed_dim:
            raise ValueError(
                f"Input channel dim ({x.shape[-1]}) must match embed_dim ({self.embed_dim})"
            )
        B = x.shape[0]
        extent = tuple(x.shape[1 : 1 + rank])
        check_against_input(extent, self.kernel_size, self.stride, self.dilation)
        H, Hk, hd = self.num_heads, self.num_kv_heads, self.head_dim
        if H == Hk:
            qkv = self.qkv(x).reshape((B,) + extent + (3, H, hd))
            q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        else:
            q = self.q_proj(x).reshape((B,) + extent + (H, hd))
            kv = self.kv_proj(x).reshape((B,) + extent + (2, Hk, hd))
            k, v = kv[..., 0, :, :], kv[..., 1, :, :]
        p = C.make_params(rank, self.kernel_size, self.dilation, self.is_causal, self.scale,
                          gna_stride=self.stride)
        if self.attn_drop is not None and self.training:
            if H != Hk:  # the split ops take equal heads: expand K/V (gradients fold back)
                k = mx.repeat(k, H // Hk, axis=-2)
                v = mx.repeat(v, H // Hk, axis=-2)
            ops = C._ops()
            attn = self.attn_drop(mx.softmax(ops.na_qk(q, k, p), axis=-1))
            out = ops.na_av(attn, v, p)
        else:
            out, _ = C.fused(q, k, v, p)
        out = self.proj(out.reshape((B,) + extent + (self.embed_dim,)))
        if self.proj_drop is not None:
            out = self.proj_drop(out)
        return out


    def _extra_repr(self):
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"num_kv_heads={self.num_kv_heads}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, is_causal={self.is_causal}"
        )


class NeighborhoodAttention1D(_NAModule):
    """Input/output [B, L, embed_dim]; GNA stride (output keeps L)."""

    _rank = 1


class NeighborhoodAttention2D(_NAModule):
    """Input/output [B, X, Y, embed_dim]; GNA stride."""

    _rank = 2


class NeighborhoodAttention3D(_NAModule):
    """Input/output [B, Z, X, Y, embed_dim]; GNA stride."""

    _rank = 3
