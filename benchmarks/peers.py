"""The standard offline-RL peers on one of our datasets: d3rlpy's BC, %BC, TD3+BC and IQL, evaluated by our rollout.

One model per task (as the peers are used in the field), each trained by `benchmarks/peers_train.py` in the
peers' own environment (`benchmarks/peers-setup` makes `.venv-peers`; d3rlpy never enters the product's),
on exactly the episodes our learners read, then evaluated here with the project's one rollout
implementation on the same seeded episodes and with the same random/maximum references as `pac evaluate`:

    benchmarks/peers-setup                                                        # once: .venv-peers
    .venv/bin/python benchmarks/peers.py --dataset benchmark --storage-root outputs/benchmark-data \\
        --output outputs/peers                                                    # 20k steps x 4 algos x tasks
    .venv/bin/python benchmarks/peers.py --dataset control --storage-root /tmp/store --output /tmp/peers \\
        --algos bc,iql --steps 50 --eval-episodes 2 --episode-steps 50              # plumbing smoke

Resumable: a (task, algo, seed) whose policy and evaluation exist is not redone. Writes `results.json` and
`results.md` (per-task normalised score per algorithm, mean over seeds, training wall time) into `--output`.
Each policy is a TorchScript file this run's own subprocess wrote (`torch.jit.load` reads TorchScript, not a
pickle); episodes travel as an .npz of plain float arrays, read with `allow_pickle=False`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from peers_train import CRITICS  # this folder is on sys.path; the module imports d3rlpy only when it trains

ALGOS = ("bc", "pbc", "td3bc", "iql")
LABELS = {"bc": "d3rlpy BC", "pbc": "d3rlpy %BC (top 30%)", "td3bc": "d3rlpy TD3+BC", "iql": "d3rlpy IQL"}
HERE = Path(__file__).resolve().parent

log = logging.getLogger("peers")


class PeersUnavailable(RuntimeError):
    """The peers' environment is missing: the message says how to make it."""


class MissingEpisodes(ValueError):
    """A selected task has no episodes in the dataset: the message names it and the dataset's tasks."""


def dataset_episodes(dataset: str, storage_root: str, tasks: str) -> tuple[Any, dict[str, list[Any]]]:
    """A published dataset and its episodes per selected task (comma-separated; empty: every task of it).

    Raises:
        MissingEpisodes: a selected task has none.
        pac.data.dataset.DatasetError: the dataset does not exist or is malformed.
    """
    from pac.config import DataConfig, StorageConfig
    from pac.data.dataset import default_cache_dir, open_dataset

    storage = StorageConfig(root=str(Path(storage_root).resolve()))
    ds = open_dataset(dataset, storage)
    selected = [t for t in tasks.split(",") if t] or list(ds.manifest.tasks)
    by_task: dict[str, list[Any]] = {t: [] for t in selected}
    cache = default_cache_dir(DataConfig(), storage)
    for info in ds.manifest.shards:
        if info.task in by_task:
            by_task[info.task].extend(ds.open_shard(info, cache).episodes())
    if empty := [t for t, eps in by_task.items() if not eps]:
        raise MissingEpisodes(f"{ds.uri} has no episodes for {', '.join(empty)} (its tasks: "
                              f"{', '.join(ds.manifest.tasks)}); generate them with `pac data generate`")
    return ds, by_task


def check_peers(python: Path) -> str:
    """d3rlpy's version in the peers' interpreter, or PeersUnavailable naming the set-up command."""
    if not python.exists():
        raise PeersUnavailable(f"{python} does not exist: run benchmarks/peers-setup (makes .venv-peers with d3rlpy)")
    done = subprocess.run([str(python), "-c", "import d3rlpy; print(d3rlpy.__version__)"], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise PeersUnavailable(f"{python} cannot import d3rlpy: run benchmarks/peers-setup "
                               f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'})")
    return done.stdout.strip()


def export_task(episodes: Sequence[Any], path: Path) -> int:
    """One task's episodes as flat transition arrays for d3rlpy; returns the transition count.

    Actions are normalised to [-1, 1] by each episode's bounds (the peers' tanh policies act in that range;
    the evaluation maps them back). A transition is terminal where the environment said so (discount 0),
    a timeout at the last step of an episode that was cut by its time limit.
    """
    from pac.inputs import normalize_action

    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "terminals",
                                                         "timeouts")}
    ends = []
    for ep in episodes:
        t = ep.length
        cols["observations"].append(ep.proprio[:t].astype(np.float32))
        cols["actions"].append(normalize_action(ep.actions, ep.action_low, ep.action_high).astype(np.float32))
        cols["rewards"].append(ep.rewards.astype(np.float32))
        terminal = (ep.discounts == 0).astype(np.float32)
        timeout = np.zeros(t, np.float32)
        if terminal[-1] == 0:
            timeout[-1] = 1.0
        cols["terminals"].append(terminal)
        cols["timeouts"].append(timeout)
        ends.append(t)
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    arrays["episode_ends"] = np.cumsum(ends).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)
    return int(arrays["episode_ends"][-1])


class TorchScriptPolicy:
    """A peer's saved policy (raw state -> action in [-1, 1]) as an `ActionSource` for our rollout."""

    reads_simulator = False

    def __init__(self, path: Path, name: str) -> None:
        import torch

        self.name = name
        self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def start(self, slot: int, env: Any, seed: int) -> None:  # deterministic policies: nothing per episode
        pass

    def act(self, slots: Sequence[int], envs: Sequence[Any], obs: Sequence[Any]) -> np.ndarray:
        import torch
        from pac.inputs import denormalize_action

        with torch.no_grad():
            x = torch.from_numpy(np.stack([o["proprio"] for o in obs]).astype(np.float32))
            actions = self.module(x).numpy().clip(-1.0, 1.0)
        return np.stack([denormalize_action(a, e.action_low, e.action_high) for a, e in zip(actions, envs,
                                                                                             strict=True)])


