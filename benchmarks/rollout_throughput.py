"""Rollout throughput: policy-in-the-loop environment steps/s against the raw simulator, in one run.

For each task this measures, one after another and `--repeats` times (the median is reported):

* `raw`: `Env.step` with uniform random actions in a plain loop, one process: the simulator's own rate
  with dm_control's observation handling, nothing else (the issue's "raw MuJoCo steps/s");
* `random`: the uniform random policy through `pac.evaluation.rollout` (seeding, bookkeeping);
* `policy`: a `tiny`-preset `NetworkPolicy` (greedy, untrained: the forward pass costs the same) through
  `rollout`, its forward on one intra-op thread (`eval.policy_threads 1`, the default) and on torch's own
  setting (`policy (N threads)`);
* `random+camera`: the random policy with the task camera rendered into every observation (a vision plan:
  the most expensive environment step the product runs),

the rollouts with their environments stepped in this process (`eval.env_workers 0`, the default) and in one
worker process per core, at each of `--num-envs`.

    .venv/bin/python benchmarks/rollout_throughput.py
    .venv/bin/python benchmarks/rollout_throughput.py --tasks cartpole/balance --episodes 4 --steps 200

Prints a Markdown table (and `--json` the raw numbers): steps/s and the ratio to `raw` of the same task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pac.config import EvalConfig
from pac.envs import get_task, make_env
from pac.evaluation import NetworkPolicy, TaskPlan, random_source, rollout
from pac.networks import build_model
from pac.presets import model_config

TASKS = ("cartpole/balance", "point_mass/easy", "reacher/easy")


def raw_rate(task: str, steps: int) -> float:
    """Env steps/s of random actions in a plain loop (episodes restarted as they end)."""
    env = make_env(task, seed=0, episode_steps=steps)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(env.action_low, env.action_high))
    rate = steps / (time.perf_counter() - t)
    env.close()
    return rate


def rollout_rate(make_source: Callable[[EvalConfig], Any], task: str | TaskPlan, cfg: EvalConfig) -> float:
    t = time.perf_counter()
    ro = rollout(make_source(cfg), task, cfg, progress=False)
    return sum(r.length for r in ro.results) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--episodes", type=int, default=10, help="episodes per rollout")
    p.add_argument("--steps", type=int, default=1000, help="steps per episode (and of the raw loop)")
    p.add_argument("--num-envs", nargs="+", type=int, default=[4, 10], help="environments stepped together")
    p.add_argument("--repeats", type=int, default=3, help="measurements per variant (median reported)")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    net = build_model(model_config("tiny")).eval()
    with torch.no_grad():  # an untrained head decodes to one bin; a random one acts like a policy
        net.policy.head.weight.normal_(0.0, 0.5)

    def policy(cfg: EvalConfig) -> NetworkPolicy:
        return NetworkPolicy(net, cfg, critic=False)

    rows = []
    t0 = time.perf_counter()
    for task in args.tasks:
        variants: list[tuple[str, int, int, Callable[[], float]]] = [
            ("raw", 1, 0, lambda task=task: raw_rate(task, args.steps))]
        for n in args.num_envs:
            for workers in (0, -1):
                cfg = EvalConfig(episodes=args.episodes, num_envs=n, episode_steps=args.steps, video=False,
                                 env_workers=workers)
                torch_threads = dataclasses.replace(cfg, policy_threads=0)
                variants.append(("random", n, workers, lambda c=cfg, task=task: rollout_rate(
                    lambda _: random_source(), task, c)))
                variants.append(("policy", n, workers, lambda c=cfg, task=task: rollout_rate(policy, task, c)))
                variants.append((f"policy ({torch.get_num_threads()} threads)", n, workers,
                                 lambda c=torch_threads, task=task: rollout_rate(policy, task, c)))
                camera = TaskPlan(get_task(task), vision=True)
                variants.append(("random+camera", n, workers, lambda c=cfg, plan=camera: rollout_rate(
                    lambda _: random_source(), plan, c)))
        rates: dict[int, list[float]] = {i: [] for i in range(len(variants))}
        for _ in range(args.repeats):  # round-robin, so the host's load affects every variant alike
            for i, (_, _, _, measure) in enumerate(variants):
                rates[i].append(measure())
        raw = statistics.median(rates[0])
        for i, (name, n, workers, _) in enumerate(variants):
            rate = statistics.median(rates[i])
            rows.append({"task": task, "source": name, "num_envs": n,
                         "env_workers": workers if workers >= 0 else os.cpu_count(), "steps_per_s": rate,
                         "vs_raw": rate / raw, "all": rates[i]})
            print(f"{task} {name} num_envs={n} workers={rows[-1]['env_workers']}: {rate:,.0f} steps/s "
                  f"({rate / raw:.0%} of raw)", flush=True)
    result = {"rows": rows, "episodes": args.episodes, "steps": args.steps, "repeats": args.repeats,
              "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "wall_s": time.perf_counter() - t0}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"\n{args.episodes} episodes x {args.steps} steps per rollout, median of {args.repeats}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {result['wall_s']:.0f} s\n")
    print("| task | source | envs stepped together | env worker processes | env steps/s | vs raw |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['source']} | {r['num_envs']} | {r['env_workers']} | {r['steps_per_s']:,.0f} "
              f"| {r['vs_raw']:.0%} |")


if __name__ == "__main__":
    main()
