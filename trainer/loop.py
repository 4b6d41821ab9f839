"""`python -m trainer train`: the LaSRO loop (arXiv 2411.15247), top to bottom.

Per iteration: P prompts × N_s noises → two-step samples with gradients → dR/dz from the
surrogate service for z1 (head 1) and z2 (head 2) → L = c·L_reg − c1·⟨S(g1), z1⟩ − c2·⟨S(g2), z2⟩
→ one AdamW step on θ. Every k iterations the same (detached) samples are decoded and scored by
the true reward in the background and go to the surrogate's Redis stream (online adaptation).

Data parallel under `accelerate launch` (or torchrun): every process draws its own prompts and
noises, gradients are averaged across processes before each step, and only the main process
evaluates, logs and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist
from tqdm.auto import trange

from lasro_common import redis_util
from lasro_common.errors import ServiceError
from lasro_common.stream import GroupProducer
from reward_service.client import RewardClient
from surrogate_service.client import SurrogateClient

from . import checkpoint, regularizers
from .config import TrainConfig
from .evaluate import evaluate
from .fewstep import FewStepModel
from .labeler import RewardLabeler
from .normalize import GradNormalizer
from .prompts import eval_prompts, train_prompts
from .report import RunLog, save_grid
from .true_grad import true_reward_grad

log = logging.getLogger("trainer")


class ServiceGone(SystemExit):
    """A service stayed unreachable through every retry; the run was checkpointed first."""


def iteration_generator(seed: int, rank: int, it: int) -> torch.Generator:
    """Noises and data of iteration `it` on process `rank`: reproducible, so resuming needs no RNG state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + it)


