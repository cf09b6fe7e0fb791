"""Sampling from several datasets at once: the original data mixed with self-collected data.

Micro-batch i comes whole from one dataset, chosen by a seeded draw on i with probabilities
proportional to the weights (`data.dataset` has weight 1, `data.mix_with` names the others). Each
dataset's own batch i is a pure function of i, so the mixture is too: exact resume carries over.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from pac.config import Config, ProprioStats
from pac.data.dataset import read_manifest
from pac.data.loader import TransitionLoader, build_loader
from pac.inputs import Transition

log = logging.getLogger(__name__)


class MixtureSource:
    def __init__(self, loaders: list[TransitionLoader], weights: list[float], seed: int) -> None:
        if len(loaders) != len(weights) or not loaders:
            raise ValueError("a mixture needs one weight per dataset")
        self.loaders = loaders
        self.probs = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.seed = seed

    def choose(self, step: int) -> int:
        return int(np.random.default_rng((self.seed, 0x6D6978, step)).choice(len(self.loaders), p=self.probs))

    def batch(self, step: int) -> Transition:
        return self.loaders[self.choose(step)].batch(step)

    def state_dict(self) -> dict[str, Any]:
        return {"mixture": [loader.state_dict() for loader in self.loaders], "probs": self.probs.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state.get("mixture", [])) != len(self.loaders):
            raise ValueError(f"the saved data stream mixed {len(state.get('mixture', []))} datasets, this run "
                             f"mixes {len(self.loaders)}; resume with the same data.mix_with")
        for loader, s in zip(self.loaders, state["mixture"], strict=True):
            loader.load_state_dict(s)


def build_source(cfg: Config, *, rank: int = 0, world_size: int = 1) -> TransitionLoader | MixtureSource:
    """The training data stream: `data.dataset`, mixed with `data.mix_with` when any are named."""
    main = build_loader(cfg, rank=rank, world_size=world_size)
    if not cfg.data.mix_with:
        return main
    loaders, weights = [main], [1.0]
    for uri, weight in cfg.data.mix_with.items():
        # taken whole: data.qualities selects within data.dataset (collected data is all quality "policy")
        data = {**cfg.to_dict()["data"], "dataset": uri, "mix_with": {}, "qualities": []}
        other = Config.from_dict({**cfg.to_dict(), "data": data})
        loaders.append(build_loader(other, rank=rank, world_size=world_size))
        weights.append(weight)
    return MixtureSource(loaders, weights, cfg.seed)


def with_proprio_stats(cfg: Config, recorded: Mapping[str, ProprioStats]) -> Config:
    """`cfg` with `model.proprio_stats` for every task it trains on (`model.proprio_norm` "task").

    `recorded` (the checkpoint's or the source model's) wins: a resumed or finetuned network keeps the
    normalisation it learned under. Tasks it lacks take their statistics from the manifests, `data.dataset`
    first, then `data.mix_with` in order, over the episodes of `data.qualities` where it selects some.
    """
    if cfg.model.proprio_norm != "task":
        return cfg
    stats: dict[str, ProprioStats] = {}
    for uri in [cfg.data.dataset, *cfg.data.mix_with]:
        manifest = read_manifest(uri, cfg.storage)
        for task in manifest.tasks:
            if task in stats:
                continue
            mean, std, selected = manifest.proprio_stats(task, cfg.data.qualities)
            if not selected:
                log.warning("%s: %s was published before its manifest kept per-quality statistics, so %s's states "
                            "are standardised over all its episodes, not those of data.qualities %s; publish it "
                            "again with the selection's (`pac data upgrade %s`) and train on the new version",
                            uri, task, task, cfg.data.qualities, uri)
            stats[task] = ProprioStats(mean=list(mean), std=list(std))
    stats.update(recorded)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, proprio_stats=stats))

