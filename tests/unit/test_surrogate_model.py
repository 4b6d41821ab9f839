"""R_psi(z, c) on tiny random SD1.5 and SDXL pipelines (built locally, no downloads)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    DiffusionPipeline,
    LatentConsistencyModelPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from lasro_diffusion.text import TextCond, TextEncoderBundle
from surrogate_service.model import SurrogateReward, load_surrogate, score, score_and_grad
from tests.tiny_models import LATENT_SIZE

torch.set_num_threads(1)
PROMPTS = ["a red circle", "a blue square and a green triangle", "a cat"]
FAMILIES = ["sd", "sdxl"]


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def path(tiny_pipelines: dict[str, Path], family: str) -> Path:
    return tiny_pipelines[family]


@pytest.fixture
def loaded(path: Path) -> tuple[SurrogateReward, TextEncoderBundle]:
    return load_surrogate(str(path), head_channels=16)


def latents(batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, LATENT_SIZE, LATENT_SIZE, generator=g, dtype=dtype)  # (B, C, h, w)


def randomise_heads(model: SurrogateReward, seed: int = 1) -> None:
    """Give each head a different non-zero final layer (they start at exactly zero)."""
    torch.manual_seed(seed)
    for head in model.heads.values():
        torch.nn.init.normal_(head[-1].weight, std=0.5)
        torch.nn.init.normal_(head[-1].bias, std=0.5)


def test_tiny_pipelines_load_and_generate(tiny_pipelines: dict[str, Path], family: str) -> None:
    pipe = DiffusionPipeline.from_pretrained(tiny_pipelines[family])
    expected = {"sd": LatentConsistencyModelPipeline, "sdxl": StableDiffusionXLPipeline}[family]
    assert isinstance(pipe, expected)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        PROMPTS[:2],
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (2, 3, 2 * LATENT_SIZE, 2 * LATENT_SIZE)
    assert torch.isfinite(out).all()


def test_text_encoding_matches_pipeline(tiny_pipelines: dict[str, Path], family: str) -> None:
    path = tiny_pipelines[family]
    pipe = DiffusionPipeline.from_pretrained(path)
    cond = TextEncoderBundle(str(path)).encode(PROMPTS)
    if family == "sd":
        ref, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        assert cond.text_embeds is None and cond.time_ids is None
        torch.testing.assert_close(cond.encoder_hidden_states, ref, rtol=0, atol=0)
    else:
        ref, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
        assert ref.shape[-1] == 32 + 48
        torch.testing.assert_close(cond.encoder_hidden_states, ref, rtol=0, atol=0)
        torch.testing.assert_close(cond.text_embeds, pooled, rtol=0, atol=0)
        size = (2 * LATENT_SIZE, 2 * LATENT_SIZE)
        ids = pipe._get_add_time_ids(
            size, (0, 0), size, torch.float32, text_encoder_projection_dim=32
        )
        torch.testing.assert_close(cond.time_ids, ids.expand(len(PROMPTS), 6))
        wide = TextEncoderBundle(str(path)).encode(PROMPTS[:1], latent_size=(4, 6)).time_ids
        assert wide.tolist() == [[8.0, 12.0, 0.0, 0.0, 8.0, 12.0]]  # latent size * vae factor 2


def test_backbone_weights_equal_unet_at_init(path: Path, loaded) -> None:
    model, _ = loaded
    unet_sd = UNet2DConditionModel.from_pretrained(path, subfolder="unet").state_dict()
    bb_sd = model.backbone.state_dict()
    assert not any(k.startswith(("up_blocks", "conv_out", "conv_norm_out")) for k in bb_sd)
    for k, v in bb_sd.items():
        assert torch.equal(v, unet_sd[k]), k
    expected = [
        k
        for k in unet_sd
        if k.split(".")[0]
        in {"conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"}
        and ".cond_proj." not in k
    ]
    assert sorted(bb_sd) == sorted(expected)


def test_backbone_reproduces_unet_encoder_forward(path: Path, loaded) -> None:
    """Backbone features == the UNet's own mid-block output at the same timestep."""
    model, text = loaded
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").eval()
    captured = {}
    unet.mid_block.register_forward_hook(lambda m, i, o: captured.setdefault("mid", o))
    z, cond = latents(), text.encode(PROMPTS)
    added = None
    if cond.text_embeds is not None:
        added = {"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}
    with torch.no_grad():
        unet(z, model.backbone.timestep, cond.encoder_hidden_states, added_cond_kwargs=added)
        feats = model.backbone(z, cond)
    assert feats.shape == (3, 64, LATENT_SIZE // 2, LATENT_SIZE // 2)
    torch.testing.assert_close(feats, captured["mid"])


def test_scores_shape_finite_and_zero_at_init(loaded) -> None:
    model, text = loaded
    s = score(model, latents(), text.encode(PROMPTS), head=1)
    assert s.shape == (3,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    assert torch.equal(s, torch.zeros(3))  # zero-initialised final Linear
    randomise_heads(model)
    for head in (1, 2):
        s = score(model, latents(), text.encode(PROMPTS), head=head)
        assert s.shape == (3,) and torch.isfinite(s).all() and s.abs().sum() > 0


def test_heads_differ_and_prompt_matters(loaded) -> None:
    model, text = loaded
    z, cond = latents(), text.encode(PROMPTS)
    torch.testing.assert_close(score(model, z, cond, 1), score(model, z, cond, 2))  # both 0
    randomise_heads(model)
    assert not torch.allclose(score(model, z, cond, 1), score(model, z, cond, 2))
    other = text.encode(["a green dog"] * 3)
    assert not torch.allclose(score(model, z, cond, 1), score(model, z, other, 1))


def test_score_and_grad_equals_autograd(loaded) -> None:
    model, text = loaded
    randomise_heads(model)
    z, cond = latents(), text.encode(PROMPTS)
    s, g = score_and_grad(model, z, cond, head=2)
    leaf = z.clone().requires_grad_(True)
    ref_s = model(leaf, cond, 2)
    (ref_g,) = torch.autograd.grad(ref_s.sum(), leaf)
    assert g.shape == z.shape and g.dtype == z.dtype
    assert torch.equal(s, ref_s.detach()) and torch.equal(g, ref_g)
    assert g.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())  # no side effects on parameters


def test_grad_matches_finite_differences(loaded) -> None:
    model, text = loaded
    randomise_heads(model)
    m64 = copy.deepcopy(model).double()
    z = latents(dtype=torch.float64)
    cond = text.encode(PROMPTS).to(dtype=torch.float64)
    _, g = score_and_grad(m64, z, cond, head=1)
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 1e-5
    fd = (score(m64, z + eps * v, cond, 1) - score(m64, z - eps * v, cond, 1)).sum() / (2 * eps)
    analytic = (g * v).sum()
    torch.testing.assert_close(fd.double(), analytic, rtol=1e-4, atol=1e-7)
    # float32 model too, looser: what the service actually runs.
    _, g32 = score_and_grad(model, z.float(), cond.to(dtype=torch.float32), head=1)
    torch.testing.assert_close((g32.double() * v).sum(), analytic, rtol=2e-3, atol=1e-5)


def test_half_precision_latents_get_grad_in_their_dtype(loaded) -> None:
    model, text = loaded
    randomise_heads(model)
    s, g = score_and_grad(model, latents(dtype=torch.bfloat16), text.encode(PROMPTS), head=1)
    assert (
        g.dtype == torch.bfloat16 and s.dtype == torch.float32 and torch.isfinite(g.float()).all()
    )


def test_text_cache_hits(path: Path) -> None:
    text = TextEncoderBundle(str(path), cache_size=3)
    calls = []
    for enc in text.encoders:
        enc.register_forward_hook(lambda m, i, o: calls.append(1))
    n_enc = len(text.encoders)
    first = text.encode(PROMPTS + [PROMPTS[0]])  # duplicate in a batch is encoded once
    assert len(calls) == n_enc and text.cache_info()["misses"] == 3
    again = text.encode(list(reversed(PROMPTS)))
    assert len(calls) == n_enc and text.cache_info()["hits"] == 1 + 3
    torch.testing.assert_close(again.encoder_hidden_states[0], first.encoder_hidden_states[2])
    text.encode(["a new prompt"])  # evicts the least recently used (PROMPTS[2] was used first)
    assert len(calls) == 2 * n_enc and len(text._cache) == 3
    text.encode([PROMPTS[0], PROMPTS[1]])
    assert len(calls) == 2 * n_enc
    text.encode([PROMPTS[2]])
    assert len(calls) == 3 * n_enc


def _bad_inputs(model: SurrogateReward, cond: TextCond):
    z = latents()
    nan = z.clone()
    nan[0, 0, 0, 0] = float("nan")
    inf = z.clone()
    inf[1, 2, 3, 4] = float("inf")
    yield z, cond, 3, "head must be 1"
    yield z, cond, 0, "head must be 1"
    yield z, cond, 1.0, "head must be 1"
    yield z[:, :3], cond, 1, "channels"
    yield torch.randn(3, 4, 7, 8), cond, 1, "divisible by 2"
    yield nan, cond, 1, "NaN or Inf"
    yield inf, cond, 1, "NaN or Inf"
    yield z[:2], cond, 1, "prompts"
    yield z[0], cond, 1, r"\(B, C, h, w\)"
    yield z.long(), cond, 1, "floating point"
    bad_dim = TextCond(cond.encoder_hidden_states[..., :8], cond.text_embeds, cond.time_ids)
    yield z, bad_dim, 1, "cross_attention_dim"
    if cond.text_embeds is not None:
        yield z, TextCond(cond.encoder_hidden_states), 1, "text_embeds and time_ids"
        yield (
            z,
            TextCond(cond.encoder_hidden_states, cond.text_embeds, cond.time_ids[:, :5]),
            1,
            "time_ids",
        )


def test_invalid_inputs_raise_value_error(loaded) -> None:
    model, text = loaded
    cond = text.encode(PROMPTS)
    for z, c, head, match in _bad_inputs(model, cond):
        with pytest.raises(ValueError, match=match):
            score(model, z, c, head)
        with pytest.raises(ValueError, match=match):
            score_and_grad(model, z, c, head)
    with pytest.raises(ValueError, match="list of strings"):
        text.encode("a red circle")


def _bt_training(model: SurrogateReward, text: TextEncoderBundle, steps: int = 12) -> list[float]:
    g = torch.Generator().manual_seed(7)
    z_w = torch.randn(6, 4, LATENT_SIZE, LATENT_SIZE, generator=g)  # (N, C, h, w) winners
    z_l = torch.randn(6, 4, LATENT_SIZE, LATENT_SIZE, generator=g)  # (N, C, h, w) losers
    cond = text.encode(PROMPTS * 2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for step in range(steps):
        head = 1 + step % 2  # alternate heads: both share the backbone
        loss = -F.logsigmoid(model(z_w, cond, head) - model(z_l, cond, head)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_bradley_terry_training_lowers_loss(path: Path, loaded) -> None:
    model, text = loaded
    before = copy.deepcopy(model.state_dict())
    losses = _bt_training(model, text)
    assert abs(losses[0] - torch.log(torch.tensor(2.0)).item()) < 1e-6  # scores start at 0
    assert losses[-1] < losses[0] - 0.05 and losses[-2] < losses[1] - 0.05
    after = model.state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"backbone", "heads"}  # end to end by default


def test_freeze_backbone_trains_heads_only(path: Path) -> None:
    model, text = load_surrogate(str(path), head_channels=16, freeze_backbone=True)
    before = copy.deepcopy(model.state_dict())
    losses = _bt_training(model, text, steps=8)
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("backbone."))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("heads."))


def test_state_dict_round_trip(path: Path, loaded) -> None:
    model, text = loaded
    randomise_heads(model, seed=5)
    _bt_training(model, text, steps=2)
    model.eval()
    fresh, _ = load_surrogate(str(path), head_channels=16)
    z, cond = latents(), text.encode(PROMPTS)
    assert not torch.equal(score(fresh, z, cond, 1), score(model, z, cond, 1))
    fresh.load_state_dict(model.state_dict())
    for head in (1, 2):
        assert torch.equal(score(fresh, z, cond, head), score(model, z, cond, head))


def test_constructor_from_in_memory_unet_copies(path: Path) -> None:
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    model = SurrogateReward(unet, timestep=10, head_channels=8)
    assert model.config["timestep"] == 10 and unet.time_embedding.cond_proj is not None
    assert model.backbone.conv_in.weight.data_ptr() != unet.conv_in.weight.data_ptr()


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_cnn_backbone_ablation_has_the_unet_encoders_interface(tiny_pipelines, family: str) -> None:
    """backbone='cnn': same input, same heads and validation, no base-model weights, trainable."""
    unet_model, text = load_surrogate(str(tiny_pipelines[family]), head_channels=16)
    cnn_model, _ = load_surrogate(str(tiny_pipelines[family]), head_channels=16, backbone="cnn")
    assert cnn_model.config["backbone"] == "cnn" and unet_model.config["backbone"] == "unet_encoder"
    assert cnn_model.backbone.num_downsamplings == unet_model.backbone.num_downsamplings
    z = torch.randn(2, 4, 8, 8)
    cond = text.encode(["a red circle", "a blue square"], (8, 8))
    scores, grad = score_and_grad(cnn_model, z, cond, 2)
    assert scores.shape == (2,) and grad.shape == z.shape
    with pytest.raises(ValueError, match="channels"):
        cnn_model(torch.randn(2, 3, 8, 8), cond, 2)  # the same validation as the UNet backbone
    torch.nn.init.normal_(cnn_model.heads["2"][-1].weight)  # heads start at zero; give it a slope
    cnn_model(z, cond, 2).sum().backward()
    assert all(p.grad is not None for p in cnn_model.backbone.parameters())
    # nothing of the base UNet's weights: its conv_in differs in shape or value
    a, b = unet_model.backbone.conv_in.weight, cnn_model.backbone.conv_in.weight
    assert a.shape != b.shape or not torch.equal(a, b)
