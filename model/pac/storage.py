"""One storage layer over URIs: `s3://bucket/prefix` through the MinIO SDK, or a local directory.

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
import random
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from pac.config import StorageConfig

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024 * 1024
# S3 error codes worth retrying: the server is overloaded or hiccuped, the request itself is fine.
TRANSIENT_S3_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                                "RequestTimeTooSkewed", "OperationAborted", "Throttling", "ThrottlingException"})
_CHUNK = 4 * MiB
_TMP_PREFIX = ".tmp-"  # local in-flight files; never listed


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


def _check_key(key: str) -> str:
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
        return join(self.uri, _check_key(key)) if key else self.uri

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
        return self.root / _check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def _tmp_for(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"

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
        return _copy_hashing(lambda: open(src, "rb"), Path(path))

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
        base = self.root / _check_key(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(_TMP_PREFIX))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self, *, write: bool = False) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"storage root {self.root} exists but is not a directory")
        if write:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = f"{_TMP_PREFIX}check-{uuid.uuid4().hex}"
                self.put_bytes(probe, b"ok")
                self.delete(probe)
            except OSError as e:
                raise StorageError(f"cannot write to storage root {self.root}: {e}") from e


class S3Store(Store):
    """An S3 bucket/prefix through the MinIO SDK (works with MinIO, SeaweedFS, AWS S3, GCS interop)."""

    def __init__(self, bucket: str, prefix: str, cfg: StorageConfig, *, backoff_s: float = 0.5,
                 _client: Minio | None = None) -> None:
        """Connect lazily; nothing is sent until the first operation (use `check()` to fail fast).

        Args:
            bucket: bucket name.
            prefix: key prefix inside the bucket (no leading/trailing slash).
            cfg: endpoint, TLS, region, retries and multipart part size.
            backoff_s: first retry delay; doubles per attempt (capped at 30 s), with jitter.
        """
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cfg = cfg
        self.backoff_s = backoff_s
        self.endpoint, secure = _endpoint(cfg)
        self.access_key = os.environ.get("AWS_ACCESS_KEY_ID", "")
        self.uri = join(f"s3://{bucket}", self.prefix)
        self._client = _client if _client is not None else _make_client(self.endpoint, secure, cfg)

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, join(self.prefix, _check_key(prefix)), self.cfg, backoff_s=self.backoff_s,
                       _client=self._client)

    def _key(self, key: str) -> str:
        return join(self.prefix, _check_key(key))

    # -- error handling ---------------------------------------------------------------------------------

    def _translate(self, e: Exception, what: str) -> StorageError:
        """Map an SDK/transport exception onto a StorageError with a message that says what to do."""
        from minio.error import S3Error

        who = f"access key id {self.access_key!r}" if self.access_key else "anonymous access (AWS_ACCESS_KEY_ID unset)"
        where = f"S3 endpoint {self.endpoint}"
        # In a cluster the variables come from a Secret the pipeline names in PAC_S3_SECRET_NAME: say which one.
        secret = os.environ.get("PAC_S3_SECRET_NAME", "")
        fix = f" (in this pod both come from Kubernetes Secret {secret!r})" if secret else ""
        if isinstance(e, S3Error):
            code = e.code
            if code == "SignatureDoesNotMatch":
                return StorageAuthError(
                    f"{where} refused the secret key for {who} while trying to {what} (SignatureDoesNotMatch): "
                    f"check AWS_SECRET_ACCESS_KEY{fix}")
            if code in ("InvalidAccessKeyId", "InvalidToken", "ExpiredToken"):
                return StorageAuthError(f"{where} does not accept {who} while trying to {what} ({code}): "
                                        f"check AWS_ACCESS_KEY_ID / AWS_SESSION_TOKEN{fix}")
            if code in ("AccessDenied", "AllAccessDisabled"):
                return StorageAuthError(f"{where} denied {who} permission to {what} ({code}): the credentials are "
                                        f"wrong or lack permission on bucket {self.bucket!r}{fix}")
            if code == "NoSuchBucket":
                return BucketNotFoundError(f"bucket {self.bucket!r} does not exist at {where} (needed to {what}); "
                                           f"create it or fix storage.root / the URI")
            if code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return StorageNotFoundError(f"{what}: no such object")
            return StorageError(f"{where} failed to {what}: {code}: {e.message}")
        if _is_connection_error(e):
            return StorageUnreachableError(f"cannot reach {where} to {what} ({type(e).__name__}: {e}); is the "
                                           f"server running and storage.endpoint / $AWS_ENDPOINT_URL right?")
        return StorageError(f"{where} failed to {what}: {type(e).__name__}: {e}")

    def _call(self, fn: Callable[[], T], what: str, *, retries: int | None = None) -> T:
        """Run `fn`, retrying transient failures with exponential backoff and jitter."""
        attempts = (self.cfg.retries if retries is None else retries) + 1
        for attempt in range(attempts):
            try:
                return fn()
            except Exception as e:
                if isinstance(e, (StorageError, FileExistsError)):
                    raise
                if not _is_transient(e) or attempt == attempts - 1:
                    raise self._translate(e, what) from e
                delay = min(30.0, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                log.warning("transient error trying to %s at %s (%s), retry %d/%d in %.1fs", what, self.endpoint,
                            _describe(e), attempt + 1, attempts - 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # -- operations -------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = True) -> None:
        import io

        url = self.url(key)
        if overwrite:
            self._call(lambda: self._client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data)),
                       f"write {url}")
            return
        from minio.error import S3Error

        if self.exists(key):  # also on a server that ignores If-None-Match, an existing key is never replaced
            raise FileExistsError(f"{url} already exists; refusing to overwrite it")

        def create() -> None:
            # `If-None-Match: *` makes the PUT create-if-absent on the server (S3 since 2024, MinIO, SeaweedFS):
            # two writers racing for one key cannot both win. The SDK's public put_object has no way to send it.
            try:
                self._client._put_object(self.bucket, self._key(key), data, headers={"If-None-Match": "*"})
            except S3Error as e:
                if e.code != "PreconditionFailed":
                    raise
                # A retried PUT whose first attempt landed finds its own bytes: that is a success.
                if self.get_bytes(key) != data:
                    raise FileExistsError(f"{url} already exists; refusing to overwrite it") from None

        self._call(create, f"write {url}")

    def get_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            resp = self._client.get_object(self.bucket, self._key(key))
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        try:
            return self._call(read, f"read {self.url(key)}")
        except StorageNotFoundError:
            raise StorageNotFoundError(f"{self.url(key)} does not exist") from None

    def put_file(self, key: str, path: str | Path) -> None:
        part = self.cfg.part_size_mb * MiB
        self._call(lambda: self._client.fput_object(self.bucket, self._key(key), str(path), part_size=part),
                   f"upload {path} to {self.url(key)}")

    def get_file(self, key: str, path: str | Path) -> str:
        def fetch() -> str:
            resp = self._client.get_object(self.bucket, self._key(key))
            try:
                return _copy_hashing(lambda: contextlib.nullcontext(resp), Path(path))
            finally:
                resp.close()
                resp.release_conn()

        try:
            return self._call(fetch, f"download {self.url(key)}")
        except StorageNotFoundError:
            raise StorageNotFoundError(f"{self.url(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        def stat() -> bool:
            try:
                self._client.stat_object(self.bucket, self._key(key))
                return True
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return False
                raise

        return self._call(stat, f"stat {self.url(key)}")

    def size(self, key: str) -> int:
        try:
            return int(self._call(lambda: self._client.stat_object(self.bucket, self._key(key)).size,
                                  f"stat {self.url(key)}"))
        except StorageNotFoundError:
            raise StorageNotFoundError(f"{self.url(key)} does not exist") from None

    def list(self, prefix: str = "") -> list[str]:
        full = join(self.prefix, prefix.lstrip("/")) + ("/" if prefix.endswith("/") else "")
        strip = len(self.prefix) + 1 if self.prefix else 0

        def run() -> list[str]:
            objs = self._client.list_objects(self.bucket, prefix=full or None, recursive=True)
            return sorted(o.object_name[strip:] for o in objs if not o.is_dir)

        return self._call(run, f"list {self.url(prefix)}")

    def list_dirs(self, prefix: str = "") -> list[str]:
        full = join(self.prefix, prefix.strip("/"))
        full = full + "/" if full else ""

        def run() -> list[str]:
            objs = self._client.list_objects(self.bucket, prefix=full or None, recursive=False)
            return sorted(o.object_name[len(full):].rstrip("/") for o in objs if o.is_dir)

        return self._call(run, f"list {self.url(prefix)}")

    def delete(self, key: str) -> None:
        self._call(lambda: self._client.remove_object(self.bucket, self._key(key)), f"delete {self.url(key)}")

    def check(self, *, write: bool = False) -> None:
        # No retries: an unreachable endpoint or refused secret must be reported now, not after backoff.
        # A listing (GET) is used rather than HEAD: HEAD responses carry no error body, so a wrong
        # secret would be indistinguishable from a missing permission.
        def probe() -> None:
            for _ in self._client.list_objects(self.bucket, prefix=(self.prefix + "/") if self.prefix else None):
                break

        self._call(probe, f"list bucket {self.bucket!r}", retries=0)
        if write:
            key = f"{_TMP_PREFIX}check-{uuid.uuid4().hex}"
            self.put_bytes(key, b"ok")
            self.delete(key)

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (ingestion into a fresh object store; tests)."""
        def make() -> None:
            if not self._client.bucket_exists(self.bucket):
                self._client.make_bucket(self.bucket, location=self.cfg.region or None)

        self._call(make, f"create bucket {self.bucket!r}")


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
        return S3Store(bucket, prefix, cfg)
    return LocalStore(resolved)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy_hashing(open_src: Callable[[], contextlib.AbstractContextManager], dest: Path) -> str:
    """Stream a readable into `dest` via a temporary file; return the sha256 of the bytes."""
    with _writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=dest.parent)
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


