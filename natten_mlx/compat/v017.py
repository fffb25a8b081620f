"""NATTEN 0.17 compatibility.

Unfused ops (heads-first, per-axis tuples, causal; logits unscaled):

    na{1,2,3}d_qk(query, key, kernel_size, dilation=1, additional_keys=None,
                  is_causal=False, rpb=None)      -> [B, H, *X, prod(K) (+ N_extra)]
    na{1,2,3}d_av(attn, value, kernel_size, dilation=1, additional_values=None,
                  is_causal=False)                -> [B, H, *X, D]

  On a causal axis the slots follow upstream's layout: the window is
  [max(j-K+1, 0), j+1) in dilation-group coordinates, valid slots first and
  -inf after them (the core puts the masked slots first; see _common).

Fused ops (heads-last [B, *X, H, D]; scale applied to q.k, RPB added after):

    na{1,2,3}d(query, key, value, kernel_size, dilation=1, is_causal=False,
               rpb=None, scale=None, additional_keys=None,
               additional_values=None, xformers_kwargs=None)

  `scale or D**-0.5` as upstream (0 means the default).  Unlike upstream
  (forward-only RPB in FNA), the RPB gradient is available.

Modules: NeighborhoodAttention{1,2,3}D(dim, num_heads, kernel_size,
dilation=1, is_causal=False, rel_pos_bias=False, qkv_bias=True,
qk_scale=None, attn_drop=0.0, proj_drop=0.0, use_experimental_ops=False).
"""

from __future__ import annotations

import logging
from typing import Optional

import mlx.core as mx

from . import _common as C
from .v014 import add_natten_handle  # noqa: F401
from .v015 import (  # noqa: F401
    disable_gemm_na,
    disable_tf32,
    disable_tiled_na,
    enable_gemm_na,
    enable_tf32,
    enable_tiled_na,
    has_bfloat,
    has_cuda,
    has_fna,
    has_fp32_gemm,
    has_fp64_gemm,
    has_gemm,
    has_half,
    has_mlx,
    has_mps,
    has_tf32_gemm,
)

_log = logging.getLogger("natten_mlx.compat.v017")

__all__ = [
    "na1d_qk", "na1d_av", "na2d_qk", "na2d_av", "na3d_qk", "na3d_av",
    "na1d", "na2d", "na3d",
    "natten1dqkrpb", "natten1dqk", "natten1dav",
    "natten2dqkrpb", "natten2dqk", "natten2dav",
    "natten3dqkrpb", "natten3dqk", "natten3dav",
    "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
    "add_natten_handle",
    "has_cuda", "has_mps", "has_mlx", "has_half", "has_bfloat", "has_gemm",
    "has_tf32_gemm", "has_fp32_gemm", "has_fp64_gemm", "has_fna", "has_fused_na",
    "enable_tf32", "disable_tf32", "enable_tiled_na", "disable_tiled_na",
    "enable_gemm_na", "disable_gemm_na",
    "use_fused_na", "is_fused_na_enabled", "is_fna_enabled",
    "use_kv_parallelism_in_fused_na", "is_kv_parallelism_in_fused_na_enabled",
    "use_autotuner", "disable_autotuner", "is_autotuner_enabled",
    "use_tiled_na", "is_tiled_na_enabled", "use_gemm_na", "is_gemm_na_enabled",
    "use_tf32_in_gemm_na", "is_tf32_in_gemm_na_enabled",
    "force_flex_attention", "is_flex_attention_enabled",
    "set_memory_usage_preference", "is_memory_usage_default",
    "is_memory_usage_strict", "is_memory_usage_unrestricted",
]


# ---------------------------------------------------------------- unfused (heads-first)


def na1d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False,
            rpb: Optional[mx.array] = None):
    return C.heads_first_qk("na1d_qk", 1, query, key, rpb, kernel_size, dilation,
                            is_causal, additional_keys)


