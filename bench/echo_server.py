"""Servers the transport benchmark talks to: a raw socket echo (the floor) and the service
stack (lasro_common.server plumbing + codec) with echo routes for each body format."""

from __future__ import annotations

import argparse
import base64
import socket
import struct
import threading

import numpy as np
from fastapi import Request

from lasro_common.server import (
    Metrics,
    ServiceSettings,
    create_base_app,
    make_auth,
    read_body,
    read_tensors,
    tensor_response,
)


def raw_echo(port: int) -> None:
    """Length-prefixed echo: read an 8-byte length and that many bytes, send them back."""
    srv = socket.create_server(("127.0.0.1", port))

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                head = conn.recv(8, socket.MSG_WAITALL)
                if len(head) < 8:
                    return
                (n,) = struct.unpack("<Q", head)
                buf = bytearray(n)
                view, got = memoryview(buf), 0
                while got < n:
                    got += conn.recv_into(view[got:], n - got)
                conn.sendall(head + buf)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def stack_app(token: str | None = None):
    settings = ServiceSettings(api_token=token, max_body_mb=512)
    app = create_base_app(title="echo", version="0", settings=settings, metrics=Metrics("echo"), ready=lambda: True)
    from fastapi import Depends

    auth = [Depends(make_auth(settings))]

    @app.post("/echo/safetensors", dependencies=auth)
    async def echo_st(request: Request):
        d = await read_tensors(request)
        return tensor_response({"x": d.tensors["x"]}, d.metadata)

    @app.post("/echo/base64", dependencies=auth)
    async def echo_b64(request: Request):
        import json

        body = json.loads(await read_body(request))
        arr = np.frombuffer(base64.b64decode(body["data"]), dtype=body["dtype"]).reshape(body["shape"])
        return {"data": base64.b64encode(arr.tobytes()).decode(), "dtype": body["dtype"], "shape": body["shape"]}

    @app.post("/echo/lists", dependencies=auth)
    async def echo_lists(request: Request):
        import json

        body = json.loads(await read_body(request))
        arr = np.asarray(body["data"], dtype=np.float16)
        return {"data": arr.tolist()}

    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["raw", "stack"])
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    if a.kind == "raw":
        raw_echo(a.port)
    else:
        import uvicorn

        from lasro_common.memory import tune_malloc

        tune_malloc()  # as lasro_common.cli.serve does for the services
        uvicorn.run(stack_app("bench"), host="127.0.0.1", port=a.port, log_level="warning", http="httptools",
                    loop="asyncio")  # as python -m reward_service / surrogate_service run it
