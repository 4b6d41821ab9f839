"""A toy CLIP score: a small conv image tower trained contrastively against the toy world's own
frozen CLIP text encoder, so the toy world has a differentiable reward (ReFL/DRaFT baselines,
surrogate-vs-true gradient comparisons).

    images (B, 3, 32, 32) in [0, 1] -> ImageTower -> (B, 64) --normalise--\
                                                                            cosine -> (B,) in [-1, 1]
    prompts -> tokenizer -> frozen CLIPTextModel -> pooled (B, 64) -> text_projection --/

The text tower is the toy pipelines' text encoder itself (pooled EOS state), frozen; on top of it
sits a learnable linear `text_projection`, as in CLIP. A saved model is a folder:
`config.json` + `model.safetensors` (image tower, text projection, logit scale) and copies of the
text encoder and tokenizer it was trained against in `text_encoder/` and `tokenizer/`, all
loaded with `from_pretrained` / safetensors (no pickle). Training is toyworld/clip_train.py.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from toyworld import models, paths

CLIP_DIR = paths.MODELS_DIR / "toy-clip"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass(frozen=True)
class ToyClipConfig:
    stem: int = 16  # width of the one full-resolution (32 px) conv
    channels: tuple[int, ...] = (32, 64, 128)  # conv widths at 16, 8 and 4 px
    hidden: int = 256  # width of the MLP head after pooling
    embed_dim: int = 64  # joint embedding width (= the text encoder's pooled width)
    text_dim: int = 64  # the frozen text encoder's hidden size
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature


class ImageTower(nn.Module):
    """(B, 3, 32, 32) in [0, 1] -> (B, embed_dim), not normalised.

    One 3×3 conv at full resolution, then per level a stride-2 and a plain 3×3 conv (GroupNorm,
    SiLU; no BatchNorm, so an image's score never depends on its batch; receptive field 45 px),
    then mean pooling over positions: a position's features
    can encode a bound (colour, shape) conjunction and the mean of them a set of objects, while the
    layout (random in the toy world) is averaged away. Mean pooling also spreads d score / d
    pixels over the whole object instead of one arg-max pixel."""

    def __init__(self, cfg: ToyClipConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.stem, 3, padding=1), nn.SiLU()]
        prev = cfg.stem
        for c in cfg.channels:
            layers += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            prev = c
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(prev, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.convs(images * 2.0 - 1.0)  # (B, C, 4, 4)
        return self.head(h.mean(dim=(2, 3)))  # (B, embed_dim)


class ToyClip(nn.Module):
    """Image tower + frozen toy text encoder + learnable text projection and logit scale."""

    def __init__(self, cfg: ToyClipConfig, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer):
        super().__init__()
        if text_encoder.config.hidden_size != cfg.text_dim:
            raise ValueError(f"text encoder width {text_encoder.config.hidden_size} != config text_dim "
                             f"{cfg.text_dim}; build the ToyClipConfig with text_dim={text_encoder.config.hidden_size}")
        self.config = cfg
        self.image_tower = ImageTower(cfg)
        self.text_projection = nn.Linear(cfg.text_dim, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))
        self.text_encoder = text_encoder.eval().requires_grad_(False)  # frozen: never trained here
        self.tokenizer = tokenizer
        # /score and /grad call from two threads; a shared fast tokenizer can fail with
        # "Already borrowed", so tokenising is serialised (it is cheap).
        self._lock = threading.Lock()
        self._pooled: dict[str, torch.Tensor] = {}  # prompt -> frozen pooled state (64,)

    def train(self, mode: bool = True) -> ToyClip:
        super().train(mode)
        self.text_encoder.eval()  # frozen, always in inference mode
        return self

    # --- text -----------------------------------------------------------------------------------
    @torch.no_grad()
    def pooled_text(self, prompts: list[str]) -> torch.Tensor:
        """Frozen text encoder's pooled (EOS) state, (B, text_dim); cached per prompt (bounded)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._pooled))
        if missing:
            with self._lock:
                ids = models.tokenize(self.tokenizer, missing)
            dev = self.text_projection.weight.device
            out = self.text_encoder(ids.to(dev)).pooler_output.float()  # (M, 64)
            if len(self._pooled) + len(missing) > 100_000:  # a server sees unbounded prompt sets
                self._pooled.clear()
            self._pooled.update(zip(missing, out, strict=True))
        return torch.stack([self._pooled[p] for p in prompts])

    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, embed_dim), unit norm; differentiable w.r.t. the text projection only."""
        return F.normalize(self.text_projection(self.pooled_text(prompts)), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, 32, 32) float in [0, 1] -> (B, embed_dim), unit norm."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[-2:] != (32, 32):  # the tower was trained on 32×32; resize differentiably
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(self.image_tower(images.float()), dim=-1)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity of image and caption embeddings, (B,) in [-1, 1]; differentiable
        w.r.t. `images` (the caller decides whether autograd records it)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
        return (self.embed_images(images) * self.embed_text(prompts)).sum(-1)

    # --- disk -----------------------------------------------------------------------------------
    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """What this class trains (image tower, text projection, logit scale); the frozen text
        encoder is saved with its own save_pretrained."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("text_encoder.")}

    def save_pretrained(self, folder: str | Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.own_state_dict(), str(folder / WEIGHTS), metadata={"format": "pt"})
        cfg = {"model_type": "toy_clip", **asdict(self.config), **(extra or {})}
        (folder / CONFIG).write_text(json.dumps(cfg, indent=1) + "\n")
        self.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(folder / "tokenizer")

    @classmethod
    def from_pretrained(cls, folder: str | Path = CLIP_DIR, device: str = "cpu") -> ToyClip:
        """Load a saved toy CLIP (safetensors + json; no pickle). Frozen and in eval mode."""
        folder = Path(folder)
        if not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"no {WEIGHTS} in {folder}; build it with `python -m toyworld build --stages clip`")
        raw = json.loads((folder / CONFIG).read_text())
        fields = ToyClipConfig.__dataclass_fields__
        cfg = ToyClipConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields})
        te = CLIPTextModel.from_pretrained(folder / "text_encoder")
        model = cls(cfg, te, CLIPTokenizer.from_pretrained(folder / "tokenizer"))
        missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=False)
        missing = [k for k in missing if not k.startswith("text_encoder.")]
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS} does not match its config: missing {missing}, unexpected {unexpected}")
        return model.to(device).eval().requires_grad_(False)


def new_model(text_encoder_dir: str | Path = paths.LCM_DIR, cfg: ToyClipConfig | None = None) -> ToyClip:
    """A fresh toy CLIP on the text encoder + tokenizer of a toy pipeline folder."""
    te = CLIPTextModel.from_pretrained(Path(text_encoder_dir) / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(Path(text_encoder_dir) / "tokenizer")
    return ToyClip(cfg or ToyClipConfig(text_dim=te.config.hidden_size), te, tok)
