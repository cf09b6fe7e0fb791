"""Training on real generated data, tracked by a real MLflow server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from pac.config import Config
from pac.data.generate import generate_episodes
from pac.inputs import Observation, Transition, normalize_action, normalize_proprio, task_stats
from pac.networks import action_to_bins, build_model, log_prob
from pac.tracking import load_policy
from pac.training.loop import train
from pac.training.weights import load_model
from pac.workflow import generate_dataset


def expert_log_likelihood(net: torch.nn.Module, cfg: Config) -> float:
    """Mean log pi(a|s) of fresh expert episodes (not in the training data: another seed)."""
    gen = dataclasses.replace(cfg.generate, qualities=["expert"], episodes_per_policy=1, seed=99)
    proprio, texts, actions = [], [], []
    for ep in generate_episodes(gen, progress=False):  # states standardised as the network learned them
        proprio += list(normalize_proprio(ep.proprio[:-1], task_stats(net.cfg, ep.task)))
        texts += [ep.instruction] * ep.length
        actions += list(normalize_action(ep.actions, ep.action_low, ep.action_high))
    obs = Observation.from_numpy(proprio, texts, cfg.model.max_text_tokens)
    a = torch.from_numpy(np.stack(actions))
    with torch.no_grad():
        logits = net.policy_logits(net.encode(obs), a.shape[1])
        return float(log_prob(logits, action_to_bins(a, cfg.model.action_bins),
                              torch.ones_like(a, dtype=torch.bool)).mean())


def test_training_on_generated_data_fits_the_expert_actions(tmp_path: Path) -> None:
    cfg = Config.from_dict({
        "preset": "tiny", "storage": {"root": str(tmp_path / "store")},
        "generate": {"tasks": ["cartpole/balance"], "episodes_per_policy": 3, "episode_steps": 60,
                     "qualities": ["expert", "noisy"]},
        # BC+Q: the expert data dominates. One-hot targets: the BC term is then the data's NLL, whose floor is 0 and
        # against which the thresholds below are set (a smoothed target's cross-entropy stops at its own entropy;
        # the default head's learning is tests/training/test_imitation.py's closed-loop check)
        "objective": {"alpha": 1.0, "beta": 1.0, "num_action_samples": 4, "bc_target": "onehot"},
        "train": {"steps": 150, "global_batch_size": 32, "micro_batch_size": 32, "lr": 1e-3, "warmup_steps": 10,
                  "output": str(tmp_path / "run"), "log_every": 50},
        "tracking": {"enabled": False},
    })
    ref, _ = generate_dataset(cfg, "behaviour", progress=False)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=str(ref)))
    result = train(cfg)
    first, last = np.mean([h["bc_nll"] for h in result.history[:10]]), np.mean(
        [h["bc_nll"] for h in result.history[-10:]])
    assert last < first - 1.0, (first, last)
    before = expert_log_likelihood(build_model(cfg.model), cfg)
    trained, _ = load_model(result.export_uri, cfg)
    after = expert_log_likelihood(trained, cfg)
    assert before == pytest.approx(-np.log(cfg.model.action_bins), rel=1e-3)  # uniform start
    assert after > before + 1.0, (before, after)


@pytest.mark.mlflow
def test_training_tracks_to_a_real_mlflow_server_and_a_resumed_run_continues_it(
        mlflow_server, tmp_path: Path) -> None:
    from pac.data.synthetic import SyntheticSource

    cfg = Config.from_dict({
        "preset": "tiny", "objective": {"num_action_samples": 4},
        "train": {"steps": 3, "global_batch_size": 8, "micro_batch_size": 8, "checkpoint_every": 3,
                  "output": str(tmp_path / "run"), "log_every": 1},
        "tracking": {"uri": mlflow_server.uri, "experiment": "pac-train-test", "system_metrics": False},
    })
    first = train(cfg, source=SyntheticSource(cfg.model, 8))
    more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=5))
    resumed = train(more, source=SyntheticSource(cfg.model, 8))
    assert resumed.run_id == first.run_id and len(resumed.history) == 2
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(first.run_id)
    assert run.data.params["objective.alpha"] == str(cfg.objective.alpha)
    assert run.data.params["train.global_batch_size"] == "8"
    losses = client.get_metric_history(first.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4, 5]
    for name in ("bc_nll", "q_loss", "eta", "entropy", "q_mean", "q_std", "grad_norm", "lr", "tokens_per_s", "mfu"):
        assert client.get_metric_history(first.run_id, name), name
    net, loaded_cfg = load_policy(f"runs:/{first.run_id}/policy", cfg.tracking)
    assert loaded_cfg.train.steps == 5 and sum(p.numel() for p in net.parameters()) > 0


def test_an_export_records_a_learned_eta_within_the_configs_bounds() -> None:
    """Training reads eta in float32: at its floor it can come out a hair below `eta_min`, which the config
    refuses; the export must still be written (after hours of training), at the floor."""
    from pac.training.loop import exported_config

    cfg = Config.from_dict({"preset": "tiny", "objective": {"alpha": 0.5, "eta": 0.7, "eta_min": 0.7}})
    at_floor = float(torch.tensor(0.7, dtype=torch.float32))
    assert at_floor < 0.7
    assert exported_config(cfg, at_floor).objective.eta == 0.7
    assert exported_config(cfg, 12.5).objective.eta == 12.5
    bc = Config.from_dict({"preset": "tiny", "objective": {"alpha": 1.0}})
    assert exported_config(bc, 3.0).objective.eta == bc.objective.eta  # BC's eta never moved: its own value


def test_a_diverged_loss_stops_training_at_the_logging_interval_naming_the_step(tmp_path: Path) -> None:
    from pac.data.synthetic import SyntheticSource
    from pac.training.loop import TrainingDiverged

    class Poisoned(SyntheticSource):
        """Batch 2 (the third step's) carries a NaN action, as a diverging network would produce a NaN loss
        (a dataset cannot: ingestion refuses non-finite values)."""

        def batch(self, step: int) -> Transition:
            b = super().batch(step)
            if step == 2:
                b.action[0, 0] = float("nan")
            return b

    cfg = Config.from_dict({
        "preset": "tiny", "objective": {"alpha": 1.0, "beta": 0.0},
        "train": {"steps": 6, "global_batch_size": 8, "micro_batch_size": 8, "log_every": 2,
                  "checkpoint_every": 100, "output": str(tmp_path / "run")},
        "tracking": {"enabled": False},
    })
    with pytest.raises(TrainingDiverged, match=r"^step 3: loss nan"):
        train(cfg, source=Poisoned(cfg.model, 8))


class Bandit:
    """One state and a 1-D action. 80% of the data take a = -0.6 (reward 0), 20% take a = +0.6 (reward 1);
    every episode is one step long. Behaviour cloning copies the frequent, worse action."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def batch(self, step: int) -> Transition:
        rng = np.random.default_rng(step)
        good = rng.random(self.batch_size) < 0.2
        action = np.where(good, 0.6, -0.6)[:, None] + rng.normal(0, 0.02, (self.batch_size, 1))
        obs = Observation.from_numpy([np.zeros(3, np.float32)] * self.batch_size, ["choose"] * self.batch_size, 48)
        return Transition(obs, torch.from_numpy(action.astype(np.float32)), torch.ones(self.batch_size, 1, dtype=bool),
                          torch.from_numpy(good.astype(np.float32)), torch.zeros(self.batch_size), obs)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@pytest.mark.parametrize("alpha", [0.75, 1.0])
def test_the_advantage_filter_moves_the_greedy_policy_to_the_better_action(tmp_path: Path, alpha: float) -> None:
    """With `objective.bc_filter: advantage` the BC term imitates only the data actions the critic ranks above the
    policy's own value, so the objective's fixed point leaves the data's mode: the policy alone (greedy, no
    critic's pick) takes the better action, for PAC and for BC+Q."""
    from types import SimpleNamespace

    from pac.config import EvalConfig
    from pac.envs.pool import RemoteEnv
    from pac.evaluation import NetworkPolicy

    cfg = Config.from_dict({"preset": "tiny", "tracking": {"enabled": False},
                            "objective": {"alpha": alpha, "bc_filter": "advantage"},
                            "train": {"steps": 300, "global_batch_size": 64, "micro_batch_size": 64,
                                      "log_every": 100, "checkpoint_every": 10**6, "output": str(tmp_path / "run")}})
    result = train(cfg, source=Bandit(64))
    assert result.history[-1]["bc_kept"] < 0.5  # most of the data (the worse action) is no longer imitated
    net, _ = load_model(result.export_uri, cfg)
    env = RemoteEnv(SimpleNamespace(id="bandit", instruction="choose"), np.array([-1.0], np.float32),
                    np.array([1.0], np.float32), 1.0, 3)
    policy = NetworkPolicy(net, EvalConfig(), critic=True)  # greedy decode, no critic's pick
    policy.start(0, env, 0)
    assert policy.act([0], [env], [{"proprio": np.zeros(3, np.float32), "image": None}])[0, 0] > 0.3


def test_pac_acts_on_the_better_action_where_the_data_mostly_takes_the_worse_one(tmp_path: Path) -> None:
    """The property the mixed-quality benchmark depends on (issue 17), on a bandit: with the paper's objective
    the critic ranks the two actions, and acting greedily with Q-based selection among sampled actions
    (`eval.q_select_samples`) takes the better one. The policy alone stays on the data's mode: the objective's
    fixed point is alpha * data + (1 - alpha) * improved, 0.6 of its mass on the frequent action at alpha 0.75."""
    from types import SimpleNamespace

    from pac.config import EvalConfig
    from pac.envs.pool import RemoteEnv
    from pac.evaluation import NetworkPolicy
    from pac.networks import expected_value, value_support
    from pac.serving import PolicyInput, policy_actions

    cfg = Config.from_dict({"preset": "tiny", "tracking": {"enabled": False}, "objective": {"bc_filter": "none"},
                            "train": {"steps": 300, "global_batch_size": 64, "micro_batch_size": 64,
                                      "log_every": 100, "checkpoint_every": 10**6, "output": str(tmp_path / "run")}})
    net, _ = load_model(train(cfg, source=Bandit(64)).export_uri, cfg)
    obs = Bandit(1).batch(0).obs
    with torch.no_grad():
        q = expected_value(net.q_logits(net.encode(obs), torch.tensor([[[-0.6], [0.6]]]), torch.ones(1, 1, dtype=bool)),
                           value_support(net.cfg))[0]
    assert q[1] > q[0] + 0.5, q
    env = RemoteEnv(SimpleNamespace(id="bandit", instruction="choose"), np.array([-1.0], np.float32),
                    np.array([1.0], np.float32), 1.0, 3)
    policy = NetworkPolicy(net, EvalConfig(q_select_samples=16), critic=True)
    actions = []
    for seed in range(20):
        policy.start(0, env, seed)
        actions.append(policy.act([0], [env], [{"proprio": np.zeros(3, np.float32), "image": None}])[0, 0])
    assert np.mean(np.array(actions) > 0.3) >= 0.9, actions
    # A network whose critic never learned (BC) must not act on its untrained Q decoder: the policy alone acts.
    blind = NetworkPolicy(net, EvalConfig(q_select_samples=16), critic=False)
    blind.start(0, env, 0)
    assert blind.act([0], [env], [{"proprio": np.zeros(3, np.float32), "image": None}])[0, 0] < 0
    # The served model chooses as evaluation does, with the settings it was trained with.
    served = policy_actions(net, dataclasses.replace(cfg, eval=EvalConfig(q_select_samples=16)),
                            [PolicyInput(proprio=[0.0, 0.0, 0.0], instruction="choose", action_dims=1)] * 4)
    assert all(a[0] > 0.3 for a in served), served
