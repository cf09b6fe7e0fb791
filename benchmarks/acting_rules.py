"""One trained policy evaluated under several acting rules on the same seeded episodes, no retraining.

Acting is a choice separate from training: the greedy decode of the policy head (`model.action_decode`: argmax,
mean, topk) and the critic's pick among sampled actions (`eval.q_select_samples`). Each rule runs on the same
episodes (same evaluation seed), so the table compares rules, not episodes:

    .venv/bin/python benchmarks/acting_rules.py outputs/pipeline/<run>/runs/<id>/pretrain/export \\
        --episodes 8 --episode-steps 200 --seed 5000 --output outputs/acting.md

Rules are `DECODE:K` (K sampled actions scored by the critic, 0 = the decode alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_RULES = "mean:0,argmax:0,mean:16,argmax:16,mean:64"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="export directory, runs:/ or models:/ URI")
    p.add_argument("--rules", default=DEFAULT_RULES, help=f"comma-separated DECODE:K (default {DEFAULT_RULES})")
    p.add_argument("--episodes", type=int, default=8, help="evaluation episodes per task")
    p.add_argument("--episode-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=5000, help="evaluation seed (the same episodes for every rule)")
    p.add_argument("--output", help="also write the Markdown table here")
    args = p.parse_args(argv)
    try:
        rules = [(d, int(k)) for d, _, k in (r.partition(":") for r in args.rules.split(","))]
    except ValueError:
        p.error(f"--rules {args.rules!r}: expected DECODE:K items, e.g. mean:0,mean:16")

    from pac.evaluation import NetworkPolicy, evaluate, load_policy_model, plan_tasks

    net, cfg = load_policy_model(args.model)
    decoded = net.cfg
    lines: list[str] = []
    start = time.perf_counter()
    for decode, k in rules:
        net.cfg = dataclasses.replace(decoded, action_decode=decode)  # the decode is read per forward pass
        ecfg = dataclasses.replace(cfg.eval, episodes=args.episodes, num_envs=args.episodes, q_select_samples=k,
                                   episode_steps=args.episode_steps, seed=args.seed, video=False)
        plans = plan_tasks(cfg, ecfg)
        source = NetworkPolicy(net, ecfg, critic=cfg.objective.trains_critic)
        report = evaluate(source, plans, ecfg, progress=False)
        if not lines:
            tasks = list(report.tasks)
            lines += [f"| acting rule | {' | '.join(tasks)} | mean |", "|---" + "|---:" * (len(tasks) + 1) + "|"]
        scores = " | ".join(f"{report.tasks[t].normalized_score:.3f}" for t in tasks)
        lines.append(f"| {source.selection} | {scores} | {report.mean_normalized_score:.3f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    note = (f"\n\n{args.model}; {args.episodes} episodes x {args.episode_steps} steps per task, evaluation seed "
            f"{args.seed}; {time.perf_counter() - start:.0f} s\n")
    print(table + note)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
