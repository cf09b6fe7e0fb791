"""The self-improvement benchmark's configuration (`benchmarks/self_improvement.py`): its budget flags and `--set`
overrides reach pretraining and rounds, and a malformed override is refused before any work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from pac.config import ConfigError


@pytest.fixture
def si(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("self_improvement")


def test_overrides_reach_the_model_and_the_rounds(si: ModuleType, tmp_path: Path) -> None:
    args = si.parse_args(["--output", str(tmp_path), "--preset", "tiny", "--rounds", "4", "--finetune-alpha", "1.0",
                          "--set", "model.proprio_encoder=vector", "--set", "model.proprio_fourier_bands=0"])
    cfg = si.run_config(args, tmp_path)
    assert cfg.model.proprio_encoder == "vector" and cfg.model.proprio_fourier_bands == 0
    assert cfg.model.d_model == 64  # the rest of the preset stays
    assert cfg.improve.iterations == 4 and cfg.improve.finetune_alpha == 1.0
    assert cfg.generate.tasks == ["jaco/reach_site"] and cfg.eval.tasks == ["jaco/reach_site"]


def test_a_malformed_override_is_refused(si: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        si.parse_args(["--set", "proprio_encoder=vector"])  # no section
    args = si.parse_args(["--output", str(tmp_path), "--set", "model.proprio_encoder=matrix"])
    with pytest.raises(ConfigError, match="model.proprio_encoder"):
        si.run_config(args, tmp_path)
