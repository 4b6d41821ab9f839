"""Estimated GPU memory of the trainer and the surrogate service, from parameter counts and
activation sizes. Nothing here is measured: `python docker/memory_estimate.py` prints the tables in
docs/deployment.md, and the doc explains every term. GB = 10^9 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
K_TB, K_RES = 40, 8  # stored N x C activation tensors per transformer block / per resnet (no checkpointing)
K_GC = 2  # stored N x C tensors per checkpointed module (its input and residual)
F = 2  # UNet forwards on the autograd tape per sample: z1 = f(z_T) and z2 = f(z_tau1)
DECODE_CHUNK = 16  # trainer/fewstep.py: decode(chunk=16)
DECODE_LIVE = 3  # live full-resolution 128-channel fp32 tensors at the VAE decoder's peak


@dataclass
class Level:
    side: int  # latent side at this level (pixels / 8 / 2^level)
    c: int  # channels
    tb_enc: int  # transformer blocks in down blocks + mid block
    res_enc: int  # resnets in down blocks + mid block
    tb_dec: int  # transformer blocks in up blocks
    res_dec: int  # resnets in up blocks


@dataclass
class Model:
    name: str
    res: int  # image side in pixels
    p_unet: float
    p_text: float
    p_vae: float
    levels: list[Level]
    cross_dim: int

    def values(self, enc_only: bool = False, gc: bool = False) -> float:
        """Stored activation values per sample for one UNet forward (or its encoder half)."""
        total = 0.0
        for lv in self.levels:
            nc = lv.side**2 * lv.c
            tb = lv.tb_enc + (0 if enc_only else lv.tb_dec)
            res = lv.res_enc + (0 if enc_only else lv.res_dec)
            total += nc * ((K_GC * (tb + res)) if gc else (K_TB * tb + K_RES * res))
        return total

    def peak_block(self) -> float:
        """Values of the largest single block, recomputed during a checkpointed backward."""
        return max(lv.side**2 * lv.c * (K_TB if lv.tb_enc + lv.tb_dec else K_RES) for lv in self.levels)

    def p_lora(self, rank: int) -> float:
        """LoRA on to_q, to_k, to_v, to_out.0 of self- and cross-attention: r * sum(d_in + d_out)."""
        per = sum((lv.tb_enc + lv.tb_dec) * (14 * lv.c + 2 * self.cross_dim) for lv in self.levels)
        return rank * per


def sdxl_levels(s: int, tb_1280: tuple[int, int]) -> list[Level]:
    # SDXL: Down(320) -> CrossAttnDown(640, 2 blocks/attn) -> CrossAttnDown(1280, 10 blocks/attn) + mid
    return [Level(s, 320, 0, 2, 0, 3), Level(s // 2, 640, 4, 2, 6, 3),
            Level(s // 4, 1280, tb_1280[0], 4, tb_1280[1], 3)]


def sd15_levels(s: int) -> list[Level]:
    # SD 1.5: CrossAttnDown(320, 640, 1280) -> Down(1280) + mid(1280, 1 block), 3 resnets per up block
    return [Level(s, 320, 2, 2, 3, 3), Level(s // 2, 640, 2, 2, 3, 3), Level(s // 4, 1280, 2, 2, 3, 3),
            Level(s // 8, 1280, 1, 4, 0, 3)]


T_XL, T_15, VAE = 0.123e9 + 0.695e9, 0.123e9, 0.084e9
# SSD-1B keeps ~1.3 B of SDXL's 2.567 B; nearly all of the cut is 1280-wide transformer blocks
# (~34.8 M parameters each), so ~36 of SDXL's 60 go: we take 12 (down + mid) and 12 (up).
MODELS = [
    Model("LCM-SSD-1B", 1024, 1.3e9, T_XL, VAE, sdxl_levels(128, (12, 12)), 2048),
    Model("LCM-SDXL", 1024, 2.567e9, T_XL, VAE, sdxl_levels(128, (30, 30)), 2048),
    Model("SDXL-Turbo", 512, 2.567e9, T_XL, VAE, sdxl_levels(64, (30, 30)), 2048),
    Model("LCM-Dreamshaper-v7", 768, 0.86e9, T_15, VAE, sd15_levels(96), 768),
]


def trainer_gb(m: Model, *, lora: int, half: bool, gc: bool, batch: int) -> dict[str, float]:
    b = 2 if half else 4  # bytes of frozen weights and activations
    if lora:
        weights = b * m.p_unet + 16 * m.p_lora(lora)  # base + LoRA state; the anchor switches adapters off
    else:
        # fp32 master weights + grads + AdamW m, v; the anchor's fp32 copy; autocast's cast cache
        weights = 16 * m.p_unet + 4 * m.p_unet + (2 * m.p_unet if half else 0)
    frozen = b * m.p_text + 4 * m.p_vae
    act = batch * F * m.values(gc=gc) * b + (batch * m.peak_block() * b if gc else 0)
    decode = min(DECODE_CHUNK, 2 * batch) * DECODE_LIVE * m.res**2 * 128 * 4
    return {"weights": weights / GB, "frozen": frozen / GB, "act": act / GB, "decode": decode / GB}


def surrogate_gb(m: Model, *, pairs: int, half: bool, batch: int) -> float:
    """Learner (2 x pairs latents with grad) plus /grad serving (both heads, B latents each) at once."""
    b = 2 if half else 4
    p_enc = 0.45 * m.p_unet  # conv_in, embeddings, down blocks and mid block: ~45% of the UNet
    weights = b * p_enc + 4 * b * p_enc  # serving copy + training copy, its grads and AdamW m, v
    act = (2 * pairs + 2 * batch) * m.values(enc_only=True) * b
    return (weights + b * m.p_text + act) / GB


def tables(batch: int = 4, rank: int = 64) -> str:
    rows = [f"| model | px | UNet mode | precision | trainable + copies | frozen | activations, B={batch} (GC on / off) "
            "| VAE decode | total, GC on | total, GC off |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        for lora in (0, rank):
            for half in (True, False):
                on = trainer_gb(m, lora=lora, half=half, gc=True, batch=batch)
                off = trainer_gb(m, lora=lora, half=half, gc=False, batch=batch)
                tot_on = sum(on.values()) + 1.5
                tot_off = sum(off.values()) + 1.5
                rows.append(f"| {m.name} | {m.res}² | {f'LoRA r={lora}' if lora else 'full'} | "
                            f"{'bf16/fp16' if half else 'fp32'} | {on['weights']:.1f} | {on['frozen']:.1f} | "
                            f"{on['act']:.1f} / {off['act']:.1f} | {on['decode']:.1f} | {tot_on:.0f} | {tot_off:.0f} |")
    srows = [f"| model | px | SURROGATE_DTYPE | pairs/update 4, /grad 2x{batch} | pairs/update 64 (default), /grad 2x{batch} |",
             "|---|---|---|---|---|"]
    for m in MODELS:
        for half in (False, True):
            srows.append(f"| {m.name} | {m.res}² | {'bfloat16' if half else 'float32'} | "
                         f"{surrogate_gb(m, pairs=4, half=half, batch=batch) + 1.5:.0f} | {surrogate_gb(m, pairs=64, half=half, batch=batch) + 1.5:.0f} |")
    return "\n".join(rows) + "\n\n" + "\n".join(srows) + "\n"


if __name__ == "__main__":
    print(tables(), end="")
