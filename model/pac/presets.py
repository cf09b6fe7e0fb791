"""Named model-size presets: tiny CPU presets for tests and the demo, and the paper's scale ladder.

The ladder XS..XL is roughly log-spaced from ~30M to ~1B parameters (the range the paper scales
over); every preset's parameter count is asserted by `tests/test_presets.py`. Presets hold only the
fields that differ from `ModelConfig`'s defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pac.config import ConfigError, ModelConfig

PRESETS: dict[str, dict[str, Any]] = {
    # CPU presets (<= 2.5M parameters): unit tests, the local demo, the quality benchmark.
    "tiny": {},
    "tiny-wide": {"d_model": 128, "num_latents": 32, "num_blocks": 3},
    "small-cpu": {"d_model": 144, "num_latents": 32, "num_blocks": 4, "num_heads": 8},
    # Scale ladder (roughly x2.5 per rung).
    "XS": {"d_model": 512, "num_latents": 64, "num_blocks": 8, "num_heads": 8},
    "S": {"d_model": 768, "num_latents": 96, "num_blocks": 10, "num_heads": 12},
    "M": {"d_model": 1024, "num_latents": 128, "num_blocks": 14, "num_heads": 16},
    "L": {"d_model": 1536, "num_latents": 128, "num_blocks": 14, "num_heads": 16},
    "XL": {"d_model": 2048, "num_latents": 256, "num_blocks": 18, "num_heads": 16},
}


def model_config(name: str) -> ModelConfig:
    """The resolved `ModelConfig` of preset `name`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return dataclasses.replace(ModelConfig(), **PRESETS[name])
