"""The training loader: n-step transitions sampled across tasks, as `pac.inputs.Transition` batches.

Sampling (batch `step` of rank `rank`) is a pure function of `(seed, rank, step)`:

1. each of the B samples picks a task with probability `data.task_weights` (default: proportional to
   the task's transitions in the dataset), renormalised over the tasks this rank holds;
2. within the task, a transition uniformly among the rank's transitions (episode e, step t);
3. the n-step target follows `Transition`'s docstring, with n' = min(n, T_e - t):
   reward   = sum_{k<n'} gamma^k (prod_{j<k} d_{t+j}) r_{t+k}
   discount = gamma^{n'} prod_{j<n'} d_{t+j}       (0 when the episode terminated inside the window)
   next_obs = o_{t+n'}
   where d are the env discounts (1, or 0 after a terminal; a terminal is an episode's last step, so
   the products only ever zero the bootstrap term). A truncated episode keeps bootstrapping from its
   final observation.

So the position in the stream is just the step counter: `state_dict()` is tiny, rank-independent, and
restoring it continues with exactly the batches an uninterrupted run would have produced.

Distribution: every task's episodes (in manifest order) are cut into `world_size` contiguous runs of
about equal transitions; rank r samples only from run r. The runs are disjoint, cover the dataset,
and each rank touches about 1/world_size of the shards (so of the downloads).

Memory: shards are memory-mapped from local files (downloaded once into a checksum-verified,
content-addressed cache for s3:// datasets); at most `data.shards_in_memory` are mapped at a time
(least recently used are unmapped), and a batch copies out only the rows it samples.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pac.config import Config, DataConfig, ProprioStats, StorageConfig
from pac.data.dataset import Dataset, DatasetError, default_cache_dir, open_dataset
from pac.data.manifest import ShardInfo
from pac.data.shards import Shard
from pac.inputs import Observation, Transition, normalize_action, normalize_proprio, tokenize

log = logging.getLogger(__name__)

STATE_FORMAT = 1


@dataclass(frozen=True)
class BatchPlan:
    """Which transitions batch `step` holds (one entry per sample, in batch order)."""

    task: np.ndarray  # (B,) int64 index into `TransitionLoader.tasks`
    shard: np.ndarray  # (B,) int64 index into the manifest's shard list
    episode: np.ndarray  # (B,) int64 episode index within the shard
    t: np.ndarray  # (B,) int64 step within the episode


@dataclass(frozen=True)
class _TaskIndex:
    """This rank's episodes of one task, with cumulative transition counts for uniform sampling."""

    shard: np.ndarray  # (E,) int64
    episode: np.ndarray  # (E,) int64
    start: np.ndarray  # (E,) int64 transitions before this episode (within the rank's run)
    total: int


