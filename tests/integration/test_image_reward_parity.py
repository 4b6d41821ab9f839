"""ImageReward, native, against the original `image-reward==1.5` package, through the real service.

The slow test builds (or reuses) the reference venv (tests/imagereward_ref/venv.py: the package on
torch 2.1.2 / transformers 4.30 / timm 0.6.13 from PyPI), where reference.py builds the original
ViT-L + BERT model with seeded random weights, saves the official ImageReward.pt +
med_config.json, and scores PIL images and d score / d pixels. The service loads that file by
path, and /score and /grad must agree within 1e-4. The fast test serves a tiny checkpoint in the
same format from the `python -m reward_service` command line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from reward_service.app import create_app
from reward_service.client import RewardClient
from reward_service.rewards import build
from reward_service.rewards.image_reward.preprocess import pil_pixels
from reward_service.settings import RewardSettings
from tests.imagereward_ref import PARITY_PROMPTS, parity_images, write_tiny_checkpoint, write_vocab
from tests.imagereward_ref import venv as ref_venv

ST = {"Content-Type": SAFETENSORS_MEDIA_TYPE}
REFERENCE = Path(__file__).parents[1] / "imagereward_ref" / "reference.py"
TOL = 1e-4


def chw(images: list[np.ndarray], idx: list[int]) -> np.ndarray:
    return np.stack([images[i] for i in idx]).transpose(0, 3, 1, 2).copy()  # (b, 3, H, W) uint8


def post_grad(url: str, x: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    r = httpx.post(f"{url}/grad", content=codec.encode({"images": x}, {"prompts": prompts, "reward": "image_reward"}),
                   headers=ST, timeout=900)
    assert r.status_code == 200, r.text
    return codec.decode(r.content).tensors


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    try:
        python = ref_venv.ensure()
    except ref_venv.RefUnavailable as e:
        pytest.skip(f"the ImageReward reference venv cannot be built here: {e}")
    work = tmp_path_factory.mktemp("imagereward_ref")
    write_vocab(work / "tokenizer")
    images = parity_images()
    np.savez(work / "inputs.npz", **{f"img{i}": a for i, a in enumerate(images)})
    (work / "prompts.json").write_text(json.dumps(PARITY_PROMPTS, ensure_ascii=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # nothing to fetch: prove it
    res = subprocess.run([str(python), str(REFERENCE), str(work)], capture_output=True, text=True,
                         timeout=1500, cwd=work, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    versions = json.loads((work / "versions.json").read_text())
    return work, images, dict(np.load(work / "reference.npz")), versions


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_parity_with_the_original_package_through_the_service(reference, serve):
    work, images, ref, versions = reference
    options = {"checkpoint": str(work / "ImageReward.pt"), "med_config": str(work / "med_config.json"),
               "tokenizer": str(work / "tokenizer")}
    app = create_app(RewardSettings(rewards=["image_reward"], reward_options={"image_reward": options},
                                    max_side=512, request_timeout_s=900))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the server thread does all the work while the test waits
    try:
        url = serve(app)
        assert app.state.rewards.ready.wait(900), app.state.rewards.error
        reward = app.state.rewards.rewards["image_reward"]
        # the same token ids (synthetic vocab, bert-base-uncased's special ids) and the same pixels
        ids, mask = reward.tokenize(PARITY_PROMPTS)
        np.testing.assert_array_equal(ids.numpy(), ref["input_ids"])
        np.testing.assert_array_equal(mask.numpy(), ref["attention_mask"])
        for i in range(len(images)):
            px = pil_pixels(torch.from_numpy(chw(images, [i])).float() / 255)
            np.testing.assert_array_equal(px.numpy()[0], ref["pixels"][i])

        groups: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(images):
            groups.setdefault(a.shape[:2], []).append(i)
        scores, tensor_scores = np.zeros(len(images)), np.zeros(len(images))
        grads: dict[int, np.ndarray] = {}
        with RewardClient(url, timeout=900) as rc:
            for idx in groups.values():  # one request per image size, uint8 as the PIL images
                prompts = [PARITY_PROMPTS[i] for i in idx]
                scores[idx] = rc.score(chw(images, idx), prompts, reward="image_reward").scores
                out = post_grad(url, chw(images, idx).astype(np.float32) / 255, prompts)
                tensor_scores[idx] = out["scores"]
                grads |= {i: g for i, g in zip(idx, out["grad"], strict=True)}
    finally:
        torch.set_num_threads(threads)

    d_score = np.abs(scores - ref["scores"]).max()
    d_tensor = np.abs(tensor_scores - ref["tensor_scores"]).max()
    d_grad = max(np.abs(grads[i] - ref[f"grad{i}"]).max() for i in grads)
    g_max = max(np.abs(ref[f"grad{i}"]).max() for i in grads)
    print(f"\nImageReward parity vs {versions}: /score max|diff| {d_score:.2e}, /grad scores {d_tensor:.2e}, "
          f"grads {d_grad:.2e} (max |grad| {g_max:.2e}); reference scores {np.round(ref['scores'], 4).tolist()}; "
          f"/score vs /grad scores (PIL vs torch resampling) max|diff| {np.abs(scores - tensor_scores).max():.2e}")
    assert np.ptp(ref["scores"]) > 0.1  # the random weights give image- and prompt-dependent scores
    assert d_score <= TOL and d_tensor <= TOL
    assert d_grad <= TOL and d_grad <= 1e-3 * g_max  # absolute, and relative to the gradient's size
    assert np.abs(scores - tensor_scores)[[0, 1]].max() <= TOL  # 224 x 224 uint8: the two paths agree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tiny_imagereward")
    tok = write_tiny_checkpoint(folder)
    return {"checkpoint": str(folder / "ImageReward.pt"), "med_config": str(folder / "med_config.json"),
            "tokenizer": str(tok)}


def test_command_line_serves_score_and_grad_from_local_files(tiny):
    port = free_port()
    cmd = [sys.executable, "-m", "reward_service", "--port", str(port), "--reward", "image_reward",
           "--reward-options", json.dumps({"image_reward": tiny})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the reward service did not get ready in 180 s"
            time.sleep(0.5)
        x = np.random.default_rng(0).integers(0, 256, (2, 3, 96, 128), dtype=np.uint8)
        prompts = ["a red cat", "a photo of a dog"]
        with RewardClient(url) as rc:
            info = {r["name"]: r for r in rc.rewards()}["image_reward"]
            assert info["differentiable"] is True and info["input_size"] == [224, 224]
            served = rc.score(x, prompts, reward="image_reward").scores
        out = post_grad(url, x.astype(np.float32) / 255, prompts)
    finally:
        proc.terminate()
        proc.wait(30)
    local = build("image_reward", tiny)
    local.setup("cpu")
    with torch.inference_mode():
        expected = local.score(torch.from_numpy(x).float() / 255, prompts).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert out["grad"].shape == x.shape and np.abs(out["grad"]).max() > 0
    np.testing.assert_allclose(out["scores"], expected, atol=0.05)  # torch resampling vs PIL's


def test_reward_options_from_the_environment(tiny, serve, monkeypatch):
    monkeypatch.setenv("REWARD_REWARDS", '["image_reward"]')
    monkeypatch.setenv("REWARD_REWARD_OPTIONS", json.dumps({"image_reward": tiny}))
    app = create_app(RewardSettings())
    url = serve(app)
    assert app.state.rewards.ready.wait(120), app.state.rewards.error
    x = np.full((1, 3, 224, 224), 128, np.uint8)
    with RewardClient(url) as rc:
        s = rc.score(x, ["a red cat"], reward="image_reward").scores
    g = post_grad(url, x.astype(np.float32) / 255, ["a red cat"])
    np.testing.assert_allclose(g["scores"], s, atol=1e-5)  # 224 x 224 uint8: /score and /grad agree
