"""POST /grad: scores and d(weighted score)/d(pixels) for differentiable rewards (direct-backprop
baselines such as DRaFT/AlignProp/ReFL). Parsing is /score's; batching is the shared MicroBatcher.
No FastAPI routing here; app.py stays thin."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import torch
from fastapi import Request, Response

from lasro_common import SAFETENSORS_MEDIA_TYPE
from lasro_common.batching import MicroBatcher
from lasro_common.errors import InvalidInput, UnsupportedMedia, WireError
from lasro_common.server import RequestTimeout, media_type, tensor_response

from .rewards import Reward
from .scoring import MERGE_COPY_LIMIT, ScorePlan, ScoreRequest, read_request

# One batcher serves every differentiable reward; its key (reward, H, W) keeps them apart. It
# lives in RewardState.batchers under this name so the app's shutdown closes it with the others.
GRAD_BATCHER = "__grad__"

# The body is documented in the operation's description, not as a requestBody: a requestBody
# whose only media type is safetensors makes the schemathesis fuzz test (which cannot serialise
# safetensors) fail instead of fuzzing; without one it still calls /grad and must get a 4xx.
GRAD_OPENAPI: dict[str, Any] = {
    "description": (
        f"Request body ({SAFETENSORS_MEDIA_TYPE} only; anything else is 415): tensor 'images' float32 in "
        "[0, 1] or uint8, shape (B, 3, H, W); metadata 'prompts' (B strings) and 'reward' (a differentiable "
        "reward name or {name: weight}; default the first loaded reward). Response "
        f"({SAFETENSORS_MEDIA_TYPE}): 'scores' float32 (B,) and 'grad' float32 (B, 3, H, W) = "
        "d(weighted score)/d(images); metadata 'version', 'versions', 'reward', 'timing_ms'. "
        "A non-differentiable reward is 422 not_differentiable."),
    "responses": {"200": {"description": "safetensors with 'scores' and 'grad'.",
                          "content": {SAFETENSORS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
}


def make_grad_fn(rewards: dict[str, Reward]):
    """The call one batch makes: concatenate, score under autograd, d(sum of scores)/d(images).

    Summing is exact per image because a reward scores each image on its own (no batch coupling),
    so d(sum)/d(image_i) = d(score_i)/d(image_i)."""

    def run(items: list[tuple[str, np.ndarray, list[str]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        reward = rewards[items[0][0]]  # the batcher key includes the name: one reward per call
        if len(items) > 1 and sum(i.nbytes for _, i, _ in items) > MERGE_COPY_LIMIT:  # big: one call each
            return [o for item in items for o in run([item])]
        # a fresh array either way: the request's own buffer is never handed to autograd
        arr = np.concatenate([i for _, i, _ in items]) if len(items) > 1 else items[0][1].copy()
        prompts = [p for _, _, ps in items for p in ps]
        # One backward per chunk of the reward's batch_size: a graph is freed before the next one is
        # built, so peak memory is one chunk's activations, as under /score (exact: no batch coupling).
        step = getattr(reward, "batch_size", None) or len(prompts)
        s_parts, g_parts = [], []
        for i in range(0, len(prompts), step):
            images = torch.from_numpy(arr[i : i + step]).requires_grad_(True)
            with torch.enable_grad():
                scores = torch.as_tensor(reward.score(images, prompts[i : i + step])).reshape(-1)
                if not scores.requires_grad:
                    raise WireError(f"reward {reward.name!r} claims to be differentiable but its scores carry "
                                    "no gradient", code="reward_failed", status=500)
                (grad,) = torch.autograd.grad(scores.float().sum(), images, allow_unused=False)
            s_parts.append(scores.detach().float().numpy())
            g_parts.append(grad.float().numpy())
        s, g = np.concatenate(s_parts), np.concatenate(g_parts)
        if s.shape != (len(prompts),) or not (np.isfinite(s).all() and np.isfinite(g).all()):
            raise WireError(f"reward {reward.name!r} returned {s.shape} scores or gradients with non-finite "
                            f"values for {len(prompts)} images", code="reward_failed", status=500)
        bounds = np.cumsum([len(ps) for _, _, ps in items])[:-1]
        return list(zip(np.split(s, bounds), np.split(g, bounds), strict=True))

    return run


def grad_batcher(state: Any) -> MicroBatcher:
    """The /grad batcher of a RewardState, made on first use (most deployments never call /grad)."""
    if GRAD_BATCHER not in state.batchers:
        s = state.settings
        state.batchers[GRAD_BATCHER] = MicroBatcher(
            make_grad_fn(state.rewards), max_batch_size=s.batch_max_size, max_wait_ms=s.batch_max_wait_ms,
            max_queue=s.max_queue, enabled=s.batching, on_batch=state.metrics.observe_batch("grad"),
            name="reward-grad")
    return state.batchers[GRAD_BATCHER]


async def grad(req: ScoreRequest, rewards: dict[str, Reward], batcher: MicroBatcher) -> tuple[np.ndarray, np.ndarray]:
    """Weighted scores (B,) and their gradient w.r.t. the images (B, 3, H, W)."""
    b, h, w = req.images.shape[0], req.images.shape[2], req.images.shape[3]
    scores = np.zeros(b, np.float64)
    g = np.zeros(req.images.shape, np.float32)
    for name, wt in req.weights.items():
        s, gi = await batcher.submit((name, req.images, req.prompts), size=b, key=(name, h, w))
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked by the caller
            scores += wt * s
            g += np.float32(wt) * gi
    with np.errstate(over="ignore"):
        return scores.astype(np.float32), g


async def handle_grad(request: Request, state: Any) -> Response:
    """The whole of POST /grad for `state` (a RewardState)."""
    state.require_ready()
    if media_type(request) != SAFETENSORS_MEDIA_TYPE:  # gradients are tensors: no JSON form
        raise UnsupportedMedia(f"POST /grad takes Content-Type {SAFETENSORS_MEDIA_TYPE}")
    s = state.settings

    def differentiable(plan: ScorePlan) -> None:
        flat = [n for n in plan.weights if not state.rewards[n].differentiable]
        if flat:
            raise InvalidInput(f"rewards {flat} are not differentiable; GET /rewards says which are",
                               code="not_differentiable")

    req = await read_request(request, state, SAFETENSORS_MEDIA_TYPE, check=differentiable)
    start = time.perf_counter()
    try:
        scores, g = await asyncio.wait_for(grad(req, state.rewards, grad_batcher(state)), s.request_timeout_s)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"the gradient took longer than {s.request_timeout_s} s") from None
    if not (np.isfinite(scores).all() and np.isfinite(g).all()):  # finite parts, but a weight like 1e39
        raise InvalidInput(f"the weighted scores or gradients are not finite (weights {req.weights}); "
                           "use smaller weights", code="non_finite_output")
    versions = {n: state.rewards[n].version for n in req.weights}
    return tensor_response({"scores": scores, "grad": g}, {
        "version": "+".join(f"{n}@{v}" for n, v in versions.items()), "versions": versions,
        "reward": req.weights, "timing_ms": {"grad": round((time.perf_counter() - start) * 1000, 3)}})