def run_one(args: argparse.Namespace, task: str, algo: str, seed: int, data: Path,
            probe: Path | None = None) -> dict[str, Any]:
    """Train (unless done) and evaluate one peer; the result is cached beside its policy.

    With `probe` (expert states, `compare.py` writes them) a peer with a critic reports the critic probe of
    `benchmarks/quality.py` on them, when it trains.
    """
    from pac.config import EvalConfig
    from pac.evaluation import evaluate

    where = Path(args.output) / "runs" / task.replace("/", "_") / f"{algo}_s{seed}"
    result_path = where / "eval.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    policy = where / "policy.pt"
    if not policy.exists():
        cmd = [str(args.python), str(HERE / "peers_train.py"), "--data", str(data), "--algo", algo,
               "--steps", str(args.steps), "--seed", str(seed), "--output", str(policy)]
        if probe is not None and algo in CRITICS:
            cmd += ["--probe", str(probe)]
        log.info("%s %s seed %d: training (%d steps)", task, algo, seed, args.steps)
        subprocess.run(cmd, check=True)
    train = json.loads(policy.with_suffix(".json").read_text())
    ecfg = EvalConfig(tasks=[task], episodes=args.eval_episodes, num_envs=min(args.eval_episodes, 10),
                      episode_steps=args.episode_steps, seed=args.eval_seed, video=False)
    report = evaluate(TorchScriptPolicy(policy, f"{LABELS[algo]} seed {seed}"), [task], ecfg, progress=False)
    r = report.tasks[task]
    result = {"task": task, "algo": algo, "seed": seed, "normalized_score": r.normalized_score,
              "return_mean": r.return_mean, "returns": r.returns, "train_seconds": train["train_seconds"],
              "steps": train["steps"], "transitions": train["transitions"], "d3rlpy": train["d3rlpy"],
              "probe": train.get("probe")}
    result_path.write_text(json.dumps(result, indent=1))
    return result


def tables(results: list[dict[str, Any]], tasks: Sequence[str], algos: Sequence[str]) -> str:
    """Per-task mean normalised score over seeds, the mean over tasks, and summed training time per algorithm."""
    def cell(algo: str, task: str) -> float:
        return float(np.mean([r["normalized_score"] for r in results if r["algo"] == algo and r["task"] == task]))

    lines = ["| peer | " + " | ".join(tasks) + " | **mean** | training (all tasks, one seed) |",
             "|---" + "|---:" * (len(tasks) + 2) + "|"]
    for algo in algos:
        scores = [cell(algo, t) for t in tasks]
        mine = [r for r in results if r["algo"] == algo]
        seeds = sorted({r["seed"] for r in mine})
        seconds = sum(r["train_seconds"] for r in mine) / max(1, len(seeds))
        lines.append(f"| {LABELS[algo]} | " + " | ".join(f"{s:.3f}" for s in scores)
                     + f" | **{np.mean(scores):.3f}** | {seconds / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name or URI (optionally @vNNNN)")
    p.add_argument("--storage-root", default="outputs/store", help="storage.root the dataset lives under")
    p.add_argument("--tasks", default="", help="comma-separated task ids (default: every task of the dataset)")
    p.add_argument("--algos", default=",".join(ALGOS), help=f"subset of {','.join(ALGOS)}")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--steps", type=int, default=20_000, help="gradient steps per model (d3rlpy's batch sizes)")
    p.add_argument("--eval-episodes", type=int, default=10, help="evaluation episodes per task")
    p.add_argument("--episode-steps", type=int, default=1000, help="evaluation episode length")
    p.add_argument("--eval-seed", type=int, default=1000, help="the same episodes as our learners' evaluation")
    p.add_argument("--python", type=Path, default=Path(".venv-peers/bin/python"),
                   help="the peers' interpreter (benchmarks/peers-setup)")
    p.add_argument("--output", default="outputs/peers")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    algos = [a for a in args.algos.split(",") if a]
    if unknown := sorted(set(algos) - set(ALGOS)):
        p.error(f"--algos: unknown {unknown}; choose from {', '.join(ALGOS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    try:
        ds, by_task = dataset_episodes(args.dataset, args.storage_root, args.tasks)
    except MissingEpisodes as e:
        print(f"peers.py: {e}", file=sys.stderr)
        return 2
    tasks = list(by_task)
    try:
        version = check_peers(args.python)
    except PeersUnavailable as e:
        print(f"peers.py: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    start = time.perf_counter()
    results = []
    for task in tasks:
        data = out / "data" / f"{task.replace('/', '_')}.npz"
        if not data.exists():
            n = export_task(by_task[task], data)
            log.info("%s: %d episodes, %d transitions -> %s", task, len(by_task[task]), n, data)
        for algo in algos:
            for seed in seeds:
                r = run_one(args, task, algo, seed, data)
                log.info("%s %s seed %d: normalised %.3f (trained in %.0f s)", task, algo, seed,
                         r["normalized_score"], r["train_seconds"])
                results.append(r)
    table = tables(results, tasks, algos)
    note = (f"\n\nd3rlpy {version}; {ds.uri}; {args.steps} steps per model, seeds {args.seeds}; "
            f"{args.eval_episodes} evaluation episodes x {args.episode_steps} steps per task (seed "
            f"{args.eval_seed}); this run {time.perf_counter() - start:.0f} s\n")
    (out / "results.md").write_text(table + note)
    (out / "results.json").write_text(json.dumps({"dataset": ds.uri, "steps": args.steps, "d3rlpy": version,
                                                  "results": results}, indent=1))
    print(table + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
