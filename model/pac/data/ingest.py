"""Ingestion: validate episodes, write checksummed shards, publish a new immutable dataset version.

The manifest is published last and only if every episode was valid and every shard was written, so a
crashed, killed or rejected ingest never leaves a visible version (its version directory may hold
orphan shards, which no manifest names and no reader opens; the next ingest skips that number).

Two ingests into one dataset at once both pick the same next number; the manifest is published with a
create-if-absent write, so exactly one wins that number and the other publishes the next free one (an
appending ingest first rebases onto the version that just won, so neither loses the other's episodes).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pac.config import DataConfig, StorageConfig
from pac.data.dataset import (
    DatasetError,
    DatasetRef,
    all_version_numbers,
    list_versions,
    open_dataset,
    version_dir,
)
from pac.data.manifest import MANIFEST_NAME, Manifest, ShardInfo
from pac.data.schema import Episode, EpisodeError
from pac.data.shards import episode_nbytes, write_shard
from pac.storage import Store, open_store, resolve_uri, sha256_file

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Buffered episodes of all tasks together may reach this many shard sizes before the largest buffer is
# flushed early: bounds ingest memory when a source interleaves many tasks.
_MAX_BUFFERED_SHARDS = 4
_PUBLISH_ATTEMPTS = 20  # concurrent ingests into one dataset a publish outlasts


def registry_tasks() -> frozenset[str]:
    """Task ids of the simulator task registry (`pac.envs.registry.TASKS`)."""
    from pac.envs.registry import TASKS

    return frozenset(TASKS)


def _slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", task).strip("-") or "task"


class _Writer:
    """Buffers episodes per task and flushes each buffer into a shard once it reaches the target size."""

    def __init__(self, store: Store, version: int, shard_bytes: int, tmpdir: Path) -> None:
        self.store = store
        self.prefix = f"{version_dir(version)}/shards"
        self.shard_bytes = shard_bytes
        self.tmpdir = tmpdir
        self.ingest_id = uuid.uuid4().hex[:8]  # shard names never collide with a concurrent writer's
        self.buffers: dict[str, list[Episode]] = {}
        self.sizes: dict[str, int] = {}
        self.written: list[ShardInfo] = []

    def add(self, ep: Episode) -> None:
        self.buffers.setdefault(ep.task, []).append(ep)
        self.sizes[ep.task] = self.sizes.get(ep.task, 0) + episode_nbytes(ep)
        if self.sizes[ep.task] >= self.shard_bytes:
            self.flush(ep.task)
        elif sum(self.sizes.values()) >= _MAX_BUFFERED_SHARDS * self.shard_bytes:
            self.flush(max(self.sizes, key=self.sizes.__getitem__))

    def flush(self, task: str) -> None:
        episodes = self.buffers.pop(task, [])
        self.sizes.pop(task, None)
        if not episodes:
            return
        key = f"{self.prefix}/{len(self.written):06d}-{_slug(task)}-{self.ingest_id}.npz"
        local = self.tmpdir / "shard.npz"
        write_shard(episodes, local)
        info = ShardInfo.summarize(episodes, key, sha256_file(local), local.stat().st_size)
        self.store.put_file(key, local)
        local.unlink()
        self.written.append(info)

    def flush_all(self) -> None:
        for task in list(self.buffers):
            self.flush(task)

    def discard(self) -> None:
        """Best-effort removal of the shards of a failed ingest (they are invisible either way)."""
        for info in self.written:
            try:
                self.store.delete(info.path)
            except OSError as e:
                log.warning("could not remove orphan shard %s: %s", self.store.url(info.path), e)


def _publish(store: Store, name: str, version: int, written: list[ShardInfo], base: Manifest | None,
             sources: list[Mapping[str, Any]], layout: dict[str, tuple] | None) -> Manifest:
    """Publish the manifest of `written` as the first free version from `version` on; returns it.

    `layout` is None for a standalone version and the tasks' shapes for an appended one, which is rebased
    onto whatever version a concurrent ingest published meanwhile.
    """
    for _ in range(_PUBLISH_ATTEMPTS):
        # An appended version holds its parent's data, so it carries the parent's provenance too.
        manifest = Manifest(name=name, version=version, shards=(base.shards if base else []) + written,
                            sources=(base.sources if base else []) + [dict(s) for s in sources],
                            parent=base.version if base else None)
        try:
            # Published last, never overwriting: this single object is what makes the version exist.
            store.put_bytes(f"{version_dir(version)}/{MANIFEST_NAME}", manifest.to_json().encode(), overwrite=False)
            return manifest
        except FileExistsError:
            log.info("%s@%s was published by a concurrent ingest; trying the next version", name,
                     version_dir(version))
        if layout is None:
            version = max(all_version_numbers(store), default=version) + 1
        else:  # the parent of an appended version is always the one just before it: a chain loses nothing
            base = _latest_manifest(store)
            _check_layout(base, layout)
            version = base.version + 1
    raise DatasetError(f"could not publish a version of {store.url('')}: {_PUBLISH_ATTEMPTS} concurrent ingests "
                       "won the race for every number tried")


def _latest_manifest(store: Store) -> Manifest:
    for v in reversed(all_version_numbers(store)):
        key = f"{version_dir(v)}/{MANIFEST_NAME}"
        if store.exists(key):
            return Manifest.from_json(store.get_bytes(key), store.url(key))
    raise DatasetError(f"{store.url('')} has no published version to append to")


def _check_layout(base: Manifest, layout: dict[str, tuple]) -> None:
    for task, st in base.tasks.items():
        shape = (st.proprio_dim, st.action_dim, None if st.image_shape is None else tuple(st.image_shape))
        if task in layout and layout[task] != shape:
            raise DatasetError(f"a concurrent ingest published {task} with (proprio, action, image) shapes {shape}, "
                               f"this append holds {layout[task]}; ingest it again onto the new version")


def _prepare(ep: Episode, name: str, allowed: Collection[str], layout: dict[str, tuple]) -> Episode:
    """Validate one episode and return it with float32 arrays; raise EpisodeError naming `name`."""
    if not isinstance(ep, Episode):
        raise EpisodeError(f"{name}: expected an Episode, got {type(ep).__name__}")
    ep.validate(name)
    if ep.task not in allowed:
        raise EpisodeError(f"{name}: field 'task' {ep.task!r} is not a known task; registered tasks: "
                           f"{', '.join(sorted(allowed))} (for data from elsewhere pass the task id explicitly, "
                           f"e.g. `pac data ingest --task ID`)")
    shape = (ep.proprio.shape[1], ep.actions.shape[1], None if ep.images is None else ep.images.shape[1:])
    expected = layout.setdefault(ep.task, shape)
    if shape != expected:
        raise EpisodeError(f"{name}: task {ep.task!r} episodes so far had (proprio dims, action dims, image shape) "
                           f"= {expected}, this one has {shape}; one task must keep one observation layout")
    f32 = {k: getattr(ep, k).astype(np.float32, copy=False)
           for k in ("proprio", "actions", "rewards", "discounts", "action_low", "action_high")}
    if not all(np.all(np.isfinite(v)) for v in f32.values()):
        raise EpisodeError(f"{name}: values overflow float32")
    return Episode(task=ep.task, instruction=ep.instruction, images=ep.images, quality=ep.quality, policy=ep.policy,
                   provenance={str(k): str(v) for k, v in ep.provenance.items()}, episode_id=ep.episode_id, **f32)


def ingest(episodes: Iterable[Episode], dataset: str, *, storage: StorageConfig, data: DataConfig | None = None,
           allowed_tasks: Collection[str] | None = None, sources: Sequence[Mapping[str, Any]] = (),
           append: bool = False, progress: bool = True) -> DatasetRef:
    """Validate `episodes`, write them as shards and publish the next version of `dataset`.

    Args:
        episodes: any iterable of `Episode` (the generator, a collector, `pac.data.sources` readers).
            Consumed once, streaming: at most a few shards' worth is held in memory.
        dataset: dataset name (placed under `storage.root`) or URI (`s3://bucket/datasets/control`).
        storage: storage section; the store is checked (reachable, writable) before anything is read.
        data: supplies `shard_mb` (target shard size).
        allowed_tasks: task ids accepted; default: the simulator registry (`pac.envs.registry`). Callers
            add a task id the user named explicitly (e.g. for a Minari dataset).
        sources: provenance records stored in the manifest (kind, uri, options); one per source. An
            appended version lists its parent's sources first.
        append: the new version also contains every shard of the latest version (immutable: nothing is
            copied or changed; the new manifest names the old shards).
        progress: show a tqdm progress bar.

    Returns:
        The published version; `str(ref)` is its URI (`.../NAME@v0003`).

    Raises:
        EpisodeError: an episode is malformed or of an unknown task (names the episode and field).
        StorageError: the store is unreachable, refuses the credentials, or the bucket is missing.
        DatasetError: `append` on a dataset without versions, or no episodes at all.
    """
    data = data or DataConfig()
    allowed = registry_tasks() if allowed_tasks is None else frozenset(allowed_tasks)
    location = resolve_uri(dataset, storage)
    store = open_store(location, storage)
    store.check(write=True)

    base: Manifest | None = None
    layout: dict[str, tuple] = {}
    if append:
        base = open_dataset(location, storage).manifest
        allowed |= set(base.tasks)
        for task, st in base.tasks.items():
            layout[task] = (st.proprio_dim, st.action_dim, None if st.image_shape is None else tuple(st.image_shape))
    # A new version skips every number a previous (possibly crashed) ingest used, published or not; an appended
    # one follows its parent directly (unpublished shards in that directory belong to no version).
    version = base.version + 1 if base else max(all_version_numbers(store), default=0) + 1
    name = location.rstrip("/").rsplit("/", 1)[-1]

    with tempfile.TemporaryDirectory(prefix="pac-ingest-") as tmp:
        writer = _Writer(store, version, max(1, int(data.shard_mb * MiB)), Path(tmp))
        try:
            count = 0
            for i, ep in enumerate(tqdm(episodes, desc=f"ingest {name}", unit="ep", disable=not progress)):
                source = str((getattr(ep, "provenance", None) or {}).get("source", "input"))
                eid = str(getattr(ep, "episode_id", "") or i)
                label = eid if eid.startswith(source) else f"{source} episode {eid}"  # names file/episode once
                writer.add(_prepare(ep, label, allowed, layout))
                count += 1
            if count == 0:
                raise DatasetError(f"no episodes to ingest into {location}")
            writer.flush_all()
            manifest = _publish(store, name, version, writer.written, base, list(sources), layout if append else None)
        except BaseException:
            writer.discard()
            raise
    ref = DatasetRef(location, manifest.version)
    log.info("published %s: %d new episodes in %d shards (%s)", ref, count, len(writer.written),
             ", ".join(f"{t}: {s.episodes}" for t, s in manifest.tasks.items()))
    return ref


def upgrade(dataset: str, *, storage: StorageConfig, cache_dir: str | Path, progress: bool = True) -> DatasetRef | None:
    """Publish the next version of `dataset`, naming the same shards with every summary this pac keeps.

    A manifest written before a shard summary existed (each episode's quality label, per-quality state moments)
    lacks it, and training on a selection of qualities then standardises by the whole data's states. Each such
    shard is read back (sha256-verified) and only the missing summaries are added: the shards are not copied and
    every statistic the old manifest had stays as it was, so runs on either version normalise the same way.

    Args:
        dataset: the version to upgrade (`NAME@v0002`, default the latest), as for `open_dataset`.
        storage: storage section; the store must be writable.
        cache_dir: where s3:// shards are downloaded to be read (content-addressed, shared with training).
        progress: show a tqdm progress bar over the shards read.

    Returns:
        The published version, or None when the manifest already has every summary (nothing is published).

    Raises:
        DatasetError: no such dataset or version, or a shard's episodes disagree with its manifest entry.
        ShardCorruptError: a shard's bytes do not match the manifest's sha256.
    """
    src = open_dataset(dataset, storage)
    stale = [i for i, s in enumerate(src.manifest.shards) if s.episode_qualities is None or s.quality_proprio is None]
    if not stale:
        return None
    src.store.check(write=True)
    shards = list(src.manifest.shards)
    for i in tqdm(stale, desc=f"upgrade {src.uri}", unit="shard", disable=not progress):
        info = shards[i]
        shard = src.open_shard(info, cache_dir)
        try:
            fresh = ShardInfo.summarize(shard.episodes(), info.path, info.sha256, info.bytes)
        finally:
            shard.close()
        if fresh.qualities != info.qualities:
            raise DatasetError(f"shard {src.shard_uri(info)} holds episodes of qualities {fresh.qualities}, the "
                               f"manifest of {src.uri} says {info.qualities}; not upgrading it")
        shards[i] = dataclasses.replace(info, episode_qualities=fresh.episode_qualities,
                                        quality_proprio=fresh.quality_proprio)
    newer = [version_dir(v) for v in list_versions(src.ref.uri, storage) if v > src.ref.version]
    if newer:
        log.warning("%s is not the latest version: its upgrade becomes %s@latest, above %s (still addressable by "
                    "number)", src.uri, src.ref.uri, ", ".join(newer))
    manifest = _publish(src.store, src.manifest.name, max(all_version_numbers(src.store)) + 1, shards, None,
                        [*src.manifest.sources, {"kind": "upgraded", "uri": src.uri}], None)
    ref = DatasetRef(src.ref.uri, manifest.version)
    log.info("published %s: the shards of %s with per-quality summaries (%d of %d shards read)", ref, src.uri,
             len(stale), len(shards))
    return ref
