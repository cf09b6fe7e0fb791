"""Perceiver-IO actor-critic networks (pure torch: no I/O, no distributed or tracking code)."""

from __future__ import annotations

import torch

from pac.config import ModelConfig
from pac.networks.actor_critic import ActorCriticOutput, PerceiverActorCritic
from pac.networks.distributions import (
    action_targets,
    action_to_bins,
    bins_to_action,
    cross_entropy,
    decode_greedy,
    entropy,
    expected_value,
    log_prob,
    sample_actions,
    value_support,
)

__all__ = [
    "ActorCriticOutput",
    "PerceiverActorCritic",
    "action_targets",
    "action_to_bins",
    "bins_to_action",
    "build_model",
    "count_parameters",
    "cross_entropy",
    "decode_greedy",
    "entropy",
    "expected_value",
    "log_prob",
    "sample_actions",
    "value_support",
]


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> PerceiverActorCritic:
    """Construct the network; pass device="meta" to size a large preset without allocating it."""
    with torch.device(device or "cpu"):
        return PerceiverActorCritic(cfg)


def count_parameters(cfg: ModelConfig) -> int:
    """Parameter count of a config, computed on the meta device (no memory is allocated)."""
    return sum(p.numel() for p in build_model(cfg, "meta").parameters())
