"""What a real run keeps and leaves: the best fine-tuned checkpoint (held-out true 2-step reward,
ties: the later), the last, every --checkpoint-every with --keep-all, OUT/model exported from the best and
sampled by plain diffusers to the very figure the run measured; --resume from a kept folder."""

from __future__ import annotations

import json

import torch

from tests.e2e.test_trainer_run import _cfg, services  # noqa: F401  (the module's running services)
from trainer import checkpoint


def _evals(out) -> dict[int, dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r for r in rows if r["kind"] == "eval"}


def test_run_keeps_best_and_last_and_plain_diffusers_reproduces_the_exported_figure(services, tmp_path):  # noqa: F811
    from diffusers import DiffusionPipeline

    from trainer.evaluate import eval_generators
    from trainer.loop import train
    from trainer.prompts import eval_prompts

    out = tmp_path / "run"
    cfg = _cfg(services, out, iterations=4, eval_every=1, checkpoint_every=2, keep_all=True, eval_seeds=2)
    summary = train(cfg)
    evals = _evals(out)
    assert sorted(evals) == [0, 1, 2, 3, 4]
    best = max((i for i in evals if i > 0), key=lambda i: (evals[i]["true_2step"], i))  # fine-tuned; ties: later
    assert checkpoint.state_of(out / "checkpoint-best")["iteration"] == best
    assert checkpoint.state_of(out / "checkpoint")["iteration"] == 4
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint", "checkpoint-2", "checkpoint-4",
                                                                "checkpoint-best"]
    model = out / "model"
    assert summary["model"] == str(model)
    meta = json.loads((model / "lasro.json").read_text())
    assert meta["checkpoint"]["iteration"] == best and meta["kind"] == "full"

    # plain diffusers on the exported folder, the held-out prompts and seeds: the run's own figure
    pipe = DiffusionPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(cfg.eval_prompts)
    reps = [p for p in prompts for _ in range(cfg.eval_seeds)]
    for steps in (1, 2):
        images = pipe(reps, num_inference_steps=steps, guidance_scale=meta["guidance_scale"], output_type="pt",
                      generator=eval_generators(len(prompts), cfg.eval_seeds)).images
        brightness = float(images.mean(dim=(1, 2, 3)).mean())  # the run's true reward
        assert abs(brightness - evals[best][f"true_{steps}step"]) < 1e-4
    card = (model / "README.md").read_text()
    assert f"{evals[best]['true_2step']:.3f} ± {evals[best]['true_2step_std']:.3f}" in card


def test_resume_from_a_kept_folder_reproduces_the_unbroken_run(services, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from trainer.loop import train

    kw = {"c1": 0.0, "c2": 0.0}  # the surrogate keeps learning between runs: freeze its influence
    train(_cfg(services, tmp_path / "a", iterations=4, keep_all=True, **kw))
    train(_cfg(services, tmp_path / "b", iterations=4, resume=str(tmp_path / "a" / "checkpoint-2"), **kw))
    a = load_file(str(tmp_path / "a/checkpoint/unet.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoint/unet.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_evaluate_cli_scores_any_model(services, tmp_path, capsys):  # noqa: F811
    """`trainer evaluate --model RUN --no-surrogate`: the run's best checkpoint, the run's own figure."""
    from trainer.__main__ import main
    from trainer.loop import train

    out = tmp_path / "run"
    cfg = _cfg(services, out, iterations=2, eval_every=1)
    train(cfg)
    capsys.readouterr()
    best = checkpoint.state_of(out / "checkpoint-best")["iteration"]
    for model in (out, out / "model"):
        rc = main(["evaluate", "--model", str(model), "--no-surrogate", "--reward", "brightness",
                   "--reward-url", services["reward_url"], "--eval-prompts", str(cfg.eval_prompts),
                   "--eval-seeds", "1"])
        assert rc == 0
        got = json.loads(capsys.readouterr().out)
        assert abs(got["true_2step"] - _evals(out)[best]["true_2step"]) < 1e-5, model
