"""Batching benchmark: throughput of the reward service with 32 concurrent clients, dynamic
micro-batching on vs off, on a batch-friendly reward (bench.rewards:ViTReward).
Target: >= 2x with batching on 2 cores.

    python -m bench.batching [--clients 32] [--requests 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from reward_service.client import AsyncRewardClient

from .common import free_port, print_table, spawn, write_json


async def _load(url: str, clients: int, requests: int, images: int) -> tuple[float, list[float]]:
    x = np.random.default_rng(0).random((images, 3, 64, 64), dtype=np.float32)
    lat: list[float] = []

    async def one_client(rc: AsyncRewardClient):
        for _ in range(requests):
            t = time.perf_counter()
            await rc.score(x, reward="vit")
            lat.append(time.perf_counter() - t)

    async with AsyncRewardClient(url, timeout=300) as rc:
        await rc.score(x, reward="vit")  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(rc) for _ in range(clients)))
        return time.perf_counter() - t0, lat


def run(batching: bool, clients: int, requests: int, images: int, threads: int) -> dict:
    port = free_port()
    args = ["-m", "reward_service", "--port", str(port), "--reward", "bench.rewards:ViTReward"]
    if not batching:
        args.append("--no-batching")
    env = {"OMP_NUM_THREADS": str(threads), "REWARD_BATCH_MAX_WAIT_MS": "5", "REWARD_BATCH_MAX_SIZE": "64",
           "REWARD_MAX_QUEUE": "4096", "REWARD_LOG_LEVEL": "warning"}
    proc = spawn(args, f"http://127.0.0.1:{port}/readyz", env=env)
    try:
        wall, lat = asyncio.run(_load(f"http://127.0.0.1:{port}", clients, requests, images))
    finally:
        proc.terminate()
        proc.wait(10)
    n = clients * requests * images
    a = np.asarray(lat) * 1000
    return {"batching": "on" if batching else "off", "images_per_s": n / wall, "wall_s": wall,
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "requests": len(lat)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument("--images", type=int, default=1, help="images per request")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the service")
    a = p.parse_args(argv)
    rows = [run(False, a.clients, a.requests, a.images, a.threads), run(True, a.clients, a.requests, a.images, a.threads)]
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    print_table(f"Batching: {a.clients} concurrent clients x {a.requests} requests x {a.images} image(s), ViTReward",
                rows, ["batching", "images_per_s", "p50_ms", "p99_ms", "requests"])
    print(f"\nspeed-up with micro-batching: {speedup:.2f}x (target >= 2x): {'PASS' if speedup >= 2 else 'FAIL'}")
    result = {"rows": rows, "speedup": speedup, "target": 2.0, "pass": speedup >= 2, "args": vars(a)}
    write_json("batching", result)
    return result


if __name__ == "__main__":
    main()
