"""MLflow tracking and model registry: params, metrics, artifacts and the servable policy.

The training loop talks to MLflow only through `Tracker`. Rank 0 constructs an active one; every other rank
gets `Tracker(cfg, active=False)`, whose methods do nothing, so the loop never branches on rank.

Tracking URI resolution (`resolve_tracking_uri`), first match wins:
    1. `tracking.uri` from the config;
    2. `$MLFLOW_TRACKING_URI` (what the cluster injects);
    3. an embedded store with no server: `sqlite:///<cwd>/outputs/mlruns/mlflow.db`, artifacts next to it in
       `outputs/mlruns/artifacts`. A database-backed store is what MLflow's model registry needs.

The trained model is logged as an MLflow *pyfunc* "model from code": the model directory holds the PAC export
(`model.safetensors` + `config.json`, see `pac.training.export`) as an artifact and a three-line entry point that
instantiates `pac.serving.PacPolicy`. Nothing is pickled; loading rebuilds the network with `load_export`, so a model
can be served by `mlflow.pyfunc.load_model` / `mlflow models serve` wherever the `pac-k8s` package is installed.

Secrets never reach MLflow: S3 and tracking credentials live in the environment only, and every param, tag and the
logged config pass through `scrub`, which masks the value of any secret-looking environment variable and the
password part of `scheme://user:password@host` URLs.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_metric  # the server's own rule, checked before queueing

from pac import __version__
from pac.config import Config, TrackingConfig
from pac.metric_queue import MetricQueue
from pac.networks import PerceiverActorCritic

# PacPolicy, PolicyInput and policy_actions live in pac.serving; models logged before the move name
# pac.tracking.PacPolicy in their entry point, so the names stay importable from here.
from pac.serving import EXPORT_ARTIFACT, PacPolicy, PolicyInput, policy_actions
from pac.training.export import CONFIG, WEIGHTS, ExportError, load_export

log = logging.getLogger(__name__)

LOCAL_STORE = Path("outputs") / "mlruns"  # embedded default, relative to the working directory
MODEL_NAME = "policy"  # name of the logged model within its run
CONFIG_ARTIFACT = "config.yaml"
MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values; the full config is in config.yaml anyway
REDACTED = "***"
# Environment variables whose values must never appear in MLflow (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD,
# *_TOKEN, ...). Short values are ignored: masking "1" or "true" everywhere would only destroy information.
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.IGNORECASE)
_MIN_SECRET_LENGTH = 6
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*@")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")  # models:/, runs:/, s3://, mlflow-artifacts:/ ...
_STATUSES = ("FINISHED", "FAILED", "KILLED")
# The model-from-code entry point written into every logged model. MLflow executes it at load time.
_ENTRY_POINT = """\
# Written by pac.tracking.Tracker.log_model: the entry point of a PAC policy logged as an MLflow model from code.
import mlflow.models

from pac.serving import PacPolicy

mlflow.models.set_model(PacPolicy())
"""


class TrackingError(RuntimeError):
    """The tracking server or registry is unusable, or a tracking call was made out of order."""


# -- URIs and secrets ---------------------------------------------------------------------------------------


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """The tracking URI a run uses: `cfg.uri`, else `$MLFLOW_TRACKING_URI`, else the embedded sqlite store.

    Relative sqlite paths are made absolute, so the URI stays valid if the process changes directory.

    Args:
        cfg: the tracking section of the config.

    Returns:
        An MLflow tracking URI (`http(s)://...`, `sqlite:////abs/path.db`, `databricks`, ...).
    """
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return "sqlite:///" + str((LOCAL_STORE / "mlflow.db").absolute())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).absolute())
    return uri


def redact_uri(uri: str) -> str:
    """`uri` with the password of any `scheme://user:password@host` part replaced by `***`."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED + "@", uri)


def scrub(text: str) -> str:
    """Mask secrets in a string bound for MLflow: URL passwords and values of secret-looking env variables."""
    text = redact_uri(text)
    for name, value in os.environ.items():
        if len(value) >= _MIN_SECRET_LENGTH and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, REDACTED)
    return text


