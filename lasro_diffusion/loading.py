"""Loading diffusers pipelines: the process-wide load lock and a pipeline's own JSON files.

Everything that loads a model in this project (the trainer's few-step model, the surrogate, every
reward) goes through ``from_pretrained`` under ``MODEL_LOAD_LOCK``; the JSON readers let code
decide things (family, latent size, VAE scale) from a pipeline folder or hub id before loading
any weights.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

# diffusers/transformers `from_pretrained` initialise on the meta device by patching module
# registration process-wide, so two loads in two threads of one process can corrupt each other
# ("Cannot copy out of meta tensor"). Every model load in this project holds this lock.
MODEL_LOAD_LOCK = threading.RLock()


def read_pipeline_json(base_model: str, filename: str) -> dict | None:
    """A JSON file of a pipeline (local folder or hub id, hub files via the local HF cache)."""
    local = Path(base_model)
    if local.is_dir():
        path = local / filename
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(base_model, filename)).read_text())
    except Exception:  # missing file or no network: callers fall back to SD/SDXL defaults
        return None


def vae_scale_factor_of(base_model: str) -> int:
    """2**(len(vae block_out_channels)-1) from vae/config.json, else 8 (every SD/SDXL VAE)."""
    cfg = read_pipeline_json(base_model, "vae/config.json")
    if cfg and cfg.get("block_out_channels"):
        return 2 ** (len(cfg["block_out_channels"]) - 1)
    return 8


def default_latent_size(base_model: str, vae_scale_factor: int) -> int:
    cfg = read_pipeline_json(base_model, "unet/config.json")
    if cfg and isinstance(cfg.get("sample_size"), int):
        return cfg["sample_size"]
    return 1024 // vae_scale_factor  # SDXL default resolution


def component_config(base_model: str, key: str, subfolder: str = "vae"):
    """A key of a component's config.json (local folder or hub id), or None."""
    cfg = read_pipeline_json(base_model, f"{subfolder}/config.json") or {}
    return cfg.get(key)
