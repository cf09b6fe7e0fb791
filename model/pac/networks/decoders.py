"""Policy and Q decoders of the Perceiver-IO actor-critic (PAC.md, Figure 2).

The policy decoder's learned queries (one per action dimension) read the latents z_M and emit
categorical logits over action bins. The Q decoder's query is built from the encoded action (late
fusion): K candidate actions become K queries scored against one encoding of the state.
"""

from __future__ import annotations

import torch
from torch import nn

from pac.config import ModelConfig
from pac.networks.attention import CrossAttentionBlock
from pac.networks.layers import Embedding, Linear


class PolicyDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_action_dims = cfg.max_action_dims
        self.queries = Embedding(cfg.max_action_dims, cfg.d_model)  # q_pi, one per action dimension
        self.layers = nn.ModuleList(CrossAttentionBlock(cfg.d_model, cfg.num_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = Linear(cfg.d_model, cfg.action_bins, init="zeros")  # uniform initial policy

    def forward(self, latents: torch.Tensor, num_action_dims: int) -> torch.Tensor:
        """Logits (B, A, bins) for the first A action dimensions."""
        if num_action_dims > self.max_action_dims:
            raise ValueError(f"task has {num_action_dims} action dimensions; the model supports at most "
                             f"model.max_action_dims={self.max_action_dims}")
        q = self.queries(torch.arange(num_action_dims, device=latents.device))
        q = q.expand(latents.shape[0], -1, -1)  # (B, A, D)
        for layer in self.layers:
            q = layer(q, latents)
        return self.head(self.norm(q))  # (B, A, bins)


class QDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_action_dims = cfg.max_action_dims
        # Padded action values and their mask, so a zero action and an absent dimension differ.
        self.action_encoder = nn.Sequential(
            Linear(2 * cfg.max_action_dims, cfg.d_model, init="fan_in"), nn.GELU(),
            Linear(cfg.d_model, cfg.d_model, init="fan_in"))
        self.query = Embedding(1, cfg.d_model)  # learned base of q_Q
        self.layers = nn.ModuleList(CrossAttentionBlock(cfg.d_model, cfg.num_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = Linear(cfg.d_model, cfg.value_atoms, init="zeros")  # uniform initial value distribution

    def forward(self, latents: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        """Value logits (B, K, atoms) for K candidate actions (B, K, A) in [-1, 1]."""
        b, k, a = actions.shape
        if a > self.max_action_dims:
            raise ValueError(f"actions have {a} dimensions; the model supports at most "
                             f"model.max_action_dims={self.max_action_dims}")
        dtype = self.head.weight.dtype
        m = action_mask[:, None, :].expand(b, k, a).to(dtype)  # (B, K, A)
        pad = self.max_action_dims - a
        x = torch.cat([nn.functional.pad(actions.to(dtype) * m, (0, pad)), nn.functional.pad(m, (0, pad))], -1)
        q = self.query(torch.zeros(1, dtype=torch.long, device=x.device)) + self.action_encoder(x)  # (B, K, D)
        for layer in self.layers:
            q = layer(q, latents)  # queries attend to the latents only: the K candidates are independent
        return self.head(self.norm(q))  # (B, K, atoms)