def _scrub_tree(value: Any) -> Any:
    """`scrub` applied to every string inside nested dicts/lists (the config written as config.yaml)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_tree(v) for v in value]
    return value


def _local_artifact_root(uri: str) -> str | None:
    """Artifact location for experiments in a serverless sqlite store: `artifacts/` next to the database.

    Without it MLflow would put artifacts in `./mlruns` of whatever directory the process happens to run in.
    A tracking server decides its own artifact location (`--artifacts-destination`), so it gets None.
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


# -- the tracker --------------------------------------------------------------------------------------------


class Tracker:
    """One MLflow run of a training job: config once, metrics per step, artifacts, the final model.

    Only rank 0 should be active; an inactive tracker (or `tracking.enabled: false`) turns every method into a
    no-op, so callers need no rank checks.
    """

    def __init__(self, cfg: TrackingConfig, *, active: bool = True) -> None:
        """Resolve the tracking URI; nothing is contacted until `check` or `start`.

        Args:
            cfg: the tracking section of the config.
            active: False on every rank but 0.
        """
        self.cfg = cfg
        self.active = active and cfg.enabled
        self.uri = resolve_tracking_uri(cfg) if self.active else ""
        self._run_id: str | None = None
        self._running = False
        self._client: MlflowClient | None = None
        self._queue: MetricQueue | None = None

    @property
    def run_id(self) -> str | None:
        """The current (or last) run's id; None before `start` and when inactive."""
        return self._run_id

    @property
    def client(self) -> MlflowClient:
        """An `MlflowClient` bound to this tracker's tracking (and registry) URI, created on first use."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self._registry_uri())
        return self._client

    def _registry_uri(self) -> str:
        # MLflow's own convention: $MLFLOW_REGISTRY_URI when set, else the tracking store.
        return os.environ.get("MLFLOW_REGISTRY_URI") or self.uri

    def _where(self) -> str:
        return f"MLflow tracking URI {redact_uri(self.uri)}"

    # -- before training ------------------------------------------------------------------------------------

    def check(self) -> None:
        """Fail fast, before any training, when the tracking store cannot be used.

        Talks to the server once with `tracking.check_timeout_s` and no retries (MLflow's own client would
        retry with backoff for minutes), so a wrong URI or a stopped server is reported in seconds.

        Raises:
            TrackingError: naming the URI and what to fix.
        """
        if not self.active:
            return
        if _is_http(self.uri):
            self._check_server()
        else:
            try:
                if self.uri.startswith("sqlite:///"):
                    Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
                self.client.search_experiments(max_results=1)
            except (MlflowException, OSError) as e:
                raise TrackingError(f"cannot open the {self._where()}: {e}") from e

    def _check_server(self) -> None:
        import requests
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        timeout = self.cfg.check_timeout_s
        fix = "start the server or fix tracking.uri / $MLFLOW_TRACKING_URI"
        creds = get_default_host_creds(self.uri)
        try:
            health = http_request(creds, "/health", "GET", max_retries=0, timeout=timeout, raise_on_status=False)
            api = http_request(creds, "/api/2.0/mlflow/experiments/get-by-name", "GET", max_retries=0,
                               timeout=timeout, raise_on_status=False, params={"experiment_name": self.cfg.experiment})
            # A server that proxies artifacts (--serve-artifacts) lists its artifact store here. A broken store
            # (no boto3 in the server image, wrong S3 secret) answers 500, which the client would otherwise retry
            # for minutes at the first upload; 404 means artifacts are not proxied (clients write to S3 directly).
            artifacts = http_request(creds, "/api/2.0/mlflow-artifacts/artifacts", "GET", max_retries=0,
                                     timeout=timeout, raise_on_status=False)
        except (requests.exceptions.RequestException, MlflowException, OSError) as e:
            # The exception text carries the URL as requested; redact it in case it holds a password.
            raise TrackingError(f"the {self._where()} is unreachable within {timeout:g}s "
                                f"({type(e).__name__}: {redact_uri(str(e))[:300]}); {fix}") from None
        if health.status_code != 200:
            raise TrackingError(f"the {self._where()} answered /health with HTTP {health.status_code}: is it an "
                                f"MLflow server? {fix}")
        if api.status_code in (401, 403):
            raise TrackingError(f"the {self._where()} refused the credentials (HTTP {api.status_code}): check "
                                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN")
        if api.status_code not in (200, 404):  # 404: the experiment does not exist yet; start() creates it
            raise TrackingError(f"the {self._where()} failed an API call with HTTP {api.status_code}: "
                                f"{api.text[:300]}")
        if artifacts.status_code >= 500:
            raise TrackingError(f"the {self._where()} cannot reach its artifact store (HTTP {artifacts.status_code} "
                                f"listing proxied artifacts): check the server's --artifacts-destination, its S3 "
                                f"credentials and endpoint, and that boto3 is installed in the server image")

    # -- the run ------------------------------------------------------------------------------------------

    def start(self, config: Config, *, run_name: str, run_id: str | None = None, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> str | None:
        """Start a new run, or resume one, and make it MLflow's active run in this process.

        A new run gets `config.flat()` as params (once) and the resolved config as `config.yaml`. A resumed run
        (`run_id`) continues where it stopped: metrics append to the same history and params are not logged again
        (MLflow refuses changed values; differences are reported as a warning).

        Args:
            config: the resolved config of this training.
            run_name: display name of a new run (a resumed run keeps its name).
            run_id: resume this run instead of creating one.
            parent_run_id: link a new run under this one (finetuning under its pretraining run).
            tags: extra tags; `method` (BC / BC+Q / PAC), `preset` and `pac.version` are always set.

        Returns:
            The run id, or None when inactive.
        """
        if not self.active:
            return None
        if self._running:
            raise TrackingError(f"run {self._run_id} is still running; call end() before starting another")
        mlflow.set_tracking_uri(self.uri)  # pyfunc.log_model and the system-metrics monitor use the global URI
        all_tags = {"method": config.objective.method, "preset": config.preset, "pac.version": __version__,
                    **(tags or {})}
        all_tags = {k: scrub(str(v)) for k, v in all_tags.items()}
        params = {k: scrub(str(v))[:MAX_PARAM_LENGTH] for k, v in config.flat().items()}
        system_metrics = self.cfg.system_metrics
        run = None
        try:
            if run_id:
                previous = self._get_run(run_id)
                if parent_run_id and previous.data.tags.get("mlflow.parentRunId") != parent_run_id:
                    raise TrackingError(f"run {run_id} is not a child of {parent_run_id}; resume it without "
                                        "parent_run_id or start a new run")
                run = mlflow.start_run(run_id=run_id, tags=all_tags, log_system_metrics=system_metrics)
                changed = sorted(k for k, v in params.items() if previous.data.params.get(k, v) != v)
                if changed:
                    log.warning("resumed run %s was started with different values for %s; the run's params keep "
                                "the original values", run_id, ", ".join(changed[:10]))
            else:
                if parent_run_id:
                    self._get_run(parent_run_id)
                run = mlflow.start_run(experiment_id=self._experiment_id(), run_name=run_name,
                                       parent_run_id=parent_run_id, tags=all_tags, log_system_metrics=system_metrics)
                self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
                with tempfile.TemporaryDirectory(prefix="pac-config-") as tmp:
                    path = Path(tmp) / CONFIG_ARTIFACT
                    path.write_text(yaml.safe_dump(_scrub_tree(config.to_dict()), sort_keys=False))
                    self.client.log_artifact(run.info.run_id, str(path))
        except BaseException as e:
            if run is not None:  # do not leave a half-started run active in this process
                mlflow.end_run("FAILED")
            if isinstance(e, MlflowException):
                raise TrackingError(f"could not start the run at the {self._where()}: {e.message}") from e
            raise
        self._run_id = run.info.run_id
        self._running = True
        self._queue = MetricQueue(functools.partial(self._send_metrics, self._run_id), where=self._where(),
                                  max_pending=self.cfg.max_buffered_metrics)
        log.info("MLflow run %s (%s) at %s", self._run_id, "resumed" if run_id else "new", redact_uri(self.uri))
        return self._run_id

    def _get_run(self, run_id: str) -> Run:
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            what = "does not exist" if e.error_code == "RESOURCE_DOES_NOT_EXIST" else "could not be read"
            raise TrackingError(f"run {run_id} {what} at the {self._where()}: {e.message}") from e

    def _experiment_id(self) -> str:
        """Id of `tracking.experiment`, created on first use (serverless stores keep artifacts beside the DB)."""
        name = self.cfg.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=_local_artifact_root(self.uri))
            except MlflowException:
                # Another job created it between our lookup and create.
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"experiment {name!r} is deleted at the {self._where()}; restore it in the MLflow "
                                "UI or choose another tracking.experiment")
        return exp.experiment_id

    def _require_run(self, what: str) -> str:
        if not self._running or self._run_id is None:
            raise TrackingError(f"{what} needs a running run: call start() first")
        return self._run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at a training step.

        Training never waits on the server: the points are queued and sent by a background thread
        (`pac.metric_queue`); through an outage they are kept (up to `tracking.max_buffered_metrics`) and sent when
        the server answers again; `end` waits up to `tracking.flush_timeout_s` for the rest. `check` and `start`
        have already proved the configuration right before training began. An invalid metric name is a bug and
        raises here.

        Args:
            metrics: name -> value (Python numbers, numpy or 0-d torch scalars).
            step: the training step.
        """
        if not self.active:
            return
        self._require_run("log_metrics")
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, int(step)) for key, value in metrics.items()]
        for m in batch:  # a bad name is the caller's bug: raise here, not in the sending thread
            _validate_metric(m.key, m.value, m.timestamp, m.step)
        assert self._queue is not None
        self._queue.put(batch)

    def _send_metrics(self, run_id: str, batch: Sequence[Metric]) -> None:
        try:
            self.client.log_batch(run_id, metrics=list(batch))
        except MlflowException as e:
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise  # the queue keeps the batch and retries
            log.error("the %s refused %d metrics (%s); dropping them", self._where(), len(batch), e.message)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a directory (kept under its own name) into the run's artifacts.

        Args:
            path: local file or directory (plots, videos, reports).
            artifact_path: folder inside the run's artifacts; None for the root.
        """
        if not self.active:
            return
        run_id = self._require_run("log_artifact")
        path = Path(path)
        if path.is_dir():
            dest = f"{artifact_path.strip('/')}/{path.name}" if artifact_path else path.name
            self.client.log_artifacts(run_id, str(path), dest)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"cannot log artifact {path}: no such file or directory")

    def log_model(self, export_dir: str | Path, *, register: bool = False, alias: str | None = None) -> str:
        """Log an export directory as the run's pyfunc policy; optionally register it and set an alias.

        Args:
            export_dir: a directory written by `pac.training.export.save_export`.
            register: create a new version of `tracking.registered_model`.
            alias: point this alias (e.g. "champion") at the new version; needs `register`.

        Returns:
            The model URI: `models:/NAME@alias`, `models:/NAME/VERSION` when registered, else `models:/<model id>`.
            Empty when inactive.
        """
        if not self.active:
            return ""
        run_id = self._require_run("log_model")
        if alias and not register:
            raise ValueError(f"alias {alias!r} needs register=True: aliases point at registered versions")
        export_dir = Path(export_dir)
        for name in (CONFIG, WEIGHTS):
            if not (export_dir / name).is_file():
                raise ExportError(f"{export_dir / name} does not exist: log_model needs an export directory "
                                  "written by pac.training.export.save_export")
        active = mlflow.active_run()
        if active is None or active.info.run_id != run_id:
            raise TrackingError(f"MLflow's active run is {active.info.run_id if active else None}, not this "
                                f"tracker's run {run_id}: another run was started in this process")
        name = self.cfg.registered_model if register else None
        with tempfile.TemporaryDirectory(prefix="pac-model-") as tmp:
            entry = Path(tmp) / "pac_policy.py"
            entry.write_text(_ENTRY_POINT)
            try:
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME, python_model=str(entry), artifacts={EXPORT_ARTIFACT: str(export_dir)},
                    pip_requirements=_requirements(), registered_model_name=name,
                    metadata={"pac.version": __version__})
            except MlflowException as e:
                raise TrackingError(f"could not log the model to the {self._where()}: {e.message}") from e
        if not register:
            return info.model_uri
        version = str(info.registered_model_version)
        if alias:
            set_alias(self.cfg.registered_model, version, alias, self.cfg)
            return f"models:/{self.cfg.registered_model}@{alias}"
        return f"models:/{self.cfg.registered_model}/{version}"

    def log_datasets(self, cfg: Config) -> None:
        """Record the run's dataset versions (`data.dataset`, then `data.mix_with`) as MLflow dataset inputs, each
        with its immutable versioned URI and the sha256 of its manifest, so the run page shows what it read."""
        if not self.active:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        from pac.data.dataset import open_dataset

        run_id = self._require_run("log_datasets")
        for uri, context in [(cfg.data.dataset, "training"), *((u, "mixture") for u in cfg.data.mix_with)]:
            ds = open_dataset(uri, cfg.storage)
            source = resolve_dataset_source(scrub(ds.uri))
            name = f"{ds.manifest.name}@v{ds.ref.version:04d}"
            dataset = MetaDataset(source, name=name, digest=ds.manifest.digest[:16])
            active = mlflow.active_run()
            if active is None or active.info.run_id != run_id:
                raise TrackingError(f"MLflow's active run is not this tracker's run {run_id}")
            try:
                mlflow.log_input(dataset, context=context)
            except MlflowException as e:
                raise TrackingError(f"could not record dataset {ds.uri} at the {self._where()}: {e.message}") from e

    def describe(self, cfg: Config, steps: int, final: Mapping[str, float]) -> None:
        """The run's description (MLflow's note): what it trained, on what, and where its losses ended."""
        if not self.active:
            return
        data = ", ".join([cfg.data.dataset, *cfg.data.mix_with]) or "batches supplied by the caller"
        losses = ", ".join(f"{k} {v:.3f}" for k, v in final.items() if k in ("loss", "bc_nll", "q_loss", "eta"))
        text = (f"{cfg.objective.method} (alpha {cfg.objective.alpha}, beta {cfg.objective.beta}), preset "
                f"{cfg.preset}, {steps} steps x batch {cfg.train.global_batch_size}, trained on {data}. "
                f"Last 10% of steps: {losses or 'no metrics'}. Evaluation: see the registered version or "
                f"`pac evaluate --model runs:/{self._run_id}/{MODEL_NAME}`.")
        try:
            self.client.set_tag(self._require_run("describe"), "mlflow.note.content", scrub(text))
        except MlflowException as e:
            log.warning("could not write the run description: %s", e.message)

    def end(self, status: str = "FINISHED") -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED); safe to call twice."""
        if not self.active or not self._running:
            return
        if status not in _STATUSES:
            raise ValueError(f"unknown run status {status!r}; use one of {', '.join(_STATUSES)}")
        if self._queue is not None:
            self._queue.close(self.cfg.flush_timeout_s)
            self._queue = None
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self._run_id:
            mlflow.end_run(status)  # also stops the system-metrics monitor
        else:
            self.client.set_terminated(self._run_id, RunStatus.to_string(RunStatus.from_string(status)))
        self._running = False


