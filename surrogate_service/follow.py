"""Read replicas: serve the weights the learner publishes, without learning.

At every checkpoint the learner also writes its current serving weights and their version to
`<checkpoint_dir>/published.safetensors` (atomic replace). A replica started with
`--no-learn --follow` and the same (shared) checkpoint folder polls that file and swaps new
versions into its slot, so any number of replicas can answer /grad while one learner trains.
Replicas lag the learner by at most checkpoint_every_s + follow_every_s.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .slot import ModelSlot

log = logging.getLogger(__name__)
PUBLISHED = "published.safetensors"


def write_published(folder: Path, model: torch.nn.Module, version: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (PUBLISHED + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"version": str(version)})
    os.replace(tmp, folder / PUBLISHED)


def read_published(folder: Path) -> tuple[dict[str, torch.Tensor], int] | None:
    path = folder / PUBLISHED
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        version = int(f.metadata().get("version", "0"))
    return load_file(str(path)), version


class Follower:
    def __init__(self, slot: ModelSlot, folder: Path, every_s: float):
        self.slot, self.folder, self.every_s = slot, Path(folder), every_s
        self._stop = threading.Event()
        self._mtime = 0.0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="follower", daemon=True)

    def poll(self) -> bool:
        """Load a newer published version if there is one; True if the slot changed."""
        path = self.folder / PUBLISHED
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime == self._mtime:
            return False
        got = read_published(self.folder)
        self._mtime = mtime
        if got is None or got[1] <= self.slot.version:
            return False
        self.slot.publish(*got)
        log.info("following: now serving version %d", got[1])
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.poll()
                self.last_error = None
            except Exception as e:  # a half-visible file or a mismatch: keep serving, say so in /status
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("following %s failed: %s", self.folder, e)

    def start(self) -> None:
        self.poll()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def status(self) -> dict:
        return {"folder": str(self.folder), "version": self.slot.version, "last_error": self.last_error}
