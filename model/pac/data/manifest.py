"""The dataset manifest: what a published dataset version holds, with the statistics training needs.

A manifest lists its shards (path, sha256, size) with a per-shard summary (episode lengths and
returns, quality labels, proprio mean/M2, action bounds). Everything else in it — counts, per-task
return statistics and histograms, proprio normalisation statistics, quality counts — is derived from
those summaries (`Manifest.tasks`), so appending a new version is just concatenating shard lists.
The derived sections are written into the JSON for people and other tools; readers recompute them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pac.data.schema import SCHEMA_VERSION, Episode

MANIFEST_NAME = "manifest.json"
HISTOGRAM_BINS = 10


class ManifestError(ValueError):
    """A manifest is missing, malformed, or of an unknown schema version; the message names it."""


@dataclass
class ShardInfo:
    """One shard file and a summary of its episodes (all of one task)."""

    path: str  # relative to the dataset root, e.g. "v0001/shards/000000-cartpole-balance-1a2b3c4d.npz"
    sha256: str
    bytes: int
    task: str
    episodes: int
    transitions: int
    proprio_dim: int
    action_dim: int
    image_shape: list[int] | None  # [H, W, 3] or None
    instructions: list[str]  # distinct instructions, in order of appearance
    episode_lengths: list[int]
    episode_returns: list[float]
    qualities: dict[str, int]
    policies: dict[str, int]
    proprio_mean: list[float]  # over all observations (T+1 per episode)
    proprio_m2: list[float]  # sum of squared deviations from proprio_mean (Chan et al. parallel variance)
    observations: int
    action_low: list[float]  # elementwise min/max of the episodes' bounds
    action_high: list[float]
    # each episode's quality label, in shard order, so training can select by quality (`data.qualities`);
    # None in manifests written before it existed (a shard of one label is still selectable: `labels()`)
    episode_qualities: list[str] | None = None
    # label -> {"observations", "proprio_mean", "proprio_m2"} of that label's episodes, so a run that selects
    # qualities standardises by the states it trains on (`Manifest.proprio_stats`); None before it existed
    quality_proprio: dict[str, dict[str, Any]] | None = None

    def labels(self) -> list[str] | None:
        """Each episode's quality label, or None when the manifest predates them and the shard mixes labels."""
        if self.episode_qualities is not None:
            return list(self.episode_qualities)
        return [next(iter(self.qualities))] * self.episodes if len(self.qualities) == 1 else None

    @staticmethod
    def summarize(episodes: Sequence[Episode], path: str, sha256: str, nbytes: int) -> ShardInfo:
        """Summary of validated episodes of one task (as written into one shard)."""
        first = episodes[0]
        by_quality: dict[str, dict[str, Any]] = {}
        for quality in dict.fromkeys(ep.quality for ep in episodes):
            states = np.concatenate([ep.proprio for ep in episodes if ep.quality == quality]).astype(np.float64)
            center = states.mean(axis=0)
            by_quality[quality] = {"observations": int(states.shape[0]), "proprio_mean": center.tolist(),
                                   "proprio_m2": ((states - center) ** 2).sum(axis=0).tolist()}
        # The shard's moments pooled from its qualities' (exact up to rounding), not from a second copy of its states.
        observations, mean, m2 = _combine([(m["observations"], m["proprio_mean"], m["proprio_m2"])
                                           for m in by_quality.values()])
        instructions = list(dict.fromkeys(ep.instruction for ep in episodes))
        return ShardInfo(
            path=path, sha256=sha256, bytes=nbytes, task=first.task, episodes=len(episodes),
            transitions=sum(ep.length for ep in episodes), proprio_dim=int(first.proprio.shape[1]),
            action_dim=int(first.actions.shape[1]),
            image_shape=list(first.images.shape[1:]) if first.images is not None else None,
            instructions=instructions, episode_lengths=[ep.length for ep in episodes],
            episode_returns=[float(np.float64(ep.rewards.astype(np.float64).sum())) for ep in episodes],
            qualities=dict(Counter(ep.quality for ep in episodes)),
            policies=dict(Counter(ep.policy for ep in episodes if ep.policy)),
            proprio_mean=mean.tolist(), proprio_m2=m2.tolist(), observations=observations,
            action_low=np.min([ep.action_low for ep in episodes], axis=0).astype(np.float64).tolist(),
            action_high=np.max([ep.action_high for ep in episodes], axis=0).astype(np.float64).tolist(),
            episode_qualities=[ep.quality for ep in episodes], quality_proprio=by_quality)


