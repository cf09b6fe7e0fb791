"""One storage layer over URIs: `s3://bucket/prefix` through the MinIO SDK (`pac.s3.S3Store`), or a local directory.

Every component that reads or writes datasets, checkpoints or exports goes through `open_store`, so
the embedded default (a local directory under `StorageConfig.root`) and the cluster (an S3-compatible
object store) behave the same way:

- keys are `/`-separated paths relative to the store's root; `..` components are refused;
- writes are atomic: a local file is written to a temporary name and `os.replace`d into place, an S3
  object appears whole or not at all. Multi-object artifacts (dataset versions, checkpoints) publish a
  manifest *last*, and readers only trust what a manifest names;
- transient failures (connection errors, HTTP 5xx, `SlowDown`) are retried with exponential backoff;
- credentials come only from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally
  `AWS_SESSION_TOKEN`), never from the config, and the secret never appears in a message.

URI resolution (`resolve_uri`): `s3://...` is used as is; absolute paths, `file://...`, `./x` and
`../x` are local paths; any other (relative) name lives under `StorageConfig.root`, which is itself a
local directory or an `s3://` URI.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pac.config import StorageConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024 * 1024
_CHUNK = 4 * MiB
TMP_PREFIX = ".tmp-"  # local in-flight files; never listed


class StorageError(OSError):
    """A storage operation failed; the message names the URI/endpoint and what to do."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The key does not exist."""


class StorageAuthError(StorageError, PermissionError):
    """The endpoint refused the credentials (wrong secret, unknown key id, or no permission)."""


class BucketNotFoundError(StorageError):
    """The S3 bucket does not exist."""


class StorageUnreachableError(StorageError, ConnectionError):
    """The S3 endpoint cannot be reached."""


