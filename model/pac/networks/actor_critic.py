"""The Perceiver-IO actor-critic: encoders -> latents -> policy and distributional-Q decoders."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pac.config import ModelConfig
from pac.inputs import Observation
from pac.networks.attention import CrossAttentionBlock, SelfAttentionBlock
from pac.networks.decoders import PolicyDecoder, QDecoder
from pac.networks.encoders import LanguageEncoder, ProprioEncoder, VisionEncoder
from pac.networks.layers import Embedding


class PerceiverEncoder(nn.Module):
    """e_I -> z_0 cross-attends the input tokens -> M self-attention blocks -> z_M.

    All parameters live in submodules called through `forward`, so ZeRO-3's per-module gather hooks
    see every one of them.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proprio = ProprioEncoder(cfg)
        self.vision = VisionEncoder(cfg)
        self.language = LanguageEncoder(cfg)
        # Per-modality type embedding, plus one always-valid token so a sample with every modality
        # absent still has a defined attention distribution.
        self.modality = Embedding(4, cfg.d_model)
        self.num_latents = cfg.num_latents
        self.latents = Embedding(cfg.num_latents, cfg.d_model)  # z_0
        self.read = CrossAttentionBlock(cfg.d_model, cfg.num_heads, cfg.mlp_ratio)
        self.blocks = nn.ModuleList(SelfAttentionBlock(cfg.d_model, cfg.num_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.num_blocks))

    def forward(self, obs: Observation) -> torch.Tensor:
        b = obs.batch_size
        _check_finite(obs)
        parts = [self.proprio(obs.proprio, obs.proprio_mask), self.language(obs.text, obs.text_mask)]
        if obs.image is not None:
            present = obs.image_mask if obs.image_mask is not None else torch.ones(
                b, dtype=torch.bool, device=obs.image.device)
            parts.append(self.vision(obs.image, present))
        device = obs.proprio.device
        types = self.modality(torch.arange(4, device=device))  # (4, D)
        tokens = [t + types[i] for i, (t, _) in enumerate(parts)]
        tokens.append(types[3].expand(b, 1, -1))  # the always-valid token
        masks = [m for _, m in parts] + [torch.ones(b, 1, dtype=torch.bool, device=device)]
        e = torch.cat(tokens, dim=1)  # (B, L, D)
        z = self.latents(torch.arange(self.num_latents, device=device)).expand(b, -1, -1)  # (B, N, D)
        z = self.read(z, e, torch.cat(masks, dim=1))
        for block in self.blocks:
            z = block(z)
        return z  # (B, N, D)


@dataclass
class ActorCriticOutput:
    latents: torch.Tensor  # (B, N, D)
    policy_logits: torch.Tensor  # (B, A, bins)
    q_logits: torch.Tensor | None  # (B, K, atoms)


class PerceiverActorCritic(nn.Module):
    """PAC network. Call `encode` once per state, then the policy and Q decoders on the latents."""

    # Activation-checkpointing units, declared as data for the training engine.
    checkpoint_units: tuple[type[nn.Module], ...] = (CrossAttentionBlock, SelfAttentionBlock)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PerceiverEncoder(cfg)
        self.policy = PolicyDecoder(cfg)
        self.q = QDecoder(cfg)

    def encode(self, obs: Observation) -> torch.Tensor:
        return self.encoder(obs)  # (B, N, D)

    def policy_logits(self, latents: torch.Tensor, num_action_dims: int) -> torch.Tensor:
        return self.policy(latents, num_action_dims)  # (B, A, bins)

    def q_logits(self, latents: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        return self.q(latents, actions, action_mask)  # (B, K, atoms)

    def forward(self, obs: Observation, num_action_dims: int, actions: torch.Tensor | None = None,
                action_mask: torch.Tensor | None = None) -> ActorCriticOutput:
        z = self.encode(obs)
        q = None
        if actions is not None:
            if actions.dim() == 2:
                actions = actions[:, None]  # one candidate per state
            mask = action_mask if action_mask is not None else torch.ones(
                actions.shape[0], actions.shape[-1], dtype=torch.bool, device=actions.device)
            q = self.q_logits(z, actions, mask)
        return ActorCriticOutput(z, self.policy_logits(z, num_action_dims), q)


def _check_finite(obs: Observation) -> None:
    if not torch.isfinite(obs.proprio).all():
        raise ValueError("observation proprio contains NaN or inf")
    if obs.proprio.shape != obs.proprio_mask.shape:
        raise ValueError(f"proprio {tuple(obs.proprio.shape)} and proprio_mask {tuple(obs.proprio_mask.shape)} "
                         "shapes differ")
    if obs.text.shape != obs.text_mask.shape or obs.text.shape[0] != obs.proprio.shape[0]:
        raise ValueError(f"text {tuple(obs.text.shape)} / text_mask {tuple(obs.text_mask.shape)} do not match "
                         f"the batch of {obs.proprio.shape[0]} observations")
