"""Registry reviews: the promotion gate, manual promotion and rollback, against a real MLflow server + S3."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pytest
import torch
from pac.config import Config, EvalConfig, TrackingConfig
from pac.evaluation import EvalReport, TaskReport, evaluate_model, load_policy_model
from pac.networks import build_model
from pac.presets import model_config
from pac.registry import CHALLENGER, CHAMPION, GateError, Registry, gate
from pac.tracking import Tracker
from pac.training.export import save_export

if TYPE_CHECKING:
    from conftest import MlflowServer

SEEDS = list(range(100, 112))


def report(returns: list[float], seeds: list[int] = SEEDS, task: str = "cartpole/balance") -> EvalReport:
    """A report of one task whose random policy scores 0 and maximum 100 (normalised = return / 100)."""
    mean = sum(returns) / len(returns)
    t = TaskReport(task=task, episodes=len(returns), vision=False, seeds=seeds, returns=returns,
                   lengths=[100] * len(returns), successes=None, return_mean=mean, return_std=0.0, return_ci95=None,
                   random_return_mean=0.0, max_return=100.0, normalized_score=mean / 100, normalized_ci95=None,
                   success_rate=None, episode_length_mean=100.0)
    return EvalReport("policy", None, {}, {task: t})


CHAMP = [50.0, 52.0, 48.0, 55.0, 45.0, 51.0, 49.0, 53.0, 47.0, 50.0, 54.0, 46.0]


def test_a_worse_challenger_is_kept_out() -> None:
    decision = gate(report([r - 5 for r in CHAMP]), report(CHAMP), margin=0.0)
    assert not decision.promote and "kept" in decision.reason and decision.delta_mean == pytest.approx(-0.05)


def test_an_equal_challenger_within_noise_is_kept_out() -> None:
    noise = [1.5, -2.0, 0.5, -1.0, 2.0, -0.5, 1.0, -1.5, 0.0, 0.5, -1.0, 0.8]  # mean ~0, spread ~1.3
    decision = gate(report([r + n for r, n in zip(CHAMP, noise)]), report(CHAMP), margin=0.0)
    assert not decision.promote and "interval reaches zero" in decision.reason


def test_a_clearly_better_challenger_is_promoted_but_only_past_the_margin() -> None:
    better = report([r + 4 + (i % 3) for i, r in enumerate(CHAMP)])  # +4..+6 on every episode
    decision = gate(better, report(CHAMP), margin=0.02)
    assert decision.promote and decision.delta_ci95 is not None and decision.delta_ci95[0] > 0
    assert not gate(better, report(CHAMP), margin=0.1).promote  # +0.05 is below a 0.1 margin
    assert gate(better, None, margin=0.5).promote  # no champion yet


def test_evaluations_of_different_episodes_cannot_be_compared() -> None:
    with pytest.raises(GateError, match="different episodes"):
        gate(report(CHAMP), report(CHAMP, seeds=[s + 1 for s in SEEDS]), margin=0.0)
    with pytest.raises(GateError, match="different tasks"):
        gate(report(CHAMP), report(CHAMP, task="point_mass/easy"), margin=0.0)


@pytest.mark.mlflow
def test_register_gate_promote_rollback_and_the_champion_acts(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    name = f"pac-policy-{uuid.uuid4().hex[:8]}"
    tracking = TrackingConfig(uri=mlflow_server.uri, experiment=f"registry-{uuid.uuid4().hex[:8]}",
                              registered_model=name, system_metrics=False)
    cfg = Config(preset="tiny", model=model_config("tiny"), tracking=tracking)
    registry = Registry(tracking)
    versions = []
    for seed in (0, 1):  # two trained (here: initialised) models, each logged by its own run
        torch.manual_seed(seed)
        export = save_export(build_model(cfg.model).state_dict(), cfg, tmp_path / f"export{seed}")
        tracker = Tracker(tracking)
        tracker.start(cfg, run_name=f"train {seed}")
        tracker.log_model(export)
        tracker.end()
        versions.append(registry.register(tracker.run_id or "", report(CHAMP), tags={"pac.dataset": "d@v0001"}))
    first, second = versions
    assert registry.alias_version(CHALLENGER) == second and registry.alias_version(CHAMPION) is None

    decision = gate(report(CHAMP), None, margin=0.0)
    registry.set_tags(first, decision.tags())
    registry.move_champion(first, "promoted", decision.reason)
    registry.move_champion(second, "manual-promote", "reviewed the videos")
    assert registry.alias_version(CHAMPION) == second
    assert registry.rollback("regression seen on the arm") == first
    assert registry.alias_version(CHAMPION) == first
    rows = {r["version"]: r for r in registry.versions()}
    assert rows[first]["tags"]["pac.decision"] == "rollback"
    assert "regression seen on the arm" in rows[first]["tags"]["pac.decision_reason"]
    assert rows[second]["tags"]["pac.rolled_back"] == "regression seen on the arm"
    assert rows[second]["tags"]["pac.previous_champion"] == first
    assert rows[first]["tags"]["pac.dataset"] == "d@v0001" and "cartpole/balance" in rows[first]["description"]
    assert "| " + first + " | champion |" in registry.table()
    with pytest.raises(ValueError, match="needs a reason"):
        registry.move_champion(second, "manual-promote", " ")

    mlflow.set_tracking_uri(None)
    net, model_cfg = load_policy_model(f"models:/{name}@{CHAMPION}", tracking)  # the champion acts in MuJoCo
    ecfg = EvalConfig(tasks=["cartpole/balance"], episodes=2, num_envs=2, episode_steps=20, video=False)
    evaluation = evaluate_model(net, Config.from_dict({**model_cfg.to_dict(), "eval": ecfg.__dict__}))
    assert evaluation.tasks["cartpole/balance"].episodes == 2
