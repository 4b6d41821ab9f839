"""The serving copy of R_psi and its version; swapped atomically when the learner publishes.

Serving never waits for training: the learner trains its own copy and hands over a state dict;
`publish` loads it into a fresh model off to the side and then swaps one reference. A request
takes (model, version) once and uses that pair throughout, so every answer names the exact
weights that produced it.
"""

from __future__ import annotations

import copy
import threading

import torch

from .model import SurrogateReward


class ModelSlot:
    def __init__(self, model: SurrogateReward, version: int = 0):
        model.eval().requires_grad_(False)
        self._current = (model, version)
        self._lock = threading.Lock()  # one publisher at a time; readers never lock

    def get(self) -> tuple[SurrogateReward, int]:
        return self._current

    @property
    def version(self) -> int:
        return self._current[1]

    def publish(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        with self._lock:
            fresh = copy.deepcopy(self._current[0])
            fresh.load_state_dict(state_dict)
            fresh.eval().requires_grad_(False)
            self._current = (fresh, version)  # one reference swap: atomic for readers
