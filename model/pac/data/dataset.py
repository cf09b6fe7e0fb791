"""Versioned, immutable datasets on a `Store`.

Layout under the dataset's location (`<storage.root>/<name>` or any URI):

    v0001/manifest.json        published LAST: a version exists iff its manifest does
    v0001/shards/*.npz         the shard files it names (checksummed)
    v0002/...                  the next ingest; may also name v0001's shards (append)

A dataset URI may carry a version: `NAME@v0002`, `NAME@2`, `NAME@latest` (the default), or point at
a version directory (`.../NAME/v0002`).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pac.config import DataConfig, StorageConfig
from pac.data.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardInfo
from pac.data.shards import Shard, ShardError
from pac.storage import StorageNotFoundError, Store, is_s3, open_store, resolve_uri, sha256_file

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^v(\d{4,})$")
_VERSION_SUFFIX = re.compile(r"^(?P<base>.+?)@(?P<version>v?\d+|latest)$")


class DatasetError(ValueError):
    """A dataset or version does not exist or cannot be used; the message names it."""


class ShardCorruptError(ShardError):
    """A shard's bytes do not match the sha256 its manifest records."""


def version_dir(version: int) -> str:
    """`v0003` for 3."""
    return f"v{version:04d}"


@dataclass(frozen=True)
class DatasetRef:
    """A published dataset version: `str(ref)` is a URI that names exactly this version."""

    uri: str  # resolved location of the dataset (all versions)
    version: int

    def __str__(self) -> str:
        return f"{self.uri}@{version_dir(self.version)}"


def parse_dataset_uri(uri: str) -> tuple[str, int | None]:
    """Split `NAME@v0002` / `NAME@2` / `NAME@latest` / `.../NAME/v0002` into (location, version or None)."""
    m = _VERSION_SUFFIX.match(uri)
    if m:
        v = m.group("version")
        return m.group("base"), None if v == "latest" else int(v.lstrip("v"))
    head, _, last = uri.rstrip("/").rpartition("/")
    vm = _VERSION_DIR.match(last)
    if head and vm:
        return head, int(vm.group(1))
    return uri, None


def all_version_numbers(store: Store) -> list[int]:
    """Every `vNNNN` directory number under a dataset store, published or not (ascending)."""
    return sorted(int(m.group(1)) for d in store.list_dirs() if (m := _VERSION_DIR.match(d)))


def list_versions(uri: str, storage: StorageConfig) -> list[int]:
    """Published versions of a dataset (those with a manifest), ascending. Empty if none."""
    store = open_store(parse_dataset_uri(uri)[0], storage)
    return [v for v in all_version_numbers(store) if store.exists(f"{version_dir(v)}/{MANIFEST_NAME}")]


def read_manifest(uri: str, storage: StorageConfig) -> Manifest:
    """The manifest of the version `uri` names (the latest published one if it names none)."""
    return open_dataset(uri, storage).manifest