@dataclass
class TaskStats:
    """Per-task statistics derived from the shard summaries."""

    episodes: int
    transitions: int
    tokens: int
    instruction: str  # the first instruction seen (see `instructions` for all)
    instructions: list[str]
    proprio_dim: int
    action_dim: int
    image_shape: list[int] | None
    action_low: list[float]
    action_high: list[float]
    return_mean: float
    return_std: float
    return_min: float
    return_max: float
    return_histogram: dict[str, list[float]]  # {"edges": [B+1], "counts": [B]}
    proprio_mean: list[float]  # normalisation statistics over every observation of the task
    proprio_std: list[float]
    qualities: dict[str, int]
    policies: dict[str, int]
    shards: int


def _combine(parts: Sequence[tuple[int, Sequence[float], Sequence[float]]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.: (count, mean, M2) of several groups of observations -> those of their union."""
    n, mean, m2 = 0, np.zeros(len(parts[0][1])), np.zeros(len(parts[0][1]))
    for nb, mb, m2b in parts:
        delta = np.asarray(mb) - mean
        total = n + nb
        mean = mean + delta * nb / total
        m2 = m2 + np.asarray(m2b) + delta**2 * n * nb / total
        n = total
    return n, mean, m2


def task_stats(shards: Sequence[ShardInfo]) -> dict[str, TaskStats]:
    """Aggregate shard summaries per task (sorted by task id)."""
    by_task: dict[str, list[ShardInfo]] = {}
    for s in shards:
        by_task.setdefault(s.task, []).append(s)
    out = {}
    for task in sorted(by_task):
        group = by_task[task]
        returns = np.array([r for s in group for r in s.episode_returns], dtype=np.float64)
        counts, edges = np.histogram(returns, bins=HISTOGRAM_BINS)
        n, mean, m2 = _combine([(s.observations, s.proprio_mean, s.proprio_m2) for s in group])
        transitions = sum(s.transitions for s in group)
        instructions = list(dict.fromkeys(i for s in group for i in s.instructions))
        out[task] = TaskStats(
            episodes=sum(s.episodes for s in group), transitions=transitions,
            tokens=transitions * (group[0].proprio_dim + group[0].action_dim), instruction=instructions[0],
            instructions=instructions, proprio_dim=group[0].proprio_dim, action_dim=group[0].action_dim,
            image_shape=group[0].image_shape,
            action_low=np.min([s.action_low for s in group], axis=0).tolist(),
            action_high=np.max([s.action_high for s in group], axis=0).tolist(),
            return_mean=float(returns.mean()), return_std=float(returns.std()), return_min=float(returns.min()),
            return_max=float(returns.max()),
            return_histogram={"edges": edges.tolist(), "counts": counts.astype(float).tolist()},
            proprio_mean=mean.tolist(), proprio_std=np.sqrt(m2 / max(n, 1)).tolist(),
            qualities=dict(sum((Counter(s.qualities) for s in group), Counter())),
            policies=dict(sum((Counter(s.policies) for s in group), Counter())), shards=len(group))
    return out


def _is(value: Any, kind: type) -> bool:
    """JSON type check: bool is not an int here, an int is a float."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


# ShardInfo field -> (JSON type, element type of a list / value type of a dict, or None)
_SHARD_FIELDS: dict[str, tuple[type, type | None]] = {
    "path": (str, None), "sha256": (str, None), "bytes": (int, None), "task": (str, None), "episodes": (int, None),
    "transitions": (int, None), "proprio_dim": (int, None), "action_dim": (int, None),
    "instructions": (list, str), "episode_lengths": (list, int), "episode_returns": (list, float),
    "qualities": (dict, int), "policies": (dict, int), "proprio_mean": (list, float), "proprio_m2": (list, float),
    "observations": (int, None), "action_low": (list, float), "action_high": (list, float),
}
_OPTIONAL_SHARD_FIELDS = {"episode_qualities", "quality_proprio"}  # absent from manifests written before them


def _check_shard_entry(s: dict[str, Any], where: str) -> None:
    """Types and internal consistency of one shard entry: the loader indexes episodes by these numbers."""
    for key, (kind, item) in _SHARD_FIELDS.items():
        value = s[key]
        items = value.values() if isinstance(value, dict) else value
        if not _is(value, kind) or (item is not None and not all(_is(v, item) for v in items)):
            raise ManifestError(f"{where}: {key} must be a {kind.__name__}"
                                f"{f' of {item.__name__}' if item else ''}, got {value!r:.80}")
    image = s["image_shape"]
    if image is not None and not (_is(image, list) and len(image) == 3 and all(_is(v, int) and v > 0 for v in image)):
        raise ManifestError(f"{where}: image_shape must be null or [H, W, 3], got {image!r:.80}")
    lengths = s["episode_lengths"]
    checks = [
        (s["episodes"] >= 1 and len(lengths) == s["episodes"] == len(s["episode_returns"]),
         "episodes, episode_lengths and episode_returns disagree"),
        (all(n >= 1 for n in lengths) and sum(lengths) == s["transitions"],
         "episode_lengths do not sum to transitions"),
        (s["observations"] == s["transitions"] + s["episodes"], "observations != transitions + episodes"),
        (s["proprio_dim"] >= 1 and len(s["proprio_mean"]) == len(s["proprio_m2"]) == s["proprio_dim"],
         "proprio statistics do not match proprio_dim"),
        (s["action_dim"] >= 1 and len(s["action_low"]) == len(s["action_high"]) == s["action_dim"],
         "action bounds do not match action_dim"),
        (sum(s["qualities"].values()) == s["episodes"], "qualities do not count the episodes"),
        (s["bytes"] >= 0 and len(s["sha256"]) == 64, "bytes or sha256 malformed"),
    ]
    labels = s.get("episode_qualities")
    if labels is not None:
        if not (_is(labels, list) and all(_is(v, str) for v in labels)):
            raise ManifestError(f"{where}: episode_qualities must be a list of str, got {labels!r:.80}")
        checks.append((Counter(labels) == Counter(s["qualities"]), "episode_qualities do not match qualities"))
    moments = s.get("quality_proprio")
    if moments is not None:
        well_formed = _is(moments, dict) and set(moments) == set(s["qualities"]) and all(
            _is(m, dict) and set(m) == {"observations", "proprio_mean", "proprio_m2"}
            and _is(m["observations"], int) and m["observations"] >= 1
            and all(_is(m[k], list) and len(m[k]) == s["proprio_dim"] and all(_is(v, float) for v in m[k])
                    for k in ("proprio_mean", "proprio_m2")) for m in moments.values())
        if not well_formed:
            raise ManifestError(f"{where}: quality_proprio must map each quality to its observations, proprio_mean "
                                f"and proprio_m2, got {moments!r:.80}")
        checks.append((sum(m["observations"] for m in moments.values()) == s["observations"],
                       "quality_proprio does not count the observations"))
    for ok, what in checks:
        if not ok:
            raise ManifestError(f"{where}: {what}")


@dataclass
class Manifest:
    """A published dataset version. `tasks`, `counts` and `qualities` are derived from `shards`."""

    name: str
    version: int
    shards: list[ShardInfo]
    sources: list[dict[str, Any]] = field(default_factory=list)  # provenance of each ingested source
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    parent: int | None = None  # the version this one appended to (its shards are included)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.tasks: dict[str, TaskStats] = task_stats(self.shards) if self.shards else {}

    @property
    def counts(self) -> dict[str, int]:
        return {"episodes": sum(t.episodes for t in self.tasks.values()),
                "transitions": sum(t.transitions for t in self.tasks.values()),
                "tokens": sum(t.tokens for t in self.tasks.values()), "shards": len(self.shards),
                "bytes": sum(s.bytes for s in self.shards)}

    @property
    def qualities(self) -> dict[str, int]:
        return dict(sum((Counter(t.qualities) for t in self.tasks.values()), Counter()))

    def proprio_stats(self, task: str, qualities: Collection[str] = ()) -> tuple[list[float], list[float], bool]:
        """Mean and std of the task's states over the episodes of `qualities` (all if empty or if none of the
        task's episodes has one), and whether they are that selection's: False where a shard mixes qualities
        and predates per-quality moments, so only the whole task's are known.

        A network trained on a subset (the expert episodes of mixed data, say) must standardise by the states it
        sees: the whole data's spread can be a hundred times the subset's (cartpole's pole angle, random against
        balancing episodes), and then the subset's states differ by less than the network resolves.
        """
        group = [s for s in self.shards if s.task == task]
        stats = self.tasks[task]
        present = {q for s in group for q in s.qualities}
        wanted = set(qualities) & present
        if not wanted or wanted == present:
            return stats.proprio_mean, stats.proprio_std, True
        parts = []
        for s in group:
            selected = set(s.qualities) & wanted
            if selected == set(s.qualities):
                parts.append((s.observations, s.proprio_mean, s.proprio_m2))
            elif selected and s.quality_proprio is None:
                return stats.proprio_mean, stats.proprio_std, False
            elif selected:
                parts += [(m["observations"], m["proprio_mean"], m["proprio_m2"])
                          for q, m in s.quality_proprio.items() if q in selected]
        n, mean, m2 = _combine(parts)
        return mean.tolist(), np.sqrt(m2 / n).tolist(), True

    @property
    def digest(self) -> str:
        """sha256 of the manifest document: names this version's exact content (lineage in KFP and MLflow)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        doc = {"schema_version": self.schema_version, "name": self.name, "version": self.version,
               "created": self.created, "parent": self.parent, "counts": self.counts, "qualities": self.qualities,
               "tasks": {k: dataclasses.asdict(v) for k, v in self.tasks.items()}, "sources": self.sources,
               "shards": [dataclasses.asdict(s) for s in self.shards]}
        return json.dumps(doc, indent=1)

    @staticmethod
    def from_json(text: str | bytes, where: str) -> Manifest:
        """Parse a manifest; `where` (its URI) names it in errors.

        Raises:
            ManifestError: not JSON, an unknown schema version, or missing/unknown fields.
        """
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ManifestError(f"manifest {where} is not valid JSON: {e}") from e
        if not isinstance(doc, dict):
            raise ManifestError(f"manifest {where} must be a JSON object")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            hint = "upgrade pac to read it" if isinstance(version, int) and version > SCHEMA_VERSION else \
                "re-ingest the data with this pac"
            raise ManifestError(f"manifest {where} has schema version {version!r}; this pac reads version "
                                f"{SCHEMA_VERSION}: {hint}")
        names = {f.name for f in dataclasses.fields(ShardInfo)}
        try:
            shards = []
            if not isinstance(doc["shards"], list) or not all(isinstance(s, dict) for s in doc["shards"]):
                raise ManifestError(f"manifest {where}: shards must be a list of shard entries")
            for i, s in enumerate(doc["shards"]):
                unknown, missing = set(s) - names, names - set(s) - _OPTIONAL_SHARD_FIELDS
                if unknown or missing:
                    raise ManifestError(f"manifest {where}: shard entry {i} has unknown field(s) {sorted(unknown)} "
                                        f"/ lacks field(s) {sorted(missing)}")
                _check_shard_entry(s, f"manifest {where}: shard entry {i}")
                shards.append(ShardInfo(**s))
            for key, kind in (("name", str), ("version", int), ("created", str), ("sources", list)):
                if key in doc and not _is(doc[key], kind):
                    raise ManifestError(f"manifest {where}: {key} must be a {kind.__name__}, got {doc[key]!r}")
            if doc.get("parent") is not None and not _is(doc["parent"], int):
                raise ManifestError(f"manifest {where}: parent must be a version number, got {doc['parent']!r}")
            return Manifest(name=doc["name"], version=int(doc["version"]), shards=shards,
                            sources=list(doc.get("sources", [])), created=doc["created"], parent=doc.get("parent"))
        except KeyError as e:
            raise ManifestError(f"manifest {where} lacks field {e}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ManifestError):
                raise
            raise ManifestError(f"manifest {where} is malformed: {e}") from e
