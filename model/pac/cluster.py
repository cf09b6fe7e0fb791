"""Multi-node training on Kubeflow Trainer: the TrainJob that `pac train` submits when `cluster.nodes` > 1.

A pipeline step (or a person with a kubeconfig) runs `pac train` as usual; with more than one node configured
and no launcher around it (torchrun sets WORLD_SIZE), it does not train in-process but:

1. builds a TrainJob from the same typed config (`trainjob`): the runtime of manifests/base runs torchrun on each
   node, every process runs `pac train` with this resolved config, reads the dataset from S3 and checkpoints to
   `train.output` in S3;
2. submits it through the Kubernetes API; the name derives from `train.output`, so a rerun of the step finds its
   own job: a running one is followed, a failed one is replaced (and resumes from the last checkpoint);
3. follows it: status changes and the rank-0 pod's log lines are printed as they come;
4. ends with the job: success returns the export's URI; a failure raises with the job's own reason; pods that
   stay unschedulable past `cluster.schedule_timeout_s` get the job deleted and the scheduler's message raised;
   cancellation (SIGTERM, Ctrl-C) deletes the job.

Only this module talks to the Kubernetes API. RBAC (helm/pac templates/rbac.yaml) grants it exactly this:
create/get/list/watch/delete TrainJobs, get/list/watch pods and get pods/log in its namespace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pac
from pac.config import Config

if TYPE_CHECKING:
    from pac.training.loop import TrainResult

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # Trainer runs a TrainJob as a JobSet of the same name
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
CONFIG_ENV = "PAC_CONFIG"
# The resolved config reaches every process through the environment (nothing in it is secret: credentials are
# separate env vars from Secrets), so no ConfigMap has to be created and RBAC stays at TrainJobs.
LAUNCH = (f'printf "%s" "${CONFIG_ENV}" > /tmp/pac-config.json && '
          "exec torchrun -m pac.cli train --config /tmp/pac-config.json")
PARENT_ENV = "PAC_PARENT_RUN_ID"  # a finetune's MLflow parent run (lineage), when there is one


class TrainJobError(OSError):
    """The TrainJob failed, could not be scheduled, or could not be submitted; the message says which and why.
    (An OSError like the storage errors: an outside system's failure, reported by the CLI as a one-line error.)"""


def should_submit(cfg: Config) -> bool:
    """True when this process must hand training to a TrainJob: several nodes asked for, and no launcher set up a
    process group around us (inside the job, torchrun sets WORLD_SIZE and every process trains)."""
    return cfg.cluster.nodes > 1 and "WORLD_SIZE" not in os.environ


def job_name(cfg: Config) -> str:
    """A stable, valid name per run directory: a rerun of the same step addresses the same job."""
    tail = re.sub(r"[^a-z0-9-]+", "-", cfg.train.output.lower().rstrip("/").rsplit("/", 1)[-1]).strip("-")[:30]
    digest = hashlib.sha256(cfg.train.output.encode()).hexdigest()[:10]
    return f"pac-{tail}-{digest}".replace("--", "-") if tail else f"pac-{digest}"


def trainjob(cfg: Config, name: str | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    """The TrainJob manifest for `cfg` (runtime, nodes, processes and resources per node, the resolved config)."""
    c = cfg.cluster
    env = [{"name": CONFIG_ENV, "value": json.dumps(cfg.to_dict(), sort_keys=True)}]
    launch = LAUNCH
    if parent_run_id:
        env.append({"name": PARENT_ENV, "value": parent_run_id})
        launch += f' --parent-run-id "${PARENT_ENV}"'
    resources: dict[str, Any] = {"cpu": c.cpu_per_node, "memory": c.memory_per_node}
    if c.gpus_per_node:
        resources[c.accelerator] = c.gpus_per_node
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name or job_name(cfg), "labels": {"app.kubernetes.io/part-of": "pac",
                                                               "app.kubernetes.io/component": "training"}},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "TrainingRuntime", "name": c.runtime},
            "trainer": {
                "numNodes": c.nodes,
                "numProcPerNode": max(1, c.gpus_per_node),
                "image": c.image or pac.image_ref(),
                "command": ["sh", "-c", launch],
                "env": env,
                "resourcesPerNode": {"requests": resources, "limits": resources},
            },
        },
    }


