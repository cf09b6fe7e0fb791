"""Finetuning starts from the given weights and is linked to its parent run; improve rounds publish data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from pac.config import Config
from pac.training.loop import train
from pac.training.weights import load_model
from pac.workflow import finetune, generate_dataset


@pytest.fixture
def base(tmp_path: Path) -> Config:
    cfg = Config.from_dict({
        "preset": "tiny", "storage": {"root": str(tmp_path / "store")},
        "generate": {"tasks": ["cartpole/balance"], "episodes_per_policy": 2, "episode_steps": 30,
                     "qualities": ["random", "expert"]},
        "objective": {"num_action_samples": 4},
        "train": {"steps": 3, "global_batch_size": 8, "micro_batch_size": 8, "precision": "fp32",
                  "output": str(tmp_path / "pretrain"), "log_every": 1},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "system_metrics": False},
    })
    ref, _ = generate_dataset(cfg, "behaviour", progress=False)
    return Config.from_dict({**cfg.to_dict(), "data": {"dataset": str(ref)}})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_finetune_starts_from_the_given_weights_and_names_its_parent(base: Config, tmp_path: Path,
                                                                     precision: str) -> None:
    """bf16 included: its engine keeps an fp32 master copy that the optimizer step writes back."""
    pretrained = train(base, run_name="pretrain")
    source, _ = load_model(pretrained.export_uri, base)
    ft_cfg = Config.from_dict({**base.to_dict(), "train": {**base.to_dict()["train"], "steps": 2, "lr": 1e-12,
                                                           "warmup_steps": 0, "precision": precision,
                                                           "output": str(tmp_path / "ft")}})
    tuned = finetune(ft_cfg, pretrained.export_uri)
    after, _ = load_model(tuned.export_uri, base)
    fresh = torch.nn.utils.parameters_to_vector(type(source)(source.cfg).parameters())
    start = torch.nn.utils.parameters_to_vector(source.parameters())
    end = torch.nn.utils.parameters_to_vector(after.parameters())
    # lr ~ 0: the finetune kept the pretrained weights, with no bf16 rounding (the export is the fp32 master)
    assert torch.allclose(end, start, atol=1e-6, rtol=0.0)
    assert not torch.allclose(end, fresh, atol=1e-3)  # ... which are not a fresh initialisation
    run = mlflow.MlflowClient(base.tracking.uri).get_run(tuned.run_id)
    assert run.data.tags["mlflow.parentRunId"] == pretrained.run_id
    assert run.data.tags["init_from"] == pretrained.export_uri


def test_a_finetune_continues_the_temperature_its_source_learned(base: Config, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Exports record the learned eta; a finetune starts from it, not from the initial `objective.eta`."""
    pretrained = train(base, run_name="pretrain")
    learned = pretrained.history[-1]["eta"]
    assert learned != pytest.approx(base.objective.eta, abs=1e-3)  # 3 steps of the dual moved it
    _, source_cfg = load_model(pretrained.export_uri, base)
    assert source_cfg.objective.eta == pytest.approx(learned)
    ft_cfg = Config.from_dict({**base.to_dict(), "train": {**base.to_dict()["train"], "steps": 1, "lr": 1e-12,
                                                           "warmup_steps": 0, "output": str(tmp_path / "ft")}})
    tuned = finetune(ft_cfg, pretrained.export_uri)
    assert tuned.history[0]["eta"] == pytest.approx(learned, rel=1e-4)
    run = mlflow.MlflowClient(base.tracking.uri).get_run(tuned.run_id)
    assert float(run.data.params["objective.eta"]) == pytest.approx(learned)

    # Resumed (one more step), it is the same run, and only the step count differs from the params it logged.
    caplog.clear()
    more = Config.from_dict({**ft_cfg.to_dict(), "train": {**ft_cfg.to_dict()["train"], "steps": 2}})
    resumed = finetune(more, pretrained.export_uri)
    assert resumed.run_id == tuned.run_id and len(resumed.history) == 1
    changed = [r.getMessage() for r in caplog.records if "different values" in r.getMessage()]
    assert changed and "objective.eta" not in changed[0] and "train.steps" in changed[0]


def test_a_finetune_of_a_source_that_learned_no_temperature_keeps_its_own(base: Config, tmp_path: Path) -> None:
    """BC's eta never moved: the finetune starts from its configured eta, not the BC run's initial one."""
    bc = Config.from_dict({**base.to_dict(), "objective": {**base.to_dict()["objective"], "alpha": 1.0}})
    pretrained = train(bc, run_name="pretrain-bc")
    ft_cfg = Config.from_dict({**base.to_dict(),
                               "objective": {**base.to_dict()["objective"], "alpha": 0.5, "eta": 5.0},
                               "train": {**base.to_dict()["train"], "steps": 1, "lr": 1e-12, "warmup_steps": 0,
                                         "output": str(tmp_path / "ft")}})
    tuned = finetune(ft_cfg, pretrained.export_uri)
    assert tuned.history[0]["eta"] == pytest.approx(5.0, rel=1e-4)


def test_finetune_of_an_export_from_another_tracking_store_runs_unlinked(base: Config, tmp_path: Path) -> None:
    """An export copied from elsewhere names a run this store has never seen: finetune, without a parent."""
    pretrained = train(base, run_name="pretrain")
    other = Config.from_dict({**base.to_dict(), "tracking": {**base.to_dict()["tracking"],
                                                             "uri": f"sqlite:///{tmp_path}/other.db"},
                              "train": {**base.to_dict()["train"], "steps": 1, "output": str(tmp_path / "ft")}})
    tuned = finetune(other, pretrained.export_uri)
    run = mlflow.MlflowClient(other.tracking.uri).get_run(tuned.run_id)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["init_from"] == pretrained.export_uri


