"""`lasro COMMAND [flags]`: the project's programs behind one console script. Each command hands
its flags, unchanged, to the program it names, so `lasro serve-reward --port 8100` is
`python -m reward_service --port 8100` and `lasro train --iterations 50` is
`python -m trainer train --iterations 50`; `lasro COMMAND --help` lists that program's flags."""

from __future__ import annotations

import sys
from collections.abc import Callable

from . import __version__

SERVICES = {
    "serve-reward": ("python -m reward_service", "the reward service: black-box image rewards over HTTP"),
    "serve-surrogate": ("python -m surrogate_service", "the surrogate service: R_psi, its /grad and its learner"),
}
TRAINER = {  # python -m trainer COMMAND; any other command is handed to the trainer too
    "train": "the LaSRO loop; writes OUT/model from the best checkpoint",
    "demo": "start Redis and both services, pretrain, fine-tune the toy LCM, report",
    "export": "a run's checkpoint as a diffusers pipeline or LoRA folder, with a model card",
    "pretrain": "fill the surrogate before fine-tuning",
    "evaluate": "held-out true (and surrogate) reward of 1- and 2-step samples of a model",
    "sample": "images of a model, as the stock diffusers pipeline makes them",
    "baseline": "RLCM (policy gradient) or Diffusion-DPO at the same query budget",
    "report": "one HTML report of one or more run folders (several seeds: mean and spread)",
}


def usage() -> str:
    width = max(map(len, [*SERVICES, *TRAINER])) + 2
    lines = ["usage: lasro COMMAND [flags]   (lasro COMMAND --help lists the flags of each)", "",
             "Reward fine-tuning of few-step diffusion models with a latent-space surrogate reward (LaSRO).", "",
             "commands:"]
    lines += [f"  {name:<{width}}{what} (python -m trainer {name})" for name, what in TRAINER.items()]
    lines += [f"  {name:<{width}}{what} ({cmd})" for name, (cmd, what) in SERVICES.items()]
    lines += ["", "Any other command goes to the trainer as well (lasro X ... = python -m trainer X ...).",
              "Every flag is also an environment variable (REWARD_*, SURROGATE_*, TRAINER_*); docs/configuration.md."]
    return "\n".join(lines)


def _program(command: str) -> Callable[[list[str]], int | None]:
    # imported on use: `lasro --help` and one service never load the others' dependencies
    if command == "serve-reward":
        from reward_service.__main__ import main as reward_main

        return reward_main
    if command == "serve-surrogate":
        from surrogate_service.__main__ import main as surrogate_main

        return surrogate_main
    from trainer.__main__ import main as trainer_main

    return lambda argv: trainer_main([command, *argv])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"lasro {__version__}")
        return 0
    if args[0].startswith("-"):
        print(f"{usage()}\n\nlasro: error: a COMMAND comes first, got {args[0]!r}", file=sys.stderr)
        return 2
    code = _program(args[0])(args[1:])
    return code if isinstance(code, int) else 0
