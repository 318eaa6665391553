"""Base experiment config: every default. Usage: --config=configs/base.py:<preset> (tiny, small, scout, ...)."""

import ml_collections

from configs import models


def get_config(preset: str = "tiny"):
  if preset not in models.PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(models.PRESETS)}")
  config = ml_collections.ConfigDict()
  config.preset = preset
  config.model = models.PRESETS[preset]()
  config.seed = 0
  return config
