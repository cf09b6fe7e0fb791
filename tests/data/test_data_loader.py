"""The training loader: exact n-step targets, determinism, exact resume, rank partitioning, task weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pac.config import Config, DataConfig, StorageConfig
from pac.data.dataset import DatasetError, open_dataset
from pac.data.ingest import ingest
from pac.data.loader import TransitionLoader, build_loader, partition
from pac.data.schema import Episode
from pac.inputs import Transition, normalize_action, tokenize

SMALL = DataConfig(shard_mb=0.002)


def _loader(uri: str, storage: StorageConfig, **kw: object) -> TransitionLoader:
    args: dict = {"batch_size": 32, "n_step": 3, "discount": 0.5, "max_text_tokens": 48, "seed": 0}
    args.update(kw)
    return TransitionLoader(uri, storage=storage, data=args.pop("data", DataConfig()), **args)


def _hand_episode(episode_id: str, rewards: list[float], discounts: list[float]) -> Episode:
    t = len(rewards)
    return Episode(task="cartpole/balance", instruction="balance", proprio=np.arange(t + 1, dtype=np.float32)[:, None]
                   * np.ones((1, 5), np.float32) + 100 * len(episode_id),
                   actions=np.zeros((t, 1), np.float32), rewards=np.array(rewards, np.float32),
                   discounts=np.array(discounts, np.float32), action_low=np.array([-1], np.float32),
                   action_high=np.array([1], np.float32), episode_id=episode_id)


def _samples(loader: TransitionLoader, steps: int) -> list[tuple[str, int, float, float, float, float]]:
    """(episode_id, t, reward, discount, obs proprio[0], next_obs proprio[0]) of every sample."""
    out = []
    shards = loader.dataset.manifest.shards
    for step in range(steps):
        plan, batch = loader.plan(step), loader.batch(step)
        for i in range(loader.batch_size):
            ids = loader.dataset.open_shard(shards[plan.shard[i]], "unused")["episode_ids"]
            out.append((str(ids[plan.episode[i]]), int(plan.t[i]), float(batch.reward[i]), float(batch.discount[i]),
                        float(batch.obs.proprio[i, 0]), float(batch.next_obs.proprio[i, 0])))
    return out


def test_n_step_targets_match_hand_computed_cases(storage: StorageConfig) -> None:
    episodes = [_hand_episode("term", [1, 2, 3, 4], [1, 1, 1, 0]),  # terminates after its last action
                _hand_episode("trunc", [1, 1, 1], [1, 1, 1])]  # time limit: keeps bootstrapping
    ref = ingest(episodes, "hand", storage=storage, progress=False)
    loader = _loader(str(ref), storage, n_step=3, discount=0.5)
    # (episode, t) -> (reward, discount, obs index, next obs index); gamma = 0.5, n = 3
    expected = {
        ("term", 0): (1 + 0.5 * 2 + 0.25 * 3, 0.125, 0, 3),
        ("term", 1): (2 + 0.5 * 3 + 0.25 * 4, 0.0, 1, 4),  # terminal inside the window: no bootstrap
        ("term", 2): (3 + 0.5 * 4, 0.0, 2, 4),
        ("term", 3): (4.0, 0.0, 3, 4),
        ("trunc", 0): (1 + 0.5 + 0.25, 0.125, 0, 3),
        ("trunc", 1): (1 + 0.5, 0.25, 1, 3),  # n' = 2: bootstraps from the final observation
        ("trunc", 2): (1.0, 0.5, 2, 3),
    }
    seen = set()
    for eid, t, reward, discount, obs, next_obs in _samples(loader, 8):
        r, d, o, no = expected[(eid, t)]
        base = 100 * len(eid)
        assert (reward, discount, obs, next_obs) == (pytest.approx(r), pytest.approx(d), base + o, base + no), (eid, t)
        seen.add((eid, t))
    assert seen == set(expected)


def _reference(ep: Episode, t: int, n: int, gamma: float) -> tuple[float, float, int]:
    """Straight loop over the definition in `Transition`'s docstring."""
    steps = min(n, ep.length - t)
    reward, alive = 0.0, 1.0
    for k in range(steps):
        reward += gamma**k * alive * float(ep.rewards[t + k])
        alive *= float(ep.discounts[t + k])
    return reward, gamma**steps * alive, t + steps


