"""Find rewards by name: built-ins, entry points (`lasro.rewards`), `module:Class`, remotes."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from .base import Reward

ENTRY_POINT_GROUP = "lasro.rewards"
BUILTINS = {
    "jpeg_compressibility": "reward_service.rewards.jpeg:JpegCompressibility",
    "jpeg_incompressibility": "reward_service.rewards.jpeg:JpegIncompressibility",
    "toy_attribute_binding": "reward_service.rewards.toy:ToyAttributeBinding",
    "toy_clip": "reward_service.rewards.toy:ToyClipScore",
    "clip_score": "reward_service.rewards.clip:ClipScore",
    "pickscore": "reward_service.rewards.clip:PickScore",
    "laion_aesthetic": "reward_service.rewards.clip:LaionAesthetic",
    "image_reward": "reward_service.rewards.image_reward:ImageRewardScore",
}


def available() -> dict[str, str]:
    """name -> 'module:Class' of every reward this install can build by name."""
    found = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _load_class(spec: str) -> type[Reward]:
    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import reward class {spec!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Reward)):
        raise ValueError(f"{spec!r} is not a subclass of reward_service.rewards.Reward")
    return cls


def build(name: str, options: dict[str, Any] | None = None) -> Reward:
    """Instantiate reward `name` (a registered name or 'module:Class') with keyword `options`."""
    known = available()
    if name in known:
        spec = known[name]
    elif ":" in name:
        spec = name
    else:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(known)} (or give module:Class)")
    reward = _load_class(spec)(**(options or {}))
    if not reward.name:
        reward.name = name
    return reward