@dataclass
class Api:
    """The two Kubernetes API groups used (CustomObjectsApi for TrainJobs, CoreV1Api for pods)."""

    custom: Any
    core: Any

    @classmethod
    def connect(cls) -> Api:
        """In a pod: its service account; elsewhere: the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as e:
                raise TrainJobError("cluster.nodes > 1 submits a Kubeflow Trainer job, but no Kubernetes API is "
                                    f"configured here (not in a pod, no kubeconfig): {e}") from e
        return cls(client.CustomObjectsApi(), client.CoreV1Api())


def namespace(cfg: Config) -> str:
    if cfg.cluster.namespace:
        return cfg.cluster.namespace
    return SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.exists() else "default"


def condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The TrainJob's status condition of this type, if it is True."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def train_on_cluster(cfg: Config, *, parent_run_id: str | None = None, api: Api | None = None,
                     out: Callable[[str], None] = print) -> TrainResult:
    """`pac.training.loop.train`'s result, with the training done by a TrainJob (`run_trainjob`)."""
    from pac.training.loop import TrainResult
    from pac.training.weights import source_run_id

    uri = run_trainjob(cfg, api, parent_run_id=parent_run_id, out=out)
    return TrainResult(steps=cfg.train.steps, run_id=source_run_id(uri, cfg), export_uri=uri)


def run_trainjob(cfg: Config, api: Api | None = None, *, parent_run_id: str | None = None,
                 out: Callable[[str], None] = print) -> str:
    """Submit (or rejoin) the job for `cfg`, follow it to the end; returns the export URI it wrote.

    Raises:
        TrainJobError: the job failed (its reason and message), its pods stayed unschedulable past
            `cluster.schedule_timeout_s` (the scheduler's message), or the API refused it.
    """
    from kubernetes.client.exceptions import ApiException

    api = api or Api.connect()
    ns, name = namespace(cfg), job_name(cfg)
    body = trainjob(cfg, name, parent_run_id)
    try:
        existing = _get(api, ns, name)
        if existing is not None and condition(existing, "Failed"):
            out(f"trainjob {ns}/{name}: the previous attempt failed; replacing it (it resumes from its checkpoint)")
            _delete(api, ns, name)
            _wait_deleted(api, ns, name, cfg.cluster.poll_s)
            existing = None
        if existing is None:
            api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
            out(f"trainjob {ns}/{name}: submitted ({cfg.cluster.nodes} nodes x {max(1, cfg.cluster.gpus_per_node)} "
                f"processes, runtime {cfg.cluster.runtime}, image {body['spec']['trainer']['image']})")
        else:
            out(f"trainjob {ns}/{name}: already exists; following it")
    except ApiException as e:
        raise TrainJobError(f"the Kubernetes API refused trainjob {ns}/{name}: {e.status} {e.reason}: "
                            f"{_message(e)}") from e
    with _deleted_on_cancel(api, ns, name, out):
        _follow(api, cfg, ns, name, out)
    return _export_uri(cfg)


def _follow(api: Api, cfg: Config, ns: str, name: str, out: Callable[[str], None]) -> None:
    started = time.monotonic()
    logs = _LogFollower(api, ns, name, out, cfg.cluster.poll_s)
    last = ""
    while True:
        job = _get(api, ns, name)
        if job is None:
            raise TrainJobError(f"trainjob {ns}/{name} disappeared while running (deleted by someone else?)")
        state = _state(job)
        if state != last:
            out(f"trainjob {ns}/{name}: {state}")
            last = state
        logs.poll()
        if condition(job, "Complete"):
            logs.poll()
            return
        failed = condition(job, "Failed")
        if failed:
            logs.poll()
            raise TrainJobError(f"trainjob {ns}/{name} failed: {failed.get('reason', 'Failed')}: "
                                f"{failed.get('message', '(no message)')}")
        if not logs.running and time.monotonic() - started > cfg.cluster.schedule_timeout_s:
            why = _unschedulable(api, ns, name)
            _delete(api, ns, name)
            raise TrainJobError(f"trainjob {ns}/{name}: no pod running after {cfg.cluster.schedule_timeout_s:.0f} s "
                                f"(cluster.schedule_timeout_s); deleted it. {why}")
        time.sleep(cfg.cluster.poll_s)


