"""report.html: one self-contained page over one or more run folders (seeds of one setting).

Everything is inline (plots as PNG data, thumbnails, a few lines of plain JavaScript to sort the
per-prompt table), so the page works offline and can be mailed. Read from each run folder:
metrics.jsonl, config.json, summary.json, pretrain.json (pre-training's queries and accuracy),
services.json (the settings the demo started the services with), evals/ (per-sample rewards and
thumbnails of every evaluation) and curves.png.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .reference import teacher_reward
from .trackers import masked

STEPS = ("2step", "1step")
PAIRS_SHOWN = 24  # prompts in the before/after pairs section (the table has them all)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict | None
    pretrain: dict | None
    services: dict | None
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # evals/itNNNNN.json, by iteration

    @classmethod
    def load(cls, path: Path) -> Run:
        rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()]
        records = sorted((json.loads(p.read_text()) for p in (path / "evals").glob("it*.json")),
                         key=lambda r: r["iteration"])
        return cls(path, _json(path / "config.json") or {}, _json(path / "summary.json"), _json(path / "pretrain.json"),
                   _json(path / "services.json"), [r for r in rows if r["kind"] == "train"],
                   [r for r in rows if r["kind"] == "eval"], records)

    @property
    def pre_q(self) -> int:
        """True-reward queries spent pre-training the surrogate before fine-tuning started."""
        return int((self.pretrain or {}).get("queries", 0))

    def x(self, row: dict) -> int:
        return self.pre_q + int(row.get("queries") or 0)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return _data(buf.getvalue())


def _data(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _mark_pretraining(ax, runs: list[Run]) -> None:
    pre = [r.pre_q for r in runs]
    if max(pre) > 0:
        ax.axvspan(0, max(pre), color="tab:green", alpha=0.10, label="pre-training the surrogate (generator unchanged)")
        ax.axvline(float(np.mean(pre)), color="tab:green", lw=1, ls="--", label="fine-tuning starts")


def reward_plot(runs: list[Run]) -> str:
    """True held-out reward against true-reward queries, pre-training included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    ref = teacher_reward(runs[0].config)
    for ax, k in zip(axes, STEPS, strict=True):
        _mark_pretraining(ax, runs)
        many = len(runs) > 1
        for i, r in enumerate(runs):
            if not r.evals:
                continue
            xs, ys = [r.x(e) for e in r.evals], [e[f"true_{k}"] for e in r.evals]
            if r.pre_q:  # the generator is the base model while the surrogate pre-trains
                ax.plot([0, r.pre_q], [ys[0], ys[0]], ls=":", color="tab:blue", alpha=0.5 if many else 1)
            ax.plot(xs, ys, "o-", ms=3, lw=1 if many else 1.6, alpha=0.35 if many else 1, color="tab:blue",
                    label=(f"{len(runs)} runs" if many else "held-out true reward") if i == 0 else None)
        lengths = {len(r.evals) for r in runs}
        if many and len(lengths) == 1 and 0 not in lengths:  # seed spread at each evaluation
            xs = np.mean([[r.x(e) for e in r.evals] for r in runs], axis=0)
            ys = np.array([[e[f"true_{k}"] for e in r.evals] for r in runs])
            ax.plot(xs, ys.mean(0), "o-", color="tab:blue", lw=2, label=f"mean of {len(runs)} runs")
            ax.fill_between(xs, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), color="tab:blue", alpha=0.2,
                            label="± std over runs")
        if ref is not None:
            ax.axhline(ref[0], color="black", lw=1, ls="-.", label=ref[1])
        ax.set_title(f"held-out true reward, {k[0]}-step samples")
        ax.set_xlabel("true-reward queries (pre-training + fine-tuning; evaluation not counted)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: never over the data
    fig.tight_layout()
    return _png(fig)


def accuracy_plot(runs: list[Run]) -> str | None:
    """The surrogate's pair accuracy against true-reward queries: the learner's own held-out
    groups (/status), and the model's current held-out samples at each evaluation (tracking)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 3.8))
    _mark_pretraining(ax, runs)
    drawn = False
    for i, r in enumerate(runs):
        first = i == 0
        pts = [(q, a) for q, a in (r.pretrain or {}).get("history", []) if a is not None]
        pts += [(r.x(e), e["learner_accuracy"]) for e in r.evals if e.get("learner_accuracy") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", ms=3, color="tab:purple", alpha=0.4 if len(runs) > 1 else 1,
                    label="learner: held-out groups (surrogate /status)" if first else None)
        for k, color in (("2step", "tab:orange"), ("1step", "tab:blue")):
            t = [(r.x(e), e[f"tracking_{k}"]) for e in r.evals if e.get(f"tracking_{k}") is not None]
            if t:
                ax.plot(*zip(*t, strict=True), "s--", ms=3, color=color, alpha=0.4 if len(runs) > 1 else 1,
                        label=f"tracking: the model's current {k[0]}-step held-out samples" if first else None)
        drawn = drawn or bool(pts) or any(e.get("tracking_2step") is not None for e in r.evals)
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(0.5, color="grey", lw=1, ls=":", label="chance")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("surrogate pair accuracy: does R_psi order same-prompt samples like the true reward?")
    ax.set_xlabel("true-reward queries (pre-training + fine-tuning)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: never over the data
    fig.tight_layout()
    return _png(fig)


def _tiles(run: Run, record: dict, k: str) -> list[str]:
    """Data URIs of each prompt's seed-0 thumbnail in one evaluation record."""
    a = record["atlas"][k]
    atlas = Image.open(run.path / "evals" / a["file"]).convert("RGB")
    out = []
    for i in range(len(record["prompts"])):
        r, c = divmod(i, a["cols"])
        tile = atlas.crop((c * a["tile"], r * a["tile"], (c + 1) * a["tile"], (r + 1) * a["tile"]))
        buf = io.BytesIO()
        tile.save(buf, format="PNG")
        out.append(_data(buf.getvalue()))
    return out


def _per_prompt(record: dict, k: str) -> np.ndarray:
    return np.asarray(record["true"][k], dtype=float).reshape(len(record["prompts"]), record["seeds"])


def _f(x: float | None, d: int = 3) -> str:
    return "–" if x is None else f"{x:.{d}f}"


def pairs_section(run: Run) -> str:
    before, after = run.records[0], run.records[-1]
    parts = [f"<h2>Before | after: same prompt, same noise</h2><p>Seed 0 of each held-out prompt at iteration "
             f"{before['iteration']} and {after['iteration']}, the true reward under each image "
             f"(run <code>{html.escape(str(run.path))}</code>; the first {PAIRS_SHOWN} prompts, all of them in the table below).</p>"]
    for k in STEPS:
        tb, ta = _tiles(run, before, k), _tiles(run, after, k)
        sb, sa = _per_prompt(before, k)[:, 0], _per_prompt(after, k)[:, 0]
        cards = []
        for i, p in enumerate(before["prompts"][:PAIRS_SHOWN]):
            cards.append(f"<div class='pair'><div class='cap'>{html.escape(p)}</div>"
                         f"<figure><img class='px' src='{tb[i]}' alt='before'><figcaption>before {sb[i]:.2f}</figcaption></figure>"
                         f"<figure><img class='px' src='{ta[i]}' alt='after'><figcaption>after {sa[i]:.2f}</figcaption></figure></div>")
        parts.append(f"<h3>{k[0]}-step samples</h3><div class='pairs'>{''.join(cards)}</div>")
    return "\n".join(parts)


def table_section(runs: list[Run]) -> str:
    """Per prompt: before, after and gain of the mean over seeds (and over runs), sortable."""
    use = [r for r in runs if r.records and r.records[0]["prompts"] == runs[0].records[0]["prompts"]]
    prompts = use[0].records[0]["prompts"]
    mean = {(k, w): np.mean([_per_prompt(r.records[0 if w == "before" else -1], k).mean(1) for r in use], axis=0)
            for k in STEPS for w in ("before", "after")}
    thumbs = {w: _tiles(use[0], use[0].records[0 if w == "before" else -1], "2step") for w in ("before", "after")}
    head = ["#", "prompt", "2-step, seed 0: before | after", "2-step before", "2-step after", "2-step gain",
            "1-step before", "1-step after", "1-step gain"]
    kinds = ["num", "text", None, "num", "num", "num", "num", "num", "num"]
    ths = "".join(f"<th data-kind='{kd}' title='click to sort'>{html.escape(h)}</th>" if kd else f"<th>{html.escape(h)}</th>"
                  for h, kd in zip(head, kinds, strict=True))
    rows = []
    for i, p in enumerate(prompts):
        cells = [f"<td data-v='{i}'>{i}</td>", f"<td data-v='{html.escape(p)}'>{html.escape(p)}</td>",
                 f"<td><img class='px sm' src='{thumbs['before'][i]}' alt='before'> <img class='px sm' src='{thumbs['after'][i]}' alt='after'></td>"]
        for k in ("2step", "1step"):
            b, a = mean[(k, "before")][i], mean[(k, "after")][i]
            cls = "up" if a - b > 1e-9 else "down" if a - b < -1e-9 else ""
            cells += [f"<td data-v='{b:.6f}'>{b:.3f}</td>", f"<td data-v='{a:.6f}'>{a:.3f}</td>",
                      f"<td class='{cls}' data-v='{a - b:.6f}'>{a - b:+.3f}</td>"]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    over = f", mean over {len(use)} runs" if len(use) > 1 else ""
    return (f"<h2>Per prompt</h2><p>Held-out true reward of each prompt, mean over its {use[0].records[0]['seeds']} seeds{over}: "
            f"first evaluation (iteration {use[0].records[0]['iteration']}) and last (iteration {use[0].records[-1]['iteration']}). "
            "Click a column header to sort by it.</p>"
            f"<table id='prompts' class='sortable'><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _kv(d: dict) -> str:
    d = masked(d)
    return "<table class='kv'>" + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))}</code></td></tr>"
        for k, v in d.items()) + "</table>"


