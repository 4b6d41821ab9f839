"""What limits LaSRO's gain: the same cell as bench.claims, with one trainer setting changed.

    python -m bench.sweep                          # every variant, methods lasro and refl, seed 0
    python -m bench.sweep --variants base c10 --methods refl

Each variant overrides TrainConfig fields of the demo's defaults (trainer/demo.py DEMO_DEFAULTS)
for the LaSRO loop. Running it for `refl` (the true reward's own gradient, toy_clip) as well as
`lasro` (R_psi's gradient, the checker) separates the two suspects: if even the true gradient
cannot move the model, the optimiser and the regulariser limit the gain, not the surrogate.
Cells are cached in bench/results/sweep/<scale>/<variant>-<method>-s<seed>.json (resumable);
the table goes to bench/results/sweep_<scale>.json and docs/claims.md cites it.
"""

from __future__ import annotations

import argparse
import json
import os

from .claims import SCALES, _keep_grids, _key, plan, run_cell
from .common import RESULTS, print_table

# name -> TrainConfig overrides (and, under "surrogate_env", the learner's SURROGATE_* settings,
# which only LaSRO methods have). `base` is the demo's setting.
VARIANTS: dict[str, dict] = {
    "base": {},
    "c10": {"c": 10.0},
    "c1": {"c": 1.0},
    "lr2e-4": {"lr": 2e-4},
    "lr1e-5": {"lr": 1e-5},
    "lr2e-6": {"lr": 2e-6},
    "lr2e-5": {"lr": 2e-5},
    # the learner's replay ratio (a surrogate setting, LaSRO only): 4 optimiser steps per new group
    "upg4": {"surrogate_env": {"SURROGATE_UPDATES_PER_GROUP": "4"}},
    # an "oracle" surrogate: pre-trained on 8x the groups (4,096 = 32,768 queries, over the budget),
    # to see what a better R_psi buys with the rest unchanged. Not a same-cost comparison.
    "pre4096": {"pretrain_groups": 4096},
    "c10_lr2e-4": {"c": 10.0, "lr": 2e-4},
    "c1_lr2e-4": {"c": 1.0, "lr": 2e-4},
    "lcm_reg": {"regularizer": "lcm", "c": 1.0},
    "no_reg": {"c": 0.0},
}
SCALES_SWEEP = {
    # between --quick and full: a quarter of the full budget, a third of its iterations
    "sweep": {"budget": 8_192, "prompts_per_iter": 4, "n_noises": 8, "pretrain_groups": 512,
              "lasro_iterations": 128, "adapt_every": 2, "evals": 4, "eval_seeds": 2},
    "quick": SCALES["quick"],
}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--methods", nargs="+", default=["refl", "lasro"], choices=["refl", "lasro", "lasro_diff", "rlcm", "dpo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--scale", default="sweep", choices=list(SCALES_SWEEP))
    ap.add_argument("--work", default="runs/sweep")
    ap.add_argument("--table-only", action="store_true", help="only print and write the table of the cached cells")
    a = ap.parse_args(argv)
    scale = SCALES_SWEEP[a.scale]
    cells = RESULTS / "sweep" / a.scale
    cells.mkdir(parents=True, exist_ok=True)
    for variant in [] if a.table_only else a.variants:
        for method in a.methods:
            p = plan(method, scale)
            over = dict(VARIANTS[variant])
            senv = over.pop("surrogate_env", {})
            if senv and "surrogate_env" not in p:
                print(f"[sweep] {variant} {method}: skipped (a learner setting; {method} has no surrogate)")
                continue
            p["train"] = {**p.get("train", {}), **over}
            if senv:
                p["surrogate_env"] = {**p["surrogate_env"], **senv}
            for seed in a.seeds:
                path = cells / f"{variant}-{method}-s{seed}.json"
                if path.exists() and json.loads(path.read_text()).get("key") == _key(p):
                    print(f"[sweep] {variant} {method} seed {seed}: cached")
                    continue
                print(f"[sweep] {variant} {method} seed {seed}: {p}", flush=True)
                from pathlib import Path

                cell = run_cell(method, seed, p, Path(a.work) / a.scale / f"{variant}-{method}-s{seed}")
                cell = {**_keep_grids(cell, f"../sweep/{a.scale}"), "variant": variant}
                if cell.get("grid_after"):  # the 'before' grid is every variant's; the 'after' one is this cell's
                    after = Path(cell["grid_after"])
                    cell["grid_after"] = str(after.replace(after.with_name(f"{variant}-{after.name}")))
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cell, indent=2))
                os.replace(tmp, path)
    rows = []
    for f in sorted(cells.glob("*.json")):
        r = json.loads(f.read_text())
        rows.append({"variant": r["variant"], "method": r["method"], "seed": r["seed"], "reward": r["reward"],
                     "overrides": json.dumps(VARIANTS.get(r["variant"], {})),
                     "before_2step": r["before"]["2step"], "after_2step": r["after"]["2step"],
                     "gain_2step": r["after"]["2step"] - r["before"]["2step"],
                     "before_1step": r["before"]["1step"], "after_1step": r["after"]["1step"],
                     "gain_1step": r["after"]["1step"] - r["before"]["1step"],
                     "best_2step": max(c[1] for c in r["curve"]), "queries": r["queries"], "wall_s": r["wall_s"],
                     "pretrain_acc": r.get("pretrain_accuracy"),  # R_psi's held-out pair accuracy (cells since 3a43108)
                     "learner_acc": [a for _, a in r.get("learner_accuracy", [])]})
    rows.sort(key=lambda r: (r["method"], list(VARIANTS).index(r["variant"]) if r["variant"] in VARIANTS else 99))
    out = RESULTS / f"sweep_{a.scale}.json"
    out.write_text(json.dumps({"scale": scale, "variants": VARIANTS, "rows": rows}, indent=2))
    print_table(f"sweep ({a.scale}): held-out true reward, budget {scale['budget']} queries", rows,
                ["variant", "method", "seed", "before_2step", "after_2step", "gain_2step", "best_2step",
                 "after_1step", "gain_1step", "pretrain_acc", "wall_s"])
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