def test_batches_reproduce_the_ingested_episodes(mixed_episodes: list[Episode], episode_factory,
                                                 storage: StorageConfig) -> None:
    vision = [episode_factory("walker/walk", 7, 6, 3, seed=300 + i, images=True) for i in range(3)]
    ref = ingest(mixed_episodes + vision, "rt", storage=storage, data=SMALL, progress=False)
    loader = _loader(str(ref), storage, n_step=4, discount=0.9, batch_size=48)
    by_id = {ep.episode_id: ep for ep in mixed_episodes + vision}
    shards = loader.dataset.manifest.shards
    assert (loader.proprio_width, loader.action_width, loader.image_shape) == (6, 3, (8, 8, 3))
    for step in range(4):
        plan, b = loader.plan(step), loader.batch(step)
        assert isinstance(b, Transition) and b.batch_size == 48
        for i in range(48):
            shard = loader.dataset.open_shard(shards[plan.shard[i]], "unused")
            ep = by_id[str(shard["episode_ids"][plan.episode[i]])]
            t = int(plan.t[i])
            reward, discount, nxt = _reference(ep, t, 4, 0.9)
            assert float(b.reward[i]) == pytest.approx(reward, rel=1e-5)
            assert float(b.discount[i]) == pytest.approx(discount, rel=1e-5)
            p, a = ep.proprio.shape[1], ep.actions.shape[1]
            assert torch.equal(b.obs.proprio[i, :p], torch.from_numpy(ep.proprio[t]))
            assert torch.equal(b.next_obs.proprio[i, :p], torch.from_numpy(ep.proprio[nxt]))
            assert b.obs.proprio_mask[i].tolist() == [True] * p + [False] * (6 - p)
            assert not b.obs.proprio[i, p:].any()
            want = normalize_action(ep.actions[t], ep.action_low, ep.action_high)
            np.testing.assert_allclose(b.action[i, :a].numpy(), want, rtol=1e-6)
            assert b.action_mask[i].tolist() == [True] * a + [False] * (3 - a)
            assert b.action[i].abs().max() <= 1.0
            ids, mask = tokenize([ep.instruction], 48)
            length = int(mask.sum())
            assert b.obs.text[i, :length].tolist() == ids[0, :length].tolist() and not b.obs.text[i, length:].any()
            assert bool(b.obs.image_mask[i]) == (ep.images is not None)
            if ep.images is not None:
                assert torch.equal(b.obs.image[i], torch.from_numpy(ep.images[t]).permute(2, 0, 1))
                assert torch.equal(b.next_obs.image[i], torch.from_numpy(ep.images[nxt]).permute(2, 0, 1))
            else:
                assert not b.obs.image[i].any()


def _equal(a: Transition, b: Transition) -> bool:
    def obs_equal(x, y) -> bool:
        return all(torch.equal(getattr(x, f), getattr(y, f)) for f in ("proprio", "proprio_mask", "text", "text_mask"))

    return (obs_equal(a.obs, b.obs) and obs_equal(a.next_obs, b.next_obs) and torch.equal(a.action, b.action)
            and torch.equal(a.reward, b.reward) and torch.equal(a.discount, b.discount))


