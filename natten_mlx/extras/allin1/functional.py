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

__all__ = [
    "natten1dqkrpb", "natten1dav", "natten2dqkrpb", "natten2dav",
    "natten1dqkrpb_backward", "natten1dav_backward",
    "natten2dqkrpb_backward", "natten2dav_backward",
    "natten2d_qkv_fused", "get_d3rm_fused_status",
]


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


def _square(kernel_size, dilation):
    """2-D ops take one kernel size / dilation; square tuples are accepted (natten-mlx)."""
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != 2 or kernel_size[0] != kernel_size[1]:
            raise ValueError("Only square kernels supported")
        kernel_size = kernel_size[0]
    if isinstance(dilation, (tuple, list)):
        if len(dilation) != 2 or dilation[0] != dilation[1]:
            raise ValueError("Only uniform dilation supported")
        dilation = dilation[0]
    return kernel_size, dilation


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
    kernel_size, dilation = _square(kernel_size, dilation)

    def f(q, k, r):
        _check_nd(q, 5, "query must be 5D [B, H, X, Y, D]")
        _check_nd(k, 5, "key must be 5D [B, H, X, Y, D]")
        return _hl(na2d_qk_rpb(_hf(q), _hf(k), r, kernel_size, dilation))

    return _run(f, query, query, key, rpb)


def natten2dav(attn, value, kernel_size, dilation=1):
    kernel_size, dilation = _square(kernel_size, dilation)

    def f(a, v):
        _check_nd(a, 5, "attn must be 5D [B, H, X, Y, K*K]")
        _check_nd(v, 5, "value must be 5D [B, H, X, Y, D]")
        return _hl(na2d_av_fused(_hf(a), _hf(v), kernel_size, dilation))

    return _run(f, attn, attn, value)


# ---------------------------------------------------------------- natten-mlx's extra helpers
# Backward helpers (natten-mlx exposed its Metal backward kernels under these
# names); here they are the VJPs of the differentiable ops above.


def _vjp(fn, primals, cotangent):
    _, grads = mx.vjp(fn, primals, [cotangent])
    return grads


def _qkrpb_backward(forward, d_attn, query, key, rpb, kernel_size, dilation):
    d_attn, query, key, rpb = (_to_mx(x) for x in (d_attn, query, key, rpb))
    if rpb is None:
        dq, dk = _vjp(lambda q, k: forward(q, k, None, kernel_size, dilation),
                      [query, key], d_attn)
        return dq, dk, None
    return tuple(_vjp(lambda q, k, r: forward(q, k, r, kernel_size, dilation),
                      [query, key, rpb], d_attn))


def _av_backward(forward, d_out, attention_probs, value, kernel_size, dilation):
    d_out, attention_probs, value = (_to_mx(x) for x in (d_out, attention_probs, value))
    return tuple(_vjp(lambda a, v: forward(a, v, kernel_size, dilation),
                      [attention_probs, value], d_out))


def natten1dqkrpb_backward(d_attn, query, key, rpb, kernel_size, dilation=1):
    """-> (d_query, d_key, d_rpb or None) for natten1dqkrpb."""
    return _qkrpb_backward(natten1dqkrpb, d_attn, query, key, rpb, kernel_size, dilation)


def natten1dav_backward(d_out, attention_probs, value, kernel_size, dilation=1):
    """-> (d_attn, d_value) for natten1dav."""
    return _av_backward(natten1dav, d_out, attention_probs, value, kernel_size, dilation)


def natten2dqkrpb_backward(d_attn, query, key, rpb, kernel_size, dilation=1):
    """-> (d_query, d_key, d_rpb or None) for natten2dqkrpb."""
    return _qkrpb_backward(natten2dqkrpb, d_attn, query, key, rpb, kernel_size, dilation)


def natten2dav_backward(d_out, attention_probs, value, kernel_size, dilation=1):
    """-> (d_attn, d_value) for natten2dav."""
    return _av_backward(natten2dav, d_out, attention_probs, value, kernel_size, dilation)


def natten2d_qkv_fused(query, key, value, rpb, kernel_size, dilation=1):
    """softmax(q.k + rpb) . v over the 2-D neighbourhood, heads-first [B, H, X, Y, D].

    q is expected pre-scaled (as for natten2dqkrpb).  One fused op; float32 result.
    """
    kernel_size, dilation = _square(kernel_size, dilation)

    def f(q, k, v, r):
        from ._ops import _kernel_dilation, _ops, _out_dtype, _params

        for name, t in (("query", q), ("key", k), ("value", v)):
            _check_nd(t, 5, f"{name} must be 5D [B, H, X, Y, D]")
        if tuple(q.shape) != tuple(k.shape) or tuple(q.shape[:-1]) != tuple(v.shape[:-1]):
            raise ValueError(
                f"query, key and value must agree in shape, got {tuple(q.shape)}, "
                f"{tuple(k.shape)}, {tuple(v.shape)}"
            )
        K, d = _kernel_dilation(kernel_size, dilation, q.shape[2:4], "natten2d_qkv_fused")
        if r is not None and tuple(r.shape) != (q.shape[1], 2 * K - 1, 2 * K - 1):
            raise ValueError(
                f"rpb must have shape {(q.shape[1], 2 * K - 1, 2 * K - 1)} for kernel_size={K}, "
                f"got {tuple(r.shape)}"
            )
        dt = _out_dtype(q, k, v)
        out, _ = _ops().na_fused(_hf(q.astype(dt)), _hf(k.astype(dt)), _hf(v.astype(dt)),
                                 _params(2, K, d, 1.0),
                                 rpb=None if r is None else r.astype(dt))
        return _hl(out).astype(dt)

    return _run(f, query, query, key, value, rpb)


def get_d3rm_fused_status():
    """natten-mlx's optional D3RM fused kernels are not shipped; the fused 2-D op above
    runs on natten_mlx's own kernels instead."""
    return {"available": False, "enabled": False,
            "reason": "D3RM fused kernels are not part of natten_mlx; "
                      "natten2d_qkv_fused uses natten_mlx's fused op"}
