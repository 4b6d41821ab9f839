"""`python -m toyworld build`: VAE -> teacher (+ text encoder) -> LCM distillation -> export -> toy CLIP.

Each stage checkpoints under toyworld/.build/<stage>/ every few hundred steps and resumes from
there; a finished stage leaves <stage>/final and is skipped. Every batch and noise draw depends
only on (seed, step), so a resumed build reproduces an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextModel

from lasro_diffusion.consistency import ConsistencyDistillationLoss, update_ema
from toyworld import captions, data, models, paths, sampling


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0  # master seed; every stage derives its own streams from it
    vae_steps: int = 1500  # VAE optimiser steps
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6  # Stable Diffusion-style tiny KL: latents stay informative
    teacher_steps: int = 5000  # teacher UNet + text encoder steps (ε-objective)
    teacher_batch: int = 64
    teacher_lr: float = 5e-4
    cfg_dropout: float = 0.1  # prompt replaced by "" this often, so CFG has an unconditional model
    teacher_ema: float = 0.999
    distill_steps: int = 1200  # consistency-distillation steps (best student kept, see export)
    distill_batch: int = 32
    distill_lr: float = 5e-5  # low: a higher rate peaks early and then degrades the 2-step model
    w_min: float = 1.0  # guidance w ~ U[w_min, w_max] during distillation (CFG scale = 1 + w)
    w_max: float = 5.0
    target_ema: float = 0.95  # EMA decay of the consistency target network
    eval_every: int = 100  # distillation steps between held-out checker evaluations
    eval_seeds: int = 2  # seeds per held-out caption in build-time evaluations
    headroom: float = 0.07  # keep the 2-step LCM at least this far below the teacher
    ckpt_every: int = 250
    clip_steps: int = 1400  # toy CLIP contrastive steps (toyworld/clip_train.py), on the exported text encoder
    clip_batch: int = 64  # toy CLIP scenes per step (plus a binding and a malformed negative each)
    clip_lr: float = 2e-3


QUICK = BuildConfig(vae_steps=6, vae_batch=8, teacher_steps=6, teacher_batch=8, distill_steps=6,
                    distill_batch=4, eval_every=3, eval_seeds=1, ckpt_every=4, clip_steps=6, clip_batch=8)


def _lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10 % of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def _images(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch) * 2.0 - 1.0  # (B, 3, 32, 32) in [-1, 1], the VAE's range


def _save_ckpt(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save never corrupts the previous checkpoint


def _load_ckpt(path: Path) -> dict | None:
    return torch.load(path, weights_only=False) if path.exists() else None


def stage_vae(cfg: BuildConfig, root: Path) -> None:
    out = root / "vae"
    if (out / "final").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    vae = models.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    step = 0
    if ck := _load_ckpt(out / "ckpt.pt"):
        vae.load_state_dict(ck["vae"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
    stream = data.train_batch_stream(cfg.vae_batch, cfg.seed + 1, step)
    bar = tqdm(range(step, cfg.vae_steps), desc="vae", initial=step, total=cfg.vae_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr)
        x = _images(next(stream)[0])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(gen)).sample
        # L1 keeps edges sharp (shape classification); MSE punishes colour shifts
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.ckpt_every == 0:
            _save_ckpt(out / "ckpt.pt", vae=vae.state_dict(), opt=opt.state_dict(), step=step + 1)
    # Latent statistics on fresh images: centre inside the VAE, scale to unit variance.
    vae.eval()
    with torch.no_grad():
        x = _images(data.sample_batch(1024, cfg.seed + 2)[0])
        z = vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(cfg.seed))  # (N, 4, 8, 8)
        mean = z.mean(dim=(0, 2, 3))
        std = float((z - mean[None, :, None, None]).std())
        models.fold_latent_stats(vae, mean, std)
    print(f"vae: latent mean {mean.tolist()} std {std:.3f} -> scaling_factor {1 / std:.4f}")
    vae.save_pretrained(out / "final")


def _text_embeds(tok, te: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    return te(models.tokenize(tok, prompts))[0]  # (B, 16, 64), with grad when te trains


def stage_teacher(cfg: BuildConfig, root: Path) -> None:
    out = root / "teacher"
    if (out / "final").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + 10)
    vae = AutoencoderKL.from_pretrained(root / "vae" / "final").eval().requires_grad_(False)
    sf = vae.config.scaling_factor
    tok = models.build_tokenizer()
    te, unet = models.build_text_encoder(tok), models.build_unet()
    sched = models.ddpm_scheduler()
    params = list(unet.parameters()) + list(te.parameters())
    ema_unet, ema_te = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.teacher_lr, weight_decay=1e-2)
    step = 0
    if ck := _load_ckpt(out / "ckpt.pt"):
        for m, k in ((unet, "unet"), (te, "te"), (ema_unet, "ema_unet"), (ema_te, "ema_te"), (opt, "opt")):
            m.load_state_dict(ck[k])
        step = ck["step"]
    stream = data.train_batch_stream(cfg.teacher_batch, cfg.seed + 3, step)
    bar = tqdm(range(step, cfg.teacher_steps), desc="teacher", initial=step, total=cfg.teacher_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.teacher_steps, cfg.teacher_lr, warmup=200)
        imgs, caps = next(stream)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        caps = ["" if r < cfg.cfg_dropout else c for r, c in zip(torch.rand(len(caps), generator=gen).tolist(), caps, strict=True)]
        with torch.no_grad():
            z0 = vae.encode(_images(imgs)).latent_dist.sample(gen) * sf  # (B, 4, 8, 8), ~unit variance
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(caps),), generator=gen)
        eps = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=_text_embeds(tok, te, caps)).sample
        loss = torch.nn.functional.mse_loss(eps, noise)  # the ε-objective
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        update_ema(ema_params, params, min(cfg.teacher_ema, (1 + step) / (10 + step)))
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.ckpt_every == 0:
            _save_ckpt(out / "ckpt.pt", unet=unet.state_dict(), te=te.state_dict(), ema_unet=ema_unet.state_dict(),
                       ema_te=ema_te.state_dict(), opt=opt.state_dict(), step=step + 1)
    pipe = sampling.teacher_pipeline(vae, ema_te.eval(), tok, ema_unet.eval(), models.ddim_scheduler())
    prompts = sampling.eval_prompts(captions.heldout_captions(), cfg.eval_seeds)
    for g in (2.0, 3.0, 5.0):
        s = sampling.checker_mean(pipe, prompts, sampling.TEACHER_STEPS, g)
        print(f"teacher: held-out checker {s:.3f} (DDIM {sampling.TEACHER_STEPS}, CFG {g})")
    ema_unet.save_pretrained(out / "final" / "unet")
    ema_te.save_pretrained(out / "final" / "text_encoder")
    tok.save_pretrained(out / "final" / "tokenizer")


def _load_teacher(root: Path):
    vae = AutoencoderKL.from_pretrained(root / "vae" / "final").eval().requires_grad_(False)
    tdir = root / "teacher" / "final"
    te = CLIPTextModel.from_pretrained(tdir / "text_encoder").eval().requires_grad_(False)
    tok = models.CLIPTokenizer.from_pretrained(tdir / "tokenizer")
    unet = UNet2DConditionModel.from_pretrained(tdir / "unet").eval().requires_grad_(False)
    return vae, te, tok, unet


def stage_distill(cfg: BuildConfig, root: Path) -> None:
    out = root / "distill"
    if (out / "final").exists():
        return
    (out / "students").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + 20)
    vae, te, tok, teacher = _load_teacher(root)
    sf = vae.config.scaling_factor
    student = models.student_from_teacher(teacher).train()
    target = copy.deepcopy(student).requires_grad_(False)
    lcm = ConsistencyDistillationLoss(teacher, models.ddpm_scheduler(), num_ddim_timesteps=50,
                                      w_min=cfg.w_min, w_max=cfg.w_max, loss_type="huber", huber_c=0.001)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.distill_lr, weight_decay=0.0)
    step, history = 0, []
    if ck := _load_ckpt(out / "ckpt.pt"):
        for m, k in ((student, "student"), (target, "target"), (opt, "opt")):
            m.load_state_dict(ck[k])
        step, history = ck["step"], ck["history"]
    with torch.no_grad():
        uncond_one = _text_embeds(tok, te, [""])  # (1, 16, 64)
    prompts = sampling.eval_prompts(captions.heldout_captions(), cfg.eval_seeds)
    stream = data.train_batch_stream(cfg.distill_batch, cfg.seed + 4, step)
    bar = tqdm(range(step, cfg.distill_steps), desc="distill", initial=step, total=cfg.distill_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.distill_steps, cfg.distill_lr)
        imgs, caps = next(stream)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        with torch.no_grad():
            z0 = vae.encode(_images(imgs)).latent_dist.sample(gen) * sf  # (B, 4, 8, 8)
            cond = _text_embeds(tok, te, caps)  # (B, 16, 64)
        loss = lcm.loss(student, target, z0, cond, uncond_one.expand_as(cond), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        update_ema(target, student, cfg.target_ema)
        bar.set_postfix(loss=f"{loss.item():.5f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.distill_steps:
            # Select the student by what matters (checker score), not by the distillation loss.
            student.eval()
            pipe = sampling.lcm_pipeline(vae, te, tok, student, models.lcm_scheduler())
            rec = {"step": step + 1, "lcm2": sampling.checker_mean(pipe, prompts, 2),
                   "lcm1": sampling.checker_mean(pipe, prompts, 1)}
            student.train()
            history.append(rec)
            torch.save(student.state_dict(), out / "students" / f"{step + 1:05d}.pt")
            tqdm.write(f"distill step {step + 1}: held-out checker 2-step {rec['lcm2']:.3f} 1-step {rec['lcm1']:.3f}")
            _save_ckpt(out / "ckpt.pt", student=student.state_dict(), target=target.state_dict(),
                       opt=opt.state_dict(), step=step + 1, history=history)
    (out / "final").mkdir(exist_ok=True)
    (out / "final" / "history.json").write_text(json.dumps(history, indent=1))


def stage_export(cfg: BuildConfig, root: Path, teacher_dir: Path, lcm_dir: Path) -> dict:
    """Pick the student, write both pipeline folders (fp16 UNet/VAE weights, loaded as fp32)."""
    vae, te, tok, teacher = _load_teacher(root)
    history = json.loads((root / "distill" / "final" / "history.json").read_text())
    prompts = sampling.eval_prompts(captions.heldout_captions(), cfg.eval_seeds)
    tpipe = sampling.teacher_pipeline(vae, te, tok, teacher, models.ddim_scheduler())
    teacher_score = sampling.checker_mean(tpipe, prompts, sampling.TEACHER_STEPS)
    # Best 2-step student that still leaves reward fine-tuning some headroom below the teacher.
    ok = [h for h in history if h["lcm2"] <= teacher_score - cfg.headroom] or history
    best = max(ok, key=lambda h: (h["lcm2"], h["lcm1"]))
    student = models.build_unet(models.TIME_COND_PROJ_DIM)
    student.load_state_dict(torch.load(root / "distill" / "students" / f"{best['step']:05d}.pt"))
    for pipe, d in ((tpipe, teacher_dir), (sampling.lcm_pipeline(vae, te, tok, student.eval(), models.lcm_scheduler()), lcm_dir)):
        pipe.unet.half()
        pipe.vae.half()
        pipe.save_pretrained(d, safe_serialization=True)
        pipe.unet.float()
        pipe.vae.float()
    info = {"teacher_build_score": teacher_score, "selected_student": best, "history": history, "config": asdict(cfg)}
    (teacher_dir.parent / "build_info.json").write_text(json.dumps(info, indent=1))
    return info


def stage_clip(cfg: BuildConfig, root: Path, models_dir: Path) -> dict:
    """Train the toy CLIP against the exported pipelines' text encoder; write models_dir/toy-clip."""
    from toyworld import clip, clip_eval, clip_train

    out = root / "clip"
    out.mkdir(parents=True, exist_ok=True)
    if not (models_dir / "lcm" / "text_encoder").is_dir():
        raise FileNotFoundError(f"no text encoder in {models_dir / 'lcm'}; run the export stage first")
    torch.manual_seed(cfg.seed + 30)
    model = clip.new_model(models_dir / "lcm")
    tcfg = clip_train.ClipTrainConfig(seed=cfg.seed + 30, steps=cfg.clip_steps, batch=cfg.clip_batch,
                                      lr=cfg.clip_lr, ckpt_every=cfg.ckpt_every)
    log = clip_train.train(model, tcfg, out)
    quality = clip_eval.measure_data(model, seeds=cfg.eval_seeds)  # held-out captions, dataset images
    model.save_pretrained(models_dir / "toy-clip", extra={"train": asdict(tcfg), "last_log": log[-1:],
                                                          "heldout_data": quality})
    return quality


