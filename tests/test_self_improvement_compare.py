"""The self-improvement comparison (`benchmarks/self_improvement_compare.py`): PAC and control runs from one
pretrained policy are compared round by round, in return or success, on the rounds' own evaluations or on a
larger re-evaluation that resumes where it stopped."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from pac.config import Config
from pac.training.loop import train
from pac.workflow import generate_dataset, improve


@pytest.fixture
def compare(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("self_improvement_compare")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A PAC run and its BC+Q control: one real round each from the same pretrained tiny policy."""
    tmp = tmp_path_factory.mktemp("si")
    cfg = Config.from_dict({
        "preset": "tiny", "storage": {"root": str(tmp / "store")},
        "generate": {"tasks": ["cartpole/balance"], "episodes_per_policy": 2, "episode_steps": 20,
                     "qualities": ["random", "expert"]},
        "objective": {"num_action_samples": 4},
        "train": {"steps": 2, "global_batch_size": 8, "micro_batch_size": 8, "precision": "fp32",
                  "output": str(tmp / "pretrain"), "log_every": 1},
        "eval": {"tasks": ["cartpole/balance"], "episodes": 2, "num_envs": 2, "episode_steps": 20, "video": False},
        "improve": {"iterations": 1, "collect_episodes": 1, "finetune_steps": 1},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "system_metrics": False},
    })
    ref, _ = generate_dataset(cfg, "behaviour", progress=False)
    cfg = Config.from_dict({**cfg.to_dict(), "data": {"dataset": str(ref)}})
    start = train(cfg, run_name="pretrain").export_uri
    runs = tmp / "pac", tmp / "control"
    for run, alpha in zip(runs, (None, 1.0), strict=True):
        run_cfg = Config.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "output": str(run / "runs")},
                                    "improve": {**cfg.to_dict()["improve"], "finetune_alpha": alpha}})
        improve(run_cfg, start, run / "improve")
    return runs


def run_main(compare: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "argv", ["self_improvement_compare.py", *argv])
    compare.main()
    return capsys.readouterr().out


def test_success_is_compared_in_percentage_points(compare: ModuleType, pair: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    png = pair[0].parent / "curves.png"
    out = run_main(compare, ["--metric", "success", "--pair", *map(str, pair), "--plot", str(png)], capsys,
                   monkeypatch)
    assert "success change" in out
    assert png.read_bytes().startswith(b"\x89PNG")  # the curves, drawn beside the table
    row = next(line for line in out.splitlines() if line.startswith("| 1 |"))
    # each pooled cell is "mean [low, high], k/n" with n = 1 pair; a rate change is in [-100, +100] points
    assert row.count("/1") == 3
    changes = [float(cell.split()[0].rstrip(",")) for cell in row.strip("|").split("|")[1:] if cell.strip()]
    assert len(changes) == 6 and all(-100.0 <= c <= 100.0 for c in changes)


def test_reevaluation_uses_fresh_episodes_and_resumes(compare: ModuleType, pair: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    pac, control = pair
    stale = pac / "improve" / "round1" / "eval-3-seed7.partial"
    stale.mkdir()  # a killed evaluation's leftovers are not taken for a result
    out = run_main(compare, ["--evaluate", "3", "--eval-seed", "7", "--pair", str(pac), str(control)],
                   capsys, monkeypatch)
    assert "3 episodes per task from seed 7" in out and "| 1 |" in out
    own = json.loads((pac / "improve" / "round1" / "report.json").read_text())["tasks"]["cartpole/balance"]
    again = [json.loads((run / "improve" / f"round{k}" / "eval-3-seed7" / "report.json").read_text())
             for run in pair for k in (0, 1)]
    assert not stale.exists()
    assert all(r["tasks"]["cartpole/balance"]["episodes"] == 3 for r in again)
    assert again[0]["tasks"] == again[2]["tasks"]  # round 0 is the same policy on the same episodes in both runs
    assert not set(again[1]["tasks"]["cartpole/balance"]["seeds"]) & set(own["seeds"])  # fresh episodes
    done = {p: p.stat().st_mtime_ns for p in pac.glob("improve/round*/eval-3-seed7/report.json")}
    run_main(compare, ["--evaluate", "3", "--eval-seed", "7", "--pair", str(pac), str(control)], capsys, monkeypatch)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # nothing evaluated twice


def test_a_directory_that_is_not_a_run_is_refused(compare: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        run_main(compare, ["--pair", str(tmp_path), str(tmp_path)], capsys, monkeypatch)
    assert "has no improve/round0/report.json" in capsys.readouterr().err