def lr_at(cfg: TrainConfig, it: int) -> float:
    """Generator learning rate at iteration `it` (a pure function of it: resuming needs no state)."""
    if cfg.lr_schedule == "constant" or cfg.iterations <= 1:
        return cfg.lr
    frac = min(it / (cfg.iterations - 1), 1.0)
    return cfg.lr * (cfg.lr_final_ratio + (1 - cfg.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Data parallel: one flat all-reduce of every gradient, then divide by the process count."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)


def grad_cosines(model: FewStepModel, rewards: RewardClient, reward: str, s, reps: list[str],
                 g1: torch.Tensor, g2: torch.Tensor) -> dict[str, float]:
    """Mean per-sample cosine of R_psi's dR/dz with the true reward's d r(decode(z))/dz, for z1
    and z2 (the --grad-cosine diagnostic; the true reward must be differentiable)."""
    out = {}
    for k, z, g in (("1step", s.z1, g1), ("2step", s.z2, g2)):
        true = true_reward_grad(model, rewards, reward, z.detach(), reps).grad.float().cpu().flatten(1)
        out[f"grad_cosine_{k}"] = float(torch.nn.functional.cosine_similarity(g.float().cpu().flatten(1), true).mean())
    return out


def train(cfg: TrainConfig) -> dict:
    from accelerate import Accelerator

    t_start = time.perf_counter()
    acc = Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    torch.manual_seed(cfg.seed)
    run = RunLog(cfg.out, cfg) if main else None
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    model = FewStepModel(cfg.base_model, device=str(acc.device), dtype=dtype, lora_rank=cfg.lora_rank,
                         guidance_scale=cfg.guidance_scale, gradient_checkpointing=cfg.gradient_checkpointing,
                         lcm_lora=cfg.lcm_lora)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    reg = regularizers.build(cfg.regularizer, model, teacher_model=cfg.teacher_model,
                             batch=cfg.prompts_per_iter * cfg.n_noises)
    norm1, norm2 = (GradNormalizer(cfg.normalizer, clip=cfg.norm_clip) for _ in range(2))
    rewards = RewardClient(cfg.reward_url, token=cfg.reward_token, retries=cfg.service_retries)
    surrogate = SurrogateClient(cfg.surrogate_url, token=cfg.surrogate_token, retries=cfg.service_retries)
    streaming = cfg.adapt and cfg.grad_source == "surrogate"  # online adaptation feeds the learner
    if streaming and not cfg.redis_url:
        raise ValueError("--redis-url is required: the Redis the surrogate service consumes from")
    producer = GroupProducer(redis_util.connect(cfg.redis_url), cfg.stream,
                             outage_s=cfg.redis_outage_s) if streaming else None
    # groups that a Redis outage keeps from the stream wait here; a resumed run sends them first
    labeler = RewardLabeler(model, rewards, producer, reward=cfg.reward, spool=cfg.out / "unsent-groups")
    state = {"iteration": 0, "queries": 0, "grad_queries": 0, "eval_queries": 0, "blocked_s": 0.0, "loop_s": 0.0,
             "before": None}

    ckpt = cfg.out / checkpoint.LAST  # the last checkpoint; best and --keep-all ones beside it
    if cfg.resume and (cfg.resume != "latest" or checkpoint.exists(ckpt)):
        start = checkpoint.find(cfg.out, cfg.resume)
        state, extra = checkpoint.load(start, unet=model.unet, optimizer=opt)
        norm1.load_state_dict(extra["norm1"])
        norm2.load_state_dict(extra["norm2"])
        reg.load_state_dict(extra.get("reg", {}))
        state.setdefault("grad_queries", 0)  # checkpoints from before --grad-source
        labeler.queries = state["queries"] // world - state["grad_queries"]
        log.info("resumed from %s at iteration %d", start, state["iteration"])

    prompt_stream = train_prompts(cfg.prompts, cfg.seed + 7919 * rank)  # each process its own prompts
    for _ in range(state["iteration"] * cfg.prompts_per_iter):  # the same prompts as an unbroken run
        next(prompt_stream)
    held_out = eval_prompts(cfg.eval_prompts)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grad")

    def spent() -> int:
        """True-reward queries of this process: scored for the surrogate, or for their gradient."""
        return labeler.queries + state["grad_queries"]

    def save_checkpoint(folder=ckpt) -> None:
        if not main:
            return
        state["queries"] = spent() * world  # every process spends the same number
        checkpoint.save(folder, unet=model.unet, lora=cfg.lora_rank > 0, optimizer=opt, state=state,
                        extra={"norm1": norm1.state_dict(), "norm2": norm2.state_dict(), "reg": reg.state_dict()})
        if folder == ckpt and cfg.keep_all:
            checkpoint.copy(ckpt, cfg.out / f"checkpoint-{state['iteration']}")

    def run_eval(it: int) -> dict | None:
        if not main:
            return None
        ev = evaluate(model, held_out, cfg.eval_seeds, rewards, cfg.reward,
                      surrogate if cfg.grad_source == "surrogate" else None)
        state["eval_queries"] += ev.queries
        summary = {"iteration": it, "queries": spent() * world, **ev.summary()}
        run.eval(it, summary, ev)
        best = state.get("best")  # among the fine-tuned checkpoints: iteration 0 is the base model itself
        if it > 0 and (best is None or summary["true_2step"] >= best["true_2step"]):  # ties: the later one
            state["best"] = {"iteration": it, "true_2step": summary["true_2step"]}
            save_checkpoint(cfg.out / checkpoint.BEST)
        return summary

    try:
        if state["before"] is None:
            state["before"] = run_eval(state["iteration"])
        bar = trange(state["iteration"], cfg.iterations, desc="lasro", disable=not (cfg.progress and main),
                     initial=state["iteration"], total=cfg.iterations)
        for it in bar:
            t_it = time.perf_counter()
            gen = iteration_generator(cfg.seed, rank, it)
            prompts = [next(prompt_stream) for _ in range(cfg.prompts_per_iter)]  # P
            reps = [p for p in prompts for _ in range(cfg.n_noises)]  # B = P·N_s, N_s noises per prompt
            cond = model.encode(reps)
            if cfg.exploration == "off_policy":  # N_s different z_T per prompt: exploration around each prompt
                z_t = model.noise(len(reps), gen)  # (B, C, h, w)
            else:  # on-policy ablation: one z_T per prompt, the N_s samples differ only in the renoising noise
                z_t = model.noise(len(prompts), gen).repeat_interleave(cfg.n_noises, dim=0)  # (B, C, h, w)
            with acc.autocast():
                s = model.sample(z_t, cond, gen)  # z1, z2 (B, C, h, w), differentiable in θ

            # dR/dz for both outputs, fetched while the regulariser computes: from the surrogate
            # (LaSRO), or the true reward's own gradient through the decoder (--grad-source true)
            if cfg.grad_source == "surrogate":
                f1 = pool.submit(surrogate.grad, s.z1.detach().float().cpu(), reps, 1)
                f2 = pool.submit(surrogate.grad, s.z2.detach().float().cpu(), reps, 2)
            else:
                f1 = pool.submit(true_reward_grad, model, rewards, cfg.reward, s.z1.detach(), reps)
                f2 = pool.submit(true_reward_grad, model, rewards, cfg.reward, s.z2.detach(), reps)
                state["grad_queries"] += 2 * len(reps)
            with acc.autocast():
                l_reg = reg.loss(s, cond, gen) if cfg.c > 0 else torch.zeros((), device=model.device)
            t_wait = time.perf_counter()
            r1, r2 = f1.result(), f2.result()
            state["blocked_s"] += time.perf_counter() - t_wait
            cosines = {}
            if cfg.grad_cosine and cfg.grad_source == "surrogate" and main and it % cfg.eval_every == 0:
                cosines = grad_cosines(model, rewards, cfg.reward, s, reps, r1.grad, r2.grad)
                state["eval_queries"] += 2 * len(reps)
            g1 = norm1(r1.grad.to(model.device, s.z1.dtype))  # S(g1) (B, C, h, w)
            g2 = norm2(r2.grad.to(model.device, s.z2.dtype))  # S(g2)

            # L = c·L_lcm − c1·⟨S(g1), z1⟩ − c2·⟨S(g2), z2⟩  (LaSRO's fine-tuning loss; ⟨·,·⟩ averaged over B)
            b = len(reps)
            l_r1 = -(g1 * s.z1).sum() / b
            l_r2 = -(g2 * s.z2).sum() / b
            loss = cfg.c * l_reg + cfg.c1 * l_r1 + cfg.c2 * l_r2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                average_gradients(params, world)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = lr_at(cfg, it)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            reg.after_step()

            if streaming and (it + 1) % cfg.adapt_every == 0:
                # fresh true rewards for the surrogate, in the background
                t_wait = time.perf_counter()
                labeler.submit(s.z1.detach(), s.z2.detach(), prompts, cfg.n_noises, it + 1)
                state["blocked_s"] += time.perf_counter() - t_wait
            state["iteration"] = it + 1
            state["loop_s"] += time.perf_counter() - t_it
            row = {"iteration": it + 1, "loss": loss.item(), "l_reg": l_reg.item(), "l_r1": l_r1.item(),
                   "l_r2": l_r2.item(), "surrogate_1step_train": float(r1.scores.mean()),
                   "surrogate_2step_train": float(r2.scores.mean()), "surrogate_version": r2.version if cfg.grad_source == "surrogate" else -1,
                   "grad_norm": float(grad_norm), "lr": lr, "queries": spent(), "groups": labeler.groups,
                   **cosines}
            if main:
                run.train(it + 1, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", v=r2.version, q=spent())
            if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations:
                labeler.drain()
                run_eval(it + 1)
            if (it + 1) % cfg.checkpoint_every == 0:
                save_checkpoint()
        labeler.drain()
    except ServiceError as e:  # a service or Redis stayed unreachable through every retry
        labeler.settle()  # jobs in flight finish (unsent groups go to the spool) and count their queries
        save_checkpoint()
        raise ServiceGone(f"stopping cleanly: {e}. Checkpoint saved to {ckpt}; run again with --resume latest") from e
    except KeyboardInterrupt:
        save_checkpoint()
        raise
    finally:
        pool.shutdown(wait=False)
        labeler.close()
    save_checkpoint()
    if world > 1:
        acc.wait_for_everyone()
    if not main:
        return {}
    after = run.last_eval
    summary = {
        "reward": cfg.reward,
        "before": {"1step": state["before"]["true_1step"], "2step": state["before"]["true_2step"]},
        "after": {"1step": after["true_1step"], "2step": after["true_2step"]},
        "before_std": {"1step": state["before"]["true_1step_std"], "2step": state["before"]["true_2step_std"]},
        "after_std": {"1step": after["true_1step_std"], "2step": after["true_2step_std"]},
        "tracking": {k: after.get(f"tracking_{k}") for k in ("1step", "2step")},
        "queries": state["queries"],
        "eval_queries": state["eval_queries"],
        "iterations": state["iteration"],
        "blocked_fraction": state["blocked_s"] / max(state["loop_s"], 1e-9),
        "wall_s": time.perf_counter() - t_start,
    }
    from .export import export_run

    which = "best" if checkpoint.exists(cfg.out / checkpoint.BEST) else "last"  # no evaluation after 0: last
    summary["model"] = str(export_run(cfg.out, cfg.out / "model", which))  # for plain diffusers
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
    run.close(summary)
    return summary


__all__ = ["ServiceGone", "save_grid", "train"]
