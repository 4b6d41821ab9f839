"""Turning a /score request into scores: parse either body form, validate, batch, combine.
No FastAPI here; app.py stays thin.

A request is planned before it is decoded (`plan_request`: JSON parsed, image headers read,
every limit checked), so what it will cost is known first: `read_request` reserves that memory
in the service's budget and does the CPU work (JSON parsing, PNG/JPEG decoding, uint8 -> float)
in a worker thread, never on the event loop that answers /healthz.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
from lasro_common.images import ImagePlan, check_images, plan_b64_images, to_float_images
from lasro_common.limits import check_prompts, ledger_of, read_body

from .rewards import Reward
from .rewards.base import takes_metadata

# Merging requests copies their images into one batch; beyond this many bytes the copy would cost
# more memory than batching saves time (large images keep a model busy on their own).
MERGE_COPY_LIMIT = 64 * 1024 * 1024
# Parsing and decoding run here, off the event loop; two threads keep the CPU and the memory of
# decodes in flight bounded (each thread also keeps its own allocator arena).
DECODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")


@dataclass
class ScoreRequest:
    images: np.ndarray  # (B, 3, H, W) float32 in [0, 1]
    prompts: list[str]
    weights: dict[str, float]  # reward name -> weight
    metadata: list[dict] | None = None  # B per-sample dicts (GenEval-style rewards), if sent


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


def check_metadata(value: Any, b: int) -> list[dict] | None:
    """Per-sample metadata: None, or B objects (null counts as {}) for rewards whose `score`
    takes `metadata` (reward_service/rewards/base.py)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(m is None or isinstance(m, dict) for m in value):
        raise InvalidInput("'metadata' must be a list of objects, one per image")
    if len(value) != b:
        raise InvalidInput(f"{len(value)} metadata entries for a batch of {b} images", code="batch_mismatch")
    return [m or {} for m in value]


@dataclass
class ScorePlan:
    """A checked request whose images are not decoded yet; `decoded_bytes` is what decoding costs."""

    images: ImagePlan | np.ndarray  # base64 images (headers read) or the safetensors tensor
    prompts: list[str]
    weights: dict[str, float]
    decoded_bytes: int
    metadata: list[dict] | None = None

    def decode(self) -> ScoreRequest:
        images = self.images.decode() if isinstance(self.images, ImagePlan) else to_float_images(self.images)
        return ScoreRequest(images, self.prompts, self.weights, self.metadata)


