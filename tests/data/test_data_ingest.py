"""Ingestion: episodes -> checksummed shards + manifest, versioning, and every way bad input is rejected."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pac.cli import main
from pac.config import Config, DataConfig, StorageConfig
from pac.data.dataset import DatasetError, ShardCorruptError, list_versions, open_dataset, parse_dataset_uri
from pac.data.ingest import ingest
from pac.data.manifest import ManifestError
from pac.data.mixture import with_proprio_stats
from pac.data.schema import Episode, EpisodeError
from pac.data.shards import Shard

SMALL = DataConfig(shard_mb=0.002)  # ~2 KB shards: several shards even for tiny test datasets


def _assert_same(a: Episode, b: Episode) -> None:
    for f in ("proprio", "actions", "rewards", "discounts", "action_low", "action_high"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    if a.images is None:
        assert b.images is None
    else:
        np.testing.assert_array_equal(a.images, b.images)
    assert (a.task, a.instruction, a.quality, a.policy, a.episode_id, a.provenance) == \
        (b.task, b.instruction, b.quality, b.policy, b.episode_id, b.provenance)


def test_round_trip_and_manifest_statistics(mixed_episodes: list[Episode], storage: StorageConfig) -> None:
    ref = ingest(mixed_episodes, "control", storage=storage, data=SMALL, progress=False,
                 sources=[{"kind": "test", "uri": "memory"}])
    assert ref.version == 1 and str(ref).endswith("/control@v0001")
    ds = open_dataset(str(ref), storage)
    m = ds.manifest
    assert len(m.shards) > 2 and all(s.path.startswith("v0001/shards/") for s in m.shards)

    back = {ep.episode_id: ep for info in m.shards for ep in ds.open_shard(info, "unused").episodes()}
    assert sorted(back) == sorted(ep.episode_id for ep in mixed_episodes)
    for ep in mixed_episodes:
        _assert_same(ep, back[ep.episode_id])

    cart = [ep for ep in mixed_episodes if ep.task == "cartpole/balance"]
    st = m.tasks["cartpole/balance"]
    returns = np.array([ep.rewards.astype(np.float64).sum() for ep in cart])
    assert st.episodes == 9 and st.transitions == sum(ep.length for ep in cart)
    assert st.return_mean == pytest.approx(returns.mean()) and st.return_std == pytest.approx(returns.std())
    assert (st.return_min, st.return_max) == (pytest.approx(returns.min()), pytest.approx(returns.max()))
    assert sum(st.return_histogram["counts"]) == 9 and len(st.return_histogram["edges"]) == 11
    proprio = np.concatenate([ep.proprio for ep in cart]).astype(np.float64)
    np.testing.assert_allclose(st.proprio_mean, proprio.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st.proprio_std, proprio.std(0), rtol=1e-6)
    assert st.qualities == {"random": 3, "noisy": 3, "expert": 3}
    assert (st.proprio_dim, st.action_dim, st.action_low, st.action_high) == (5, 1, [-2.0], [3.0])
    assert st.instruction == "instruction for cartpole/balance" and st.tokens == st.transitions * 6
    assert m.tasks["point_mass/easy"].action_dim == 2
    assert m.counts["episodes"] == 14 and m.qualities == {"random": 3, "noisy": 3, "expert": 8}
    assert m.sources == [{"kind": "test", "uri": "memory"}]

    # The JSON on disk carries the derived sections for other tools, and parses back identically.
    doc = json.loads((Path(ref.uri) / "v0001" / "manifest.json").read_text())
    assert doc["schema_version"] == 1 and doc["counts"]["transitions"] == m.counts["transitions"]
    assert doc["tasks"]["cartpole/balance"]["return_histogram"] == st.return_histogram
    assert all(s["sha256"] and s["bytes"] > 0 for s in doc["shards"])
    # Shards are plain pickle-free npz files.
    with np.load(Path(ref.uri) / m.shards[0].path, allow_pickle=False) as z:
        assert str(z["task"]) == m.shards[0].task


def test_a_selection_of_qualities_is_standardised_by_its_own_states(mixed_episodes: list[Episode],
                                                                    storage: StorageConfig,
                                                                    caplog: pytest.LogCaptureFixture,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # experts' states in a narrow band, the others' spread wide: as cartpole's pole angle in mixed benchmark data
    eps = [dataclasses.replace(ep, proprio=ep.proprio * 0.01 + 3.0 if ep.quality == "expert" else ep.proprio * 10.0)
           for ep in mixed_episodes]
    ref = ingest(eps, "mixed", storage=storage, data=SMALL, progress=False)
    m = open_dataset(str(ref), storage).manifest
    assert any(len(s.qualities) > 1 for s in m.shards if s.task == "cartpole/balance")  # shards mix qualities
    cart = [ep for ep in eps if ep.task == "cartpole/balance"]
    for qualities in (["expert"], ["random", "noisy"]):
        states = np.concatenate([ep.proprio for ep in cart if ep.quality in qualities]).astype(np.float64)
        mean, std, selected = m.proprio_stats("cartpole/balance", qualities)
        np.testing.assert_allclose(mean, states.mean(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(std, states.std(0), rtol=1e-6)
        assert selected
    whole = m.tasks["cartpole/balance"]
    assert m.proprio_stats("cartpole/balance") == (whole.proprio_mean, whole.proprio_std, True)
    assert m.proprio_stats("point_mass/easy", ["random"])[:2] == (m.tasks["point_mass/easy"].proprio_mean,
                                                                  m.tasks["point_mass/easy"].proprio_std)

    # Training takes the selection's statistics into the model (and so into its export).
    cfg = Config(data=DataConfig(dataset=str(ref), qualities=["expert"]), storage=storage)
    trained = with_proprio_stats(cfg, {}).model.proprio_stats["cartpole/balance"]
    assert (trained.mean, trained.std) == m.proprio_stats("cartpole/balance", ["expert"])[:2]

    # A manifest written before per-quality moments: the whole task's statistics, with a warning saying so.
    path = Path(ref.uri) / "v0001" / "manifest.json"
    doc = json.loads(path.read_text())
    for shard in doc["shards"]:
        shard.pop("quality_proprio")
    path.write_text(json.dumps(doc))
    assert open_dataset("mixed", storage).manifest.proprio_stats("cartpole/balance", ["expert"]) == (
        whole.proprio_mean, whole.proprio_std, False)
    with caplog.at_level(logging.WARNING):
        trained = with_proprio_stats(cfg, {}).model.proprio_stats["cartpole/balance"]
    assert trained.std == whole.proprio_std and "pac data upgrade" in caplog.text and "data.qualities" in caplog.text

    # `pac data upgrade` publishes the same shards with the summaries added, the old statistics kept as they were.
    assert main(["data", "upgrade", "mixed", "--storage.root", storage.root, "--no-progress"]) == 0
    upgraded = open_dataset("mixed@v0002", storage).manifest
    assert [(s.path, s.sha256, s.proprio_m2) for s in upgraded.shards] == [(s.path, s.sha256, s.proprio_m2)
                                                                          for s in m.shards]
    assert upgraded.proprio_stats("cartpole/balance", ["expert"]) == m.proprio_stats("cartpole/balance", ["expert"])
    assert upgraded.sources[-1] == {"kind": "upgraded", "uri": f"{ref.uri}@v0001"}
    capsys.readouterr()
    assert main(["data", "upgrade", "mixed", "--storage.root", storage.root]) == 0  # nothing missing: no version
    out = capsys.readouterr()
    assert out.out.strip() == f"{ref.uri}@v0002" and "nothing published" in out.err
    assert list_versions("mixed", storage) == [1, 2]
    with caplog.at_level(logging.WARNING):  # an older version's upgrade becomes the latest: said, not silent
        assert main(["data", "upgrade", "mixed@v0001", "--storage.root", storage.root, "--no-progress"]) == 0
    assert list_versions("mixed", storage) == [1, 2, 3] and "above v0002" in caplog.text

    doc["shards"][0]["quality_proprio"] = {"expert": {"observations": 1}}
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="shard entry 0: quality_proprio must map each quality"):
        open_dataset("mixed@v0001", storage)


def test_versions_are_immutable_and_addressable(mixed_episodes: list[Episode], storage: StorageConfig) -> None:
    first = ingest(mixed_episodes[:4], "ds", storage=storage, progress=False)
    second = ingest(mixed_episodes[4:], "ds", storage=storage, progress=False, sources=[{"kind": "a"}])
    third = ingest(mixed_episodes[:2], "ds", storage=storage, progress=False, append=True, sources=[{"kind": "b"}])
    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert list_versions("ds", storage) == [1, 2, 3]
    assert open_dataset("ds", storage).ref.version == 3
    assert open_dataset("ds@latest", storage).ref.version == 3
    assert open_dataset("ds@v0001", storage).manifest.counts["episodes"] == 4
    assert open_dataset("ds@2", storage).manifest.counts["episodes"] == 10
    assert open_dataset(f"{first.uri}/v0002", storage).ref.version == 2
    appended = open_dataset("ds@3", storage).manifest
    assert appended.parent == 2 and appended.counts["episodes"] == 12
    assert appended.sources == [{"kind": "a"}, {"kind": "b"}]
    assert {s.path.split("/")[0] for s in appended.shards} == {"v0002", "v0003"}
    with pytest.raises(DatasetError, match="no version 7; published: v0001, v0002, v0003"):
        open_dataset("ds@7", storage)
    with pytest.raises(DatasetError, match="no published dataset"):
        open_dataset("nothing-here", storage)
    assert parse_dataset_uri("s3://b/x/ds@v0012") == ("s3://b/x/ds", 12)
    assert parse_dataset_uri("s3://b/x/ds") == ("s3://b/x/ds", None)


def _corrupt(ep: Episode, how: str) -> Episode:
    if how == "mismatched lengths":
        ep.rewards = ep.rewards[:-1]
    elif how == "NaN":
        ep.proprio[3, 1] = np.nan
    elif how == "wrong dtype":
        ep.actions = ep.actions.astype(np.int64)
    elif how == "out of bounds":
        ep.actions[2, 0] = 7.5
    elif how == "unknown task":
        ep.task = "cartpole/levitate"
    elif how == "other layout":
        ep.proprio = np.zeros((ep.length + 1, 9), np.float32)
    return ep


@pytest.mark.parametrize(("how", "message"), [
    ("mismatched lengths", r"field 'rewards' has length 11; expected 12"),
    ("NaN", r"field 'proprio' contains NaN"),
    ("wrong dtype", r"field 'actions' must be floating point, got dtype int64"),
    ("out of bounds", r"field 'actions' value 7\.5 at step 2, dim 0 is outside the bounds \[-2, 3\]"),
    ("unknown task", r"field 'task' 'cartpole/levitate' is not a known task"),
    ("other layout", r"task 'cartpole/balance' episodes so far had .* \(5, 1, None\), this one has \(9, 1, None\)"),
])
def test_bad_episodes_are_rejected_and_publish_nothing(how: str, message: str, episode_factory,
                                                        storage: StorageConfig) -> None:
    good = [episode_factory(seed=i, steps=12) for i in range(5)]
    bad = _corrupt(episode_factory(seed=99, steps=12), how)
    with pytest.raises(EpisodeError, match=message) as err:
        ingest([*good, bad], "bad", storage=storage, data=SMALL, progress=False)
    assert "tests episode cartpole/balance#99" in str(err.value)  # names the episode
    assert list_versions("bad", storage) == []
    # Shards written before the bad episode were removed again.
    assert not [p for p in Path(storage.root, "bad").rglob("*.npz")]


def test_interrupted_ingest_leaves_no_version(episode_factory, storage: StorageConfig) -> None:
    def source() -> Iterator[Episode]:
        for i in range(6):
            yield episode_factory(seed=i)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        ingest(source(), "crash", storage=storage, data=SMALL, progress=False)
    assert list_versions("crash", storage) == []
    with pytest.raises(DatasetError, match="no published dataset"):
        open_dataset("crash", storage)
    assert ingest([episode_factory()], "crash", storage=storage, progress=False).version >= 1
    assert len(list_versions("crash", storage)) == 1


_KILLED_INGEST = """
import sys, time
from pathlib import Path
sys.path.insert(0, {conftest_dir!r})
from conftest import make_episode
from pac.config import DataConfig, StorageConfig
from pac.data.ingest import ingest

