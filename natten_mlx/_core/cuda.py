"""CUDA tier: neighborhood attention on MLX's CUDA device with CUDA C kernels.

The device code lives in ``src/cuda/*.cuh`` (plain CUDA C, also built by nvcc
in ``tests/cuda``).  This module pastes those headers into
``mx.fast.cuda_kernel`` objects (compiled once per process by NVRTC, cached by
MLX), and pairs forward and backward kernels with ``mx.custom_function`` VJPs.
Everything here is lazy: no ``mx.eval``, no numpy on array data, so the ops
work under ``mx.grad``, ``mx.value_and_grad`` and ``mx.compile`` (shape-
specialised compile only: custom kernels have fixed output shapes).

Tier interface (see docs/architecture.md):

    na_fused(q, k, v, p, rpb=None, extra_k=None, extra_v=None, varlen=None) -> (out, lse)
    na_out(same arguments) -> out   (the lse's cotangent is never read)
    na_qk(q, k, p, rpb=None) -> logits
    na_av(attn, v, p) -> out
    supports(op, p, dtype, device, **features) -> bool
    is_available() -> bool

Kernels (src/cuda):
  na_simple.cuh  warp-per-row kernels: every op, every feature, f32/f16/bf16;
                 gather-style dk/dv through the inverse window rule (no atomics)
  na_fwd_tc.cuh  tensor-core (mma.sync, inline PTX) fused forward for f16/bf16
                 when there is no RPB, extra KV, varlen or out_stride, D == Dv
                 in {32, 64, 128}
  na_bwd_tc.cuh  tensor-core fused backward (dq pass + dk/dv pass, no atomics)
                 for the same scope
  na_fwd_f32.cuh tiled f32 fused forward and backward dq pass (FMA units,
                 IEEE f32) for f32 with D == Dv in {32, 64}, same other limits
                 as the tensor-core path
  na_bwd_f32.cuh tiled f32 backward dk/dv pass, same scope
  na_bwd_wgmma.cuh Hopper (sm_90a) wgmma dq and dk/dv passes for f16/bf16,
                 head_dim 128 (64 on request), compiled through cuda_jit
                 (NVRTC -arch=sm_90a), two launches after the delta kernel

Importing this module never fails; on machines without MLX's CUDA backend
``is_available()`` is False and ``supports()`` always says no.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

try:  # never fail at import (CI machines have mlx[cpu] or nothing)
    import mlx.core as mx
except Exception:  # pragma: no cover
    mx = None

from natten_mlx._core import cuda_jit
from natten_mlx._core.params import NAParams

__all__ = ["is_available", "supports", "na_fused", "na_out", "na_qk", "na_av", "kernel_source_dir"]

_MAX_CH = 256  # channels per lane * 32: D and Dv up to 256 in the simple kernels
_WARPS_PER_BLOCK = 4

# ----------------------------------------------------------------------------
# Availability
# ----------------------------------------------------------------------------

_available: Optional[bool] = None


def is_available() -> bool:
    """True iff MLX has a working CUDA backend here (and our sources are found)."""
    global _available
    if _available is None:
        ok = False
        try:
            ok = (
                mx is not None
                and hasattr(mx, "cuda")
                and bool(mx.cuda.is_available())
                and hasattr(mx.fast, "cuda_kernel")
                and kernel_source_dir() is not None
            )
        except Exception:
            ok = False
        _available = ok
    return _available


def kernel_source_dir() -> Optional[Path]:
    """Where the .cuh sources are: $NATTEN_CUDA_SRC, the package, or the repo."""
    cands = []
    if os.environ.get("NATTEN_CUDA_SRC"):
        cands.append(Path(os.environ["NATTEN_CUDA_SRC"]))
    here = Path(__file__).resolve().parent
    cands.append(here / "cuda_src")
    cands.append(here.parent.parent / "src" / "cuda")
    for c in cands:
        if (c / "na_simple.cuh").is_file():
            return c
    return None


def _is_gpu(device) -> bool:
    if device is None:
        return True
    try:
        return device.type == mx.gpu
    except Exception:
        return False


_DTYPES = ()


def _ok_dtype(dtype) -> bool:
    return dtype in (mx.float32, mx.float16, mx.bfloat16)


def supports(op: str, p: NAParams, dtype, device=None, **features) -> bool:
    """Whether this tier runs ``op`` ("fused", "qk", "av") for problem p.

    Features (rpb, extra_kv, varlen, gqa) are all supported.  Head dims above
    256 are not (checked again at call time, where the shapes are known: such
    calls run the pure tier)."""
    if op not in ("fused", "qk", "av"):
        return False
    if not is_available() or not _is_gpu(device) or not _ok_dtype(dtype):
        return False
    if p.rank not in (1, 2, 3):
        return False
    if op != "fused" and (features.get("extra_kv") or features.get("varlen")):
        return False
    return True


# ----------------------------------------------------------------------------
# Kernel sources
# ----------------------------------------------------------------------------

# What each kind of kernel needs: one top file and, through its local
# #includes, the files under it.
_HEADER_TOP = {
    "simple": "na_simple.cuh",
    "fwd_tc": "na_fwd_tc.cuh",
    "fwd_wgmma": "na_fwd_wgmma.cuh",
    "fwd_f32": "na_fwd_f32.cuh",
    "bwd_tc": "na_bwd_tc.cuh",
    "bwd_wgmma": "na_bwd_wgmma.cuh",
    "bwd_f32": "na_bwd_f32.cuh",
}
_LOCAL_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.M)


def _closure(top: str, d: Path) -> list:
    """`top` and the local files it includes, each after the files it includes."""
    order = []

    def visit(name):
        if name in order:
            return
        for dep in _LOCAL_INCLUDE.findall((d / name).read_text()):
            visit(dep)
        order.append(name)

    visit(top)
    return order


@lru_cache(maxsize=8)
def _header(kind: str) -> str:
    """The sources a kind of kernel needs, pasted into one text (local
    #includes dropped, comments and blank lines stripped): what cuda_jit
    compiles, and what names the code in _kernel_header."""
    d = kernel_source_dir()
    parts = []
    for name in _closure(_HEADER_TOP[kind], d):
        txt = _LOCAL_INCLUDE.sub("", (d / name).read_text())
        # system includes are guarded by __CUDACC_RTC__ inside the files
        txt = re.sub(r"/\*.*?\*/", "", txt, flags=re.S)
        txt = re.sub(r"(?m)^\s*//.*$", "", txt)
        txt = re.sub(r"\n\s*\n+", "\n", txt)
        parts.append(f"// ---- {name}\n{txt}")
    return "\n".join(parts)


@lru_cache(maxsize=8)
def _kernel_header(kind: str) -> Tuple[str, str]:
    """(header, tag) for mx.fast.cuda_kernel.  MLX pastes the header into a
    new source string on every call (H100: our 27-74 KB pasted headers cost
    40-65 us per small forward+backward, benchmarks/results/floor_h100_20261127_2305.md),
    so the header is one #include of the top file by absolute path (NVRTC
    reads it, and the files it includes, at the one compile).  MLX keys its
    compiled modules, in memory and in its on-disk PTX cache, by kernel name
    alone, so the name carries `tag`, a digest of the code: a changed .cuh
    is compiled anew, never served stale."""
    code = _header(kind)
    tag = hashlib.sha256(code.encode()).hexdigest()[:12]
    top = (kernel_source_dir() / _HEADER_TOP[kind]).resolve()
    if not any(c in str(top) for c in '"\n\\'):  # resolve() made it absolute
        return f'#include "{top}"\n', tag
    return code, tag


_PRE = (
    "const long long gw = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;\n"
    "const int lane = threadIdx.x & 31;\n"
    "const na_params P = na_load_params(params);\n"
)

# name -> (inputs, outputs, body)
_SPECS = {
    "fwd": (
        ["params", "q", "k", "v", "rpb", "ek", "ev", "varlen"],
        ["out", "lse"],
        "na_fwd_simple<T, NPL, NVPL>(P, q, k, v, rpb, ek, ev, varlen, out, lse, gw, lane);",
    ),
    "bwd_dq": (
        ["params", "q", "k", "v", "rpb", "ek", "ev", "varlen", "out", "lse", "dout", "dlse"],
        ["dq", "delta"],
        "na_bwd_dq_simple<T, NPL, NVPL>(P, q, k, v, rpb, ek, ev, varlen, out, lse, dout, dlse,"
        " dq, delta, (float *)nullptr, gw, lane);",
    ),
    "bwd_dq_rpb": (
        ["params", "q", "k", "v", "rpb", "ek", "ev", "varlen", "out", "lse", "dout", "dlse"],
        ["dq", "delta", "drpb"],
        "na_bwd_dq_simple<T, NPL, NVPL>(P, q, k, v, rpb, ek, ev, varlen, out, lse, dout, dlse,"
        " dq, delta, drpb, gw, lane);",
    ),
    "bwd_dkdv": (
        ["params", "q", "k", "v", "rpb", "varlen", "lse", "dout", "delta"],
        ["dk", "dv"],
        "na_bwd_dkdv_simple<T, NPL, NVPL>(P, q, k, v, rpb, varlen, lse, dout, delta, dk, dv, gw, lane);",
    ),
    "delta": (
        ["params", "out", "dout", "dlse"],
        ["delta"],
        "na_delta_simple<T, NVPL>(P, out, dout, dlse, delta, gw, lane);",
    ),
    "bwd_extra": (
        ["params", "q", "ek", "ev", "varlen", "lse", "dout", "delta"],
        ["dek", "dev"],
        "na_bwd_extra_simple<T, NPL, NVPL, 64>(P, q, ek, ev, varlen, lse, dout, delta, dek, dev, gw, lane);",
    ),
    "qk": (
        ["params", "q", "k", "rpb"],
        ["logits"],
        "na_qk_simple<T, NPL>(P, q, k, rpb, logits, gw, lane);",
    ),
    "av": (
        ["params", "attn", "v"],
        ["out"],
        "na_av_simple<T, NVPL>(P, attn, v, out, gw, lane);",
    ),
    "qk_bwd_dq": (
        ["params", "k", "dlogits"],
        ["dq"],
        "na_qk_bwd_dq_simple<T, NPL>(P, k, dlogits, dq, (float *)nullptr, gw, lane);",
    ),
    "qk_bwd_dq_rpb": (
        ["params", "k", "dlogits"],
        ["dq", "drpb"],
        "na_qk_bwd_dq_simple<T, NPL>(P, k, dlogits, dq, drpb, gw, lane);",
    ),
    "qk_bwd_dk": (
        ["params", "q", "dlogits"],
        ["dk"],
        "na_qk_bwd_dk_simple<T, NPL>(P, q, dlogits, dk, gw, lane);",
    ),
    "av_bwd_dattn": (
        ["params", "v", "dout"],
        ["dattn"],
        "na_av_bwd_dattn_simple<T, NVPL>(P, v, dout, dattn, gw, lane);",
    ),
    "av_bwd_dv": (
        ["params", "attn", "dout"],
        ["dv"],
        "na_av_bwd_dv_simple<T, NVPL>(P, attn, dout, dv, gw, lane);",
    ),
    # tensor-core forward: one CTA of TC_WARPS warps per (query tile, b, h)
    "fwd_tc": (
        ["params", "q", "k", "v"],
        ["out", "lse"],
        "na_fwd_tc_entry<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, NW>(params, q, k, v, out, lse);",
    ),
    # tiled f32 forward: one CTA of 128 threads per (query tile, b, h)
    "fwd_f32": (
        ["params", "q", "k", "v"],
        ["out", "lse"],
        "na_fwd_f32_entry<HD, TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, q, k, v, out, lse);",
    ),
    # tiled f32 dq pass (+ delta for the warp-per-row dk/dv pass)
    "bwd_dq_f32": (
        ["params", "q", "k", "v", "out", "lse", "dout", "dlse"],
        ["dq", "delta"],
        "na_bwd_dq_f32_entry<HD, TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, q, k, v, out, lse, dout, dlse, dq, delta);",
    ),
    # tiled f32 dk/dv pass: one CTA of 128 threads per (key box, b, kv head)
    "bwd_dkdv_f32": (
        ["params", "q", "k", "v", "lse", "dout", "delta"],
        ["dk", "dv"],
        "na_bwd_dkdv_f32_entry<HD, TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, q, k, v, lse, dout, delta, dk, dv);",
    ),
    "bwd_dq_tc": (
        ["params", "q", "k", "v", "dout", "lse", "delta"],
        ["dq"],
        "na_bwd_dq_tc_entry<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, q, k, v, dout, lse, delta, dq);",
    ),
    "bwd_tc": (
        ["params", "q", "k", "v", "dout", "lse", "delta"],
        ["dq", "dk", "dv"],
        "na_bwd_tc_entry<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, q, k, v, dout, lse, delta, dq, dk, dv);",
    ),
    # the whole backward of a small problem in one launch, delta computed where
    # it is read (_fused_delta): tensor cores, and tiled f32
    "bwd_tc_fd": (
        ["params", "q", "k", "v", "dout", "lse", "out", "dlse"],
        ["dq", "dk", "dv"],
        "na_bwd_tc_entry<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2, true>(params, q, k, v, dout, lse, nullptr, dq, dk, dv,"
        " out, dlse);",
    ),
    "bwd_f32_fd": (
        ["params", "q", "k", "v", "out", "lse", "dout", "dlse"],
        ["dq", "dk", "dv"],
        "na_bwd_f32_fd_entry<HD, TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, q, k, v, out, lse, dout, dlse, dq, dk, dv);",
    ),
    "bwd_dkdv_tc": (
        ["params", "q", "k", "v", "dout", "lse", "delta"],
        ["dk", "dv"],
        "na_bwd_dkdv_tc_entry<T, HD, TQ0, TQ1, TQ2, TK0, TK1, TK2>(params, q, k, v, dout, lse, delta, dk, dv);",
    ),
}
_TC_NAMES = ("fwd_tc", "fwd_f32", "bwd_dq_f32", "bwd_dkdv_f32", "bwd_dq_tc", "bwd_dkdv_tc", "bwd_tc", "bwd_tc_fd",
             "bwd_f32_fd")


def _header_kind(name: str) -> str:
    if name in ("fwd_tc", "fwd_f32", "fwd_wgmma"):
        return name
    if name == "bwd_dq_f32":
        return "fwd_f32"
    if name in ("bwd_dkdv_f32", "bwd_f32_fd"):
        return "bwd_f32"
    return "bwd_tc" if name in _TC_NAMES else "simple"

_kernels: Dict[tuple, object] = {}


def _kernel(name: str, smem: int = 0):
    kern = _kernels.get((name, smem))
    if kern is None:
        inputs, outputs, body = _SPECS[name]
        src = body if name in _TC_NAMES else _PRE + body
        header, tag = _kernel_header(_header_kind(name))
        kern = mx.fast.cuda_kernel(
            name="natten_" + name + (f"_s{smem}" if smem else "") + "_" + tag,
            input_names=inputs,
            output_names=outputs,
            source=src,
            header=header,
            ensure_row_contiguous=True,
            shared_memory=int(smem),
        )
        _kernels[(name, smem)] = kern
    return kern


_CTYPE = {"float16": "__half", "bfloat16": "__nv_bfloat16"}


def _precompiled_launch(fn: str, data: bytes, smem: int):
    """A cubin's kernel `fn` as a callable with cuda_kernel's call interface."""

    def launch(inputs, grid, threadgroup, output_shapes, output_dtypes):
        return mx.fast.precompiled_cuda_kernel(
            name=fn, compiled_source=data, inputs=inputs, output_shapes=output_shapes,
            output_dtypes=output_dtypes, scalars=[], grid=grid, threadgroup=threadgroup,
            shared_memory=smem, ensure_row_contiguous=True)

    return launch


@lru_cache(maxsize=64)
def _precompiled_fwd(entry: str, dtype_name: str, targs: tuple, threads: int, smem: int, target: str,
                     min_blocks: int = 0):
    """A tiled forward entry (na_fwd_tc_entry, na_fwd_wgmma_entry) compiled by
    cuda_jit for `target`, as a callable with cuda_kernel's call interface
    (inputs=, grid=, threadgroup=, output_shapes=, output_dtypes=).  The
    kernel's name spells out its template arguments: MLX keeps one module per
    name."""
    ct = _CTYPE[dtype_name]
    fn = "natten_%s_%s_%s_%s" % (entry, dtype_name, "_".join(map(str, targs)), target)
    bounds = "%d, %d" % (threads, min_blocks) if min_blocks else str(threads)
    src = (_header(_header_kind(entry)) + '\nextern "C" __global__ void __launch_bounds__(%s) %s('
           "const int *params, const %s *q, const %s *k, const %s *v, %s *out, float *lse) {\n"
           "  na_%s_entry<%s, %s>(params, q, k, v, out, lse);\n}\n"
           % (bounds, fn, ct, ct, ct, ct, entry, ct, ", ".join(map(str, targs))))
    return _precompiled_launch(fn, cuda_jit.cubin(src, target), smem)


@lru_cache(maxsize=64)
def _precompiled_bwd(which: str, dtype_name: str, targs: tuple, smem: int):
    """A wgmma backward pass of na_bwd_wgmma.cuh, `which` "dkdv"
    (na_bwd_dkdv_wgmma_entry; outputs dk, dv) or "dq" (na_bwd_dq_wgmma_entry;
    output dq), template arguments targs after T, compiled by cuda_jit for
    sm_90a: 256 threads, one CTA per SM (__launch_bounds__(256, 1): up to 255
    registers; ptxas, HD 128: 254-255 for dk/dv, 227 for dq, no spills).
    Inputs params, q, k, v, dout, lse, delta."""
    ct = _CTYPE[dtype_name]
    outs = ("dk", "dv") if which == "dkdv" else ("dq",)
    fn = "natten_bwd_%s_wgmma_%s_%s_sm_90a" % (which, dtype_name, "_".join(map(str, targs)))
    src = (_header("bwd_wgmma") + '\nextern "C" __global__ void __launch_bounds__(256, 1) %s(const int *params, '
           "const %s *q, const %s *k, const %s *v, const %s *dout, const float *lse, const float *delta, %s) {\n"
           "  na_bwd_%s_wgmma_entry<%s, %s>(params, q, k, v, dout, lse, delta, %s);\n}\n"
           % (fn, ct, ct, ct, ct, ", ".join("%s *%s" % (ct, o) for o in outs), which, ct,
              ", ".join(map(str, targs)), ", ".join(outs)))
    return _precompiled_launch(fn, cuda_jit.cubin(src, "sm_90a"), smem)


# ----------------------------------------------------------------------------
# Problem -> parameter array
# ----------------------------------------------------------------------------


def _pad3(t, fill):
    t = tuple(int(x) for x in t)
    return t + (fill,) * (3 - len(t))


def _out_extent(p: NAParams, X):
    """Output positions per spatial axis (rank entries): ceil(X / out_stride)."""
    return tuple(-(-int(x) // int(s)) for x, s in zip(X, p.out_stride))


def _param_list(p: NAParams, B, X, H, Hkv, D, Dv, n_extra=0, has_rpb=False, has_varlen=False):
    X3 = _pad3(X, 1)
    os3 = _pad3(p.out_stride, 1)
    O3 = _pad3(_out_extent(p, X), 1)
    scale_bits = struct.unpack("<i", struct.pack("<f", float(p.scale)))[0]
    vals = [p.rank, B, H, Hkv, D, Dv]
    vals += list(X3) + list(_pad3(p.kernel, 1)) + list(_pad3(p.dilation, 1))
    vals += list(_pad3(p.gna_stride, 1)) + list(os3) + list(_pad3([int(bool(c)) for c in p.causal], 0))
    vals += list(O3) + [scale_bits, n_extra, int(has_rpb), int(has_varlen), p.kernel_volume]
    assert len(vals) == 32
    return vals


_param_cache: Dict[tuple, object] = {}


def _params(*args, **kw):
    key = (args, tuple(sorted(kw.items())))
    arr = _param_cache.get(key)
    if arr is None:
        arr = mx.array(_param_list(*args, **kw), dtype=mx.int32)
        if len(_param_cache) > 256:
            _param_cache.clear()
        _param_cache[key] = arr
    return arr


def _npl(n: int) -> int:
    return max(1, (int(n) + 31) // 32)


def _launch_plan(name, out_shapes, out_dtypes, rows, T, NPL=1, NVPL=1, init=None):
    """(kernel, keyword arguments) of a warp-per-row launch over `rows` rows."""
    threads = int(rows) * 32
    if threads >= 2**31:
        raise ValueError("natten_mlx CUDA tier: problem too large for one launch")
    tg = 32 * _WARPS_PER_BLOCK
    grid = max(tg, -(-threads // tg) * tg)
    return _kernel(name), dict(template=[("T", T), ("NPL", int(NPL)), ("NVPL", int(NVPL))], grid=(grid, 1, 1),
                               threadgroup=(tg, 1, 1), output_shapes=out_shapes, output_dtypes=out_dtypes,
                               init_value=init)


def _launch(name, inputs, out_shapes, out_dtypes, rows, T, NPL=1, NVPL=1, init=None):
    kern, kw = _launch_plan(name, out_shapes, out_dtypes, rows, T, NPL, NVPL, init)
    return kern(inputs=inputs, **kw)


def _tile_template(D, tq, tk):
    """Template arguments of the tiled kernels: head dim, query box, key tile."""
    return [("HD", int(D)), ("TQ0", tq[0]), ("TQ1", tq[1]), ("TQ2", tq[2]),
            ("TK0", tk[0]), ("TK1", tk[1]), ("TK2", tk[2])]


_dummies: Dict[object, object] = {}


def _dummy(dtype):
    a = _dummies.get(dtype)
    if a is None:
        a = mx.zeros((1,), dtype=dtype)
        _dummies[dtype] = a
    return a


def _prod(t):
    r = 1
    for x in t:
        r *= int(x)
    return r


# ----------------------------------------------------------------------------
# Fused op
# ----------------------------------------------------------------------------

# Debug / tuning switches, read once at import (refresh_env() re-reads them):
#   NATTEN_CUDA_NO_TC=1     simple kernels only (no tensor-core or tiled f32 path)
#   NATTEN_CUDA_SPLIT_BWD=1 the two tensor-core backward passes as two launches
#   NATTEN_CUDA_TQ=128      128-query forward tiles, 2 m-tiles per warp (4 warps)
#   NATTEN_CUDA_TQ=128w     128-query forward tiles, 1 m-tile per warp (8 warps)
#   NATTEN_CUDA_TQ=64       64-query forward tiles (4 warps)
#   (default: see _fwd_tc_shape)
#   NATTEN_CUDA_WGMMA=0     never the Hopper wgmma forward (na_fwd_wgmma.cuh)
#   NATTEN_CUDA_WGMMA=1     the wgmma forward for every problem in its scope
#                           (default: see _use_wgmma)
#   NATTEN_CUDA_WGMMA_BWD=0 never the Hopper wgmma backward (na_bwd_wgmma.cuh)
#   NATTEN_CUDA_WGMMA_BWD=1 the wgmma backward for every problem in its scope
#                           (default: see _use_wgmma_bwd)
#   NATTEN_CUDA_SMALL=R     problems of at most R query rows (B*N*H) and a window
#                           of at most _SMALL_KK_ANY keys run the warp-per-row
#                           kernels, any rank and dtype (0 or unset: tiled
#                           whenever it applies; see _small)
#   NATTEN_CUDA_FUSED_DELTA=0 / 1  never / always the one-launch tiled backward
#                           (default: see _fused_delta)
_env: Dict[str, str] = {}

# Small problems: the tiled kernels give each CTA 64 queries and walk key tiles
# one after another, so a problem of a few hundred rows runs on a handful of
# SMs; one warp per query row spreads it over the whole GPU.  H100 (ncu, one
# launch each, seed-1d-256 = 1024 rows, 7 keys, D 32): tiled f32 forward 22 us,
# dq 29 us, dk/dv 19 us; bf16 tensor-core forward 8.5 us, backward 19 us.
# Through MLX (gpu_benchmark.py, one device call, warp-per-row vs tiled,
# benchmarks/results/small_dispatch_h100_20261127_1142.md): 1-D f32 forward
# 0.051 vs 0.073 ms (256 tokens x 4 heads) and 0.059 vs 0.077 (1024 x 4),
# forward+backward 0.136 vs 0.163 and 0.139 vs 0.214; but the warp-per-row
# backward lost everywhere in 2-D and 3-D (seed-2d-32 f32 0.301 vs 0.171,
# seed-2d-64 0.917 vs 0.127: its dk/dv pass gathers per key through the
# inverse window rule) and bf16 gained nothing or lost in 1-D.  So the
# default sent 1-D f32 problems of <= 4096 rows and <= 16 keys there, until the
# tiled backward of small problems became one launch (_fused_delta): then the
# tiled path measured as fast or faster on those rows too (H100, interleaved,
# three rounds, benchmarks/results/route_small_h100_20261128_0256.md: minimum
# forward+backward 66 vs 90 us on seed-1d-256, 89 vs 91 on seed-1d-1024;
# forwards within noise), so by default no problem is sent there now.
_SMALL_KK_ANY = 64  # window limit under NATTEN_CUDA_SMALL=R

# The tiled backward of a small problem in one launch: the passes compute
# delta = rowsum(dO*O) - dlse where they read it (na_load_qtile FD) instead of
# a delta kernel (tensor cores) or the dq pass (f32) writing it for the dk/dv
# pass.  Each launch is a graph node, and small calls are bound by host work
# per node (an empty custom_function forward+backward, H100 machine: 69 us
# with two backward launches, 52 with one; floor_h100_20261127_2305.md).  The
# dk/dv pass then recomputes delta per query tile it visits, by plain loads,
# so big problems keep the separate launches.
_FUSED_DELTA_ROWS = 16384  # query rows (B*N*H): the seed cases of the benchmark


def refresh_env():
    """Re-read the NATTEN_CUDA_* switches (they are read once, at import)."""
    _env.clear()
    for name in ("NATTEN_CUDA_NO_TC", "NATTEN_CUDA_SPLIT_BWD", "NATTEN_CUDA_TQ", "NATTEN_CUDA_SMALL",
                 "NATTEN_CUDA_WGMMA", "NATTEN_CUDA_WGMMA_BWD", "NATTEN_CUDA_FUSED_DELTA"):
        _env[name] = os.environ.get(name, "")
    clear_plans()


def clear_plans():
    """Forget the launch plans (kept by the custom functions, _fused_fn)."""
    _fused_fns.clear()


def _fused_delta(p: NAParams, rows, dtype) -> bool:
    """Whether a tiled backward of `rows` query rows runs as one launch.  Not
    for f32 3-D problems: H100, interleaved A/B (ab_small_h100_20261128_0256.md),
    seed-3d-16 f32 forward+backward 156 -> 202 us with it (its dk/dv pass
    visits many sparse query tiles at K=3 and recomputes each tile's delta, one
    thread per row), while bf16 gained 112 -> 103 and 2-D f32 106 -> 92."""
    mode = _env["NATTEN_CUDA_FUSED_DELTA"]
    if mode:
        return mode == "1"
    return rows <= _FUSED_DELTA_ROWS and not (dtype == mx.float32 and p.rank == 3)


def _small(p: NAParams, rows, dtype) -> bool:
    """Whether a problem of `rows` query rows runs the warp-per-row kernels
    although a tiled path applies (only under NATTEN_CUDA_SMALL=R)."""
    if _env["NATTEN_CUDA_SMALL"]:
        return rows <= int(_env["NATTEN_CUDA_SMALL"]) and p.kernel_volume <= _SMALL_KK_ANY
    return False


def _tc_plan(p: NAParams, X, D, Dv, dtype, has_rpb, has_extra, has_varlen, rows=None):
    """Which tiled forward applies: "tc" (tensor cores, f16/bf16), "f32"
    (tiled FMA kernel) or None (warp-per-row kernels; also for small
    problems of `rows` query rows, see _small)."""
    if _env["NATTEN_CUDA_NO_TC"]:
        return None
    if rows is not None and _small(p, rows, dtype):
        return None
    if has_rpb or has_extra or has_varlen or D != Dv:
        return None
    if any(s != 1 for s in p.out_stride) or not p.scale > 0:
        return None
    if dtype in (mx.float16, mx.bfloat16) and D in (32, 64, 128):
        return "tc"
    if dtype == mx.float32 and D in (32, 64):
        return "f32"
    return None


def _pow2_shapes(rank, total):
    """Box shapes (3 entries, unused axes 1) of `total` cells, powers of 2."""
    out = []
    e = total.bit_length() - 1
    for a in range(e + 1):
        for b in range(e + 1 - a):
            c = e - a - b
            shp = (1 << a, 1 << b, 1 << c)
            if all(shp[x] == 1 for x in range(rank, 3)):
                out.append(shp)
    return out


@lru_cache(maxsize=256)
def _choose_tiles(p: NAParams, X: tuple, tq_total: int, compact_keys: bool = False):
    """Query box (tq_total queries) and key box (64 keys) minimising the
    tensor-core work: query tiles x key tiles of the windows' union box.
    compact_keys: among equal counts take the key tile closest to a square or
    cube (the wgmma forward, H100: flux-2d-256-w80 17.9 ms with 8x8 key tiles
    against 20.1 with 2x32, the same 132 tiles a box)."""
    rank = p.rank
    X3, K3, d3 = _pad3(X, 1), _pad3(p.kernel, 1), _pad3(p.dilation, 1)
    s3 = _pad3(p.gna_stride, 1)
    best = None
    for tq in _pow2_shapes(rank, tq_total):
        n3 = [-(-x // d) for x, d in zip(X3, d3)]
        if any(tq[a] > 2 * n3[a] for a in range(3)):
            continue
        union = [min(n3[a], tq[a] + K3[a] - 1 + s3[a] - 1) for a in range(3)]
        qt = _prod(d3[a] * -(-n3[a] // tq[a]) for a in range(3))
        for tk in _pow2_shapes(rank, 64):
            if any(tk[a] > 2 * union[a] for a in range(3)):
                continue
            kt = _prod(-(-union[a] // tk[a]) for a in range(3))
            cost = (qt * kt, max(tk[:rank]) // min(tk[:rank]) if compact_keys else 0)
            if best is None or cost < best[0]:
                best = (cost, tq, tk)
    return None if best is None else (best[1], best[2])


def _default_tiles(p: NAParams, X, tq_total=128, compact_keys=False):
    """Query tile (TQ queries) and key tile (64 keys) shapes."""
    return _choose_tiles(p, tuple(int(x) for x in X), tq_total, compact_keys)


def _fwd_tc_shape(B, H, ntok, D):
    """(queries per tile, warps) of the tensor-core forward.

    Default: 128-query tiles with two 16-row m-tiles per warp (each K/V
    fragment read from shared memory feeds two mma's) for head_dim 128 when
    there are at least 256 such tiles (about one wave at 2 CTAs per SM on
    132 SMs; 1d-32k-w2k has exactly 256); 64-query tiles otherwise.
    H100, benchmarks/cuda/fwd_bench.cu, 2026-11-27: flux-2d-256-w80 27.6 ->
    26.3 ms, 1d-32k-w2k 0.187 -> 0.157 ms, hunyuan-3d 107 -> 95 ms; with
    head_dim 64 (vision-2d-64-k7) 128-query tiles were slower (0.196 vs 0.157 ms).
    NATTEN_CUDA_TQ=64 / 128 / 128w force 64 queries, 128 in two m-tiles per
    warp, or 128 with 8 warps of one m-tile."""
    mode = _env["NATTEN_CUDA_TQ"]
    if mode == "64":
        return 64, 4
    if mode == "128":
        return 128, 4
    if mode == "128w":
        return 128, 8
    if D == 128 and B * H * ntok >= 128 * 256:
        return 128, 4
    return 64, 4


_WGMMA_HD = (64, 128)
_WGMMA_THREADS = 256  # two warpgroups of 64 query rows: one 128-query box per CTA
# Set when NVRTC could not build the wgmma forward here (an NVRTC or CUDA
# headers older than the kernel needs): the mma.sync forward serves instead.
_wgmma_failed = False


def _wgmma_rule(mode: str, failed: bool, B, H, ntok, D) -> bool:
    """The wgmma kernels' rule, forward and backward alike: an sm_90a GPU whose
    NVRTC built them (not `failed`), head_dim in their scope; by default
    head_dim 128 and >= 256 boxes of 128 queries; env `mode` "0"/"1" forces."""
    if mode == "0" or failed or D not in _WGMMA_HD or cuda_jit.arch() != "sm_90a":
        return False
    return mode == "1" or (D == 128 and B * H * ntok >= 128 * 256)


def _use_wgmma(B, H, ntok, D) -> bool:
    """Whether a tensor-core forward runs the Hopper wgmma kernel (compiled by
    cuda_jit for sm_90a) instead of the mma.sync one."""
    return _wgmma_rule(_env["NATTEN_CUDA_WGMMA"], _wgmma_failed, B, H, ntok, D)


_WGMMA_BWD_ST = 3  # Q / dO (dk/dv) and K / V (dq) stages of the wgmma backward
_WGMMA_BWD_DQ = True  # the dq pass by wgmma too (else mma.sync)
# Set when NVRTC could not build the wgmma backward: the mma.sync one serves.
_wgmma_bwd_failed = False


def _use_wgmma_bwd(B, H, ntok, D) -> bool:
    """Whether the tensor-core backward runs the Hopper wgmma passes
    (na_bwd_wgmma.cuh, compiled by cuda_jit for sm_90a; dq by mma.sync unless
    _WGMMA_BWD_DQ) instead of the fused mma.sync launch.  Default: the
    forward's rule (head_dim 128, >= 256 boxes of 128 queries)."""
    return _wgmma_rule(_env["NATTEN_CUDA_WGMMA_BWD"], _wgmma_bwd_failed, B, H, ntok, D)


def _bwd_dkdv_wgmma_smem(D, st=_WGMMA_BWD_ST):
    """NA_BWD_DKDV_WGMMA_SMEM(HD, ST) of na_bwd_wgmma.cuh: K and V boxes (128
    rows), st Q and dO stages (64 rows), 1 KiB of alignment, st lse and delta
    stages, the query-box table, the key rows' query ranges."""
    return (2 * 128 + 2 * st * 64) * D * 2 + 1024 + st * 512 + 512 + 6144


def _bwd_dq_wgmma_smem(D, st=_WGMMA_BWD_ST):
    """NA_BWD_DQ_WGMMA_SMEM(HD, ST) of na_bwd_wgmma.cuh: dO and Q boxes (128
    rows), st K and V stages (64 rows), 1 KiB of alignment, the forward's
    tables (key-box table, per-row windows, per-warpgroup bounds)."""
    return (2 * 128 + 2 * st * 64) * D * 2 + 1024 + 8 * 64 + 24 * 128 + 2 * 48


def _fwd_wgmma_smem(D):
    """NA_FWD_WGMMA_SMEM(HD) of na_fwd_wgmma.cuh: Q box, three K and three V
    stages (128-byte-swizzled rows), 1 KiB to align them to 1024 bytes, the
    key-box table, per-row windows, per-warpgroup bounds."""
    return (128 + 6 * 64) * D * 2 + 1024 + 8 * 64 + 24 * 128 + 2 * 48


def _fwd_wgmma128_smem(D):
    """NA_FWD_WGMMA128_SMEM(HD) of na_fwd_wgmma.cuh (1-D 128-key tiles): Q box,
    two K and two V stages of 128 keys, 1 KiB to align them, the key-box table
    (128 keys), per-row windows, per-warpgroup bounds."""
    return (128 + 4 * 128) * D * 2 + 1024 + 8 * 128 + 24 * 128 + 2 * 48


def _wgmma_key_tile(p: NAParams, X, D, tq, tk):
    """Key tile of the wgmma forward: 128 keys (na_fwd_wgmma_k128: per-tile
    costs once per 128 keys; H100 1d-32k-w2k: see docs/cuda.md) for 1-D boxes
    with head_dim 128 when the windows' union needs no more key work in
    128-key tiles than in 64-key ones (1d-32k-w2k: 2175 keys, 17 or 34
    tiles); else tk."""
    if p.rank != 1 or D != 128 or tq != (128, 1, 1):
        return tk
    n = -(-int(X[0]) // _pad3(p.dilation, 1)[0])
    union = min(n, 128 + _pad3(p.kernel, 1)[0] - 1 + _pad3(p.gna_stride, 1)[0] - 1)
    return (128, 1, 1) if 2 * -(-union // 128) == -(-union // 64) else tk


def _fwd_plan(p: NAParams, flags, qs, ks, vs, es, dtype):
    has_rpb, has_extra, has_varlen = flags
    B, X, H, D = qs[0], tuple(qs[1:-2]), qs[-2], qs[-1]
    Hkv, Dv = ks[-2], vs[-1]
    n_extra = es[1] if has_extra else 0
    O = _out_extent(p, X)
    prm = _params(p, B, X, H, Hkv, D, Dv, n_extra=n_extra, has_rpb=has_rpb, has_varlen=has_varlen)  # the backward's too
    out_shape = (B,) + tuple(O) + (H, Dv)
    lse_shape = (B,) + tuple(O) + (H,)
    kind = _tc_plan(p, X, D, Dv, dtype, has_rpb, has_extra, has_varlen, B * _prod(O) * H)
    if kind is not None and _prod(X) * H * D < 2**31:  # box offsets are 32-bit in the kernel
        if kind == "tc" and _use_wgmma(B, H, _prod(X), D):
            tqn, warps, name = 128, _WGMMA_THREADS // 32, "fwd_wgmma"
        elif kind == "tc":
            tqn, warps = _fwd_tc_shape(B, H, _prod(X), D)
            name = "fwd_tc"
        else:
            tqn, warps, name = 64, 4, "fwd_f32"
        plan = _default_tiles(p, X, tqn, compact_keys=name == "fwd_wgmma")
        if plan is not None:
            tq, tk = plan
            if name == "fwd_wgmma":
                tk = _wgmma_key_tile(p, X, D, tuple(tq), tuple(tk))
            tiles = _tc_grid(X, p, tq)
            tmpl = _tile_template(D, tq, tk)
            if name == "fwd_wgmma":
                smem = _fwd_wgmma128_smem(D) if _prod(tk) == 128 else _fwd_wgmma_smem(D)
            elif kind == "tc":
                tmpl = [("T", dtype)] + tmpl + [("NW", warps)]
                smem = _fwd_tc_smem(_prod(tq), D)
            else:
                smem = _f32_smem(D, 1)
            if tiles < 2**31 // (32 * warps) and B * H < 65536:
                kw = dict(grid=(tiles * 32 * warps, B * H, 1), threadgroup=(32 * warps, 1, 1),
                          output_shapes=[out_shape, lse_shape], output_dtypes=[dtype, mx.float32])
                if name == "fwd_wgmma":
                    try:  # one CTA per SM: 204-206 registers a thread (ptxas, H100)
                        kern = _precompiled_fwd(name, str(dtype).split(".")[-1], tuple(v for _, v in tmpl),
                                                32 * warps, smem, "sm_90a", min_blocks=1)
                    except cuda_jit.CompileError as e:
                        global _wgmma_failed
                        _wgmma_failed = True
                        warnings.warn(f"natten_mlx: the wgmma forward did not build, using mma.sync: {e}")
                        return _fwd_plan(p, flags, qs, ks, vs, es, dtype)
                    return kern, kw, True, prm
                kw["template"] = tmpl
                return _kernel(name, smem), kw, True, prm
    rows = B * _prod(O) * H
    threads = int(rows) * 32
    if threads >= 2**31:
        raise ValueError("natten_mlx CUDA tier: problem too large for one launch")
    tg = 32 * _WARPS_PER_BLOCK
    kw = dict(template=[("T", dtype), ("NPL", _npl(D)), ("NVPL", _npl(Dv))],
              grid=(max(tg, -(-threads // tg) * tg), 1, 1), threadgroup=(tg, 1, 1),
              output_shapes=[out_shape, lse_shape], output_dtypes=[dtype, mx.float32])
    return _kernel("fwd"), kw, False, prm


def _fwd_tc_smem(tq, D):
    """Dynamic shared memory of na_fwd_tc_entry (NA_FWD_TC_SMEM in
    na_fwd_tc.cuh): Q tile, two K and two V stages (rows of D + 8 halves),
    the key-box table, per-row windows, per-warp window bounds (<= 8 warps)."""
    return (tq + 4 * 64) * (D + 8) * 2 + 8 * 64 + 24 * tq + 8 * 48


def _f32_smem(D, n_query_tiles):
    """Dynamic shared memory of the tiled f32 kernels (na_fwd_f32.cuh): query
    tiles (Q; Q and dO), two K and two V stages, the P / dS tile, the table."""
    return (64 * n_query_tiles + 4 * 64) * (D + 4) * 4 + 64 * 68 * 4 + 8 * 64


def _bwd_f32_plan(p: NAParams, B, X, H, Hkv, D, qs, ks, ls):
    """Tiled f32 backward: run(prm, q, k, v, out, lse, dout, dlse) -> (dq, dk,
    dv), or None when the launch does not fit.  The dq pass also writes delta;
    the dk/dv pass swaps the roles of the tile shapes (key boxes of the query
    box' shape), as na_bwd_tc_entry does.  Small problems: both in one launch
    that computes delta where it reads it (_fused_delta)."""
    plan = _default_tiles(p, X, 64)
    if plan is None or _prod(X) * H * D >= 2**31 or B * H >= 65536:
        return None
    tq, tk = plan
    tiles = _tc_grid(X, p, tq)
    if tiles >= 2**31 // 128:
        return None
    f32 = mx.float32
    if _fused_delta(p, _prod(ls), mx.float32):
        kboth = _kernel("bwd_f32_fd", _f32_smem(D, 2) + 4 * 64 * 4)
        both_kw = dict(template=_tile_template(D, tq, tk), grid=(2 * tiles * 128, B * H, 1),
                       threadgroup=(128, 1, 1), output_shapes=[qs, ks, ks], output_dtypes=[f32, f32, f32])

        def run_fused(prm, q, k, v, out, lse, dout, dlse):
            return tuple(kboth(inputs=[prm, q, k, v, out, lse, dout, dlse], **both_kw))

        return run_fused
    kdq = _kernel("bwd_dq_f32", _f32_smem(D, 2))
    dq_kw = dict(template=_tile_template(D, tq, tk), grid=(tiles * 128, B * H, 1), threadgroup=(128, 1, 1),
                 output_shapes=[qs, ls], output_dtypes=[f32, f32])
    kdkdv = _kernel("bwd_dkdv_f32", _f32_smem(D, 2) + 4 * 64 * 4)
    dkdv_kw = dict(template=_tile_template(D, tk, tq), grid=(tiles * 128, B * Hkv, 1), threadgroup=(128, 1, 1),
                   output_shapes=[ks, ks], output_dtypes=[f32, f32])

    def run(prm, q, k, v, out, lse, dout, dlse):
        dq, delta = kdq(inputs=[prm, q, k, v, out, lse, dout, dlse], **dq_kw)
        dk, dv = kdkdv(inputs=[prm, q, k, v, lse, dout, delta], **dkdv_kw)
        return dq, dk, dv

    return run


def _tc_grid(X, p, box):
    X3, d3 = _pad3(X, 1), _pad3(p.dilation, 1)
    return _prod(d * (-(-(-(-x // d)) // t)) for x, d, t in zip(X3, d3, box))


def _bwd_tc_plan(p: NAParams, B, X, H, Hkv, D, T, qs, ks, ls):
    """Tensor-core backward: run(prm, q, k, v, out, lse, dout, dlse) -> (dq,
    dk, dv), or None when the launch does not fit.  Small problems: one launch
    that computes delta itself (_fused_delta).  Else a delta kernel, then the
    wgmma passes (_bwd_wgmma_plan) or the mma.sync ones: by default one launch
    for both (dq tiles first, then dk/dv tiles), two under NATTEN_CUDA_SPLIT_BWD."""
    plan = _default_tiles(p, X, 64)
    if plan is None or _prod(X) * H * D >= 2**31:  # box offsets are 32-bit in the kernel
        return None
    tq, tk = plan
    qt = _tc_grid(X, p, tq)  # dq query boxes; the dk/dv pass' key boxes have the same shape
    if 2 * qt * 128 >= 2**31 or B * H >= 65536 or _prod(tq) != 64 or _prod(tk) != 64:
        return None
    tmpl = [("T", T)] + _tile_template(D, tq, tk)
    smem = 6 * 64 * (D + 8) * 2 + 8 * 64
    # both passes in one launch: dq tiles first, then dk/dv tiles
    both_kw = dict(template=tmpl, grid=(2 * qt * 128, B * H, 1), threadgroup=(128, 1, 1),
                   output_shapes=[qs, ks, ks], output_dtypes=[T, T, T])
    wg = _bwd_wgmma_plan(p, B, X, H, Hkv, D, T, qs, ks)
    if wg is None and _fused_delta(p, _prod(ls), T) and not _env["NATTEN_CUDA_SPLIT_BWD"]:
        kfused = _kernel("bwd_tc_fd", smem + 4 * 64 * 4)

        def run_fused(prm, q, k, v, out, lse, dout, dlse):
            return tuple(kfused(inputs=[prm, q, k, v, dout, lse, out, dlse], **both_kw))

        return run_fused
    kdelta, delta_kw = _launch_plan("delta", [ls], [mx.float32], _prod(ls), T, 1, _npl(D))
    kdq = _kernel("bwd_dq_tc", smem)
    dq_kw = dict(template=tmpl, grid=(qt * 128, B * H, 1), threadgroup=(128, 1, 1),
                 output_shapes=[qs], output_dtypes=[T])
    if wg is not None:  # the wgmma passes (dq: mma.sync, alone, unless _WGMMA_BWD_DQ)
        passes = wg
    elif not _env["NATTEN_CUDA_SPLIT_BWD"]:
        kboth = _kernel("bwd_tc", smem + 4 * 64 * 4)

        def passes(ins):
            return kboth(inputs=ins, **both_kw)
    else:
        # as na_bwd_tc_entry: key boxes of tq's shape
        kdkdv = _kernel("bwd_dkdv_tc", smem + 4 * 64 * 4)
        dkdv_kw = dict(template=[("T", T)] + _tile_template(D, tk, tq), grid=(qt * 128, B * Hkv, 1),
                       threadgroup=(128, 1, 1), output_shapes=[ks, ks], output_dtypes=[T, T])

        def passes(ins):
            (dq,) = kdq(inputs=ins, **dq_kw)
            return (dq,) + tuple(kdkdv(inputs=ins, **dkdv_kw))

    def run(prm, q, k, v, out, lse, dout, dlse):
        (delta,) = kdelta(inputs=[prm, out, dout, dlse], **delta_kw)
        ins = [prm, q, k, v, dout, lse, delta]
        dq, dk, dv = passes(ins)
        if dq is None:  # the mma.sync dq pass alone
            (dq,) = kdq(inputs=ins, **dq_kw)
        return dq, dk, dv

    return run


def _bwd_wgmma_plan(p: NAParams, B, X, H, Hkv, D, T, qs, ks):
    """The wgmma backward passes as passes(ins) -> (dq or None, dk, dv) -- dq
    None: _WGMMA_BWD_DQ off, the caller runs the mma.sync dq pass --, or None
    where _use_wgmma_bwd declines or the launch does not fit.  ins: params, q,
    k, v, dout, lse, delta.  dk/dv: key boxes of 128 and query tiles of 64,
    the wgmma forward's plan with the roles swapped (the windows' union has
    the same extent both ways); dq: the forward's plan (query boxes of 128,
    key tiles of 64)."""
    global _wgmma_bwd_failed
    if not _use_wgmma_bwd(B, H, _prod(X), D):
        return None
    plan = _default_tiles(p, X, 128, compact_keys=True)
    if plan is None:
        return None
    box, tile = plan
    boxes = _tc_grid(X, p, box)
    if boxes * 256 >= 2**31 or B * H >= 65536:
        return None
    dt = str(T).split(".")[-1]
    try:
        kdkdv = _precompiled_bwd("dkdv", dt, (int(D),) + tuple(tile) + tuple(box) + (_WGMMA_BWD_ST,),
                                 _bwd_dkdv_wgmma_smem(D))
        kdq = (_precompiled_bwd("dq", dt, (int(D),) + tuple(box) + tuple(tile) + (_WGMMA_BWD_ST,),
                                _bwd_dq_wgmma_smem(D)) if _WGMMA_BWD_DQ else None)
    except cuda_jit.CompileError as e:
        _wgmma_bwd_failed = True
        warnings.warn(f"natten_mlx: the wgmma backward did not build, using mma.sync: {e}")
        return None

    def passes(ins):
        dk, dv = kdkdv(inputs=ins, grid=(boxes * 256, B * Hkv, 1), threadgroup=(256, 1, 1),
                       output_shapes=[ks, ks], output_dtypes=[T, T])
        dq = None
        if kdq is not None:
            (dq,) = kdq(inputs=ins, grid=(boxes * 256, B * H, 1), threadgroup=(256, 1, 1),
                        output_shapes=[qs], output_dtypes=[T])
        return dq, dk, dv

    return passes


def _bwd_plan(p: NAParams, flags, qs, ks, vs, es, rs, T):
    """run(q, k, v, rpb, ek, ev, vl, out, lse, dout, dlse) -> (dq, dk, dv,
    drpb, dek, dev) of the fused backward; None for gradients that do not
    exist (no RPB, no extra KV).  The tiled paths where they apply, else the
    warp-per-row kernels."""
    has_rpb, has_extra, has_varlen = flags
    B, X, H, D = qs[0], tuple(qs[1:-2]), qs[-2], qs[-1]
    Hkv, Dv = ks[-2], vs[-1]
    n_extra = es[1] if has_extra else 0
    ls = (B,) + _out_extent(p, X) + (H,)
    prm = _params(p, B, X, H, Hkv, D, Dv, n_extra=n_extra, has_rpb=has_rpb, has_varlen=has_varlen)
    kind = _tc_plan(p, X, D, Dv, T, has_rpb, has_extra, has_varlen, _prod(ls))
    tiled = None
    if kind == "tc":
        tiled = _bwd_tc_plan(p, B, X, H, Hkv, D, T, qs, ks, ls)
    elif kind == "f32":
        tiled = _bwd_f32_plan(p, B, X, H, Hkv, D, qs, ks, ls)
    if tiled is not None:  # no rpb, extra KV or varlen here (_tc_plan)
        def run(q, k, v, rpb, ek, ev, vl, out, lse, dout, dlse):
            return tiled(prm, q, k, v, out, lse, dout.astype(T), dlse.astype(mx.float32)) + (None, None, None)

        return run
    NPL, NVPL = _npl(D), _npl(Dv)
    rows = B * _prod(X) * H
    f32 = mx.float32
    if has_rpb:
        kdq, dq_kw = _launch_plan("bwd_dq_rpb", [qs, ls, rs], [T, f32, f32], rows, T, NPL, NVPL, init=0.0)
    else:
        kdq, dq_kw = _launch_plan("bwd_dq", [qs, ls], [T, f32], rows, T, NPL, NVPL)
    kdkdv, dkdv_kw = _launch_plan("bwd_dkdv", [ks, vs], [T, T], B * _prod(X) * Hkv, T, NPL, NVPL)
    if has_extra:
        xrows = B * n_extra * Hkv * (-(-_prod(ls[1:-1]) // 64))
        kx, x_kw = _launch_plan("bwd_extra", [es, es[:-1] + (Dv,)], [f32, f32], xrows, T, NPL, NVPL, init=0.0)

    def run(q, k, v, rpb, ek, ev, vl, out, lse, dout, dlse):
        dout = dout.astype(T)
        dlse = dlse.astype(f32)
        res = kdq(inputs=[prm, q, k, v, rpb, ek, ev, vl, out, lse, dout, dlse], **dq_kw)
        dq, delta = res[0], res[1]
        drpb = res[2].astype(rpb.dtype) if has_rpb else None
        dk, dv = kdkdv(inputs=[prm, q, k, v, rpb, vl, lse, dout, delta], **dkdv_kw)
        dek = dev = None
        if has_extra:
            dek, dev = kx(inputs=[prm, q, ek, ev, vl, lse, dout, delta], **x_kw)
            dek, dev = dek.astype(ek.dtype), dev.astype(ev.dtype)
        return dq, dk, dv, drpb, dek, dev

    return run


_fused_fns: Dict[tuple, object] = {}
_zero_lses: Dict[tuple, object] = {}
_ZERO_LSE_CACHE_MAX = 1 << 16  # elements (256 KB; 16 shapes at most): a bigger problem is not bound by one node


def _lse_cotangent(dlse, lse_grad: bool):
    """The lse cotangent the backward kernels read.  Without lse_grad (na_out:
    the caller never sees the lse) it is zero, and a cached zero array stands
    in for the zero fill MLX builds for an unused output, one graph node less
    per small backward."""
    if lse_grad or dlse.size > _ZERO_LSE_CACHE_MAX:
        return dlse
    z = _zero_lses.get(dlse.shape)
    if z is None:
        if len(_zero_lses) > 16:
            _zero_lses.clear()
        z = _zero_lses[dlse.shape] = mx.zeros(dlse.shape, dtype=mx.float32)
    return z


def _plan(cache: dict, key, build, *args):
    """cache[key], built by build(*args) the first time."""
    plan = cache.get(key)
    if plan is None:
        if len(cache) > 64:
            cache.clear()
        plan = cache[key] = build(*args)
    return plan


def _fused_fn(p: NAParams, flags, lse_grad: bool = True):
    """The fused op of problem p as an mx.custom_function.  Each one keeps its
    launch plans per shapes and dtype (_fwd_plan, _bwd_plan: everything that
    depends only on them is computed once, so a call costs a dict lookup and
    its launches; tiny problems are bound by this host work, about 1-7 us per
    graph node on the H100 machine).  clear_plans() drops them all."""
    key = (p, flags, lse_grad)
    fn = _fused_fns.get(key)
    if fn is None:
        if len(_fused_fns) > 256:
            _fused_fns.clear()
        make = _plain_fused_fn if flags == (False, False, False) else _featured_fused_fn
        fn = _fused_fns[key] = make(p, flags, lse_grad)
    return fn


def _featured_fused_fn(p: NAParams, flags, lse_grad: bool):
    fwd_plans, bwd_plans = {}, {}

    @mx.custom_function
    def f(q, k, v, rpb, ek, ev, vl):
        key = (q.shape, k.shape, v.shape, ek.shape, q.dtype)
        kern, kw, tiled, prm = _plan(fwd_plans, key, _fwd_plan, p, flags, *key)
        return kern(inputs=[prm, q, k, v] if tiled else [prm, q, k, v, rpb, ek, ev, vl], **kw)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        q, k, v, rpb, ek, ev, vl = primals
        key = (q.shape, k.shape, v.shape, ek.shape, rpb.shape, q.dtype)
        run = _plan(bwd_plans, key, _bwd_plan, p, flags, *key)
        dq, dk, dv, drpb, dek, dev = run(q, k, v, rpb, ek, ev, vl, outputs[0], outputs[1], cotangents[0],
                                         _lse_cotangent(cotangents[1], lse_grad))
        drpb = mx.zeros_like(rpb) if drpb is None else drpb
        dek = mx.zeros_like(ek) if dek is None else dek
        dev = mx.zeros_like(ev) if dev is None else dev
        return dq, dk, dv, drpb, dek, dev, mx.zeros_like(vl)

    return f


def _plain_fused_fn(p: NAParams, flags, lse_grad: bool):
    """The fused op without RPB, extra KV or varlen as a function of (q, k, v)
    alone: no placeholder inputs to pass through MLX's custom_function and no
    zero gradients to build for them."""
    fwd_plans, bwd_plans = {}, {}
    one = (1,)  # the placeholders' shape

    @mx.custom_function
    def f(q, k, v):
        key = (q.shape, k.shape, v.shape, q.dtype)
        kern, kw, tiled, prm = _plan(fwd_plans, key, _fwd_plan, p, flags, key[0], key[1], key[2], one, key[3])
        if tiled:
            return kern(inputs=[prm, q, k, v], **kw)
        d = _dummy(q.dtype)
        return kern(inputs=[prm, q, k, v, d, d, d, _dummy(mx.int32)], **kw)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        q, k, v = primals
        key = (q.shape, k.shape, v.shape, q.dtype)
        run = _plan(bwd_plans, key, _bwd_plan, p, flags, key[0], key[1], key[2], one, one, key[3])
        d = _dummy(q.dtype)
        return run(q, k, v, d, d, d, _dummy(mx.int32), outputs[0], outputs[1], cotangents[0],
                   _lse_cotangent(cotangents[1], lse_grad))[:3]

    return f


def _fallback():
    from natten_mlx._core import pure

    return pure


def _shape_ok(D, Dv, rank_extents) -> bool:
    return D <= _MAX_CH and Dv <= _MAX_CH and all(int(x) < 2**31 for x in rank_extents)


def _na(q, k, v, p: NAParams, rpb, extra_k, extra_v, varlen, lse_grad):
    D, Dv = q.shape[-1], v.shape[-1]
    if not _shape_ok(D, Dv, q.shape[1:-2]):
        return _fallback().na_fused(q, k, v, p, rpb=rpb, extra_k=extra_k, extra_v=extra_v, varlen=varlen)
    T = q.dtype
    if k.dtype != T:
        k = k.astype(T)
    if v.dtype != T:
        v = v.astype(T)
    if rpb is None and extra_k is None and varlen is None:
        return _fused_fn(p, (False, False, False), lse_grad)(q, k, v)
    flags = (rpb is not None, extra_k is not None, varlen is not None)
    rpb_a = rpb.astype(T) if rpb is not None else _dummy(T)
    ek = extra_k.astype(T) if extra_k is not None else _dummy(T)
    ev = extra_v.astype(T) if extra_v is not None else _dummy(T)
    vl = varlen.astype(mx.int32) if varlen is not None else _dummy(mx.int32)
    return _fused_fn(p, flags, lse_grad)(q, k, v, rpb_a, ek, ev, vl)


def na_fused(q, k, v, p: NAParams, rpb=None, extra_k=None, extra_v=None, varlen=None):
    """Fused NA on the GPU: (out [B,*O,H,Dv] q.dtype, lse [B,*O,H] float32)."""
    out, lse = _na(q, k, v, p, rpb, extra_k, extra_v, varlen, True)
    return out, lse


def na_out(q, k, v, p: NAParams, rpb=None, extra_k=None, extra_v=None, varlen=None):
    """``na_fused`` without the lse (ops.na_out): the lse never leaves, so the
    backward ignores its cotangent."""
    return _na(q, k, v, p, rpb, extra_k, extra_v, varlen, False)[0]


# ----------------------------------------------------------------------------
# Split ops
# ----------------------------------------------------------------------------


def _qk_forward(q, k, rpb, p, has_rpb):
    B, X, H, D = q.shape[0], tuple(q.shape[1:-2]), q.shape[-2], q.shape[-1]
    Hkv = k.shape[-2]
    prm = _params(p, B, X, H, Hkv, D, D, has_rpb=has_rpb)
    O = _out_extent(p, X)
    shape = (B,) + O + (H, p.kernel_volume)
    (logits,) = _launch("qk", [prm, q, k, rpb], [shape], [q.dtype], B * _prod(O) * H, q.dtype, _npl(D))
    return logits


_qk_fns: Dict[tuple, object] = {}


def _qk_fn(p, has_rpb):
    key = (p, has_rpb)
    fn = _qk_fns.get(key)
    if fn is not None:
        return fn

    @mx.custom_function
    def f(q, k, rpb):
        return _qk_forward(q, k, rpb, p, has_rpb)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        q, k, rpb = primals
        g = cotangents if not isinstance(cotangents, (list, tuple)) else cotangents[0]
        T = q.dtype
        g = g.astype(T)
        B, X, H, D = q.shape[0], tuple(q.shape[1:-2]), q.shape[-2], q.shape[-1]
        Hkv = k.shape[-2]
        prm = _params(p, B, X, H, Hkv, D, D, has_rpb=has_rpb)
        ntok = _prod(X)
        if has_rpb:
            dq, drpb = _launch("qk_bwd_dq_rpb", [prm, k, g], [q.shape, rpb.shape], [T, mx.float32],
                               B * ntok * H, T, _npl(D), init=0.0)
            drpb = drpb.astype(rpb.dtype)
        else:
            (dq,) = _launch("qk_bwd_dq", [prm, k, g], [q.shape], [T], B * ntok * H, T, _npl(D))
            drpb = mx.zeros_like(rpb)
        (dk,) = _launch("qk_bwd_dk", [prm, q, g], [k.shape], [T], B * ntok * Hkv, T, _npl(D))
        return dq, dk, drpb

    _qk_fns[key] = f
    return f


def na_qk(q, k, p: NAParams, rpb=None):
    """Split QK on the GPU: logits [B,*O,H,KK] in q.dtype, masked slots -inf."""
    if not _shape_ok(q.shape[-1], q.shape[-1], q.shape[1:-2]):
        return _fallback().na_qk(q, k, p, rpb=rpb)
    T = q.dtype
    k = k.astype(T)
    rpb_a = rpb.astype(T) if rpb is not None else _dummy(T)
    return _qk_fn(p, rpb is not None)(q, k, rpb_a)


def _av_forward(attn, v, p):
    B, X, Hkv, Dv = v.shape[0], tuple(v.shape[1:-2]), v.shape[-2], v.shape[-1]
    H = attn.shape[-2]
    prm = _params(p, B, X, H, Hkv, Dv, Dv)
    O = tuple(attn.shape[1:-2])
    (out,) = _launch("av", [prm, attn, v], [(B,) + O + (H, Dv)], [v.dtype], B * _prod(O) * H, v.dtype,
                     1, _npl(Dv))
    return out


_av_fns: Dict[NAParams, object] = {}


def _av_fn(p):
    fn = _av_fns.get(p)
    if fn is not None:
        return fn

    @mx.custom_function
    def f(attn, v):
        return _av_forward(attn, v, p)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        attn, v = primals
        g = cotangents if not isinstance(cotangents, (list, tuple)) else cotangents[0]
        T = v.dtype
        g = g.astype(T)
        B, X, Hkv, Dv = v.shape[0], tuple(v.shape[1:-2]), v.shape[-2], v.shape[-1]
        H = attn.shape[-2]
        prm = _params(p, B, X, H, Hkv, Dv, Dv)
        O = tuple(attn.shape[1:-2])
        (dattn,) = _launch("av_bwd_dattn", [prm, v, g], [attn.shape], [T], B * _prod(O) * H, T, 1, _npl(Dv))
        (dv,) = _launch("av_bwd_dv", [prm, attn, g], [v.shape], [T], B * _prod(X) * Hkv, T, 1, _npl(Dv))
        return dattn.astype(attn.dtype), dv

    _av_fns[p] = f
    return f


def na_av(attn, v, p: NAParams):
    """Split AV on the GPU: out [B,*O,H,Dv] in v.dtype; masked slots ignored."""
    if not _shape_ok(v.shape[-1], v.shape[-1], v.shape[1:-2]):
        return _fallback().na_av(attn, v, p)
    return _av_fn(p)(attn.astype(v.dtype), v)


refresh_env()
