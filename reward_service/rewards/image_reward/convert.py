"""The official files as THUDM distributes them -> our module: where they come from (a local
path or the hub), reading tensors without unpickling code, and renaming the keys.

`ImageReward.pt` is `ImageReward.state_dict()` of the package's module: `blip.visual_encoder.*`
(timm-style ViT names), `blip.text_encoder.*` (BERT names, the same as transformers' BLIP text
model), `blip.vision_proj.*` / `blip.text_proj.*` (unused for scoring) and `mlp.layers.*`.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

HUB_REPO = "THUDM/ImageReward"
CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
TOKENIZER = "bert-base-uncased"

# (original ViT key pattern, transformers BlipVisionModel key) under blip.visual_encoder.
_VISION = [
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
]
# In the official file but not needed to score: ITC projections and a constant buffer.
_UNUSED = re.compile(r"blip\.(vision_proj|text_proj)\.(weight|bias)|blip\.text_encoder\.embeddings\.position_ids")


def resolve(spec: str, filename: str) -> str:
    """A local file, a local folder holding `filename`, or a hub id: `owner/name` (its `filename`)
    or `owner/name/path/in/repo`, downloaded through huggingface_hub's cache."""
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        if not (path / filename).is_file():
            raise FileNotFoundError(f"{spec!r} is a folder without {filename}")
        return str(path / filename)
    parts = spec.split("/")
    if len(parts) < 2 or spec.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{spec!r}: no such file or folder (or give a hub id such as {HUB_REPO!r})")
    from huggingface_hub import hf_hub_download

    repo, file = "/".join(parts[:2]), "/".join(parts[2:]) or filename
    try:
        return hf_hub_download(repo, file)
    except Exception as e:  # offline, unknown repo, missing file: say what was looked for
        raise FileNotFoundError(f"{spec!r} is not a local path and {file} could not be fetched from the "
                                f"hub repo {repo!r}: {type(e).__name__}: {e}") from None


def load_tensors(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch .pt/.pth, tensors only: `weights_only=True`
    refuses any pickle that would import or run code."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # a pre-zip (legacy) torch file cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not a plain state dict of tensors; refusing to unpickle it "
                         f"({str(e).splitlines()[0]})") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        state = state.get("state_dict", state.get("model", state))  # a {"model": state_dict} wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return state


def load_med_config(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ImageReward keys -> ImageRewardModel keys (`vision.*`, `text.*`, `mlp.*`).

    Keys it does not know are left out and logged; the reward's setup then names any weight the
    model needs that the file lacks (the package loads with strict=False and would silently keep
    random weights there)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        new = _rename(key)
        if new is not None:
            out[new] = value
        elif not _UNUSED.fullmatch(key):
            unknown.append(key)
    if unknown:
        log.warning("ImageReward checkpoint: %d keys not used by the model: %s", len(unknown),
                    ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
    return out


def _rename(key: str) -> str | None:
    if key.startswith("blip.visual_encoder."):
        rest = key[len("blip.visual_encoder."):]
        for pattern, repl in _VISION:
            if re.fullmatch(pattern, rest):
                return "vision." + re.sub(pattern, repl, rest)
        return None
    if key.startswith("blip.text_encoder.") and not _UNUSED.fullmatch(key):
        return "text." + key[len("blip.text_encoder."):]  # med's BERT names are transformers' BLIP text names
    if re.fullmatch(r"mlp\.layers\.\d+\.(weight|bias)", key):
        return key
    return None