def source():
    for i in range(8):
        yield make_episode(seed=i)
    Path({marker!r}).write_text("shards written")
    time.sleep(600)

ingest(source(), "killed", storage=StorageConfig(root={root!r}), data=DataConfig(shard_mb=0.002), progress=False)
"""


def test_killed_ingest_leaves_no_version(storage: StorageConfig, tmp_path: Path, episode_factory) -> None:
    marker = tmp_path / "marker"
    script = _KILLED_INGEST.format(conftest_dir=str(Path(__file__).parent), marker=str(marker), root=storage.root)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the ingest process died early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup handlers run: the worst case
    finally:
        proc.kill()
        proc.wait()
    orphans = list(Path(storage.root, "killed", "v0001", "shards").glob("*.npz"))
    assert orphans, "the killed ingest should have written shards before dying"
    assert list_versions("killed", storage) == []
    with pytest.raises(DatasetError, match="no published dataset"):
        open_dataset("killed", storage)
    # The next ingest skips the orphaned number, so its shards can never be mistaken for a version.
    assert ingest([episode_factory()], "killed", storage=storage, progress=False).version == 2


def test_unknown_manifest_schema_version(episode_factory, storage: StorageConfig) -> None:
    ref = ingest([episode_factory()], "schema", storage=storage, progress=False)
    path = Path(ref.uri) / "v0001" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["schema_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"schema version 99; this pac reads version 1: upgrade pac"):
        open_dataset("schema", storage)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        open_dataset("schema", storage)


def test_manifest_records_each_episode_quality(episode_factory, storage: StorageConfig) -> None:
    labels = ["random", "expert", "noisy", "expert"]
    ref = ingest([episode_factory(seed=i, quality=q) for i, q in enumerate(labels)], "labels", storage=storage,
                 progress=False)
    path = Path(ref.uri) / "v0001" / "manifest.json"
    assert open_dataset("labels", storage).manifest.shards[0].labels() == labels
    doc = json.loads(path.read_text())
    doc["shards"][0].pop("episode_qualities")  # as written before the field existed: still readable
    path.write_text(json.dumps(doc))
    assert open_dataset("labels", storage).manifest.shards[0].labels() is None  # mixed labels: not recoverable
    doc["shards"][0]["episode_qualities"] = ["expert"] * 4  # disagrees with the quality counts
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="shard entry 0: episode_qualities do not match qualities"):
        open_dataset("labels", storage)


def test_tampered_shard_is_detected(episode_factory, storage: StorageConfig, tmp_path: Path) -> None:
    ref = ingest([episode_factory(seed=i) for i in range(3)], "tamper", storage=storage, progress=False)
    ds = open_dataset(str(ref), storage)
    info = ds.manifest.shards[0]
    path = Path(ref.uri) / info.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match=rf"shard {path} is corrupted: sha256 .* does not match"):
        ds.open_shard(info, tmp_path / "cache")


def test_shard_refuses_pickled_members(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, proprio=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        Shard(path)


def test_empty_source_is_an_error(storage: StorageConfig) -> None:
    with pytest.raises(DatasetError, match="no episodes"):
        ingest([], "empty", storage=storage, progress=False)
    assert list_versions("empty", storage) == []


def test_concurrent_ingests_publish_whole_versions_and_lose_no_episode(storage: StorageConfig, tmp_path: Path,
        concurrent_ingests_check) -> None:
    concurrent_ingests_check("race", storage, tmp_path / "cache")