def partition(lengths: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Boolean mask of the episodes (given their lengths, in order) that `rank` owns.

    Episode j belongs to rank floor(c_j * world_size / total) where c_j is the number of transitions
    before it: contiguous runs, disjoint, covering, balanced to within one episode.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    before = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    owner = before * world_size // max(int(lengths.sum()), 1)
    return owner == rank


class TransitionLoader:
    """Deterministic, resumable, rank-partitioned sampler of n-step `Transition` batches.

    Usage (trainer)::

        loader = build_loader(cfg, rank=rank, world_size=world_size)
        loader.load_state_dict(ckpt["loader"])   # on resume; the state is the same for every rank
        for step in range(start, cfg.train.steps):
            batch = next(loader)                 # a Transition on CPU: batch.to(device)
            ...
            ckpt["loader"] = loader.state_dict()
    """

    def __init__(self, dataset: str | Dataset, *, storage: StorageConfig, data: DataConfig | None = None,
                 batch_size: int, n_step: int, discount: float, max_text_tokens: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, proprio_stats: Mapping[str, ProprioStats] | None = None) -> None:
        """Open the dataset and index this rank's part of it (no shard is read until sampled).

        Args:
            dataset: dataset URI (optionally `@vNNNN`) or an opened `Dataset`.
            storage: storage section (endpoint, root, retries).
            data: task selection/weights, cache dir, shards_in_memory.
            batch_size: transitions per batch (per rank).
            n_step: n of the n-step return.
            discount: gamma.
            max_text_tokens: instruction token cap (`ModelConfig.max_text_tokens`).
            seed: base seed; batch `step` of rank `rank` depends only on (seed, rank, step).
            rank: this process's rank in [0, world_size).
            world_size: number of data-parallel ranks.
            proprio_stats: task -> statistics that standardise its states (`pac.inputs.normalize_proprio`),
                for every selected task; None or empty: raw states.

        Raises:
            DatasetError: unknown tasks/weights, or this rank would get no data.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if batch_size < 1 or n_step < 1 or not 0.0 < discount <= 1.0:
            raise ValueError(f"need batch_size >= 1, n_step >= 1, 0 < discount <= 1; got {batch_size}, {n_step}, "
                             f"{discount}")
        self.data = data or DataConfig()
        self.dataset = dataset if isinstance(dataset, Dataset) else open_dataset(dataset, storage)
        self.batch_size, self.n_step, self.discount = batch_size, n_step, float(discount)
        self.max_text_tokens, self.seed, self.rank, self.world_size = max_text_tokens, seed, rank, world_size
        self.step = 0
        self.proprio_stats = dict(proprio_stats or {})
        self.cache_dir = default_cache_dir(self.data, storage)
        self._open: OrderedDict[int, Shard] = OrderedDict()

        manifest = self.dataset.manifest
        stats = manifest.tasks
        selected = list(self.data.tasks) or list(stats)
        unknown = [t for t in [*selected, *self.data.task_weights] if t not in stats]
        if unknown:
            raise DatasetError(f"task(s) {', '.join(sorted(set(unknown)))} not in dataset {self.dataset.uri}; it "
                               f"holds {', '.join(stats)}")
        unnormalised = [t for t in selected if self.proprio_stats and t not in self.proprio_stats]
        if unnormalised:  # one raw task among standardised ones would train on the wrong scale, silently
            raise DatasetError(f"no state statistics for task(s) {', '.join(unnormalised)} of {self.dataset.uri} "
                               f"(given for {', '.join(sorted(self.proprio_stats))})")

        index: dict[str, _TaskIndex] = {}
        available: dict[str, int] = {}  # task -> transitions of the selected qualities, over all ranks
        for task in selected:
            shard_ids = [i for i, s in enumerate(manifest.shards) if s.task == task]
            lengths = np.concatenate([manifest.shards[i].episode_lengths for i in shard_ids]).astype(np.int64)
            shard = np.concatenate([np.full(manifest.shards[i].episodes, i) for i in shard_ids]).astype(np.int64)
            episode = np.concatenate([np.arange(manifest.shards[i].episodes) for i in shard_ids]).astype(np.int64)
            keep = self._quality_mask(task, [manifest.shards[i] for i in shard_ids])
            lengths, shard, episode = lengths[keep], shard[keep], episode[keep]
            available[task] = int(lengths.sum())
            mine = partition(lengths, rank, world_size)
            if not mine.any():
                log.warning("rank %d/%d holds no episode of task %s (%d episodes in total); it samples the other "
                            "tasks", rank, world_size, task, len(lengths))
                continue
            start = np.concatenate([[0], np.cumsum(lengths[mine])[:-1]]).astype(np.int64)
            index[task] = _TaskIndex(shard[mine], episode[mine], start, int(lengths[mine].sum()))
        if self.data.task_weights:
            unweighted = [t for t in selected if t not in self.data.task_weights]
            if unweighted:
                raise DatasetError(f"data.task_weights gives no weight for {', '.join(unweighted)}; weigh every "
                                   f"selected task (0 excludes one)")
            weights = {t: float(self.data.task_weights[t]) for t in selected}
        else:
            weights = {t: float(available[t]) for t in selected}
        self.tasks = [t for t in selected if t in index and weights[t] > 0]
        if not self.tasks:
            raise DatasetError(f"rank {rank} of {world_size} has no data to sample from {self.dataset.uri} (tasks "
                               f"{selected}, weights {weights}); use fewer ranks or more episodes")
        self._index = [index[t] for t in self.tasks]
        w = np.array([weights[t] for t in self.tasks], dtype=np.float64)
        self.task_probs = w / w.sum()

        self.proprio_width = max(stats[t].proprio_dim for t in self.tasks)
        self.action_width = max(stats[t].action_dim for t in self.tasks)
        shapes = {tuple(stats[t].image_shape) for t in self.tasks if stats[t].image_shape is not None}
        if len(shapes) > 1:
            raise DatasetError(f"dataset {self.dataset.uri} mixes image shapes {sorted(shapes)}; select tasks with "
                               f"one camera resolution")
        self.image_shape: tuple[int, ...] | None = shapes.pop() if shapes else None
        self.fingerprint = hashlib.sha256("".join(s.sha256 for s in manifest.shards).encode()).hexdigest()

    def _quality_mask(self, task: str, shards: list[ShardInfo]) -> np.ndarray:
        """Which of the task's episodes (in manifest order) carry a label of `data.qualities` (all if empty).

        Raises:
            DatasetError: the task has no such episode, or a shard's manifest entry predates per-episode labels.
        """
        wanted = set(self.data.qualities)
        if not wanted:
            return np.ones(sum(s.episodes for s in shards), dtype=bool)
        per_shard = [s.labels() for s in shards]
        if any(labels is None for labels in per_shard):
            raise DatasetError(f"dataset {self.dataset.uri} was published before its manifest recorded each "
                               f"episode's quality and task {task} mixes qualities: re-ingest it with this pac "
                               f"(pac data ingest) to select data.qualities")
        keep = np.array([q in wanted for labels in per_shard for q in labels], dtype=bool)
        if not keep.any():
            held = sorted({q for s in shards for q in s.qualities})
            raise DatasetError(f"task {task} of {self.dataset.uri} has no episode of data.qualities "
                               f"{sorted(wanted)} (it holds {', '.join(held)}); select tasks with data.tasks")
        return keep

    # -- sampling ---------------------------------------------------------------------------------------

    def plan(self, step: int) -> BatchPlan:
        """The transitions of batch `step` (pure function of seed, rank and step)."""
        rng = np.random.default_rng((self.seed, self.rank, step))
        task = rng.choice(len(self.tasks), size=self.batch_size, p=self.task_probs)
        shard = np.empty(self.batch_size, np.int64)
        episode = np.empty(self.batch_size, np.int64)
        t = np.empty(self.batch_size, np.int64)
        for k, idx in enumerate(self._index):
            pos = np.flatnonzero(task == k)
            if not len(pos):
                continue
            u = rng.integers(0, idx.total, size=len(pos))
            e = np.searchsorted(idx.start, u, side="right") - 1
            shard[pos], episode[pos], t[pos] = idx.shard[e], idx.episode[e], u - idx.start[e]
        return BatchPlan(task.astype(np.int64), shard, episode, t)

    def batch(self, step: int) -> Transition:
        """Batch `step` (does not move the loader's position)."""
        plan = self.plan(step)
        b, n, gamma = self.batch_size, self.n_step, self.discount
        proprio = np.zeros((b, self.proprio_width), np.float32)
        next_proprio = np.zeros((b, self.proprio_width), np.float32)
        proprio_mask = np.zeros((b, self.proprio_width), bool)
        action = np.zeros((b, self.action_width), np.float32)
        action_mask = np.zeros((b, self.action_width), bool)
        reward = np.zeros(b, np.float64)
        discount = np.zeros(b, np.float64)
        instructions = [""] * b
        images = next_images = image_mask = None
        if self.image_shape is not None:
            h, w, c = self.image_shape
            # Channels-first as the model takes them; transposed here in numpy, which copies uint8 pixels
            # ~15x faster than torch's permute().contiguous() on CPU.
            images = np.zeros((b, c, h, w), np.uint8)
            next_images = np.zeros((b, c, h, w), np.uint8)
            image_mask = np.zeros(b, bool)

        k = np.arange(n)
        powers = gamma ** np.arange(n + 1, dtype=np.float64)
        # Shards already mapped first: when a batch spans more shards than may be mapped, this halves reopens.
        for s in sorted(np.unique(plan.shard).tolist(), key=lambda i: i not in self._open):
            pos = np.flatnonzero(plan.shard == s)
            sh = self._shard(s)
            e, t = plan.episode[pos], plan.t[pos]
            s0, s1 = sh.step_offsets[e], sh.step_offsets[e + 1]
            first = s0 + t
            steps = np.minimum(n, s1 - first)  # n' >= 1
            valid = k[None, :] < steps[:, None]
            idx = np.minimum(first[:, None] + k[None, :], s1[:, None] - 1)  # never reads past the episode
            r = np.where(valid, sh["rewards"][idx], 0.0).astype(np.float64)
            d = np.where(valid, sh["discounts"][idx], 1.0).astype(np.float64)
            cum = np.cumprod(d, axis=1)
            before = np.concatenate([np.ones((len(pos), 1)), cum[:, :-1]], axis=1)  # prod_{j<k} d_{t+j}
            reward[pos] = (powers[None, :n] * before * r).sum(axis=1)
            discount[pos] = powers[steps] * cum[:, -1]

            obs_row = sh.obs_offsets[e] + t
            width = sh["proprio"].shape[1]
            stats = self.proprio_stats.get(self.dataset.manifest.shards[s].task)
            proprio[pos, :width] = normalize_proprio(sh["proprio"][obs_row], stats)
            next_proprio[pos, :width] = normalize_proprio(sh["proprio"][obs_row + steps], stats)
            proprio_mask[pos, :width] = True
            low, high = sh["action_low"][e], sh["action_high"][e]
            raw = sh["actions"][first]
            a_width = raw.shape[1]
            action[pos, :a_width] = normalize_action(raw, low, high)
            action_mask[pos, :a_width] = True
            for i, text in zip(pos.tolist(), sh.instructions[e].tolist()):
                instructions[i] = text
            if sh.has_images and images is not None:
                images[pos] = sh["images"][obs_row].transpose(0, 3, 1, 2)
                next_images[pos] = sh["images"][obs_row + steps].transpose(0, 3, 1, 2)
                image_mask[pos] = True

        ids, text_mask = tokenize(instructions, self.max_text_tokens)

        def observation(p: np.ndarray, im: np.ndarray | None) -> Observation:
            obs = Observation(torch.from_numpy(p), torch.from_numpy(proprio_mask.copy()), torch.from_numpy(ids.copy()),
                              torch.from_numpy(text_mask.copy()))
            if im is not None:
                obs.image = torch.from_numpy(im)
                obs.image_mask = torch.from_numpy(image_mask.copy())
            return obs

        return Transition(obs=observation(proprio, images), action=torch.from_numpy(action),
                          action_mask=torch.from_numpy(action_mask),
                          reward=torch.from_numpy(reward.astype(np.float32)),
                          discount=torch.from_numpy(discount.astype(np.float32)),
                          next_obs=observation(next_proprio, next_images))

    def __iter__(self) -> Iterator[Transition]:
        return self

    def __next__(self) -> Transition:
        out = self.batch(self.step)
        self.step += 1
        return out

    # -- shards -----------------------------------------------------------------------------------------

    def _shard(self, i: int) -> Shard:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        shard = self.dataset.open_shard(self.dataset.manifest.shards[i], self.cache_dir)
        self._open[i] = shard
        while len(self._open) > self.data.shards_in_memory:
            _, old = self._open.popitem(last=False)
            old.close()
        return shard

    @property
    def open_shard_count(self) -> int:
        """Shards currently memory-mapped (never more than `data.shards_in_memory`)."""
        return len(self._open)

    def shard_ids(self) -> list[int]:
        """Indices (into the manifest's shard list) of the shards this rank samples from."""
        return sorted({int(s) for idx in self._index for s in np.unique(idx.shard)})

    def episodes(self) -> set[tuple[int, int]]:
        """(shard index, episode index) of every episode this rank samples from."""
        return {(int(s), int(e)) for idx in self._index for s, e in zip(idx.shard, idx.episode)}

    def prefetch(self, progress: bool = True) -> None:
        """Download (s3://) and verify every shard this rank will read, before training starts."""
        shards = self.dataset.manifest.shards
        for i in tqdm(self.shard_ids(), desc=f"prefetch rank {self.rank}", unit="shard", disable=not progress):
            self.dataset.local_shard(shards[i], self.cache_dir)

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    # -- checkpointing ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The stream position and what it depends on; identical on every rank."""
        return {"format": STATE_FORMAT, "step": self.step, "seed": self.seed, "dataset": self.dataset.uri,
                "fingerprint": self.fingerprint, "batch_size": self.batch_size, "n_step": self.n_step,
                "discount": self.discount, "world_size": self.world_size, "tasks": list(self.tasks),
                "qualities": sorted(self.data.qualities), "task_probs": self.task_probs.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position.

        Raises:
            ValueError: the state comes from a different dataset, seed, n-step or discount: resuming would
                silently train on a different data stream.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"loader state format {state.get('format')!r} is not {STATE_FORMAT}")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"the saved loader read dataset {state['dataset']}, this one reads {self.dataset.uri} "
                             f"(different shards); resume with data.dataset={state['dataset']}")
        for key in ("seed", "n_step", "discount"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the saved loader used {key}={state[key]}, this one {getattr(self, key)}; "
                                 f"resuming would change the data stream")
        changed = [k for k in ("batch_size", "world_size", "tasks") if state[k] != getattr(self, k)]
        if state.get("qualities", []) != sorted(self.data.qualities):  # states before data.qualities: every one
            changed.append("qualities")
        if changed or not np.allclose(state["task_probs"], self.task_probs):
            log.warning("resuming the data stream at step %d with changed %s: sampling continues, but not as an "
                        "exact continuation", state["step"], ", ".join(changed) or "task weights")
        self.step = int(state["step"])


def build_loader(cfg: Config, *, rank: int = 0, world_size: int = 1, batch_size: int | None = None) -> TransitionLoader:
    """The loader a training run uses: `cfg.data.dataset`, `train.micro_batch_size`, `objective.n_step/discount`,
    `model.max_text_tokens`, `cfg.seed`."""
    if not cfg.data.dataset:
        raise DatasetError("data.dataset is empty: name the dataset to train on (e.g. --data.dataset control@latest)")
    loader = TransitionLoader(cfg.data.dataset, storage=cfg.storage, data=cfg.data,
                              batch_size=batch_size or cfg.train.micro_batch_size, n_step=cfg.objective.n_step,
                              discount=cfg.objective.discount, max_text_tokens=cfg.model.max_text_tokens,
                              seed=cfg.seed, rank=rank, world_size=world_size,
                              proprio_stats=cfg.model.proprio_stats if cfg.model.proprio_norm == "task" else None)
    # Fail before the first step, not inside the network, when the data does not fit the model.
    m = cfg.model
    problems = []
    if loader.proprio_width > m.max_proprio_dims:
        problems.append(f"proprio has {loader.proprio_width} dims > model.max_proprio_dims={m.max_proprio_dims}")
    if loader.action_width > m.max_action_dims:
        problems.append(f"actions have {loader.action_width} dims > model.max_action_dims={m.max_action_dims}")
    if loader.image_shape is not None and loader.image_shape != (m.image_size, m.image_size, m.image_channels):
        problems.append(f"images are {loader.image_shape}, the model takes "
                        f"{(m.image_size, m.image_size, m.image_channels)} (model.image_size/image_channels)")
    if problems:
        raise DatasetError(f"dataset {loader.dataset.uri} does not fit the model: {'; '.join(problems)}")
    return loader

