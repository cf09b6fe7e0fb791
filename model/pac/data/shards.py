"""The shard file: several episodes of one task, concatenated, in an uncompressed `.npz`.

A shard is an ordinary NumPy archive (`np.load(path, allow_pickle=False)` reads it), written without
compression so that readers can memory-map every member in place (`open_shard`): a training loader
touches only the rows it samples, and the kernel's page cache, not the Python heap, holds the data.

Members (E episodes, N = sum of T_e steps, N + E observations; see `docs/data.md`):

    schema_version  ()            int64   SCHEMA_VERSION of the writer
    task            ()            str     the task id every episode in the shard belongs to
    proprio         (N+E, P)      float32 observations, episode e's rows obs_offsets[e]:obs_offsets[e+1]
    images          (N+E, H, W, 3) uint8  only when the task's episodes carry camera frames
    actions         (N, A)        float32 raw actions, episode e's rows step_offsets[e]:step_offsets[e+1]
    rewards         (N,)          float32
    discounts       (N,)          float32 env discount of the *next* observation (0 after a terminal)
    obs_offsets     (E+1,)        int64
    step_offsets    (E+1,)        int64
    action_low      (E, A)        float32 per-episode action bounds
    action_high     (E, A)        float32
    episode_ids, instructions, qualities, policies, provenance  (E,)  str (provenance: JSON objects)
"""

from __future__ import annotations

import functools
import json
import mmap
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pac.data.schema import SCHEMA_VERSION, Episode

STEP_ARRAYS = ("actions", "rewards", "discounts")
OBS_ARRAYS = ("proprio", "images")
TEXT_ARRAYS = ("episode_ids", "instructions", "qualities", "policies", "provenance")
REQUIRED = ("schema_version", "task", "proprio", *STEP_ARRAYS, "obs_offsets", "step_offsets", "action_low",
            "action_high", *TEXT_ARRAYS)
_ZIP_LOCAL_HEADER = b"PK\x03\x04"


class ShardError(ValueError):
    """A shard file is unreadable, corrupted or inconsistent; the message names the shard."""


def episode_nbytes(ep: Episode) -> int:
    """Bytes an episode occupies in a shard (float32 arrays plus images)."""
    n = 4 * (ep.proprio.size + ep.actions.size + ep.rewards.size + ep.discounts.size + 2 * ep.action_low.size)
    return n + (ep.images.nbytes if ep.images is not None else 0)


def write_shard(episodes: Sequence[Episode], path: str | Path) -> None:
    """Write validated episodes of one task to `path` as an uncompressed, pickle-free `.npz`.

    Args:
        episodes: at least one episode; all of the same task, proprio/action dimensions and image shape.
        path: destination file (written directly; callers publish it atomically through a `Store`).
    """
    if not episodes:
        raise ValueError("a shard needs at least one episode")
    task = episodes[0].task
    has_images = episodes[0].images is not None
    for ep in episodes:
        if ep.task != task or (ep.images is not None) != has_images:
            raise ValueError(f"shard mixes tasks or image presence: {ep.task!r} vs {task!r}")
    lengths = np.array([ep.length for ep in episodes], dtype=np.int64)
    arrays: dict[str, np.ndarray] = {
        "schema_version": np.array(SCHEMA_VERSION, dtype=np.int64),
        "task": np.array(task),
        "proprio": np.concatenate([ep.proprio for ep in episodes]).astype(np.float32, copy=False),
        "actions": np.concatenate([ep.actions for ep in episodes]).astype(np.float32, copy=False),
        "rewards": np.concatenate([ep.rewards for ep in episodes]).astype(np.float32, copy=False),
        "discounts": np.concatenate([ep.discounts for ep in episodes]).astype(np.float32, copy=False),
        "obs_offsets": np.concatenate([[0], np.cumsum(lengths + 1)]).astype(np.int64),
        "step_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "action_low": np.stack([ep.action_low for ep in episodes]).astype(np.float32, copy=False),
        "action_high": np.stack([ep.action_high for ep in episodes]).astype(np.float32, copy=False),
        "episode_ids": np.array([ep.episode_id for ep in episodes]),
        "instructions": np.array([ep.instruction for ep in episodes]),
        "qualities": np.array([ep.quality for ep in episodes]),
        "policies": np.array([ep.policy for ep in episodes]),
        "provenance": np.array([json.dumps(ep.provenance, sort_keys=True) for ep in episodes]),
    }
    if has_images:
        arrays["images"] = np.concatenate([ep.images for ep in episodes])  # type: ignore[misc]
    # What np.savez does, with two guarantees: members are stored uncompressed (what makes memory-mapping
    # possible), and a fixed timestamp makes the bytes (so the sha256) a function of the episodes alone.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(arr), allow_pickle=False)