def is_s3(uri: str) -> bool:
    """Whether `uri` names an S3 location."""
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join key parts onto a URI or path with `/`, ignoring empty parts."""
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}" if out else p
    return out


def resolve_uri(name: str, cfg: StorageConfig) -> str:
    """Turn a user-given name into an absolute location: an `s3://` URI or an absolute local path.

    Args:
        name: `s3://bucket/prefix`, an absolute or `./`-relative path, `file://...`, or a relative name
            that is placed under `cfg.root`.
        cfg: supplies `root`.

    Returns:
        The resolved URI (no trailing slash).
    """
    if not name:
        raise StorageError("empty storage location: give a name, a path or an s3://bucket/prefix URI")
    if is_s3(name):
        return "s3://" + name[len("s3://"):].rstrip("/")
    if name.startswith("file://"):
        return os.path.abspath(name[len("file://"):])
    expanded = os.path.expanduser(name)
    if os.path.isabs(expanded) or name in (".", "..") or name.startswith(("./", "../")):
        return os.path.abspath(expanded)
    root = cfg.root if is_s3(cfg.root) else os.path.abspath(os.path.expanduser(cfg.root))
    return join(root, name)


def check_key(key: str) -> str:
    key = key.strip("/")
    if any(part in ("..", ".") for part in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}: '.' and '..' components are not allowed")
    return key


class Store(ABC):
    """A place that holds objects under `/`-separated keys; see the module docstring for semantics."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = True) -> None:
        """Atomically write `data` under `key`.

        Args:
            key: object key relative to the store root.
            data: the content.
            overwrite: when False, fail with `FileExistsError` if `key` already exists (used to publish
                manifests: two writers racing for the same version cannot both win).
        """

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object. Raises `StorageNotFoundError` if it does not exist."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Atomically upload a local file (S3: multipart above `StorageConfig.part_size_mb`)."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> str:
        """Download `key` to `path` (atomically: temporary name, then rename).

        Returns:
            The sha256 hex digest of the bytes written, computed while streaming.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly `key`."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with `prefix` (recursively), sorted, relative to the store root."""

    @abstractmethod
    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-directories (common prefixes) under `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size of the object in bytes. Raises `StorageNotFoundError` if it does not exist."""

    @abstractmethod
    def check(self, *, write: bool = False) -> None:
        """Fail fast with a clear `StorageError` if the store is unusable.

        Training and ingestion call this before doing any work, so a wrong endpoint, refused secret or
        missing bucket is reported in seconds instead of after the first hour.

        Args:
            write: also verify that a small object can be written and deleted.
        """

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """A store rooted at `prefix` below this one (same connection and settings)."""

    def url(self, key: str = "") -> str:
        """The full URI of `key`."""
        return join(self.uri, check_key(key)) if key else self.uri

    def local_path(self, key: str) -> Path | None:
        """The local file holding `key`, if the store is a local directory (lets readers memory-map)."""
        return None


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """A local write that fails (disk full, read-only, permissions) raises StorageError naming `dest`, not a
    traceback through a temporary name; the temporary file is already gone. A connection error while streaming
    from a store passes through untouched: the caller's retries decide about it."""
    try:
        yield
    except (StorageError, FileExistsError, ConnectionError, TimeoutError):
        raise
    except OSError as e:
        hint = " (free space there, or write elsewhere)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise StorageError(f"cannot write {dest}: {e.strerror or e}{hint}") from e


class LocalStore(Store):
    """A local directory (the embedded default; also a mounted PVC in the cluster)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def _tmp_for(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"

    def _publish(self, tmp: Path, path: Path, overwrite: bool) -> None:
        try:
            if overwrite:
                os.replace(tmp, path)
            else:
                # link() fails if the target exists: an atomic create-if-absent on POSIX filesystems.
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = True) -> None:
        path = self._path(key)
        with _writing(path):
            tmp = self._tmp_for(path)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())  # a published manifest must never point at data still in the page cache
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._publish(tmp, path, overwrite)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageNotFoundError(f"{path} does not exist") from None
        except IsADirectoryError:
            raise StorageNotFoundError(f"{path} is a directory, not an object") from None

    def put_file(self, key: str, path: str | Path) -> None:
        dest = self._path(key)
        with _writing(dest):
            tmp = self._tmp_for(dest)
            try:
                shutil.copyfile(path, tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._publish(tmp, dest, True)

    def get_file(self, key: str, path: str | Path) -> str:
        src = self._path(key)
        if not src.is_file():
            raise StorageNotFoundError(f"{src} does not exist")
        return copy_hashing(lambda: open(src, "rb"), Path(path))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise StorageNotFoundError(f"{self._path(key)} does not exist") from None

    def list(self, prefix: str = "") -> list[str]:
        prefix = prefix.lstrip("/")
        # Walk only the directory the prefix points into, then filter by the partial name.
        base = self.root / check_key(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self, *, write: bool = False) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"storage root {self.root} exists but is not a directory")
        if write:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = f"{TMP_PREFIX}check-{uuid.uuid4().hex}"
                self.put_bytes(probe, b"ok")
                self.delete(probe)
            except OSError as e:
                raise StorageError(f"cannot write to storage root {self.root}: {e}") from e


def open_store(uri: str, cfg: StorageConfig) -> Store:
    """Open the store holding `uri` (resolved with `resolve_uri`).

    Args:
        uri: `s3://bucket/prefix`, a local path, or a name relative to `cfg.root`.
        cfg: the storage section of the config.

    Returns:
        An `S3Store` or `LocalStore` rooted at the resolved location.
    """
    resolved = resolve_uri(uri, cfg)
    if is_s3(resolved):
        bucket, _, prefix = resolved[len("s3://"):].partition("/")
        if not bucket:
            raise StorageError(f"{uri!r} names no bucket; use s3://BUCKET/PREFIX")
        from pac.s3 import S3Store  # minio is imported only by a job that uses S3

        return S3Store(bucket, prefix, cfg)
    return LocalStore(resolved)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_hashing(open_src: Callable[[], contextlib.AbstractContextManager], dest: Path) -> str:
    """Stream a readable into `dest` via a temporary file; return the sha256 of the bytes."""
    with _writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=dest.parent)
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, open_src() as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return h.hexdigest()
