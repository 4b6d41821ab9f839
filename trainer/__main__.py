"""`python -m trainer {train,pretrain,evaluate,sample,demo}`; `--help` on each lists every flag."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lasro_common.cli import add_settings_arguments, settings_from_args

from .config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer", description="LaSRO fine-tuning of few-step diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("train", "the LaSRO loop"), ("pretrain", "fill the surrogate before fine-tuning"),
                        ("evaluate", "held-out true and surrogate reward of 1- and 2-step samples")):
        add_settings_arguments(sub.add_parser(name, help=help_), TrainConfig)
    sp = sub.add_parser("sample", help="write an image grid for prompts")
    add_settings_arguments(sp, TrainConfig)
    sp.add_argument("--prompt", action="append", required=True)
    sp.add_argument("--steps", type=int, default=2)
    sp.add_argument("--grid", type=Path, default=Path("samples.png"))
    dp = sub.add_parser("demo", help="start Redis and both services, pretrain, fine-tune the toy LCM, report")
    dp.add_argument("--out", type=Path, default=Path("runs/demo"))
    dp.add_argument("--reward", default="toy_attribute_binding", help="toy_attribute_binding or jpeg_compressibility")
    dp.add_argument("--iterations", type=int, default=None)
    dp.add_argument("--seed", type=int, default=None, help="seed of prompts and noises (bench.trainer_blocking uses 0, 1, 2)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress bars
    from lasro_common.memory import tune_malloc

    tune_malloc()  # the trainer moves latents and gradients over HTTP every iteration
    try:
        if args.command == "demo":
            from .demo import demo

            over = {k: v for k, v in (("iterations", args.iterations), ("seed", args.seed)) if v is not None}
            s = demo(args.out, args.reward, over)
            print(_table(s))
            print(f"\nreport: {args.out / 'report.html'}\nsummary: {args.out / 'summary.json'}")
            return 0
        cfg = settings_from_args(TrainConfig, args)
    except ValueError as e:  # bad config: say so before any work
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "train":
        from .loop import train

        print(json.dumps(train(cfg), indent=2))
    elif args.command == "pretrain":
        from .pretrain import pretrain

        print(json.dumps(pretrain(cfg), indent=2))
    elif args.command == "evaluate":
        from reward_service.client import RewardClient
        from surrogate_service.client import SurrogateClient

        from .evaluate import evaluate
        from .fewstep import FewStepModel
        from .prompts import eval_prompts

        model = FewStepModel(cfg.base_model, device=cfg.device, guidance_scale=cfg.guidance_scale)
        ev = evaluate(model, eval_prompts(cfg.eval_prompts), cfg.eval_seeds,
                      RewardClient(cfg.reward_url, token=cfg.reward_token), cfg.reward,
                      SurrogateClient(cfg.surrogate_url, token=cfg.surrogate_token))
        print(json.dumps(ev.summary(), indent=2))
    elif args.command == "sample":
        import torch

        from .fewstep import FewStepModel
        from .report import save_grid

        model = FewStepModel(cfg.base_model, device=cfg.device, guidance_scale=cfg.guidance_scale)
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            s = model.sample(model.noise(len(args.prompt), gen), model.encode(args.prompt), gen, steps=args.steps)
        print(save_grid(model.decode(s.z2), args.grid, args.prompt))
    return 0


def _table(s: dict) -> str:
    rows = [f"{'':10s}{'before':>16s}{'after':>16s}"]
    for k in ("1step", "2step"):
        rows.append(f"{k:10s}{s['before'][k]:>9.3f} ± {s['before_std'][k]:.3f}{s['after'][k]:>9.3f} ± {s['after_std'][k]:.3f}")
    rows.append(f"true-reward queries: {s['queries']}   wall: {s['wall_s']:.0f} s   reward: {s['reward']}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
