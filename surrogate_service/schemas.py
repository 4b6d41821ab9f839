"""Response shapes and OpenAPI request descriptions of the surrogate service."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ScoreResponse(BaseModel):
    scores: list[float] = Field(..., description="R_psi(z, c) per latent.")
    version: int = Field(..., description="Surrogate weights version that produced the scores.")


class StatusResponse(BaseModel):
    version: int
    base_model: str
    learning: bool
    learner: dict[str, Any] | None = Field(None, description="Buffer size, updates, held-out pair accuracy, stream lag...")
    following: dict[str, Any] | None = Field(None, description="Read replica: the folder followed and its last error.")
    redis: dict[str, Any] | None = Field(None, description="The learner's Redis: its URL (password hidden); for the private "
                                                           "redis-server also its folder, pid, restarts and any problem.")


LATENT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/x-safetensors": {"schema": {
            "type": "string", "format": "binary",
            "description": "safetensors with 'latents' (B, C, h, w) float16/float32; __metadata__ 'prompts' "
                           "(JSON list of B strings) and 'head' (1 = one-step outputs, 2 = two-step outputs)."}}},
    }
}
