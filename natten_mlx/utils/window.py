"""Window helpers in NATTEN's start/end/pb_start vocabulary (numpy).

``neighborhood_size`` is the number of neighbours on the left (K // 2).  The
window of query ``index`` is the K members of its dilation group starting at
``get_window_start``, slid inward at the borders so it always holds K keys;
for odd K this equals NATTEN 0.14's formula, and for even K it is upstream
NATTEN's rule (K/2 left, K/2 - 1 right) rather than natten-mlx's degenerate one.
"""

from __future__ import annotations

import numpy as np


def _group(index: int, length: int, dilation: int):
    r = index % dilation
    p = index // dilation
    n = (length - r + dilation - 1) // dilation
    return r, p, n


def get_window_start(index: int, length: int, kernel_size: int, neighborhood_size: int,
                     dilation: int = 1) -> int:
    """First key position of the (non-causal) window of query ``index``."""
    r, p, n = _group(int(index), int(length), int(dilation))
    first = max(0, min(p - int(neighborhood_size), n - int(kernel_size)))
    return first * int(dilation) + r


def get_window_end(start_index: int, length: int, kernel_size: int, dilation: int = 1) -> int:
    """One past the last key the window may reach: min(L, start + K*d)."""
    return min(int(length), int(start_index) + int(kernel_size) * int(dilation))


def get_pb_start(index: int, length: int, kernel_size: int, neighborhood_size: int,
                 dilation: int = 1) -> int:
    """Relative-position-bias index of slot 0: (start - index)/d + K - 1."""
    start = get_window_start(index, length, kernel_size, neighborhood_size, dilation)
    return (start - int(index)) // int(dilation) + int(kernel_size) - 1


def compute_window_start_end(query_positions, length: int, kernel_size: int, dilation: int = 1):
    """Vectorised starts and ends (numpy int32) for an array of query positions."""
    qp = np.asarray(query_positions, dtype=np.int64)
    d = int(dilation)
    r = qp % d
    p = qp // d
    n = (int(length) - r + d - 1) // d
    first = np.maximum(0, np.minimum(p - int(kernel_size) // 2, n - int(kernel_size)))
    starts = first * d + r
    ends = np.minimum(int(length), starts + int(kernel_size) * d)
    return starts.astype(np.int32), ends.astype(np.int32)


def compute_pb_start(query_positions, length: int, kernel_size: int, dilation: int = 1):
    """Vectorised RPB start indices (numpy int32)."""
    qp = np.asarray(query_positions, dtype=np.int64)
    starts, _ = compute_window_start_end(qp, length, kernel_size, dilation)
    pb = (starts.astype(np.int64) - qp) // int(dilation) + int(kernel_size) - 1
    return pb.astype(np.int32)


__all__ = [
    "get_window_start",
    "get_window_end",
    "get_pb_start",
    "compute_window_start_end",
    "compute_pb_start",
]
