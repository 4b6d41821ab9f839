"""Checkpoint and resume: model (or LoRA) weights, optimiser, S state, regulariser (noises and
data are drawn from per-iteration generators, so no RNG state is needed),
iteration, query counts. Weights as safetensors; the rest with torch.save read back with
weights_only=True (tensors and plain containers only, no arbitrary pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(folder: Path, *, unet: torch.nn.Module, lora: bool, optimizer: torch.optim.Optimizer,
         extra: dict[str, Any], state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()
               if not lora or "lora" in k}
    _atomic(folder / "unet.safetensors", lambda p: save_file(weights, str(p)))
    _atomic(folder / "training.pt", lambda p: torch.save({"optimizer": optimizer.state_dict(), **extra}, p))
    _atomic(folder / "state.json", lambda p: p.write_text(json.dumps(state, indent=2)))  # written last: marks complete


def exists(folder: Path) -> bool:
    return (folder / "state.json").is_file()


def load(folder: Path, *, unet: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    missing, unexpected = unet.load_state_dict(load_file(str(folder / "unet.safetensors")), strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {folder} does not match the model: unexpected keys {unexpected[:3]}")
    training = torch.load(folder / "training.pt", weights_only=True)
    optimizer.load_state_dict(training.pop("optimizer"))
    return json.loads((folder / "state.json").read_text()), training