def na2d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False,
            rpb: Optional[mx.array] = None):
    return C.heads_first_qk("na2d_qk", 2, query, key, rpb, kernel_size, dilation,
                            is_causal, additional_keys)


def na3d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False,
            rpb: Optional[mx.array] = None):
    return C.heads_first_qk("na3d_qk", 3, query, key, rpb, kernel_size, dilation,
                            is_causal, additional_keys)


def na1d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    return C.heads_first_av("na1d_av", 1, attn, value, kernel_size, dilation, is_causal,
                            additional_values)


def na2d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    return C.heads_first_av("na2d_av", 2, attn, value, kernel_size, dilation, is_causal,
                            additional_values)


def na3d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    return C.heads_first_av("na3d_av", 3, attn, value, kernel_size, dilation, is_causal,
                            additional_values)


# deprecated in 0.17 (upstream warned), square kernels only
def natten1dqkrpb(query, key, rpb, kernel_size, dilation):
    return na1d_qk(query, key, (kernel_size,), (dilation,), rpb=rpb)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation):
    return na2d_qk(query, key, (kernel_size,) * 2, (dilation,) * 2, rpb=rpb)


def natten3dqkrpb(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size),
                   (dilation_d, dilation, dilation), rpb=rpb)


def natten1dqk(query, key, kernel_size, dilation):
    return na1d_qk(query, key, (kernel_size,), (dilation,))


def natten2dqk(query, key, kernel_size, dilation):
    return na2d_qk(query, key, (kernel_size,) * 2, (dilation,) * 2)


def natten3dqk(query, key, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size),
                   (dilation_d, dilation, dilation))


def natten1dav(attn, value, kernel_size, dilation):
    return na1d_av(attn, value, (kernel_size,), (dilation,))


def natten2dav(attn, value, kernel_size, dilation):
    return na2d_av(attn, value, (kernel_size,) * 2, (dilation,) * 2)


def natten3dav(attn, value, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_av(attn, value, (kernel_size_d, kernel_size, kernel_size),
                   (dilation_d, dilation, dilation))


# ---------------------------------------------------------------- fused (heads-last)


def _fused(rank, name, query, key, value, kernel_size, dilation, is_causal, rpb, scale,
           additional_keys, additional_values):
    C.check_qkv_heads_last(name, rank, query, key, value)
    C.check_extra_kv(query, key, additional_keys, additional_values)
    kernel, dil, causal = C.window_args(rank, tuple(query.shape[1 : 1 + rank]), kernel_size,
                                        dilation, is_causal)
    C.check_rpb(rpb, query.shape[-2], kernel, causal)
    s = scale or query.shape[-1] ** -0.5
    p = C.make_params(rank, kernel, dil, causal, s)
    out, _ = C.fused(query, key, value, p, rpb, additional_keys, additional_values)
    return out


def na1d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None,
         additional_keys=None, additional_values=None, xformers_kwargs=None):
    return _fused(1, "na1d", query, key, value, kernel_size, dilation, is_causal, rpb, scale,
                  additional_keys, additional_values)


def na2d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None,
         additional_keys=None, additional_values=None, xformers_kwargs=None):
    return _fused(2, "na2d", query, key, value, kernel_size, dilation, is_causal, rpb, scale,
                  additional_keys, additional_values)


def na3d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None,
         additional_keys=None, additional_values=None, xformers_kwargs=None):
    return _fused(3, "na3d", query, key, value, kernel_size, dilation, is_causal, rpb, scale,
                  additional_keys, additional_values)


# ---------------------------------------------------------------- modules


