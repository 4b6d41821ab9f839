"""Where the toy world lives on disk."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE_DIR / "models"  # committed pipeline folders
TEACHER_DIR = MODELS_DIR / "teacher"  # StableDiffusionPipeline + DDIMScheduler
LCM_DIR = MODELS_DIR / "lcm"  # LatentConsistencyModelPipeline + LCMScheduler
BUILD_DIR = PACKAGE_DIR / ".build"  # resumable build checkpoints (gitignored)
