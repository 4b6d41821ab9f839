"""`python -m toyworld clip-eval`: how good and how hackable the toy CLIP score is.

All on the held-out captions (18 singles, 15 seen pairs, 15 pairs never seen in training) × seeds:

- data: the score of dataset images with their own caption vs mismatched captions (colours
  swapped between the two objects, one colour / shape changed, an object missing or extra),
  binding accuracy (own caption > swapped caption) and top-1 retrieval among the 48 captions;
- generated: teacher (25 DDIM steps) and LCM (1, 2, 4 steps) samples, mean checker and mean
  toy-CLIP per model, per-image Pearson / Spearman with the checker, and how often the toy CLIP
  orders a (teacher, LCM 2-step) pair of the same caption and noise as the checker does;
- hacking: blank / noise images, brightness and contrast changes, and gradient ascent on the
  score (in pixels, and in the LCM's latents through the VAE decoder, as ReFL does), each with
  the checker's verdict on the result.
"""

from __future__ import annotations

import numpy as np
import torch

from toyworld import captions, checker, data, paths, sampling
from toyworld.clip import ToyClip
from toyworld.clip_data import allowed


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (the checker's scores tie a lot: 0, 0.5, 1)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rank(a), rank(b))


def mismatches(prompt: str, rng: np.random.Generator) -> dict[str, str]:
    """Captions that get the binding wrong for an image of `prompt`, one per kind."""
    objs = captions.parse_caption(prompt)
    out: dict[str, str] = {}
    if len(objs) == 2:
        (ca, sa), (cb, sb) = objs
        if sa != sb:
            out["swap"] = captions.caption_for([(cb, sa), (ca, sb)])
        out["drop"] = captions.caption_for([objs[int(rng.integers(2))]])
    else:
        others = [o for o in captions.ALL_OBJECTS if o[0] != objs[0][0]]
        out["extra"] = captions.caption_for([objs[0], others[int(rng.integers(len(others)))]])
    i = int(rng.integers(len(objs)))
    colours = [c for c in captions.COLORS if c not in {o[0] for o in objs}]
    shapes = [s for s in captions.SHAPES if s != objs[i][1]]
    for kind, new in (("colour", (colours[int(rng.integers(len(colours)))], objs[i][1])),
                      ("shape", (objs[i][0], shapes[int(rng.integers(len(shapes)))]))):
        out[kind] = captions.caption_for([new if j == i else o for j, o in enumerate(objs)])
    return out


def _groups(n: int, n_caps: int) -> dict[str, np.ndarray]:
    pos = np.arange(n) % n_caps
    return {"single": pos < 18, "seen_pair": (pos >= 18) & (pos < 33), "unseen_pair": pos >= 33}


@torch.no_grad()
def measure_data(model: ToyClip, seeds: int = 4) -> dict:
    caps = captions.heldout_captions()
    prompts = sampling.eval_prompts(caps, seeds)
    images = torch.from_numpy(np.stack([data.draw_scene(s) for s in data.scenes_for_captions(prompts, seed=1)])
                              .astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    matched = model.score(images, prompts).numpy()
    rng = np.random.default_rng(0)
    mm = [mismatches(p, rng) for p in prompts]
    res: dict = {"n_images": len(prompts), "matched": float(matched.mean())}
    for kind in ("swap", "colour", "shape", "drop", "extra"):
        idx = [i for i, m in enumerate(mm) if kind in m]
        s = model.score(images[idx], [mm[i][kind] for i in idx]).numpy()
        res[f"mismatched_{kind}"] = float(s.mean())
        res[f"matched_gt_{kind}"] = float((matched[idx] > s).mean())
        if kind == "swap":
            g = _groups(len(prompts), len(caps))
            res["matched_gt_swap_unseen_pair"] = float((matched[idx] > s)[g["unseen_pair"][idx]].mean())
    txt = model.embed_text(caps)  # (48, D); the 48 captions have 48 different meanings
    top1 = (model.embed_images(images) @ txt.T).argmax(1).numpy() == np.arange(len(prompts)) % len(caps)
    res["retrieval_top1"] = float(top1.mean())
    res["retrieval_top1_by_group"] = {k: float(top1[v].mean()) for k, v in _groups(len(prompts), len(caps)).items()}
    return res


def measure_generated(model: ToyClip, seeds: int = 4) -> dict:
    caps = captions.heldout_captions()
    prompts = sampling.eval_prompts(caps, seeds)
    teacher, lcm = sampling.load_pipeline(paths.TEACHER_DIR), sampling.load_pipeline(paths.LCM_DIR)
    runs = {"teacher_25step": (teacher, sampling.TEACHER_STEPS), "lcm_1step": (lcm, 1),
            "lcm_2step": (lcm, 2), "lcm_4step": (lcm, 4)}
    imgs, ck, tc, res = {}, {}, {}, {}  # images, checker, toy CLIP, results per model
    for name, (pipe, steps) in runs.items():
        imgs[name] = sampling.generate(pipe, prompts, steps)  # same noise per (caption, seed) for all
        ck[name] = checker.score(imgs[name], prompts)
        with torch.no_grad():
            tc[name] = model.score(imgs[name], prompts).numpy()
        res[name] = {"checker": float(ck[name].mean()), "toy_clip": float(tc[name].mean()),
                     "pearson": pearson(ck[name], tc[name]), "spearman": spearman(ck[name], tc[name])}
    all_ck, all_tc = np.concatenate(list(ck.values())), np.concatenate(list(tc.values()))
    res["all_models"] = {"n": len(all_ck), "pearson": pearson(all_ck, all_tc), "spearman": spearman(all_ck, all_tc)}
    by_checker = sorted(runs, key=lambda n: res[n]["checker"])
    res["model_order_checker"], res["model_order_toy_clip"] = by_checker, sorted(runs, key=lambda n: res[n]["toy_clip"])
    # (teacher, LCM 2-step) on the same caption and noise: where the checker prefers one, does the toy CLIP?
    d_ck = ck["teacher_25step"] - ck["lcm_2step"]
    d_tc = tc["teacher_25step"] - tc["lcm_2step"]
    differ = d_ck != 0
    res["teacher_vs_lcm2_pairs"] = {"n_checker_differs": int(differ.sum()),
                                    "agreement": float((np.sign(d_ck[differ]) == np.sign(d_tc[differ])).mean())}
    return res


@torch.no_grad()
def measure_shortcuts(model: ToyClip, seeds: int = 2) -> dict:
    """Does the score move with things the checker ignores, or reward blank images?"""
    caps = captions.heldout_captions()
    prompts = sampling.eval_prompts(caps, seeds)
    x = torch.from_numpy(np.stack([data.draw_scene(s) for s in data.scenes_for_captions(prompts, seed=2)])
                         .astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    g = torch.Generator().manual_seed(0)
    variants = {
        "dataset": x, "black": torch.zeros_like(x), "grey": torch.full_like(x, 0.5), "white": torch.ones_like(x),
        "uniform_noise": torch.rand(x.shape, generator=g),
        "brightness_x0.7": x * 0.7, "brightness_x1.3": (x * 1.3).clamp(0, 1),
        "contrast_0.6": 0.5 + 0.6 * (x - 0.5), "background_grey_0.2": x + 0.2 * (x.amax(1, keepdim=True) == 0),
        "channels_bgr": x.flip(1), "blur_box3": torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
    }
    return {k: {"toy_clip": float(model.score(v, prompts).mean()), "checker": float(checker.score(v, prompts).mean())}
            for k, v in variants.items()}


def ascend(model: ToyClip, start: torch.Tensor, prompts: list[str], steps: int, lr: float,
           decode=None, every: tuple[int, ...] = ()) -> list[tuple[int, torch.Tensor]]:
    """Adam on `start` (pixels, or latents when `decode` maps them to pixels) to raise the mean
    score; returns [(step, images)] at each step in `every` and at the end."""
    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)

    def pixels() -> torch.Tensor:
        return decode(z) if decode else z.clamp(0, 1)

    snaps = []
    for step in range(steps + 1):
        if step in every or step == steps:
            with torch.no_grad():
                snaps.append((step, pixels().detach()))
        if step == steps:
            break
        with torch.enable_grad():
            loss = -model.score(pixels(), prompts).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return snaps


def measure_ascent(model: ToyClip, steps: int = 50) -> dict:
    """Gradient ascent on the toy-CLIP score from LCM 2-step samples of the 48 held-out captions:
    in pixels (an adversary without constraint) and in the LCM's output latents through the VAE
    decoder (where ReFL's gradient goes). Toy-CLIP and checker means along the way."""
    caps = captions.heldout_captions()
    lcm = sampling.load_pipeline(paths.LCM_DIR)
    with torch.no_grad():
        lat = lcm(caps, num_inference_steps=2, guidance_scale=sampling.LCM_GUIDANCE, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).images  # (48, 4, 8, 8)
    vae = lcm.vae.requires_grad_(False)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)

    with torch.no_grad():
        x0 = decode(lat)
    failed = checker.score(x0, caps) < 1  # ascent can fix these; the others it can only break
    out = {"n": len(caps), "n_checker_below_1_at_start": int(failed.sum())}
    for name, (start, dec, lr) in {"pixels": (x0, None, 0.01), "latents_via_decoder": (lat, decode, 0.05)}.items():
        rows = []
        for step, x in ascend(model, start, caps, steps, lr, dec, every=(0, 5, 10, 25)):
            with torch.no_grad():
                ck = checker.score(x, caps)
                rows.append({"step": step, "toy_clip": round(float(model.score(x, caps).mean()), 4),
                             "checker": round(float(ck.mean()), 4),
                             "checker_of_those_below_1_at_start": round(float(ck[failed].mean()), 4),
                             "checker_of_those_at_1_at_start": round(float(ck[~failed].mean()), 4),
                             "mean_abs_pixel_change": round(float((x - x0).abs().mean()), 4)})
        out[name] = {"adam_lr": lr, "curve": rows}
    return out


def evaluate(folder=None, seeds: int = 4) -> dict:
    torch.manual_seed(0)
    model = ToyClip.from_pretrained(folder) if folder else ToyClip.from_pretrained()
    return {"data": measure_data(model, seeds), "generated": measure_generated(model, seeds), "shortcuts": measure_shortcuts(model),
            "ascent": measure_ascent(model), "heldout_pairs_never_in_training": all(
                not allowed(list(p)) for p in captions.HELDOUT_PAIRS)}
