"""Every error of spec §8: exception type and message."""

from __future__ import annotations

import re

import mlx.core as mx
import numpy as np
import pytest

import natten_mlx as nm
from natten_mlx.utils import params as P


def z(*shape, dtype=mx.float32):
    return mx.zeros(shape, dtype=dtype)


def raises(match, fn, *a, exc=ValueError, **kw):
    with pytest.raises(exc, match=match):
        fn(*a, **kw)


# ---------------------------------------------------------------- na*d / qk


@pytest.mark.parametrize("rank,fn,qkfn", [(1, nm.na1d, nm.na1d_qk), (2, nm.na2d, nm.na2d_qk),
                                          (3, nm.na3d, nm.na3d_qk)])
def test_wrong_ndim(rank, fn, qkfn):
    layout = {1: "[B, L, H, D]", 2: "[B, H, W, heads, dim]", 3: "[B, D, H, W, heads, dim]"}
    msg = re.escape(f"na{rank}d expects query/key/value with shape {layout[rank]}.")
    for nd in (rank + 2, rank + 4):
        x = z(*([4] * nd))
        raises(msg, fn, x, x, x, 3)
        raises(msg, qkfn, x, x, 3)


def test_qkv_mismatches():
    q = z(1, 8, 2, 4)
    raises(re.escape("Spatial dimensions must match: Q=(8,), K=(6,), V=(8,)."),
           nm.na1d, q, z(1, 6, 2, 4), q, 3)
    raises(re.escape("Batch dimensions must match."), nm.na1d, q, z(2, 8, 2, 4), z(2, 8, 2, 4), 3)
    raises(re.escape("Head dim must match: Q has 4, K has 8."), nm.na1d, q, z(1, 8, 2, 8),
           z(1, 8, 2, 8), 3)
    raises(re.escape("K and V must have same number of heads."), nm.na1d, q, q, z(1, 8, 1, 4), 3)
    raises(re.escape("Head dim must match: K has 4, V has 8."), nm.na1d, q, q, z(1, 8, 2, 8), 3)
    raises(re.escape("heads_q (3) must be divisible by heads_kv (2) for GQA."),
           nm.na1d, z(1, 8, 3, 4), q, q, 3)
    raises("Spatial dimensions must match", nm.na1d_qk, q, z(1, 6, 2, 4), 3)


def test_additional_kv_errors():
    q = z(2, 8, 2, 4)
    e = z(2, 3, 2, 4)
    raises("both be provided", nm.na1d, q, q, q, 3, additional_keys=e)
    raises("both be provided", nm.na1d, q, q, q, 3, additional_values=e)
    raises(re.escape("additional_keys/additional_values must be 4D: [B, N_extra, heads_kv, dim]."),
           nm.na1d, q, q, q, 3, additional_keys=z(2, 3, 4), additional_values=e)
    raises("additional_keys batch must match query batch.", nm.na1d, q, q, q, 3,
           additional_keys=z(1, 3, 2, 4), additional_values=e)
    raises("additional_values batch must match query batch.", nm.na1d, q, q, q, 3,
           additional_keys=e, additional_values=z(1, 3, 2, 4))
    raises("additional_keys head dim must match query head dim.", nm.na1d, q, q, q, 3,
           additional_keys=z(2, 3, 2, 5), additional_values=e)
    raises("additional_values head dim must match query head dim.", nm.na1d, q, q, q, 3,
           additional_keys=e, additional_values=z(2, 3, 2, 5))
    raises("must have same number of heads.", nm.na1d, q, q, q, 3,
           additional_keys=e, additional_values=z(2, 3, 1, 4))
    raises("must have same N_extra.", nm.na1d, q, q, q, 3,
           additional_keys=e, additional_values=z(2, 4, 2, 4))
    # additional-KV checks come before kernel checks (validation order)
    raises("both be provided", nm.na1d, q, q, q, 99, additional_keys=e)


