"""Pure tier: neighborhood attention from MLX ops only.

This is the second, independent implementation of the semantics (the C core
is the first); it does not use the C window rule.  Neighbour tables are built
with numpy from Python ints when the op is traced (constants, fine under
``mx.compile``), or with MLX arithmetic when they depend on per-sample
extents (varlen).  Keys and values are gathered per neighbour slot, logits
come from batched matmuls with GQA handled natively (query head h reads kv
head h // (H / H_kv)), and everything is differentiable by MLX autodiff.
Masked slots are removed with ``mx.where`` so their gradients are exactly 0.

Per axis (extent L, kernel K, dilation d, GNA stride s, causal flag), the
full-resolution query i lives in dilation group r = i mod d at local index
p = i // d; the group has n = ceil((L - r) / d) members and p belongs to the
GNA stride group t = p // s:

* non-causal: the group's leader is min(t*s + s//2, n-1); the window is the
  K consecutive group members starting at clamp(leader - K//2, 0, n - K)
  (K//2 on the left, K - K//2 - 1 on the right, slid inward at borders);
* causal: the leader is min(t*s + s - 1, n-1); slot k holds the member
  leader - K + 1 + k and is valid iff that index lies in [0, p] (with s = 1
  masked slots lead and slot K-1 is the query itself).

Output row o along an axis is the full-resolution query o * out_stride.
"""

from __future__ import annotations

import functools
from typing import Tuple

import mlx.core as mx
import numpy as np

from natten_mlx._core.params import NAParams


def is_available() -> bool:
    return True


def supports(op, p, dtype, device=None, **features) -> bool:  # noqa: ARG001
    """The pure tier covers every valid configuration (RPB not with GNA stride)."""
    if features.get("rpb") and any(s != 1 for s in p.gna_stride):
        return False
    return True


# --------------------------------------------------------------------------
# Window tables
# --------------------------------------------------------------------------


