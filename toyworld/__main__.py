"""python -m toyworld {build,evaluate,sample,clip-eval}"""

from __future__ import annotations

import argparse
import os

# Threads sleep instead of spinning while waiting: on shared CPUs, spinning OpenMP threads
# starved each other and the build ran 2-3x slower (must be set before torch loads OpenMP).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m toyworld", description=__doc__)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train VAE, teacher and LCM from scratch (resumable)")
    b.add_argument("--quick", action="store_true", help="a few steps per stage into .build/quick (smoke test)")
    b.add_argument("--stages", default="vae,teacher,distill,export,clip",
                   help="comma-separated subset (clip: the toy CLIP reward, on the exported text encoder)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a BuildConfig field, e.g. --set distill_steps=2000")
    e = sub.add_parser("evaluate", help="checker scores of data, noise, teacher and LCM")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--seeds", type=int, default=4, help="samples per held-out caption")
    e.add_argument("--grids", default=None, help="write image grids to this folder (e.g. docs/img)")
    c = sub.add_parser("clip-eval", help="quality and hackability of the toy CLIP reward (JSON)")
    c.add_argument("--model", default=None, help="toy CLIP folder (default toyworld/models/toy-clip)")
    c.add_argument("--seeds", type=int, default=4, help="samples per held-out caption")
    c.add_argument("--out", default=None, help="also write the JSON to this file")
    s = sub.add_parser("sample", help="one image from the LCM (or the teacher)")
    s.add_argument("--prompt", required=True)
    s.add_argument("--steps", type=int, default=2)
    s.add_argument("--teacher", action="store_true", help="use the DDIM teacher instead of the LCM")
    s.add_argument("--guidance", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="sample.png")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.cmd == "build":
        from toyworld.build import build

        overrides = dict(kv.split("=", 1) for kv in a.set)
        build(quick=a.quick, stages=tuple(a.stages.split(",")), overrides=overrides)
    elif a.cmd == "evaluate":
        from toyworld.evaluate import evaluate, format_table

        res = evaluate(seeds=a.seeds, grids=a.grids)
        if a.json:
            import json

            print(json.dumps(res, indent=1))
        else:
            print(format_table(res))
    elif a.cmd == "clip-eval":
        import json

        from toyworld.clip_eval import evaluate as clip_evaluate

        text = json.dumps(clip_evaluate(a.model, seeds=a.seeds), indent=1)
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n")
    else:
        from toyworld.evaluate import sample

        score = sample(a.prompt, a.steps, a.out, teacher=a.teacher, guidance=a.guidance, seed=a.seed)
        print(f"wrote {a.out} (checker {score:.2f})")


if __name__ == "__main__":
    main()
