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


REWARD_FLAGS = {"host": "--host", "port": "--port", "rewards": "--reward NAME (repeat)",
                "remote": "--remote NAME=URL (repeat)", "device": "--device", "batching": "--no-batching"}
SURROGATE_FLAGS = {"host": "--host", "port": "--port", "base_model": "--base-model", "redis_url": "--redis-url",
                   "checkpoint_dir": "--checkpoint-dir", "device": "--device", "learn": "--no-learn"}


def _cell(text: str) -> str:
    """A Markdown table cell: a bare | would split the row into another column."""
    return text.replace("|", "\\|")


def section(title: str, cls: type[BaseSettings], cli: str, flags: dict[str, str] | None = None) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    lines = [f"\n## {title}\n", f"Environment prefix `{prefix}`; command `{cli}`.\n",
             "| env variable | flag | default | meaning |", "|---|---|---|---|"]
    for name, f in cls.model_fields.items():
        flag = f"--{name.replace('_', '-')}" if flags is None else flags.get(name, "")
        flag = f"`{flag}`" if flag else ""
        lines.append(f"| `{prefix}{name.upper()}` | {flag} | {_default(f)} | {_cell(f.description or '')} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    from reward_service.settings import RewardSettings
    from surrogate_service.settings import SurrogateSettings
    from trainer.config import TrainConfig

    notes = ("\nFlags: the reward service and the surrogate service accept the flags their `--help` lists "
             "(host, port, rewards/remote, base model, Redis URL, ...); every other field is set through its "
             "environment variable. List-valued and dict-valued variables take JSON, e.g. "
             "`REWARD_REWARDS='[\"jpeg_compressibility\"]'`. The trainer accepts every field as a flag.\n")
    return (HEAD + notes + section("Reward service", RewardSettings, "python -m reward_service", REWARD_FLAGS)
            + section("Surrogate service", SurrogateSettings, "python -m surrogate_service", SURROGATE_FLAGS)
            + section("Trainer", TrainConfig, "python -m trainer {train,pretrain,evaluate,sample}"))


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)
