"""What `pip install lasro` gives: the wheel's packages (no top-level `tools` or `bench`, which
would clash with other projects), typed client packages, the `lasro` console script, and that
script driving the real programs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"lasro", "lasro_common", "lasro_diffusion", "reward_service", "surrogate_service", "trainer", "toyworld"}
LOCAL = (".git", ".venv", "runs", "build", "dist", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache",
         ".hypothesis", "toyworld/.build")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """`pip wheel . --no-deps` of a copy of the checkout (the build writes build/ and egg-info)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*LOCAL), symlinks=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp / "out")], cwd=src, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = (tmp / "out").glob("lasro-*.whl")
    with zipfile.ZipFile(found) as zf:
        yield zf


def test_the_wheel_holds_our_packages_only(wheel):
    names = wheel.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == PACKAGES, top ^ PACKAGES
    assert not any(n.startswith(("tools/", "bench/", "tests/")) for n in names)
    for pkg in ("reward_service", "surrogate_service", "lasro_common"):  # the clients and their types
        assert f"{pkg}/py.typed" in names, pkg
    assert "reward_service/client.py" in names and "surrogate_service/client.py" in names
    assert "toyworld/models/toy-lcm/model_index.json" in names or any(
        n.startswith("toyworld/models/") and n.endswith("model_index.json") for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "[console_scripts]" in text and "lasro = lasro.cli:main" in text, text


def _lasro() -> list[str]:
    script = Path(sys.executable).parent / "lasro"  # what `make install` (pip install -e) put there
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lasro"]


def test_lasro_help_lists_the_commands_and_passes_flags_through():
    out = subprocess.run([*_lasro(), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("train", "demo", "export", "serve-reward", "serve-surrogate"):
        assert f"\n  {command} " in out.stdout, command
    reward = subprocess.run([*_lasro(), "serve-reward", "--help"], capture_output=True, text=True, timeout=120)
    assert reward.returncode == 0 and "--flow-grpo-route" in reward.stdout and "--remote" in reward.stdout
    train = subprocess.run([*_lasro(), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert train.returncode == 0 and "--iterations" in train.stdout and "--surrogate-url" in train.stdout
    bad = subprocess.run([*_lasro(), "train", "--regularizer", "nope", "--out", "/nonexistent/x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "regularizer" in bad.stderr  # the trainer's own check, its exit code
    assert subprocess.run(_lasro(), capture_output=True, timeout=60).returncode == 2  # no command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lasro_serve_reward_runs_the_service(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REWARD_API_TOKEN": "tok"}
    log = (tmp_path / "reward.log").open("wb")
    proc = subprocess.Popen([*_lasro(), "serve-reward", "--port", str(port), "--reward", "jpeg_compressibility",
                             "--flow-grpo-route", "/flow"], env=env, stdout=log, stderr=log, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "reward.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "lasro serve-reward never became ready"
            time.sleep(0.1)  # polling another process's port
        rewards = httpx.get(f"{url}/rewards", headers={"Authorization": "Bearer tok"}).json()
        assert [r["name"] for r in rewards] == ["jpeg_compressibility"]  # the flags reached the service
        spec = httpx.get(f"{url}/openapi.json").json()
        assert "/flow" in spec["paths"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in (tmp_path / "reward.log").read_text()
