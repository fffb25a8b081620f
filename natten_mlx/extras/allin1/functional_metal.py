"""Name kept from natten-mlx 0.3 (its Metal-kernel module).

On Linux there is no Metal; this re-exports natten_mlx.extras.allin1.functional,
whose natten1dav is the 1-D op (natten-mlx's dispatched to the 2-D kernel).
"""

from .functional import (  # noqa: F401
    get_d3rm_fused_status,
    natten1dav,
    natten1dav_backward,
    natten1dqkrpb,
    natten1dqkrpb_backward,
    natten2d_qkv_fused,
    natten2dav,
    natten2dav_backward,
    natten2dqkrpb,
    natten2dqkrpb_backward,
)

__all__ = [
    "natten1dqkrpb", "natten1dav", "natten2dqkrpb", "natten2dav",
    "natten1dqkrpb_backward", "natten1dav_backward",
    "natten2dqkrpb_backward", "natten2dav_backward",
    "natten2d_qkv_fused", "get_d3rm_fused_status",
]