def test_improve_rounds_finetune_with_their_alpha_on_data_sampled_from_the_policy(base: Config,
                                                                                  tmp_path: Path) -> None:
    from pac.config import StorageConfig
    from pac.data.dataset import open_dataset
    from pac.inputs import Observation, normalize_action
    from pac.networks import action_to_bins
    from pac.workflow import improve

    pretrained = train(base, run_name="pretrain")
    cfg = Config.from_dict({**base.to_dict(),
                            "eval": {"tasks": ["cartpole/balance"], "episodes": 1, "num_envs": 1,
                                     "episode_steps": 20, "video": False, "greedy": True,
                                     "q_select_samples": 0, "epsilon": 0.0},  # greedy but for the temperature
                            "improve": {"iterations": 1, "collect_episodes": 2, "finetune_steps": 1,
                                        "finetune_alpha": 0.25, "collect_temperature": 1.0},
                            "train": {**base.to_dict()["train"], "output": str(tmp_path / "improve")}})
    result = improve(cfg, pretrained.export_uri, tmp_path / "curve")
    run = mlflow.MlflowClient(cfg.tracking.uri).get_run(result.rounds[1].run_id)
    assert float(run.data.params["objective.alpha"]) == 0.25 and cfg.objective.alpha != 0.25
    # Collected by sampling the (nearly uniform) pretrained policy at temperature 1: mostly not its greedy bins.
    net, _ = load_model(pretrained.export_uri, base)
    dataset = open_dataset(result.rounds[1].dataset, StorageConfig(root=str(tmp_path / "store")))
    episodes = [e for info in dataset.manifest.shards for e in dataset.open_shard(info, tmp_path / "cache").episodes()]
    proprio = [p for e in episodes for p in e.proprio[:-1]]
    actions = torch.from_numpy(np.concatenate([normalize_action(e.actions, e.action_low, e.action_high)
                                               for e in episodes]))
    with torch.no_grad():
        obs = Observation.from_numpy(proprio, [episodes[0].instruction] * len(proprio), net.cfg.max_text_tokens)
        greedy = net.policy_logits(net.encode(obs), 1).argmax(-1)
    assert (action_to_bins(actions, net.cfg.action_bins) != greedy).float().mean() > 0.5
    # The collecting (sampled) policy is evaluated too, on the same episodes as the greedy one, paired.
    first, last = result.rounds
    assert first.sampled_return_change is None and last.sampled_return_change is not None
    assert last.sampled_return_change == pytest.approx(last.sampled_return_mean - first.sampled_return_mean)
    sampled = json.loads((tmp_path / "curve" / "round1" / "sampled" / "report.json").read_text())
    greedy_report = json.loads((tmp_path / "curve" / "round1" / "report.json").read_text())
    assert sampled["tasks"]["cartpole/balance"]["seeds"] == greedy_report["tasks"]["cartpole/balance"]["seeds"]
    assert "sampled: return" in (tmp_path / "curve" / "improve.md").read_text()


def test_finetune_from_a_model_of_another_size_keeps_the_source_architecture(base: Config, tmp_path: Path) -> None:
    pretrained = train(base, run_name="pretrain")
    other = Config.from_dict({**base.to_dict(), "preset": "tiny-wide", "model": {},
                              "train": {**base.to_dict()["train"], "steps": 1, "output": str(tmp_path / "ft")}})
    tuned = finetune(other, pretrained.export_uri)
    _, cfg = load_model(tuned.export_uri, base)
    assert cfg.preset == "tiny" and dataclasses.replace(cfg.model, proprio_stats={}) == base.model
    assert cfg.model.proprio_stats  # the source's state statistics came along


def test_return_change_pairs_episodes_by_task_and_seed() -> None:
    from types import SimpleNamespace

    from pac.workflow import return_change

    def report(seeds: list[int], returns: list[float]) -> SimpleNamespace:
        return SimpleNamespace(tasks={"reacher/easy": SimpleNamespace(seeds=seeds, returns=returns)})

    # Episode spread is large (0 to 90), the change is +1 on every episode: pairing sees exactly +1.
    mean, ci = return_change(report([1, 2, 3], [0.0, 40.0, 90.0]), report([3, 1, 2], [91.0, 1.0, 41.0]))
    assert mean == pytest.approx(1.0) and ci == pytest.approx((1.0, 1.0))
    with pytest.raises(ValueError, match="share no episode"):
        return_change(report([1], [0.0]), report([2], [0.0]))
    other_task = SimpleNamespace(tasks={"jaco/reach_site": SimpleNamespace(seeds=[1], returns=[0.0])})
    with pytest.raises(ValueError, match="jaco/reach_site"):
        return_change(report([1], [0.0]), other_task)
    # successes pair the same way: one episode of three turned from failure to success, +1/3 in rate
    arm = "jaco/reach_site"
    before = SimpleNamespace(tasks={arm: SimpleNamespace(seeds=[1, 2, 3], successes=[True, False, False])})
    after = SimpleNamespace(tasks={arm: SimpleNamespace(seeds=[3, 2, 1], successes=[False, True, True])})
    assert return_change(before, after, "successes")[0] == pytest.approx(1 / 3)
