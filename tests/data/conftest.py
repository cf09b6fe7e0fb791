"""Fixtures for the data tests: reproducible episodes of registry tasks, and a local storage config."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pac.config import StorageConfig
from pac.data.schema import Episode

MakeEpisode = Callable[..., Episode]


def make_episode(task: str = "cartpole/balance", steps: int = 12, proprio_dim: int = 5, action_dim: int = 1, *,
                 seed: int = 0, terminal: bool = False, images: bool = False, quality: str = "expert",
                 low: float = -2.0, high: float = 3.0) -> Episode:
    """A valid episode with distinct random values (so every row is recognisable after a round trip)."""
    rng = np.random.default_rng(seed)
    discounts = np.ones(steps, np.float32)
    if terminal:
        discounts[-1] = 0.0
    return Episode(
        task=task, instruction=f"instruction for {task}",
        proprio=rng.normal(size=(steps + 1, proprio_dim)).astype(np.float32),
        actions=rng.uniform(low, high, (steps, action_dim)).astype(np.float32),
        rewards=rng.uniform(0, 1, steps).astype(np.float32), discounts=discounts,
        action_low=np.full(action_dim, low, np.float32), action_high=np.full(action_dim, high, np.float32),
        images=rng.integers(0, 256, (steps + 1, 8, 8, 3), dtype=np.uint8) if images else None,
        quality=quality, policy="test-policy", provenance={"source": "tests", "seed": str(seed)},
        episode_id=f"{task}#{seed}")


@pytest.fixture
def episode_factory() -> MakeEpisode:
    return make_episode


@pytest.fixture
def storage(tmp_path: Path) -> StorageConfig:
    """Local storage rooted in the test's temporary directory."""
    return StorageConfig(root=str(tmp_path / "store"))


@pytest.fixture
def mixed_episodes() -> list[Episode]:
    """Two tasks of different embodiments, terminal and truncated episodes, several qualities."""
    eps = [make_episode("cartpole/balance", 10 + i, 5, 1, seed=i, terminal=i % 2 == 0,
                        quality=("random", "noisy", "expert")[i % 3]) for i in range(9)]
    eps += [make_episode("point_mass/easy", 6 + 2 * i, 4, 2, seed=100 + i, low=-1.0, high=1.0) for i in range(5)]
    return eps


def ingest_concurrently(dataset: str, storage: StorageConfig, batches: list[list[Episode]], *,
                        append: bool = False) -> list[int]:
    """Ingest each batch from its own thread into one dataset; returns the versions they published.

    Every ingest picks its version number before reading its episodes, and each source waits for all the
    others before it ends: so all of them claim the same number and race to publish it.
    """
    import threading

    from pac.config import DataConfig
    from pac.data.ingest import ingest

    barrier = threading.Barrier(len(batches), timeout=60)
    versions: list[int] = []
    errors: list[BaseException] = []

    def source(episodes: list[Episode]) -> Iterator[Episode]:
        yield from episodes
        barrier.wait()

    def run(episodes: list[Episode]) -> None:
        try:
            ref = ingest(source(episodes), dataset, storage=storage, data=DataConfig(shard_mb=0.002),
                         append=append, progress=False)
            versions.append(ref.version)
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sorted(versions)


def episode_ids(uri: str, storage: StorageConfig, cache: Path) -> list[str]:
    """The episode ids one dataset version holds, read from its shards (sorted)."""
    from pac.data.dataset import open_dataset

    ds = open_dataset(uri, storage)
    ids: list[str] = []
    for info in ds.manifest.shards:
        shard = ds.open_shard(info, cache)
        ids += [str(i) for i in shard["episode_ids"]]
        shard.close()
    return sorted(ids)


def check_concurrent_ingests(dataset: str, storage: StorageConfig, cache: Path) -> None:
    """Four ingests race for one number, then four appends race: every version is whole, nothing is lost."""
    batches = [[make_episode(seed=10 * k + i) for i in range(3)] for k in range(4)]
    assert ingest_concurrently(dataset, storage, batches) == [1, 2, 3, 4]
    published = sorted(tuple(episode_ids(f"{dataset}@v{v:04d}", storage, cache)) for v in (1, 2, 3, 4))
    assert published == sorted(tuple(sorted(f"{e.task}#{e.provenance['seed']}" for e in b)) for b in batches)

    more = [[make_episode(seed=100 + 10 * k + i) for i in range(2)] for k in range(4)]
    assert ingest_concurrently(dataset, storage, more, append=True) == [5, 6, 7, 8]
    # Each append that lost a number was rebased onto the winner: the newest version holds all of them.
    added = [f"{e.task}#{e.provenance['seed']}" for b in more for e in b]
    assert episode_ids(dataset, storage, cache) == sorted(episode_ids(f"{dataset}@v0004", storage, cache) + added)


@pytest.fixture
def concurrent_ingests_check() -> Callable[[str, StorageConfig, Path], None]:
    return check_concurrent_ingests
