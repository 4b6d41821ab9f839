"""`--config FILE` (TOML or YAML) on every trainer command: flags > TRAINER_* > file > defaults,
unknown keys named, configs/demo.toml as the demo's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lasro_common.cli import settings_from_args
from trainer.__main__ import _configured_args, _parser, main
from trainer.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_trainer_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.upper().startswith(("TRAINER_", "SURROGATE_", "REWARD_")):
            monkeypatch.delenv(key)


def _write(tmp_path: Path, kind: str, values: dict) -> Path:
    """The same settings as TOML or as YAML."""
    if kind == "toml":
        lines = [f"{k} = {v!r}".replace("'", '"') for k, v in values.items()]
        path = tmp_path / "run.toml"
    else:
        lines = [f"{k}: {v!r}" for k, v in values.items()]
        path = tmp_path / "run.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(argv: list[str]) -> TrainConfig:
    args, _ = _configured_args(argv)
    return settings_from_args(TrainConfig, args)


@pytest.mark.parametrize("kind", ["toml", "yaml"])
def test_flags_beat_the_environment_beats_the_file_beats_the_defaults(kind, tmp_path, monkeypatch):
    path = _write(tmp_path, kind, {"lr": 0.002, "n_noises": 3, "iterations": 7, "regularizer": "anchor"})
    cfg = _cfg(["train", "--config", str(path)])
    assert (cfg.lr, cfg.n_noises, cfg.iterations, cfg.regularizer) == (0.002, 3, 7, "anchor")  # the file
    assert cfg.c == TrainConfig.model_fields["c"].default  # not in the file: the default

    monkeypatch.setenv("TRAINER_LR", "0.003")
    cfg = _cfg(["train", "--config", str(path)])
    assert (cfg.lr, cfg.n_noises) == (0.003, 3)  # the environment over the file, the file for the rest

    cfg = _cfg(["train", "--config", str(path), "--lr", "0.004", "--iterations", "9"])
    assert (cfg.lr, cfg.iterations, cfg.n_noises) == (0.004, 9, 3)  # flags over both


def test_dashes_and_underscores_name_the_same_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n-noises: 5\nprompts_per_iter: 3\n")
    cfg = _cfg(["pretrain", "--config", str(path)])
    assert (cfg.n_noises, cfg.prompts_per_iter) == (5, 3)


@pytest.mark.parametrize(("text", "name", "message"), [
    ("lrr = 1e-4\n", "bad.toml", "unknown key 'lrr' for `python -m trainer train` (did you mean 'lr'?)"),
    ("[surrogate_service]\nhead_channel = 16\n", "bad.toml",
     "unknown key 'head_channel' in [surrogate_service] (did you mean 'head_channels'?)"),
    ("[reward_service]\nreward = ['x']\n", "bad.toml", "unknown key 'reward' in [reward_service] (did you mean 'rewards'?)"),
    ("n_noises: many\n", "bad.yaml", "n_noises: invalid literal for int()"),
    ("iterations = [1]\n", "bad.toml", "iterations must be a number"),
    ("lr = 1e-4\nlr = 2e-4\n", "bad.toml", "not valid TOML"),
    ("- lr\n", "bad.yaml", "must hold a mapping"),
    ("lr = 1\n", "bad.json", "give a .toml, .yaml or .yml file"),
])
def test_a_bad_file_stops_the_command_naming_the_key(tmp_path, capsys, text, name, message):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--config", str(path), "--iterations", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


def test_a_value_the_settings_refuse_names_the_field(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("n_noises = 1\n")  # N_s >= 2
    assert main(["train", "--config", str(path)]) == 2
    assert "n_noises" in capsys.readouterr().err


def test_a_missing_file_is_an_error(tmp_path, capsys):
    assert main(["evaluate", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_every_command_takes_config():
    _, commands = _parser()
    assert set(commands) == {"train", "pretrain", "baseline", "evaluate", "sample", "export", "demo", "report"}
    for name, parser in commands.items():
        assert any("--config" in a.option_strings for a in parser._actions), name


def test_commands_with_their_own_flags_take_them_from_the_file_too(tmp_path):
    """Required flags given by the file are no longer required; a flag replaces a list, never appends."""
    path = tmp_path / "x.toml"
    path.write_text('run = "runs/a"\nout = "exported"\ncheckpoint = "last"\nfuse = true\n')
    args, _ = _configured_args(["export", "--config", str(path)])
    assert (args.run, args.out, args.checkpoint, args.fuse) == (Path("runs/a"), Path("exported"), "last", True)
    args, _ = _configured_args(["export", "--config", str(path), "--checkpoint", "best"])
    assert args.checkpoint == "best"

    path = tmp_path / "s.yaml"
    path.write_text("prompt: [a red circle, a blue square]\nsteps: 1\nseed: 3\n")
    args, _ = _configured_args(["sample", "--config", str(path)])
    assert (args.prompt, args.steps, args.seed, args.out) == (["a red circle", "a blue square"], 1, 3, Path("samples"))
    args, _ = _configured_args(["sample", "--config", str(path), "--prompt", "a green triangle"])
    assert args.prompt == ["a green triangle"]

    path = tmp_path / "b.toml"
    path.write_text('method = "dpo"\ndpo_beta = 500.0\n')
    args, _ = _configured_args(["baseline", "--config", str(path)])
    assert args.method == "dpo" and settings_from_args(TrainConfig, args).dpo_beta == 500.0

    path = tmp_path / "r.toml"
    path.write_text('runs = ["runs/a", "runs/b"]\nout = "seeds.html"\n')
    args, _ = _configured_args(["report", "--config", str(path)])
    assert (args.runs, args.out) == ([Path("runs/a"), Path("runs/b")], Path("seeds.html"))
    args, _ = _configured_args(["report", "--config", str(path), "runs/c"])
    assert args.runs == [Path("runs/c")]

    path = tmp_path / "e.toml"
    path.write_text("no_surrogate = true\neval_seeds = 3\n")
    args, _ = _configured_args(["evaluate", "--config", str(path)])
    assert args.no_surrogate is True and settings_from_args(TrainConfig, args).eval_seeds == 3


def test_a_config_for_demo_serves_train_too(tmp_path):
    """The service tables are checked by every command and used by demo; configs/demo.toml trains."""
    cfg = _cfg(["train", "--config", str(ROOT / "configs/demo.toml")])
    assert (cfg.iterations, cfg.n_noises, cfg.regularizer, cfg.pretrain_groups) == (400, 8, "anchor", 2048)


def test_demo_settings_are_the_shipped_file(tmp_path):
    from trainer.config_file import read_config
    from trainer.demo import DEMO_CONFIG, DEMO_DEFAULTS, SURROGATE_ENV

    assert DEMO_CONFIG.resolve() == (ROOT / "configs/demo.toml").resolve()  # trainer/demo.toml links to it
    shipped = read_config(ROOT / "configs/demo.toml")
    assert {k: v for k, v in shipped.items() if k not in ("reward_service", "surrogate_service")} == DEMO_DEFAULTS
    assert DEMO_DEFAULTS["iterations"] == 400 and DEMO_DEFAULTS["lr"] == 5e-5
    assert float(SURROGATE_ENV["SURROGATE_LR"]) == 3e-4 and SURROGATE_ENV["SURROGATE_HEAD_CHANNELS"] == "64"
    TrainConfig(**DEMO_DEFAULTS)  # every key a valid setting


def test_demo_layers_a_users_file_over_configs_demo_toml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("iterations: 5\nsurrogate_service:\n  head_channels: 16\nreward_service:\n  rewards: [toy_attribute_binding]\n")
    args, services = _configured_args(["demo", "--config", str(path), "--eval-seeds", "1"])
    assert (args.iterations, args.lr, args.n_noises, args.eval_seeds) == (5, 5e-5, 8, 1)  # mine, shipped, shipped, flag
    assert services["surrogate_service"]["head_channels"] == 16  # mine
    assert services["surrogate_service"]["lr"] == 3e-4  # shipped
    assert services["reward_service"]["rewards"] == ["toy_attribute_binding"]


def test_demo_refuses_what_it_sets_itself(tmp_path, capsys):
    assert main(["demo", "--reward-url", "http://elsewhere:1", "--out", str(tmp_path / "d")]) == 2
    assert "the demo starts its own services" in capsys.readouterr().err
    path = tmp_path / "p.toml"
    path.write_text("[surrogate_service]\nport = 9\n")
    assert main(["demo", "--config", str(path), "--out", str(tmp_path / "d")]) == 2
    assert "[surrogate_service] port: set by the demo itself" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_demo_help_shows_where_each_value_comes_from(tmp_path):
    """`python -m trainer demo --config configs/demo.toml --help`, as a user types it."""
    mine = tmp_path / "mine.toml"
    mine.write_text("iterations = 12\n")
    for config, iterations in (("configs/demo.toml", "[configs/demo.toml: 400]"), (str(mine), f"[{mine}: 12]")):
        proc = subprocess.run([sys.executable, "-m", "trainer", "demo", "--config", config, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        text = "".join(proc.stdout.split())  # argparse wraps lines, long paths too
        assert iterations.replace(" ", "") in text and "[configs/demo.toml:5e-05]" in text  # --lr: the shipped value
        assert "--configFILE" in text
