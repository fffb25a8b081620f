"""Shared machinery of the NATTEN compatibility shims.

Everything here sits on the tier interface of natten_mlx._core.ops
(na_fused / na_qk / na_av over an NAParams), so every shim runs on every tier
and is differentiable wherever the tiers are.

Old NATTEN (0.14 - 0.17) unfused ops are *heads-first*: q, k, v are
[B, H, *X, D] and the attention weights [B, H, *X, prod(K) (+ N_extra)].
The core is heads-last; these helpers transpose (lazy views in MLX).

Causal slot layout: upstream's unfused kernels put the window of a causal
axis at [max(j-K+1, 0), j+1) in the query's dilation-group coordinate j and
fill the slots *after* the query with -inf (valid slots first).  The core
(natten-mlx's layout) puts the query in the last slot and the masked slots
first.  For j >= K-1 the two coincide; for j < K-1 upstream's slot m is the
core's slot (m + K-1-j) mod K, a per-position cyclic roll that maps masked
slots onto masked slots.  _causal_roll builds that gather index once per
problem shape (shapes are static, so this stays compile-friendly).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional, Sequence, Tuple

import numpy as np

import mlx.core as mx
import mlx.nn as nn

from .._core.params import NAParams

_AXES = {1: "L", 2: "X, Y", 3: "Z, X, Y"}


def _ops():
    # Imported lazily: natten_mlx._core.ops imports the tiers, which may
    # import the package; the shims must not create import cycles.
    from .._core import ops

    return ops


# --------------------------------------------------------------------------
# argument normalisation and validation
# --------------------------------------------------------------------------


def as_tuple(value, rank: int, name: str) -> Tuple:
    """Scalar -> rank-tuple; tuple/list must have exactly `rank` entries."""
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(f"{name} must have length {rank}, got {len(value)}: {tuple(value)}")
        return tuple(value)
    return (value,) * rank


def as_int_tuple(value, rank: int, name: str, minimum: int = 1) -> Tuple[int, ...]:
    out = []
    for i, v in enumerate(as_tuple(value, rank, name)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name}[{i}] must be int, got {type(v).__name__}")
        v = int(v)
        if v < minimum:
            if minimum == 1:
                raise ValueError(f"{name}[{i}] must be positive, got {v}")
            raise ValueError(f"{name}[{i}] must be >= {minimum}, got {v}")
        out.append(v)
    return tuple(out)


def as_bool_tuple(value, rank: int, name: str) -> Tuple[bool, ...]:
    return tuple(bool(v) for v in as_tuple(value, rank, name))


def check_window(extent: Sequence[int], kernel, dilation) -> None:
    """K <= L and K*d <= L per axis, with the spec's messages."""
    for i, (L, K, d) in enumerate(zip(extent, kernel, dilation)):
        if K > L:
            raise ValueError(f"kernel_size[{i}]={K} must be <= input spatial size {L}")
        if K * d > L:
            raise ValueError(f"dilation[{i}] * kernel_size[{i}] = {K * d} exceeds input size {L}")


def window_args(rank: int, extent: Sequence[int], kernel_size, dilation, is_causal):
    """(kernel, dilation, causal) rank-tuples, checked against the input extent."""
    kernel = as_int_tuple(kernel_size, rank, "kernel_size")
    dil = as_int_tuple(dilation, rank, "dilation")
    causal = as_bool_tuple(is_causal, rank, "is_causal")
    check_window(extent, kernel, dil)
    return kernel, dil, causal


def make_params(rank, kernel, dilation, causal, scale, gna_stride=None) -> NAParams:
    return NAParams(
        rank=rank,
        kernel=tuple(kernel),
        dilation=tuple(dilation),
        out_stride=(1,) * rank,
        gna_stride=tuple(gna_stride) if gna_stride is not None else (1,) * rank,
        causal=tuple(bool(c) for c in causal),
        scale=float(scale),
    )


