"""natten-mlx's ``nanobind`` backend module name: on Linux, the compiled C tier.

``natten_mlx.nanobind`` is this module (natten-mlx exposes it in the package
namespace).  The implementation lives in ``natten_mlx._core.compiled``.
"""

from __future__ import annotations

from natten_mlx._core import ops


def is_available() -> bool:
    """True iff the compiled extension loaded."""
    return ops.has_nanobind()


def tier():
    """The compiled tier module, or None."""
    return ops.tier_module("nanobind")
