"""Request and response shapes of the reward service, for validation docs and OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ScoreJSON(BaseModel):
    """The JSON form of POST /score (the safetensors form carries the same fields as metadata)."""

    images: list[str] = Field(..., description="Base64 PNG or JPEG images (data: URLs accepted), all the same size.")
    prompts: list[str] | None = Field(None, description="One prompt per image; empty strings if omitted.")
    reward: str | dict[str, float] | None = Field(
        None, description="A reward name, or {name: weight} for a weighted sum. Defaults to the first loaded reward.")
    metadata: list[dict[str, Any] | None] | None = Field(
        None, description="One object per image (GenEval-style per-sample metadata), passed to rewards whose "
                          "score takes `metadata`; ignored by the others.")


class ScoreResponse(BaseModel):
    scores: list[float] = Field(..., description="One score per image (the weighted sum of components).")
    components: dict[str, list[float]] = Field(..., description="Unweighted scores per component reward.")
    reward: dict[str, float] = Field(..., description="The weights that were applied.")
    version: str = Field(..., description="name@version of each component, joined by '+'.")
    versions: dict[str, str]
    timing_ms: dict[str, float]


class RewardInfo(BaseModel):
    name: str
    description: str
    differentiable: bool
    input_size: list[int] | None = Field(None, description="(H, W) the reward works at; None = any size.")
    value_range: list[float | None]
    version: str
    metadata: bool = Field(False, description="Whether the reward reads per-sample metadata.")


SCORE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ScoreJSON.model_json_schema(ref_template="#/components/schemas/{model}")},
            "application/x-safetensors": {"schema": {
                "type": "string", "format": "binary",
                "description": "safetensors with 'images' (B, 3, H, W) uint8 or float32 in [0, 1]; "
                               "__metadata__ 'prompts' (JSON list), 'reward' (name or JSON object) and "
                               "'metadata' (JSON list of B objects)."}},
        },
    }
}
