"""Render docs/configuration.md from the settings classes (`python -m tools.config_docs`).
tests/unit/test_docs.py fails when the committed page is stale."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
HEAD = """# Configuration

Every program reads one typed settings object. Each field can be set by a CLI flag or an
environment variable (prefix shown per section); values are validated at start and a bad one
stops the program with a message naming the field. This page is generated from the code by
`python -m tools.config_docs`; a test fails when it is out of date.
"""


def _default(field) -> str:
    if field.default_factory is not None:
        return "(computed)"
    d = field.default
    if hasattr(d, "get_secret_value"):
        return "(secret)"
    return f"`{d!r}`" if d is not None else "unset"


def _cell(text: str) -> str:
    """A Markdown table cell: a bare | would split the row into another column."""
    return text.replace("|", "\\|")


def section(title: str, cls: type[BaseSettings], cli: str, names: dict[str, str] | None = None) -> str:
    from lasro_common.cli import flag_for

    prefix = cls.model_config.get("env_prefix", "")
    lines = [f"\n## {title}\n", f"Environment prefix `{prefix}`; command `{cli}`.\n",
             "| env variable | flag | default | meaning |", "|---|---|---|---|"]
    for name, f in cls.model_fields.items():
        flag = flag_for(name, cls, names)
        if flag and f.annotation is bool:
            flag = f"{flag}, --no-{flag[2:]}"
        flag = f"`{flag}`" if flag else "(environment only)"
        lines.append(f"| `{prefix}{name.upper()}` | {flag} | {_default(f)} | {_cell(f.description or '')} |")
    return "\n".join(lines) + "\n"


TRAINER_NOTES = """
### Config files: `--config FILE`

Every trainer command (`train`, `pretrain`, `baseline`, `evaluate`, `sample`, `export`, `demo`,
`report`) takes `--config FILE`, a TOML (`.toml`) or YAML (`.yaml`, `.yml`) file whose keys are the
command's flags with underscores (`n_noises = 8` for `--n-noises 8`; dashes work too). Precedence,
highest first:

1. a flag on the command line,
2. a `TRAINER_*` environment variable,
3. the config file,
4. the defaults above (for `demo`: `configs/demo.toml`, under the file you pass).

A key the command does not know stops it before any work, naming the key and the closest known
one (`unknown key 'lrr' for `python -m trainer train` (did you mean 'lr'?)`); so does a value the
settings refuse. `--help` after `--config FILE` shows the file's value beside each flag. Two tables
configure the services `demo` starts, in their own settings' names (the tables above):
`[reward_service]` and `[surrogate_service]`; their `REWARD_*` / `SURROGATE_*` variables win over
them, and the ports, Redis, base model and checkpoint folder stay the demo's. Other commands check
these tables and ignore them, so one file serves `demo` and `train` alike.
`configs/demo.toml` holds the demo's settings; copy it to start your own:

```bash
python -m trainer demo --config configs/demo.toml --iterations 100   # the demo, 100 iterations
python -m trainer train --config my-run.yaml --reward-url http://rewards:8100 --surrogate-url http://surrogate:8200
```

### Trackers: `--report-to`

`--report-to tensorboard|wandb|all|none` (`TRAINER_REPORT_TO`; default `tensorboard`) picks
accelerate's trackers for the run's metrics (`train/*` per iteration, `eval/*` per evaluation, with
`queries` for a query axis) and evaluation grids: TensorBoard in `OUT/tb`, wandb in project
`lasro` with the run named after `OUT` (files under `OUT/wandb` unless `WANDB_DIR` is set;
`WANDB_MODE=offline` needs no network or account, `wandb sync` uploads later). Bearer tokens are
masked. `metrics.jsonl` and `report.html` are written whatever the choice.
"""


def render() -> str:
    from reward_service.settings import FLAG_NAMES, RewardSettings
    from surrogate_service.settings import SurrogateSettings
    from trainer.config import TrainConfig

    notes = ("\nFlags are generated from the settings classes (`lasro_common/cli.py`): every field is a flag "
             "and an environment variable, and a flag wins over the variable. Booleans have a `--no-` form; "
             "list-valued flags repeat (`--reward a --reward b`); dict-valued flags and every list- or "
             "dict-valued variable take JSON, e.g. `REWARD_REWARDS='[\"jpeg_compressibility\"]'`. Bearer "
             "tokens have no flag: a command line is visible to every user of the machine. The `lasro` console "
             "script runs the same programs with the same flags: `lasro serve-reward`, `lasro serve-surrogate`, "
             "`lasro train` (and every other `python -m trainer` command).\n")
    return (HEAD + notes + section("Reward service", RewardSettings, "python -m reward_service` or `lasro serve-reward", FLAG_NAMES)
            + section("Surrogate service", SurrogateSettings, "python -m surrogate_service` or `lasro serve-surrogate")
            + section("Trainer", TrainConfig, "python -m trainer {train,pretrain,baseline,evaluate,demo}")
            + TRAINER_NOTES)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)
