"""The one rollout implementation: batched, seeded episodes of an `ActionSource` (see `pac.evaluation`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from pac.config import EvalConfig
from pac.data.schema import Episode
from pac.envs import Obs, RenderingUnavailable, get_task
from pac.envs.pool import EnvPool
from pac.evaluation.plans import TaskPlan, episode_seed
from pac.evaluation.policies import ActionSource

log = logging.getLogger(__name__)

# Videos play at about this rate: control rates of 100 Hz would make large, slow-to-encode files.
_VIDEO_FPS = 30.0

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
                 desc: str | None = None, first_index: int = 0) -> Iterator[tuple[EpisodeResult, Episode | None]]:
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
        first_index: number of the first episode in its seed stream: the episodes are
            `first_index .. first_index + cfg.episodes - 1` of the stream (their seeds and recorded ids), so a
            collection appended to earlier ones starts from new initial states. Results keep 0-based indices.

    Yields:
        (result, episode or None), in the order episodes finish: a pure function of the seeds.

    Raises:
        RenderingUnavailable: a vision plan cannot render, or videos cannot (unless `cfg.render_errors`
            is "skip": then a warning names the fix and the rollout continues without video).
        ValueError: the source returned actions of the wrong shape or non-finite values.
        EnvWorkerError: an environment worker crashed, raised or hung (`pac.envs.pool`; names task and seed).
    """
    plan = plan if isinstance(plan, TaskPlan) else TaskPlan(get_task(plan))
    spec = plan.spec
    videos = (cfg.videos_per_task if cfg.video else 0) if videos is None else videos
    seeds = [episode_seed(cfg.seed, spec.id, first_index + i, stream) for i in range(cfg.episodes)]
    running: dict[int, _Running] = {}
    video_ok = videos > 0
    stride, fps = 1, _VIDEO_FPS
    next_index = 0

    def frame(slot: int, run: _Running) -> None:
        nonlocal video_ok
        if run.frames is None or not video_ok:
            return
        try:
            run.frames.append(pool.render(slot, cfg.video_size, cfg.video_size))
        except RenderingUnavailable as e:
            if cfg.render_errors == "fail":
                raise RenderingUnavailable(f"{spec.id}: cannot record videos: {e}. To evaluate without videos "
                                           "pass --eval.video false or --eval.render_errors skip") from e
            log.warning("%s: no videos (%s)", spec.id, e)
            video_ok = False

    def begin(slot: int) -> None:
        nonlocal next_index
        i, next_index = next_index, next_index + 1
        obs = pool.reset(slot, seeds[i])
        source.start(slot, pool.envs[slot], seeds[i])
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
            env = pool.envs[slot]
            episode = Episode(task=spec.id, instruction=spec.instruction, proprio=np.stack(run.proprio),
                              actions=np.stack(run.actions), rewards=rewards.astype(np.float32),
                              discounts=np.asarray(run.discounts, np.float32), action_low=env.action_low.copy(),
                              action_high=env.action_high.copy(),
                              images=np.stack(run.images) if run.images else None, policy=source.name,
                              provenance={"source": "rollout", "stream": stream, "seed": str(run.seed)},
                              episode_id=f"{spec.id}#{stream}-{cfg.seed}-{first_index + run.index}")
        return result, episode

    n_envs = min(cfg.num_envs, cfg.episodes)
    pool = EnvPool(spec.id, seeds[:n_envs], episode_steps=cfg.episode_steps, vision=plan.vision,
                   image_size=plan.image_size, workers=env_workers(cfg, source, n_envs), timeout_s=cfg.env_timeout_s)
    envs = pool.envs
    bar = tqdm(total=cfg.episodes, desc=desc or spec.id, unit="ep", disable=not progress, leave=False)
    threads = torch.get_num_threads()
    if cfg.policy_threads:
        torch.set_num_threads(cfg.policy_threads)
    try:
        if video_ok:
            real_fps = 1.0 / envs[0].control_timestep
            stride = max(1, round(real_fps / _VIDEO_FPS))
            fps = real_fps / stride
        for slot in range(n_envs):
            begin(slot)
        while running:
            slots = sorted(running)
            actions = np.asarray(source.act(slots, [envs[s] for s in slots], [running[s].obs for s in slots]),
                                 dtype=np.float32)
            expected = (len(slots), envs[0].action_dim)
            if actions.shape != expected:
                raise ValueError(f"{spec.id}: policy {source.name!r} returned actions of shape {actions.shape}, "
                                 f"expected {expected} (running envs x action dims)")
            if not np.isfinite(actions).all():
                bad = [seeds[running[s].index] for s, ok in zip(slots, np.isfinite(actions).all(1)) if not ok]
                raise ValueError(f"{spec.id}: policy {source.name!r} returned NaN or inf actions "
                                 f"(episode seeds {bad})")
            executed = {slot: envs[slot].clip(actions[row]) for row, slot in enumerate(slots)}
            stepped = pool.step(executed)  # every environment at once, side by side in the workers
            for slot in slots:
                env, run, action = envs[slot], running[slot], executed[slot]
                run.obs, reward, discount, done = stepped[slot]
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
        torch.set_num_threads(threads)
        bar.close()
        pool.close()


def env_workers(cfg: EvalConfig, source: ActionSource, n_envs: int) -> int:
    """Worker processes for a rollout's environments (`eval.env_workers`; 0 = step in this process).

    Sources that read the simulator (experts) keep their environments here; with one environment there is
    nothing to spread.
    """
    if getattr(source, "reads_simulator", True) or n_envs < 2:
        return 0
    workers = cfg.env_workers if cfg.env_workers >= 0 else (os.cpu_count() or 1)
    return min(workers, n_envs) if workers > 1 else 0


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
