"""Parameter normalisation and window helpers (natten-mlx ``utils``)."""

from natten_mlx.utils import params, window  # noqa: F401

__all__ = ["params", "window"]
