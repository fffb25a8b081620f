"""Public functional API (natten-mlx 0.3): fused, split and varlen NA.

Layouts are heads-last: q/k/v ``[B, *spatial, heads, dim]``.  Validation
order and messages follow the natten-mlx contract (spec §4, §8); computation
goes through ``natten_mlx._core.ops`` (tier chain with per-op fallback).

Where natten-mlx is wrong we do what its documented semantics say: even and
non-square kernels use the clean shifted-window rule on every tier, and
additional KV tokens work with ``stride > 1`` (the strided queries attend them).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import mlx.core as mx

from natten_mlx._core import ops
from natten_mlx._core.params import NAParams
from natten_mlx.utils.params import (
    check_dilation_kernel_vs_input,
    check_kernel_size_vs_input,
    check_stride_vs_kernel,
    normalize_kernel_size,
    normalize_tuple_param,
)

_QKV_LAYOUT = {1: "[B, L, H, D]", 2: "[B, H, W, heads, dim]", 3: "[B, D, H, W, heads, dim]"}
_VARLEN_LAYOUT = {1: "[B, L, H, D]", 2: "[B, H, W, heads, D]", 3: "[B, D, H, W, heads, dim]"}

IntOrTuple = Union[int, Tuple[int, ...]]
BoolOrTuple = Union[bool, Tuple[bool, ...]]


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _validate_qkv(rank: int, query, key, value):
    nd = rank + 3
    if query.ndim != nd or key.ndim != nd or value.ndim != nd:
        raise ValueError(f"na{rank}d expects query/key/value with shape {_QKV_LAYOUT[rank]}.")
    sq = tuple(query.shape[1:1 + rank])
    sk = tuple(key.shape[1:1 + rank])
    sv = tuple(value.shape[1:1 + rank])
    if not (sq == sk == sv):
        raise ValueError(f"Spatial dimensions must match: Q={sq}, K={sk}, V={sv}.")
    if not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError("Batch dimensions must match.")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"Head dim must match: Q has {query.shape[-1]}, K has {key.shape[-1]}.")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError("K and V must have same number of heads.")
    if key.shape[-1] != value.shape[-1]:
        raise ValueError(f"Head dim must match: K has {key.shape[-1]}, V has {value.shape[-1]}.")
    hq, hkv = query.shape[-2], key.shape[-2]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"heads_q ({hq}) must be divisible by heads_kv ({hkv}) for GQA.")
    return sq


def _validate_additional(query, key, additional_keys, additional_values):
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(
            "additional_keys and additional_values must both be provided or both None.")
    if additional_keys is None:
        return None, None
    ak, av = additional_keys, additional_values
    if ak.ndim != 4 or av.ndim != 4:
        raise ValueError(
            "additional_keys/additional_values must be 4D: [B, N_extra, heads_kv, dim].")
    if ak.shape[0] != query.shape[0]:
        raise ValueError("additional_keys batch must match query batch.")
    if av.shape[0] != query.shape[0]:
        raise ValueError("additional_values batch must match query batch.")
    if ak.shape[-1] != query.shape[-1]:
        raise ValueError("additional_keys head dim must match query head dim.")
    if av.shape[-1] != query.shape[-1]:
        raise ValueError("additional_values head dim must match query head dim.")
    if ak.shape[2] != av.shape[2]:
        raise ValueError("additional_keys and additional_values must have same number of heads.")
    if ak.shape[1] != av.shape[1]:
        raise ValueError("additional_keys and additional_values must have same N_extra.")
    hq, hkv, hx = query.shape[-2], key.shape[-2], ak.shape[2]
    if hx != hkv:
        # Extra tokens with their own head count: bring them to the kv heads.
        if hx == 0 or hkv % hx != 0:
            raise ValueError(
                f"heads_q ({hq}) must be divisible by heads_kv ({hx}) for GQA "
                f"(additional_keys heads must divide the key/value heads {hkv}).")
        ak = mx.repeat(ak, hkv // hx, axis=2)
        av = mx.repeat(av, hkv // hx, axis=2)
    return ak, av


def _normalize_args(rank, spatial, kernel_size, stride, dilation, is_causal):
    ks = normalize_kernel_size(kernel_size, rank)
    st = normalize_tuple_param(stride, rank, "stride")
    dil = normalize_tuple_param(dilation, rank, "dilation")
    caus = normalize_tuple_param(is_causal, rank, "is_causal")
    check_kernel_size_vs_input(ks, spatial)
    check_stride_vs_kernel(st, ks)
    check_dilation_kernel_vs_input(dil, ks, spatial)
    return ks, st, dil, tuple(bool(c) for c in caus)


def _resolve_scale(scale, head_dim):
    return float(head_dim) ** -0.5 if scale is None else float(scale)


def _params(rank, ks, st, dil, caus, scale) -> NAParams:
    return NAParams(rank=rank, kernel=tuple(int(k) for k in ks),
                    dilation=tuple(int(d) for d in dil), out_stride=tuple(int(s) for s in st),
                    gna_stride=(1,) * rank, causal=tuple(bool(c) for c in caus), scale=scale)


def _lse_dtype(q_dtype, merged: bool):
    if q_dtype == mx.float64:
        return mx.float64
    return mx.float32 if merged else q_dtype


# --------------------------------------------------------------------------
# FMHA fast path (spec §3.10)
# --------------------------------------------------------------------------


def _is_full_attention(spatial, ks, st, caus) -> bool:
    return all(k >= L for k, L in zip(ks, spatial)) and all(s == 1 for s in st) \
        and not any(caus)


def _fmha(query, key, value, scale, ak, av, return_lse):
    B = query.shape[0]
    H, D = query.shape[-2], query.shape[-1]
    Hkv = key.shape[-2]
    spatial = tuple(query.shape[1:-2])
    qf = query.reshape(B, -1, H, D).transpose(0, 2, 1, 3)
    kf = key.reshape(B, -1, Hkv, D).transpose(0, 2, 1, 3)
    vf = value.reshape(B, -1, Hkv, value.shape[-1]).transpose(0, 2, 1, 3)
    if ak is not None:
        kf = mx.concatenate([kf, ak.transpose(0, 2, 1, 3).astype(kf.dtype)], axis=2)
        vf = mx.concatenate([vf, av.transpose(0, 2, 1, 3).astype(vf.dtype)], axis=2)
    out = mx.fast.scaled_dot_product_attention(qf, kf, vf, scale=scale)
    out = out.transpose(0, 2, 1, 3).reshape((B,) + spatial + (H, value.shape[-1]))
    out = out.astype(query.dtype)
    if not return_lse:
        return out
    acc = mx.float64 if query.dtype == mx.float64 else mx.float32
    G = H // Hkv
    kr = mx.repeat(kf, G, axis=1) if G > 1 else kf
    logits = (qf.astype(acc) @ kr.astype(acc).transpose(0, 1, 3, 2)) * scale
    lse = mx.logsumexp(logits, axis=-1).transpose(0, 2, 1).reshape((B,) + spatial + (H,))
    return out, lse.astype(_lse_dtype(query.dtype, ak is not None))


# --------------------------------------------------------------------------
# Checked-call cache
# --------------------------------------------------------------------------
#
# Validation, normalisation and NAParams depend only on the shapes and the
# scalar arguments, yet cost ~20 us of Python per call (a small 1-D problem
# runs in less on the C core).  A call whose arguments are plain ints/bools
# (per axis) and an int/float/None scale is keyed on exactly those; a key seen
# before passed every check then, so it would pass them now, and its result is
# reused.  Failing calls are never stored: they re-run the checks and raise the
# same errors in the same order.  Anything else (floats as sizes, numpy or mx
# scalars) takes the checks every time: 7.0 == 7 must not share 7's entry.

_CHECKED: dict = {}
_CHECKED_MAX = 4096


def _signature(kind, tensors, scale, *per_axis):
    """Cache key of a call, or None when an argument is not plain (see above).  An int
    and a bool may share a key (True == 1): they normalise to the same parameters."""
    if scale is not None and type(scale) is not float and type(scale) is not int:
        return None
    key = [kind, scale]
    for a in per_axis:
        t = type(a)
        if t is tuple or t is list:
            for e in a:
                if type(e) is not int and type(e) is not bool:
                    return None
            key.append(tuple(a))
        elif t is int or t is bool:
            key.append(a)
        else:
            return None
    try:
        for t in tensors:
            key.append(t.shape)
    except AttributeError:  # not arrays: the checks say what is wrong
        return None
    return tuple(key)


def _remember(sig, value):
    if sig is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[sig] = value
    return value


# --------------------------------------------------------------------------
# Fused
# --------------------------------------------------------------------------


def _na(rank, query, key, value, kernel_size, stride, dilation, is_causal, scale, return_lse,
        additional_keys, additional_values):
    sig = None
    if additional_keys is None and additional_values is None:
        sig = _signature(rank, (query, key, value), scale, kernel_size, stride, dilation,
                         is_causal)
    hit = _CHECKED.get(sig) if sig is not None else None
    ak = av = None
    if hit is None:
        spatial = _validate_qkv(rank, query, key, value)
        ak, av = _validate_additional(query, key, additional_keys, additional_values)
        ks, st, dil, caus = _normalize_args(rank, spatial, kernel_size, stride, dilation,
                                            is_causal)
        sc = _resolve_scale(scale, query.shape[-1])
        full = _is_full_attention(spatial, ks, st, caus)
        hit = _remember(sig, (sc if full else _params(rank, ks, st, dil, caus, sc), full))
    p, full = hit  # p is the resolved scale when full
    if full:
        return _fmha(query, key, value, p, ak, av, return_lse)
    if not return_lse:
        return ops.na_out(query, key, value, p, extra_k=ak, extra_v=av)
    out, lse = ops.na_fused(query, key, value, p, extra_k=ak, extra_v=av)
    return out, lse.astype(_lse_dtype(query.dtype, ak is not None))


def na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         return_lse=False, additional_keys=None, additional_values=None):
    """1D neighborhood attention.  q/k/v ``[B, L, H, D]`` -> ``[B, ceil(L/s), H, D]``."""
    return _na(1, query, key, value, kernel_size, stride, dilation, is_causal, scale,
               return_lse, additional_keys, additional_values)


def na2d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         return_lse=False, additional_keys=None, additional_values=None):
    """2D neighborhood attention.  q/k/v ``[B, H, W, heads, dim]``."""
    return _na(2, query, key, value, kernel_size, stride, dilation, is_causal, scale,
               return_lse, additional_keys, additional_values)


def na3d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         return_lse=False, additional_keys=None, additional_values=None):
    """3D neighborhood attention.  q/k/v ``[B, D, H, W, heads, dim]``."""
    return _na(3, query, key, value, kernel_size, stride, dilation, is_causal, scale,
               return_lse, additional_keys, additional_values)


# --------------------------------------------------------------------------
# Split QK / AV
# --------------------------------------------------------------------------


def _qk(rank, query, key, kernel_size, dilation, stride, is_causal, scale):
    sig = _signature(("qk", rank), (query, key), scale, kernel_size, dilation, stride, is_causal)
    p = _CHECKED.get(sig) if sig is not None else None
    if p is None:
        spatial = _validate_qkv(rank, query, key, key)
        ks, st, dil, caus = _normalize_args(rank, spatial, kernel_size, stride, dilation,
                                            is_causal)
        p = _remember(sig, _params(rank, ks, st, dil, caus, _resolve_scale(scale, query.shape[-1])))
    return ops.na_qk(query, key, p)


def na1d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None):
    """Scaled 1D logits ``[B, ceil(L/s), H, K]``; masked (causal) slots are -inf."""
    return _qk(1, query, key, kernel_size, dilation, stride, is_causal, scale)


def na2d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None):
    """Scaled 2D logits ``[B, Oh, Ow, heads, Kh*Kw]``."""
    return _qk(2, query, key, kernel_size, dilation, stride, is_causal, scale)


def na3d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None):
    """Scaled 3D logits ``[B, Od, Oh, Ow, heads, Kd*Kh*Kw]``."""
    return _qk(3, query, key, kernel_size, dilation, stride, is_causal, scale)


def _av(rank, attn, value, kernel_size, dilation, stride, is_causal):
    nd = rank + 3
    if attn.ndim != nd or value.ndim != nd:
        raise ValueError(f"attn and value must be {nd}D for na{rank}d_av")
    if attn.shape[0] != value.shape[0] or attn.shape[-2] != value.shape[-2]:
        raise ValueError("attn and value must match batch and heads dimensions; "
                         f"got {tuple(attn.shape)} and {tuple(value.shape)}")
    spatial = tuple(value.shape[1:1 + rank])
    ks, st, dil, caus = _normalize_args(rank, spatial, kernel_size, stride, dilation, is_causal)
    kk = math.prod(ks)
    if attn.shape[-1] != kk:
        if rank == 1:
            raise ValueError(
                f"attn kernel dimension ({attn.shape[-1]}) must match kernel_size ({ks[0]})")
        word = "area" if rank == 2 else "volume"
        raise ValueError(
            f"attn neighborhood dimension must equal kernel {word}; got {attn.shape[-1]} vs {kk}")
    expect = tuple(-(-L // s) for L, s in zip(spatial, st))
    got = tuple(attn.shape[1:1 + rank])
    if got != expect:
        if rank == 1:
            raise ValueError(
                f"attn length ({got[0]}) must match ceil(input_len/stride) ({expect[0]})")
        raise ValueError(
            f"attn spatial dimensions must match ceil(input/stride); got {got} vs {expect}")
    p = _params(rank, ks, st, dil, caus, 1.0)
    return ops.na_av(attn, value, p)


def na1d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False):
    """1D AV: attn ``[B, ceil(L/s), H, K]`` x value ``[B, L, H, D]``."""
    return _av(1, attn, value, kernel_size, dilation, stride, is_causal)


def na2d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False):
    """2D AV: attn ``[B, Oh, Ow, heads, Kh*Kw]`` x value ``[B, H, W, heads, dim]``."""
    return _av(2, attn, value, kernel_size, dilation, stride, is_causal)


def na3d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False):
    """3D AV: attn ``[B, Od, Oh, Ow, heads, K]`` x value ``[B, D, H, W, heads, dim]``."""
    return _av(3, attn, value, kernel_size, dilation, stride, is_causal)


# --------------------------------------------------------------------------
# Varlen
# --------------------------------------------------------------------------


def _as_int_array(x):
    if isinstance(x, mx.array):
        return x
    return mx.array(x)


def _varlen(rank, query, key, value, sizes, kernel_size, dilation, scale):
    nd = rank + 3
    if query.ndim != nd or key.ndim != nd or value.ndim != nd:
        raise ValueError(
            f"na{rank}d_varlen expects query/key/value with shape {_VARLEN_LAYOUT[rank]}.")
    if tuple(query.shape) != tuple(key.shape) or tuple(query.shape) != tuple(value.shape):
        raise ValueError("query, key, and value must have identical shapes.")
    B = query.shape[0]
    spatial = tuple(query.shape[1:1 + rank])
    ks = normalize_kernel_size(kernel_size, rank)
    dil = normalize_tuple_param(dilation, rank, "dilation")
    check_kernel_size_vs_input(ks, spatial)
    check_dilation_kernel_vs_input(dil, ks, spatial)
    sizes = _as_int_array(sizes)
    name = "seq_lens" if rank == 1 else "spatial_sizes"
    if rank == 1:
        if sizes.ndim != 1 or sizes.shape[0] != B:
            raise ValueError(
                f"seq_lens must be a 1-D array of length B={B}, got shape {tuple(sizes.shape)}.")
    else:
        if sizes.ndim != 2 or sizes.shape[0] != B or sizes.shape[1] != rank:
            raise ValueError(
                f"spatial_sizes must be a [B, {rank}] array, got shape {tuple(sizes.shape)}.")
    if sizes.dtype not in (mx.int32, mx.int64):
        raise ValueError(f"{name} must be int32 or int64, got {sizes.dtype}.")
    sizes2 = sizes.reshape(B, rank)
    mins = [int(x) for x in mx.min(sizes2, axis=0).tolist()]
    maxs = [int(x) for x in mx.max(sizes2, axis=0).tolist()]
    for a in range(rank):
        if rank == 1:
            if mins[0] < ks[0]:
                raise ValueError(f"All seq_lens must be >= kernel_size ({ks[0]}), "
                                 f"but min(seq_lens)={mins[0]}.")
            if maxs[0] > spatial[0]:
                raise ValueError(f"All seq_lens must be <= L_max ({spatial[0]}), "
                                 f"but max(seq_lens)={maxs[0]}.")
            if mins[0] < ks[0] * dil[0]:
                raise ValueError(f"All seq_lens must be >= dilation * kernel_size "
                                 f"({ks[0] * dil[0]}), but min(seq_lens)={mins[0]}.")
        else:
            if mins[a] < ks[a]:
                raise ValueError(f"All spatial_sizes[:,{a}] must be >= kernel_size[{a}] "
                                 f"({ks[a]}), but min={mins[a]}.")
            if maxs[a] > spatial[a]:
                raise ValueError(f"All spatial_sizes[:,{a}] must be <= max_spatial[{a}] "
                                 f"({spatial[a]}), but max={maxs[a]}.")
            if mins[a] < ks[a] * dil[a]:
                raise ValueError(f"All spatial_sizes[:,{a}] must be >= dilation[{a}] * "
                                 f"kernel_size[{a}] ({ks[a] * dil[a]}), but min={mins[a]}.")
    p = _params(rank, ks, (1,) * rank, dil, (False,) * rank,
                _resolve_scale(scale, query.shape[-1]))
    return ops.na_out(query, key, value, p, varlen=sizes2.astype(mx.int32))


def na1d_varlen(query, key, value, seq_lens, kernel_size, dilation=1, scale=None):
    """1D NA over the leading ``seq_lens[b]`` tokens of each sample; zeros elsewhere."""
    return _varlen(1, query, key, value, seq_lens, kernel_size, dilation, scale)


def na2d_varlen(query, key, value, spatial_sizes, kernel_size, dilation=1, scale=None):
    """2D NA over the leading ``spatial_sizes[b]`` block of each sample; zeros elsewhere."""
    return _varlen(2, query, key, value, spatial_sizes, kernel_size, dilation, scale)


def na3d_varlen(query, key, value, spatial_sizes, kernel_size, dilation=1, scale=None):
    """3D NA over the leading ``spatial_sizes[b]`` block of each sample; zeros elsewhere."""
    return _varlen(3, query, key, value, spatial_sizes, kernel_size, dilation, scale)


__all__ = [
    "na1d", "na2d", "na3d",
    "na1d_qk", "na2d_qk", "na3d_qk",
    "na1d_av", "na2d_av", "na3d_av",
    "na1d_varlen", "na2d_varlen", "na3d_varlen",
]
