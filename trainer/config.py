"""One typed config for every trainer command. Each field has a one-line help, becomes a CLI
flag (`--n-noises 4`), can come from the environment (TRAINER_N_NOISES=4), and is validated
before any work starts."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _toy(name: str) -> str:
    from toyworld import paths

    return str(getattr(paths, name))


class TrainConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", frozen=True)

    # --- model ---
    base_model: str = Field(default_factory=lambda: _toy("LCM_DIR"), description="LCM-family pipeline: hub id or local diffusers folder.")
    teacher_model: str | None = Field(default_factory=lambda: _toy("TEACHER_DIR"), description="Teacher pipeline for the lcm regulariser.")
    device: str = Field("cpu", description="Torch device.")
    mixed_precision: str = Field("no", description="no | fp16 | bf16 (autocast on GPU).")
    lora_rank: int = Field(None, ge=0, validate_default=False,  # type: ignore[assignment]
                           description="LoRA rank; 0 = full fine-tuning. Default: 64 for the SDXL family (memory), else 0.")
    lcm_lora: str | None = Field(None, description="LCM-LoRA (hub id, folder or file) fused into a non-LCM base model first.")
    guidance_scale: float = Field(None, ge=0.0, validate_default=False,  # type: ignore[assignment]
                                  description="Guidance scale as the pipeline takes it (LCM: the UNet sees w = guidance_scale − 1). Default: 3.0 for the toy LCM, 8.0 for other LCMs, 0 (none) for Turbo and LCM-LoRA.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the UNet.")
    # --- services ---
    reward_url: str = Field("http://127.0.0.1:8100", description="Reward service base URL.")
    reward: str = Field("toy_attribute_binding", description="True reward name (or a JSON object of name -> weight).")
    reward_token: str | None = Field(None, description="Bearer token of the reward service.")
    surrogate_url: str = Field("http://127.0.0.1:8200", description="Surrogate service base URL.")
    surrogate_token: str | None = Field(None, description="Bearer token of the surrogate service.")
    redis_url: str | None = Field(None, description="Redis of the surrogate's sample-group stream (required to adapt).")
    stream: str = Field("lasro:groups", description="Redis stream name (same as the surrogate's).")
    service_retries: int = Field(6, ge=0, description="Retries (with backoff) before a service counts as gone.")
    redis_outage_s: float = Field(120.0, gt=0, description="How long a Redis outage is ridden out (retries with backoff) before the run checkpoints and stops; unsent sample groups wait in out/unsent-groups for --resume.")
    # --- prompts ---
    prompts: Path | None = Field(None, description="Text file, one training prompt per line; default: toy captions.")
    eval_prompts: Path | None = Field(None, description="Text file of held-out prompts; default: toy held-out captions.")
    eval_seeds: int = Field(2, ge=1, description="Fixed noises per held-out prompt.")
    # --- the LaSRO loop ---
    iterations: int = Field(200, ge=0, description="Generator updates.")
    prompts_per_iter: int = Field(8, ge=1, description="Distinct prompts per iteration.")
    n_noises: int = Field(4, ge=2, description="N_s: initial noises per prompt (off-policy exploration; group size).")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate of the generator.")
    lr_schedule: str = Field("constant", description="constant or cosine (from lr down to lr_final_ratio·lr at the last iteration).")
    lr_final_ratio: float = Field(0.1, ge=0, le=1, description="Cosine schedule: final lr as a fraction of lr.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping of the generator.")
    c: float = Field(1.0, ge=0, description="Weight c of the regulariser.")
    c1: float = Field(1.0, ge=0, description="Weight c1 of the one-step surrogate term.")
    c2: float = Field(1.0, ge=0, description="Weight c2 of the two-step surrogate term.")
    regularizer: str = Field("lcm", description="lcm | anchor | none.")
    normalizer: str = Field("ema_norm", description="S: ema_norm | max_norm | none (see trainer/normalize.py).")
    norm_clip: float = Field(3.0, gt=0, description="S clips per-sample gradient norms above clip × running mean.")
    adapt_every: int = Field(1, ge=1, description="Every k iterations, score fresh samples and feed the surrogate.")
    adapt: bool = Field(True, description="Online adaptation: stream freshly scored samples to the surrogate learner while fine-tuning; --no-adapt freezes R_psi after pre-training (the paper's fixed-surrogate ablation).")
    exploration: str = Field("off_policy", description="off_policy: N_s different initial noises per prompt (LaSRO); on_policy: a prompt's N_s samples share one z_T and differ only in the renoising noise (ablation).")
    grad_source: str = Field("surrogate", description="surrogate: dR/dz from R_psi (LaSRO); true: the true reward's own gradient through the VAE decoder, from the reward service's POST /grad (the ReFL/DRaFT oracle; needs a differentiable reward).")
    grad_cosine: bool = Field(False, description="Diagnostic (needs a differentiable true reward): at every evaluation, also fetch the true reward's gradient for that iteration's z1 and z2 and log its cosine with R_psi's (grad_cosine_1step/2step in metrics.jsonl); these queries count as evaluation queries, not training ones.")
    eval_every: int = Field(25, ge=1, description="Evaluate on held-out prompts every M iterations.")
    checkpoint_every: int = Field(50, ge=1, description="Write the last checkpoint (out/checkpoint) every this many iterations.")
    keep_all: bool = Field(False, description="Also keep every --checkpoint-every checkpoint as out/checkpoint-N (always kept: best and last).")
    # --- the policy-gradient and preference baselines (trainer/rlcm.py, trainer/dpo.py) ---
    ppo_clip_range: float = Field(1e-4, gt=0, description="RLCM: PPO ratio clip ε (RLCM's and ddpo-pytorch's 1e-4).")
    ppo_inner_epochs: int = Field(2, ge=1, description="RLCM: clipped-ratio updates per sampled batch.")
    adv_clip_max: float = Field(10.0, gt=0, description="RLCM: advantages clipped to ±this (RLCM's 10).")
    dpo_beta: float = Field(1000.0, gt=0, description="DPO: β of the Diffusion-DPO loss on consistency errors (x0-space MSE).")
    # --- pretrain ---
    pretrain_groups: int = Field(256, ge=0, description="Budget of sample groups (prompt × step) for pretraining.")
    pretrain_accuracy: float = Field(0.75, ge=0.5, le=1.0, description="Stop pretraining at this held-out pair accuracy.")
    pretrain_timeout_s: float = Field(1800.0, gt=0, description="Longest wait for the learner to train off the pretraining groups.")
    # --- outputs ---
    out: Path = Field(Path("runs/train"), description="Output folder: checkpoints, TensorBoard, metrics, grids, report.")
    resume: str | None = Field(None, description="latest: resume from out/checkpoint if there is one; or a checkpoint folder to resume from.")
    seed: int = Field(0, description="Seed of prompts, noises and data.")
    progress: bool = Field(True, description="Show progress bars.")
    report_to: str = Field("tensorboard", description="Trackers of the run's metrics and images (accelerate's): tensorboard (out/tb), wandb (WANDB_MODE=offline works without a network), all (both) or none; metrics.jsonl and report.html are written in any case.")

    @model_validator(mode="before")
    @classmethod
    def _default_guidance(cls, data: dict) -> dict:
        if isinstance(data, dict) and data.get("guidance_scale") is None:
            from toyworld.paths import LCM_DIR

            from .guidance import default_guidance

            data = {**data, "guidance_scale": default_guidance(data.get("base_model") or str(LCM_DIR), data.get("lcm_lora"))}
        if isinstance(data, dict) and data.get("lora_rank") is None:
            data = {**data, "lora_rank": 64 if _is_sdxl(data.get("base_model")) else 0}
        return data

    @field_validator("resume", mode="before")
    @classmethod
    def _resume(cls, v: object) -> object:
        """`latest` (or true, as TRAINER_RESUME=true has always meant), a folder, or none (false, empty)."""
        text = str(v).strip().lower() if v is not None else ""
        if isinstance(v, bool) or text in ("", "true", "false", "1", "0", "yes", "no", "latest"):
            return "latest" if (v is True or text in ("true", "1", "yes", "latest")) else None
        return str(v)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        from .normalize import KINDS as NORMS
        from .regularizers import KINDS as REGS

        if self.regularizer not in REGS:
            raise ValueError(f"regularizer must be one of {REGS}, got {self.regularizer!r}")
        if self.normalizer not in NORMS:
            raise ValueError(f"normalizer must be one of {NORMS}, got {self.normalizer!r}")
        if self.exploration not in ("off_policy", "on_policy"):
            raise ValueError(f"exploration must be off_policy or on_policy, got {self.exploration!r}")
        if self.grad_source not in ("surrogate", "true"):
            raise ValueError(f"grad_source must be surrogate or true, got {self.grad_source!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.report_to not in ("tensorboard", "wandb", "all", "none"):
            raise ValueError(f"report_to must be tensorboard, wandb, all or none, got {self.report_to!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.mixed_precision != "no" and self.device == "cpu":
            raise ValueError("mixed_precision needs a GPU; use --mixed-precision no on the CPU")
        for f in ("prompts", "eval_prompts"):
            p = getattr(self, f)
            if p is not None and not p.is_file():
                raise ValueError(f"{f}: {p} is not a file (one prompt per line)")
        if self.resume is not None and self.resume != "latest" and not (Path(self.resume) / "state.json").is_file():
            raise ValueError(f"resume: {Path(self.resume) / 'state.json'} not found; give `latest` or a checkpoint "
                             "folder (out/checkpoint, out/checkpoint-best, out/checkpoint-N)")
        for u in ("reward_url", "surrogate_url"):
            if not getattr(self, u).startswith(("http://", "https://")):
                raise ValueError(f"{u} must start with http:// or https://")
        return self


def _is_sdxl(base_model: str | None) -> bool:
    """SDXL family (SDXL, SSD-1B, SDXL-Turbo, LCM-SDXL): the pipeline has a second text encoder."""
    if not base_model:
        return False
    from lasro_diffusion.loading import read_pipeline_json

    index = read_pipeline_json(str(base_model), "model_index.json") or {}
    return "text_encoder_2" in index or "XL" in str(index.get("_class_name", ""))

