"""CLIP-family rewards on tiny random models saved locally (ImageReward: test_image_reward.py).

Nothing is downloaded: a tiny random CLIPModel + tokenizer + image processor is written with
`save_pretrained` and every reward loads it by path through its normal `from_pretrained` code.
Random weights say nothing about semantics, so the checks are about mechanics: shapes,
determinism, batch-size invariance, agreement with a direct model call, and gradients that
match finite differences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reward_service.rewards import build
from reward_service.rewards.clip import (
    AestheticMLP,
    ClipScore,
    LaionAesthetic,
    PickScore,
    TorchClipPreprocess,
)

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def build_tiny_clip(path: Path) -> Path:
    """A tiny random CLIP (image 32, patch 8, projection 16) + tokenizer + processor at `path`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from tests.tiny_models import _text_config, tiny_clip_tokenizer

    text = _text_config(hidden_size=32, projection_dim=16).to_dict()
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    tiny_clip_tokenizer().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def save_random_aesthetic_head(path: Path, dim: int = 16) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    save_file(AestheticMLP(dim).state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def images(b: int = 3, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    # Away from 0 and 1 so finite differences stay inside [0, 1]; 40x48 exercises resize + crop.
    return 0.1 + 0.8 * torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def ready(reward):
    reward.setup("cpu")
    return reward


def test_registry_builds_clip_rewards_from_a_local_path(tiny_clip):
    r = ready(build("clip_score", {"model": str(tiny_clip), "batch_size": 2}))
    assert r.name == "clip_score" and r.differentiable and r.input_size == (32, 32)
    assert r.info()["differentiable"] is True


@pytest.mark.parametrize("cls", [ClipScore, PickScore])
def test_scores_are_finite_deterministic_and_batch_size_invariant(tiny_clip, cls):
    kw = {"processor": str(tiny_clip)} if cls is PickScore else {}
    one = ready(cls(model=str(tiny_clip), batch_size=1, **kw))
    many = ready(cls(model=str(tiny_clip), batch_size=8, **kw))
    x = images()
    s = many.score(x, PROMPTS)
    assert s.shape == (3,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    torch.testing.assert_close(many.score(x, PROMPTS), s, rtol=0, atol=0)
    torch.testing.assert_close(one.score(x, PROMPTS), s, rtol=1e-5, atol=1e-4)
    perm = [2, 0, 1]  # each image is scored on its own: permuting the batch permutes the scores
    torch.testing.assert_close(many.score(x[perm], [PROMPTS[i] for i in perm]), s[perm], rtol=1e-5, atol=1e-4)
    # a pair's score does not depend on which prompt the other images carry
    other = many.score(x, [PROMPTS[0], "a cat", "a dog"])
    torch.testing.assert_close(other[0], s[0])
    assert not torch.allclose(other[1:], s[1:])


def test_clip_score_is_100_cosine_of_the_model_embeddings(tiny_clip):
    from transformers import CLIPModel

    r = ready(ClipScore(model=str(tiny_clip)))
    x = images(2, 32, 32)  # already the model's size: preprocessing is just the normalisation
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    tok = r.tokenizer(PROMPTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=(x - mean) / std)
        txt = model.get_text_features(**tok)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    want = 100 * torch.nn.functional.cosine_similarity(img, txt)
    torch.testing.assert_close(r.score(x, PROMPTS[:2]), want, rtol=1e-4, atol=1e-3)
    clamped = ready(ClipScore(model=str(tiny_clip), clamp=True)).score(x, PROMPTS[:2])
    torch.testing.assert_close(clamped, want.clamp(min=0), rtol=1e-4, atol=1e-3)


def test_torch_preprocessing_matches_the_clip_image_processor():
    """Resize + crop + normalise in torch agree with the PIL processor up to its uint8 rounding."""
    from PIL import Image, ImageFilter
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pre = TorchClipPreprocess.from_processor(proc, 32)
    noise = np.random.default_rng(0).integers(0, 256, (48, 70, 3), dtype=np.uint8)
    img = np.array(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(3)))  # smooth, like a photo
    want = proc(images=Image.fromarray(img), return_tensors="pt").pixel_values
    got = pre(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    assert got.shape == want.shape == (1, 3, 32, 32)
    assert (got - want).abs().mean() < 0.01 and (got - want).abs().max() < 0.05


def test_pickscore_is_logit_scale_times_cosine(tiny_clip):
    clip = ready(ClipScore(model=str(tiny_clip)))
    pick = ready(PickScore(model=str(tiny_clip), processor=str(tiny_clip)))
    x = images(2)
    scale = pick.model.logit_scale.exp().item()
    torch.testing.assert_close(pick.score(x, PROMPTS[:2]), clip.score(x, PROMPTS[:2]) * scale / 100,
                               rtol=1e-4, atol=1e-3)


def test_laion_aesthetic_loads_safetensors_and_pth_heads(tiny_clip, tmp_path):
    head = save_random_aesthetic_head(tmp_path / "head.safetensors")
    from safetensors.torch import load_file

    torch.save(load_file(str(head)), tmp_path / "head.pth")
    a = ready(LaionAesthetic(model=str(tiny_clip), head=str(head), batch_size=2))
    b = ready(LaionAesthetic(model=str(tiny_clip), head=str(tmp_path / "head.pth")))
    x = images()
    s = a.score(x, PROMPTS)
    assert s.shape == (3,) and torch.isfinite(s).all()
    torch.testing.assert_close(b.score(x, ["", "", ""]), s)  # the prompt is ignored
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="aesthetic MLP"):
        ready(LaionAesthetic(model=str(tiny_clip), head=str(tmp_path / "bad.pth")))


@pytest.mark.parametrize("name", ["clip_score", "pickscore", "laion_aesthetic"])
def test_gradients_match_finite_differences(tiny_clip, tmp_path, name):
    opts = {"model": str(tiny_clip), "processor": str(tiny_clip)}
    if name == "laion_aesthetic":
        opts["head"] = str(save_random_aesthetic_head(tmp_path / "head.safetensors"))
    r = ready(build(name, opts))
    x = images(2).requires_grad_(True)
    s = r.score(x, PROMPTS[:2])
    (g,) = torch.autograd.grad(s.sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    v /= v.norm()
    eps = 1e-2
    with torch.no_grad():
        fd = (r.score(x + eps * v, PROMPTS[:2]).sum() - r.score(x - eps * v, PROMPTS[:2]).sum()) / (2 * eps)
    analytic = (g * v).sum()
    assert abs(fd - analytic) <= 0.05 * abs(analytic) + 1e-3, (fd.item(), analytic.item())


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="dtype"):
        ClipScore(dtype="float64")
    with pytest.raises(ValueError, match="batch_size"):
        PickScore(batch_size=0)