def build(quick: bool = False, stages: tuple[str, ...] = ("vae", "teacher", "distill", "export", "clip"),
          overrides: dict[str, str] | None = None) -> None:
    cfg = QUICK if quick else BuildConfig()
    fields = {f: type(v) for f, v in asdict(cfg).items()}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"unknown build setting {key!r}; known: {', '.join(fields)}")
        cfg = replace(cfg, **{key: fields[key](value)})
    root = paths.BUILD_DIR / ("quick" if quick else "full")
    models_dir = root / "models" if quick else paths.MODELS_DIR
    timings = {}
    for name in stages:
        t0 = time.time()
        if name == "vae":
            stage_vae(cfg, root)
        elif name == "teacher":
            stage_teacher(cfg, root)
        elif name == "distill":
            stage_distill(cfg, root)
        elif name == "export":
            info = stage_export(cfg, root, models_dir / "teacher", models_dir / "lcm")
            print(f"export: teacher {info['teacher_build_score']:.3f}, student {info['selected_student']}")
        elif name == "clip":
            q = stage_clip(cfg, root, models_dir)
            print(f"clip: held-out dataset images: matched {q['matched']:.3f}, colours swapped "
                  f"{q['mismatched_swap']:.3f}, matched > swapped {q['matched_gt_swap']:.3f}")
        else:
            raise ValueError(f"unknown stage {name!r}; choose from vae, teacher, distill, export, clip")
        timings[name] = round(time.time() - t0, 1)
        print(f"stage {name} done in {timings[name]} s", flush=True)
    print(json.dumps(timings))
