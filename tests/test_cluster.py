"""Submitting multi-node training as a Kubeflow Trainer TrainJob (pac.cluster).

No Kubernetes API server can run here (no kube-apiserver, kind or k3s binary is obtainable), so the real
`kubernetes` client talks to a small local HTTP server that implements the endpoints pac.cluster uses: create,
get and delete TrainJobs, list pods by label, read a pod's log. The server plays the Trainer controller: it moves
the job through the states of each scenario. Everything on the client side is the production code path.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubeflow_trainer_api.models as trainer
import pytest
from pac.cli import main
from pac.cluster import Api, TrainJobError, job_name, run_trainjob, should_submit, trainjob
from pac.config import Config

NS = "team-ml"


class FakeTrainer:
    """TrainJobs in memory; each GET of a job advances it one step along its scenario's script."""

    def __init__(self, script: list[str], failure: tuple[str, str] = ("", "")) -> None:
        self.script, self.failure = script, failure
        self.start_on_create = 0  # where a newly created job starts in the script
        self.jobs: dict[str, dict[str, Any]] = {}
        self.step: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict[str, Any]] = []

    def state(self, name: str) -> str:
        return self.script[min(self.step.get(name, 0), len(self.script) - 1)]

    def job(self, name: str) -> dict[str, Any]:
        job = self.jobs[name]
        conditions = []
        state = self.state(name)
        if state == "complete":
            conditions = [{"type": "Complete", "status": "True", "reason": "JobsCompleted"}]
        elif state == "failed":
            conditions = [{"type": "Failed", "status": "True", "reason": self.failure[0], "message": self.failure[1]}]
        return {**job, "status": {"conditions": conditions}}

    def pods(self, name: str) -> list[dict[str, Any]]:
        state = self.state(name)
        if name not in self.jobs or state == "none":
            return []
        phase = {"unschedulable": "Pending", "starting": "Running", "running": "Running", "complete": "Succeeded",
                 "failed": "Failed"}[state]
        pod: dict[str, Any] = {"metadata": {"name": f"{name}-node-0-0-abcde", "namespace": NS},
                               "status": {"phase": phase, "conditions": []}}
        if state == "unschedulable":
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]
        return [pod]

    def log(self, name: str) -> str:
        n = self.step.get(name, 0)
        return "".join(f"2026-12-06T01:00:{i:02d}.{i}00Z step {i} loss={1 / (i + 1):.3f}\n" for i in range(n + 1))


