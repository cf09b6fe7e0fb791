"""The episode: the unit every data source is converted into and every shard stores.

An episode of T control steps stores T+1 observations (the last one is the observation after the
final action, needed to bootstrap a truncated episode), T actions, rewards and discounts. The env
discount `discounts[t]` multiplies the value of observation t+1: 0 after a true terminal state, 1
otherwise (time-limit truncation keeps bootstrapping).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pac.config import EPISODE_QUALITIES

SCHEMA_VERSION = 1


class EpisodeError(ValueError):
    """An episode is malformed; the message names the episode and the field."""


@dataclass
class Episode:
    task: str  # task id from the registry, e.g. "cartpole/balance"
    instruction: str  # natural-language task description fed to the language encoder
    proprio: np.ndarray  # (T+1, P) float32
    actions: np.ndarray  # (T, A) float32, raw (within [action_low, action_high])
    rewards: np.ndarray  # (T,) float32
    discounts: np.ndarray  # (T,) float32 in [0, 1]
    action_low: np.ndarray  # (A,) float32
    action_high: np.ndarray  # (A,) float32
    images: np.ndarray | None = None  # (T+1, H, W, 3) uint8
    quality: str = "unknown"  # behaviour quality label, one of EPISODE_QUALITIES
    policy: str = ""  # the behaviour policy that produced it (name or model version)
    provenance: dict[str, str] = field(default_factory=dict)  # source, generator config, seeds, ...
    episode_id: str = ""

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())

    def validate(self, name: str = "") -> Episode:
        """Raise EpisodeError naming the field if anything is malformed; return self."""
        where = name or self.episode_id or self.task or "episode"

        def fail(fld: str, msg: str) -> None:
            raise EpisodeError(f"{where}: field '{fld}' {msg}")

        if not self.task:
            fail("task", "is empty")
        if self.quality not in EPISODE_QUALITIES:
            fail("quality", f"must be one of {EPISODE_QUALITIES}, got {self.quality!r}")
        arrays = {"proprio": (self.proprio, 2, np.floating), "actions": (self.actions, 2, np.floating),
                  "rewards": (self.rewards, 1, np.floating), "discounts": (self.discounts, 1, np.floating),
                  "action_low": (self.action_low, 1, np.floating), "action_high": (self.action_high, 1, np.floating)}
        for fld, (arr, ndim, kind) in arrays.items():
            if not isinstance(arr, np.ndarray):
                fail(fld, f"must be a numpy array, got {type(arr).__name__}")
            if arr.ndim != ndim:
                fail(fld, f"must have {ndim} dimension(s), got shape {arr.shape}")
            if not np.issubdtype(arr.dtype, kind):
                fail(fld, f"must be floating point, got dtype {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                fail(fld, "contains NaN or inf")
        t = self.actions.shape[0]
        if t < 1:
            fail("actions", "is empty (an episode needs at least one step)")
        if self.proprio.shape[0] != t + 1:
            fail("proprio", f"has {self.proprio.shape[0]} rows; expected T+1 = {t + 1} for {t} actions")
        for fld in ("rewards", "discounts"):
            if getattr(self, fld).shape[0] != t:
                fail(fld, f"has length {getattr(self, fld).shape[0]}; expected {t} (one per action)")
        a = self.actions.shape[1]
        for fld in ("action_low", "action_high"):
            if getattr(self, fld).shape[0] != a:
                fail(fld, f"has {getattr(self, fld).shape[0]} entries; actions have {a} dimensions")
        if np.any(self.action_low >= self.action_high):
            fail("action_low", "must be below action_high in every dimension")
        tol = 1e-5 * (self.action_high - self.action_low)
        bad = (self.actions < self.action_low - tol) | (self.actions > self.action_high + tol)
        if bad.any():
            step, dim = np.argwhere(bad)[0]
            fail("actions", f"value {self.actions[step, dim]:.4g} at step {step}, dim {dim} is outside the bounds "
                            f"[{self.action_low[dim]:.4g}, {self.action_high[dim]:.4g}]")
        if np.any((self.discounts < 0) | (self.discounts > 1)):
            fail("discounts", "must lie in [0, 1]")
        if self.images is not None:
            if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8:
                fail("images", f"must be a uint8 array, got {getattr(self.images, 'dtype', type(self.images))}")
            if self.images.ndim != 4 or self.images.shape[0] != t + 1 or self.images.shape[-1] != 3:
                fail("images", f"must have shape (T+1={t + 1}, H, W, 3), got {self.images.shape}")
        return self
