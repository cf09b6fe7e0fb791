"""`pac evaluate`: roll out a trained policy on simulated tasks; report, table, plot and videos.

    pac evaluate --model outputs/run/export --output eval/run1
    pac evaluate --model models:/pac-policy@champion --eval.tasks jaco/reach_site --eval.episodes 20 --output eval/c

Tasks default to those the model was trained on (its config's data.tasks, else its dataset's manifest).
Writes report.json, results.md (also printed), scores.png and videos/ into --output, and logs them with
the metrics to MLflow unless --tracking.enabled false. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from pac.cli.common import add_config_flags, resolve_config

SECTIONS = ["eval", "storage", "tracking"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained policy in simulation: report, plot, videos",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="URI",
                   help="export directory (model.safetensors + config.json) or MLflow models:/NAME@alias, "
                        "models:/NAME/VERSION, runs:/RUN_ID/policy")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="directory for report.json, results.md, scores.png and videos/")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_flags(p, SECTIONS)
    p.set_defaults(func=run)


def user_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report rendering and MLflow failures as messages (the `pac` entry point handles ValueError/OSError;
    these two derive from RuntimeError)."""

    def wrapped(args: argparse.Namespace) -> int:
        from pac.envs import RenderingUnavailable

        try:
            return command(args)
        except RuntimeError as e:
            tracking = sys.modules.get("pac.tracking")  # a TrackingError implies pac.tracking was imported
            if not isinstance(e, RenderingUnavailable) and not (tracking and isinstance(e, tracking.TrackingError)):
                raise
            if getattr(args, "verbose", False):
                raise
            print(f"pac: error: {e}", file=sys.stderr)
            return 1

    return wrapped


def start_tracker(cfg: Any, model_cfg: Any, *, job: str, model_uri: str) -> Any:
    """A started `pac.tracking.Tracker` for a job on a trained model, or None when tracking is disabled.

    The run's params are the model's training config with this job's eval/storage/tracking sections.
    """
    if not cfg.tracking.enabled:
        return None
    from pac.tracking import Tracker

    tracker = Tracker(cfg.tracking)
    tracker.check()
    run_cfg = dataclasses.replace(model_cfg, eval=cfg.eval, storage=cfg.storage, tracking=cfg.tracking)
    tracker.start(run_cfg, run_name=f"{job} {model_uri}", tags={"pac.job": job, "pac.model": model_uri})
    return tracker


@user_errors
def run(args: argparse.Namespace) -> int:
    from pac.evaluation import NetworkPolicy, check_fit, evaluate, load_policy_model, plan_tasks

    cfg = resolve_config(args)
    net, model_cfg = load_policy_model(args.model, cfg.tracking)
    plans = plan_tasks(model_cfg, cfg.eval, cfg.storage)
    check_fit(net.cfg, plans)  # every mismatch named before any rollout or MLflow run starts
    tracker = start_tracker(cfg, model_cfg, job="evaluate", model_uri=args.model)
    status = "FAILED"
    try:
        source = NetworkPolicy(net, cfg.eval, critic=model_cfg.objective.trains_critic, name=args.model)
        report = evaluate(source, plans, cfg.eval, output_dir=args.output,
                          tracker=tracker, progress=not args.no_progress)
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.end(status)
    print(report.table())
    print(f"\nmean normalised score {report.mean_normalized_score:.3f}; wrote {report.files['report']}, "
          f"{report.files['plot']}, {sum(k.startswith('video:') for k in report.files)} video(s)"
          + (f"; MLflow run {tracker.run_id}" if tracker is not None else ""))
    return 0