def _endpoint(cfg: StorageConfig) -> tuple[str, bool]:
    """(host:port, secure) from `storage.endpoint` or `$AWS_ENDPOINT_URL`."""
    raw = cfg.endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
    source = "storage.endpoint" if cfg.endpoint else "$AWS_ENDPOINT_URL"
    if not raw:
        raise StorageError("an s3:// URI needs an endpoint: set storage.endpoint (host:port) or $AWS_ENDPOINT_URL")
    if "://" not in raw:
        return raw.rstrip("/"), cfg.secure
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StorageError(f"{source}={raw!r} is not a valid endpoint; use host:port or http(s)://host:port")
    secure = parts.scheme == "https"
    if secure != cfg.secure:
        # The scheme and the config disagree; refuse rather than silently picking one (no env overrides).
        raise StorageError(f"{source}={raw!r} says {'TLS' if secure else 'no TLS'} but storage.secure="
                           f"{str(cfg.secure).lower()}; set --storage.secure {str(secure).lower()} or fix the URL")
    return parts.netloc, secure


def _make_client(endpoint: str, secure: bool, cfg: StorageConfig) -> Minio:
    import certifi
    import urllib3
    from minio import Minio

    # Our own pool: urllib3 retries disabled (we retry with backoff and clear messages), a short
    # connect timeout so an unreachable endpoint fails in seconds, a generous read timeout for big parts.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=120.0), maxsize=16, retries=False,
        cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where())
    return Minio(endpoint, access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
                 secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
                 session_token=os.environ.get("AWS_SESSION_TOKEN") or None, secure=secure,
                 region=cfg.region or None, http_client=http)


def _is_connection_error(e: Exception) -> bool:
    import urllib3

    return isinstance(e, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _is_transient(e: Exception) -> bool:
    from minio.error import InvalidResponseError, S3Error, ServerError

    if _is_connection_error(e):
        return True
    if isinstance(e, S3Error):
        status = getattr(e.response, "status", 0) or 0
        return e.code in TRANSIENT_S3_CODES or status >= 500
    if isinstance(e, ServerError):
        return e.status_code >= 500 or e.status_code == 429
    if isinstance(e, InvalidResponseError):
        # Non-XML error bodies (proxies, load balancers in front of the store): retry on 5xx / 429.
        status = int(getattr(e, "_code", 0) or 0)
        return status >= 500 or status == 429
    return False


def _describe(e: Exception) -> str:
    code = getattr(e, "code", None)
    return f"{type(e).__name__} {code}" if code else f"{type(e).__name__}: {e}"

