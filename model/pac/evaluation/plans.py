"""Which tasks an evaluation runs and whether a model fits them: plans, seeds, layout checks."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pac.config import IMAGE_SIZE, Config, ConfigError, EvalConfig, ModelConfig, StorageConfig
from pac.envs import TaskSpec, UnknownTaskError, get_task, list_tasks, make_env
from pac.inputs import MissingStatsError, task_stats

log = logging.getLogger(__name__)

class ModelMismatchError(ValueError):
    """The model's observation or action spaces do not fit a task; the message names each mismatch."""


# --------------------------------------------------------------------------------------------- seeds, tasks


def episode_seed(base: int, task: str, index: int, stream: str = "eval") -> int:
    """The seed of episode `index` of `task`: a stable hash, independent of batching and task order.

    Args:
        base: `EvalConfig.seed`.
        task: task id.
        index: episode number within the task (0-based).
        stream: `"eval"` or `"collect"`; different streams never share initial states by construction.
    """
    digest = hashlib.blake2b(f"{stream}:{base}:{task}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


@dataclass(frozen=True)
class TaskPlan:
    """One task to roll out and how the policy observes it.

    Attributes:
        spec: the registry entry.
        vision: render camera frames into `Obs["image"]` for the policy.
        image_size: side of those frames (what the training data stored).
        trained: (proprio dims, action dims) the training data had for this task, when known (manifest).
    """

    spec: TaskSpec
    vision: bool = False
    image_size: int = IMAGE_SIZE
    trained: tuple[int, int] | None = None

    @property
    def task(self) -> str:
        return self.spec.id


def resolve_tasks(names: Sequence[str]) -> list[TaskSpec]:
    """Registry entries for task ids; every unknown id is named in one error that lists the known ones.

    Raises:
        UnknownTaskError: some id is not registered.
    """
    unknown = [n for n in names if n not in {t.id for t in list_tasks()}]
    if unknown:
        raise UnknownTaskError(f"unknown task(s) {', '.join(map(repr, unknown))}; known tasks: "
                               f"{', '.join(t.id for t in list_tasks())} (see `pac tasks`)")
    return [get_task(n) for n in dict.fromkeys(names)]


def training_manifest_tasks(cfg: Config, storage: StorageConfig | None = None) -> dict[str, Any] | None:
    """Per-task statistics (`pac.data.manifest.TaskStats`) of the dataset a model was trained on.

    Returns None when the config names no dataset or its manifest cannot be read (a warning says why):
    evaluation then relies on the config alone.
    """
    if not cfg.data.dataset:
        return None
    from pac.data.dataset import read_manifest

    try:
        return dict(read_manifest(cfg.data.dataset, storage or cfg.storage).tasks)
    except (ValueError, OSError) as e:  # DatasetError, ManifestError, StorageError
        log.warning("cannot read the training dataset %s (%s); using the model's config only", cfg.data.dataset, e)
        return None


def plan_tasks(model_cfg: Config, eval_cfg: EvalConfig, storage: StorageConfig | None = None) -> list[TaskPlan]:
    """The tasks to roll out a model on, and whether it sees camera frames there.

    Tasks: `eval_cfg.tasks`; else the model's training tasks (`data.tasks` of its config, else every
    registered task of its training dataset's manifest). Vision (`eval.vision`): `always`, `never`, or
    `auto` = where the training data had images (the manifest; without one, `generate.vision`).

    Args:
        model_cfg: the resolved config the model was trained with (an export's `config.json`).
        eval_cfg: the evaluation settings.
        storage: where the training dataset lives (default `model_cfg.storage`).

    Raises:
        UnknownTaskError: a named task is not registered.
        ConfigError: no task is named and none can be derived from the model.
    """
    stats = training_manifest_tasks(model_cfg, storage)
    names = list(eval_cfg.tasks) or list(model_cfg.data.tasks)
    if not names and stats:
        registered = {t.id for t in list_tasks()}
        names = [t for t in stats if t in registered]
        skipped = [t for t in stats if t not in registered]
        if skipped:
            log.warning("not evaluating %s: not simulated tasks (see `pac tasks`)", ", ".join(skipped))
    if not names:
        where = f"its dataset {model_cfg.data.dataset!r} is not readable or has no simulated task" \
            if model_cfg.data.dataset else "it names no dataset"
        raise ConfigError(f"eval.tasks: the model's config names no training tasks (data.tasks) and {where}; "
                          f"pass --eval.tasks (known tasks: {', '.join(t.id for t in list_tasks())})")
    plans = []
    for spec in resolve_tasks(names):
        st = (stats or {}).get(spec.id)
        if eval_cfg.vision == "auto":
            vision = st.image_shape is not None if st is not None else model_cfg.generate.vision
        else:
            vision = eval_cfg.vision == "always"
        image_size = int(st.image_shape[0]) if st is not None and st.image_shape else model_cfg.generate.image_size
        trained = (int(st.proprio_dim), int(st.action_dim)) if st is not None else None
        plans.append(TaskPlan(spec, vision=vision, image_size=image_size, trained=trained))
    return plans


@functools.cache
def task_layout(task: str) -> tuple[int, int]:
    """(proprio dims, action dims) of a registered task, measured once per process on a real reset."""
    env = make_env(task, seed=0, episode_steps=1)
    try:
        return int(env.reset(seed=0)["proprio"].shape[0]), env.action_dim
    finally:
        env.close()


def check_fit(model: ModelConfig, plans: Sequence[TaskPlan]) -> None:
    """Check that a model can act on every planned task, before any rollout starts.

    Raises:
        ModelMismatchError: listing every mismatch (task, what it needs, the model field that limits it).
    """
    problems = []
    for plan in plans:
        proprio_dim, action_dim = task_layout(plan.task)
        if action_dim > model.max_action_dims:
            problems.append(f"{plan.task} has {action_dim} action dimensions, the model at most "
                            f"model.max_action_dims={model.max_action_dims}")
        if proprio_dim > model.max_proprio_dims:
            problems.append(f"{plan.task} has {proprio_dim} proprio dimensions, the model at most "
                            f"model.max_proprio_dims={model.max_proprio_dims}")
        if plan.trained is not None and plan.trained != (proprio_dim, action_dim):
            problems.append(f"{plan.task} now has (proprio, action) dims {(proprio_dim, action_dim)}, the model "
                            f"was trained on {plan.trained} (the task registry changed since training)")
        try:
            task_stats(model, plan.task)
        except MissingStatsError as e:
            problems.append(str(e))
        if plan.vision:
            if plan.image_size != model.image_size:
                problems.append(f"{plan.task} is observed through {plan.image_size}x{plan.image_size} camera frames, "
                                f"the model takes model.image_size={model.image_size}")
            if model.image_channels != 3:
                problems.append(f"{plan.task}'s camera frames are RGB, the model takes "
                                f"model.image_channels={model.image_channels}")
    if problems:
        raise ModelMismatchError("the model does not fit the task(s): " + "; ".join(problems))


# --------------------------------------------------------------------------------------------- action sources
