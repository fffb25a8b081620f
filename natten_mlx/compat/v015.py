"""NATTEN 0.15 compatibility.

Upstream 0.15 renamed the heads-first unfused ops and added 3D:

    na1d_qk(query, key, kernel_size, dilation, additional_keys=None)
    na1d_qk_with_bias(query, key, bias, kernel_size, dilation, additional_keys=None)
    na1d_av(attn, value, kernel_size, dilation, additional_values=None)
    (2D alike; 3D takes kernel_size_d, kernel_size, dilation_d, dilation)
    natten{1,2,3}dqkrpb / natten{1,2,3}dqk / natten{1,2,3}dav (old names)

All heads-first: q/k/v [B, H, *X, D], attn [B, H, *X, prod(K) (+ N_extra)],
additional keys/values [B, H, N_extra, D].  Logits are unscaled.

Also kept from natten-mlx's v015: heads-last fused na1d/na2d/na3d(query, key,
value, kernel_size, dilation=1, is_causal=False, scale=None) (upstream 0.15
had no fused op; scale=0.0 is honoured as in natten-mlx) and the feature flags.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from ..functional import _resolve_scale
from . import _common as C
from .v014 import (  # noqa: F401  (re-exported)
    NeighborhoodAttention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    add_natten_handle,
    natten1dav,
    natten1dqk,
    natten1dqkrpb,
    natten2dav,
    natten2dqk,
    natten2dqkrpb,
)

__all__ = [
    "na1d_qk",
    "na1d_qk_with_bias",
    "na1d_av",
    "na2d_qk",
    "na2d_qk_with_bias",
    "na2d_av",
    "na3d_qk",
    "na3d_qk_with_bias",
    "na3d_av",
    "natten1dqkrpb",
    "natten1dqk",
    "natten1dav",
    "natten2dqkrpb",
    "natten2dqk",
    "natten2dav",
    "natten3dqkrpb",
    "natten3dqk",
    "natten3dav",
    "na1d",
    "na2d",
    "na3d",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "NeighborhoodAttention",
    "add_natten_handle",
    "has_cuda",
    "has_mps",
    "has_mlx",
    "has_half",
    "has_bfloat",
    "has_gemm",
    "has_tf32_gemm",
    "has_fp32_gemm",
    "has_fp64_gemm",
    "has_fna",
    "enable_tf32",
    "disable_tf32",
    "enable_tiled_na",
    "disable_tiled_na",
    "enable_gemm_na",
    "disable_gemm_na",
]


# ---------------------------------------------------------------- 1D / 2D


def na1d_qk(query, key, kernel_size, dilation=1, additional_keys=None):
    return C.heads_first_qk(
        "na1d_qk", 1, query, key, None, kernel_size, dilation, additional_keys=additional_keys
    )


def na1d_qk_with_bias(query, key, bias: Optional[mx.array], kernel_size, dilation=1,
                      additional_keys=None):
    return C.heads_first_qk(
        "na1d_qk_with_bias", 1, query, key, bias, kernel_size, dilation,
        additional_keys=additional_keys,
    )


def na1d_av(attn, value, kernel_size, dilation=1, additional_values=None):
    return C.heads_first_av(
        "na1d_av", 1, attn, value, kernel_size, dilation, additional_values=additional_values
    )


def na2d_qk(query, key, kernel_size, dilation=1, additional_keys=None):
    return C.heads_first_qk(
        "na2d_qk", 2, query, key, None, kernel_size, dilation, additional_keys=additional_keys
    )


def na2d_qk_with_bias(query, key, bias: Optional[mx.array], kernel_size, dilation=1,
                      additional_keys=None):
    return C.heads_first_qk(
        "na2d_qk_with_bias", 2, query, key, bias, kernel_size, dilation,
        additional_keys=additional_keys,
    )


def na2d_av(attn, value, kernel_size, dilation=1, additional_values=None):
    return C.heads_first_av(
        "na2d_av", 2, attn, value, kernel_size, dilation, additional_values=additional_values
    )


# ---------------------------------------------------------------- 3D (depth kernel/dilation separate)


def _k3(kernel_size_d, kernel_size):
    return (kernel_size_d, kernel_size, kernel_size)


def na3d_qk(query, key, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys=None):
    return C.heads_first_qk(
        "na3d_qk", 3, query, key, None, _k3(kernel_size_d, kernel_size),
        _k3(dilation_d, dilation), additional_keys=additional_keys,
    )


def na3d_qk_with_bias(query, key, bias, kernel_size_d, kernel_size, dilation_d, dilation,
                      additional_keys=None):
    return C.heads_first_qk(
        "na3d_qk_with_bias", 3, query, key, bias, _k3(kernel_size_d, kernel_size),
        _k3(dilation_d, dilation), additional_keys=additional_keys,
    )


def na3d_av(attn, value, kernel_size_d, kernel_size, dilation_d, dilation,
            additional_values=None):
    return C.heads_first_av(
        "na3d_av", 3, attn, value, _k3(kernel_size_d, kernel_size), _k3(dilation_d, dilation),
        additional_values=additional_values,
    )


def natten3dqkrpb(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation):
    return C.heads_first_qk(
        "natten3dqkrpb", 3, query, key, rpb, _k3(kernel_size_d, kernel_size),
        _k3(dilation_d, dilation),
    )


def natten3dqk(query, key, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_qk(query, key, kernel_size_d, kernel_size, dilation_d, dilation)


def natten3dav(attn, value, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_av(attn, value, kernel_size_d, kernel_size, dilation_d, dilation)


# ---------------------------------------------------------------- natten-mlx's fused ops


def _fused(rank, name, query, key, value, kernel_size, dilation, is_causal, scale):
    C.check_qkv_heads_last(name, rank, query, key, value)
    kernel, dil, causal = C.window_args(rank, tuple(query.shape[1 : 1 + rank]), kernel_size,
                                        dilation, is_causal)
    s = _resolve_scale(scale, query.shape[-1])
    out, _ = C.fused(query, key, value, C.make_params(rank, kernel, dil, causal, s))
    return out


def na1d(query, key, value, kernel_size, dilation=1, is_causal=False, scale=None):
    """Heads-last fused NA, [B, L, H, D] (natten-mlx v015 surface)."""
    return _fused(1, "na1d", query, key, value, kernel_size, dilation, is_causal, scale)


def na2d(query, key, value, kernel_size, dilation=1, is_causal=False, scale=None):
    return _fused(2, "na2d", query, key, value, kernel_size, dilation, is_causal, scale)


def na3d(query, key, value, kernel_size, dilation=1, is_causal=False, scale=None):
    return _fused(3, "na3d", query, key, value, kernel_size, dilation, is_causal, scale)


# ---------------------------------------------------------------- modules


class NeighborhoodAttention3D(C.LegacyNeighborhoodAttention):
    """NATTEN 0.15 NeighborhoodAttention3D: input [B, Z, X, Y, dim].

    (dim, num_heads, kernel_size, kernel_size_d=None, dilation=1, dilation_d=None,
    bias=True, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0);
    rpb [H, 2Kd-1, 2K-1, 2K-1].  Inputs smaller than kernel*dilation are padded
    at the end of every axis (some 0.15 releases padded only H and W).
    """

    _rank = 3

    def __init__(
        self,
        dim,
        num_heads=None,
        kernel_size=None,
        kernel_size_d=None,
        dilation=1,
        dilation_d=None,
        bias=True,
        qkv_bias=True,
        qk_scale=None,
        attn_drop=0.0,
        proj_drop=0.0,
    ):
        super().__init__()
        if kernel_size is None:
            raise TypeError("NeighborhoodAttention3D() missing required argument: 'kernel_size'")
        if num_heads is None:
            num_heads = 1
        kernel_size_d = kernel_size_d or kernel_size
        dilation = dilation or 1
        dilation_d = dilation_d or dilation
        kernel = C.as_int_tuple((kernel_size_d, kernel_size, kernel_size), 3, "kernel_size")
        C.odd_kernel_gt1(kernel)
        dil = C.as_int_tuple((dilation_d, dilation, dilation), 3, "dilation")
        self._setup(
            dim, num_heads, kernel, dil, (False,) * 3, bool(bias), qkv_bias, qk_scale,
            attn_drop, proj_drop, pad_small_inputs=True,
        )
        self.kernel_size_d = kernel[0]
        self.dilation_d = dil[0]

    @property
    def kernel_size(self):
        return self._kernel[1]

    @property
    def dilation(self):
        return self._dilation[1]


# ---------------------------------------------------------------- feature flags / context


def has_cuda() -> bool:
    return False


def has_mps() -> bool:
    return False


def has_mlx() -> bool:
    return True


def has_half() -> bool:
    return True


def has_bfloat() -> bool:
    return True


def has_gemm() -> bool:
    return False


def has_tf32_gemm() -> bool:
    return False


def has_fp32_gemm() -> bool:
    return False


def has_fp64_gemm() -> bool:
    return False


def has_fna() -> bool:
    return False


def _noop(*_args, **_kwargs) -> None:
    return None


enable_tf32 = disable_tf32 = _noop
enable_tiled_na = disable_tiled_na = _noop
enable_gemm_na = disable_gemm_na = _noop
