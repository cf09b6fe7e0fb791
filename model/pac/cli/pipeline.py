"""`pac pipeline`: compile the Kubeflow pipeline, run it locally, or schedule it on a Kubeflow Pipelines server.

    pac pipeline compile                                   writes pipelines/pac_pipeline.yaml (upload it in the UI)
    pac pipeline compile --settings cluster.yaml -o my.yaml   secrets, PVC, GPUs, node selectors of your cluster
    pac pipeline run --local                               the same pipeline on this machine, embedded defaults
    pac pipeline run --local --stores configured --config cluster.yaml   in one pod against the cluster's S3 + MLflow
    pac pipeline schedule --host http://ml-pipeline:8888 --cron "0 3 * * 1" --param train_steps=2000

The local run uses KFP's own local runner (each step a subprocess, as a pod would be), a local directory as the
object store and a local MLflow store, with the budgets of the shipped `demo` recipe unless --config says
otherwise; it prints where the evaluation report, the registered model and the MLflow UI are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from pac.config import ConfigError, merge, parse_overrides, pipeline_overrides, read_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="compile, run locally or schedule the Kubeflow pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

    q = cmds.add_parser("compile", help="write the pipeline's IR YAML")
    q.add_argument("--output", "-o", help="where to write it (default: the committed pipelines/pac_pipeline.yaml)")
    _settings_flags(q)
    q.set_defaults(func=run_compile)

    q = cmds.add_parser("run", help="run the pipeline; --local runs it here with KFP's local runner")
    q.add_argument("--local", action="store_true", required=True,
                   help="run on this machine (submitting to a cluster: upload the compiled YAML or `schedule`)")
    q.add_argument("--output", help="run directory (default: outputs/pipeline/<timestamp>)")
    q.add_argument("--config", default="demo", metavar="FILE|RECIPE",
                   help="config overrides for every step (default: the shipped demo recipe, ~9 min on 2 CPU cores)")
    q.add_argument("--stores", choices=("embedded", "configured"), default="embedded",
                   help="embedded: a local object store and MLflow store in the run directory; configured: "
                        "storage.root from --config and $MLFLOW_TRACKING_URI (the helm chart's CronJob)")
    _param_flags(q)
    _settings_flags(q)
    q.set_defaults(func=run_local)

    q = cmds.add_parser("schedule", help="create or update (by name) a recurring run on a Kubeflow Pipelines server")
    q.add_argument("--host", required=True, help="the KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    q.add_argument("--name", default="pac-retraining", help="recurring run name (the update key)")
    q.add_argument("--cron", required=True, help='cron expression with seconds, e.g. "0 0 3 * * 1" (KFP format)')
    q.add_argument("--max-concurrency", type=int, default=1)
    q.add_argument("--experiment", default="pac")
    q.add_argument("--config", metavar="FILE|RECIPE", help="config overrides for every step")
    _param_flags(q)
    _settings_flags(q)
    q.set_defaults(func=run_schedule)


def _settings_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument("--settings", metavar="FILE", help="cluster settings YAML (pac.pipelines.pac_pipeline."
                                                      "ClusterSettings: secrets, PVC, accelerators, rounds)")
    q.add_argument("--rounds", type=int, help="self-improvement rounds compiled into the pipeline (default 1)")


def _param_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a pipeline parameter (preset, dataset, tasks, train_steps, alpha, zero_stage, nodes, "
                        "gpus_per_node, registered_model, promotion_margin, output_root); repeatable")


def _settings(args: argparse.Namespace) -> Any:
    from pac.pipelines.pac_pipeline import ClusterSettings, settings_from_file

    s = settings_from_file(args.settings) if args.settings else ClusterSettings()
    if args.rounds is not None:
        s = dataclasses.replace(s, rounds=args.rounds)
    return s


def pipeline_arguments(pipeline: Any, params: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's arguments from NAME=VALUE strings (typed by the pipeline's signature) and overrides,
    validated as the first step would validate them, so a bad value fails before anything is submitted."""
    import inspect

    signature = inspect.signature(pipeline.pipeline_func)
    args: dict[str, Any] = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or name not in signature.parameters:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE with NAME one of "
                              f"{', '.join(signature.parameters)}")
        kind = type(signature.parameters[name].default)
        try:
            args[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError as e:
            raise ConfigError(f"pipeline parameter {name}: expected {kind.__name__}, got {value!r}") from e
    args["overrides"] = json.dumps(merge(parse_overrides(args.get("overrides", "")), overrides))
    full = {n: p.default for n, p in signature.parameters.items()} | args
    pipeline_overrides(**{k: full[k] for k in ("preset", "tasks", "train_steps", "alpha", "zero_stage", "nodes",
                                                "gpus_per_node", "overrides")})
    if full["promotion_margin"] < 0:
        raise ConfigError(f"pipeline parameter promotion_margin must be >= 0, got {full['promotion_margin']}")
    return args


def _overrides(config: str | None) -> dict[str, Any]:
    from pac.cli.common import config_file

    return read_overrides(config_file(config)) if config else {}


def run_compile(args: argparse.Namespace) -> int:
    from pac.pipelines.pac_pipeline import COMPILED, compile_pipeline

    path = compile_pipeline(args.output or COMPILED, _settings(args))
    print(f"wrote {path}: upload it in the Kubeflow Pipelines UI, or `pac pipeline schedule`")
    return 0


def new_run_dir(base: Path, stamp: str) -> Path:
    """A directory of its own for one run: `base/<stamp>`, or `<stamp>-2`, `-3`, ... when runs started in the same
    second (created atomically, so two concurrent runs never share one)."""
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        out = base / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise ConfigError(f"{base} holds 10,000 runs started at {stamp}; pass --output")


def run_local(args: argparse.Namespace) -> int:
    from kfp import local

    from pac.pipelines.pac_pipeline import build

    if args.output:
        out = Path(args.output).resolve()
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = new_run_dir(Path("outputs/pipeline").resolve(), time.strftime("%Y%m%d-%H%M%S"))
    overrides, params = _overrides(args.config), list(args.param)
    if args.stores == "embedded":
        params.append(f"output_root={out / 'runs'}")
        tracking_uri = f"sqlite:///{out / 'mlruns' / 'mlflow.db'}"
        (out / "mlruns").mkdir(exist_ok=True)
        overrides = merge(overrides, {"storage": {"root": str(out / "store")}, "tracking": {"uri": tracking_uri}})
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # what the cluster's ConfigMap provides to each step
    elif not (overrides.get("tracking", {}).get("uri") or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ConfigError("--stores configured needs a tracking server: set $MLFLOW_TRACKING_URI or tracking.uri")
    pipeline = build(_settings(args))
    # The recipe's values sit in the overrides; a parameter left at its default does not replace them.
    # configured: run directories go under storage.root (the pipeline's default output_root is a relative name)
    arguments = pipeline_arguments(pipeline, params, overrides)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"))
    start = time.perf_counter()
    pipeline(**arguments)
    print(local_summary(out, arguments, time.perf_counter() - start))
    return 0


def local_summary(out: Path, arguments: dict[str, Any], seconds: float) -> str:
    """Where a person looks after a local run: the return of each task before and after self-improvement
    against the random policy, the registry's versions with their aliases, and the MLflow UI command."""
    from pac.config import Config, parse_overrides
    from pac.evaluation import EvalReport
    from pac.registry import Registry

    cfg = Config.from_dict(parse_overrides(arguments["overrides"]))
    reg = Registry(cfg.tracking, arguments.get("registered_model"))
    # KFP names the pipeline's evaluate tasks evaluate, evaluate-2, ... in pipeline order (not finishing order).
    evaluations = sorted((out / "kfp").glob("*/evaluate*/evaluation/report.json"),
                         key=lambda p: int(p.parent.parent.name.removeprefix("evaluate").lstrip("-") or 1))
    lines = [f"pipeline finished in {seconds:.0f} s; everything is under {out}", ""]
    if evaluations:
        first, last = EvalReport.load(evaluations[0]), EvalReport.load(evaluations[-1])
        lines += ["| task | random | return pretrained | return final | normalised pretrained | normalised final |",
                  "|---|---:|---:|---:|---:|---:|"]
        for task, b in first.tasks.items():
            a = last.tasks[task]
            lines.append(f"| {task} | {b.random_return_mean:.1f} | {b.return_mean:.1f} | {a.return_mean:.1f} | "
                         f"{b.normalized_score:.3f} | {a.normalized_score:.3f} |")
        lines += ["", f"evaluation reports (HTML): {evaluations[0].with_name('report')}, "
                      f"{evaluations[-1].with_name('report')}"]
    lines += ["", "registry:", reg.table(), ""]
    lines += [f"promotion decision: {p}" for p in sorted((out / "kfp").glob("*/promote/decision"))[-1:]]
    lines += [f"MLflow UI: mlflow ui --backend-store-uri {cfg.tracking.uri}",
              f"the champion: models:/{reg.name}@champion (MLFLOW_TRACKING_URI={cfg.tracking.uri})"]
    return "\n".join(lines)


def run_schedule(args: argparse.Namespace) -> int:
    from pac.pipelines.pac_pipeline import build
    from pac.pipelines.schedule import schedule

    pipeline = build(_settings(args))
    arguments = pipeline_arguments(pipeline, args.param, _overrides(args.config))
    job = schedule(args.host, pipeline, arguments, name=args.name, cron=args.cron,
                   max_concurrency=args.max_concurrency, experiment=args.experiment)
    print(f"recurring run {args.name!r} ({job}) on {args.host}: cron {args.cron!r}, max concurrency "
          f"{args.max_concurrency}")
    return 0
