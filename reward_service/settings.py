"""Reward service configuration: environment variables prefixed REWARD_, or CLI flags."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from lasro_common.server import ServiceSettings

# Flags whose name is not the field's: `--reward NAME` (repeatable) fills `rewards`.
FLAG_NAMES = {"rewards": "--reward"}
FLOW_GRPO_SCHEME = "flow_grpo+"  # --remote NAME=flow_grpo+http://host:port/path
TAKEN_PATHS = frozenset({"/score", "/grad", "/rewards", "/healthz", "/readyz", "/metrics", "/docs", "/redoc",
                         "/openapi.json", "/docs/oauth2-redirect", "/docs/assets"})


class RewardSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REWARD_", frozen=True)

    port: int = Field(8100, ge=0, le=65535, description="TCP port (0 picks a free one).")
    rewards: list[str] = Field(
        default=["jpeg_compressibility", "jpeg_incompressibility", "toy_attribute_binding"],
        description="Rewards to load at start: registered names or module:Class.")
    reward_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Keyword arguments per reward name, e.g. {\"clip_score\": {\"model\": \"...\"}}.")
    remote: list[str] = Field(default_factory=list, description="Remote rewards as NAME=URL (JSON /score protocol), or NAME=flow_grpo+URL for a flow_grpo / ddpo-pytorch style reward server (pickled dicts; their replies are read with a restricted unpickler). Options per NAME in --reward-options.")
    remote_token: SecretStr | None = Field(None, description="Bearer token sent to remote reward endpoints.")
    device: str = Field("cpu", description="Torch device for model-based rewards.")
    max_side: int = Field(2048, ge=1, description="Largest image side in pixels (413 above).")
    max_decoded_mb: float = Field(256.0, gt=0, description="Largest decoded size of one request's images (float32 B x 3 x H x W), in MiB, checked from the image headers before decoding (413 above).")
    flow_grpo_route: str | None = Field(None, description="Also serve flow_grpo's reward-server format (a pickled dict of JPEG/PNG bytes in, a pickled {'scores', 'outputs'} out) at POST PATH, e.g. /; read with a restricted unpickler (plain data only). Off by default: pickle is a format for trusted peers (docs/api.md).")
    flow_grpo_reward: str | None = Field(None, description="The reward that --flow-grpo-route scores with; default: the first loaded reward.")

    @field_validator("remote")
    @classmethod
    def _check_remote(cls, v: list[str]) -> list[str]:
        for item in v:
            name, sep, url = item.partition("=")
            url = url.removeprefix(FLOW_GRPO_SCHEME)
            if not sep or not name or not url.startswith(("http://", "https://")):
                raise ValueError(f"remote reward {item!r} must look like NAME=http://host:port/score "
                                 f"or NAME={FLOW_GRPO_SCHEME}http://host:port/")
        return v

    @field_validator("flow_grpo_route")
    @classmethod
    def _check_route(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("/") or any(c in v for c in "{}?# "):
            raise ValueError(f"flow_grpo_route {v!r} must be a plain path starting with /, e.g. / or /flow_grpo")
        if v.rstrip("/") in TAKEN_PATHS:
            raise ValueError(f"flow_grpo_route {v!r} is a route of the service already; pick another path")
        return v
