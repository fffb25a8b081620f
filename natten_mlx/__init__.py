"""natten-mlx: neighborhood attention for MLX (1D/2D/3D), on Linux.

A drop-in re-implementation of the natten-mlx 0.3 public API.  Tiers: the
compiled C core (``nanobind``), CUDA kernels (``fast_metal`` name, on MLX's
CUDA device) and MLX ops (``pure``); see ``get_support_matrix()``.
"""

__version__ = "0.3.3"

from natten_mlx._core import fast_metal, nanobind, ops  # noqa: E402,F401
from natten_mlx._core.ops import get_backend, has_metal, has_nanobind, set_backend  # noqa: E402
from natten_mlx.functional import (  # noqa: E402
    na1d,
    na1d_av,
    na1d_qk,
    na1d_varlen,
    na2d,
    na2d_av,
    na2d_qk,
    na2d_varlen,
    na3d,
    na3d_av,
    na3d_qk,
    na3d_varlen,
)
from natten_mlx.merge import merge_attentions  # noqa: E402
from natten_mlx.nn import (  # noqa: E402
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
)
from natten_mlx.support_matrix import get_support_matrix  # noqa: E402

__all__ = [
    "__version__",
    "na1d",
    "na2d",
    "na3d",
    "na1d_varlen",
    "na2d_varlen",
    "na3d_varlen",
    "na1d_qk",
    "na2d_qk",
    "na3d_qk",
    "na1d_av",
    "na2d_av",
    "na3d_av",
    "merge_attentions",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "has_metal",
    "has_nanobind",
    "get_backend",
    "set_backend",
    "get_support_matrix",
]
