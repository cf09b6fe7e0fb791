"""The Kubeflow pipeline: compiled IR (committed, current, cluster settings inside), parameter validation, and the
whole pipeline run end to end on KFP's local runner (each step a subprocess, as a pod would be)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pac import image_ref
from pac.cli import main
from pac.config import ConfigError
from pac.pipelines.pac_pipeline import COMPILED, ClusterSettings, build, compile_pipeline

TINY = {  # budgets that keep the local run near a minute
    "generate": {"tasks": ["cartpole/balance", "jaco/reach_site"], "episodes_per_policy": 1, "episode_steps": 12},
    "train": {"steps": 2, "global_batch_size": 8, "micro_batch_size": 8, "checkpoint_every": 2},
    "objective": {"num_action_samples": 2},
    "eval": {"episodes": 2, "num_envs": 2, "episode_steps": 12, "video_size": 64, "videos_per_task": 1},
    "improve": {"collect_episodes": 1},
}


def _ir(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def test_the_committed_pipeline_is_current(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "p.yaml")
    stale = "stale: run `pac pipeline compile` and commit pipelines/pac_pipeline.yaml"
    assert fresh.read_text() == COMPILED.read_text(), stale


def test_every_step_runs_the_pinned_project_image_and_installs_nothing() -> None:
    spec = _ir(COMPILED)[0]
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) >= 8
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == image_ref(), name
        assert "pip install" not in " ".join(container.get("command", []) + container.get("args", [])), name


def test_cluster_settings_are_compiled_into_the_ir(tmp_path: Path) -> None:
    settings = ClusterSettings(rounds=2, s3_secret="my-s3", mlflow_secret="my-mlflow", scratch_pvc="scratch",
                               accelerator_type="nvidia.com/gpu", accelerator_limit=2,
                               node_selector={"pool": "gpu"},
                               tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                               image="registry.example/acme/pac-k8s:0.1.0")
    spec, platform = _ir(compile_pipeline(tmp_path / "p.yaml", settings))
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/acme/pac-k8s:0.1.0"}  # every step runs the cluster's registry image
    tasks = spec["root"]["dag"]["tasks"]
    assert sum(t.startswith("finetune") for t in tasks) == 2  # two rounds unrolled
    configs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    text = json.dumps(configs)
    for expected in ("my-s3", "my-mlflow", "AWS_SECRET_ACCESS_KEY", "pac-endpoints", "scratch", "/scratch"):
        assert expected in text
    envs = [ex["container"].get("env", []) for ex in spec["deploymentSpec"]["executors"].values()]
    assert all({"name": "PAC_S3_SECRET_NAME", "value": "my-s3"} in env for env in envs)  # named in credential errors
    trainers = [c for n, c in configs.items() if "pretrain" in n or "finetune" in n]
    assert trainers and all(c["nodeSelector"]["labels"] == {"pool": "gpu"} for c in trainers)
    assert all(c["tolerations"][0]["key"] == "gpu" for c in trainers)
    others = [c for n, c in configs.items() if "evaluate" in n]
    assert others and not any("nodeSelector" in c for c in others)
    resources = [ex["container"]["resources"] for n, ex in spec["deploymentSpec"]["executors"].items()
                 if "pretrain" in n]
    assert resources[0]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources[0]["accelerator"]["resourceCount"] == "2"
    # A training pod that dies is retried, and the retry resumes from the run's checkpoints
    # (tests/reliability/test_faults.py kills one and reruns it).
    retries = {name: t.get("retryPolicy", {}).get("maxRetryCount") for name, t in tasks.items()}
    assert retries["pretrain"] == settings.train_retries == 2
    assert all(n for t, n in retries.items() if t.startswith("finetune"))


def test_bad_pipeline_parameters_are_rejected_before_submission() -> None:
    from pac.cli.pipeline import pipeline_arguments

    pipeline = build()
    with pytest.raises(ConfigError, match="objective.alpha"):
        pipeline_arguments(pipeline, ["alpha=2"], {})
    with pytest.raises(ConfigError, match="train_steps: expected int, got 'many'"):
        pipeline_arguments(pipeline, ["train_steps=many"], {})
    with pytest.raises(ConfigError, match="NAME one of"):
        pipeline_arguments(pipeline, ["learning_rate=1"], {})
    with pytest.raises(ConfigError, match="train.steps is given twice"):
        pipeline_arguments(pipeline, ["train_steps=10"], {"train": {"steps": 20}})
    with pytest.raises(ConfigError, match="promotion_margin must be >= 0"):
        pipeline_arguments(pipeline, ["promotion_margin=-1"], {})
    assert pipeline_arguments(pipeline, ["train_steps=10", "generate_data=false"], {})["generate_data"] is False


def test_the_local_pipeline_run_leaves_data_runs_reports_and_a_champion(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["pipeline", "run", "--local", "--output", str(out), "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "| 1 | challenger, champion | promoted |" in printed and "mlflow ui --backend-store-uri" in printed

    assert (out / "store" / "behaviour" / "v0001" / "manifest.json").is_file()
    assert (out / "store" / "behaviour-collected" / "v0001" / "manifest.json").is_file()
    run_dirs = {p.name for p in (out / "runs").glob("*/*")}
    assert run_dirs == {"pretrain", "round1"}
    assert all(any(p.glob("checkpoints/step_*")) for p in (out / "runs").glob("*/*"))
    reports = list((out / "kfp").glob("*/evaluate*/report"))
    assert len(reports) == 2 and all("data:image/png;base64," in r.read_text() for r in reports)

    import mlflow
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{out / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.run_name for r in runs} >= {"pretrain"}
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId")]) >= 1  # the finetune is a child run
    pretrain = next(r for r in runs if r.info.run_name == "pretrain")  # its page: datasets and a description
    (used,) = pretrain.inputs.dataset_inputs
    assert used.dataset.name == "behaviour@v0001" and len(used.dataset.digest) == 16
    assert "trained on" in pretrain.data.tags["mlflow.note.content"]
    version = client.get_model_version_by_alias("pac-policy", "champion")
    assert version.tags["pac.decision"] == "promoted" and version.tags["pac.dataset"].endswith("behaviour@v0001")
    assert "cartpole/balance" in version.description
    attached = {f.path for f in client.list_artifacts(version.run_id, "evaluation")}
    assert {"evaluation/report.json", "evaluation/results.md", "evaluation/scores.png"} <= attached
    videos = [f.path for f in client.list_artifacts(version.run_id, "evaluation/videos")]
    assert videos and all(v.endswith(".mp4") for v in videos)  # the reviewer watches the version's rollouts
    mlflow.set_tracking_uri(None)

    # A reviewer moves the alias by hand and takes it back, each with a recorded reason.
    store = ["--tracking.uri", tracking_uri]
    assert main(["registry", "rollback", "--reason", "nothing to go back to", *store]) == 1
    assert "records no previous champion" in capsys.readouterr().err
    assert main(["registry", "promote", "1", "--reason", "re-reviewed", *store]) == 0
    assert main(["registry", "list", *store]) == 0
    assert "manual-promote" in capsys.readouterr().out


def test_local_runs_started_in_the_same_second_get_directories_of_their_own(tmp_path: Path) -> None:
    import threading

    from pac.cli.pipeline import new_run_dir

    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(new_run_dir(tmp_path, "20261206-101010"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 6 and all(p.is_dir() and p.parent == tmp_path for p in got)
