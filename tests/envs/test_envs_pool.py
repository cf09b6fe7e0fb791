"""Environment worker processes: a crashed or hung worker fails the rollout cleanly and leaves no process."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Sequence

import numpy as np
import pytest
from pac.config import EvalConfig
from pac.envs.env import Obs
from pac.envs.pool import EnvPool, EnvWorkerError
from pac.evaluation import rollout


def _workers() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("pac-env-")]


class Saboteur:
    """Zero actions; at control step `at` it sends `sig` to every environment worker."""

    name = "saboteur"
    reads_simulator = False

    def __init__(self, sig: int, at: int = 5) -> None:
        self.sig, self.at, self.calls = sig, at, 0

    def start(self, slot: int, env: object, seed: int) -> None:
        pass

    def act(self, slots: Sequence[int], envs: Sequence[object], obs: Sequence[Obs]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.at:
            for proc in _workers():
                os.kill(proc.pid, self.sig)
        return np.zeros((len(slots), 1), np.float32)


@pytest.mark.parametrize(("sig", "message"), [
    (signal.SIGKILL, r"cartpole/balance: environment worker pac-env-cartpole/balance-\d \(episode seeds \d+, \d+\) "
                     r"died \(exit code -9\)"),
    (signal.SIGSTOP, r"cartpole/balance: environment worker .* gave no answer for 2 s \(eval.env_timeout_s\)"),
])
def test_a_dead_or_hung_worker_fails_the_rollout_naming_task_and_seeds_and_leaves_no_process(
        sig: int, message: str) -> None:
    cfg = EvalConfig(episodes=4, num_envs=4, episode_steps=50, video=False, env_workers=2, env_timeout_s=2.0)
    with pytest.raises(EnvWorkerError, match=message):
        rollout(Saboteur(sig), "cartpole/balance", cfg, progress=False)
    assert _workers() == []


def test_the_pool_steps_each_environment_as_an_env_in_this_process_would() -> None:
    seeds = [3, 4, 5]
    pools = [EnvPool("point_mass/easy", seeds, episode_steps=20, workers=w) for w in (0, 2)]
    try:
        first = [[p.reset(slot, 100 + slot)["proprio"] for slot in range(3)] for p in pools]
        np.testing.assert_array_equal(first[0], first[1])
        rng = np.random.default_rng(0)
        for _ in range(20):
            actions = {slot: rng.uniform(-1, 1, 2).astype(np.float32) for slot in (0, 2)}  # slot 1 rests
            here, there = (p.step(actions) for p in pools)
            assert sorted(here) == sorted(there) == [0, 2]
            for slot in here:
                np.testing.assert_array_equal(here[slot][0]["proprio"], there[slot][0]["proprio"])
                assert here[slot][1:] == there[slot][1:]
        assert [e.t for e in pools[0].envs] == [e.t for e in pools[1].envs] == [20, 0, 20]
        assert pools[1].envs[0].action_dim == 2 and pools[1].envs[0].instruction == pools[0].envs[0].instruction
    finally:
        for p in pools:
            p.close()
    assert _workers() == []

