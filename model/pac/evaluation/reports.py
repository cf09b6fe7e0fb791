"""Per-task statistics of a rollout and the evaluation report: returns, 95% intervals, normalised scores."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pac.evaluation.rollout import TaskRollout

log = logging.getLogger(__name__)

REPORT_FORMAT = 1
# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: Cornish-Fisher expansion).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054

CI_METHOD = ("95% confidence interval of the mean episode return over the evaluated episodes: Student-t, "
             "mean +/- t_{0.975, n-1} * s / sqrt(n) with the sample standard deviation s; null for one episode")
SCORE_METHOD = ("normalised score = (R - R_random) / (R_max - R_random): R_random is the mean return of a uniform "
                "random policy on the same seeded episodes in the same evaluation, R_max the task's maximum "
                "return (max per-step reward x eval.episode_steps); 0 = random, 1 = the best possible")


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}, the two-sided 95% Student-t quantile (tabulated to df=30, Cornish-Fisher beyond)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    # Cornish-Fisher expansion of the t quantile in 1/df (Abramowitz & Stegun 26.7.5): |error| < 1e-5 here.
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def mean_ci95(values: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean and its 95% Student-t confidence interval (None for fewer than two values)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, (mean - half, mean + half)


@dataclass
class TaskReport:
    """Evaluation statistics of one task (see the module docstring for the definitions)."""

    task: str
    episodes: int
    vision: bool
    seeds: list[int]
    returns: list[float]
    lengths: list[int]
    successes: list[bool] | None
    return_mean: float
    return_std: float  # sample standard deviation (ddof=1; 0 for one episode)
    return_ci95: list[float] | None
    random_return_mean: float
    max_return: float
    normalized_score: float
    normalized_ci95: list[float] | None
    success_rate: float | None
    episode_length_mean: float
    videos: list[str] = field(default_factory=list)  # relative to the output directory

    @staticmethod
    def from_rollout(rollout: TaskRollout, random_returns: Sequence[float], episode_steps: int) -> TaskReport:
        """Statistics of a rollout against the random baseline's returns on the same episodes."""
        spec = rollout.plan.spec
        returns = rollout.returns
        mean, ci = mean_ci95(returns)
        random_mean = float(np.mean(random_returns))
        max_return = spec.max_return(episode_steps)
        span = max(max_return - random_mean, 1e-9)  # a random policy never reaches the maximum in practice

        def norm(r: float) -> float:
            return (r - random_mean) / span

        successes = [r.success for r in rollout.results]
        defined = spec.success_threshold is not None
        return TaskReport(
            task=spec.id, episodes=len(returns), vision=rollout.plan.vision,
            seeds=[r.seed for r in rollout.results], returns=returns.tolist(),
            lengths=[r.length for r in rollout.results], successes=[bool(s) for s in successes] if defined else None,
            return_mean=mean, return_std=float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
            return_ci95=list(ci) if ci else None, random_return_mean=random_mean, max_return=max_return,
            normalized_score=norm(mean), normalized_ci95=[norm(ci[0]), norm(ci[1])] if ci else None,
            success_rate=float(np.mean(successes)) if defined else None,
            episode_length_mean=float(np.mean([r.length for r in rollout.results])))


@dataclass
class EvalReport:
    """A whole evaluation: per-task reports plus what produced them. `to_dict` is `report.json`."""

    policy: str
    step: int | None
    config: dict[str, Any]
    tasks: dict[str, TaskReport]
    files: dict[str, Path] = field(default_factory=dict)  # written outputs by kind (not part of the JSON)

    @property
    def mean_normalized_score(self) -> float:
        return float(np.mean([t.normalized_score for t in self.tasks.values()]))

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """Flat metrics for MLflow: `<prefix><task>/<name>` and `<prefix>normalized_score_mean`."""
        out: dict[str, float] = {}
        for task, r in self.tasks.items():
            out[f"{prefix}{task}/return_mean"] = r.return_mean
            out[f"{prefix}{task}/normalized_score"] = r.normalized_score
            out[f"{prefix}{task}/episode_length"] = r.episode_length_mean
            if r.success_rate is not None:
                out[f"{prefix}{task}/success_rate"] = r.success_rate
        out[f"{prefix}normalized_score_mean"] = self.mean_normalized_score
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": REPORT_FORMAT, "policy": self.policy, "step": self.step, "config": self.config,
                "methods": {"return_ci95": CI_METHOD, "normalized_score": SCORE_METHOD},
                "summary": {"tasks": len(self.tasks), "normalized_score_mean": self.mean_normalized_score},
                "tasks": {k: dataclasses.asdict(v) for k, v in self.tasks.items()}}

    @staticmethod
    def load(path: str | Path) -> EvalReport:
        """A report written by `write_outputs` (report.json), with the files beside it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            tasks = {k: TaskReport(**v) for k, v in data["tasks"].items()}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not an evaluation report (report.json of `pac evaluate`): {e}") from e
        files = {kind: path.parent / name for kind, name in (("report", path.name), ("table", "results.md"),
                                                             ("plot", "scores.png")) if (path.parent / name).is_file()}
        for task, r in tasks.items():
            for video in r.videos:
                if (path.parent / video).is_file():
                    files[f"video:{task}:{Path(video).stem}"] = path.parent / video
        return EvalReport(data.get("policy", ""), data.get("step"), data.get("config", {}), tasks, files)

    def table(self) -> str:
        """The results as a markdown table (what `pac evaluate` prints and writes to results.md)."""

        def ci(pair: list[float] | None, fmt: str) -> str:
            return f" [{pair[0]:{fmt}}, {pair[1]:{fmt}}]" if pair else ""

        lines = ["| task | episodes | return (95% CI) | random | max | normalised (95% CI) | success | length |",
                 "|---|---:|---|---:|---:|---|---:|---:|"]
        for r in self.tasks.values():
            success = "n/a" if r.success_rate is None else f"{r.success_rate:.0%}"
            lines.append(f"| {r.task}{' (vision)' if r.vision else ''} | {r.episodes} | {r.return_mean:.1f}"
                         f"{ci(r.return_ci95, '.1f')} | {r.random_return_mean:.1f} | {r.max_return:.0f} | "
                         f"{r.normalized_score:.3f}{ci(r.normalized_ci95, '.3f')} | {success} | "
                         f"{r.episode_length_mean:.0f} |")
        lines.append(f"| **mean** | | | | | **{self.mean_normalized_score:.3f}** | | |")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- outputs
