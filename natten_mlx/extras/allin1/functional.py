"""Heads-first NATTEN-0.14-style ops for All-In-One's DinatLayer1d/2d.

    natten1dqkrpb(query, key, rpb, kernel_size, dilation)  q/k [B, H, L, D] -> [B, H, L, K]
    natten1dav(attn, value, kernel_size, dilation)         -> [B, H, L, D]
    natten2dqkrpb(query, key, rpb, kernel_size, dilation)  q/k [B, H, X, Y, D] -> [B, H, X, Y, K*K]
    natten2dav(attn, value, kernel_size, dilation)         -> [B, H, X, Y, D]

Logits are unscaled (callers pre-scale q), rpb may be None, results are float32
(float64 stays float64).  MLX arrays in, MLX arrays out, differentiable.
PyTorch tensors are accepted too and converted through numpy (result returned
as a tensor of the first input's dtype and device); no autograd crosses that
boundary.
"""

from __future__ import annotations

import mlx.core as mx

from ._ops import na1d_av_fused, na1d_qk_rpb, na2d_av_fused, na2d_qk_rpb

__all__ = ["natten1dqkrpb", "natten1dav", "natten2dqkrpb", "natten2dav"]


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _to_mx(x):
    if x is None or isinstance(x, mx.array):
        return x
    if _is_torch(x):
        import numpy as np

        return mx.array(np.asarray(x.detach().to("cpu").float().numpy()))
    return x


def _from_mx(result, ref):
    import numpy as np
    import torch  # only reached when `ref` is a torch tensor

    return torch.from_numpy(np.array(result)).to(device=ref.device, dtype=ref.dtype)


def _hf(x):  # heads-first -> heads-last
    return mx.moveaxis(x, 1, -2) if isinstance(x, mx.array) else x


def _hl(x):  # heads-last -> heads-first
    return mx.moveaxis(x, -2, 1)


def _run(fn, ref, *args):
    torch_in = _is_torch(ref)
    conv = [_to_mx(a) for a in args]
    out = fn(*conv)
    return _from_mx(out, ref) if torch_in else out


def _check_nd(x, nd, what):
    if not isinstance(x, mx.array) or x.ndim != nd:
        got = tuple(x.shape) if isinstance(x, mx.array) else type(x).__name__
        raise ValueError(f"{what}, got shape {got}")


def natten1dqkrpb(query, key, rpb, kernel_size, dilation=1):
    def f(q, k, r):
        _check_nd(q, 4, "query must be 4D [B, H, L, D]")
        _check_nd(k, 4, "key must be 4D [B, H, L, D]")
        return _hl(na1d_qk_rpb(_hf(q), _hf(k), r, kernel_size, dilation))

    return _run(f, query, query, key, rpb)


def natten1dav(attn, value, kernel_size, dilation=1):
    def f(a, v):
        _check_nd(a, 4, "attn must be 4D [B, H, L, K]")
        _check_nd(v, 4, "value must be 4D [B, H, L, D]")
        return _hl(na1d_av_fused(_hf(a), _hf(v), kernel_size, dilation))

    return _run(f, attn, attn, value)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation=1):
    def f(q, k, r):
        _check_nd(q, 5, "query must be 5D [B, H, X, Y, D]")
        _check_nd(k, 5, "key must be 5D [B, H, X, Y, D]")
        return _hl(na2d_qk_rpb(_hf(q), _hf(k), r, kernel_size, dilation))

    return _run(f, query, query, key, rpb)


def natten2dav(attn, value, kernel_size, dilation=1):
    def f(a, v):
        _check_nd(a, 5, "attn must be 5D [B, H, X, Y, K*K]")
        _check_nd(v, 5, "value must be 5D [B, H, X, Y, D]")
        return _hl(na2d_av_fused(_hf(a), _hf(v), kernel_size, dilation))

    return _run(f, attn, attn, value)
