"""Collection: a policy's episodes, through the evaluation rollout, published as new immutable dataset versions."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pac.cli import main
from pac.collection import collect, collection_plans, config_hash, weights_hash
from pac.config import Config, ConfigError, DataConfig, EvalConfig, StorageConfig
from pac.data.dataset import default_cache_dir, list_versions, open_dataset
from pac.data.manifest import MANIFEST_NAME
from pac.data.schema import Episode
from pac.evaluation import NetworkPolicy, episode_seed, rollout
from pac.networks import PerceiverActorCritic, build_model
from pac.presets import model_config
from pac.training.export import save_export

TASK = "jaco/reach_site"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny batches: intra-op threads only cost hand-offs on a busy 2-core machine (see test_evaluation.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def policy() -> tuple[PerceiverActorCritic, Config]:
    """A tiny network with a random policy head, "trained" on the robot-arm task and a Control Suite task."""
    cfg = Config(model=model_config("tiny"), data=DataConfig(tasks=["cartpole/balance", TASK]))
    torch.manual_seed(0)
    net = build_model(cfg.model)
    with torch.no_grad():
        net.policy.head.weight.normal_(0.0, 0.5)
    return net, cfg


def read_episodes(uri: str, storage: StorageConfig) -> list[Episode]:
    ds = open_dataset(uri, storage)
    cache = default_cache_dir(DataConfig(), storage)
    return [ep for info in ds.manifest.shards for ep in ds.open_shard(info, cache).episodes()]


def test_collect_publishes_new_immutable_versions(policy: tuple[PerceiverActorCritic, Config],
                                                  tmp_path: Path) -> None:
    net, model_cfg = policy
    storage = StorageConfig(root=str(tmp_path / "store"))
    cfg = EvalConfig(episodes=3, num_envs=2, episode_steps=12, greedy=False, temperature=0.7, epsilon=0.2)
    first = collect(net, model_cfg, cfg, "robot", model_uri="models:/pac-policy/3", storage=storage,
                    progress=False)
    assert first.ref.version == 1 and list(first.tasks) == [TASK]  # robot-arm tasks only, by default
    v1_manifest = (tmp_path / "store" / "robot" / "v0001" / MANIFEST_NAME).read_bytes()

    second = collect(net, model_cfg, dataclasses.replace(cfg, seed=7), "robot", model_uri="models:/pac-policy/4",
                     storage=storage, progress=False)
    assert second.ref.version == 2 and list_versions(str(second.ref.uri), storage) == [1, 2]
    assert (tmp_path / "store" / "robot" / "v0001" / MANIFEST_NAME).read_bytes() == v1_manifest  # untouched

    manifest = open_dataset(str(second.ref), storage).manifest
    assert manifest.qualities == {"policy": 3}  # a new version, not an append
    assert manifest.tasks[TASK].policies == {"models:/pac-policy/4": 3}
    (source,) = manifest.sources
    assert source["kind"] == "policy" and source["uri"] == source["model"] == "models:/pac-policy/4"
    assert source["config_hash"] == config_hash(model_cfg) and source["weights_sha256"] == weights_hash(net)
    assert (source["seed"], source["temperature"], source["greedy"], source["epsilon"]) == (7, 0.7, False, 0.2)

    episodes = read_episodes(str(first.ref), storage)
    assert [ep.quality for ep in episodes] == ["policy"] * 3
    assert {ep.policy for ep in episodes} == {"models:/pac-policy/3"}
    seeds = sorted(int(ep.provenance["episode_seed"]) for ep in episodes)
    assert seeds == sorted(episode_seed(cfg.seed, TASK, i, "collect") for i in range(3))
    assert not set(seeds) & {episode_seed(cfg.seed, TASK, i, "eval") for i in range(3)}  # never the eval states
    assert all(ep.provenance["config_hash"] == config_hash(model_cfg) for ep in episodes)
    returns = np.array([ep.episode_return for ep in episodes])
    assert first.tasks[TASK].return_mean == pytest.approx(returns.mean(), abs=1e-4)

    # An appended round, same settings and seed as version 2's: it continues the stream's numbering, so none of
    # its episodes replays an initial state already in the dataset (a policy finetuned on repeated states learns
    # those states, not the task).
    appended = collect(net, model_cfg, dataclasses.replace(cfg, seed=7), "robot", model_uri="m", storage=storage,
                       append=True, progress=False)
    held = read_episodes(str(appended.ref), storage)
    assert len(held) == 6
    new = [ep for ep in held if ep.policy == "m"]
    assert sorted(int(ep.provenance["episode_index"]) for ep in new) == [3, 4, 5]
    expected = {episode_seed(7, TASK, i, "collect") for i in (3, 4, 5)}
    assert {int(ep.provenance["episode_seed"]) for ep in new} == expected
    assert len({ep.episode_id for ep in held}) == 6 and len({int(ep.provenance["episode_seed"]) for ep in held}) == 6


def test_collected_episodes_are_the_rollouts_episodes(policy: tuple[PerceiverActorCritic, Config],
                                                      tmp_path: Path) -> None:
    net, model_cfg = policy
    storage = StorageConfig(root=str(tmp_path / "store"))
    cfg = EvalConfig(episodes=2, num_envs=2, episode_steps=10, greedy=False, tasks=["cartpole/balance"])
    result = collect(net, model_cfg, cfg, "control", model_uri="export", storage=storage, progress=False)
    stored = sorted(read_episodes(str(result.ref), storage), key=lambda ep: int(ep.provenance["episode_index"]))
    source = NetworkPolicy(net, cfg, critic=model_cfg.objective.trains_critic)
    direct = rollout(source, "cartpole/balance", cfg, stream="collect", record=True, progress=False)
    for a, b in zip(stored, direct.episodes, strict=True):
        np.testing.assert_array_equal(a.proprio, b.proprio)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)


def test_collection_needs_a_robot_task_or_a_named_one(tmp_path: Path) -> None:
    cfg = Config(data=DataConfig(tasks=["cartpole/balance"]))
    with pytest.raises(ConfigError, match=f"none of them a robot-arm task.*--eval.tasks.*{TASK}"):
        collection_plans(cfg, EvalConfig())
    assert [p.task for p in collection_plans(cfg, EvalConfig(tasks=["cartpole/balance"]))] == ["cartpole/balance"]


def test_cli_collect(policy: tuple[PerceiverActorCritic, Config], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    net, model_cfg = policy
    export = save_export(net.state_dict(), model_cfg, tmp_path / "export")
    store = tmp_path / "store"
    flags = ["--eval.episodes", "2", "--eval.num_envs", "2", "--eval.episode_steps", "8", "--eval.greedy", "false",
             "--storage.root", str(store), "--tracking.enabled", "false", "--no-progress"]
    uri_file = tmp_path / "uri.txt"
    assert main(["collect", "--model", str(export), "--dataset", "robot", "--uri-file", str(uri_file), *flags]) == 0
    out = capsys.readouterr().out
    assert uri_file.read_text() == f"{store / 'robot'}@v0001"
    assert f"published {store / 'robot'}@v0001 (version 1)" in out and TASK in out
    manifest = open_dataset(uri_file.read_text(), StorageConfig(root=str(store))).manifest
    assert manifest.tasks[TASK].policies == {str(export.resolve()): 2}

    narrow = save_export(build_model(dataclasses.replace(model_cfg.model, max_proprio_dims=10)).state_dict(),
                         dataclasses.replace(model_cfg, model=dataclasses.replace(model_cfg.model,
                                                                                  max_proprio_dims=10)),
                         tmp_path / "narrow")
    assert main(["collect", "--model", str(narrow), "--dataset", "robot", *flags]) == 1
    assert "model.max_proprio_dims=10" in capsys.readouterr().err
    assert list_versions(str(store / "robot"), StorageConfig(root=str(store))) == [1]  # nothing published


@pytest.mark.s3
def test_collect_into_s3(policy: tuple[PerceiverActorCritic, Config], s3_bucket: str, tmp_path: Path) -> None:
    net, model_cfg = policy
    storage = StorageConfig(root=f"{s3_bucket}/datasets", secure=False)
    cfg = EvalConfig(episodes=2, num_envs=2, episode_steps=8)
    result = collect(net, model_cfg, cfg, "robot", model_uri="models:/pac-policy@champion", storage=storage,
                     progress=False)
    assert str(result.ref) == f"{s3_bucket}/datasets/robot@v0001"
    assert open_dataset(str(result.ref), storage).manifest.sources[0]["uri"] == "models:/pac-policy@champion"
