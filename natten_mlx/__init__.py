"""natten-mlx: neighborhood attention for MLX (Linux re-implementation)."""

__version__ = "0.3.3"