def config_section(runs: list[Run]) -> str:
    parts = ["<h2>Configuration</h2>"]
    first = runs[0]
    differ = sorted({k for r in runs for k in set(r.config) | set(first.config) if r.config.get(k) != first.config.get(k)})
    if differ:
        parts.append("<h3>Settings that differ between the runs</h3><table class='kv'><tr><th>run</th>"
                     + "".join(f"<th>{html.escape(k)}</th>" for k in differ) + "</tr>"
                     + "".join(f"<tr><td><code>{html.escape(str(r.path))}</code></td>"
                               + "".join(f"<td><code>{html.escape(str(r.config.get(k)))}</code></td>" for k in differ)
                               + "</tr>" for r in runs) + "</table>")
    for r in runs:
        open_ = " open" if len(runs) == 1 else ""
        parts.append(f"<details{open_}><summary>Trainer (<code>{html.escape(str(r.path))}/config.json</code>)</summary>{_kv(r.config)}</details>")
        if r.services:
            for name, settings in r.services.items():
                parts.append(f"<details{open_}><summary>{html.escape(name)}: the settings it was started with "
                             f"(<code>services.json</code>)</summary>{_kv(settings)}</details>")
        else:
            parts.append("<p class='note'>Reward and surrogate service settings: not recorded. This run used services "
                         "started elsewhere; <code>python -m trainer demo</code> records the settings it starts them with.</p>")
        if r.pretrain:
            parts.append(f"<details><summary>Pre-training (<code>pretrain.json</code>)</summary>"
                         f"{_kv({k: v for k, v in r.pretrain.items() if k != 'history'})}</details>")
    return "\n".join(parts)


