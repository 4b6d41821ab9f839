"""Atomic, pickle-free learner checkpoints.

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
