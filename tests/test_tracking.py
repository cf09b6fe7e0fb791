"""MLflow tracking against a real tracking server (sqlite backend, artifacts proxied to a real S3 server), the
embedded serverless default, and the pyfunc policy loaded back in this process and in a fresh one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from pac.config import Config, TrackingConfig
from pac.networks import build_model
from pac.presets import model_config
from pac.serving import PolicyInput, policy_actions
from pac.tracking import (
    Tracker,
    TrackingError,
    load_policy,
    redact_uri,
    resolve_tracking_uri,
    scrub,
    set_alias,
)
from pac.training.export import ExportError, load_export, save_export

if TYPE_CHECKING:
    from conftest import MlflowServer

# Two embodiments in one batch: different proprio sizes, action sizes and bounds.
ROWS = [
    {"proprio": [0.1, -0.2, 0.3, 0.4, -0.5], "instruction": "balance the pole", "action_low": [-2.0, 0.0],
     "action_high": [2.0, 10.0]},
    {"proprio": [1.0, 2.0, 3.0], "instruction": "reach the target", "action_low": [-0.5], "action_high": [0.5]},
]


def _config(**tracking: object) -> Config:
    return Config(preset="tiny", model=model_config("tiny"), tracking=TrackingConfig(system_metrics=False, **tracking))


def _unique(prefix: str) -> str:
    # The server is shared by the whole session: every test uses its own experiment and model names.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No tracking URI from the developer's shell, and no active run or global URI leaking into the next test."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A tiny export whose policy head is random, so greedy actions depend on the observation."""
    cfg = _config()
    torch.manual_seed(0)
    net = build_model(cfg.model)
    with torch.no_grad():
        net.policy.head.weight.normal_(0.0, 0.5)  # the head is zero-initialised: argmax would always be bin 0
    return save_export(net.state_dict(), cfg, tmp_path_factory.mktemp("export") / "export"), cfg


def _expected_actions(export_dir: Path, rows: list[dict]) -> list[list[float]]:
    net, cfg = load_export(export_dir)
    return policy_actions(net.eval(), cfg, [PolicyInput(**r) for r in rows])


def _assert_same_weights(net: torch.nn.Module, export_dir: Path) -> None:
    reference, _ = load_export(export_dir)
    expected = reference.state_dict()
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def _assert_within_bounds(actions: list[list[float]], rows: list[dict]) -> None:
    assert [len(a) for a in actions] == [len(r["action_low"]) for r in rows]
    for action, row in zip(actions, rows, strict=True):
        assert np.all(np.asarray(action) >= np.asarray(row["action_low"]) - 1e-6)
        assert np.all(np.asarray(action) <= np.asarray(row["action_high"]) + 1e-6)


# -- URI resolution, secrets, inactive trackers (no server) ---------------------------------------------------


def test_uri_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path}/outputs/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.pac.svc:5000")
    assert resolve_tracking_uri(TrackingConfig()) == "http://mlflow.pac.svc:5000"
    assert resolve_tracking_uri(TrackingConfig(uri="https://tracking.example")) == "https://tracking.example"
    assert resolve_tracking_uri(TrackingConfig(uri="sqlite:///runs/db.sqlite")) == f"sqlite:///{tmp_path}/runs/db.sqlite"
    assert resolve_tracking_uri(TrackingConfig(uri="sqlite:////abs/db.sqlite")) == "sqlite:////abs/db.sqlite"


def test_scrub_masks_url_passwords_and_secret_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456789")
    monkeypatch.setenv("PAC_DEBUG", "verbose")  # not secret-looking: left alone
    assert redact_uri("https://pac:hunter2@mlflow.example/x") == "https://pac:***@mlflow.example/x"
    assert redact_uri("s3://bucket/prefix@v3") == "s3://bucket/prefix@v3"  # a dataset version is not a password
    assert redact_uri("s3://bucket@v3") == "s3://bucket@v3"
    assert scrub("key=wJalrXUtnFEMI-secret;t=tok-123456789;verbose") == "key=***;t=***;verbose"


