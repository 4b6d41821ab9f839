"""Fixtures for ImageReward tests: a synthetic BERT vocab, a tiny checkpoint in the official key
layout, and the reference environment (`venv.py`, `reference.py`) holding the original package.

Nothing here downloads a model: bert-base-uncased's tokenizer and THUDM's weights cannot be
fetched on these machines, so the vocab is synthetic (with bert-base-uncased's special-token ids)
and the weights are random.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# bert-base-uncased: [PAD] 0, [unused1..99] 1-99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103.
SPECIAL = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ("a an the of and with on in at by to is photo picture painting drawing portrait landscape "
         "red blue green yellow black white orange purple big small tiny old young happy dark bright "
         "cat dog horse bird car house tree flower mountain river city street sky sun moon robot "
         "astronaut castle forest ocean beach man woman child girl boy face hat cafe oil style "
         "detailed realistic beautiful , . ! ? - ' ( ) : ##s ##ing ##ed ##er ##ly ##y 4 ##k")
WORDS = _WORDS.split()


def write_vocab(folder: Path) -> Path:
    """A BERT vocab.txt (uncased) whose special tokens sit at bert-base-uncased's ids."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    return folder


def med_config(vocab_size: int, hidden: int = 768, layers: int = 12, heads: int = 12,
               intermediate: int = 3072) -> dict:
    """med_config.json as THUDM ships it (BERT-base, cross-attention on), sizes overridable."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": hidden, "initializer_range": 0.02,
            "intermediate_size": intermediate, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
            "model_type": "bert", "num_attention_heads": heads, "num_hidden_layers": layers,
            "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size, "encoder_width": 768,
            "add_cross_attention": True}


def tiny_original_state(vocab_size: int, width: int = 32, depth: int = 2, text_hidden: int = 32,
                        text_layers: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the package's own key names (ImageReward.state_dict()), small sizes:
    the names follow models/BLIP/vit.py, med.py and ImageReward.py, written out independently of
    the converter under test."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def ln(prefix: str, n: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + rnd(n, std=0.1), f"{prefix}.bias": rnd(n, std=0.1)}

    def lin(prefix: str, n_in: int, n_out: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": rnd(n_out, n_in, std=n_in ** -0.5), f"{prefix}.bias": rnd(n_out, std=0.1)}

    v, s = "blip.visual_encoder", {}
    s |= {f"{v}.cls_token": rnd(1, 1, width), f"{v}.pos_embed": rnd(1, 197, width)}
    s |= {f"{v}.patch_embed.proj.weight": rnd(width, 3, 16, 16, std=(3 * 256) ** -0.5),
          f"{v}.patch_embed.proj.bias": rnd(width, std=0.1)}
    for i in range(depth):
        b = f"{v}.blocks.{i}"
        s |= ln(f"{b}.norm1", width) | lin(f"{b}.attn.qkv", width, 3 * width) | lin(f"{b}.attn.proj", width, width)
        s |= ln(f"{b}.norm2", width) | lin(f"{b}.mlp.fc1", width, 4 * width) | lin(f"{b}.mlp.fc2", 4 * width, width)
    s |= ln(f"{v}.norm", width)
    t = "blip.text_encoder"
    s |= {f"{t}.embeddings.word_embeddings.weight": rnd(vocab_size, text_hidden, std=1.0),
          f"{t}.embeddings.position_embeddings.weight": rnd(512, text_hidden, std=1.0),
          f"{t}.embeddings.position_ids": torch.arange(512).expand(1, -1).clone()}
    s |= ln(f"{t}.embeddings.LayerNorm", text_hidden)
    for i in range(text_layers):
        b = f"{t}.encoder.layer.{i}"
        for att, kv_in in (("attention", text_hidden), ("crossattention", width)):
            s |= lin(f"{b}.{att}.self.query", text_hidden, text_hidden)
            s |= lin(f"{b}.{att}.self.key", kv_in, text_hidden) | lin(f"{b}.{att}.self.value", kv_in, text_hidden)
            s |= lin(f"{b}.{att}.output.dense", text_hidden, text_hidden) | ln(f"{b}.{att}.output.LayerNorm", text_hidden)
        s |= lin(f"{b}.intermediate.dense", text_hidden, 4 * text_hidden)
        s |= lin(f"{b}.output.dense", 4 * text_hidden, text_hidden) | ln(f"{b}.output.LayerNorm", text_hidden)
    s |= lin("blip.vision_proj", width, 16) | lin("blip.text_proj", text_hidden, 16)  # unused by scoring
    for idx, (n_in, n_out) in zip((0, 2, 4, 6, 7), ((text_hidden, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)),
                                  strict=True):
        s |= lin(f"mlp.layers.{idx}", n_in, n_out)
    return s


def write_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """folder/ImageReward.pt + folder/med_config.json (tiny sizes) + folder/tokenizer/vocab.txt."""
    tok = write_vocab(folder / "tokenizer")
    vocab_size = len(SPECIAL) + len(WORDS) + 2  # + [DEC] and [ENC], as BLIP's tokenizer adds them
    torch.save(tiny_original_state(vocab_size, seed=seed), folder / "ImageReward.pt")
    med = med_config(vocab_size, hidden=32, layers=2, heads=4, intermediate=128)
    (folder / "med_config.json").write_text(json.dumps(med, indent=2))
    return tok


# The parity batch: prompts that exercise grouping (a repeat), punctuation and case, accent
# stripping (café -> cafe), a CJK character, a word outside the vocab, BLIP's added [ENC] token, and
# truncation at 35 tokens; image sizes that exercise no resize, downscale, upscale and odd crops.
PARITY_PROMPTS = [
    "a photo of a red cat",
    "a photo of a red cat",
    "Oil painting of an old castle, detailed 4k!",
    "robot astronaut on the moon",
    "café with a zebra 猫 [ENC]",
    " ".join(["a big red dog"] * 10),
]
PARITY_SIZES = [(224, 224), (224, 224), (256, 320), (320, 256), (120, 160), (97, 300)]  # (H, W)


def parity_images(seed: int = 0) -> list:
    """uint8 (H, W, 3) images: smooth colour fields plus pixel noise, so resampling matters."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for h, w in PARITY_SIZES:
        coarse = rng.random((3, 6, 6))
        yy, xx = np.linspace(0, 5, h), np.linspace(0, 5, w)
        iy, ix = yy.astype(int).clip(0, 4), xx.astype(int).clip(0, 4)
        fy, fx = (yy - iy)[:, None], (xx - ix)[None, :]
        smooth = ((1 - fy) * (1 - fx) * coarse[:, iy][:, :, ix] + fy * (1 - fx) * coarse[:, iy + 1][:, :, ix]
                  + (1 - fy) * fx * coarse[:, iy][:, :, ix + 1] + fy * fx * coarse[:, iy + 1][:, :, ix + 1])
        img = 0.8 * smooth + 0.2 * rng.random((3, h, w))
        out.append((img.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))
    return out
