"""The storage layer against a local directory and a real S3 server (SeaweedFS, auth enforced)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pac.config import StorageConfig
from pac.s3 import S3Store
from pac.storage import (
    BucketNotFoundError,
    LocalStore,
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
    StorageUnreachableError,
    open_store,
    resolve_uri,
)

if TYPE_CHECKING:
    from conftest import S3Server, WeedServer
    from pac.data.schema import Episode


def _s3_cfg(server: S3Server, **kw: object) -> StorageConfig:
    return StorageConfig(endpoint=server.endpoint, secure=False, **kw)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    if request.param == "local":
        yield open_store(str(tmp_path / "store"), StorageConfig())
    else:
        server = request.getfixturevalue("s3_env")
        bucket = request.getfixturevalue("s3_bucket")
        yield open_store(f"{bucket}/some/prefix", _s3_cfg(server))


def test_round_trip(store, tmp_path: Path) -> None:
    store.check(write=True)
    store.put_bytes("a/b/one.json", b'{"x": 1}')
    store.put_bytes("a/two.bin", b"\x00\x01" * 1000)
    store.put_bytes("top.txt", b"top")
    assert store.get_bytes("a/b/one.json") == b'{"x": 1}'
    assert store.exists("a/two.bin") and not store.exists("a/missing") and not store.exists("a")
    assert store.size("a/two.bin") == 2000
    assert store.list() == ["a/b/one.json", "a/two.bin", "top.txt"]
    assert store.list("a/") == ["a/b/one.json", "a/two.bin"]
    assert store.list("a/b") == ["a/b/one.json"]
    assert store.list("nothing/") == []
    assert store.list_dirs() == ["a"]
    assert store.list_dirs("a") == ["b"]

    src = tmp_path / "src.bin"
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    store.put_file("files/src.bin", src)
    digest = store.get_file("files/src.bin", tmp_path / "out" / "copy.bin")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == payload
    assert digest == hashlib.sha256(payload).hexdigest()

    with pytest.raises(FileExistsError, match="already exists"):
        store.put_bytes("top.txt", b"again", overwrite=False)
    assert store.get_bytes("top.txt") == b"top"
    store.put_bytes("top.txt", b"replaced")
    assert store.get_bytes("top.txt") == b"replaced"

    store.delete("top.txt")
    store.delete("top.txt")  # idempotent
    assert not store.exists("top.txt")
    with pytest.raises(StorageNotFoundError, match=r"top\.txt"):
        store.get_bytes("top.txt")
    with pytest.raises(StorageNotFoundError):
        store.get_file("top.txt", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(StorageError, match=r"'\.\.'"):
        store.get_bytes("a/../../escape")

    sub = store.child("a")
    assert sub.get_bytes("two.bin") == b"\x00\x01" * 1000
    assert sub.url("two.bin") == store.url("a/two.bin")


def test_local_publish_is_atomic_and_hides_temporaries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".tmp-abc-manifest.json").write_bytes(b"half-written")  # an interrupted writer
    store.put_bytes("d/manifest.json", b"whole")
    assert store.list() == ["d/manifest.json"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".tmp-abc-manifest.json", "manifest.json"]


def test_resolve_uri_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = StorageConfig(root="store-root")
    assert resolve_uri("ds/control", local) == str(tmp_path / "store-root" / "ds" / "control")
    assert resolve_uri("./here", local) == str(tmp_path / "here")
    assert resolve_uri("/abs/x/", local) == "/abs/x"
    assert resolve_uri("file:///abs/y", local) == "/abs/y"
    remote = StorageConfig(root="s3://bucket/pac/")
    assert resolve_uri("ds/control", remote) == "s3://bucket/pac/ds/control"
    assert resolve_uri("s3://other/x/", remote) == "s3://other/x"
    assert isinstance(open_store("ds", local), LocalStore)
    with pytest.raises(StorageError, match="names no bucket"):
        open_store("s3://", local)


def test_s3_needs_an_endpoint_and_a_consistent_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(StorageError, match="needs an endpoint"):
        open_store("s3://b/p", StorageConfig())
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(StorageError, match=r"storage\.secure"):
        open_store("s3://b/p", StorageConfig(secure=True))
    store = open_store("s3://b/p", StorageConfig(secure=False))
    assert isinstance(store, S3Store) and store.endpoint == "127.0.0.1:9"


@pytest.mark.s3
def test_multipart_upload(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    from minio import Minio

    store = open_store(f"{s3_bucket}/big", _s3_cfg(s3_env, part_size_mb=5))
    src = tmp_path / "big.bin"
    payload = os.urandom(12 * 1024 * 1024)
    src.write_bytes(payload)
    store.put_file("shard.npz", src)
    # A multipart object's ETag is "<md5 of part md5s>-<number of parts>": 12 MiB in 5 MiB parts is 3.
    stat = Minio(s3_env.endpoint, s3_env.access_key, s3_env.secret_key, secure=False).stat_object(
        s3_bucket[len("s3://"):], "big/shard.npz")
    assert stat.etag.endswith("-3")
    digest = store.get_file("shard.npz", tmp_path / "back.bin")
    assert digest == hashlib.sha256(payload).hexdigest()


@pytest.mark.s3
def test_wrong_secret_is_refused_clearly(s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-xyz")
    store = open_store(s3_bucket, _s3_cfg(s3_env))
    with pytest.raises(StorageAuthError) as err:
        store.check()
    msg = str(err.value)
    assert "refused the secret key" in msg and s3_env.access_key in msg and s3_env.endpoint in msg
    assert "not-the-secret-xyz" not in msg and s3_env.secret_key not in msg
    with pytest.raises(StorageAuthError, match="AWS_SECRET_ACCESS_KEY"):
        store.put_bytes("x", b"1")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(StorageAuthError, match=r"'nobody'.*InvalidAccessKeyId"):
        open_store(s3_bucket, _s3_cfg(s3_env)).check()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageAuthError, match="anonymous access"):
        open_store(s3_bucket, _s3_cfg(s3_env)).check()


@pytest.mark.s3
def test_missing_bucket(s3_env: S3Server) -> None:
    store = open_store("s3://no-such-bucket-here/x", _s3_cfg(s3_env))
    with pytest.raises(BucketNotFoundError, match="'no-such-bucket-here' does not exist"):
        store.check()
    with pytest.raises(BucketNotFoundError):
        store.put_bytes("k", b"v")
    store.create_bucket()
    store.check(write=True)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_unreachable_endpoint_fails_fast() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = open_store("s3://bucket/x", StorageConfig(endpoint=f"127.0.0.1:{port}", secure=False, retries=5))
    start = time.monotonic()
    with pytest.raises(StorageUnreachableError, match=f"cannot reach S3 endpoint 127.0.0.1:{port}"):
        store.check()
    assert time.monotonic() - start < 5.0  # check() does not sit through retry backoff


class _FlakyS3(http.server.BaseHTTPRequestHandler):
    """Answers `failures` GETs with 503 SlowDown (as S3 does when throttling), then serves the object."""

    failures = 0
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        if type(self).hits <= type(self).failures:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
        else:
            body = b"the payload"
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_endpoint() -> Iterator[tuple[str, type[_FlakyS3]]]:
    handler = type("Flaky", (_FlakyS3,), {"failures": 2, "hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_transient_errors_are_retried_with_backoff(flaky_endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, handler = flaky_endpoint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    # region set: the SDK then skips its bucket-location lookup and the first request is the GET itself.
    cfg = StorageConfig(endpoint=endpoint, secure=False, region="us-east-1", retries=3)
    store = S3Store("bucket", "p", cfg, backoff_s=0.05)
    start = time.monotonic()
    assert store.get_bytes("obj") == b"the payload"
    assert handler.hits == 3
    assert time.monotonic() - start >= 0.05 * 0.5 + 0.1 * 0.5  # two backoff sleeps (with jitter >= half)

    handler.hits = 0
    few = S3Store("bucket", "p", StorageConfig(endpoint=endpoint, secure=False, region="us-east-1", retries=1),
                  backoff_s=0.01)
    with pytest.raises(StorageError, match="SlowDown"):
        few.get_bytes("obj")
    assert handler.hits == 2


@pytest.mark.s3
def test_pac_needs_no_more_than_its_own_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               weed_server: type[WeedServer],
                                               random_episodes: Callable[..., list[Episode]]) -> None:
    """Credentials scoped to one bucket (the chart's external mode with docs/deployment.md's policy): ingest,
    load, train and export against that bucket work, and the same credentials are refused on any other."""
    from minio import Minio
    from pac.config import Config
    from pac.data.dataset import open_dataset
    from pac.data.ingest import ingest
    from pac.data.synthetic import SyntheticSource
    from pac.training.loop import train

    key = {"accessKey": "pac-scoped-key", "secretKey": "pac-scoped-secret-0"}
    scoped = {"name": "pac-scoped", "credentials": [key],
              "actions": [f"{a}:pac-own" for a in ("Read", "Write", "List", "Tagging")]}
    (tmp_path / "weed").mkdir()
    server = weed_server(tmp_path / "weed", "pac-admin-key", "pac-admin-secret-0123", more_identities=[scoped])
    server.start()
    try:
        admin = Minio(server.info.endpoint, server.access_key, server.secret_key, secure=False)
        admin.make_bucket("pac-own")
        admin.make_bucket("someone-else")
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.info.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "pac-scoped-key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pac-scoped-secret-0")
        storage = StorageConfig(secure=False)
        ref = ingest(random_episodes(4, 0), "s3://pac-own/store/behaviour", storage=storage, progress=False)
        assert open_dataset(str(ref), storage).manifest.counts["episodes"] == 4
        cfg = Config.from_dict({"preset": "tiny", "objective": {"num_action_samples": 4}, "storage": {"secure": False},
                                "train": {"steps": 2, "global_batch_size": 8, "micro_batch_size": 8,
                                          "precision": "fp32", "output": "s3://pac-own/store/runs/a"},
                                "tracking": {"enabled": False}})
        train(cfg, source=SyntheticSource(cfg.model, 8, seed=0))
        assert open_store("s3://pac-own/store/runs/a", storage).exists("export/model.safetensors")
        with pytest.raises(StorageAuthError):
            ingest(random_episodes(1, 1), "s3://someone-else/behaviour", storage=storage, progress=False)
        with pytest.raises(StorageAuthError):
            open_store("s3://someone-else", storage).list("")
    finally:
        server.kill()


def test_a_dropped_connection_while_downloading_stays_retryable_and_a_failed_write_names_the_file(
        tmp_path: Path) -> None:
    import contextlib
    import io

    from pac.storage import copy_hashing

    class Dropping(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            raise ConnectionResetError("connection reset by peer")

    with pytest.raises(ConnectionResetError):  # not a StorageError: S3Store._call retries connection errors
        copy_hashing(lambda: contextlib.nullcontext(Dropping()), tmp_path / "shard.npz")
    bad = tmp_path / ("x" * 300) / "shard.npz"  # a directory name longer than any filesystem allows
    with pytest.raises(StorageError, match="cannot write .*shard.npz: File name too long"):
        copy_hashing(lambda: contextlib.nullcontext(io.BytesIO(b"x")), bad)
    assert list(tmp_path.iterdir()) == []  # no temporary left behind
