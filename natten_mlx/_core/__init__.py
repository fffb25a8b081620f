"""Internal tiers and dispatch of natten_mlx."""
