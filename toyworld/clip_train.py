"""Train the toy CLIP (toyworld/clip.py) contrastively on toy scenes: the `clip` stage of
`python -m toyworld build`.

Each step draws a batch of training scenes and, for every scene, a binding negative and a
malformed negative at the same layout (toyworld/clip_data.py). Loss (InfoNCE, both directions,
learnable temperature as in CLIP):

    image -> text: softmax over every caption of the training universe (18 singles + 120 training
                   pairs in both orders = 258), so every hard-negative caption (the binding swap,
                   one attribute changed, an object missing or extra) is in every step's
                   denominator; both word orders of the true caption count as positive.
    text -> image: softmax over the batch's scenes and both kinds of negative scenes, so a
                   caption must prefer its scene over the same layout with wrong binding or
                   with a malformed object.

Images are lightly augmented (blur, noise, brightness) so the score holds on generated images,
which are softer than the drawn ones, and then moved one adversarial step (`adversarial`), so
that small pixel changes cannot buy score without changing content. Batch k depends only on (seed, k): resumable and exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toyworld import captions
from toyworld.clip import ToyClip
from toyworld.clip_data import draw_batch, key, train_captions


@dataclass(frozen=True)
class ClipTrainConfig:
    seed: int = 0  # model init, batches and augmentations all derive from it
    steps: int = 1400  # optimiser steps
    batch: int = 64  # scenes per step (plus as many hard-negative scenes)
    lr: float = 2e-3  # AdamW peak rate (warm-up, cosine to 10 %)
    weight_decay: float = 1e-2
    warmup: int = 100
    blur_p: float = 0.4  # fraction of images Gaussian-blurred (sigma ~ U[0.3, 1.0] px)
    noise_max: float = 0.06  # per-image Gaussian noise std ~ U[0, noise_max]
    brightness: float = 0.15  # per-image brightness factor ~ U[1 - b, 1 + b/2]
    adv_eps: float = 0.03  # max L-inf size of the one-step adversarial perturbation (0 = none)
    align: float = 1.0  # weight of mean(1 - cos) on matching pairs: correct scenes sit near the top
    ckpt_every: int = 250


def augment(x: torch.Tensor, cfg: ClipTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Blur / noise / brightness per image, (B, 3, 32, 32) in [0, 1] -> same."""
    b = x.shape[0]
    sigma = 0.3 + 0.7 * torch.rand(b, generator=gen)
    r = torch.arange(-1, 2, dtype=torch.float32)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # (B, 3)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(3, 0)[:, None]  # (B*3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x.reshape(1, b * 3, 32, 32), (1, 1, 1, 1), mode="replicate"), k2, groups=b * 3)
    use = (torch.rand(b, generator=gen) < cfg.blur_p).float()[:, None, None, None]
    x = use * blurred.reshape(b, 3, 32, 32) + (1 - use) * x
    bright = 1 - cfg.brightness + 1.5 * cfg.brightness * torch.rand(b, 1, 1, 1, generator=gen)
    noise = cfg.noise_max * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return (x * bright + noise).clamp(0, 1)


