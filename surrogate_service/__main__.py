"""`python -m surrogate_service --host H --port P [--base-model ID_OR_PATH] [--redis-url URL]`.

Flags override SURROGATE_* environment variables; the bearer token comes from SURROGATE_API_TOKEN.
Without --redis-url (or SURROGATE_REDIS_URL) a private redis-server is started.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .settings import SurrogateSettings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m surrogate_service", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="interface to bind (SURROGATE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (SURROGATE_PORT, default 8200)")
    p.add_argument("--base-model", help="hub id or local diffusers folder (default: the toy world's LCM)")
    p.add_argument("--redis-url", help="Redis URL of the sample-group stream (default: a private redis-server)")
    p.add_argument("--checkpoint-dir", help="where the learner checkpoints (SURROGATE_CHECKPOINT_DIR)")
    p.add_argument("--device", help="torch device (SURROGATE_DEVICE)")
    p.add_argument("--no-learn", dest="learn", action="store_false", default=None, help="serve only; no learner")
    p.add_argument("--follow", action="store_true", default=None,
                   help="with --no-learn: serve the versions the learner publishes in --checkpoint-dir (read replica)")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = SurrogateSettings(**overrides)
    except ValueError as e:
        p.error(str(e))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                http="httptools", loop="asyncio", timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
