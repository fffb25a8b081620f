"""Internal entry points with natten-mlx's ``*_with_grad`` names.

natten-mlx routed its public functions through these; here they are thin,
unvalidated wrappers over the dispatcher (every tier is differentiable: pure
by MLX autodiff, the C extension by its primitives' own VJPs, the CUDA tier by
``mx.custom_function`` VJPs).  Arguments are
already-normalised tuples: kernel_size, stride, dilation, is_causal, scale.
"""

from __future__ import annotations

import mlx.core as mx

from natten_mlx._core import ops


# Same NAParams construction as natten-mlx's ops.na*d_forward entry points.
_p = ops._np_params


def _fused(rank):
    def fn(query, key, value, kernel_size, stride, dilation, is_causal, scale=None):
        p = _p(rank, kernel_size, stride, dilation, is_causal, scale, query.shape[-1])
        return ops.na_fused(query, key, value, p)[0]
    fn.__name__ = f"na{rank}d_with_grad"
    return fn


def _qk(rank):
    def fn(query, key, kernel_size, stride, dilation, is_causal, scale=None):
        p = _p(rank, kernel_size, stride, dilation, is_causal, scale, query.shape[-1])
        return ops.na_qk(query, key, p)
    fn.__name__ = f"na{rank}d_qk_with_grad"
    return fn


def _av(rank):
    def fn(attn, value, kernel_size, stride, dilation, is_causal):
        p = _p(rank, kernel_size, stride, dilation, is_causal, 1.0, value.shape[-1])
        return ops.na_av(attn, value, p)
    fn.__name__ = f"na{rank}d_av_with_grad"
    return fn


def _varlen(rank):
    def fn(query, key, value, sizes, kernel_size, dilation, scale=None):
        p = _p(rank, kernel_size, (1,) * rank, dilation, (False,) * rank, scale,
               query.shape[-1])
        sizes = sizes if isinstance(sizes, mx.array) else mx.array(sizes)
        return ops.na_fused(query, key, value, p,
                            varlen=sizes.reshape(query.shape[0], rank).astype(mx.int32))[0]
    fn.__name__ = f"na{rank}d_varlen_with_grad"
    return fn


na1d_with_grad, na2d_with_grad, na3d_with_grad = _fused(1), _fused(2), _fused(3)
na1d_qk_with_grad, na2d_qk_with_grad, na3d_qk_with_grad = _qk(1), _qk(2), _qk(3)
na1d_av_with_grad, na2d_av_with_grad, na3d_av_with_grad = _av(1), _av(2), _av(3)
na1d_varlen_with_grad, na2d_varlen_with_grad, na3d_varlen_with_grad = (
    _varlen(1), _varlen(2), _varlen(3))

__all__ = [
    "na1d_with_grad", "na2d_with_grad", "na3d_with_grad",
    "na1d_qk_with_grad", "na2d_qk_with_grad", "na3d_qk_with_grad",
    "na1d_av_with_grad", "na2d_av_with_grad", "na3d_av_with_grad",
    "na1d_varlen_with_grad", "na2d_varlen_with_grad", "na3d_varlen_with_grad",
]
