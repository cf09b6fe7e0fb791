"""Collection: run a trained policy on simulated tasks and publish its episodes as a new dataset version.

This is the "self-generated data" step of the PAC finetuning cycle (PAC.md): the policy acts on the
robot-arm tasks through the SAME rollout as evaluation (`pac.evaluation.iter_rollout`, seed stream
"collect", so collected episodes never replay the evaluation's initial states; an appended collection
continues the stream's episode numbering after the episodes already in the dataset, so rounds of collection
never replay each other's), every episode is
labelled `quality="policy"` with the model as its `policy`, and the episodes stream into
`pac.data.ingest.ingest`, which publishes a new immutable version of the dataset.

Action selection and exploration come from `EvalConfig` (`greedy`, `temperature`, `q_select_samples`,
`epsilon`); collecting usually samples (`--eval.greedy false`) for coverage.

    net, model_cfg = load_policy_model("models:/pac-policy@champion")
    result = collect(net, model_cfg, cfg.eval, "robot-data", model_uri="models:/pac-policy@champion",
                     storage=cfg.storage)
    print(result.ref)          # .../robot-data@v0004
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pac import __version__
from pac.config import Config, ConfigError, DataConfig, EvalConfig, StorageConfig
from pac.data.dataset import DatasetRef, read_manifest
from pac.data.schema import Episode
from pac.envs import list_tasks
from pac.evaluation import EpisodeResult, NetworkPolicy, TaskPlan, check_fit, iter_rollout, plan_tasks
from pac.networks import PerceiverActorCritic

log = logging.getLogger(__name__)

ROBOT_TAG = "robot"  # the registry tag of the robot-arm tasks collection defaults to
STREAM = "collect"


def config_hash(cfg: Config) -> str:
    """A short, stable digest of a resolved config (what the model was trained with)."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(net: torch.nn.Module) -> str:
    """A short digest of the network's weights: pins the exact policy even when an alias moves on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class ReturnSummary:
    """Returns of the collected episodes of one task."""

    task: str
    episodes: int
    return_mean: float
    return_std: float
    return_min: float
    return_max: float
    success_rate: float | None  # None where the task defines no success
    length_mean: float

    @staticmethod
    def of(task: str, results: Sequence[EpisodeResult]) -> ReturnSummary:
        returns = np.array([r.episode_return for r in results], dtype=np.float64)
        successes = [r.success for r in results]
        return ReturnSummary(task, len(results), float(returns.mean()), float(returns.std()), float(returns.min()),
                             float(returns.max()),
                             None if successes[0] is None else float(np.mean([bool(s) for s in successes])),
                             float(np.mean([r.length for r in results])))


@dataclass
class CollectResult:
    """The published dataset version and what went into it."""

    ref: DatasetRef  # `str(ref)` is the versioned dataset URI
    tasks: dict[str, ReturnSummary]

    def table(self) -> str:
        """A plain-text returns summary, one line per task."""
        lines = [f"{'task':<22} {'episodes':>8} {'return mean':>12} {'std':>8} {'min':>8} {'max':>8} "
                 f"{'success':>8} {'length':>7}"]
        for s in self.tasks.values():
            success = "n/a" if s.success_rate is None else f"{s.success_rate:.0%}"
            lines.append(f"{s.task:<22} {s.episodes:>8} {s.return_mean:>12.2f} {s.return_std:>8.2f} "
                         f"{s.return_min:>8.2f} {s.return_max:>8.2f} {success:>8} {s.length_mean:>7.0f}")
        return "\n".join(lines)


def collection_plans(model_cfg: Config, eval_cfg: EvalConfig, storage: StorageConfig | None = None) -> list[TaskPlan]:
    """The tasks to collect on: `eval_cfg.tasks` if named, else the robot-arm tasks the model was trained on.

    Raises:
        UnknownTaskError: a named task is not registered.
        ConfigError: no task is named and the model was trained on no robot-arm task.
    """
    plans = plan_tasks(model_cfg, eval_cfg, storage)
    if eval_cfg.tasks:
        return plans
    robot = [p for p in plans if ROBOT_TAG in p.spec.tags]
    if not robot:
        raise ConfigError(f"eval.tasks: the model was trained on {', '.join(p.task for p in plans)}, none of them a "
                          f"robot-arm task; name the tasks to collect on with --eval.tasks (robot-arm tasks: "
                          f"{', '.join(t.id for t in list_tasks(ROBOT_TAG))})")
    return robot


def collect(net: PerceiverActorCritic, model_cfg: Config, eval_cfg: EvalConfig, dataset: str, *, model_uri: str,
            storage: StorageConfig, data: DataConfig | None = None, plans: Sequence[TaskPlan] | None = None,
            append: bool = False, progress: bool = True) -> CollectResult:
    """Roll out the policy for `eval_cfg.episodes` episodes per task and ingest them as a new dataset version.

    Episodes stream from the rollout into the ingest (at most a few shards are held in memory), and
    the version is published only once every episode is written: an interrupted collection leaves no
    visible version.

    Args:
        net: the policy network.
        model_cfg: the config it was trained with (its hash goes into the provenance).
        eval_cfg: episodes, envs, seed, action selection and exploration (`greedy`, `temperature`,
            `q_select_samples`, `epsilon`).
        dataset: dataset name (under `storage.root`) or URI; a new version of it is published.
        model_uri: what produced the data (export path or `models:/` URI): the episodes' `policy`.
        storage: where the dataset lives.
        data: supplies the shard size (`data.shard_mb`).
        plans: the tasks (default: `collection_plans`).
        append: the new version also contains every episode of the latest one; the new episodes continue the
            seed stream after those (the latest version's episode count per task), so no initial state repeats.
        progress: progress bars.

    Returns:
        The published version and a returns summary per task.

    Raises:
        ModelMismatchError: the model cannot act on a task (before anything runs).
        StorageError: the store is unreachable or not writable (checked before any rollout).
    """
    from pac.data.ingest import ingest

    plans = list(plans) if plans is not None else collection_plans(model_cfg, eval_cfg, storage)
    check_fit(net.cfg, plans)
    source = NetworkPolicy(net, eval_cfg, critic=model_cfg.objective.trains_critic, name=model_uri)
    settings = {"model": model_uri, "config_hash": config_hash(model_cfg), "weights_sha256": weights_hash(net),
                "seed": eval_cfg.seed, "greedy": eval_cfg.greedy, "temperature": eval_cfg.temperature,
                "q_select_samples": source.q_select_samples, "epsilon": eval_cfg.epsilon,
                "episode_steps": eval_cfg.episode_steps, "pac_version": __version__}
    results: dict[str, list[EpisodeResult]] = {}
    # Rounds of collection appended to one dataset must not replay the same initial states: the rounds then
    # learn states they will meet again (on the Jaco arm BC+Q got worse on the states it had practised, PAC a
    # little better; docs/self_improvement.md). Numbering continues after the episodes already there.
    held = read_manifest(dataset, storage).tasks if append else {}
    first = {p.task: held[p.task].episodes if p.task in held else 0 for p in plans}

    def episodes() -> Iterator[Episode]:
        for plan in plans:
            for result, episode in iter_rollout(source, plan, eval_cfg, stream=STREAM, record=True, videos=0,
                                                progress=progress, desc=f"collect {plan.task}",
                                                first_index=first[plan.task]):
                results.setdefault(plan.task, []).append(result)
                assert episode is not None  # record=True
                provenance = {"source": STREAM, **{k: str(v) for k, v in settings.items()},
                              "episode_seed": str(result.seed), "episode_index": str(first[plan.task] + result.index)}
                yield dataclasses.replace(episode, quality="policy", policy=model_uri, provenance=provenance)

    record: dict[str, Any] = {"kind": "policy", "uri": model_uri, "tasks": [p.task for p in plans],
                              "episodes_per_task": eval_cfg.episodes, **settings}
    ref = ingest(episodes(), dataset, storage=storage, data=data, sources=[record], append=append, progress=False)
    return CollectResult(ref, {task: ReturnSummary.of(task, rs) for task, rs in results.items()})
