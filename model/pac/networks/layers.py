"""Layers that initialise themselves in their own constructor.

Initialising inside each layer (not by a pass over the finished model) keeps construction valid under
sharded construction, where a layer's parameters are partitioned as soon as its `__init__` returns.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

STD = 0.02
_MIN_ROWS = 8  # see Linear.forward


class Linear(nn.Linear):
    """`init`: "normal" (truncated normal, std 1/sqrt(d_in)), "zeros" (output heads: uniform initial
    distributions) or "fan_in" (PyTorch's default; for layers fed raw scalars).

    Why std 1/sqrt(d_in) and not GPT's fixed 0.02: the two agree at the paper's widths (0.022 at 2048), but at the
    CPU presets' 64 a 0.02 weight moves by ~5% of itself per Adam step at lr 1e-3 (0.8% at 1/sqrt(64)), and the
    tiny network fitted noisy behaviour data slowly and unreliably (docs/learner.md, "Initialisation")."""

    def __init__(self, d_in: int, d_out: int, init: Literal["normal", "zeros", "fan_in"] = "normal") -> None:
        super().__init__(d_in, d_out)
        if init == "normal":
            nn.init.trunc_normal_(self.weight, std=d_in ** -0.5)
            nn.init.zeros_(self.bias)
        elif init == "zeros":
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BLAS multiplies a few rows (1-3 on the CPUs measured) by another kernel than a batch, whose sums round
        # differently: an observation would get a different action (by ~1e-7) alone than among others, and a
        # rollout's episodes would depend on how many environments step together. Padding to `_MIN_ROWS` takes
        # the batched kernel for every row count (a rollout of a few environments pays for a few zero rows).
        rows = x.numel() // max(x.shape[-1], 1)
        if rows >= _MIN_ROWS or rows == 0:
            return super().forward(x)
        padded = torch.cat([x.reshape(rows, -1), x.new_zeros(_MIN_ROWS - rows, x.shape[-1])])
        return super().forward(padded)[:rows].reshape(*x.shape[:-1], self.out_features)


class Embedding(nn.Embedding):
    def __init__(self, num: int, dim: int) -> None:
        super().__init__(num, dim)
        nn.init.trunc_normal_(self.weight, std=STD)


class PatchConv(nn.Conv2d):
    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__(channels, dim, kernel_size=patch, stride=patch)
        nn.init.trunc_normal_(self.weight, std=STD)
        nn.init.zeros_(self.bias)
