"""`python -m trainer demo --config FILE` as a user runs it, tiny: a private redis-server and both
services as real processes, pre-training and two LaSRO iterations of the toy LCM. Each setting
comes from where the precedence says (flag > TRAINER_* > the user's file > configs/demo.toml >
defaults), the services run with their tables, and the report opens in a real browser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_report import _browser, _open

ROOT = Path(__file__).resolve().parents[2]

TINY = """# a tiny demo: the rest comes from configs/demo.toml
iterations: 2
prompts_per_iter: 2
n_noises: 2
eval_every: 2
eval_seeds: 1          # TRAINER_EVAL_SEEDS wins over this
checkpoint_every: 2
pretrain_groups: 8
pretrain_timeout_s: 120
progress: false
report_to: none
surrogate_service:
  head_channels: 16
  publish_every: 1
  eval_every: 2
"""


def test_a_tiny_demo_takes_its_settings_from_the_config_file(tmp_path):
    from safetensors import safe_open

    config, out = tmp_path / "tiny.yaml", tmp_path / "demo"
    config.write_text(TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINER_", "SURROGATE_", "REWARD_"))}
    env.update(TRAINER_EVAL_SEEDS="2", TRAINER_LR="3e-5", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "trainer", "demo", "--config", str(config), "--out", str(out),
                           "--lr", "1e-5"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    cfg = json.loads((out / "train" / "config.json").read_text())
    assert cfg["iterations"] == 2 and cfg["n_noises"] == 2  # the user's file
    assert cfg["lr"] == 1e-5  # the flag, over TRAINER_LR
    assert cfg["eval_seeds"] == 2  # TRAINER_EVAL_SEEDS, over the file
    assert cfg["c"] == 100.0 and cfg["regularizer"] == "anchor"  # configs/demo.toml
    assert cfg["max_grad_norm"] == 1.0  # nobody's: the default

    services = json.loads((out / "train" / "services.json").read_text())
    sur = services["surrogate_service"]
    assert (sur["head_channels"], sur["publish_every"], sur["lr"]) == (16, 1, 3e-4)  # the file, the file, demo.toml
    assert services["reward_service"]["rewards"] == ["toy_attribute_binding", "jpeg_compressibility"]
    with safe_open(str(out / "surrogate" / "published.safetensors"), "pt") as f:  # the service read its table
        assert f.get_slice("heads.1.2.weight").get_shape()[0] == 16

    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["reward"] == "toy_attribute_binding"
    assert summary["queries"] == summary["queries_pretrain"] + summary["queries_finetune"] > summary["queries_finetune"]
    page = (out / "report.html").read_text()
    assert f"<b>{summary['queries']:,}</b>" in page
    assert "trainer/toy_teacher.json" in page  # the committed teacher line: toy LCM, checker, default prompts
    assert "surrogate_service: the settings it was started with" in page

    with _browser() as pw:
        browser, page_, problems, requests = _open(pw, out / "report.html")
        try:
            rows = page_.eval_on_selector_all("#prompts tbody tr", "rows => rows.length")
        finally:
            browser.close()
    assert problems == [] and rows == 48  # the toy world's held-out captions
    assert all(u.startswith(("file:", "data:")) for u in requests)