def test_kernel_stride_dilation_errors():
    q = z(1, 10, 1, 4)
    raises(re.escape("kernel_size must have length 1, got 2: (3, 3)"), nm.na1d, q, q, q, (3, 3))
    raises(re.escape("kernel_size values must be int, got <class 'float'>"), nm.na1d, q, q, q, 3.0)
    raises(re.escape("kernel_size values must be int, got <class 'numpy.int64'>"), nm.na1d, q, q,
           q, np.int64(3))
    raises("kernel_size values must be int", nm.na1d, q, q, q, np.array([3]))
    raises(re.escape("kernel_size values must be positive, got 0"), nm.na1d, q, q, q, 0)
    raises(re.escape("stride must have length 1, got 2: [1, 2]"), nm.na1d, q, q, q, 3, [1, 2])
    raises(re.escape("dilation must have length 1, got 2"), nm.na1d, q, q, q, 3, 1, (1, 1))
    raises(re.escape("is_causal must have length 1, got 2"), nm.na1d, q, q, q, 3, 1, 1,
           (True, False))
    raises(re.escape("kernel_size[0]=11 must be <= input spatial size 10"), nm.na1d, q, q, q, 11)
    raises(re.escape("kernel_size[0]=5 must be <= input spatial size 4"), nm.na1d,
           z(1, 4, 1, 4), z(1, 4, 1, 4), z(1, 4, 1, 4), 5)
    q2 = z(1, 4, 4, 1, 4)
    raises(re.escape("kernel_size[0]=5 must be <= input spatial size 4"), nm.na2d, q2, q2, q2,
           (5, 3))
    raises(re.escape("stride[0] must be int, got <class 'float'>"), nm.na1d, q, q, q, 3, 1.0)
    raises(re.escape("stride[0] must be positive, got 0"), nm.na1d, q, q, q, 3, 0)
    raises(re.escape("stride[0]=4 must be <= kernel_size[0]=3"), nm.na1d, q, q, q, 3, 4)
    raises(re.escape("dilation[0] must be int, got <class 'float'>"), nm.na1d, q, q, q, 3, 1, 2.0)
    raises(re.escape("dilation[0] must be positive, got 0"), nm.na1d, q, q, q, 3, 1, 0)
    q5 = z(1, 5, 1, 4)
    raises(re.escape("dilation[0] * kernel_size[0] = 6 exceeds input size 5"), nm.na1d, q5, q5,
           q5, 3, 1, 2)
    raises(re.escape("dilation[0] * kernel_size[0] = 6 exceeds input size 5"), nm.na1d_qk, q5,
           q5, 3, 2)
    raises("kernel_size", nm.na1d_qk, q, q, 11)
    raises(re.escape("stride[1]=3 must be <= kernel_size[1]=2"), nm.na2d, z(1, 6, 6, 1, 2),
           z(1, 6, 6, 1, 2), z(1, 6, 6, 1, 2), (3, 2), (1, 3))


def test_split_av_errors():
    v = z(1, 8, 2, 4)
    raises("attn and value must be 4D for na1d_av", nm.na1d_av, z(1, 8, 2), v, 3)
    raises("attn and value must be 5D for na2d_av", nm.na2d_av, z(1, 8, 2, 9), v, 3)
    raises("attn and value must be 6D for na3d_av", nm.na3d_av, v, v, 3)
    raises(re.escape("attn and value must match batch and heads dimensions; got (2, 8, 2, 3) "
                     "and (1, 8, 2, 4)"), nm.na1d_av, z(2, 8, 2, 3), v, 3)
    raises("attn and value must match batch and heads", nm.na1d_av, z(1, 8, 4, 3), v, 3)
    raises(re.escape("attn kernel dimension (5) must match kernel_size (3)"), nm.na1d_av,
           z(1, 8, 2, 5), v, 3)
    raises(re.escape("attn length (8) must match ceil(input_len/stride) (4)"), nm.na1d_av,
           z(1, 8, 2, 3), v, 3, stride=2)
    v2 = z(1, 6, 6, 2, 4)
    raises(re.escape("attn neighborhood dimension must equal kernel area; got 8 vs 9"),
           nm.na2d_av, z(1, 6, 6, 2, 8), v2, 3)
    raises(re.escape("attn spatial dimensions must match ceil(input/stride); got (6, 6) vs "
                     "(3, 6)"), nm.na2d_av, z(1, 6, 6, 2, 9), v2, 3, stride=(2, 1))
    v3 = z(1, 4, 4, 4, 1, 2)
    raises(re.escape("attn neighborhood dimension must equal kernel volume; got 9 vs 27"),
           nm.na3d_av, z(1, 4, 4, 4, 1, 9), v3, 3)
    raises("kernel_size", nm.na1d_av, z(1, 8, 2, 9), v, 9)


# ---------------------------------------------------------------- varlen


