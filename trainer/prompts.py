"""Where prompts come from: a text file (one per line) or the toy world's caption generator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np


def read_lines(path: Path) -> list[str]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path} holds no prompts")
    return lines


def train_prompts(path: Path | None, seed: int) -> Iterator[str]:
    if path is None:
        from toyworld.captions import train_caption_stream

        yield from train_caption_stream(seed)
        return
    lines = read_lines(path)
    rng = np.random.default_rng(seed)
    while True:
        yield from (lines[i] for i in rng.permutation(len(lines)))


def eval_prompts(path: Path | None) -> list[str]:
    if path is None:
        from toyworld.captions import heldout_captions

        return list(heldout_captions())
    return read_lines(path)
