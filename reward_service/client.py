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


def _body(images: Any, prompts: list[str] | None, reward: RewardSpec, as_json: bool,
          metadata: list[dict] | None = None) -> dict[str, Any]:
    """images: (B, 3, H, W) uint8 or float32 in [0, 1], numpy or torch; metadata: B dicts."""
    fields = {"prompts": prompts, "reward": reward, "metadata": metadata}
    if as_json:
        arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        payload: dict[str, Any] = {"images": encode_png_b64(arr), **fields}
        return {"json": {k: v for k, v in payload.items() if v is not None}}
    meta = {k: v for k, v in fields.items() if v is not None}
    return {"content": codec.encode({"images": images}, meta), "headers": {"Content-Type": SAFETENSORS_MEDIA_TYPE}}


@dataclass
class GradResult:
    scores: np.ndarray  # (B,) float32, weighted
    grad: np.ndarray  # (B, 3, H, W) float32: d(weighted score) / d(images)
    version: str


def _grad_body(images: Any, prompts: list[str] | None, reward: RewardSpec) -> dict[str, Any]:
    return _body(images.float() if hasattr(images, "float") else np.asarray(images, np.float32),
                 prompts, reward, as_json=False)


def _grad_result(raw: bytes) -> GradResult:
    d = codec.decode(raw)
    return GradResult(d.tensors["scores"].copy(), d.tensors["grad"].copy(), str(d.metadata.get("version", "")))


def _result(data: dict[str, Any]) -> ScoreResult:
    return ScoreResult(np.asarray(data["scores"], dtype=np.float64),
                       {k: np.asarray(v) for k, v in data["components"].items()}, data["version"], data)


class RewardClient(SyncClient):
    def score(self, images: Any, prompts: list[str] | None = None, reward: RewardSpec = None,
              *, as_json: bool = False, metadata: list[dict] | None = None) -> ScoreResult:
        """Score images; `as_json` sends base64 PNGs instead of a safetensors body (lossy for float);
        `metadata`: one dict per image for rewards that read per-sample metadata."""
        return _result(self.request("POST", "/score", **_body(images, prompts, reward, as_json, metadata)).json())

    def grad(self, images: Any, prompts: list[str] | None = None, reward: RewardSpec = None) -> GradResult:
        """Scores and d(score)/d(images) of a differentiable reward (POST /grad): images float in
        [0, 1], (B, 3, H, W); the gradient has the same shape."""
        return _grad_result(self.request("POST", "/grad", **_grad_body(images, prompts, reward)).content)

    def rewards(self) -> list[dict[str, Any]]:
        return self.request("GET", "/rewards").json()

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200


class AsyncRewardClient(AsyncClient):
    async def score(self, images: Any, prompts: list[str] | None = None, reward: RewardSpec = None,
                    *, as_json: bool = False, metadata: list[dict] | None = None) -> ScoreResult:
        return _result((await self.request("POST", "/score",
                                           **_body(images, prompts, reward, as_json, metadata))).json())

    async def grad(self, images: Any, prompts: list[str] | None = None, reward: RewardSpec = None) -> GradResult:
        return _grad_result((await self.request("POST", "/grad", **_grad_body(images, prompts, reward))).content)

    async def rewards(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/rewards")).json()
