"""`python -m surrogate_service --host H --port P [--base-model ID_OR_PATH] [--redis-url URL]`.

Every setting is a flag (`--help` lists them) and a SURROGATE_* environment variable; flags win.
The bearer token comes from SURROGATE_API_TOKEN only. Without --redis-url a private
redis-server is started.
"""

from __future__ import annotations

from lasro_common.cli import serve

from .app import create_app
from .settings import SurrogateSettings


def main(argv: list[str] | None = None) -> None:
    # a stopping learner writes its final checkpoint: give it time after SIGTERM
    serve("python -m surrogate_service", __doc__, SurrogateSettings, create_app, argv,
          timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
