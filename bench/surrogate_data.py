"""How much data does R_psi need? Held-out pair accuracy of the surrogate against the number of
sample groups it trains on, on the toy world, with the learner's own buffer, pair sampling,
Bradley-Terry loss and accuracy code (no services: this isolates the model from the system).

Groups come from the initial toy LCM (N_s noises per caption, both steps, checker reward), as in
`trainer pretrain`; the held-out groups use other captions. Each budget trains a fresh R_psi for
the same number of updates, so the rows differ only in how many distinct groups they saw.

    python -m bench.surrogate_data [--groups 384 1024 3072] [--updates 2000]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from tqdm.auto import tqdm

from surrogate_service.buffer import BufferedGroup, ReplayBuffer
from surrogate_service.fit import Fitter
from surrogate_service.model import load_surrogate
from surrogate_service.settings import SurrogateSettings

from .common import print_table, write_json


@torch.no_grad()
def make_groups(prompts: list[str], n_noises: int, seed: int) -> list[BufferedGroup]:
    """One group per (caption, step): the initial toy LCM's z1 and z2 with checker rewards."""
    from toyworld import checker
    from toyworld.paths import LCM_DIR
    from toyworld.sampling import LCM_GUIDANCE
    from trainer.fewstep import FewStepModel

    m = FewStepModel(str(LCM_DIR), guidance_scale=LCM_GUIDANCE)
    g = torch.Generator().manual_seed(seed)
    out: list[BufferedGroup] = []
    for i in tqdm(range(0, len(prompts), 32), desc=f"groups (seed {seed})", leave=False):
        ps = prompts[i : i + 32]
        reps = [p for p in ps for _ in range(n_noises)]
        s = m.sample(m.noise(len(reps), g), m.encode(reps), g)
        scores = torch.as_tensor(checker.score(m.decode(torch.cat([s.z1, s.z2]), chunk=256), reps + reps)).float()
        for k, p in enumerate(ps):  # caption-major: any prefix holds both steps of its captions
            sl = slice(k * n_noises, (k + 1) * n_noises)
            for step, z, r in ((1, s.z1, scores[: len(reps)]), (2, s.z2, scores[len(reps) :])):
                gid = f"{seed}-{i + k}-{step}"
                out.append(BufferedGroup(gid, gid, p, step, z[sl].clone(), r[sl].clone()))
    return out


def train_budget(train: list[BufferedGroup], heldout: list[BufferedGroup], updates: int, pairs: int, lr: float,
                 head_channels: int, evals: int, seed: int) -> list[dict]:
    """A fresh R_psi trained by the learner's own Fitter (surrogate_service/fit.py) on `train`."""
    from toyworld.paths import LCM_DIR

    torch.manual_seed(seed)
    model, text = load_surrogate(str(LCM_DIR), head_channels=head_channels)
    settings = SurrogateSettings(base_model=str(LCM_DIR), lr=lr, pairs_per_update=pairs, head_channels=head_channels,
                                 eval_every=updates + 1)  # accuracy is measured here, per head
    fit = Fitter(model, text, None, settings)
    fit.gen.manual_seed(seed)
    buf = ReplayBuffer(len(train), margin=settings.margin)
    for g in train:
        buf.add(g)
    points, t0 = [], time.perf_counter()
    for u in tqdm(range(1, updates + 1), desc=f"{len(train)} groups", leave=False):
        fit.step(buf, buf)
        if u % max(1, updates // evals) == 0 or u == updates:
            acc = {h: fit.heldout_accuracy([g for g in heldout if g.step == h]) for h in (1, 2)}
            points.append({"updates": u, "acc_1step": acc[1], "acc_2step": acc[2], "s": time.perf_counter() - t0})
    return points


def main(argv: list[str] | None = None) -> dict:
    from toyworld.captions import train_caption_stream

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", type=int, nargs="+", default=[384, 1024, 3072], help="training budgets (groups, both steps)")
    p.add_argument("--heldout-prompts", type=int, default=256, help="at most 256: the learner scores its 256 newest held-out groups")
    p.add_argument("--n-noises", type=int, default=8)
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--pairs", type=int, default=32, help="pairs per update (the demo's)")
    p.add_argument("--lr", type=float, default=3e-4, help="the demo's learner lr")
    p.add_argument("--head-channels", type=int, default=64)
    p.add_argument("--evals", type=int, default=4)
    a = p.parse_args(argv)
    biggest = max(a.groups)
    train = make_groups(list(itertools.islice(train_caption_stream(0), (biggest + 1) // 2)), a.n_noises, seed=0)
    held = ReplayBuffer(2 * a.heldout_prompts, margin=1e-3)  # derives each group's eligible pairs
    for g in make_groups(list(itertools.islice(train_caption_stream(1), a.heldout_prompts)), a.n_noises, seed=1):
        held.add(g)
    heldout = held.groups
    rows, curves = [], {}
    for n in a.groups:
        # the first n groups: n/2 captions, each with its 1-step and its 2-step group
        pts = train_budget(train[:n], heldout, a.updates, a.pairs, a.lr, a.head_channels, a.evals, seed=0)
        curves[n] = pts
        best2 = max(pts, key=lambda q: q["acc_2step"] or 0)
        rows.append({"groups": n, "updates": a.updates, "acc_1step": pts[-1]["acc_1step"],
                     "acc_2step": pts[-1]["acc_2step"], "best_2step": best2["acc_2step"],
                     "best_at": best2["updates"], "train_s": pts[-1]["s"]})
    print_table(f"R_psi held-out pair accuracy vs training groups ({a.updates} updates x {a.pairs} pairs)", rows,
                ["groups", "updates", "acc_1step", "acc_2step", "best_2step", "best_at", "train_s"])
    result = {"rows": rows, "curves": {str(k): v for k, v in curves.items()}, "args": vars(a)}
    write_json("surrogate_data", result)
    return result


if __name__ == "__main__":
    main()
