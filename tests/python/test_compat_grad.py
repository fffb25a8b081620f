"""Gradients of the compat shims by central finite differences in float64 (CPU)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from natten_mlx.compat import v014, v015, v017, v020
from test_compat_support import fd_check


def _r(rng, *shape):
    return rng.standard_normal(shape)


# Ops with a softmax inside: MLX's float64 exp/softmax on the CPU are only about
# float32-accurate (~1e-8 relative), so the step is larger and the bound looser;
# a wrong gradient is still off by O(1).
FUSED = dict(eps=1e-3, atol=5e-4, rtol=1e-3)


@pytest.mark.parametrize("L,K,d", [(9, 3, 2), (7, 5, 1)])
def test_natten1dqkrpb_grad(tier, rng, L, K, d):
    fd_check(lambda q, k, r: v014.natten1dqkrpb(q, k, r, K, d),
             [_r(rng, 1, 2, L, 3), _r(rng, 1, 2, L, 3), _r(rng, 2, 2 * K - 1)], rng)


def test_natten1dav_grad(tier, rng):
    fd_check(lambda a, v: v014.natten1dav(a, v, 3, 2), [_r(rng, 1, 2, 9, 3), _r(rng, 1, 2, 9, 4)], rng)


def test_natten2d_grads(tier, rng):
    fd_check(lambda q, k, r: v014.natten2dqkrpb(q, k, r, 3, (2, 1)),
             [_r(rng, 1, 2, 6, 5, 3), _r(rng, 1, 2, 6, 5, 3), _r(rng, 2, 5, 5)], rng)
    fd_check(lambda a, v: v014.natten2dav(a, v, 3, (1, 2)),
             [_r(rng, 1, 2, 5, 6, 9), _r(rng, 1, 2, 5, 6, 3)], rng)


def test_natten3dqkrpb_grad(tier, rng):
    fd_check(lambda q, k, r: v015.natten3dqkrpb(q, k, r, 3, 3, 1, 1),
             [_r(rng, 1, 1, 4, 3, 4, 2), _r(rng, 1, 1, 4, 3, 4, 2), _r(rng, 1, 5, 5, 5)], rng)


def test_v017_causal_layout_grads(tier, rng):
    # the causal slot roll (gather) must carry gradients back to the right keys
    fd_check(lambda q, k: v017.na1d_qk(q, k, 4, 2, is_causal=True),
             [_r(rng, 1, 2, 11, 3), _r(rng, 1, 2, 11, 3)], rng)
    fd_check(lambda a, v: v017.na2d_av(a, v, 3, 1, is_causal=(True, False)),
             [_r(rng, 1, 1, 5, 6, 9), _r(rng, 1, 1, 5, 6, 2)], rng)


def test_v015_additional_kv_grads(tier, rng):
    fd_check(lambda q, k, ak: v015.na1d_qk(q, k, 3, 1, additional_keys=ak),
             [_r(rng, 1, 2, 7, 3), _r(rng, 1, 2, 7, 3), _r(rng, 1, 2, 2, 3)], rng)
    fd_check(lambda a, v, av: v015.na1d_av(a, v, 3, 1, additional_values=av),
             [_r(rng, 1, 2, 7, 5), _r(rng, 1, 2, 7, 3), _r(rng, 1, 2, 2, 3)], rng)


def test_v017_fused_rpb_grad(tier, rng):
    fd_check(lambda q, k, v, r: v017.na2d(q, k, v, 3, (1, 2), rpb=r),
             [_r(rng, 1, 5, 6, 2, 3), _r(rng, 1, 5, 6, 2, 3), _r(rng, 1, 5, 6, 2, 3), _r(rng, 2, 5, 5)],
             rng, **FUSED)


@pytest.mark.parametrize("s,d,causal", [(2, 1, False), (3, 1, True), (2, 2, False)])
def test_v020_gna_grads(tier, rng, s, d, causal):
    fd_check(lambda q, k, v: v020.na1d(q, k, v, 3, stride=s, dilation=d, is_causal=causal),
             [_r(rng, 1, 9, 2, 3), _r(rng, 1, 9, 1, 3), _r(rng, 1, 9, 1, 3)], rng, **FUSED)


def test_v020_extra_kv_and_lse_grads(tier, rng):
    def f(q, k, v, ak, av):
        out, lse = v020.na1d(q, k, v, 3, stride=3, additional_keys=ak, additional_values=av,
                             return_lse=True)
        return out + lse[..., None]

    fd_check(f, [_r(rng, 1, 8, 2, 3), _r(rng, 1, 8, 2, 3), _r(rng, 1, 8, 2, 3),
                 _r(rng, 1, 2, 2, 3), _r(rng, 1, 2, 2, 3)], rng, **FUSED)


def test_module_rpb_receives_gradient(tier, rng):
    import mlx.nn as nn

    m = v014.NeighborhoodAttention1D(dim=8, num_heads=2, kernel_size=3, dilation=2)
    m.eval()
    x = mx.array(rng.standard_normal((1, 9, 8)).astype(np.float32))
    _, g = nn.value_and_grad(m, lambda x: mx.sum(m(x) ** 2))(x)
    assert g["rpb"].shape == (2, 5)
    assert float(mx.abs(g["rpb"]).sum()) > 0
