"""Reward service configuration: environment variables prefixed REWARD_, or CLI flags."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from lasro_common.server import ServiceSettings

# Flags whose name is not the field's: `--reward NAME` (repeatable) fills `rewards`.
FLAG_NAMES = {"rewards": "--reward"}


class RewardSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REWARD_", frozen=True)

    port: int = Field(8100, ge=0, le=65535, description="TCP port (0 picks a free one).")
    rewards: list[str] = Field(
        default=["jpeg_compressibility", "jpeg_incompressibility", "toy_attribute_binding"],
        description="Rewards to load at start: registered names or module:Class.")
    reward_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Keyword arguments per reward name, e.g. {\"clip_score\": {\"model\": \"...\"}}.")
    remote: list[str] = Field(default_factory=list, description="Remote rewards as NAME=URL (JSON /score protocol).")
    remote_token: SecretStr | None = Field(None, description="Bearer token sent to remote reward endpoints.")
    device: str = Field("cpu", description="Torch device for model-based rewards.")
    max_side: int = Field(2048, ge=1, description="Largest image side in pixels (413 above).")
    max_decoded_mb: float = Field(256.0, gt=0, description="Largest decoded size of one request's images (float32 B x 3 x H x W), in MiB, checked from the image headers before decoding (413 above).")

    @field_validator("remote")
    @classmethod
    def _check_remote(cls, v: list[str]) -> list[str]:
        for item in v:
            name, sep, url = item.partition("=")
            if not sep or not name or not url.startswith(("http://", "https://")):
                raise ValueError(f"remote reward {item!r} must look like NAME=http://host:port/score")
        return v
