"""Compatibility shims for code written against upstream NATTEN.

    from natten_mlx.compat import v014   # natten1dqkrpb / natten1dav / ... (heads-first)
    natten = natten_mlx.compat.for_version("0.17.5")

Version routing (major, minor) as natten-mlx 0.3: <= 0.14 -> v014,
0.15 -> v015, 0.16/0.17 -> v017, anything newer -> v020.
"""

from __future__ import annotations

import importlib

__all__ = ["for_version", "v014", "v015", "v017", "v020"]


def for_version(version: str):
    """Return the shim module for an upstream NATTEN version string.

    Raises packaging.version.InvalidVersion for a string that is not a version.
    """
    from packaging.version import Version

    v = Version(str(version))
    key = (v.major, v.minor)
    if key <= (0, 14):
        name = "v014"
    elif key <= (0, 15):
        name = "v015"
    elif key <= (0, 17):
        name = "v017"
    else:
        name = "v020"
    return importlib.import_module(f"{__name__}.{name}")


def __getattr__(name):
    # `natten_mlx.compat.v014` etc. without importing every shim up front.
    if name in ("v014", "v015", "v017", "v020"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
