"""Offline RL above its peers (issue 17): BC, BC+Q and PAC from our code beside d3rlpy's BC, %BC, TD3+BC and IQL,
on one existing dataset, in one resumable run.

Everyone reads the same episodes (a published dataset version, e.g. the realistic benchmark of
`pac data generate --config benchmark --dataset benchmark`) and is evaluated by the project's one rollout on
the same seeded episodes with the same random/maximum references:

- **ours**: one multi-task model per method and training seed over every task, the same preset, steps, batch
  and learning rate (`benchmarks/quality.py` trains, probes and evaluates each: `pac.training.loop.train` with
  MLflow off, greedy acting as a user gets it);
- **peers**: one d3rlpy model per task, algorithm and seed at d3rlpy's defaults (`benchmarks/peers.py`, in
  the peers' own environment: `benchmarks/peers-setup` makes `.venv-peers`; d3rlpy is never a product
  dependency).

`--variant LABEL:objective.KEY=VALUE,...` adds a method of ours: PAC (or BC / BC+Q, by the alpha and beta the
overrides leave) with those overrides, e.g. `--variant PAC-adv:objective.bc_filter=advantage` or
`--variant PAC-a0.5:objective.alpha=0.5`; `model.KEY=VALUE` items override the preset the same way.

Every (method, seed) and (task, peer, seed) unit writes its result under `--output` when it finishes and is
not redone: a killed run continues where it stopped, and two processes with different `--seeds` may share one
output folder (two at a time on a 2-core machine). Each invocation writes `results.md` / `results.json` from
every unit present: per-task and mean normalised scores, each method's training wall time for all tasks (ours:
one model; peers: summed over their per-task models), and our methods minus BC paired by seed (95% t-interval).

    pac data generate --config benchmark --dataset benchmark --storage.root outputs/store       # ~31-33 min
    .venv/bin/python benchmarks/compare.py --dataset benchmark --storage-root outputs/store \\
        --output outputs/compare --seeds 0                          # and --seeds 1, --seeds 2 beside it
    .venv/bin/python benchmarks/compare.py --dataset control --storage-root /tmp/store --output /tmp/cmp \\
        --steps 20 --peer-steps 50 --eval-episodes 2 --episode-steps 50                        # plumbing smoke

Runtimes and the documented tables: docs/quality.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from peers import (
    ALGOS,
    LABELS,
    MissingEpisodes,
    PeersUnavailable,
    check_peers,
    dataset_episodes,
    export_task,
    run_one,
)  # this folder is on sys.path
from quality import (
    METHODS,
    ExpertStates,
    method_config,
    paired_table,
    parse_seeds,
    probe_indices,
    run_method,
    run_name,
)

log = logging.getLogger("compare")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name or URI (optionally @vNNNN)")
    p.add_argument("--storage-root", default="outputs/store", help="storage.root the dataset lives under")
    p.add_argument("--output", default="outputs/compare", help="output folder (units in it are reused)")
    p.add_argument("--tasks", default="", help="comma-separated task ids (default: every task of the dataset)")
    p.add_argument("--methods", default=",".join(METHODS), help="our methods: subset of BC,BC+Q,PAC")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:SECTION.KEY=VALUE,...",
                   help="another method of ours: PAC with objective./model. overrides (repeatable)")
    p.add_argument("--peers", default=",".join(ALGOS), help=f"d3rlpy peers: subset of {','.join(ALGOS)}; "
                                                            "empty for none")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (ours and the peers')")
    p.add_argument("--preset", default="tiny", help="our model size preset (every method)")
    p.add_argument("--steps", type=int, default=3000, help="our training steps per method")
    p.add_argument("--batch-size", type=int, default=256, help="our global batch size")
    p.add_argument("--peer-steps", type=int, default=20_000, help="gradient steps per peer model (d3rlpy's "
                                                                  "batch sizes: 256 for TD3+BC and IQL)")
    p.add_argument("--eval-episodes", type=int, default=10, help="evaluation episodes per task (same seeds)")
    p.add_argument("--episode-steps", type=int, default=0,
                   help="evaluation episode length (0: the dataset's longest episode)")
    p.add_argument("--eval-seed", type=int, default=1000, help="base seed of the evaluation episodes")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of our training")
    p.add_argument("--python", type=Path, default=Path(".venv-peers/bin/python"),
                   help="the peers' interpreter (benchmarks/peers-setup)")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.peers = [a for a in args.peers.split(",") if a]
    if bad := sorted(set(args.methods) - set(METHODS)):
        p.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if bad := sorted(set(args.peers) - set(ALGOS)):
        p.error(f"--peers: unknown {bad}; choose from {', '.join(ALGOS)}")
    args.variants = {}
    for item in args.variant:
        label, _, settings = item.partition(":")
        pairs = [kv for kv in settings.split(",") if kv]
        if not label or label in METHODS or not pairs or any(
                not kv.startswith(("objective.", "model.")) or "=" not in kv for kv in pairs):
            p.error(f"--variant {item!r}: expected LABEL:objective.KEY=VALUE,... (or model.KEY=VALUE), a label "
                    f"other than {', '.join(METHODS)}")
        args.variants[label] = pairs
    args.seeds = parse_seeds(p, args.seeds)
    return args


def read_episodes(args: argparse.Namespace) -> tuple[Any, dict[str, list[Any]]]:
    """The dataset and its episodes per selected task; SystemExit naming a missing dataset or a task without
    episodes."""
    from pac.data.dataset import DatasetError

    try:
        return dataset_episodes(args.dataset, args.storage_root, args.tasks)
    except MissingEpisodes as e:
        raise SystemExit(f"compare.py: {e}") from e
    except DatasetError as e:
        raise SystemExit(f"compare.py: {e}; make it with `pac data generate --config benchmark --dataset "
                         f"benchmark --storage.root {args.storage_root}`") from e


def quality_args(args: argparse.Namespace, tasks: list[str]) -> argparse.Namespace:
    """The namespace `quality.run_method` reads: this run's budget, every other setting at its default."""
    from quality import parse_args as quality_parse

    q = quality_parse(["--tasks", ",".join(tasks), "--preset", args.preset, "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--eval-episodes", str(args.eval_episodes),
                       "--episode-steps", str(args.episode_steps), "--eval-seed", str(args.eval_seed),
                       "--threads", str(args.threads), "--output", args.output])
    q.data_seed = 0  # seeds the critic probe's random actions only: the data already exists
    return q