def check_rpb(rpb, heads: int, kernel, causal) -> None:
    """RPB must be [H, 2K-1 per axis]; odd K only and no causal axis (as upstream)."""
    if rpb is None:
        return
    if not isinstance(rpb, mx.array):
        raise ValueError(f"rpb must be an mlx array or None, got {type(rpb).__name__}")
    want = (heads,) + tuple(2 * k - 1 for k in kernel)
    if tuple(rpb.shape) != want:
        ks = kernel[0] if len(kernel) == 1 else tuple(kernel)
        dims = ", ".join(f"2K{'' if len(kernel) == 1 else i}-1" for i in range(len(kernel)))
        raise ValueError(
            f"rpb must be [heads, {dims}] = {list(want)} for kernel_size={ks}, "
            f"got {list(rpb.shape)}"
        )
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(
            f"relative positional bias needs an odd kernel size, got kernel_size={tuple(kernel)}"
        )
    if any(causal):
        raise NotImplementedError(
            "Causal neighborhood attention is undefined with positional biases. "
            "Please consider disabling positional biases."
        )


# --------------------------------------------------------------------------
# causal slot layout (upstream unfused <-> core)
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _causal_roll(extent, kernel, dilation, causal, inverse: bool) -> Optional[np.ndarray]:
    """int32 [*extent, prod(K)]: gather index between the two causal layouts.

    inverse=False: upstream[..., m] = core[..., idx[m]]   (core -> upstream)
    inverse=True:  core[..., k] = upstream[..., idx[k]]   (upstream -> core)
    None when no axis is causal (the layouts are then identical).
    """
    if not any(causal):
        return None
    per_axis = []
    for L, K, d, c in zip(extent, kernel, dilation, causal):
        j = np.arange(L) // d
        shift = np.maximum(K - 1 - j, 0) if c else np.zeros(L, dtype=np.int64)
        if inverse:
            shift = -shift
        m = np.arange(K)
        per_axis.append((m[None, :] + shift[:, None]) % K)  # [L, K]
    rank = len(extent)
    idx = np.zeros(tuple(extent) + tuple(kernel), dtype=np.int64)
    stride = 1
    for a in reversed(range(rank)):
        # broadcast per_axis[a] ([L_a, K_a]) onto [*X, *K]
        shape = [1] * (2 * rank)
        shape[a] = extent[a]
        shape[rank + a] = kernel[a]
        idx = idx + per_axis[a].reshape(shape) * stride
        stride *= kernel[a]
    out = idx.reshape(tuple(extent) + (stride,)).astype(np.int32)
    out.setflags(write=False)  # cached and shared
    return out


def _gather_slots(x: mx.array, idx: np.ndarray) -> mx.array:
    """x heads-last [B, *X, H, KK]; idx [*X, KK]."""
    rank = idx.ndim - 1
    ind = mx.array(idx)
    ind = ind.reshape((1,) + tuple(idx.shape[:rank]) + (1, idx.shape[-1]))
    ind = mx.broadcast_to(ind, x.shape)
    return mx.take_along_axis(x, ind, axis=-1)


# --------------------------------------------------------------------------
# heads-first unfused ops (NATTEN 0.14 - 0.17)
# --------------------------------------------------------------------------


def _to_heads_last(x: mx.array) -> mx.array:
    return mx.moveaxis(x, 1, -2)


def _to_heads_first(x: mx.array) -> mx.array:
    return mx.moveaxis(x, -2, 1)


def _check_heads_first_extra(fn: str, name: str, extra, like) -> None:
    """extra [B, H, N_extra, D] with B, H, D taken from `like` [B, H, *X, D]."""
    if not isinstance(extra, mx.array) or extra.ndim != 4:
        raise ValueError(f"{fn}: {name} must be [B, H, N_extra, D]")
    B, H, D = like.shape[0], like.shape[1], like.shape[-1]
    if (extra.shape[0], extra.shape[1], extra.shape[3]) != (B, H, D):
        raise ValueError(
            f"{fn}: {name} must be [B={B}, H={H}, N_extra, D={D}], got {list(extra.shape)}"
        )


