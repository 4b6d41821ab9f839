"""The run's product, as a model plain diffusers loads (`python -m trainer export`; every run
writes OUT/model/ from its best checkpoint).

    full fine-tuning   DIR/ = the base pipeline's save_pretrained with the tuned UNet:
                       DiffusionPipeline.from_pretrained(DIR)
    LoRA               DIR/pytorch_lora_weights.safetensors in diffusers' LoRA format, written as
                       diffusers' LCM-LoRA training script writes it (get_peft_model_state_dict ->
                       convert_state_dict_to_diffusers -> save_lora_weights): pipe.load_lora_weights(DIR)
    LoRA, fuse=True    the LoRA fused into the UNet, saved as a full pipeline
    always             DIR/README.md (model card), DIR/lasro.json (base model, guidance, checkpoint),
                       DIR/images/ (held-out samples before and after)

`resolve_model` reads any of these back for `trainer sample` / `trainer evaluate --model`, and a
run folder or a base pipeline too.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lasro_diffusion.loading import MODEL_LOAD_LOCK, read_pipeline_json

from . import checkpoint as ckpt
from .fewstep import LORA_TARGETS, FewStepModel, few_step_scheduler, load_unet

EXPORT_JSON = "lasro.json"
LORA_FILE = "pytorch_lora_weights.safetensors"


def run_config(run: Path) -> dict:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise ValueError(f"{path}: no such file; is {run} a run folder (the --out of `python -m trainer train`)?")
    return json.loads(path.read_text())


def _abs(path: str | None) -> str | None:
    """A local path made absolute (an exported folder must not depend on the current directory); hub ids as they are."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def pipeline_class(base_model: str):
    import diffusers

    index = read_pipeline_json(base_model, "model_index.json")
    if index is None:
        raise ValueError(f"{Path(base_model) / 'model_index.json'}: not found; the base model must be a diffusers pipeline")
    return getattr(diffusers, index["_class_name"])


@dataclass
class ModelRef:
    """What `--model` names, resolved: a base pipeline, plus an exported LoRA or a run's checkpoint."""

    base_model: str
    lcm_lora: str | None = None
    lora: str | None = None  # an exported LoRA folder, loaded as an adapter
    lora_rank: int = 0  # a LoRA run's adapters, filled from `weights`
    weights: Path | None = None  # a run's checkpoint folder
    guidance_scale: float | None = None  # None: the family's default (trainer.guidance.default_guidance)

    def load(self, device: str = "cpu", guidance_scale: float | None = None) -> FewStepModel:
        g = guidance_scale if guidance_scale is not None else self.guidance_scale
        model = FewStepModel(self.base_model, device=device, lora_rank=self.lora_rank, guidance_scale=g,
                             lcm_lora=self.lcm_lora, lora=self.lora)
        if self.weights is not None:
            ckpt.load_weights(self.weights, model.unet)
        model.unet.requires_grad_(False)
        return model


def resolve_model(model: str, *, base_model: str | None = None, checkpoint: str = "best") -> ModelRef:
    """A base or exported pipeline folder (model_index.json), an exported LoRA folder or file (on
    `base_model`, else the base its lasro.json names), a run folder (its `checkpoint`), or a hub id."""
    p = Path(model)
    if p.is_file() and p.suffix == ".safetensors" or (p.is_dir() and (p / LORA_FILE).is_file()):
        meta = json.loads((p / EXPORT_JSON).read_text()) if (p / EXPORT_JSON).is_file() else {}
        base = base_model or meta.get("base_model")
        if not base:
            raise ValueError(f"{p}: a LoRA with no {EXPORT_JSON} naming its base model; pass --base-model")
        return ModelRef(base, lcm_lora=meta.get("lcm_lora"), lora=str(p),
                        guidance_scale=meta.get("guidance_scale") if not base_model else None)
    if p.is_dir() and (p / "model_index.json").is_file():
        return ModelRef(str(p))
    if p.is_dir() and (p / "config.json").is_file():  # a run folder
        cfg = run_config(p)
        folder = ckpt.find(p, checkpoint)
        return ModelRef(cfg["base_model"], lcm_lora=cfg.get("lcm_lora"), lora_rank=cfg.get("lora_rank") or 0,
                        weights=folder, guidance_scale=cfg.get("guidance_scale"))
    if p.is_dir():
        raise ValueError(f"{p}: not a diffusers pipeline (no model_index.json), not an exported LoRA (no {LORA_FILE}) "
                         "and not a run folder (no config.json)")
    if p.exists() or model.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", model) \
            or (p.parent != Path(".") and p.parent.is_dir()):
        raise ValueError(f"{model}: no such file or folder")
    return ModelRef(model)  # a hub id: from_pretrained fetches it (or says why not)


