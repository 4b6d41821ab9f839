"""The Redis record for sample groups (trainer -> surrogate learner), versioned.

One stream entry = one group: one prompt, N latents of one sampling step, their true rewards.
Fields: `v` (record version), `data` (a safetensors body: `latents` (N, C, h, w) float16/32 and
`rewards` (N,) float32; metadata prompt, step, sampler_version, reward, model, group_id, created).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from .. import codec
from ..errors import InvalidInput, MalformedBody

RECORD_VERSION = 1
DEFAULT_STREAM = "lasro:groups"
DEAD_LETTER_SUFFIX = ":dead"


@dataclass
class SampleGroup:
    prompt: str
    step: int  # 1 = one-step output z1, 2 = two-step output z2
    latents: np.ndarray  # (N, C, h, w)
    rewards: np.ndarray  # (N,) float32, the true (black-box) reward
    sampler_version: int = 0  # trainer iteration that produced the latents
    reward: str = ""  # name of the true reward
    model: str = ""  # base model id or path
    group_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.latents = np.asarray(self.latents)
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        if self.step not in (1, 2):
            raise InvalidInput(f"step must be 1 or 2, got {self.step}")
        if self.latents.ndim != 4 or self.rewards.shape != (self.latents.shape[0],):
            raise InvalidInput(
                f"latents (N, C, h, w) and rewards (N,) disagree: {self.latents.shape} vs {self.rewards.shape}"
            )
        if not (np.isfinite(self.rewards).all() and np.isfinite(self.latents).all()):
            raise InvalidInput("a sample group holds NaN or Inf")

    def to_fields(self) -> dict[str, bytes | str | int]:
        meta = {"prompt": self.prompt, "step": self.step, "sampler_version": self.sampler_version,
                "reward": self.reward, "model": self.model, "group_id": self.group_id,
                "created": self.created}
        return {"v": RECORD_VERSION, "data": codec.encode(
            {"latents": self.latents, "rewards": self.rewards}, meta)}

    @classmethod
    def from_fields(cls, fields: dict) -> SampleGroup:
        f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        version = int(f.get("v", -1))
        if version != RECORD_VERSION:
            raise MalformedBody(f"sample group record version {version}, expected {RECORD_VERSION}")
        if "data" not in f:
            raise MalformedBody("sample group record has no data field")
        d = codec.decode(f["data"])
        m = d.metadata
        try:
            return cls(prompt=str(m["prompt"]), step=int(m["step"]), latents=d.tensors["latents"],
                       rewards=d.tensors["rewards"], sampler_version=int(m.get("sampler_version", 0)),
                       reward=str(m.get("reward", "")), model=str(m.get("model", "")),
                       group_id=str(m["group_id"]), created=float(m.get("created", 0.0)))
        except KeyError as e:
            raise MalformedBody(f"sample group record lacks {e}") from None