def test_varlen_errors():
    q = z(2, 10, 1, 4)
    raises(re.escape("na1d_varlen expects query/key/value with shape [B, L, H, D]."),
           nm.na1d_varlen, z(2, 10, 4), z(2, 10, 4), z(2, 10, 4), mx.array([10, 8]), 3)
    raises(re.escape("na2d_varlen expects query/key/value with shape [B, H, W, heads, D]."),
           nm.na2d_varlen, q, q, q, mx.array([[10, 8]]), 3)
    raises(re.escape("na3d_varlen expects query/key/value with shape [B, D, H, W, heads, dim]."),
           nm.na3d_varlen, q, q, q, mx.array([[10, 8]]), 3)
    raises("query, key, and value must have identical shapes.", nm.na1d_varlen, q, q,
           z(2, 10, 2, 4), mx.array([10, 8]), 3)
    raises(re.escape("seq_lens must be a 1-D array of length B=2, got shape (3,)."),
           nm.na1d_varlen, q, q, q, mx.array([10, 8, 9]), 3)
    raises("seq_lens must be int32 or int64, got", nm.na1d_varlen, q, q, q,
           mx.array([10.0, 8.0]), 3)
    raises(re.escape("All seq_lens must be >= kernel_size (3), but min(seq_lens)=2."),
           nm.na1d_varlen, q, q, q, mx.array([10, 2]), 3)
    raises(re.escape("All seq_lens must be <= L_max (10), but max(seq_lens)=11."),
           nm.na1d_varlen, q, q, q, mx.array([11, 5]), 3)
    raises("kernel_size", nm.na1d_varlen, q, q, q, mx.array([10, 5]), 3, 2)   # d*K > L_b
    q2 = z(2, 6, 7, 1, 4)
    raises(re.escape("spatial_sizes must be a [B, 2] array, got shape (2,)."), nm.na2d_varlen,
           q2, q2, q2, mx.array([6, 7]), 3)
    raises("spatial_sizes must be int32 or int64", nm.na2d_varlen, q2, q2, q2,
           mx.array([[6.0, 7.0], [6.0, 7.0]]), 3)
    raises(re.escape("All spatial_sizes[:,1] must be >= kernel_size[1] (3), but min=2."),
           nm.na2d_varlen, q2, q2, q2, mx.array([[6, 7], [6, 2]]), 3)
    raises(re.escape("All spatial_sizes[:,0] must be <= max_spatial[0] (6), but max=7."),
           nm.na2d_varlen, q2, q2, q2, mx.array([[7, 7], [6, 5]]), 3)


# ---------------------------------------------------------------- merge


def test_merge_errors():
    o = z(1, 4, 2, 3)
    lse = z(1, 4, 2)
    raises("merge_attentions expects at least two outputs.", nm.merge_attentions, [o], [lse])
    raises("Number of outputs and LSE tensors must match.", nm.merge_attentions, [o, o], [lse])
    raises(re.escape("Output 1 shape (1, 5, 2, 3) does not match output 0 shape (1, 4, 2, 3)."),
           nm.merge_attentions, [o, z(1, 5, 2, 3)], [lse, lse])
    raises(re.escape("LSE 1 shape (1, 4, 3) does not match expected (1, 4, 2)."),
           nm.merge_attentions, [o, o], [lse, z(1, 4, 3)])


# ---------------------------------------------------------------- nn modules


def test_module_errors():
    raises("embed_dim must be positive, got 0", nm.NeighborhoodAttention1D, 0, 2, 3)
    raises("num_heads must be positive, got 0", nm.NeighborhoodAttention1D, 8, 0, 3)
    raises("embed_dim must be divisible by num_heads", nm.NeighborhoodAttention1D, 10, 3, 3)
    raises(re.escape("num_heads (4) must be divisible by num_kv_heads (3)"),
           nm.NeighborhoodAttention2D, 8, 4, 3, num_kv_heads=3)
    with pytest.raises(ZeroDivisionError):
        nm.NeighborhoodAttention1D(8, 4, 3, num_kv_heads=0)
    layer = nm.NeighborhoodAttention1D(8, 2, 3)
    raises(re.escape("Expected input shape [B, L, C], got (1, 8)"), layer, z(1, 8))
    raises(re.escape("Input channel dim (6) must match embed_dim (8)"), layer, z(1, 8, 6))
    raises("Expected input shape", nm.NeighborhoodAttention2D(8, 2, 3), z(1, 8, 8))
    raises("Expected input shape", nm.NeighborhoodAttention3D(8, 2, 3), z(1, 8, 8, 8))
    raises("kernel_size", layer, z(1, 2, 8))                  # validity checked at call time


# ---------------------------------------------------------------- backend / helpers


def test_set_backend_error():
    raises(re.escape("Unknown backend 'metal'. Expected one of ['auto', 'fast_metal', "
                     "'nanobind', 'pure']"), nm.set_backend, "metal")


def test_params_helpers():
    assert P.normalize_tuple_param(2, 3, "x") == (2, 2, 2)
    assert P.normalize_tuple_param([1, 2], 2, "x") == (1, 2)
    assert P.normalize_kernel_size(True, 1) == (True,)
    raises("rank must be positive", P.normalize_tuple_param, 1, 0, "x")
    P.check_kernel_size_vs_input((3, 3), (3, 4))
    P.check_stride_vs_kernel((1, 3), (3, 3))
    P.check_dilation_kernel_vs_input((2, 1), (3, 3), (6, 3))


def test_bad_input_writes_nothing():
    """A failing call leaves its inputs untouched and returns nothing half-done."""
    q = mx.ones((1, 5, 1, 4))
    before = np.array(q)
    with pytest.raises(ValueError):
        nm.na1d(q, q, q, 3, 1, 2)
    assert (np.array(q) == before).all()
