"""Behaviour-data generation on real MuJoCo: valid, labelled, deterministic episodes, and the CLI."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pac.cli import main
from pac.config import Config, ConfigError, GenerateConfig, StorageConfig
from pac.data.dataset import open_dataset
from pac.data.generate import (
    GENERATOR_VERSION,
    ReturnStats,
    check_config,
    estimated_bytes,
    generate_episodes,
    generation_digest,
    seed_stream,
)
from pac.data.schema import Episode
from pac.envs import RenderingUnavailable, UnknownTaskError
from pac.evaluation import episode_seed

SMALL = GenerateConfig(tasks=["cartpole/balance", "jaco/reach_site"], episodes_per_policy=2, episode_steps=20, seed=5)


def _same(a: Episode, b: Episode) -> None:
    for name in ("proprio", "actions", "rewards", "discounts", "action_low", "action_high"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.task, a.quality, a.policy, a.provenance, a.episode_id) == (
        b.task, b.quality, b.policy, b.provenance, b.episode_id)


def test_episodes_are_valid_and_labelled() -> None:
    stats = ReturnStats(SMALL.episode_steps)
    episodes = list(generate_episodes(SMALL, stats=stats, progress=False))
    assert len(episodes) == 2 * 3 * 2
    for ep in episodes:
        ep.validate()
        assert ep.length == 20 and ep.proprio.shape[0] == 21 and ep.images is None
        assert np.all(ep.discounts == 1.0)  # no terminal states in these tasks; the time limit truncates
        assert ep.proprio.dtype == ep.actions.dtype == np.float32
        assert np.all(ep.actions >= ep.action_low) and np.all(ep.actions <= ep.action_high)
        p = ep.provenance
        assert p["generator_version"] == GENERATOR_VERSION and p["task"] == ep.task and p["quality"] == ep.quality
        assert p["seed"] == str(episode_seed(5, ep.task, int(p["index"]), seed_stream(ep.quality)))
        assert p["policy"] == ep.policy
        assert ("noisy_expert_prob" in p) == (ep.quality == "noisy")
    assert len({ep.episode_id for ep in episodes}) == len(episodes)
    assert {(ep.task, ep.quality) for ep in episodes} == {
        (t, q) for t in SMALL.tasks for q in ("random", "noisy", "expert")}
    assert {ep.policy for ep in episodes if ep.task == "jaco/reach_site"} == {"random", "noisy_jaco_reach",
                                                                              "jaco_reach"}
    assert episodes[0].instruction == "Keep the pole balanced upright by moving the cart."
    # The summary covers every (task, quality) with all its episodes.
    table = stats.table()
    assert len(table.splitlines()) == 2 + 6 and "cartpole/balance" in table
    assert stats.returns[("cartpole/balance", "expert")] == pytest.approx(
        [ep.episode_return for ep in episodes if ep.task == "cartpole/balance" and ep.quality == "expert"])


def test_generation_is_deterministic_given_the_seed() -> None:
    first = list(generate_episodes(SMALL, progress=False))
    again = list(generate_episodes(SMALL, progress=False))
    for a, b in zip(first, again, strict=True):
        _same(a, b)
    # Each episode depends on its own seed only: generating one task alone reproduces it.
    alone = list(generate_episodes(replace(SMALL, tasks=["jaco/reach_site"]), progress=False))
    for a, b in zip([ep for ep in first if ep.task == "jaco/reach_site"], alone, strict=True):
        _same(a, b)
    other = list(generate_episodes(replace(SMALL, seed=6), progress=False))
    assert not np.allclose(first[0].proprio, other[0].proprio)
    # Episodes of one (task, quality) start from different states.
    assert not np.allclose(first[0].proprio[0], first[1].proprio[0])


def test_expert_data_is_better_than_random_data() -> None:
    cfg = GenerateConfig(tasks=["reacher/easy"], episodes_per_policy=2, episode_steps=150)
    stats = ReturnStats(cfg.episode_steps)
    for _ in generate_episodes(cfg, stats=stats, progress=False):
        pass
    mean = {q: np.mean(stats.returns[("reacher/easy", q)]) for q in ("random", "noisy", "expert")}
    assert mean["random"] < mean["noisy"] < mean["expert"] and mean["expert"] > 0.7 * 150


def test_vision_episodes_carry_frames() -> None:
    cfg = GenerateConfig(tasks=["point_mass/easy"], qualities=["random"], episodes_per_policy=1, episode_steps=5,
                         vision=True, image_size=16)
    try:
        (ep,) = generate_episodes(cfg, progress=False)
    except RenderingUnavailable as e:
        pytest.skip(f"no OpenGL backend: {e}")
    ep.validate()
    assert ep.images is not None and ep.images.shape == (6, 16, 16, 3) and ep.images.std() > 5


def test_unknown_task_or_quality_fails_before_simulating() -> None:
    with pytest.raises(UnknownTaskError, match="known tasks: cartpole/balance"):
        next(generate_episodes(replace(SMALL, tasks=["cartpole/balance", "cartpole/juggle"]), progress=False))
    with pytest.raises(ConfigError, match="generate.qualities"):
        Config.from_dict({"generate": {"qualities": ["expert", "great"]}})
    with pytest.raises(ConfigError, match="generate.damped_expert_prob"):
        Config.from_dict({"generate": {"damped_expert_prob": 1.5}})
    with pytest.raises(ConfigError, match="generate.expert_noise_std"):
        Config.from_dict({"generate": {"expert_noise_std": -0.1}})


def test_a_noisy_expert_is_recorded_as_the_expert_with_its_noise() -> None:
    """`generate.expert_noise_std`: the expert quality's episodes carry the noise in their provenance, executed
    actions and content hash; without it they are the deterministic expert's."""
    cfg = replace(SMALL, tasks=["cartpole/balance"], qualities=["expert"], episodes_per_policy=1)
    clean = next(generate_episodes(cfg, progress=False))
    noisy_cfg = replace(cfg, expert_noise_std=0.1)
    noisy = next(generate_episodes(noisy_cfg, progress=False))
    assert (noisy.quality, noisy.provenance["expert_noise_std"]) == ("expert", "0.1")
    assert "expert_noise_std" not in clean.provenance
    assert noisy.provenance["seed"] == clean.provenance["seed"]  # the same episode, with noise on its actions
    assert 0 < np.abs(noisy.actions - clean.actions).mean() < 0.5
    assert generation_digest(noisy_cfg) != generation_digest(cfg)


