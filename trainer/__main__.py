"""`python -m trainer {train,pretrain,baseline,evaluate,sample,export,demo,report}`; `--help` on each
lists every flag. Each takes `--config FILE` (TOML or YAML, trainer/config_file.py): flags win over
TRAINER_* variables, which win over the file, which wins over the defaults."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lasro_common.cli import add_settings_arguments, settings_from_args

from .config import TrainConfig

MODEL_HELP = ("a diffusers pipeline (folder or hub id: a base or an exported model), an exported LoRA folder "
              "(on --base-model, else the base its lasro.json names) or a run folder (its --checkpoint)")


def _add_model_arguments(p: argparse.ArgumentParser, *, with_base: bool) -> None:
    p.add_argument("--model", default=None, help=f"{MODEL_HELP}; default: --base-model")
    p.add_argument("--checkpoint", default="best", help="of a run folder: best | last | N (iteration) | a folder")
    if with_base:
        p.add_argument("--base-model", default=None, help="the base pipeline of a LoRA folder")
        p.add_argument("--guidance-scale", type=float, default=None, help="default: the model family's")
        p.add_argument("--device", default="cpu")


CONFIG_HELP = ("a TOML or YAML file of this command's settings, keys named like the flags (n_noises = 8); "
               "flags and TRAINER_* variables win over it (docs/configuration.md)")
DEMO_SETS = ("reward_url", "surrogate_url", "redis_url", "resume")  # the demo starts its own services


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(prog="python -m trainer", description="LaSRO fine-tuning of few-step diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        commands[name] = sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)
        return sp

    for name, help_ in (("train", "the LaSRO loop; writes OUT/model from the best checkpoint"),
                        ("pretrain", "fill the surrogate before fine-tuning")):
        add_settings_arguments(command(name, help_), TrainConfig)
    bp = command("baseline", "what users would pick instead: rlcm (policy gradient) or dpo (preferences)")
    add_settings_arguments(bp, TrainConfig)
    bp.add_argument("--method", required=True, choices=["rlcm", "dpo"], help="trainer/rlcm.py or trainer/dpo.py")
    ep = command("evaluate", "held-out true (and surrogate) reward of 1- and 2-step samples of --model")
    add_settings_arguments(ep, TrainConfig)
    _add_model_arguments(ep, with_base=False)
    ep.add_argument("--no-surrogate", action="store_true", help="true reward only (no surrogate service needed)")
    sp = command("sample", "OUT/000.png, 001.png, ...: one image per prompt, as the stock pipeline makes it")
    _add_model_arguments(sp, with_base=True)
    sp.add_argument("--prompt", action="append", required=True, help="repeat for several (one image each, in order)")
    sp.add_argument("--steps", type=int, default=2)
    sp.add_argument("--seed", type=int, default=0, help="the pipeline's generator=torch.Generator().manual_seed(seed)")
    sp.add_argument("--out", type=Path, default=Path("samples"))
    sp.add_argument("--grid", type=Path, default=None, help="also write a labelled grid PNG here")
    xp = command("export", "a run's checkpoint as a diffusers pipeline or LoRA folder, with a model card")
    xp.add_argument("--run", type=Path, required=True, help="the run folder (the --out of `train`)")
    xp.add_argument("--checkpoint", default="best", help="best | last | N (iteration) | a checkpoint folder")
    xp.add_argument("--out", type=Path, required=True, help="the folder to write (replaced)")
    xp.add_argument("--fuse", action="store_true", help="LoRA runs: fuse the LoRA and save a full pipeline")
    dp = command("demo", "start Redis and both services, pretrain, fine-tune the toy LCM, report "
                         "(settings: configs/demo.toml; --out default runs/demo)")
    add_settings_arguments(dp, TrainConfig)
    rp = command("report", "one report.html over one or more run folders (seeds of one setting: mean and spread)")
    rp.add_argument("runs", type=Path, nargs="*", help="run folders (the --out of `train`; a demo's train/)")
    rp.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file to write")
    return p, commands


def _shown(path: Path) -> Path:
    """configs/demo.toml rather than the package's link to it, relative where it can be."""
    path = path.resolve()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def _configured_args(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """Parse argv with `--config FILE` (and, for demo, configs/demo.toml) under the flags.
    Returns the namespace and the service tables of the config ([reward_service], [surrogate_service])."""
    from .config_file import SECTIONS, apply_config, check_sections, fill, merge, read_config

    parser, commands = _parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    name = next((a for a in argv if not a.startswith("-")), None)
    path = pre.parse_known_args(argv)[0].config if name in commands else None
    layers = []
    if name == "demo":
        from .demo import DEMO_CONFIG

        layers.append((_shown(DEMO_CONFIG), read_config(DEMO_CONFIG)))
    if path is not None:
        layers.append((path, read_config(path)))
    values: dict = {}
    for where, config in layers:
        check_sections(where, config)
        values.update(apply_config(commands[name], where, config, set(TrainConfig.model_fields)))
    args = fill(parser.parse_args(argv), values)
    return args, merge(*(config for _, config in layers)) if layers else {s: {} for s in SECTIONS}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, services = _configured_args(argv)
    except ValueError as e:  # a config file that cannot work: say which key
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress bars
    from lasro_common.memory import tune_malloc

    tune_malloc()  # the trainer moves latents and gradients over HTTP every iteration
    try:
        return _run(args, services)
    except (ValueError, OSError) as e:  # bad input: a missing file, a wrong base, no checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, services: dict) -> int:
    if args.command == "demo":
        from .demo import demo

        over = {k: getattr(args, k) for k in TrainConfig.model_fields if getattr(args, k, None) is not None}
        if given := [k for k in DEMO_SETS if k in over]:
            raise ValueError(f"the demo starts its own services and run folder; drop {', '.join(given)}")
        out = Path(over.pop("out", "runs/demo"))
        s = demo(out, over.pop("reward", None), over, services=services)
        print(_table(s))
        print(f"\nreport: {out / 'report.html'}\nsummary: {out / 'summary.json'}\nmodel: {s['model']}")
        return 0
    if args.command == "report":
        from .report import write_multi_report

        if not args.runs:
            raise ValueError("give at least one run folder")
        print(write_multi_report(args.runs, args.out))
        return 0
    if args.command == "export":
        from .export import export_run

        print(export_run(args.run, args.out, args.checkpoint, fuse=args.fuse))
        return 0
    if args.command == "sample":
        from .export import resolve_model, sample_images, save_pngs
        from .report import save_grid

        model = resolve_model(args.model or TrainConfig.model_fields["base_model"].default_factory(),
                              base_model=args.base_model, checkpoint=args.checkpoint).load(args.device, args.guidance_scale)
        images = sample_images(model, args.prompt, args.steps, args.seed)
        for path in save_pngs(images, args.out):
            print(path)
        if args.grid:
            print(save_grid(images, args.grid, args.prompt))
        return 0
    cfg = settings_from_args(TrainConfig, args)  # bad config: a ValueError before any work
    if args.command == "train":
        from .loop import train

        print(json.dumps(train(cfg), indent=2))
    elif args.command == "baseline":
        from .baselines import train_baseline

        print(json.dumps(train_baseline(cfg, args.method), indent=2))
    elif args.command == "pretrain":
        from .pretrain import pretrain

        print(json.dumps(pretrain(cfg), indent=2))
    elif args.command == "evaluate":
        from reward_service.client import RewardClient
        from surrogate_service.client import SurrogateClient

        from .evaluate import evaluate
        from .export import ModelRef, resolve_model
        from .prompts import eval_prompts

        if args.model:
            ref = resolve_model(args.model, base_model=args.base_model, checkpoint=args.checkpoint)
        else:
            ref = ModelRef(cfg.base_model, lcm_lora=cfg.lcm_lora)
        model = ref.load(cfg.device, args.guidance_scale if args.model else cfg.guidance_scale)
        sur = None if args.no_surrogate else SurrogateClient(cfg.surrogate_url, token=cfg.surrogate_token)
        ev = evaluate(model, eval_prompts(cfg.eval_prompts), cfg.eval_seeds,
                      RewardClient(cfg.reward_url, token=cfg.reward_token), cfg.reward, sur)
        print(json.dumps(ev.summary(), indent=2))
    return 0


def _table(s: dict) -> str:
    rows = [f"{'':10s}{'before':>16s}{'after':>16s}"]
    for k in ("1step", "2step"):
        rows.append(f"{k:10s}{s['before'][k]:>9.3f} ± {s['before_std'][k]:.3f}{s['after'][k]:>9.3f} ± {s['after_std'][k]:.3f}")
    rows.append(f"true-reward queries: {s['queries']}   wall: {s['wall_s']:.0f} s   reward: {s['reward']}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