def _requirements() -> list[str]:
    """pip requirements of the logged model: this package (which pins the rest) and its torch build."""
    return [f"pac-k8s=={__version__}", f"torch=={torch.__version__.split('+')[0]}"]


# -- loading and the registry ---------------------------------------------------------------------------------


def load_policy(uri: str, tracking: TrackingConfig | None = None) -> tuple[PerceiverActorCritic, Config]:
    """Load a policy network and its config from MLflow or from disk.

    Args:
        uri: `models:/NAME@alias`, `models:/NAME/VERSION`, `models:/<model id>`, `runs:/RUN_ID/policy` (or a
            `runs:/` path to a plain export logged as an artifact), any other MLflow artifact URI, or a local path
            (an export directory or a downloaded MLflow model directory).
        tracking: where to resolve MLflow URIs (`resolve_tracking_uri`); default: `$MLFLOW_TRACKING_URI`, else the
            embedded store.

    Returns:
        The network in eval mode on CPU and its resolved config.
    """
    if uri.startswith("file://") or not _SCHEME.match(uri):
        net, cfg = _load_local(Path(uri.removeprefix("file://")).expanduser(), uri)
    else:
        tracking_uri = resolve_tracking_uri(tracking or TrackingConfig())
        registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
        with tempfile.TemporaryDirectory(prefix="pac-policy-") as tmp:
            try:
                source = _artifact_location(uri, MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri))
                local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp,
                                                            tracking_uri=tracking_uri, registry_uri=registry_uri)
            except MlflowException as e:
                raise TrackingError(f"cannot fetch {uri} from MLflow tracking URI {redact_uri(tracking_uri)}: "
                                    f"{e.message}") from e
            # load_export reads the weights into memory, so the download can go away afterwards.
            net, cfg = _load_local(Path(local), uri)
    net.eval()
    return net, cfg


