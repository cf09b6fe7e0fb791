"""The fidelity benchmark (`benchmarks/fidelity.py`, issue 26): a plumbing-sized run writes its table, and the same
command again resumes the finished run from its checkpoint instead of training it afresh."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fidelity(benchmark_module: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports quality, as a script does
    return benchmark_module("fidelity")


def test_the_same_command_resumes_the_run_and_other_settings_start_afresh(fidelity: ModuleType,
                                                                          tmp_path: Path) -> None:
    argv = ["--tasks", "point_mass/easy", "--episodes", "2", "--episode-steps", "40", "--steps", "4",
            "--checkpoint-every", "2", "--eval-episodes", "2", "--no-mlp", "--output", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache")]
    assert fidelity.main(argv) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())
    assert first["resumed_from"] == 0 and set(first["tasks"]) == {"point_mass/easy"}
    assert (tmp_path / "out" / "run" / "checkpoints").is_dir()

    assert fidelity.main(argv) == 0  # found at its last checkpoint: nothing trained again, the same policy
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again["resumed_from"] == 4 and again["tasks"] == first["tasks"]
    assert "after resuming at step 4" in (tmp_path / "out" / "results.md").read_text()

    assert fidelity.main([*argv, "--set", "train.lr=0.0005"]) == 0  # other settings: not continued
    assert json.loads((tmp_path / "out" / "results.json").read_text())["resumed_from"] == 0


def test_a_curve_on_the_way_and_a_larger_budget_continues_the_same_run(fidelity: ModuleType, tmp_path: Path) -> None:
    common = ["--tasks", "point_mass/easy", "--episodes", "2", "--episode-steps", "40", "--eval-episodes", "2",
              "--eval-every", "2", "--cache", str(tmp_path / "cache")]
    out = tmp_path / "extended"
    assert fidelity.main([*common, "--steps", "4", "--output", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    assert [c["steps"] for c in first["curve"]] == [2, 4]
    assert (out / "curve.png").stat().st_size > 0 and "Fidelity on the way" in (out / "results.md").read_text()

    assert fidelity.main([*common, "--steps", "6", "--output", str(out)]) == 0  # extended, not started afresh
    extended = json.loads((out / "results.json").read_text())
    assert [c["steps"] for c in extended["curve"]] == [2, 4, 6]
    assert extended["curve"][:2] == first["curve"] and extended["resumed_from"] == 4

    straight = tmp_path / "straight"  # the same budget in one go: the same policies, PAC net and MLP floor alike
    assert fidelity.main([*common, "--steps", "6", "--output", str(straight)]) == 0
    once = json.loads((straight / "results.json").read_text())
    assert once["tasks"] == extended["tasks"] and once["resumed_from"] == 0


def test_a_curve_needs_the_constant_learning_rate(fidelity: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--tasks", "point_mass/easy", "--episodes", "2", "--episode-steps", "40", "--steps", "4",
            "--eval-every", "2", "--set", "train.lr_schedule=cosine", "--output", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache")]
    assert fidelity.main(argv) == 2
    assert "train.lr_schedule=constant" in capsys.readouterr().err
