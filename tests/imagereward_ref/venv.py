"""The reference venv: the original `image-reward==1.5` on its 2023 stack, from PyPI, outside the repo.

    python -m tests.imagereward_ref.venv      # build it now (or reuse it) and print where it is

It lives in $LASRO_IMAGEREWARD_REF_VENV, default ~/.cache/lasro/imagereward-ref-venv, so every test
run on a machine reuses it; it is rebuilt only when requirements.txt or NO_DEPS change. A build
downloads about 2.6 GB (torch 2.1.2 from PyPI is the CUDA build, with its nvidia-* wheels), takes
about 1.5 min here and fills about 4.9 GB. The interpreter is $LASRO_IMAGEREWARD_REF_PYTHON or
the one this project's venv was made from; torch 2.1.2 has wheels for CPython 3.8-3.11 only.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
REQUIREMENTS = HERE / "requirements.txt"
# Installed after the rest, without their declared dependencies (see requirements.txt).
NO_DEPS = ["fairscale==0.4.13", "image-reward==1.5"]
STAMP = ".lasro-ref-stamp"
PYTHONS = ((3, 8), (3, 9), (3, 10), (3, 11))  # torch 2.1.2's wheels


class RefUnavailable(RuntimeError):
    """The reference venv cannot be built on this machine; the message says why."""


def location() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lasro" / "imagereward-ref-venv"
    return Path(os.environ.get("LASRO_IMAGEREWARD_REF_VENV", default)).expanduser()


def base_python() -> str:
    return os.environ.get("LASRO_IMAGEREWARD_REF_PYTHON") or getattr(sys, "_base_executable", sys.executable)


def _stamp(python: str) -> str:
    h = hashlib.sha256(REQUIREMENTS.read_bytes())
    h.update(" ".join(NO_DEPS).encode())
    h.update(python.encode())
    return h.hexdigest()


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise RefUnavailable(f"{what} failed (exit {res.returncode}): {' '.join(cmd)}\n{tail}")


def ensure() -> Path:
    """The reference venv's python, building the venv first if it is missing or stale."""
    venv, python = location(), base_python()
    version = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True)
    if version.returncode != 0:
        raise RefUnavailable(f"the reference interpreter {python!r} does not run")
    major, minor = map(int, version.stdout.split())
    if (major, minor) not in PYTHONS:
        raise RefUnavailable(f"{python} is Python {major}.{minor}; torch 2.1.2 (the reference stack) has "
                             "wheels for 3.8-3.11: set LASRO_IMAGEREWARD_REF_PYTHON to such an interpreter")
    stamp = _stamp(python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second waiter then reuses it
        if (venv / STAMP).is_file() and (venv / STAMP).read_text() == stamp:
            return venv / "bin" / "python"
        tmp = venv.with_name(f"{venv.name}.building")
        shutil.rmtree(tmp, ignore_errors=True)
        start = time.perf_counter()
        _run([python, "-m", "venv", str(tmp)], "creating the reference venv")
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _run(pip + ["-r", str(REQUIREMENTS)], "installing the reference stack from PyPI")
        _run(pip + ["--no-deps", *NO_DEPS], "installing image-reward and fairscale")
        _run([str(tmp / "bin" / "python"), "-c", "import torch, torchvision, timm, fairscale, transformers"],
             "importing the reference stack")
        (tmp / STAMP).write_text(stamp)
        shutil.rmtree(venv, ignore_errors=True)
        tmp.rename(venv)  # `python -m pip` and the interpreter work after a move; bin/ scripts are unused
        print(f"built the ImageReward reference venv at {venv} in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    return venv / "bin" / "python"


if __name__ == "__main__":
    print(ensure())