class Dataset:
    """One published version of a dataset: its manifest and access to its shards."""

    def __init__(self, ref: DatasetRef, store: Store, manifest: Manifest) -> None:
        self.ref = ref
        self.store = store  # rooted at the dataset location (all versions)
        self.manifest = manifest
        self._verified: set[str] = set()

    @property
    def uri(self) -> str:
        """The versioned URI (`.../NAME@v0002`): log this for lineage."""
        return str(self.ref)

    def shard_uri(self, info: ShardInfo) -> str:
        return self.store.url(info.path)

    def local_shard(self, info: ShardInfo, cache_dir: str | Path) -> Path:
        """A verified local copy of a shard: the file itself for a local store, else a cached download.

        The cache is content-addressed (`<cache_dir>/shards/<sha256>.npz`), so versions sharing shards
        share cache entries. Every file is checked against the manifest's sha256 once per `Dataset`; a
        corrupt cache entry is downloaded again, a corrupt stored shard is an error.

        Raises:
            ShardCorruptError: the stored bytes do not match the manifest; the message names the shard.
        """
        path = self.store.local_path(info.path)
        if path is not None:
            if not path.is_file():
                raise DatasetError(f"shard {self.shard_uri(info)} named by {self.uri} is missing")
            if str(path) not in self._verified:
                self._check_digest(info, sha256_file(path))
                self._verified.add(str(path))
            return path
        path = Path(cache_dir) / "shards" / f"{info.sha256}.npz"
        if str(path) in self._verified:
            return path
        if path.exists():
            if sha256_file(path) == info.sha256:
                self._verified.add(str(path))
                return path
            log.warning("cached copy %s of %s is corrupt; downloading it again", path, self.shard_uri(info))
            path.unlink()
        try:
            self._check_digest(info, self.store.get_file(info.path, path))
        except ShardCorruptError:
            path.unlink(missing_ok=True)  # never keep corrupt bytes in the cache
            raise
        self._verified.add(str(path))
        return path

    def _check_digest(self, info: ShardInfo, digest: str) -> None:
        if digest != info.sha256:
            raise ShardCorruptError(f"shard {self.shard_uri(info)} is corrupted: sha256 {digest[:16]}... does not "
                                    f"match {info.sha256[:16]}... recorded in the manifest of {self.uri}")

    def open_shard(self, info: ShardInfo, cache_dir: str | Path) -> Shard:
        """Verify (and fetch) a shard, then memory-map it."""
        shard = Shard(self.local_shard(info, cache_dir), name=self.shard_uri(info))
        if shard.task != info.task or shard.num_episodes != info.episodes:
            raise ShardError(f"shard {shard.name} holds {shard.num_episodes} episodes of {shard.task!r}; the "
                             f"manifest says {info.episodes} of {info.task!r}")
        offsets = shard.step_offsets.tolist()
        if [b - a for a, b in itertools.pairwise(offsets)] != list(info.episode_lengths):
            raise ShardError(f"shard {shard.name}: its episode lengths differ from the manifest's")
        return shard


def open_dataset(uri: str, storage: StorageConfig) -> Dataset:
    """Open a published dataset version.

    Args:
        uri: dataset location with optional version (`control`, `s3://b/ds/control@v0002`, `.../control/v0002`).
        storage: storage section (root, endpoint, ...).

    Raises:
        DatasetError: no such dataset or version (the message lists the published versions).
        ManifestError: the manifest is malformed or of an unknown schema version.
    """
    base, version = parse_dataset_uri(uri)
    location = resolve_uri(base, storage)
    store = open_store(location, storage)
    versions = [v for v in all_version_numbers(store) if store.exists(f"{version_dir(v)}/{MANIFEST_NAME}")]
    if not versions:
        raise DatasetError(f"no published dataset at {location} (no vNNNN/{MANIFEST_NAME}); ingest one with "
                           f"`pac data ingest`")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise DatasetError(f"dataset {location} has no version {version}; published: "
                           f"{', '.join(version_dir(v) for v in versions)}")
    key = f"{version_dir(version)}/{MANIFEST_NAME}"
    try:
        manifest = Manifest.from_json(store.get_bytes(key), store.url(key))
    except StorageNotFoundError:
        raise DatasetError(f"{store.url(key)} disappeared while opening it") from None
    if manifest.version != version:
        raise ManifestError(f"manifest {store.url(key)} says version {manifest.version}, but lives in "
                            f"{version_dir(version)}")
    return Dataset(DatasetRef(location, version), store, manifest)


def default_cache_dir(data: DataConfig, storage: StorageConfig) -> Path:
    """`data.cache_dir`, else `<storage.root>/cache` for a local root, else `$XDG_CACHE_HOME/pac` (~/.cache/pac)."""
    if data.cache_dir:
        return Path(data.cache_dir).expanduser()
    if not is_s3(storage.root):
        return Path(storage.root).expanduser().absolute() / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pac"
