"""`python -m reward_service --host H --port P [--remote NAME=URL ...] [--reward NAME ...]`.

Flags override REWARD_* environment variables; the bearer token comes from REWARD_API_TOKEN.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .settings import RewardSettings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m reward_service", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="interface to bind (REWARD_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (REWARD_PORT, default 8100)")
    p.add_argument("--reward", action="append", dest="rewards", metavar="NAME",
                   help="load this reward (repeatable; default: all built-ins). NAME or module:Class")
    p.add_argument("--remote", action="append", metavar="NAME=URL", help="register a remote reward endpoint")
    p.add_argument("--device", help="torch device for model rewards (REWARD_DEVICE)")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "no_batching"}
    if args.no_batching:
        overrides["batching"] = False
    try:
        settings = RewardSettings(**overrides)
    except ValueError as e:  # pydantic's message names the field and says what is wrong
        p.error(str(e))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httptools + the asyncio loop: the fastest pair for multi-MiB bodies here (bench/transport.py)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                http="httptools", loop="asyncio")


if __name__ == "__main__":
    main()
