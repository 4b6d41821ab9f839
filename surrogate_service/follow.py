"""Read replicas: serve the weights the learner publishes, without learning.

At every checkpoint the learner also writes its current serving weights and their version to
`<checkpoint_dir>/published.safetensors` (atomic replace). A replica started with
`--no-learn --follow` and the same (shared) checkpoint folder polls that file and swaps new
versions into its slot, so any number of replicas can answer /grad while one learner trains.
Replicas lag the learner by at most checkpoint_every_s + follow_every_s.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from .checkpoint import atomic_write
from .slot import ModelSlot

log = logging.getLogger(__name__)
PUBLISHED = "published.safetensors"


def write_published(folder: Path, model: torch.nn.Module, version: int) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder, PUBLISHED, lambda f: f.write(save(tensors, metadata={"version": str(version)})))


def read_published(folder: Path) -> tuple[dict[str, torch.Tensor], int] | None:
    """Weights and version from ONE open of the file, so they always belong together (a replace
    by the learner between two opens would label new weights with the old version)."""
    path = folder / PUBLISHED
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, int(f.metadata().get("version", "0"))  # noqa: SIM118


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
        if got is not None and got[1] < self.slot.version:
            raise RuntimeError(f"published version {got[1]} is older than the served {self.slot.version} (did the "
                               "learner restart without its checkpoint?); still serving the newer one")
        if got is None or got[1] == self.slot.version:
            return False
        self.slot.publish(*got)
        log.info("following: now serving version %d", got[1])
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if self.poll():
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
