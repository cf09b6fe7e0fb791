"""The KFP v2 components: one per pipeline step, each a thin shim over one `pac` command.

Each is a lightweight component whose image is the project image tagged with the package version
(`pac.image_ref`), with nothing pip-installed at run time. A component takes a JSON mapping of config
overrides (the preset among them; the library's typed config validates it) and object-store URIs; it emits
KFP artifacts whose metadata carry the object-store URI and version, so the Kubeflow UI shows lineage:

    ingest   -> Dataset (uri, version, digest)           pac data generate | resolve an existing version
    pretrain -> Model (uri, run_id)                      pac train
    evaluate -> Metrics, HTML report, report.json        pac evaluate
    collect  -> Dataset                                  pac collect
    finetune -> Model                                    pac finetune
    register -> Model (registered name, version)         pac registry register
    promote  -> Markdown decision                        pac registry gate

The function bodies run inside the container: their imports are local, as KFP requires, and this module has
no `from __future__ import annotations` (KFP reads the artifact types from the live annotations).
"""


import os

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output
from pac import image_ref

# The registry the image is pushed to (`PAC_IMAGE_REGISTRY` at compile time, e.g. ghcr.io/acme); the tag is
# always the package version.
IMAGE = image_ref(os.environ.get("PAC_IMAGE_REGISTRY", ""))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(overrides: str, dataset: str, generate: bool, out: Output[Dataset]) -> None:
    """Generate behaviour data into a new version of `dataset`, or resolve an existing one (`NAME@latest`)."""
    import tempfile
    from pathlib import Path

    from pac.components.runtime import run_pac
    from pac.workflow import dataset_metadata

    uri = dataset
    if generate:
        uri_file = Path(tempfile.mkdtemp()) / "uri"
        run_pac(["data", "generate", "--dataset", dataset, "--uri-file", str(uri_file), "--no-progress"], overrides)
        uri = uri_file.read_text().strip()
    # The data stays in the object store; the artifact records which immutable version this run used.
    out.metadata.update(dataset_metadata(uri, overrides))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(overrides: str, dataset: Input[Dataset], output: str, model: Output[Model]) -> None:
    """Train on the dataset version; the Model artifact names the export and the MLflow run."""
    import tempfile
    from pathlib import Path

    from pac.components.runtime import read_json, run_pac

    result = Path(tempfile.mkdtemp()) / "result.json"
    run_pac(["train", "--data.dataset", dataset.metadata["uri"], "--train.output", output,
             "--result-file", str(result)], overrides)
    model.metadata.update(read_json(result))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(overrides: str, model: Input[Model], metrics: Output[Metrics], report: Output[HTML],
             evaluation: Output[Artifact]) -> float:
    """Batched MuJoCo rollouts of the model; returns its mean normalised score. `evaluation` is the whole
    output directory (report.json, results.md, scores.png, videos/): the register step attaches it."""
    import shutil
    import tempfile
    from pathlib import Path

    from pac.components.runtime import read_json, run_pac
    from pac.evaluation import html_report

    out = Path(tempfile.mkdtemp()) / "eval"
    run_pac(["evaluate", "--model", model.metadata["uri"], "--output", str(out), "--no-progress"], overrides)
    data = read_json(out / "report.json")
    for task, r in data["tasks"].items():
        metrics.log_metric(f"{task}/normalized_score", r["normalized_score"])
        metrics.log_metric(f"{task}/return_mean", r["return_mean"])
        if r["success_rate"] is not None:
            metrics.log_metric(f"{task}/success_rate", r["success_rate"])
    score = float(data["summary"]["normalized_score_mean"])
    metrics.log_metric("normalized_score_mean", score)
    Path(report.path).write_text(html_report(out))
    shutil.copytree(out, evaluation.path)
    return score


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def collect(overrides: str, model: Input[Model], dataset: str, append: bool,
            out: Output[Dataset]) -> None:
    """The model gathers episodes on the robot task(s); they become the next version of `dataset`."""
    import tempfile
    from pathlib import Path

    from pac.components.runtime import run_pac
    from pac.workflow import dataset_metadata

    uri_file = Path(tempfile.mkdtemp()) / "uri"
    run_pac(["collect", "--model", model.metadata["uri"], "--dataset", dataset, "--uri-file", str(uri_file),
             "--no-progress", *(["--append"] if append else [])], overrides)
    out.metadata.update(dataset_metadata(uri_file.read_text().strip(), overrides))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(overrides: str, model: Input[Model], dataset: Input[Dataset], collected: Input[Dataset],
             output: str, out: Output[Model]) -> None:
    """RL finetuning of the model on the original data mixed with the collected episodes (one round's config:
    `pac.workflow.round_config`)."""
    import tempfile
    from pathlib import Path

    from pac.components.runtime import read_json, run_pac
    from pac.workflow import round_overrides

    result = Path(tempfile.mkdtemp()) / "result.json"
    run_pac(["finetune", "--model", model.metadata["uri"], "--result-file", str(result)],
            round_overrides(overrides, dataset.metadata["uri"], collected.metadata["uri"], output))
    out.metadata.update(read_json(result))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(overrides: str, model: Input[Model], dataset: Input[Dataset], evaluation: Input[Artifact],
             registered_model: str, pipeline_run: str, out: Output[Model]) -> str:
    """Register the model version with its lineage tags and evaluation table; alias `challenger`."""
    import tempfile
    from pathlib import Path

    from pac.components.runtime import read_json, run_pac

    result = Path(tempfile.mkdtemp()) / "result.json"
    run_pac(["registry", "register", "--run-id", model.metadata["run_id"], "--report", f"{evaluation.path}/report.json",
             "--dataset", dataset.metadata["uri"], "--name", registered_model, "--pipeline-run", pipeline_run,
             "--result-file", str(result)], overrides)
    data = read_json(result)
    out.metadata.update(data)
    return data["uri"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(overrides: str, challenger: Input[Model], margin: float, decision: Output[Markdown]) -> bool:
    """Re-evaluate the champion on the challenger's episodes; move `champion` only if the gate passes."""
    import tempfile
    from pathlib import Path

    from pac.components.runtime import read_json, run_pac

    out = Path(tempfile.mkdtemp())
    run_pac(["registry", "gate", "--name", challenger.metadata["name"], "--version", challenger.metadata["version"],
             "--margin", str(margin), "--output", str(out), "--no-progress"], overrides)
    Path(decision.path).write_text((out / "decision.md").read_text())
    return bool(read_json(out / "decision.json")["promote"])
