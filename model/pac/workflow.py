"""The product's workflow composed from the library's steps — the same steps the KFP pipeline runs as
containers, here in one process for `pac finetune` and `pac improve`:

    generate -> ingest -> pretrain -> evaluate -> [collect -> ingest -> finetune -> evaluate] x K

Finetuning is RL on a mixture of the original data and the policy's own episodes (the paper's
self-improvement without online exploration): each round's model collects on the robot-arm task(s),
its episodes become a new immutable dataset version, and the next model starts from its weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pac.config import Config
from pac.storage import is_s3, resolve_uri
from pac.training.loop import TrainResult, train
from pac.training.weights import is_mlflow_uri, load_model, source_run_id

log = logging.getLogger(__name__)


def generate_dataset(cfg: Config, dataset: str, *, append: bool = False, reuse: bool = True,
                     progress: bool = True) -> tuple[Any, Any]:
    """Run the behaviour policies (`cfg.generate`) and stream their episodes into a new dataset version.

    Generation is cached by content: when the latest version of `dataset` holds exactly the episodes this
    config generates (its only source records the same `generation_digest`), that version is returned and
    nothing is simulated (`reuse=False` generates anyway; `append` always generates).

    Returns:
        (the published `DatasetRef`, the `ReturnStats` summary of the generated returns; None when reused).
    """
    from pac.data.dataset import DatasetError, open_dataset
    from pac.data.generate import GENERATOR_VERSION, ReturnStats, check_config, generate_episodes, generation_digest
    from pac.data.ingest import ingest

    gen = cfg.generate
    check_config(gen, free_bytes(resolve_uri(dataset, cfg.storage)))  # before the store is touched
    digest = generation_digest(gen)
    if reuse and not append:
        try:
            latest = open_dataset(dataset, cfg.storage)
        except DatasetError:  # nothing published yet
            latest = None
        if latest is not None and [s.get("content_sha256") for s in latest.manifest.sources] == [digest]:
            log.info("%s already holds these episodes (generation %s): not generating them again",
                     latest.ref, digest[:12])
            return latest.ref, None
    stats = ReturnStats(gen.episode_steps)
    source = {"kind": "generate", "generator_version": GENERATOR_VERSION, "content_sha256": digest,
              **{k: ",".join(v) if isinstance(v, list) else str(v) for k, v in dataclasses.asdict(gen).items()}}
    ref = ingest(generate_episodes(gen, stats=stats, progress=progress), dataset, storage=cfg.storage,
                 data=cfg.data, sources=[source], append=append, progress=False)
    return ref, stats


def dataset_metadata(dataset: str, overrides: str = "") -> dict[str, Any]:
    """What a pipeline records of a dataset version: its immutable URI (`@latest` resolved), version, the
    manifest's sha256 digest and its size. `overrides` (JSON config sections) supply the storage settings."""
    from pac.config import parse_overrides
    from pac.data.dataset import open_dataset

    cfg = Config.from_dict(parse_overrides(overrides))
    ds = open_dataset(dataset, cfg.storage)
    counts = ds.manifest.counts
    return {"uri": ds.uri, "name": ds.manifest.name, "version": ds.ref.version,
            "digest": ds.manifest.digest,
            "episodes": counts["episodes"], "transitions": counts["transitions"],
            "tasks": ",".join(ds.manifest.tasks)}


def free_bytes(uri: str) -> int:
    """Free space for a new dataset at `uri`: the ingest's staging directory, and the target when it is local."""
    paths = [Path(tempfile.gettempdir())] + ([] if is_s3(uri) else [Path(uri)])
    free = []
    for path in paths:
        while not path.exists():  # the dataset's own directory does not exist yet
            path = path.parent
        free.append(shutil.disk_usage(path).free)
    return min(free)


def finetune(cfg: Config, model_uri: str, *, run_name: str | None = None) -> TrainResult:
    """Train from the weights at `model_uri` on `cfg.data` (mixture included), as a child MLflow run.

    The model dimensions come from the source model (a finetune cannot change the architecture);
    everything else (objective, data, budget) from `cfg`.
    """
    _, source_cfg = load_model(model_uri, cfg)
    cfg = dataclasses.replace(cfg, preset=source_cfg.preset, model=source_cfg.model,
                              train=dataclasses.replace(cfg.train, init_from=model_uri))
    from pac.tracking import run_exists

    parent = source_run_id(model_uri, cfg) if cfg.tracking.enabled else None
    if parent and not is_mlflow_uri(model_uri) and not run_exists(parent, cfg.tracking):
        # An export copied from another tracking store: its run cannot be a parent here; `init_from` still
        # names the source.
        log.warning("the run that trained %s (%s) is not in this tracking store; the finetune run is not "
                    "linked to a parent", model_uri, parent)
        parent = None
    from pac.cluster import should_submit, train_on_cluster

    if should_submit(cfg):  # cluster.nodes > 1: a TrainJob's processes finetune
        return train_on_cluster(cfg, parent_run_id=parent)
    return train(cfg, parent_run_id=parent, run_name=run_name or "finetune")