def heads_first_qk(
    fn: str,
    rank: int,
    query,
    key,
    rpb,
    kernel_size,
    dilation,
    is_causal=False,
    additional_keys=None,
):
    """Unscaled q.k (+ rpb) over the neighbourhood, heads-first.

    query/key [B, H, *X, D] -> [B, H, *X, prod(K) (+ N_extra)].
    """
    nd = rank + 3
    if not isinstance(query, mx.array) or not isinstance(key, mx.array):
        raise ValueError(f"{fn}: query and key must be mlx arrays")
    if query.ndim != nd or key.ndim != nd:
        raise ValueError(
            f"{fn}: query and key must be [B, H, {_AXES[rank]}, D], got shapes "
            f"{list(query.shape)} and {list(key.shape)}"
        )
    if tuple(query.shape) != tuple(key.shape):
        raise ValueError(
            f"{fn}: query and key must have the same shape, got {list(query.shape)} "
            f"and {list(key.shape)}"
        )
    extent = tuple(query.shape[2 : 2 + rank])
    kernel, dil, causal = window_args(rank, extent, kernel_size, dilation, is_causal)
    heads = query.shape[1]
    check_rpb(rpb, heads, kernel, causal)

    p = make_params(rank, kernel, dil, causal, 1.0)
    logits = _ops().na_qk(_to_heads_last(query), _to_heads_last(key), p, rpb=rpb)
    roll = _causal_roll(extent, kernel, dil, causal, inverse=False)
    if roll is not None:
        logits = _gather_slots(logits, roll)
    logits = _to_heads_first(logits)

    if additional_keys is not None:
        _check_heads_first_extra(fn, "additional_keys", additional_keys, query)
        B, H, D = query.shape[0], query.shape[1], query.shape[-1]
        n_q = math.prod(extent)
        extra = mx.matmul(query.reshape(B, H, n_q, D), mx.swapaxes(additional_keys, -1, -2))
        extra = extra.reshape((B, H) + extent + (additional_keys.shape[2],))
        logits = mx.concatenate([logits, extra.astype(logits.dtype)], axis=-1)
    return logits


def heads_first_av(
    fn: str,
    rank: int,
    attn,
    value,
    kernel_size,
    dilation,
    is_causal=False,
    additional_values=None,
):
    """sum_k attn[..., k] * v[neighbour k] (+ attn[..., KK:] @ additional_values), heads-first."""
    nd = rank + 3
    if not isinstance(attn, mx.array) or not isinstance(value, mx.array):
        raise ValueError(f"{fn}: attn and value must be mlx arrays")
    if attn.ndim != nd or value.ndim != nd:
        raise ValueError(
            f"{fn}: attn must be [B, H, {_AXES[rank]}, KK] and value [B, H, {_AXES[rank]}, D], "
            f"got shapes {list(attn.shape)} and {list(value.shape)}"
        )
    if tuple(attn.shape[:-1]) != tuple(value.shape[:-1]):
        raise ValueError(
            f"{fn}: attn and value must match in batch, heads and spatial dims, got "
            f"{list(attn.shape)} and {list(value.shape)}"
        )
    extent = tuple(value.shape[2 : 2 + rank])
    kernel, dil, causal = window_args(rank, extent, kernel_size, dilation, is_causal)
    kk = math.prod(kernel)
    n_extra = 0
    if additional_values is not None:
        _check_heads_first_extra(fn, "additional_values", additional_values, value)
        n_extra = additional_values.shape[2]
    if attn.shape[-1] != kk + n_extra:
        raise ValueError(
            f"{fn}: attn has {attn.shape[-1]} neighbour slots, expected prod(kernel_size)"
            f"{' + N_extra' if n_extra else ''} = {kk + n_extra}"
        )
    a_na = attn[..., :kk] if n_extra else attn
    a_na = _to_heads_last(a_na)
    roll = _causal_roll(extent, kernel, dil, causal, inverse=True)
    if roll is not None:
        a_na = _gather_slots(a_na, roll)
    p = make_params(rank, kernel, dil, causal, 1.0)
    out = _to_heads_first(_ops().na_av(a_na, _to_heads_last(value), p))
    if n_extra:
        B, H = value.shape[0], value.shape[1]
        n_q = math.prod(extent)
        a_x = attn[..., kk:].reshape(B, H, n_q, n_extra)
        extra = mx.matmul(a_x.astype(additional_values.dtype), additional_values)
        out = out + extra.reshape(out.shape).astype(out.dtype)
    return out


