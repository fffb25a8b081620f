"""Name kept from natten-mlx 0.3 (its Metal-kernel module).

On Linux there is no Metal; this re-exports natten_mlx.extras.allin1.functional,
whose natten1dav is the 1-D op (natten-mlx's dispatched to the 2-D kernel).
"""

from .functional import natten1dav, natten1dqkrpb, natten2dav, natten2dqkrpb  # noqa: F401

__all__ = ["natten1dqkrpb", "natten1dav", "natten2dqkrpb", "natten2dav"]
