"""External sources (npz / HDF5 episode files, Minari datasets) and the `pac data` CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pac.cli import main
from pac.config import StorageConfig
from pac.data.dataset import list_versions, open_dataset
from pac.data.ingest import ingest
from pac.data.schema import Episode, EpisodeError
from pac.data.sources import Overrides, file_episodes, open_source

KEYS = ("proprio", "actions", "rewards", "discounts", "action_low", "action_high")


def _save_npz(path: Path, ep: Episode, **strings: str) -> Path:
    np.savez(path, **{k: getattr(ep, k) for k in KEYS}, **{k: np.array(v) for k, v in strings.items()})
    return path


def _save_h5(path: Path, episodes: list[Episode]) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for i, ep in enumerate(episodes):
            g = f.create_group(f"episode_{i:03d}")
            for k in KEYS:
                g.create_dataset(k, data=getattr(ep, k))
            if ep.images is not None:
                g.create_dataset("images", data=ep.images)
            g.attrs["task"] = ep.task
            g.attrs["quality"] = ep.quality
            g.create_dataset("instruction", data=ep.instruction)  # strings may be datasets or attributes
    return path


def test_npz_and_hdf5_files(episode_factory, tmp_path: Path, storage: StorageConfig) -> None:
    a = episode_factory(seed=1)
    b = episode_factory("point_mass/easy", 9, 4, 2, seed=2, images=True, quality="noisy")
    c = episode_factory("point_mass/easy", 5, 4, 2, seed=3, images=True, quality="random")
    (tmp_path / "files" / "nested").mkdir(parents=True)
    _save_npz(tmp_path / "files" / "a.npz", a, task=a.task, episode_id="ep-a")
    _save_h5(tmp_path / "files" / "nested" / "bc.h5", [b, c])

    got = list(file_episodes(tmp_path / "files"))
    assert [ep.episode_id for ep in got] == ["ep-a", f"{tmp_path}/files/nested/bc.h5:episode_000",
                                             f"{tmp_path}/files/nested/bc.h5:episode_001"]
    for want, ep in zip([a, b, c], got):
        for k in KEYS:
            np.testing.assert_array_equal(getattr(ep, k), getattr(want, k))
        assert ep.task == want.task
    assert got[0].instruction == "Keep the pole balanced upright by moving the cart."  # registry default
    assert got[1].instruction == b.instruction and got[1].quality == "noisy"
    np.testing.assert_array_equal(got[2].images, c.images)

    it, record = open_source(str(tmp_path / "files"))
    ref = ingest(it, "files", storage=storage, sources=[record], progress=False)
    m = open_dataset(str(ref), storage).manifest
    assert m.counts["episodes"] == 3 and m.tasks["point_mass/easy"].image_shape == [8, 8, 3]
    assert m.sources == [{"kind": "directory", "uri": str(tmp_path / "files")}]

    relabeled = list(file_episodes(tmp_path / "files" / "a.npz", Overrides(quality="policy", instruction="go")))
    assert relabeled[0].quality == "policy" and relabeled[0].instruction == "go"


def test_file_errors_name_the_file_and_key(episode_factory, tmp_path: Path, storage: StorageConfig) -> None:
    ep = episode_factory()
    path = tmp_path / "broken.npz"
    np.savez(path, **{k: getattr(ep, k) for k in KEYS if k != "rewards"}, task=np.array(ep.task))
    with pytest.raises(EpisodeError, match=rf"{path}: missing key\(s\) 'rewards'"):
        ingest(file_episodes(path), "broken", storage=storage, progress=False)
    assert list_versions("broken", storage) == []

    nameless = _save_npz(tmp_path / "nameless.npz", ep)
    with pytest.raises(EpisodeError, match="no task.*--task"):
        list(file_episodes(nameless))
    foreign = _save_npz(tmp_path / "foreign.npz", ep, task="my-robot/pick")
    with pytest.raises(EpisodeError, match="no instruction for task 'my-robot/pick'"):
        list(file_episodes(foreign))
    with pytest.raises(EpisodeError, match=rf"^{foreign}: field 'task' 'my-robot/pick' is not a known task"):
        ingest(file_episodes(foreign, Overrides(instruction="pick")), "foreign", storage=storage, progress=False)
    with pytest.raises(EpisodeError, match="no such file"):
        list(file_episodes(tmp_path / "missing.npz"))


def test_cli_ingest_and_inspect(episode_factory, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = str(tmp_path / "store")
    files, other = tmp_path / "files", tmp_path / "other"
    files.mkdir()
    other.mkdir()
    for i in range(4):
        _save_npz(files / f"e{i}.npz", episode_factory(seed=i, quality="expert"), task="cartpole/balance")
    robot = _save_npz(other / "robot.npz", episode_factory(seed=9), task="my-robot/pick", instruction="pick it up")

    # A task outside the registry is refused unless named on the command line.
    assert main(["data", "ingest", "--source", str(files), "--source", str(robot), "--dataset", "cli",
                 "--storage.root", root, "--no-progress"]) == 1
    assert "'my-robot/pick' is not a known task" in capsys.readouterr().err
    assert main(["data", "ingest", "--source", str(robot), "--task", "my-robot/pick", "--dataset", "cli",
                 "--storage.root", root, "--no-progress", "--uri-file", str(tmp_path / "uri")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == f"{root}/cli@v0001" and (tmp_path / "uri").read_text() == printed
    assert main(["data", "ingest", "--source", str(files), "--dataset", "cli", "--storage.root", root, "--append",
                 "--no-progress", "--quality", "noisy"]) == 0
    capsys.readouterr()

    assert main(["data", "inspect", "cli", "--storage.root", root, "--verify"]) == 0
    out, err = capsys.readouterr()
    assert "  v0001" in out and "* v0002" in out and "(appends v0001)" in out
    assert "cartpole/balance" in out and "my-robot/pick" in out and "qualities: noisy 4, unknown 1" in out
    assert "instruction: 'pick it up'" in out and "verified 2 shards" in err
    assert main(["data", "inspect", "cli@v0001", "--storage.root", root, "--json"]) == 0
    assert '"version": 1' in capsys.readouterr().out
    assert main(["data", "inspect", "cli@v0009", "--storage.root", root]) == 1
    assert "no version 9" in capsys.readouterr().err


@pytest.fixture
def minari_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_minari_dataset: Callable[..., Path]) -> str:
    """A small Minari dataset made with Minari's own DataCollector, found through MINARI_DATASETS_PATH."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    make_minari_dataset(tmp_path / "minari", "pac/invpend/random-v0", 8)
    return "pac/invpend/random-v0"


