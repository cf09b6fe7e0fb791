"""Bad input, generated: every case is accepted as valid or rejected with a named error; nothing is published.

Hypothesis mutates valid inputs (episode files in .npz and HDF5, dataset manifests, configs, exports, checkpoints):
a key dropped, a value of another type, shape or dtype, NaN and inf, bytes flipped or cut off, a pickled object
array. A case passes when the input is accepted and works, or is refused with the input format's own error
(EpisodeError, ManifestError, ConfigError, ExportError, CheckpointError, ...) and nothing was published. Any other
exception is a crash and fails the test with the shrunk input.

The default tier runs a few dozen cases per format (the `default-tier` profile, derandomised); the reliability run
(`benchmarks/reliability.py`) uses the `reliability` profile: hundreds, freshly random.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pac.config import Config, ConfigError, DataConfig, StorageConfig
from pac.data.dataset import DatasetError, list_versions, open_dataset
from pac.data.ingest import ingest
from pac.data.loader import TransitionLoader
from pac.data.manifest import ManifestError
from pac.data.schema import EpisodeError
from pac.data.shards import ShardError
from pac.data.sources import file_episodes
from pac.storage import StorageError
from pac.training.checkpoint import CheckpointError
from pac.training.export import ExportError, load_export

from .conftest import Record

pytestmark = pytest.mark.fuzz

NAMED = (EpisodeError, DatasetError, ManifestError, ShardError, ConfigError, ExportError, CheckpointError,
         StorageError)

# -- mutations ----------------------------------------------------------------------------------------------------

DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_, np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)
SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e39, 0.0])


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Any small numeric array, sometimes sprinkled with NaN/inf/overflowing values."""
    arr = draw(hnp.arrays(DTYPES, SHAPES))
    if arr.dtype.kind == "f" and arr.size and draw(st.booleans()):
        flat = arr.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(SPECIAL)
    return arr


def valid_episode(steps: int = 6) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {"proprio": rng.normal(size=(steps + 1, 5)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (steps, 1)).astype(np.float32),
            "rewards": rng.uniform(0, 1, steps).astype(np.float32), "discounts": np.ones(steps, np.float32),
            "action_low": -np.ones(1, np.float32), "action_high": np.ones(1, np.float32),
            "task": np.array("cartpole/balance")}


@st.composite
def episode_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid episode's arrays with one to three keys dropped, replaced or corrupted."""
    ep = valid_episode(draw(st.integers(1, 8)))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(ep)))
        how = draw(st.sampled_from(["drop", "replace", "special", "transpose", "text"]))
        if how == "drop":
            ep.pop(key)
        elif how == "replace":
            ep[key] = draw(arrays())
        elif how == "special" and ep[key].dtype.kind == "f" and ep[key].size:
            flat = ep[key].reshape(-1).copy()
            flat[draw(st.integers(0, flat.size - 1))] = draw(SPECIAL)
            ep[key] = flat.reshape(ep[key].shape)
        elif how == "transpose":
            ep[key] = np.asarray(ep[key]).T
        elif how == "text":
            ep[key] = np.array(draw(st.text(max_size=20)))
    return ep


def corrupt(data: bytes, draw: st.DrawFn) -> bytes:
    """The bytes of a file with some flipped, or cut off."""
    if not data:
        return data
    if draw(st.booleans()):
        return data[:draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    return bytes(out)


@st.composite
def json_values(draw: st.DrawFn) -> Any:
    scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8)
    return draw(st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                             | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6))


def mutate_json(doc: Any, draw: st.DrawFn) -> Any:
    """A JSON document with one value (at a random depth) deleted or replaced by another JSON value."""
    if isinstance(doc, dict) and doc and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(doc)))
        out = dict(doc)
        if draw(st.integers(0, 4)) == 0:
            out.pop(key)
        else:
            out[key] = mutate_json(doc[key], draw)
        return out
    if isinstance(doc, list) and doc and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], mutate_json(doc[i], draw), *doc[i + 1:]]
    return draw(json_values())


# -- the checks ---------------------------------------------------------------------------------------------------


