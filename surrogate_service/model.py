"""R_psi(z, c): the LaSRO latent-space surrogate reward (arXiv 2411.15247).

Backbone = the encoder half of the base model's own UNet2DConditionModel (conv_in, time
embedding at a fixed timestep, SDXL added embeddings, down blocks, mid block), initialised with
its weights; the decoder half is never kept. On top, one small CNN head per sampling depth
(``heads["1"]`` for one-step outputs z1, ``heads["2"]`` for two-step outputs z2) sharing the
backbone: one backbone copy instead of two (an SDXL UNet encoder is roughly half of the 2.6 B
UNet parameters) and both heads score the same latent space. See docs/surrogate-model.md for
every choice made here.
"""

from __future__ import annotations

import copy
import math

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from lasro_diffusion.text import TextCond, TextEncoderBundle

HEADS = (1, 2)


def _groups(channels: int, max_groups: int = 32) -> int:
    """Largest GroupNorm group count <= max_groups dividing ``channels``."""
    return math.gcd(channels, max_groups) or 1


class UNetEncoder(nn.Module):
    """The UNet's down path. Submodule names match UNet2DConditionModel, so
    ``encoder.state_dict()`` keys are a subset of ``unet.state_dict()`` keys."""

    def __init__(
        self, unet: UNet2DConditionModel, timestep: int, copy_modules: bool = True
    ) -> None:
        super().__init__()
        cfg = unet.config
        if unet.class_embedding is not None:
            raise ValueError("UNets with class embeddings are not supported (no class labels)")
        if cfg.addition_embed_type not in (None, "text_time"):
            raise ValueError(f"addition_embed_type {cfg.addition_embed_type!r} is not supported")
        if unet.encoder_hid_proj is not None and cfg.encoder_hid_dim_type != "text_proj":
            raise ValueError(f"encoder_hid_dim_type {cfg.encoder_hid_dim_type!r} is not supported")
        take = copy.deepcopy if copy_modules else (lambda m: m)
        self.conv_in = take(unet.conv_in)
        self.time_proj = take(unet.time_proj)
        self.time_embedding = take(unet.time_embedding)
        # The LCM guidance embedding (time_cond_proj_dim) is never used: timestep_cond=None,
        # because R_psi scores clean latents, not a guided denoising step. Dropping it avoids
        # parameters that would never receive a gradient.
        self.time_embedding.cond_proj = None
        self.time_embed_act = take(unet.time_embed_act)
        self.encoder_hid_proj = take(unet.encoder_hid_proj)
        self.is_sdxl = cfg.addition_embed_type == "text_time"
        if self.is_sdxl:
            self.add_time_proj = take(unet.add_time_proj)
            self.add_embedding = take(unet.add_embedding)
        self.down_blocks = take(unet.down_blocks)
        self.mid_block = take(unet.mid_block)
        self.timestep = int(timestep)
        self.center_input_sample = bool(cfg.center_input_sample)
        self.in_channels = int(cfg.in_channels)
        self.out_channels = int(cfg.block_out_channels[-1])
        self.cross_attention_dim = int(
            cfg.encoder_hid_dim if unet.encoder_hid_proj is not None else cfg.cross_attention_dim
        )
        self.num_downsamplings = sum(
            getattr(b, "downsamplers", None) is not None for b in self.down_blocks
        )
        if self.is_sdxl:
            lin = self.add_embedding.linear_1
            self.pooled_dim = lin.in_features - 6 * int(cfg.addition_time_embed_dim)

    def embed(self, sample: torch.Tensor, cond: TextCond) -> torch.Tensor:
        """Time (+ SDXL text_time) embedding -> (B, T), as UNet2DConditionModel.forward."""
        b = sample.shape[0]
        t = torch.full((b,), self.timestep, dtype=torch.long, device=sample.device)  # (B,)
        t_emb = self.time_proj(t).to(sample.dtype)  # Timesteps always returns float32
        emb = self.time_embedding(t_emb, None)  # (B, T); timestep_cond=None, see __init__
        if self.is_sdxl:
            time_embeds = self.add_time_proj(cond.time_ids.flatten()).reshape(b, -1)  # (B, 6*A)
            add = torch.cat([cond.text_embeds, time_embeds], dim=-1).to(emb.dtype)  # (B, P+6A)
            emb = emb + self.add_embedding(add)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb

    def forward(self, sample: torch.Tensor, cond: TextCond) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, C_mid, h / 2**k, w / 2**k) features."""
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self.embed(sample, cond)  # (B, T)
        ehs = cond.encoder_hidden_states  # (B, L, D)
        if self.encoder_hid_proj is not None:
            ehs = self.encoder_hid_proj(ehs)
        h = self.conv_in(sample)  # (B, C0, h, w)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=ehs)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                h = self.mid_block(h, emb, encoder_hidden_states=ehs)
            else:
                h = self.mid_block(h, emb)
        return h


class CNNEncoder(nn.Module):
    """The backbone ablation (the paper compares backbones; this is the cheapest alternative): a
    CNN trained from scratch with the UNet encoder's interface, so the same heads, data and
    learner apply. Same input and output resolution (as many stride-2 down-samplings as the UNet),
    conditioned on the prompt by FiLM from the mean-pooled token embeddings (+ the pooled SDXL
    embedding). Nothing of the base model's weights is used: what the UNet encoder brings is
    exactly what this lacks."""

    def __init__(self, unet: UNet2DConditionModel, timestep: int = 0, width: int = 128) -> None:
        super().__init__()
        cfg = unet.config  # only the interface is read: channels, down-samplings, text dims
        self.timestep = int(timestep)  # unused (no time embedding); kept for the checkpoint config
        self.in_channels = int(cfg.in_channels)
        self.num_downsamplings = sum(getattr(b, "downsamplers", None) is not None for b in unet.down_blocks)
        self.cross_attention_dim = int(cfg.encoder_hid_dim if unet.encoder_hid_proj is not None
                                       else cfg.cross_attention_dim)
        self.is_sdxl = cfg.addition_embed_type == "text_time"
        if self.is_sdxl:
            self.pooled_dim = unet.add_embedding.linear_1.in_features - 6 * int(cfg.addition_time_embed_dim)
        text_dim = self.cross_attention_dim + (self.pooled_dim if self.is_sdxl else 0)
        self.conv_in = nn.Conv2d(self.in_channels, width, 3, padding=1)
        self.blocks, self.films = nn.ModuleList(), nn.ModuleList()
        for i in range(self.num_downsamplings + 1):
            down = i < self.num_downsamplings
            self.blocks.append(nn.Sequential(
                nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(_groups(width), width), nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1, stride=2 if down else 1)))
            self.films.append(nn.Linear(text_dim, 2 * width))
        self.out_channels = width

    def forward(self, sample: torch.Tensor, cond: TextCond) -> torch.Tensor:
        text = cond.encoder_hidden_states.mean(dim=1)  # (B, D)
        if self.is_sdxl:
            text = torch.cat([text, cond.text_embeds], dim=-1)
        h = self.conv_in(sample)  # (B, W, h, w)
        for block, film in zip(self.blocks, self.films, strict=True):
            scale, shift = film(text.to(h.dtype)).chunk(2, dim=-1)  # (B, W) each
            h = block(h * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        return h  # (B, W, h / 2**k, w / 2**k)


BACKBONES = ("unet_encoder", "cnn")


def make_head(in_channels: int, head_channels: int, init_scale: float = 0.0) -> nn.Sequential:
    """GroupNorm-SiLU-Conv3x3-GroupNorm(1 group)-SiLU-GAP-Linear: (B, C, h, w) -> (B, 1).

    The second norm has ONE group on purpose: a per-channel (or few-channel) GroupNorm right
    before the global average pool standardises each channel over space, so the pooled vector
    becomes nearly the same for every sample and the head can barely learn (measured: BT loss
    stuck at log 2). One group only removes the sample's overall offset/scale.
    The final Linear starts at ``init_scale`` (default 0: every score is exactly 0 and an
    untrained surrogate gives the generator no gradient at all, rather than a random one)."""
    head = nn.Sequential(
        nn.GroupNorm(_groups(in_channels), in_channels),
        nn.SiLU(),
        nn.Conv2d(in_channels, head_channels, kernel_size=3, padding=1),
        nn.GroupNorm(1, head_channels),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(head_channels, 1),
    )
    last = head[-1]
    if init_scale > 0:
        nn.init.normal_(last.weight, std=init_scale)
    else:
        nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return head


class SurrogateReward(nn.Module):
    """R_psi(z, c) -> (B,) float32 scores. ``head`` 1 scores one-step latents, 2 two-step ones."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        timestep: int = 0,
        head_channels: int = 128,
        freeze_backbone: bool = False,
        head_init_scale: float = 0.0,
        copy_modules: bool = True,
        backbone: str = "unet_encoder",
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        self.backbone = (UNetEncoder(unet, timestep, copy_modules=copy_modules) if backbone == "unet_encoder"
                         else CNNEncoder(unet, timestep).to(device=unet.device, dtype=unet.dtype))
        c = self.backbone.out_channels
        self.heads = nn.ModuleDict(
            {str(k): make_head(c, head_channels, head_init_scale) for k in HEADS}
        )
        self.heads.to(device=unet.device, dtype=unet.dtype)
        self.freeze_backbone = bool(freeze_backbone)
        self.backbone.requires_grad_(not self.freeze_backbone)
        # Everything a checkpoint needs to rebuild this module around a base model's UNet.
        self.config = {
            "timestep": self.backbone.timestep,
            "head_channels": int(head_channels),
            "freeze_backbone": self.freeze_backbone,
            "heads": list(HEADS),
            "backbone": backbone,
        }

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def validate(self, latents: torch.Tensor, cond: TextCond, head: int) -> None:
        """Raise ValueError with a clear message on any malformed input."""
        bb = self.backbone
        if not isinstance(head, int) or isinstance(head, bool) or head not in HEADS:
            raise ValueError(f"head must be 1 (one-step) or 2 (two-step), got {head!r}")
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents)
            raise ValueError(f"latents must be a (B, C, h, w) tensor, got {shape}")
        b, c, h, w = latents.shape
        if b == 0:
            raise ValueError("latents batch is empty")
        if not latents.is_floating_point():
            raise ValueError(f"latents must be floating point, got {latents.dtype}")
        if c != bb.in_channels:
            raise ValueError(
                f"latents have {c} channels, the UNet expects in_channels={bb.in_channels}"
            )
        f = 2**bb.num_downsamplings
        if h % f or w % f:
            raise ValueError(
                f"latent size {h}x{w} must be divisible by {f} (2**{bb.num_downsamplings} down-samplings)"
            )
        if not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or Inf")
        if not isinstance(cond, TextCond):
            raise ValueError(f"cond must be a TextCond, got {type(cond).__name__}")
        ehs = cond.encoder_hidden_states
        if ehs.ndim != 3 or ehs.shape[0] != b:
            raise ValueError(
                f"got {len(cond)} prompts' embeddings (shape {tuple(ehs.shape)}) for a batch of {b} latents"
            )
        if ehs.shape[-1] != bb.cross_attention_dim:
            raise ValueError(
                f"text embedding dim {ehs.shape[-1]} != UNet cross_attention_dim {bb.cross_attention_dim}"
            )
        if bb.is_sdxl:
            if cond.text_embeds is None or cond.time_ids is None:
                raise ValueError(
                    "this SDXL-family UNet needs pooled text_embeds and time_ids in cond"
                )
            if tuple(cond.text_embeds.shape) != (b, bb.pooled_dim):
                raise ValueError(
                    f"text_embeds shape {tuple(cond.text_embeds.shape)} != {(b, bb.pooled_dim)}"
                )
            if tuple(cond.time_ids.shape) != (b, 6):
                raise ValueError(f"time_ids shape {tuple(cond.time_ids.shape)} != {(b, 6)}")

    def forward(self, latents: torch.Tensor, cond: TextCond, head: int, *, checked: bool = False) -> torch.Tensor:
        """(B, C, h, w) clean latents + (B,) prompts' conditioning -> (B,) float32 scores.
        `checked=True`: the caller validated the inputs already (the service does, at the edge)."""
        if not checked:
            self.validate(latents, cond, head)
        z = latents.to(device=self.device, dtype=self.dtype)  # (B, C, h, w)
        feats = self.backbone(z, cond.to(self.device, self.dtype))  # (B, C_mid, h', w')
        out = self.heads[str(head)](feats).squeeze(-1)  # (B,)
        # float32 for fp16/bf16/fp32 models; a float64 model keeps float64 (gradient checks).
        return out.to(torch.promote_types(out.dtype, torch.float32))


