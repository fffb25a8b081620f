"""Normalisation and validation of the per-axis arguments (spec §3.6, §8).

Messages match natten-mlx 0.3 word for word; tests match substrings of them.
"""

from __future__ import annotations

from typing import Any, Iterable, Tuple


def _is_sequence(value: Any) -> bool:
    # Only tuple and list count as per-axis sequences; anything else (numpy
    # arrays, mx.array) is treated as a scalar and then fails the int checks.
    return isinstance(value, (tuple, list))


def normalize_tuple_param(param: Any, rank: int, name: str) -> Tuple[Any, ...]:
    """A scalar repeated ``rank`` times, or a tuple/list of exactly ``rank`` items."""
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    if _is_sequence(param):
        items = tuple(param)
        if len(items) != rank:
            raise ValueError(f"{name} must have length {rank}, got {len(items)}: {param}")
        return items
    return (param,) * rank


def normalize_kernel_size(kernel_size: Any, rank: int) -> Tuple[int, ...]:
    """Kernel sizes as a tuple of positive Python ints (bool passes as int)."""
    ks = normalize_tuple_param(kernel_size, rank, "kernel_size")
    for value in ks:
        if not isinstance(value, int):
            raise ValueError(f"kernel_size values must be int, got {type(value)!r}")
        if value <= 0:
            raise ValueError(f"kernel_size values must be positive, got {value}")
    return ks


def check_kernel_size_vs_input(kernel_size: Iterable[int], input_shape: Iterable[int]) -> None:
    """K <= L on every axis."""
    for axis, (k, size) in enumerate(zip(kernel_size, input_shape)):
        if k > size:
            raise ValueError(f"kernel_size[{axis}]={k} must be <= input spatial size {size}")


def check_stride_vs_kernel(stride: Iterable[int], kernel_size: Iterable[int]) -> None:
    """Stride an int with 1 <= s <= K on every axis."""
    for axis, (s, k) in enumerate(zip(stride, kernel_size)):
        if not isinstance(s, int):
            raise ValueError(f"stride[{axis}] must be int, got {type(s)!r}")
        if s <= 0:
            raise ValueError(f"stride[{axis}] must be positive, got {s}")
        if s > k:
            raise ValueError(f"stride[{axis}]={s} must be <= kernel_size[{axis}]={k}")


def check_dilation_kernel_vs_input(dilation: Iterable[int], kernel_size: Iterable[int],
                                   input_shape: Iterable[int]) -> None:
    """Dilation an int with d >= 1 and d*K <= L on every axis."""
    for axis, (d, k, size) in enumerate(zip(dilation, kernel_size, input_shape)):
        if not isinstance(d, int):
            raise ValueError(f"dilation[{axis}] must be int, got {type(d)!r}")
        if d <= 0:
            raise ValueError(f"dilation[{axis}] must be positive, got {d}")
        span = d * k
        if span > size:
            raise ValueError(
                f"dilation[{axis}] * kernel_size[{axis}] = {span} exceeds input size {size}")


__all__ = [
    "normalize_tuple_param",
    "normalize_kernel_size",
    "check_kernel_size_vs_input",
    "check_stride_vs_kernel",
    "check_dilation_kernel_vs_input",
]
