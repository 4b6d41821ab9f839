"""The model-side ground floor: what the trainer, the services and the toy world all need to work
with diffusers pipelines.

- ``loading``: the process-wide model load lock; reading a pipeline's JSON files.
- ``text``: prompt encoding for every pipeline family (SD1.5, SDXL), exactly as diffusers does it.
- ``consistency``: the LCM / consistency-distillation math (boundary scalings, guidance embedding,
  DDIM solver, EMA, the distillation loss).
- ``pairs``: pair metrics over groups of samples ranked by a true reward.

It imports nothing of this project above it (checked by tests/unit/test_layers.py).
"""
