"""flow_grpo's reward-server dialect (also ddpo-pytorch's, and the OCR / GenEval / VLM servers that
"follow flow_grpo's interface"), served at `--flow-grpo-route PATH`.

Their client (flow_grpo/rewards.py, ddpo_pytorch/rewards.py) POSTs `pickle.dumps(dict)` with no
Content-Type:

    images       list of JPEG (or PNG) files as bytes, all one size (PIL's default quality 75)
    prompts      list of str, or the numpy str array np.array_split leaves   (or `queries`)
    meta_datas   per-sample dicts (GenEval: tag, include, prompt)           (or `metadata`)
    only_strict  and other flags: accepted and ignored (no reward here reads them)

and reads `pickle.loads(reply)["scores"]` (GenEval-style) or `["outputs"]` (DeQA / UnifiedReward
style). The reply carries both, plus `components` and `version`. The body is read with
`lasro_common.safe_pickle` (plain data only: no class or function a pickle names is ever called),
with the limits, memory budget and bearer token of every other route; errors are our JSON errors.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import Request, Response

from lasro_common import safe_pickle
from lasro_common.errors import InvalidInput, UnsupportedMedia
from lasro_common.images import plan_raw_images
from lasro_common.limits import check_prompts
from lasro_common.server import RequestTimeout, media_type

from .rewards import Reward
from .scoring import ScorePlan, check_metadata, parse_reward_spec, read_request, score

PICKLE_MEDIA_TYPE = "application/octet-stream"
# requests.post(url, data=bytes) sends no Content-Type; these are what others send for a pickle
PICKLE_TYPES = frozenset({"", PICKLE_MEDIA_TYPE, "application/x-pickle", "application/python-pickle",
                          "application/x-python-pickle"})

FLOW_GRPO_OPENAPI = {
    "requestBody": {"required": True, "content": {PICKLE_MEDIA_TYPE: {"schema": {
        "type": "string", "format": "binary",
        "description": "pickle.dumps({'images': [JPEG/PNG bytes, ...], 'prompts': [...], 'meta_datas': "
                       "[{...}, ...], 'only_strict': bool}); read as plain data only (docs/api.md)."}}}},
    "responses": {"200": {"description": "pickle.dumps({'scores': [...], 'outputs': [...], 'components': "
                                         "{...}, 'version': str})",
                          "content": {PICKLE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
}


def _strings(value: Any, what: str) -> list[str]:
    """A list / tuple of str, or a 1-D numpy str array (`np.array_split(prompts, n)[i]`), as a list.
    ddpo-pytorch's `queries` ([[query], ...]) count as one string each."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind != "U":
            raise InvalidInput(f"'{what}' as a numpy array must be 1-D str, got {value.dtype} {value.shape}")
        return value.tolist()
    if isinstance(value, list | tuple):
        out = [v[0] if isinstance(v, list | tuple) and len(v) == 1 else v for v in value]
        if all(isinstance(v, str) for v in out):
            return list(out)
    raise InvalidInput(f"'{what}' must be a list of strings, one per image")


def _prompts(data: dict, metadata: list[dict] | None, b: int) -> list[str]:
    for key in ("prompts", "queries"):
        if data.get(key) is not None:
            prompts = _strings(data[key], key)
            if len(prompts) != b:
                raise InvalidInput(f"{len(prompts)} {key} for a batch of {b} images", code="batch_mismatch")
            return prompts
    if metadata and all(isinstance(m.get("prompt"), str) for m in metadata):
        return [m["prompt"] for m in metadata]  # GenEval's clients send the prompt in the metadata only
    return [""] * b


def plan_flow_grpo(content_type: str, body: bytearray, known: dict[str, Reward], default: str | None, *,
                   max_batch: int, max_side: int, max_decoded_bytes: int | None = None,
                   max_prompt_chars: int | None = None) -> ScorePlan:
    """Unpickle (plain data only), read the image headers and check every limit; no pixel decoded."""
    if content_type not in PICKLE_TYPES:
        raise UnsupportedMedia(f"this route reads a pickled dict: send no Content-Type or {PICKLE_MEDIA_TYPE}")
    data = safe_pickle.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list | tuple):
        raise InvalidInput("the pickled body must be a dict with 'images': a list of JPEG or PNG files as bytes")
    images = plan_raw_images(list(data["images"]), max_batch=max_batch, max_side=max_side).check(max_decoded_bytes)
    b = len(images.raw)
    meta = data.get("meta_datas", data.get("metadata"))
    metadata = check_metadata(list(meta) if isinstance(meta, tuple) else meta, b)
    prompts = _prompts(data, metadata, b)
    if max_prompt_chars is not None:
        check_prompts(prompts, max_prompt_chars)
    return ScorePlan(images, prompts, parse_reward_spec(None, known, default), images.working_bytes, metadata)


def reply(result: dict) -> bytes:
    """Their reply: scores under both keys their clients read, as plain floats."""
    return safe_pickle.dumps({"scores": result["scores"], "outputs": result["scores"],
                              "components": result["components"], "version": result["version"]})


async def handle_flow_grpo(request: Request, state: Any) -> Response:
    """The whole of POST <flow_grpo_route> for `state` (a RewardState)."""
    state.require_ready()
    s = state.settings
    # unpickling holds the body's bytes twice more: the reader's copy and the image bytes
    req = await read_request(request, state, media_type(request), plan_fn=plan_flow_grpo,
                             default=s.flow_grpo_reward, parse_cost=2)
    try:
        result = await asyncio.wait_for(score(req, state.rewards, state.batchers), s.request_timeout_s)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"scoring took longer than {s.request_timeout_s} s") from None
    return Response(reply(result), media_type=PICKLE_MEDIA_TYPE)
