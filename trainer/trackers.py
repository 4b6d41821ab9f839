"""`--report-to tensorboard|wandb|all|none`: the run's metrics and images through accelerate's
trackers (accelerate.tracking), the same classes `Accelerator(log_with=...)` builds.

TensorBoard writes to OUT/tb. wandb logs to the project `lasro`, the run named after OUT, its
files under OUT/wandb unless WANDB_DIR says elsewhere; with WANDB_MODE=offline it needs no
network or account (`wandb sync OUT/wandb/offline-run-*` uploads it later).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

KINDS = {"tensorboard": ("tensorboard",), "wandb": ("wandb",), "all": ("tensorboard", "wandb"), "none": ()}
PROJECT = "lasro"


def masked(config: dict) -> dict:
    """Bearer tokens never leave the machine in a tracker or a report."""
    return {k: ("***" if k.endswith("token") and v else v) for k, v in config.items()}


def _flat(config: dict) -> dict[str, Any]:
    """Hyperparameters as trackers take them: numbers, strings and booleans (None as "")."""
    def scalar(v: Any) -> Any:
        if v is None:
            return ""
        return v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)

    return {k: scalar(v) for k, v in masked(config).items()}


class Trackers:
    """The chosen accelerate trackers behind one log / log_image / finish."""

    def __init__(self, report_to: str, out: Path, config: dict):
        if report_to not in KINDS:
            raise ValueError(f"report_to must be one of {sorted(KINDS)}, got {report_to!r}")
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        self.trackers = []
        for kind in KINDS[report_to]:
            if kind == "tensorboard":
                tracker = TensorBoardTracker("tb", out)  # OUT/tb
            else:
                try:
                    import wandb  # noqa: F401
                except ImportError:
                    raise ValueError("--report-to wandb needs the wandb package: pip install 'lasro[trainer]'") from None
                kw = {"name": out.resolve().name, "config": _flat(config)}
                if not os.environ.get("WANDB_DIR"):
                    out.mkdir(parents=True, exist_ok=True)
                    kw["dir"] = str(out)  # OUT/wandb/
                tracker = WandBTracker(PROJECT, **kw)
            if hasattr(tracker, "start"):  # accelerate >= 1.4 starts trackers lazily
                tracker.start()
            self.trackers.append(tracker)
        for t in self.trackers:
            if t.name == "tensorboard":
                t.store_init_configuration(_flat(config))

    def log(self, values: dict[str, float], step: int) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        for t in self.trackers:
            t.log(values, step=step)

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        """One (H, W, 3) uint8 image."""
        for t in self.trackers:
            if t.name == "tensorboard":
                t.log_images({name: image[None]}, step=step, dataformats="NHWC")
            else:
                t.log_images({name: [image]}, step=step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []
