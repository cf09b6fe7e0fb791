"""`pac registry`: review registered model versions and move the `champion` alias (MLflow aliases, not stages).

    pac registry list                                     versions side by side: aliases, decision, scores
    pac registry show 3                                   one version: tags, description, metrics
    pac registry promote 3 --reason "reviewed videos"     champion -> version 3, reason recorded on it
    pac registry rollback --reason "regression on jaco"   champion -> the version it replaced
    pac registry register --run-id RUN --report eval/report.json --dataset DATA@v0002   (pipeline step)
    pac registry gate --version 4 --margin 0.02 --output gate/                          (pipeline step)

`gate` evaluates the challenger and the current champion on the same episodes in this run and moves
`champion` only if the challenger's mean normalised score is higher by the margin with the paired 95%
interval above zero; the decision and its numbers are recorded as tags on the challenger.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from pac.cli.common import add_config_flags, resolve_config

SECTIONS = ["eval", "storage", "tracking"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="review model versions; promote, gate or roll back the champion",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        q = cmds.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--name", help="registered model name (default: tracking.registered_model)")
        add_config_flags(q, SECTIONS)
        return q

    q = action("list", "every version with its aliases, decision and evaluation scores")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=run_list)
    q = action("show", "one version: aliases, tags (lineage, decisions), description, scores")
    q.add_argument("version")
    q.set_defaults(func=run_show)
    q = action("promote", "point champion at a version by hand; the reason is recorded on it")
    q.add_argument("version")
    q.add_argument("--reason", required=True)
    q.set_defaults(func=run_promote)
    q = action("rollback", "return champion to the version it replaced; the reason is recorded")
    q.add_argument("--reason", required=True)
    q.set_defaults(func=run_rollback)
    q = action("register", "register a training run's model as a new version with alias challenger")
    q.add_argument("--run-id", required=True, help="the MLflow run that trained and logged the model")
    q.add_argument("--report", required=True, help="its evaluation (report.json of `pac evaluate`)")
    q.add_argument("--dataset", required=True, help="the dataset version it was trained on (lineage tag)")
    q.add_argument("--pipeline-run", default="", help="the Kubeflow pipeline run id (lineage tag)")
    q.add_argument("--result-file", metavar="PATH", help="also write {name, version, uri} as JSON here")
    q.set_defaults(func=run_register)
    q = action("gate", "evaluate challenger and champion on the same episodes; promote if clearly better")
    q.add_argument("--version", required=True, help="the challenger version")
    q.add_argument("--margin", type=float, required=True, help="minimum mean normalised-score gain")
    q.add_argument("--output", required=True, help="directory for both evaluations and decision.md/json")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_gate)


def _registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pac.registry import Registry

    cfg = resolve_config(args)
    return Registry(cfg.tracking, args.name), cfg


def run_list(args: argparse.Namespace) -> int:
    reg, _ = _registry(args)
    print(json.dumps(reg.versions(), indent=2) if args.json else reg.table())
    return 0


def run_show(args: argparse.Namespace) -> int:
    reg, _ = _registry(args)
    rows = [r for r in reg.versions() if r["version"] == args.version]
    if not rows:
        raise ValueError(f"model {reg.name!r} has no version {args.version}")
    r = rows[0]
    print(f"{reg.name} version {r['version']}  aliases: {', '.join(r['aliases']) or '-'}  run: {r['run_id']}")
    for k, v in sorted(r["tags"].items()):
        print(f"  {k}: {v}")
    for k, v in sorted(r["scores"].items()):
        print(f"  normalised score {k}: {v:.3f}")
    print(f"\n{r['description'] or ''}")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    reg, _ = _registry(args)
    previous = reg.move_champion(args.version, "manual-promote", args.reason)
    print(f"champion of {reg.name}: version {args.version} (was {previous or 'unset'}); reason recorded")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    reg, _ = _registry(args)
    version = reg.rollback(args.reason)
    print(f"champion of {reg.name}: back to version {version}; reason recorded")
    return 0


def run_register(args: argparse.Namespace) -> int:
    from pac import __version__
    from pac.collection import config_hash
    from pac.evaluation import EvalReport
    from pac.tracking import scrub

    reg, cfg = _registry(args)
    report = EvalReport.load(args.report)
    run = reg.client.get_run(args.run_id)
    tags = {"pac.dataset": args.dataset, "pac.package_version": __version__, "pac.git_commit": _git_commit(),
            "pac.pipeline_run": args.pipeline_run, "pac.training_run": args.run_id,
            "pac.parent_run": run.data.tags.get("mlflow.parentRunId", ""),
            "pac.config_hash": run.data.params.get("config_hash", "") or config_hash(cfg)}
    version = reg.register(args.run_id, report, tags={k: scrub(v) for k, v in tags.items() if v})
    uri = f"models:/{reg.name}/{version}"
    print(f"registered {uri} (alias challenger); mean normalised score {report.mean_normalized_score:.3f}")
    if args.result_file:
        Path(args.result_file).write_text(json.dumps({"name": reg.name, "version": version, "uri": uri}))
    return 0


def run_gate(args: argparse.Namespace) -> int:
    reg, cfg = _registry(args)
    print(reg.gate_challenger(args.version, cfg, args.margin, Path(args.output), progress=not args.no_progress))
    return 0


def _git_commit() -> str:
    """The source commit of this package, when it runs from a git checkout (the image records none)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
