"""The claims benchmark: LaSRO against what users would pick instead, and the paper's ablations,
at ONE true-reward query budget (pre-training counts), several seeds.

    python -m bench.claims                 # every method x seeds 0, 1, 2 (~3.5 h on 2 cores; resumable)
    python -m bench.claims --quick         # one seed, a small budget: <= 10 min on 2 cores, same schema
    python -m bench.claims --methods rlcm dpo --seeds 0
    python -m bench.claims --docs-only     # re-render docs/claims.md from the cached cells
    python -m bench.claims --quick --rerun # run the cells again instead of using the committed ones

Each (method, seed) cell runs in its own processes (reward service, and for LaSRO variants a
private redis-server and the surrogate service), writes its result to
bench/results/claims/<mode>/<method>-s<seed>.json and is skipped when that file exists with
the same settings: a run interrupted anywhere resumes at the first missing cell, and finished
cells can be committed as they come. The summary is bench/results/claims.json and docs/claims.md (table, reward-vs-queries plot,
2-step grids on the same seeds); --quick writes bench/results/claims_quick.json and .md instead.

Methods (docs/claims.md says what each one is):
    lasro             the demo's LaSRO (pre-training + fine-tuning with online adaptation)
    lasro_frozen      the whole budget spent on pre-training, then no online adaptation
    lasro_onpolicy    a prompt's N_s samples share one z_T (on-policy exploration)
    lasro_cnn         R_psi on a from-scratch CNN instead of the UNet encoder
    lasro_2step_only  c1 = 0: only the 2-step output is optimised
    rlcm              PPO on the renoising step (RLCM / DDPO)
    dpo               Diffusion-DPO / PSO on the model's own best-vs-worst pairs
    refl              the ReFL oracle: the true reward's own gradient (toy_clip, differentiable)
    lasro_diff        LaSRO on that same differentiable reward (toy_clip)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .common import RESULTS, print_table

METHODS = ("lasro", "lasro_frozen", "lasro_onpolicy", "lasro_cnn", "lasro_2step_only", "rlcm", "dpo", "refl",
           "lasro_diff")
CHECKER, TOY_CLIP = "toy_attribute_binding", "toy_clip"
# RLCM and DPO at LaSRO's lr (5e-5, full fine-tuning) fall apart (2,048-query quick run at commit 05450f0: RLCM 0.866 -> 0.585,
# DPO -> 0.727); at 1e-5 RLCM gains (+0.026) and DPO loses less (-0.045): bench/results/sweep_quick.json.
# They run at the better of the two.
BASELINE_LR = 1e-5

# One budget for every method. FULL is 8,192 queries (LaSRO: 4,096 pre-training + 4,096
# fine-tuning over 128 iterations), 28 % of the demo's 29,184: at the demo's budget the 27 cells
# would take ~15 h on 2 cores (RLCM and DPO ~55 min each); at this one ~3.5 h. QUICK is 8x smaller.
SCALES = {
    "full": {"budget": 8_192, "prompts_per_iter": 4, "n_noises": 8, "pretrain_groups": 512,
             "lasro_iterations": 128, "adapt_every": 2, "evals": 4, "eval_seeds": 4},
    "quick": {"budget": 1_024, "prompts_per_iter": 4, "n_noises": 8, "pretrain_groups": 64,
              "lasro_iterations": 16, "adapt_every": 2, "evals": 2, "eval_seeds": 1},
}


def plan(method: str, scale: dict) -> dict:
    """The settings of one method at one budget: every query the method spends is counted
    against scale['budget'] (pre-training included); evaluation queries are not."""
    b = scale["prompts_per_iter"] * scale["n_noises"]  # samples per iteration
    its = scale["lasro_iterations"]
    common = {"prompts_per_iter": scale["prompts_per_iter"], "n_noises": scale["n_noises"],
              "eval_seeds": scale["eval_seeds"], "reward": TOY_CLIP if method in ("refl", "lasro_diff") else CHECKER}
    finetune = its // scale["adapt_every"] * 2 * b  # groups of z1 and z2 every adapt_every iterations
    if method.startswith("lasro"):
        pre = (scale["budget"] - finetune) // scale["n_noises"]  # a group of N_s latents = N_s queries
        p = {**common, "kind": "lasro", "iterations": its, "adapt_every": scale["adapt_every"],
             "pretrain_groups": pre, "train": {}, "surrogate_env": {}}
        if method == "lasro_frozen":  # no queries during fine-tuning: all of them go to pre-training
            p.update(pretrain_groups=scale["budget"] // scale["n_noises"], train={"adapt": False})
        elif method == "lasro_onpolicy":
            p["train"] = {"exploration": "on_policy"}
        elif method == "lasro_cnn":
            p["surrogate_env"] = {"SURROGATE_BACKBONE": "cnn"}
        elif method == "lasro_2step_only":
            p["train"] = {"c1": 0.0}
        elif method == "lasro_diff":  # the true reward has a gradient: measure R_psi's against it
            p["train"] = {"grad_cosine": True}
        p["eval_every"] = max(1, its // scale["evals"])
        return p
    if method in ("rlcm", "dpo"):  # one query per scored 2-step sample
        n = scale["budget"] // b
        return {**common, "kind": "baseline", "iterations": n, "eval_every": max(1, n // scale["evals"]),
                "train": {"lr": BASELINE_LR}}
    if method == "refl":  # one /grad query per latent, z1 and z2
        n = scale["budget"] // (2 * b)
        return {**common, "kind": "refl", "iterations": n, "eval_every": max(1, n // scale["evals"])}
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _key(p: dict) -> str:
    """A cell's settings: its plan, and the demo's trainer and learner defaults it runs on (a cell
    cached under other defaults is stale)."""
    from trainer.demo import DEMO_DEFAULTS, SURROGATE_ENV

    every = {"plan": p, "trainer": DEMO_DEFAULTS, "surrogate": SURROGATE_ENV}
    return hashlib.sha256(json.dumps(every, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _services(work: Path, p: dict, surrogate: bool):
    """The reward service (checker, toy_clip) and, for LaSRO variants, redis + the surrogate."""
    from lasro_common import redis_util
    from trainer.demo import SURROGATE_ENV, _free_port, service
    from trainer.fewstep import FewStepModel  # noqa: F401  (fail here, before any process starts)

    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rport = _free_port()
    rewards = ["--reward", p["reward"]] + (["--reward", CHECKER] if p["reward"] != CHECKER else [])
    urls = {"reward_url": f"http://127.0.0.1:{rport}"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(service(["reward_service", "--port", str(rport), *rewards], urls["reward_url"],
                                    work / "logs/reward.log", threads))
        if surrogate:
            redis_url = redis_util.embedded_redis_url(work / "redis")
            sport = _free_port()
            urls.update(redis_url=redis_url, surrogate_url=f"http://127.0.0.1:{sport}")
            stack.enter_context(service(
                ["surrogate_service", "--port", str(sport), "--redis-url", redis_url,
                 "--checkpoint-dir", str(work / "surrogate")], urls["surrogate_url"], work / "logs/surrogate.log",
                {**threads, **SURROGATE_ENV, **p["surrogate_env"]}))
        yield urls


def run_cell(method: str, seed: int, p: dict, work: Path) -> dict:
    """Train one method with one seed at the budget; the cell's result (schema in the module doc)."""
    from trainer.baselines import train_baseline
    from trainer.config import TrainConfig
    from trainer.demo import DEMO_DEFAULTS
    from trainer.loop import train
    from trainer.pretrain import pretrain

    t0 = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    base = {**DEMO_DEFAULTS, "seed": seed, "reward": p["reward"], "prompts_per_iter": p["prompts_per_iter"],
            "n_noises": p["n_noises"], "eval_seeds": p["eval_seeds"], "iterations": p["iterations"],
            "eval_every": p["eval_every"], "checkpoint_every": p["iterations"] or 1, "out": work / "train",
            "progress": True}
    pre_q, pre_acc = 0, None
    with _services(work, p, surrogate=p["kind"] == "lasro") as urls:
        if p["kind"] == "lasro":
            cfg = TrainConfig(**{**base, **urls, "adapt_every": p["adapt_every"], "pretrain_groups": p["pretrain_groups"],
                                 "pretrain_accuracy": 1.0, **p["train"]})  # 1.0: spend the whole pre-training budget
            pre = pretrain(cfg)
            pre_q, pre_acc = pre["queries"], pre.get("heldout_pair_accuracy")
            summary = train(cfg)
        elif p["kind"] == "refl":
            cfg = TrainConfig(**{**base, **urls, "grad_source": "true", "redis_url": None, **p.get("train", {})})
            summary = train(cfg)
        else:
            summary = train_baseline(TrainConfig(**{**base, **urls, **p.get("train", {})}), method)
    evals = [json.loads(x) for x in (work / "train/metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    rows = [json.loads(x) for x in (work / "train/metrics.jsonl").read_text().splitlines()]
    cosine = [[pre_q + int(r.get("queries", 0)), r["grad_cosine_1step"], r["grad_cosine_2step"]]
              for r in rows if "grad_cosine_2step" in r]
    curve = [[pre_q + int(r.get("queries", 0)), r["true_2step"], r["true_1step"]] for r in evals]
    if pre_q:  # pre-training changes R_psi, not the model: the "before" point again, at its cost
        curve.insert(1, [pre_q, evals[0]["true_2step"], evals[0]["true_1step"]])
    grids = sorted((work / "train/grids").glob("2step_it*.png"))
    return {"method": method, "seed": seed, "reward": p["reward"], "queries": pre_q + summary["queries"],
            "queries_pretrain": pre_q, "wall_s": time.perf_counter() - t0,
            "before": summary["before"], "after": summary["after"],
            "before_std": summary["before_std"], "after_std": summary["after_std"], "curve": curve,
            "grad_cosine": cosine, "pretrain_accuracy": pre_acc,  # R_psi's held-out pair accuracy
            "learner_accuracy": [[pre_q + int(r.get("queries", 0)), r["learner_accuracy"]] for r in evals
                                 if r.get("learner_accuracy") is not None], "settings": p, "key": _key(p), "grid_before": str(grids[0]) if grids else None,
            "grid_after": str(grids[-1]) if grids else None}


def collect(mode: str, methods: list[str], seeds: list[int], scale: dict, cells: Path) -> list[dict]:
    runs = []
    for f in sorted(cells.glob("*.json")):
        r = json.loads(f.read_text())
        if r["method"] in methods and r["seed"] in seeds and r.get("key") == _key(plan(r["method"], scale)):
            runs.append(r)
    return runs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, an 8x smaller budget (<= 10 min)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (quick: 0)")
    ap.add_argument("--work", type=Path, default=Path("runs/claims"), help="run folders (not results)")
    ap.add_argument("--docs-only", action="store_true", help="render docs/claims.md from the cached cells")
    ap.add_argument("--rerun", action="store_true", help="run every cell again, even when a cached one matches")
    a = ap.parse_args(argv)
    mode = "quick" if a.quick else "full"
    scale = SCALES[mode]
    seeds = a.seeds if a.seeds is not None else ([0] if a.quick else [0, 1, 2])
    cells = RESULTS / "claims" / mode
    cells.mkdir(parents=True, exist_ok=True)
    if not a.docs_only:
        for seed in seeds:  # seed-major: an interrupted run has whole seeds, every method compared
            for method in a.methods:
                p = plan(method, scale)
                path = cells / f"{method}-s{seed}.json"
                if not a.rerun and path.exists() and json.loads(path.read_text()).get("key") == _key(p):
                    print(f"[claims] {method} seed {seed}: cached ({path})")
                    continue
                print(f"[claims] {method} seed {seed}: budget {scale['budget']} queries, {p}", flush=True)
                cell = run_cell(method, seed, p, a.work / mode / f"{method}-s{seed}")
                cell = _keep_grids(cell, mode)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cell, indent=2))
                os.replace(tmp, path)  # a cell is cached only once complete
    runs = collect(mode, a.methods, seeds, scale, cells)
    result = {"budget_queries": scale["budget"], "mode": mode, "cells_planned": len(a.methods) * len(seeds),
              "runs": runs}
    name = "claims" if mode == "full" else "claims_quick"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS / f'{name}.json'}")
    from .claims_report import table_rows, write_docs

    rows = table_rows(result)
    print_table(f"claims ({mode}): held-out true reward at {scale['budget']} queries", rows,
                ["method", "reward", "seeds", "before_2step", "after_2step", "gain_2step", "after_1step", "gain_1step",
                 "queries", "wall_s"])
    if runs:  # the full run renders the docs page; --quick a page of its own next to its results
        if mode == "full":
            print(f"wrote {write_docs(result, Path('docs/claims.md'), Path('docs/img/claims'))}")
        else:
            print(f"wrote {write_docs(result, RESULTS / 'claims_quick.md', cells / 'img')}")
    return result


def _keep_grids(cell: dict, mode: str) -> dict:
    """Copy the cell's before/after 2-step grids next to the results (the run folder is scratch)."""
    dest = RESULTS / "claims" / mode / "grids"
    dest.mkdir(parents=True, exist_ok=True)
    for k in ("grid_before", "grid_after"):
        if cell.get(k):
            target = dest / f"{cell['method']}-s{cell['seed']}-{k.split('_')[1]}.png"
            shutil.copy(cell[k], target)
            cell[k] = str(target)
    return cell


if __name__ == "__main__":
    main()
