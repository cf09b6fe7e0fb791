"""The kustomize manifests, built by the real kubectl binary: every overlay renders; standard objects pass strict
Kubernetes schemas; TrainJob/TrainingRuntime validate against Kubeflow Trainer's API models and the PyTorchJob
against the Training Operator's (each model drops what it does not know, so a lossless round trip means every
field is real); the training pods are restricted; the configs they run are valid pac configs; nothing is defined
both here and in the helm chart."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubeflow_trainer_api.models as trainer
import kubernetes_validate
import pac
import pytest
import yaml
from kubeflow.training import ApiClient
from pac.cluster import trainjob
from pac.config import Config

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["base", "overlays/gpu", "overlays/pytorchjob"]
CRDS = {"TrainJob", "TrainingRuntime", "PyTorchJob"}


@pytest.fixture(scope="module")
def rendered(k8s_tool) -> dict[str, list[dict[str, Any]]]:
    return {o: [d for d in yaml.safe_load_all(k8s_tool("kubectl", "kustomize", str(ROOT / "manifests" / o)).stdout)
                if d] for o in OVERLAYS}


def round_trip(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "PyTorchJob":
        client = ApiClient()
        return client.sanitize_for_serialization(client._ApiClient__deserialize(obj, "KubeflowOrgV1PyTorchJob"))
    model = {"TrainJob": trainer.TrainerV1alpha1TrainJob, "TrainingRuntime": trainer.TrainerV1alpha1TrainingRuntime}
    return model[obj["kind"]].from_dict(obj).to_dict()


def pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "TrainingRuntime":
        return [j["template"]["spec"]["template"]["spec"] for j in obj["spec"]["template"]["spec"]["replicatedJobs"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_validates(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    assert {o["kind"] for o in objs} & CRDS
    for obj in objs:
        if obj["kind"] in CRDS:
            assert round_trip(obj) == obj, f"{obj['kind']} has fields its API does not define"
        else:
            kubernetes_validate.validate(obj, "1.34.0", strict=True)
        assert obj["metadata"].get("namespace", "pac") == "pac" or obj["kind"] == "Namespace"


def test_the_round_trip_check_catches_an_unknown_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in ("base", "overlays/pytorchjob"):
        job = copy.deepcopy(next(o for o in rendered[overlay] if o["kind"] in ("TrainJob", "PyTorchJob")))
        job["spec"]["numNodez"] = 2
        assert round_trip(job) != job


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_training_pods_are_restricted_and_run_the_project_image(rendered: dict[str, list[dict[str, Any]]],
                                                                overlay: str) -> None:
    specs = [p for o in rendered[overlay] for p in pods(o)]
    assert specs
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] and spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            assert c["image"] == pac.image_ref()
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["command"] == ["torchrun"] and c["args"][:3] == ["-m", "pac.cli", "train"]
            assert all("value" not in e for e in c["env"]
                       if ("SECRET" in e["name"] or "ACCESS_KEY" in e["name"]) and not e["name"].endswith("_NAME"))


def test_the_gpu_overlay_asks_for_gpus_on_gpu_nodes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = next(o for o in rendered["overlays/gpu"] if o["kind"] == "TrainJob")
    assert job["spec"]["trainer"]["numProcPerNode"] == 8
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    (spec,) = pods(next(o for o in rendered["overlays/gpu"] if o["kind"] == "TrainingRuntime"))
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu" and spec["nodeSelector"]
    config = next(o for o in rendered["overlays/gpu"] if o["kind"] == "ConfigMap")
    assert Config.from_dict(yaml.safe_load(config["data"]["train.yaml"])).cluster.gpus_per_node == 8


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_jobs_train_a_valid_config_that_resumes_from_s3(rendered: dict[str, list[dict[str, Any]]],
                                                           overlay: str) -> None:
    config = next(o for o in rendered[overlay] if o["kind"] == "ConfigMap" and o["metadata"]["name"] ==
                  "pac-train-config")
    cfg = Config.from_dict(yaml.safe_load(config["data"]["train.yaml"]))
    assert cfg.train.output.startswith("s3://") and cfg.data.dataset.startswith("s3://")
    assert cfg.cluster.nodes > 1


def test_pac_submits_the_same_job_the_manifest_describes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    manifest = next(o for o in rendered["base"] if o["kind"] == "TrainJob")
    runtime = next(o for o in rendered["base"] if o["kind"] == "TrainingRuntime")
    config = next(o for o in rendered["base"] if o["kind"] == "ConfigMap")
    cfg = Config.from_dict(yaml.safe_load(config["data"]["train.yaml"]))
    submitted = trainjob(cfg)
    assert submitted["spec"]["runtimeRef"] == manifest["spec"]["runtimeRef"]
    assert submitted["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
    for key in ("numNodes", "numProcPerNode", "resourcesPerNode"):
        assert submitted["spec"]["trainer"][key] == manifest["spec"]["trainer"][key], key


def test_the_pytorchjob_pods_match_the_trainer_runtimes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (runtime_pod,) = pods(next(o for o in rendered["base"] if o["kind"] == "TrainingRuntime"))
    job = next(o for o in rendered["overlays/pytorchjob"] if o["kind"] == "PyTorchJob")
    base_job = next(o for o in rendered["base"] if o["kind"] == "TrainJob")
    for pod in pods(job):
        pod = copy.deepcopy(pod)
        container = pod["containers"][0]
        assert container.pop("name") == "pytorch"  # the operator finds its container by this name
        assert container.pop("resources") == base_job["spec"]["trainer"]["resourcesPerNode"]
        expected = copy.deepcopy(runtime_pod)
        expected["containers"][0].pop("name")
        assert pod == expected


def test_nothing_is_defined_both_here_and_in_the_chart(rendered: dict[str, list[dict[str, Any]]], k8s_tool) -> None:
    chart = [d for d in yaml.safe_load_all(k8s_tool("helm", "template", "pac", str(ROOT / "helm" / "pac"),
                                                    "--namespace", "pac").stdout) if d]
    ours = {(o["kind"], o["metadata"]["name"]) for objs in rendered.values() for o in objs}
    theirs = {(o["kind"], o["metadata"]["name"]) for o in chart}
    assert not ours & theirs
    # ... and what the manifests take from the chart exists there under the names they use
    assert {("Secret", "pac-s3"), ("ConfigMap", "pac-endpoints")} <= theirs
