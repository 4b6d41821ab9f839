"""`SurrogateClient` / `AsyncSurrogateClient`: scores and dR/dz from a surrogate service.

    from surrogate_service.client import SurrogateClient
    with SurrogateClient("http://127.0.0.1:8200", token=...) as sc:
        res = sc.grad(latents, prompts, head=2)   # latents torch (B, C, h, w) float16/float32
        res.scores, res.grad, res.version          # grad: same shape and dtype as latents
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from lasro_common.client import AsyncClient, SyncClient


@dataclass
class GradResult:
    scores: Any  # (B,) float32; torch if the latents were torch, else numpy
    grad: Any  # (B, C, h, w), dtype of the latents
    version: int


def _request(latents: Any, prompts: list[str], head: int) -> dict[str, Any]:
    return {"content": codec.encode({"latents": latents}, {"prompts": list(prompts), "head": int(head)}),
            "headers": {"Content-Type": SAFETENSORS_MEDIA_TYPE}}


def _grad_result(body: bytes, like: Any) -> GradResult:
    d = codec.decode(bytearray(body))  # writable: torch tensors share its memory
    if hasattr(like, "detach"):
        return GradResult(d.torch("scores"), d.torch("grad"), int(d.metadata["version"]))
    return GradResult(d.tensors["scores"], d.tensors["grad"], int(d.metadata["version"]))


def _score_result(data: dict[str, Any], like: Any) -> tuple[Any, int]:
    scores = np.asarray(data["scores"], dtype=np.float32)
    if hasattr(like, "detach"):
        import torch

        scores = torch.from_numpy(scores)
    return scores, int(data["version"])


class SurrogateClient(SyncClient):
    def grad(self, latents: Any, prompts: list[str], head: int) -> GradResult:
        """R_psi(z, c) and dR/dz for a batch of latents; head 1 = one-step, 2 = two-step outputs."""
        return _grad_result(self.request("POST", "/grad", **_request(latents, prompts, head)).content, latents)

    def score(self, latents: Any, prompts: list[str], head: int) -> tuple[Any, int]:
        """(scores (B,), version)."""
        return _score_result(self.request("POST", "/score", **_request(latents, prompts, head)).json(), latents)

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/status").json()


class AsyncSurrogateClient(AsyncClient):
    async def grad(self, latents: Any, prompts: list[str], head: int) -> GradResult:
        resp = await self.request("POST", "/grad", **_request(latents, prompts, head))
        return _grad_result(resp.content, latents)

    async def score(self, latents: Any, prompts: list[str], head: int) -> tuple[Any, int]:
        resp = await self.request("POST", "/score", **_request(latents, prompts, head))
        return _score_result(resp.json(), latents)

    async def status(self) -> dict[str, Any]:
        return (await self.request("GET", "/status")).json()
