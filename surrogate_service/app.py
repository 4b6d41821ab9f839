"""The surrogate service: R_psi over HTTP (/score, /grad) plus the online learner.
`create_app(settings)`; thin routes."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import torch
from fastapi import FastAPI, Request

from lasro_common import redis_util
from lasro_common.batching import MicroBatcher
from lasro_common.server import ERROR_RESPONSES as ERRORS
from lasro_common.server import Metrics, RequestTimeout, read_tensors, tensor_response
from lasro_common.service import ServiceState, create_service_app

from . import __version__
from .checkpoint import check_checkpoint_model
from .model import load_surrogate
from .schemas import LATENT_OPENAPI, ScoreResponse, StatusResponse
from .serving import make_batch_fn, parse
from .settings import SurrogateSettings
from .slot import ModelSlot

log = logging.getLogger("surrogate_service")


class SurrogateState(ServiceState):
    """Model, text encoders, slot, batchers and learner."""

    what = "surrogate"

    def __init__(self, settings: SurrogateSettings, metrics: Metrics):
        super().__init__(settings, metrics)
        self.learner: Any = None
        self.follower: Any = None
        self.slot: ModelSlot | None = None
        self.redis: redis_util.EmbeddedRedis | None = None  # the private redis-server, if any

    def setup(self) -> None:
        s = self.settings
        model, self.text = load_surrogate(s.base_model, device=s.device, dtype=getattr(torch, s.dtype),
                                          timestep=s.timestep, head_channels=s.head_channels,
                                          freeze_backbone=s.freeze_backbone, backbone=s.backbone)
        self.in_channels = model.backbone.in_channels
        self.multiple = 2 ** model.backbone.num_downsamplings
        self.slot = ModelSlot(copy.deepcopy(model), 0)
        if s.learn:
            from .learner import Learner

            url = s.redis_url
            if not url:  # a private redis-server owned by this process (restarted in place if it dies)
                self.redis = redis_util.EmbeddedRedis(s.redis_dir)
                url = self.redis.start()
            self.learner = Learner(model, self.text, self.slot, s, lambda: redis_util.connect(url))
            self.learner.restore()
            self.learner.start()
        elif s.follow:
            from .follow import Follower

            self.follower = Follower(self.slot, s.checkpoint_dir, s.follow_every_s)
            self.follower.start()
        kw = dict(max_batch_size=s.batch_max_size, max_wait_ms=s.batch_max_wait_ms, max_queue=s.max_queue,
                  enabled=s.batching)
        self.grad = MicroBatcher(make_batch_fn(self.slot, self.text, with_grad=True),
                                 on_batch=self.metrics.observe_batch("grad"), name="grad", **kw)
        self.score = MicroBatcher(make_batch_fn(self.slot, self.text, with_grad=False),
                                  on_batch=self.metrics.observe_batch("score"), name="score", **kw)
        log.info("surrogate ready: %s (version %d)", s.base_model, self.slot.version)

    def close(self) -> None:
        if self.learner is not None:
            self.learner.stop()  # writes the final checkpoint (SIGTERM lands here)
        if self.redis is not None:
            self.redis.stop()  # after the learner's last acknowledgements
        if self.follower is not None:
            self.follower.stop()
        for b in (getattr(self, "grad", None), getattr(self, "score", None)):
            if b is not None:
                b.close()

    def problem(self) -> str | None:
        return super().problem() or (self.redis.problem if self.redis is not None else None)

    def redis_status(self) -> dict | None:
        if self.redis is not None:
            return self.redis.status()
        if self.settings.learn and self.settings.redis_url:
            return {"embedded": False, "url": redis_util.redact(self.settings.redis_url)}
        return None

    async def request(self, request: Request, batcher_name: str):
        self.require_ready()
        s = self.settings
        decoded = await read_tensors(request)
        # the NaN/Inf and range passes read every value: a worker thread's job, not the event loop's
        req = await asyncio.to_thread(parse, decoded, in_channels=self.in_channels, multiple=self.multiple,
                                      max_batch=s.max_batch, max_side=s.max_latent_side, max_abs=s.max_abs_latent,
                                      max_prompt_chars=s.max_prompt_chars)
        batcher: MicroBatcher = getattr(self, batcher_name)
        try:
            return await asyncio.wait_for(batcher.submit(req, size=req.latents.shape[0], key=req.key),
                                          s.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the surrogate took longer than {s.request_timeout_s} s") from None


def create_app(settings: SurrogateSettings | None = None) -> FastAPI:
    """Build the app. Raises ValueError (before loading anything) when the checkpoint folder
    holds a learner of another base model."""
    settings = settings or SurrogateSettings()
    if settings.learn:
        check_checkpoint_model(settings.checkpoint_dir, settings.base_model)
    state = SurrogateState(settings, Metrics("surrogate"))
    app, auth = create_service_app(state, name="surrogate", title="LaSRO surrogate service", version=__version__,
                                   description="R_psi, a latent-space surrogate reward: scores and dR/dz for latents.")

    @app.post("/grad", tags=["surrogate"], summary="Scores and d score / d latents (safetensors in and out).",
              openapi_extra=LATENT_OPENAPI, responses={**ERRORS, 200: {"content": {"application/x-safetensors": {}}}},
              dependencies=auth)
    async def grad(request: Request):
        scores, g, version = await state.request(request, "grad")
        return tensor_response({"scores": scores, "grad": g}, {"version": version})

    @app.post("/score", tags=["surrogate"], summary="Scores for a batch of latents.", response_model=ScoreResponse,
              openapi_extra=LATENT_OPENAPI, responses=ERRORS, dependencies=auth)
    async def score(request: Request) -> dict:
        scores, _, version = await state.request(request, "score")
        return {"scores": scores.tolist(), "version": version}

    @app.get("/status", tags=["surrogate"], summary="Version, buffer, updates, held-out pair accuracy, stream lag.",
             response_model=StatusResponse, responses=ERRORS, dependencies=auth)
    async def status() -> dict:
        state.require_ready()
        learner = state.learner.status() if state.learner is not None else None
        following = state.follower.status() if state.follower is not None else None
        return {"version": state.slot.version, "base_model": settings.base_model, "learning": learner is not None,
                "learner": learner, "following": following, "redis": state.redis_status()}

    return app
