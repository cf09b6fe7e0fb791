"""Model registry reviews: versions side by side, the promotion gate, manual promotion and rollback.

Aliases, not stages (deprecated since MLflow 2.9): a new version gets `challenger`; `champion` moves only when
the gate says so or a reviewer moves it by hand with a reason. Every decision is written as tags on the
version it concerns, so the registry itself is the audit log:

    pac.decision            promoted | kept | manual-promote | rollback
    pac.decision_reason     one sentence a reviewer reads
    pac.previous_champion   the version that held `champion` before (what `rollback` returns to)
    pac.delta_mean / pac.delta_ci95   the paired challenger - champion normalised score (gate decisions)

The gate (`gate`) compares two evaluations of the SAME episodes (same tasks, same seeds): per-episode
normalised scores are paired, and the challenger is promoted only if the mean difference is at least
`margin` AND its 95% t-interval lies above zero.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pac.config import Config, TrackingConfig
from pac.evaluation import EvalReport, mean_ci95
from pac.tracking import TrackingError, redact_uri, resolve_tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"
TAG = "pac."


class GateError(ValueError):
    """The two evaluations cannot be compared episode by episode."""


@dataclass
class GateDecision:
    """The promotion gate's verdict on a challenger against the champion."""

    promote: bool
    delta_mean: float  # mean paired difference of normalised scores (challenger - champion)
    delta_ci95: tuple[float, float] | None  # None with a single episode pair
    pairs: int
    margin: float
    reason: str

    def tags(self) -> dict[str, str]:
        out = {f"{TAG}decision": "promoted" if self.promote else "kept",
               f"{TAG}decision_reason": self.reason, f"{TAG}pairs": str(self.pairs), f"{TAG}margin": str(self.margin)}
        if self.pairs:
            out[f"{TAG}delta_mean"] = f"{self.delta_mean:.4f}"
        if self.delta_ci95 is not None:
            out[f"{TAG}delta_ci95"] = f"[{self.delta_ci95[0]:.4f}, {self.delta_ci95[1]:.4f}]"
        return out


def paired_scores(challenger: EvalReport, champion: EvalReport) -> list[float]:
    """Per-episode normalised-score differences, challenger - champion, paired by (task, seed).

    Raises:
        GateError: the two evaluations did not run the same episodes.
    """
    if set(challenger.tasks) != set(champion.tasks):
        raise GateError(f"the evaluations cover different tasks: {sorted(challenger.tasks)} vs "
                        f"{sorted(champion.tasks)}")
    diffs = []
    for task, a in challenger.tasks.items():
        b = champion.tasks[task]
        if a.seeds != b.seeds:
            raise GateError(f"{task}: the evaluations ran different episodes (seeds differ); evaluate both "
                            "models with the same eval config in the same run")
        span = max(a.max_return - a.random_return_mean, 1e-9)
        diffs += [(ra - rb) / span for ra, rb in zip(a.returns, b.returns, strict=True)]
    return diffs


def gate(challenger: EvalReport, champion: EvalReport | None, margin: float) -> GateDecision:
    """Promote iff mean paired difference >= `margin` and its 95% interval is above zero (no champion: promote)."""
    if champion is None:
        return GateDecision(True, math.nan, None, 0, margin, "no champion yet: the first version becomes champion")
    diffs = paired_scores(challenger, champion)
    mean, ci = mean_ci95(diffs)
    interval = f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "(no interval: one episode)"
    summary = f"paired normalised score {mean:+.3f} {interval} over {len(diffs)} episodes, margin {margin}"
    if ci is None:
        return GateDecision(False, mean, None, len(diffs), margin, f"kept: {summary}; one episode cannot show it")
    if mean < margin:
        return GateDecision(False, mean, ci, len(diffs), margin, f"kept: {summary}: below the margin")
    if ci[0] <= 0:
        return GateDecision(False, mean, ci, len(diffs), margin, f"kept: {summary}: the interval reaches zero")
    return GateDecision(True, mean, ci, len(diffs), margin, f"promoted: {summary}")


