"""Action sources: what acts in a rollout (scripted controllers, the random policy, a trained network)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from pac.config import EvalConfig
from pac.envs import Env, Obs, TaskSpec
from pac.envs.policies import Policy, RandomPolicy
from pac.inputs import Observation, denormalize_action, normalize_proprio, task_stats
from pac.networks import PerceiverActorCritic
from pac.networks.acting import choose_actions

log = logging.getLogger(__name__)

@runtime_checkable
class ActionSource(Protocol):
    """Chooses actions for a batch of environments of one task; what every rollout runs.

    `start` is called when an episode begins in environment slot `slot` (after `env.reset(seed)`),
    with that episode's seed: a source keys any per-episode state and randomness by slot, so an
    episode's behaviour depends only on its seed. `act` receives the running slots, their
    environments and current observations, and returns raw actions (N, A) within the task's bounds
    (values outside are clipped).

    A source may set `reads_simulator = False` when it reads only what `pac.envs.pool.RemoteEnv` holds (spec,
    instruction, action bounds): its rollouts may then step their environments in worker processes
    (`eval.env_workers`). Without the attribute a source is assumed to read the simulator (`env.physics`,
    as the experts do) and its environments stay in the rollout's process.
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
        reads_simulator: whether the policies read simulator state (experts do; see `ActionSource`).
    """

    def __init__(self, factory: Callable[[TaskSpec], Policy], name: str = "scripted",
                 reads_simulator: bool = True) -> None:
        self.factory, self.name, self.reads_simulator = factory, name, reads_simulator
        self._policies: dict[int, Policy] = {}

    def start(self, slot: int, env: Env, seed: int) -> None:
        policy = self.factory(env.spec)
        policy.reset(env, seed)
        self._policies[slot] = policy

    def act(self, slots: Sequence[int], envs: Sequence[Env], obs: Sequence[Obs]) -> np.ndarray:
        return np.stack([self._policies[s].act(e, o) for s, e, o in zip(slots, envs, obs, strict=True)])


def random_source() -> ScriptedSource:
    """Uniform random actions within the bounds: the normalised score's 0."""
    return ScriptedSource(lambda spec: RandomPolicy(), name="random", reads_simulator=False)


class NetworkPolicy:
    """The trained (or training) network as an `ActionSource`: one forward pass for all running envs.

    Action selection (`EvalConfig`, one implementation: `pac.networks.acting.choose_actions`):
    - `q_select_samples` = K > 0 and the network's critic was trained: K actions sampled from the tempered
      policy (plus the greedy action when `greedy`) are scored by the Q decoder against one encoding of the
      state; the highest expected Q wins. A network trained without a critic (BC) acts by its policy alone.
    - else `greedy`: the model's decoding rule (`model.action_decode`); else a sample from softmax(logits /
      `temperature`).
    - `epsilon`: with this probability per step a uniform random action replaces the choice
      (exploration for collection).

    The network is switched to eval mode for each forward pass and restored afterwards, so the
    training loop can pass its live module (under ZeRO-3 every rank must take part: the parameter
    gathers are collective).

    Args:
        net: the actor-critic (any device; observations follow it).
        cfg: action-selection settings.
        critic: whether the network's Q decoder was trained (`ObjectiveConfig.trains_critic` of its config).
        name: the policy's name in reports and collected episodes (e.g. the model URI).
    """

    reads_simulator = False  # states, instructions and action bounds only: its environments may step anywhere

    def __init__(self, net: PerceiverActorCritic, cfg: EvalConfig, *, critic: bool, name: str = "policy") -> None:
        self.net, self.cfg, self.name = net, cfg, name
        # the critic's pick needs a critic: an untrained Q decoder would choose among samples at random
        self.q_select_samples = cfg.q_select_samples if critic else 0
        self.device = next(net.parameters()).device
        self._rngs: dict[int, np.random.Generator] = {}

    @property
    def selection(self) -> str:
        """How actions are chosen, for reports and provenance."""
        greedy = f"greedy ({self.net.cfg.action_decode})"
        rule = greedy if self.cfg.greedy else f"sampled (T={self.cfg.temperature:g})"
        if self.q_select_samples:
            rule = f"critic's pick of {self.q_select_samples} samples" + f" and the {greedy} action" * self.cfg.greedy
        return rule + (f", epsilon {self.cfg.epsilon:g}" if self.cfg.epsilon else "")

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
        if was_training:  # only then: `train()` walks every module, a quarter of a tiny policy's step
            self.net.eval()
        try:
            normalized = choose_actions(self.net, self.net.encode(batch), num_dims, greedy=self.cfg.greedy,
                                        temperature=self.cfg.temperature, q_select_samples=self.q_select_samples,
                                        rngs=rngs).cpu().numpy()  # (N, A) in [-1, 1]
        finally:
            if was_training:
                self.net.train()
        if self.cfg.epsilon > 0:
            for row, rng in enumerate(rngs):
                if rng.random() < self.cfg.epsilon:
                    normalized[row] = rng.uniform(-1.0, 1.0, num_dims)
        return np.stack([denormalize_action(a, e.action_low, e.action_high) for a, e in zip(normalized, envs)])


# --------------------------------------------------------------------------------------------- the rollout
