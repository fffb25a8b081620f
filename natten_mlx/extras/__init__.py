"""Model-specific extras.

allin1: the DiNAT-style fused QK+RPB / AV ops used by the All-In-One music
structure analyzer (mir-aidj/all-in-one), spatial-first, differentiable.
"""

__all__ = ["allin1"]


def __getattr__(name):
    if name == "allin1":
        import importlib

        return importlib.import_module(f"{__name__}.allin1")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