def _artifact_location(uri: str, client: MlflowClient) -> str:
    """A `models:/` URI as the artifact location of the logged model it names; other URIs unchanged.

    MLflow resolves `models:/NAME@alias` through the process-wide registry URI whatever registry it is given
    (`ModelsArtifactRepository._get_model_uri_infos`), so the registry is asked here, with `client`.
    """
    if not uri.startswith("models:/"):
        return uri
    ref, _, path = uri.removeprefix("models:/").strip("/").partition("/")
    version = None
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif path and path.split("/", 1)[0].isdigit():
        number, _, path = path.partition("/")
        version = client.get_model_version(ref, number)
    if version is not None:  # a registry version: its source is the logged model (or a plain artifact URI)
        if not version.source.startswith("models:/"):
            return f"{version.source.rstrip('/')}/{path}" if path else version.source
        ref = version.source.removeprefix("models:/").strip("/")
    location = client.get_logged_model(ref).artifact_location.rstrip("/")
    return f"{location}/{path}" if path else location


def _load_local(path: Path, uri: str) -> tuple[PerceiverActorCritic, Config]:
    """Load an export directory, or the export inside an MLflow pyfunc model directory."""
    if (path / CONFIG).is_file():
        return load_export(path)
    if (path / "MLmodel").is_file():
        flavor = Model.load(str(path)).flavors.get("python_function", {})
        export = flavor.get("artifacts", {}).get(EXPORT_ARTIFACT, {}).get("path")
        if export:
            return load_export(path / export)
        raise ExportError(f"{uri} is an MLflow model without a PAC export artifact ({EXPORT_ARTIFACT!r}); was it "
                          "logged by pac.tracking.Tracker.log_model?")
    raise ExportError(f"{uri} is neither a PAC export directory ({CONFIG} + {WEIGHTS}) nor an MLflow model directory")


