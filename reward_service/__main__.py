"""`python -m reward_service --host H --port P [--reward NAME ...] [--remote NAME=URL ...]`.

Every setting is a flag (`--help` lists them) and a REWARD_* environment variable; flags win.
The bearer token comes from REWARD_API_TOKEN only.
"""

from __future__ import annotations

from lasro_common.cli import serve

from .app import create_app
from .settings import FLAG_NAMES, RewardSettings


def main(argv: list[str] | None = None) -> None:
    serve("python -m reward_service", __doc__, RewardSettings, create_app, argv, FLAG_NAMES)


if __name__ == "__main__":
    main()
