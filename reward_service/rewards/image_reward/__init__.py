"""ImageReward (Xu et al. 2023, THUDM/ImageReward), the LaSRO paper's main reward, run natively on
this project's torch / transformers: no `image-reward` package, no OpenAI `clip`.

- `reward.py`: the `image_reward` reward (options `checkpoint`, `med_config`, `tokenizer`).
- `model.py`: the network on transformers' BLIP vision and text models + the MLP head.
- `convert.py`: the official `ImageReward.pt` / `med_config.json` (local or hub) -> our keys.
- `preprocess.py`: the package's PIL preprocessing, exactly, and its differentiable equivalent.

tests/integration/test_image_reward_parity.py proves equality with the original package.
"""

from .reward import ImageRewardScore

__all__ = ["ImageRewardScore"]