def test_cli_generates_and_ingests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    uri_file = tmp_path / "uri.txt"
    rc = main(["data", "generate", "--dataset", "gen", "--storage.root", str(root), "--no-progress",
               "--generate.tasks", "cartpole/balance,point_mass/easy", "--generate.episodes_per_policy", "2",
               "--generate.episode_steps", "15", "--uri-file", str(uri_file)])
    out, err = capsys.readouterr()
    assert rc == 0 and out.strip().endswith("gen@v0001") and uri_file.read_text() == out.strip()
    assert re.search(r"cartpole/balance\s+expert\s+2\s", err) and "histogram" in err
    ds = open_dataset(out.strip(), StorageConfig(root=str(root)))
    m = ds.manifest
    assert m.counts["episodes"] == 12 and m.counts["transitions"] == 12 * 15
    assert m.qualities == {"random": 4, "noisy": 4, "expert": 4}
    assert m.tasks["point_mass/easy"].proprio_dim == 4 and m.tasks["point_mass/easy"].action_dim == 2
    assert m.sources[0]["kind"] == "generate" and m.sources[0]["tasks"] == "cartpole/balance,point_mass/easy"
    back = [ep for info in m.shards for ep in ds.open_shard(info, tmp_path / "cache").episodes()]
    assert {ep.provenance["generator_version"] for ep in back} == {GENERATOR_VERSION}