# --------------------------------------------------------------------------
# heads-last fused op shared by the 0.15/0.17/0.20 shims
# --------------------------------------------------------------------------

_FUSED_SHAPE = {1: "[B, L, H, D]", 2: "[B, H, W, heads, dim]", 3: "[B, D, H, W, heads, dim]"}


def check_qkv_heads_last(fn: str, rank: int, query, key, value, allow_dv: bool = False) -> None:
    """natten-mlx's checks and messages; allow_dv lets V have its own head dim (upstream 0.20.1+)."""
    nd = rank + 3
    for t in (query, key, value):
        if not isinstance(t, mx.array) or t.ndim != nd:
            raise ValueError(f"{fn} expects query/key/value with shape {_FUSED_SHAPE[rank]}.")
    if not (query.shape[1:-2] == key.shape[1:-2] == value.shape[1:-2]):
        raise ValueError(
            f"Spatial dimensions must match: Q={tuple(query.shape[1:-2])}, "
            f"K={tuple(key.shape[1:-2])}, V={tuple(value.shape[1:-2])}."
        )
    if not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError("Batch dimensions must match.")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"Head dim must match: Q has {query.shape[-1]}, K has {key.shape[-1]}.")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError("K and V must have same number of heads.")
    if key.shape[-1] != value.shape[-1] and not allow_dv:
        raise ValueError(f"Head dim must match: K has {key.shape[-1]}, V has {value.shape[-1]}.")
    if query.shape[-2] % key.shape[-2] != 0:
        raise ValueError(
            f"heads_q ({query.shape[-2]}) must be divisible by heads_kv ({key.shape[-2]}) for GQA."
        )


def check_extra_kv(query, key, additional_keys, additional_values, value=None) -> None:
    """`value` given: additional values must match its head dim (else the query's)."""
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(
            "additional_keys and additional_values must both be provided or both None."
        )
    if additional_keys is None:
        return
    for name, t in (("additional_keys", additional_keys), ("additional_values", additional_values)):
        if not isinstance(t, mx.array) or t.ndim != 4:
            raise ValueError(
                "additional_keys/additional_values must be 4D: [B, N_extra, heads_kv, dim]."
            )
        if t.shape[0] != query.shape[0]:
            raise ValueError(f"{name} batch must match query batch.")
        want = query.shape[-1]
        if name == "additional_values" and value is not None:
            want = value.shape[-1]
        if t.shape[-1] != want:
            raise ValueError(f"{name} head dim must match query head dim.")
    if additional_keys.shape[2] != additional_values.shape[2]:
        raise ValueError("additional_keys and additional_values must have same number of heads.")
    if additional_keys.shape[1] != additional_values.shape[1]:
        raise ValueError("additional_keys and additional_values must have same N_extra.")
    if additional_keys.shape[2] != key.shape[-2]:
        raise ValueError(
            f"additional_keys/additional_values must have heads_kv={key.shape[-2]} heads, "
            f"got {additional_keys.shape[2]}."
        )


def fused(query, key, value, p: NAParams, rpb=None, additional_keys=None, additional_values=None):
    """(out, lse) through the dispatcher; out in query dtype, lse float32."""
    return _ops().na_fused(
        query, key, value, p, rpb=rpb, extra_k=additional_keys, extra_v=additional_values
    )


# --------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------


def init_rpb(heads: int, kernel) -> mx.array:
    """trunc_normal_(std=0.02, a=-2, b=2) as upstream (the cut is at +-100 sigma)."""
    shape = (heads,) + tuple(2 * k - 1 for k in kernel)
    return mx.clip(mx.random.normal(shape) * 0.02, -2.0, 2.0)


