"""`evaluate` and its entry points: a source over planned tasks -> report + artifacts; models from any URI."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from pac.config import Config, EvalConfig, TrackingConfig
from pac.envs import get_task
from pac.evaluation.artifacts import Tracker, write_outputs
from pac.evaluation.plans import TaskPlan, check_fit, plan_tasks, resolve_tasks
from pac.evaluation.policies import ActionSource, NetworkPolicy, random_source
from pac.evaluation.reports import EvalReport, TaskReport
from pac.evaluation.rollout import TaskRollout, rollout
from pac.networks import PerceiverActorCritic

log = logging.getLogger(__name__)

_BASELINES: dict[tuple[str, int, int, int], list[float]] = {}  # random returns per (task, seed, episodes, steps)

def random_baseline(task: str, cfg: EvalConfig, progress: bool = True) -> list[float]:
    """Returns of the uniform random policy on the evaluation's seeded episodes of `task` (memoised:
    the periodic training-time evaluation pays for it once)."""
    key = (task, cfg.seed, cfg.episodes, cfg.episode_steps)
    if key not in _BASELINES:
        ro = rollout(random_source(), task, cfg, videos=0, progress=progress, desc=f"{task} (random)")
        _BASELINES[key] = ro.returns.tolist()
    return list(_BASELINES[key])


def evaluate(source: ActionSource, plans: Sequence[TaskPlan | str], cfg: EvalConfig, *,
             output_dir: str | Path | None = None, tracker: Tracker | None = None, step: int | None = None,
             progress: bool = True) -> EvalReport:
    """Evaluate a policy on each task and write/log the report.

    Args:
        source: the policy (`NetworkPolicy(net, cfg)` for a network).
        plans: tasks (`plan_tasks(...)`, or task ids for proprio-only rollouts).
        cfg: episodes, envs, seeds, videos.
        output_dir: local directory for report.json, results.md, scores.png and videos/ (None: write nothing).
        tracker: a started `pac.tracking.Tracker`: logs the metrics (at `step`, else 0) and the written files
            (under `eval/`, or `eval/step_NNNNNN/` with a step).
        step: training step, recorded in the report and used for the metrics.
        progress: tqdm bars.

    Returns:
        The report (`report.table()` is the markdown table).

    Raises:
        UnknownTaskError: a task id is not registered.
        RenderingUnavailable: see `iter_rollout`.
    """
    resolve_tasks([p for p in plans if isinstance(p, str)])  # every unknown id in one error, before any work
    plans = [p if isinstance(p, TaskPlan) else TaskPlan(get_task(p)) for p in plans]
    rollouts: dict[str, TaskRollout] = {}
    reports: dict[str, TaskReport] = {}
    for plan in plans:
        rollouts[plan.task] = rollout(source, plan, cfg, progress=progress)
        reports[plan.task] = TaskReport.from_rollout(rollouts[plan.task], random_baseline(plan.task, cfg, progress),
                                                     cfg.episode_steps)
    # what acted, as the source applied the settings (a network without a critic ignores q_select_samples)
    settings = dataclasses.asdict(cfg) | {"selection": getattr(source, "selection", source.name)}
    report = EvalReport(source.name, step, settings, reports)
    if output_dir is not None:
        write_outputs(report, rollouts, output_dir)
    if tracker is not None:
        tracker.log_metrics(report.metrics(), step=step or 0)
        where = "eval" if step is None else f"eval/step_{step:06d}"
        for kind, path in report.files.items():
            tracker.log_artifact(path, f"{where}/videos" if kind.startswith("video:") else where)
    return report


def evaluate_model(net: PerceiverActorCritic, cfg: Config, *, output_dir: str | Path | None = None,
                   tracker: Tracker | None = None, step: int | None = None, name: str = "policy",
                   plans: Sequence[TaskPlan] | None = None, progress: bool = False) -> EvalReport:
    """Evaluate a network on the tasks it was (or is being) trained on, as configured by `cfg`.

    Tasks and vision follow `plan_tasks(cfg, cfg.eval)` (pass `plans` to skip re-reading the dataset
    manifest); `check_fit` runs before any rollout.

    Args:
        net: the network (a live training module is switched to eval mode per forward pass and restored).
        cfg: its resolved config; `cfg.eval` selects episodes, envs, seeds and action selection.
        output_dir, tracker, step, progress: as for `evaluate`.
        name: the policy's name in the report (model URI or run name).
        plans: precomputed `plan_tasks` result.
    """
    plans = list(plans) if plans is not None else plan_tasks(cfg, cfg.eval)
    check_fit(net.cfg, plans)
    source = NetworkPolicy(net, cfg.eval, critic=cfg.objective.trains_critic, name=name)
    return evaluate(source, plans, cfg.eval, output_dir=output_dir,
                    tracker=tracker, step=step, progress=progress)


def training_eval_hook(cfg: Config, output_dir: str | Path | None = None) -> Callable[[PerceiverActorCritic, int],
                                                                                     dict[str, float]]:
    """The training loop's periodic evaluation (`pac.training.loop.EvalHook`): `hook(net, step) -> metrics`.

    Tasks are planned and checked against the model once, here, so a mismatch fails before training
    starts rather than at the first evaluation. Metric names are `<task>/<name>` and
    `normalized_score_mean` (the loop prefixes `eval/` when logging them).

    Args:
        cfg: the training run's resolved config (`cfg.eval` configures the evaluation).
        output_dir: local directory for each evaluation's report, plot and videos (`step_NNNNNN/`);
            None: metrics only, and no videos are rendered.
    """
    plans = plan_tasks(cfg, cfg.eval)
    check_fit(cfg.model, plans)
    eval_cfg = cfg.eval if output_dir is not None else dataclasses.replace(cfg.eval, video=False)

    def hook(net: PerceiverActorCritic, step: int) -> dict[str, float]:
        out = Path(output_dir) / f"step_{step:06d}" if output_dir is not None else None
        source = NetworkPolicy(net, eval_cfg, critic=cfg.objective.trains_critic, name=f"step {step}")
        report = evaluate(source, plans, eval_cfg, output_dir=out,
                          step=step, progress=False)
        return report.metrics(prefix="")

    return hook


def load_policy_model(uri: str, tracking: TrackingConfig | None = None) -> tuple[PerceiverActorCritic, Config]:
    """Load a network (CPU, eval mode) and its training config from an export directory or an MLflow URI.

    Args:
        uri: an export directory (`pac.training.export`), or `models:/NAME@alias`, `models:/NAME/VERSION`,
            `runs:/...` (fetched through `pac.tracking.load_policy`).
        tracking: where MLflow URIs resolve (default: `$MLFLOW_TRACKING_URI`, else the embedded store).

    Raises:
        ExportError: not a valid export / MLflow model.
        TrackingError: the MLflow URI cannot be fetched.
    """
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):  # a local path: no MLflow import for a plain export
        from pac.training.export import load_export

        net, cfg = load_export(uri)
        return net.eval(), cfg
    from pac.tracking import load_policy

    return load_policy(uri, tracking)
