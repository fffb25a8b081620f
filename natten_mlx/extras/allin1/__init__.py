"""All-In-One (mir-aidj/all-in-one) DiNAT ops: fused QK+RPB and AV, spatial-first.

See _ops.py for the contract.  Heads-first variants with the names All-In-One
imports from NATTEN (natten1dqkrpb, natten1dav, natten2dqkrpb, natten2dav) live
in natten_mlx.extras.allin1.functional.
"""

from ._ops import na1d_av_fused, na1d_qk_rpb, na2d_av_fused, na2d_qk_rpb

__all__ = ["na1d_qk_rpb", "na1d_av_fused", "na2d_qk_rpb", "na2d_av_fused"]
