"""README.md of an exported model, in the shape of diffusers' training scripts' save_model_card:
YAML metadata, what the model is, the held-out true reward before and after (1 and 2 steps),
the true-reward queries spent, the LaSRO settings, before/after grids, how to load it."""

from __future__ import annotations

import shutil
from pathlib import Path

SETTINGS = ("reward", "iterations", "prompts_per_iter", "n_noises", "lr", "lr_schedule", "c", "c1", "c2", "regularizer",
            "normalizer", "norm_clip", "adapt_every", "lora_rank", "lcm_lora", "guidance_scale", "eval_seeds", "seed")


def _pm(row: dict | None, k: str) -> str:
    if row is None or row.get(f"true_{k}") is None:
        return "not evaluated"
    return f"{row[f'true_{k}']:.3f} ± {row[f'true_{k}_std']:.3f}"


def _snippet(meta: dict, out: Path, prompt: str) -> str:
    call = f'pipe("{prompt}", num_inference_steps=2, guidance_scale={meta["guidance_scale"]})'
    if meta["kind"] == "full":
        return (f'from diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained("{out}")\n'
                f"image = {call}.images[0]")
    lines = ["from diffusers import DiffusionPipeline", f'pipe = DiffusionPipeline.from_pretrained("{meta["base_model"]}")']
    if meta.get("lcm_lora"):  # trained on base + LCM-LoRA, fused, with an LCMScheduler
        lines = ["from diffusers import DiffusionPipeline, LCMScheduler", lines[1],
                 "pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)",
                 f'pipe.load_lora_weights("{meta["lcm_lora"]}"); pipe.fuse_lora(); pipe.unload_lora_weights()']
    return "\n".join([*lines, f'pipe.load_lora_weights("{out}")', f"image = {call}.images[0]"])


def _images(run: Path, tmp: Path, it: int) -> list[str]:
    """Copy the run's held-out grids (iteration 0 and `it`) next to the card; Markdown lines."""
    lines = []
    for k, label in (("2step", "2 steps"), ("1step", "1 step")):
        before, after = run / "grids" / f"{k}_it00000.png", run / "grids" / f"{k}_it{it:05d}.png"
        if not (before.is_file() and after.is_file()):
            continue
        (tmp / "images").mkdir(exist_ok=True)
        shutil.copy(before, tmp / "images" / f"{k}_before.png")
        shutil.copy(after, tmp / "images" / f"{k}_after.png")
        lines += [f"**{label}**, base model (iteration 0):\n", f"![{k} before](images/{k}_before.png)\n",
                  f"**{label}**, this model (iteration {it}):\n", f"![{k} after](images/{k}_after.png)\n"]
    return lines or ["(no held-out grids were written at this iteration)\n"]


def write_model_card(tmp: Path, out: Path, *, run: Path, cfg: dict, state: dict, meta: dict, evals: dict,
                     pretrain_queries: int | None) -> Path:
    from .prompts import eval_prompts

    it = state["iteration"]
    before, after = evals.get(0), evals.get(it)
    held_out = eval_prompts(Path(cfg["eval_prompts"]) if cfg.get("eval_prompts") else None)
    family = "lcm" if meta.get("scheduler") == "LCMScheduler" else "turbo"
    tags = ["text-to-image", "diffusers", "diffusers-training", "lasro", "reward-fine-tuning", family]
    tags += ["lora"] if meta["kind"] == "lora" else []
    which = {"checkpoint-best": "the best checkpoint by held-out true 2-step reward",
             "checkpoint": "the last checkpoint"}.get(meta["checkpoint"]["name"], f"checkpoint {meta['checkpoint']['name']}")
    fine = state.get("queries", 0)
    pre = "not recorded (no pretrain.json in the run)" if pretrain_queries is None else f"{pretrain_queries:,}"
    total = f"{fine + pretrain_queries:,}" if pretrain_queries is not None else f"{fine:,} + pre-training"
    n_eval = (len(held_out), cfg.get("eval_seeds"))
    lines = [
        "---", f"base_model: {meta['base_model']}", "library_name: diffusers", "tags:", *[f"- {t}" for t in tags],
        "inference: true", "---", "",
        f"# LaSRO fine-tune of `{meta['base_model']}`", "",
        f"A few-step text-to-image model fine-tuned with LaSRO (latent-space surrogate reward optimisation, "
        f"arXiv 2411.15247) for the reward `{cfg.get('reward')}`: a differentiable surrogate R_ψ learnt from the "
        f"black-box reward's scores supplies the gradient. {'LoRA weights' if meta['kind'] == 'lora' else 'Full pipeline'}, "
        f"exported from {which} (iteration {it} of {cfg.get('iterations')}) of the run `{run}`.", "",
        "## Held-out true reward", "",
        f"{n_eval[0]} held-out prompts × {n_eval[1]} seeds, the same samples before and after; mean ± std over prompts.",
        "", "| sampler | base model (iteration 0) | this model |", "|---|---|---|",
        f"| 1 step | {_pm(before, '1step')} | {_pm(after, '1step')} |",
        f"| 2 steps | {_pm(before, '2step')} | {_pm(after, '2step')} |", "",
        "Held-out prompt i, seed j is sampled with `torch.Generator().manual_seed(1000 * j + i)`. The trainer's "
        "sampler is the stock pipeline's, bit for bit, so plain diffusers with those generators "
        f"(`pipe(prompts, num_inference_steps=2, guidance_scale={meta['guidance_scale']}, generator=[...])`) "
        "gives the very same samples.", "",
    ]
    if before and after and after.get("true_2step") is not None and after["true_2step"] < before["true_2step"]:
        lines += ["**This checkpoint's held-out 2-step reward is below the base model's**: fine-tuning did not "
                  "improve it on these prompts.", ""]
    if meta["checkpoint"]["name"] == "checkpoint-best":
        lines += ["The best checkpoint was chosen by this held-out 2-step reward, so the figure above is "
                  "optimistic by selection; the last checkpoint's is in the run's `summary.json`.", ""]
    lines += [
        "## True-reward queries spent", "",
        "| pre-training | fine-tuning (to this checkpoint) | total | held-out evaluation |", "|---|---|---|---|",
        f"| {pre} | {fine:,} | {total} | {state.get('eval_queries', 0):,} |", "",
        "## LaSRO settings", "", "| setting | value |", "|---|---|",
        *[f"| {k} | `{cfg.get(k)}` |" for k in SETTINGS if k in cfg], "",
        "## Samples (held-out prompts, same seeds; the number is the true reward)", "",
        *_images(run, tmp, it), "",
        "## Use it", "", "```python", _snippet(meta, out, held_out[0] if held_out else "a photo of a cat"), "```", "",
    ]
    if meta["kind"] == "lora":
        lines += ["Loading it, diffusers notes that the text encoders got no LoRA keys (\"safe to ignore\"), as for "
                  "every UNet-only LoRA. "
                  f"`python -m trainer export --run {run} --fuse --out DIR` writes the LoRA fused into a full "
                  "pipeline instead.", ""]
    path = tmp / "README.md"
    path.write_text("\n".join(lines))
    return path