class _Legacy017(C.LegacyNeighborhoodAttention):
    def __init__(
        self,
        dim,
        num_heads,
        kernel_size,
        dilation=1,
        is_causal=False,
        rel_pos_bias=False,
        qkv_bias=True,
        qk_scale=None,
        attn_drop=0.0,
        proj_drop=0.0,
        use_experimental_ops=False,
    ):
        super().__init__()
        rank = self._rank
        kernel = C.as_int_tuple(kernel_size, rank, "kernel_size")
        dil = C.as_int_tuple(dilation, rank, "dilation")
        causal = C.as_bool_tuple(is_causal, rank, "is_causal")
        if any(causal) and rel_pos_bias:
            raise NotImplementedError(
                "Causal neighborhood attention is undefined with positional biases."
                "Please consider disabling positional biases, or open an issue."
            )
        self._setup(
            dim, num_heads, kernel, dil, causal, bool(rel_pos_bias), qkv_bias, qk_scale,
            attn_drop, proj_drop, pad_small_inputs=False,
        )

    def __call__(self, x):
        if _STATE["fused"] and self.attn_drop_rate > 0 and self.training:
            _log.warning(
                "fused neighborhood attention is on and attn_drop > 0: natten_mlx still "
                "applies attention dropout (upstream's fused path silently skipped it)."
            )
        return super().__call__(x)

    @property
    def kernel_size(self):
        return self._kernel

    @property
    def dilation(self):
        return self._dilation


class NeighborhoodAttention1D(_Legacy017):
    _rank = 1


class NeighborhoodAttention2D(_Legacy017):
    _rank = 2


class NeighborhoodAttention3D(_Legacy017):
    _rank = 3


# ---------------------------------------------------------------- context switches
# Results never depend on these: every path computes the same thing.  They are
# kept so that code that flips them keeps running, and they report what was set.

_STATE = {
    "fused": False,
    "kv_parallel": True,
    "flex": False,
    "autotuner": False,
    "tiled": True,
    "gemm": True,
    "tf32": True,
    "memory": "default",
}


def has_fused_na() -> bool:
    return False


def use_fused_na(mode: bool = True, kv_parallel: bool = True, use_flex_attention: bool = False):
    _STATE["fused"] = bool(mode)
    _STATE["kv_parallel"] = bool(kv_parallel)
    _STATE["flex"] = bool(use_flex_attention) and bool(mode)


def is_fused_na_enabled() -> bool:
    return _STATE["fused"]


is_fna_enabled = is_fused_na_enabled


def use_kv_parallelism_in_fused_na(mode: bool = True):
    _STATE["kv_parallel"] = bool(mode)


def is_kv_parallelism_in_fused_na_enabled() -> bool:
    return _STATE["kv_parallel"]


def use_autotuner(forward_pass: bool = False, backward_pass: bool = False, *_args, **_kwargs):
    _STATE["autotuner"] = bool(forward_pass or backward_pass)


def disable_autotuner():
    _STATE["autotuner"] = False


def is_autotuner_enabled(*_args, **_kwargs) -> bool:
    return _STATE["autotuner"]


def use_tiled_na(mode: bool = True):
    _STATE["tiled"] = bool(mode)


def is_tiled_na_enabled() -> bool:
    return _STATE["tiled"]


def use_gemm_na(mode: bool = True):
    _STATE["gemm"] = bool(mode)


def is_gemm_na_enabled() -> bool:
    return _STATE["gemm"]


def use_tf32_in_gemm_na(mode: bool = True):
    _STATE["tf32"] = bool(mode)


def is_tf32_in_gemm_na_enabled() -> bool:
    return _STATE["tf32"]


def force_flex_attention(mode: bool = True):
    _STATE["flex"] = bool(mode)


def is_flex_attention_enabled() -> bool:
    return _STATE["flex"]


def set_memory_usage_preference(pref: str = "default"):
    if pref not in ("default", "strict", "unrestricted"):
        raise ValueError(
            f"memory usage preference must be 'default', 'strict' or 'unrestricted', got {pref!r}"
        )
    _STATE["memory"] = pref


def is_memory_usage_default() -> bool:
    return _STATE["memory"] == "default"


def is_memory_usage_strict() -> bool:
    return _STATE["memory"] == "strict"


def is_memory_usage_unrestricted() -> bool:
    return _STATE["memory"] == "unrestricted"
