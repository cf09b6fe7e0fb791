"""Categorical action and value distributions: discretisation, log-probabilities, sampling.

Actions are normalised to [-1, 1] (`pac.inputs.normalize_action`) and discretised per dimension
into bins; the policy factorises over action dimensions (PAC.md, "Ours"). The bins are uniform in
`warp(a)`: with `mu` = 0 (the paper's layout) uniform in the action itself; with `mu` > 0 a mu-law that puts
bins densely around 0 and sparsely towards the bounds (`model.action_bin_mu`; docs/learner.md: a balancing
expert whose actions are mostly below a uniform bin's width).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pac.config import ModelConfig


def warp(actions: torch.Tensor, mu: float = 0.0) -> torch.Tensor:
    """[-1, 1] -> [-1, 1], the space the bins are uniform in: identity (mu = 0) or mu-law."""
    if not mu:
        return actions
    return torch.sign(actions) * torch.log1p(mu * actions.abs()) / math.log1p(mu)


def unwarp(u: torch.Tensor, mu: float = 0.0) -> torch.Tensor:
    """The inverse of `warp`."""
    if not mu:
        return u
    a = torch.sign(u) * torch.expm1(u.abs() * math.log1p(mu)) / mu
    return torch.where(u.abs() >= 1, torch.sign(u), a)  # the bounds exactly (a saturating expert's action)


def action_to_bins(actions: torch.Tensor, bins: int, mu: float = 0.0) -> torch.Tensor:
    """Nearest bin index of each normalised action value: (...,) float -> (...,) int64."""
    return torch.round((warp(actions.float().clamp(-1, 1), mu) + 1) * 0.5 * (bins - 1)).long()


def bins_to_action(index: torch.Tensor, bins: int, mu: float = 0.0) -> torch.Tensor:
    """Bin centre in [-1, 1] of each bin index."""
    return unwarp(index.float() * (2.0 / (bins - 1)) - 1.0, mu)


def action_targets(actions: torch.Tensor, bins: int, kind: str = "onehot", sigma: float = 0.75,
                   mu: float = 0.0) -> torch.Tensor:
    """Target distribution over the bins of each normalised action value: (...,) -> (..., bins).

    * ``onehot``: all mass on the nearest bin (the plain categorical likelihood).
    * ``twohot``: the mass split between the two bins around the value in proportion to closeness, so the
      target's mean is the value itself.
    * ``hlgauss``: a Gaussian of standard deviation `sigma` bin widths around the value, integrated over each
      bin (Imani & White 2018; Farebrother et al. 2024): neighbouring bins share the credit.

    Why: a continuous expert's action falls between bin centres and its neighbours are nearly as good; a
    one-hot target teaches each bin separately and says nothing about distance.
    """
    x = (warp(actions.float().clamp(-1, 1), mu) + 1) * 0.5 * (bins - 1)  # (...,) in bin units
    if kind == "onehot":
        return F.one_hot(torch.round(x).long(), bins).float()
    if kind == "twohot":
        low = x.floor().clamp(max=bins - 2)
        frac = (x - low).unsqueeze(-1)  # (..., 1)
        low_hot = F.one_hot(low.long(), bins).float()
        return low_hot * (1 - frac) + torch.roll(low_hot, 1, -1) * frac
    if kind == "hlgauss":
        edges = torch.arange(bins + 1, device=x.device, dtype=torch.float32) - 0.5  # (bins + 1,)
        cdf = torch.special.ndtr((edges - x.unsqueeze(-1)) / sigma)  # (..., bins + 1)
        mass = cdf[..., 1:] - cdf[..., :-1]
        return mass / mass.sum(-1, keepdim=True)  # the tails beyond [-1, 1] go to the bins inside
    raise ValueError(f"unknown action target {kind!r}; use onehot, twohot or hlgauss")


def cross_entropy(policy_logits: torch.Tensor, targets: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """-sum_bins target * log pi per dimension, summed over valid dimensions: (B, A, bins) -> (B,)."""
    logp = F.log_softmax(policy_logits.float(), dim=-1)
    return (-(targets * logp).sum(-1) * action_mask).sum(-1)


def decode_greedy(policy_logits: torch.Tensor, bins: int, rule: str = "argmax", k: int = 5,
                  mu: float = 0.0) -> torch.Tensor:
    """The deterministic action of the policy per dimension, normalised: (..., A, bins) -> (..., A).

    * ``argmax``: the centre of the most likely bin.
    * ``mean``: the mean of each dimension's bin distribution (a smooth estimate; a two-peaked distribution
      lands between its peaks).
    * ``topk``: the mean over the `k` bins around the most likely one (its neighbourhood), renormalised:
      as smooth as the mean near the mode, blind to far-away mass.
    """
    centres = bins_to_action(torch.arange(bins, device=policy_logits.device), bins, mu)  # (bins,)
    if rule == "argmax":
        return bins_to_action(policy_logits.argmax(-1), bins, mu)
    probs = F.softmax(policy_logits.float(), dim=-1)  # (..., A, bins)
    if rule == "mean":
        return (probs * centres).sum(-1)
    if rule == "topk":
        mode = policy_logits.argmax(-1, keepdim=True)  # (..., A, 1)
        near = (torch.arange(bins, device=probs.device) - mode).abs() <= k // 2  # (..., A, bins)
        w = probs * near
        return (w * centres).sum(-1) / w.sum(-1).clamp_min(1e-12)
    raise ValueError(f"unknown decoding rule {rule!r}; use argmax, mean or topk")


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
                   generator: torch.Generator | None = None, mu: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
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
    return index, bins_to_action(index, bins, mu)
