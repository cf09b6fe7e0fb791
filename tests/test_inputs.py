"""State normalisation: per-task statistics, their fallbacks and their refusals (issue 26, bad input)."""

from __future__ import annotations

import numpy as np
import pytest
from pac.config import ConfigError, ModelConfig, ProprioStats
from pac.inputs import MissingStatsError, normalize_proprio, task_stats

STATS = ProprioStats(mean=[1.0, -2.0, 5.0], std=[0.5, 4.0, 0.0])


def test_states_are_standardised_and_a_constant_dimension_is_only_centred() -> None:
    x = np.array([[2.0, 2.0, 5.0], [1.0, -2.0, 5.3]], np.float32)
    out = normalize_proprio(x, STATS)
    np.testing.assert_allclose(out, [[2.0, 1.0, 0.0], [0.0, 0.0, 0.3]], atol=1e-6)
    assert out.dtype == np.float32
    assert normalize_proprio(x, None) is x


def test_a_state_of_another_width_is_refused() -> None:
    with pytest.raises(ValueError, match="state has 2 dims; the model's statistics for this task have 3"):
        normalize_proprio(np.zeros(2, np.float32), STATS)


def test_a_model_with_statistics_refuses_a_task_it_has_none_for() -> None:
    model = ModelConfig(proprio_stats={"point_mass/easy": STATS})
    assert task_stats(model, "point_mass/easy") is STATS
    with pytest.raises(MissingStatsError, match=r"no statistics for 'reacher/easy' \(it has them for point_mass/easy"):
        task_stats(model, "reacher/easy")
    # raw states by choice, or a model that never saw a dataset (batches a caller made): nothing to apply
    assert task_stats(ModelConfig(proprio_norm="none", proprio_stats={"point_mass/easy": STATS}), "x") is None
    assert task_stats(ModelConfig(), "reacher/easy") is None


def test_malformed_statistics_are_rejected_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="model.proprio_stats: mean has 2 dims and std 1"):
        ProprioStats(mean=[0.0, 1.0], std=[1.0])
    with pytest.raises(ConfigError, match="model.proprio_stats: std must be >= 0"):
        ProprioStats(mean=[0.0], std=[-1.0])
    with pytest.raises(ConfigError, match="model.proprio_norm"):
        ModelConfig(proprio_norm="zscore")  # type: ignore[arg-type]
