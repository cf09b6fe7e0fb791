"""The quality benchmark (`benchmarks/quality.py`): its tables, a toy-budget run of the plumbing, and (heavy)
a reduced-budget run of the real comparison."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch


@pytest.fixture(scope="module")
def quality(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("quality")


def fake_result(score: float, success: float | None = 0.5) -> dict:
    task = {"return_mean": 10.0 * score, "return_ci95": [1.0, 2.0], "random_return_mean": 0.5, "max_return": 100.0,
            "normalized_score": score, "normalized_ci95": [score - 0.1, score + 0.1], "success_rate": success}
    return {"report": {"tasks": {"a/b": task}, "summary": {"normalized_score_mean": score}},
            "diagnostics": {"bc_nll": 1.0, "eta": 0.5}, "train_s": 60.0, "eval_s": 6.0, "objective": {"alpha": 0.75}}


def test_tables_have_a_row_per_method_and_seed(quality: ModuleType) -> None:
    results = {"BC": {0: fake_result(0.25), 1: fake_result(0.35)}, "PAC": {0: fake_result(0.75, None)}}
    summary = quality.summary_table(results, ["a/b"])
    assert "| BC | 0.300 | **0.300** | 0.250, 0.350 |" in summary and "| PAC | 0.750 | **0.750** | 0.750 |" in summary
    task = quality.task_table("a/b", results)
    assert task.startswith("### a/b") and "| **BC** | mean | | | | **0.300** | |" in task
    assert "| PAC | 0 | 7.5 [1.0, 2.0] | 0.5 | 100 | 0.750 [0.650, 0.850] | n/a |" in task
    assert "| **PAC** | mean" not in task  # one seed: no mean row
    diag = quality.diagnostics_table(results, {"a/b": 3.0})
    assert "| BC | 1 | 1 | 0.5 | 1.0 |" in diag and "a/b 3.0" in diag


def test_paired_table_compares_each_method_with_bc_seed_by_seed(quality: ModuleType) -> None:
    results = {"BC": {0: fake_result(0.2), 1: fake_result(0.3), 2: fake_result(0.9)},
               "PAC": {0: fake_result(0.5), 1: fake_result(0.4)}, "BC+Q": {0: fake_result(0.1)}}
    table = quality.paired_table(results)
    # Differences +0.3 and +0.1 (seed 2 has no PAC run): mean +0.2, t(1) = 12.706 times 0.1 either side.
    assert "| PAC | 2 | +0.200 | [-1.071, +1.471] | 2 of 2 |" in table
    assert "BC+Q" not in table  # one shared seed: no interval
    assert quality.paired_table({"BC": results["BC"]}) == ""


def test_merge_joins_runs_and_refuses_mismatched_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      benchmark_module: Callable[[str], ModuleType]) -> None:
    # the merge script imports its sibling as a script does
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    merge = benchmark_module("quality_merge")
    args = vars(merge.parse_args(["--output", "x", "--tasks", "a/b", "--random", "0", "--damped", "16"]))

    def write(name: str, methods: dict, **changed: object) -> Path:
        run = tmp_path / name
        run.mkdir()
        # Runs made before an option existed lack it: the merge fills in the default (here: damped_noise_std).
        saved = {k: v for k, v in {**args, **changed}.items() if k != "damped_noise_std"}
        (run / "results.json").write_text(json.dumps({"args": saved, "methods": methods}))
        return run

    a = write("s0", {"PAC": {"0": fake_result(0.5)}, "BC": {"0": fake_result(0.2)}}, seeds=[0])
    b = write("s1", {"BC": {"1": fake_result(0.3)}, "PAC": {"1": fake_result(0.4)}}, seeds=[1], threads=2,
              objective=["n_step=20"])  # flags may differ where the resolved objectives (compared below) do not
    settings, results = merge.merge([a, b])
    assert list(results) == ["BC", "PAC"] and list(results["PAC"]) == [0, 1] and settings["tasks"] == ["a/b"]
    text = merge.report(settings, results, [a, b], "merge")
    assert "| PAC | 2 | +0.200 |" in text and "### a/b" in text
    with pytest.raises(SystemExit, match="PAC seed 0 is in both"):
        merge.merge([a, a])
    # A method trained with another objective (a default changed since) is refused, unless left out.
    newer = write("newer", {"BC": {"2": fake_result(0.3)}, "PAC": {"2": {**fake_result(0.6), "objective": {}}}})
    with pytest.raises(SystemExit, match="PAC in .*newer was trained with another objective .*alpha"):
        merge.merge([a, newer])
    assert list(merge.merge([a, f"{newer}:BC"])[1]["BC"]) == [0, 2]
    bc_other = write("bc", {"BC": {"5": {**fake_result(0.3), "objective": {"alpha": 1.0, "eta_lr_scale": 10.0}}}})
    assert list(merge.merge([a, bc_other])[1]["BC"]) == [0, 5]  # BC reads no other objective field
    other = write("other", {"BC": {"2": fake_result(0.3)}}, damped=4)
    with pytest.raises(SystemExit, match="settings differ .* in damped"):
        merge.merge([a, other])
    # The noisy behaviour's parameters made no data here (no noisy episodes): a run that differs only in them merges.
    assert list(merge.merge([a, write("p", {"BC": {"3": fake_result(0.3)}}, noisy_expert_prob=0.3)])[1]["BC"]) == [0, 3]
    with pytest.raises(SystemExit, match="settings differ .* in damped_scale"):
        merge.merge([a, write("scale", {"BC": {"4": fake_result(0.3)}}, damped_scale=0.2)])
    with pytest.raises(SystemExit, match="results.json: not found"):
        merge.merge([tmp_path / "missing"])


def test_discounted_returns(quality: ModuleType) -> None:
    import numpy as np

    np.testing.assert_allclose(quality.discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5), [1.5, 1.0, 2.0])


def test_methods_differ_only_in_alpha_and_beta(quality: ModuleType, tmp_path: Path) -> None:
    args = quality.parse_args(["--output", str(tmp_path), "--tasks", "cartpole/balance"])
    cfgs = {m: quality.method_config(args, m, 0, "mixed", tmp_path) for m in quality.METHODS}
    assert {m: c.objective.method for m, c in cfgs.items()} == {m: m for m in quality.METHODS}
    for c in cfgs.values():
        same = (c.preset, c.seed, c.model, c.data, c.eval, c.train.steps, c.train.global_batch_size, c.train.lr)
        ref = cfgs["PAC"]
        assert same == (ref.preset, ref.seed, ref.model, ref.data, ref.eval, ref.train.steps,
                        ref.train.global_batch_size, ref.train.lr)
        assert not c.tracking.enabled and c.eval.greedy and c.eval.q_select_samples == 0
    assert cfgs["BC"].objective.beta == 0.0 and cfgs["BC+Q"].objective.beta > 0 and cfgs["PAC"].objective.alpha < 1


def test_toy_budget_run_writes_the_tables(quality: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "q"
    rc = quality.main(["--output", str(out), "--tasks", "cartpole/balance", "--steps", "3", "--batch-size", "8",
                       "--episode-steps", "10", "--random", "1", "--noisy", "1", "--expert", "1", "--seeds", "0",
                       "--eval-episodes", "1", "--log-every", "1", "--threads", str(torch.get_num_threads())])
    assert rc == 0
    md = (out / "results.md").read_text()
    for method in quality.METHODS:
        assert f"| {method} |" in md
    assert "### cartpole/balance" in md and "**mean**" in md
    assert "critic_mirror_pct cartpole/balance" in md  # the per-task probe table ...
    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == set(quality.METHODS)
    mirror = data["methods"]["PAC"]["0"]["diagnostics"]["critic_mirror_pct/cartpole/balance"]
    assert 0.0 <= mirror <= 1.0  # ... filled from each network's probe
    for runs in data["methods"].values():
        assert runs["0"]["report"]["tasks"]["cartpole/balance"]["episodes"] == 1


@pytest.mark.heavy
def test_reduced_budget_benchmark_produces_the_table(quality: ModuleType, tmp_path: Path) -> None:
    """The real comparison on two tasks at a reduced budget (~10 minutes on 2 CPU cores)."""
    out = tmp_path / "q"
    rc = quality.main(["--output", str(out), "--tasks", "cartpole/balance,reacher/easy", "--steps", "600",
                       "--eval-episodes", "4", "--episode-steps", "100", "--seeds", "0",
                       "--threads", str(torch.get_num_threads())])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    for runs in data["methods"].values():
        for task in ("cartpole/balance", "reacher/easy"):
            r = runs["0"]["report"]["tasks"][task]
            assert r["episodes"] == 4 and -2.0 < r["normalized_score"] < 1.5
    md = (out / "results.md").read_text()
    assert "## Mean normalised score" in md and "## Training diagnostics" in md


def test_model_and_objective_overrides_reach_every_method(quality: ModuleType, tmp_path: Path) -> None:
    args = quality.parse_args(["--output", str(tmp_path), "--tasks", "cartpole/balance",
                               "--model", "proprio_fourier_bands=8", "--objective", "n_step=5"])
    for m in quality.METHODS:
        cfg = quality.method_config(args, m, 0, "mixed", tmp_path)
        assert cfg.model.proprio_fourier_bands == 8 and cfg.objective.n_step == 5
        assert cfg.model.d_model == 64  # the rest of the preset stays


def test_a_stopped_unit_resumes_only_under_the_same_configuration(quality: ModuleType, tmp_path: Path) -> None:
    """A unit's run folder (its checkpoints) is continued by the same command and removed under other settings."""
    args = quality.parse_args(["--output", str(tmp_path), "--tasks", "cartpole/balance", "--steps", "1000"])
    cfg = quality.method_config(args, "PAC", 0, "mixed", tmp_path)
    run = Path(cfg.train.output)
    assert cfg.train.resume and cfg.train.checkpoint_every == 500
    quality.start_or_resume(cfg)
    (run / "checkpoints").mkdir()  # what a stopped training leaves
    quality.start_or_resume(cfg)
    assert (run / "checkpoints").is_dir()
    other = quality.method_config(quality.parse_args(["--output", str(tmp_path), "--tasks", "cartpole/balance",
                                                      "--steps", "2000"]), "PAC", 0, "mixed", tmp_path)
    quality.start_or_resume(other)
    assert not (run / "checkpoints").exists() and (run / "unit-config.json").is_file()
