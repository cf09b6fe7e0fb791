"""How a trained actor-critic chooses actions: the greedy decode, sampling, and the critic's pick among samples.

One implementation for every place a network acts (rollouts, collection, the served MLflow model), so the
same settings give the same actions everywhere. Pure torch + numpy generators: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pac.networks.actor_critic import PerceiverActorCritic
from pac.networks.distributions import bins_to_action, decode_greedy, expected_value, value_support


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


def choose_actions(net: PerceiverActorCritic, latents: torch.Tensor, num_dims: int, *, greedy: bool,
                   temperature: float, q_select_samples: int,
                   rngs: Sequence[np.random.Generator]) -> torch.Tensor:
    """The actions of N encoded states, normalised to [-1, 1]: (N, A).

    - `q_select_samples` = K > 0: K actions sampled from softmax(logits / temperature), plus the greedy
      action when `greedy`, are scored by the Q decoder; the highest expected Q wins. The policy's fixed
      point (alpha * b + (1 - alpha) * pi_imp) keeps most of its mass on the data's most frequent action
      even where the critic ranks another higher; the pick acts on the critic's ranking (docs/quality.md).
      Only meaningful for a network whose critic was trained (`ObjectiveConfig.trains_critic`).
    - otherwise `greedy`: the model's decoding rule (`model.action_decode`); else one sample.

    Args:
        net: the actor-critic, in eval mode.
        latents: (N, L, D) from `net.encode`.
        num_dims: action dimensions to decode.
        greedy, temperature, q_select_samples: the selection settings (`EvalConfig`).
        rngs: one generator per state: an episode's actions depend on its own seed only.
    """
    mcfg = net.cfg
    logits = net.policy_logits(latents, num_dims).float()  # (N, A, bins)
    chosen = (decode_greedy(logits, mcfg.action_bins, mcfg.action_decode, mcfg.action_decode_k, mcfg.action_bin_mu)
              if greedy else None)  # (N, A)
    if q_select_samples == 0 and chosen is not None:
        return chosen
    index = torch.from_numpy(sample_bins(logits, temperature, rngs, max(q_select_samples, 1))).to(logits.device)
    candidates = bins_to_action(index, mcfg.action_bins, mcfg.action_bin_mu)  # (N, K, A)
    if q_select_samples == 0:
        return candidates[:, 0]
    if chosen is not None:  # the greedy action competes as decoded, so a critic that prefers it keeps it exactly
        candidates = torch.cat([chosen[:, None], candidates], dim=1)  # (N, 1+K, A)
    mask = torch.ones(candidates.shape[0], num_dims, dtype=torch.bool, device=candidates.device)
    best, _ = select_by_q(net, latents, candidates, mask)
    return candidates[torch.arange(len(best), device=best.device), best]
