"""The task registry: coverage of the suite, lookup errors, scoring rules."""

from __future__ import annotations

import numpy as np
import pytest
from pac.envs import TASKS, UnknownTaskError, get_task, list_tasks, make_env
from pac.envs.experts import EXPERTS


def test_registry_covers_enough_tasks_embodiments_and_a_robot_arm() -> None:
    assert len(TASKS) >= 12
    assert len({t.embodiment for t in TASKS.values()}) >= 6
    robot = list_tasks("robot")
    assert robot and all(t.family == "manipulation" and t.embodiment == "jaco" for t in robot)
    assert {t.family for t in TASKS.values()} == {"suite", "manipulation"}


def test_every_entry_is_well_formed() -> None:
    for task_id, spec in TASKS.items():
        assert spec.id == task_id and task_id.startswith(spec.embodiment + "/")
        assert spec.instruction.endswith(".") and len(spec.instruction) > 20, task_id
        assert spec.expert in EXPERTS, task_id
        assert len(set(spec.obs_keys)) == len(spec.obs_keys), task_id
    # Instructions tell tasks apart (the language encoder is what distinguishes them).
    assert len({t.instruction for t in TASKS.values()}) == len(TASKS)


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(UnknownTaskError) as info:
        get_task("cartpole/juggle")
    message = str(info.value)
    assert "cartpole/juggle" in message and all(t in message for t in TASKS)
    with pytest.raises(ValueError, match="known tasks: cartpole/balance"):  # also a ValueError: the CLI reports it
        make_env("nope/nothing", seed=0, episode_steps=5)


def test_max_return_and_success_rule() -> None:
    spec = get_task("cartpole/balance")
    assert spec.max_return(250) == 250.0 and spec.normalized_return(200.0, 250) == pytest.approx(0.8)
    good = np.concatenate([np.zeros(200), np.full(50, 0.9)])
    assert spec.success(good) is True
    assert spec.success(good[::-1].copy()) is False  # the end of the episode decides
    assert spec.success(np.zeros(0)) is False
    assert get_task("cheetah/run").success(np.ones(10)) is None  # locomotion has no success rule