def test_generation_is_cached_by_content(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same configuration again reuses the latest version; another configuration, --force or --append
    generate a new one. The worker count decides nothing, so it is not part of the content."""
    args = ["data", "generate", "--dataset", "gen", "--storage.root", str(tmp_path / "store"), "--no-progress",
            "--generate.tasks", "point_mass/easy", "--generate.qualities", "expert", "--generate.episodes_per_policy",
            "1", "--generate.episode_steps", "10"]
    published = []
    for extra in ([], ["--generate.workers", "1"], ["--generate.seed", "7"], ["--generate.seed", "7", "--force"],
                  ["--generate.seed", "7", "--append"]):
        assert main([*args, *extra]) == 0
        out, err = capsys.readouterr()
        published.append(out.strip().rsplit("@", 1)[1])
        assert ("nothing generated" in err) == (len(published) == 2)
    assert published == ["v0001", "v0001", "v0002", "v0003", "v0004"]


def test_cli_rejects_unknown_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "generate", "--dataset", "gen", "--storage.root", str(tmp_path / "store"),
               "--generate.tasks", "walker/fly"])
    assert rc == 1 and "unknown task 'walker/fly'; known tasks:" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing was written


def test_a_recipes_expert_subset_is_the_same_config_with_only_the_expert_quality() -> None:
    """Episode seeds derive from (seed, task, quality, index), so generating a recipe with
    `--generate.qualities expert --generate.quality_episodes expert=N` gives exactly its expert episodes: the
    fidelity check's data, addressable without filtering the mixed dataset (docs/data.md)."""
    mixed = [ep for ep in generate_episodes(replace(SMALL, qualities=["random", "expert"], workers=1),
                                            progress=False) if ep.quality == "expert"]
    alone = list(generate_episodes(replace(SMALL, qualities=["expert"], workers=1), progress=False))
    assert len(mixed) == len(alone) > 0
    for a, b in zip(mixed, alone, strict=True):
        _same(a, b)


def test_quality_mix_and_worker_count_leave_the_episodes_unchanged() -> None:
    mix = replace(SMALL, qualities=["random", "expert"], quality_episodes={"random": 3})
    serial = list(generate_episodes(replace(mix, workers=1), progress=False))
    parallel = list(generate_episodes(replace(mix, workers=2), progress=False))
    for a, b in zip(serial, parallel, strict=True):
        _same(a, b)
    counts = {(t, q): sum(ep.task == t and ep.quality == q for ep in serial) for t in SMALL.tasks
              for q in ("random", "expert")}
    assert counts == {(t, "random"): 3 for t in SMALL.tasks} | {(t, "expert"): 2 for t in SMALL.tasks}
    with pytest.raises(ConfigError, match="generate.quality_episodes.*damped"):
        replace(SMALL, quality_episodes={"damped": 2})


def test_one_task_and_quality_is_shared_out_in_runs_without_changing_its_episodes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = replace(SMALL, tasks=["cartpole/balance"], qualities=["noisy", "expert"], episodes_per_policy=3,
                  expert_noise_std=0.1)  # both draw from per-episode generators
    whole = list(generate_episodes(replace(cfg, workers=1), progress=False))
    monkeypatch.setattr("pac.data.generate._CHUNK", 1)  # each episode its own run: 6 runs for 2 workers
    shared = list(generate_episodes(replace(cfg, workers=2), progress=False))
    for a, b in zip(whole, shared, strict=True):
        _same(a, b)
    assert [ep.episode_id for ep in shared] == [f"generate/cartpole/balance/{q}/{i:05d}"
                                                for q in ("noisy", "expert") for i in range(3)]


def test_a_recipe_too_large_for_the_disk_fails_before_simulating(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    recipe = Config.from_dict({"generate": {"tasks": ["point_mass/easy"], "episode_steps": 1000,
                                            "episodes_per_policy": 10}}).generate
    need = estimated_bytes(recipe)
    assert need == 3 * 10 * 1001 * 4 * (4 + 2 + 2)  # 3 qualities x 10 episodes of float32 (state, action, r, d)
    check_config(recipe, free_bytes=need)
    with pytest.raises(ValueError, match=r"30 episodes of 1000 steps need about .* GiB and only .* GiB are free"):
        check_config(recipe, free_bytes=need - 1)
    # The shipped benchmark recipe, by name: >= 100 episodes x 1000 steps per task, 30/40/30 random/degraded/expert.
    rc = main(["config", "--config", "benchmark"])
    shown = capsys.readouterr().out
    assert rc == 0 and "jaco/reach_site" in shown and "quality_episodes" in shown
