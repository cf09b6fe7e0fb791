"""No credential reaches what a pipeline run leaves behind (issue 19): the whole pipeline on KFP's local runner
against the real S3 server and the real `mlflow server`, credentials only in the environment (as the chart's
Secrets provide them), then every console line, every file of the run directory (executor inputs and outputs,
reports), every MLflow param and tag, the registry's version tags and the compiled IR are searched for them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from pac.cli import main
from pac.pipelines.pac_pipeline import COMPILED

from tests.pipelines.test_pipeline import TINY

if TYPE_CHECKING:
    from conftest import MlflowServer, S3Server


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.mlflow
def test_no_credential_reaches_logs_files_tracking_or_the_ir(
        s3_bucket: str, s3_env: S3Server, mlflow_server: MlflowServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    unique = uuid.uuid4().hex[:8]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, "storage": {"root": f"{s3_bucket}/pac", "endpoint": s3_env.endpoint,
                                                          "secure": False},
                                      "tracking": {"experiment": f"secrets-{unique}"}}))
    out = tmp_path / "run"
    assert main(["pipeline", "run", "--local", "--stores", "configured", "--config", str(config), "--output",
                 str(out), "--param", f"registered_model=secrets-{unique}"]) == 0
    console = capfd.readouterr()

    texts = {"console": console.out + console.err, "ir": COMPILED.read_text()}
    for path in out.rglob("*"):
        if path.is_file():
            texts[str(path.relative_to(out))] = path.read_bytes().decode("utf-8", errors="replace")
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(f"secrets-{unique}")
    runs = client.search_runs([experiment.experiment_id])
    assert runs, "the pipeline logged no run"
    texts["mlflow runs"] = json.dumps([[r.data.params, r.data.tags, r.info.artifact_uri] for r in runs])
    versions = client.search_model_versions(f"name='secrets-{unique}'")
    assert versions, "the pipeline registered no version"
    texts["registry"] = json.dumps([[v.tags, v.description, v.source] for v in versions])
    mlflow.set_tracking_uri(None)

    assert len(texts) > 10  # the run directory was searched, not skipped
    for secret in (s3_env.secret_key, s3_env.access_key):
        leaked = [where for where, text in texts.items() if secret in text]
        assert not leaked, f"{secret!r} appears in {leaked}"