def test_inactive_tracker_does_nothing(export: tuple[Path, Config]) -> None:
    unreachable = TrackingConfig(uri="http://127.0.0.1:1")
    for tracker in (Tracker(unreachable, active=False), Tracker(TrackingConfig(uri=unreachable.uri, enabled=False))):
        tracker.check()
        assert tracker.start(_config(), run_name="rank-1") is None
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_artifact("/does/not/exist")
        assert tracker.log_model(export[0], register=True, alias="champion") == ""
        tracker.end()
        assert tracker.run_id is None


def test_out_of_order_calls_are_refused(tmp_path: Path) -> None:
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db"))
    with pytest.raises(TrackingError, match="call start"):
        tracker.log_metrics({"loss": 1.0}, step=0)
    with pytest.raises(TrackingError, match="call start"):
        tracker.log_model(tmp_path)


# -- check(): fail fast -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_fails_fast_on_unreachable_server() -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError, match=f"{uri}.*unreachable.*tracking.uri"):
        Tracker(TrackingConfig(uri=uri)).check()
    assert time.monotonic() - start < 5


def test_check_times_out_on_a_silent_server() -> None:
    # Accepts connections (the kernel's backlog) but never answers: the check must give up after its timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://pac:hunter22@127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingError, match=r"unreachable within 0.5s") as err:
            Tracker(TrackingConfig(uri=uri, check_timeout_s=0.5)).check()
        assert time.monotonic() - start < 5
        assert "hunter22" not in str(err.value) and "pac:***@" in str(err.value)


class _Canned(BaseHTTPRequestHandler):
    """Answers GETs with the status its server maps the path to: the failure modes of a real deployment."""

    def do_GET(self) -> None:
        self.send_response(self.server.statuses.get(self.path.split("?")[0], 404))  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("statuses,message", [
    ({}, "HTTP 404: is it an MLflow server"),
    ({"/health": 200, "/api/2.0/mlflow/experiments/get-by-name": 401}, "refused the credentials"),
    ({"/health": 200, "/api/2.0/mlflow/experiments/get-by-name": 404, "/api/2.0/mlflow-artifacts/artifacts": 500},
     "cannot reach its artifact store"),
], ids=["not-mlflow", "auth", "artifact-store"])
def test_check_reports_a_misconfigured_server(statuses: dict[str, int], message: str) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Canned)
    server.statuses = statuses  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TrackingError, match=message):
            Tracker(TrackingConfig(uri=f"http://127.0.0.1:{server.server_port}")).check()
    finally:
        server.shutdown()
        server.server_close()


# -- the real server ---------------------------------------------------------------------------------------------


@pytest.mark.mlflow
def test_run_logs_params_once_metrics_and_artifacts(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    cfg = _config(uri=mlflow_server.uri, experiment=_unique("params"))
    tracker = Tracker(cfg.tracking)
    tracker.check()
    run_id = tracker.start(cfg, run_name="pretrain", tags={"stage": "pretrain"})
    assert run_id and tracker.run_id == run_id
    for step in range(3):
        tracker.log_metrics({"loss/critic": 1.0 / (step + 1), "eta": np.float32(0.5), "kl": torch.tensor(0.1)},
                            step=step * 10)
    (tmp_path / "report.txt").write_text("returns: 1.0\n")
    (tmp_path / "videos" / "cartpole").mkdir(parents=True)
    (tmp_path / "videos" / "cartpole" / "ep0.mp4").write_bytes(b"\x00" * 2048)
    tracker.log_artifact(tmp_path / "report.txt")
    tracker.log_artifact(tmp_path / "videos", "eval")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tracker.log_artifact(tmp_path / "missing.png")
    tracker.end()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain"
    assert run.data.params == {k: str(v) for k, v in cfg.flat().items()}
    assert run.data.tags["method"] == "PAC" and run.data.tags["preset"] == "tiny"
    assert run.data.tags["stage"] == "pretrain" and "pac.version" in run.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss/critic")] == [
        (0, 1.0), (10, 0.5), (20, pytest.approx(1 / 3))]
    assert run.data.metrics["eta"] == 0.5 and run.data.metrics["kl"] == pytest.approx(0.1)

    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "report.txt", "eval"}
    assert [a.path for a in client.list_artifacts(run_id, "eval/videos/cartpole")] == ["eval/videos/cartpole/ep0.mp4"]
    fetched = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                       dst_path=str(tmp_path / "fetched"),
                                                       tracking_uri=mlflow_server.uri))
    assert Config.from_dict(yaml.safe_load(fetched.read_text())) == cfg  # the resolved config round-trips

    # The server proxied every artifact into the real S3 bucket.
    from minio import Minio

    s3 = mlflow_server.s3
    keys = {o.object_name for o in Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False).list_objects(
        mlflow_server.bucket, recursive=True)}
    for name in ("config.yaml", "report.txt", "eval/videos/cartpole/ep0.mp4"):
        assert any(k.endswith(f"{run_id}/artifacts/{name}") for k in keys), name


