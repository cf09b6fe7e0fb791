"""Which action head can copy a continuous expert? The plain 2x256 MLP with each head, one budget, closed loop.

Issue 26: the same MLP regressing the expert with squared error (d3rlpy's BC / %BC) reaches the pendulum's
expert where it fails with our 101-bin categorical head. This isolates the head: every variant is the fidelity
floor's MLP (`fidelity.MlpFloor`) on the same expert episodes, batches, steps, optimiser and learning rate, and
only the head, its training targets and its greedy decoding change. Each is scored by closed-loop return,
normalised between the random policy (0) and the expert (1) on the same seeded episodes (fidelity.py's rule).

`--head LABEL:SECTION.KEY=VALUE,...` names a variant (repeatable); the label `mse` is the squared-error head,
every other label is the categorical head with those overrides of `model.action_*` / `objective.bc_target*`.
`--dataset` trains on an existing dataset instead (e.g. the mixed-quality benchmark: which head regresses
mixed behaviour as well as the peers' BC does; `--qualities expert` reads its expert subset). Without `--head`
the default set runs: the squared-error floor, today's default, and the choices the issue names (bins, target
smoothing, decoding). Each (head, seed) writes `runs/LABEL-seedN.json` when done and is not redone, so a killed
run continues where it stopped.

    .venv/bin/python benchmarks/head_ablation.py --tasks pendulum/swingup --steps 20000 \\
        --output outputs/heads-pendulum                      # ~2 min per head on one core
    .venv/bin/python benchmarks/head_ablation.py --tasks point_mass/easy --episodes 2 --episode-steps 100 \\
        --steps 20 --eval-episodes 2 --output /tmp/heads     # plumbing smoke

Writes `results.md` / `results.json` into `--output`; documented tables in docs/learner.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fidelity import MlpFloor, add_noise_arg, resolve_noise, tasks_and_data  # this folder is on sys.path

log = logging.getLogger("head_ablation")

DEFAULT_HEADS = (
    "mse",
    "default:",
    "argmax:model.action_decode=argmax",
    "onehot:objective.bc_target=onehot",
    "hl1:objective.bc_target_sigma=1",
    "hl4:objective.bc_target_sigma=4",
    "bins21:model.action_bins=21,objective.bc_target_sigma=1",
    "bins256:model.action_bins=256,objective.bc_target_sigma=5",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="outputs/heads", help="output directory (per-head results, tables)")
    p.add_argument("--cache", default="outputs/benchmark-data", help="generated datasets, reused across runs")
    p.add_argument("--tasks", default="pendulum/swingup", help="comma-separated task ids (one model over all)")
    p.add_argument("--dataset", help="train on this existing dataset (local path, optionally @vNNNN; e.g. the "
                                     "mixed-quality benchmark) instead of generated expert episodes")
    p.add_argument("--qualities", default="", help="train on the dataset's episodes of these quality labels only, "
                                                  "comma-separated (e.g. expert: a recipe's expert subset)")
    p.add_argument("--episodes", type=int, default=30, help="expert episodes per task (the benchmark recipe's)")
    add_noise_arg(p)
    p.add_argument("--episode-steps", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps (the peers' budget)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, help="learning rate (default: train.lr)")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--head", action="append", default=[], metavar="LABEL:SECTION.KEY=VALUE,...",
                   help="a head variant (repeatable); default: " + " ".join(DEFAULT_HEADS))
    args = p.parse_args(argv)
    args.expert_noise_std = resolve_noise(args.expert_noise_std)
    args.heads = {}
    for item in args.head or DEFAULT_HEADS:
        label, _, rest = item.partition(":")
        pairs = [kv for kv in rest.split(",") if kv]
        if not label or any("=" not in kv or kv.split(".", 1)[0] not in ("model", "objective") for kv in pairs):
            p.error(f"--head {item!r}: expected LABEL:model.KEY=VALUE,... or objective.KEY=VALUE")
        args.heads[label] = pairs
    args.seed_list = [int(s) for s in args.seeds.split(",") if s]
    return args


def head_config(dataset: str, tasks: Sequence[str], pairs: Sequence[str], seed: int, args: argparse.Namespace) -> Any:
    """The training config of one head: BC at the given budget, proprio statistics from the manifest."""
    from pac.config import Config, assignments, merge
    from pac.data.mixture import with_proprio_stats

    train = {"steps": args.steps, "global_batch_size": args.batch, "micro_batch_size": args.batch}
    qualities = [q for q in args.qualities.split(",") if q]
    if args.lr is not None:
        train["lr"] = args.lr
    base = {"seed": seed, "objective": {"alpha": 1.0, "beta": 0.0}, "train": train,
            "data": {"dataset": dataset, "tasks": list(tasks), "qualities": qualities},
            "storage": {"root": str(Path(args.cache).resolve())},
            "tracking": {"enabled": False}}
    return with_proprio_stats(Config.from_dict(merge(base, assignments(pairs))), {})


class ExpertGap:
    """An `ActionSource` that acts as `source` and asks the expert what it would do in every state visited.

    Closed-loop return over 10 episodes moves by +-0.2 between runs; the gap between the policy's and the
    expert's action on the policy's own states (DAgger's view) says where a policy leaves the expert. Reported
    per task: the mean over visited states of the largest per-dimension gap (normalised actions, range 2), over
    all states and over the states where the expert moves (|a| > 0.05 on some dimension). A diagnostic, not a
    score: on the pendulum the squared-error head copies the expert's return with a mean gap of 0.29, because
    near a switching surface a small shift of the state flips a bang-bang expert's action.
    """

    def __init__(self, source: Any) -> None:
        from pac.envs.experts import make_expert
        from pac.evaluation import ScriptedSource

        self.source, self.expert, self.name = source, ScriptedSource(make_expert, name="expert"), source.name
        self.gaps: dict[str, list[tuple[float, bool]]] = {}

    def start(self, slot: int, env: Any, seed: int) -> None:
        self.source.start(slot, env, seed)
        self.expert.start(slot, env, seed)

    def act(self, slots: Sequence[int], envs: Sequence[Any], obs: Sequence[Any]) -> Any:
        from pac.inputs import normalize_action

        actions, expert = self.source.act(slots, envs, obs), self.expert.act(slots, envs, obs)
        for a, b, env in zip(actions, expert, envs, strict=True):
            a, b = (normalize_action(x, env.action_low, env.action_high) for x in (a, b))
            self.gaps.setdefault(env.spec.id, []).append((float(np.max(np.abs(a - b))), bool(np.max(np.abs(b)) > 0.05)))
        return actions

    def summary(self, task: str) -> dict[str, float]:
        gaps = np.asarray([g for g, _ in self.gaps[task]])
        moving = np.asarray([m for _, m in self.gaps[task]])
        return {"gap": float(gaps.mean()), "gap_moving": float(gaps[moving].mean()) if moving.any() else 0.0,
                "moving_share": float(moving.mean())}


def run_head(label: str, pairs: Sequence[str], seed: int, dataset: str, tasks: Sequence[str],
             instructions: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Fit one head, evaluate it closed loop; per-task returns and normalised scores."""
    from pac.config import EvalConfig
    from pac.envs.experts import make_expert
    from pac.evaluation import ScriptedSource, evaluate

    cfg = head_config(dataset, tasks, pairs, seed, args)
    floor = MlpFloor(cfg, instructions, head="mse" if label == "mse" else "categorical")
    train_s = floor.fit(args.steps)
    ecfg = EvalConfig(episodes=args.eval_episodes, num_envs=args.eval_episodes, episode_steps=args.episode_steps,
                      seed=args.eval_seed, video=False)
    gap = ExpertGap(floor)
    policy = evaluate(gap, list(tasks), ecfg, progress=False)
    expert = evaluate(ScriptedSource(make_expert, name="expert"), list(tasks), ecfg, progress=False)
    scores = {}
    for task in tasks:
        r, r_exp, r_rand = (policy.tasks[task].return_mean, expert.tasks[task].return_mean,
                            policy.tasks[task].random_return_mean)
        scores[task] = {"return": r, "expert": r_exp, "random": r_rand,
                        "fidelity": (r - r_rand) / max(r_exp - r_rand, 1e-9), **gap.summary(task)}
    return {"label": label, "overrides": list(pairs), "seed": seed, "train_s": train_s, "tasks": scores}


def markdown(results: Sequence[dict[str, Any]], args: argparse.Namespace, dataset: str) -> str:
    tasks = list(results[0]["tasks"])
    labels = list(dict.fromkeys(r["label"] for r in results))
    lines = [f"Head ablation: 2x256 MLP, {args.steps} steps x batch {args.batch}, lr {args.lr or 'train.lr'}, "
             f"dataset {dataset}, {args.eval_episodes} evaluation episodes per task (seed {args.eval_seed}); "
             "fidelity 0 = random, 1 = expert; mean over seeds (seeds in brackets)", "",
             "| head | overrides | " + " | ".join(tasks) + " | mean | train s |",
             "|---|---|" + "---:|" * (len(tasks) + 2)]
    for label in labels:
        runs = [r for r in results if r["label"] == label]
        cells = []
        for task in tasks:
            vals = [r["tasks"][task]["fidelity"] for r in runs]
            cells.append(f"{np.mean(vals):.2f}" + (f" ({' / '.join(f'{v:.2f}' for v in vals)})" if len(vals) > 1
                                                    else ""))
        mean = np.mean([np.mean([r["tasks"][t]["fidelity"] for t in tasks]) for r in runs])
        over = ", ".join(runs[0]["overrides"]) or ("squared error, tanh" if label == "mse" else "defaults")
        lines.append(f"| {label} | {over} | " + " | ".join(cells) + f" | **{mean:.2f}** | "
                     f"{np.mean([r['train_s'] for r in runs]):.0f} |")
    lines += ["", "Action gap to the expert on the policy's own states (`ExpertGap`: mean largest per-dimension gap, "
              "normalised actions of range 2), all states / states where the expert moves; - : run before the "
              "gap was recorded", "", "| head | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for label in labels:
        runs = [r for r in results if r["label"] == label and "gap" in next(iter(r["tasks"].values()))]
        cells = [f"{np.mean([r['tasks'][t]['gap'] for r in runs]):.3f} / "
                 f"{np.mean([r['tasks'][t]['gap_moving'] for r in runs]):.3f}" if runs else "-" for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from pac.data.dataset import read_manifest

    found = tasks_and_data(args, "head_ablation")
    if found is None:
        return 2
    tasks, dataset = found
    out = Path(args.output)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    probe = head_config(dataset, tasks, [], 0, args)
    manifest = read_manifest(dataset, probe.storage)
    instructions = [manifest.tasks[t].instruction for t in tasks]
    results = []
    for seed in args.seed_list:
        for label, pairs in args.heads.items():
            path = out / "runs" / f"{label}-seed{seed}.json"
            if path.exists():
                results.append(json.loads(path.read_text()))
                continue
            t0 = time.perf_counter()
            result = run_head(label, pairs, seed, dataset, tasks, instructions, args)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(path)  # a unit is done only when its file is whole
            log.info("%s seed %d: mean fidelity %.2f (%.0f s)", label, seed,
                     np.mean([s["fidelity"] for s in result["tasks"].values()]), time.perf_counter() - t0)
            results.append(result)
    noise = None if args.dataset else args.expert_noise_std
    (out / "results.json").write_text(json.dumps({"dataset": dataset, "qualities": args.qualities,
                                                  "expert_noise_std": noise, "steps": args.steps, "batch": args.batch,
                                                  "lr": args.lr, "runs": results}, indent=2))
    text = markdown(results, args, dataset)
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
