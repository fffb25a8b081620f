"""Normalised problem parameters shared by every tier.

The public API validates user arguments (natten_mlx.utils.params) and turns
them into one NAParams; tiers receive nothing else.  Field meanings match the
C descriptor in include/natten.h.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class NAParams:
    rank: int                      # 1, 2 or 3 spatial axes
    kernel: Tuple[int, ...]        # per axis, 1 <= K <= extent (even allowed)
    dilation: Tuple[int, ...]      # per axis, d*K <= extent
    out_stride: Tuple[int, ...]    # natten-mlx `stride`: output rows at i*s
    gna_stride: Tuple[int, ...]    # upstream NATTEN >= 0.20 GNA stride (1 = none)
    causal: Tuple[bool, ...]       # per axis
    scale: float                   # already resolved (default D**-0.5 applied)

    def __hash__(self):
        # Cached: every call hashes its (usually reused) instance for the
        # compiled tier's per-problem cache (0.34 us a time otherwise).
        # dataclass keeps an explicit __hash__; eq still compares the fields.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.rank, self.kernel, self.dilation, self.out_stride, self.gna_stride,
                      self.causal, self.scale))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def kernel_volume(self) -> int:
        v = 1
        for k in self.kernel:
            v *= k
        return v

    def out_extent(self, extent) -> Tuple[int, ...]:
        return tuple(-(-int(x) // s) for x, s in zip(extent, self.out_stride))
