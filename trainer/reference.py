"""The teacher's true reward on the held-out set: the ceiling line of the report's reward plot.

Measuring it costs 25 DDIM steps with guidance on every held-out sample (about 30 s for the toy
world on 2 CPU cores), so it is measured once and committed: trainer/toy_teacher.json holds the
toy teacher's checker score (toy_attribute_binding) of each default held-out sample, prompt i and
seed j drawn from the very generators the trainer's evaluation uses (trainer/evaluate.py:
eval_generators), so the teacher starts from the same initial noise as the student. A run with
fewer evaluation seeds reads the mean over its own seeds. Re-measure with
`python -m trainer.reference` (writes the file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FILE = Path(__file__).with_name("toy_teacher.json")
SEEDS = 4  # the most evaluation seeds the committed measurement covers
REWARD = "toy_attribute_binding"


def measure(seeds: int = SEEDS, prompts: list[str] | None = None) -> dict:
    """The toy teacher (DDIM 25 steps, CFG 3) on the held-out captions × `seeds`, checker scores."""
    import torch

    from toyworld import captions, checker, paths, sampling

    from .evaluate import eval_generators

    prompts = prompts or captions.heldout_captions()
    reps = [p for p in prompts for _ in range(seeds)]  # [p0 s0, p0 s1, ..., p1 s0, ...]
    pipe = sampling.load_pipeline(paths.TEACHER_DIR)
    with torch.no_grad():
        images = pipe(reps, num_inference_steps=sampling.TEACHER_STEPS, guidance_scale=sampling.TEACHER_GUIDANCE,
                      generator=eval_generators(len(prompts), seeds), output_type="pt").images
    scores = checker.score(images.float().clamp(0, 1), reps)
    return {"reward": REWARD, "model": "toyworld/models/teacher", "steps": sampling.TEACHER_STEPS,
            "guidance_scale": sampling.TEACHER_GUIDANCE, "prompts": len(prompts), "seeds": seeds,
            "mean": float(np.mean(scores)), "scores": [round(float(s), 6) for s in scores]}


def teacher_reward(config: dict) -> tuple[float, str] | None:
    """(mean, label) of the committed teacher measurement for a run whose evaluation it matches:
    the toy LCM, the toy checker reward, the default held-out captions; else None."""
    from toyworld.paths import LCM_DIR

    base = config.get("base_model")
    if (config.get("reward") != REWARD or config.get("eval_prompts") or not base
            or Path(base).resolve() != LCM_DIR.resolve() or not FILE.is_file()):
        return None
    ref = json.loads(FILE.read_text())
    seeds = min(int(config.get("eval_seeds") or 1), ref["seeds"])
    scores = np.asarray(ref["scores"]).reshape(ref["prompts"], ref["seeds"])[:, :seeds]
    return float(scores.mean()), f"teacher, {ref['steps']} steps ({float(scores.mean()):.3f}; committed, {seeds} seeds)"


if __name__ == "__main__":
    result = measure()
    FILE.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {FILE}: mean {result['mean']:.4f}")
