"""`python -m trainer baseline --method rlcm|dpo`: the methods users would pick instead of
LaSRO, in the same harness: same model loading, prompts, held-out evaluation, reward service and
true-reward query accounting (every scored sample is one query), and the same run outputs
(metrics.jsonl, TensorBoard, report, checkpoint).

Per iteration: P prompts × N_s noises are sampled without gradients, the 2-step outputs are
decoded and scored by the true reward, and the method updates θ from those scores alone:
    rlcm  PPO on the renoising step's Gaussian log-likelihood (trainer/rlcm.py)
    dpo   Diffusion-DPO on best-vs-worst pairs of each prompt (trainer/dpo.py)
The ReFL oracle is LaSRO's own loop with `--grad-source true` (trainer/true_grad.py).
"""

from __future__ import annotations

import json
import logging
import time

import torch
from tqdm.auto import trange

from reward_service.client import RewardClient

from . import checkpoint
from .config import TrainConfig
from .dpo import ConsistencyError, best_worst_pairs, dpo_loss
from .evaluate import evaluate
from .fewstep import FewStepModel, Sample
from .labeler import reward_spec
from .loop import iteration_generator, lr_at
from .prompts import eval_prompts, train_prompts
from .report import RunLog
from .rlcm import RLCMPolicy, group_advantages, ppo_loss

log = logging.getLogger("trainer.baselines")
METHODS = ("rlcm", "dpo")


class _Step:
    def __init__(self, model: FewStepModel, cfg: TrainConfig, opt: torch.optim.Optimizer):
        self.model, self.cfg, self.opt = model, cfg, opt
        self.params = model.trainable_parameters()

    def apply(self, loss: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        return float(norm)


class RLCMStep(_Step):
    def __init__(self, model: FewStepModel, cfg: TrainConfig, opt: torch.optim.Optimizer):
        super().__init__(model, cfg, opt)
        self.policy = RLCMPolicy(model)

    def update(self, s: Sample, cond, rewards: torch.Tensor, gen: torch.Generator) -> dict:
        z_t, z_tau = s.inputs[0].detach(), s.inputs[1].detach()  # the policy's state and action
        with torch.no_grad():
            logp_old = self.policy.log_prob(z_t, z_tau, cond)  # (B,) under the sampling θ
        adv = group_advantages(rewards, self.cfg.n_noises)
        out = {}
        for _ in range(self.cfg.ppo_inner_epochs):
            loss, info = ppo_loss(self.policy.log_prob(z_t, z_tau, cond), logp_old, adv,
                                  self.cfg.ppo_clip_range, self.cfg.adv_clip_max)
            out = {"loss": float(loss), "grad_norm": self.apply(loss), **info}
        return out


class DPOStep(_Step):
    def __init__(self, model: FewStepModel, cfg: TrainConfig, opt: torch.optim.Optimizer):
        super().__init__(model, cfg, opt)
        self.errors = ConsistencyError(model)

    def update(self, s: Sample, cond, rewards: torch.Tensor, gen: torch.Generator) -> dict:
        w, lose = best_worst_pairs(rewards, self.cfg.n_noises)
        if len(w) == 0:  # no prompt with distinct rewards: nothing to prefer
            return {"loss": 0.0, "grad_norm": 0.0, "pairs": 0}
        idx = torch.cat([w, lose])
        z = s.z2.detach()[idx]  # (2K, C, h, w): winners, then losers
        pair_cond = type(cond)(cond.encoder_hidden_states[idx],
                               None if cond.text_embeds is None else cond.text_embeds[idx],
                               None if cond.time_ids is None else cond.time_ids[idx])
        err, ref = self.errors.errors(z, pair_cond, gen)
        k = len(w)
        loss = dpo_loss(err[:k], err[k:], ref[:k], ref[k:], self.cfg.dpo_beta)
        return {"loss": float(loss), "grad_norm": self.apply(loss), "pairs": k}


STEPS = {"rlcm": RLCMStep, "dpo": DPOStep}


def train_baseline(cfg: TrainConfig, method: str) -> dict:
    if method not in STEPS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = FewStepModel(cfg.base_model, device=cfg.device, lora_rank=cfg.lora_rank,
                         guidance_scale=cfg.guidance_scale, gradient_checkpointing=cfg.gradient_checkpointing)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = STEPS[method](model, cfg, opt)
    rewards = RewardClient(cfg.reward_url, token=cfg.reward_token, retries=cfg.service_retries)
    run = RunLog(cfg.out, cfg)
    prompt_stream = train_prompts(cfg.prompts, cfg.seed + 7919)
    held_out = eval_prompts(cfg.eval_prompts)
    spec = reward_spec(cfg.reward)
    state = {"queries": 0, "eval_queries": 0}

    def run_eval(it: int) -> dict:
        ev = evaluate(model, held_out, cfg.eval_seeds, rewards, cfg.reward)
        state["eval_queries"] += ev.queries
        summary = {"iteration": it, "queries": state["queries"], **ev.summary()}
        run.eval(it, summary, ev)
        return summary

    before = run_eval(0)
    for it in trange(cfg.iterations, desc=method, disable=not cfg.progress):
        gen = iteration_generator(cfg.seed, 0, it)
        prompts = [next(prompt_stream) for _ in range(cfg.prompts_per_iter)]  # P
        reps = [p for p in prompts for _ in range(cfg.n_noises)]  # B = P·N_s
        cond = model.encode(reps)
        with torch.no_grad():
            s = model.sample(model.noise(len(reps), gen), cond, gen)  # rollout with θ_old
            r = torch.as_tensor(rewards.score(model.decode(s.z2), reps, reward=spec).scores, dtype=torch.float32)
        state["queries"] += len(reps)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, it)
        info = step.update(s, cond, r, gen)
        run.train(it + 1, {"iteration": it + 1, "reward_train": float(r.mean()), "queries": state["queries"],
                           "lr": lr_at(cfg, it), **info})
        if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations:
            run_eval(it + 1)
    checkpoint.save(cfg.out / "checkpoint", unet=model.unet, lora=cfg.lora_rank > 0, optimizer=opt,
                    state={"iteration": cfg.iterations, **state}, extra={})
    after = run.last_eval
    summary = {
        "method": method, "reward": cfg.reward,
        "before": {"1step": before["true_1step"], "2step": before["true_2step"]},
        "after": {"1step": after["true_1step"], "2step": after["true_2step"]},
        "before_std": {"1step": before["true_1step_std"], "2step": before["true_2step_std"]},
        "after_std": {"1step": after["true_1step_std"], "2step": after["true_2step_std"]},
        "queries": state["queries"], "eval_queries": state["eval_queries"], "iterations": cfg.iterations,
        "wall_s": time.perf_counter() - t_start,
    }
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
    run.close(summary)
    return summary