def summary_section(runs: list[Run]) -> str:
    head = ("<tr><th>run</th><th>iterations</th><th>1-step before</th><th>1-step after</th><th>2-step before</th>"
            "<th>2-step after</th><th>queries: pre-training</th><th>fine-tuning</th><th>total</th><th>evaluation</th></tr>")
    rows = []
    for r in runs:
        if not r.evals:
            continue
        b, a = r.evals[0], r.evals[-1]
        ft = int(a.get("queries") or 0)
        ev = (r.summary or {}).get("eval_queries")
        rows.append(f"<tr><td><code>{html.escape(str(r.path))}</code></td><td>{a['iteration']}</td>"
                    + "".join(f"<td>{_f(e[f'true_{k}'])} ± {_f(e.get(f'true_{k}_std'))}</td>" for k in ("1step",) for e in (b, a))
                    + "".join(f"<td>{_f(e[f'true_{k}'])} ± {_f(e.get(f'true_{k}_std'))}</td>" for k in ("2step",) for e in (b, a))
                    + f"<td>{r.pre_q:,}</td><td>{ft:,}</td><td><b>{r.pre_q + ft:,}</b></td><td>{'–' if ev is None else f'{ev:,}'}</td></tr>")
    if len(rows) > 1:
        done = [r for r in runs if r.evals]
        cells = []
        for k in ("1step", "2step"):
            for w in (0, -1):
                v = np.array([r.evals[w][f"true_{k}"] for r in done])
                cells.append(f"<td><b>{v.mean():.3f} ± {v.std():.3f}</b></td>")
        rows.append(f"<tr><td>mean ± std over {len(done)} runs</td><td></td>{''.join(cells)}<td colspan='4'></td></tr>")
    return ("<h2>Summary</h2><p>Held-out true reward (mean ± std over prompts), first and last evaluation; "
            "true-reward queries spent, pre-training included.</p>"
            f"<table class='kv'>{head}{''.join(rows)}</table>")


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
img{max-width:100%} td,th{padding:2px 8px;text-align:left;vertical-align:middle} table.kv{border-collapse:collapse}
table.kv td,table.kv th{border-bottom:1px solid #eee} code{font-size:90%}
.px{image-rendering:pixelated;width:96px;height:96px} .px.sm{width:48px;height:48px}
.pairs{display:flex;flex-wrap:wrap;gap:10px} .pair{border:1px solid #ddd;border-radius:6px;padding:6px;width:214px}
.pair figure{display:inline-block;margin:2px} .pair figcaption{font-size:12px;text-align:center}
.cap{font-size:12px;height:2.6em;overflow:hidden} .up{color:#080} .down{color:#b00} .note{color:#666}
table.sortable th[data-kind]{cursor:pointer;user-select:none;background:#f4f4f4}
table.sortable th[data-kind]:hover{background:#e8e8ff} th.asc::after{content:" \\25B2"} th.desc::after{content:" \\25BC"}"""

# Plain JavaScript, no library: a click on a header sorts the rows by that column's data-v
# (numbers numerically), largest first; a second click reverses.
JS = """document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.querySelectorAll('th');
  heads.forEach(function (th, col) {
    if (!th.dataset.kind) return;
    th.addEventListener('click', function () {
      var desc = !th.classList.contains('desc');
      heads.forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(desc ? 'desc' : 'asc');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var c = th.dataset.kind === 'num' ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});"""


def build(paths: list[Path], out: Path) -> Path:
    runs = [Run.load(p) for p in paths]
    title = html.escape(", ".join(str(p) for p in paths))
    ref = teacher_reward(runs[0].config)
    ref_note = ("The dash-dotted line is the 25-step teacher on the same held-out samples: a committed measurement "
                "(trainer/toy_teacher.json, <code>python -m trainer.reference</code>), not re-measured for this report."
                if ref else "No teacher line: a committed teacher measurement exists only for the toy world's default evaluation.")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
             f"<title>LaSRO report: {title}</title><style>{CSS}</style></head><body>",
             f"<h1>LaSRO report</h1><p>{'Runs' if len(runs) > 1 else 'Run'}: <code>{title}</code></p>",
             summary_section(runs),
             f"<h2>True reward against true-reward queries</h2><p>The cost that matters is the black-box reward's "
             f"queries. The shaded region is pre-training the surrogate (the generator is still the base model, so "
             f"its reward is the first evaluation's); fine-tuning starts at the dashed line. {ref_note}</p>"
             f"<img src='{reward_plot(runs)}' alt='true reward against queries'>"]
    acc = accuracy_plot(runs)
    if acc:
        parts.append("<h2>Surrogate pair accuracy</h2><p>Pairs of same-prompt samples whose true rewards differ: the "
                     "share the surrogate orders like the true reward. The learner's is measured on its own held-out "
                     "groups; tracking, at each evaluation, on the model's current held-out samples. 0.5 is chance.</p>"
                     f"<img src='{acc}' alt='surrogate pair accuracy'>")
    if (runs[0].path / "curves.png").is_file():
        parts.append("<h2>Training, per iteration</h2>"
                     f"<img src='{_data((runs[0].path / 'curves.png').read_bytes())}' alt='training curves'>")
    if runs[0].records:
        parts += [pairs_section(runs[0]), table_section(runs)]
    parts += [config_section(runs), f"<script>{JS}</script></body></html>"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out
