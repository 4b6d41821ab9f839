"""Surrogate benchmarks.

1. `/grad` round trip vs in-process forward+backward of the same R_psi on the same batch, at toy
   size (the toy LCM, (16, 4, 8, 8)) and at SDXL latent size ((8, 4, 128, 128)) with a tiny
   SDXL-architecture backbone: p50/p99 and the overhead ratio.
2. Learner throughput: groups/s consumed and updates/s, next to the rate a trainer produces.

    python -m bench.surrogate [--iters 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lasro_common import redis_util
from lasro_common.stream import SampleGroup
from surrogate_service.client import SurrogateClient
from surrogate_service.model import load_surrogate, score_and_grad

from .common import free_port, print_table, spawn, stats_ms, time_calls, write_json


def _perturbed(model) -> dict:
    g = torch.Generator().manual_seed(0)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def bench_grad(name: str, base: str, shape: tuple[int, ...], iters: int) -> dict:
    z = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    prompts = [f"a red circle {i % 3}" for i in range(shape[0])]
    model, text = load_surrogate(base, head_channels=64)
    t_local = time_calls(lambda: score_and_grad(model, z, text.encode(prompts, latent_size=tuple(shape[-2:])), 2),
                         iters)
    port = free_port()
    proc = spawn(["-m", "surrogate_service", "--port", str(port), "--base-model", base, "--no-learn"],
                 f"http://127.0.0.1:{port}/readyz", env={"SURROGATE_HEAD_CHANNELS": "64", "SURROGATE_MAX_LATENT_SIDE": "256",
                                                          "SURROGATE_LOG_LEVEL": "warning"})
    try:
        with SurrogateClient(f"http://127.0.0.1:{port}") as sc:
            t_http = time_calls(lambda: sc.grad(z, prompts, 2), iters)
    finally:
        proc.terminate()
        proc.wait(30)
    lo, hi = stats_ms(t_local), stats_ms(t_http)
    return {"case": name, "shape": "x".join(map(str, shape)), "in_process_p50_ms": lo["p50_ms"],
            "in_process_p99_ms": lo["p99_ms"], "grad_p50_ms": hi["p50_ms"], "grad_p99_ms": hi["p99_ms"],
            "overhead_x": hi["p50_ms"] / lo["p50_ms"], "mib_each_way": z.numel() * 4 / 2**20}


def bench_learner(base: str, groups: int, n: int = 8) -> dict:
    from surrogate_service.learner import Learner
    from surrogate_service.settings import SurrogateSettings
    from surrogate_service.slot import ModelSlot

    tmp = Path(tempfile.mkdtemp(prefix="lasro-bench-"))
    url = redis_util.embedded_redis_url(tmp / "redis")
    s = SurrogateSettings(base_model=base, redis_url=url, checkpoint_dir=tmp / "ckpt", head_channels=64,
                          updates_per_group=1.0, checkpoint_every_s=5.0, pairs_per_update=64)
    model, text = load_surrogate(base, head_channels=64)
    import copy

    slot = ModelSlot(copy.deepcopy(model))
    learner = Learner(model, text, slot, s, lambda: redis_util.connect(url))
    r = redis_util.connect(url)
    rng = np.random.default_rng(0)
    for i in range(groups):
        z = rng.standard_normal((n, 4, 8, 8)).astype(np.float16)
        r.xadd(s.stream, SampleGroup(f"a red circle {i % 7}", 1 + i % 2, z, rng.random(n)).to_fields())
    t0 = time.perf_counter()
    deadline = t0 + 600
    while time.perf_counter() < deadline:
        learner.run_once(block_ms=50)
        st = learner.status()
        if st["groups_consumed"] >= groups and st["stream_lag"] == 0:
            break
    consumed_s = time.perf_counter() - t0
    train_groups = learner.status()["buffer_groups"]
    while learner.status()["updates"] < train_groups * s.updates_per_group - 1 and time.perf_counter() < deadline:
        learner.run_once(block_ms=10)  # finish the updates owed for the buffered groups
    total_s = time.perf_counter() - t0
    st = learner.status()
    learner.stop()
    return {"groups": groups, "group_size": n, "consume_groups_per_s": groups / consumed_s,
            "updates": st["updates"], "updates_per_s": st["updates"] / total_s, "wall_s": total_s}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--groups", type=int, default=200)
    a = p.parse_args(argv)
    from tests.tiny_models import build_tiny_sdxl_pipeline
    from toyworld.paths import LCM_DIR

    tiny_sdxl = str(build_tiny_sdxl_pipeline(Path(tempfile.mkdtemp()) / "sdxl"))
    rows = [bench_grad("toy LCM", str(LCM_DIR), (16, 4, 8, 8), a.iters),
            bench_grad("SDXL latent size, tiny backbone", tiny_sdxl, (8, 4, 128, 128), max(5, a.iters // 3))]
    print_table("/grad round trip vs in-process forward+backward", rows,
                ["case", "shape", "in_process_p50_ms", "grad_p50_ms", "grad_p99_ms", "overhead_x", "mib_each_way"])
    learner = bench_learner(str(LCM_DIR), a.groups)
    print_table("Learner throughput (toy LCM backbone, groups of 8)", [learner],
                ["groups", "consume_groups_per_s", "updates", "updates_per_s", "wall_s"])
    result = {"grad": rows, "learner": learner}
    write_json("surrogate", result)
    return result


if __name__ == "__main__":
    main()
