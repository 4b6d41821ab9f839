"""The `image_reward` reward: native ImageReward, batched, differentiable under autograd."""

from __future__ import annotations

import threading

import torch

from ..base import Reward
from . import convert
from .model import MAX_TOKENS, ImageRewardModel, text_config, vision_config
from .preprocess import SIZE, TorchPixels, pil_pixels

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ImageRewardScore(Reward):
    name = "image_reward"
    description = ("ImageReward v1.0 (THUDM): BLIP ViT-L + BERT cross-attention + MLP, human-preference "
                   "reward, roughly N(0, 1) over generated images; /score as the package on PIL "
                   "images; differentiable.")
    differentiable = True
    input_size = (SIZE, SIZE)

    def __init__(self, checkpoint: str = convert.HUB_REPO, med_config: str = convert.HUB_REPO,
                 tokenizer: str = convert.TOKENIZER, batch_size: int = 16, dtype: str = "float32"):
        # checkpoint: ImageReward.pt (a file, a folder holding it, or a hub id; default THUDM's)
        # med_config: med_config.json, the same ways; tokenizer: a BERT tokenizer folder or hub id
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.checkpoint, self.med_config, self.tokenizer_path = checkpoint, med_config, tokenizer
        self.batch_size, self.dtype = batch_size, _DTYPES[dtype]
        self.device = "cpu"
        # /score and /grad batchers run in two threads; a fast tokenizer shared between threads can
        # fail with "Already borrowed", so tokenising is serialised (it is cheap).
        self._tokenize_lock = threading.Lock()

    def setup(self, device: str) -> None:
        from transformers import BertTokenizer

        state = convert.load_tensors(convert.resolve(self.checkpoint, convert.CHECKPOINT_FILE))
        if "blip.visual_encoder.pos_embed" not in state or "mlp.layers.0.weight" not in state:
            raise ValueError(f"{self.checkpoint}: not an ImageReward state dict (no blip.visual_encoder.* "
                             "or mlp.layers.* weights)")
        med = convert.load_med_config(convert.resolve(self.med_config, convert.MED_CONFIG_FILE))
        vision = vision_config(state)
        if vision.image_size != SIZE:
            raise ValueError(f"{self.checkpoint}: its ViT covers {vision.image_size} px; ImageReward runs at {SIZE}")
        model = ImageRewardModel(vision, text_config(med, vision.hidden_size), state["mlp.layers.0.weight"].shape[1])
        try:
            missing, unexpected = model.load_state_dict(convert.convert(state), strict=False)
        except RuntimeError as e:  # mis-shaped weights, each named by torch
            raise ValueError(f"{self.checkpoint} does not fit ImageReward with {self.med_config}: {e}") from None
        missing = [k for k in missing if not k.endswith("position_ids")]  # a buffer, persistent or not
        if missing or unexpected:  # the package loads with strict=False and would keep random weights
            raise ValueError(f"{self.checkpoint} does not fit ImageReward with {self.med_config}: missing "
                             f"{missing[:10]}, unexpected {unexpected[:10]}")
        del state
        model.to(device, self.dtype).mlp.float()  # the package runs its MLP head on float32 features
        self.model = model.eval().requires_grad_(False)  # /grad wants d/d pixels only
        self.tokenizer = BertTokenizer.from_pretrained(self.tokenizer_path)
        # BLIP's init_tokenizer adds [DEC] (bos) and [ENC]; added as the same ids, 30522 and 30523 on
        # bert-base-uncased, so a prompt that spells them tokenises as the package's does.
        self.tokenizer.add_tokens(["[DEC]", "[ENC]"], special_tokens=True)
        self.pixels = TorchPixels(SIZE).to(device)
        self.device = device

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """As ImageReward.score: padding='max_length', truncation, max_length=35."""
        with self._tokenize_lock:
            tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS,
                                 return_tensors="pt")
        return tok.input_ids.to(self.device), tok.attention_mask.to(self.device)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        # Under autograd (POST /grad) the torch preprocessing keeps d score / d pixels; otherwise
        # (POST /score) the package's own PIL preprocessing gives its numbers exactly.
        differentiable = torch.is_grad_enabled() and images.requires_grad
        parts = []
        for i in range(0, images.shape[0], self.batch_size):
            chunk, chunk_prompts = images[i : i + self.batch_size], prompts[i : i + self.batch_size]
            if differentiable:
                pixels = self.pixels(chunk.to(self.device, torch.float32))
            else:
                pixels = pil_pixels(chunk).to(self.device)
            ids, mask = self.tokenize(chunk_prompts)
            parts.append(self.model(pixels.to(self.dtype), ids, mask))
        return torch.cat(parts).float().cpu()
