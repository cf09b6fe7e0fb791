"""The offline-RL peers benchmark (`benchmarks/peers.py`): the episodes it hands d3rlpy, its refusals, and (when
the peers' environment exists, `benchmarks/peers-setup`) a toy-budget run of every peer through our rollout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from pac.config import GenerateConfig, StorageConfig
from pac.data.generate import generate_episodes
from pac.data.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


@pytest.fixture(scope="module")
def peers(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("peers")


@pytest.fixture(scope="module")
def episodes() -> list:
    cfg = GenerateConfig(tasks=["point_mass/easy"], qualities=["random", "expert"], episodes_per_policy=2,
                         episode_steps=30, workers=1)
    return list(generate_episodes(cfg, progress=False))


class QuadraticCritic:
    """A d3rlpy-shaped algorithm whose Q peaks at the action `best`, or at +-best when symmetric."""

    def __init__(self, best: np.ndarray, symmetric: bool) -> None:
        self.best, self.symmetric = best, symmetric

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.repeat(self.best[None], len(x), 0)

    def predict_value(self, x: np.ndarray, action: np.ndarray) -> np.ndarray:
        a = np.abs(action) if self.symmetric else action
        return -((a - self.best) ** 2).sum(-1)


@pytest.mark.parametrize("symmetric,mirror", [(False, 1.0), (True, 0.5)])
def test_the_peers_critic_probe_tells_direction_from_magnitude(benchmark_module: Callable[[str], ModuleType],
                                                               symmetric: bool, mirror: float) -> None:
    """The probe `compare.py` reports beside ours: a critic that knows which way to act ranks the expert's action
    above its mirror image; one that only knows the action's size ties them (0.5)."""
    probe_critic = benchmark_module("peers_train").probe_critic
    best = np.array([0.6, 0.3], np.float32)
    states = np.zeros((50, 4), np.float32)
    got = probe_critic(QuadraticCritic(best, symmetric), states, np.repeat(best[None], 50, 0))
    assert got["critic_mirror_pct"] == mirror
    assert got["critic_expert_pct"] == got["critic_greedy_pct"] == 1.0  # the best action beats random ones
    assert got["greedy_expert_dist"] == 0.0


def test_exported_episodes_are_the_transitions_with_normalised_actions_and_timeouts(peers: ModuleType, episodes: list,
                                                                                    tmp_path: Path) -> None:
    n = peers.export_task(episodes, tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz", allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    assert n == sum(ep.length for ep in episodes) == len(data["observations"]) == len(data["actions"])
    assert data["episode_ends"].tolist() == np.cumsum([ep.length for ep in episodes]).tolist()
    np.testing.assert_array_equal(data["observations"][: episodes[0].length], episodes[0].proprio[:-1])
    assert np.abs(data["actions"]).max() <= 1.0  # the peers act in [-1, 1]; point mass's bounds are [-1, 1]
    np.testing.assert_allclose(data["actions"][: episodes[0].length], episodes[0].actions, atol=1e-6)
    # time-limited episodes end in a timeout, never a terminal (that would zero the value of the last state)
    assert data["terminals"].sum() == 0
    assert data["timeouts"][data["episode_ends"] - 1].tolist() == [1.0] * len(episodes)
    assert data["timeouts"].sum() == len(episodes)


def test_missing_peers_are_named_with_the_set_up_command(peers: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(peers.PeersUnavailable, match="benchmarks/peers-setup"):
        peers.check_peers(tmp_path / "no-such-python")


def test_a_task_without_episodes_fails_at_the_start(peers: ModuleType, episodes: list, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ingest(iter(episodes), "mixed", storage=StorageConfig(root=str(tmp_path / "store")))
    code = peers.main(["--dataset", "mixed", "--storage-root", str(tmp_path / "store"), "--tasks",
                       "point_mass/easy,reacher/easy", "--output", str(tmp_path / "out")])
    assert code == 2
    assert "no episodes for reacher/easy" in capsys.readouterr().err


@pytest.mark.slow
def test_toy_budget_run_of_every_peer_writes_the_table(peers: ModuleType, episodes: list, tmp_path: Path) -> None:
    if not PEERS_PYTHON.exists():
        pytest.skip("needs .venv-peers: run benchmarks/peers-setup")
    ingest(iter(episodes), "mixed", storage=StorageConfig(root=str(tmp_path / "store")))
    args = ["--dataset", "mixed", "--storage-root", str(tmp_path / "store"), "--steps", "20", "--eval-episodes", "2",
            "--episode-steps", "20", "--output", str(tmp_path / "out")]
    assert peers.main(args) == 0
    table = (tmp_path / "out" / "results.md").read_text()
    for label in peers.LABELS.values():
        assert label in table
    # resumable: a second run trains nothing and reports the same table
    assert peers.main(args) == 0
    assert (tmp_path / "out" / "results.md").read_text().split("\n\n")[0] == table.split("\n\n")[0]
