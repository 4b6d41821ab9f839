"""The reward service: black-box image rewards over HTTP. `create_app(settings)`; thin routes."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request, Response

from lasro_common.batching import MicroBatcher
from lasro_common.server import ERROR_RESPONSES as ERRORS
from lasro_common.server import Metrics, RequestTimeout, media_type
from lasro_common.service import ServiceState, create_service_app
from lasro_diffusion.loading import MODEL_LOAD_LOCK

from . import __version__
from .flow_grpo import FLOW_GRPO_OPENAPI, handle_flow_grpo
from .grad import GRAD_OPENAPI, handle_grad
from .rewards import Reward, build
from .rewards.remote import RemoteReward
from .schemas import SCORE_OPENAPI, RewardInfo, ScoreResponse
from .scoring import make_batch_fn, read_request, score
from .settings import RewardSettings

log = logging.getLogger("reward_service")


class RewardState(ServiceState):
    """Rewards and their batchers."""

    what = "rewards"

    def __init__(self, settings: RewardSettings, metrics: Metrics, rewards: list[Reward] | None = None):
        super().__init__(settings, metrics)
        self.rewards: dict[str, Reward] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.preloaded = rewards

    def setup(self) -> None:
        s = self.settings
        rewards = list(self.preloaded or [build(n, s.reward_options.get(n)) for n in s.rewards])
        token = s.remote_token.get_secret_value() if s.remote_token else None
        for item in s.remote:
            name, _, url = item.partition("=")
            rewards.append(RemoteReward.configured(name, url, s.reward_options.get(name), token=token,
                                                   timeout=s.request_timeout_s))
        for r in rewards:
            with MODEL_LOAD_LOCK:  # every reward, third-party ones too: one model load at a time
                r.setup(s.device)
            self.rewards[r.name] = r
            self.batchers[r.name] = MicroBatcher(
                make_batch_fn(r), max_batch_size=s.batch_max_size, max_wait_ms=s.batch_max_wait_ms,
                max_queue=s.max_queue, enabled=s.batching, on_batch=self.metrics.observe_batch(r.name),
                name=f"reward-{r.name}")
        if s.flow_grpo_route and s.flow_grpo_reward and s.flow_grpo_reward not in self.rewards:
            raise ValueError(f"flow_grpo_reward {s.flow_grpo_reward!r} is not loaded; loaded: {sorted(self.rewards)}")
        log.info("rewards ready: %s", ", ".join(self.rewards))

    def close(self) -> None:
        for b in self.batchers.values():
            b.close()


def create_app(settings: RewardSettings | None = None, rewards: list[Reward] | None = None) -> FastAPI:
    """Build the app. `rewards` overrides `settings.rewards` with ready-made instances (tests, embedding)."""
    settings = settings or RewardSettings()
    state = RewardState(settings, Metrics("reward"), rewards)
    app, auth = create_service_app(state, name="rewards", title="LaSRO reward service", version=__version__,
                                   description="Black-box image rewards: POST /score.")

    @app.get("/rewards", tags=["rewards"], summary="The rewards this service can compute.",
             response_model=list[RewardInfo], responses=ERRORS, dependencies=auth)
    async def list_rewards() -> list[dict]:
        state.require_ready()
        return [r.info() for r in state.rewards.values()]

    @app.post("/score", tags=["rewards"], summary="Score a batch of images (+ prompts).",
              response_model=ScoreResponse, openapi_extra=SCORE_OPENAPI, responses=ERRORS,
              dependencies=auth)
    async def score_images(request: Request) -> dict:
        state.require_ready()
        req = await read_request(request, state, media_type(request))
        try:
            return await asyncio.wait_for(score(req, state.rewards, state.batchers), settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"scoring took longer than {settings.request_timeout_s} s") from None

    @app.post("/grad", tags=["rewards"], summary="Scores and d score / d pixels (differentiable rewards).",
              openapi_extra=GRAD_OPENAPI, responses=ERRORS, dependencies=auth, response_class=Response)
    async def grad_images(request: Request) -> Response:
        return await handle_grad(request, state)

    if settings.flow_grpo_route:  # off by default: docs/api.md says why
        @app.post(settings.flow_grpo_route, tags=["flow_grpo"], response_class=Response, responses=ERRORS,
                  summary="flow_grpo / ddpo-pytorch reward-server format: pickled dict in, pickled scores out.",
                  openapi_extra=FLOW_GRPO_OPENAPI, dependencies=auth)
        async def flow_grpo(request: Request) -> Response:
            return await handle_flow_grpo(request, state)

    return app
