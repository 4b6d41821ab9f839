"""S: normalisation and clipping of the surrogate's gradients (LaSRO's S[·]; formula ours).

The paper says S "normalises and clips, tracking moving averages and maxima" and gives no
formula, nor whether it acts on reward values or gradients. We apply it to the per-sample
gradient g_i = dR/dz_i that the surrogate serves, because that is what enters the update
(−⟨S(g), z⟩), and because its scale drifts as R_psi is re-trained and differs between rewards
(JPEG kB vs [0, 1]). Documented in docs/paper-deviations.md; switchable by `normalizer`.

    ema_norm (default): S(g_i) = g_i / m · min(1, clip / (‖g_i‖ / m)),  m = EMA of mean ‖g‖
    max_norm:           S(g_i) = g_i / M,  M = running max of ‖g‖ (decayed)
    none:               S(g) = g
"""

from __future__ import annotations

import torch

KINDS = ("ema_norm", "max_norm", "none")


class GradNormalizer:
    def __init__(self, kind: str = "ema_norm", *, decay: float = 0.9, clip: float = 3.0, eps: float = 1e-12):
        if kind not in KINDS:
            raise ValueError(f"normalizer must be one of {KINDS}, got {kind!r}")
        if not 0 <= decay < 1 or clip <= 0:
            raise ValueError("normalizer decay must be in [0, 1) and clip > 0")
        self.kind, self.decay, self.clip, self.eps = kind, decay, clip, eps
        self.ema: float | None = None  # moving average of the batch-mean gradient norm
        self.max: float = 0.0  # slowly decaying running maximum of per-sample norms

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """g (B, C, h, w) -> S(g), same shape; updates the running statistics."""
        if self.kind == "none":
            return g
        norms = g.flatten(1).norm(dim=1).float()  # (B,)
        mean = float(norms.mean())
        self.ema = mean if self.ema is None else self.decay * self.ema + (1 - self.decay) * mean
        self.max = max(float(norms.max()), self.max * self.decay)
        if self.kind == "max_norm":
            return g / max(self.max, self.eps)
        m = max(self.ema, self.eps)
        scale = (1.0 / m) * torch.clamp(self.clip / (norms / m).clamp_min(self.eps), max=1.0)  # (B,)
        return g * scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "decay": self.decay, "clip": self.clip, "ema": self.ema, "max": self.max}

    def load_state_dict(self, state: dict) -> None:
        self.kind, self.decay, self.clip = state["kind"], state["decay"], state["clip"]
        self.ema, self.max = state["ema"], state["max"]