class Registry:
    """The reviewer's view of one registered model (`pac registry ...`)."""

    def __init__(self, cfg: TrackingConfig, name: str | None = None) -> None:
        self.name = name or cfg.registered_model
        self.uri = resolve_tracking_uri(cfg)
        self.client = MlflowClient(tracking_uri=self.uri,
                                   registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or self.uri)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except MlflowException as e:
            raise TrackingError(f"{what} of model {self.name!r} at MLflow tracking URI {redact_uri(self.uri)}: "
                                f"{e.message}") from e

    def alias_version(self, alias: str) -> str | None:
        """The version `alias` points at, None when it is not set."""
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise TrackingError(f"reading alias {alias!r} of {self.name!r}: {e.message}") from e

    def versions(self) -> list[dict[str, Any]]:
        """Every version, newest first, with its aliases, tags and its run's evaluation metrics."""
        found = self._call("listing versions", self.client.search_model_versions, f"name='{self.name}'")
        aliases: dict[str, list[str]] = {}
        if found:  # search results carry no aliases: the registered model maps alias -> version
            model = self._call("reading the model", self.client.get_registered_model, self.name)
            for alias, version in model.aliases.items():
                aliases.setdefault(str(version), []).append(alias)
        rows = []
        for v in sorted(found, key=lambda v: int(v.version), reverse=True):
            tags = dict(v.tags)
            scores = {k.removeprefix(f"{TAG}score."): float(x) for k, x in tags.items() if k.startswith(f"{TAG}score.")}
            rows.append({"version": str(v.version), "aliases": sorted(aliases.get(str(v.version), [])),
                         "run_id": v.run_id, "created": v.creation_timestamp, "tags": tags,
                         "description": v.description, "scores": scores})
        return rows

    def set_tags(self, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._call(f"tagging version {version}", self.client.set_model_version_tag, self.name, version, key,
                       value)

    def move_champion(self, version: str, decision: str, reason: str) -> str | None:
        """Point `champion` at `version`, recording the decision and the version it replaces; returns that one."""
        if not reason.strip():
            raise ValueError("a champion change needs a reason (it is recorded on the version)")
        self._call(f"reading version {version}", self.client.get_model_version, self.name, version)
        previous = self.alias_version(CHAMPION)
        self._call("setting the champion alias", self.client.set_registered_model_alias, self.name, CHAMPION,
                   version)
        tags = {f"{TAG}decision": decision, f"{TAG}decision_reason": reason}
        if previous is not None and previous != version:
            tags[f"{TAG}previous_champion"] = previous
        self.set_tags(version, tags)
        return previous

    def rollback(self, reason: str) -> str:
        """Return `champion` to the version it replaced (recorded at promotion); returns that version."""
        current = self.alias_version(CHAMPION)
        if current is None:
            raise ValueError(f"model {self.name!r} has no champion to roll back")
        tags = self._call(f"reading version {current}", self.client.get_model_version, self.name, current).tags
        previous = tags.get(f"{TAG}previous_champion")
        if not previous:
            raise ValueError(f"version {current} of {self.name!r} records no previous champion; promote a version "
                             "by hand instead (`pac registry promote`)")
        self.move_champion(previous, "rollback", f"rollback from version {current}: {reason}")
        self.set_tags(current, {f"{TAG}rolled_back": reason})
        return previous

    def register(self, run_id: str, report: EvalReport, *, tags: Mapping[str, str]) -> str:
        """Register the model a training run logged as a new version (alias `challenger`); returns the version.

        The description holds the evaluation table, the tags the lineage (`tags`) and the score; the report's
        files (report.json, results.md, the plot, the videos) are attached to the training run the version links
        to, under `evaluation/` (videos under `evaluation/videos/`).
        """
        from pac.tracking import MODEL_NAME

        run = self._call(f"reading run {run_id}", self.client.get_run, run_id)
        for kind, path in report.files.items():
            folder = "evaluation/videos" if kind.startswith("video:") else "evaluation"
            self._call("attaching the evaluation", self.client.log_artifact, run_id, str(path), folder)
        logged = self._call("finding the run's model", self.client.search_logged_models,
                            [run.info.experiment_id], f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'")
        if not logged:
            raise TrackingError(f"run {run_id} logged no model named {MODEL_NAME!r}: was it trained with tracking on?")
        model = max(logged, key=lambda m: m.creation_timestamp)
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self._call("creating the registered model", self.client.create_registered_model, self.name)
        description = (f"Trained by MLflow run {run_id}. Mean normalised score "
                       f"{report.mean_normalized_score:.3f}.\n\n{report.table()}")
        mv = self._call("registering a version", lambda: self.client.create_model_version(
            self.name, f"models:/{model.model_id}", run_id=run_id, tags=dict(tags), description=description,
            model_id=model.model_id))
        version = str(mv.version)
        self.set_tags(version, {f"{TAG}score.mean": f"{report.mean_normalized_score:.4f}",
                                **{f"{TAG}score.{t}": f"{r.normalized_score:.4f}" for t, r in report.tasks.items()}})
        self._call("setting the challenger alias", self.client.set_registered_model_alias, self.name, CHALLENGER,
                   version)
        return version

    def gate_challenger(self, version: str, cfg: Config, margin: float, output: Path, *,
                        progress: bool = False) -> str:
        """Evaluate `version` and the current champion on the same episodes (`cfg.eval`), apply `gate`, record
        the decision on `version` and move `champion` if it passes. Writes both evaluations, `decision.md` and
        `decision.json` under `output`; returns the markdown."""
        import dataclasses
        import json

        from pac.evaluation import evaluate_model, load_policy_model

        champion = self.alias_version(CHAMPION)
        reports = {}
        for role, v in (("challenger", version), ("champion", champion)):
            if v is not None:
                uri = f"models:/{self.name}/{v}"
                net, model_cfg = load_policy_model(uri, cfg.tracking)
                # The same eval section (tasks, seeds, episodes) for both: the gate pairs their episodes.
                reports[role] = evaluate_model(net, dataclasses.replace(model_cfg, eval=cfg.eval, storage=cfg.storage),
                                               output_dir=output / role, name=uri, progress=progress)
        decision = gate(reports["challenger"], reports.get("champion"), margin)
        self.set_tags(version, decision.tags())
        if decision.promote:
            self.move_champion(version, "promoted", decision.reason)
        text = (f"# Promotion gate: {self.name} version {version}\n\n**{decision.reason}**\n\n"
                f"champion before: {champion or 'none'}; after: {version if decision.promote else champion}\n\n"
                f"## Challenger\n\n{reports['challenger'].table()}\n")
        if "champion" in reports:
            text += f"\n## Champion (version {champion}), same episodes\n\n{reports['champion'].table()}\n"
        output.mkdir(parents=True, exist_ok=True)
        (output / "decision.md").write_text(text)
        (output / "decision.json").write_text(json.dumps({**dataclasses.asdict(decision), "version": version,
                                                          "champion_before": champion}))
        return text

    def table(self) -> str:
        """Versions side by side: aliases, decision, mean and per-task normalised score at registration."""
        rows = self.versions()
        tasks = sorted({t for r in rows for t in r["scores"] if t != "mean"})
        head = ["version", "aliases", "decision", "score", *tasks]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["version"], ", ".join(r["aliases"]), r["tags"].get(f"{TAG}decision", ""),
                     *[f"{r['scores'][t]:.3f}" if t in r["scores"] else "" for t in ["mean", *tasks]]]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
