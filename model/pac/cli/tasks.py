"""`pac tasks`: list the simulated task registry."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list the simulated tasks (ids for generate.tasks / eval.tasks)",
                       description="List the registered dm_control tasks: embodiment, observation and action "
                                   "sizes, expert controller, success rule and instruction.")
    p.add_argument("--tag", help="only tasks with this tag (e.g. robot: the Jaco arm tasks)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=list_tasks_command)


def list_tasks_command(args: argparse.Namespace) -> int:
    from pac.envs import Env, list_tasks

    rows = []
    for spec in list_tasks(args.tag):
        env = Env(spec, seed=0, episode_steps=1)  # sizes come from the specs: no reset, no rendering
        rows.append({"id": spec.id, "embodiment": spec.embodiment, "family": spec.family,
                     "proprio_dim": env.proprio_dim, "action_dim": env.action_dim, "expert": spec.expert,
                     "success": None if spec.success_threshold is None else
                     f"mean reward >= {spec.success_threshold} over the last {spec.success_window} steps",
                     "tags": list(spec.tags), "instruction": spec.instruction})
        env.close()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print(f"no task has tag {args.tag!r}", file=sys.stderr)
        return 1
    print(f"{'task':<20} {'embodiment':<12} {'P':>3} {'A':>2}  {'expert':<17} {'success':<8} instruction")
    for r in rows:
        success = "-" if r["success"] is None else r["success"].split(" over")[0].replace("mean reward ", "")
        print(f"{r['id']:<20} {r['embodiment']:<12} {r['proprio_dim']:>3} {r['action_dim']:>2}  {r['expert']:<17} "
              f"{success:<8} {r['instruction']}")
    print(f"\n{len(rows)} tasks over {len({r['embodiment'] for r in rows})} embodiments; success: mean reward over "
          "the final steps; max return = episode_steps (rewards in [0, 1]).")
    return 0
