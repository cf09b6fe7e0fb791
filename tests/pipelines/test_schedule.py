"""`pac pipeline schedule` through the real `kfp.Client`.

No Kubeflow Pipelines API server can run here, so the client talks to a small local HTTP server that implements
the v2beta1 REST endpoints it uses (healthz, pipelines + upload, versions + upload_version, experiments,
recurring runs). It is a stub of the server, not of the client: every request below is the real client's.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from pac.cli import main


class KfpApiStub:
    """In-memory pipelines, versions, experiments and recurring runs; `requests` records what was asked."""

    def __init__(self) -> None:
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.recurring: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []

    def handle(self, method: str, url: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parsed = urlparse(url)
        path, query = parsed.path, {k: v[0] for k, v in parse_qs(parsed.query).items()}
        self.requests.append((method, path))
        name_filter = _filter_name(query.get("filter"))
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False}
        if method == "GET" and path == "/apis/v2beta1/pipelines":
            found = [p for p in self.pipelines.values() if name_filter in (None, p["display_name"])]
            return 200, {"pipelines": found or None, "total_size": len(found)}
        if method == "POST" and path == "/apis/v2beta1/pipelines/upload":
            pid = uuid.uuid4().hex
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": query["name"]}
            self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": uuid.uuid4().hex,
                                   "display_name": query["name"]}]
            return 200, self.pipelines[pid]
        if m := re.fullmatch(r"/apis/v2beta1/pipelines/([0-9a-f]+)/versions", path):
            return 200, {"pipeline_versions": self.versions[m.group(1)]}
        if method == "POST" and path == "/apis/v2beta1/pipelines/upload_version":
            pid = query["pipelineid"]
            assert b"pipelineInfo" in body  # the compiled IR itself was uploaded
            version = {"pipeline_id": pid, "pipeline_version_id": uuid.uuid4().hex, "display_name": query["name"]}
            self.versions[pid].append(version)
            return 200, version
        if method == "GET" and path == "/apis/v2beta1/experiments":
            found = [e for e in self.experiments.values() if name_filter in (None, e["display_name"])]
            return 200, {"experiments": found or None}
        if method == "POST" and path == "/apis/v2beta1/experiments":
            eid = uuid.uuid4().hex
            self.experiments[eid] = {**json.loads(body), "experiment_id": eid}
            return 200, self.experiments[eid]
        if method == "GET" and path == "/apis/v2beta1/recurringruns":
            found = [r for r in self.recurring.values() if r["experiment_id"] == query.get("experiment_id")]
            return 200, {"recurringRuns": found or None}
        if method == "POST" and path == "/apis/v2beta1/recurringruns":
            rid = uuid.uuid4().hex
            self.recurring[rid] = {**json.loads(body), "recurring_run_id": rid}
            return 200, self.recurring[rid]
        if method == "DELETE" and (m := re.fullmatch(r"/apis/v2beta1/recurringruns/([0-9a-f]+)", path)):
            del self.recurring[m.group(1)]
            return 200, {}
        return 404, {"error": f"stub: no {method} {path}"}


def _filter_name(text: str | None) -> str | None:
    if not text:
        return None
    predicates = json.loads(text).get("predicates", [])
    return next((p.get("string_value") or p.get("stringValue") for p in predicates if p["key"] == "display_name"),
                None)


@pytest.fixture
def kfp_api() -> Iterator[tuple[str, KfpApiStub]]:
    stub = KfpApiStub()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload = stub.handle(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stub
    finally:
        server.shutdown()


def test_schedule_creates_then_updates_the_recurring_run_by_name(kfp_api: tuple[str, KfpApiStub],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    host, stub = kfp_api
    base = ["pipeline", "schedule", "--host", host, "--name", "weekly", "--experiment", "pac-retrain"]
    assert main([*base, "--cron", "0 0 3 * * 1", "--max-concurrency", "2", "--param", "train_steps=5000",
                 "--param", "dataset=behaviour@latest"]) == 0
    assert "recurring run 'weekly'" in capsys.readouterr().out
    (run,) = stub.recurring.values()
    assert run["display_name"] == "weekly" and int(run["max_concurrency"]) == 2
    assert run["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    params = run["runtime_config"]["parameters"]
    assert params["train_steps"] == 5000 and params["dataset"] == "behaviour@latest"
    (pipeline,) = stub.pipelines.values()
    assert run["pipeline_version_reference"]["pipeline_id"] == pipeline["pipeline_id"]

    # The same name again, a new cron: the schedule is replaced, not duplicated; the unchanged pipeline
    # is not uploaded again.
    uploads = sum(p == "/apis/v2beta1/pipelines/upload_version" for _, p in stub.requests)
    assert main([*base, "--cron", "0 30 4 * * *", "--param", "train_steps=5000"]) == 0
    (run,) = stub.recurring.values()
    assert run["trigger"]["cron_schedule"]["cron"] == "0 30 4 * * *"
    assert sum(p == "/apis/v2beta1/pipelines/upload_version" for _, p in stub.requests) == uploads
    assert len(stub.experiments) == 1


def test_schedule_rejects_bad_input_before_contacting_the_server(kfp_api: tuple[str, KfpApiStub],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    host, stub = kfp_api
    assert main(["pipeline", "schedule", "--host", host, "--cron", "daily", "--param", "train_steps=10"]) == 1
    assert "expected 5 or 6 space-separated fields" in capsys.readouterr().err
    assert main(["pipeline", "schedule", "--host", host, "--cron", "0 0 3 * * 1", "--param", "alpha=7"]) == 2
    assert "objective.alpha" in capsys.readouterr().err
    assert not stub.recurring
