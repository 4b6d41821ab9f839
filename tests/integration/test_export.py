"""Export and `--model`: a run's checkpoints leave as models plain diffusers loads, and every
kind of model folder samples through the trainer exactly as through diffusers.

The runs here are written by hand (a FewStepModel with perturbed weights, saved through
trainer.checkpoint, a config.json and eval rows as the loop writes them): the real loop's
output is exercised in tests/e2e (test_trainer_run.py, test_architectures.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from trainer import checkpoint
from trainer.config import TrainConfig
from trainer.fewstep import FewStepModel

PROMPTS = ["a red circle", "a blue square and a green triangle"]


def make_run(out: Path, base: str, *, lora_rank: int = 0, lcm_lora: str | None = None) -> Path:
    """A run folder with checkpoint-best (iteration 2) and checkpoint (last, iteration 4)."""
    cfg = TrainConfig(base_model=base, lora_rank=lora_rank, lcm_lora=lcm_lora, teacher_model=None,
                      regularizer="anchor", iterations=4, out=out)
    out.mkdir(parents=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    model = FewStepModel(base, lora_rank=lora_rank, lcm_lora=lcm_lora, guidance_scale=cfg.guidance_scale)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params)
    g = torch.Generator().manual_seed(1)
    rows = []
    for it, name in ((2, checkpoint.BEST), (4, checkpoint.LAST)):
        with torch.no_grad():  # "training": weights that differ from the base and between checkpoints
            for p in params:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        checkpoint.save(out / name, unet=model.unet, lora=lora_rank > 0, optimizer=opt, extra={},
                        state={"iteration": it, "queries": 8 * it, "eval_queries": 12})
    for it, r2 in ((0, 0.5), (2, 0.7), (4, 0.6)):
        rows.append({"kind": "eval", "iteration": it, "true_1step": r2 - 0.2, "true_1step_std": 0.1,
                     "true_2step": r2, "true_2step_std": 0.1})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def trainer_latents(model: FewStepModel, steps: int, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model.sample(model.noise(len(PROMPTS), gen, steps), model.encode(PROMPTS), gen, steps=steps).z2


def pipe_latents(pipe, guidance: float, steps: int, seed: int = 3) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


@pytest.fixture(scope="module")
def runs(tiny_pipelines, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"full": make_run(root / "full", str(tiny_pipelines["sd"])),
            "lora": make_run(root / "lora", str(tiny_pipelines["sdxl"]), lora_rank=4)}


def test_full_export_is_a_pipeline_that_samples_as_the_trainer(runs, tmp_path):
    from diffusers import DiffusionPipeline

    from trainer.export import export_run, resolve_model

    out = export_run(runs["full"], tmp_path / "model")
    meta = json.loads((out / "lasro.json").read_text())
    assert meta["kind"] == "full" and meta["checkpoint"]["iteration"] == 2  # the best, not the last
    pipe = DiffusionPipeline.from_pretrained(str(out))
    best = resolve_model(str(runs["full"])).load()
    for steps in (1, 2):
        torch.testing.assert_close(pipe_latents(pipe, meta["guidance_scale"], steps), trainer_latents(best, steps),
                                   rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "| 2 steps | 0.500 ± 0.100 | 0.700 ± 0.100 |" in card and "DiffusionPipeline.from_pretrained" in card
    assert "library_name: diffusers" in card


def test_lora_export_loads_with_load_lora_weights_and_samples_as_the_trainer(runs, tiny_pipelines, tmp_path, caplog):
    from diffusers import StableDiffusionXLPipeline

    from trainer.export import export_run, resolve_model

    out = export_run(runs["lora"], tmp_path / "lora", "last")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "lasro.json", "pytorch_lora_weights.safetensors"]
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_pipelines["sdxl"]))
    base = pipe_latents(pipe, 8.0, 2)
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(out))
    # diffusers notes for every UNet-only LoRA (LCM-LoRA too) that the text encoders got none: "safe to ignore"
    unet_warnings = [r.getMessage() for r in caplog.records if "text_encoder" not in r.getMessage()]
    assert unet_warnings == [] and pipe.get_list_adapters()["unet"]
    last = resolve_model(str(runs["lora"]), checkpoint="last").load()
    for steps in (1, 2):
        torch.testing.assert_close(pipe_latents(pipe, 8.0, steps), trainer_latents(last, steps), rtol=0, atol=1e-5)
    assert (pipe_latents(pipe, 8.0, 2) - base).abs().max() > 1e-3  # the adapter is active
    exported = resolve_model(str(out)).load()  # the LoRA folder on the base its lasro.json names
    torch.testing.assert_close(trainer_latents(exported, 2), trainer_latents(last, 2), rtol=0, atol=1e-5)


def test_fused_lora_export_is_a_full_pipeline(runs, tmp_path):
    from diffusers import DiffusionPipeline

    from trainer.export import export_run, resolve_model

    out = export_run(runs["lora"], tmp_path / "fused", fuse=True)
    assert (out / "model_index.json").is_file() and not (out / "pytorch_lora_weights.safetensors").exists()
    pipe = DiffusionPipeline.from_pretrained(str(out))
    best = resolve_model(str(runs["lora"])).load()
    for steps in (1, 2):  # W + B·A fused: equal up to float rounding of the merged weights
        torch.testing.assert_close(pipe_latents(pipe, 8.0, steps), trainer_latents(best, steps), rtol=0, atol=1e-4)


def _pipe_images(model_dir: str, prompts: list[str], steps: int, seed: int, guidance: float, lora: str | None = None):
    import numpy as np
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir)
    if lora:
        pipe.load_lora_weights(lora)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(seed)).images
    return [np.asarray(im) for im in images]


def test_sample_cli_writes_what_the_pipeline_returns_for_every_kind_of_model(runs, tiny_pipelines, tmp_path, capsys):
    """`trainer sample --model M --prompt P1 --prompt P2 --steps N --seed S --out DIR` == pipe([P1, P2], ...).images,
    for a base pipeline, a run folder, an exported pipeline and an exported LoRA folder."""
    import numpy as np
    from PIL import Image

    from trainer.__main__ import main
    from trainer.export import export_run

    full = export_run(runs["full"], tmp_path / "full")
    lora = export_run(runs["lora"], tmp_path / "lora")
    sd, sdxl = str(tiny_pipelines["sd"]), str(tiny_pipelines["sdxl"])
    cases = [(sd, (sd, None)), (str(runs["full"]), (str(full), None)), (str(full), (str(full), None)),
             (str(lora), (sdxl, str(lora))), (str(runs["lora"]), (sdxl, str(lora)))]
    for i, (model, (pipe_dir, pipe_lora)) in enumerate(cases):
        out = tmp_path / f"s{i}"
        args = ["sample", "--model", model, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2",
                "--seed", "11", "--out", str(out)]
        assert main(args) == 0, capsys.readouterr().err
        got = [np.asarray(Image.open(out / f"{k:03d}.png")) for k in range(2)]
        want = _pipe_images(pipe_dir, PROMPTS, 2, 11, 8.0, pipe_lora)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), model


def test_bad_input_gets_a_clear_error_naming_the_file(runs, tiny_pipelines, tmp_path, capsys):
    import shutil

    from trainer.__main__ import main
    from trainer.export import export_run

    def err(*args: str) -> str:
        assert main(list(args)) == 2
        text = capsys.readouterr().err
        assert "Traceback" not in text
        return text

    sample = ["sample", "--prompt", "a red circle", "--out", str(tmp_path / "o")]
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert f"{empty / 'checkpoint' / 'state.json'} not found" in err(*sample, "--model", str(empty))
    lora = export_run(runs["lora"], tmp_path / "lora")
    assert "does not fit the UNet of" in err(*sample, "--model", str(lora), "--base-model", str(tiny_pipelines["sd"]))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipelines["sd"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert f"{broken / 'unet'}: no weights" in err(*sample, "--model", str(broken))
    assert "no such file or folder" in err(*sample, "--model", str(tmp_path / "nowhere"))
    assert "no checkpoint '7'; kept: last (iteration 4), best (iteration 2)" in err(
        "export", "--run", str(runs["full"]), "--checkpoint", "7", "--out", str(tmp_path / "x"))
    assert f"{tmp_path / 'nowhere' / 'config.json'}: no such file" in err(
        "export", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))


def test_checkpoint_names_resolve_to_the_kept_folders(runs):
    run = runs["full"]
    assert checkpoint.find(run, "best") == run / checkpoint.BEST
    assert checkpoint.find(run, "last") == checkpoint.find(run, "latest") == run / checkpoint.LAST
    assert checkpoint.find(run, "2") == run / checkpoint.BEST and checkpoint.find(run, "4") == run / checkpoint.LAST
    assert checkpoint.find(run, str(run / checkpoint.BEST)) == run / checkpoint.BEST


def test_an_interrupted_swap_leaves_the_previous_checkpoint(tmp_path):
    """A crash between moving the old folder aside and moving the new one in: the old one is found."""
    folder = tmp_path / "checkpoint"
    (tmp_path / "checkpoint.old").mkdir()
    (tmp_path / "checkpoint.old" / "state.json").write_text('{"iteration": 3}')
    assert checkpoint.exists(folder) and checkpoint.state_of(folder)["iteration"] == 3


def test_resume_takes_latest_or_a_checkpoint_folder(runs, tmp_path):
    assert TrainConfig(resume="latest", out=tmp_path).resume == "latest"
    assert TrainConfig(resume="true", out=tmp_path).resume == "latest"  # TRAINER_RESUME=true, as before
    assert TrainConfig(resume="false", out=tmp_path).resume is None
    folder = str(runs["full"] / checkpoint.BEST)
    assert TrainConfig(resume=folder, out=tmp_path).resume == folder
    with pytest.raises(ValueError, match="state.json not found"):
        TrainConfig(resume=str(tmp_path / "nowhere"), out=tmp_path)
