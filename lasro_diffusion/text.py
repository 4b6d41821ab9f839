"""Text conditioning for the surrogate reward R_psi(z, c), reproducing the diffusers pipelines.

Two families, told apart by whether the pipeline folder has a ``text_encoder_2``:

- SD1.5 family (LCM-Dreamshaper): ``last_hidden_state`` of ``text_encoder``  -> (B, L, D).
- SDXL family (SDXL, SSD-1B, SDXL-Turbo, LCM-SDXL): ``hidden_states[-2]`` of both encoders
  concatenated on the feature dim -> (B, L, D1 + D2); pooled ``text_embeds`` of
  ``text_encoder_2`` (CLIPTextModelWithProjection) -> (B, P); and ``add_time_ids``
  (original_size, crops_coords_top_left, target_size) -> (B, 6), exactly as
  ``StableDiffusionXLPipeline.encode_prompt`` / ``_get_add_time_ids`` build them (clip_skip=None,
  no negative prompt: the surrogate never uses classifier-free guidance).

Per-prompt embeddings are kept in an LRU cache: the trainer sends the same prompts over and over
(N_s noises per prompt, 1-step and 2-step heads), and the text encoders are frozen, so a prompt's
embedding never changes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

from .loading import default_latent_size, read_pipeline_json, vae_scale_factor_of


@dataclass
class TextCond:
    """Prompt conditioning for a batch. ``text_embeds``/``time_ids`` are None for SD1.5."""

    encoder_hidden_states: torch.Tensor  # (B, L, D)
    text_embeds: torch.Tensor | None = None  # (B, P) pooled, SDXL family only
    time_ids: torch.Tensor | None = None  # (B, 6) SDXL micro-conditioning only

    def __len__(self) -> int:
        return self.encoder_hidden_states.shape[0]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TextCond:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return TextCond(mv(self.encoder_hidden_states), mv(self.text_embeds), mv(self.time_ids))


def _has_component(index: dict | None, base_model: str, name: str) -> bool:
    if index is not None:
        return (index.get(name) or [None])[0] is not None
    return (Path(base_model) / name).is_dir()


class TextEncoderBundle:
    """Frozen tokenizer(s) + text encoder(s) of a diffusers pipeline, with an LRU prompt cache.

    ``base_model`` is a hub id or a local pipeline folder; both go through ``from_pretrained``.
    """

    def __init__(
        self,
        base_model: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_size: int = 4096,
        vae_scale_factor: int | None = None,
    ) -> None:
        base_model = str(base_model)
        self.device = torch.device(device)
        self.dtype = dtype
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.encoder_calls = 0  # batched forward passes through the text encoder(s)
        self._lock = threading.Lock()  # the service may encode from several threads

        # SDXL-family pipelines list a text_encoder_2 in model_index.json.
        index = read_pipeline_json(base_model, "model_index.json")
        self.is_sdxl = _has_component(index, base_model, "text_encoder_2")
        has_1 = _has_component(index, base_model, "text_encoder")

        # (tokenizer, encoder) pairs in pipeline order; SDXL refiner-style folders lack the first.
        self.tokenizers: list = []
        self.encoders: list[torch.nn.Module] = []
        if self.is_sdxl:
            if has_1:
                self._add(base_model, "tokenizer", "text_encoder", CLIPTextModel)
            self._add(base_model, "tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection)
        else:
            self._add(base_model, "tokenizer", "text_encoder", CLIPTextModel)

        self.vae_scale_factor = vae_scale_factor or vae_scale_factor_of(base_model)
        self.default_latent_size = default_latent_size(base_model, self.vae_scale_factor)

    def _add(self, base_model: str, tok_sub: str, enc_sub: str, cls: type) -> None:
        tok = AutoTokenizer.from_pretrained(base_model, subfolder=tok_sub)
        enc = cls.from_pretrained(base_model, subfolder=enc_sub, dtype=self.dtype)
        enc.requires_grad_(False)  # frozen: R_psi never trains the text encoders
        enc.eval().to(self.device)
        self.tokenizers.append(tok)
        self.encoders.append(enc)

    @property
    def hidden_dim(self) -> int:
        return sum(e.config.hidden_size for e in self.encoders)

    def cache_info(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "size": len(self._cache),
            "max_size": self.cache_size,
            "encoder_calls": self.encoder_calls,
        }

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the encoders on ``prompts`` -> ((n, L, D), (n, P) | None)."""
        self.encoder_calls += 1
        hidden: list[torch.Tensor] = []
        pooled = None
        for tok, enc in zip(self.tokenizers, self.encoders, strict=True):
            ids = tok(
                prompts,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)  # (n, L)
            if self.is_sdxl:
                out = enc(ids, output_hidden_states=True)
                if isinstance(enc, CLIPTextModelWithProjection):
                    pooled = out.text_embeds  # (n, P): the pipeline pools the last encoder only
                hidden.append(out.hidden_states[-2])  # (n, L, D_i): penultimate layer
            else:
                hidden.append(enc(ids).last_hidden_state)  # (n, L, D)
        return torch.cat(hidden, dim=-1), pooled

    def time_ids(self, batch: int, latent_size: tuple[int, int]) -> torch.Tensor:
        """SDXL add_time_ids (B, 6): original = target = latent size * vae_scale_factor, crop 0."""
        h, w = (int(s) * self.vae_scale_factor for s in latent_size)
        row = torch.tensor([h, w, 0, 0, h, w], dtype=self.dtype, device=self.device)
        return row.expand(batch, 6).clone()

    def encode(self, prompts: list[str], latent_size: tuple[int, int] | None = None) -> TextCond:
        """Encode ``prompts`` (cached per prompt). ``latent_size`` (h, w) only matters for SDXL
        time_ids; default is the UNet's sample_size."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        if len(prompts) == 0:
            raise ValueError("prompts must not be empty")
        with self._lock:
            rows = self._lookup(list(prompts))
        ehs = torch.stack([r[0] for r in rows])  # (B, L, D)
        if not self.is_sdxl:
            return TextCond(ehs)
        size = latent_size or (self.default_latent_size, self.default_latent_size)
        return TextCond(ehs, torch.stack([r[1] for r in rows]), self.time_ids(len(prompts), size))

    def _lookup(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per-prompt ((L, D), (P,) | None) rows, encoding the distinct misses in one batch."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        # A miss is a distinct prompt that had to be encoded; every other row is a hit.
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if missing:
            hid, pooled = self._encode_uncached(missing)
            for i, p in enumerate(missing):
                fresh[p] = (hid[i], None if pooled is None else pooled[i])
        rows = []
        for p in prompts:
            if p in fresh:
                rows.append(fresh[p])
            else:
                self._cache.move_to_end(p)  # LRU: mark as recently used
                rows.append(self._cache[p])
        for p, v in fresh.items():
            self._cache[p] = v
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)  # evict the least recently used
        return rows