def test_deterministic_and_exactly_resumable(mixed_episodes: list[Episode], storage: StorageConfig) -> None:
    ref = ingest(mixed_episodes, "det", storage=storage, data=SMALL, progress=False)
    one = _loader(str(ref), storage, seed=7, data=DataConfig(shards_in_memory=1))
    two = _loader(str(ref), storage, seed=7)
    other = _loader(str(ref), storage, seed=8)
    first = [next(one) for _ in range(3)]
    assert not _equal(first[0], first[1]) and not _equal(first[1], first[2])  # the stream moves on
    assert all(_equal(x, next(two)) for x in first)
    assert not _equal(first[0], next(other))

    state = one.state_dict()
    assert state["step"] == 3
    after = [next(one) for _ in range(4)]
    resumed = _loader(str(ref), storage, seed=7)
    resumed.load_state_dict(state)
    assert all(_equal(x, next(resumed)) for x in after)
    assert resumed.step == 7

    with pytest.raises(ValueError, match="seed=7, this one 8"):
        other.load_state_dict(state)
    different = ingest(mixed_episodes[:5], "det2", storage=storage, progress=False)
    with pytest.raises(ValueError, match="different shards"):
        _loader(str(different), storage, seed=7).load_state_dict(state)


def test_ranks_are_disjoint_and_cover_the_dataset(mixed_episodes: list[Episode], storage: StorageConfig) -> None:
    ref = ingest(mixed_episodes, "dist", storage=storage, data=SMALL, progress=False)
    everything = _loader(str(ref), storage).episodes()
    ranks = [_loader(str(ref), storage, rank=r, world_size=2) for r in range(2)]
    parts = [r.episodes() for r in ranks]
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == everything
    assert set(ranks[0].shard_ids()) != set(ranks[1].shard_ids())  # each rank reads only part of the shards
    for loader, mine in zip(ranks, parts):
        for step in range(5):
            plan = loader.plan(step)
            assert {(int(s), int(e)) for s, e in zip(plan.shard, plan.episode)} <= mine
    # Different ranks draw different samples from the same step.
    assert not _equal(ranks[0].batch(0), ranks[1].batch(0))
    with pytest.raises(ValueError, match="outside"):
        _loader(str(ref), storage, rank=2, world_size=2)


def test_partition_balances_transitions() -> None:
    lengths = np.array([5, 5, 5, 100, 5, 5, 20, 20, 20, 20])
    owners = [partition(lengths, r, 3) for r in range(3)]
    assert (np.sum(owners, axis=0) == 1).all()  # every episode has exactly one owner
    for mask in owners:
        run = np.flatnonzero(mask)
        assert (np.diff(run) == 1).all()  # contiguous
    assert partition(np.array([3]), 1, 2).sum() == 0  # fewer episodes than ranks: some ranks hold none


def test_task_weights(mixed_episodes: list[Episode], storage: StorageConfig) -> None:
    ref = ingest(mixed_episodes, "weights", storage=storage, data=SMALL, progress=False)
    m = open_dataset(str(ref), storage).manifest
    default = _loader(str(ref), storage)
    share = m.tasks["cartpole/balance"].transitions / m.counts["transitions"]
    assert default.task_probs[default.tasks.index("cartpole/balance")] == pytest.approx(share)

    weighted = _loader(str(ref), storage, batch_size=64,
                       data=DataConfig(task_weights={"cartpole/balance": 1.0, "point_mass/easy": 3.0}))
    picks = np.concatenate([weighted.plan(s).task for s in range(50)])
    pm = weighted.tasks.index("point_mass/easy")
    assert np.mean(picks == pm) == pytest.approx(0.75, abs=0.04)

    only = _loader(str(ref), storage, data=DataConfig(task_weights={"cartpole/balance": 0.0, "point_mass/easy": 1.0}))
    assert only.tasks == ["point_mass/easy"] and (only.batch(0).action_mask.sum(1) == 2).all()
    selected = _loader(str(ref), storage, data=DataConfig(tasks=["cartpole/balance"]))
    assert selected.tasks == ["cartpole/balance"] and selected.proprio_width == 5

    with pytest.raises(DatasetError, match="cheetah/run not in dataset"):
        _loader(str(ref), storage, data=DataConfig(tasks=["cheetah/run"]))
    with pytest.raises(DatasetError, match="gives no weight for point_mass/easy"):
        _loader(str(ref), storage, data=DataConfig(task_weights={"cartpole/balance": 1.0}))


