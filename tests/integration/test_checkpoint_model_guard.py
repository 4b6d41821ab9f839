"""Issue 15, defect 9: a learner checkpoint written for one base model must never be restored
into a surrogate of another. The service refuses at start, naming the folder and both models;
checkpoints written before the guard existed still restore into their own model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from surrogate_service.app import create_app
from surrogate_service.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from surrogate_service.settings import SurrogateSettings
from tests.integration.test_learner import make_learner

ROOT = Path(__file__).resolve().parents[2]


def _settings(base: Path, ckpt: Path, **kw) -> SurrogateSettings:
    return SurrogateSettings(base_model=str(base), checkpoint_dir=ckpt, head_channels=16,
                             redis_url="redis://127.0.0.1:1/0", **kw)


@pytest.fixture(scope="module")
def sd_checkpoint(tiny_pipelines, tmp_path_factory) -> Path:
    """A real learner checkpoint of the tiny SD pipeline (its final checkpoint at stop())."""
    ckpt = tmp_path_factory.mktemp("ckpt") / "surrogate"
    learner = make_learner(_settings(tiny_pipelines["sd"], ckpt))
    learner.stop()
    assert (ckpt / CHECKPOINT_NAME).is_file()
    return ckpt


def test_service_refuses_a_checkpoint_of_another_base_model_at_start(tiny_pipelines, sd_checkpoint):
    with pytest.raises(ValueError) as e:
        create_app(_settings(tiny_pipelines["sdxl"], sd_checkpoint))
    msg = str(e.value)
    assert str(sd_checkpoint) in msg and str(tiny_pipelines["sd"]) in msg and str(tiny_pipelines["sdxl"]) in msg
    create_app(_settings(tiny_pipelines["sd"], sd_checkpoint))  # its own model: fine


def test_cli_exits_with_the_message_instead_of_serving_503_forever(tiny_pipelines, sd_checkpoint):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "surrogate_service", "--port", "0", "--base-model",
                           str(tiny_pipelines["sdxl"]), "--checkpoint-dir", str(sd_checkpoint),
                           "--redis-url", "redis://127.0.0.1:1/0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(sd_checkpoint) in proc.stderr and str(tiny_pipelines["sdxl"]) in proc.stderr


def test_a_checkpoint_from_before_the_guard_restores_into_its_own_model(tiny_pipelines, sd_checkpoint, tmp_path):
    """Migration: format-1 checkpoints without the model fields and without the sidecar still load
    into the same model, and a mismatch is still refused with a message (not a size traceback)."""
    old = tmp_path / "old"
    state = load_checkpoint(sd_checkpoint)
    for key in ("base_model", "model_signature"):
        state.pop(key, None)
    state.pop("format")
    save_checkpoint(old, state)
    for f in old.iterdir():
        if f.name != CHECKPOINT_NAME:
            f.unlink()
    learner = make_learner(_settings(tiny_pipelines["sd"], old))
    assert learner.restore()
    create_app(_settings(tiny_pipelines["sdxl"], old))  # no sidecar: nothing to check before loading
    other = make_learner(_settings(tiny_pipelines["sdxl"], old))
    with pytest.raises(ValueError) as e:
        other.restore()
    assert str(old) in str(e.value) and "different model" in str(e.value)
    assert all(torch.isfinite(p).all() for p in other.model.parameters())