@dataclass
class Round:
    """One point of the self-improvement curve."""

    round: int
    model: str  # export URI of the round's model
    dataset: str | None  # the self-collected dataset version the round trained on
    success_rate: float | None  # mean over the robot tasks (None where no task defines success)
    return_mean: float
    normalized_score: float
    collected_return_mean: float | None = None  # returns of the episodes the previous model collected
    run_id: str | None = None
    return_change: float | None = None  # mean per-episode return minus round 0's on the same episodes
    return_change_ci95: tuple[float, float] | None = None
    # The same evaluation with actions sampled at `improve.collect_temperature` (the collecting policy);
    # None when the rounds collect greedily.
    sampled_success_rate: float | None = None
    sampled_return_mean: float | None = None
    sampled_return_change: float | None = None
    sampled_return_change_ci95: tuple[float, float] | None = None


@dataclass
class ImproveResult:
    rounds: list[Round] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        sampled = any(r.sampled_return_mean is not None for r in self.rounds)
        head = "| round | success | return | return − round 0 (paired 95% CI) | normalised | "
        rule = "|---|---:|---:|---|---:|"
        if sampled:
            head += "sampled: success | sampled: return | sampled: return − round 0 | "
            rule += "---:|---:|---|"
        rows = [head + "collected return | model |", rule + "---:|---|"]
        for r in self.rounds:
            row = (f"| {r.round} | {_percent(r.success_rate)} | {r.return_mean:.1f} | "
                   f"{format_change(r.return_change, r.return_change_ci95)} | {r.normalized_score:.3f} | ")
            if sampled:
                row += (f"{_percent(r.sampled_success_rate)} | {_number(r.sampled_return_mean)} | "
                        f"{format_change(r.sampled_return_change, r.sampled_return_change_ci95)} | ")
            rows.append(row + f"{_number(r.collected_return_mean)} | {r.model} |")
        return "\n".join(rows)


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.0%}"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def format_change(change: float | None, ci: tuple[float, float] | None) -> str:
    """`+1.2 [-0.3, +2.7]`: a change with its interval (either may be missing)."""
    text = "" if change is None else f"{change:+.1f}"
    return text if ci is None else text + f" [{ci[0]:+.1f}, {ci[1]:+.1f}]"


def _robot_summary(report: Any) -> tuple[float | None, float, float]:
    tasks = list(report.tasks.values())
    rates = [t.success_rate for t in tasks if t.success_rate is not None]
    return (sum(rates) / len(rates) if rates else None, sum(t.return_mean for t in tasks) / len(tasks),
            sum(t.normalized_score for t in tasks) / len(tasks))


def return_change(before: Any, after: Any, field: str = "returns") -> tuple[float, tuple[float, float] | None]:
    """Mean per-episode return change from one evaluation report to another, with its 95% t-interval.

    Episodes are paired by task and seed: every round is evaluated on the same episodes, so pairing
    removes the spread between episodes, which is most of the spread of either mean. `field` names the
    per-episode values compared (`successes`: the change in success rate, each episode 0 or 1).
    """
    from pac.evaluation import mean_ci95

    diffs = []
    for task, t in after.tasks.items():
        if task not in before.tasks:
            raise ValueError(f"task {task} is in one evaluation and not the other: no paired change")
        base = dict(zip(before.tasks[task].seeds, getattr(before.tasks[task], field), strict=True))
        diffs += [float(v) - float(base[s]) for s, v in zip(t.seeds, getattr(t, field), strict=True) if s in base]
    if not diffs:
        raise ValueError("the two evaluations share no episode (task and seed)")
    return mean_ci95(diffs)


def _sampled(report: Any, first: Any) -> dict[str, Any]:
    """`Round`'s sampled-policy fields from its evaluation report (and round 0's, for the paired change)."""
    if report is None:
        return {}
    success, mean, _ = _robot_summary(report)
    fields = {"sampled_success_rate": success, "sampled_return_mean": mean}
    if first is not None:
        fields["sampled_return_change"], fields["sampled_return_change_ci95"] = return_change(first, report)
    return fields


def round_config(cfg: Config, collected: str, output: str) -> Config:
    """The finetuning config of one self-improvement round (`pac improve` and the pipeline's finetune step):
    the original data mixed with `collected` at `improve.collected_weight`, `improve.finetune_steps` steps at
    `improve.finetune_lr` (else `train.lr`) and `improve.finetune_alpha` (else `objective.alpha`)."""
    alpha = cfg.objective.alpha if cfg.improve.finetune_alpha is None else cfg.improve.finetune_alpha
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, mix_with={collected: cfg.improve.collected_weight}),
        objective=dataclasses.replace(cfg.objective, alpha=alpha),
        train=dataclasses.replace(cfg.train, steps=cfg.improve.finetune_steps,
                                  lr=cfg.improve.finetune_lr or cfg.train.lr, output=output))


