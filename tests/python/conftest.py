"""Shared pytest fixtures for the natten_mlx Python suite.

``tier`` parametrises a test over every tier that can run in this process:
``pure`` always, ``nanobind`` when the compiled extension
``natten_mlx._core._natten_ext`` imports, ``fast_metal`` when the CUDA tier
reports itself available.  The fixture selects the backend for the test and
restores the previous selection afterwards; an unsupported configuration
still falls back to the next tier, as in production.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # so tests can `import oracle`

# MLX on CUDA runs float32 matmuls (the nn modules' projections) in TF32 unless
# told otherwise, ~1e-3 relative error; the oracle comparisons here are for
# float32, so the suite asks for IEEE float32 as MLX's own test harness does.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx  # noqa: E402

from natten_mlx._core import ops  # noqa: E402


def available_tiers():
    tiers = ["pure"]
    if ops.has_nanobind() and ops.tier_available("nanobind"):
        tiers.append("nanobind")
    if ops.tier_available("fast_metal"):
        tiers.append("fast_metal")
    return tiers


TIERS = available_tiers()


@pytest.fixture(params=TIERS)
def tier(request):
    """Name of a tier; the backend is set to it for the duration of the test."""
    prev = ops.selected_backend()
    ops.set_backend(request.param)
    try:
        yield request.param
    finally:
        ops.set_backend(prev)


@pytest.fixture
def tier_module(tier):
    """The tier module itself (tier interface: na_fused / na_qk / na_av / supports)."""
    return ops.tier_module(tier)


@pytest.fixture(autouse=True)
def _restore_backend_and_seed():
    prev = ops.selected_backend()
    mx.random.seed(0)
    yield
    ops.set_backend(prev)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
