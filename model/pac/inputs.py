"""What the model consumes: batched observations and transitions, and the conventions that map raw
episodes onto them (byte tokenizer, action normalisation, padding with masks).

Shared by the loader (training), the rollout (evaluation/collection) and the network, so the three
can never disagree. Pure numpy/torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from pac.config import ModelConfig, ProprioStats

PAD_TOKEN = 0  # byte b is token b + 1


def tokenize(texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte-level tokenizer (no vocabulary download): returns ids (B, L) int64 and mask (B, L) bool.

    L is the longest text in the batch, capped at `max_len` (longer instructions are truncated).
    """
    encoded = [list(t.encode("utf-8"))[:max_len] for t in texts]
    length = max(1, max((len(e) for e in encoded), default=1))
    ids = np.full((len(texts), length), PAD_TOKEN, dtype=np.int64)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = np.asarray(e, dtype=np.int64) + 1
    return ids, ids != PAD_TOKEN


def normalize_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map raw actions in [low, high] to [-1, 1], the range the action bins cover."""
    return np.clip(2.0 * (action - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)


def denormalize_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Inverse of `normalize_action`."""
    return (low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (high - low)).astype(np.float32)


STD_MIN = 1e-6  # below this a state dimension counts as constant in the data


class MissingStatsError(ValueError):
    """A model that standardises states per task was asked to act on a task it has no statistics for."""


def normalize_proprio(proprio: np.ndarray, stats: ProprioStats | None) -> np.ndarray:
    """Standardise one task's states (..., P) with its training statistics (`model.proprio_norm`); None: as is.

    Why: control often hangs on coordinates that are small in raw units (a point mass 0.1 from its target,
    sitting still): fed raw values, the tiny network learned to ignore them and stood still (issue 26).
    A dimension that never varied in the data is only centred: dividing by its ~0 std would turn any later
    change of it into an enormous input.
    """
    if stats is None:
        return proprio
    mean, std = np.asarray(stats.mean, np.float32), np.asarray(stats.std, np.float32)
    if proprio.shape[-1] != len(mean):
        raise ValueError(f"state has {proprio.shape[-1]} dims; the model's statistics for this task have "
                         f"{len(mean)} (a different embodiment under the same task name?)")
    # float32 throughout: the loader, evaluation and the served model compute bit-identical inputs whatever dtype
    # the caller's state came in (a float64 observation otherwise differed in the last bits and could flip a tie)
    return (np.asarray(proprio, np.float32) - mean) / np.where(std < STD_MIN, np.float32(1.0), std)


def task_stats(model: ModelConfig, task: str) -> ProprioStats | None:
    """The statistics `normalize_proprio` applies to `task` under `model`; None when the model reads raw states.

    A model reads raw states when `model.proprio_norm` is "none", or when it recorded no statistics at all
    (trained on batches a caller made, not on a dataset). A model that has statistics refuses a task it lacks
    them for: its network never saw that task's raw scale, and acting on it would be silently wrong.

    Raises:
        MissingStatsError: naming the task and the tasks the model has statistics for.
    """
    if model.proprio_norm != "task" or not model.proprio_stats:
        return None
    if task not in model.proprio_stats:
        raise MissingStatsError(
            f"the model standardises states per task and has no statistics for {task!r} (it has them for "
            f"{', '.join(sorted(model.proprio_stats))}); finetune it on data of {task!r} first, which records them")
    return model.proprio_stats[task]


def pad_rows(rows: Sequence[np.ndarray], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack 1-D float rows of different lengths into (B, W) with a validity mask."""
    width = width or max(len(r) for r in rows)
    out = np.zeros((len(rows), width), dtype=np.float32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask


@dataclass
class Observation:
    """A batch of observations; every modality may be absent for some (or all) samples."""

    proprio: torch.Tensor  # (B, P) float32, padded
    proprio_mask: torch.Tensor  # (B, P) bool, True where the dimension exists
    text: torch.Tensor  # (B, L) int64 byte tokens
    text_mask: torch.Tensor  # (B, L) bool
    image: torch.Tensor | None = None  # (B, 3, H, W) uint8
    image_mask: torch.Tensor | None = None  # (B,) bool, True where the sample has an image

    @property
    def batch_size(self) -> int:
        return int(self.proprio.shape[0])

    def to(self, device: torch.device | str) -> Observation:
        return Observation(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})

    @staticmethod
    def cat(observations: Sequence[Observation]) -> Observation:
        """Concatenate batches along the batch axis (all with the same padded widths and modalities)."""
        out = {}
        for f in fields(Observation):
            parts = [getattr(o, f.name) for o in observations]
            if any(p is None for p in parts):
                if not all(p is None for p in parts):
                    raise ValueError(f"cannot concatenate observations where only some have {f.name}")
                out[f.name] = None
            else:
                out[f.name] = torch.cat(parts)
        return Observation(**out)

    @staticmethod
    def from_numpy(proprio: Sequence[np.ndarray], instructions: Sequence[str], max_text_tokens: int,
                   images: Sequence[np.ndarray | None] | None = None) -> Observation:
        """Collate per-sample raw observations (proprio vectors of any size, HWC uint8 images or None)."""
        p, pm = pad_rows(proprio)
        ids, tm = tokenize(instructions, max_text_tokens)
        obs = Observation(torch.from_numpy(p), torch.from_numpy(pm), torch.from_numpy(ids), torch.from_numpy(tm))
        if images is not None and any(im is not None for im in images):
            shape = next(im.shape for im in images if im is not None)
            h, w, c = shape
            stack = np.zeros((len(images), c, h, w), dtype=np.uint8)  # CHW, transposed in numpy (fast)
            present = np.zeros(len(images), dtype=bool)
            for i, im in enumerate(images):
                if im is not None:
                    stack[i], present[i] = im.transpose(2, 0, 1), True
            obs.image = torch.from_numpy(stack)
            obs.image_mask = torch.from_numpy(present)
        return obs


@dataclass
class Transition:
    """A batch of n-step transitions (s_t, a_t, R_t, gamma_t, s_{t+n'}).

    `reward` is the discounted n'-step return sum_{k<n'} gamma^k r_{t+k} with n' = min(n, steps left);
    `discount` is gamma^{n'} times the env discounts, 0 when the episode terminated within the window.
    """

    obs: Observation
    action: torch.Tensor  # (B, A) float32 in [-1, 1], padded
    action_mask: torch.Tensor  # (B, A) bool
    reward: torch.Tensor  # (B,) float32
    discount: torch.Tensor  # (B,) float32
    next_obs: Observation

    @property
    def batch_size(self) -> int:
        return self.obs.batch_size

    def to(self, device: torch.device | str) -> Transition:
        return Transition(self.obs.to(device), self.action.to(device), self.action_mask.to(device),
                          self.reward.to(device), self.discount.to(device), self.next_obs.to(device))


def _to(x: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if x is None else x.to(device)
