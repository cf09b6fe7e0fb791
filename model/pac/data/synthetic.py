"""Synthetic transition batches: benchmarks and tests that need model inputs but no simulator or dataset."""

from __future__ import annotations

import numpy as np
import torch

from pac.config import ModelConfig
from pac.inputs import Observation, Transition

_INSTRUCTIONS = ("balance the pole", "reach the target", "run forward", "lift the brick")


def synthetic_transitions(cfg: ModelConfig, batch_size: int, *, proprio_dims: tuple[int, ...] = (5, 9),
                          action_dims: tuple[int, ...] = (1, 2), vision: bool = False, seed: int = 0,
                          discount: float = 0.99) -> Transition:
    """A reproducible batch mixing embodiments (state sizes / action dims cycle through the given tuples)."""
    rng = np.random.default_rng(seed)

    def obs() -> Observation:
        proprio = [rng.normal(size=proprio_dims[i % len(proprio_dims)]).astype(np.float32)
                   for i in range(batch_size)]
        texts = [_INSTRUCTIONS[i % len(_INSTRUCTIONS)] for i in range(batch_size)]
        images = ([rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
                   for _ in range(batch_size)] if vision else None)
        return Observation.from_numpy(proprio, texts, cfg.max_text_tokens, images)

    a_max = max(action_dims)
    action = torch.from_numpy(rng.uniform(-1, 1, (batch_size, a_max)).astype(np.float32))
    mask = torch.zeros(batch_size, a_max, dtype=torch.bool)
    for i in range(batch_size):
        mask[i, : action_dims[i % len(action_dims)]] = True
    reward = torch.from_numpy(rng.uniform(0, 3, batch_size).astype(np.float32))
    disc = torch.full((batch_size,), discount**3, dtype=torch.float32)  # a 3-step window
    return Transition(obs(), action * mask, mask, reward, disc, obs())


class SyntheticSource:
    """A `BatchSource` of synthetic batches: batch i is `synthetic_transitions(seed=seed + i)`.

    For throughput benchmarks (no I/O in the timing) and engine tests; `rank`/`world_size` pick this
    rank's share of the global stream: this rank's batch i is global micro-batch i * world_size + rank,
    so runs that split the same global batch differently (ranks x accumulation) see the same samples.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 vision: bool = False) -> None:
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed
        self.rank, self.world_size, self.vision = rank, world_size, vision

    def batch(self, step: int) -> Transition:
        return synthetic_transitions(self.cfg, self.batch_size, seed=self.seed + step * self.world_size + self.rank,
                                     vision=self.vision)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"synthetic source seed {state.get('seed')} != {self.seed}")