def expert_probes(by_task: dict[str, list[Any]]) -> dict[str, ExpertStates]:
    """States and normalised actions of each task's expert episodes (quality's critic probe); none: no probe."""
    from pac.inputs import normalize_action

    probes = {}
    for task, episodes in by_task.items():
        experts = [ep for ep in episodes if ep.quality == "expert"]
        if experts:
            probes[task] = ExpertStates(experts[0].instruction, np.concatenate([ep.proprio[:-1] for ep in experts]),
                                        np.concatenate([normalize_action(ep.actions, ep.action_low, ep.action_high)
                                                        for ep in experts]))
    return probes


def export_probe(states: ExpertStates, path: Path) -> None:
    """The expert states and actions our critic probe reads (`quality.probe_network`), for the peers' critics."""
    idx = probe_indices(len(states.proprio))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, observations=states.proprio[idx].astype(np.float32),
             actions=states.actions[idx].astype(np.float32))
    partial.replace(path)


def write_json(path: Path, value: Any) -> None:
    """Atomically: a half-written unit is never taken for a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)


def run_ours(args: argparse.Namespace, dataset: str, by_task: dict[str, list[Any]]) -> None:
    """Our methods and variants, one unit per (label, seed); a variant's runs live under variants/LABEL."""
    root = Path(args.output).resolve()
    probes = expert_probes(by_task)
    units = [(m, m, quality_args(args, list(by_task)), root) for m in args.methods]
    for label, pairs in args.variants.items():
        qargs = quality_args(args, list(by_task))
        qargs.objective = [kv.removeprefix("objective.") for kv in pairs if kv.startswith("objective.")]
        qargs.model = [kv.removeprefix("model.") for kv in pairs if kv.startswith("model.")]
        alpha, beta = variant_objective(qargs)
        method = "BC" if alpha == 1.0 and beta == 0.0 else "BC+Q" if alpha == 1.0 else "PAC"
        units.append((label, method, qargs, root / "variants" / label))
    for label, method, qargs, where in units:
        for seed in args.seeds:
            path = root / "ours" / f"{label}-seed{seed}.json"
            if path.exists():
                check_unit(path, label, method_config(qargs, method, seed, dataset, where).objective)
                continue
            result = run_method(qargs, method, seed, dataset, where, probes)
            result |= {"label": label, "steps": args.steps, "batch_size": args.batch_size, "preset": args.preset,
                       "overrides": [*qargs.objective, *qargs.model],
                       "export": str(where / "runs" / run_name(method, seed) / "export")}
            write_json(path, result)


