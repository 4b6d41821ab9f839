"""The toy CLIP reward (toyworld/clip.py, `toy_clip`): the committed model, its score and its
gradient, and the training code (hard negatives, determinism, resume) on a few steps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reward_service.rewards import build
from toyworld import captions, clip_data, clip_train, data, paths
from toyworld.clip import CLIP_DIR, ToyClip, new_model
from toyworld.clip_eval import mismatches


@pytest.fixture(scope="module")
def reward():
    r = build("toy_clip")
    r.setup("cpu")
    return r


def heldout_images(seed: int = 1) -> tuple[torch.Tensor, list[str]]:
    """One dataset image per held-out caption (18 singles, 15 seen pairs, 15 unseen pairs)."""
    caps = captions.heldout_captions()
    x = np.stack([data.draw_scene(s) for s in data.scenes_for_captions(caps, seed)])
    return torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2) / 255.0), caps


def test_committed_folder_is_small_safetensors_and_trained_on_the_toy_text_encoder():
    files = {p.relative_to(CLIP_DIR).as_posix(): p for p in CLIP_DIR.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "text_encoder/model.safetensors"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))], "no pickle files"
    assert sum(p.stat().st_size for p in files.values()) < 5 * 2**20
    # its text tower is the toy pipelines' text encoder itself (frozen, copied)
    ours = load_file(CLIP_DIR / "text_encoder" / "model.safetensors")
    lcm = load_file(paths.LCM_DIR / "text_encoder" / "model.safetensors")
    assert ours.keys() == lcm.keys() and all(torch.equal(ours[k], lcm[k]) for k in ours)


def test_reward_loads_the_committed_folder_through_the_same_loader(reward):
    info = reward.info()
    assert info["name"] == "toy_clip" and info["differentiable"] is True and info["value_range"] == [-1.0, 1.0]
    direct = ToyClip.from_pretrained(CLIP_DIR)
    x, caps = heldout_images()
    with torch.no_grad():
        torch.testing.assert_close(reward.score(x, caps), direct.score(x, caps))


def test_scores_are_cosines_in_range_and_do_not_depend_on_the_batch(reward):
    x, caps = heldout_images()
    x = torch.cat([x[:8], torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.zeros(2, 3, 32, 32)])
    prompts = caps[:8] + caps[:4] + caps[:2]
    with torch.no_grad():
        s = reward.score(x, prompts)
        one_by_one = torch.cat([reward.score(x[i : i + 1], prompts[i : i + 1]) for i in range(len(x))])
    assert s.shape == (14,) and s.dtype == torch.float32
    assert (s.abs() <= 1 + 1e-6).all()
    torch.testing.assert_close(s, one_by_one, atol=1e-5, rtol=1e-5)
    scaled = build("toy_clip", {"scale": 100.0, "batch_size": 3})
    scaled.setup("cpu")
    with torch.no_grad():
        torch.testing.assert_close(scaled.score(x, prompts), 100 * s, atol=1e-3, rtol=1e-4)
    assert scaled.info()["value_range"] == [-100.0, 100.0]


def test_matching_captions_beat_mismatched_ones_on_heldout_captions(reward):
    """Dataset images of the 48 held-out captions (15 are object pairs never seen together in
    training): their own caption beats every kind of wrong binding."""
    x, caps = heldout_images()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        own = reward.score(x, caps)
        for kind in ("swap", "colour", "shape", "drop", "extra"):
            idx = [i for i, c in enumerate(caps) if kind in mismatches(c, np.random.default_rng(i))]
            wrong = [mismatches(caps[i], np.random.default_rng(i))[kind] for i in idx]
            other = reward.score(x[idx], wrong)
            assert (own[idx] > other).float().mean() >= 0.95, kind
            assert (own[idx] - other).mean() > 0.15, kind
        shuffled = reward.score(x, [caps[j] for j in rng.permutation(len(caps))])
    assert own.mean() > 0.7 and own.mean() - shuffled.mean() > 0.4


def test_blank_and_noise_images_score_far_below_matching_ones(reward):
    x, caps = heldout_images()
    with torch.no_grad():
        own = reward.score(x, caps).mean()
        for blank in (torch.zeros_like(x), torch.full_like(x, 0.5), torch.ones_like(x),
                      torch.rand(x.shape, generator=torch.Generator().manual_seed(0))):
            assert reward.score(blank, caps).mean() < own - 0.4
        # brightness the checker ignores moves the score little
        assert abs(reward.score(x * 0.8, caps).mean() - own) < 0.05


def test_gradient_is_finite_nonzero_and_first_order_correct(reward):
    x, caps = heldout_images()
    x = x[18:26].clone().requires_grad_(True)  # two-object scenes
    s = reward.score(x, caps[18:26])
    (g,) = torch.autograd.grad(s.sum(), x)
    assert torch.isfinite(g).all() and (g.flatten(1).norm(dim=1) > 1e-4).all()
    # most of the gradient sits on and around the objects, not on far background
    near = torch.nn.functional.max_pool2d((x.detach().amax(1, keepdim=True) > 0.1).float(), 5, 1, 2)
    share = (g.abs().sum(1, keepdim=True) * near).flatten(1).sum(1) / g.abs().flatten(1).sum(1)
    assert (share > 0.5).all(), share
    # a small step along the gradient changes the score by <grad, step> (finite differences)
    d = 1e-3 * g / g.flatten(1).norm(dim=1)[:, None, None, None]
    with torch.no_grad():
        ds = reward.score(x.detach() + d, caps[18:26]) - reward.score(x.detach() - d, caps[18:26])
    torch.testing.assert_close(ds / 2, (g * d).flatten(1).sum(1), rtol=0.05, atol=1e-6)


def test_other_image_sizes_are_resized(reward):
    x, caps = heldout_images()
    big = torch.nn.functional.interpolate(x[:4], size=(64, 64), mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(reward.score(big, caps[:4]), reward.score(x[:4], caps[:4]), atol=0.05, rtol=0)


def test_bad_options_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match="batch_size"):
        build("toy_clip", {"batch_size": 0})
    with pytest.raises(ValueError, match="scale"):
        build("toy_clip", {"scale": 0})
    with pytest.raises(FileNotFoundError, match="build --stages clip"):
        ToyClip.from_pretrained(paths.MODELS_DIR / "lcm")
    m = ToyClip.from_pretrained()
    with pytest.raises(ValueError, match="prompts"):
        m.score(torch.zeros(2, 3, 32, 32), ["a red circle"])


def test_hard_negatives_keep_the_heldout_pairs_out_of_training():
    universe = {clip_data.key(captions.parse_caption(c)) for c in clip_data.train_captions()}
    assert len(clip_data.train_captions()) == 18 + 2 * len(captions.TRAIN_PAIRS)
    assert not universe & {frozenset(p) for p in captions.HELDOUT_PAIRS}
    red_circle_blue_square = [("red", "circle"), ("blue", "square")]
    negs = clip_data.hard_negatives(red_circle_blue_square)
    if clip_data.allowed([("blue", "circle"), ("red", "square")]):
        assert negs[0] == [("blue", "circle"), ("red", "square")]  # the binding swap comes first
    assert all(clip_data.allowed(n) and clip_data.key(n) != clip_data.key(red_circle_blue_square) for n in negs)
    for step in range(3):
        b = clip_data.draw_batch(16, 7, step)
        for objs in b["objs"] + b["neg_objs"]:
            assert clip_data.allowed(objs)
        assert all(clip_data.key(a) != clip_data.key(n) for a, n in zip(b["objs"], b["neg_objs"], strict=True))
        again = clip_data.draw_batch(16, 7, step)
        assert all(np.array_equal(b[k], again[k]) for k in ("images", "neg_images", "malformed"))


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    cfg = replace(clip_train.ClipTrainConfig(), steps=4, batch=6, warmup=2, ckpt_every=2)

    def fresh():
        torch.manual_seed(0)
        return new_model(paths.LCM_DIR)

    straight = fresh()
    log = clip_train.train(straight, cfg, tmp_path / "a", log_every=1)
    assert len(log) == 4 and all(np.isfinite(r["loss"]) for r in log)
    half = fresh()
    clip_train.train(half, replace(cfg, steps=2), tmp_path / "b", log_every=1)
    resumed = fresh()  # a new process: fresh weights, then the checkpoint
    clip_train.train(resumed, cfg, tmp_path / "b", log_every=1)
    for k, v in straight.own_state_dict().items():
        torch.testing.assert_close(resumed.own_state_dict()[k], v, rtol=0, atol=0)
    resumed.save_pretrained(tmp_path / "saved")
    loaded = ToyClip.from_pretrained(tmp_path / "saved")
    x, caps = heldout_images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(x[:4], caps[:4]), resumed.score(x[:4], caps[:4]))