def test_minari_dataset(minari_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import minari

    root = str(tmp_path / "store")
    source = f"minari:{minari_dataset}"
    assert main(["data", "ingest", "--source", source, "--dataset", "pend", "--storage.root", root,
                 "--no-progress"]) == 1
    assert "pass the task id" in capsys.readouterr().err
    assert main(["data", "ingest", "--source", source, "--dataset", "pend", "--storage.root", root, "--no-progress",
                 "--task", "gym/inverted_pendulum", "--instruction", "Balance the pole.", "--quality", "random"]) == 0

    storage = StorageConfig(root=root)
    ds = open_dataset("pend", storage)
    st = ds.manifest.tasks["gym/inverted_pendulum"]
    raw = list(minari.load_dataset(minari_dataset).iterate_episodes())
    assert st.episodes == len(raw) == 8 and st.qualities == {"random": 8} and (st.proprio_dim, st.action_dim) == (4, 1)
    assert (st.action_low, st.action_high) == ([-3.0], [3.0])
    ours = {ep.episode_id: ep for info in ds.manifest.shards for ep in ds.open_shard(info, "unused").episodes()}
    terminated = truncated = 0
    for r in raw:
        ep = ours[f"{minari_dataset}/{r.id}"]
        np.testing.assert_allclose(ep.proprio, r.observations, rtol=1e-6)
        np.testing.assert_allclose(ep.actions, r.actions, rtol=1e-6)
        np.testing.assert_allclose(ep.rewards, r.rewards)
        np.testing.assert_array_equal(ep.discounts, 1.0 - r.terminations)
        assert ep.instruction == "Balance the pole." and ep.provenance["minari_dataset"] == minari_dataset
        terminated += bool(r.terminations[-1])
        truncated += bool(r.truncations[-1]) and not r.terminations[-1]
    assert terminated and truncated  # both endings were exercised
    assert ds.manifest.sources[0] == {"kind": "minari", "uri": source, "task": "gym/inverted_pendulum",
                                      "instruction": "Balance the pole.", "quality": "random"}
