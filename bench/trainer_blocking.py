"""Trainer time blocked on services as a fraction of loop wall time (target <= 10%), and the
held-out reward gain over several seeds: runs the demo pipeline (Redis + both services, real
processes) with `--seeds` seeds.

    python -m bench.trainer_blocking [--seeds 3] [--iterations 120]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from trainer.demo import demo

from .common import print_table, write_json


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=None, help="default: the demo's")
    p.add_argument("--out", type=Path, default=Path("runs/bench-seeds"))
    a = p.parse_args(argv)
    rows = []
    for seed in range(a.seeds):
        over = {"seed": seed, **({"iterations": a.iterations} if a.iterations else {})}
        s = demo(a.out / f"seed{seed}", overrides=over)
        rows.append({"seed": seed, "before_2step": s["before"]["2step"], "after_2step": s["after"]["2step"],
                     "before_1step": s["before"]["1step"], "after_1step": s["after"]["1step"],
                     "tracking_2step": s["tracking"]["2step"], "tracking_1step": s["tracking"]["1step"],
                     "blocked_fraction": s["blocked_fraction"], "queries": s["queries"], "wall_s": s["wall_s"]})
    print_table(f"LaSRO on the toy world, {a.seeds} seeds", rows,
                ["seed", "before_2step", "after_2step", "before_1step", "after_1step", "tracking_2step", "tracking_1step", "blocked_fraction", "queries", "wall_s"])
    gain2 = np.array([r["after_2step"] - r["before_2step"] for r in rows])
    gain1 = np.array([r["after_1step"] - r["before_1step"] for r in rows])
    blocked = np.array([r["blocked_fraction"] for r in rows])
    print(f"\n2-step gain {gain2.mean():+.3f} ± {gain2.std():.3f}; 1-step gain {gain1.mean():+.3f} ± {gain1.std():.3f}; "
          f"blocked fraction {blocked.mean():.1%} (target <= 10%)")
    result = {"rows": rows, "gain_2step_mean": float(gain2.mean()), "gain_2step_std": float(gain2.std()),
              "gain_1step_mean": float(gain1.mean()), "gain_1step_std": float(gain1.std()),
              "blocked_fraction_mean": float(blocked.mean()), "target_blocked": 0.10}
    write_json("trainer_seeds", result)
    return result


if __name__ == "__main__":
    main()