def round_overrides(overrides: str, dataset: str, collected: str, output: str) -> str:
    """`round_config` for the pipeline: JSON overrides in, the round's full config as JSON overrides out."""
    from pac.config import parse_overrides

    data = parse_overrides(overrides)
    cfg = Config.from_dict({**data, "data": {**data.get("data", {}), "dataset": dataset}})
    return json.dumps(round_config(cfg, collected, output).to_dict())


def improve(cfg: Config, model_uri: str, output: str | Path) -> ImproveResult:
    """K rounds of collect -> ingest -> finetune -> evaluate on the robot task(s); writes the curve.

    Args:
        cfg: `improve` (rounds, budgets, lr and alpha of the rounds, collection temperature, mixture
            weight), `data.dataset` (the original data to mix with), `objective` (the RL objective of
            finetuning), `eval` (evaluation, and collection unless `improve.collect_temperature` is set).
        model_uri: the starting model (export or `models:/` URI).
        output: local directory for per-round evaluations, `improve.json`, `improve.md`, `improve.png`.
    """
    from pac.collection import collect, collection_plans
    from pac.evaluation import evaluate_model

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    net, model_cfg = load_model(model_uri, cfg)
    plans = collection_plans(model_cfg, cfg.eval, cfg.storage)
    eval_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, tasks=[p.task for p in plans]))
    sampled_cfg = None
    if cfg.improve.collect_temperature is not None:
        # Sampled collection: the rounds' data come from the sampled policy, which the improvement term moves
        # before it moves the greedy one (docs/self_improvement.md), so it is evaluated too, on the same episodes.
        sampled_cfg = dataclasses.replace(eval_cfg, eval=dataclasses.replace(
            eval_cfg.eval, greedy=False, temperature=cfg.improve.collect_temperature, video=False))

    def evaluate_round(k: int, net: Any, uri: str) -> tuple[Any, Any]:
        report = evaluate_model(net, eval_cfg, output_dir=output / f"round{k}", name=uri, plans=plans)
        if sampled_cfg is None:
            return report, None
        return report, evaluate_model(net, sampled_cfg, output_dir=output / f"round{k}" / "sampled", name=uri,
                                      plans=plans)

    first, first_sampled = evaluate_round(0, net, model_uri)
    result = ImproveResult([Round(0, model_uri, None, *_robot_summary(first), **_sampled(first_sampled, None))])
    current = model_uri
    for k in range(1, cfg.improve.iterations + 1):
        t0 = time.perf_counter()
        collect_eval = dataclasses.replace(cfg.eval, episodes=cfg.improve.collect_episodes)
        if cfg.improve.collect_temperature is not None:
            collect_eval = dataclasses.replace(collect_eval, greedy=False, temperature=cfg.improve.collect_temperature)
        collected = collect(net, model_cfg, collect_eval, cfg.improve.dataset, model_uri=current,
                            storage=cfg.storage, data=cfg.data, plans=plans, append=k > 1, progress=False)
        round_cfg = round_config(cfg, str(collected.ref), f"{cfg.train.output.rstrip('/')}/round{k}")
        trained = finetune(round_cfg, current, run_name=f"improve-round{k}")
        current = trained.export_uri
        net, model_cfg = load_model(current, cfg)
        report, sampled = evaluate_round(k, net, current)
        collected_mean = sum(s.return_mean for s in collected.tasks.values()) / len(collected.tasks)
        change, change_ci = return_change(first, report)
        result.rounds.append(Round(k, current, str(collected.ref), *_robot_summary(report),
                                   collected_return_mean=collected_mean, run_id=trained.run_id,
                                   return_change=change, return_change_ci95=change_ci,
                                   **_sampled(sampled, first_sampled)))
        log.info("improve round %d/%d: %s (%.0f s)", k, cfg.improve.iterations, result.rounds[-1],
                 time.perf_counter() - t0)
    result.files = _write_curve(result, output)
    return result


def _write_curve(result: ImproveResult, output: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (output / "improve.json").write_text(json.dumps([dataclasses.asdict(r) for r in result.rounds], indent=2))
    (output / "improve.md").write_text(result.table() + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [r.round for r in result.rounds]
    if all(r.success_rate is not None for r in result.rounds):
        ax.plot(xs, [r.success_rate for r in result.rounds], "o-", label="success rate")
    if all(r.sampled_success_rate is not None for r in result.rounds):
        ax.plot(xs, [r.sampled_success_rate for r in result.rounds], "^:", label="success rate, sampled")
    ax.plot(xs, [r.normalized_score for r in result.rounds], "s--", label="normalised score")
    ax.set_xlabel("self-improvement round")
    ax.set_xticks(xs)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("robot task: collect -> finetune")
    fig.tight_layout()
    fig.savefig(output / "improve.png", dpi=120)
    plt.close(fig)
    return {k: str(output / f"improve.{k}") for k in ("json", "md", "png")}
