"""Merging partial attentions over disjoint key sets by their log-sum-exp."""

from __future__ import annotations

from typing import Sequence, Tuple

import mlx.core as mx


def merge_attentions(outputs: Sequence[mx.array],
                     lse_tensors: Sequence[mx.array]) -> Tuple[mx.array, mx.array]:
    """Combine attentions of the same queries over disjoint key sets.

    ``outputs[i]`` is ``[B, *spatial, H, D]`` and ``lse_tensors[i]`` is
    ``[B, *spatial, H]``.  Returns ``(out, lse)`` equal to one softmax over the
    union of the key sets: ``lse = log(sum_i exp(lse_i))`` and
    ``out = sum_i exp(lse_i - lse) * out_i``, folded pairwise in float32 with the
    sigmoid form.  ``out`` has ``outputs[0].dtype``; ``lse`` is float32
    (float64 for float64 inputs).  Differentiable in every input.
    """
    outputs = list(outputs)
    lse_tensors = list(lse_tensors)
    if len(outputs) < 2:
        raise ValueError("merge_attentions expects at least two outputs.")
    if len(outputs) != len(lse_tensors):
        raise ValueError("Number of outputs and LSE tensors must match.")
    shape0 = tuple(outputs[0].shape)
    for i, o in enumerate(outputs[1:], start=1):
        if tuple(o.shape) != shape0:
            raise ValueError(f"Output {i} shape {tuple(o.shape)} does not match output 0 shape "
                             f"{shape0}.")
    expected = shape0[:-1]
    for i, l in enumerate(lse_tensors):
        if tuple(l.shape) != expected:
            raise ValueError(f"LSE {i} shape {tuple(l.shape)} does not match expected "
                             f"{expected}.")
    acc = mx.float64 if outputs[0].dtype == mx.float64 else mx.float32
    out = outputs[0].astype(acc)
    lse = lse_tensors[0].astype(acc)
    for o_i, l_i in zip(outputs[1:], lse_tensors[1:]):
        o_i = o_i.astype(acc)
        l_i = l_i.astype(acc)
        w = mx.sigmoid(l_i - lse)                       # share of the new part
        out = out - w[..., None] * (out - o_i)
        # lse - log_sigmoid(lse - l_i) == logaddexp(lse, l_i)
        lse = mx.logaddexp(lse, l_i)
    return out.astype(outputs[0].dtype), lse


__all__ = ["merge_attentions"]