def _axis_slots(xp, i, L, K: int, d: int, s: int, causal: bool):
    """Key positions and validity of the K slots of queries ``i`` (arrays).

    ``i`` has a trailing singleton axis for the slots; ``L`` is a Python int
    or an array broadcastable against ``i``.  Returns (pos, valid, rel) where
    rel is the relative-position-bias index (key - i) / d + K - 1.
    """
    k = xp.arange(K)
    r = i % d
    p = i // d
    n = (L - r + d - 1) // d
    t = p // s
    if causal:
        leader = xp.minimum(t * s + (s - 1), n - 1)
        local = leader - (K - 1) + k
        valid = (local >= 0) & (local <= p)
    else:
        leader = xp.minimum(t * s + s // 2, n - 1)
        first = xp.maximum(xp.minimum(leader - K // 2, n - K), 0)
        local = first + k
        valid = local >= 0  # always true under d*K <= L
    pos = local * d + r
    rel = local - p + (K - 1)
    return pos, valid, rel


def _combine(xp, per_axis, extents, kernels, lead: Tuple[int, ...]):
    """Cartesian product of per-axis slot tables, flattened row-major.

    per_axis[a] = (pos, valid, rel), each shaped lead + (O_a, K_a).  Returns
    flat key index, validity and flat RPB index, each shaped lead + (O, KK).
    """
    rank = len(per_axis)
    nl = len(lead)
    flat = None
    valid = None
    rflat = None
    for a, (pos, val, rel) in enumerate(per_axis):
        L = extents[a]
        R = 2 * kernels[a] - 1
        if xp is np:
            pos = np.clip(pos, 0, L - 1)
            rel = np.clip(rel, 0, R - 1)
        else:
            pos = mx.minimum(mx.maximum(pos, 0), L - 1)
            rel = mx.minimum(mx.maximum(rel, 0), R - 1)
        # place O_a at output axis a and K_a at kernel axis a
        shape = list(lead) + [1] * (2 * rank)
        shape[nl + a] = pos.shape[-2]
        shape[nl + rank + a] = pos.shape[-1]
        pos = pos.reshape(shape)
        val = val.reshape(shape)
        rel = rel.reshape(shape)
        if flat is None:
            flat, valid, rflat = pos, val, rel
        else:
            flat = flat * L + pos
            valid = valid & val
            rflat = rflat * (2 * kernels[a] - 1) + rel
    # broadcast to the full product shape
    full = list(lead)
    full += [per_axis[a][0].shape[-2] for a in range(rank)]
    full += [kernels[a] for a in range(rank)]
    if xp is np:
        flat = np.broadcast_to(flat, full)
        valid = np.broadcast_to(valid, full)
        rflat = np.broadcast_to(rflat, full)
    else:
        flat = mx.broadcast_to(flat, full)
        valid = mx.broadcast_to(valid, full)
        rflat = mx.broadcast_to(rflat, full)
    O = 1
    for a in range(rank):
        O *= per_axis[a][0].shape[-2]
    KK = 1
    for kk in kernels:
        KK *= kk
    newshape = list(lead) + [O, KK]
    return flat.reshape(newshape), valid.reshape(newshape), rflat.reshape(newshape)


@functools.lru_cache(maxsize=512)
def _static_tables(extents, kernel, dilation, gna, causal, out_stride):
    per_axis = []
    for a in range(len(extents)):
        L = extents[a]
        i = (np.arange(0, L, out_stride[a], dtype=np.int64))[:, None]
        per_axis.append(_axis_slots(np, i, L, kernel[a], dilation[a], gna[a], causal[a]))
    flat, valid, rel = _combine(np, per_axis, extents, kernel, ())
    return (
        np.ascontiguousarray(flat, dtype=np.int32),
        np.ascontiguousarray(valid),
        np.ascontiguousarray(rel, dtype=np.int32),
    )


def _varlen_tables(extents, p: NAParams, varlen):
    """Tables for per-sample extents (MLX arithmetic; [B, O, KK] each) and row validity."""
    B = varlen.shape[0]
    vl = varlen.astype(mx.int32)
    per_axis = []
    row_ok = None
    for a in range(p.rank):
        L = vl[:, a].reshape(B, 1, 1)
        i = mx.arange(0, extents[a], p.out_stride[a], dtype=mx.int32).reshape(1, -1, 1)
        pos, val, rel = _axis_slots(mx, i, L, p.kernel[a], p.dilation[a], p.gna_stride[a],
                                    p.causal[a])
        per_axis.append((pos, val, rel))
        ok = (i < L)  # [B, O_a, 1]
        shape = [B] + [1] * p.rank
        shape[1 + a] = ok.shape[1]
        ok = ok.reshape(shape)
        row_ok = ok if row_ok is None else (row_ok & ok)
    flat, valid, rel = _combine(mx, per_axis, extents, p.kernel, (B,))
    row_ok = mx.broadcast_to(row_ok, [B] + [(-(-x // s)) for x, s in zip(extents, p.out_stride)])
    return flat, valid, rel, row_ok.reshape(B, -1)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _acc_dtype(dtype):
    return mx.float64 if dtype == mx.float64 else mx.float32


def _spatial(x, rank):
    return tuple(x.shape[1:1 + rank])


def _select_rows(q, p: NAParams):
    """q [B,*X,H,D] -> rows at multiples of out_stride, flattened: [B,O,H,D]."""
    if any(s != 1 for s in p.out_stride):
        idx = (slice(None),) + tuple(slice(None, None, s) for s in p.out_stride)
        q = q[idx]
    B = q.shape[0]
    return q.reshape(B, -1, q.shape[-2], q.shape[-1])


def _gather(x, flat, varlen_mode: bool, acc):
    """x [B,*X,Hkv,D]; flat [O,KK] (static) or [B,O,KK] -> [B,Hkv,O,KK,D] in acc.

    Heads-first, so the batched matmuls below read the gathered tensor as is
    (the transpose for QK is a free stride swap of the last two axes).
    """
    B = x.shape[0]
    Hkv, D = x.shape[-2], x.shape[-1]
    xt = x.reshape(B, -1, Hkv, D).transpose(0, 2, 1, 3).astype(acc)    # [B,Hkv,N,D]
    if not varlen_mode:
        return mx.take(xt, flat, axis=2)
    N = xt.shape[2]
    base = (mx.arange(B * Hkv, dtype=mx.int32) * N).reshape(B, Hkv, 1, 1)
    idx = flat.reshape(B, 1, flat.shape[1], flat.shape[2]) + base         # [B,Hkv,O,KK]
    return mx.take(xt.reshape(B * Hkv * N, D), idx.reshape(-1), axis=0).reshape(
        B, Hkv, flat.shape[1], flat.shape[2], D)


def _tables(p: NAParams, extents, varlen):
    if varlen is None:
        flat, valid, rel = _static_tables(
            tuple(int(e) for e in extents), tuple(p.kernel), tuple(p.dilation),
            tuple(p.gna_stride), tuple(bool(c) for c in p.causal), tuple(p.out_stride))
        return mx.array(flat), mx.array(valid), mx.array(rel), None
    return _varlen_tables(extents, p, varlen)


def _logits(q, k, p: NAParams, flat, valid, rel, rpb, varlen_mode, acc):
    """Masked, scaled logits [B,Hkv,O,G,KK] in acc dtype, plus q rows [B,Hkv,O,G,D]."""
    B = q.shape[0]
    H, D = q.shape[-2], q.shape[-1]
    Hkv = k.shape[-2]
    G = H // Hkv
    qo = _select_rows(q, p).astype(acc)
    O = qo.shape[1]
    qg = qo.reshape(B, O, Hkv, G, D).transpose(0, 2, 1, 3, 4)          # [B,Hkv,O,G,D]
    kg = _gather(k, flat, varlen_mode, acc)                             # [B,Hkv,O,KK,D]
    logits = (qg @ kg.swapaxes(-1, -2)) * p.scale                       # [B,Hkv,O,G,KK]
    KK = logits.shape[-1]
    if rpb is not None:
        rf = rpb.astype(acc).reshape(H, -1)
        if not varlen_mode:
            bias = mx.take(rf, rel, axis=1)                              # [H,O,KK]
            bias = bias.reshape(Hkv, G, O, KK).transpose(0, 2, 1, 3)[None]
        else:
            bias = mx.take(rf, rel.reshape(-1), axis=1).reshape(Hkv, G, B, O, KK)
            bias = bias.transpose(2, 0, 3, 1, 4)
        logits = logits + bias
    if not varlen_mode:
        vmask = valid.reshape(1, 1, O, 1, KK)
    else:
        vmask = valid.reshape(B, 1, O, 1, KK)
    logits = mx.where(vmask, logits, mx.array(-mx.inf, dtype=acc))
    return logits, qg, vmask


def _out_shape(x, p: NAParams, last):
    extents = _spatial(x, p.rank)
    return (x.shape[0],) + p.out_extent(extents) + tuple(last)


# --------------------------------------------------------------------------
# Tier interface
# --------------------------------------------------------------------------


def na_fused(q, k, v, p: NAParams, rpb=None, extra_k=None, extra_v=None, varlen=None):
    acc = _acc_dtype(q.dtype)
    extents = _spatial(q, p.rank)
    varlen_mode = varlen is not None
    flat, valid, rel, row_ok = _tables(p, extents, varlen)
    B = q.shape[0]
    H = q.shape[-2]
    Dv = v.shape[-1]
    logits, qg, _ = _logits(q, k, p, flat, valid, rel, rpb, varlen_mode, acc)
    Hkv, O, G, KK = logits.shape[1], logits.shape[2], logits.shape[3], logits.shape[4]
    if extra_k is not None:
        ek = extra_k.astype(acc).transpose(0, 2, 3, 1)[:, :, None]      # [B,Hkv,1,D,N]
        le = (qg @ ek) * p.scale                                        # [B,Hkv,O,G,N]
        logits = mx.concatenate([logits, le], axis=-1)
    lse = mx.logsumexp(logits, axis=-1)                                 # [B,Hkv,O,G]
    probs = mx.softmax(logits, axis=-1)
    vg = _gather(v, flat, varlen_mode, acc)                             # [B,Hkv,O,KK,Dv]
    out = probs[..., :KK] @ vg                                          # [B,Hkv,O,G,Dv]
    if extra_v is not None:
        ev = extra_v.astype(acc).transpose(0, 2, 1, 3)[:, :, None]      # [B,Hkv,1,N,Dv]
        out = out + probs[..., KK:] @ ev
    out = out.transpose(0, 2, 1, 3, 4).reshape(B, O, H, Dv)
    lse = lse.transpose(0, 2, 1, 3).reshape(B, O, H)
    if varlen_mode:
        ok = row_ok.reshape(B, O, 1)
        out = mx.where(ok[..., None], out, mx.array(0, dtype=acc))
        lse = mx.where(ok, lse, mx.array(-mx.inf, dtype=acc))
    out = out.reshape(_out_shape(q, p, (H, Dv))).astype(q.dtype)
    lse_dtype = mx.float64 if acc == mx.float64 else mx.float32
    lse = lse.reshape(_out_shape(q, p, (H,))).astype(lse_dtype)
    return out, lse


def na_qk(q, k, p: NAParams, rpb=None):
    acc = _acc_dtype(q.dtype)
    extents = _spatial(q, p.rank)
    flat, valid, rel, _ = _tables(p, extents, None)
    B, H = q.shape[0], q.shape[-2]
    logits, _, _ = _logits(q, k, p, flat, valid, rel, rpb, False, acc)
    O, KK = logits.shape[2], logits.shape[-1]
    logits = logits.transpose(0, 2, 1, 3, 4).reshape(B, O, H, KK)
    return logits.reshape(_out_shape(q, p, (H, KK))).astype(q.dtype)


def na_av(attn, v, p: NAParams):
    acc = mx.float64 if mx.float64 in (v.dtype, attn.dtype) else mx.float32
    extents = _spatial(v, p.rank)
    flat, valid, _, _ = _tables(p, extents, None)
    B = attn.shape[0]
    H, KK = attn.shape[-2], attn.shape[-1]
    Hkv, Dv = v.shape[-2], v.shape[-1]
    G = H // Hkv
    a = attn.reshape(B, -1, Hkv, G, KK).astype(acc).transpose(0, 2, 1, 3, 4)   # [B,Hkv,O,G,KK]
    O = a.shape[2]
    a = mx.where(valid.reshape(1, 1, O, 1, KK), a, mx.array(0, dtype=acc))
    vg = _gather(v, flat, False, acc)                                   # [B,Hkv,O,KK,Dv]
    out = (a @ vg).transpose(0, 2, 1, 3, 4).reshape(B, O, H, Dv)
    return out.reshape(_out_shape(v, p, (H, Dv))).astype(v.dtype)


__all__ = ["is_available", "supports", "na_fused", "na_qk", "na_av"]
