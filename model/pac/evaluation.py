"""The ONE rollout implementation, shared by `pac evaluate`, the training loop's evaluation hook and collection.

Everything that runs a policy in the simulator goes through `iter_rollout` (or `rollout`, which
gathers it), so evaluation scores, training-time curves and collected datasets can never disagree
about seeding, action clipping, observation conventions or episode boundaries.

    source = NetworkPolicy(net, cfg.eval)                           # or ScriptedSource(make_expert), ...
    report = evaluate(source, plan_tasks(cfg, cfg.eval), cfg.eval, output_dir="eval")
    print(report.table())

Rollout semantics:

- **Batched inference.** `num_envs` environments of one task are stepped together; every control step
  the `ActionSource` is asked once for the actions of all *running* environments (one forward pass
  for a network). When an episode ends, its environment starts the next episode still to run, or
  stops being stepped when none is left.
- **Fixed seeds.** Episode `i` of task `t` always starts from `episode_seed(cfg.seed, t, i)`, and a
  source draws any randomness of that episode from a generator seeded with the same number, so an
  episode's outcome depends on neither `num_envs` nor the other tasks (`stream` separates the
  evaluation seeds from the collection seeds: collected data never replays the evaluation's initial
  states).
- **Actions** are clipped to the task's bounds (`Env.clip`); episodes record the clipped, executed
  action.

Reports (per task): mean return with a 95% Student-t confidence interval over episodes; the
normalised score `(R - R_random) / (R_max - R_random)`, where `R_random` is the mean return of a
uniform random policy measured on the same seeded episodes in the same evaluation and `R_max` the
task's maximum return (`TaskSpec.max_return`); the success rate where the task defines success; the
mean episode length. `evaluate` writes `report.json`, `results.md`, `scores.png` and videos.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from pac.config import IMAGE_SIZE, Config, ConfigError, EvalConfig, ModelConfig, StorageConfig, TrackingConfig
from pac.data.schema import Episode
from pac.envs import Env, Obs, RenderingUnavailable, TaskSpec, UnknownTaskError, get_task, list_tasks, make_env
from pac.envs.policies import Policy, RandomPolicy
from pac.inputs import MissingStatsError, Observation, denormalize_action, normalize_proprio, task_stats
from pac.networks import PerceiverActorCritic, bins_to_action, decode_greedy, expected_value, value_support

log = logging.getLogger(__name__)

REPORT_FORMAT = 1
# Videos play at about this rate: control rates of 100 Hz would make large, slow-to-encode files.
_VIDEO_FPS = 30.0
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


@runtime_checkable
class ActionSource(Protocol):
    """Chooses actions for a batch of environments of one task; what every rollout runs.

    `start` is called when an episode begins in environment slot `slot` (after `env.reset(seed)`),
    with that episode's seed: a source keys any per-episode state and randomness by slot, so an
    episode's behaviour depends only on its seed. `act` receives the running slots, their
    environments and current observations, and returns raw actions (N, A) within the task's bounds
    (values outside are clipped).
    """

    name: str

    def start(self, slot: int, env: Env, seed: int) -> None: ...

    def act(self, slots: Sequence[int], envs: Sequence[Env], obs: Sequence[Obs]) -> np.ndarray: ...


class ScriptedSource:
    """Any `pac.envs.policies.Policy` (experts, random, constant...) as an `ActionSource`.

    A fresh policy is built for every episode (experts hold per-episode state) and reset with the
    episode's seed, exactly as a plain `make_env` loop would.

    Args:
        factory: builds the policy for a task, e.g. `pac.envs.experts.make_expert`.
        name: the policy's name in reports.
    """

    def __init__(self, factory: Callable[[TaskSpec], Policy], name: str = "scripted") -> None:
        self.factory, self.name = factory, name
        self._policies: dict[int, Policy] = {}

    def start(self, slot: int, env: Env, seed: int) -> None:
        policy = self.factory(env.spec)
        policy.reset(env, seed)
        self._policies[slot] = policy

    def act(self, slots: Sequence[int], envs: Sequence[Env], obs: Sequence[Obs]) -> np.ndarray:
        return np.stack([self._policies[s].act(e, o) for s, e, o in zip(slots, envs, obs, strict=True)])


def random_source() -> ScriptedSource:
    """Uniform random actions within the bounds: the normalised score's 0."""
    return ScriptedSource(lambda spec: RandomPolicy(), name="random")