@pytest.fixture
def k8s(request: pytest.FixtureRequest) -> Iterator[tuple[FakeTrainer, Api]]:
    """(the fake Trainer, an Api of the real kubernetes client pointed at it)."""
    from kubernetes import client

    fake = request.param if isinstance(getattr(request, "param", None), FakeTrainer) else FakeTrainer(
        ["none", "running", "running", "complete"])
    base = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def not_found(self) -> None:
            self.reply(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})

        def do_POST(self) -> None:
            fake.requests.append(("POST", self.path))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if urlsplit(self.path).path != base:
                return self.not_found()
            name = body["metadata"]["name"]
            if name in fake.jobs:
                return self.reply(409, {"kind": "Status", "reason": "AlreadyExists", "code": 409,
                                        "message": f'trainjobs "{name}" already exists'})
            fake.jobs[name], fake.step[name] = body, fake.start_on_create
            fake.created.append(body)
            self.reply(201, body)

        def do_GET(self) -> None:
            fake.requests.append(("GET", self.path))
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path.startswith(base + "/"):
                name = url.path.rsplit("/", 1)[1]
                if name not in fake.jobs:
                    return self.not_found()
                job = fake.job(name)
                fake.step[name] += 1
                return self.reply(200, job)
            if url.path == f"/api/v1/namespaces/{NS}/pods":
                name = query["labelSelector"][0].split("=", 1)[1]
                return self.reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                        "items": fake.pods(name)})
            if url.path.startswith(f"/api/v1/namespaces/{NS}/pods/") and url.path.endswith("/log"):
                name = url.path.split("/")[-2].split("-node-")[0]
                assert query["timestamps"][0].lower() == "true"  # the client sends True; the API takes both
                if fake.state(name) == "starting":  # what the API answers while the container is created
                    return self.reply(400, {"kind": "Status", "code": 400, "reason": "BadRequest",
                                            "message": 'container "node" is waiting to start: ContainerCreating'})
                return self.reply(200, fake.log(name), "text/plain")
            self.not_found()

        def do_DELETE(self) -> None:
            fake.requests.append(("DELETE", self.path))
            name = urlsplit(self.path).path.rsplit("/", 1)[1]
            if fake.jobs.pop(name, None) is None:
                return self.not_found()
            self.reply(200, {"kind": "Status", "status": "Success"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conf = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    api_client = client.ApiClient(conf)
    try:
        yield fake, Api(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client))
    finally:
        server.shutdown()


def config(**cluster: Any) -> Config:
    return Config.from_dict({"train": {"output": "s3://pac/store/runs/pretrain-xs", "steps": 50},
                             "cluster": {"nodes": 2, "namespace": NS, "poll_s": 0.01, **cluster}})


def test_the_trainjob_is_valid_for_kubeflow_trainer_and_carries_the_resolved_config() -> None:
    cfg = config(gpus_per_node=8)
    job = trainjob(cfg)
    # The Trainer API models drop what they do not know: a round trip that loses nothing means every field is real.
    assert trainer.TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job
    spec = job["spec"]["trainer"]
    assert (spec["numNodes"], spec["numProcPerNode"]) == (2, 8)
    assert spec["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert job["spec"]["runtimeRef"]["name"] == "pac-torch-distributed"  # manifests/base/trainingruntime.yaml
    shipped = Config.from_dict(json.loads(spec["env"][0]["value"]))
    assert shipped == cfg  # every process trains with exactly this config
    assert "torchrun -m pac.cli train --config" in spec["command"][-1]


def test_a_finetunes_parent_run_reaches_every_process() -> None:
    job = trainjob(config(), parent_run_id="abc123")
    env = {e["name"]: e["value"] for e in job["spec"]["trainer"]["env"]}
    assert env["PAC_PARENT_RUN_ID"] == "abc123"
    assert job["spec"]["trainer"]["command"][-1].endswith('--parent-run-id "$PAC_PARENT_RUN_ID"')
    assert "--parent-run-id" not in trainjob(config())["spec"]["trainer"]["command"][-1]


def test_the_job_name_is_stable_per_run_directory_and_valid() -> None:
    a, b = config(), Config.from_dict({"train": {"output": "s3://pac/store/runs/other"}})
    assert job_name(a) == job_name(config())
    assert job_name(a) != job_name(b)
    for name in (job_name(a), job_name(b), job_name(Config.from_dict({"train": {"output": "/A_B/../x y"}}))):
        assert len(name) <= 63 and name[0].isalpha() and all(c.isalnum() or c == "-" for c in name), name


def test_inside_the_job_every_process_trains_instead_of_submitting_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert should_submit(config()) and not should_submit(Config())
    monkeypatch.setenv("WORLD_SIZE", "16")  # torchrun in the job's pods
    assert not should_submit(config())


def test_submit_follow_logs_and_succeed(k8s: tuple[FakeTrainer, Api]) -> None:
    fake, api = k8s
    lines: list[str] = []
    uri = run_trainjob(config(), api, out=lines.append)
    assert uri == "s3://pac/store/runs/pretrain-xs/export"
    assert len(fake.created) == 1 and fake.created[0]["metadata"]["name"] == job_name(config())
    assert any("submitted (2 nodes x 1 processes" in line for line in lines)
    steps = [line for line in lines if "step " in line and "loss=" in line]
    assert steps and len(steps) == len(set(steps))  # log lines printed once each, in order
    assert steps[0].endswith("step 0 loss=1.000")
    assert any("Complete" in line for line in lines)
    assert not any(method == "DELETE" for method, _ in fake.requests)


@pytest.mark.parametrize("k8s", [FakeTrainer(["none", "running", "failed"], ("BackoffLimitExceeded",
                                 "jobset node failed: pac train exited 1: train.output is not writable"))],
                         indirect=True)
def test_a_failed_job_fails_the_step_with_the_jobs_own_reason(k8s: tuple[FakeTrainer, Api]) -> None:
    _, api = k8s
    with pytest.raises(TrainJobError, match="failed: BackoffLimitExceeded: jobset node failed: pac train exited 1"):
        run_trainjob(config(), api, out=lambda _: None)


@pytest.mark.parametrize("k8s", [FakeTrainer(["unschedulable"])], indirect=True)
def test_an_unschedulable_job_times_out_with_the_schedulers_message_and_is_deleted(
        k8s: tuple[FakeTrainer, Api]) -> None:
    fake, api = k8s
    with pytest.raises(TrainJobError, match=r"no pod running after 0 s .*Insufficient nvidia.com/gpu"):
        run_trainjob(config(schedule_timeout_s=0.2, gpus_per_node=64), api, out=lambda _: None)
    assert ("DELETE", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs/{job_name(config())}") in \
        fake.requests
    assert not fake.jobs


@pytest.mark.parametrize("k8s", [FakeTrainer(["none", "running"])], indirect=True)
def test_cancelling_the_step_deletes_the_job(k8s: tuple[FakeTrainer, Api]) -> None:
    fake, api = k8s

    def out(line: str) -> None:
        if "loss=" in line:  # training is under way: the KFP run is cancelled, its pod gets SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        run_trainjob(config(), api, out=out)
    assert not fake.jobs and any(method == "DELETE" for method, _ in fake.requests)
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


@pytest.mark.parametrize("k8s", [FakeTrainer(["none", "running", "complete"])], indirect=True)
def test_a_rerun_follows_its_running_job_and_replaces_a_failed_one(k8s: tuple[FakeTrainer, Api]) -> None:
    fake, api = k8s
    cfg = config()
    fake.jobs[job_name(cfg)], fake.step[job_name(cfg)] = trainjob(cfg), 1  # a job of an earlier attempt, running
    lines: list[str] = []
    run_trainjob(cfg, api, out=lines.append)
    assert not fake.created and any("already exists; following it" in line for line in lines)

    fake.script, fake.start_on_create = ["failed", "none", "running", "complete"], 1  # the old one failed
    fake.jobs[job_name(cfg)], fake.step[job_name(cfg)] = trainjob(cfg), 0
    lines.clear()
    run_trainjob(cfg, api, out=lines.append)
    assert any("previous attempt failed; replacing it" in line for line in lines)
    assert len(fake.created) == 1


def test_pac_train_with_several_nodes_and_no_cluster_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["train", "--cluster.nodes", "2", "--train.output", str(tmp_path / "run")]) == 1
    assert "no Kubernetes API is configured here" in capsys.readouterr().err
