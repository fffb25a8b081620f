"""Small helpers shared by the natten_mlx tests (data, conversion, tolerances)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

# Tolerances against the float64 oracle, per input dtype (atol, rtol).
TOL = {
    mx.float64: (1e-7, 1e-7),    # MLX CPU exp is ~1e-8 relative even in f64
    mx.float32: (2e-5, 2e-5),
    mx.float16: (1.2e-2, 1.2e-2),
    mx.bfloat16: (6e-2, 6e-2),
}


def to_np(x):
    if x is None:
        return None
    if x.dtype == mx.bfloat16:
        x = x.astype(mx.float32)
    return np.array(x).astype(np.float64)


def rand(rng, shape, dtype=mx.float32, scale=1.0):
    """Random array; returns (mx array in dtype, float64 numpy of the same values)."""
    a = mx.array((rng.standard_normal(shape) * scale).astype(np.float64)).astype(dtype)
    return a, to_np(a)


def assert_close(got, want, dtype=mx.float32, what=""):
    atol, rtol = TOL[dtype]
    g = to_np(got) if isinstance(got, mx.array) else np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, f"{what}: shape {g.shape} vs {w.shape}"
    ginf, winf = np.isinf(g), np.isinf(w)
    assert (ginf == winf).all(), f"{what}: -inf pattern differs"
    if ginf.any():
        assert (g[ginf] == w[winf]).all(), f"{what}: inf signs differ"
    gf = np.where(ginf, 0.0, g)
    wf = np.where(winf, 0.0, w)
    assert not np.isnan(gf).any(), f"{what}: NaN"
    err = np.abs(gf - wf)
    bound = atol + rtol * np.abs(wf)
    assert (err <= bound).all(), f"{what}: max err {err.max():.3e} (worst ratio {(err / bound).max():.2f})"
