"""The step benchmark (`benchmarks/train_throughput.py`, issue 27): a preset's variants are measured beside it."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
from pac.config import ConfigError


@pytest.fixture()
def throughput(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("train_throughput")


def test_a_preset_variant_changes_only_the_named_model_fields(throughput: ModuleType) -> None:
    tiny, variant = throughput.preset_model("tiny"), throughput.preset_model("tiny@num_latents=8,num_blocks=1")
    assert (variant.num_latents, variant.num_blocks) == (8, 1)
    assert {**vars(variant), "num_latents": tiny.num_latents, "num_blocks": tiny.num_blocks} == vars(tiny)
    with pytest.raises(ConfigError, match="num_latent"):
        throughput.preset_model("tiny@num_latent=8")


def test_variants_are_timed_and_counted_side_by_side(throughput: ModuleType) -> None:
    result = throughput.run(["tiny", "tiny@num_latents=4"], batch=8, steps=1, warmup=0, stages=[], fp32_presets=[],
                            peak_size=64, peak_seconds=0.01, methods=("bc",))
    flops = {key: info["flops_per_step"] for key, info in result["presets"].items()}
    assert 0 < flops["tiny@num_latents=4/bc"] < flops["tiny/bc"]
    assert {r["preset"] for r in result["rows"]} == {"tiny", "tiny@num_latents=4"}
