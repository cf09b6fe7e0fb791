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
        device = obs.proprio.device
        read = self.read
        types = self.modality(torch.arange(4, device=device))  # (4, D)
        proprio, proprio_mask = self.proprio(obs.proprio, obs.proprio_mask)
        # Every sample of a task carries the same instruction, most of the input tokens (48 bytes against a
        # handful of state values): its keys and values are computed once per distinct instruction in the
        # batch and shared. Exact: layer norm and projection act on each token alone.
        text, text_mask, inverse = _distinct_rows(obs.text, obs.text_mask)
        language, language_mask = self.language(text, text_mask)
        # index_select, not x[inverse]: its backward is index_add_, indexing's is a serial scatter on CPU.
        kv = [read.keys_values(proprio + types[0]), read.keys_values(language + types[1]).index_select(0, inverse)]
        masks = [proprio_mask, language_mask.index_select(0, inverse)]
        if obs.image is not None:
            present = obs.image_mask if obs.image_mask is not None else torch.ones(
                b, dtype=torch.bool, device=obs.image.device)
            image, image_mask = self.vision(obs.image, present)
            kv.append(read.keys_values(image + types[2]))
            masks.append(image_mask)
        kv.append(read.keys_values(types[3:4]).expand(b, 1, -1))  # the always-valid token
        masks.append(torch.ones(b, 1, dtype=torch.bool, device=device))
        # z_0 is the same for every sample: its queries are computed once and read B contexts.
        z0 = self.latents(torch.arange(self.num_latents, device=device))[None]  # (1, N, D)
        z = read(z0, key_mask=torch.cat(masks, dim=1), kv=torch.cat(kv, dim=1))  # (B, N, D)
        for block in self.blocks:
            z = block(z)
        return z  # (B, N, D)


def _distinct_rows(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (token, mask) rows of a batch and each sample's row: (U, L), (U, L), (B,)."""
    key = torch.where(mask, text, -1)  # padding compares equal whatever id it holds
    rows, inverse = torch.unique(key, dim=0, return_inverse=True)
    return rows.clamp_min(0), rows >= 0, inverse


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