@pytest.mark.mlflow
def test_secrets_never_reach_mlflow(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    secret = "s3-Secret-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    # A password in the tracking URL (basic auth; this server ignores it) and a secret pasted into a config value.
    uri = mlflow_server.uri.replace("http://", "http://pac:hunter22@")
    cfg = _config(uri=uri, experiment=_unique("secrets"))
    cfg.data.dataset = f"s3://bucket/data?token={secret}"
    tracker = Tracker(cfg.tracking)
    tracker.check()
    run_id = tracker.start(cfg, run_name="secrets", tags={"note": f"key {secret}"})
    tracker.end()

    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    logged = json.dumps([run.data.params, run.data.tags])
    config_yaml = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                           dst_path=str(tmp_path), tracking_uri=mlflow_server.uri))
    for text in (logged, config_yaml.read_text()):
        assert secret not in text and "hunter22" not in text
    assert run.data.params["tracking.uri"] == uri.replace("hunter22", "***")
    assert run.data.params["data.dataset"] == "s3://bucket/data?token=***"
    assert run.data.tags["note"] == "key ***"


@pytest.mark.mlflow
def test_logged_model_loads_back_and_predicts(mlflow_server: MlflowServer, export: tuple[Path, Config]) -> None:
    export_dir, model_cfg = export
    cfg = _config(uri=mlflow_server.uri, experiment=_unique("model"))
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start(model_cfg, run_name="model")
    with pytest.raises(ValueError, match="needs register=True"):
        tracker.log_model(export_dir, alias="champion")
    with pytest.raises(ExportError, match="save_export"):
        tracker.log_model(export_dir.parent)
    uri = tracker.log_model(export_dir)
    tracker.end()
    assert uri.startswith("models:/m-")

    for source in (uri, f"runs:/{run_id}/policy"):
        net, loaded_cfg = load_policy(source, cfg.tracking)
        assert loaded_cfg == model_cfg and not net.training
        _assert_same_weights(net, export_dir)

    expected = _expected_actions(export_dir, ROWS)
    assert expected != [r["action_low"] for r in ROWS]  # the random head moves the argmax off bin 0
    pyfunc = mlflow.pyfunc.load_model(uri)
    assert pyfunc.predict(pd.DataFrame(ROWS)) == expected
    assert pyfunc.predict(ROWS) == expected
    _assert_within_bounds(expected, ROWS)
    # Without bounds the action is normalised to [-1, 1].
    normalised = pyfunc.predict([{"proprio": [0.1, 0.2], "action_dims": 4}])
    assert len(normalised[0]) == 4 and all(-1.0 <= x <= 1.0 for x in normalised[0])
    with pytest.raises(Exception, match="action_dims or action_low"):
        pyfunc.predict([{"proprio": [0.1, 0.2]}])
    # Vision tasks pass the camera image as nested lists (H, W, 3).
    image = np.random.default_rng(0).integers(0, 256, (model_cfg.model.image_size,) * 2 + (3,), dtype=np.uint8)
    with_image = [{**ROWS[0], "image": image.tolist()}, ROWS[1]]
    assert pyfunc.predict(with_image) == _expected_actions(export_dir, with_image)

    # Model from code: the model directory holds the export and an entry point, nothing pickled.
    files = [a.path for a in MlflowClient(mlflow_server.uri).list_logged_model_artifacts(uri.removeprefix("models:/"))]
    assert "MLmodel" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)


