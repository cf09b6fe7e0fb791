"""Datasets on a real S3 server (SeaweedFS, auth enforced): ingest, versions, loading through the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from pac.config import DataConfig, StorageConfig
from pac.data.dataset import ShardCorruptError, list_versions, open_dataset
from pac.data.ingest import ingest, upgrade
from pac.data.loader import TransitionLoader
from pac.data.schema import Episode
from pac.storage import BucketNotFoundError, StorageAuthError, open_store

if TYPE_CHECKING:
    from conftest import S3Server

pytestmark = pytest.mark.s3
SMALL = DataConfig(shard_mb=0.002)


def _loader(uri: str, storage: StorageConfig, cache: Path, **kw: object) -> TransitionLoader:
    return TransitionLoader(uri, storage=storage, data=DataConfig(cache_dir=str(cache), shards_in_memory=2),
                            batch_size=32, n_step=3, discount=0.9, max_text_tokens=48, seed=3, **kw)


def test_ingest_version_list_and_load_from_s3(s3_env: S3Server, s3_bucket: str, mixed_episodes: list[Episode],
                                              tmp_path: Path) -> None:
    s3 = StorageConfig(endpoint=s3_env.endpoint, secure=False, root=f"{s3_bucket}/datasets")
    first = ingest(mixed_episodes[:6], "control", storage=s3, data=SMALL, progress=False)
    second = ingest(mixed_episodes[6:], "control", storage=s3, data=SMALL, progress=False, append=True)
    assert str(first) == f"{s3_bucket}/datasets/control@v0001" and second.version == 2
    assert list_versions("control", s3) == [1, 2]
    assert list_versions(f"{s3_bucket}/datasets/control", s3) == [1, 2]
    m = open_dataset("control", s3).manifest
    assert m.counts["episodes"] == len(mixed_episodes) and m.parent == 1

    # The same episodes ingested locally produce byte-identical shards, so the two loaders must agree.
    local = StorageConfig(root=str(tmp_path / "local"))
    ingest(mixed_episodes[:6], "control", storage=local, data=SMALL, progress=False)
    ingest(mixed_episodes[6:], "control", storage=local, data=SMALL, progress=False, append=True)
    from_s3 = _loader("control", s3, tmp_path / "cache")
    from_disk = _loader("control", local, tmp_path / "unused")
    assert from_s3.fingerprint == from_disk.fingerprint
    for _ in range(4):
        a, b = next(from_s3), next(from_disk)
        assert torch.equal(a.obs.proprio, b.obs.proprio) and torch.equal(a.reward, b.reward)
        assert torch.equal(a.next_obs.proprio, b.next_obs.proprio) and torch.equal(a.action, b.action)

    # Downloads land in the content-addressed cache; a damaged cache entry is fetched again.
    from_s3.prefetch(progress=False)
    cached = sorted((tmp_path / "cache" / "shards").glob("*.npz"))
    assert {p.stem for p in cached} == {s.sha256 for s in m.shards}
    good = cached[0].read_bytes()
    cached[0].write_bytes(b"garbage")
    again = _loader("control", s3, tmp_path / "cache")
    again.prefetch(progress=False)
    assert cached[0].read_bytes() == good

    # A shard changed in the bucket is caught on download and never enters the cache.
    info = m.shards[0]
    open_store(f"{s3_bucket}/datasets/control", s3).put_bytes(info.path, b"tampered")
    fresh = _loader("control", s3, tmp_path / "cache2")
    with pytest.raises(ShardCorruptError, match=rf"shard {s3_bucket}/datasets/control/{info.path} is corrupted"):
        fresh.prefetch(progress=False)
    assert not (tmp_path / "cache2" / "shards" / f"{info.sha256}.npz").exists()


def test_upgrade_reads_old_shards_from_s3_and_publishes_their_summaries(s3_env: S3Server, s3_bucket: str,
                                                                        mixed_episodes: list[Episode],
                                                                        tmp_path: Path) -> None:
    s3 = StorageConfig(endpoint=s3_env.endpoint, secure=False, root=f"{s3_bucket}/datasets")
    ref = ingest(mixed_episodes, "old", storage=s3, data=SMALL, progress=False)
    current = open_dataset(str(ref), s3).manifest
    # the manifest as a pac before per-quality summaries wrote it
    doc = json.loads(current.to_json())
    for shard in doc["shards"]:
        del shard["quality_proprio"], shard["episode_qualities"]
    open_store(ref.uri, s3).put_bytes("v0001/manifest.json", json.dumps(doc).encode())
    assert not open_dataset("old", s3).manifest.proprio_stats("cartpole/balance", ["expert"])[2]

    upgraded = upgrade("old", storage=s3, cache_dir=tmp_path / "cache", progress=False)
    assert upgraded is not None and upgraded.version == 2
    m = open_dataset(str(upgraded), s3).manifest
    assert [s.quality_proprio for s in m.shards] == [s.quality_proprio for s in current.shards]
    assert [s.episode_qualities for s in m.shards] == [s.episode_qualities for s in current.shards]
    assert {p.stem for p in (tmp_path / "cache" / "shards").glob("*.npz")} == {s.sha256 for s in current.shards}
    assert upgrade("old", storage=s3, cache_dir=tmp_path / "cache", progress=False) is None


def test_ranks_split_the_downloads(s3_env: S3Server, s3_bucket: str, mixed_episodes: list[Episode],
                                   tmp_path: Path) -> None:
    s3 = StorageConfig(endpoint=s3_env.endpoint, secure=False)
    uri = f"{s3_bucket}/ds"
    ingest(mixed_episodes, uri, storage=s3, data=SMALL, progress=False)
    ranks = [_loader(uri, s3, tmp_path / f"cache{r}", rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        next(r)
        r.prefetch(progress=False)
    files = [{p.stem for p in (tmp_path / f"cache{r}" / "shards").glob("*.npz")} for r in range(2)]
    total = {s.sha256 for s in ranks[0].dataset.manifest.shards}
    assert files[0] | files[1] == total and files[0] != total and files[1] != total


def test_ingest_fails_fast_on_credentials_and_missing_bucket(s3_env: S3Server, s3_bucket: str,
                                                             monkeypatch: pytest.MonkeyPatch, episode_factory) -> None:
    consumed = []

    def source() -> Iterator[Episode]:
        consumed.append(True)
        yield episode_factory()

    s3 = StorageConfig(endpoint=s3_env.endpoint, secure=False)
    with pytest.raises(BucketNotFoundError, match="'no-such-bucket' does not exist"):
        ingest(source(), "s3://no-such-bucket/ds", storage=s3, progress=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(StorageAuthError, match="refused the secret key") as err:
        ingest(source(), f"{s3_bucket}/ds", storage=s3, progress=False)
    assert "wrong-secret-value" not in str(err.value)
    assert not consumed  # nothing was read from the source before the store was checked


def test_failed_s3_ingest_publishes_nothing(s3_env: S3Server, s3_bucket: str, episode_factory) -> None:
    def source() -> Iterator[Episode]:
        for i in range(6):
            yield episode_factory(seed=i)
        raise RuntimeError("collector crashed")

    s3 = StorageConfig(endpoint=s3_env.endpoint, secure=False)
    with pytest.raises(RuntimeError, match="collector crashed"):
        ingest(source(), f"{s3_bucket}/crash", storage=s3, data=SMALL, progress=False)
    assert list_versions(f"{s3_bucket}/crash", s3) == []
    assert open_store(f"{s3_bucket}/crash", s3).list() == []  # the partial shards were removed


def test_manifest_is_written_last_on_s3(s3_env: S3Server, s3_bucket: str, episode_factory) -> None:
    """A reader polling during an ingest must never see a manifest whose shards are not all there."""
    s3 = StorageConfig(endpoint=s3_env.endpoint, secure=False)
    store = open_store(f"{s3_bucket}/order", s3)
    seen: list[tuple[bool, int]] = []

    def source() -> Iterator[Episode]:
        for i in range(12):
            seen.append((store.exists("v0001/manifest.json"), len(store.list("v0001/shards/"))))
            yield episode_factory(seed=i)

    ingest(source(), f"{s3_bucket}/order", storage=s3, data=SMALL, progress=False)
    assert not any(visible for visible, _ in seen) and seen[-1][1] > 0  # shards existed, the version did not
    assert all(store.exists(s.path) for s in open_dataset(f"{s3_bucket}/order", s3).manifest.shards)


def test_concurrent_ingests_on_s3_publish_whole_versions_and_lose_no_episode(s3_env: S3Server, s3_bucket: str,
                                                                            tmp_path: Path,
        concurrent_ingests_check) -> None:
    concurrent_ingests_check(f"{s3_bucket}/race", StorageConfig(endpoint=s3_env.endpoint, secure=False),
                             tmp_path / "cache")


def test_a_create_only_write_never_replaces_an_object_even_when_both_writers_passed_the_check(
        s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server, not the client's existence check, decides: both writers are told the key is free."""
    store = open_store(f"{s3_bucket}/cond", StorageConfig(endpoint=s3_env.endpoint, secure=False))
    monkeypatch.setattr(type(store), "exists", lambda self, key: False)
    store.put_bytes("v0001/manifest.json", b"first", overwrite=False)
    with pytest.raises(FileExistsError, match="already exists"):
        store.put_bytes("v0001/manifest.json", b"second", overwrite=False)
    store.put_bytes("v0001/manifest.json", b"first", overwrite=False)  # a retry of the write that landed
    assert store.get_bytes("v0001/manifest.json") == b"first"
