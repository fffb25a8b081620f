"""natten-mlx's ``fast_metal`` backend module name.

Metal does not exist on Linux; here the name selects the JIT-kernel tier,
CUDA C kernels run through ``mx.fast.cuda_kernel`` on MLX's CUDA device
(``natten_mlx._core.cuda``).  ``natten_mlx.has_metal()`` stays False.
"""

from __future__ import annotations

from natten_mlx._core import ops


def is_available() -> bool:
    """True iff the CUDA-kernel tier can run in this process."""
    return ops.tier_available("fast_metal")


def tier():
    """The CUDA-kernel tier module, or None."""
    return ops.tier_module("fast_metal")
