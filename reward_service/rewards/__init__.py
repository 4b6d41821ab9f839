"""Reward plugins. Built-ins by name, third-party classes by entry point (group `lasro.rewards`)
or by `module:Class`, and remote endpoints by URL."""

from .base import Reward
from .registry import ENTRY_POINT_GROUP, available, build

__all__ = ["ENTRY_POINT_GROUP", "Reward", "available", "build"]
