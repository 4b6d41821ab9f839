"""Moved to lasro_diffusion.consistency (kept for one commit so the move is pure)."""

from lasro_diffusion.consistency import (  # noqa: F401
    ConsistencyDistillationLoss,
    DDIMSolver,
    boundary_scalings,
    guidance_scale_embedding,
    update_ema,
)
