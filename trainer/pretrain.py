"""`python -m trainer pretrain`: fill the surrogate before fine-tuning. Sample groups with the
initial model, score them with the true reward, stream them to the learner, until its held-out
pair accuracy reaches `pretrain_accuracy` or `pretrain_groups` are spent."""

from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

from lasro_common import redis_util
from lasro_common.stream import GroupProducer
from reward_service.client import RewardClient
from surrogate_service.client import SurrogateClient

from .config import TrainConfig
from .fewstep import FewStepModel
from .labeler import RewardLabeler
from .prompts import train_prompts

log = logging.getLogger("trainer")


def _accuracy(status: dict) -> tuple[float | None, int]:
    learner = status.get("learner") or {}
    return learner.get("heldout_pair_accuracy"), int(learner.get("heldout_groups") or 0)


def wait_trained(surrogate: SurrogateClient, groups: int, timeout: float = 600.0) -> dict:
    """Until the learner has buffered `groups` groups and trained off the updates they earned
    (the stream can be fully delivered long before that, so stream lag alone is not enough)."""
    deadline = time.monotonic() + timeout
    while True:
        status = surrogate.status()
        learner = status.get("learner") or {}
        done = learner.get("groups_consumed", 0) >= groups and learner.get("training_owed", 0) < 1
        if done or time.monotonic() > deadline:
            return status
        time.sleep(0.5)  # polling another process over HTTP; there is nothing to wait on


@torch.no_grad()
def pretrain(cfg: TrainConfig, model: FewStepModel | None = None) -> dict:
    if not cfg.redis_url:
        raise ValueError("--redis-url is required: the Redis the surrogate service consumes from")
    model = model or FewStepModel(cfg.base_model, device=cfg.device, lora_rank=cfg.lora_rank,
                                  guidance_scale=cfg.guidance_scale)
    rewards = RewardClient(cfg.reward_url, token=cfg.reward_token, retries=cfg.service_retries)
    surrogate = SurrogateClient(cfg.surrogate_url, token=cfg.surrogate_token, retries=cfg.service_retries)
    labeler = RewardLabeler(model, rewards, GroupProducer(redis_util.connect(cfg.redis_url), cfg.stream),
                            reward=cfg.reward)
    prompts_it = train_prompts(cfg.prompts, cfg.seed + 1)  # other prompts than the fine-tuning run's
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start = int((surrogate.status().get("learner") or {}).get("groups_consumed", 0))
    chunk = max(2 * cfg.prompts_per_iter, cfg.pretrain_groups // 8)  # groups between accuracy checks
    bar = tqdm(total=cfg.pretrain_groups, desc="pretrain", disable=not cfg.progress)
    submitted, history = 0, []  # [queries, held-out pair accuracy] at each check
    while submitted < cfg.pretrain_groups:  # count what is in flight too, so the budget holds
        target = min(cfg.pretrain_groups, submitted + chunk)
        while submitted < target:
            prompts = [next(prompts_it) for _ in range(cfg.prompts_per_iter)]
            reps = [p for p in prompts for _ in range(cfg.n_noises)]
            s = model.sample(model.noise(len(reps), gen), model.encode(reps), gen)
            labeler.submit(s.z1, s.z2, prompts, cfg.n_noises, version=0)
            submitted += 2 * len(prompts)  # one group per prompt for z1 and one for z2
            bar.update(2 * len(prompts))
        # Generation runs ahead of the learner (no waiting per chunk); the accuracy read here is
        # the learner's latest, so a surrogate that is already good enough stops the budget early.
        status = surrogate.status()
        acc, n_heldout = _accuracy(status)
        history.append([labeler.queries, acc])
        bar.set_postfix(acc=f"{acc:.3f}" if acc is not None else "-", heldout=n_heldout, v=status.get("version"))
        if acc is not None and acc >= cfg.pretrain_accuracy and n_heldout >= 8:
            break
    labeler.drain()
    status = wait_trained(surrogate, start + submitted, timeout=cfg.pretrain_timeout_s)  # train off what was sent
    acc, n_heldout = _accuracy(status)
    history.append([labeler.queries, acc])
    bar.close()
    labeler.close()
    result = {"groups": labeler.groups, "queries": labeler.queries, "heldout_pair_accuracy": acc,
              "heldout_groups": n_heldout, "surrogate_version": status.get("version"), "history": history}
    log.info("pretrain: %s", result)
    _record(cfg.out / "pretrain.json", result)  # the exported model's card counts these queries too
    return result


def _record(path, result: dict) -> None:
    """Add this pre-training's queries and groups to the run's record (a restart may pre-train again);
    `history`: [true-reward queries so far, the learner's held-out pair accuracy] (the report's
    accuracy plot)."""
    import json

    old = json.loads(path.read_text()) if path.is_file() else {"queries": 0, "groups": 0}
    history = old.get("history", []) + [[old["queries"] + q, a] for q, a in result["history"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "queries": old["queries"] + result["queries"],
                                "groups": old["groups"] + result["groups"], "history": history}, indent=2))
