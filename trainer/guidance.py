"""The guidance scale each model family samples with, decided from a pipeline's JSON files
before any weights load (the config's default and the sampler's share it)."""

from __future__ import annotations

import json
from pathlib import Path


def default_guidance(base_model: str, lcm_lora: str | None = None) -> float:
    """The guidance scale a model family samples with: what its exported folder says (lasro.json),
    the toy world's for the toy LCM, 8.0 for an LCM with a guidance embedding (LCM-Dreamshaper,
    LCM-SDXL, LCM-SSD-1B), else 0: SDXL-Turbo and LCM-LoRA sample without guidance."""
    from toyworld.paths import LCM_DIR
    from toyworld.sampling import LCM_GUIDANCE

    if (Path(base_model) / "lasro.json").is_file():
        return float(json.loads((Path(base_model) / "lasro.json").read_text())["guidance_scale"])
    if Path(base_model).resolve() == LCM_DIR.resolve():
        return LCM_GUIDANCE
    if lcm_lora:
        return 0.0
    from lasro_diffusion.loading import read_pipeline_json

    unet = read_pipeline_json(str(base_model), "unet/config.json")
    return 8.0 if unet is None or unet.get("time_cond_proj_dim") else 0.0
