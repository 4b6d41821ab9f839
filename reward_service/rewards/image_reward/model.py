"""The ImageReward network on transformers' BLIP building blocks.

The original (`ImageReward/ImageReward.py`, `models/BLIP/`) is a BLIP ViT (timm-style, pre-norm,
LayerNorm eps 1e-6) whose output tokens a BERT "med" text encoder cross-attends to in every layer;
an MLP on the text [CLS] feature gives the reward, standardised by a fixed mean and std.
`BlipVisionModel` is that ViT and `BlipTextModel` (built with `is_decoder=True`, which is what
adds the cross-attention layers, and called as an encoder) is that med BERT.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..clip import AestheticMLP

# ImageReward.__init__: self.mean / self.std, the reward's fixed standardisation.
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
# ImageReward.score: the prompt is padded / truncated to 35 tokens ([CLS] and [SEP] included).
MAX_TOKENS = 35
# BLIP's ViT-B and ViT-L both use 64-wide attention heads (768 / 12, 1024 / 16).
VISION_HEAD_DIM = 64


def vision_config(state: dict[str, torch.Tensor], prefix: str = "blip.visual_encoder.") -> Any:
    """A BlipVisionConfig read off the original ViT weights (the package hard-codes ViT-L/16 at 224)."""
    from transformers import BlipVisionConfig

    pos = state[prefix + "pos_embed"]  # (1, 1 + num_patches, width)
    patch = state[prefix + "patch_embed.proj.weight"].shape[-1]
    width = pos.shape[-1]
    grid = round((pos.shape[1] - 1) ** 0.5)
    depth = 1 + max(int(k[len(prefix):].split(".")[1]) for k in state if k.startswith(prefix + "blocks."))
    return BlipVisionConfig(
        hidden_size=width, intermediate_size=state[prefix + "blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth, num_attention_heads=max(1, width // VISION_HEAD_DIM),
        image_size=grid * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6,
        attention_dropout=0.0)


def text_config(med: dict[str, Any], encoder_width: int) -> Any:
    """A BlipTextConfig from the package's med_config.json; the cross-attention width is the ViT's
    (BLIP_Pretrain overrides the file's encoder_width with vision_width)."""
    from transformers import BlipTextConfig

    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"med_config: position_embedding_type {med['position_embedding_type']!r} is not "
                         "supported (ImageReward's is 'absolute')")
    if not med.get("add_cross_attention", False):
        raise ValueError("med_config: add_cross_attention must be true (ImageReward's text encoder "
                         "cross-attends to the image)")
    return BlipTextConfig(
        vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=encoder_width,
        intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"], hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12), pad_token_id=med.get("pad_token_id", 0),
        bos_token_id=None, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        is_decoder=True, use_cache=False)  # is_decoder: builds the cross-attention layers


class ImageRewardModel(nn.Module):
    """pixels (B, 3, 224, 224) normalised + token ids (B, 35) -> standardised rewards (B,)."""

    def __init__(self, vision: Any, text: Any, mlp_width: int):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision)
        self.text = BlipTextModel(text, add_pooling_layer=False)
        # ImageReward's MLP is improved-aesthetic-predictor's, layer for layer (no activations).
        self.mlp = AestheticMLP(mlp_width)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state  # (B, 1 + 196, 1024)
        # The package passes an all-ones image mask, which adds zero to every logit: no mask.
        text = self.text(input_ids=input_ids, attention_mask=attention_mask,
                         encoder_hidden_states=image_embeds).last_hidden_state  # (B, 35, 768)
        rewards = self.mlp(text[:, 0, :].float()).squeeze(-1)  # [CLS] feature, in float32 as the package
        return (rewards - REWARD_MEAN) / REWARD_STD
