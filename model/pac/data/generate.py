"""Behaviour-data generation: tasks x qualities x episodes of the simulated suite, as `Episode`s.

    stats = ReturnStats(cfg.episode_steps)
    ref = ingest(generate_episodes(cfg, stats=stats), "control", storage=...)  # streams, one episode at a time
    print(stats.table())

The behaviour policies (`pac.envs.policies`) run through the ONE rollout implementation,
`pac.evaluation.iter_rollout`, like evaluation and collection: same seeding, action clipping and
episode recording. Episode `i` of (task, quality) starts from `episode_seed(generate.seed, task, i,
"generate/<quality>")`, so an episode can be regenerated on its own, adding a task or a quality
never changes the other episodes, and generated data never replays evaluation's initial states.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata

import mujoco
import numpy as np
from tqdm import tqdm

from pac import __version__
from pac.config import EvalConfig, GenerateConfig
from pac.data.schema import Episode
from pac.envs import get_task
from pac.envs.policies import make_policy
from pac.evaluation import ScriptedSource, TaskPlan, iter_rollout, task_layout

GENERATOR_VERSION = "4"  # bump when the same config would produce different episodes (3: the reacher expert's kd;
# 4: finger/turn_easy's planning bonus)
_HIST_BINS = 10
# Episodes per worker task: one (task, quality) keeps every core busy (the finger's planner takes ~50 s an
# episode: 100 of them were 87 min on one core of two), and the progress bar moves every few episodes.
_CHUNK = 10


def seed_stream(quality: str) -> str:
    """The `pac.evaluation.episode_seed` stream of one quality level."""
    return f"generate/{quality}"


@dataclass
class ReturnStats:
    """Per (task, quality) returns and successes of generated episodes, and their summary table.

    Args:
        episode_steps: the time limit, which fixes each task's maximum return.
    """

    episode_steps: int
    returns: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    successes: dict[tuple[str, str], list[bool]] = field(default_factory=dict)

    def add(self, episode: Episode) -> None:
        key = (episode.task, episode.quality)
        self.returns.setdefault(key, []).append(episode.episode_return)
        ok = get_task(episode.task).success(episode.rewards)
        if ok is not None:
            self.successes.setdefault(key, []).append(ok)

    def table(self) -> str:
        """One row per (task, quality): mean ± std, % of the maximum return, success rate, histogram.

        The histogram spans [0, max return] in 10 equal bins, so rows are comparable across qualities.
        """
        header = (f"{'task':<20} {'quality':<7} {'eps':>4} {'return mean ± std':>18} {'% max':>6} {'min':>7} "
                  f"{'max':>7} {'success':>7}  histogram [0, max return]")
        lines = [header, "-" * len(header)]
        for (task, quality), rets in self.returns.items():
            top = get_task(task).max_return(self.episode_steps)
            r = np.asarray(rets)
            counts, _ = np.histogram(np.clip(r, 0, top), bins=_HIST_BINS, range=(0, top))
            succ = self.successes.get((task, quality))
            rate = f"{np.mean(succ):.0%}" if succ else "-"
            lines.append(f"{task:<20} {quality:<7} {len(r):>4} {f'{r.mean():.1f} ± {r.std():.1f}':>18} "
                         f"{r.mean() / top:>6.0%} {r.min():>7.1f} {r.max():>7.1f} {rate:>7}  {_bars(counts)} "
                         f"{' '.join(map(str, counts))}")
        return "\n".join(lines)


def _bars(counts: np.ndarray) -> str:
    blocks = " ▁▂▃▄▅▆▇█"
    top = max(int(counts.max()), 1)
    return "".join(blocks[0] if c == 0 else blocks[max(1, round(c / top * 8))] for c in counts)


def generation_digest(cfg: GenerateConfig) -> str:
    """sha256 of what decides the generated episodes: the config (less `workers`, which changes nothing), the
    generator's version and what each task observes. Equal digests mean equal episodes."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"}
    content = {"generate": config, "generator": GENERATOR_VERSION,
               "observations": {t: list(get_task(t).obs_keys) for t in cfg.tasks}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def check_config(cfg: GenerateConfig, free_bytes: int | None = None) -> None:
    """Fail before any simulation if a task is unknown (the message lists the valid ones) or, given the free
    space where the episodes go, if they cannot fit (qualities are checked when the `GenerateConfig` is made)."""
    for task in cfg.tasks:
        get_task(task)
    if free_bytes is not None:
        need = estimated_bytes(cfg)
        if need > free_bytes:
            raise ValueError(f"generate: {total_episodes(cfg)} episodes of {cfg.episode_steps} steps need about "
                             f"{need / 2**30:.1f} GiB and only {free_bytes / 2**30:.1f} GiB are free where they go; "
                             "lower generate.episodes_per_policy / quality_episodes or free space")


def total_episodes(cfg: GenerateConfig) -> int:
    return len(cfg.tasks) * sum(cfg.episodes(q) for q in cfg.qualities)


def estimated_bytes(cfg: GenerateConfig) -> int:
    """An upper estimate of the stored size: float32 states, actions, rewards, discounts (+ uint8 frames)."""
    total = 0
    for task in cfg.tasks:
        proprio, action = task_layout(task)
        per_step = 4 * (proprio + action + 2) + (3 * cfg.image_size**2 if cfg.vision else 0)
        total += per_step * (cfg.episode_steps + 1) * sum(cfg.episodes(q) for q in cfg.qualities)
    return total


def _units(cfg: GenerateConfig) -> list[tuple[str, str, int, int]]:
    """(task, quality, first episode, episodes) in the order they are yielded: runs of at most `_CHUNK` episodes."""
    return [(task, quality, first, min(_CHUNK, cfg.episodes(quality) - first))
            for task in cfg.tasks for quality in cfg.qualities for first in range(0, cfg.episodes(quality), _CHUNK)]


def _run(cfg: GenerateConfig, task: str, quality: str, first: int, count: int) -> list[Episode]:
    """Episodes `first .. first + count - 1` of one (task, quality): the unit a worker process simulates."""
    plan = TaskPlan(get_task(task), vision=cfg.vision, image_size=cfg.image_size)
    rollout_cfg = EvalConfig(episodes=count, num_envs=1, episode_steps=cfg.episode_steps, seed=cfg.seed, video=False)
    versions = {"mujoco": mujoco.__version__, "dm_control": metadata.version("dm-control")}
    # ScriptedSource builds a fresh policy per episode (experts keep per-episode state).
    factory = functools.partial(make_policy, quality=quality, expert_prob=cfg.noisy_expert_prob,
                                noise_std=cfg.noisy_action_std, damped_scale=cfg.damped_scale,
                                damped_noise_std=cfg.damped_noise_std, damped_expert_prob=cfg.damped_expert_prob,
                                expert_noise_std=cfg.expert_noise_std)
    policy_name = factory(plan.spec).name
    rollouts = iter_rollout(ScriptedSource(factory, name=policy_name), plan, rollout_cfg,
                            stream=seed_stream(quality), record=True, videos=0, progress=False, first_index=first)
    out = []
    for result, episode in rollouts:
        index = first + result.index
        if episode is None:  # record=True always builds it
            raise RuntimeError("the rollout did not record the episode")
        provenance = {
            "source": "generate", "generator_version": GENERATOR_VERSION, "pac_version": __version__,
            "task": task, "quality": quality, "policy": policy_name, "seed": str(result.seed),
            "base_seed": str(cfg.seed), "index": str(index),
            "episode_steps": str(cfg.episode_steps), "vision": str(cfg.vision), **versions}
        if quality == "noisy":
            provenance["noisy_expert_prob"] = str(cfg.noisy_expert_prob)
            provenance["noisy_action_std"] = str(cfg.noisy_action_std)
        if quality == "expert" and cfg.expert_noise_std > 0:
            provenance["expert_noise_std"] = str(cfg.expert_noise_std)
        if quality == "damped":
            provenance["damped_scale"] = str(cfg.damped_scale)
            provenance["damped_noise_std"] = str(cfg.damped_noise_std)
            provenance["damped_expert_prob"] = str(cfg.damped_expert_prob)
        out.append(dataclasses.replace(episode, quality=quality, policy=policy_name, provenance=provenance,
                                       episode_id=f"generate/{task}/{quality}/{index:05d}"))
    return out


def generate_episodes(cfg: GenerateConfig, *, stats: ReturnStats | None = None,
                      progress: bool = True) -> Iterator[Episode]:
    """Yield `cfg.episodes(quality)` episodes per task and quality, in (task, quality, index) order.

    Runs of up to `_CHUNK` episodes of one (task, quality) are simulated by `generate.workers` processes side
    by side (episodes are seeded individually, so the result depends neither on the number of workers nor on
    the runs' size) and yielded in order as they complete, so ingestion streams them.

    Args:
        cfg: tasks, qualities, counts, time limit, vision, seed and the behaviour policies' parameters.
        stats: if given, every yielded episode is recorded in it (for the summary table).
        progress: show a tqdm bar over episodes (on stderr).

    Raises:
        UnknownTaskError: a task id is not registered (raised before anything is simulated).
        RenderingUnavailable: `cfg.vision` on a machine that cannot render.
    """
    check_config(cfg)
    units = _units(cfg)
    workers = min(cfg.workers or os.cpu_count() or 1, len(units))
    bar = tqdm(total=total_episodes(cfg), desc="generate", unit="ep", disable=not progress)
    try:
        if workers == 1:
            runs: Iterator[list[Episode]] = (_run(cfg, *unit) for unit in units)
            for episodes in runs:
                yield from _emit(episodes, stats, bar)
            return
        # spawn: a forked MuJoCo/OpenMP runtime is not safe to reuse; workers are not daemons, so the
        # rollout may start processes of its own.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run, cfg, *unit) for unit in units]
            try:
                for future in futures:
                    yield from _emit(future.result(), stats, bar)
            finally:
                for future in futures:
                    future.cancel()
    finally:
        bar.close()


def _emit(episodes: list[Episode], stats: ReturnStats | None, bar: tqdm) -> Iterator[Episode]:
    for episode in episodes:
        if stats is not None:
            stats.add(episode)
        bar.set_postfix_str(f"{episode.task} {episode.quality}")
        bar.update(1)
        yield episode
