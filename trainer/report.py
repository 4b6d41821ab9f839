"""What a run leaves behind: TensorBoard logs, metrics.jsonl, image grids and report.html
(true vs surrogate reward curves for 1- and 2-step outputs, before/after grids on the same
seeds, the config, and the true-reward queries spent)."""

from __future__ import annotations

import base64
import html
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
    def __init__(self, out: Path, config: Any):
        from torch.utils.tensorboard import SummaryWriter

        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(out / "tb"))
        self.metrics = (out / "metrics.jsonl").open("a")
        self.config = json.loads(config.model_dump_json()) if hasattr(config, "model_dump_json") else dict(config)
        (out / "config.json").write_text(json.dumps(self.config, indent=2))
        # the newest evaluation, also of an earlier process of a resumed run (a run resumed after
        # its last iteration evaluates nothing more, and its summary still needs an "after")
        evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "eval"' in x]
        self.last_eval: dict = {k: v for k, v in evals[-1].items() if k != "kind"} if evals else {}

    def _write(self, kind: str, row: dict) -> None:
        self.metrics.write(json.dumps({"kind": kind, **row}) + "\n")
        self.metrics.flush()

    def train(self, it: int, row: dict) -> None:
        for k, v in row.items():
            if k != "iteration":
                self.writer.add_scalar(f"train/{k}", v, it)
        self._write("train", row)

    def eval(self, it: int, summary: dict, ev) -> None:
        for k, v in summary.items():
            if k != "iteration" and v is not None:
                self.writer.add_scalar(f"eval/{k}", v, it)
        self._write("eval", summary)
        self.last_eval = summary
        reps = [p for p in ev.prompts for _ in range(len(ev.true["2step"]) // len(ev.prompts))]
        for k in ("1step", "2step"):
            n = min(32, len(reps))
            p = save_grid(ev.images[k][:n], self.out / "grids" / f"{k}_it{it:05d}.png", reps[:n], ev.true[k][:n])
            self.writer.add_image(f"eval/{k}", np.asarray(Image.open(p)), it, dataformats="HWC")

    def close(self, summary: dict) -> None:
        self.writer.flush()
        self.writer.close()
        self.metrics.close()
        write_report(self.out, summary, self.config)


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


def _img(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def write_report(out: Path, summary: dict, config: dict) -> Path:
    curves = plot_curves(out)
    grids = sorted((out / "grids").glob("2step_it*.png"))
    grids1 = sorted((out / "grids").glob("1step_it*.png"))
    fmt = json.dumps(summary, indent=2)
    parts = [f"<html><head><meta charset='utf-8'><title>LaSRO run: {html.escape(str(out))}</title>",
             "<style>body{font-family:sans-serif;margin:2em} img{max-width:100%} td{padding:2px 8px}</style></head><body>",
             f"<h1>LaSRO run <code>{html.escape(str(out))}</code></h1>",
             f"<h2>Summary</h2><pre>{html.escape(fmt)}</pre>",
             f"<h2>Reward curves</h2>{_img(curves)}"]
    if grids:
        parts += ["<h2>Two-step samples, same held-out prompts and seeds</h2>",
                  f"<h3>before ({grids[0].stem})</h3>{_img(grids[0])}", f"<h3>after ({grids[-1].stem})</h3>{_img(grids[-1])}"]
    if grids1:
        parts += ["<h2>One-step samples</h2>", f"<h3>before</h3>{_img(grids1[0])}", f"<h3>after</h3>{_img(grids1[-1])}"]
    parts.append("<h2>Config</h2><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(str(v))}</code></td></tr>" for k, v in config.items())
        + "</table></body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


