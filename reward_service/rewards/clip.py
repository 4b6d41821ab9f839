"""CLIP-family rewards: CLIP score, PickScore, LAION aesthetic predictor v2.

All three preprocess in torch (resize, center crop, normalise) instead of calling the PIL-based
CLIPProcessor, so d score / d pixels exists and `POST /grad` can serve it. Every model loads with
`from_pretrained` from a hub id or a local folder; transformers is imported in `setup` only, so
listing rewards stays cheap.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Reward

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# OpenAI CLIP's normalisation; used when the processor config gives none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _get(value: Any, key: str) -> Any:
    """Read `key` from a processor size entry: a dict in older transformers, a SizeDict in newer."""
    if isinstance(value, dict):
        return value.get(key)
    return getattr(value, key, None)


def _side(value: Any, default: int) -> tuple[int, int]:
    """A processor `size` / `crop_size` entry (int, dict or SizeDict) -> (H, W)."""
    if isinstance(value, int):
        return value, value
    if _get(value, "height"):
        return int(_get(value, "height")), int(_get(value, "width"))
    if _get(value, "shortest_edge"):
        return int(_get(value, "shortest_edge")), int(_get(value, "shortest_edge"))
    return default, default


class TorchClipPreprocess(nn.Module):
    """CLIPImageProcessor in differentiable torch: shortest side -> `resize`, center crop, normalise.

    Bicubic with antialias is what PIL's BICUBIC resize does; results match the processor closely
    but not bit for bit (PIL rounds to uint8 in between)."""

    def __init__(self, resize: int, crop: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.resize, self.crop = resize, crop
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_processor(cls, processor: Any, image_size: int) -> TorchClipPreprocess:
        size = getattr(processor, "size", None)
        resize = size if isinstance(size, int) else (_get(size, "shortest_edge") or _side(size, image_size)[0])
        crop = _side(getattr(processor, "crop_size", None), image_size)
        mean = tuple(getattr(processor, "image_mean", None) or CLIP_MEAN)
        std = tuple(getattr(processor, "image_std", None) or CLIP_STD)
        return cls(int(resize), crop, mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        # the processor's arithmetic: shortest side -> resize, the other side int(resize * long / short)
        short, long_ = min(h, w), max(h, w)
        other = int(self.resize * long_ / short)
        new = (self.resize, other) if h <= w else (other, self.resize)
        new = (max(self.crop[0], new[0]), max(self.crop[1], new[1]))
        if new != (h, w):
            images = F.interpolate(images, size=new, mode="bicubic", align_corners=False, antialias=True)
        top, left = (new[0] - self.crop[0]) // 2, (new[1] - self.crop[1]) // 2
        images = images[..., top : top + self.crop[0], left : left + self.crop[1]]
        return (images - self.mean) / self.std


class _ClipBase(Reward):
    """Loads a CLIPModel + tokenizer + image-processor config; scores in chunks of `batch_size`."""

    differentiable = True
    default_model = "openai/clip-vit-large-patch14"

    def __init__(self, model: str | None = None, processor: str | None = None, batch_size: int = 16,
                 dtype: str = "float32", max_length: int | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = model or self.default_model
        self.processor_path = processor or self.model_path
        self.batch_size, self.dtype, self.max_length = batch_size, _DTYPES[dtype], max_length
        self.device = "cpu"
        # /score and /grad batchers run in two threads; a fast tokenizer shared between threads
        # can fail with "Already borrowed", so tokenising is serialised (it is cheap).
        self._tokenize_lock = threading.Lock()

    def setup(self, device: str) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.device = device
        self.model = CLIPModel.from_pretrained(self.model_path, dtype=self.dtype).to(device).eval()
        self.model.requires_grad_(False)  # /grad wants d/d pixels only, never parameter grads
        self.tokenizer = AutoTokenizer.from_pretrained(self.processor_path)
        image_size = self.model.config.vision_config.image_size
        try:
            proc = CLIPImageProcessor.from_pretrained(self.processor_path)
        except OSError:  # a bare model folder: fall back to the model's size and CLIP's statistics
            proc = None
        self.preprocess = TorchClipPreprocess.from_processor(proc, image_size).to(device)
        self.input_size = self.preprocess.crop

    def _text_embeds(self, prompts: list[str]) -> torch.Tensor:
        limit = self.max_length or min(self.tokenizer.model_max_length,
                                       self.model.config.text_config.max_position_embeddings)
        with self._tokenize_lock:
            tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok.input_ids.to(self.device),
                                           attention_mask=tok.attention_mask.to(self.device))
        return F.normalize(_features(out).float(), dim=-1)

    def _image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device, torch.float32)).to(self.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def _score_chunk(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        # Chunks keep peak memory bounded; torch.cat keeps the autograd graph for /grad.
        parts = [self._score_chunk(images[i : i + self.batch_size], prompts[i : i + self.batch_size])
                 for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(parts).float().cpu()


def _features(out: Any) -> torch.Tensor:
    """get_*_features returns a tensor in older transformers and a model output in newer ones."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


