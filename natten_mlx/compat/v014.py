"""NATTEN 0.14 compatibility (heads-first unfused ops, 0.14.6 signatures).

    natten1dqkrpb(query, key, rpb, kernel_size, dilation)   q/k [B, H, L, D]
    natten1dqk(query, key, kernel_size, dilation)
    natten1dav(attn, value, kernel_size, dilation)          attn [B, H, L, K]
    natten2dqkrpb / natten2dqk / natten2dav                 [B, H, X, Y, ...]
    NeighborhoodAttention1D / 2D(dim, num_heads, kernel_size, dilation=1,
        bias=True, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0)

QK returns *unscaled* q.k + rpb[h, (key - i)/d + K - 1] (callers pre-scale q,
as upstream's modules and Hugging Face NAT/DiNAT do); rpb may be None.
The 0.14.1 forms natten{1,2}dqkrpb(q, k, rpb, dilation) and
natten{1,2}dav(attn, v, dilation) (kernel size taken from rpb / attn) work too.
Every op is differentiable (q, k, rpb, attn, v) on every tier.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from . import _common as C

__all__ = [
    "natten1dqkrpb",
    "natten1dqk",
    "natten1dav",
    "natten2dqkrpb",
    "natten2dqk",
    "natten2dav",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention",
    "add_natten_handle",
]


# 0.14.1 had no kernel_size argument (natten1dqkrpb(q, k, rpb, dilation),
# natten1dav(attn, v, dilation)): the kernel size came from the rpb / attn shape.
# 0.14.5+ always passes both kernel_size and dilation, so a call without the
# last argument is the 0.14.1 form.
_NOT_GIVEN = object()


def _qk_args(fn, rank, rpb, kernel_size, dilation):
    if dilation is not _NOT_GIVEN:
        return kernel_size, dilation
    if not isinstance(rpb, mx.array):
        raise TypeError(
            f"{fn}() missing argument 'dilation' (the 0.14.1 form {fn}(q, k, rpb, dilation) "
            "infers the kernel size from rpb, which must then be given)"
        )
    return (int(rpb.shape[-1]) + 1) // 2, kernel_size


def _av_args(fn, rank, attn, kernel_size, dilation):
    if dilation is not _NOT_GIVEN:
        return kernel_size, dilation
    n = int(attn.shape[-1]) if isinstance(attn, mx.array) else 0
    k = round(n ** (1.0 / rank))
    if n == 0 or k**rank != n:
        raise TypeError(
            f"{fn}() missing argument 'dilation' (0.14.1 form {fn}(attn, v, dilation) needs "
            f"attn's last axis to be kernel_size**{rank}, got {n})"
        )
    return k, kernel_size


def natten1dqkrpb(query, key, rpb: Optional[mx.array], kernel_size, dilation=_NOT_GIVEN):
    """[B, H, L, D] x2 (+ rpb [H, 2K-1] or None) -> unscaled logits [B, H, L, K]."""
    kernel_size, dilation = _qk_args("natten1dqkrpb", 1, rpb, kernel_size, dilation)
    return C.heads_first_qk("natten1dqkrpb", 1, query, key, rpb, kernel_size, dilation)


def natten1dqk(query, key, kernel_size, dilation=1):
    """natten1dqkrpb without bias."""
    return C.heads_first_qk("natten1dqk", 1, query, key, None, kernel_size, dilation)


def natten1dav(attn, value, kernel_size, dilation=_NOT_GIVEN):
    """attn [B, H, L, K], value [B, H, L, D] -> [B, H, L, D]."""
    kernel_size, dilation = _av_args("natten1dav", 1, attn, kernel_size, dilation)
    return C.heads_first_av("natten1dav", 1, attn, value, kernel_size, dilation)


def natten2dqkrpb(query, key, rpb: Optional[mx.array], kernel_size, dilation=_NOT_GIVEN):
    """[B, H, X, Y, D] x2 (+ rpb [H, 2Kx-1, 2Ky-1] or None) -> [B, H, X, Y, Kx*Ky]."""
    kernel_size, dilation = _qk_args("natten2dqkrpb", 2, rpb, kernel_size, dilation)
    return C.heads_first_qk("natten2dqkrpb", 2, query, key, rpb, kernel_size, dilation)


def natten2dqk(query, key, kernel_size, dilation=1):
    return C.heads_first_qk("natten2dqk", 2, query, key, None, kernel_size, dilation)


def natten2dav(attn, value, kernel_size, dilation=_NOT_GIVEN):
    """attn [B, H, X, Y, Kx*Ky], value [B, H, X, Y, D] -> [B, H, X, Y, D]."""
    kernel_size, dilation = _av_args("natten2dav", 2, attn, kernel_size, dilation)
    return C.heads_first_av("natten2dav", 2, attn, value, kernel_size, dilation)


def add_natten_handle(flop_counter):
    """Upstream registered FLOP handles on fvcore counters; nothing to do here."""
    return flop_counter


class _Legacy014(C.LegacyNeighborhoodAttention):
    def __init__(
        self,
        dim,
        num_heads=None,
        kernel_size=None,
        dilation=1,
        bias=True,
        qkv_bias=True,
        qk_scale=None,
        attn_drop=0.0,
        proj_drop=0.0,
    ):
        super().__init__()
        if kernel_size is None:
            raise TypeError(f"{type(self).__name__}() missing required argument: 'kernel_size'")
        if num_heads is None:
            num_heads = 1  # natten-mlx's v014 modules defaulted to one head
        rank = self._rank
        kernel = C.as_int_tuple(kernel_size, rank, "kernel_size")
        C.odd_kernel_gt1(kernel)
        dil = C.as_int_tuple(dilation or 1, rank, "dilation")
        self._setup(
            dim,
            num_heads,
            kernel,
            dil,
            (False,) * rank,
            bool(bias),
            qkv_bias,
            qk_scale,
            attn_drop,
            proj_drop,
            pad_small_inputs=True,
        )
        self.window_size = tuple(k * d for k, d in zip(kernel, dil))

    # upstream 0.14 stored plain ints (a square kernel); tuples only when non-square
    @property
    def kernel_size(self):
        k = self._kernel
        return k[0] if len(set(k)) == 1 else k

    @property
    def dilation(self):
        d = self._dilation
        return d[0] if len(set(d)) == 1 else d


class NeighborhoodAttention1D(_Legacy014):
    """NATTEN 0.14 NeighborhoodAttention1D: input [B, L, dim]; RPB `rpb` [H, 2K-1] on by default."""

    _rank = 1


class NeighborhoodAttention2D(_Legacy014):
    """NATTEN 0.14 NeighborhoodAttention2D: input [B, X, Y, dim]; `rpb` [H, 2K-1, 2K-1]."""

    _rank = 2


# 0.14 still shipped the pre-0.13 name of the 2D module.
NeighborhoodAttention = NeighborhoodAttention2D
