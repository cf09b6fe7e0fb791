"""Readers that turn external data into `Episode`s for `pac.data.ingest.ingest`.

Source specs (what `pac data ingest --source` takes):

- `minari:DATASET_ID` — a Minari dataset in the local Minari store (`$MINARI_DATASETS_PATH`, default
  `~/.minari/datasets`), or `minari:/path/to/dataset_dir`. Nothing is downloaded.
- `PATH.npz` — one episode per file; `PATH.h5` / `PATH.hdf5` — one episode in the root group, or one
  episode per top-level group; a directory — every such file under it (recursively, sorted).

Episode file keys (see `docs/data.md`): `proprio` (T+1, P), `actions` (T, A), `rewards` (T,),
`discounts` (T,), `action_low` (A,), `action_high` (A,) are required float arrays; `task`,
`instruction`, `quality`, `policy`, `episode_id` are optional strings (HDF5: datasets or attributes);
`images` (T+1, H, W, 3) uint8 is optional. Values given on the command line (`task`, `instruction`,
`quality`) override those in the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pac.data.schema import Episode, EpisodeError

REQUIRED_KEYS = ("proprio", "actions", "rewards", "discounts", "action_low", "action_high")
OPTIONAL_STRINGS = ("task", "instruction", "quality", "policy", "episode_id")
EPISODE_SUFFIXES = (".npz", ".h5", ".hdf5")


@dataclass
class Overrides:
    """Labels given on the command line; each one, when set, replaces the value in the source."""

    task: str = ""
    instruction: str = ""
    quality: str = ""
    extra_provenance: dict[str, str] = field(default_factory=dict)


def _registry_instruction(task: str) -> str:
    from pac.envs.registry import TASKS

    spec = TASKS.get(task)
    return spec.instruction if spec else ""


def _episode(where: str, values: Mapping[str, Any], strings: Mapping[str, str], over: Overrides,
             source: str) -> Episode:
    """Build an Episode from raw arrays/strings, applying overrides and naming `where` in errors."""
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if missing:
        raise EpisodeError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}; an episode file needs "
                           f"{', '.join(REQUIRED_KEYS)} (see docs/data.md)")
    task = over.task or strings.get("task", "")
    if not task:
        raise EpisodeError(f"{where}: no task: the file has no 'task' key; pass the task id explicitly (--task)")
    instruction = over.instruction or strings.get("instruction", "") or _registry_instruction(task)
    if not instruction:
        raise EpisodeError(f"{where}: no instruction for task {task!r} (not a registry task): add an 'instruction' "
                           f"key or pass --instruction")
    return Episode(task=task, instruction=instruction, images=values.get("images"),
                   quality=over.quality or strings.get("quality", "") or "unknown", policy=strings.get("policy", ""),
                   provenance={"source": source, "file": where, **over.extra_provenance},
                   episode_id=strings.get("episode_id", "") or where,
                   **{k: values[k] for k in REQUIRED_KEYS})


def _npz_episodes(path: Path, over: Overrides) -> Iterator[Episode]:
    try:
        # allow_pickle=False: an episode file is data, never code.
        with np.load(path, allow_pickle=False) as z:
            values = {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise EpisodeError(f"{path}: holds a pickled (object) array; episode files must hold plain arrays, "
                               "and pickles are never loaded") from None
        raise EpisodeError(f"{path}: not a readable .npz episode file ({e})") from e
    except Exception as e:  # a damaged zip fails in many ways (zlib, zipfile, OSError, unsupported methods, ...)
        raise EpisodeError(f"{path}: not a readable .npz episode file ({type(e).__name__}: {e})") from e
    strings = {k: _as_str(values.pop(k)) for k in OPTIONAL_STRINGS if k in values}
    yield _episode(str(path), values, strings, over, source=str(path))


def _as_str(x: Any) -> str:
    """A string from a 0-d str/bytes array, a bytes value (HDF5) or a str."""
    x = x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x
    return x.decode() if isinstance(x, bytes) else str(x)


def _h5_group(group: Any, where: str, over: Overrides, source: str) -> Episode:
    import h5py

    values: dict[str, Any] = {}
    strings: dict[str, str] = {}
    try:
        for key, item in group.items():
            if not isinstance(item, h5py.Dataset):
                continue
            if key in OPTIONAL_STRINGS:
                strings[key] = _as_str(item[()])
            else:
                values[key] = item[()]
        for key in OPTIONAL_STRINGS:
            if key in group.attrs and key not in strings:
                strings[key] = _as_str(group.attrs[key])
    except Exception as e:  # a damaged dataset or attribute: h5py raises OSError, KeyError, RuntimeError, ...
        raise EpisodeError(f"{where}: damaged HDF5 episode ({type(e).__name__}: {e})") from e
    return _episode(where, values, strings, over, source=source)


def _h5_episodes(path: Path, over: Overrides) -> Iterator[Episode]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as e:  # not HDF5, truncated, damaged superblock: h5py raises OSError and others
        raise EpisodeError(f"{path}: not a readable HDF5 episode file ({type(e).__name__}: {e})") from e
    with f:
        try:
            root = "actions" in f
            groups = [] if root else [k for k in sorted(f.keys()) if isinstance(f[k], h5py.Group)]
        except EpisodeError:
            raise
        except Exception as e:
            raise EpisodeError(f"{path}: damaged HDF5 episode file ({type(e).__name__}: {e})") from e
        if root:
            yield _h5_group(f, str(path), over, str(path))
            return
        if not groups:
            raise EpisodeError(f"{path}: no episode: expected the episode keys in the root group or one group per "
                               f"episode")
        for name in groups:
            yield _h5_group(f[name], f"{path}:{name}", over, str(path))


def file_episodes(path: str | Path, over: Overrides | None = None) -> Iterator[Episode]:
    """Episodes from `.npz` / `.h5` / `.hdf5` files (a file or a directory of them)."""
    over = over or Overrides()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in EPISODE_SUFFIXES and p.is_file())
        if not files:
            raise EpisodeError(f"{path}: no {'/'.join(EPISODE_SUFFIXES)} episode files in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise EpisodeError(f"{path}: no such file or directory")
    for f in files:
        if f.suffix == ".npz":
            yield from _npz_episodes(f, over)
        elif f.suffix in (".h5", ".hdf5"):
            yield from _h5_episodes(f, over)
        else:
            raise EpisodeError(f"{f}: unsupported episode file type {f.suffix!r}; use {', '.join(EPISODE_SUFFIXES)}")


def _flatten_obs(obs: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(proprio (T+1, P) float, images (T+1, H, W, 3) uint8 or None) from Minari observations.

    Dict observations are flattened in sorted key order (nested dicts recursively); a uint8 array of
    shape (T+1, H, W, 3) is taken as the camera image.
    """
    parts: list[np.ndarray] = []
    images: list[np.ndarray] = []

    def visit(x: Any, key: str) -> None:
        if isinstance(x, Mapping):
            for k in sorted(x):
                visit(x[k], f"{key}/{k}" if key else str(k))
            return
        arr = np.asarray(x)
        if arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3:
            images.append(arr)
        elif np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
            parts.append(arr.reshape(arr.shape[0], -1).astype(np.float32))
        else:
            raise EpisodeError(f"{where}: observation {key or 'value'} has unsupported dtype {arr.dtype}")

    visit(obs, "")
    if len(images) > 1:
        raise EpisodeError(f"{where}: {len(images)} image observations; PAC episodes carry one camera")
    if not parts:
        raise EpisodeError(f"{where}: no numeric observations to use as proprioception")
    return np.concatenate(parts, axis=1), (images[0] if images else None)


