"""The other side of flow_grpo's reward-server dialect, written the way flow_grpo, ddpo-pytorch and
yifan123/reward-server write it (requests + pickle on the client, pickle in and out on the
server), so our route and our `--remote NAME=flow_grpo+...` client are tested against their shape
of code, not against ours. Stdlib http.server stands in for their Flask app (same wire format:
POST /, raw pickle body, pickle reply, 500 + traceback text on error)."""

from __future__ import annotations

import contextlib
import io
import pickle
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import requests
from PIL import Image


def jpeg_batch(images: np.ndarray) -> list[bytes]:
    """flow_grpo's client: uint8 (B, H, W, 3) -> JPEG bytes at PIL's default quality."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def their_client(url: str, images: np.ndarray, prompts: list[str], metadatas: list[dict] | None = None,
                 batch_size: int = 64, headers: dict | None = None) -> list[float]:
    """flow_grpo/rewards.py's `unifiedreward_score_remote` / `geneval_score`, minus the GPU: batches
    by np.array_split (prompts arrive as numpy str arrays), JPEG, pickle, POST, pickle.loads."""
    sess = requests.Session()
    n = int(np.ceil(len(images) / batch_size))
    images_batched = np.array_split(images, n)
    prompts_batched = np.array_split(prompts, n)
    metadatas_batched = np.array_split(metadatas, n) if metadatas is not None else [None] * n
    all_scores: list[float] = []
    for image_batch, prompt_batch, metadata_batch in zip(images_batched, prompts_batched, metadatas_batched,
                                                         strict=True):
        data = {"images": jpeg_batch(image_batch), "prompts": prompt_batch, "only_strict": True}
        if metadata_batch is not None:
            data["meta_datas"] = list(metadata_batch)
        response = sess.post(url, data=pickle.dumps(data), timeout=120, headers=headers)
        response.raise_for_status()
        response_data = pickle.loads(response.content)  # noqa: S301 - their code, our own test server
        all_scores += response_data["scores"]
    return all_scores


@contextlib.contextmanager
def their_server(score_fn: Callable[[list[Image.Image], dict], dict] | None = None,
                 raw_reply: bytes | None = None) -> Iterator[dict]:
    """app_geneval.py's shape: POST / with a pickled dict; `score_fn(images, data) -> reply dict`,
    pickled back (or `raw_reply` as is). Yields {"url", "requests": [the unpickled bodies]}."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                data = pickle.loads(body)  # noqa: S301 - what their servers do
                seen.append(data)
                images = [Image.open(io.BytesIO(d), formats=["jpeg"]) for d in data["images"]]
                response = raw_reply if raw_reply is not None else pickle.dumps(score_fn(images, data))
                code = 200
            except Exception:
                response, code = traceback.format_exc().encode("utf-8"), 500
            self.send_response(code)
            self.send_header("Content-Length", str(len(response)))
            self.end_headers()
            self.wfile.write(response)

        def log_message(self, *args) -> None:
            pass

    with http_server(Handler) as url:
        yield {"url": url, "requests": seen}


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free 127.0.0.1 port in a thread; yield the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def brightness(images: list[Image.Image], data: dict) -> dict:
    """A GenEval-shaped reply whose score is the mean brightness in [0, 1]."""
    scores = [float(np.asarray(im.convert("RGB"), np.float32).mean() / 255.0) for im in images]
    return {"scores": scores, "rewards": scores, "strict_rewards": scores, "group_rewards": {},
            "group_strict_rewards": {}}
