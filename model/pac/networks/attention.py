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
    """Multi-head attention from queries x onto a context's keys and values, with an optional key mask.

    The context enters as `kv = attn.kv(context)`, (B, Lk, 2D): projected per token, so a caller can project
    the tokens many samples share once (`PerceiverEncoder`). Queries of batch 1 are shared by all B samples.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = Linear(dim, dim)
        self.kv = Linear(dim, 2 * dim)
        self.out = Linear(dim, dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, lk = kv.shape[:2]
        lq, d = x.shape[1:]
        h = self.heads
        q = self.q(x).view(-1, lq, h, d // h).transpose(1, 2).expand(b, -1, -1, -1)  # (B, H, Lq, Dh)
        k, v = kv.view(b, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, Lk, Dh)
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

    def keys_values(self, c: torch.Tensor) -> torch.Tensor:
        """The context's keys and values, (..., L, D) -> (..., L, 2D); per token, as `forward` computes them."""
        return self.attn.kv(self.norm_c(c))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                kv: torch.Tensor | None = None) -> torch.Tensor:
        """Queries x (B or 1, Lq, D) read the context c (B, Lk, D), or its `keys_values` given as `kv`."""
        if kv is None:
            if c is None:
                raise ValueError("a cross-attention block needs its context c or the context's kv")
            kv = self.keys_values(c)
        x = x + self.attn(self.norm_q(x), kv, key_mask)
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
        x = x + self.attn(h, self.attn.kv(h))
        return x + self.mlp(self.norm_mlp(x))