class Shard:
    """A read-only shard whose numeric members are memory-mapped from the file.

    Attributes:
        name: how errors refer to the shard (its URI).
        arrays: member name -> array (np.memmap for the large members).
    """

    def __init__(self, path: str | Path, name: str = "") -> None:
        self.path = Path(path)
        self.name = name or str(path)
        try:
            self.arrays = _mmap_npz(self.path)
        except (OSError, ValueError, zipfile.BadZipFile, struct.error) as e:
            raise ShardError(f"shard {self.name} is unreadable: {e}") from e
        missing = [k for k in REQUIRED if k not in self.arrays]
        if missing:
            raise ShardError(f"shard {self.name} lacks member(s) {', '.join(missing)}")
        version = int(self.arrays["schema_version"])
        if version != SCHEMA_VERSION:
            raise ShardError(f"shard {self.name} has schema version {version}; this pac reads {SCHEMA_VERSION}")
        self.task = str(self.arrays["task"])
        self.obs_offsets = np.asarray(self.arrays["obs_offsets"])
        self.step_offsets = np.asarray(self.arrays["step_offsets"])
        self.instructions = np.asarray(self.arrays["instructions"])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    @property
    def has_images(self) -> bool:
        return "images" in self.arrays

    @property
    def num_episodes(self) -> int:
        return len(self.step_offsets) - 1

    def episode(self, i: int) -> Episode:
        """Episode `i` as an `Episode` (copies its rows out of the mapping)."""
        o0, o1 = int(self.obs_offsets[i]), int(self.obs_offsets[i + 1])
        s0, s1 = int(self.step_offsets[i]), int(self.step_offsets[i + 1])
        a = self.arrays
        return Episode(
            task=self.task, instruction=str(a["instructions"][i]), proprio=np.array(a["proprio"][o0:o1]),
            actions=np.array(a["actions"][s0:s1]), rewards=np.array(a["rewards"][s0:s1]),
            discounts=np.array(a["discounts"][s0:s1]), action_low=np.array(a["action_low"][i]),
            action_high=np.array(a["action_high"][i]),
            images=np.array(a["images"][o0:o1]) if self.has_images else None, quality=str(a["qualities"][i]),
            policy=str(a["policies"][i]), provenance=json.loads(str(a["provenance"][i])),
            episode_id=str(a["episode_ids"][i]))

    def episodes(self) -> list[Episode]:
        return [self.episode(i) for i in range(self.num_episodes)]

    def close(self) -> None:
        """Drop the mappings (pages already copied into batches stay valid)."""
        self.arrays = {}


def _mmap_npz(path: Path) -> dict[str, np.ndarray]:
    """Map every stored (uncompressed) `.npy` member of an `.npz` as an array over one shared mmap."""
    stat = path.stat()
    layout = _npz_layout(str(path), stat.st_size, stat.st_mtime_ns)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        # One mapping per shard (np.memmap would map once per member); views keep it alive.
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if stat.st_size else None
    for key, (dtype, shape, offset, order, small) in layout.items():
        if small is not None:
            out[key] = small
        else:
            out[key] = np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset, order=order)
    return out


@functools.lru_cache(maxsize=4096)
def _npz_layout(path: str, size: int, mtime_ns: int) -> dict[str, tuple]:
    """Member name -> (dtype, shape, data offset, order, small array or None), parsed from the zip.

    Cached per (path, size, mtime): reopening an evicted shard then costs one mmap, not a zip parse.
    """
    out: dict[str, tuple] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"member {key} is compressed; shards must be written uncompressed")
            # The member's data starts after its local file header (30 bytes + name + extra field).
            f.seek(info.header_offset)
            header = f.read(30)
            if header[:4] != _ZIP_LOCAL_HEADER:
                raise ValueError(f"member {key}: bad zip local header")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            member_start = info.header_offset + 30 + name_len + extra_len
            f.seek(member_start)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"member {key}: unsupported .npy version {version}")
            if dtype.hasobject:
                raise ValueError(f"member {key} holds Python objects (pickle); refusing to load it")
            offset = f.tell()
            count = int(np.prod(shape)) if shape else 1
            if offset + count * dtype.itemsize > member_start + info.file_size:
                raise ValueError(f"member {key} is truncated")
            order = "F" if fortran else "C"
            small = None
            if count == 0 or not shape or dtype.kind in "US":
                # Scalars, empty and string members are small: keep them in memory.
                f.seek(offset)
                small = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype).reshape(shape, order=order).copy()
                small.flags.writeable = False
            out[key] = (dtype, shape, offset, order, small)
    return out
