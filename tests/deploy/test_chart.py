"""The helm chart, rendered by the real helm binary: lint, strict Kubernetes schemas, pod security, RBAC, secrets,
and the `pac` command lines it runs (parsed by pac's own CLI). No cluster exists here (none can run), so
`helm install` itself is not exercised; everything it would apply is."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "pac"
K8S_VERSION = "1.34.0"  # a current Kubernetes minor for strict schema validation
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES = [pytest.param(None, id="defaults"), *(pytest.param(v, id=v.stem) for v in VALUES)]
WORKLOADS = {"Deployment", "Job", "CronJob", "Pod"}


@pytest.fixture(autouse=True)
def _helm(k8s_tool) -> None:
    global _run
    _run = k8s_tool


def helm(*args: str, check: bool = True):
    return _run("helm", *args, check=check)


def render(*values: Path, sets: tuple[str, ...] = ()) -> list[dict]:
    """`helm template` of the chart (release "t", namespace "ml") -> the rendered objects."""
    args = ["template", "t", str(CHART), "--namespace", "ml"]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def objects(values: Path | None) -> list[dict]:
    return render(*([values] if values else []))


def test_at_least_five_values_files_cover_the_documented_modes() -> None:
    assert len(VALUES) >= 5
    rendered = {v.stem: objects(v) for v in VALUES}
    kinds = {name: {o["kind"] for o in objs} for name, objs in rendered.items()}
    assert "CronJob" in kinds["cronjob-values"]
    assert not any(o["kind"] == "Job" and "pipeline-upload" in o["metadata"]["name"]
                   for o in rendered["no-schedule-values"])
    assert "StatefulSet" not in kinds["external-s3-database-values"]
    assert not any("minio" in o["metadata"]["name"] for o in rendered["external-s3-database-values"])


@pytest.mark.parametrize("values", CASES)
def test_lints_and_every_object_passes_strict_schema_validation(values: Path | None) -> None:
    lint = helm("lint", str(CHART), *(["-f", str(values)] if values else []), "--strict")
    assert "0 chart(s) failed" in lint.stdout
    for obj in objects(values):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values", CASES)
def test_every_workload_meets_the_restricted_pod_security_profile(values: Path | None) -> None:
    workloads = [o for o in objects(values) if o["kind"] in WORKLOADS]
    assert workloads
    for obj in workloads:
        spec, name = pod_spec(obj), f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], name
            assert not sc.get("privileged"), name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            # Only the in-pod training of the CronJob keeps a writable root (DeepSpeed's op cache).
            assert sc["readOnlyRootFilesystem"] is (obj["kind"] != "CronJob"), name


@pytest.mark.parametrize("values", CASES)
def test_no_secret_value_outside_a_secret(values: Path | None) -> None:
    objs = objects(values)
    generated = [v for o in objs if o["kind"] == "Secret" for v in o["data"].values()]
    text_elsewhere = yaml.safe_dump([o for o in objs if o["kind"] != "Secret"])
    for value in generated:
        assert value not in text_elsewhere
    for obj in objs:
        if obj["kind"] == "ConfigMap":
            assert not any(w in k.upper() for k in obj["data"] for w in ("SECRET", "PASSWORD", "TOKEN", "KEY_ID"))
        if obj["kind"] in WORKLOADS:
            for c in pod_spec(obj)["containers"]:
                for env in c.get("env", []):
                    secret = any(w in env["name"] for w in ("SECRET", "PASSWORD", "ACCESS_KEY")) and \
                        env["name"] != "PAC_S3_SECRET_NAME"  # a Secret's name, for error messages
                    # a database URI holds its password: it must come from a Secret; a sqlite path may not
                    database = env["name"] == "MLFLOW_BACKEND_STORE_URI" and not env.get("value", "").startswith(
                        "sqlite:")
                    if secret or database:
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]


def test_generated_credentials_are_random_and_only_in_their_secret() -> None:
    first, second = (next(o for o in render() if o["kind"] == "Secret") for _ in range(2))
    assert set(first["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert first["data"] != second["data"]  # generated per install (kept on upgrade through `lookup`)


def test_an_existing_secret_replaces_the_generated_one_everywhere() -> None:
    objs = render(CHART / "ci" / "minio-existing-secret-values.yaml")
    assert not any(o["kind"] == "Secret" for o in objs)
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for o in objs if o["kind"] in WORKLOADS
            for c in pod_spec(o)["containers"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"pac-s3-managed"}


def test_the_role_grants_exactly_the_training_job_verbs() -> None:
    role = next(o for o in render() if o["kind"] == "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    jobs = {(g, r, v) for g, r in (("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs"))
            for v in ("create", "get", "list", "watch", "delete")}
    pods = {("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")}
    assert granted == jobs | pods
    binding = next(o for o in render() if o["kind"] == "RoleBinding")
    assert {s["name"] for s in binding["subjects"]} == {"t-pac", "default-editor"}
    assert {s["namespace"] for s in binding["subjects"]} == {"ml"}


def test_network_policies_admit_only_this_namespace_and_the_listed_ones() -> None:
    policies = [o for o in render(CHART / "ci" / "minio-existing-secret-values.yaml") if o["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["name"] for p in policies} == {"t-pac-mlflow", "t-pac-minio"}
    for p in policies:
        sources = p["spec"]["ingress"][0]["from"]
        assert sources[0] == {"podSelector": {}}
        assert sources[1]["namespaceSelector"]["matchExpressions"][0]["values"] == ["kubeflow"]


def test_config_changes_roll_the_mlflow_pods() -> None:
    def checksum(objs: list[dict]) -> str:
        dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "t-pac-mlflow")
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(render()) == checksum(render())
    assert checksum(render()) != checksum(render(sets=("s3.bucket=other-bucket",)))


@pytest.mark.parametrize(("setting", "named"), [
    ("s3.mode=gcs", "/s3/mode"),
    ("mlflow.workers=0", "/mlflow/workers"),
    ("schedule.cron=every monday", "/schedule/cron"),
    ("s3.bucket=Not_A_Bucket", "/s3/bucket"),
    ("mlflow.colour=blue", "'colour' not allowed"),
    ("pipeline.parameters.learning_rate=1", "'learning_rate' not allowed"),
    ("pipeline.parameters.zero_stage=4", "/pipeline/parameters/zero_stage"),
    ("s3.minio.resources.limits=null", "/s3/minio/resources"),
])
def test_bad_values_are_rejected_by_the_schema_naming_the_value(setting: str, named: str) -> None:
    result = helm("template", "t", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


@pytest.mark.parametrize(("settings", "named"), [
    (("s3.mode=external", "s3.endpoint=https://s3.example.com"), "s3.existingSecret is required"),
    (("s3.mode=external", "s3.existingSecret=x"), "s3.endpoint is required"),
    (("mlflow.backendStore.type=database",), "mlflow.backendStore.database.existingSecret is required"),
    (("mlflow.replicas=2",), "mlflow.replicas must be 1"),
    (("s3.endpoint=https://s3.example.com",), "s3.endpoint is for s3.mode=external"),
])
def test_inconsistent_values_fail_a_guard_naming_the_value(settings: tuple[str, ...], named: str) -> None:
    args = ["template", "t", str(CHART)]
    for s in settings:
        args += ["--set", s]
    result = helm(*args, check=False)
    assert result.returncode != 0 and named in result.stderr, result.stderr


@pytest.mark.parametrize("values", CASES)
def test_the_commands_the_chart_runs_are_valid_pac_command_lines(values: Path | None, tmp_path: Path) -> None:
    """Every container running the project image runs a command pac's own parser accepts, with the mounted
    config and settings files as pac reads them."""
    from pac.cli import build_parser
    from pac.config import Config, read_overrides
    from pac.pipelines.pac_pipeline import settings_from_file

    objs = objects(values)
    files = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "t-pac-pipeline")["data"]
    (tmp_path / "settings.yaml").write_text(files["settings.yaml"])
    (tmp_path / "config.yaml").write_text(files["config.yaml"])
    settings = settings_from_file(str(tmp_path / "settings.yaml"))
    assert settings.config_map == "t-pac-endpoints"
    overrides = read_overrides(str(tmp_path / "config.yaml"))
    cfg = Config.from_dict(overrides)
    assert cfg.storage.root.startswith("s3://")
    image = next(o for o in objs if o["kind"] == "Deployment" and "mlflow" in o["metadata"]["name"])
    image = pod_spec(image)["containers"][0]["image"]
    assert settings.image == cfg.cluster.image == image  # pipeline steps and TrainJobs run the chart's image
    parser = build_parser()
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        for c in pod_spec(obj)["containers"]:
            if "pac-k8s:" not in c["image"] or c.get("command") == ["mlflow"]:
                continue  # MinIO's image; the MLflow server (the project image's `mlflow`)
            argv = [a.replace("/etc/pac", str(tmp_path)) for a in c["args"]]
            args = parser.parse_args(argv)
            assert callable(args.func), argv


def test_kfp_schedule_gets_a_seconds_field_and_the_cronjob_the_plain_cron() -> None:
    upload = next(o for o in render() if o["metadata"]["name"] == "t-pac-pipeline-upload")
    args = pod_spec(upload)["containers"][0]["args"]
    assert args[args.index("--cron") + 1] == "0 0 3 * * 1"
    cron = next(o for o in render(CHART / "ci" / "cronjob-values.yaml") if o["kind"] == "CronJob")
    assert cron["spec"]["schedule"] == "30 2 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_values_schema_is_strict_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict, path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}")

    walk(schema, "values")


def test_every_value_is_documented() -> None:
    """helm-docs convention: every key has a comment block right above it, unless it only opens a section; a
    documented key covers the keys nested under it (resource maps are one value)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    covered_below: int | None = None  # indent of a documented key whose children need no comment of their own
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if covered_below is not None and indent > covered_below:
            continue
        covered_below = None
        documented = lines[i - 1].lstrip().startswith("#")
        opens_section = line.rstrip().endswith(":") and i + 1 < len(lines) and \
            len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
        assert documented or opens_section, f"values.yaml:{i + 1} {line.strip()!r} is undocumented"
        if documented:
            covered_below = indent
