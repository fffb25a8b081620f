"""DiNAT QK+RPB / AV for All-In-One (spatial-first layout).

    na1d_qk_rpb(query, key, rpb, kernel_size, dilation=1, *, scale=None) -> [B, L, H, K]
    na1d_av_fused(attn, value, kernel_size, dilation=1)                 -> [B, L, H, D]
    na2d_qk_rpb(query, key, rpb, kernel_size, dilation=1, *, scale=None) -> [B, X, Y, H, K*K]
    na2d_av_fused(attn, value, kernel_size, dilation=1)                 -> [B, X, Y, H, D]

Semantics (natten-mlx 0.3 / NATTEN 0.14 unfused): non-causal shifted windows,
stride 1, one kernel size and one dilation for every axis.
logits = (scale * q) . k + rpb[h, (key - i)/d + K - 1 (, ...)]; scale=None
means *no* scaling (All-In-One pre-scales q); rpb=None means zero bias.
Any kernel size 1 <= K with K*d <= extent (odd K as in DiNAT; even K follows
the core's upstream rule).  Results are float32 (float64 inputs stay float64,
for finite-difference checks).  Differentiable with respect to q, k, rpb,
attn and v on every tier.
"""

from __future__ import annotations

import numbers

import mlx.core as mx

from ..._core.params import NAParams


def _ops():
    from ..._core import ops

    return ops


def _out_dtype(*arrays):
    return mx.float64 if any(a.dtype == mx.float64 for a in arrays) else mx.float32


def _kernel_dilation(kernel_size, dilation, extent, where):
    for name, v in (("kernel_size", kernel_size), ("dilation", dilation)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            if name == "kernel_size":
                raise ValueError(f"Unsupported kernel size: {kernel_size!r}. Use a positive int.")
            raise ValueError(f"dilation must be a positive int, got {dilation!r}")
    K, d = int(kernel_size), int(dilation)
    if K < 1:
        raise ValueError(f"Unsupported kernel size: {K}. Use a positive int.")
    if d < 1:
        raise ValueError(f"dilation must be a positive int, got {d}")
    for n in extent:
        if K > n:
            raise ValueError(f"{where}: kernel_size={K} must be <= input spatial size {n}")
        if K * d > n:
            raise ValueError(
                f"{where}: dilation * kernel_size = {K * d} exceeds input size {n}"
            )
    return K, d


def _params(rank, K, d, scale):
    return NAParams(
        rank=rank,
        kernel=(K,) * rank,
        dilation=(d,) * rank,
        out_stride=(1,) * rank,
        gna_stride=(1,) * rank,
        causal=(False,) * rank,
        scale=float(scale),
    )


def _qk(rank, where, query, key, rpb, kernel_size, dilation, scale):
    shape_txt = "4D [B, L, H, D]" if rank == 1 else "5D [B, Hh, Hw, H, D]"
    for name, t in (("query", query), ("key", key)):
        if not isinstance(t, mx.array) or t.ndim != rank + 3:
            got = tuple(t.shape) if isinstance(t, mx.array) else type(t).__name__
            raise ValueError(f"{name} must be {shape_txt}, got shape {got}")
    if tuple(query.shape) != tuple(key.shape):
        raise ValueError(
            f"query and key must have the same shape, got {tuple(query.shape)} and "
            f"{tuple(key.shape)}"
        )
    K, d = _kernel_dilation(kernel_size, dilation, query.shape[1 : 1 + rank], where)
    heads = query.shape[-2]
    if rpb is not None:
        want = (heads,) + (2 * K - 1,) * rank
        if not isinstance(rpb, mx.array) or tuple(rpb.shape) != want:
            got = tuple(rpb.shape) if isinstance(rpb, mx.array) else type(rpb).__name__
            raise ValueError(f"rpb must have shape {want} for kernel_size={K}, got {got}")
    dt = _out_dtype(query, key, *([rpb] if rpb is not None else []))
    q, k = query.astype(dt), key.astype(dt)
    r = rpb.astype(dt) if rpb is not None else None
    p = _params(rank, K, d, 1.0 if scale is None else scale)
    return _ops().na_qk(q, k, p, rpb=r).astype(dt)


def _av(rank, where, attn, value, kernel_size, dilation):
    nd = rank + 3
    if (not isinstance(attn, mx.array) or not isinstance(value, mx.array)
            or attn.ndim != nd or value.ndim != nd):
        raise ValueError(f"attn and value must be {nd}D for {where}")
    if tuple(attn.shape[:-1]) != tuple(value.shape[:-1]):
        raise ValueError(
            f"attn and value must match in batch, spatial and heads dims; got "
            f"{tuple(attn.shape)} and {tuple(value.shape)}"
        )
    K, d = _kernel_dilation(kernel_size, dilation, value.shape[1 : 1 + rank], where)
    if attn.shape[-1] != K**rank:
        raise ValueError(
            f"attn has {attn.shape[-1]} neighbour slots, expected kernel_size**{rank} = {K**rank}"
        )
    dt = _out_dtype(attn, value)
    p = _params(rank, K, d, 1.0)
    return _ops().na_av(attn.astype(dt), value.astype(dt), p).astype(dt)


def na1d_qk_rpb(query, key, rpb, kernel_size, dilation=1, *, scale=None):
    """query/key [B, L, H, D], rpb [H, 2K-1] or None -> logits [B, L, H, K] (float32)."""
    return _qk(1, "na1d_qk_rpb", query, key, rpb, kernel_size, dilation, scale)


def na1d_av_fused(attn, value, kernel_size, dilation=1):
    """attn [B, L, H, K], value [B, L, H, D] -> [B, L, H, D] (float32)."""
    return _av(1, "na1d_av_fused", attn, value, kernel_size, dilation)


def na2d_qk_rpb(query, key, rpb, kernel_size, dilation=1, *, scale=None):
    """query/key [B, X, Y, H, D], rpb [H, 2K-1, 2K-1] or None -> [B, X, Y, H, K*K] (float32)."""
    return _qk(2, "na2d_qk_rpb", query, key, rpb, kernel_size, dilation, scale)


def na2d_av_fused(attn, value, kernel_size, dilation=1):
    """attn [B, X, Y, H, K*K], value [B, X, Y, H, D] -> [B, X, Y, H, D] (float32)."""
    return _av(2, "na2d_av_fused", attn, value, kernel_size, dilation)
