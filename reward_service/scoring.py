"""Turning a /score request into scores: parse either body form, validate, batch, combine.
No FastAPI here; app.py stays thin."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from lasro_common.batching import MicroBatcher
from lasro_common.errors import (
    InvalidInput,
    MalformedBody,
    UnknownName,
    UnsupportedMedia,
    WireError,
)
from lasro_common.images import decode_b64_images, validate_images

from .rewards import Reward


@dataclass
class ScoreRequest:
    images: np.ndarray  # (B, 3, H, W) float32 in [0, 1]
    prompts: list[str]
    weights: dict[str, float]  # reward name -> weight


def parse_reward_spec(spec: Any, known: dict[str, Reward], default: str | None) -> dict[str, float]:
    if spec is None:
        if default is None:
            raise InvalidInput("say which reward: 'reward' is a name or {name: weight}")
        spec = default
    weights = {spec: 1.0} if isinstance(spec, str) else spec
    if not isinstance(weights, dict) or not weights:
        raise InvalidInput("'reward' must be a name or a non-empty object of name -> weight")
    for name, w in weights.items():
        if name not in known:
            raise UnknownName(f"unknown reward {name!r}; GET /rewards lists: {sorted(known)}", code="unknown_reward")
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise InvalidInput(f"weight of {name!r} must be a finite number, got {w!r}")
    return {k: float(v) for k, v in weights.items()}


def _prompts(value: Any, b: int) -> list[str]:
    if value is None:
        return [""] * b
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise InvalidInput("'prompts' must be a list of strings")
    if len(value) != b:
        raise InvalidInput(f"{len(value)} prompts for a batch of {b} images", code="batch_mismatch")
    return value


def parse_request(content_type: str, body: bytearray, known: dict[str, Reward], default: str | None,
                  *, max_batch: int, max_side: int) -> ScoreRequest:
    if content_type == SAFETENSORS_MEDIA_TYPE:
        decoded = codec.decode(body)
        if "images" not in decoded.tensors:
            raise InvalidInput("safetensors body needs a tensor named 'images' (B, 3, H, W)")
        images = validate_images(decoded.tensors["images"], max_batch=max_batch, max_side=max_side)
        meta = decoded.metadata
    elif content_type == "application/json":
        try:
            meta = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MalformedBody(f"body is not valid JSON: {e}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
            raise InvalidInput("JSON body needs 'images': a list of base64 PNG/JPEG strings")
        images = decode_b64_images(meta["images"], max_batch=max_batch, max_side=max_side)
    else:
        raise UnsupportedMedia(f"send Content-Type {SAFETENSORS_MEDIA_TYPE} or application/json")
    weights = parse_reward_spec(meta.get("reward"), known, default)
    return ScoreRequest(images, _prompts(meta.get("prompts"), images.shape[0]), weights)


def make_batch_fn(reward: Reward):
    """The model call one MicroBatcher makes: concatenate requests, score once, split back."""

    def run(items: list[tuple[np.ndarray, list[str]]]) -> list[np.ndarray]:
        images = torch.from_numpy(np.concatenate([i for i, _ in items]) if len(items) > 1 else items[0][0])
        prompts = [p for _, ps in items for p in ps]
        with torch.inference_mode():
            scores = torch.as_tensor(reward.score(images, prompts)).detach().float().cpu().reshape(-1).numpy()
        if scores.shape != (len(prompts),) or not np.isfinite(scores).all():
            raise WireError(code="reward_failed", status=500, message=f"reward {reward.name!r} returned {scores.shape} scores with non-finite "
                               f"values for {len(prompts)} images")
        sizes = np.cumsum([len(ps) for _, ps in items])[:-1]
        return np.split(scores, sizes)

    return run


async def score(req: ScoreRequest, rewards: dict[str, Reward], batchers: dict[str, MicroBatcher]) -> dict:
    """Score with each component reward (merged with concurrent requests), then weight and sum."""
    start = time.perf_counter()
    b, h, w = req.images.shape[0], req.images.shape[2], req.images.shape[3]
    components = {}
    for name in req.weights:
        out = await batchers[name].submit((req.images, req.prompts), size=b, key=(h, w))
        components[name] = out.tolist()
    total = sum(np.asarray(components[n], dtype=np.float64) * wt for n, wt in req.weights.items())
    versions = {n: rewards[n].version for n in req.weights}
    return {
        "scores": [float(x) for x in total],
        "components": components,
        "reward": req.weights,
        "version": "+".join(f"{n}@{v}" for n, v in versions.items()),
        "versions": versions,
        "timing_ms": {"score": round((time.perf_counter() - start) * 1000, 3)},
    }
