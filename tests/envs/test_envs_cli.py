"""`pac tasks` lists the registry."""

from __future__ import annotations

import json

import pytest
from pac.cli import main
from pac.envs import TASKS


def test_tasks_lists_every_task_with_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert all(task_id in out for task_id in TASKS)
    assert main(["tasks", "--json", "--tag", "robot"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in rows} == {"jaco/reach_site", "jaco/reach_duplo"}
    assert all(r["action_dim"] == 9 and r["proprio_dim"] >= 45 for r in rows)
