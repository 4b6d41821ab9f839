"""R4 sustained load (many clients on /score and /grad); R7 slow and idle clients, too many
connections and memory amplification, with the service's peak RSS against a stated budget."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from lasro_common.errors import ServiceError
from lasro_common.protocol import ACCEPT_DEPTH, backlog
from reward_service.client import RewardClient

from .harness import PROMPTS, RssSampler, Service

ST = {"Content-Type": SAFETENSORS_MEDIA_TYPE}


async def _hammer(url: str, headers: dict, make_body, clients: int, seconds: float) -> dict:
    latencies, errors, statuses = [], [], {}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        async def client(i: int) -> None:
            body = make_body(i)
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await http.post(url, content=body, headers=headers)
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")

        await asyncio.gather(*(client(i) for i in range(clients)))
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "error_examples": errors[:5], "statuses": statuses,
            "per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def _score_body(i: int) -> bytes:
    rng = np.random.default_rng(i)
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    return codec.encode({"images": images}, {"prompts": [PROMPTS[(i + k) % len(PROMPTS)] for k in range(4)],
                                             "reward": "toy_attribute_binding"})


def _grad_body(i: int) -> bytes:
    z = np.random.default_rng(i).standard_normal((4, 4, 8, 8)).astype(np.float32)
    return codec.encode({"latents": z}, {"prompts": [PROMPTS[(i + k) % len(PROMPTS)] for k in range(4)], "head": 2})


def r4_load(tmp: Path, clients: int, seconds: float) -> dict:
    rew = Service("reward_service", tmp, {"REWARD_REWARDS": '["toy_attribute_binding", "jpeg_compressibility"]'})
    sur = Service("surrogate_service", tmp, {"SURROGATE_LEARN": "false"})
    parts = {}
    try:
        for svc, path, make in ((rew, "/score", _score_body), (sur, "/grad", _grad_body)):
            svc.start()
            asyncio.run(_hammer(svc.url + path, {**ST, **svc.headers}, make, 4, 3))  # warm up
            before = svc.rss_mb()
            with RssSampler(svc.proc.pid) as rss:
                res = asyncio.run(_hammer(svc.url + path, {**ST, **svc.headers}, make, clients, seconds))
            parts[f"{svc.module} {path}"] = {**res, "rss_before_mb": round(before, 1),
                                            "rss_after_mb": round(svc.rss_mb(), 1), "rss_peak_mb": round(rss.peak_mb, 1)}
            svc.stop()
    finally:
        rew.kill()
        sur.kill()
    holds = all(p["errors"] == 0 and p["requests"] > 0 for p in parts.values())
    line = "; ".join(f"{k}: {p['requests']} requests ({p['per_s']}/s), {p['errors']} errors, p50 {p['p50_ms']} ms, "
                     f"p99 {p['p99_ms']} ms, RSS {p['rss_before_mb']:.0f} -> {p['rss_after_mb']:.0f} MiB"
                     for k, p in parts.items())
    return {"id": "R4", "holds": holds, "summary": f"{clients} clients x {seconds:g} s each. {line}",
            "clients": clients, "duration_s": seconds, **parts}


# ------------------------------------------------------------------ R7
def _png_b64(side: int, seed: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (seed % 256, 90, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _open(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(65536) == b"" or _closed(s)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def r7_slow_clients_and_amplification(tmp: Path, idle: int, seconds: float) -> dict:
    budget_mb, decoded_mb, read_timeout = 256, 64, 2.0
    svc = Service("reward_service", tmp, {"REWARD_REWARDS": '["jpeg_compressibility"]', "REWARD_READ_TIMEOUT_S": str(read_timeout),
                                          "REWARD_MEMORY_BUDGET_MB": str(budget_mb), "REWARD_MAX_DECODED_MB": str(decoded_mb),
                                          "REWARD_MAX_CONNECTIONS": "256", "REWARD_REQUEST_TIMEOUT_S": "10",
                                          "REWARD_LOG_LEVEL": "info"})
    # the stated bound: the budget, plus the one model call in flight (JPEG encoding of one
    # request's images: about 4 float copies of the largest request), plus 64 MiB of slack
    bound_mb = budget_mb + 4 * decoded_mb + 64
    try:
        svc.start()
        proc = psutil.Process(svc.proc.pid)
        normal_body = codec.encode({"images": np.zeros((1, 3, 32, 32), np.uint8)})
        ok = httpx.post(svc.url + "/score", content=normal_body, headers={**ST, **svc.headers}, timeout=30)
        assert ok.status_code == 200, ok.text
        base_rss, base_fds = proc.memory_info().rss / 2**20, proc.num_fds()
        log_before = svc.log.stat().st_size
        stop = threading.Event()
        normal = {"ok": 0, "errors": [], "latencies": []}

        def normal_client() -> None:  # a well-behaved client (the project's own) throughout the attack
            with RewardClient(svc.url, token=svc.token, timeout=60) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        c.score(np.zeros((1, 3, 32, 32), np.uint8))
                        normal["ok"] += 1
                        normal["latencies"].append(time.perf_counter() - t0)
                    except ServiceError as e:
                        normal["errors"].append(str(e)[:200])
                    stop.wait(0.05)

        amp = {"200": 0, "413": 0, "429": 0, "other": []}
        big_ok = json.dumps({"images": [_png_b64(2048, 1)]}).encode()  # 17 KB -> 48 MiB decoded
        big_no = json.dumps({"images": [_png_b64(2048, 2)] * 16}).encode()  # -> 768 MiB decoded: 413

        def amplifier(i: int) -> None:  # compressed images that decode to a lot
            with httpx.Client(timeout=120) as c:
                while not stop.is_set():
                    body = big_no if i % 4 == 0 else big_ok
                    try:
                        r = c.post(svc.url + "/score", content=body, headers={"Content-Type": "application/json",
                                                                               **svc.headers})
                        key = str(r.status_code)
                        if key in amp:
                            amp[key] += 1
                        else:
                            amp["other"].append(f"{r.status_code} {r.text[:120]}")
                    except httpx.HTTPError as e:
                        amp["other"].append(f"{type(e).__name__}")

        socks: list[socket.socket] = []
        with RssSampler(svc.proc.pid) as rss:
            threads = [threading.Thread(target=normal_client, daemon=True)]
            threads += [threading.Thread(target=amplifier, args=(i,), daemon=True) for i in range(16)]
            for t in threads:
                t.start()
            t_attack = time.monotonic()
            for i in range(idle):  # idle connections, half-sent headers, slow uploads declaring 64 MiB
                try:
                    s = _open(svc.url)
                except OSError:
                    continue
                if i % 10 == 1:
                    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
                elif i % 10 == 2:
                    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-safetensors\r\n"
                              b"Authorization: Bearer " + (svc.token or "").encode() +
                              b"\r\nContent-Length: 67108864\r\n\r\n" + b"\0" * 1024)
                socks.append(s)
            time.sleep(max(0.0, seconds - (time.monotonic() - t_attack)))  # the attack's duration
            stop.set()
            for t in threads:
                t.join(120)
            # every attacking connection is closed by the server: evicted, or timed out
            closed_by_server = sum(_closed(s) for s in socks)
            deadline = time.monotonic() + read_timeout + 15
            while closed_by_server < len(socks) and time.monotonic() < deadline:
                time.sleep(0.5)  # waiting out the server's read timeout
                closed_by_server = sum(_closed(s) for s in socks)
        for s in socks:
            s.close()
        peak_fds = rss.peak_fds
        after_fds = proc.num_fds()
        log_growth = svc.log.stat().st_size - log_before
        after_rss = proc.memory_info().rss / 2**20
    finally:
        svc.stop()
    lat = np.asarray(normal["latencies"]) * 1000
    peak_over = rss.peak_mb - base_rss
    fd_bound = 256 + ACCEPT_DEPTH * backlog(256) + 64  # the cap, accept batches in flight (protocol.py), own files
    holds = (not normal["errors"] and normal["ok"] > 0 and peak_over <= bound_mb and closed_by_server == len(socks)
             and peak_fds <= fd_bound
             and amp["200"] > 0 and amp["413"] > 0 and log_growth < 1_000_000)
    return {"id": "R7", "holds": holds,
            "summary": f"{len(socks)} idle / half-sent / slow-upload connections against a 256-connection cap plus 16 "
                       f"clients sending PNGs that decode to 48-768 MiB, {seconds:g} s: a normal client got "
                       f"{normal['ok']} answers, {len(normal['errors'])} errors (p99 "
                       f"{np.percentile(lat, 99):.0f} ms); peak RSS {peak_over:.0f} MiB over the idle "
                       f"{base_rss:.0f} MiB, bound {bound_mb} MiB (budget {budget_mb} + 4 x {decoded_mb} + 64); "
                       f"{closed_by_server}/{len(socks)} attacking connections closed by the server; open files at most "
                       f"{peak_fds} (bound {fd_bound}), {after_fds} after; log +{log_growth / 1024:.0f} KiB",
            "normal_client": {"ok": normal["ok"], "errors": normal["errors"][:5],
                              "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                              "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None},
            "amplifiers": {k: (v if k != "other" else v[:5]) for k, v in amp.items()},
            "rss_idle_mb": round(base_rss, 1), "rss_peak_mb": round(rss.peak_mb, 1), "rss_after_mb": round(after_rss, 1),
            "peak_over_idle_mb": round(peak_over, 1), "bound_over_idle_mb": bound_mb,
            "memory_budget_mb": budget_mb, "max_decoded_mb": decoded_mb,
            "fds_idle": base_fds, "fds_peak": peak_fds, "fds_bound": fd_bound, "fds_after": after_fds,
            "attack_connections": len(socks), "closed_by_server": closed_by_server, "log_growth_bytes": log_growth}
