"""Independent brute-force oracle for neighborhood attention (numpy, float64).

Written from first principles, differently from natten_mlx._core.pure and from
the C window rule: per axis the neighbour set of a query is derived with
upstream NATTEN's centre-clamp formulation (the window centre is the
query -- or its GNA stride-group leader -- clamped into [wl, L_g - 1 - wr]
inside its dilation group), then every output row builds an explicit
dense mask over all keys and a dense softmax.  Loops over output rows; keep
shapes small.

Public API (every array argument may be a numpy array or anything
``np.asarray`` accepts, e.g. an ``mx.array``):

    axis_slots(L, K, d=1, gna=1, causal=False) -> list over queries of K (pos, valid)
    oracle_qk(q, k, kernel, dilation=1, out_stride=1, gna_stride=1, causal=False,
              scale=None, rpb=None) -> logits [B,*O,H,KK] (masked = -inf)
    oracle_av(attn, v, kernel, dilation=1, out_stride=1, gna_stride=1, causal=False)
              -> out [B,*O,H,D]
    oracle_na(q, k, v, kernel, dilation=1, out_stride=1, gna_stride=1, causal=False,
              scale=None, rpb=None, extra_k=None, extra_v=None, varlen=None)
              -> (out [B,*O,H,Dv], lse [B,*O,H])

Per-axis parameters accept an int/bool or a tuple of length rank.  Layouts
are heads-last: q [B,*X,H,D], k/v [B,*X,H_kv,D] (query head h uses kv head
h // (H/H_kv)), rpb [H, 2K-1 per axis], extra_k/extra_v [B,N,H_kv,D],
varlen [B, rank] per-sample extents (outside the block: out 0, lse -inf).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["axis_slots", "neighbour_sets", "oracle_qk", "oracle_av", "oracle_na"]


def _tup(x, rank):
    if isinstance(x, (tuple, list)):
        assert len(x) == rank
        return tuple(x)
    return (x,) * rank


def _np(x):
    if x is None:
        return None
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        import mlx.core as mx  # bf16 cannot go to numpy directly

        return np.asarray(x.astype(mx.float32), dtype=np.float64)


def axis_slots(L, K, d=1, gna=1, causal=False):
    """For every query i in [0, L): a list of K (key position, valid) slots."""
    res = []
    wl = K // 2
    wr = K // 2 + (K % 2) - 1
    for i in range(L):
        g = i % d                       # dilation group
        j = i // d                      # index inside the group
        Lg = len(range(g, L, d))        # members of the group
        grp = j // gna                  # GNA stride group
        if causal:
            leader = min(grp * gna + gna - 1, Lg - 1)
            slots = []
            for kk in range(K):
                m = leader - (K - 1) + kk           # group-local member index
                ok = 0 <= m <= j
                slots.append((g + m * d, ok))
        else:
            leader = min(grp * gna + gna // 2, Lg - 1)
            centre = min(max(leader, wl), Lg - 1 - wr)
            lo = centre - wl
            slots = [(g + (lo + kk) * d, True) for kk in range(K)]
            assert lo >= 0 and lo + K - 1 <= Lg - 1
        res.append(slots)
    return res


def neighbour_sets(L, K, d=1, gna=1, causal=False):
    """Sorted valid key positions of every query (for readable checks)."""
    return [sorted(pos for pos, ok in s if ok) for s in axis_slots(L, K, d, gna, causal)]


def _geometry(extents, kernel, dilation, out_stride, gna_stride, causal):
    rank = len(extents)
    kernel = _tup(kernel, rank)
    dilation = _tup(dilation, rank)
    out_stride = _tup(out_stride, rank)
    gna_stride = _tup(gna_stride, rank)
    causal = _tup(causal, rank)
    tabs = [axis_slots(extents[a], kernel[a], dilation[a], gna_stride[a], bool(causal[a]))
            for a in range(rank)]
    rows = [list(range(0, extents[a], out_stride[a])) for a in range(rank)]
    return kernel, dilation, tabs, rows


def _slots_of(tabs, qpos, kernel, dilation):
    """Flattened (key multi-index, valid, rpb multi-index) of one query."""
    per_axis = []
    for a, i in enumerate(qpos):
        per_axis.append([(pos, ok, (pos - i) // dilation[a] + kernel[a] - 1)
                         for pos, ok in tabs[a][i]])
    out = []
    for combo in itertools.product(*per_axis):
        key = tuple(c[0] for c in combo)
        ok = all(c[1] for c in combo)
        rel = tuple(c[2] for c in combo)
        out.append((key, ok, rel))
    return out


def oracle_qk(q, k, kernel, dilation=1, out_stride=1, gna_stride=1, causal=False,
              scale=None, rpb=None):
    q, k, rpb = _np(q), _np(k), _np(rpb)
    rank = q.ndim - 3
    extents = q.shape[1:1 + rank]
    B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
    G = H // k.shape[-2]
    scale = D ** -0.5 if scale is None else float(scale)
    kernel, dilation, tabs, rows = _geometry(extents, kernel, dilation, out_stride,
                                             gna_stride, causal)
    KK = int(np.prod(kernel))
    out = np.full((B,) + tuple(len(r) for r in rows) + (H, KK), -np.inf)
    for oidx in itertools.product(*[range(len(r)) for r in rows]):
        qpos = tuple(rows[a][oidx[a]] for a in range(rank))
        qv = q[(slice(None),) + qpos]                   # [B,H,D]
        for n, (key, ok, rel) in enumerate(_slots_of(tabs, qpos, kernel, dilation)):
            if not ok:
                continue
            kv = k[(slice(None),) + key]                # [B,Hkv,D]
            kv = np.repeat(kv, G, axis=1)
            val = (qv * kv).sum(-1) * scale             # [B,H]
            if rpb is not None:
                val = val + rpb[(slice(None),) + rel][None]
            out[(slice(None),) + oidx + (slice(None), n)] = val
    return out


def oracle_av(attn, v, kernel, dilation=1, out_stride=1, gna_stride=1, causal=False):
    attn, v = _np(attn), _np(v)
    rank = v.ndim - 3
    extents = v.shape[1:1 + rank]
    B, H = attn.shape[0], attn.shape[-2]
    G = H // v.shape[-2]
    kernel, dilation, tabs, rows = _geometry(extents, kernel, dilation, out_stride,
                                             gna_stride, causal)
    out = np.zeros((B,) + tuple(len(r) for r in rows) + (H, v.shape[-1]))
    for oidx in itertools.product(*[range(len(r)) for r in rows]):
        qpos = tuple(rows[a][oidx[a]] for a in range(rank))
        acc = np.zeros((B, H, v.shape[-1]))
        for n, (key, ok, _) in enumerate(_slots_of(tabs, qpos, kernel, dilation)):
            if not ok:
                continue
            w = attn[(slice(None),) + oidx + (slice(None), n)]      # [B,H]
            acc += w[..., None] * np.repeat(v[(slice(None),) + key], G, axis=1)
        out[(slice(None),) + oidx] = acc
    return out


def _dense_na(q, k, v, kernel, dilation, out_stride, gna_stride, causal, scale, rpb,
              extra_k, extra_v):
    """Dense attention with an explicit mask over all keys (+ extra tokens)."""
    rank = q.ndim - 3
    extents = q.shape[1:1 + rank]
    B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
    Hkv = k.shape[-2]
    G = H // Hkv
    N = int(np.prod(extents))
    kernel, dilation, tabs, rows = _geometry(extents, kernel, dilation, out_stride,
                                             gna_stride, causal)
    kf = np.repeat(k.reshape(B, N, Hkv, -1), G, axis=2)           # [B,N,H,D]
    vf = np.repeat(v.reshape(B, N, Hkv, -1), G, axis=2)
    if extra_k is not None:
        ekf = np.repeat(extra_k, G, axis=2)
        evf = np.repeat(extra_v, G, axis=2)
    Osh = tuple(len(r) for r in rows)
    out = np.zeros((B,) + Osh + (H, v.shape[-1]))
    lse = np.zeros((B,) + Osh + (H,))
    for oidx in itertools.product(*[range(len(r)) for r in rows]):
        qpos = tuple(rows[a][oidx[a]] for a in range(rank))
        qv = q[(slice(None),) + qpos]                               # [B,H,D]
        mask = np.zeros(N, dtype=bool)
        bias = np.zeros((H, N))
        for key, ok, rel in _slots_of(tabs, qpos, kernel, dilation):
            if ok:
                flat = int(np.ravel_multi_index(key, extents))
                assert not mask[flat], "a key appears twice in one neighbourhood"
                mask[flat] = True
                if rpb is not None:
                    bias[:, flat] = rpb[(slice(None),) + rel]
        s = np.einsum("bhd,bnhd->bhn", qv, kf) * scale + bias[None]
        s = np.where(mask[None, None], s, -np.inf)
        vals = vf
        if extra_k is not None:
            se = np.einsum("bhd,bnhd->bhn", qv, ekf) * scale
            s = np.concatenate([s, se], axis=-1)
            vals = np.concatenate([vf, evf], axis=1)
        m = s.max(-1, keepdims=True)
        e = np.exp(s - m)
        z = e.sum(-1, keepdims=True)
        out[(slice(None),) + oidx] = np.einsum("bhn,bnhd->bhd", e / z, vals)
        lse[(slice(None),) + oidx] = (np.log(z) + m)[..., 0]
    return out, lse


def oracle_na(q, k, v, kernel, dilation=1, out_stride=1, gna_stride=1, causal=False,
              scale=None, rpb=None, extra_k=None, extra_v=None, varlen=None):
    q, k, v = _np(q), _np(k), _np(v)
    rpb, extra_k, extra_v = _np(rpb), _np(extra_k), _np(extra_v)
    rank = q.ndim - 3
    D = q.shape[-1]
    scale = D ** -0.5 if scale is None else float(scale)
    if varlen is None:
        return _dense_na(q, k, v, kernel, dilation, out_stride, gna_stride, causal, scale,
                         rpb, extra_k, extra_v)
    varlen = np.asarray(varlen).reshape(q.shape[0], rank).astype(np.int64)
    extents = q.shape[1:1 + rank]
    ostr = _tup(out_stride, rank)
    Osh = tuple(math.ceil(e / s) for e, s in zip(extents, ostr))
    B, H = q.shape[0], q.shape[-2]
    out = np.zeros((B,) + Osh + (H, v.shape[-1]))
    lse = np.full((B,) + Osh + (H,), -np.inf)
    for b in range(B):
        blk = (slice(b, b + 1),) + tuple(slice(0, int(e)) for e in varlen[b])
        ek = None if extra_k is None else extra_k[b:b + 1]
        ev = None if extra_v is None else extra_v[b:b + 1]
        o, l = _dense_na(q[blk], k[blk], v[blk], kernel, dilation, out_stride, gna_stride,
                         causal, scale, rpb, ek, ev)
        oblk = (slice(b, b + 1),) + tuple(slice(0, s) for s in o.shape[1:1 + rank])
        out[oblk] = o
        lse[oblk] = l
    return out, lse