class LegacyNeighborhoodAttention(nn.Module):
    """Shared body of the NATTEN 0.14 / 0.15 / 0.17 modules.

    Parameters (MLX tree keys == upstream state_dict keys): qkv.weight,
    qkv.bias (if qkv_bias), rpb (if the bias is on), proj.weight, proj.bias.
    Forward: q *= scale; softmax(q.k + rpb) over the neighbourhood; attn_drop;
    weighted sum of v; proj; proj_drop.  Channels-last input [B, *X, C].
    """

    _rank = 1

    def _setup(
        self,
        dim,
        num_heads,
        kernel,
        dilation,
        causal,
        use_rpb,
        qkv_bias,
        qk_scale,
        attn_drop,
        proj_drop,
        pad_small_inputs,
    ):
        if not isinstance(dim, numbers.Integral) or dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not isinstance(num_heads, numbers.Integral) or num_heads <= 0:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if dim % num_heads != 0:
            raise ValueError("dim must be divisible by num_heads")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.dim // self.num_heads
        self.scale = qk_scale or self.head_dim**-0.5  # upstream: `or`, so 0 means default
        self._kernel = kernel
        self._dilation = dilation
        self._causal = causal
        self._pad = pad_small_inputs
        self.attn_drop_rate = float(attn_drop)
        self.proj_drop_rate = float(proj_drop)
        self.qkv = nn.Linear(self.dim, 3 * self.dim, bias=qkv_bias)
        if use_rpb:
            self.rpb = init_rpb(self.num_heads, kernel)
        else:
            self.rpb = None
        self.attn_drop = nn.Dropout(self.attn_drop_rate)
        self.proj = nn.Linear(self.dim, self.dim)
        self.proj_drop = nn.Dropout(self.proj_drop_rate)

    def _check_input(self, x):
        rank = self._rank
        if not isinstance(x, mx.array) or x.ndim != rank + 2:
            got = list(x.shape) if isinstance(x, mx.array) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expected a rank-{rank + 2} input tensor "
                f"[B, {_AXES[rank]}, C]; got {got}."
            )
        if x.shape[-1] != self.dim:
            raise ValueError(f"Expected dim={self.dim}, got channels={x.shape[-1]}")

    def __call__(self, x):
        self._check_input(x)
        rank = self._rank
        extent = tuple(x.shape[1 : 1 + rank])
        pads = [0] * rank
        if self._pad:
            # Upstream 0.14/0.15: inputs smaller than kernel*dilation are zero-padded
            # at the end of each axis *before* the qkv projection, then cropped.
            pads = [max(0, k * d - n) for k, d, n in zip(self._kernel, self._dilation, extent)]
            if any(pads):
                x = mx.pad(x, [(0, 0)] + [(0, p) for p in pads] + [(0, 0)])
        xs = tuple(x.shape[1 : 1 + rank])
        check_window(xs, self._kernel, self._dilation)
        B = x.shape[0]
        qkv = self.qkv(x).reshape((B,) + xs + (3, self.num_heads, self.head_dim))
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        p = make_params(rank, self._kernel, self._dilation, self._causal, self.scale)
        rpb = self.rpb
        if self.training and self.attn_drop_rate > 0:
            ops = _ops()
            attn = mx.softmax(ops.na_qk(q, k, p, rpb=rpb), axis=-1)
            attn = self.attn_drop(attn)
            out = ops.na_av(attn, v, p)
        else:
            out, _ = fused(q, k, v, p, rpb=rpb)
        out = out.reshape((B,) + xs + (self.dim,))
        if any(pads):
            out = out[(slice(None),) + tuple(slice(0, n) for n in extent)]
        return self.proj_drop(self.proj(out))

    @property
    def kernel_size(self):
        return self._kernel[0] if self._rank == 1 else self._kernel

    @property
    def dilation(self):
        return self._dilation[0] if self._rank == 1 else self._dilation

    @property
    def is_causal(self):
        return self._causal

    def _extra_repr(self):
        return (
            f"head_dim={self.head_dim}, num_heads={self.num_heads}, "
            f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"has_bias={self.rpb is not None}"
        )


def odd_kernel_gt1(kernel) -> None:
    for k in kernel:
        if k <= 1 or k % 2 == 0:
            raise ValueError(f"Kernel size must be an odd number greater than 1, got {k}.")
