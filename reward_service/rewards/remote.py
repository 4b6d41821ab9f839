"""A reward that lives behind any HTTP endpoint speaking the JSON form of `/score`:
`{"images": [base64 PNG...], "prompts": [...], "reward": NAME}` in, `{"scores": [...]}` out."""

from __future__ import annotations

import math

import httpx
import torch

from lasro_common.client import SyncClient
from lasro_common.errors import ServiceError, WireError
from lasro_common.images import encode_png_b64

from .base import Reward


class RemoteRewardError(WireError):
    """The remote endpoint failed or did not answer with B finite scores (502 to our caller)."""

    status, code = 502, "upstream_error"


class RemoteReward(Reward):
    description = "Proxy to a custom HTTP reward endpoint (JSON form of /score)."

    def __init__(self, name: str, url: str, *, token: str | None = None, timeout: float = 120.0,
                 upstream_reward: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward {name!r}: URL must start with http:// or https://, got {url!r}")
        self.name, self.url, self.token, self.timeout = name, url, token, timeout
        self.upstream_reward = upstream_reward
        self.description = f"Proxy to {url}"
        self._client: SyncClient | None = None

    def setup(self, device: str) -> None:
        base, _, path = self.url.partition("://")[2].partition("/")
        scheme = self.url.split("://")[0]
        self._path = "/" + path if path else "/score"
        self._client = SyncClient(f"{scheme}://{base}", token=self.token, timeout=self.timeout)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        assert self._client is not None, "setup() was not called"
        body: dict = {"images": encode_png_b64(images.numpy()), "prompts": prompts}
        if self.upstream_reward:
            body["reward"] = self.upstream_reward
        try:
            scores = self._client.request("POST", self._path, json=body).json()["scores"]
        except (KeyError, TypeError, ValueError, httpx.HTTPError, ServiceError) as e:
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url}: bad answer ({e})") from None
        if (not isinstance(scores, list) or len(scores) != len(prompts)
                or not all(isinstance(s, int | float) and math.isfinite(s) for s in scores)):
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url} must return "
                                    f"{len(prompts)} finite scores")
        return torch.tensor(scores, dtype=torch.float32)
