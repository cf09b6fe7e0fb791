"""Modality encoders: proprioception, vision and language -> input tokens e_I (PAC.md, Figure 2).

Each returns tokens (B, L, D) and a validity mask (B, L). Absent modalities contribute no valid
tokens; the caller adds an always-valid learned token so attention is defined for every sample.
"""

from __future__ import annotations

import torch
from torch import nn

from pac.config import ModelConfig
from pac.networks.layers import Embedding, Linear, PatchConv


def symlog(x: torch.Tensor) -> torch.Tensor:
    """Squash unnormalised proprio values (velocities reach tens) without per-task statistics."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def fourier_features(x: torch.Tensor, bands: int) -> torch.Tensor:
    """(..., 1) -> (..., 1 + 2*bands): x with sin/cos at periods 8, 4, 2, ..., 8 / 2^(bands-1).

    A small MLP of the raw value alone cannot tell apart values 1/16 apart (tests/networks), and near
    a goal (a fingertip at its target, a pole upright) control may need that precision; the high bands
    give it. Computed in fp32: bf16 cannot hold the phase of the fast bands.
    """
    freqs = torch.pi * torch.exp2(torch.arange(bands, device=x.device, dtype=torch.float32) - 2)
    phase = x.float() * freqs
    return torch.cat([x.float(), torch.sin(phase), torch.cos(phase)], -1)


class ProprioEncoder(nn.Module):
    """The state vector -> proprio tokens, in one of two ways (`model.proprio_encoder`).

    * ``vector`` (default): the whole vector, padded to `max_proprio_dims` beside its mask, goes through an
      MLP that emits `proprio_tokens` tokens (JAT's choice). Every output reads every coordinate through a
      linear path, so a controller proportional to a small coordinate is one weight away.
    * ``scalar``: every scalar is one token (value embedding + learned per-dimension position); the latents
      must assemble the state through attention (docs/learner.md compares the two).

    With `model.proprio_fourier_bands` > 0 each value also enters as Fourier features. Embodiments with
    different state sizes share the model: shorter vectors are padded and masked.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_dims = cfg.max_proprio_dims
        self.bands = cfg.proprio_fourier_bands
        self.symlog = cfg.proprio_squash == "symlog"
        self.vector = cfg.proprio_encoder == "vector"
        features = 1 + 2 * self.bands
        if self.vector:
            self.tokens, self.d_model = cfg.proprio_tokens, cfg.d_model
            hidden = 2 * cfg.d_model  # x mlp_ratio would add ~6% to the XL preset for one projection
            self.value = nn.Sequential(Linear(cfg.max_proprio_dims * (features + 1), hidden, init="fan_in"),
                                       nn.GELU(), Linear(hidden, cfg.proprio_tokens * cfg.d_model, init="fan_in"))
            self.position = Embedding(cfg.proprio_tokens, cfg.d_model)
        else:
            self.value = nn.Sequential(Linear(features, cfg.d_model, init="fan_in"), nn.GELU(),
                                       Linear(cfg.d_model, cfg.d_model, init="fan_in"))
            self.position = Embedding(cfg.max_proprio_dims, cfg.d_model)

    def forward(self, proprio: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, p = proprio.shape
        if p > self.max_dims:
            raise ValueError(f"observation has {p} proprio dimensions; the model takes at most "
                             f"model.max_proprio_dims={self.max_dims}")
        dtype = self.value[0].weight.dtype
        x = symlog(proprio.float()) if self.symlog else proprio.float()
        x = fourier_features(x.unsqueeze(-1), self.bands)  # (B, P, 1 + 2*bands)
        if not self.vector:
            return self.value(x.to(dtype)) + self.position(_arange(p, proprio.device)), mask  # (B, P, D)
        m = mask.to(x.dtype)
        x = torch.cat([x * m[..., None], m[..., None]], -1)  # (B, P, F + 1): zero features where absent
        x = nn.functional.pad(x, (0, 0, 0, self.max_dims - p)).flatten(1)  # (B, max_dims * (F + 1))
        tokens = self.value(x.to(dtype)).view(b, self.tokens, self.d_model)  # (B, T, D)
        tokens = tokens + self.position(_arange(self.tokens, proprio.device))
        return tokens, mask.any(1, keepdim=True).expand(b, self.tokens)


class VisionEncoder(nn.Module):
    """Patch encoder: non-overlapping patches -> linear projection + learned 2-D position."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.size = cfg.image_size
        self.channels = cfg.image_channels
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = PatchConv(cfg.image_channels, cfg.d_model, cfg.patch_size)
        self.position = Embedding(n, cfg.d_model)

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[1:] != (self.channels, self.size, self.size):
            raise ValueError(f"image batch has shape {tuple(image.shape[1:])}; the model expects "
                             f"({self.channels}, {self.size}, {self.size}) (model.image_size)")
        x = image.to(self.patch.weight.dtype) / 255.0 - 0.5  # (B, C, H, W)
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = tokens + self.position(_arange(tokens.shape[1], image.device))
        mask = present[:, None].expand(-1, tokens.shape[1])  # (B, N)
        return tokens, mask


class LanguageEncoder(nn.Module):
    """Byte-token embedding + learned position (the tokenizer is `pac.inputs.tokenize`, no download)."""

    VOCAB = 257  # 256 bytes + padding

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_tokens = cfg.max_text_tokens
        self.token = Embedding(self.VOCAB, cfg.d_model)
        self.position = Embedding(cfg.max_text_tokens, cfg.d_model)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(text.shape[1], self.max_tokens)
        text, mask = text[:, :n], mask[:, :n]
        return self.token(text) + self.position(_arange(n, text.device)), mask  # (B, L, D)


def _arange(n: int, device: torch.device) -> torch.Tensor:
    # Embeddings are called as modules (never `.weight[...]`): sharded engines gather a module's
    # parameters in its forward hook, which direct attribute access would bypass.
    return torch.arange(n, device=device)
