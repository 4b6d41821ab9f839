"""Atomic, pickle-free learner checkpoints, and the guard that keeps one base model's
checkpoint out of another's surrogate.

One file, ``<checkpoint_dir>/learner.pt``, written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts, so loading a
checkpoint can never execute code. Atomicity: write a temp file in the same folder, fsync it,
``os.replace`` it over the old one, fsync the folder. A crash at any point leaves either the
old or the new checkpoint, never a torn one -- the learner's exactly-once protocol relies on
this (entries are acknowledged in Redis only after this function returns).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

CHECKPOINT_NAME = "learner.pt"
FORMAT_VERSION = 1


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def atomic_write(folder: str | os.PathLike, name: str, write: Callable[[BinaryIO], None]) -> Path:
    """Durably replace ``folder/name`` with what ``write(file)`` writes: a temp file in the same
    folder, fsynced, ``os.replace``d over the old one, then the folder fsynced. A crash at any
    point leaves the old or the new file, never a torn one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself must survive a power cut: fsync the directory entry too.
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return final


def save_checkpoint(checkpoint_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Durably write ``state`` (tensors/containers of primitives only); return the path."""
    return atomic_write(checkpoint_dir, CHECKPOINT_NAME, lambda f: torch.save({"format": FORMAT_VERSION, **state}, f))


def load_checkpoint(checkpoint_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The saved state, or None if there is no checkpoint. Never unpickles arbitrary objects."""
    path = checkpoint_path(checkpoint_dir)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT_VERSION}")
    return state


# ---------------------------------------------------------------- which model a checkpoint belongs to
MODEL_FILE = "learner.json"  # sidecar: {"format", "base_model", "model_signature"}, readable without torch


def model_id(base_model: str) -> str:
    """A base model's identity: a local folder by its absolute path, a hub id as given."""
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.exists() else base_model


def model_signature(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of every parameter's name and shape: equal for the same architecture."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(f"{k}:{tuple(state_dict[k].shape)};".encode())
    return h.hexdigest()[:16]


def write_model_file(checkpoint_dir: str | os.PathLike, base_model: str, signature: str) -> None:
    import json

    info = {"format": FORMAT_VERSION, "base_model": base_model, "model_id": model_id(base_model),
            "model_signature": signature}
    atomic_write(checkpoint_dir, MODEL_FILE, lambda f: f.write(json.dumps(info, indent=1).encode()))


def _mismatch(checkpoint_dir: str | os.PathLike, old: str, new: str, why: str = "") -> ValueError:
    return ValueError(
        f"the surrogate checkpoint in {checkpoint_dir} was trained on base model {old!r}{why}; this service "
        f"loads {new!r}. A surrogate of one model cannot be restored into another: pass another "
        f"--checkpoint-dir (SURROGATE_CHECKPOINT_DIR) for {new!r}, or move {checkpoint_dir} away to start fresh.")


def check_checkpoint_model(checkpoint_dir: str | os.PathLike, base_model: str) -> None:
    """Refuse (ValueError naming the folder and both models) a folder whose checkpoint belongs to
    another base model. Reads only the small sidecar; folders without one pass (checked again
    against the weights' shapes when the learner restores)."""
    import json

    path = Path(checkpoint_dir) / MODEL_FILE
    if not path.is_file() or not checkpoint_path(checkpoint_dir).is_file():
        return
    try:
        info = json.loads(path.read_text())
        old, old_id = str(info["base_model"]), str(info["model_id"])
    except (ValueError, KeyError, TypeError, OSError):
        return  # unreadable sidecar: the restore's shape check still guards the weights
    if old_id != model_id(base_model):
        raise _mismatch(checkpoint_dir, old, base_model)


def check_state_model(checkpoint_dir: str | os.PathLike, state: dict[str, Any], base_model: str,
                      model_state: dict[str, torch.Tensor]) -> None:
    """Before restoring `state` into a model: the same base model (when the checkpoint names it)
    and the same parameter names and shapes (always; checkpoints from before the names were
    written have only this check)."""
    old = state.get("base_model")
    if old is not None and str(state.get("model_id") or model_id(str(old))) != model_id(base_model):
        raise _mismatch(checkpoint_dir, str(old), base_model)
    saved = state.get("model", {})
    if set(saved) != set(model_state) or any(tuple(saved[k].shape) != tuple(v.shape) for k, v in model_state.items()):
        diff = next((k for k in model_state if k not in saved or tuple(saved[k].shape) != tuple(model_state[k].shape)),
                    next(iter(set(saved) - set(model_state)), "?"))
        raise _mismatch(checkpoint_dir, str(old or "unknown (a checkpoint from before models were recorded)"),
                        base_model, f", a different model (its weights differ from this one's at {diff!r})")
