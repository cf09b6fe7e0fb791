"""The action-head ablation (`benchmarks/head_ablation.py`, issue 26): its refusals, and a plumbing-sized run of a
squared-error and a categorical head that writes the table and resumes without refitting a finished head."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def heads(benchmark_module: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports fidelity, as a script does
    return benchmark_module("head_ablation")


@pytest.mark.parametrize("spec", ["nolabel", ":model.action_bins=21", "b:train.lr=1", "b:model.action_bins"])
def test_a_malformed_head_is_refused_naming_it(heads: ModuleType, spec: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    if spec == "nolabel":  # a label alone is a valid head (the defaults); the refusals follow
        assert heads.parse_args(["--head", spec]).heads == {"nolabel": []}
        return
    with pytest.raises(SystemExit):
        heads.parse_args(["--head", spec])
    assert spec in capsys.readouterr().err


def test_an_unknown_task_fails_before_any_data_is_generated(heads: ModuleType, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert heads.main(["--tasks", "no/such-task", "--output", str(tmp_path / "out"),
                       "--cache", str(tmp_path / "cache")]) == 2
    assert "no/such-task" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_each_head_is_scored_closed_loop_and_a_finished_head_is_not_refitted(
        heads: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--tasks", "point_mass/easy", "--episodes", "2", "--episode-steps", "40", "--steps", "5",
            "--eval-episodes", "2", "--output", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
            "--head", "mse", "--head", "b21:model.action_bins=21,model.action_decode=argmax"]
    assert heads.main(argv) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in result["runs"]] == ["mse", "b21"]
    for run in result["runs"]:
        scores = run["tasks"]["point_mass/easy"]
        assert math.isfinite(scores["fidelity"])
        assert 0.0 <= scores["gap"] <= 2.0 and 0.0 < scores["moving_share"] <= 1.0  # the expert moves the mass
    assert result["runs"][1]["overrides"] == ["model.action_bins=21", "model.action_decode=argmax"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| mse | squared error, tanh |" in table and "| b21 |" in table

    def refit(*args: object) -> None:
        raise AssertionError("a finished head was fitted again")

    monkeypatch.setattr(heads, "run_head", refit)
    assert heads.main(argv) == 0  # every unit is found on disk
    monkeypatch.undo()

    # An existing dataset (here the episodes just generated) is read as it is, not generated again.
    (generated,) = (tmp_path / "cache").iterdir()
    assert heads.main([*argv[:-4], "--head", "mse", "--dataset", str(generated), "--qualities", "expert", "--output",
                       str(tmp_path / "given")]) == 0
    given = json.loads((tmp_path / "given" / "results.json").read_text())
    assert given["dataset"] == str(generated) and given["qualities"] == "expert"
    with pytest.raises(Exception, match="has no episode of data.qualities"):  # the selection reaches the loader
        heads.main([*argv[:-4], "--head", "mse", "--dataset", str(generated), "--qualities", "random", "--output",
                    str(tmp_path / "random")])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [generated.name]
