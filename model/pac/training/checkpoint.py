"""Training checkpoints in the object store: engine files, target network, trainer state; manifest last.

Layout under the run directory (`train.output`, local or s3://):

    checkpoints/step_0000200/<engine files, per rank>     DeepSpeed model/optimizer/scheduler states
    checkpoints/step_0000200/target_rank000.safetensors   target network (partition) per rank
    checkpoints/step_0000200/trainer_rank000.json         loader position, RNG state, MLflow run id
    checkpoints/step_0000200/manifest.json                written LAST: step, preset, model config, eta scale,
                                                          layout, precision, sha256 + size of every file above

A checkpoint without a manifest does not exist (a crash mid-save leaves nothing visible). Every file
is verified against the manifest before anything reads it, so a truncated or tampered checkpoint is
refused with the file named; engine files are then loaded with `weights_only=True`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from pac.config import Config
from pac.storage import Store, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
_STEP = re.compile(r"^step_(\d{7,})$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, tampered with or belongs to another model."""


def tag(step: int) -> str:
    return f"step_{step:07d}"


def rng_state() -> dict[str, str]:
    return {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}


def set_rng_state(state: dict[str, str]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))


class CheckpointStore:
    """Publishes and finds checkpoints of one run. All ranks call `save`/`load` together."""

    def __init__(self, store: Store, rank: int, world_size: int, staging: str | Path | None = None) -> None:
        self.store = store.child("checkpoints")
        self.rank, self.world_size = rank, world_size
        # Engine files are written to a node-local staging dir, then uploaded rank by rank.
        self.staging = Path(staging or tempfile.mkdtemp(prefix="pac-ckpt-"))

    def steps(self) -> list[int]:
        """Published checkpoints (those with a manifest), oldest first."""
        found = []
        for name in self.store.list_dirs(""):
            m = _STEP.match(name.rstrip("/"))
            if m and self.store.exists(f"{name.rstrip('/')}/{MANIFEST}"):
                found.append(int(m.group(1)))
        return sorted(found)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, engine: Any, step: int, cfg: Config, trainer_state: dict[str, Any], keep: int) -> None:
        """Write engine + target + trainer state for `step`, upload, and publish the manifest last."""
        import torch.distributed as dist

        t = tag(step)
        local = self.staging / t
        if self.rank == 0 and local.exists():
            shutil.rmtree(local)
        dist.barrier()
        engine.save(self.staging, t)
        (local / f"trainer_rank{self.rank:03d}.json").write_text(json.dumps(trainer_state))
        dist.barrier()
        mine = sorted(p for p in local.rglob("*") if p.is_file() and _owned_by(p.name, self.rank))
        entries = {}
        for p in mine:
            key = p.relative_to(local).as_posix()
            entries[key] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            self.store.put_file(f"{t}/{key}", p)
        gathered: list[dict[str, Any]] = [{} for _ in range(self.world_size)]
        dist.all_gather_object(gathered, entries)
        if self.rank == 0:
            files = {k: v for part in gathered for k, v in part.items()}
            manifest = {"format": FORMAT, "step": step, "preset": cfg.preset, "world_size": self.world_size,
                        "zero_stage": cfg.train.zero_stage, "precision": cfg.train.precision,
                        "model": dataclasses.asdict(cfg.model),
                        # eta's stored parameter is read through this scale (objective.Temperature)
                        "eta_lr_scale": cfg.objective.eta_lr_scale, "files": files}
            self.store.put_bytes(f"{t}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
            for old in self.steps()[:-keep]:
                # Unpublish first: a crash midway leaves orphan files, never a manifest naming deleted ones.
                self.store.delete(f"{tag(old)}/{MANIFEST}")
                for key in self.store.list(tag(old) + "/"):
                    self.store.delete(key)
        dist.barrier()
        shutil.rmtree(local, ignore_errors=True)
        log.info("checkpoint %s published (%d files)", t, len(entries))

    def manifest(self, step: int) -> dict[str, Any]:
        key = f"{tag(step)}/{MANIFEST}"
        where = self.store.url(key)
        try:
            data = json.loads(self.store.get_bytes(key))
        except ValueError as e:  # not JSON, or not UTF-8
            raise CheckpointError(f"{where} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} must hold a JSON object, not {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{where} has checkpoint format {data.get('format')!r}; "
                                  f"this version reads format {FORMAT}")
        _check_manifest(data, where)
        return data

    def load(self, engine: Any, step: int, cfg: Config) -> dict[str, Any]:
        """Verify and load checkpoint `step` into `engine`; returns this rank's trainer state."""
        manifest = self.manifest(step)
        where = self.store.url(tag(step))
        own = dataclasses.asdict(cfg.model)
        if manifest["model"] != own:
            diff = sorted(k for k in own.keys() | manifest["model"].keys() if own.get(k) != manifest["model"].get(k))
            raise CheckpointError(f"checkpoint {where} is of preset {manifest['preset']!r} and this run is "
                                  f"{cfg.preset!r}: model fields differ ({', '.join(diff)})")
        scale = manifest.get("eta_lr_scale", cfg.objective.eta_lr_scale)  # older manifests do not say
        if scale != cfg.objective.eta_lr_scale:
            raise CheckpointError(f"checkpoint {where} stores eta for objective.eta_lr_scale={scale} and this run "
                                  f"has {cfg.objective.eta_lr_scale}: resume with --objective.eta_lr_scale {scale}")
        precision = manifest.get("precision", cfg.train.precision)  # older manifests do not say
        if precision != cfg.train.precision:
            raise CheckpointError(f"checkpoint {where} holds {precision} optimizer state and this run trains in "
                                  f"{cfg.train.precision}: resume with --train.precision {precision} (or auto)")
        if manifest["world_size"] != self.world_size or manifest["zero_stage"] != cfg.train.zero_stage:
            raise CheckpointError(f"checkpoint {where} was written by {manifest['world_size']} rank(s) at ZeRO "
                                  f"stage {manifest['zero_stage']}; resume with the same layout, or export its "
                                  f"weights and start a new run from them (train.init_from)")
        local = self.staging / tag(step)
        shutil.rmtree(local, ignore_errors=True)
        for key, meta in manifest["files"].items():
            dest = local / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.store.get_file(f"{tag(step)}/{key}", dest)
            if dest.stat().st_size != meta["bytes"] or sha256_file(dest) != meta["sha256"]:
                raise CheckpointError(f"checkpoint file {where}/{key} does not match its manifest "
                                      "(truncated or tampered); refusing to load it")
        try:
            engine.load(self.staging, tag(step))
        except pickle.UnpicklingError as e:  # torch.load(weights_only=True) met something other than tensors
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {where} holds a file that is not plain tensors ({reason}); refusing "
                                  "to load it: checkpoints are never unpickled beyond tensors") from e
        state = json.loads((local / f"trainer_rank{self.rank:03d}.json").read_text())
        return state


def _check_manifest(data: dict[str, Any], where: str) -> None:
    """The fields `load` reads, with their JSON types: a damaged manifest is a named error, not a KeyError."""
    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    checks = {"step": integer, "world_size": lambda v: integer(v) and v >= 1, "zero_stage": integer,
              "preset": lambda v: isinstance(v, str), "model": lambda v: isinstance(v, dict),
              "files": lambda v: isinstance(v, dict) and all(
                  isinstance(k, str) and isinstance(m, dict) and isinstance(m.get("sha256"), str)
                  and integer(m.get("bytes")) for k, m in v.items())}
    for key, ok in checks.items():
        if key not in data or not ok(data[key]):
            raise CheckpointError(f"{where}: {key} is missing or malformed ({data.get(key)!r:.80}); the checkpoint "
                                  "manifest is damaged")


def _owned_by(name: str, rank: int) -> bool:
    """Which rank uploads a file: rank-specific names by their rank, shared ones by rank 0."""
    m = re.search(r"(?:zero_pp_rank_|_rank)(\d+)", name)
    if m:
        return int(m.group(1)) == rank
    return rank == 0
