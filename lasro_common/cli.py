"""Command lines generated from a settings class, and the one entry point both services share.

Every field of a pydantic-settings class becomes a flag (`base_model` -> `--base-model`) with the
field's description as help, so a new setting is a flag, an environment variable and a line of
docs/configuration.md at once. Flags override the environment. Secrets (bearer tokens) get no
flag: a command line is visible to every user of the machine (`ps`), the environment is not.
"""

from __future__ import annotations

import argparse
import json
import logging
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings


def _base_type(annotation: Any) -> Any:
    """`X | None` -> X; anything else unchanged."""
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    args = typing.get_args(annotation) if union else ()
    return next((a for a in args if a is not type(None)), annotation)


def flag_for(name: str, cls: type[BaseSettings], names: dict[str, str] | None = None) -> str | None:
    """The flag of field `name` (`--reward` for `rewards` when `names` says so), None for secrets."""
    if _base_type(cls.model_fields[name].annotation) is SecretStr:
        return None
    return (names or {}).get(name, "--" + name.replace("_", "-"))


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[BaseSettings],
                           names: dict[str, str] | None = None) -> None:
    """One flag per field: booleans as --x/--no-x, lists repeatable, dicts as JSON."""
    for name, field in cls.model_fields.items():
        flag = flag_for(name, cls, names)
        if flag is None:
            continue
        base, help_ = _base_type(field.annotation), field.description or ""
        origin = typing.get_origin(base)
        if base is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif origin is list:
            parser.add_argument(flag, dest=name, action="append", default=None, metavar="VALUE",
                                help=f"{help_} (repeat the flag for several)")
        elif origin is dict or base is dict:
            parser.add_argument(flag, dest=name, type=json.loads, default=None, metavar="JSON", help=help_)
        else:
            parser.add_argument(flag, dest=name, type=str if base in (str, Path) else base, default=None,
                                help=help_, metavar=name.upper())


def settings_from_args(cls: type[BaseSettings], ns: argparse.Namespace, **extra: Any) -> BaseSettings:
    """Settings from the flags that were given (the rest from the environment and defaults)."""
    values = {k: v for k, v in vars(ns).items() if k in cls.model_fields and v is not None}
    return cls(**{**values, **extra})


def serve(prog: str, doc: str, cls: type[BaseSettings], create_app: Callable[[Any], Any],
          argv: list[str] | None = None, names: dict[str, str] | None = None, **uvicorn_kw: Any) -> None:
    """`python -m <service>`: flags -> settings -> app -> uvicorn."""
    import uvicorn

    from .memory import tune_malloc
    from .protocol import server_options

    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(p, cls, names)
    args = p.parse_args(argv)
    try:
        settings = settings_from_args(cls, args)
    except (ValidationError, ValueError) as e:  # pydantic's message names the field and what is wrong
        p.error(str(e))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Process-wide, so here at the entry point and not in a library: the services move multi-MiB
    # bodies, and glibc's default thresholds would map fresh pages for each (lasro_common/memory.py).
    tune_malloc()
    try:
        app = create_app(settings)
    except ValueError as e:  # a configuration that cannot work (e.g. a checkpoint of another model)
        p.error(str(e))
    # httptools + the asyncio loop: the fastest pair for multi-MiB bodies here (bench/transport.py),
    # guarded against slow, idle and too many clients (lasro_common/protocol.py)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                **{**server_options(settings), **uvicorn_kw})