class _LogFollower:
    """Prints the rank-0 pod's new log lines on each poll (pods are found by the JobSet label).

    The first read of a pod takes its whole log; later reads ask for a window of recent seconds with timestamps
    and print the lines newer than the last one printed, so a days-long log is never re-read.
    """

    def __init__(self, api: Api, ns: str, name: str, out: Callable[[str], None], poll_s: float) -> None:
        self.api, self.ns, self.name, self.out = api, ns, name, out
        self.window = int(poll_s * 3) + 5
        self.pod = ""
        self.last: datetime | None = None
        self.running = False

    def poll(self) -> None:
        from kubernetes.client.exceptions import ApiException

        pods = self.api.core.list_namespaced_pod(self.ns, label_selector=f"{JOBSET_LABEL}={self.name}").items
        if not pods:
            return
        pods.sort(key=lambda p: p.metadata.name)  # <job>-node-0-0-... is rank 0
        pod = pods[0]
        self.running = self.running or any(p.status.phase in ("Running", "Succeeded", "Failed") for p in pods)
        if pod.status.phase not in ("Running", "Succeeded", "Failed"):
            return
        if pod.metadata.name != self.pod:  # a new pod (the first, or a restarted one): its whole log
            self.pod, self.last = pod.metadata.name, None
        window = {} if self.last is None else {"since_seconds": self.window}
        try:
            text = self.api.core.read_namespaced_pod_log(pod.metadata.name, self.ns, timestamps=True, **window)
        except ApiException as e:  # the container is not up yet (400) or the pod just went (404): next poll
            if e.status in (400, 404):
                return
            raise
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            ts = _timestamp(stamp)
            if ts is not None and self.last is not None and ts <= self.last:
                continue
            self.out(f"[{pod.metadata.name}] {line}")
            self.last = ts or self.last


def _timestamp(stamp: str) -> datetime | None:
    """Kubernetes' RFC 3339 log timestamps (nanoseconds, trailing zeros trimmed) -> datetime (microseconds)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", stamp)
    if not m:
        return None
    return datetime.fromisoformat(f"{m[1]}.{(m[2] or '0')[:6].ljust(6, '0')}+00:00")


def _state(job: dict[str, Any]) -> str:
    true = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    if not true:
        return "pending"
    c = true[-1]
    return f"{c.get('type')}" + (f" ({c['reason']})" if c.get("reason") else "")


def _unschedulable(api: Api, ns: str, name: str) -> str:
    for pod in api.core.list_namespaced_pod(ns, label_selector=f"{JOBSET_LABEL}={name}").items:
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False":
                return f"Pod {pod.metadata.name} is unschedulable: {c.message or c.reason}"
    return "No pod was created (is Kubeflow Trainer installed, and does the runtime exist?)."


def _get(api: Api, ns: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _delete(api: Api, ns: str, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        api.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                   body={"propagationPolicy": "Foreground"})
    except ApiException as e:
        if e.status != 404:
            raise


def _wait_deleted(api: Api, ns: str, name: str, poll_s: float, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _get(api, ns, name) is not None:
        if time.monotonic() > deadline:
            raise TrainJobError(f"trainjob {ns}/{name} is still being deleted after {timeout_s:.0f} s")
        time.sleep(poll_s)


@contextmanager
def _deleted_on_cancel(api: Api, ns: str, name: str, out: Callable[[str], None]) -> Iterator[None]:
    """SIGTERM (a cancelled KFP run stops the step's pod) and Ctrl-C delete the job: nothing keeps training."""
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        out(f"trainjob {ns}/{name}: cancelled; deleting it")
        _delete(api, ns, name)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _message(e: Any) -> str:
    try:
        return json.loads(e.body).get("message", "")
    except (TypeError, ValueError):
        return str(e.body or "")


def _export_uri(cfg: Config) -> str:
    from pac.storage import join, resolve_uri
    from pac.training.loop import EXPORT

    return join(resolve_uri(cfg.train.output, cfg.storage), EXPORT)