def adversarial(model: ToyClip, batch: dict, x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """One signed-gradient step per image (FGSM, size ~ U[0, eps]) against the scene's own caption:
    scenes are pushed to match it less, both kinds of negatives to match it more. Training on
    them means the score cannot be raised by small pixel changes that leave the content wrong,
    which is what gradient ascent through a generator (ReFL) would find otherwise."""
    b = len(batch["objs"])
    with torch.no_grad():
        txt = model.embed_text([captions.caption_for(o) for o in batch["objs"]]).repeat(3, 1)  # (3B, D)
    direction = torch.cat([-torch.ones(b), torch.ones(2 * b)])  # lower for scenes, raise for negatives
    xa = x.clone().requires_grad_(True)
    cos = (model.embed_images(xa) * txt).sum(-1)  # (3B,)
    (g,) = torch.autograd.grad((direction * cos).sum(), xa)
    size = eps * torch.rand(len(x), 1, 1, 1, generator=gen)
    return (x + size * g.sign()).clamp(0, 1).detach()


def _lr(step: int, cfg: ClipTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def contrastive_loss(model: ToyClip, batch: dict, images: torch.Tensor, universe: list[str],
                     universe_keys: list[frozenset], align_weight: float = 0.0) -> tuple[torch.Tensor, float]:
    """The two InfoNCE terms (module docstring); `images` (3B, 3, 32, 32) are the batch's
    scenes, binding negatives and malformed negatives, in that order. Returns (loss, image->text
    top-1 accuracy)."""
    scale = model.logit_scale.clamp(max=math.log(100)).exp()  # CLIP caps the scale at 100
    img = model.embed_images(images)  # (3B, D)
    b = len(batch["objs"])
    txt = model.embed_text(universe)  # (U, D)
    keys = [key(o) for o in batch["objs"]]
    pos = torch.tensor([[k == u for u in universe_keys] for k in keys])  # (B, U), both word orders
    logits_it = scale * img[:b] @ txt.T  # (B, U)
    loss_it = (torch.logsumexp(logits_it, 1) - torch.logsumexp(logits_it.masked_fill(~pos, -1e9), 1)).mean()
    # text -> image: the caption of scene i (one word order) against all 3B images; other scenes
    # with the same meaning are masked out, never counted as negatives; malformed ones never match.
    cap_idx = [universe_keys.index(k) for k in keys]
    img_keys = keys + [key(o) for o in batch["neg_objs"]] + [None] * b
    same = torch.tensor([[kj == ki for kj in img_keys] for ki in keys])  # (B, 3B)
    same[torch.arange(b), torch.arange(b)] = False
    logits_ti = (scale * txt[cap_idx] @ img.T).masked_fill(same, -1e9)  # (B, 3B)
    loss_ti = F.cross_entropy(logits_ti, torch.arange(b))
    acc = float(pos[torch.arange(b), logits_it.argmax(1)].float().mean())
    # InfoNCE only ranks; the alignment term also pulls a correct scene's cosine towards 1, so the
    # score has little headroom above correct scenes for gradient ascent to find elsewhere.
    align = 1 - (img[:b] * txt[cap_idx]).sum(-1).mean()
    return (loss_it + loss_ti) / 2 + align_weight * align, acc


def train(model: ToyClip, cfg: ClipTrainConfig, ckpt_dir: Path | None = None, log_every: int = 50) -> list[dict]:
    """Train `model` in place (resuming from ckpt_dir/ckpt.pt if present); returns the log."""
    from tqdm import tqdm

    universe = train_captions()
    universe_keys = [key(captions.parse_caption(c)) for c in universe]
    params = [p for n, p in model.named_parameters() if not n.startswith("text_encoder.")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, log = 0, []
    ckpt = ckpt_dir / "ckpt.pt" if ckpt_dir else None
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    if ckpt and ckpt.exists():
        ck = torch.load(ckpt, weights_only=True)
        model.load_state_dict(ck["model"], strict=False)
        opt.load_state_dict(ck["opt"])
        step, log = ck["step"], ck["log"]
    model.train()
    bar = tqdm(range(step, cfg.steps), desc="clip", initial=step, total=cfg.steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        batch = draw_batch(cfg.batch, cfg.seed + 1, step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x = torch.from_numpy(np.concatenate([batch["images"], batch["neg_images"], batch["malformed"]]))
        x = augment(x, cfg, gen)
        if cfg.adv_eps > 0:
            x = adversarial(model, batch, x, cfg.adv_eps, gen)
        loss, acc = contrastive_loss(model, batch, x, universe, universe_keys, cfg.align)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
        if (step + 1) % log_every == 0:
            log.append({"step": step + 1, "loss": round(loss.item(), 4), "acc": round(acc, 3)})
        if ckpt and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.own_state_dict(), "opt": opt.state_dict(), "step": step + 1, "log": log}, tmp)
            tmp.replace(ckpt)  # atomic: an interrupted save never corrupts the previous checkpoint
    model.eval().requires_grad_(False)
    return log
