"""ImageReward (Xu et al. 2023, THUDM/ImageReward): the LaSRO paper's main reward.

The `image-reward` package pins a 2023 stack (timm 0.6.13, fairscale, OpenAI `clip`, an old
transformers whose `modeling_utils` still re-exports `apply_chunking_to_forward`), which does not
import beside this project's torch / transformers. So this adapter only imports it in `setup`
and is meant to run in its own image (docker/imagereward/); elsewhere `setup` fails with a
message that says so. Scoring goes through PIL, as the package does: not differentiable.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lasro_common.images import to_uint8_hwc

from .base import Reward

INSTALL_HINT = ("ImageReward needs the `image-reward` package and its pinned 2023 stack, which "
                "cannot share an environment with this project's torch/transformers: run the "
                "reward-imagereward image (docker/imagereward/, see docs/rewards.md) or install "
                "docker/imagereward/requirements.txt into a separate environment")


class ImageRewardScore(Reward):
    name = "image_reward"
    description = ("ImageReward v1.0 (THUDM): BLIP-based human-preference reward, roughly N(0, 1) "
                   "over generated images; needs the imagereward image; not differentiable.")
    input_size = (224, 224)

    def __init__(self, model: str = "ImageReward-v1.0", download_root: str | None = None,
                 batch_size: int = 16):
        # model: a name ImageReward.load knows (downloaded to download_root) or a local .pt path
        self.model_name, self.download_root, self.batch_size = model, download_root, batch_size

    def setup(self, device: str) -> None:
        try:
            import ImageReward as RM  # noqa: N813 - the package's own spelling
        except Exception as e:  # ImportError, or the package's own imports breaking on new transformers
            raise RuntimeError(f"{INSTALL_HINT} (import failed: {type(e).__name__}: {e})") from None
        self.model = RM.load(self.model_name, device=device, download_root=self.download_root)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pil = [Image.fromarray(a) for a in to_uint8_hwc(images.detach().cpu().numpy())]
        out = np.zeros(len(pil), dtype=np.float32)
        # ImageReward.score takes one prompt and a list of images: group images by prompt.
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        with torch.no_grad():
            for prompt, idx in groups.items():
                for j in range(0, len(idx), self.batch_size):
                    chunk = idx[j : j + self.batch_size]
                    # a one-image list comes back as a bare float (the package squeezes)
                    res = np.atleast_1d(np.asarray(self.model.score(prompt, [pil[k] for k in chunk]),
                                                   dtype=np.float32))
                    out[chunk] = res
        return torch.from_numpy(out)