def _evals(run: Path) -> dict[int, dict]:
    """Held-out evaluations of the run by iteration (a resumed run's later row wins)."""
    path = run / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return {r["iteration"]: r for r in rows if r.get("kind") == "eval"}


def _pretrain_queries(run: Path) -> int | None:
    path = run / "pretrain.json"
    return int(json.loads(path.read_text())["queries"]) if path.is_file() else None


def export_run(run: Path, out: Path, checkpoint: str = "best", *, fuse: bool = False,
               pretrain_queries: int | None = None) -> Path:
    """Write checkpoint `checkpoint` (best | last | N | a folder) of `run` to `out` (replaced)."""
    from .model_card import write_model_card

    run, out = Path(run), Path(out)
    cfg = run_config(run)
    folder = ckpt.find(run, checkpoint)
    state = ckpt.state_of(folder)
    base, lcm_lora, rank = cfg["base_model"], cfg.get("lcm_lora"), cfg.get("lora_rank") or 0
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sched = few_step_scheduler(base, lcm_lora)
    with MODEL_LOAD_LOCK:
        unet = load_unet(base, lcm_lora=lcm_lora)
        if rank:
            from peft import LoraConfig

            unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS))
        ckpt.load_weights(folder, unet)
        if rank and not fuse:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            pipeline_class(base).save_lora_weights(str(tmp), unet_lora_layers=layers)
        else:
            if rank:  # fuse: W + B·A·(alpha/r) into the base weights, then drop the adapter layers
                unet.fuse_lora(lora_scale=1.0)
                unet.unload_lora()
            from diffusers import DiffusionPipeline

            # the family's few-step scheduler (a base model + LCM-LoRA leaves with an LCMScheduler)
            pipe = DiffusionPipeline.from_pretrained(base, unet=unet, scheduler=sched)
            pipe.save_pretrained(str(tmp), safe_serialization=True)
    kind = "lora" if rank and not fuse else "full"
    meta = {"kind": kind, "base_model": _abs(base), "lcm_lora": _abs(lcm_lora),
            "guidance_scale": cfg.get("guidance_scale"), "scheduler": type(sched).__name__, "reward": cfg.get("reward"),
            "run": str(run.resolve()),
            "checkpoint": {"name": folder.name, "iteration": state["iteration"], "fused": bool(rank and fuse)}}
    (tmp / EXPORT_JSON).write_text(json.dumps(meta, indent=2))
    pre = pretrain_queries if pretrain_queries is not None else _pretrain_queries(run)
    write_model_card(tmp, out, run=run, cfg=cfg, state=state, meta=meta, evals=_evals(run), pretrain_queries=pre)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@torch.no_grad()
def sample_images(model: FewStepModel, prompts: list[str], steps: int, seed: int) -> torch.Tensor:
    """What `pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))`
    returns, as (N, 3, H, W) floats in [0, 1] (decoded in one batch, as the pipeline does)."""
    gen = torch.Generator().manual_seed(seed)
    s = model.sample(model.noise(len(prompts), gen, steps), model.encode(prompts), gen, steps=steps)
    return model.decode(s.z2, chunk=len(prompts))


def save_pngs(images: torch.Tensor, out: Path) -> list[Path]:
    """DIR/000.png, 001.png, ...: the pipelines' numpy_to_pil rounding ((x·255).round() as uint8)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    arr = (images.permute(0, 2, 3, 1).float().numpy() * 255).round().astype("uint8")
    paths = [out / f"{i:03d}.png" for i in range(len(arr))]
    for a, path in zip(arr, paths, strict=True):
        Image.fromarray(a).save(path)
    return paths
