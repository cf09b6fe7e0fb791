"""The comparison with the offline-RL peers (`benchmarks/compare.py`, issue 17): its refusals before any work, and
(heavy) a reduced-budget run of every method and peer that writes the table and resumes without redoing a unit."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from pac.config import GenerateConfig, StorageConfig
from pac.data.generate import generate_episodes
from pac.data.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


@pytest.fixture()
def compare(benchmark_module: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports quality and peers, as a script does
    return benchmark_module("compare")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    cfg = GenerateConfig(tasks=["point_mass/easy"], qualities=["random", "expert"], episodes_per_policy=2,
                         episode_steps=30, workers=1)
    ingest(generate_episodes(cfg, progress=False), "mixed", storage=StorageConfig(root=str(root)))
    return root


def test_missing_peers_fail_before_any_work(compare: ModuleType, store: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="benchmarks/peers-setup"):
        compare.main(["--dataset", "mixed", "--storage-root", str(store), "--output", str(tmp_path / "out"),
                      "--python", str(tmp_path / "no-such-python")])
    assert not (tmp_path / "out").exists()


def test_a_task_without_episodes_or_a_missing_dataset_is_named(compare: ModuleType, store: Path,
                                                                tmp_path: Path) -> None:
    common = ["--storage-root", str(store), "--output", str(tmp_path / "out"), "--peers", ""]
    with pytest.raises(SystemExit, match="no episodes for reacher/easy"):
        compare.main(["--dataset", "mixed", "--tasks", "point_mass/easy,reacher/easy", *common])
    with pytest.raises(SystemExit, match="pac data generate --config benchmark"):
        compare.main(["--dataset", "no-such-dataset", *common])
    assert not (tmp_path / "out").exists()


def test_a_malformed_variant_is_refused(compare: ModuleType) -> None:
    for bad in ("PAC:objective.alpha=0.5", "noeq:objective.alpha", "x:train.steps=5", "empty:"):
        with pytest.raises(SystemExit):
            compare.parse_args(["--dataset", "d", "--variant", bad])
    assert compare.parse_args(["--dataset", "d", "--variant", "adv:objective.bc_filter=advantage,model.d_model=32"]
                              ).variants == {"adv": ["objective.bc_filter=advantage", "model.d_model=32"]}


def test_a_unit_trained_under_another_default_is_not_reused(compare: ModuleType, store: Path, tmp_path: Path) -> None:
    """A finished unit stands for its label's objective: one trained before a default moved stops the run, naming
    the setting, instead of being reported under the label's new meaning."""
    from pac.config import ObjectiveConfig

    now = ObjectiveConfig()
    stale = dataclasses.asdict(now) | {"n_step": now.n_step + 1}
    compare.write_json(tmp_path / "out" / "ours" / "PAC-seed0.json", {"label": "PAC", "objective": stale})
    with pytest.raises(SystemExit, match=f"trained PAC with objective.n_step={now.n_step + 1}, "
                       f"but PAC now means objective.n_step={now.n_step}:"):
        compare.main(["--dataset", "mixed", "--storage-root", str(store), "--output", str(tmp_path / "out"),
                      "--peers", "", "--methods", "PAC", "--seeds", "0", "--steps", "2"])
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained


