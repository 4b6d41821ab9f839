"""Held-out evaluation with fixed prompts and seeds: true reward and surrogate score of the
one-step (z1) and two-step (z2) outputs, side by side so reward hacking shows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lasro_diffusion.pairs import eligible_pairs, ordered
from reward_service.client import RewardClient
from surrogate_service.client import SurrogateClient

from .fewstep import FewStepModel
from .labeler import reward_spec


@dataclass
class EvalResult:
    true: dict[str, np.ndarray]  # "1step"/"2step" -> (P·S,) true rewards
    surrogate: dict[str, np.ndarray] | None
    images: dict[str, torch.Tensor]  # "1step"/"2step" -> (P·S, 3, H, W)
    prompts: list[str]
    queries: int
    learner_accuracy: float | None = None  # the learner's own held-out pair accuracy (surrogate /status)

    def summary(self) -> dict[str, float]:
        out = {}
        for k, v in self.true.items():
            per_prompt = v.reshape(len(self.prompts), -1).mean(1)
            out[f"true_{k}"], out[f"true_{k}_std"] = float(v.mean()), float(per_prompt.std())
        for k, v in (self.surrogate or {}).items():
            out[f"surrogate_{k}"] = float(v.mean())
            out[f"tracking_{k}"] = tracking(v, self.true[k], len(self.prompts))
        if self.learner_accuracy is not None:
            out["learner_accuracy"] = self.learner_accuracy
        return out


def tracking(sur: np.ndarray, true: np.ndarray, n_prompts: int, margin: float = 1e-3) -> float | None:
    """Does the surrogate track the true reward on the model's *current* samples? The learner's
    held-out pair accuracy (same pairs, same tie rule), over same-prompt pairs: the seeds of one
    held-out prompt whose true rewards differ. 0.5 = no tracking; None if no such pair.
    Scale-free, so it stays comparable while the learner re-trains R_psi."""
    right = total = 0.0
    for s, t in zip(torch.as_tensor(sur).reshape(n_prompts, -1), torch.as_tensor(true).reshape(n_prompts, -1),
                    strict=True):  # (S,) per prompt
        r, n = ordered(s, eligible_pairs(t, margin))
        right, total = right + r, total + n
    return right / total if total else None


def eval_generators(n_prompts: int, seeds: int) -> list[torch.Generator]:
    """One generator per held-out sample, in the order [p0 s0, p0 s1, ..., p1 s0, ...]."""
    return [torch.Generator().manual_seed(1000 * j + i) for i in range(n_prompts) for j in range(seeds)]


@torch.no_grad()
def evaluate(model: FewStepModel, prompts: list[str], seeds: int, rewards: RewardClient, reward: str,
             surrogate: SurrogateClient | None = None, batch: int = 64) -> EvalResult:
    """Prompt i, seed j samples with its own torch.Generator().manual_seed(1000·j + i), for the
    initial noise and the step noise alike: the same samples at every evaluation, and the very
    samples plain diffusers gives for `pipe(prompts, generator=eval_generators(...))`
    (z1: num_inference_steps=1, z2: 2)."""
    model.unet.eval()
    reps = [p for p in prompts for _ in range(seeds)]
    z1s, z2s = [], []
    for start in range(0, len(reps), batch):
        chunk = reps[start : start + batch]
        gens = eval_generators(len(prompts), seeds)[start : start + len(chunk)]
        s = model.sample(model.noise(len(chunk), gens), model.encode(chunk), gens)
        z1s.append(s.z1.float())
        z2s.append(s.z2.float())
    model.unet.train()
    z = {"1step": torch.cat(z1s), "2step": torch.cat(z2s)}
    images = {k: model.decode(v) for k, v in z.items()}
    spec = reward_spec(reward)
    true = {k: rewards.score(images[k], reps, reward=spec).scores for k in z}
    sur, learner_accuracy = None, None
    if surrogate is not None:
        sur = {k: surrogate.score(z[k].cpu(), reps, head=h)[0].numpy() for h, k in ((1, "1step"), (2, "2step"))}
        learner_accuracy = (surrogate.status().get("learner") or {}).get("heldout_pair_accuracy")
    return EvalResult(true, sur, images, prompts, queries=2 * len(reps), learner_accuracy=learner_accuracy)