@pytest.mark.mlflow
def test_register_alias_and_load_in_a_fresh_process(mlflow_server: MlflowServer, export: tuple[Path, Config],
                                                     tmp_path: Path) -> None:
    export_dir, model_cfg = export
    name = _unique("pac-policy")
    cfg = _config(uri=mlflow_server.uri, experiment=_unique("registry"), registered_model=name)
    tracker = Tracker(cfg.tracking)
    tracker.start(model_cfg, run_name="register")
    assert tracker.log_model(export_dir, register=True, alias="champion") == f"models:/{name}@champion"
    # A second version, promoted afterwards with set_alias.
    assert tracker.log_model(export_dir, register=True) == f"models:/{name}/2"
    tracker.end()
    client = MlflowClient(mlflow_server.uri)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    set_alias(name, "2", "champion", cfg.tracking)
    assert client.get_model_version_by_alias(name, "champion").version == "2"

    for source in (f"models:/{name}@champion", f"models:/{name}/1"):
        net, loaded_cfg = load_policy(source, cfg.tracking)
        assert loaded_cfg == model_cfg
        _assert_same_weights(net, export_dir)

    # A fresh process that knows only the tracking URI (no S3 credentials: the server proxies the artifacts).
    script = (
        "import json, sys, mlflow\n"
        "from pac.tracking import load_policy\n"
        "net, cfg = load_policy(sys.argv[1])\n"
        "print(json.dumps(mlflow.pyfunc.load_model(sys.argv[1]).predict(json.loads(sys.argv[2]))))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = mlflow_server.uri
    out = subprocess.run([sys.executable, "-c", script, f"models:/{name}@champion", json.dumps(ROWS)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == _expected_actions(export_dir, ROWS)


@pytest.mark.mlflow
def test_resume_continues_the_same_run(mlflow_server: MlflowServer, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(uri=mlflow_server.uri, experiment=_unique("resume"))
    first = Tracker(cfg.tracking)
    run_id = first.start(cfg, run_name="pretrain")
    first.log_metrics({"loss": 2.0}, step=0)
    first.log_metrics({"loss": 1.5}, step=1)
    first.end("KILLED")  # preempted

    cfg.train.steps = 500  # the restarted job was given more steps
    second = Tracker(cfg.tracking)
    with caplog.at_level("WARNING", logger="pac.tracking"):
        assert second.start(cfg, run_name="ignored-on-resume", run_id=run_id) == run_id
    assert "train.steps" in caplog.text
    second.log_metrics({"loss": 1.0}, step=2)
    second.end()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert run.data.params["train.steps"] == str(_config().train.steps)  # params were logged once, not again
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    assert len(client.search_runs([run.info.experiment_id])) == 1

    with pytest.raises(TrackingError, match="does not exist"):
        Tracker(cfg.tracking).start(cfg, run_name="x", run_id=uuid.uuid4().hex)


class _Link:
    """A TCP forwarder to the tracking server that can be cut: a real network outage between trainer and server."""

    def __init__(self, target: str) -> None:
        self.target = target.removeprefix("http://").split(":")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = True
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection((self.target[0], int(self.target[1])))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def cut(self) -> None:
        self.up = False
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.mark.mlflow
def test_metrics_logged_during_a_tracking_outage_are_kept_and_sent_when_it_ends(
        mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    link = _Link(mlflow_server.uri)
    try:
        cfg = _config(uri=link.uri, experiment=_unique("outage"))
        tracker = Tracker(cfg.tracking)
        run_id = tracker.start(cfg, run_name="outage")
        tracker.log_metrics({"loss": 1.0}, step=0)
        with pytest.raises(Exception, match="Invalid value"):
            tracker.log_metrics({"not a metric name!": 1.0}, step=0)  # a bug in the caller still raises
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's default retries take minutes
        link.cut()
        with caplog.at_level("WARNING", logger="pac.metric_queue"):
            started = time.monotonic()
            tracker.log_metrics({"loss": 0.5}, step=1)  # queued: training does not wait on the server
            while "cannot send metrics" not in caplog.text:
                assert time.monotonic() - started < 60, "the outage was never noticed"
                time.sleep(0.05)
        link.up = True
        tracker.log_metrics({"loss": 0.25}, step=2)
        tracker.end()
    finally:
        link.close()
    history = MlflowClient(mlflow_server.uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 0.25)]


@pytest.mark.mlflow
def test_child_run_links_its_parent(mlflow_server: MlflowServer) -> None:
    cfg = _config(uri=mlflow_server.uri, experiment=_unique("finetune"))
    parent = Tracker(cfg.tracking)
    parent_id = parent.start(cfg, run_name="pretrain")
    parent.end()
    child = Tracker(cfg.tracking)
    child_id = child.start(cfg, run_name="finetune", parent_run_id=parent_id)
    child.end()

    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(child_id).data.tags["mlflow.parentRunId"] == parent_id
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert [r.info.run_id for r in children] == [child_id]
    with pytest.raises(TrackingError, match="does not exist"):
        Tracker(cfg.tracking).start(cfg, run_name="orphan", parent_run_id=uuid.uuid4().hex)
    assert mlflow.active_run() is None


@pytest.mark.mlflow
def test_system_metrics(mlflow_server: MlflowServer) -> None:
    cfg = _config(uri=mlflow_server.uri, experiment=_unique("system"))
    cfg.tracking.system_metrics = True
    mlflow.set_system_metrics_sampling_interval(0.2)  # default 10 s: too slow for a test
    try:
        tracker = Tracker(cfg.tracking)
        run_id = tracker.start(cfg, run_name="system")
        deadline = time.monotonic() + 20
        client = MlflowClient(mlflow_server.uri)
        while not any(k.startswith("system/") for k in client.get_run(run_id).data.metrics):
            assert time.monotonic() < deadline, "no system metrics were logged"
            time.sleep(0.2)
        tracker.end()
    finally:
        mlflow.set_system_metrics_sampling_interval(None)
    assert "system/cpu_utilization_percentage" in client.get_run(run_id).data.metrics


# -- the embedded default -----------------------------------------------------------------------------------------


def test_embedded_default_store_without_a_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 export: tuple[Path, Config]) -> None:
    monkeypatch.chdir(tmp_path)
    export_dir, model_cfg = export
    cfg = _config()
    tracker = Tracker(cfg.tracking)
    assert tracker.uri == f"sqlite:///{tmp_path}/outputs/mlruns/mlflow.db"
    tracker.check()
    run_id = tracker.start(cfg, run_name="local")
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert tracker.log_model(export_dir, register=True, alias="champion") == "models:/pac-policy@champion"
    tracker.end()

    net, loaded_cfg = load_policy("models:/pac-policy@champion")  # resolves to the same embedded store
    assert loaded_cfg == model_cfg
    _assert_same_weights(net, export_dir)
    assert MlflowClient(tracker.uri).get_run(run_id).data.metrics == {"loss": 1.0}
    # Artifacts sit next to the database, not in ./mlruns of whatever directory the job ran in.
    assert list((tmp_path / "outputs" / "mlruns" / "artifacts").rglob("config.yaml"))
    assert list((tmp_path / "outputs" / "mlruns" / "artifacts").rglob("model.safetensors"))
    assert not (tmp_path / "mlruns").exists()
    # A local export directory loads without MLflow at all.
    net, _ = load_policy(str(export_dir))
    _assert_same_weights(net, export_dir)
