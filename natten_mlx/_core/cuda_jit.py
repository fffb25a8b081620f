"""CUDA kernels that natten_mlx compiles itself, for an exact GPU architecture.

``mx.fast.cuda_kernel`` compiles with NVRTC for ``sm_XY`` (``sm_90`` on an
H100).  Hopper's warpgroup MMA (``wgmma``) exists only in the arch-specific
target ``sm_90a``, so kernels that use it are compiled here: with the NVRTC
library MLX itself loads, ``-arch=sm_90a``, to a cubin that runs through
``mx.fast.precompiled_cuda_kernel``.  Cubins are cached in memory and on disk
(``$NATTEN_CUDA_CACHE``, default ``~/.cache/natten_mlx/cubin``), keyed by a
hash of the source and the options, so a process pays NVRTC once per kernel
(about 2 s for the forward) and later processes not at all.

``arch()`` says which arch-specific target this machine's GPU has (None when
there is no CUDA driver, NVRTC or CUDA headers: callers then use the
``cuda_kernel`` path).  Nothing here runs at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence

# Prepended to every source: NVRTC has no implicit headers (MLX's cuda_kernel
# prepends its own; na_common.cuh includes these only outside NVRTC).
_PRELUDE = (
    "#include <cuda_fp16.h>\n"
    "#include <cuda_bf16.h>\n"
    "#ifndef INFINITY\n#define INFINITY __int_as_float(0x7f800000)\n#endif\n"
)


def _cuda_homes() -> List[Path]:
    """CUDA toolkit roots, in MLX's order (CUDA_HOME, CUDA_PATH, /usr/local/cuda):
    MLX's own JIT needs the same headers, so where MLX's CUDA backend works
    one of these has them."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return [Path(h) for h in homes if h]


def _pip_nvidia_dirs(sub: str) -> List[Path]:
    """<site-packages>/nvidia/*/<sub> of NVIDIA's CUDA wheels (MLX's CUDA wheel
    depends on nvidia-cuda-nvrtc)."""
    out = []
    for p in sys.path:
        base = Path(p) / "nvidia"
        if base.is_dir():
            out += sorted(d / sub for d in base.iterdir() if (d / sub).is_dir())
    return out


@lru_cache(maxsize=1)
def _nvrtc():
    """The NVRTC library or None.  A bare soname first: libmlx has usually
    loaded it already, and dlopen then returns that copy."""
    names = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    cands = list(names)
    for d in [h / "lib64" for h in _cuda_homes()] + _pip_nvidia_dirs("lib"):
        cands += [str(d / n) for n in names]
    found = ctypes.util.find_library("nvrtc")
    if found:
        cands.append(found)
    for c in cands:
        try:
            lib = ctypes.CDLL(c)
            lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            return lib
        except OSError:
            continue
    return None


@lru_cache(maxsize=1)
def include_dirs() -> tuple:
    """Directories holding cuda_bf16.h (toolkit or NVIDIA's pip wheels)."""
    dirs = [h / "include" for h in _cuda_homes()] + _pip_nvidia_dirs("include")
    found = [str(d.resolve()) for d in dirs if (d / "cuda_bf16.h").is_file()]
    return tuple(dict.fromkeys(found))


@lru_cache(maxsize=1)
def _compute_capability() -> Optional[tuple]:
    """(major, minor) of CUDA device 0 (MLX's default) from the driver, or None."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cu.cuInit(0) != 0 or cu.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if cu.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) != 0:
        return None
    if cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) != 0:
        return None
    return major.value, minor.value


def arch() -> Optional[str]:
    """'sm_90a' on a Hopper GPU when this module can compile for it, else None."""
    cc = _compute_capability()
    if cc != (9, 0) or _nvrtc() is None or not include_dirs():
        return None
    return "sm_90a"


class CompileError(RuntimeError):
    pass


def _cache_dir() -> Optional[Path]:
    d = Path(os.environ.get("NATTEN_CUDA_CACHE") or Path.home() / ".cache" / "natten_mlx" / "cubin")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return d


_cubins: dict = {}


def _check(lib, rc, what):
    if rc != 0:
        raise CompileError(f"natten_mlx CUDA tier: {what} failed: {lib.nvrtcGetErrorString(rc).decode()}")


def _nvrtc_compile(source: str, target: str, opts: Sequence[str]) -> bytes:
    lib = _nvrtc()
    if lib is None:
        raise CompileError("natten_mlx CUDA tier: NVRTC library not found")
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"natten.cu", 0, None, None),
           "nvrtcCreateProgram")
    try:
        args = [f"-arch={target}".encode()] + [o.encode() for o in opts]
        argv = (ctypes.c_char_p * len(args))(*args)
        rc = lib.nvrtcCompileProgram(prog, len(args), argv)
        if rc != 0:
            n = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
            log = ctypes.create_string_buffer(n.value + 1)
            lib.nvrtcGetProgramLog(prog, log)
            raise CompileError(f"natten_mlx CUDA tier: NVRTC compile for {target} failed:\n"
                               + log.value.decode(errors="replace")[:4000])
        n = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(n)), "nvrtcGetCUBINSize")
        buf = ctypes.create_string_buffer(n.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
        return buf.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def cubin(source: str, target: str = "sm_90a") -> bytes:
    """The cubin of `source` (device code; _PRELUDE is prepended) for `target`."""
    opts = ["-std=c++17"] + [f"--include-path={d}" for d in include_dirs()]
    full = _PRELUDE + source
    key = hashlib.sha256("\0".join([full, target] + opts).encode()).hexdigest()[:32]
    hit = _cubins.get(key)
    if hit is not None:
        return hit
    cache = _cache_dir()
    path = cache / f"{key}.cubin" if cache else None
    if path is not None and path.is_file():
        data = path.read_bytes()
    else:
        data = _nvrtc_compile(full, target, opts)
        if path is not None:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            try:  # atomic: another process may write the same key
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError:
                pass
    _cubins[key] = data
    return data
