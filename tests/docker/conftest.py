"""A real Docker engine with compose v2, or a skip that says why.

`engine()` starts one with `../shared/docker/engine-up.sh` when that script is there (our CI
machines; LASRO_ENGINE_UP names another path), else uses whatever `docker` is on PATH. Set
LASRO_DOCKER_TESTS=0 to skip these tests on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE_UP = Path(os.environ.get("LASRO_ENGINE_UP", ROOT.parent / "shared" / "docker" / "engine-up.sh"))
LOCAL_INDEX = "http://127.0.0.1:3141/simple"  # engine-up.sh serves this machine's wheels there


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a Docker engine with compose v2 (skips without one)")


@dataclass(frozen=True)
class Engine:
    docker: str
    torch_index: str | None  # a loopback index with the CPU torch build, if one is up
    engine_up_s: float | None  # how long engine-up.sh took, if it ran


def _works(docker: str | None) -> bool:
    if not docker:
        return False
    for args in (["info"], ["compose", "version"]):
        if subprocess.run([docker, *args], capture_output=True, timeout=60).returncode != 0:
            return False
    return True


def _index_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def engine() -> Engine:
    import time

    if os.environ.get("LASRO_DOCKER_TESTS") == "0":
        pytest.skip("LASRO_DOCKER_TESTS=0")
    took = None
    if ENGINE_UP.is_file():
        if os.geteuid() != 0:
            pytest.skip(f"{ENGINE_UP} installs packages and starts dockerd: it needs root")
        t0 = time.monotonic()
        res = subprocess.run(["bash", str(ENGINE_UP)], capture_output=True, text=True, timeout=900)
        took = time.monotonic() - t0
        if res.returncode != 0:
            pytest.skip(f"{ENGINE_UP} could not start a Docker engine (exit {res.returncode}): "
                        f"{(res.stdout + res.stderr)[-1500:]}")
    docker = shutil.which("docker")
    if not _works(docker):
        where = f"{ENGINE_UP} is not there (set LASRO_ENGINE_UP)" if not ENGINE_UP.is_file() else "even after it ran"
        pytest.skip(f"no Docker engine with compose v2: `docker info` / `docker compose version` failed, and {where}")
    return Engine(docker, LOCAL_INDEX if _index_up(LOCAL_INDEX) else None, took)
