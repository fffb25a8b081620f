"""Every op x rank through the dispatcher (tier interface, NAParams) vs the oracle.

Runs once per available tier (``tier`` fixture): border-heavy extents, uneven
dilation groups, causal per axis, GQA ratios, even and non-square kernels,
output stride, GNA stride, RPB, extra KV tokens and varlen.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from natten_mlx._core import ops
from natten_mlx._core.params import NAParams
from nautil import assert_close, rand
from oracle import oracle_av, oracle_na, oracle_qk

# (extent, kernel, dilation, out_stride, gna_stride, causal)
CASES = [
    ((1,), (1,), (1,), (1,), (1,), (False,)),
    ((8,), (3,), (1,), (1,), (1,), (False,)),
    ((8,), (8,), (1,), (1,), (1,), (True,)),
    ((7,), (3,), (2,), (1,), (1,), (False,)),          # uneven dilation groups
    ((13,), (3,), (4,), (1,), (1,), (False,)),
    ((9,), (4,), (2,), (1,), (1,), (False,)),          # even K + dilation
    ((8,), (2,), (1,), (2,), (1,), (False,)),          # even K + stride
    ((10,), (5,), (1,), (3,), (1,), (True,)),
    ((11,), (3,), (3,), (2,), (1,), (True,)),
    ((8,), (3,), (1,), (1,), (3,), (False,)),          # GNA blocked, clamped tail
    ((8,), (4,), (1,), (1,), (2,), (True,)),           # GNA causal
    ((12,), (4,), (2,), (1,), (3,), (False,)),
    ((7, 6), (3, 4), (2, 1), (2, 3), (1, 1), (True, False)),
    ((5, 5), (5, 3), (1, 1), (1, 1), (1, 1), (False, False)),
    ((6, 9), (2, 3), (3, 1), (1, 2), (1, 1), (False, True)),
    ((9, 7), (3, 3), (2, 2), (1, 1), (1, 1), (True, True)),
    ((8, 6), (4, 3), (1, 1), (1, 1), (2, 3), (False, True)),
    ((4, 5, 6), (3, 2, 3), (1, 2, 2), (2, 1, 3), (1, 1, 1), (True, False, True)),
    ((3, 4, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (False, False, False)),
    ((5, 3, 4), (2, 3, 2), (2, 1, 1), (1, 1, 2), (2, 1, 1), (False, True, False)),
]
HEADS = [(2, 2), (4, 2), (3, 1)]


def _ids(c):
    return "X{}K{}d{}s{}g{}c{}".format(*["x".join(str(int(v)) for v in t) for t in c])


def _p(case, scale):
    X, K, d, s, g, c = case
    return NAParams(len(X), K, d, s, g, c, scale)


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"H{h[0]}kv{h[1]}")
def test_fused_qk_av(tier, case, heads, rng):
    X, K, d, s, g, c = case
    H, Hkv = heads
    B, D = 2, 5
    p = _p(case, 0.61)
    q, qn = rand(rng, (B,) + X + (H, D))
    k, kn = rand(rng, (B,) + X + (Hkv, D))
    v, vn = rand(rng, (B,) + X + (Hkv, D))
    out, lse = ops.na_fused(q, k, v, p)
    oo, ol = oracle_na(qn, kn, vn, K, d, s, g, c, scale=0.61)
    assert out.dtype == mx.float32 and lse.dtype == mx.float32
    assert_close(out, oo, what="out")
    assert_close(lse, ol, what="lse")
    logits = ops.na_qk(q, k, p)
    assert_close(logits, oracle_qk(qn, kn, K, d, s, g, c, scale=0.61), what="qk")
    attn, an = rand(rng, tuple(logits.shape))
    assert_close(ops.na_av(attn, v, p), oracle_av(an, vn, K, d, s, g, c), what="av")


@pytest.mark.parametrize("case", [c for c in CASES if all(x == 1 for x in c[4])],
                         ids=[_ids(c) for c in CASES if all(x == 1 for x in c[4])])
def test_rpb_and_extra_kv(tier, case, rng):
    X, K, d, s, g, c = case
    H, Hkv, B, D, N = 4, 2, 2, 3, 3
    p = _p(case, 0.5)
    q, qn = rand(rng, (B,) + X + (H, D))
    k, kn = rand(rng, (B,) + X + (Hkv, D))
    v, vn = rand(rng, (B,) + X + (Hkv, D))
    r, rn = rand(rng, (H,) + tuple(2 * kk - 1 for kk in K))
    ek, ekn = rand(rng, (B, N, Hkv, D))
    ev, evn = rand(rng, (B, N, Hkv, D))
    out, lse = ops.na_fused(q, k, v, p, rpb=r, extra_k=ek, extra_v=ev)
    oo, ol = oracle_na(qn, kn, vn, K, d, s, g, c, 0.5, rpb=rn, extra_k=ekn, extra_v=evn)
    assert_close(out, oo, what="out")
    assert_close(lse, ol, what="lse")
    out, lse = ops.na_fused(q, k, v, p, rpb=r)
    oo, ol = oracle_na(qn, kn, vn, K, d, s, g, c, 0.5, rpb=rn)
    assert_close(out, oo, what="out rpb")
    assert_close(ops.na_qk(q, k, p, rpb=r), oracle_qk(qn, kn, K, d, s, g, c, 0.5, rn),
                 what="qk rpb")


VARLEN = [
    ((9,), (3,), (2,), (1,), (1,), (False,), [[9], [6]]),
    ((12,), (4,), (1,), (2,), (1,), (True,), [[5], [12]]),
    ((7, 8), (3, 3), (2, 1), (1, 1), (1, 1), (False, False), [[7, 8], [6, 5]]),
    ((6, 7), (3, 2), (1, 1), (2, 1), (1, 2), (True, False), [[3, 7], [6, 2]]),
    ((4, 5, 6), (3, 3, 2), (1, 1, 2), (1, 1, 1), (1, 1, 1), (False, False, False),
     [[4, 5, 6], [3, 4, 4]]),
]


@pytest.mark.parametrize("case", VARLEN, ids=[_ids(c[:6]) for c in VARLEN])
def test_varlen_tier(tier, case, rng):
    X, K, d, s, g, c, sizes = case
    H, Hkv, B, D = 2, 1, 2, 4
    p = _p(case[:6], 0.4)
    q, qn = rand(rng, (B,) + X + (H, D))
    k, kn = rand(rng, (B,) + X + (Hkv, D))
    v, vn = rand(rng, (B,) + X + (Hkv, D))
    vl = mx.array(np.array(sizes, dtype=np.int32))
    rpb = None
    rn = None
    if all(x == 1 for x in g):
        rpb, rn = rand(rng, (H,) + tuple(2 * kk - 1 for kk in K))
    out, lse = ops.na_fused(q, k, v, p, rpb=rpb, varlen=vl)
    oo, ol = oracle_na(qn, kn, vn, K, d, s, g, c, 0.4, rpb=rn, varlen=sizes)
    assert_close(out, oo, what="out")
    assert_close(lse, ol, what="lse")


def test_tables_cover_whole_problem_sizes(tier, rng):
    """Many 1D (L, K, d) combinations, all kernel sizes, vs the oracle (qk)."""
    for L in (1, 2, 3, 5, 8, 11):
        for K in range(1, L + 1):
            for d in range(1, L // K + 1):
                for causal in (False, True):
                    p = NAParams(1, (K,), (d,), (1,), (1,), (causal,), 1.0)
                    q, qn = rand(rng, (1, L, 1, 2))
                    k, kn = rand(rng, (1, L, 1, 2))
                    assert_close(ops.na_qk(q, k, p),
                                 oracle_qk(qn, kn, K, d, 1, 1, causal, 1.0),
                                 what=f"L{L}K{K}d{d}c{causal}")
    assert math.isfinite(1.0)
