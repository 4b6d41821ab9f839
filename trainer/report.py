"""What a run leaves behind: metrics.jsonl, the --report-to trackers' logs (TensorBoard in out/tb,
wandb), per-evaluation records and thumbnails (out/evals), image grids, and report.html
(trainer/report_page.py: true reward against true-reward queries, surrogate accuracy,
before/after pairs on the same seeds, a per-prompt table, the config of every part)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw


def save_grid(images: torch.Tensor, path: Path, captions: list[str] | None = None,
              scores: np.ndarray | None = None, ncol: int = 8, scale: int = 4) -> Path:
    """images (N, 3, H, W) in [0, 1] -> one PNG, each tile upscaled and labelled."""
    n, _, h, w = images.shape
    tw, th, label = w * scale, h * scale, 22 if (captions or scores is not None) else 0
    rows = (n + ncol - 1) // ncol
    canvas = Image.new("RGB", (ncol * tw, rows * (th + label)), "white")
    draw = ImageDraw.Draw(canvas)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    for i in range(n):
        x, y = (i % ncol) * tw, (i // ncol) * (th + label)
        canvas.paste(Image.fromarray(arr[i]).resize((tw, th), Image.NEAREST), (x, y))
        text = " ".join(filter(None, [captions[i][:24] if captions else "",
                                      f"{scores[i]:.2f}" if scores is not None else ""]))
        if text:
            draw.text((x + 2, y + th + 2), text, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


class RunLog:
    """What the main process records while a run trains: metrics.jsonl (the report's source), the
    trackers of --report-to, and per evaluation evals/itNNNNN.json (each held-out sample's true
    and surrogate reward) with a thumbnail of each prompt's first seed (evals/itNNNNN_Kstep.png)."""

    def __init__(self, out: Path, config: Any):
        from .trackers import Trackers

        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.metrics = (out / "metrics.jsonl").open("a")
        self.config = json.loads(config.model_dump_json()) if hasattr(config, "model_dump_json") else dict(config)
        (out / "config.json").write_text(json.dumps(self.config, indent=2))
        self.trackers = Trackers(self.config.get("report_to", "tensorboard"), out, self.config)
        # the newest evaluation, also of an earlier process of a resumed run (a run resumed after
        # its last iteration evaluates nothing more, and its summary still needs an "after")
        evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "eval"' in x]
        self.last_eval: dict = {k: v for k, v in evals[-1].items() if k != "kind"} if evals else {}

    def _write(self, kind: str, row: dict) -> None:
        self.metrics.write(json.dumps({"kind": kind, **row}) + "\n")
        self.metrics.flush()

    def train(self, it: int, row: dict) -> None:
        self.trackers.log({f"train/{k}": v for k, v in row.items() if k != "iteration"}, it)
        self._write("train", row)

    def eval(self, it: int, summary: dict, ev) -> None:
        self.trackers.log({f"eval/{k}": v for k, v in summary.items() if k != "iteration"}, it)
        self._write("eval", summary)
        self.last_eval = summary
        reps = [p for p in ev.prompts for _ in range(len(ev.true["2step"]) // len(ev.prompts))]
        for k in ("1step", "2step"):
            n = min(32, len(reps))
            p = save_grid(ev.images[k][:n], self.out / "grids" / f"{k}_it{it:05d}.png", reps[:n], ev.true[k][:n])
            self.trackers.log_image(f"eval/{k}", np.asarray(Image.open(p).convert("RGB")), it)
        save_eval(self.out / "evals", it, summary.get("queries"), ev)

    def close(self, summary: dict) -> None:
        self.trackers.finish()
        self.metrics.close()
        write_report(self.out, summary, self.config)


THUMB = 128  # largest side of the report's sample thumbnails


def save_eval(folder: Path, it: int, queries: int | None, ev) -> Path:
    """evals/itNNNNN.json: prompts, seeds, each sample's true (and surrogate) reward in the order
    [p0 s0, p0 s1, ..., p1 s0, ...]; evals/itNNNNN_Kstep.png: each prompt's seed-0 sample, one
    tile per prompt, `cols` to a row (the report's before/after pairs and per-prompt table)."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = len(ev.true["2step"]) // len(ev.prompts)
    atlas = {}
    for k in ev.images:
        first = ev.images[k][::seeds].clamp(0, 1)  # (P, 3, H, W): seed 0 of every prompt
        side = first.shape[-1]
        if side > THUMB:
            first = torch.nn.functional.interpolate(first, size=(THUMB, THUMB), mode="area")
        tile, cols = first.shape[-1], 16
        rows = (len(first) + cols - 1) // cols
        canvas = np.zeros((rows * tile, cols * tile, 3), dtype=np.uint8)
        arr = (first.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        for i, a in enumerate(arr):
            r, c = divmod(i, cols)
            canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = a
        name = f"it{it:05d}_{k}.png"
        Image.fromarray(canvas).save(folder / name)
        atlas[k] = {"file": name, "tile": tile, "cols": cols}
    record = {"iteration": it, "queries": queries, "prompts": list(ev.prompts), "seeds": seeds,
              "true": {k: [float(x) for x in v] for k, v in ev.true.items()},
              "surrogate": {k: [float(x) for x in v] for k, v in ev.surrogate.items()} if ev.surrogate else None,
              "atlas": atlas}
    path = folder / f"it{it:05d}.json"
    path.write_text(json.dumps(record))
    return path


def _rows(out: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "eval"]


def plot_curves(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = _rows(out)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    its = [r["iteration"] for r in evals]
    for k, color in (("1step", "tab:blue"), ("2step", "tab:orange")):
        axes[0].plot(its, [r[f"true_{k}"] for r in evals], "o-", color=color, label=f"true {k}")
        if evals and f"surrogate_{k}" in evals[0]:
            axes[1].plot(its, [r[f"surrogate_{k}"] for r in evals], "s--", color=color, label=f"surrogate {k}")
        if evals and f"tracking_{k}" in evals[0]:
            axes[3].plot(its, [r[f"tracking_{k}"] if r[f"tracking_{k}"] is not None else float("nan") for r in evals],
                         "o-", color=color, label=f"{k}")
    axes[3].axhline(0.5, color="grey", lw=1, ls=":")
    axes[3].set_title("surrogate tracks true reward: held-out pair accuracy")
    axes[0].set_title("held-out true reward")
    axes[1].set_title("held-out surrogate score (same samples)")
    ti = [r["iteration"] for r in train]
    for key, label in (("surrogate_1step_train", "surrogate, 1-step train samples"),
                       ("surrogate_2step_train", "surrogate, 2-step train samples"), ("l_reg", "regulariser L_reg"),
                       ("reward_train", "true reward of the batch (baselines)")):
        if train and key in train[0]:  # the baselines log other training quantities than LaSRO
            axes[2].plot(ti, [r[key] for r in train], label=label, lw=1)
    axes[2].set_title("training: surrogate score of the batch, regulariser")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out: Path, summary: dict | None = None, config: dict | None = None) -> Path:
    """out/report.html for one run folder (trainer/report_page.py)."""
    from .report_page import build

    plot_curves(out)
    return build([out], out / "report.html")


def write_multi_report(runs: list[Path], path: Path) -> Path:
    """One report over several run folders (seeds of one setting: mean and spread)."""
    from .report_page import build

    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise ValueError(f"{run}: no metrics.jsonl (give the --out folder of a run; a demo's is DEMO/train)")
    return build(list(runs), path)
