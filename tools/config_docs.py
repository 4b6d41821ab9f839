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
            + section("Trainer", TrainConfig, "python -m trainer {train,pretrain,evaluate,sample}"))


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)