class ClipScore(_ClipBase):
    name = "clip_score"
    description = ("CLIP score (torchmetrics): 100 x cosine(image, text) embeddings of a CLIP model "
                   "(default openai/clip-vit-large-patch14); differentiable.")
    value_range = (-100.0, 100.0)

    def __init__(self, model: str | None = None, processor: str | None = None, batch_size: int = 16,
                 dtype: str = "float32", clamp: bool = False, max_length: int | None = None):
        super().__init__(model, processor, batch_size, dtype, max_length)
        # torchmetrics clamps at 0; off by default because a clamped score has zero gradient
        self.clamp = clamp
        if clamp:
            self.value_range = (0.0, 100.0)

    def _score_chunk(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        s = 100.0 * (self._image_embeds(images) * self._text_embeds(prompts)).sum(-1)
        return s.clamp(min=0.0) if self.clamp else s


class PickScore(_ClipBase):
    name = "pickscore"
    description = ("PickScore (yuvalkirstain/PickScore_v1): logit_scale x cosine(image, text) of a "
                   "CLIP-H fine-tuned on Pick-a-Pic preferences; differentiable.")
    default_model = "yuvalkirstain/PickScore_v1"
    default_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def __init__(self, model: str | None = None, processor: str | None = None, batch_size: int = 16,
                 dtype: str = "float32", max_length: int | None = None):
        super().__init__(model, processor or self.default_processor, batch_size, dtype, max_length)

    def _score_chunk(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        cos = (self._image_embeds(images) * self._text_embeds(prompts)).sum(-1)
        return self.model.logit_scale.exp().float() * cos


class AestheticMLP(nn.Module):
    """improved-aesthetic-predictor's MLP (christophschuhmann), same layer indices so its
    state dicts (`layers.0.weight`, ...) load as they are."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A .safetensors or .pth/.pt state dict from a local path or `hf://owner/repo/file`."""
    if path.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        owner, repo, filename = path[len("hf://"):].split("/", 2)
        path = hf_hub_download(f"{owner}/{repo}", filename)
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    return state.get("state_dict", state) if isinstance(state, dict) else state


class LaionAesthetic(_ClipBase):
    name = "laion_aesthetic"
    description = ("LAION aesthetic predictor v2: MLP on the normalised CLIP ViT-L/14 image embedding "
                   "(about 1..10; prompt ignored); differentiable.")
    value_range = (None, None)
    # The same sac+logos+ava1-l14-linearMSE MLP that TRL's DDPO example downloads.
    default_head = "hf://trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"

    def __init__(self, model: str | None = None, head: str | None = None, processor: str | None = None,
                 batch_size: int = 16, dtype: str = "float32"):
        super().__init__(model, processor, batch_size, dtype)
        self.head_path = head or self.default_head

    def setup(self, device: str) -> None:
        super().setup(device)
        state = load_state_dict(self.head_path)
        if "layers.0.weight" not in state:
            raise ValueError(f"{self.head_path}: not an aesthetic MLP state dict (no 'layers.0.weight')")
        self.mlp = AestheticMLP(state["layers.0.weight"].shape[1])
        self.mlp.load_state_dict(state)
        self.mlp.to(device).eval().requires_grad_(False)

    def _score_chunk(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.mlp(self._image_embeds(images)).squeeze(-1)
