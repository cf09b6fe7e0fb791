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
from collections.abc import Iterator
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
from pac.evaluation import ScriptedSource, TaskPlan, iter_rollout

GENERATOR_VERSION = "2"  # bump when the same config would produce different episodes
_HIST_BINS = 10


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


def check_config(cfg: GenerateConfig) -> None:
    """Fail before any simulation if a task is unknown (the message lists the valid ones; qualities are
    checked when the `GenerateConfig` is made)."""
    for task in cfg.tasks:
        get_task(task)


def generate_episodes(cfg: GenerateConfig, *, stats: ReturnStats | None = None,
                      progress: bool = True) -> Iterator[Episode]:
    """Yield `cfg.episodes_per_policy` episodes per task and quality, lazily (ingestion streams them).

    Args:
        cfg: tasks, qualities, counts, time limit, vision, seed and the noisy policy's parameters.
        stats: if given, every yielded episode is recorded in it (for the summary table).
        progress: show a tqdm bar over episodes (on stderr).

    Raises:
        UnknownTaskError: a task id is not registered (raised before anything is simulated).
        RenderingUnavailable: `cfg.vision` on a machine that cannot render.
    """
    check_config(cfg)
    rollout_cfg = EvalConfig(episodes=cfg.episodes_per_policy, num_envs=1, episode_steps=cfg.episode_steps,
                             seed=cfg.seed, video=False)
    versions = {"mujoco": mujoco.__version__, "dm_control": metadata.version("dm-control")}
    total = len(cfg.tasks) * len(cfg.qualities) * cfg.episodes_per_policy
    bar = tqdm(total=total, desc="generate", unit="ep", disable=not progress)
    try:
        for task in cfg.tasks:
            plan = TaskPlan(get_task(task), vision=cfg.vision, image_size=cfg.image_size)
            for quality in cfg.qualities:
                # ScriptedSource builds a fresh policy per episode (experts keep per-episode state).
                factory = functools.partial(make_policy, quality=quality, expert_prob=cfg.noisy_expert_prob,
                                            noise_std=cfg.noisy_action_std, damped_scale=cfg.damped_scale,
                                            damped_noise_std=cfg.damped_noise_std,
                                            damped_expert_prob=cfg.damped_expert_prob)
                policy_name = factory(plan.spec).name
                bar.set_postfix_str(f"{task} {quality}")
                rollouts = iter_rollout(ScriptedSource(factory, name=policy_name), plan, rollout_cfg,
                                        stream=seed_stream(quality), record=True, videos=0, progress=False)
                for result, episode in rollouts:
                    if episode is None:  # record=True always builds it
                        raise RuntimeError("the rollout did not record the episode")
                    provenance = {
                        "source": "generate", "generator_version": GENERATOR_VERSION, "pac_version": __version__,
                        "task": task, "quality": quality, "policy": policy_name, "seed": str(result.seed),
                        "base_seed": str(cfg.seed), "index": str(result.index),
                        "episode_steps": str(cfg.episode_steps), "vision": str(cfg.vision), **versions}
                    if quality == "noisy":
                        provenance["noisy_expert_prob"] = str(cfg.noisy_expert_prob)
                        provenance["noisy_action_std"] = str(cfg.noisy_action_std)
                    if quality == "damped":
                        provenance["damped_scale"] = str(cfg.damped_scale)
                        provenance["damped_noise_std"] = str(cfg.damped_noise_std)
                        provenance["damped_expert_prob"] = str(cfg.damped_expert_prob)
                    episode = dataclasses.replace(episode, quality=quality, policy=policy_name,
                                                  provenance=provenance,
                                                  episode_id=f"generate/{task}/{quality}/{result.index:05d}")
                    if stats is not None:
                        stats.add(episode)
                    bar.update(1)
                    yield episode
    finally:
        bar.close()