def _json_body(body: bytearray) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedBody(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise MalformedBody("body is JSON nested too deeply") from None


def plan_request(content_type: str, body: bytearray, known: dict[str, Reward], default: str | None,
                 *, max_batch: int, max_side: int, max_decoded_bytes: int | None = None,
                 max_prompt_chars: int | None = None) -> ScorePlan:
    """Parse and check everything without decoding a pixel."""
    if content_type == SAFETENSORS_MEDIA_TYPE:
        decoded = codec.decode(body)
        if "images" not in decoded.tensors:
            raise InvalidInput("safetensors body needs a tensor named 'images' (B, 3, H, W)")
        arr = decoded.tensors["images"]
        check_images(arr, max_batch=max_batch, max_side=max_side, max_decoded_bytes=max_decoded_bytes)
        images: ImagePlan | np.ndarray = arr
        b = arr.shape[0]
        # uint8 becomes a float32 copy; float32 is checked in place (a bool mask of NaN/Inf)
        cost = arr.size * 4 if arr.dtype == np.uint8 else arr.size
        meta = decoded.metadata
    elif content_type == "application/json":
        meta = _json_body(body)
        if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
            raise InvalidInput("JSON body needs 'images': a list of base64 PNG/JPEG strings")
        images = plan_b64_images(meta["images"], max_batch=max_batch, max_side=max_side).check(max_decoded_bytes)
        b, cost = len(images.raw), images.working_bytes
    else:
        raise UnsupportedMedia(f"send Content-Type {SAFETENSORS_MEDIA_TYPE} or application/json")
    weights = parse_reward_spec(meta.get("reward"), known, default)
    prompts = _prompts(meta.get("prompts"), b)
    if max_prompt_chars is not None:
        check_prompts(prompts, max_prompt_chars)
    return ScorePlan(images, prompts, weights, cost, check_metadata(meta.get("metadata"), b))


def parse_request(content_type: str, body: bytearray, known: dict[str, Reward], default: str | None,
                  **limits: Any) -> ScoreRequest:
    """`plan_request` then decode, in the calling thread (tests, embedding)."""
    return plan_request(content_type, body, known, default, **limits).decode()


async def read_request(request: Any, state: Any, ctype: str,
                       check: Callable[[ScorePlan], None] | None = None, *,
                       plan_fn: Callable[..., ScorePlan] = plan_request, default: str | None = None,
                       parse_cost: int = 1) -> ScoreRequest:
    """The request's body -> a decoded ScoreRequest: memory reserved in the service's budget
    first, parsing and decoding in worker threads. `check(plan)` may refuse it before decoding.
    `plan_fn` reads another body format (flow_grpo.py), whose parsing holds `parse_cost` x the
    body's size; `default` is the reward used when the request names none (else the first)."""
    s = state.settings
    body = await read_body(request)
    ledger = ledger_of(request.scope)
    if ctype == "application/json" or plan_fn is not plan_request:
        # parsed strings / unpickled bytes: about the body again (per copy)
        await ledger.reserve(parse_cost * len(body), "parsing the body")
    loop = asyncio.get_running_loop()
    plan = await loop.run_in_executor(DECODERS, lambda: plan_fn(
        ctype, body, state.rewards, default or next(iter(state.rewards), None), max_batch=s.max_batch,
        max_side=s.max_side, max_decoded_bytes=int(s.max_decoded_mb * 1024 * 1024),
        max_prompt_chars=s.max_prompt_chars))
    if check is not None:
        check(plan)
    await ledger.reserve(plan.decoded_bytes, "decoding the images")
    return await loop.run_in_executor(DECODERS, plan.decode)


def make_batch_fn(reward: Reward):
    """The model call one MicroBatcher makes: concatenate requests, score once, split back.
    An item is (images, prompts) or (images, prompts, metadata); metadata reaches only rewards
    whose `score` takes it, as B dicts ({} for a sample sent without)."""
    with_metadata = takes_metadata(reward)

    def call(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        kw = {"metadata": metadata} if with_metadata else {}
        with torch.inference_mode():
            out = reward.score(torch.from_numpy(images), prompts, **kw)
            return torch.as_tensor(out).detach().float().cpu().reshape(-1).numpy()

    def run(items: list[tuple]) -> list[np.ndarray]:
        parts = [(it[0], it[1], (it[2] if len(it) > 2 else None) or [{}] * len(it[1])) for it in items]
        prompts = [p for _, ps, _ in parts for p in ps]
        if len(parts) == 1:
            scores = call(*parts[0])
        elif sum(i.nbytes for i, _, _ in parts) > MERGE_COPY_LIMIT:  # big images: no merged copy, one call each
            scores = np.concatenate([call(*p) for p in parts])
        else:
            scores = call(np.concatenate([i for i, _, _ in parts]), prompts, [m for _, _, ms in parts for m in ms])
        if scores.shape != (len(prompts),) or not np.isfinite(scores).all():
            raise WireError(code="reward_failed", status=500, message=f"reward {reward.name!r} returned {scores.shape} scores with non-finite "
                               f"values for {len(prompts)} images")
        sizes = np.cumsum([len(ps) for _, ps, _ in parts])[:-1]
        return np.split(scores, sizes)

    return run


async def score(req: ScoreRequest, rewards: dict[str, Reward], batchers: dict[str, MicroBatcher]) -> dict:
    """Score with each component reward (merged with concurrent requests), then weight and sum."""
    start = time.perf_counter()
    b, h, w = req.images.shape[0], req.images.shape[2], req.images.shape[3]
    components = {}
    for name in req.weights:
        out = await batchers[name].submit((req.images, req.prompts, req.metadata), size=b, key=(h, w))
        components[name] = out.tolist()
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
        total = sum(np.asarray(components[n], dtype=np.float64) * wt for n, wt in req.weights.items())
    if not np.isfinite(total).all():  # finite components, but a weight like 1e308 overflows the sum
        raise InvalidInput(f"the weighted scores are not finite (weights {req.weights}); use smaller weights",
                           code="non_finite_output")
    versions = {n: rewards[n].version for n in req.weights}
    return {
        "scores": [float(x) for x in total],
        "components": components,
        "reward": req.weights,
        "version": "+".join(f"{n}@{v}" for n, v in versions.items()),
        "versions": versions,
        "timing_ms": {"score": round((time.perf_counter() - start) * 1000, 3)},
    }
