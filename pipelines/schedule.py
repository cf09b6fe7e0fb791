"""Scheduled retraining on a Kubeflow Pipelines server: upload the pipeline (a new version when it changed), and
create or replace the recurring run of that name, so scheduling the same name twice never duplicates it.

A scheduled run starts with the `dataset` parameter as given; `NAME@latest` (or a bare name) is resolved to the
newest version by the ingest step when the run starts, and recorded in its Dataset artifact and model tags.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from pac import __version__


def schedule(host: str, pipeline: Any, arguments: dict[str, Any], *, name: str, cron: str, max_concurrency: int,
             experiment: str, client: Any = None) -> str:
    """Create or update (by `name`) the recurring run of `pipeline` with `arguments`; returns its id.

    Args:
        host: the KFP API endpoint.
        pipeline: the `@dsl.pipeline` function (`pac.pipelines.pac_pipeline.build(...)`).
        arguments: pipeline parameters (validated by `pac.cli.pipeline.pipeline_arguments`).
        name: the recurring run's name: the key an update replaces.
        cron: KFP cron expression (six fields, seconds first).
        max_concurrency: runs of this schedule allowed at once.
        experiment: the KFP experiment the runs belong to.
        client: a `kfp.Client` (default: one for `host`).
    """
    import kfp
    from kfp import compiler

    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    if len(cron.split()) not in (5, 6):
        raise ValueError(f"cron {cron!r}: expected 5 or 6 space-separated fields (KFP takes seconds first)")
    client = client or kfp.Client(host=host)
    with tempfile.TemporaryDirectory(prefix="pac-pipeline-") as tmp:
        package = Path(tmp) / "pac_pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(package))
        digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
        pipeline_name = pipeline.name
        pipeline_id = client.get_pipeline_id(pipeline_name)
        version_name = f"{pipeline_name}-{__version__}-{digest}"  # same content: same version, reused
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(str(package), pipeline_name=pipeline_name).pipeline_id
        version_id = _version_id(client, pipeline_id, version_name)
        if version_id is None:
            version_id = client.upload_pipeline_version(str(package), version_name,
                                                        pipeline_id=pipeline_id).pipeline_version_id
    experiment_id = client.create_experiment(experiment).experiment_id
    for existing in client.list_recurring_runs(experiment_id=experiment_id, page_size=100).recurring_runs or []:
        if existing.display_name == name:  # KFP has no update: replace it, keeping the name
            client.delete_recurring_run(existing.recurring_run_id)
    run = client.create_recurring_run(experiment_id, name, cron_expression=cron, max_concurrency=max_concurrency,
                                      params=arguments, pipeline_id=pipeline_id, version_id=version_id)
    return run.recurring_run_id


def _version_id(client: Any, pipeline_id: str, version_name: str) -> str | None:
    versions = client.list_pipeline_versions(pipeline_id, page_size=100).pipeline_versions or []
    return next((v.pipeline_version_id for v in versions if v.display_name == version_name), None)
