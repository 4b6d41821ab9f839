"""What a short real run leaves behind, and its report in a real browser: pre-training plus three
LaSRO iterations against both services (real uvicorn, real redis-server) on a tiny random LCM,
logged through accelerate's trackers to TensorBoard and to wandb (offline: no network, no
account), then report.html opened in Debian's Chromium (headless, driven by playwright)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.stack import running_stack
from tests.e2e.test_trainer_run import _cfg, _warm_surrogate

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def runs(tiny_pipelines, tmp_path_factory):
    """Two short runs of one setting (seeds 0 and 1), each pre-trained then fine-tuned; the first
    logs to TensorBoard and wandb (offline, files under WANDB_DIR)."""
    from trainer.loop import train
    from trainer.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp, running_stack(str(tiny_pipelines["sd"]), tmp) as stack:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(tmp / "wandb-dir"))
        mp.setenv("WANDB_SILENT", "true")
        (tmp / "wandb-dir").mkdir()
        _warm_surrogate(stack["redis_url"], stack["surrogate_url"])
        out = {}
        for seed, report_to in ((0, "all"), (1, "none")):
            out[seed] = tmp / f"seed{seed}"
            cfg = _cfg(stack, out[seed], iterations=3, seed=seed, report_to=report_to, pretrain_groups=8,
                       pretrain_timeout_s=120, eval_seeds=2)  # 2 seeds: same-prompt pairs for tracking
            pretrain(cfg)
            train(cfg)
        yield {"runs": out, "wandb_dir": tmp / "wandb-dir", "tmp": tmp}


def test_the_run_records_per_sample_rewards_and_pretraining_queries(runs):
    out = runs["runs"][0]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [e["iteration"] for e in evals] == [0, 2, 3]
    for e in evals:  # evals/itNNNNN.json: each sample's true reward; their mean is the logged one
        rec = json.loads((out / "evals" / f"it{e['iteration']:05d}.json").read_text())
        assert len(rec["true"]["2step"]) == len(rec["prompts"]) * rec["seeds"] == 3 * 2
        assert np.mean(rec["true"]["2step"]) == pytest.approx(e["true_2step"])
        assert 0 <= e.get("learner_accuracy", 0.5) <= 1  # present once the learner has measured it
        assert (out / "evals" / rec["atlas"]["2step"]["file"]).is_file()
    pre = json.loads((out / "pretrain.json").read_text())
    assert pre["queries"] == pre["groups"] * 2 > 0  # N_s = 2 samples per group
    assert pre["history"][-1][0] == pre["queries"]  # [queries, accuracy] at each check


def test_tensorboard_and_wandb_offline_hold_the_logged_metrics(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = runs["runs"][0]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in rows if r["kind"] == "train"][-1]
    last_eval = [r for r in rows if r["kind"] == "eval"][-1]

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("eval/true_2step")] == [0, 2, 3]
    assert acc.Scalars("eval/true_2step")[-1].value == pytest.approx(last_eval["true_2step"])
    assert "eval/2step" in acc.Tags()["images"]

    # wandb, offline: one run folder under WANDB_DIR; its transaction log holds every logged step
    offline = sorted((runs["wandb_dir"] / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, sorted(runs["wandb_dir"].rglob("*"))[:20]
    records = list(wandb_records(next(offline[0].glob("run-*.wandb"))))
    history = {}  # step -> {key: value}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {_key(i): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(items["_step"], {}).update(items)
    assert sorted(history) == [0, 1, 2, 3]
    assert [s for s in sorted(history) if "train/loss" in history[s]] == [1, 2, 3]
    assert history[3]["train/loss"] == pytest.approx(last_train["loss"])
    assert history[3]["eval/true_2step"] == pytest.approx(last_eval["true_2step"])
    assert history[3]["eval/queries"] == last_eval["queries"]
    assert history[0]["eval/2step/_type"] == "images/separated"  # the evaluation grid, as a file
    assert (offline[0] / "files" / history[0]["eval/2step/filenames"][0]).is_file()
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {_key(u): json.loads(u.value_json) for u in run.config.update}
    assert config["n_noises"] == 2 and config["report_to"] == "all" and run.project == "lasro"


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_records(path: Path):
    """The protobuf records (wandb's own wandb_internal_pb2.Record) of a .wandb transaction log:
    a 7-byte header (":W&B", magic, version), then LevelDB's log format: 32 KiB blocks of chunks,
    each a 7-byte header (CRC-32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last).
    wandb 0.31 ships no Python reader of its own (the Go core reads these files)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (n == 0 and kind == 0):  # block trailer or zero padding
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_report_holds_the_query_axis_pairs_table_and_config(runs):
    out = runs["runs"][0]
    page = (out / "report.html").read_text()
    pre = json.loads((out / "pretrain.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert f"<b>{pre['queries'] + summary['queries']:,}</b>" in page  # queries, pre-training included
    assert "True reward against true-reward queries" in page and "Surrogate pair accuracy" in page
    assert page.count("<tr><td data-v=") == 3  # one table row per held-out prompt
    assert page.count("class='pair'") == 2 * 3  # 2-step and 1-step pairs
    assert "src='http" not in page and "src=\"http" not in page  # everything inline


def _browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def _open(pw, path: Path):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return browser, page, problems, requests


def _column(page, col: int) -> list[float]:
    return [float(v) for v in page.eval_on_selector_all(
        "#prompts tbody tr", f"rows => rows.map(r => r.cells[{col}].dataset.v)")]


@pytest.mark.parametrize("which", ["single", "several"])
def test_report_in_a_real_headless_browser(runs, which, tmp_path):
    """No console errors, nothing fetched from anywhere, a real rendering, and a table that sorts."""
    from PIL import Image

    from trainer.__main__ import main

    if which == "single":
        path = runs["runs"][0] / "report.html"
    else:  # `python -m trainer report RUN RUN`: both seeds, mean and spread
        path = tmp_path / "seeds.html"
        assert main(["report", str(runs["runs"][0]), str(runs["runs"][1]), "--out", str(path)]) == 0
        assert "mean ± std over 2 runs" in path.read_text()
    with _browser() as pw:
        browser, page, problems, requests = _open(pw, path)
        try:
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            gain = page.locator("#prompts th", has_text="2-step gain")
            order0 = _column(page, 0)
            gain.click()
            order1, gains1 = _column(page, 0), _column(page, 5)
            gain.click()
            gains2 = _column(page, 5)
            plots = page.eval_on_selector_all("img", "imgs => imgs.filter(i => i.naturalWidth > 0).length")
            n_imgs = page.eval_on_selector_all("img", "imgs => imgs.length")
        finally:
            browser.close()
    assert problems == []
    assert all(u.startswith(("file:", "data:")) for u in requests), [u for u in requests if not u.startswith("data:")]
    img = Image.open(shot)
    assert img.format == "PNG" and img.width >= 1000 and img.height > 1500 and shot.stat().st_size > 50_000
    assert len(set(np.asarray(img.convert("L").resize((64, 64))).ravel().tolist())) > 20  # not a blank page
    assert plots == n_imgs > 10  # every image decoded
    assert gains1 == sorted(gains1, reverse=True) and gains2 == sorted(gains2)  # largest gain first, then reversed
    if len(set(gains1)) > 1:
        assert gains1 != gains2
    assert sorted(order1) == sorted(order0) == [0, 1, 2]
