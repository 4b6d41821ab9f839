"""Moved to lasro_diffusion.text (kept for one commit so the move is pure)."""

from lasro_diffusion.loading import read_pipeline_json, vae_scale_factor_of  # noqa: F401
from lasro_diffusion.text import TextCond, TextEncoderBundle  # noqa: F401
