"""`RewardClient` / `AsyncRewardClient`: call a reward service from any project.

    from reward_service.client import RewardClient
    with RewardClient("http://127.0.0.1:8100", token=...) as rc:
        result = rc.score(images, prompts, reward="jpeg_compressibility")   # images (B, 3, H, W)
        result.scores                                                     # np.ndarray (B,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from lasro_common.client import AsyncClient, SyncClient
from lasro_common.images import encode_png_b64

RewardSpec = str | dict[str, float] | None


@dataclass
class ScoreResult:
    scores: np.ndarray  # (B,) float64
    components: dict[str, np.ndarray]
    version: str
    raw: dict[str, Any]


def _body(images: Any, prompts: list[str] | None, reward: RewardSpec, as_json: bool) -> dict[str, Any]:
    """images: (B, 3, H, W) uint8 or float32 in [0, 1], numpy or torch."""
    if as_json:
        arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        payload: dict[str, Any] = {"images": encode_png_b64(arr), "prompts": prompts, "reward": reward}
        return {"json": {k: v for k, v in payload.items() if v is not None}}
    meta = {k: v for k, v in {"prompts": prompts, "reward": reward}.items() if v is not None}
    return {"content": codec.encode({"images": images}, meta), "headers": {"Content-Type": SAFETENSORS_MEDIA_TYPE}}


def _result(data: dict[str, Any]) -> ScoreResult:
    return ScoreResult(np.asarray(data["scores"], dtype=np.float64),
                       {k: np.asarray(v) for k, v in data["components"].items()}, data["version"], data)


class RewardClient(SyncClient):
    def score(self, images: Any, prompts: list[str] | None = None, reward: RewardSpec = None,
              *, as_json: bool = False) -> ScoreResult:
        """Score images; `as_json` sends base64 PNGs instead of a safetensors body (lossy for float)."""
        return _result(self.request("POST", "/score", **_body(images, prompts, reward, as_json)).json())

    def rewards(self) -> list[dict[str, Any]]:
        return self.request("GET", "/rewards").json()

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200


class AsyncRewardClient(AsyncClient):
    async def score(self, images: Any, prompts: list[str] | None = None, reward: RewardSpec = None,
                    *, as_json: bool = False) -> ScoreResult:
        return _result((await self.request("POST", "/score", **_body(images, prompts, reward, as_json))).json())

    async def rewards(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/rewards")).json()
