"""Checkpoints: which are kept, where, and how they are written and read back.

A run folder keeps

    checkpoint/        the last one: where `--resume latest` continues (written every --checkpoint-every)
    checkpoint-best/   the best by held-out true 2-step reward (ties: the later one)
    checkpoint-N/      iteration N, with --keep-all (every --checkpoint-every)

Each holds the model (or LoRA) weights, optimiser, S state, regulariser (noises and data are
drawn from per-iteration generators, so no RNG state is needed), iteration and query counts.
Weights as safetensors; the rest with torch.save read back with weights_only=True (tensors and
plain containers only, no arbitrary pickle). A folder is written beside its final place and
swapped in, so a crash never leaves a half-written checkpoint under a kept name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LAST, BEST = "checkpoint", "checkpoint-best"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace `folder` by the complete `tmp`; `folder.old` bridges the moment in between."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _recover(folder: Path) -> None:
    """A crash between the two renames of _swap_in leaves only folder.old: it is the checkpoint."""
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and (old / "state.json").is_file():
        os.replace(old, folder)


def save(folder: Path, *, unet: torch.nn.Module, lora: bool, optimizer: torch.optim.Optimizer,
         extra: dict[str, Any], state: dict[str, Any]) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()
               if not lora or "lora" in k}
    save_file(weights, str(tmp / "unet.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), **extra}, tmp / "training.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))  # written last: marks complete
    _swap_in(tmp, folder)


def copy(src: Path, dst: Path) -> None:
    """Keep a copy of a complete checkpoint under another name (checkpoint-N, checkpoint-best)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    _swap_in(tmp, dst)


def exists(folder: Path) -> bool:
    _recover(folder)
    return (folder / "state.json").is_file()


def state_of(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


def load_weights(folder: Path, unet: torch.nn.Module) -> dict:
    """The model weights only (sampling, evaluation, export); returns the checkpoint's state."""
    path = folder / "unet.safetensors"
    if not path.is_file():
        raise ValueError(f"{path}: no such file (not a complete checkpoint)")
    _, unexpected = unet.load_state_dict(load_file(str(path)), strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: unexpected keys {unexpected[:3]}. "
                         "Was it written for another base model, or with another --lora-rank?")
    return state_of(folder)


def load(folder: Path, *, unet: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = load_weights(folder, unet)
    training = torch.load(folder / "training.pt", weights_only=True)
    optimizer.load_state_dict(training.pop("optimizer"))
    return state, training


def kept(run: Path) -> dict[str, Path]:
    """The complete checkpoints of a run by name: 'last', 'best', and 'N' for each checkpoint-N."""
    out = {}
    for name, folder in (("last", run / LAST), ("best", run / BEST)):
        if exists(folder):
            out[name] = folder
    for folder in sorted(run.glob("checkpoint-*"), key=lambda p: p.name):
        n = folder.name.removeprefix("checkpoint-")
        if n.isdigit() and exists(folder):
            out[n] = folder
    return out


def find(run: Path, which: str = "best") -> Path:
    """best | last | latest | N (an iteration) | a checkpoint folder -> the checkpoint folder.
    N is looked up among checkpoint-N, then the best and last by their iteration."""
    which = "last" if str(which) == "latest" else str(which)
    if which not in ("best", "last") and not which.isdigit():  # a folder
        if not exists(Path(which)):
            raise ValueError(f"{Path(which) / 'state.json'} not found: not a checkpoint folder")
        return Path(which)
    folders = kept(run)
    if not folders:
        raise ValueError(f"{run}: no checkpoint ({run / LAST / 'state.json'} not found); the run has not saved one")
    if which in folders:
        return folders[which]
    if which.isdigit():
        for folder in folders.values():
            if state_of(folder)["iteration"] == int(which):
                return folder
    have = ", ".join(f"{k} (iteration {state_of(v)['iteration']})" for k, v in folders.items())
    raise ValueError(f"{run}: no checkpoint {which!r}; kept: {have}")
