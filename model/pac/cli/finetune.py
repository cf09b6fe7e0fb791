"""`pac finetune` and `pac improve`: RL finetuning from a trained model, and self-improvement rounds.

pac finetune --model outputs/run/export --data.dataset behaviour --data.mix_with self-collected@latest=1
pac improve  --model models:/pac-policy@champion --data.dataset behaviour --improve.iterations 3
"""

from __future__ import annotations

import argparse

from pac.cli.common import add_config_flags, resolve_config

SECTIONS = ["objective", "data", "train", "eval", "improve", "storage", "tracking", "cluster"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="finetune a trained model with the RL objective",
                       description="Start from a model (export directory/URI or models:/NAME@alias) and train on "
                                   "data.dataset mixed with data.mix_with; logs a child MLflow run of the model's "
                                   "run. The architecture comes from the model, and a learned temperature "
                                   "(objective.eta) starts where the model's training left it.")
    p.add_argument("--model", required=True, help="export dir/URI or MLflow model URI to start from")
    p.add_argument("--result-file", metavar="PATH",
                   help="also write {uri, run_id, steps} of the result as JSON to this file (pipeline output)")
    add_config_flags(p, SECTIONS)
    p.set_defaults(func=run_finetune)

    p = sub.add_parser("improve", help="K rounds of collect -> ingest -> finetune -> evaluate",
                       description="Self-improvement without online exploration: each round's model collects "
                                   "episodes on the robot task(s), they become a new dataset version, and the next "
                                   "model is finetuned on them mixed with data.dataset. Prints and plots the "
                                   "success/return curve over rounds; with improve.collect_temperature, also that "
                                   "of the collecting policy (sampled at that temperature, same episodes).")
    p.add_argument("--model", required=True, help="export dir/URI or MLflow model URI to start from")
    p.add_argument("--output", default="outputs/improve", help="directory for reports and the curve")
    add_config_flags(p, SECTIONS)
    p.set_defaults(func=run_improve)


def run_finetune(args: argparse.Namespace) -> int:
    from pac.cli.train import write_result
    from pac.workflow import finetune

    result = finetune(resolve_config(args), args.model)
    print(f"finetuned {result.steps} steps; weights: {result.export_uri}; MLflow run: {result.run_id}")
    if result.preempted:
        return 143
    write_result(args.result_file, result)
    return 0


def run_improve(args: argparse.Namespace) -> int:
    from pac.workflow import improve

    result = improve(resolve_config(args), args.model, args.output)
    print(result.table())
    print(f"curve: {result.files.get('png')}")
    return 0
