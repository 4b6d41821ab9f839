"""A reward that lives behind an HTTP endpoint, in one of two dialects:

- ours (`--remote NAME=http://host:port/score`): the JSON form of `/score`,
  `{"images": [base64 PNG...], "prompts": [...], "metadata": [...], "reward": NAME}` in,
  `{"scores": [...]}` out;
- flow_grpo's (`--remote NAME=flow_grpo+http://host:port/`): what flow_grpo's and ddpo-pytorch's
  clients send their reward servers, `pickle.dumps({"images": [JPEG bytes...], "prompts": [...],
  "meta_datas": [...], "only_strict": True})`, and their pickled reply's `scores` (GenEval style)
  or `outputs` (DeQA / UnifiedReward style). We send plain data only, and read the reply with the
  restricted unpickler (lasro_common/safe_pickle.py): a server can send wrong numbers, not code.

Options (`--reward-options '{"NAME": {...}}'`): `upstream_reward` (ours: the reward the far
service should use); flow_grpo's: `fields` (extra keys of every request, default
{"only_strict": true}, as flow_grpo trains), `score_key` (the reply's key to read; default
`scores`, else `outputs`), `jpeg_quality` (default 75, PIL's and flow_grpo's), `batch_size`
(images per request, default 64 as flow_grpo's clients).
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import torch

from lasro_common import safe_pickle
from lasro_common.client import SyncClient
from lasro_common.errors import LasroError, ServiceError, WireError
from lasro_common.images import encode_files, encode_png_b64

from .base import Reward

FLOW_GRPO = "flow_grpo+"


class RemoteRewardError(WireError):
    """The remote endpoint failed or did not answer with B finite scores (502 to our caller)."""

    status, code = 502, "upstream_error"


class RemoteReward(Reward):
    description = "Proxy to a custom HTTP reward endpoint (JSON form of /score, or flow_grpo's pickled dicts)."

    def __init__(self, name: str, url: str, *, token: str | None = None, timeout: float = 120.0,
                 upstream_reward: str | None = None, fields: dict[str, Any] | None = None,
                 score_key: str | None = None, jpeg_quality: int = 75, batch_size: int = 64,
                 max_reply_mb: float = 8.0):
        self.dialect = "flow_grpo" if url.startswith(FLOW_GRPO) else "json"
        url = url.removeprefix(FLOW_GRPO)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward {name!r}: URL must start with http://, https:// or "
                             f"{FLOW_GRPO}http://, got {url!r}")
        if not 1 <= jpeg_quality <= 95:
            raise ValueError(f"remote reward {name!r}: jpeg_quality must be 1..95, got {jpeg_quality}")
        if batch_size < 1:
            raise ValueError(f"remote reward {name!r}: batch_size must be >= 1, got {batch_size}")
        if not max_reply_mb > 0:
            raise ValueError(f"remote reward {name!r}: max_reply_mb must be > 0, got {max_reply_mb}")
        self.max_reply_bytes = int(max_reply_mb * 2**20)  # a reply is read up to this, then refused
        self.name, self.url, self.token, self.timeout = name, url, token, timeout
        self.upstream_reward = upstream_reward
        self.fields = {"only_strict": True} if fields is None else dict(fields)
        safe_pickle.dumps(self.fields)  # plain data only: refused here, at start, not per request
        self.score_key, self.jpeg_quality, self.batch_size = score_key, jpeg_quality, batch_size
        self.description = f"Proxy to {url}" + (" (flow_grpo reward-server format)" if self.dialect == "flow_grpo" else "")
        self._client: SyncClient | None = None

    @classmethod
    def configured(cls, name: str, url: str, options: dict[str, Any] | None, **kw: Any) -> RemoteReward:
        """From `--remote NAME=URL` and `--reward-options`' entry for NAME; a wrong option says which."""
        try:
            return cls(name, url, **(options or {}), **kw)
        except (TypeError, LasroError) as e:
            raise ValueError(f"--reward-options for remote reward {name!r}: {e}") from None

    def setup(self, device: str) -> None:
        scheme, _, rest = self.url.partition("://")
        base, _, path = rest.partition("/")
        self._path = "/" + path if path else ("/" if self.dialect == "flow_grpo" else "/score")
        self._client = SyncClient(f"{scheme}://{base}", token=self.token, timeout=self.timeout)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        assert self._client is not None, "setup() was not called"
        if self.dialect == "flow_grpo":
            step = self.batch_size
            scores = [s for i in range(0, len(prompts), step)
                      for s in self._flow_grpo(images[i : i + step], prompts[i : i + step],
                                               metadata[i : i + step] if metadata else None)]
        else:
            scores = self._json(images, prompts, metadata)
        if len(scores) != len(prompts) or not all(math.isfinite(s) for s in scores):
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url} must return "
                                    f"{len(prompts)} finite scores, got {len(scores)}")
        return torch.tensor(scores, dtype=torch.float32)

    def _post(self, **kw: Any) -> httpx.Response:
        try:
            return self._client.request("POST", self._path, max_bytes=self.max_reply_bytes, **kw)
        except (httpx.HTTPError, ServiceError) as e:
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url}: {str(e)[-300:]}") from None

    def _json(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None) -> list[float]:
        body: dict = {"images": encode_png_b64(images.numpy()), "prompts": prompts}
        if metadata and any(metadata):
            body["metadata"] = metadata
        if self.upstream_reward:
            body["reward"] = self.upstream_reward
        try:
            scores = self._post(json=body).json()["scores"]
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url}: bad answer ({e})") from None
        if not isinstance(scores, list) or not all(isinstance(s, int | float) and not isinstance(s, bool)
                                                   for s in scores):
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url}: 'scores' is not a list of numbers")
        return [float(s) for s in scores]

    def _flow_grpo(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None) -> list[float]:
        body = {"images": encode_files(images.numpy(), "JPEG", quality=self.jpeg_quality), "prompts": list(prompts),
                "meta_datas": list(metadata) if metadata else [{} for _ in prompts], **self.fields}
        resp = self._post(content=safe_pickle.dumps(body), headers={"Content-Type": "application/octet-stream"})
        try:
            data = safe_pickle.loads(resp.content)
        except WireError as e:
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url}: the reply is not a plain-data "
                                    f"pickle ({e.message})") from None
        keys = [self.score_key] if self.score_key else ["scores", "outputs"]
        key = next((k for k in keys if isinstance(data, dict) and k in data), None)
        if key is None:
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url}: the reply has no "
                                    f"{' or '.join(map(repr, keys))} (set score_key in --reward-options)")
        try:
            values = np.asarray(data[key], dtype=np.float64).reshape(-1)  # lists, arrays, (B, 1) arrays
        except (TypeError, ValueError):
            raise RemoteRewardError(f"remote reward {self.name!r} at {self.url}: {key!r} is not numbers "
                                    "(set score_key in --reward-options)") from None
        return values.tolist()