def test_the_report_puts_every_critic_probe_beside_ours(compare: ModuleType, tmp_path: Path) -> None:
    """results.md: scores per method, and the critic probe of ours (beta > 0) and of the peers that report one."""
    tasks = ["a/x", "b/y"]
    probe = {"critic_expert_pct/a/x": 0.8, "critic_mirror_pct/a/x": 0.5, "critic_expert_pct/b/y": 0.6,
             "critic_mirror_pct/b/y": 0.7}
    for label, beta in (("BC", 0.0), ("PAC", 1.0)):
        compare.write_json(tmp_path / "ours" / f"{label}-seed0.json", {
            "label": label, "method": label, "seed": 0, "train_s": 60.0, "overrides": [], "diagnostics": probe,
            "objective": {"beta": beta}, "report": {"tasks": {t: {"normalized_score": 0.5} for t in tasks}}})
    for task in tasks:
        for algo, got in (("iql", {"critic_expert_pct": 0.9, "critic_mirror_pct": 0.6}), ("bc", None)):
            compare.write_json(tmp_path / "peers" / "runs" / task.replace("/", "_") / f"{algo}_s0" / "eval.json",
                               {"task": task, "algo": algo, "seed": 0, "normalized_score": 0.25,
                                "train_seconds": 30.0, "probe": got})
    text = compare.report(tmp_path, tasks, "store/data@v0001", "compare.py ...")
    scores, critics = text.split("The critics on the expert's states")
    assert "| PAC (ours, one model) | 0.500 | 0.500 | **0.500** | 1 | 1.0 min |" in scores
    assert "| d3rlpy BC (per task) | 0.250 | 0.250 | **0.250** | 1 | 1.0 min |" in scores
    assert "| PAC | 0.80 / 0.50 | 0.60 / 0.70 | **0.70 / 0.60** |" in critics
    assert "| d3rlpy IQL | 0.90 / 0.60 | 0.90 / 0.60 | **0.90 / 0.60** |" in critics
    assert "| BC |" not in critics and "d3rlpy BC" not in critics  # no critic, no probe row


@pytest.mark.heavy
def test_reduced_budget_run_scores_every_method_and_resumes(compare: ModuleType, store: Path, tmp_path: Path,
                                                           benchmark_module: Callable[[str], ModuleType]) -> None:
    peers = "bc,pbc,td3bc,iql" if PEERS_PYTHON.exists() else ""
    args = ["--dataset", "mixed", "--storage-root", str(store), "--output", str(tmp_path / "out"), "--seeds", "0,1",
            "--steps", "20", "--batch-size", "16", "--peer-steps", "30", "--eval-episodes", "2", "--peers", peers,
            "--variant", "PAC-a0.5:objective.alpha=0.5"]
    assert compare.main(args) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert set(results["ours"]) == {"BC", "BC+Q", "PAC", "PAC-a0.5"}
    assert results["ours"]["PAC-a0.5"]["0"]["objective"]["alpha"] == 0.5
    for runs in results["ours"].values():
        assert set(runs) == {"0", "1"}
        assert all(math.isfinite(r["report"]["tasks"]["point_mass/easy"]["normalized_score"]) for r in runs.values())
    assert len(results["peers"]) == (8 if peers else 0)  # 4 peers x 2 seeds x 1 task
    assert all(math.isfinite(r["normalized_score"]) for r in results["peers"])
    table = (out / "results.md").read_text()
    assert "| PAC (ours, one model) |" in table and "| PAC-a0.5 (ours, one model: alpha=0.5) |" in table
    assert "Ours, paired by training seed" in table
    if peers:  # the critics' probe on the expert's states, ours and the peers' that have a critic
        assert all(set(r["probe"]) >= {"critic_expert_pct", "critic_mirror_pct"}
                   for r in results["peers"] if r["algo"] in ("td3bc", "iql"))
        assert "| d3rlpy IQL |" in table.split("The critics on the expert's states")[1]
    if peers:
        assert "| d3rlpy IQL (per task) |" in table
    # resumable: a second invocation finds every unit and trains nothing
    stamps = {p: p.stat().st_mtime for p in out.glob("ours/*.json")}
    assert compare.main(args) == 0
    assert {p: p.stat().st_mtime for p in out.glob("ours/*.json")} == stamps
    assert (out / "results.md").read_text().split("This invocation")[0] == table.split("This invocation")[0]
    # its exports re-evaluate under another acting rule without retraining (benchmarks/quality_reeval.py)
    reeval = benchmark_module("quality_reeval")
    assert reeval.main([str(out), "--set", "model.action_decode=argmax", "--set", "eval.episodes=2",
                        "--output", str(tmp_path / "argmax.md")]) == 0
    text = (tmp_path / "argmax.md").read_text()
    assert "re-evaluated with eval.episodes=2, model.action_decode=argmax" in text and "| PAC |" in text
