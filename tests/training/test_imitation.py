"""BC reproduces its expert in closed loop, and the model carries its state normalisation (issue 26).

The point mass is the case that exposed the learner: its LQR expert pushes in proportion to a small
position error, and a policy that reads the state badly stands still at its start (return 0) while
agreeing with the expert on most of the expert's own states. Only the closed-loop return on fresh seeds
is asserted; benchmarks/fidelity.py measures the same at benchmark scale.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from pac.config import Config, EvalConfig, GenerateConfig, StorageConfig
from pac.envs import make_env
from pac.envs.experts import make_expert
from pac.evaluation import NetworkPolicy, ScriptedSource, evaluate, load_policy_model
from pac.serving import PolicyInput, policy_actions
from pac.training.export import CONFIG, load_export, save_export
from pac.training.loop import train
from pac.workflow import generate_dataset

TASK = "point_mass/easy"
STEPS = 200  # episode length: the expert reaches the target in ~60 steps and holds it


def train_without_its_data(root: Path, steps: int) -> str:
    """BC on 20 expert episodes; the dataset is deleted afterwards, so every use relies on the export alone."""
    gen = GenerateConfig(tasks=[TASK], qualities=["expert"], episodes_per_policy=20, episode_steps=STEPS)
    generate_dataset(Config(generate=gen, storage=StorageConfig(root=str(root / "store"))), "expert", progress=False)
    cfg = Config.from_dict({
        "objective": {"alpha": 1.0, "beta": 0.0},
        "data": {"dataset": "expert"},
        # Every loop setting at its default (docs/learner.md chose them on this task).
        # 2,000 steps: the default head (HL-Gauss targets, mean decoding) reached 0.62-0.7+ here at 1,000 steps
        # where the former one-hot/argmax head reached 0.87; at the benchmark's 3,000 it is the better one
        "train": {"steps": steps, "global_batch_size": 128, "micro_batch_size": 128, "log_every": 200,
                  "checkpoint_every": steps, "output": str(root / "run")},
        "storage": {"root": str(root / "store")},
        "tracking": {"enabled": False},
    })
    uri = train(cfg).export_uri
    shutil.rmtree(root / "store")
    return uri


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A briefly trained export: enough for the statistics it carries, not for its returns."""
    return train_without_its_data(tmp_path_factory.mktemp("imitation"), steps=20)


@pytest.mark.slow  # ~2 min of training on 2 cores: the default tier keeps its ~10 min budget
def test_bc_reaches_the_point_mass_expert_on_fresh_seeds(tmp_path: Path) -> None:
    net, _ = load_policy_model(train_without_its_data(tmp_path, steps=2000))
    ecfg = EvalConfig(episodes=4, num_envs=4, episode_steps=STEPS, seed=777, video=False)  # not the data's seeds

    policy = evaluate(NetworkPolicy(net, ecfg, critic=False), [TASK], ecfg, progress=False).tasks[TASK]
    expert = evaluate(ScriptedSource(make_expert, name="expert"), [TASK], ecfg, progress=False).tasks[TASK]

    fidelity = (policy.return_mean - policy.random_return_mean) / (expert.return_mean - policy.random_return_mean)
    assert expert.success_rate == 1.0, "the expert itself must solve the task for the comparison to mean anything"
    assert fidelity >= 0.7, (policy.return_mean, expert.return_mean, policy.random_return_mean)


def test_the_served_policy_applies_the_statistics_the_export_carries(export: str) -> None:
    net, cfg = load_export(export)
    stats = cfg.model.proprio_stats[TASK]
    assert len(stats.mean) == 4 and max(stats.std) > 0  # point mass: position (2) + velocity (2)
    env = make_env(TASK, seed=5, episode_steps=STEPS)
    states = [env.reset(seed=s)["proprio"] for s in range(6)]
    env.close()

    rows = [PolicyInput(proprio=s.tolist(), task=TASK, action_dims=2) for s in states]
    served = np.array(policy_actions(net, cfg, rows))
    ecfg = EvalConfig(episodes=1, num_envs=1, episode_steps=1, video=False)
    policy = NetworkPolicy(net, ecfg, critic=False)
    envs = [make_env(TASK, seed=slot, episode_steps=1) for slot in range(6)]
    for slot, e in enumerate(envs):
        e.reset(seed=slot)
        policy.start(slot, e, seed=slot)
    rolled = policy.act(range(6), envs, [{"proprio": s, "image": None} for s in states])
    for e in envs:
        e.close()
    np.testing.assert_allclose(served, rolled, atol=1e-6)  # serving and evaluation agree, state for state

    with pytest.raises(ValueError, match="give each observation's `task`"):
        policy_actions(net, cfg, [PolicyInput(proprio=states[0].tolist(), action_dims=2)])
    with pytest.raises(ValueError, match="no statistics for 'reacher/easy'"):
        policy_actions(net, cfg, [PolicyInput(proprio=states[0].tolist(), task="reacher/easy", action_dims=2)])


def test_an_export_from_before_normalisation_loads_as_the_raw_state_network_it_is(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pac.networks import build_model

    old = Config.from_dict({"model": {"proprio_encoder": "scalar", "proprio_norm": "none"}})
    save_export(build_model(old.model).state_dict(), old, tmp_path)
    data = json.loads((tmp_path / CONFIG).read_text())
    for key in ("proprio_encoder", "proprio_norm", "proprio_tokens", "proprio_stats"):
        del data["model"][key]  # what a config.json written before issue 26 holds
    (tmp_path / CONFIG).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        _, cfg = load_export(tmp_path)
    assert (cfg.model.proprio_encoder, cfg.model.proprio_norm) == ("scalar", "none")
    assert "predates state normalisation" in caplog.text


def test_an_export_from_before_proprio_squash_keeps_reading_states_through_symlog(tmp_path: Path) -> None:
    from pac.networks import build_model

    cfg = Config.from_dict({"model": {"proprio_squash": "symlog"}})
    save_export(build_model(cfg.model).state_dict(), cfg, tmp_path)
    data = json.loads((tmp_path / CONFIG).read_text())
    del data["model"]["proprio_squash"]  # what a config.json written before the option holds
    (tmp_path / CONFIG).write_text(json.dumps(data))
    _, loaded = load_export(tmp_path)
    assert loaded.model.proprio_squash == "symlog"


def test_an_export_with_a_retired_setting_loads_and_an_unknown_model_key_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pac.networks import build_model
    from pac.training.export import ExportError

    cfg = Config()
    weights = build_model(cfg.model).state_dict()
    save_export(weights, cfg, tmp_path)
    data = json.loads((tmp_path / CONFIG).read_text())
    data["objective"]["bc_advantage"] = "nstep"  # an option a past pac had (session 42) and this one does not
    data["retired_section"] = {"x": 1}
    (tmp_path / CONFIG).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        _, loaded = load_export(tmp_path)
    assert loaded == cfg
    assert "objective.bc_advantage, retired_section" in caplog.text

    data["model"]["attention_window"] = 4  # the weights may depend on it: not guessed away
    (tmp_path / CONFIG).write_text(json.dumps(data))
    with pytest.raises(ExportError, match="unknown config key.*model.attention_window"):
        load_export(tmp_path)
