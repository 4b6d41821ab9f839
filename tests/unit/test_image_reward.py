"""Native ImageReward on a tiny checkpoint in the official format (random weights, synthetic vocab).

Parity with the original package is proven in tests/integration/test_image_reward_parity.py; here
are the mechanics: key conversion, tensors-only loading, where files come from, preprocessing
sizes, batching, and gradients.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reward_service.rewards import build
from reward_service.rewards.image_reward import ImageRewardScore, convert
from reward_service.rewards.image_reward.preprocess import (
    TorchPixels,
    crop_offsets,
    pil_pixels,
    resized_size,
)
from tests.imagereward_ref import SPECIAL, WORDS, tiny_original_state, write_tiny_checkpoint

PROMPTS = ["a red cat", "Oil painting of an old castle!", "a photo of a dog"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tiny_imagereward")
    tok = write_tiny_checkpoint(folder)
    return {"checkpoint": str(folder / "ImageReward.pt"), "med_config": str(folder / "med_config.json"),
            "tokenizer": str(tok)}


@pytest.fixture(scope="module")
def reward(files) -> ImageRewardScore:
    r = build("image_reward", {**files, "batch_size": 2})
    r.setup("cpu")
    return r


def u8(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8-valued float images (k / 255), as the service hands over a uint8 request."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g).float() / 255


def test_defaults_are_the_official_files_and_constructing_loads_nothing():
    r = build("image_reward")
    assert (r.checkpoint, r.med_config, r.tokenizer_path) == ("THUDM/ImageReward", "THUDM/ImageReward",
                                                              "bert-base-uncased")
    assert r.differentiable and r.info()["input_size"] == [224, 224]
    with pytest.raises(ValueError, match="dtype"):
        ImageRewardScore(dtype="float64")
    with pytest.raises(ValueError, match="batch_size"):
        ImageRewardScore(batch_size=0)


def test_hub_ids_resolve_to_the_official_file_names(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda repo, file: calls.append((repo, file)) or "x")
    convert.resolve("THUDM/ImageReward", convert.CHECKPOINT_FILE)
    convert.resolve("THUDM/ImageReward", convert.MED_CONFIG_FILE)
    convert.resolve("someone/fork/v2/ImageReward.pt", convert.CHECKPOINT_FILE)
    assert calls == [("THUDM/ImageReward", "ImageReward.pt"), ("THUDM/ImageReward", "med_config.json"),
                     ("someone/fork", "v2/ImageReward.pt")]
    (tmp_path / "ImageReward.pt").write_bytes(b"")
    assert convert.resolve(str(tmp_path), convert.CHECKPOINT_FILE) == str(tmp_path / "ImageReward.pt")
    assert convert.resolve(str(tmp_path / "ImageReward.pt"), "other") == str(tmp_path / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match="without med_config.json"):
        convert.resolve(str(tmp_path), convert.MED_CONFIG_FILE)
    with pytest.raises(FileNotFoundError, match="no such file"):
        convert.resolve("./missing.pt", convert.CHECKPOINT_FILE)


def test_unreachable_hub_says_what_was_looked_for(monkeypatch):
    def offline(repo, file):
        raise OSError("offline")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(FileNotFoundError, match="ImageReward.pt could not be fetched from the hub repo 'THUDM/ImageReward'"):
        convert.resolve("THUDM/ImageReward", convert.CHECKPOINT_FILE)


def test_every_original_key_is_converted_and_the_unused_ones_are_dropped():
    state = tiny_original_state(len(SPECIAL) + len(WORDS) + 2)
    out = convert.convert(state)
    assert "vision.embeddings.class_embedding" in out and "vision.post_layernorm.weight" in out
    assert "vision.encoder.layers.1.self_attn.projection.weight" in out
    assert "text.encoder.layer.1.crossattention.self.key.weight" in out and "mlp.layers.7.bias" in out
    assert not any("proj." in k and k.startswith("blip") for k in out) and len(out) == len(state) - 5


def test_a_checkpoint_missing_a_weight_is_refused_by_name(files, tmp_path):
    state = torch.load(files["checkpoint"], weights_only=True)
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.value.weight"]
    torch.save(state, tmp_path / "ImageReward.pt")
    r = ImageRewardScore(str(tmp_path / "ImageReward.pt"), files["med_config"], files["tokenizer"])
    with pytest.raises(ValueError, match=r"text\.encoder\.layer\.1\.crossattention\.self\.value\.weight"):
        r.setup("cpu")


def test_a_file_that_is_not_imagereward_is_refused(files, tmp_path):
    torch.save({"layers.0.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an ImageReward state dict"):
        ImageRewardScore(str(tmp_path / "other.pt"), files["med_config"], files["tokenizer"]).setup("cpu")


@dataclasses.dataclass
class NotATensor:
    payload: str = "code"


def test_a_checkpoint_that_needs_unpickling_code_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(1), "extra": NotATensor()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        convert.load_tensors(str(tmp_path / "bad.pt"))


def test_safetensors_and_wrapped_state_dicts_load(files, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(files["checkpoint"], weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"model": state}, tmp_path / "wrapped.pt")
    for name in ("w.safetensors", "wrapped.pt"):
        assert convert.load_tensors(str(tmp_path / name)).keys() == state.keys()


def test_med_config_it_cannot_run_is_refused(files, tmp_path):
    med = json.loads(Path(files["med_config"]).read_text())
    (tmp_path / "med_config.json").write_text(json.dumps(med | {"position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="position_embedding_type"):
        ImageRewardScore(files["checkpoint"], str(tmp_path), files["tokenizer"]).setup("cpu")


def test_tokens_are_blips_35_with_its_added_tokens(reward):
    ids, mask = reward.tokenize(["a Red cat", "a [ENC] cat", " ".join(["dog"] * 50)])
    word = {w: len(SPECIAL) + i for i, w in enumerate(WORDS)}
    assert ids.shape == (3, 35) and mask[0].sum() == 5
    assert ids[0, :6].tolist() == [101, word["a"], word["red"], word["cat"], 102, 0]  # uncased
    n = len(SPECIAL) + len(WORDS)  # [DEC], [ENC] follow the vocab, as on bert-base-uncased (30522, 30523)
    assert ids[1, 2].item() == n + 1
    assert ids[2, -1].item() == 102 and mask[2].all()  # truncated to 35 with [SEP] last


@pytest.mark.parametrize(("hw", "resized", "offsets"), [
    ((224, 224), (224, 224), (0, 0)),
    ((97, 300), (224, 692), (0, 234)),  # long side truncated: int(224 * 300 / 97) = 692
    ((320, 256), (280, 224), (28, 0)),
    ((225, 224), (225, 224), (0, 0)),  # round(0.5) = 0: Python's (and torchvision's) round half even
    ((227, 224), (227, 224), (2, 0)),  # round(1.5) = 2
])
def test_sizes_and_crop_offsets_follow_torchvision(hw, resized, offsets):
    assert resized_size(*hw) == resized
    assert crop_offsets(*resized) == offsets


def test_torch_preprocessing_equals_pil_at_224_and_stays_close_otherwise():
    x = u8(2, 224, 224)
    torch.testing.assert_close(TorchPixels()(x), pil_pixels(x), rtol=0, atol=1e-6)
    smooth = torch.nn.functional.interpolate(u8(2, 12, 16), size=(96, 128), mode="bilinear")
    diff = (TorchPixels()(smooth) - pil_pixels(smooth)).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1  # uint8 rounding in PIL, in normalised units


def test_scores_are_batch_size_invariant_and_both_paths_agree_at_224(reward, files):
    x = u8(3, 224, 224)
    with torch.inference_mode():
        a = reward.score(x, PROMPTS)
        whole = build("image_reward", {**files, "batch_size": 3})
        whole.setup("cpu")
        b = whole.score(x, PROMPTS)
    assert a.shape == (3,) and a.dtype == torch.float32 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        g = reward.score(xg, PROMPTS)
    assert g.requires_grad
    torch.testing.assert_close(g.detach(), a, rtol=0, atol=1e-5)
    assert len(set(np.round(a.numpy(), 4))) == 3  # prompt- and image-dependent


def test_gradient_matches_a_finite_difference(reward):
    x = 0.1 + 0.8 * torch.rand(2, 3, 100, 150, generator=torch.Generator().manual_seed(1))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        s = reward.score(xg, PROMPTS[:2])
    (g,) = torch.autograd.grad(s.sum(), xg)
    h = 1e-3
    with torch.enable_grad():  # the differentiable path, evaluated without keeping a graph
        plus = reward.score((x + h * v).requires_grad_(True), PROMPTS[:2]).detach()
        minus = reward.score((x - h * v).requires_grad_(True), PROMPTS[:2]).detach()
    fd = (plus - minus) / (2 * h)
    directional = (g * v).flatten(1).sum(1)
    torch.testing.assert_close(directional, fd, rtol=2e-2, atol=1e-3)
