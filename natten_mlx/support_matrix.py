"""What each tier covers, truthfully for this machine (spec §9.3 shape)."""

from __future__ import annotations

from natten_mlx._core import ops


def _all(value, keys):
    return {k: value for k in keys}


_FWD = ("na1d", "na2d", "na3d", "split_qk_av")
_RANKS = ("na1d", "na2d", "na3d")


def get_support_matrix() -> dict:
    """A dict with exactly the keys ``pure``, ``fast_metal`` and ``nanobind``.

    On Linux ``nanobind`` is the compiled C tier on MLX's CPU device and
    ``fast_metal`` is the CUDA-kernel tier (``mx.fast.cuda_kernel``); ``pure``
    is MLX ops and runs anywhere.  ``available`` reports whether the tier can
    run in this process.
    """
    nb = ops.tier_available("nanobind")
    fm = ops.tier_available("fast_metal")
    return {
        "pure": {
            "available": True,
            "forward": _all(True, _FWD),
            "backward": _all(True, _FWD),
            "varlen": _all(True, _RANKS),
            "fusion": _all(False, _RANKS),
            "constraints": [],
        },
        "fast_metal": {
            "available": bool(fm),
            "forward": _all(True, _FWD),
            "backward": _all(True, _FWD),
            "varlen": _all(True, _RANKS),
            "fusion": _all(True, _RANKS),
            "constraints": [
                "On Linux this tier is CUDA C kernels run through mx.fast.cuda_kernel on "
                "MLX's CUDA device; Metal does not exist there.",
                "Arrays on the CPU device use the nanobind (C) tier or pure instead.",
                "Configurations a kernel does not cover fall back to the next tier (pure).",
            ],
        },
        "nanobind": {
            "available": bool(nb),
            "forward": _all(True, _FWD),
            "backward": _all(True, _FWD),
            "varlen": _all(True, _RANKS),
            "fusion": _all(True, _RANKS),
            "constraints": [
                "The compiled extension natten_mlx._core._natten_ext runs the C core "
                "(reference + SIMD kernels) as MLX primitives on the CPU device.",
                "Configurations the extension does not cover fall back to pure.",
            ],
        },
    }


__all__ = ["get_support_matrix"]
