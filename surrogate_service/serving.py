"""Serving R_psi: validate a /score or /grad request, batch it with its neighbours, answer.
No FastAPI here; app.py stays thin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lasro_common.codec import Decoded
from lasro_common.errors import InvalidInput, PayloadTooLarge, UnknownName
from lasro_common.limits import check_prompts
from lasro_diffusion.text import TextEncoderBundle

from .model import HEADS, score_and_grad
from .slot import ModelSlot


@dataclass
class LatentRequest:
    latents: torch.Tensor  # (B, C, h, w) float16 or float32, as sent
    prompts: list[str]
    head: int

    @property
    def key(self) -> tuple:
        """Requests that can share one model call."""
        return (self.head, tuple(self.latents.shape[1:]), self.latents.dtype)


def parse(decoded: Decoded, *, in_channels: int, multiple: int, max_batch: int, max_side: int,
          max_abs: float = 1e4, max_prompt_chars: int | None = None) -> LatentRequest:
    """Check everything a client can get wrong, with a message that says how to fix it."""
    if "latents" not in decoded.tensors:
        raise InvalidInput("safetensors body needs a tensor named 'latents' (B, C, h, w)")
    arr = decoded.tensors["latents"]
    if arr.dtype not in (np.float16, np.float32):
        raise InvalidInput(f"latents must be float16 or float32, got {arr.dtype}", code="invalid_dtype")
    if arr.ndim != 4:
        raise InvalidInput(f"latents must have shape (B, C, h, w), got {tuple(arr.shape)}", code="invalid_shape")
    b, c, h, w = arr.shape
    if b == 0:
        raise InvalidInput("latents is an empty batch", code="invalid_shape")
    if b > max_batch:
        raise PayloadTooLarge(f"batch of {b} latents exceeds the limit of {max_batch}")
    if h > max_side or w > max_side:
        raise PayloadTooLarge(f"latent size {h}x{w} exceeds {max_side} per side")
    if c != in_channels:
        raise InvalidInput(f"latents have {c} channels; this model takes {in_channels}", code="invalid_shape")
    if h < multiple or w < multiple or h % multiple or w % multiple:
        raise InvalidInput(f"latent size {h}x{w} must be a positive multiple of {multiple}", code="invalid_shape")
    if not np.isfinite(arr).all():
        raise InvalidInput("latents contain NaN or Inf", code="non_finite")
    if arr.max() > max_abs or arr.min() < -max_abs:  # scaled latents of real models stay within about ±10
        raise InvalidInput(f"latent values beyond ±{max_abs:g}; are they scaled by the VAE's scaling_factor?",
                           code="out_of_range")
    prompts = decoded.metadata.get("prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise InvalidInput("metadata 'prompts' must be a JSON list of strings")
    if len(prompts) != b:
        raise InvalidInput(f"{len(prompts)} prompts for a batch of {b} latents", code="batch_mismatch")
    if max_prompt_chars is not None:
        check_prompts(prompts, max_prompt_chars)
    head = decoded.metadata.get("head")
    if isinstance(head, str) and head.isdigit() and len(head) < 3:
        head = int(head)
    if type(head) is not int or head not in HEADS:  # exactly 1 or 2: not 1.0, not True
        raise UnknownName(f"unknown head {head!r}; use 1 (one-step outputs) or 2 (two-step outputs)",
                          code="unknown_head")
    return LatentRequest(decoded.torch("latents"), prompts, head)


def make_batch_fn(slot: ModelSlot, text: TextEncoderBundle, *, with_grad: bool):
    """One model call for several requests of the same key; each answer carries the version."""

    def run(items: list[LatentRequest]) -> list[tuple[np.ndarray, np.ndarray | None, int]]:
        model, version = slot.get()  # one (weights, version) pair for the whole call
        latents = torch.cat([r.latents for r in items]) if len(items) > 1 else items[0].latents
        prompts = [p for r in items for p in r.prompts]
        cond = text.encode(prompts, latent_size=tuple(latents.shape[-2:])).to(model.device, model.dtype)
        head = items[0].head
        if with_grad:
            # parse() validated the request at the edge: no second pass over the latents
            scores, grad = score_and_grad(model, latents.to(model.device), cond, head, checked=True)
            grad = grad.to(latents.dtype).cpu().numpy()
        else:
            with torch.no_grad():
                scores = model(latents.to(model.device, model.dtype), cond, head, checked=True)
            grad = None
        scores = scores.float().cpu().numpy()
        if not np.isfinite(scores).all() or (grad is not None and not np.isfinite(grad).all()):
            raise InvalidInput("the surrogate's output is not finite for these latents", code="non_finite_output")
        out, start = [], 0
        for r in items:
            n = r.latents.shape[0]
            out.append((scores[start : start + n], None if grad is None else grad[start : start + n], version))
            start += n
        return out

    return run
