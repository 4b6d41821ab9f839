"""`python -m toyworld evaluate` and `sample`: measure the committed pipelines with the checker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toyworld import captions, checker, data, paths, sampling


def _grid_prompts() -> list[str]:
    caps = captions.heldout_captions()  # 18 singles, 15 seen pairs, 15 unseen pairs
    return caps[0:18:2][:8] + caps[18:26] + caps[33:41]


def evaluate(seeds: int = sampling.EVAL_SEEDS, grids: str | Path | None = None) -> dict:
    """Mean checker score on the held-out captions (× `seeds` samples) for data, noise, the
    teacher (DDIM 25 steps, CFG) and the LCM at 1, 2 and 4 steps."""
    caps = captions.heldout_captions()
    prompts = sampling.eval_prompts(caps, seeds)
    n_single = 18  # heldout_captions(): singles first, then 15 seen pairs, then 15 unseen pairs
    groups = {
        "single": [i for i in range(len(prompts)) if i % len(caps) < n_single],
        "seen_pair": [i for i in range(len(prompts)) if n_single <= i % len(caps) < n_single + 15],
        "unseen_pair": [i for i in range(len(prompts)) if i % len(caps) >= n_single + 15],
    }
    rows: dict[str, dict] = {}

    def add(name: str, scores: np.ndarray, **extra) -> None:
        rows[name] = {"mean": float(scores.mean()), **{g: float(scores[idx].mean()) for g, idx in groups.items()}, **extra}

    scenes = data.scenes_for_captions(prompts, seed=1)
    images = np.stack([data.draw_scene(s) for s in scenes]).astype(np.float32).transpose(0, 3, 1, 2) / 255
    add("checker_data", checker.score(images, prompts))
    noise = np.random.default_rng(0).random(images.shape, dtype=np.float32)
    add("checker_noise", checker.score(noise, prompts))

    teacher = sampling.load_pipeline(paths.TEACHER_DIR)
    lcm = sampling.load_pipeline(paths.LCM_DIR)
    outs = {}
    runs = [("teacher_25step", teacher, sampling.TEACHER_STEPS, sampling.TEACHER_GUIDANCE),
            ("lcm_1step", lcm, 1, sampling.LCM_GUIDANCE), ("lcm_2step", lcm, 2, sampling.LCM_GUIDANCE),
            ("lcm_4step", lcm, 4, sampling.LCM_GUIDANCE)]
    for name, pipe, steps, g in runs:
        outs[name] = sampling.generate(pipe, prompts, steps, g)
        add(name, checker.score(outs[name], prompts), steps=steps, guidance=g)
    rows["teacher_minus_lcm_2step"] = {"mean": rows["teacher_25step"]["mean"] - rows["lcm_2step"]["mean"]}
    if grids is not None:
        gp = _grid_prompts()
        idx = [prompts.index(p) for p in gp]  # first seed of each caption: same noise for all models
        for name, fname in (("teacher_25step", "toy-teacher-25step"), ("lcm_1step", "toy-lcm-1step"),
                            ("lcm_2step", "toy-lcm-2step")):
            r = rows[name]
            title = (f"{name} (guidance {r['guidance']}; rows: single / seen pairs / held-out pairs) "
                     f"[checker] mean over {len(prompts)}: {r['mean']:.3f}")
            sampling.save_grid(outs[name][idx], gp, Path(grids) / f"{fname}.png", title)
        sampling.save_grid(torch.from_numpy(images[idx]), gp, Path(grids) / "toy-data.png", "dataset images [checker]")
    return {"n_images": len(prompts), "results": rows}


def format_table(res: dict) -> str:
    lines = [f"held-out captions x seeds = {res['n_images']} images per row",
             f"{'':26s}{'mean':>8s}{'single':>8s}{'seen2':>8s}{'unseen2':>8s}"]
    for name, r in res["results"].items():
        cells = "".join(f"{r[k]:8.3f}" if k in r else " " * 8 for k in ("mean", "single", "seen_pair", "unseen_pair"))
        lines.append(f"{name:26s}{cells}")
    return "\n".join(lines)


def sample(prompt: str, steps: int, out: str | Path, teacher: bool = False,
           guidance: float | None = None, seed: int = 0) -> float:
    """Write one 32×32 PNG and return its checker score."""
    from PIL import Image

    pipe = sampling.load_pipeline(paths.TEACHER_DIR if teacher else paths.LCM_DIR)
    img = sampling.generate(pipe, [prompt], steps, guidance, seed)
    arr = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(out)
    return float(checker.score(img, [prompt])[0])