def check_unit(path: Path, label: str, objective: Any) -> None:
    """Reuse a finished unit only if it trained the objective its label means now (a default may have moved
    since it ran): SystemExit naming the settings that differ."""
    given = json.loads(path.read_text())["objective"]
    known = {k: v for k, v in given.items() if k in dataclasses.asdict(objective)}
    stored = dataclasses.asdict(dataclasses.replace(objective, **known).resolved())  # auto means what it did then
    now = dataclasses.asdict(objective.resolved())
    if differ := sorted(k for k in known if stored[k] != now[k]):
        raise SystemExit(f"compare.py: {path} trained {label} with "
                         + ", ".join(f"objective.{k}={stored[k]!r}" for k in differ) + f", but {label} now means "
                         + ", ".join(f"objective.{k}={now[k]!r}" for k in differ)
                         + ": move the unit away to retrain it, or keep it under a --variant label that says so")


def variant_objective(qargs: argparse.Namespace) -> tuple[float, float]:
    """The alpha and beta a variant's objective overrides leave (the method it trains as)."""
    from pac.config import ObjectiveConfig

    given = dict(kv.partition("=")[::2] for kv in qargs.objective)
    return (float(given.get("alpha", ObjectiveConfig.alpha)), float(given.get("beta", ObjectiveConfig.beta)))


def run_peers(args: argparse.Namespace, by_task: dict[str, list[Any]]) -> None:
    out = Path(args.output).resolve() / "peers"
    pargs = argparse.Namespace(output=str(out), python=args.python, steps=args.peer_steps,
                               eval_episodes=args.eval_episodes, episode_steps=args.episode_steps,
                               eval_seed=args.eval_seed)
    data = {task: out / "data" / f"{task.replace('/', '_')}.npz" for task in by_task}
    for task, episodes in by_task.items():
        if not data[task].exists():
            export_task(episodes, data[task])
    probes = {task: out / "data" / f"{task.replace('/', '_')}.probe.npz" for task in by_task}
    for task, states in expert_probes(by_task).items():
        if not probes[task].exists():
            export_probe(states, probes[task])
    for algo in args.peers:  # a peer at a time, in the order given: a stopped run has whole rows
        for task in by_task:
            for seed in args.seeds:
                r = run_one(pargs, task, algo, seed, data[task], probes[task] if probes[task].exists() else None)
                log.info("%s %s seed %d: normalised %.3f (trained in %.0f s)", task, LABELS[algo], seed,
                         r["normalized_score"], r["train_seconds"])


# --------------------------------------------------------------------------------------------- the report


def collect(root: Path, tasks: list[str]) -> tuple[dict[str, dict[int, dict[str, Any]]], list[dict[str, Any]]]:
    """Every finished unit under `root`: ours as {method: {seed: result}}, the peers' as a list."""
    ours: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted((root / "ours").glob("*-seed*.json")):
        r = json.loads(path.read_text())
        ours.setdefault(r.get("label", r["method"]), {})[int(r["seed"])] = r
    order = [*METHODS, *sorted(set(ours) - set(METHODS))]  # ours first in a fixed order, then the variants
    ours = {label: dict(sorted(ours[label].items())) for label in order if label in ours}
    peers = [json.loads(p.read_text()) for p in sorted((root / "peers" / "runs").glob("*/*/eval.json"))]
    return ours, [r for r in peers if r["task"] in tasks]


