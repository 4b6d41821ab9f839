"""`--config FILE`: the settings of any trainer command in a TOML or YAML file.

Keys are the command's flags with underscores (`n_noises = 8` for `--n-noises 8`). The file sits
under the command line and the environment, over the defaults:

    flag on the command line  >  TRAINER_* environment variable  >  config file  >  defaults

(`demo`'s defaults are configs/demo.toml.) Two tables configure the services that `demo`
starts, in their own names: `[reward_service]` (RewardSettings, REWARD_*) and
`[surrogate_service]` (SurrogateSettings, SURROGATE_*); the other commands check and ignore them,
so one file serves `demo` and `train` alike. A key that is neither a flag of the command nor a
field of those tables stops the command with its name and the closest known one.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

SECTIONS = ("reward_service", "surrogate_service")  # the services `demo` starts
ENV_PREFIX = {"reward_service": "REWARD_", "surrogate_service": "SURROGATE_"}


def read_config(path: str | Path) -> dict[str, Any]:
    """The file's mapping, keys with `-` read as `_` (at the top and in the service tables)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"--config {path}: not valid TOML: {e}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path}: not valid YAML: {e}") from None
        data = {} if data is None else data
    else:
        raise ValueError(f"--config {path}: give a .toml, .yaml or .yml file")
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the file must hold a mapping of settings, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"--config {path}: [{key}] must be a table of {key} settings")
            value = {str(k).replace("-", "_"): v for k, v in value.items()}
        out[key] = value
    return out


def merge(*configs: dict[str, Any]) -> dict[str, Any]:
    """Later files win, key by key (inside the service tables too)."""
    out: dict[str, Any] = {}
    for cfg in configs:
        for key, value in cfg.items():
            out[key] = {**out.get(key, {}), **value} if key in SECTIONS else value
    return out


def env_set(field: str, prefix: str) -> bool:
    """Is `field` given by the environment (pydantic-settings matches names case-insensitively)?"""
    name = (prefix + field).upper()
    return any(k.upper() == name for k in os.environ)


def under_env(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`values` less those the environment sets: the environment wins over a config file."""
    return {k: v for k, v in values.items() if not env_set(k, prefix)}


def _unknown(path: str | Path, where: str, key: str, known: set[str]) -> ValueError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"--config {path}: unknown key {key!r}{where}{hint}")


def check_sections(path: str | Path, config: dict[str, Any]) -> None:
    """Every key of [reward_service] and [surrogate_service] is a field of that service's settings."""
    from reward_service.settings import RewardSettings
    from surrogate_service.settings import SurrogateSettings

    for section, cls in (("reward_service", RewardSettings), ("surrogate_service", SurrogateSettings)):
        for key in config.get(section, {}):
            if key not in cls.model_fields:
                raise _unknown(path, f" in [{section}]", key, set(cls.model_fields))


def apply_config(parser: argparse.ArgumentParser, path: str | Path, config: dict[str, Any],
                 settings_fields: set[str], env_prefix: str = "TRAINER_") -> dict[str, Any]:
    """Check the file's keys against `parser`'s flags and return the values the file gives. Those
    flags stop being required and get no default of their own (argparse.SUPPRESS), so after
    parsing, a flag missing from the namespace was not on the command line: `fill` puts the file's
    value there. Settings fields that the environment sets are left out: the environment wins."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in config.items():
        if key in SECTIONS:
            continue
        if key not in actions:
            raise _unknown(path, f" for `{parser.prog}`", key, set(actions) | set(SECTIONS))
        if key in settings_fields and env_set(key, env_prefix):
            continue
        action = actions[key]
        if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
            value = [_convert(path, key, action, v) for v in (value if isinstance(value, list) else [value])]
        else:
            value = _convert(path, key, action, value)
        action.required, action.default = False, argparse.SUPPRESS
        if not hasattr(action, "base_help"):
            action.base_help = action.help or ""
        action.help = f"{action.base_help} [{path}: {value!r}]".replace("%", "%%")  # --help shows where from
        values[key] = value
    return values


def _convert(path: str | Path, key: str, action: argparse.Action, value: Any) -> Any:
    """A file value as the flag's type would give it (numbers and booleans already are typed)."""
    if action.type is json.loads:  # dict-valued flags: a table in the file, JSON on the command line
        return json.loads(value) if isinstance(value, str) else value
    if action.type in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
        raise ValueError(f"--config {path}: {key} must be a number, got {value!r}")
    if isinstance(value, str) and action.type is not None:
        try:
            return action.type(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--config {path}: {key}: {e}") from None
    if action.type is int and isinstance(value, float):
        raise ValueError(f"--config {path}: {key} must be a whole number, got {value!r}")
    return value


def fill(ns: argparse.Namespace, values: dict[str, Any]) -> argparse.Namespace:
    """The file's values for the flags the command line did not give."""
    for key, value in values.items():
        if not hasattr(ns, key):
            setattr(ns, key, value)
    return ns


def service_env(section: str, values: dict[str, Any]) -> dict[str, str]:
    """A service table as the environment variables of that service (lists and dicts as JSON)."""
    prefix = ENV_PREFIX[section]

    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    return {f"{prefix}{k.upper()}": text(v) for k, v in values.items()}
