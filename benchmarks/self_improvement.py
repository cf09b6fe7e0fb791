"""Self-improvement on the robot arm: pretrain on sub-optimal data, then K rounds of
collect -> ingest -> finetune -> evaluate (the paper's RL finetuning without online exploration).

    .venv/bin/python benchmarks/self_improvement.py --output outputs/self-improvement

Everything goes through the library (`pac.workflow`): the same code as `pac improve`. Fixed seeds; the
budget flags below are the documented defaults (runtime on 2 CPU cores is printed at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pac.config import Config, ConfigError, assignments, merge
from pac.training.loop import train
from pac.workflow import generate_dataset, improve


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="outputs/self-improvement", help="run directory")
    p.add_argument("--task", default="jaco/reach_site", help="robot task (see `pac tasks --tag robot`)")
    p.add_argument("--preset", default="tiny-wide")
    p.add_argument("--episodes", type=int, default=6, help="behaviour episodes per quality level")
    p.add_argument("--qualities", default="random,noisy", help="behaviour data mix (sub-optimal by default)")
    p.add_argument("--episode-steps", type=int, default=100)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--pretrained", default="",
                   help="start the rounds from this model export (a directory, or a models:/ or s3:// URI) "
                        "instead of pretraining one")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the behaviour data and the training (one replicate); evaluation episodes stay fixed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--finetune-steps", type=int, default=400)
    p.add_argument("--collect-episodes", type=int, default=16)
    p.add_argument("--eval-episodes", type=int, default=12)
    p.add_argument("--alpha", type=float, default=None, help="objective.alpha (default: the config default)")
    p.add_argument("--lr", type=float, default=None, help="train.lr of pretraining (default: the config's)")
    p.add_argument("--finetune-alpha", type=float, default=None,
                   help="improve.finetune_alpha: objective.alpha of the rounds (default: the pretraining alpha)")
    p.add_argument("--collect-temperature", type=float, default=None,
                   help="sample the collecting policy at this temperature (default: greedy, like evaluation)")
    p.add_argument("--finetune-lr", type=float, default=None, help="improve.finetune_lr (default: the pretraining lr)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="train.precision of pretraining and rounds (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="config override of pretraining and rounds (repeatable), e.g. model.proprio_encoder=vector")
    args = p.parse_args(argv)
    try:
        args.overrides = assignments(args.set)  # the form only: the values are checked with the whole config
    except ConfigError as e:
        p.error(f"--set {e}")
    if args.pretrained and "://" not in args.pretrained and not args.pretrained.startswith("models:/") \
            and not Path(args.pretrained).is_dir():
        p.error(f"--pretrained {args.pretrained}: no such directory (an export directory, e.g. "
                "<run>/runs/pretrain/export, or a models:/ or s3:// URI)")
    return args


def run_config(args: argparse.Namespace, out: Path) -> Config:
    """The run's config: the budget flags over the defaults, then `--set` over both."""
    objective = {} if args.alpha is None else {"alpha": args.alpha}
    return Config.from_dict(merge({
        "preset": args.preset, "seed": args.seed, "objective": objective,
        "storage": {"root": str(out / "store")},
        "generate": {"tasks": [args.task], "episodes_per_policy": args.episodes,
                     "qualities": args.qualities.split(","), "episode_steps": args.episode_steps,
                     "seed": args.seed},
        "train": {**({} if args.lr is None else {"lr": args.lr}),
                  **({} if args.precision is None else {"precision": args.precision}),
                  "steps": args.pretrain_steps, "output": str(out / "runs" / "pretrain"), "log_every": 100,
                  "checkpoint_every": 500},
        "eval": {"tasks": [args.task], "episodes": args.eval_episodes, "num_envs": min(args.eval_episodes, 10),
                 "episode_steps": args.episode_steps, "videos_per_task": 1},
        "improve": {"iterations": args.rounds, "finetune_steps": args.finetune_steps,
                    "collect_episodes": args.collect_episodes,
                    "finetune_lr": args.finetune_lr, "finetune_alpha": args.finetune_alpha,
                    "collect_temperature": args.collect_temperature},
        "tracking": {"uri": f"sqlite:///{out}/mlflow.db", "system_metrics": False},
    }, args.overrides))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    out = Path(args.output).resolve()
    start = time.perf_counter()
    try:
        cfg = run_config(args, out)
    except ConfigError as e:
        raise SystemExit(f"self_improvement.py: {e}") from e
    ref, stats = generate_dataset(cfg, "behaviour", progress=False)
    if stats is not None:  # None: the run directory already held these episodes
        print(stats.table())
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=str(ref)))
    pretrained = args.pretrained
    if pretrained and Path(pretrained).is_dir():  # a path here, not a name under this run's storage root
        pretrained = str(Path(pretrained).resolve())
    start_uri = pretrained or train(cfg, run_name="pretrain").export_uri
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output=str(out / "runs" / "improve")))
    result = improve(cfg, start_uri, out / "improve")
    runtime = time.perf_counter() - start
    print(result.table())
    print(f"\ncurve: {result.files['png']}  ({runtime / 60:.1f} min)")
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "runtime_s": runtime,
                                                  "dataset": str(ref)}, indent=2))


if __name__ == "__main__":
    main()
