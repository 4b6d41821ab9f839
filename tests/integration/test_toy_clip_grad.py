"""The toy CLIP reward through the real reward service: POST /grad and /score on uvicorn, the
committed toyworld/models/toy-clip loaded by name."""

from __future__ import annotations

import httpx
import numpy as np
import torch

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from reward_service.app import create_app
from reward_service.rewards import build
from reward_service.settings import RewardSettings
from tests.unit.test_toy_clip import heldout_images

ST = {"Content-Type": SAFETENSORS_MEDIA_TYPE}


def test_grad_of_toy_clip_through_the_service_equals_in_process_autograd(serve):
    app = create_app(RewardSettings(max_batch=16, max_side=64),
                     rewards=[build("toy_clip", {"batch_size": 4}), build("toy_attribute_binding")])
    url = serve(app)
    assert app.state.rewards.ready.wait(60), app.state.rewards.error
    x, caps = heldout_images()
    x, caps = x[16:22], caps[16:22]  # singles and pairs
    r = httpx.post(f"{url}/grad", content=codec.encode({"images": x.numpy()}, {"prompts": caps, "reward": "toy_clip"}),
                   headers=ST, timeout=60)
    assert r.status_code == 200, r.text
    out = codec.decode(r.content)
    assert out.metadata["version"] == "toy_clip@1"
    assert out.tensors["grad"].shape == (6, 3, 32, 32) and np.isfinite(out.tensors["grad"]).all()

    local = build("toy_clip")
    local.setup("cpu")
    xg = x.clone().requires_grad_(True)
    s = local.score(xg, caps)
    (g,) = torch.autograd.grad(s.sum(), xg)
    np.testing.assert_allclose(out.tensors["scores"], s.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.tensors["grad"], g.numpy(), rtol=1e-3, atol=1e-6)

    # /score gives the same numbers; the checker (not differentiable) is refused by /grad
    sc = httpx.post(f"{url}/score", content=codec.encode({"images": x.numpy()}, {"prompts": caps, "reward": "toy_clip"}),
                    headers=ST, timeout=60)
    np.testing.assert_allclose(sc.json()["scores"], out.tensors["scores"], rtol=1e-4, atol=1e-5)
    bad = httpx.post(f"{url}/grad", content=codec.encode({"images": x.numpy()},
                                                         {"prompts": caps, "reward": "toy_attribute_binding"}),
                     headers=ST, timeout=60)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "not_differentiable"
    listed = {r["name"]: r for r in httpx.get(f"{url}/rewards", timeout=10).json()}
    assert listed["toy_clip"]["differentiable"] is True and listed["toy_clip"]["input_size"] == [32, 32]