def report(root: Path, tasks: list[str], dataset: str, command: str) -> str:
    """Markdown: one row per method (ours, then the peers), per-task means over seeds, wall time per model."""
    ours, peers = collect(root, tasks)
    rows: list[tuple[str, list[float], int, float]] = []  # label, per-task score, seeds, train seconds per seed
    for method, runs in ours.items():
        scores = [float(np.mean([r["report"]["tasks"][t]["normalized_score"] for r in runs.values()])) for t in tasks]
        overrides = next(iter(runs.values())).get("overrides") or []
        rows.append((f"{method} (ours, one model{': ' + ', '.join(overrides) if overrides else ''})", scores,
                     len(runs),
                     float(np.mean([r["train_s"] for r in runs.values()]))))
    for algo in ALGOS:
        mine = [r for r in peers if r["algo"] == algo]
        if not {r["task"] for r in mine} >= set(tasks):
            continue  # a peer is reported once it has every task
        seeds = sorted({r["seed"] for r in mine})
        scores = [float(np.mean([r["normalized_score"] for r in mine if r["task"] == t])) for t in tasks]
        rows.append((f"{LABELS[algo]} (per task)", scores, len(seeds),
                     sum(r["train_seconds"] for r in mine) / len(seeds)))
    head = "| method | " + " | ".join(tasks) + " | **mean** | seeds | training, all tasks |"
    lines = [head, "|---" + "|---:" * (len(tasks) + 3) + "|"]
    for label, scores, seeds, seconds in rows:
        lines.append(f"| {label} | " + " | ".join(f"{s:.3f}" for s in scores)
                     + f" | **{np.mean(scores):.3f}** | {seeds} | {seconds / 60:.1f} min |")
    md = ["# Offline RL beside its peers", "", f"Command: `.venv/bin/python {command}`", "", f"Data: `{dataset}`",
          "", "Normalised score (0 = uniform random, 1 = maximum return), mean over training seeds; training wall "
          "time per seed (ours: one model for every task; peers: summed over their per-task models).", "",
          *lines, ""]
    paired = paired_table(ours) if "BC" in ours else ""
    if paired:
        md += ["## Ours, paired by training seed", "", paired, ""]
    probes = probe_rows(ours, peers, tasks)
    if probes:
        md += ["## The critics on the expert's states", "",
               "`expert > random / expert > mirror`: how often the critic ranks the expert's action above uniform "
               "random actions, and above its mirror image -a (0.5: it cannot tell which way to act); mean over "
               "seeds (`benchmarks/quality.py`, `probe_network`).", "",
               "| critic | " + " | ".join(tasks) + " | **mean** |", "|---" + "|---:" * (len(tasks) + 1) + "|",
               *probes, ""]
    return "\n".join(md)


def probe_rows(ours: dict[str, dict[int, dict[str, Any]]], peers: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """Table rows of the critic probe per task, for our methods with a critic and the peers that report one."""
    probed: list[tuple[str, list[dict[str, float]]]] = []  # label, one {probe/task: value} per seed
    for label, runs in ours.items():
        if any(f"critic_mirror_pct/{tasks[0]}" in r["diagnostics"] and r["objective"]["beta"] > 0
               for r in runs.values()):
            probed.append((label, [r["diagnostics"] for r in runs.values()]))
    for algo in ALGOS:
        mine = [r for r in peers if r["algo"] == algo and r.get("probe")]
        if {r["task"] for r in mine} >= set(tasks):
            seeds = sorted({r["seed"] for r in mine})
            probed.append((LABELS[algo], [{f"{k}/{r['task']}": v for r in mine if r["seed"] == s
                                           for k, v in r["probe"].items()} for s in seeds]))
    rows = []
    for label, runs in probed:
        cells = [(float(np.mean([d[f"critic_expert_pct/{t}"] for d in runs])),
                  float(np.mean([d[f"critic_mirror_pct/{t}"] for d in runs]))) for t in tasks]
        rows.append(f"| {label} | " + " | ".join(f"{e:.2f} / {m:.2f}" for e, m in cells)
                    + f" | **{np.mean([e for e, _ in cells]):.2f} / {np.mean([m for _, m in cells]):.2f}** |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "OpenGL", "deepspeed", "DeepSpeed", "matplotlib", "pac.data", "pac.evaluation"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.peers:  # before any training: a missing environment must not surface after an hour
        try:
            log.info("peers: d3rlpy %s", check_peers(args.python))
        except PeersUnavailable as e:
            raise SystemExit(f"compare.py: {e} (or pass --peers '' to compare our methods only)") from e
    ds, by_task = read_episodes(args)
    if not args.episode_steps:
        args.episode_steps = max(max(ep.length for ep in eps) for eps in by_task.values())
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    run_ours(args, ds.uri, by_task)
    run_peers(args, by_task)
    root = Path(args.output).resolve()
    command = "benchmarks/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(root, list(by_task), ds.uri, command)
    (root / "results.md").write_text(text + f"\nThis invocation: {(time.perf_counter() - start) / 60:.1f} min.\n")
    ours, peers = collect(root, list(by_task))
    write_json(root / "results.json", {"dataset": ds.uri, "tasks": list(by_task), "ours": ours, "peers": peers})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
