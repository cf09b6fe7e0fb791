"""Categorical action and value distributions: discretisation, log-probabilities, sampling.

Actions are normalised to [-1, 1] (`pac.inputs.normalize_action`) and discretised per dimension
into uniform bins; the policy factorises over action dimensions (PAC.md, "Ours").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pac.config import ModelConfig


def action_to_bins(actions: torch.Tensor, bins: int) -> torch.Tensor:
    """Nearest bin index of each normalised action value: (...,) float -> (...,) int64."""
    return torch.round((actions.clamp(-1, 1) + 1) * 0.5 * (bins - 1)).long()


def bins_to_action(index: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin centre in [-1, 1] of each bin index."""
    return index.float() * (2.0 / (bins - 1)) - 1.0


def value_support(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The fixed atoms of the categorical Q distribution: (atoms,)."""
    return torch.linspace(cfg.value_min, cfg.value_max, cfg.value_atoms, device=device)


def expected_value(q_logits: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Mean of the categorical value distribution: (..., atoms) -> (...)."""
    return (F.softmax(q_logits.float(), dim=-1) * support).sum(-1)


def log_prob(policy_logits: torch.Tensor, index: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) of factorised categorical actions, summed over the valid action dimensions.

    Args:
        policy_logits: (B, A, bins).
        index: bin indices (B, A) or (B, K, A) for K actions per state.
        action_mask: (B, A) bool, False for dimensions the embodiment does not have.

    Returns:
        (B,) or (B, K) log-probabilities.
    """
    logp = F.log_softmax(policy_logits.float(), dim=-1)  # (B, A, bins)
    if index.dim() == 3:
        logp = logp[:, None].expand(-1, index.shape[1], -1, -1)  # (B, K, A, bins)
        mask = action_mask[:, None]
    else:
        mask = action_mask
    per_dim = logp.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # (B, [K,] A)
    return (per_dim * mask).sum(-1)


def entropy(policy_logits: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Entropy of the factorised policy per state (B,), summed over valid dimensions."""
    logp = F.log_softmax(policy_logits.float(), dim=-1)
    return (-(logp.exp() * logp).sum(-1) * action_mask).sum(-1)


def sample_actions(policy_logits: torch.Tensor, num: int, *, temperature: float = 1.0, uniform_mix: float = 0.0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `num` actions per state from the (tempered, optionally uniform-mixed) policy.

    Returns:
        bin indices (B, num, A) and the corresponding normalised actions (B, num, A).
    """
    b, a, bins = policy_logits.shape
    probs = F.softmax(policy_logits.float() / temperature, dim=-1)  # (B, A, bins)
    if uniform_mix > 0:
        probs = (1 - uniform_mix) * probs + uniform_mix / bins
    flat = probs.reshape(b * a, bins)
    index = torch.multinomial(flat, num, replacement=True, generator=generator)  # (B*A, num)
    index = index.view(b, a, num).transpose(1, 2)  # (B, num, A)
    return index, bins_to_action(index, bins)