class Tally:
    """Counts outcomes; `check(fn)` runs one case and fails on anything but acceptance or a named error."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def check(self, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except NAMED as e:
            assert str(e), f"{type(e).__name__} without a message"
            self.counts["rejected"] += 1
            return False
        self.counts["accepted"] += 1
        return True

    def report(self, record: Record, fault: str) -> None:
        n = sum(self.counts.values())
        record(fault=fault, trials=n, survived=n, outcome=f"{self.counts['accepted']} accepted as valid, "
               f"{self.counts['rejected']} rejected with a named error, 0 crashes, nothing published from a rejection")


def ingest_file(path: Path, root: Path) -> None:
    """Ingest one episode file; a rejected one must leave no version behind."""
    storage = StorageConfig(root=str(root))
    try:
        ingest(file_episodes(path), "fuzz", storage=storage, progress=False)
    except NAMED:
        assert list_versions("fuzz", storage) == []
        raise
    ds = open_dataset("fuzz", storage)
    for info in ds.manifest.shards:  # what was accepted reads back
        ds.open_shard(info, root / "cache").close()


def test_fuzzed_npz_episode_files(record: Record) -> None:
    tally = Tally()

    @given(data=st.data())
    def case(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "episode.npz"
            ep = data.draw(episode_dicts())
            if data.draw(st.integers(0, 5)) == 0:  # an object array: np.load must refuse it, never unpickle
                ep["proprio"] = np.array([{"x": 1}, None], dtype=object)
            np.savez(path, **ep)
            if data.draw(st.integers(0, 3)) == 0:
                path.write_bytes(corrupt(path.read_bytes(), data.draw))
            tally.check(lambda: ingest_file(path, Path(tmp) / "store"))

    case()
    tally.report(record, "fuzzed .npz episode files (mutated keys, dtypes, shapes, NaN/inf, object arrays, bytes)")


def test_fuzzed_hdf5_episode_files(record: Record) -> None:
    import h5py

    tally = Tally()

    @given(data=st.data())
    def case(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "episode.h5"
            ep = data.draw(episode_dicts())
            with h5py.File(path, "w") as f:
                group = f.create_group("ep0") if data.draw(st.booleans()) else f
                for key, value in ep.items():
                    if value.dtype.kind == "U":
                        group.attrs[key] = str(value)
                    else:
                        group.create_dataset(key, data=value)
            if data.draw(st.integers(0, 3)) == 0:
                path.write_bytes(corrupt(path.read_bytes(), data.draw))
            tally.check(lambda: ingest_file(path, Path(tmp) / "store"))

    case()
    tally.report(record, "fuzzed HDF5 episode files (as .npz, in the root group or one group per episode)")


@pytest.fixture(scope="module")
def valid_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("valid")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "episode.npz"
        np.savez(path, **valid_episode())
        ingest(file_episodes(path), "data", storage=StorageConfig(root=str(root)), progress=False)
    return root / "data"


def test_fuzzed_dataset_manifests(valid_dataset: Path, record: Record) -> None:
    tally = Tally()
    manifest = json.loads((valid_dataset / "v0001" / "manifest.json").read_text())

    @given(data=st.data())
    def case(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            import shutil

            copy = Path(tmp) / "data"
            shutil.copytree(valid_dataset, copy)
            text = json.dumps(mutate_json(manifest, data.draw))
            if data.draw(st.integers(0, 4)) == 0:
                text = corrupt(text.encode(), data.draw).decode("utf-8", "replace")
            (copy / "v0001" / "manifest.json").write_text(text)

            def read() -> None:  # what the trainer does with a dataset: open it, index it, draw a batch
                ds = open_dataset(str(copy), StorageConfig())
                for info in ds.manifest.shards:
                    ds.open_shard(info, Path(tmp) / "cache").close()
                loader = TransitionLoader(str(copy), storage=StorageConfig(), data=DataConfig(cache_dir=tmp),
                                          batch_size=4, n_step=2, discount=0.9, max_text_tokens=48)
                loader.batch(0)
                loader.close()

            tally.check(read)

    case()
    tally.report(record, "fuzzed dataset manifests (a value deleted or replaced at any depth, bytes flipped)")


def test_fuzzed_configs(record: Record) -> None:
    tally = Tally()
    valid = Config().to_dict()

    @given(data=st.data())
    def case(data: st.DataObject) -> None:
        doc = mutate_json(valid, data.draw)
        tally.check(lambda: Config.from_dict(doc) if isinstance(doc, dict) else Config.from_dict({"x": doc}))

    case()
    tally.report(record, "fuzzed configs (a value deleted or replaced by any JSON value at any depth)")


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run: its export and its checkpoint."""
    from pac.data.synthetic import SyntheticSource
    from pac.training.loop import train

    out = tmp_path_factory.mktemp("run")
    cfg = Config.from_dict({"preset": "tiny", "seed": 5, "objective": {"num_action_samples": 4},
                            "train": {"steps": 2, "global_batch_size": 8, "micro_batch_size": 8, "precision": "fp32",
                                      "checkpoint_every": 2, "output": str(out)},
                            "tracking": {"enabled": False}})
    train(cfg, source=SyntheticSource(cfg.model, 8, seed=5))
    return out


