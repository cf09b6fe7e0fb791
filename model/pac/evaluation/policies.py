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
from pac.networks import PerceiverActorCritic, bins_to_action, decode_greedy, expected_value, value_support

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

    reads_simulator = False  # states, instructions and action bounds only: its environments may step anywhere

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
        if was_training:  # only then: `train()` walks every module, a quarter of a tiny policy's step
            self.net.eval()
        try:
            normalized = self._choose(batch, num_dims, rngs)  # (N, A) in [-1, 1]
        finally:
            if was_training:
                self.net.train()
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