def test_quality_selection(mixed_episodes: list[Episode], storage: StorageConfig) -> None:
    ref = ingest(mixed_episodes, "quality", storage=storage, data=SMALL, progress=False)
    shards = open_dataset(str(ref), storage).manifest.shards
    experts = _loader(str(ref), storage, batch_size=64, data=DataConfig(qualities=["expert"]))
    sampled = {(int(s), int(e)) for step in range(20) for s, e in zip(experts.plan(step).shard,
                                                                       experts.plan(step).episode)}
    assert {shards[s].labels()[e] for s, e in sampled} == {"expert"}
    expert_ids = {(i, e) for i, s in enumerate(shards) for e, q in enumerate(s.labels()) if q == "expert"}
    assert experts.episodes() == expert_ids  # every expert episode, nothing else
    # Default task weights follow the selected transitions, not the task's whole data.
    cartpole = sum(s.episode_lengths[e] for i, s in enumerate(shards) for e in range(s.episodes)
                   if (i, e) in expert_ids and s.task == "cartpole/balance")
    point_mass = sum(s.transitions for s in shards if s.task == "point_mass/easy")  # all expert
    share = experts.task_probs[experts.tasks.index("cartpole/balance")]
    assert share == pytest.approx(cartpole / (cartpole + point_mass))
    assert experts.state_dict()["qualities"] == ["expert"]

    with pytest.raises(DatasetError, match=r"task point_mass/easy .* has no episode of data.qualities \['noisy'\] "
                                           r"\(it holds expert\); select tasks with data.tasks"):
        _loader(str(ref), storage, data=DataConfig(qualities=["noisy"]))
    noisy = _loader(str(ref), storage, data=DataConfig(qualities=["noisy"], tasks=["cartpole/balance"]))
    assert {shards[s].labels()[e] for s, e in noisy.episodes()} == {"noisy"}


def test_quality_selection_on_a_manifest_without_episode_labels(mixed_episodes: list[Episode],
                                                                storage: StorageConfig) -> None:
    ref = ingest(mixed_episodes, "legacy", storage=storage, progress=False)
    path = Path(ref.uri) / "v0001" / "manifest.json"
    doc = json.loads(path.read_text())
    for shard in doc["shards"]:
        shard.pop("episode_qualities")
    path.write_text(json.dumps(doc))
    only_expert = _loader(str(ref), storage, data=DataConfig(qualities=["expert"], tasks=["point_mass/easy"]))
    assert len(only_expert.episodes()) == 5  # a shard of one label needs no per-episode list
    with pytest.raises(DatasetError, match=r"published before its manifest recorded each episode's quality and "
                                           r"task cartpole/balance mixes qualities: re-ingest it"):
        _loader(str(ref), storage, data=DataConfig(qualities=["expert"]))


def test_memory_bound_on_open_shards(mixed_episodes: list[Episode], storage: StorageConfig) -> None:
    ref = ingest(mixed_episodes, "bounded", storage=storage, data=SMALL, progress=False)
    loader = _loader(str(ref), storage, data=DataConfig(shards_in_memory=2), batch_size=64)
    assert len(loader.shard_ids()) > 2
    for _ in range(5):
        next(loader)
        assert loader.open_shard_count <= 2


def test_build_loader_from_config(mixed_episodes: list[Episode], tmp_path: Path) -> None:
    cfg = Config()
    cfg.storage.root = str(tmp_path / "store")
    cfg.train.micro_batch_size = 16
    cfg.objective.n_step = 2
    with pytest.raises(DatasetError, match="data.dataset is empty"):
        build_loader(cfg)
    ingest(mixed_episodes, "cfgds", storage=cfg.storage, progress=False)
    cfg.data.dataset = "cfgds@latest"
    loader = build_loader(cfg, rank=0, world_size=1)
    batch = next(loader)
    assert batch.batch_size == 16 and loader.n_step == 2 and loader.dataset.uri.endswith("cfgds@v0001")
    cfg.model.max_action_dims = 1  # point_mass/easy has 2 action dims
    with pytest.raises(DatasetError, match=r"does not fit the model: actions have 2 dims > model\.max_action_dims=1"):
        build_loader(cfg)