def test_fuzzed_exports(valid_run: Path, record: Record) -> None:
    tally = Tally()
    files = {name: (valid_run / "export" / name).read_bytes() for name in ("config.json", "model.safetensors")}

    @given(data=st.data())
    def case(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            name = data.draw(st.sampled_from(sorted(files)))
            if name == "config.json" and data.draw(st.booleans()):
                mutated = json.dumps(mutate_json(json.loads(files[name]), data.draw)).encode()
            else:
                mutated = corrupt(files[name], data.draw)
            (Path(tmp) / name).write_bytes(mutated)
            tally.check(lambda: load_export(tmp))

    case()
    tally.report(record, "fuzzed model exports (config values replaced, weights' bytes flipped or cut off)")


def test_fuzzed_checkpoints(valid_run: Path, record: Record) -> None:
    """A resumed run meets a mutated checkpoint: it loads (the mutation was harmless) or is refused by name."""
    import shutil

    from pac.data.synthetic import SyntheticSource
    from pac.training.loop import train

    tally = Tally()
    step = valid_run / "checkpoints" / "step_0000002"
    names = sorted(p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file())

    @given(data=st.data())
    @settings(max_examples=max(3, settings.default.max_examples // 5))  # a resuming run per case
    def case(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            shutil.copytree(valid_run / "checkpoints", out / "checkpoints")
            name = data.draw(st.sampled_from(names))
            target = out / "checkpoints" / "step_0000002" / name
            if name.endswith(".json") and data.draw(st.booleans()):
                target.write_text(json.dumps(mutate_json(json.loads(target.read_text()), data.draw)))
            else:
                target.write_bytes(corrupt(target.read_bytes(), data.draw))
            cfg = Config.from_dict({"preset": "tiny", "seed": 5, "objective": {"num_action_samples": 4},
                                    "train": {"steps": 3, "global_batch_size": 8, "micro_batch_size": 8,
                                              "precision": "fp32", "checkpoint_every": 100, "output": str(out)},
                                    "tracking": {"enabled": False}})
            tally.check(lambda: train(cfg, source=SyntheticSource(cfg.model, 8, seed=5)))

    case()
    tally.report(record, "fuzzed checkpoints met by a resuming run (manifest values replaced, files' bytes flipped)")


@pytest.fixture(scope="module")
def valid_minari(tmp_path_factory: pytest.TempPathFactory, make_minari_dataset: Callable[..., Path]) -> Path:
    return make_minari_dataset(tmp_path_factory.mktemp("minari"), "pac/fuzz/random-v0", 4)


def test_fuzzed_minari_datasets(valid_minari: Path, record: Record) -> None:
    import shutil

    from pac.data.sources import Overrides, open_source

    tally = Tally()
    files = sorted(p.relative_to(valid_minari).as_posix() for p in valid_minari.rglob("*") if p.is_file())

    @given(data=st.data())
    def case(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "ds"
            shutil.copytree(valid_minari, copy)
            target = copy / data.draw(st.sampled_from(files))
            if target.suffix == ".json" and data.draw(st.booleans()):
                target.write_text(json.dumps(mutate_json(json.loads(target.read_text()), data.draw)))
            else:
                target.write_bytes(corrupt(target.read_bytes(), data.draw))
            storage = StorageConfig(root=str(Path(tmp) / "store"))

            def read() -> None:
                episodes, _ = open_source(f"minari:{copy}", Overrides(task="gym/inverted_pendulum",
                                                                      instruction="Balance the pole."))
                try:
                    ingest(episodes, "fuzz", storage=storage, allowed_tasks={"gym/inverted_pendulum"},
                           progress=False)
                except NAMED:
                    assert list_versions("fuzz", storage) == []
                    raise

            tally.check(read)

    case()
    tally.report(record, "fuzzed Minari datasets (metadata values replaced, HDF5 bytes flipped or cut off)")
