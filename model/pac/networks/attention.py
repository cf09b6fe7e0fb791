"""Pre-LayerNorm attention blocks of the Perceiver-IO backbone and decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pac.networks.layers import Linear


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, dim * ratio)
        self.fc2 = Linear(dim * ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention from queries x onto context c, with an optional key mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = Linear(dim, dim)
        self.kv = Linear(dim, 2 * dim)
        self.out = Linear(dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, lq, d = x.shape
        lk = c.shape[1]
        h = self.heads
        q = self.q(x).view(b, lq, h, d // h).transpose(1, 2)  # (B, H, Lq, Dh)
        k, v = self.kv(c).view(b, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, Lk, Dh)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Lk), True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Lq, Dh)
        return self.out(y.transpose(1, 2).reshape(b, lq, d))


class CrossAttentionBlock(nn.Module):
    """Queries attend to a context (inputs -> latents, or decoder queries -> latents), then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_c = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_c(c), key_mask)
        return x + self.mlp(self.norm_mlp(x))


class SelfAttentionBlock(nn.Module):
    """A standard pre-LN transformer block over the latents."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.norm_mlp(x))