def minari_episodes(dataset: str, over: Overrides) -> Iterator[Episode]:
    """Episodes of a local Minari dataset (by id, or a dataset directory).

    Minari stores `terminations`/`truncations`; the env discount is 0 after a termination and 1 otherwise
    (a truncated episode keeps bootstrapping). The task id must be given (`over.task`): Minari ids are not
    registry tasks.
    """
    import gymnasium as gym
    import minari

    if not over.task:
        raise EpisodeError(f"minari:{dataset}: pass the task id for this data explicitly (--task ID)")
    path = Path(dataset)
    try:
        if path.is_dir():
            ds = minari.MinariDataset(path / "data" if (path / "data").is_dir() else path)
        else:
            ds = minari.load_dataset(dataset, download=False)
    except Exception as e:  # missing, or damaged metadata / HDF5: minari and h5py raise many kinds
        raise EpisodeError(f"minari:{dataset}: cannot open the Minari dataset "
                           f"(MINARI_DATASETS_PATH={os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')}): "
                           f"{type(e).__name__}: {e}") from e
    try:
        space = ds.action_space
    except Exception as e:
        raise EpisodeError(f"minari:{dataset}: unreadable action space ({type(e).__name__}: {e})") from e
    if not isinstance(space, gym.spaces.Box):
        raise EpisodeError(f"minari:{dataset}: action space {space} is not continuous (Box); PAC needs Box actions")
    low = np.asarray(space.low, dtype=np.float32).reshape(-1)
    high = np.asarray(space.high, dtype=np.float32).reshape(-1)
    over = Overrides(over.task, over.instruction, over.quality,
                     {**over.extra_provenance, "minari_dataset": ds.id})
    episodes = iter(ds.iterate_episodes())
    while True:
        where = f"minari:{ds.id}"  # until the next episode is read
        try:
            ep = next(episodes, None)
            if ep is None:
                return
            where = f"minari:{ds.id} episode {ep.id}"
            proprio, images = _flatten_obs(ep.observations, where)
            actions = np.asarray(ep.actions)
            values = {"proprio": proprio, "images": images, "actions": actions.reshape(actions.shape[0], -1),
                      "rewards": np.asarray(ep.rewards, dtype=np.float32),
                      "discounts": 1.0 - np.asarray(ep.terminations, dtype=np.float32),
                      "action_low": low, "action_high": high}
        except EpisodeError:
            raise
        except Exception as e:  # a damaged episode group: h5py raises OSError, KeyError, ValueError, ...
            raise EpisodeError(f"{where}: unreadable ({type(e).__name__}: {e})") from e
        yield _episode(where, values, {"episode_id": f"{ds.id}/{ep.id}"}, over, source=f"minari:{ds.id}")


def open_source(spec: str, over: Overrides | None = None) -> tuple[Iterator[Episode], dict[str, str]]:
    """Episodes and a provenance record for a source spec (`minari:ID` or a path), see the module docstring."""
    over = over or Overrides()
    record = {k: v for k, v in (("task", over.task), ("instruction", over.instruction),
                                ("quality", over.quality)) if v}
    if spec.startswith("minari:"):
        return minari_episodes(spec[len("minari:"):], over), {"kind": "minari", "uri": spec, **record}
    path = Path(spec).expanduser()
    kind = "directory" if path.is_dir() else path.suffix.lstrip(".") or "file"
    return file_episodes(path, over), {"kind": kind, "uri": str(path.absolute()), **record}
