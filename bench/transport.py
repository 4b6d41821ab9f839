"""Transport benchmark: a (16, 4, 128, 128) float16 tensor (2 MiB, SDXL latents) each way.

Compares, in one run: a raw loopback socket echo (the floor), the service stack with a
safetensors body, with JSON + base64, and with JSON number lists. Target: safetensors <= 4x floor.

    python -m bench.transport [--iters 200]
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import struct
import subprocess
import sys
import time

import numpy as np

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from lasro_common.client import SyncClient

from .common import free_port, print_table, spawn, stats_ms, time_calls, write_json

SHAPE = (16, 4, 128, 128)


def bench_raw(port: int, x: np.ndarray, iters: int) -> list[float]:
    payload = x.tobytes()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(8 + len(payload))
    view = memoryview(buf)

    def once():
        sock.sendall(struct.pack("<Q", len(payload)) + payload)
        got = 0
        while got < len(buf):
            got += sock.recv_into(view[got:], len(buf) - got)
        np.frombuffer(view[8:], dtype=np.float16).reshape(SHAPE)

    try:
        return time_calls(once, iters, warmup=5)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--list-iters", type=int, default=5, help="JSON lists are slow; fewer iterations")
    args = p.parse_args(argv)
    from lasro_common.memory import tune_malloc

    tune_malloc()  # as the trainer does; the raw-socket floor runs in this same process
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float16)
    raw_port, stack_port = free_port(), free_port()
    raw = subprocess.Popen([sys.executable, "-m", "bench.echo_server", "raw", "--port", str(raw_port)])
    stack = spawn(["-m", "bench.echo_server", "stack", "--port", str(stack_port)], f"http://127.0.0.1:{stack_port}/healthz")
    rows = []
    try:
        time.sleep(0.5)  # the raw echo has no health route; give it a moment to bind
        rows.append({"transport": "raw socket echo (floor)", **stats_ms(bench_raw(raw_port, x, args.iters))})
        client = SyncClient(f"http://127.0.0.1:{stack_port}", token="bench")

        def st():
            body = codec.encode({"x": x}, {"prompts": ["a"] * 16})
            r = client.request("POST", "/echo/safetensors", content=body, headers={"Content-Type": SAFETENSORS_MEDIA_TYPE})
            y = codec.decode(r.content).tensors["x"]
            assert y.shape == SHAPE

        def b64():
            body = {"data": base64.b64encode(x.tobytes()).decode(), "dtype": "float16", "shape": list(SHAPE)}
            r = client.request("POST", "/echo/base64", content=json.dumps(body), headers={"Content-Type": "application/json"})
            d = r.json()
            np.frombuffer(base64.b64decode(d["data"]), dtype=np.float16).reshape(SHAPE)

        def lists():
            r = client.request("POST", "/echo/lists", content=json.dumps({"data": x.tolist()}),
                               headers={"Content-Type": "application/json"})
            np.asarray(r.json()["data"], dtype=np.float16)

        rows.append({"transport": "service: safetensors", **stats_ms(time_calls(st, args.iters, warmup=5))})
        rows.append({"transport": "service: JSON + base64", **stats_ms(time_calls(b64, max(20, args.iters // 4), warmup=5))})
        rows.append({"transport": "service: JSON lists", **stats_ms(time_calls(lists, args.list_iters, warmup=1))})
        client.close()
    finally:
        raw.kill()
        stack.terminate()
        stack.wait(10)
    floor = rows[0]["p50_ms"]
    for r in rows:
        r["x_floor_p50"] = r["p50_ms"] / floor
    print_table(f"Transport: {SHAPE} float16 = {x.nbytes / 2**20:.1f} MiB each way, round trip",
                rows, ["transport", "p50_ms", "p99_ms", "x_floor_p50", "n"])
    ratio = rows[1]["x_floor_p50"]
    verdict = "PASS" if ratio <= 4.0 else "FAIL"
    print(f"\nsafetensors / raw floor (p50): {ratio:.2f}x  (target <= 4x): {verdict}")
    result = {"shape": list(SHAPE), "dtype": "float16", "rows": rows, "target_x_floor": 4.0,
              "safetensors_x_floor": ratio, "pass": ratio <= 4.0}
    write_json("transport", result)
    return result


if __name__ == "__main__":
    main()