def run_exists(run_id: str, cfg: TrackingConfig) -> bool:
    """Whether the tracking store at `cfg` holds run `run_id` (other errors, e.g. unreachable, raise)."""
    try:
        MlflowClient(tracking_uri=resolve_tracking_uri(cfg)).get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise TrackingError(f"cannot read run {run_id} at MLflow tracking URI "
                            f"{redact_uri(resolve_tracking_uri(cfg))}: {e.message}") from e
    return True


def model_version_run_id(uri: str, cfg: TrackingConfig) -> str | None:
    """The run that logged the model behind `models:/NAME@alias`, `models:/NAME/VERSION` or `models:/<model id>`."""
    tracking_uri = resolve_tracking_uri(cfg)
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    ref = uri.removeprefix("models:/").strip("/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        if "/" in ref:
            name, version = ref.split("/", 1)
            return client.get_model_version(name, version).run_id
        return client.get_logged_model(ref).source_run_id
    except MlflowException as e:
        raise TrackingError(f"cannot resolve {uri} at MLflow tracking URI {redact_uri(tracking_uri)}: "
                            f"{e.message}") from e


def set_alias(name: str, version: str, alias: str, cfg: TrackingConfig) -> None:
    """Point `alias` (e.g. "champion") of registered model `name` at `version`; moves it if it pointed elsewhere.

    Args:
        name: registered model name.
        version: model version number.
        alias: alias name; `models:/NAME@alias` then loads this version.
        cfg: where the registry is (`resolve_tracking_uri`).
    """
    uri = resolve_tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as e:
        raise TrackingError(f"could not set alias {alias!r} of model {name!r} to version {version} at MLflow "
                            f"tracking URI {redact_uri(uri)}: {e.message}") from e


__all__ = [
    "EXPORT_ARTIFACT",
    "MODEL_NAME",
    "PacPolicy",
    "PolicyInput",
    "Tracker",
    "TrackingError",
    "load_policy",
    "policy_actions",
    "redact_uri",
    "resolve_tracking_uri",
    "scrub",
    "set_alias",
]