def sample_bins(logits: torch.Tensor, temperature: float, rngs: Sequence[np.random.Generator],
                num: int) -> np.ndarray:
    """Draw `num` bin indices per state and dimension from softmax(logits / temperature).

    Each row uses its own generator (inverse-CDF sampling), so an episode's actions do not depend on
    which other episodes share the batch (`pac.networks.sample_actions` draws from one generator for
    the whole batch, which is right for training but would couple evaluation episodes).

    Args:
        logits: (N, A, bins).
        temperature: > 0; 1 samples the policy itself.
        rngs: N generators, one per row.
        num: samples per row.

    Returns:
        (N, num, A) int64 bin indices.
    """
    bins = logits.shape[-1]
    probs = torch.softmax(logits.double() / temperature, dim=-1).cpu().numpy()  # (N, A, bins)
    cdf = np.cumsum(probs, axis=-1)
    cdf[..., -1] = 1.0  # rounding must never leave u beyond the last bin
    u = np.stack([rng.random((num, logits.shape[1])) for rng in rngs])  # (N, num, A)
    index = (cdf[:, None, :, :] < u[..., None]).sum(-1)  # (N, num, A)
    return np.minimum(index, bins - 1).astype(np.int64)


def select_by_q(net: PerceiverActorCritic, latents: torch.Tensor, candidates: torch.Tensor,
                action_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score K candidate actions per state with the Q decoder against ONE encoding of each state.

    Late fusion (PAC.md, Figure 2): actions enter only through the Q decoder's query, so the K
    candidates share the latents `z_M` of their state; nothing is re-encoded.

    Args:
        net: the actor-critic.
        latents: (N, L, D) from `net.encode`.
        candidates: (N, K, A) normalised actions in [-1, 1].
        action_mask: (N, A) bool.

    Returns:
        index (N,) of the candidate with the highest expected Q, and the expected Q values (N, K).
    """
    q = net.q_logits(latents, candidates, action_mask)  # (N, K, atoms)
    values = expected_value(q, value_support(net.cfg, device=q.device))  # (N, K)
    return values.argmax(-1), values


class NetworkPolicy:
    """The trained (or training) network as an `ActionSource`: one forward pass for all running envs.

    Action selection (`EvalConfig`):
    - `greedy`: the most likely bin per dimension; else a sample from softmax(logits / `temperature`).
    - `q_select_samples` = K > 0: K actions sampled from the tempered policy (plus the greedy action
      when `greedy`) are scored by the Q decoder against one encoding of the state; the highest
      expected Q wins.
    - `epsilon`: with this probability per step a uniform random action replaces the choice
      (exploration for collection).

    The network is switched to eval mode for each forward pass and restored afterwards, so the
    training loop can pass its live module (under ZeRO-3 every rank must take part: the parameter
    gathers are collective).

    Args:
        net: the actor-critic (any device; observations follow it).
        cfg: action-selection settings.
        name: the policy's name in reports and collected episodes (e.g. the model URI).
    """

    def __init__(self, net: PerceiverActorCritic, cfg: EvalConfig, *, name: str = "policy") -> None:
        self.net, self.cfg, self.name = net, cfg, name
        self.device = next(net.parameters()).device
        self._rngs: dict[int, np.random.Generator] = {}

    def start(self, slot: int, env: Env, seed: int) -> None:
        self._rngs[slot] = np.random.default_rng(seed)

    @torch.no_grad()
    def act(self, slots: Sequence[int], envs: Sequence[Env], obs: Sequence[Obs]) -> np.ndarray:
        num_dims = envs[0].action_dim
        images = [o["image"] for o in obs] if any(o["image"] is not None for o in obs) else None
        proprio = [normalize_proprio(o["proprio"], task_stats(self.net.cfg, e.spec.id)) for o, e in zip(obs, envs)]
        batch = Observation.from_numpy(proprio, [e.instruction for e in envs],
                                       self.net.cfg.max_text_tokens, images).to(self.device)
        rngs = [self._rngs[s] for s in slots]
        was_training = self.net.training
        self.net.eval()
        try:
            normalized = self._choose(batch, num_dims, rngs)  # (N, A) in [-1, 1]
        finally:
            self.net.train(was_training)
        if self.cfg.epsilon > 0:
            for row, rng in enumerate(rngs):
                if rng.random() < self.cfg.epsilon:
                    normalized[row] = rng.uniform(-1.0, 1.0, num_dims)
        return np.stack([denormalize_action(a, e.action_low, e.action_high) for a, e in zip(normalized, envs)])

    def _choose(self, batch: Observation, num_dims: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        bins = self.net.cfg.action_bins
        z = self.net.encode(batch)  # (N, L, D)
        logits = self.net.policy_logits(z, num_dims).float()  # (N, A, bins)
        k = self.cfg.q_select_samples
        if k == 0:
            if self.cfg.greedy:
                mcfg = self.net.cfg
                return decode_greedy(logits, bins, mcfg.action_decode, mcfg.action_decode_k,
                                     mcfg.action_bin_mu).cpu().numpy()
            return bins_to_action(torch.from_numpy(sample_bins(logits, self.cfg.temperature, rngs, 1)[:, 0]),
                                  bins, self.net.cfg.action_bin_mu).numpy()
        index = torch.from_numpy(sample_bins(logits, self.cfg.temperature, rngs, k)).to(logits.device)  # (N, K, A)
        if self.cfg.greedy:
            index = torch.cat([logits.argmax(-1)[:, None], index], dim=1)  # (N, 1+K, A)
        candidates = bins_to_action(index, bins, self.net.cfg.action_bin_mu)  # (N, K', A)
        mask = torch.ones(candidates.shape[0], num_dims, dtype=torch.bool, device=candidates.device)
        best, _ = select_by_q(self.net, z, candidates, mask)
        return candidates[torch.arange(len(best), device=best.device), best].cpu().numpy()


# --------------------------------------------------------------------------------------------- the rollout


@dataclass
class EpisodeResult:
    """The outcome of one rolled-out episode."""

    task: str
    index: int  # episode number within the task
    seed: int
    episode_return: float
    length: int
    success: bool | None  # None where the task defines no success
    frames: np.ndarray | None = None  # (F, H, W, 3) uint8 video frames, for the first `videos` episodes
    fps: float = 0.0  # playback rate of `frames` (real time)


@dataclass
class TaskRollout:
    """All episodes of one task, in episode order."""

    plan: TaskPlan
    results: list[EpisodeResult]
    episodes: list[Episode] = field(default_factory=list)  # only when recorded

    @property
    def returns(self) -> np.ndarray:
        return np.array([r.episode_return for r in self.results], dtype=np.float64)


@dataclass
class _Running:
    index: int
    seed: int
    obs: Obs
    proprio: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    discounts: list[float] = field(default_factory=list)
    frames: list[np.ndarray] | None = None


def iter_rollout(source: ActionSource, plan: TaskPlan | str, cfg: EvalConfig, *, stream: str = "eval",
                 record: bool = False, videos: int | None = None, progress: bool = True,
                 desc: str | None = None) -> Iterator[tuple[EpisodeResult, Episode | None]]:
    """Roll out `cfg.episodes` seeded episodes of one task, yielding each as it ends (deterministic order).

    This is the only place where policies meet environments: evaluation, the training loop's hook
    and collection all come through here.

    Args:
        source: the policy (`NetworkPolicy`, `ScriptedSource`, or any `ActionSource`).
        plan: the task (a `TaskPlan`, or a task id: proprio only).
        cfg: episodes, `num_envs` (stepped together), `episode_steps`, `seed`, `video_size`, `render_errors`.
        stream: seed stream (`episode_seed`): "eval" for evaluation, "collect" for collection.
        record: also build the full `Episode` (observations, executed actions, rewards, discounts, and
            images when the plan has vision) for each episode.
        videos: record video frames for episodes 0..videos-1 (default: `cfg.videos_per_task` if
            `cfg.video`, else none).
        progress: tqdm bar over finished episodes.
        desc: progress-bar label (default: the task id).

    Yields:
        (result, episode or None), in the order episodes finish: a pure function of the seeds.

    Raises:
        RenderingUnavailable: a vision plan cannot render, or videos cannot (unless `cfg.render_errors`
            is "skip": then a warning names the fix and the rollout continues without video).
        ValueError: the source returned actions of the wrong shape or non-finite values.
    """
    plan = plan if isinstance(plan, TaskPlan) else TaskPlan(get_task(plan))
    spec = plan.spec
    videos = (cfg.videos_per_task if cfg.video else 0) if videos is None else videos
    seeds = [episode_seed(cfg.seed, spec.id, i, stream) for i in range(cfg.episodes)]
    envs: list[Env] = []
    running: dict[int, _Running] = {}
    video_ok = videos > 0
    stride, fps = 1, _VIDEO_FPS
    next_index = 0

    def frame(slot: int, run: _Running) -> None:
        nonlocal video_ok
        if run.frames is None or not video_ok:
            return
        try:
            run.frames.append(envs[slot].render(cfg.video_size, cfg.video_size))
        except RenderingUnavailable as e:
            if cfg.render_errors == "fail":
                raise RenderingUnavailable(f"{spec.id}: cannot record videos: {e}. To evaluate without videos "
                                           "pass --eval.video false or --eval.render_errors skip") from e
            log.warning("%s: no videos (%s)", spec.id, e)
            video_ok = False

    def begin(slot: int) -> None:
        nonlocal next_index
        i, next_index = next_index, next_index + 1
        obs = envs[slot].reset(seed=seeds[i])
        source.start(slot, envs[slot], seeds[i])
        run = _Running(i, seeds[i], obs, frames=[] if i < videos and video_ok else None)
        if record:
            run.proprio.append(obs["proprio"])
            if obs["image"] is not None:
                run.images.append(obs["image"])
        frame(slot, run)
        running[slot] = run

    def finish(slot: int, run: _Running) -> tuple[EpisodeResult, Episode | None]:
        rewards = np.asarray(run.rewards, np.float64)  # the return is summed at the env's precision
        frames = np.stack(run.frames) if run.frames and video_ok else None
        result = EpisodeResult(spec.id, run.index, run.seed, float(sum(run.rewards)), len(rewards),
                               spec.success(rewards), frames, fps if frames is not None else 0.0)
        episode = None
        if record:
            env = envs[slot]
            episode = Episode(task=spec.id, instruction=spec.instruction, proprio=np.stack(run.proprio),
                              actions=np.stack(run.actions), rewards=rewards.astype(np.float32),
                              discounts=np.asarray(run.discounts, np.float32), action_low=env.action_low.copy(),
                              action_high=env.action_high.copy(),
                              images=np.stack(run.images) if run.images else None, policy=source.name,
                              provenance={"source": "rollout", "stream": stream, "seed": str(run.seed)},
                              episode_id=f"{spec.id}#{stream}-{cfg.seed}-{run.index}")
        return result, episode

    bar = tqdm(total=cfg.episodes, desc=desc or spec.id, unit="ep", disable=not progress, leave=False)
    try:
        for slot in range(min(cfg.num_envs, cfg.episodes)):
            envs.append(make_env(spec.id, seed=seeds[slot], episode_steps=cfg.episode_steps, vision=plan.vision,
                                 image_size=plan.image_size))
            if slot == 0 and video_ok:
                real_fps = 1.0 / envs[0].control_timestep
                stride = max(1, round(real_fps / _VIDEO_FPS))
                fps = real_fps / stride
            begin(slot)
        while running:
            slots = sorted(running)
            actions = np.asarray(source.act(slots, [envs[s] for s in slots], [running[s].obs for s in slots]),
                                 dtype=np.float32)
            expected = (len(slots), envs[0].action_dim)
            if actions.shape != expected:
                raise ValueError(f"{spec.id}: policy {source.name!r} returned actions of shape {actions.shape}, "
                                 f"expected {expected} (running envs x action dims)")
            for row, slot in enumerate(slots):
                env, run = envs[slot], running[slot]
                action = env.clip(actions[row])
                run.obs, reward, discount, done = env.step(action)
                run.rewards.append(reward)
                if record:
                    run.actions.append(action)
                    run.discounts.append(discount)
                    run.proprio.append(run.obs["proprio"])
                    if run.obs["image"] is not None:
                        run.images.append(run.obs["image"])
                if run.frames is not None and (done or env.t % stride == 0):
                    frame(slot, run)
                if done:
                    del running[slot]
                    bar.update(1)
                    yield finish(slot, run)
                    if next_index < cfg.episodes:
                        begin(slot)
    finally:
        bar.close()
        for env in envs:
            env.close()


def rollout(source: ActionSource, plan: TaskPlan | str, cfg: EvalConfig, *, stream: str = "eval",
            record: bool = False, videos: int | None = None, progress: bool = True,
            desc: str | None = None) -> TaskRollout:
    """`iter_rollout`, gathered into a `TaskRollout` in episode order (same arguments)."""
    plan = plan if isinstance(plan, TaskPlan) else TaskPlan(get_task(plan))
    start = time.perf_counter()
    pairs = sorted(iter_rollout(source, plan, cfg, stream=stream, record=record, videos=videos, progress=progress,
                                desc=desc), key=lambda p: p[0].index)
    results = [r for r, _ in pairs]
    seconds = time.perf_counter() - start
    steps = sum(r.length for r in results)
    log.info("%s: %s, %d episodes, %d steps in %.1fs (%.0f steps/s)", plan.task, source.name, len(results), steps,
             seconds, steps / max(seconds, 1e-9))
    return TaskRollout(plan, results, [e for _, e in pairs if e is not None])


# --------------------------------------------------------------------------------------------- statistics


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


class Tracker(Protocol):
    """What evaluation needs from `pac.tracking.Tracker` (an MLflow run)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def write_video(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """Encode frames (F, H, W, 3) uint8 as H.264 MP4 (imageio-ffmpeg), or as GIF when ffmpeg is unavailable.

    Args:
        frames: the video.
        path: target path; its suffix is replaced by `.mp4` or `.gif`.
        fps: playback rate.

    Returns:
        The written file.
    """
    import imageio.v2 as imageio

    path = Path(path)
    try:
        import imageio_ffmpeg  # noqa: F401  (the MP4 writer's backend; absent -> GIF)

        out = path.with_suffix(".mp4")
        imageio.mimwrite(out, list(frames), fps=fps, codec="libx264", pixelformat="yuv420p", quality=7,
                         macro_block_size=16)
        return out
    except (ImportError, RuntimeError, OSError) as e:
        log.warning("MP4 encoding unavailable (%s); writing a GIF instead", e)
    out = path.with_suffix(".gif")
    imageio.mimwrite(out, list(frames), duration=1000.0 / fps, loop=0)
    return out


def plot_scores(report: EvalReport, path: str | Path) -> Path:
    """Bar plot of the normalised score per task with 95% CI error bars (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(report.tasks.values())
    scores = np.array([t.normalized_score for t in tasks])
    low = np.array([t.normalized_score - t.normalized_ci95[0] if t.normalized_ci95 else 0.0 for t in tasks])
    high = np.array([t.normalized_ci95[1] - t.normalized_score if t.normalized_ci95 else 0.0 for t in tasks])
    # An object-oriented Figure with its own canvas: no pyplot global state, no display backend needed.
    fig = Figure(figsize=(max(4.0, 1.0 * len(tasks) + 2.0), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(tasks))
    ax.bar(x, scores, yerr=np.stack([low, high]), capsize=4, color="tab:blue", alpha=0.8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, [t.task for t in tasks], rotation=30, ha="right")
    ax.set_ylabel("normalised score (0 random, 1 max)")
    title = f"{report.policy}" + (f" @ step {report.step}" if report.step is not None else "")
    ax.set_title(title if len(title) <= 60 else "..." + title[-57:], fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def write_outputs(report: EvalReport, rollouts: Mapping[str, TaskRollout], output_dir: str | Path) -> dict[str, Path]:
    """Write report.json, results.md, scores.png and the videos; fill `report.files` and the task video lists."""
    out = Path(output_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for task, ro in rollouts.items():
        for r in ro.results:
            if r.frames is not None:
                written = write_video(r.frames, out / "videos" / f"{_slug(task)}_ep{r.index:03d}", r.fps)
                report.tasks[task].videos.append(str(written.relative_to(out)))
                files[f"video:{task}:{r.index}"] = written
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out / "results.md").write_text(report.table() + "\n")
    files["report"], files["table"] = out / "report.json", out / "results.md"
    files["plot"] = plot_scores(report, out / "scores.png")
    report.files = files
    return files


# --------------------------------------------------------------------------------------------- evaluation


_BASELINES: dict[tuple[str, int, int, int], list[float]] = {}


def html_report(output_dir: str | Path) -> str:
    """One self-contained HTML page of an evaluation directory (`write_outputs`): the table and the plot
    embedded, for viewers that show a single file (the Kubeflow UI's HTML artifact)."""
    import base64
    import html

    out = Path(output_dir)
    report = EvalReport.load(out / "report.json")
    plot = ""
    if (out / "scores.png").is_file():
        data = base64.b64encode((out / "scores.png").read_bytes()).decode()
        plot = f'<img alt="normalised score per task" src="data:image/png;base64,{data}">'
    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{r.episodes}</td><td>{r.return_mean:.1f}</td>"
        f"<td>{r.normalized_score:.3f}</td><td>{'n/a' if r.success_rate is None else f'{r.success_rate:.0%}'}</td></tr>"
        for t, r in report.tasks.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>PAC evaluation</title></head><body>"
            f"<h1>Evaluation of {html.escape(report.policy)}</h1>"
            f"<p>mean normalised score <b>{report.mean_normalized_score:.3f}</b></p>"
            f"<table border='1' cellpadding='4'><tr><th>task</th><th>episodes</th><th>return</th>"
            f"<th>normalised</th><th>success</th></tr>{rows}</table>{plot}</body></html>")


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
    report = EvalReport(source.name, step, dataclasses.asdict(cfg), reports)
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
    return evaluate(NetworkPolicy(net, cfg.eval, name=name), plans, cfg.eval, output_dir=output_dir,
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
        report = evaluate(NetworkPolicy(net, eval_cfg, name=f"step {step}"), plans, eval_cfg, output_dir=out,
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
