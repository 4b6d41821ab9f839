"""Runs INSIDE the reference venv (venv.py): the original `image-reward==1.5` package, unmodified.

    python reference.py WORKDIR [--seed N]

WORKDIR holds `inputs.npz` (uint8 images img0..imgN, (H, W, 3)), `prompts.json` (one prompt per
image) and `tokenizer/vocab.txt`. This script
1. builds the package's `ImageReward` module (BLIP ViT-L/16 + med BERT + MLP) from a med_config.json
   and redraws every parameter from a seeded generator (the package's own init gives near-constant
   scores), then saves the official format: `ImageReward.pt` (its state_dict) + `med_config.json`;
2. loads that file back the way `ImageReward.load` does (torch.load, load_state_dict(strict=False),
   eval) and scores the PIL images with `model.score(prompt, [images])`, grouped by prompt;
3. for each image, d score / d pixels: the uint8 image as a float tensor in [0, 1], torchvision's
   tensor Resize(224, BICUBIC, antialias=True) + CenterCrop(224) + Normalize, then the package's
   differentiable `score_gard` (the path its ReFL trainer uses);
4. writes `reference.npz`: scores (PIL path), pixels (the package's preprocess output), input_ids,
   attention_mask, tensor_scores and grad0..gradN, plus `versions.json`.

The package's top-level `__init__` imports its ReFL trainer (datasets, diffusers, accelerate) and
OpenAI `clip` for the CLIP/aesthetic baselines; none of that scores. So the two package folders are
registered as bare namespaces and only ImageReward.py and models/BLIP/*.py execute, as shipped.
bert-base-uncased cannot be downloaded here: BertTokenizer.from_pretrained("bert-base-uncased") is
pointed at the synthetic vocab in WORKDIR/tokenizer (BLIP's init_tokenizer still runs as written).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np


def import_package(tokenizer_dir: str):
    spec = importlib.util.find_spec("ImageReward")
    root = list(spec.submodule_search_locations)[0]
    for name, sub in (("ImageReward", ""), ("ImageReward.models", "models")):
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(root, sub) if sub else root]
        sys.modules[name] = mod

    from transformers import BertTokenizer

    original = BertTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        return original(cls, tokenizer_dir if name == "bert-base-uncased" else name, *args, **kwargs)

    BertTokenizer.from_pretrained = classmethod(from_pretrained)
    from ImageReward.ImageReward import ImageReward

    return ImageReward


def med_config(vocab_size: int) -> dict:
    # THUDM/ImageReward's med_config.json (BERT-base with cross-attention); vocab = ours + 2 added.
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
            "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
            "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
            "type_vocab_size": 2, "vocab_size": vocab_size, "encoder_width": 768, "add_cross_attention": True}


def redraw(model, seed: int) -> int:
    """Every parameter from N(0, 1) scaled by its role: matrices 1/sqrt(fan_in), 1-d weights
    (LayerNorm) 1 + 0.1 N, biases 0.1 N, ViT class/position embeddings 0.5 N."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if name.endswith(("cls_token", "pos_embed")):
                p.copy_(0.5 * z)
            elif p.ndim >= 2:
                p.copy_(z * p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * z)
            else:
                p.copy_(0.1 * z)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(args.workdir)
    t0 = time.perf_counter()

    import PIL
    import torch
    import torchvision
    import transformers
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    torch.manual_seed(args.seed)
    ImageReward = import_package(str(work / "tokenizer"))  # noqa: N806 - the package's class
    vocab = (work / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (work / "med_config.json").write_text(json.dumps(med_config(len(vocab) + 2), indent=2))

    model = ImageReward(med_config=str(work / "med_config.json"), device="cpu")
    redrawn = redraw(model, args.seed)
    torch.save(model.state_dict(), work / "ImageReward.pt")
    del model

    # ImageReward.load, as in utils.py
    state = torch.load(work / "ImageReward.pt", map_location="cpu")
    model = ImageReward(device="cpu", med_config=str(work / "med_config.json")).to("cpu")
    msg = model.load_state_dict(state, strict=False)
    assert not msg.missing_keys and not msg.unexpected_keys, msg
    model.eval()

    arrays = np.load(work / "inputs.npz")
    images = [arrays[f"img{i}"] for i in range(len(arrays.files))]
    prompts = json.loads((work / "prompts.json").read_text(encoding="utf-8"))
    pil = [Image.fromarray(a) for a in images]

    scores = np.zeros(len(pil), np.float64)
    with torch.no_grad():
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        for prompt, idx in groups.items():
            scores[idx] = np.atleast_1d(model.score(prompt, [pil[i] for i in idx]))
        pixels = torch.stack([model.preprocess(im) for im in pil]).numpy()

    tok = model.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                               return_tensors="pt")
    out = {"scores": scores, "pixels": pixels, "input_ids": tok.input_ids.numpy(),
           "attention_mask": tok.attention_mask.numpy()}
    tensor_scores = []
    for i, a in enumerate(images):
        x = torch.from_numpy(a).permute(2, 0, 1).float().div(255).unsqueeze(0).requires_grad_(True)
        y = TF.resize(x, [224], InterpolationMode.BICUBIC, antialias=True)
        y = TF.normalize(TF.center_crop(y, [224, 224]), [0.48145466, 0.4578275, 0.40821073],
                         [0.26862954, 0.26130258, 0.27577711])
        s = model.score_gard(tok.input_ids[i : i + 1], tok.attention_mask[i : i + 1], y).reshape(())
        (g,) = torch.autograd.grad(s, x)
        tensor_scores.append(s.item())
        out[f"grad{i}"] = g[0].numpy()
    out["tensor_scores"] = np.array(tensor_scores)
    np.savez(work / "reference.npz", **out)
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "torchvision": torchvision.__version__, "transformers": transformers.__version__,
                "pillow": PIL.__version__, "image-reward": _version("image-reward"),
                "timm": _version("timm"), "fairscale": _version("fairscale"),
                "parameters_redrawn": redrawn, "seconds": round(time.perf_counter() - t0, 1)}
    (work / "versions.json").write_text(json.dumps(versions, indent=2))
    print(json.dumps(versions))


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
