"""Helpers for the compat / extras tests (no tests here).

- heads-first <-> heads-last conversions for the oracle (which is heads-last);
- the upstream NATTEN 0.17 unfused causal slot layout, written from
  upstream-natten.md 6.2 (window [max(j-K+1, 0), j+1) in dilation-group
  coordinates, valid slots first) independently of the code under test;
- a finite-difference gradient check in float64.
"""

from __future__ import annotations

import itertools

import mlx.core as mx
import numpy as np
from nautil import to_np as npy  # float64 copy of an mx array (bf16 via f32)


def hl(x):
    """numpy heads-first [B, H, *X, C] -> heads-last [B, *X, H, C]."""
    return np.moveaxis(np.asarray(x), 1, -2)


def hf(x):
    """numpy heads-last -> heads-first."""
    return np.moveaxis(np.asarray(x), -2, 1)




def upstream_axis_slots(L, K, d, causal):
    """Per query: K key positions (None = masked) in upstream's unfused slot order."""
    res = []
    for i in range(L):
        g, j = i % d, i // d
        n = len(range(g, L, d))
        if causal:
            start = max(j - K + 1, 0)
            slots = [g + (start + m) * d if start + m <= j else None for m in range(K)]
        else:
            centre = min(max(j, K // 2), n - 1 - (K // 2 + K % 2 - 1))
            start = centre - K // 2
            slots = [g + (start + m) * d for m in range(K)]
        res.append(slots)
    return res


def upstream_qk(q, k, kernel, dilation, causal, rpb=None):
    """Heads-first unscaled upstream logits [B, H, *X, KK] (numpy float64)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    rank = q.ndim - 3
    ext = q.shape[2 : 2 + rank]
    tabs = [upstream_axis_slots(ext[a], kernel[a], dilation[a], causal[a]) for a in range(rank)]
    KK = int(np.prod(kernel))
    out = np.full(q.shape[:-1] + (KK,), -np.inf)
    for pos in itertools.product(*[range(e) for e in ext]):
        combos = itertools.product(*[tabs[a][pos[a]] for a in range(rank)])
        for n, key in enumerate(combos):
            if any(c is None for c in key):
                continue
            val = (q[(slice(None), slice(None)) + pos] * k[(slice(None), slice(None)) + key]).sum(-1)
            if rpb is not None:
                rel = tuple((key[a] - pos[a]) // dilation[a] + kernel[a] - 1 for a in range(rank))
                val = val + np.asarray(rpb)[(slice(None),) + rel][None]
            out[(slice(None), slice(None)) + pos + (n,)] = val
    return out


def upstream_av(attn, v, kernel, dilation, causal):
    attn, v = np.asarray(attn, np.float64), np.asarray(v, np.float64)
    rank = v.ndim - 3
    ext = v.shape[2 : 2 + rank]
    tabs = [upstream_axis_slots(ext[a], kernel[a], dilation[a], causal[a]) for a in range(rank)]
    out = np.zeros(v.shape)
    for pos in itertools.product(*[range(e) for e in ext]):
        combos = itertools.product(*[tabs[a][pos[a]] for a in range(rank)])
        for n, key in enumerate(combos):
            if any(c is None for c in key):
                continue
            w = attn[(slice(None), slice(None)) + pos + (n,)]
            out[(slice(None), slice(None)) + pos] += w[..., None] * v[(slice(None), slice(None)) + key]
    return out


def fd_check(fn, args, rng, wrt=None, eps=1e-6, atol=1e-6, rtol=1e-5, samples=12):
    """Compare mx.grad of sum(fn(*args) * W) with central differences (float64).

    args: numpy float64 arrays.  Entries of fn's output that are +-inf (masked
    logits) are excluded from the loss.  `samples` random elements per argument.
    Runs on MLX's CPU device (float64 exists only there).
    """
    with mx.stream(mx.cpu):
        _fd_check(fn, args, rng, wrt, eps, atol, rtol, samples)


def _fd_check(fn, args, rng, wrt, eps, atol, rtol, samples):
    wrt = list(range(len(args))) if wrt is None else list(wrt)
    xs = [mx.array(a, dtype=mx.float64) for a in args]
    out0 = fn(*xs)
    W = mx.array(rng.standard_normal(out0.shape), dtype=mx.float64)
    finite = mx.array(np.isfinite(np.array(out0)))

    def loss(*a):
        o = fn(*a)
        return mx.sum(mx.where(finite, o, 0.0) * W)

    grads = mx.grad(loss, argnums=wrt)(*xs)
    if len(wrt) == 1:
        grads = (grads,)
    for gi, ai in enumerate(wrt):
        g = np.array(grads[gi])
        base = args[ai].astype(np.float64)
        flat = rng.choice(base.size, size=min(samples, base.size), replace=False)
        for f in flat:
            idx = np.unravel_index(f, base.shape)
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            a_p = list(xs)
            a_m = list(xs)
            a_p[ai] = mx.array(plus, dtype=mx.float64)
            a_m[ai] = mx.array(minus, dtype=mx.float64)
            num = (loss(*a_p).item() - loss(*a_m).item()) / (2 * eps)
            assert abs(num - g[idx]) <= atol + rtol * abs(num), (
                f"arg {ai} at {idx}: finite difference {num:.10g} vs autodiff {g[idx]:.10g}"
            )
