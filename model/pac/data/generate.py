"""Behaviour-data generation: tasks x qualities x episodes of the simulated suite, as `Episode`s.

    stats = ReturnStats(cfg.episode_steps)
    ref = ingest(generate_episodes(cfg, stats=stats), "control", storage=...)  # streams, one episode at a time
    print(stats.table())

Every episode's seed is a hash of (generate.seed, task, quality, index), so an episode can be
regenerated on its own, and adding a task or a quality never changes the other episodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata

import mujoco
import numpy as np
from tqdm import tqdm

from pac import __version__
from pac.config import ConfigError, GenerateConfig
from pac.data.schema import Episode
from pac.envs import Env, get_task, make_env
from pac.envs.policies import QUALITY_LEVELS, Policy, make_policy

GENERATOR_VERSION = "1"  # bump when the same config would produce different episodes
_HIST_BINS = 10


def episode_seed(base_seed: int, task: str, quality: str, index: int) -> int:
    """A 31-bit seed that depends only on its arguments (never on Python's salted `hash`)."""
    digest = hashlib.sha256(f"{base_seed}/{task}/{quality}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def record_episode(env: Env, policy: Policy, seed: int, quality: str, provenance: dict[str, str],
                   episode_id: str) -> Episode:
    """Run `policy` in `env` for one episode and return it as an `Episode`.

    Args:
        env: a `pac.envs.Env`; reset here with `seed` (its initial state depends on the seed alone).
        policy: a `pac.envs.policies.Policy`; reset here with a seed derived from `seed`.
        seed: the episode seed.
        quality: the quality label stored with the episode.
        provenance: string metadata stored with the episode.
        episode_id: unique id of the episode.
    """
    obs = env.reset(seed=seed)
    policy.reset(env, seed ^ 0x5A5A5A5A)  # a stream distinct from the initial-state draw
    proprio, images = [obs["proprio"]], [obs["image"]]
    actions, rewards, discounts = [], [], []
    done = False
    while not done:
        action = env.clip(policy.act(env, obs))  # stored exactly as executed
        obs, reward, discount, done = env.step(action)
        proprio.append(obs["proprio"])
        images.append(obs["image"])
        actions.append(action)
        rewards.append(reward)
        discounts.append(discount)
    return Episode(
        task=env.spec.id, instruction=env.instruction, proprio=np.stack(proprio).astype(np.float32),
        actions=np.stack(actions).astype(np.float32), rewards=np.asarray(rewards, np.float32),
        discounts=np.asarray(discounts, np.float32), action_low=env.action_low.copy(),
        action_high=env.action_high.copy(), images=np.stack(images) if env.vision else None, quality=quality,
        policy=policy.name, provenance=provenance, episode_id=episode_id)


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
    """Fail before any simulation if a task or quality is unknown (the message lists the valid ones)."""
    for task in cfg.tasks:
        get_task(task)
    unknown = [q for q in cfg.qualities if q not in QUALITY_LEVELS]
    if unknown:
        raise ConfigError(f"generate.qualities: unknown {unknown}; choose from {', '.join(QUALITY_LEVELS)}")


def generate_episodes(cfg: GenerateConfig, *, stats: ReturnStats | None = None,
                      progress: bool = True) -> Iterator[Episode]:
    """Yield `cfg.episodes_per_policy` episodes per task and quality, lazily (ingestion streams them).

    Args:
        cfg: tasks, qualities, counts, time limit, vision, seed and the noisy policy's parameters.
        stats: if given, every yielded episode is recorded in it (for the summary table).
        progress: show a tqdm bar over episodes (on stderr).

    Raises:
        UnknownTaskError: a task id is not registered (raised before anything is simulated).
        ConfigError: an unknown quality.
    """
    check_config(cfg)
    total = len(cfg.tasks) * len(cfg.qualities) * cfg.episodes_per_policy
    bar = tqdm(total=total, desc="generate", unit="ep", disable=not progress)
    try:
        for task in cfg.tasks:
            env = make_env(task, seed=cfg.seed, episode_steps=cfg.episode_steps, vision=cfg.vision,
                           image_size=cfg.image_size)
            try:
                for quality in cfg.qualities:
                    policy = make_policy(env, quality, expert_prob=cfg.noisy_expert_prob,
                                         noise_std=cfg.noisy_action_std)
                    bar.set_postfix_str(f"{task} {quality}")
                    for index in range(cfg.episodes_per_policy):
                        seed = episode_seed(cfg.seed, task, quality, index)
                        provenance = {
                            "source": "generate", "generator_version": GENERATOR_VERSION, "pac_version": __version__,
                            "task": task, "quality": quality, "policy": policy.name, "seed": str(seed),
                            "base_seed": str(cfg.seed), "index": str(index), "episode_steps": str(cfg.episode_steps),
                            "vision": str(cfg.vision), "mujoco": mujoco.__version__,
                            "dm_control": metadata.version("dm-control")}
                        if quality == "noisy":
                            provenance["noisy_expert_prob"] = str(cfg.noisy_expert_prob)
                            provenance["noisy_action_std"] = str(cfg.noisy_action_std)
                        episode = record_episode(env, policy, seed, quality, provenance,
                                                 f"generate/{task}/{quality}/{index:05d}")
                        if stats is not None:
                            stats.add(episode)
                        bar.update(1)
                        yield episode
            finally:
                env.close()
    finally:
        bar.close()
