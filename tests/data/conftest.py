"""Fixtures for the data tests: reproducible episodes of registry tasks, and a local storage config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pac.config import StorageConfig
from pac.data.schema import Episode

MakeEpisode = Callable[..., Episode]


def make_episode(task: str = "cartpole/balance", steps: int = 12, proprio_dim: int = 5, action_dim: int = 1, *,
                 seed: int = 0, terminal: bool = False, images: bool = False, quality: str = "expert",
                 low: float = -2.0, high: float = 3.0) -> Episode:
    """A valid episode with distinct random values (so every row is recognisable after a round trip)."""
    rng = np.random.default_rng(seed)
    discounts = np.ones(steps, np.float32)
    if terminal:
        discounts[-1] = 0.0
    return Episode(
        task=task, instruction=f"instruction for {task}",
        proprio=rng.normal(size=(steps + 1, proprio_dim)).astype(np.float32),
        actions=rng.uniform(low, high, (steps, action_dim)).astype(np.float32),
        rewards=rng.uniform(0, 1, steps).astype(np.float32), discounts=discounts,
        action_low=np.full(action_dim, low, np.float32), action_high=np.full(action_dim, high, np.float32),
        images=rng.integers(0, 256, (steps + 1, 8, 8, 3), dtype=np.uint8) if images else None,
        quality=quality, policy="test-policy", provenance={"source": "tests", "seed": str(seed)},
        episode_id=f"{task}#{seed}")


@pytest.fixture
def episode_factory() -> MakeEpisode:
    return make_episode


@pytest.fixture
def storage(tmp_path: Path) -> StorageConfig:
    """Local storage rooted in the test's temporary directory."""
    return StorageConfig(root=str(tmp_path / "store"))


@pytest.fixture
def mixed_episodes() -> list[Episode]:
    """Two tasks of different embodiments, terminal and truncated episodes, several qualities."""
    eps = [make_episode("cartpole/balance", 10 + i, 5, 1, seed=i, terminal=i % 2 == 0,
                        quality=("random", "noisy", "expert")[i % 3]) for i in range(9)]
    eps += [make_episode("point_mass/easy", 6 + 2 * i, 4, 2, seed=100 + i, low=-1.0, high=1.0) for i in range(5)]
    return eps