def score_and_grad(
    model: SurrogateReward, latents: torch.Tensor, cond: TextCond, head: int, *, checked: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) and d(sum of scores)/d latents (same shape, dtype, device as ``latents``).

    Each score depends only on its own latent, so the gradient of the sum is the per-sample
    gradient. Computed on a float32 leaf (float64 stays float64), so fp16/bf16 callers still
    get a gradient accumulated in float32; parameters' .grad are left untouched."""
    if not checked:
        model.validate(latents, cond, head)
    leaf_dtype = torch.promote_types(latents.dtype, torch.float32)
    with torch.enable_grad():
        z = latents.detach().to(leaf_dtype).requires_grad_(True)  # (B, C, h, w)
        scores = model(z, cond, head, checked=True)  # (B,)
        (grad,) = torch.autograd.grad(scores.sum(), z)
    return scores.detach(), grad.to(dtype=latents.dtype, device=latents.device)


@torch.no_grad()
def score(model: SurrogateReward, latents: torch.Tensor, cond: TextCond, head: int) -> torch.Tensor:
    """Scores (B,) float32 without building a graph."""
    return model(latents, cond, head)


def load_surrogate(
    base_model: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    timestep: int = 0,
    head_channels: int = 128,
    freeze_backbone: bool = False,
    cache_size: int = 4096,
    backbone: str = "unet_encoder",
) -> tuple[SurrogateReward, TextEncoderBundle]:
    """Build R_psi from a diffusers pipeline (hub id or local folder; same code path).

    Loads the full UNet once, keeps only its encoder half (the modules are moved, not copied,
    so peak memory is one UNet) and lets the decoder half be garbage-collected."""
    from lasro_diffusion.loading import MODEL_LOAD_LOCK

    with MODEL_LOAD_LOCK:
        return _load_surrogate(str(base_model), device, dtype, timestep, head_channels, freeze_backbone, cache_size,
                               backbone)


def _load_surrogate(base_model: str, device, dtype, timestep, head_channels, freeze_backbone, cache_size,
                    backbone="unet_encoder"):
    unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet", torch_dtype=dtype)
    model = SurrogateReward(
        unet,
        timestep=timestep,
        head_channels=head_channels,
        freeze_backbone=freeze_backbone,
        copy_modules=False,
        backbone=backbone,
    )
    del unet
    model.to(device).eval()
    text = TextEncoderBundle(base_model, device=device, dtype=dtype, cache_size=cache_size)
    if text.hidden_dim != model.backbone.cross_attention_dim:
        raise ValueError(
            f"text encoders give {text.hidden_dim}-dim embeddings, the UNet expects "
            f"{model.backbone.cross_attention_dim}"
        )
    return model, text
