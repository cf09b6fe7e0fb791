"""Behaviour policies that generate the offline data, one per quality label.

- `random`: uniform over the action bounds (the worst data, wide coverage).
- `noisy`: the expert, but each step with probability `1 - expert_prob` a uniform random action
  replaces its action, and Gaussian noise perturbs the rest (sub-optimal, still task-directed).
- `damped`: the expert's action shrunk towards the centre of the range (a sluggish controller):
  consistently sub-optimal in the expert's own states, so the data's most frequent action there is
  a worse one (what behaviour cloning copies and a critic can see past). Optional Gaussian noise
  around the damped action (an exploring sluggish controller) puts better and worse actions next to
  the data's mode, the counterfactuals a critic needs to rank actions in those states. With
  `expert_prob` > 0 a step takes the expert's own action instead: the better action then sits beside
  the data's mode in the same states, where a critic can rank the two and BC copies the mode.
- `expert`: the task's expert controller (`pac.envs.experts`), which reads privileged physics state.

A policy acts on the `Env` itself, not only on the observation, because experts need that state.
"""

from __future__ import annotations

import abc

import numpy as np

from pac.config import BEHAVIOUR_QUALITIES
from pac.envs.env import Env, Obs
from pac.envs.registry import TaskSpec


class Policy(abc.ABC):
    """A behaviour policy. `reset` before each episode, then `act` once per step."""

    name: str = "policy"

    def reset(self, env: Env, seed: int) -> None:
        """Prepare for an episode in `env` (already reset); `seed` drives any randomness of the policy."""
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def act(self, env: Env, obs: Obs) -> np.ndarray:
        """The raw action (within `env.action_low/high`) for the current state of `env`."""


class RandomPolicy(Policy):
    """Uniform random actions within the bounds."""

    name = "random"

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        return self.rng.uniform(env.action_low, env.action_high).astype(np.float32)


class NoisyPolicy(Policy):
    """An expert degraded by random action substitution and Gaussian noise.

    Args:
        expert: the expert to degrade; it is queried every step (also when its action is replaced)
            so that stateful experts (the planner's warm start) keep tracking the episode.
        expert_prob: probability that a step uses the (noised) expert action rather than a uniform one.
        noise_std: Gaussian noise standard deviation as a fraction of half the action range.
    """

    def __init__(self, expert: Policy, expert_prob: float, noise_std: float) -> None:
        if not 0.0 <= expert_prob <= 1.0:
            raise ValueError(f"expert_prob must be in [0, 1], got {expert_prob}")
        if noise_std < 0.0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.expert, self.expert_prob, self.noise_std = expert, expert_prob, noise_std
        self.name = f"noisy_{expert.name}"

    def reset(self, env: Env, seed: int) -> None:
        super().reset(env, seed)
        # A separate stream for the expert, so its behaviour does not depend on how often noise is drawn.
        self.expert.reset(env, int(self.rng.integers(2**31)))

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        action = self.expert.act(env, obs)
        if self.rng.random() >= self.expert_prob:
            return self.rng.uniform(env.action_low, env.action_high).astype(np.float32)
        half_range = (env.action_high - env.action_low) / 2
        action = action + self.rng.normal(size=action.shape) * self.noise_std * half_range
        return env.clip(action)


class DampedPolicy(Policy):
    """The expert with every action scaled by `scale` towards the centre of the action range.

    Args:
        expert: the controller to damp.
        scale: factor on the expert's action relative to the range's centre (0: always the centre).
        expert_prob: per-step probability of acting with the expert's undamped action instead.
    """

    def __init__(self, expert: Policy, scale: float, expert_prob: float = 0.0) -> None:
        if not 0.0 <= scale <= 1.0:
            raise ValueError(f"scale must be in [0, 1], got {scale}")
        if not 0.0 <= expert_prob <= 1.0:
            raise ValueError(f"expert_prob must be in [0, 1], got {expert_prob}")
        self.expert, self.scale, self.expert_prob = expert, scale, expert_prob
        self.name = f"damped_{expert.name}"

    def reset(self, env: Env, seed: int) -> None:
        super().reset(env, seed)
        self.expert.reset(env, seed)

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        action = self.expert.act(env, obs)
        # No draw when the option is off, so the damped data of earlier runs is reproduced exactly.
        if self.expert_prob > 0 and self.rng.random() < self.expert_prob:
            return env.clip(action)
        centre = (env.action_high + env.action_low) / 2
        return env.clip(centre + self.scale * (action - centre))


def make_policy(spec: TaskSpec, quality: str, *, expert_prob: float, noise_std: float, damped_scale: float,
                damped_noise_std: float, damped_expert_prob: float, expert_noise_std: float) -> Policy:
    """A fresh behaviour policy of one quality level for a task (one per environment: policies keep state).

    Args:
        spec: the task (selects the expert).
        quality: one of `pac.config.BEHAVIOUR_QUALITIES`.
        expert_prob: the noisy policy's probability of acting with the expert (`GenerateConfig`).
        noise_std: the noisy policy's Gaussian noise, a fraction of half the action range (`GenerateConfig`).
        damped_scale: the damped policy's scale of the expert's actions (`GenerateConfig`).
        damped_noise_std: Gaussian noise on the damped policy's actions, a fraction of half the action
            range (`GenerateConfig`; 0: none).
        damped_expert_prob: the damped policy's per-step probability of taking the expert's own action
            (`GenerateConfig`; 0: never).
        expert_noise_std: Gaussian noise on the expert's own actions, a fraction of half the action range
            (`GenerateConfig`; 0: the deterministic expert).

    Raises:
        ValueError: unknown quality.
    """
    from pac.envs.experts import make_expert  # experts import this module

    if quality == "random":
        return RandomPolicy()
    if quality == "expert":
        return NoisyPolicy(make_expert(spec), 1.0, expert_noise_std) if expert_noise_std > 0 else make_expert(spec)
    if quality == "noisy":
        return NoisyPolicy(make_expert(spec), expert_prob, noise_std)
    if quality == "damped":
        damped = DampedPolicy(make_expert(spec), damped_scale, damped_expert_prob)
        return NoisyPolicy(damped, 1.0, damped_noise_std) if damped_noise_std > 0 else damped
    raise ValueError(f"unknown behaviour quality {quality!r}; choose from {', '.join(BEHAVIOUR_QUALITIES)}")
