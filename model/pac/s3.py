"""`S3Store`: the `pac.storage.Store` interface over an S3 bucket/prefix through the MinIO SDK (MinIO, SeaweedFS,
AWS S3, GCS interop). `pac.storage.open_store` returns one for an `s3://` URI; the semantics (atomic writes, retries
with backoff, credentials from the environment only) are the storage module's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from pac.config import StorageConfig
from pac.storage import (
    TMP_PREFIX,
    BucketNotFoundError,
    MiB,
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
    StorageUnreachableError,
    Store,
    check_key,
    copy_hashing,
    join,
)

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger(__name__)

T = TypeVar("T")

# S3 error codes worth retrying: the server is overloaded or hiccuped, the request itself is fine.
TRANSIENT_S3_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                                "RequestTimeTooSkewed", "OperationAborted", "Throttling", "ThrottlingException"})


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
        return S3Store(self.bucket, join(self.prefix, check_key(prefix)), self.cfg, backoff_s=self.backoff_s,
                       _client=self._client)

    def _key(self, key: str) -> str:
        return join(self.prefix, check_key(key))

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
                return copy_hashing(lambda: contextlib.nullcontext(resp), Path(path))
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
            key = f"{TMP_PREFIX}check-{uuid.uuid4().hex}"
            self.put_bytes(key, b"ok")
            self.delete(key)

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (ingestion into a fresh object store; tests)."""
        def make() -> None:
            if not self._client.bucket_exists(self.bucket):
                self._client.make_bucket(self.bucket, location=self.cfg.region or None)

        self._call(make, f"create bucket {self.bucket!r}")


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

